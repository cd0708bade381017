/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* VLAN tagging for the kernel datapath (lib/vlan.h has the design):
 *   vlan_egress   tc egress of the uplink: push the tag of the packet's
 *                 subnet;
 *   vlan_ingress  tc ingress of the uplink: pop a tag of a VLAN the
 *                 packet's addresses belong to, drop other tagged frames.
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
	return vlan_untag(skb) == VLAN_PASS ? TC_ACT_OK : TC_ACT_SHOT;
}
/* (No counters here: this object carries only the VLAN map. The eBPF
 * datapath's from-netdev/to-netdev call the same helpers and count their
 * drops as DROP_VLAN_FOREIGN / DROP_VLAN_PUSH_FAILED.) */

char _license[] SEC("license") = "GPL";
