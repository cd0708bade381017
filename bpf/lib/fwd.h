/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Packet parsing and the forwarding primitives. */
#pragma once
#include "events.h"
#include "maps.h"
#include "tunnel.h"

/* Chosen at load time by the agent's feature probe: 1 when the kernel has
 * bpf_redirect_peer (Linux >= 5.10, the seed's "Aliyun3" path), 0 for the
 * older path that goes through the destination's host veth ("Aliyun2"). */
volatile const __u32 USE_REDIRECT_PEER = 1;

#define FRAG_NONE 0   /* a whole datagram */
#define FRAG_FIRST 1  /* the first fragment: has the L4 header */
#define FRAG_LATER 2  /* a later fragment: no L4 header */

struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct flow flow;
	__u8 tcp_flags;   /* TCP only */
	__u8 frag;        /* FRAG_* */
	__u8 frag_known;  /* FRAG_LATER: ports came from the first fragment */
	__u32 l4off;      /* offset of the L4 header (of the first fragment's) */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Parse Ethernet + IPv4 (+ ports, TCP flags). Returns 1 for IPv4, 0 for
 * anything else, -1 for a malformed IPv4 packet. Fragments: the first
 * records its ports in strait_frag; later ones take them from there. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return -1;
	if (ip->ihl < 5 || ip->version != 4)
		return -1;
	p->eth = eth;
	p->ip = ip;
	p->flow.saddr = ip->saddr;
	p->flow.daddr = ip->daddr;
	p->flow.proto = ip->protocol;
	p->flow.sport = 0;
	p->flow.dport = 0;
	p->tcp_flags = 0;
	p->frag_known = 0;
	p->l4off = ETH_HLEN + ip->ihl * 4;
	__u16 frag_off = bpf_ntohs(ip->frag_off);
	p->frag = (frag_off & 0x1fff) ? FRAG_LATER : (frag_off & 0x2000) ? FRAG_FIRST : FRAG_NONE;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_SCTP)
		return 1;
	struct frag_key fk = { .saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .proto = ip->protocol };
	if (p->frag == FRAG_LATER) {
		struct frag_val *fv = bpf_map_lookup_elem(&strait_frag, &fk);
		if (fv) {
			p->flow.sport = fv->sport;
			p->flow.dport = fv->dport;
			p->frag_known = 1;
		}
		return 1;
	}
	__u8 *l4 = (void *)ip + ip->ihl * 4;
	if ((void *)(l4 + 14) <= end && ip->protocol == IPPROTO_TCP)
		p->tcp_flags = l4[13];
	if ((void *)(l4 + 4) <= end) {
		__u16 *ports = (void *)l4;
		p->flow.sport = bpf_ntohs(ports[0]);
		p->flow.dport = bpf_ntohs(ports[1]);
		if (p->frag == FRAG_FIRST) {
			struct frag_val fv = { .sport = p->flow.sport, .dport = p->flow.dport };
			bpf_map_update_elem(&strait_frag, &fk, &fv, BPF_ANY);
		}
	}
	return 1;
}

/* Decrement the TTL as a router does (with the checksum update). Returns
 * 0, or -1 when the TTL would expire (the caller then leaves the packet to
 * the host stack, which answers with ICMP time exceeded). Invalidates
 * packet pointers. */
static __always_inline int ttl_decrement(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr *ip = p->ip;
	if (ip->ttl <= 1)
		return -1;
	__u16 *word = (__u16 *)&ip->ttl; /* ttl and protocol */
	__u16 old = *word;
	ip->ttl--;
	__u16 new = *word;
	bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old, new, 2);
	return 0;
}

static __always_inline void set_macs(struct pkt *p, const __u8 *dst, const __u8 *src)
{
	__builtin_memcpy(p->eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, src, ETH_ALEN);
}

/* Deliver to a pod on this node: straight into its namespace with
 * bpf_redirect_peer (skipping its host veth and the host stack), or, on
 * kernels without it, out of its host veth. */
static __always_inline int to_local_pod(struct __sk_buff *skb, struct pkt *p, const struct endpoint *ep,
					__u8 prog, __u8 peer_reason, __u8 veth_reason)
{
	struct flow f = p->flow;
	set_macs(p, ep->pod_mac, ep->host_mac);
	if (ttl_decrement(skb, p) < 0)
		return verdict(skb, REASON_TTL_TO_STACK, prog, &f, 0, TC_ACT_OK);
	long ret;
	__u8 reason;
	if (USE_REDIRECT_PEER) {
		ret = bpf_redirect_peer(ep->ifindex, 0);
		reason = peer_reason;
	} else {
		ret = bpf_redirect(ep->ifindex, 0);
		reason = veth_reason;
	}
	if (ret != TC_ACT_REDIRECT)
		return drop(skb, DROP_REDIRECT_FAILED, prog, &f);
	return verdict(skb, reason, prog, &f, ep->ifindex, TC_ACT_REDIRECT);
}
