//! Routed: each peer's pod CIDR via its node IP (Terway VPC routes,
//! flannel host-gw). Needs an underlay that delivers to node IPs directly.

use super::CrossNode;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::routes::NodeRoute;
use strait_netlink::{Route, RouteKind};

pub struct Routed;

impl CrossNode for Routed {
    fn name(&self) -> &'static str {
        "routed"
    }

    fn routes(&self, peers: &[NodeRoute]) -> Vec<Route> {
        peers
            .iter()
            .filter(|r| r.pod_cidr.addr().is_ipv4())
            .map(|r| Route {
                dst: r.pod_cidr,
                via: Some(r.via),
                oif: None,
                kind: RouteKind::Unicast,
                protocol: ROUTE_PROTOCOL,
                table: strait_netlink::MAIN_TABLE,
                onlink: false,
            })
            .collect()
    }
}
