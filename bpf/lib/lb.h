/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Service load balancing at the client's host veth: a packet to a service
 * VIP gets a backend (by connection, session affinity, or at random among
 * the active backends), is DNATed, and the connection is tracked so that
 * the backend's replies are translated back to the VIP before they reach
 * the client. The VIP is therefore only ever seen on the client's side.
 * Also here: hairpin (a pod picked as the backend of its own connection),
 * fragments (later fragments take the first one's ports) and ICMP errors
 * about translated connections (translated back, so PMTU discovery and
 * port-unreachable reach the client's socket). */
#pragma once
#include "conntrack.h"
#include "policy.h"

#define IP_DADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define IP_SADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))

/* Rewrite the destination (dst=1) or source (dst=0) address, and the port
 * when it changes, with the IPv4 and TCP/UDP checksums. A later fragment
 * has no L4 header: only its address changes (the first fragment carried
 * the L4 checksum update). A UDP checksum of 0 (none) stays 0. Invalidates
 * packet pointers. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct pkt *p, int dst,
				       __u32 old_ip, __u32 new_ip, __u16 old_port, __u16 new_port)
{
	__u8 proto = p->flow.proto;
	__u32 ip_off = dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	if (p->frag != FRAG_LATER) {
		__u32 csum_off = p->l4off + (proto == IPPROTO_TCP ? 16 : 6);
		__u32 port_off = p->l4off + (dst ? 2 : 0);
		__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
		if (bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip, BPF_F_PSEUDO_HDR | mangled | 4) < 0)
			return -1;
		if (old_port != new_port) {
			if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | 2) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
				return -1;
		}
	}
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, 4) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ip_off, &new_ip, 4, 0) < 0)
		return -1;
	return 0;
}

#define LB_NONE 0         /* not a service, not a tracked reply */
#define LB_DONE 1         /* translated; re-parse the packet */
#define LB_NO_BACKEND 2   /* the service has no active backend */
#define LB_ERROR 3        /* the packet could not be rewritten */
#define LB_INCONSISTENT 4 /* the service says it has backends, a slot is missing */

/* Choose a backend for a new connection. */
static __always_inline struct lb_val *lb_pick(struct lb_key *k, struct lb_val *svc, __u32 client, __u64 now)
{
	struct affinity_key ak = { .client = client, .svc_id = svc->svc_id };
	if (svc->affinity_secs) {
		struct affinity_val *a = bpf_map_lookup_elem(&strait_affinity, &ak);
		if (a && now - a->last_used < (__u64)svc->affinity_secs * NSEC) {
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
	if (p->frag == FRAG_LATER && !p->frag_known)
		return LB_NONE; /* first fragment not seen: nothing to go by */
	struct lb_key k = { .addr = f.daddr, .port = bpf_htons(f.dport), .slot = 0, .proto = f.proto };
	struct lb_val *svc = bpf_map_lookup_elem(&strait_lb, &k);
	if (!svc)
		return LB_NONE;
	__u64 now = bpf_ktime_get_ns();
	struct ct_key ck = { .saddr = f.saddr, .daddr = f.daddr, .sport = bpf_htons(f.sport), .dport = bpf_htons(f.dport), .proto = f.proto };
	int syn = (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	struct ct_val *ct = ct_lookup(&strait_ct, &ck, now);
	/* A SYN on an established or closing connection's tuple is a reused
	 * client port: a new connection, with a fresh pick (so a removed
	 * backend never gets a new connection). A SYN while the handshake is
	 * still open is a retransmission: it keeps its backend. */
	if (ct && syn && ct->state != CT_SYN_SENT)
		ct = 0;
	__u32 bip;
	__u16 bport;
	__u8 flags;
	if (ct) {
		bip = ct->addr;
		bport = ct->port;
		flags = ct->flags;
		ct_update(skb, prog, &f, &ck, ct, p->tcp_flags, now);
		count(REASON_SVC_CT, skb->len);
	} else {
		if (svc->count == 0)
			return LB_NO_BACKEND;
		struct lb_val *b = lb_pick(&k, svc, f.saddr, now);
		if (!b)
			return LB_INCONSISTENT;
		bip = b->backend_ip;
		bport = b->backend_port;
		flags = bip == f.saddr ? CT_F_HAIRPIN : 0;
		__u8 state = f.proto != IPPROTO_TCP ? CT_UDP : syn ? CT_SYN_SENT : CT_ESTABLISHED;
		struct ct_val fwd = { .addr = bip, .port = bport, .state = state, .flags = flags, .last_seen = now, .svc_id = svc->svc_id };
		ct_create(skb, prog, &f, &ck, &fwd);
		count(REASON_SVC_DNAT, skb->len);
		if (trace_enabled()) {
			struct flow t = f;
			t.daddr = bip;
			t.dport = bpf_ntohs(bport);
			emit(skb, EVENT_TRACE, REASON_SVC_DNAT, prog, &t, 0);
		}
	}
	if (nat_rewrite(skb, p, 1, f.daddr, bip, ck.dport, bport) < 0)
		return LB_ERROR;
	if (flags & CT_F_HAIRPIN) {
		/* The pod would drop a packet from its own address: it comes
		 * from the hairpin address instead, and the reply goes back to
		 * it, through this veth, where the reverse entry restores both. */
		if (nat_rewrite(skb, p, 0, f.saddr, HAIRPIN_IP4, ck.sport, ck.sport) < 0)
			return LB_ERROR;
		count(REASON_SVC_HAIRPIN, skb->len);
	}
	return LB_DONE;
}

/* 16-bit one's complement checksum after `from` (4 bytes) became `to`. */
static __always_inline __u16 csum_update4(__u16 check, __u32 from, __u32 to)
{
	__u32 s = bpf_csum_diff(&from, 4, &to, 4, (__u16)~check);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* Store 4 bytes inside an ICMP error's quoted packet at `off`, keeping the
 * ICMP checksum (at icmp_off + 2) right. */
static __always_inline int icmp_store4(struct __sk_buff *skb, __u32 icmp_off, __u32 off, __u32 from, __u32 to)
{
	if (bpf_l4_csum_replace(skb, icmp_off + 2, from, to, 4) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, 4, 0);
}

/* An ICMP error (unreachable, time exceeded, parameter problem) quoting a
 * packet of a translated connection, client -> backend: the quote becomes
 * client -> frontend, and an error sent by the backend itself comes from
 * the frontend, as the client's socket expects. */
static __always_inline int lb_icmp_revnat(struct __sk_buff *skb, struct pkt *p)
{
	__u32 icmp_off = p->l4off;
	__u8 type;
	if (p->frag != FRAG_NONE || bpf_skb_load_bytes(skb, icmp_off, &type, 1) < 0)
		return LB_NONE;
	if (type != 3 && type != 11 && type != 12)
		return LB_NONE;
	__u32 in_off = icmp_off + 8;
	struct iphdr in;
	if (bpf_skb_load_bytes(skb, in_off, &in, sizeof(in)) < 0)
		return LB_NONE;
	if (in.ihl < 5 || (in.protocol != IPPROTO_TCP && in.protocol != IPPROTO_UDP))
		return LB_NONE;
	__u32 in_l4 = in_off + in.ihl * 4;
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, in_l4, ports, 4) < 0)
		return LB_NONE;
	struct ct_key rk = { .saddr = in.daddr, .daddr = in.saddr, .sport = ports[1], .dport = ports[0], .proto = in.protocol };
	struct ct_val *rev = ct_lookup(&strait_ct_rev, &rk, bpf_ktime_get_ns());
	if (!rev)
		return LB_NONE;
	__u32 vip = rev->addr;
	__u16 vport = rev->port;
	__u8 hairpin = rev->flags & CT_F_HAIRPIN;
	__u32 client = hairpin ? rk.saddr : in.saddr;
	__u32 old_ports, new_ports;
	__builtin_memcpy(&old_ports, ports, 4);
	ports[1] = vport;
	__builtin_memcpy(&new_ports, ports, 4);
	/* Quoted header: daddr backend -> frontend (and saddr hairpin ->
	 * client), its checksum, then the quoted destination port. */
	__u16 check = csum_update4(in.check, in.daddr, vip);
	if (hairpin)
		check = csum_update4(check, in.saddr, client);
	if (icmp_store4(skb, icmp_off, in_off + __builtin_offsetof(struct iphdr, daddr), in.daddr, vip) < 0)
		return LB_ERROR;
	if (hairpin && icmp_store4(skb, icmp_off, in_off + __builtin_offsetof(struct iphdr, saddr), in.saddr, client) < 0)
		return LB_ERROR;
	if (bpf_l4_csum_replace(skb, icmp_off + 2, in.check, check, 2) < 0 ||
	    bpf_skb_store_bytes(skb, in_off + __builtin_offsetof(struct iphdr, check), &check, 2, 0) < 0)
		return LB_ERROR;
	if (bpf_l4_csum_replace(skb, icmp_off + 2, old_ports, new_ports, 4) < 0 ||
	    bpf_skb_store_bytes(skb, in_l4, &new_ports, 4, 0) < 0)
		return LB_ERROR;
	/* Outer header: from the backend -> from the frontend; to the
	 * hairpin address -> to the client. ICMP has no pseudo-header. */
	struct flow f = p->flow;
	if (f.saddr == rk.saddr) {
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, f.saddr, vip, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SADDR_OFF, &vip, 4, 0) < 0)
			return LB_ERROR;
	}
	if (hairpin && f.daddr == HAIRPIN_IP4) {
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, f.daddr, client, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_DADDR_OFF, &client, 4, 0) < 0)
			return LB_ERROR;
	}
	count(REASON_ICMP_REVNAT, skb->len);
	return LB_DONE;
}

/* Reply side: a backend's reply to a translated connection gets the VIP
 * back as its source (and, hairpinned, its client back as destination). */
static __always_inline int lb_revnat(struct __sk_buff *skb, struct pkt *p, __u8 prog)
{
	struct flow f = p->flow;
	if (f.proto == IPPROTO_ICMP)
		return lb_icmp_revnat(skb, p);
	if (f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP)
		return LB_NONE;
	if (p->frag == FRAG_LATER && !p->frag_known)
		return LB_NONE;
	struct ct_key rk = { .saddr = f.saddr, .daddr = f.daddr, .sport = bpf_htons(f.sport), .dport = bpf_htons(f.dport), .proto = f.proto };
	__u64 now = bpf_ktime_get_ns();
	struct ct_val *rev = ct_lookup(&strait_ct_rev, &rk, now);
	if (!rev)
		return LB_NONE;
	__u32 vip = rev->addr;
	__u16 vport = rev->port;
	__u8 hairpin = rev->flags & CT_F_HAIRPIN;
	ct_update(skb, prog, &f, &rk, rev, p->tcp_flags, now);
	if (nat_rewrite(skb, p, 0, f.saddr, vip, rk.sport, vport) < 0)
		return LB_ERROR;
	if (hairpin && nat_rewrite(skb, p, 1, f.daddr, f.saddr, rk.dport, rk.dport) < 0)
		return LB_ERROR;
	count(REASON_SVC_REVNAT, skb->len);
	return LB_DONE;
}

/* A client opens a direct connection (a SYN not to a service) on a tuple
 * whose reply would match a reverse-NAT entry left by an earlier service
 * connection from the same port to the same backend: that entry is stale,
 * and applying it would hide the direct connection's replies. Forget it. */
static __always_inline void lb_forget_direct(struct pkt *p)
{
	struct flow f = p->flow;
	if (f.proto != IPPROTO_TCP || (p->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN)
		return;
	struct ct_key rk = { .saddr = f.daddr, .daddr = f.saddr, .sport = bpf_htons(f.dport), .dport = bpf_htons(f.sport), .proto = f.proto };
	bpf_map_delete_elem(&strait_ct_rev, &rk);
}
