/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Counting and events. Every verdict leaves through verdict() or drop(),
 * so every packet is counted under a reason and every drop is reported. */
#pragma once
#include "maps_core.h"

struct flow {
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u8 proto;
};

static __always_inline void count(__u32 reason, __u32 len)
{
	struct metric *m = bpf_map_lookup_elem(&strait_metrics, &reason);
	if (m) {
		m->packets++;
		m->bytes += len;
	}
}

static __always_inline int trace_enabled(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&strait_config, &zero);
	return c && (c->flags & CFG_TRACE);
}

static __always_inline void emit(struct __sk_buff *skb, __u8 kind, __u8 reason, __u8 prog,
				 const struct flow *f, __u32 out_ifindex)
{
	struct event *e = bpf_ringbuf_reserve(&strait_events, sizeof(*e), 0);
	if (!e)
		return;
	e->kind = kind;
	e->reason = reason;
	e->len = skb->len > 0xffff ? 0xffff : skb->len;
	e->ifindex = skb->ingress_ifindex;
	e->out_ifindex = out_ifindex;
	e->saddr = f->saddr;
	e->daddr = f->daddr;
	e->sport = f->sport;
	e->dport = f->dport;
	e->proto = f->proto;
	e->prog = prog;
	e->_pad = 0;
	e->ts = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, 0);
}

/* A forwarding decision: count it, trace it if asked, return `ret`. */
static __always_inline int verdict(struct __sk_buff *skb, __u8 reason, __u8 prog,
				   const struct flow *f, __u32 out_ifindex, int ret)
{
	count(reason, skb->len);
	if (trace_enabled())
		emit(skb, EVENT_TRACE, reason, prog, f, out_ifindex);
	return ret;
}

/* The one exit for drops: counted and always reported. */
static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 prog, const struct flow *f)
{
	count(reason, skb->len);
	emit(skb, EVENT_DROP, reason, prog, f, 0);
	return TC_ACT_SHOT;
}
