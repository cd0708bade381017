//! Routed mode's route plan: for every other node, its pod CIDR via its node
//! IP (Terway VPC routes, flannel host-gw); for this node, a blackhole for its
//! own pod CIDR so unassigned pod addresses are not sent out the default route.

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
    out.sort();
    out.dedup_by(|a, b| a.pod_cidr == b.pod_cidr);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_node;

    #[test]
    fn routes_to_every_other_complete_node() {
        let snap = ClusterSnapshot {
            nodes: vec![
                test_node("a", Some("10.1.0.0/24"), Some("192.0.2.1")),
                test_node("b", Some("10.1.1.0/24"), Some("192.0.2.2")),
                test_node("c", None, Some("192.0.2.3")),
                test_node("d", Some("10.1.3.0/24"), None),
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
}
