#!/usr/bin/env bash
# The pod-to-pod datapath benchmark: strait ebpf and routed beside the
# bridge plugin and the limits, in one run; saves bench/results/datapath.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace
./target/release/datapath --out bench/results/datapath.md "$@"
