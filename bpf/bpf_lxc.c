/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* from-container: tc ingress of each pod's host veth, i.e. every packet a
 * pod sends. Terway DataPath V2 / Cilium host-routing:
 *   - a source address that is not the pod's own is dropped;
 *   - to a pod on this node: bpf_redirect_peer into that pod's namespace,
 *     skipping its host veth and the host stack;
 *   - to anywhere the FIB forwards out of this node: bpf_fib_lookup, then
 *     bpf_redirect_neigh out of the right interface;
 *   - everything else (the node itself, ARP, IPv6, ...) goes to the stack. */
#include "lib/lb.h"

SEC("classifier/from_container")
int from_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = parse_ipv4(skb, &p);
	if (r == 0)
		return verdict(skb, REASON_TO_STACK, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);
	if (r < 0)
		return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, &p.flow);

	__u32 ifindex = skb->ingress_ifindex;
	struct lxc *me = bpf_map_lookup_elem(&strait_lxc, &ifindex);
	if (!me) /* not a pod the agent knows (yet): the stack decides */
		return verdict(skb, REASON_TO_STACK, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);
	if (p.flow.saddr != me->ip)
		return drop(skb, DROP_SOURCE_SPOOF, PROG_FROM_CONTAINER, &p.flow);

	/* Services: a local backend's reply gets its VIP back; a packet to a
	 * VIP gets a backend. Either way the rest is plain pod forwarding. */
	int lb = lb_revnat(skb, &p);
	if (lb == LB_NONE)
		lb = lb_dnat(skb, &p, PROG_FROM_CONTAINER);
	if (lb == LB_NONE)
		lb_forget_direct(skb, &p);
	if (lb == LB_NO_BACKEND) /* the node's unreachable route for the service CIDR answers */
		return verdict(skb, REASON_SVC_NO_BACKEND, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);
	if (lb == LB_ERROR)
		return drop(skb, DROP_NAT_FAILED, PROG_FROM_CONTAINER, &p.flow);
	if (lb == LB_DONE && parse_ipv4(skb, &p) != 1)
		return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, &p.flow);

	__u32 daddr = p.flow.daddr;
	struct endpoint *ep = bpf_map_lookup_elem(&strait_endpoints, &daddr);
	if (ep)
		return to_local_pod(skb, &p, ep, PROG_FROM_CONTAINER, REASON_PEER_LOCAL, REASON_HOSTVETH_LOCAL);

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = p.ip->tos;
	fib.l4_protocol = p.ip->protocol;
	fib.tot_len = bpf_ntohs(p.ip->tot_len);
	fib.ipv4_src = p.flow.saddr;
	fib.ipv4_dst = p.flow.daddr;
	fib.ifindex = ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return verdict(skb, REASON_FIB_TO_STACK, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);

	struct flow f = p.flow;
	if (ttl_decrement(skb, &p) < 0)
		return verdict(skb, REASON_TTL_TO_STACK, PROG_FROM_CONTAINER, &f, 0, TC_ACT_OK);
	/* After the lookup fib.ipv4_dst is the next hop (the gateway, or the
	 * destination itself when it is on-link). */
	struct bpf_redir_neigh nh = {};
	nh.nh_family = AF_INET;
	nh.ipv4_nh = fib.ipv4_dst;
	long ret = bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	if (ret != TC_ACT_REDIRECT)
		return drop(skb, DROP_REDIRECT_FAILED, PROG_FROM_CONTAINER, &f);
	return verdict(skb, REASON_NEIGH_REMOTE, PROG_FROM_CONTAINER, &f, fib.ifindex, TC_ACT_REDIRECT);
}

char _license[] SEC("license") = "GPL";
