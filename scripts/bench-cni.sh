#!/usr/bin/env bash
# The CNI ADD/DEL latency benchmark: strait beside bridge+host-local and the
# exec floor, in one run; saves the table to bench/results/cni-latency.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace
STRAIT_CNI=$(./scripts/build-cni-static.sh) ./target/release/cni-latency --out bench/results/cni-latency.md "$@"
