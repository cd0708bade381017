/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* VLAN tagging for the kernel datapath (lib/vlan.h has the design):
 *   vlan_egress   tc egress of the uplink: push the tag of the packet's
 *                 subnet;
 *   vlan_ingress  tc ingress of the uplink: a macvlan port's VLAN into
 *                 its port; else pop a tag of a VLAN the packet's
 *                 addresses belong to, drop other tagged frames;
 *   vlan_port_in  tc ingress of a macvlan port's far end (trunk<vid>):
 *                 push the port's tag, out of the uplink.
 * Untagged traffic outside the VLAN subnets (the nodes' own) passes. */
#include "lib/vlan.h"

SEC("classifier/vlan_egress")
int vlan_egress(struct __sk_buff *skb)
{
	return vlan_tag(skb) == VLAN_PASS ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("classifier/vlan_ingress")
int vlan_ingress(struct __sk_buff *skb)
{
	int r = vlan_untag(skb);
	if (r == VLAN_REDIRECT)
		return TC_ACT_REDIRECT;
	return r == VLAN_PASS ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("classifier/vlan_port_in")
int vlan_port_in(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ingress_ifindex;
	const struct vlan_port *p = bpf_map_lookup_elem(&strait_vlan_trunks, &ifindex);
	if (!p)
		return TC_ACT_SHOT;
	__u32 uplink = p->uplink;
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q_), p->vid) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(uplink, 0);
}
/* (No counters here: this object carries only the VLAN map. The eBPF
 * datapath's from-netdev/to-netdev call the same helpers and count their
 * drops as DROP_VLAN_FOREIGN / DROP_VLAN_PUSH_FAILED.) */

char _license[] SEC("license") = "GPL";
