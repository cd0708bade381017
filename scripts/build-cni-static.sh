#!/usr/bin/env bash
# Build strait-cni as a static PIE, the way CNI plugins are shipped: it runs
# on any host glibc when copied to /opt/cni/bin, and it starts without the
# dynamic loader (it is exec'd once per pod verb). Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p strait-cni --target "$triple" >&2
echo "$PWD/target/$triple/release/strait-cni"
