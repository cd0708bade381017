//! Routed mode's route plan: for every other node, its pod CIDR and the
//! IPPool blocks it holds via its node IP (Terway VPC routes, flannel
//! host-gw, Calico's block routes); for this node, a blackhole for its own
//! pod CIDR so unassigned pod addresses are not sent out the default route.

use crate::cluster::{node_internal_ip, node_pod_cidrs, ClusterSnapshot};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
pub struct NodeRoute {
    pub node: String,
    pub pod_cidr: IpNet,
    pub via: IpAddr,
}

/// Routes this node needs to reach the pods of every other node. Nodes that
/// have no pod CIDR or no InternalIP yet, or whose CIDR family differs from
/// their node IP's, are skipped (they get a route once they are complete).
pub fn plan_node_routes(snapshot: &ClusterSnapshot, self_node: &str) -> Vec<NodeRoute> {
    let mut out = vec![];
    for node in &snapshot.nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == self_node {
            continue;
        }
        for cidr in node_pod_cidrs(node) {
            let Some(via) = node_internal_ip(node, cidr.addr().is_ipv4()) else {
                continue;
            };
            out.push(NodeRoute {
                node: name.clone(),
                pod_cidr: cidr,
                via,
            });
        }
    }
    // IPPool blocks, each via the node that holds it.
    for b in crate::ippool::held_blocks(snapshot) {
        if b.node == self_node {
            continue;
        }
        let Some(node) = snapshot.node(&b.node) else {
            continue;
        };
        let Some(via) = node_internal_ip(node, b.cidr.addr().is_ipv4()) else {
            continue;
        };
        out.push(NodeRoute {
            node: b.node,
            pod_cidr: b.cidr,
            via,
        });
    }
    out.sort();
    out.dedup_by(|a, b| a.pod_cidr == b.pod_cidr);
    out
}

/// Why a node's pod CIDR must not be routed, if it must not: a default
/// route, or a range that holds a node's own address, would take over the
/// node's traffic.
pub fn pod_cidr_problem(snapshot: &ClusterSnapshot, cidr: &IpNet) -> Option<String> {
    if cidr.prefix_len() == 0 {
        return Some(format!(
            "pod CIDR {cidr} is a default route; routing it would take every address"
        ));
    }
    for n in &snapshot.nodes {
        for ip in [node_internal_ip(n, true), node_internal_ip(n, false)]
            .into_iter()
            .flatten()
        {
            if cidr.contains(&ip) {
                return Some(format!(
                    "pod CIDR {cidr} contains node {}'s address {ip}",
                    n.metadata.name.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    None
}

/// [`plan_node_routes`] without the CIDRs that must not be routed, and why
/// each was left out.
pub fn plan_node_routes_checked(
    snapshot: &ClusterSnapshot,
    self_node: &str,
) -> (Vec<NodeRoute>, Vec<String>) {
    let mut problems = vec![];
    let routes = plan_node_routes(snapshot, self_node)
        .into_iter()
        .filter(|r| match pod_cidr_problem(snapshot, &r.pod_cidr) {
            Some(p) => {
                problems.push(format!(
                    "node {}: {p}; not routed, fix the Node's spec.podCIDR",
                    r.node
                ));
                false
            }
            None => true,
        })
        .collect();
    (routes, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_node;

    #[test]
    fn routes_to_every_other_complete_node() {
        let snap = ClusterSnapshot {
            nodes: vec![
                test_node("a", Some("10.1.0.0/24"), Some("192.0.2.1")).into(),
                test_node("b", Some("10.1.1.0/24"), Some("192.0.2.2")).into(),
                test_node("c", None, Some("192.0.2.3")).into(),
                test_node("d", Some("10.1.3.0/24"), None).into(),
            ],
            ..Default::default()
        };
        let r = plan_node_routes(&snap, "a");
        assert_eq!(
            r,
            vec![NodeRoute {
                node: "b".into(),
                pod_cidr: "10.1.1.0/24".parse().unwrap(),
                via: "192.0.2.2".parse().unwrap()
            }]
        );
        assert_eq!(plan_node_routes(&snap, "b").len(), 1);
        assert_eq!(plan_node_routes(&snap, "b")[0].node, "a");
    }

    #[test]
    fn ippool_blocks_route_to_their_holder() {
        let block = |cidr: &str, node: &str| {
            crate::ippool::Block {
                cidr: cidr.parse().unwrap(),
                pool: "blue".into(),
                node: node.into(),
            }
            .to_crd()
            .into()
        };
        let snap = ClusterSnapshot {
            nodes: vec![
                test_node("a", Some("10.1.0.0/24"), Some("192.0.2.1")).into(),
                test_node("b", Some("10.1.1.0/24"), Some("192.0.2.2")).into(),
            ],
            ipam_blocks: vec![
                block("10.9.0.0/26", "a"),
                block("10.9.0.64/26", "b"),
                block("10.9.0.128/26", "gone"),
            ],
            ..Default::default()
        };
        let r: Vec<(String, String)> = plan_node_routes(&snap, "a")
            .into_iter()
            .map(|r| (r.pod_cidr.to_string(), r.via.to_string()))
            .collect();
        assert_eq!(
            r,
            [
                ("10.1.1.0/24".to_string(), "192.0.2.2".to_string()),
                ("10.9.0.64/26".to_string(), "192.0.2.2".to_string())
            ]
        );
    }

    #[test]
    fn default_and_node_covering_pod_cidrs_are_rejected() {
        let snap = ClusterSnapshot {
            nodes: vec![
                test_node("a", Some("10.1.0.0/24"), Some("192.0.2.1")).into(),
                test_node("b", Some("0.0.0.0/0"), Some("192.0.2.2")).into(),
                test_node("c", Some("192.0.2.0/24"), Some("192.0.2.3")).into(),
                test_node("d", Some("10.1.3.0/24"), Some("192.0.2.4")).into(),
            ],
            ..Default::default()
        };
        let (r, problems) = plan_node_routes_checked(&snap, "a");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].node, "d");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("default route"), "{problems:?}");
        assert!(problems[1].contains("contains node"), "{problems:?}");
    }
}
