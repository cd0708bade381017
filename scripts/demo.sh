#!/usr/bin/env bash
# Set up, build, and bring up the example 2-node lab; show pods talking on
# one node and across nodes. The lab stays up to explore; `strait lab down`
# (printed at the end) removes all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace
S=./target/release/strait
$S lab up examples/two-nodes.yaml
echo
echo "== same node (node-a): a1 -> a2, and node-a itself -> a1"
$S lab probe a1 a2
$S lab probe node-a a1
echo "== across nodes: a1 -> b1, b2 -> a2 (TCP), a1 -> b2 (UDP)"
$S lab probe a1 b1
$S lab probe b2 a2
$S lab probe a1 b2 --udp
echo
echo "== how a1 is wired: one /32, default via 169.254.1.1, permanent neighbour"
$S lab exec a1 -- ip -4 addr show eth0
$S lab exec a1 -- ip route
$S lab exec a1 -- ip neigh show 169.254.1.1
echo "== node-a's routes (proto 90 = strait): pods /32, node-b's pod CIDR via node-b"
$S lab exec node-a -- ip route
echo
echo "Explore: $S lab status | $S lab exec node-b -- $S status --socket /run/strait-lab/demo/nodes/node-b/agent.sock"
echo "Remove everything: $S lab down"
