#!/usr/bin/env bash
# Regenerate docs/diagrams/: the seeds' scenarios in every mode, each drawn
# by `strait lab explain -o svg` from a live lab (and its table beside it,
# as text), with docs/diagrams/README.md indexing them. Root; uses the
# example labs (each is brought up, explained and taken down in turn).
#
#   scripts/diagrams.sh            # all of them
#   scripts/diagrams.sh ebpf vxlan # only these sets
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build -q --bin strait --bin strait-cni
S="${CARGO_TARGET_DIR:-target}/debug/strait"
out=docs/diagrams
mkdir -p "$out"

# set | lab file | flows (src>dst[@backend], space separated) | what the seed says
SETS=(
  "kernel|examples/two-nodes.yaml|a1>a2 a1>b1 node-a>a1|routed mode, the kernel datapath: every hop sees both directions"
  "ebpf|examples/two-nodes-ebpf.yaml|a1>a2 a1>b1 node-a>a1|seed 000, DataPath V2: bpf_redirect_peer skips the receiver's host veth, redirect_neigh the host stack"
  "services|examples/services-ebpf.yaml|client>svc/web:80@198.19.0.2 client>svc/web:80@198.19.1.1 external>198.18.96.12:80|seed 000 scenarios 5, 7, 8: the service address only on the client's side; from outside, straight into the pod"
  "vxlan|examples/two-nodes-vxlan.yaml|a1>b1 a1>a2|seed 001, Hybridnet VXLAN: the overlay device, VXLAN between the nodes"
  "ipip|examples/two-nodes-ipip.yaml|a1>b1|seed 001, Calico IPIP: tunl0's stand-in skipped, IP-in-IP on the wire"
  "bgp|examples/four-nodes-bgp.yaml|a1>c1|seed 001, Calico BGP: routes learned from the peers, no encapsulation"
  "racks|examples/racks-bgp-tor.yaml|a1>c1 a1>b1|seed 001, Hybridnet BGP: through the top-of-rack routers"
  "vlan|examples/two-nodes-vlan.yaml|a20>b20 a20>b30|seed 001, Hybridnet VLAN: tagged on the wire, the gateway between VLANs"
  "macvlan|examples/two-nodes-macvlan.yaml|a5>a5b a5>b10 a5b>svc/web:80@198.18.10.16|seed 001, Bifrost: macvlan pods, VLAN ports, services through the service veth"
  "eni|examples/two-nodes-eni.yaml|centos>nginx2 centos>nginx1|seed 000 on ENI multi-IP: pods on ENIs, across nodes through the VPC"
  "trunk|examples/two-nodes-trunk.yaml|busybox>nginx intruder>nginx centos>nginx-locked intruder>nginx-locked|seed 002, ENI-Trunking: member VLANs on the trunk, member security groups decide"
)

want=("$@")
index="$out/README.md"
{
  echo "# Forwarding diagrams"
  echo
  echo "Drawn by \`scripts/diagrams.sh\` with \`strait lab explain SRC DST -o svg\` from live"
  echo "labs (the example files): red arrows the request, blue the reply, dashed"
  echo "what the fast path skips; each \`.txt\` is the same flow as a table, with"
  echo "what decided every hop. Regenerate after a datapath change."
  echo
} > "$index.tmp"
for set in "${SETS[@]}"; do
  IFS='|' read -r name file flows says <<<"$set"
  if [ "${#want[@]}" -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then
    continue
  fi
  echo "diagrams: $name ($file)" >&2
  "$S" lab up "$file" >/dev/null
  trap '"$S" lab down >/dev/null 2>&1 || true' EXIT
  {
    echo "## $name"
    echo
    echo "$says."
    echo
  } >> "$index.tmp"
  for f in $flows; do
    src="${f%%>*}"
    rest="${f#*>}"
    dst="${rest%%@*}"
    args=()
    if [[ "$rest" == *@* ]]; then
      args=(--backend "${rest#*@}")
    fi
    slug="$name-$src-$(echo "$dst" | tr '/:.' '---')"
    [ "${#args[@]}" -gt 0 ] && slug="$slug-via-${rest#*@}"
    # A dropped flow (exit 2) is drawn too.
    "$S" lab explain "$src" "$dst" "${args[@]}" -o svg > "$out/$slug.svg" || [ $? -eq 2 ]
    "$S" lab explain "$src" "$dst" "${args[@]}" > "$out/$slug.txt" || [ $? -eq 2 ]
    echo "- [$src -> $dst${args[*]:+ (${args[*]})}]($slug.svg) ([table]($slug.txt))" >> "$index.tmp"
  done
  echo >> "$index.tmp"
  "$S" lab down >/dev/null
  trap - EXIT
done
# A subset leaves the index as it is.
if [ "${#want[@]}" -eq 0 ]; then
  mv "$index.tmp" "$index"
else
  rm -f "$index.tmp"
fi
echo "diagrams: $(ls "$out"/*.svg | wc -l) in $out" >&2
