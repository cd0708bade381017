/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* 802.1Q in eBPF (this kernel has no 8021q module): which VLAN a packet
 * belongs to is decided by its addresses. strait_vlan_subnets maps an
 * underlay subnet (IPv4 as IPv4-mapped IPv6, so one trie serves both
 * families) to its VLAN id. On the uplink's egress, a packet whose source
 * (else destination) is in such a subnet gets that subnet's tag pushed; ARP
 * is classified by its sender (else target) address. On ingress the
 * kernel has already moved a frame's tag into skb->vlan_tci; a tagged
 * frame is accepted only when one of its addresses is in a subnet of that
 * very VLAN (isolation), and its tag is popped before the host stack sees
 * it (with no VLAN device for the id the stack would drop it). The helpers
 * are here so the eBPF datapath's from-netdev/to-netdev can call them too. */
#pragma once
#include "common.h"

#define ETH_P_ARP_ 0x0806
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_8021Q_ 0x8100

struct vlan_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct vlan_info {
	__u16 vid;
	__u16 flags;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct vlan_key);
	__type(value, struct vlan_info);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_vlan_subnets SEC(".maps");

/* Load an IPv4 address at `off` into `k` as IPv4-mapped IPv6. */
static __always_inline int vlan_key_v4(struct __sk_buff *skb, __u32 off, struct vlan_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->prefixlen = 128;
	k->addr[10] = 0xff;
	k->addr[11] = 0xff;
	return bpf_skb_load_bytes(skb, off, &k->addr[12], 4);
}

static __always_inline int vlan_key_v6(struct __sk_buff *skb, __u32 off, struct vlan_key *k)
{
	k->prefixlen = 128;
	return bpf_skb_load_bytes(skb, off, k->addr, 16);
}

/* The packet's first (0) or second (1) address: source then destination
 * for IP, sender then target for ARP. Negative: no address to go by. */
static __always_inline int vlan_addr(struct __sk_buff *skb, int which, struct vlan_key *k)
{
	switch (bpf_ntohs(skb->protocol)) {
	case ETH_P_IP:
		return vlan_key_v4(skb, ETH_HLEN + (which ? 16 : 12), k);
	case ETH_P_ARP_:
		/* htype, ptype, hlen, plen, op (8), sha (6), spa (4), tha (6), tpa */
		return vlan_key_v4(skb, ETH_HLEN + (which ? 24 : 14), k);
	case ETH_P_IPV6_:
		return vlan_key_v6(skb, ETH_HLEN + (which ? 24 : 8), k);
	}
	return -1;
}

/* Set at load: this uplink is a router's (the VLAN gateway), which tags
 * by where a packet goes; a node tags by where it comes from (its pods'
 * VLAN, whatever the destination). */
volatile const __u32 VLAN_ROUTER = 0;

/* The VLAN of the packet's addresses (source first, then destination),
 * or NULL. A router goes by the destination alone: what it routes from a
 * VLAN to a host outside every VLAN (a node, untagged on the fabric) must
 * leave untagged. */
static __always_inline const struct vlan_info *vlan_classify(struct __sk_buff *skb)
{
	struct vlan_key k;
	const struct vlan_info *v = NULL;
	if (VLAN_ROUTER)
		return vlan_addr(skb, 1, &k) == 0 ? bpf_map_lookup_elem(&strait_vlan_subnets, &k) : NULL;
	if (vlan_addr(skb, 0, &k) == 0)
		v = bpf_map_lookup_elem(&strait_vlan_subnets, &k);
	if (!v && vlan_addr(skb, 1, &k) == 0)
		v = bpf_map_lookup_elem(&strait_vlan_subnets, &k);
	return v;
}

/* Whether either address is in a subnet of `vid`. */
static __always_inline int vlan_addr_in(struct __sk_buff *skb, __u16 vid)
{
	struct vlan_key k;
	for (int i = 0; i < 2; i++) {
		if (vlan_addr(skb, i, &k) < 0)
			continue;
		const struct vlan_info *v = bpf_map_lookup_elem(&strait_vlan_subnets, &k);
		if (v && v->vid == vid)
			return 1;
	}
	return 0;
}

#define VLAN_PASS 0
#define VLAN_DROP -1
#define VLAN_REDIRECT 1

/* Bifrost's macvlan mode: a VLAN this node's macvlan pods use has a
 * "port", a veth pair standing in for the seed's eth0-<vid> sub-interface.
 * Its near end (<uplink>-<vid>) is the pods' macvlan parent; its far end
 * (trunk<vid>) is joined to the uplink here: what the pods send comes out
 * of the far end, gets the tag and goes out of the uplink
 * (vlan_port_in); a frame of that VLAN arriving on the uplink loses its
 * tag and goes into the far end (vlan_to_port), so the parent receives
 * it untagged and macvlan delivers it by MAC. One value, two maps: by VLAN
 * id for the uplink's ingress, by the far end's ifindex for its own. */
struct vlan_port {
	__u32 ifindex;  /* the far end, trunk<vid> */
	__u32 uplink;   /* where tagged frames leave */
	__u16 vid;
	__u16 _pad;
	__u32 _pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);  /* VLAN id */
	__type(value, struct vlan_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_vlan_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);  /* ifindex of trunk<vid> */
	__type(value, struct vlan_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_vlan_trunks SEC(".maps");

/* Ingress: a tagged frame of a VLAN with a port here goes into the port,
 * untagged (VLAN_REDIRECT); PASS when there is no port for its VLAN. */
static __always_inline int vlan_to_port(struct __sk_buff *skb)
{
	__u32 vid = skb->vlan_tci & 0x0fff;
	const struct vlan_port *p = bpf_map_lookup_elem(&strait_vlan_ports, &vid);
	if (!p)
		return VLAN_PASS;
	__u32 port = p->ifindex;
	if (bpf_skb_vlan_pop(skb) < 0)
		return VLAN_DROP;
	if (bpf_redirect(port, 0) != TC_ACT_REDIRECT)
		return VLAN_DROP;
	return VLAN_REDIRECT;
}

/* Egress: tag what belongs to a VLAN. */
static __always_inline int vlan_tag(struct __sk_buff *skb)
{
	if (skb->vlan_present)
		return VLAN_PASS;
	const struct vlan_info *v = vlan_classify(skb);
	if (!v)
		return VLAN_PASS;
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q_), v->vid) < 0)
		return VLAN_DROP;
	return VLAN_PASS;
}

/* Ingress: a macvlan port's VLAN goes to the port (VLAN_REDIRECT); else
 * untag what belongs to the VLAN it came in; drop other tags. */
static __always_inline int vlan_untag(struct __sk_buff *skb)
{
	if (!skb->vlan_present)
		return VLAN_PASS;
	int r = vlan_to_port(skb);
	if (r != VLAN_PASS)
		return r;
	__u16 vid = skb->vlan_tci & 0x0fff;
	/* One of its addresses must be of this VLAN: a pod's own traffic by
	 * its source, what the gateway routed in from another VLAN by its
	 * destination. */
	if (!vlan_addr_in(skb, vid))
		return VLAN_DROP;
	if (bpf_skb_vlan_pop(skb) < 0)
		return VLAN_DROP;
	return VLAN_PASS;
}
