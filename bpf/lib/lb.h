/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Service load balancing at the client's host veth: a packet to a service
 * VIP gets a backend (by connection, session affinity, or at random among
 * the active backends), is DNATed, and the connection is tracked so that
 * the backend's replies are translated back to the VIP before they reach
 * the client. The VIP is therefore only ever seen on the client's side. */
#pragma once
#include "conntrack.h"
#include "fwd.h"

#define IP_DADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define IP_SADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))

/* Rewrite the destination (dst=1) or source (dst=0) address and port,
 * with the IPv4 and TCP/UDP checksums. Invalidates packet pointers. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, __u32 l4off, __u8 proto, int dst,
				       __u32 old_ip, __u32 new_ip, __u16 old_port, __u16 new_port)
{
	__u32 csum_off = l4off + (proto == IPPROTO_TCP ? 16 : 6);
	__u32 port_off = l4off + (dst ? 2 : 0);
	__u32 ip_off = dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip, BPF_F_PSEUDO_HDR | mangled | 4) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, 4) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ip_off, &new_ip, 4, 0) < 0)
		return -1;
	return 0;
}

static __always_inline __u32 l4_offset(struct pkt *p)
{
	return ETH_HLEN + p->ip->ihl * 4;
}

#define LB_NONE 0      /* not a service, not a tracked reply */
#define LB_DONE 1      /* translated; re-parse the packet */
#define LB_NO_BACKEND 2
#define LB_ERROR 3

/* Choose a backend for a new connection. */
static __always_inline struct lb_val *lb_pick(struct lb_key *k, struct lb_val *svc, __u32 client, __u64 now)
{
	struct affinity_key ak = { .client = client, .svc_id = svc->svc_id };
	if (svc->affinity_secs) {
		struct affinity_val *a = bpf_map_lookup_elem(&strait_affinity, &ak);
		if (a && now - a->last_used < (__u64)svc->affinity_secs * 1000000000ULL) {
			/* Still an active backend? Scan the (few) slots. */
			for (__u16 i = 1; i <= 64; i++) {
				if (i > svc->count)
					break;
				k->slot = i;
				struct lb_val *b = bpf_map_lookup_elem(&strait_lb, k);
				if (b && b->backend_ip == a->backend_ip && b->backend_port == a->backend_port) {
					a->last_used = now;
					return b;
				}
			}
		}
	}
	k->slot = (bpf_get_prandom_u32() % svc->count) + 1;
	struct lb_val *b = bpf_map_lookup_elem(&strait_lb, k);
	if (b && svc->affinity_secs) {
		struct affinity_val av = { .backend_ip = b->backend_ip, .backend_port = b->backend_port, .last_used = now };
		bpf_map_update_elem(&strait_affinity, &ak, &av, BPF_ANY);
	}
	return b;
}

/* Client side: translate a packet to a service VIP. */
static __always_inline int lb_dnat(struct __sk_buff *skb, struct pkt *p, __u8 prog)
{
	struct flow f = p->flow;
	if (f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP)
		return LB_NONE;
	struct lb_key k = { .addr = f.daddr, .port = bpf_htons(f.dport), .slot = 0, .proto = f.proto };
	struct lb_val *svc = bpf_map_lookup_elem(&strait_lb, &k);
	if (!svc)
		return LB_NONE;
	__u64 now = bpf_ktime_get_ns();
	struct ct_key ck = { .saddr = f.saddr, .daddr = f.daddr, .sport = bpf_htons(f.sport), .dport = bpf_htons(f.dport), .proto = f.proto };
	__u32 bip;
	__u16 bport;
	/* A TCP SYN starts a new connection even when an old entry for the
	 * same tuple lingers (a reused client port): it gets a fresh pick, so a
	 * removed backend never receives a new connection. */
	__u8 tcp_flags = 0;
	if (f.proto == IPPROTO_TCP)
		bpf_skb_load_bytes(skb, l4_offset(p) + 13, &tcp_flags, 1);
	int syn = (tcp_flags & 0x12) == 0x02; /* SYN without ACK */
	struct ct_val *ct = syn ? 0 : ct_get(&strait_ct, &ck, now);
	if (ct) {
		bip = ct->addr;
		bport = ct->port;
		count(REASON_SVC_CT, skb->len);
	} else {
		if (svc->count == 0)
			return LB_NO_BACKEND;
		struct lb_val *b = lb_pick(&k, svc, f.saddr, now);
		if (!b)
			return LB_NO_BACKEND;
		bip = b->backend_ip;
		bport = b->backend_port;
		struct ct_val fwd = { .addr = bip, .port = bport, .last_seen = now };
		bpf_map_update_elem(&strait_ct, &ck, &fwd, BPF_ANY);
		struct ct_key rk = { .saddr = bip, .daddr = f.saddr, .sport = bport, .dport = ck.sport, .proto = f.proto };
		struct ct_val rev = { .addr = f.daddr, .port = ck.dport, .last_seen = now };
		bpf_map_update_elem(&strait_ct_rev, &rk, &rev, BPF_ANY);
		count(REASON_SVC_DNAT, skb->len);
		if (trace_enabled()) {
			struct flow t = f;
			t.daddr = bip;
			t.dport = bpf_ntohs(bport);
			emit(skb, EVENT_TRACE, REASON_SVC_DNAT, prog, &t, 0);
		}
	}
	if (nat_rewrite(skb, l4_offset(p), f.proto, 1, f.daddr, bip, ck.dport, bport) < 0)
		return LB_ERROR;
	return LB_DONE;
}

/* Reply side: a backend's reply to a translated connection gets the VIP
 * back as its source. */
static __always_inline int lb_revnat(struct __sk_buff *skb, struct pkt *p)
{
	struct flow f = p->flow;
	if (f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP)
		return LB_NONE;
	struct ct_key rk = { .saddr = f.saddr, .daddr = f.daddr, .sport = bpf_htons(f.sport), .dport = bpf_htons(f.dport), .proto = f.proto };
	struct ct_val *rev = ct_get(&strait_ct_rev, &rk, bpf_ktime_get_ns());
	if (!rev)
		return LB_NONE;
	if (nat_rewrite(skb, l4_offset(p), f.proto, 0, f.saddr, rev->addr, rk.sport, rev->port) < 0)
		return LB_ERROR;
	count(REASON_SVC_REVNAT, skb->len);
	return LB_DONE;
}

/* A client opens a direct connection (a SYN not to a service) on a tuple
 * whose reply would match a reverse-NAT entry left by an earlier service
 * connection from the same port to the same backend: that entry is stale,
 * and applying it would hide the direct connection's replies. Forget it. */
static __always_inline void lb_forget_direct(struct __sk_buff *skb, struct pkt *p)
{
	struct flow f = p->flow;
	if (f.proto != IPPROTO_TCP)
		return;
	__u8 flags = 0;
	bpf_skb_load_bytes(skb, l4_offset(p) + 13, &flags, 1);
	if ((flags & 0x12) != 0x02)
		return;
	struct ct_key rk = { .saddr = f.daddr, .daddr = f.saddr, .sport = bpf_htons(f.dport), .dport = bpf_htons(f.sport), .proto = f.proto };
	bpf_map_delete_elem(&strait_ct_rev, &rk);
}
