/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* from-netdev: tc ingress of the node's uplink. Traffic from other nodes
 * for a pod on this node goes straight into the pod with
 * bpf_redirect_peer (the seed's newer-kernel behaviour); everything else,
 * including traffic for the node itself, goes to the host stack.
 * IP-in-IP from a known node is opened first (unknown senders' is dropped). Traffic
 * the node itself sends to a pod never passes here: it takes the host
 * stack and the pod's host veth (seed scenario 1). */
#include "lib/lb.h"
#include "lib/vlan.h"

SEC("classifier/from_netdev")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	/* A VLAN's frame is untagged first (vlan mode; strait_vlan_subnets is
	 * empty otherwise and only tagged frames are refused). */
	int v = vlan_untag(skb);
	if (v == VLAN_REDIRECT) /* macvlan mode: into the VLAN's port */
		return verdict(skb, REASON_VLAN_PORT, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_REDIRECT);
	if (v != VLAN_PASS)
		return drop(skb, DROP_VLAN_FOREIGN, PROG_FROM_NETDEV, &p.flow);
	/* IP-in-IP from another node is opened first; the rest of the program
	 * sees the packet inside. */
	int t = ipip_open(skb, &p.flow);
	if (t < 0)
		return drop(skb, (__u8)-t, PROG_FROM_NETDEV, &p.flow);
	if (t == IPIP_OPENED)
		count(REASON_IPIP_DECAP, skb->len);
	int r = parse_ipv4(skb, &p);
	if (r <= 0) /* malformed packets from the wire are the stack's business */
		return verdict(skb, REASON_TO_STACK, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_OK);
	/* A remote backend's reply to a client here: back to the VIP. */
	struct flow before = p.flow;  /* a reply as the backend sent it */
	int lb = lb_revnat(skb, &p, PROG_FROM_NETDEV);
	int revnat = lb == LB_DONE;
	/* From outside the cluster: NodePort, ExternalIP, LoadBalancer. */
	int dnat = 0;
	if (lb == LB_NONE) {
		lb = lb_dnat(skb, &p, PROG_FROM_NETDEV);
		dnat = lb == LB_DONE;
	}
	if (lb == LB_ERROR)
		return drop(skb, DROP_NAT_FAILED, PROG_FROM_NETDEV, &p.flow);
	if (lb == LB_NO_BACKEND)
		return verdict(skb, REASON_SVC_NO_BACKEND, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_OK);
	if (lb == LB_INCONSISTENT)
		return drop(skb, DROP_LB_INCONSISTENT, PROG_FROM_NETDEV, &p.flow);
	if (lb == LB_DONE && parse_ipv4(skb, &p) != 1)
		return drop(skb, DROP_MALFORMED, PROG_FROM_NETDEV, &p.flow);
	__u32 daddr = p.flow.daddr;
	struct endpoint *ep = bpf_map_lookup_elem(&strait_endpoints, &daddr);
	if (!ep && dnat) {
		/* externalTrafficPolicy Cluster with a backend on another node: the
		 * host stack forwards it and masquerades it to this node (the agent's
		 * nftables rule matches this mark), so the reply comes back here and
		 * to-netdev restores the frontend. */
		skb->mark |= MARK_MASQUERADE;
		return verdict(skb, REASON_SVC_MASQUERADE, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_OK);
	}
	if (!ep)
		return verdict(skb, REASON_TO_STACK, PROG_FROM_NETDEV, &p.flow, 0, TC_ACT_OK);
	/* NetworkPolicy: the local destination's ingress, before the packet
	 * skips its host veth. */
	__u32 policy = 0;
	int verdict_p = policy_judge(revnat ? &before : &p.flow, 0, 1, &policy);
	if (verdict_p != POLICY_PASS)
		return policy_drop(skb, verdict_p, PROG_FROM_NETDEV, &p.flow, policy);
	return to_local_pod(skb, &p, ep, PROG_FROM_NETDEV, REASON_PEER_FROM_NETDEV, REASON_HOSTVETH_FROM_NETDEV);
}

/* to-netdev: tc egress of the uplink. Replies of masqueraded external
 * connections leave here after the stack undid the masquerade: their
 * source goes back to the frontend the client connected to. Then what
 * belongs to a VLAN subnet (vlan mode) gets its tag, the fast path's
 * redirected packets and the stack's (ARP too) alike. */
SEC("classifier/to_netdev")
int to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse_ipv4(skb, &p) == 1) {
		int lb = lb_revnat(skb, &p, PROG_TO_NETDEV);
		if (lb == LB_ERROR)
			return drop(skb, DROP_NAT_FAILED, PROG_TO_NETDEV, &p.flow);
	}
	if (vlan_tag(skb) != VLAN_PASS)
		return drop(skb, DROP_VLAN_PUSH_FAILED, PROG_TO_NETDEV, &p.flow);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
