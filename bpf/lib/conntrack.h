/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Connection tracking for service translation (LRU maps, so the table never
 * fills up). Entries older than their protocol's idle timeout count as gone:
 * a reused client port then gets a fresh backend. */
#pragma once
#include "maps.h"

#define CT_TCP_IDLE_NS (6ULL * 3600 * 1000000000ULL)
#define CT_UDP_IDLE_NS (120ULL * 1000000000ULL)

static __always_inline __u64 ct_idle(__u8 proto)
{
	return proto == IPPROTO_TCP ? CT_TCP_IDLE_NS : CT_UDP_IDLE_NS;
}

/* Look up and refresh an entry; NULL when absent or expired. */
static __always_inline struct ct_val *ct_get(void *map, struct ct_key *k, __u64 now)
{
	struct ct_val *v = bpf_map_lookup_elem(map, k);
	if (!v)
		return 0;
	if (now - v->last_seen > ct_idle(k->proto))
		return 0;
	/* Refresh at most once a second: a write per packet costs more. */
	if (now - v->last_seen > 1000000000ULL)
		v->last_seen = now;
	return v;
}
