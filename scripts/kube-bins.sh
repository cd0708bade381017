#!/usr/bin/env bash
# A real control plane for the kube-apiserver labs and tests: Debian's etcd
# (installed by setup.sh) and kube-apiserver 1.20.2 in target/kube/.
# kube-apiserver is built offline from Debian bookworm's `kubernetes` source
# package with Debian's Go (about 4 minutes on 2 cores), once: the result is
# cached in target/kube/. Prints the binary's path.
#
# The tree vendors github.com/modern-go/reflect2 1.0.1, which corrupts
# memory under Go 1.18+ (its mapiterinit call predates Go 1.18's iterator
# layout): the apiserver dies with SIGSEGV in aeshashbody while encoding
# maps, e.g. a NetworkPolicy's matchLabels. The build swaps in Debian's
# reflect2 1.0.2, which has the fix. The prebuilt copy in ../shared/bin was
# built without the swap and crashes that way, so it is used only with
# STRAIT_USE_PREBUILT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/target/kube"
bin="$out/kube-apiserver-1.20.2-reflect2"
mkdir -p "$out"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
# A prebuilt copy, if this machine has one (STRAIT_NO_PREBUILT=1 ignores it).
shared=""
if [ -n "${STRAIT_USE_PREBUILT:-}" ]; then
  for d in "${STRAIT_SHARED_BIN:-}" "$PWD/../shared/bin" /work/shared/bin; do
    if [ -n "$d" ] && [ -f "$d/kube-apiserver-1.20.2.xz" ]; then
      shared="$d/kube-apiserver-1.20.2.xz"
      break
    fi
  done
fi
if [ -n "$shared" ]; then
  echo "kube-bins: using the prebuilt $shared" >&2
  xz -dc "$shared" > "$bin.tmp"
else
  echo "kube-bins: building kube-apiserver 1.20.2 from Debian's source package (once; cached in $out)" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "kube-bins: need root to fetch the source package and Go" >&2
    exit 1
  fi
  src=/etc/apt/sources.list.d/strait-kube-src.sources
  if [ ! -f "$src" ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > "$src"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev >/dev/null
  work="$out/src"
  mkdir -p "$work"
  (cd "$work" && { ls -d kubernetes-*/ >/dev/null 2>&1 || apt-get source -qq kubernetes >/dev/null; })
  tree="$(ls -d "$work"/kubernetes-*/ | head -1)"
  fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$fixed/unsafe_map.go" ] || { echo "kube-bins: $fixed missing (golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
  rsync -a --delete --exclude '*_test.go' --exclude debian "$fixed/" "$tree/vendor/github.com/modern-go/reflect2/"
  # Go's build cache lives beside the tree so both go once the binary is
  # out: together they hold several GiB that CI's disk needs for the tests.
  (cd "$tree" && GOCACHE="$work/gocache" KUBE_BUILD_PLATFORMS=linux/amd64 CGO_ENABLED=0 \
    make WHAT=cmd/kube-apiserver >&2)
  cp "$tree/_output/bin/kube-apiserver" "$bin.tmp"
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
fi
chmod +x "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" --version >&2
echo "$bin"
