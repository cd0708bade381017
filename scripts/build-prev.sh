#!/usr/bin/env bash
# Build the strait binaries of the commit the upgrade test starts from: the
# last build with map layout 1 (maps pinned straight in the pin directory).
# The test runs that build's agent, then replaces it with this one under a
# live stream. Cached in target/upgrade-from/<commit>/; needs the commit in
# this clone's history.
set -euo pipefail
cd "$(dirname "$0")/.."
prev="${STRAIT_UPGRADE_FROM:-eafaae3}"
out="$PWD/target/upgrade-from/$prev"
if [ -x "$out/strait" ] && [ -x "$out/strait-cni" ]; then
  exit 0
fi
if ! git cat-file -e "$prev^{commit}" 2>/dev/null; then
  git fetch --quiet --unshallow 2>/dev/null || true
fi
if ! git cat-file -e "$prev^{commit}" 2>/dev/null; then
  echo "build-prev: commit $prev is not in this clone (a shallow clone?); clone with full history" >&2
  exit 1
fi
tree="$(mktemp -d)"
cleanup() {
  git worktree remove --force "$tree" >/dev/null 2>&1 || true
  rm -rf "$tree"
}
trap cleanup EXIT
git worktree add --quiet --detach "$tree" "$prev"
echo "build-prev: building $prev (the upgrade test's starting point; cached afterwards)"
# Only the two binaries are kept: the build's own target directory (several
# GiB) is removed, and no debug info is built into it.
build="$PWD/target/upgrade-from/target"
CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$build" \
  cargo build --quiet --manifest-path "$tree/Cargo.toml" --bins
mkdir -p "$out"
cp "$build/debug/strait" "$build/debug/strait-cni" "$out/"
rm -rf "$build"
