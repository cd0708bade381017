//! Routed: each peer's pod CIDR via its node IP (Terway VPC routes,
//! flannel host-gw). Needs an underlay that delivers to node IPs directly.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route, RouteKind};

pub struct Routed {
    pub(super) ipip: super::IpipLeftovers,
}

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
        _plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            self.ipip.remove(nl).await?;
            self.ipip.remove_vlan(nl).await?;
            // The rules mark an overlay's leftovers; without them (the usual
            // case) there is nothing to look for, and no route dump.
            let ours: Vec<_> = nl
                .rules(true)
                .await?
                .into_iter()
                .filter(|r| r.protocol == ROUTE_PROTOCOL)
                .collect();
            if ours.is_empty() {
                return Ok(vec![]);
            }
            // Their tables (the overlay's, the underlay's) are emptied
            // with them.
            super::sync_rules(nl, true, &[]).await?;
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
                multipath: vec![],
            })
            .collect()
    }
}
