//! VXLAN, as the seed describes Hybridnet's overlay (and flannel's vxlan
//! backend wires it): one device per node, `eth0.vxlan<VNI>`, UDP 8472,
//! learning off, no multicast. For every peer node, level-triggered:
//!
//! - FDB: the peer's VTEP MAC -> its node IP, and all-zeros -> its node IP
//!   (BUM);
//! - a permanent neighbour: the peer pod CIDR's first address -> its MAC;
//! - table 40000: the peer's pod CIDR via that address, onlink, on the
//!   device. Rules send every lookup through table 39999 (this node's
//!   pods, moved there by the endpoints reconciler) and then 40000.
//!
//! Entries of nodes that left are removed; drift is healed on every pass.
//! VTEP MACs derive from node IPs (`strait_model::overlay::vtep_mac`), so
//! nothing has to be published on the Node objects.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::net::IpAddr;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::overlay::{
    vtep_mac, vtep_peers, vxlan_device, LOCAL_POD_RULE_PRIORITY, LOCAL_POD_TABLE,
    OVERLAY_RULE_PRIORITY, OVERLAY_TABLE, VXLAN_OVERHEAD_V4,
};
use strait_model::routes::NodeRoute;
use strait_netlink::{FdbEntry, Netlink, Route, RouteKind, Rule};

pub struct Vxlan {
    pub(super) ipip: super::IpipLeftovers,
    pub uplink: String,
    pub vni: u32,
    pub port: u16,
}

impl Vxlan {
    /// Local pods first (table 39999), then the peers' subnets (40000).
    fn rules() -> [Rule; 2] {
        let rule = |priority, table| super::strait_rule(priority, None, table);
        [
            rule(LOCAL_POD_RULE_PRIORITY, LOCAL_POD_TABLE),
            rule(OVERLAY_RULE_PRIORITY, OVERLAY_TABLE),
        ]
    }

    /// The device, created or recreated to match; returns its index.
    async fn device(
        &self,
        nl: &Netlink,
        local: IpAddr,
        uplink: &strait_netlink::Link,
    ) -> anyhow::Result<u32> {
        let name = vxlan_device(&self.uplink, self.vni).map_err(anyhow::Error::msg)?;
        let want = strait_netlink::Vxlan {
            vni: self.vni,
            port: self.port,
            local: Some(local),
            dev: Some(uplink.index),
            learning: false,
        };
        let mac = vtep_mac(local);
        match nl.vxlan(&name).await? {
            Some((link, Some(got))) if got == want && link.mac == mac => {
                if !link.up {
                    nl.set_up(link.index).await?;
                }
                return Ok(link.index);
            }
            Some((_, Some(got))) => {
                tracing::warn!(device = %name, ?got, ?want, "VXLAN device differs from the plan; recreating it");
                nl.delete_link(&name).await?;
            }
            Some((_, None)) => anyhow::bail!("{name} exists and is not a VXLAN device; strait will not replace it (delete it, or choose another VNI)"),
            None => {}
        }
        let mtu = uplink.mtu.saturating_sub(VXLAN_OVERHEAD_V4);
        nl.create_vxlan(&name, &want, Some(mac), mtu).await?;
        let index = nl
            .link(&name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name} vanished after it was created"))?
            .index;
        nl.set_up(index).await?;
        tracing::info!(device = %name, vni = self.vni, port = self.port, %local, mtu, "VXLAN device created");
        Ok(index)
    }
}

impl CrossNode for Vxlan {
    fn name(&self) -> &'static str {
        "vxlan"
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
            let (uplink, local) = super::uplink_address(nl, &self.uplink, "VXLAN").await?;
            let index = self.device(nl, local, &uplink).await?;
            let vteps = vtep_peers(plan.peers, local.is_ipv4());

            // FDB: exactly the peers' entries.
            let want: BTreeSet<FdbEntry> = vteps
                .iter()
                .flat_map(|p| {
                    [
                        FdbEntry {
                            mac: p.mac,
                            dst: p.vtep,
                        },
                        FdbEntry {
                            mac: [0; 6],
                            dst: p.vtep,
                        },
                    ]
                })
                .collect();
            let have: BTreeSet<FdbEntry> = nl.fdb(index).await?.into_iter().collect();
            for e in have.difference(&want) {
                nl.delete_fdb(index, e).await?;
            }
            for e in want.difference(&have) {
                if let Err(err) = nl.append_fdb(index, e).await {
                    problems.push(format!("fdb {:02x?} -> {}: {err}", e.mac, e.dst));
                }
            }

            // Neighbours: each peer's next hop resolves to its VTEP MAC.
            let have = nl.permanent_neighbours(index).await?;
            for (ip, mac) in &have {
                if !vteps
                    .iter()
                    .any(|p| p.gateway == *ip && p.mac[..] == mac[..])
                {
                    nl.delete_neighbour(index, *ip).await?;
                }
            }
            for p in &vteps {
                if !have
                    .iter()
                    .any(|(ip, mac)| *ip == p.gateway && mac[..] == p.mac[..])
                {
                    nl.replace_permanent_neighbour(index, p.gateway, &p.mac)
                        .await?;
                }
            }

            // Table 40000: each peer's pod CIDR through the device.
            let want: Vec<Route> = vteps
                .iter()
                .map(|p| Route {
                    dst: p.pod_cidr,
                    via: Some(p.gateway),
                    oif: Some(index),
                    kind: RouteKind::Unicast,
                    protocol: ROUTE_PROTOCOL,
                    table: OVERLAY_TABLE,
                    onlink: true,
                    multipath: vec![],
                })
                .collect();
            problems.extend(super::sync_table(nl, OVERLAY_TABLE, local.is_ipv4(), &want).await?);
            // The rules, once each.
            super::sync_rules(nl, local.is_ipv4(), &Self::rules()).await?;
            Ok(problems)
        })
    }

    /// Nothing in main: table 40000 carries the peers.
    fn routes(&self, _peers: &[NodeRoute]) -> Vec<Route> {
        vec![]
    }
}
