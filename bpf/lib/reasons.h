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

#define REASON_MAX_FORWARD       127

#define DROP_SOURCE_SPOOF      128  /* pod sent from an address that is not its own */
#define DROP_MALFORMED         129  /* truncated or invalid IPv4 header */
#define DROP_REDIRECT_FAILED   130  /* the redirect helper refused */
#define DROP_NAT_FAILED        131  /* service translation could not rewrite the packet */

#define REASON_COUNT           256
