/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* NetworkPolicy on the eBPF datapath. The agent compiles each local pod's
 * policy (crates/model/src/policy) into:
 *   strait_policy_ep   pod -> which directions are isolated, and the first
 *                      isolating policy (named in drop reports);
 *   strait_policy      an LPM trie of what an isolated pod admits:
 *                      (pod, direction, protocol, port, peer prefix) ->
 *                      the policy and rule that allow it. Protocol 0 and
 *                      port 0 mean "any"; ranges are expanded; ipBlock
 *                      excepts are cut out of the prefixes before they get
 *                      here, so a match is always an allow.
 * Only new connections are judged. strait_policy_ct remembers every flow a
 * local pod takes part in (allowed, or seen before its pod was isolated);
 * once answered it is established, so replies and established connections
 * pass without a lookup, as
 * Calico and Cilium keep established connections across a policy change.
 * Egress is judged at from-container; ingress for a local destination
 * before the packet is redirected into it (from-container for same-node
 * traffic, from-netdev for traffic from other nodes). Traffic the node
 * itself sends to its pods takes the host stack and is never judged
 * (kubelet probes). */
#pragma once
#include "events.h"

#define POLICY_F_INGRESS 1  /* isolated for ingress */
#define POLICY_F_EGRESS 2   /* isolated for egress */

#define POLICY_DIR_INGRESS 0
#define POLICY_DIR_EGRESS 1

struct policy_ep {
	__u32 flags;        /* POLICY_F_* */
	__u32 ingress_by;   /* id of the first policy isolating ingress */
	__u32 egress_by;    /* ... egress */
	__u32 _pad;
};

/* Bits after prefixlen: pod (128) + dir (8) + proto (8) + port (16), then
 * the peer; prefixlen = 160 + the peer's prefix (IPv4: 96 + its prefix). */
struct policy_key {
	__u32 prefixlen;
	__u8 ep[16];
	__u8 dir;
	__u8 proto;
	__u16 dport;        /* network order */
	__u8 peer[16];
};

struct policy_val {
	__u32 policy;       /* the allowing policy's id */
	__u16 rule;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr_key);
	__type(value, struct policy_ep);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_policy_ep SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__type(key, struct policy_key);
	__type(value, struct policy_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_policy SEC(".maps");

/* A flow a local pod takes part in, by its first packet's tuple. It counts
 * as established once a packet went the other way: until then (a SYN, an
 * SCTP INIT or a datagram nobody answered) every packet is judged again,
 * so a flow begun before a deny cannot slip through after it. */
struct policy_ct {
	__u64 last_seen;    /* bpf_ktime_get_ns */
	__u32 flags;        /* PCT_* */
	__u32 _pad;
};

#define PCT_REPLIED 1

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_key);
	__type(value, struct policy_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_policy_ct SEC(".maps");

/* Drops per deciding policy (by id), per CPU: `strait metrics`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct metric);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_policy_drops SEC(".maps");

#define POLICY_PASS 0   /* not judged, or allowed */

static __always_inline int policy_admits(const struct addr_key *ep, __u8 dir, const struct flow *f,
					 __u32 peer)
{
	struct policy_key k = {};
	__builtin_memcpy(k.ep, ep->addr, 16);
	k.dir = dir;
	struct addr_key pk = v4_key(peer);
	__builtin_memcpy(k.peer, pk.addr, 16);
	k.prefixlen = 160 + 128;
	k.proto = f->proto;
	k.dport = bpf_htons(f->dport);
	if (bpf_map_lookup_elem(&strait_policy, &k))
		return 1;
	k.dport = 0;
	if (bpf_map_lookup_elem(&strait_policy, &k))
		return 1;
	k.proto = 0;
	return bpf_map_lookup_elem(&strait_policy, &k) != 0;
}

/* Judge a packet from `src_local` (a pod of this node, or 0) to
 * `dst_local` (likewise): POLICY_PASS, or a drop reason with the deciding
 * policy's id in *policy. `f` is the flow as the pods see it (after
 * service translation toward the backend; before it on replies). */
static __always_inline int policy_judge(const struct flow *f, int src_local, int dst_local, __u32 *policy)
{
	struct ct_key fwd = { .saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport, .proto = f->proto };
	struct ct_key rev = { .saddr = f->daddr, .daddr = f->saddr, .sport = f->dport, .dport = f->sport, .proto = f->proto };
	__u64 now = bpf_ktime_get_ns();
	struct policy_ct *fe = bpf_map_lookup_elem(&strait_policy_ct, &fwd);
	if (fe && (fe->flags & PCT_REPLIED)) {
		fe->last_seen = now;
		return POLICY_PASS;
	}
	struct policy_ct *re = bpf_map_lookup_elem(&strait_policy_ct, &rev);
	if (re) {
		/* The other way of a known flow: it is established now. */
		re->last_seen = now;
		re->flags |= PCT_REPLIED;
		return POLICY_PASS;
	}
	if (src_local) {
		struct addr_key ep = v4_key(f->saddr);
		struct policy_ep *e = bpf_map_lookup_elem(&strait_policy_ep, &ep);
		if (e && (e->flags & POLICY_F_EGRESS) && !policy_admits(&ep, POLICY_DIR_EGRESS, f, f->daddr)) {
			*policy = e->egress_by;
			return DROP_POLICY_EGRESS;
		}
	}
	if (dst_local) {
		struct addr_key ep = v4_key(f->daddr);
		struct policy_ep *e = bpf_map_lookup_elem(&strait_policy_ep, &ep);
		if (e && (e->flags & POLICY_F_INGRESS) && !policy_admits(&ep, POLICY_DIR_INGRESS, f, f->saddr)) {
			*policy = e->ingress_by;
			return DROP_POLICY_INGRESS;
		}
	}
	if (fe) {
		fe->last_seen = now;
	} else {
		struct policy_ct v = { .last_seen = now };
		bpf_map_update_elem(&strait_policy_ct, &fwd, &v, BPF_ANY);
	}
	return POLICY_PASS;
}

/* A policy drop: counted and reported like every drop; the event's
 * out_ifindex carries the deciding policy's id (a drop has no egress). */
static __always_inline int policy_drop(struct __sk_buff *skb, __u8 reason, __u8 prog, const struct flow *f,
				       __u32 policy)
{
	count(reason, skb->len);
	struct metric *m = bpf_map_lookup_elem(&strait_policy_drops, &policy);
	if (m) {
		m->packets++;
		m->bytes += skb->len;
	} else {
		struct metric first = { .packets = 1, .bytes = skb->len };
		bpf_map_update_elem(&strait_policy_drops, &policy, &first, BPF_NOEXIST);
	}
	emit(skb, EVENT_DROP, reason, prog, f, policy);
	return TC_ACT_SHOT;
}
