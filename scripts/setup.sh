#!/usr/bin/env bash
# Install what strait needs on a fresh Debian machine (root), then build.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  iproute2                      # ip, tc, bridge: the lab and the tests
  containernetworking-plugins   # reference plugins: bridge/host-local (bench), portmap/bandwidth/tuning (chain tests)
  iptables                      # used by the reference portmap plugin
  nftables
  conntrack                     # the nftables service backend flushes UDP flows of removed backends
  clang llvm libbpf-dev bpftool # the eBPF datapath (built from C in build.rs)
  tcpdump                       # hop captures in the lab
  graphviz                      # strait lab explain -o svg (dot lays out the flow diagrams)
  chromium                      # the explain diagrams rendered as a person sees them, in a test
  util-linux                    # nsenter, unshare, setpriv
  procps                        # sysctl in the lab's router namespaces and tests
  etcd-server                   # the kube-apiserver labs' datastore (and the etcd source)
  openssl xz-utils              # the lab's apiserver keys; the prebuilt kube-apiserver
  bird2 frr                     # BGP peers the speaker is tested against (never started in the root namespace)
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo (Rust stable) is required; install it with rustup" >&2
  exit 1
fi
