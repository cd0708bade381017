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

/* Host veth ifindex -> the only source address its pod may use. */
struct lxc {
	__u32 ip;
	__u32 flags;
};

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

#define PROG_FROM_CONTAINER 1
#define PROG_FROM_NETDEV 2
#define PROG_TO_NETDEV 3

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

/* Connection tracking for translated flows. The forward entry is keyed by
 * the client's original tuple (to the VIP) and holds the chosen backend;
 * the reverse entry is keyed by the backend's reply tuple and holds the
 * VIP to put back. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 _pad[3];
};

struct ct_val {
	__u32 addr;
	__u16 port;
	__u16 _pad;
	__u64 last_seen;
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
