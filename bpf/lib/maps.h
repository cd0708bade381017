/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The maps. All are pinned by name (strait_*) under the node's bpffs
 * directory, in v<STRAIT_MAPS_VERSION>/, so they outlive the agent and
 * forwarding continues while it restarts or upgrades. Sizes here are part
 * of the layout: the loader compares them with what is pinned. */
#pragma once
#include "maps_core.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct lxc);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_lxc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb_key);
	__type(value, struct lb_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_lb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_ct_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_sock_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_frag SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct hostport_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_hostport SEC(".maps");
