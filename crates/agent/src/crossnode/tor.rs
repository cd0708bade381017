//! bgp-tor: Hybridnet's BGP mode, as seed 001 walks it. Nodes sit in
//! different L3 subnets (racks); each announces its pods to its
//! top-of-rack router over BGP (the [`crate::reconcile::bgp`] reconciler,
//! with no node-to-node mesh), and the router carries pod traffic between
//! nodes. On the node, level-triggered:
//!
//! - rule 1998 `lookup 39999`: this node's pods (the endpoints reconciler
//!   keeps their /32s there), so pod-to-pod on one node never leaves it;
//! - rules 1999 `from <pod block> lookup 10001`, one per block of this
//!   node's (its pod CIDR and IPPool blocks);
//! - table 10001: `default via <gateway> dev <uplink>`, the gateway being
//!   the main table's default route's (the rack's router: the seed's
//!   10.0.0.1 switch).
//!
//! So a pod's packet to another node's pod goes to the router whatever the
//! destination, and the router's BGP routes (learned from every node) send
//! it on, as the seed's "交换机上匹配到pod2所对应的特定路由" says.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use ipnet::IpNet;
use std::net::IpAddr;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::overlay::{
    LOCAL_POD_RULE_PRIORITY, LOCAL_POD_TABLE, UNDERLAY_RULE_PRIORITY, UNDERLAY_TABLE,
};
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route, RouteKind, Rule};

pub struct BgpTor {
    pub(super) ipip: super::IpipLeftovers,
    pub uplink: String,
}

/// The rules for this node's pod blocks (IPv4 ones; the family is a
/// parameter so IPv6 is one more call).
pub fn rules(local: &[IpNet], v4: bool) -> Vec<Rule> {
    let rule = super::strait_rule;
    let mut out = vec![rule(LOCAL_POD_RULE_PRIORITY, None, LOCAL_POD_TABLE)];
    out.extend(
        local
            .iter()
            .filter(|b| b.addr().is_ipv4() == v4)
            .map(|b| rule(UNDERLAY_RULE_PRIORITY, Some(b.trunc()), UNDERLAY_TABLE)),
    );
    out
}

/// Table 10001's one route: the default via `gateway` out of `oif`.
pub fn underlay_default(gateway: IpAddr, oif: u32) -> Route {
    let dst = match gateway {
        IpAddr::V4(_) => "0.0.0.0/0".parse().unwrap(),
        IpAddr::V6(_) => "::/0".parse().unwrap(),
    };
    Route {
        dst,
        via: Some(gateway),
        oif: Some(oif),
        kind: RouteKind::Unicast,
        protocol: ROUTE_PROTOCOL,
        table: UNDERLAY_TABLE,
        onlink: false,
        multipath: vec![],
    }
}

impl CrossNode for BgpTor {
    fn name(&self) -> &'static str {
        "bgp-tor"
    }

    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            self.ipip.remove(nl).await?;
            self.ipip.remove_vlan(nl).await?;
            let mut problems = vec![];
            let uplink = super::uplink_link(nl, &self.uplink, "bgp-tor").await?;
            // The rack's router: where the node's own default route goes.
            let out_of_uplink = strait_netlink::RouteFilter {
                oif: Some(uplink.index),
                ..strait_netlink::RouteFilter::table(strait_netlink::MAIN_TABLE)
            };
            let gateway = nl
                .routes_where(true, out_of_uplink)
                .await?
                .into_iter()
                .find(|r| r.dst.prefix_len() == 0 && r.oif == Some(uplink.index))
                .and_then(|r| r.via);
            let want: Vec<Route> = match gateway {
                Some(gw) => vec![underlay_default(gw, uplink.index)],
                None => {
                    problems.push(format!(
                        "bgp-tor: main has no default route via {} (the top-of-rack router); table {UNDERLAY_TABLE} stays empty and pods cannot reach other nodes",
                        self.uplink
                    ));
                    vec![]
                }
            };
            problems.extend(super::sync_table(nl, UNDERLAY_TABLE, true, &want).await?);
            // Another mode's rules go, and the routes of their tables.
            super::sync_rules(nl, true, &rules(plan.local, true)).await?;
            Ok(problems)
        })
    }

    /// Nothing in main: table 10001 and the router carry the peers.
    fn routes(&self, _peers: &[NodeRoute]) -> Vec<Route> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_local_rule_and_one_underlay_rule_per_block_of_the_family() {
        let blocks: Vec<IpNet> = vec![
            "198.19.1.0/24".parse().unwrap(),
            "198.19.200.7/32".parse().unwrap(),
            "fd00:198:19::/64".parse().unwrap(),
        ];
        let r = rules(&blocks, true);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].priority, r[0].table, r[0].src), (1998, 39999, None));
        assert_eq!(r[2].src, Some("198.19.200.7/32".parse().unwrap()));
        assert!(r[1..]
            .iter()
            .all(|x| x.table == 10001 && x.priority == 1999));
        assert_eq!(rules(&blocks, false).len(), 2);
        let d = underlay_default("198.18.1.1".parse().unwrap(), 2);
        assert_eq!((d.dst.to_string(), d.table), ("0.0.0.0/0".into(), 10001));
    }
}
