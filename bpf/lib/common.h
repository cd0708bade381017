/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Types shared by every strait BPF program and mirrored in Rust
 * (crates/bpf/src/maps.rs). Keep the two in sync: the Rust side has size
 * assertions for each. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif

/* A pod on this node, keyed by its IPv4 address (network order). */
struct endpoint {
	__u32 ifindex;      /* host end of the pod's veth */
	__u8 pod_mac[6];    /* the pod's eth0 */
	__u8 host_mac[6];   /* the host end */
	__u32 flags;
};

/* Layout version of every pinned map. Bump it whenever a map's key or
 * value changes meaning or size, and teach crates/bpf/src/upgrade.rs to
 * migrate from the version before. The maps live in <pin dir>/v<N>/. */
#define STRAIT_MAPS_VERSION 2

/* Host veth ifindex -> the only source addresses its pod may use, one per
 * family (all zeros: the pod has no address of that family). */
struct lxc {
	__u32 ip4;
	__u32 flags;        /* LXC_F_* */
	__u8 ip6[16];
};

#define LXC_F_HOSTPORTS 1  /* the pod publishes hostPorts (strait_hostport has them) */
#define LXC_F_SVC_VETH 2   /* macvlan mode: a pod's service veth (bifrXXX), not its data path */

/* Per-reason counters (per CPU). */
struct metric {
	__u64 packets;
	__u64 bytes;
};

/* Runtime switches, in the one-entry strait_config array. */
#define CFG_TRACE (1U << 0)  /* emit trace events for forwarded packets */

struct config {
	__u32 flags;
	__u32 _pad;
};

/* One event on the strait_events ring buffer. */
struct event {
	__u8 kind;          /* EVENT_DROP or EVENT_TRACE */
	__u8 reason;        /* a REASON_* below */
	__u16 len;          /* packet length */
	__u32 ifindex;      /* where the program ran */
	__u32 out_ifindex;  /* where the packet was sent, if anywhere */
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 prog;          /* PROG_* */
	__u16 _pad;
	__u64 ts;           /* bpf_ktime_get_ns */
};

#define EVENT_DROP 1
#define EVENT_TRACE 2
#define EVENT_WARN 3  /* not a drop, but always reported (a full map) */

#define PROG_FROM_CONTAINER 1
#define PROG_FROM_NETDEV 2
#define PROG_TO_NETDEV 3
#define PROG_TUNNEL_ENCAP 4
#define PROG_TUNNEL_DECAP 5
#define PROG_TO_CONTAINER 6

/* skb->mark bit that asks the agent's nftables rule to masquerade. */
#define MARK_MASQUERADE 0x00005a00

/* Services. A frontend (VIP, port, protocol) has a master entry at slot 0
 * (backend count, service id, affinity) and its active backends at slots
 * 1..count. Ports are in network byte order, as in the packet. */
struct lb_key {
	__u32 addr;
	__u16 port;
	__u16 slot;
	__u8 proto;
	__u8 _pad[3];
};

struct lb_val {
	__u32 backend_ip;     /* slots >= 1 */
	__u16 backend_port;   /* slots >= 1, network order */
	__u16 count;          /* slot 0: active backends; slots >= 1: 0 active, 1 terminating */
	__u32 svc_id;         /* slot 0: for affinity */
	__u32 affinity_secs;  /* slot 0: 0 = no session affinity */
};

/* Connection tracking for translated flows (IPv4; an IPv6 twin of these
 * maps will have 16-byte addresses and the same logic). Every connection
 * has two entries, each enough to rebuild the other:
 *   forward  client tuple to the frontend  -> the chosen backend;
 *   reverse  the backend's reply tuple     -> the frontend to put back.
 * For a hairpin connection (a pod reaching itself through a service) the
 * client is also SNATed to HAIRPIN_IP4, so the reverse key's daddr is
 * HAIRPIN_IP4 and CT_F_HAIRPIN is set in both. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 _pad[3];
};

struct ct_val {
	__u32 addr;         /* forward: backend; reverse: frontend */
	__u16 port;         /* network order */
	__u8 state;         /* CT_* below */
	__u8 flags;         /* CT_F_* below */
	__u64 last_seen;    /* bpf_ktime_get_ns */
	__u32 svc_id;       /* the service, for flushing and `strait lb ct` */
	__u32 _pad;
};

#define CT_SYN_SENT 1     /* TCP: SYN seen, handshake not finished */
#define CT_ESTABLISHED 2  /* TCP: handshake finished */
#define CT_CLOSING 3      /* TCP: FIN or RST seen */
#define CT_UDP 4          /* UDP: no states */

#define CT_F_REVERSE 1    /* this is the reverse entry */
#define CT_F_HAIRPIN 2    /* client and backend are one pod: source NATed to HAIRPIN_IP4 */

/* The source a hairpinned connection's packets carry into the pod (as
 * Cilium's IPV4_LOOPBACK): link-local, never a real peer. Network order. */
#define HAIRPIN_IP4 bpf_htonl(0xa9fe2a01) /* 169.254.42.1 */

/* A pod port published as a hostPort (the portmap plugin DNATs to it in
 * the host's netfilter): its replies must pass the host stack to be
 * translated back, so from-container does not fast-path them. */
struct hostport_key {
	__u32 addr;   /* the pod, network order */
	__u16 port;   /* the container port, network order */
	__u8 proto;
	__u8 _pad;
};

/* Non-first IPv4 fragments carry no ports: the first fragment records them
 * under (saddr, daddr, IP id, protocol) so the rest translate the same. */
struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 _pad;
};

struct frag_val {
	__u16 sport;  /* host order, as struct flow */
	__u16 dport;
};

struct affinity_key {
	__u32 client;
	__u32 svc_id;
};

struct affinity_val {
	__u32 backend_ip;
	__u16 backend_port;
	__u16 _pad;
	__u64 last_used;
};

/* Socket-level load balancing: what a socket was translated from, so that
 * recvmsg and getpeername show the service address, not the backend. */
struct sock_rev_key {
	__u64 cookie;
	__u32 addr;   /* the backend, as the socket talks to it */
	__u16 port;
	__u16 _pad;
};

struct sock_rev_val {
	__u32 addr;   /* the service frontend */
	__u16 port;
	__u16 _pad;
};

/* An address of either family as map keys hold it: IPv6 as is, IPv4 as
 * an IPv4-mapped IPv6 address (::ffff:a.b.c.d). */
struct addr_key {
	__u8 addr[16];
};

/* The IP-in-IP tunnel of this node, in the one-entry strait_tunnel array.
 * ifindex 0: the node does not run IP-in-IP (nothing is encapsulated, and
 * IP-in-IP packets are left to the stack). */
struct tunnel_cfg {
	__u32 ifindex;        /* the tunnel stand-in device routes point at */
	__u32 uplink;         /* where the outer packets leave */
	__u32 local4;         /* outer source: this node's IPv4 (network order) */
	__u32 flags;
	__u8 local6[16];      /* for an IPv6 underlay: unused yet */
};

/* A node IP-in-IP is accepted from (strait_tunnel_peers value). */
struct tunnel_peer {
	__u32 flags;
	__u32 _pad;
};
