/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Every verdict has a reason code; counters and events carry it. Codes
 * below 128 are forwarding decisions, 128 and up are drops. Mirrored in
 * crates/bpf/src/reason.rs. */
#pragma once

#define REASON_TO_STACK          1  /* not ours to forward: host stack */
#define REASON_PEER_LOCAL        2  /* same node: bpf_redirect_peer into the pod */
#define REASON_HOSTVETH_LOCAL    3  /* same node, no redirect_peer: to the pod's host veth */
#define REASON_NEIGH_REMOTE      4  /* other node: bpf_fib_lookup + bpf_redirect_neigh */
#define REASON_PEER_FROM_NETDEV  5  /* from the uplink: bpf_redirect_peer into the pod */
#define REASON_HOSTVETH_FROM_NETDEV 6 /* from the uplink, no redirect_peer */
#define REASON_FIB_TO_STACK      7  /* FIB says local, blackhole or unreachable: host stack decides */
#define REASON_TTL_TO_STACK      8  /* TTL would expire: host stack sends ICMP */
#define REASON_SVC_DNAT          9  /* service VIP translated to a backend (new connection) */
#define REASON_SVC_CT            10 /* service VIP translated by an existing connection */
#define REASON_SVC_REVNAT        11 /* a backend's reply translated back to the VIP */
#define REASON_SVC_NO_BACKEND    12 /* service with no ready backend: host stack rejects */
#define REASON_SVC_MASQUERADE    13 /* external connection to a backend on another node: stack forwards, masqueraded */
#define REASON_SOCK_LB           14 /* a node process's socket connected straight to a backend */
#define REASON_SVC_HAIRPIN       15 /* a pod reached itself through a service: source NATed to 169.254.42.1 */
#define REASON_ICMP_REVNAT       16 /* an ICMP error about a translated connection, translated back */
#define REASON_HOSTPORT_TO_STACK 17 /* reply of a hostPort connection: the host's NAT translates it */
#define REASON_LOCAL_LINK        18 /* ARP or IPv6 link-local from a pod: the host stack answers */
#define REASON_CT_INSERT_FAILED  19 /* conntrack map refused an entry (full): forwarded untracked, reported */
#define REASON_MTU_TO_STACK      20 /* too big for the egress (a GSO packet's segments, say): host stack sends ICMP */
#define REASON_IPIP_ENCAP        21 /* other node over IP-in-IP: outer node-to-node header added in eBPF, out of the uplink */
#define REASON_IPIP_DECAP        22 /* IP-in-IP from a known node: outer header removed in eBPF */
#define REASON_VLAN_PORT         23 /* macvlan mode: a VLAN's frame from the uplink, untagged, into its macvlan port */
#define REASON_SVC_VETH          24 /* macvlan mode: from a pod's service veth to the host stack (a translated connection is masqueraded there) */

#define REASON_MAX_FORWARD       127

#define DROP_SOURCE_SPOOF      128  /* pod sent from an address that is not its own */
#define DROP_MALFORMED         129  /* truncated or invalid IPv4 header */
#define DROP_REDIRECT_FAILED   130  /* the redirect helper refused */
#define DROP_NAT_FAILED        131  /* service translation could not rewrite the packet */
#define DROP_UNKNOWN_ENDPOINT  132  /* from a host veth the agent has not programmed */
#define DROP_LB_INCONSISTENT   133  /* service has backends but a slot is missing: the map is being rewritten or corrupt */
#define DROP_ETHERTYPE         134  /* a pod sent neither IPv4, IPv6 nor ARP */
#define DROP_ARP_SPOOF         135  /* a pod's ARP claims an address that is not its own */
#define DROP_IPIP_UNKNOWN_PEER 136  /* IP-in-IP whose outer source is not a node of the cluster */
#define DROP_IPIP_FRAGMENT     137  /* a fragment of an IP-in-IP packet (strait never sends them) */
#define DROP_TUNNEL_NO_ROUTE   138  /* no route to the peer node for the outer header, or no node behind the route */
#define DROP_ENCAP_FAILED      139  /* the kernel refused to make room for the outer header */
#define DROP_POLICY_INGRESS    140  /* NetworkPolicy: the destination is isolated for ingress and no rule admits this */
#define DROP_POLICY_EGRESS     141  /* NetworkPolicy: the source is isolated for egress and no rule admits this */
#define DROP_VLAN_FOREIGN      142  /* a tagged frame none of whose addresses belongs to its VLAN (or to a VLAN this node carries) */
#define DROP_VLAN_PUSH_FAILED  143  /* the kernel refused to push a VLAN tag */

#define REASON_COUNT           256
