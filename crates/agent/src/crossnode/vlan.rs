//! vlan: Hybridnet's VLAN mode (seed 001 "VLAN模式"). Pods of an underlay
//! IPPool (one with vlanID and gateway) sit on the datacenter's VLAN: the
//! switch and the VLAN's gateway see their addresses directly, tagged. No
//! 8021q here, so the seed's `eth0.20` is eBPF on the uplink
//! ([`strait_bpf::vlan`]): what leaves with a pod address of the subnet
//! gets the subnet's tag, what arrives tagged is untagged when it belongs
//! to that VLAN and dropped otherwise. Level-triggered, on the node:
//!
//! - rule 1998 `lookup 39999`: this node's pods (the endpoints reconciler
//!   keeps their /32s there), so pods on one node talk directly;
//! - for the i-th underlay subnet, rule 1999 `from <subnet> lookup
//!   10001+i`, and that table holds `<subnet> dev <uplink>` (other nodes'
//!   pods of the subnet are neighbours on the VLAN) and `default via
//!   <gateway>` (everything else goes to the VLAN's router);
//! - proxy ARP on the uplink (no delay): the node answers for its own pods,
//!   as Hybridnet does, so the switch and the gateway reach them at the
//!   node's MAC.
//!
//! On the kernel datapath strait's VLAN programs sit on the uplink's tc
//! hooks; on the eBPF datapath from-netdev and to-netdev tag and untag
//! themselves (the fast path's redirected packets included), and this
//! backend only fills their map.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::PathBuf;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::overlay::{
    LOCAL_POD_RULE_PRIORITY, LOCAL_POD_TABLE, UNDERLAY_RULE_PRIORITY, UNDERLAY_TABLE,
};
use strait_model::routes::NodeRoute;
use strait_model::underlay::Underlay;
use strait_netlink::{write_sysctl, Netlink, Route, RouteKind, Rule};

pub struct VlanMode {
    pub(super) ipip: super::IpipLeftovers,
    pub uplink: String,
    pub bpf_dir: PathBuf,
    /// The eBPF datapath tags in its own programs.
    ebpf: bool,
    /// The kernel datapath's tagging programs, once loaded and attached.
    tagger: Option<strait_bpf::vlan::Vlan>,
}

impl VlanMode {
    pub(crate) fn new(
        ipip: super::IpipLeftovers,
        uplink: String,
        bpf_dir: PathBuf,
        ebpf: bool,
    ) -> Self {
        VlanMode {
            ipip,
            uplink,
            bpf_dir,
            ebpf,
            tagger: None,
        }
    }
}

/// The rules: local pods first, then one per underlay subnet.
pub fn rules(underlay: &[Underlay]) -> Vec<Rule> {
    let rule = super::strait_rule;
    let mut out = vec![rule(LOCAL_POD_RULE_PRIORITY, None, LOCAL_POD_TABLE)];
    out.extend(underlay.iter().enumerate().map(|(i, u)| {
        rule(
            UNDERLAY_RULE_PRIORITY,
            Some(u.cidr),
            UNDERLAY_TABLE + i as u32,
        )
    }));
    out
}

/// The i-th underlay table: the subnet on the uplink, the default via its
/// gateway.
pub fn table(i: usize, u: &Underlay, uplink: u32) -> Vec<Route> {
    let table = UNDERLAY_TABLE + i as u32;
    let any = match u.gateway {
        std::net::IpAddr::V4(_) => "0.0.0.0/0".parse().unwrap(),
        std::net::IpAddr::V6(_) => "::/0".parse().unwrap(),
    };
    vec![
        Route {
            dst: u.cidr,
            via: None,
            oif: Some(uplink),
            kind: RouteKind::Unicast,
            protocol: ROUTE_PROTOCOL,
            table,
            onlink: false,
            multipath: vec![],
        },
        Route {
            dst: any,
            via: Some(u.gateway),
            oif: Some(uplink),
            kind: RouteKind::Unicast,
            protocol: ROUTE_PROTOCOL,
            table,
            onlink: true,
            multipath: vec![],
        },
    ]
}

impl CrossNode for VlanMode {
    fn name(&self) -> &'static str {
        "vlan"
    }

    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            self.ipip.remove(nl).await?;
            self.ipip.remove_macvlan(nl).await?;
            let mut problems = vec![];
            let uplink = super::uplink_link(nl, &self.uplink, "vlan mode").await?;
            if self.tagger.is_none() && !self.ebpf {
                let mut t =
                    strait_bpf::vlan::Vlan::load(&self.bpf_dir, strait_bpf::vlan::Role::Node)?;
                t.attach(&self.uplink)?;
                tracing::info!(uplink = %self.uplink, "VLAN tagging attached (802.1Q done in eBPF at tc)");
                self.tagger = Some(t);
            }
            let subnets: BTreeMap<ipnet::IpNet, u16> =
                plan.underlay.iter().map(|u| (u.cidr, u.vlan)).collect();
            // The map is pinned by name: the kernel datapath's VLAN
            // programs and the eBPF datapath's netdev programs read it.
            let changed = strait_bpf::vlan::set_subnets(&self.bpf_dir, &subnets)?;
            if changed > 0 {
                tracing::info!(subnets = ?subnets, "VLAN subnets updated");
            }
            // The node answers ARP for its pods, at once.
            write_sysctl(&["net", "ipv4", "conf", &self.uplink, "proxy_arp"], "1")?;
            write_sysctl(&["net", "ipv4", "neigh", &self.uplink, "proxy_delay"], "0")?;
            for (i, u) in plan.underlay.iter().enumerate() {
                let want = table(i, u, uplink.index);
                problems
                    .extend(super::sync_table(nl, UNDERLAY_TABLE + i as u32, true, &want).await?);
            }
            // A subnet that went (or another mode's overlay) loses its rule,
            // and its table is emptied with it.
            super::sync_rules(nl, true, &rules(plan.underlay)).await?;
            if plan.underlay.is_empty() {
                problems.push(
                    "vlan mode: no IPPool has a vlanID and gateway; pods get no underlay address"
                        .into(),
                );
            }
            Ok(problems)
        })
    }

    /// Nothing in main: the underlay tables and the VLAN carry the peers.
    fn routes(&self, _peers: &[NodeRoute]) -> Vec<Route> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_and_table_per_underlay_subnet() {
        let u = |pool: &str, cidr: &str, vlan, gw: &str| Underlay {
            pool: pool.into(),
            cidr: cidr.parse().unwrap(),
            vlan,
            gateway: gw.parse().unwrap(),
        };
        let subnets = [
            u("vlan20", "198.18.20.0/24", 20, "198.18.20.1"),
            u("vlan30", "198.18.30.0/24", 30, "198.18.30.1"),
        ];
        let r = rules(&subnets);
        assert_eq!((r[0].table, r[0].src), (39999, None));
        assert_eq!((r[2].table, r[2].src), (10002, Some(subnets[1].cidr)));
        let t = table(1, &subnets[1], 7);
        assert_eq!(
            (t[0].dst.to_string(), t[0].table),
            ("198.18.30.0/24".into(), 10002)
        );
        assert_eq!(t[1].via, Some("198.18.30.1".parse().unwrap()));
    }
}
