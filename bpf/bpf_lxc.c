/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* from-container: tc ingress of each pod's host veth, i.e. every packet a
 * pod sends. Terway DataPath V2 / Cilium host-routing:
 *   - a source address that is not the pod's own is dropped, and so is
 *     anything from a veth the agent has not programmed (fail closed);
 *   - to a pod on this node: bpf_redirect_peer into that pod's namespace,
 *     skipping its host veth and the host stack;
 *   - to anywhere the FIB forwards out of this node: bpf_fib_lookup, then
 *     bpf_redirect_neigh out of the right interface (for IP-in-IP, wrapped
 *     first and sent out of the uplink to the node the route names);
 *   - everything else (the node itself, ARP, IPv6, ...) goes to the stack. */
#include "lib/lb.h"

struct arp_ipv4 {
	__u16 htype, ptype;
	__u8 hlen, plen;
	__u16 op;
	__u8 sha[6];
	__u8 spa[4];
};

/* Not IPv4: ARP is allowed when it claims the pod's own address (or none,
 * as a probe does); IPv6 when it comes from the pod's own IPv6 address, or
 * is link-local housekeeping (neighbour discovery, MLD); nothing else. */
static __always_inline int not_ipv4(struct __sk_buff *skb, const struct lxc *me, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, f);
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > end)
			return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, f);
		__u32 spa;
		__builtin_memcpy(&spa, arp->spa, 4);
		if (spa != 0 && spa != me->ip4) {
			f->saddr = spa;
			return drop(skb, DROP_ARP_SPOOF, PROG_FROM_CONTAINER, f);
		}
		return verdict(skb, REASON_LOCAL_LINK, PROG_FROM_CONTAINER, f, 0, TC_ACT_OK);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 40) > end)
			return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, f);
		__u8 *src = ip6 + 8, *dst = ip6 + 24;
		int own = 1;
		for (int i = 0; i < 16; i++)
			if (src[i] != me->ip6[i])
				own = 0;
		__u8 unspec = 1;
		for (int i = 0; i < 16; i++)
			unspec &= src[i] == 0;
		int link_src = (src[0] == 0xfe && (src[1] & 0xc0) == 0x80) || unspec;
		int local_dst = dst[0] == 0xff || (dst[0] == 0xfe && (dst[1] & 0xc0) == 0x80);
		if (link_src && local_dst)
			return verdict(skb, REASON_LOCAL_LINK, PROG_FROM_CONTAINER, f, 0, TC_ACT_OK);
		if (own && !unspec) /* IPv6 forwarding is not in eBPF yet: the stack routes it */
			return verdict(skb, REASON_TO_STACK, PROG_FROM_CONTAINER, f, 0, TC_ACT_OK);
		return drop(skb, DROP_SOURCE_SPOOF, PROG_FROM_CONTAINER, f);
	}
	return drop(skb, DROP_ETHERTYPE, PROG_FROM_CONTAINER, f);
}

SEC("classifier/from_container")
int from_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 ifindex = skb->ingress_ifindex;
	/* Fail closed: a host veth the agent has not programmed forwards
	 * nothing (CNI ADD returns only once its pod is programmed). */
	struct lxc *me = bpf_map_lookup_elem(&strait_lxc, &ifindex);
	if (!me)
		return drop(skb, DROP_UNKNOWN_ENDPOINT, PROG_FROM_CONTAINER, &p.flow);
	int r = parse_ipv4(skb, &p);
	if (r == 0)
		return not_ipv4(skb, me, &p.flow);
	if (r < 0)
		return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, &p.flow);
	if (p.flow.saddr != me->ip4)
		return drop(skb, DROP_SOURCE_SPOOF, PROG_FROM_CONTAINER, &p.flow);

	/* The reply of a hostPort connection: the host's netfilter DNATed the
	 * request, so only the host stack can translate the reply back. */
	struct hostport_key hk = { .addr = p.flow.saddr, .port = bpf_htons(p.flow.sport), .proto = p.flow.proto };
	if ((me->flags & LXC_F_HOSTPORTS) && p.flow.sport && bpf_map_lookup_elem(&strait_hostport, &hk))
		return verdict(skb, REASON_HOSTPORT_TO_STACK, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);

	/* Services: a local backend's reply gets its VIP back; a packet to a
	 * VIP gets a backend. Either way the rest is plain pod forwarding. */
	struct flow before = p.flow;  /* a reply as the backend sent it */
	int lb = lb_revnat(skb, &p, PROG_FROM_CONTAINER);
	int revnat = lb == LB_DONE;
	if (lb == LB_NONE)
		lb = lb_dnat(skb, &p, PROG_FROM_CONTAINER);
	if (lb == LB_NONE)
		lb_forget_direct(&p);
	if (lb == LB_NO_BACKEND) /* the node's unreachable route for the service CIDR answers */
		return verdict(skb, REASON_SVC_NO_BACKEND, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);
	if (lb == LB_INCONSISTENT)
		return drop(skb, DROP_LB_INCONSISTENT, PROG_FROM_CONTAINER, &p.flow);
	if (lb == LB_ERROR)
		return drop(skb, DROP_NAT_FAILED, PROG_FROM_CONTAINER, &p.flow);
	if (lb == LB_DONE && parse_ipv4(skb, &p) != 1)
		return drop(skb, DROP_MALFORMED, PROG_FROM_CONTAINER, &p.flow);

	/* Bifrost's service veth (macvlan mode): the pod's data path is its
	 * macvlan, which never touches the host; only service traffic and
	 * traffic for the node come this way. The host stack forwards it and
	 * the agent's nftables rule masquerades what leaves from a service
	 * veth, so the backend answers the node, the reply comes back through
	 * this veth and to-container puts the frontend back. */
	if (me->flags & LXC_F_SVC_VETH) {
		/* A hairpin, the pod its own backend (either way: the request
		 * after DNAT, the reply after the reverse): straight back into
		 * the pod. The stack would refuse it, since its source
		 * (169.254.42.1, or the VIP on the way back) fails this veth's
		 * strict reverse-path check. */
		if (lb == LB_DONE && p.flow.daddr == me->ip4) {
			struct endpoint back = { .ifindex = ifindex };
			__builtin_memcpy(back.pod_mac, p.eth->h_source, 6);
			__builtin_memcpy(back.host_mac, p.eth->h_dest, 6);
			return to_local_pod(skb, &p, &back, PROG_FROM_CONTAINER, REASON_PEER_LOCAL,
					    REASON_HOSTVETH_LOCAL);
		}
		return verdict(skb, REASON_SVC_VETH, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);
	}

	__u32 daddr = p.flow.daddr;
	struct endpoint *ep = bpf_map_lookup_elem(&strait_endpoints, &daddr);
	/* NetworkPolicy: this pod's egress, and a local destination's ingress
	 * (its host veth is skipped below). A reply is judged as the backend
	 * sent it, so it matches the connection it answers. */
	__u32 policy = 0;
	int verdict_p = policy_judge(revnat ? &before : &p.flow, 1, ep != 0, &policy);
	if (verdict_p != POLICY_PASS)
		return policy_drop(skb, verdict_p, PROG_FROM_CONTAINER, &p.flow, policy);
	if (ep)
		return to_local_pod(skb, &p, ep, PROG_FROM_CONTAINER, REASON_PEER_LOCAL, REASON_HOSTVETH_LOCAL);

	/* tot_len stays 0: the kernel then checks the skb itself against the
	 * egress MTU, which lets GSO super-packets through (their IPv4
	 * tot_len is far above the MTU, their segments are not). */
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = p.ip->tos;
	fib.l4_protocol = p.ip->protocol;
	fib.ipv4_src = p.flow.saddr;
	fib.ipv4_dst = p.flow.daddr;
	fib.ifindex = ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return verdict(skb, REASON_FIB_TO_STACK, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);

	/* A GSO super-packet passes the lookup's check whole; its segments
	 * must fit the egress too. An overlay device is smaller than the pod's
	 * link would allow, and the kernel would otherwise fragment the outer
	 * packet instead of telling the pod. Too big: the host stack forwards
	 * it and answers "fragmentation needed" (path-MTU discovery). Other
	 * packets were checked by the lookup itself. */
	__u32 mtu_len = 0;
	if (skb->gso_size &&
	    bpf_check_mtu(skb, fib.ifindex, &mtu_len, 0, BPF_MTU_CHK_SEGS) != 0)
		return verdict(skb, REASON_MTU_TO_STACK, PROG_FROM_CONTAINER, &p.flow, 0, TC_ACT_OK);

	struct flow f = p.flow;
	if (ttl_decrement(skb, &p) < 0)
		return verdict(skb, REASON_TTL_TO_STACK, PROG_FROM_CONTAINER, &f, 0, TC_ACT_OK);
	/* IP-in-IP: the route points at the tunnel's stand-in device, its
	 * gateway is the node: wrap here and go straight to the uplink. */
	const struct tunnel_cfg *tun = tunnel_cfg();
	if (tun && fib.ifindex == tun->ifindex) {
		if (fib.ipv4_dst == f.daddr)
			return drop(skb, DROP_TUNNEL_NO_ROUTE, PROG_FROM_CONTAINER, &f);
		return ipip_send(skb, tun, fib.ipv4_dst, PROG_FROM_CONTAINER, &f);
	}
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

/* to-container: tc egress of a macvlan pod's service veth. A backend's
 * reply, its masquerade undone by the host stack, gets the frontend back
 * (the reverse entry from-container made when it translated). */
SEC("classifier/to_container")
int to_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse_ipv4(skb, &p) == 1 && lb_revnat(skb, &p, PROG_TO_CONTAINER) == LB_ERROR)
		return drop(skb, DROP_NAT_FAILED, PROG_TO_CONTAINER, &p.flow);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
