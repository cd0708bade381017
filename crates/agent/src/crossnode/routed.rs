//! Routed: each peer's pod CIDR via its node IP (Terway VPC routes,
//! flannel host-gw). Needs an underlay that delivers to node IPs directly.

use super::CrossNode;
use futures::future::BoxFuture;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::overlay::{LOCAL_POD_TABLE, OVERLAY_TABLE};
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route, RouteKind};

pub struct Routed;

impl CrossNode for Routed {
    fn name(&self) -> &'static str {
        "routed"
    }

    /// What an overlay mode left behind on this node (the agent ran with
    /// another --cross-node before): strait's rules and its routes in the
    /// overlay tables. The pods' routes in table 39999 are the endpoints
    /// reconciler's to move back.
    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        _peers: &'a [NodeRoute],
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            for r in nl.rules(true).await? {
                if r.protocol == ROUTE_PROTOCOL {
                    nl.delete_rule(&r).await?;
                    tracing::info!(rule = ?r, "overlay rule removed (routed mode)");
                }
            }
            for r in nl.routes_in(OVERLAY_TABLE, true).await? {
                if r.protocol == ROUTE_PROTOCOL && r.table != LOCAL_POD_TABLE {
                    nl.delete_route(&r).await?;
                }
            }
            Ok(vec![])
        })
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
