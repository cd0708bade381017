/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Socket-level load balancing for the node's own processes (seed 000
 * scenario 1: the node reaching a service). On the node's cgroup:
 *   connect4/sendmsg4  a service address becomes a backend before any
 *                      packet exists, so nothing is NATed on the wire;
 *   recvmsg4/getpeername4  the process still sees the service address. */
#include "lib/lb.h"

static __always_inline void sock_count(void)
{
	__u32 reason = REASON_SOCK_LB;
	struct metric *m = bpf_map_lookup_elem(&strait_metrics, &reason);
	if (m)
		m->packets++;
}

static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct lb_key k = { .addr = ctx->user_ip4, .port = (__u16)ctx->user_port, .slot = 0, .proto = proto };
	struct lb_val *svc = bpf_map_lookup_elem(&strait_lb, &k);
	if (!svc || svc->count == 0)
		return 1; /* not a service, or no backend: the route answers */
	__u32 vip = ctx->user_ip4;
	__u16 vport = (__u16)ctx->user_port;
	struct lb_val *b = lb_pick(&k, svc, 0, bpf_ktime_get_ns());
	if (!b)
		return 1;
	struct sock_rev_key rk = { .cookie = bpf_get_socket_cookie(ctx), .addr = b->backend_ip, .port = b->backend_port };
	struct sock_rev_val rv = { .addr = vip, .port = vport };
	bpf_map_update_elem(&strait_sock_rev, &rk, &rv, BPF_ANY);
	ctx->user_ip4 = b->backend_ip;
	ctx->user_port = b->backend_port;
	sock_count();
	return 1;
}

static __always_inline int sock_rev(struct bpf_sock_addr *ctx)
{
	struct sock_rev_key rk = { .cookie = bpf_get_socket_cookie(ctx), .addr = ctx->user_ip4, .port = (__u16)ctx->user_port };
	struct sock_rev_val *rv = bpf_map_lookup_elem(&strait_sock_rev, &rk);
	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = rv->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, ctx->type == 1 /* SOCK_STREAM */ ? IPPROTO_TCP : IPPROTO_UDP);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx);
}

char _license[] SEC("license") = "GPL";
