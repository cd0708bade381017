/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* from-netdev: tc ingress of the node's uplink. Traffic from other nodes
 * for a pod on this node goes straight into the pod with
 * bpf_redirect_peer (the seed's newer-kernel behaviour); everything else,
 * including traffic for the node itself, goes to the host stack. Traffic
 * the node itself sends to a pod never passes here: it takes the host
 * stack and the pod's host veth (seed scenario 1). */
#include "lib/lb.h"

SEC("classifier/from_netdev")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = parse_ipv4(skb, &p);
	if (r <= 0) /* malformed packets from the wire are the stack's business */
		return verdict(skb, REASON_TO_STACK, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_OK);
	/* A remote backend's reply to a client here: back to the VIP. */
	int lb = lb_revnat(skb, &p);
	if (lb == LB_ERROR)
		return drop(skb, DROP_NAT_FAILED, PROG_FROM_NETDEV, &p.flow);
	if (lb == LB_DONE && parse_ipv4(skb, &p) != 1)
		return drop(skb, DROP_MALFORMED, PROG_FROM_NETDEV, &p.flow);
	__u32 daddr = p.flow.daddr;
	struct endpoint *ep = bpf_map_lookup_elem(&strait_endpoints, &daddr);
	if (!ep)
		return verdict(skb, REASON_TO_STACK, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_OK);
	return to_local_pod(skb, &p, ep, PROG_FROM_NETDEV, REASON_PEER_FROM_NETDEV, REASON_HOSTVETH_FROM_NETDEV);
}

char _license[] SEC("license") = "GPL";
