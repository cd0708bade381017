/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Connection tracking for service translation.
 *
 * TCP entries follow the connection (SYN_SENT -> ESTABLISHED -> CLOSING)
 * and expire after a per-state idle time; UDP entries after one idle time.
 * An expired entry counts as absent: a reused client port gets a fresh
 * backend. The two entries of a connection are kept as a pair: when one
 * is refreshed (at most once a second) the other is refreshed too, and
 * rebuilt if the LRU evicted it. The agent's conntrack reconciler deletes
 * expired pairs, flushes pairs whose backend was removed, and reports how
 * full the maps are. */
#pragma once
#include "fwd.h"

#define NSEC 1000000000ULL
#define CT_SYN_IDLE_NS (60ULL * NSEC)
#define CT_EST_IDLE_NS (6ULL * 3600 * NSEC)
#define CT_CLOSING_IDLE_NS (10ULL * NSEC)
#define CT_UDP_IDLE_NS (120ULL * NSEC)

static __always_inline __u64 ct_idle(__u8 state)
{
	switch (state) {
	case CT_SYN_SENT:
		return CT_SYN_IDLE_NS;
	case CT_ESTABLISHED:
		return CT_EST_IDLE_NS;
	case CT_CLOSING:
		return CT_CLOSING_IDLE_NS;
	default:
		return CT_UDP_IDLE_NS;
	}
}

/* Look up an entry; NULL when absent or expired. */
static __always_inline struct ct_val *ct_lookup(void *map, struct ct_key *k, __u64 now)
{
	struct ct_val *v = bpf_map_lookup_elem(map, k);
	if (!v)
		return 0;
	if (now - v->last_seen > ct_idle(v->state))
		return 0;
	return v;
}

/* The state after a packet with `tcp_flags` (0 for UDP). */
static __always_inline __u8 ct_next_state(__u8 state, __u8 proto, __u8 tcp_flags, int forward)
{
	if (proto != IPPROTO_TCP)
		return CT_UDP;
	if (tcp_flags & (TCP_FIN | TCP_RST))
		return CT_CLOSING;
	/* The client's first ACK without SYN ends the handshake. */
	if (state == CT_SYN_SENT && forward && (tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_ACK)
		return CT_ESTABLISHED;
	return state;
}

/* A connection's other entry, rebuilt from one entry and its key. */
static __always_inline void ct_twin(const struct ct_key *k, const struct ct_val *v,
				    struct ct_key *tk, struct ct_val *tv)
{
	tk->proto = k->proto;
	tk->_pad[0] = tk->_pad[1] = tk->_pad[2] = 0;
	tv->state = v->state;
	tv->last_seen = v->last_seen;
	tv->svc_id = v->svc_id;
	tv->_pad = 0;
	if (v->flags & CT_F_REVERSE) {
		/* reverse {backend -> client}: forward {client -> frontend} */
		tk->saddr = (v->flags & CT_F_HAIRPIN) ? k->saddr : k->daddr;
		tk->daddr = v->addr;
		tk->sport = k->dport;
		tk->dport = v->port;
		tv->addr = k->saddr;
		tv->port = k->sport;
		tv->flags = v->flags & ~CT_F_REVERSE;
	} else {
		/* forward {client -> frontend}: reverse {backend -> client} */
		tk->saddr = v->addr;
		tk->daddr = (v->flags & CT_F_HAIRPIN) ? HAIRPIN_IP4 : k->saddr;
		tk->sport = v->port;
		tk->dport = k->sport;
		tv->addr = k->daddr;
		tv->port = k->dport;
		tv->flags = v->flags | CT_F_REVERSE;
	}
}

/* A map insert failed (an LRU map only fails under extreme pressure):
 * counted and reported, the packet still goes on untracked. */
static __always_inline void ct_insert_failed(struct __sk_buff *skb, __u8 prog, const struct flow *f)
{
	count(REASON_CT_INSERT_FAILED, skb->len);
	emit(skb, EVENT_WARN, REASON_CT_INSERT_FAILED, prog, f, 0);
}

/* Insert a new connection: both entries. */
static __always_inline void ct_create(struct __sk_buff *skb, __u8 prog, const struct flow *f,
				      struct ct_key *k, struct ct_val *v)
{
	struct ct_key tk;
	struct ct_val tv;
	ct_twin(k, v, &tk, &tv);
	void *map = (v->flags & CT_F_REVERSE) ? (void *)&strait_ct_rev : (void *)&strait_ct;
	void *tmap = (v->flags & CT_F_REVERSE) ? (void *)&strait_ct : (void *)&strait_ct_rev;
	if (bpf_map_update_elem(map, k, v, BPF_ANY) < 0 || bpf_map_update_elem(tmap, &tk, &tv, BPF_ANY) < 0)
		ct_insert_failed(skb, prog, f);
}

/* A packet of a tracked connection: advance the state, refresh both
 * entries (at most once a second, or on a state change), and rebuild the
 * other entry when it is missing. */
static __always_inline void ct_update(struct __sk_buff *skb, __u8 prog, const struct flow *f,
				      struct ct_key *k, struct ct_val *v, __u8 tcp_flags, __u64 now)
{
	int forward = !(v->flags & CT_F_REVERSE);
	__u8 next = ct_next_state(v->state, k->proto, tcp_flags, forward);
	if (next == v->state && now - v->last_seen < NSEC)
		return;
	v->state = next;
	v->last_seen = now;
	struct ct_key tk;
	struct ct_val tv;
	ct_twin(k, v, &tk, &tv);
	void *tmap = forward ? (void *)&strait_ct_rev : (void *)&strait_ct;
	struct ct_val *t = bpf_map_lookup_elem(tmap, &tk);
	if (t) {
		t->state = next;
		t->last_seen = now;
	} else if (bpf_map_update_elem(tmap, &tk, &tv, BPF_ANY) < 0) {
		ct_insert_failed(skb, prog, f);
	}
}
