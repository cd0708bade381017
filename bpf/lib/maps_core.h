/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The maps every strait object has, the tunnel programs included: per-reason
 * counters, runtime switches and the event ring. Pinned by name like the
 * rest (see maps.h). */
#pragma once
#include "common.h"
#include "reasons.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_COUNT);
	__type(key, __u32);
	__type(value, struct metric);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_events SEC(".maps");
