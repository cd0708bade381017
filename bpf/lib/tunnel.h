/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* IP-in-IP in eBPF (Calico's IPIP mode, on a kernel without the ipip
 * module). Routes to other nodes' pod CIDRs point at a stand-in device,
 * `<uplink>.ipip`, with the peer node as gateway (`via NODE dev eth0.ipip
 * onlink`, as Calico's routes point at tunl0). Whatever reaches that
 * device is wrapped here in an outer IPv4 header, this node to that node,
 * protocol 4, and leaves through the uplink by the FIB's next hop. The
 * uplink's tc ingress opens IP-in-IP from known nodes and drops it from
 * anyone else. GSO packets stay GSO (the kernel segments the inner and
 * outer headers together), so bulk traffic keeps its offloads. */
#pragma once
#include "events.h"

/* Not in every distribution's uapi headers yet. */
#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tunnel_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_tunnel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct addr_key);
	__type(value, struct tunnel_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_tunnel_peers SEC(".maps");

static __always_inline const struct tunnel_cfg *tunnel_cfg(void)
{
	__u32 zero = 0;
	const struct tunnel_cfg *c = bpf_map_lookup_elem(&strait_tunnel, &zero);
	return c && c->ifindex ? c : 0;
}

static __always_inline struct addr_key v4_key(__u32 addr)
{
	struct addr_key k = {};
	k.addr[10] = 0xff;
	k.addr[11] = 0xff;
	__builtin_memcpy(&k.addr[12], &addr, 4);
	return k;
}

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* Wrap the IPv4 packet after the Ethernet header in an outer IPv4 header
 * from `saddr` to `daddr`. Returns 0, or -1 when the kernel would not make
 * room. Invalidates packet pointers. */
static __always_inline int ipip_push(struct __sk_buff *skb, __u32 saddr, __u32 daddr)
{
	struct iphdr inner;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &inner, sizeof(inner)) < 0)
		return -1;
	/* FIXED_GSO: the pod's MTU already leaves room for the outer header,
	 * so segments keep their size. */
	if (bpf_skb_adjust_room(skb, sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		return -1;
	struct iphdr outer = {};
	outer.version = 4;
	outer.ihl = 5;
	outer.tos = inner.tos;
	outer.tot_len = bpf_htons(bpf_ntohs(inner.tot_len) + sizeof(struct iphdr));
	/* DF follows the inner packet, so path-MTU discovery works end to end;
	 * without DF the outer packet needs an id of its own. */
	outer.frag_off = inner.frag_off & bpf_htons(0x4000);
	outer.id = outer.frag_off ? 0 : (__u16)bpf_get_prandom_u32();
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = saddr;
	outer.daddr = daddr;
	outer.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) < 0)
		return -1;
	return 0;
}

/* Encapsulate for the node `node` and send the result out of the uplink
 * to the FIB's next hop for it. `f` is the inner flow, for the verdict. */
static __always_inline int ipip_send(struct __sk_buff *skb, const struct tunnel_cfg *c, __u32 node,
				     __u8 prog, const struct flow *f)
{
	__u32 uplink = c->uplink, local = c->local4;
	if (ipip_push(skb, local, node) < 0)
		return drop(skb, DROP_ENCAP_FAILED, prog, f);
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_IPIP;
	fib.ipv4_src = local;
	fib.ipv4_dst = node;
	fib.ifindex = uplink;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return drop(skb, DROP_TUNNEL_NO_ROUTE, prog, f);
	struct bpf_redir_neigh nh = {};
	nh.nh_family = AF_INET;
	nh.ipv4_nh = fib.ipv4_dst;
	if (bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0) != TC_ACT_REDIRECT)
		return drop(skb, DROP_REDIRECT_FAILED, prog, f);
	return verdict(skb, REASON_IPIP_ENCAP, prog, f, fib.ifindex, TC_ACT_REDIRECT);
}

#define IPIP_NOT_OURS 0   /* not IP-in-IP for this node: carry on */
#define IPIP_OPENED 1     /* decapsulated: the inner packet follows the Ethernet header */

/* At the uplink's tc ingress: open IP-in-IP from a known node. Returns
 * IPIP_*, or a negative drop reason (the caller drops). `f` is set to the
 * outer flow for a drop's report. Invalidates packet pointers. */
static __always_inline int ipip_open(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return IPIP_NOT_OURS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_IPIP)
		return IPIP_NOT_OURS;
	const struct tunnel_cfg *c = tunnel_cfg();
	if (!c || ip->daddr != c->local4)
		return IPIP_NOT_OURS;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = IPPROTO_IPIP;
	struct addr_key k = v4_key(ip->saddr);
	if (!bpf_map_lookup_elem(&strait_tunnel_peers, &k))
		return -DROP_IPIP_UNKNOWN_PEER;
	if (ip->frag_off & bpf_htons(0x3fff))
		return -DROP_IPIP_FRAGMENT;
	__u32 hlen = ip->ihl * 4;
	if (hlen < sizeof(struct iphdr))
		return -DROP_MALFORMED;
	if (bpf_skb_adjust_room(skb, -(__s32)hlen, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return -DROP_MALFORMED;
	return IPIP_OPENED;
}
