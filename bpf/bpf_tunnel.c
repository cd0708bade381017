/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The IP-in-IP tunnel's own programs (lib/tunnel.h has the design):
 *   tunnel_encap  tc egress of the stand-in device `<uplink>.ipip`: what
 *                 the host stack routes to another node's pods (forwarded
 *                 pod traffic on the kernel datapath, the node's own
 *                 traffic and masqueraded NodePort traffic on both) is
 *                 wrapped and sent out of the uplink;
 *   tunnel_decap  tc ingress of the uplink on the kernel datapath (the eBPF
 *                 datapath opens IP-in-IP in from-netdev instead): opened,
 *                 then handed to the host stack, which routes the inner
 *                 packet to the pod's host veth.
 * This object has only the tunnel's maps and the shared counters, so the
 * kernel datapath loads no service or conntrack maps. */
#include "lib/tunnel.h"

/* The IPv4 flow after the Ethernet header (ports not needed here). */
static __always_inline int inner_flow(struct __sk_buff *skb, struct flow *f, struct iphdr *copy)
{
	if (bpf_skb_load_bytes(skb, ETH_HLEN, copy, sizeof(*copy)) < 0)
		return -1;
	if (copy->version != 4 || copy->ihl < 5)
		return -1;
	f->saddr = copy->saddr;
	f->daddr = copy->daddr;
	f->proto = copy->protocol;
	return 0;
}

SEC("classifier/tunnel_encap")
int tunnel_encap(struct __sk_buff *skb)
{
	struct flow f = {};
	struct iphdr ip;
	/* Nothing leaves the stand-in device unwrapped: it is not a real link. */
	if (skb->protocol != bpf_htons(ETH_P_IP) || inner_flow(skb, &f, &ip) < 0)
		return drop(skb, DROP_ETHERTYPE, PROG_TUNNEL_ENCAP, &f);
	const struct tunnel_cfg *c = tunnel_cfg();
	if (!c)
		return drop(skb, DROP_TUNNEL_NO_ROUTE, PROG_TUNNEL_ENCAP, &f);
	/* The route that brought the packet here names the node: its gateway. */
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip.tos;
	fib.l4_protocol = ip.protocol;
	fib.ipv4_src = ip.saddr;
	fib.ipv4_dst = ip.daddr;
	fib.ifindex = c->ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    fib.ifindex != c->ifindex || fib.ipv4_dst == ip.daddr)
		return drop(skb, DROP_TUNNEL_NO_ROUTE, PROG_TUNNEL_ENCAP, &f);
	return ipip_send(skb, c, fib.ipv4_dst, PROG_TUNNEL_ENCAP, &f);
}

SEC("classifier/tunnel_decap")
int tunnel_decap(struct __sk_buff *skb)
{
	struct flow f = {};
	int r = ipip_open(skb, &f);
	if (r < 0)
		return drop(skb, (__u8)-r, PROG_TUNNEL_DECAP, &f);
	if (r == IPIP_OPENED) {
		struct iphdr ip;
		if (inner_flow(skb, &f, &ip) < 0)
			return drop(skb, DROP_MALFORMED, PROG_TUNNEL_DECAP, &f);
		return verdict(skb, REASON_IPIP_DECAP, PROG_TUNNEL_DECAP, &f, 0, TC_ACT_OK);
	}
	return verdict(skb, REASON_TO_STACK, PROG_TUNNEL_DECAP, &f, 0, TC_ACT_OK);
}

char _license[] SEC("license") = "GPL";
