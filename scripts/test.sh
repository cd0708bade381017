#!/usr/bin/env bash
# Set up, build, and run every test: unit tests and the root integration
# tests that build labs and send real packets. Run as root (CI does); under
# CI=true a skipped root test is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# A one-off build gains nothing from incremental state, which is large.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi
cargo build --workspace --bins
# The upgrade test starts from an older build (cached after the first run).
./scripts/build-prev.sh
# The control-plane tests need a real kube-apiserver (fetched or built once).
./scripts/kube-bins.sh >/dev/null
cargo test --workspace
# Nothing may be left behind.
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^strait-' || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind: $left" >&2
  exit 1
fi
