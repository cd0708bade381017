//! IP-in-IP, as the seed describes Calico's IPIP mode, on a kernel without
//! the ipip module: the encapsulation is done in eBPF.
//!
//! - `eth0.ipip` stands in for Calico's tunl0: a macvlan of the uplink in
//!   source mode (it receives nothing), no ARP, MTU uplink - 20. Each
//!   peer's pod CIDR is routed `via NODE dev eth0.ipip onlink` in main.
//! - tunnel_encap on its tc egress wraps what the host stack sends there
//!   (outer: this node -> the route's gateway, protocol 4) and redirects it
//!   out of the uplink. On the eBPF datapath from-container does the same
//!   inline, so pod traffic never passes the device.
//! - The uplink's tc ingress opens IP-in-IP from the nodes in
//!   strait_tunnel_peers and drops it from anyone else: tunnel_decap on the
//!   kernel datapath, from-netdev on the eBPF datapath.
//!
//! Level-triggered like the others: the device is recreated when it
//! differs, the tunnel's map entry and the peer set are rewritten when they
//! drift, and a node that leaves loses its route and its peer entry.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use strait_bpf::maps::{ip_key, TunnelCfg};
use strait_bpf::tunnel::Tunnel;
use strait_model::lab::Mode;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::overlay::{ipip_device, IPIP_OVERHEAD_V4};
use strait_model::routes::NodeRoute;
use strait_netlink::{Link, Netlink, Route, RouteKind};

pub struct Ipip {
    uplink: String,
    datapath: Mode,
    bpf_dir: PathBuf,
    tunnel: Option<Tunnel>,
    /// The device's index, once it exists (routes point at it).
    index: Option<u32>,
    /// Where the programs were attached (device index, uplink index).
    encap_on: Option<u32>,
    decap_on: Option<u32>,
    /// What vlan mode may have left (its device check is not used).
    vlan_leftovers: super::IpipLeftovers,
}

impl Ipip {
    pub fn new(cfg: &crate::AgentConfig) -> Ipip {
        Ipip {
            uplink: cfg.uplink.clone(),
            datapath: cfg.mode,
            bpf_dir: cfg.bpf_dir.clone(),
            tunnel: None,
            index: None,
            encap_on: None,
            decap_on: None,
            vlan_leftovers: super::IpipLeftovers::new(cfg),
        }
    }

    /// The stand-in device, created or recreated to match; returns it.
    async fn device(&self, nl: &Netlink, uplink: &Link) -> anyhow::Result<Link> {
        let name = ipip_device(&self.uplink).map_err(anyhow::Error::msg)?;
        let mtu = uplink.mtu.saturating_sub(IPIP_OVERHEAD_V4);
        match nl.link(&name).await? {
            Some(l) if l.kind.as_deref() != Some("macvlan") => anyhow::bail!(
                "{name} exists and is not strait's IP-in-IP device (a macvlan); strait will not replace it (delete it, or rename the uplink)"
            ),
            Some(l) if l.peer_index == Some(uplink.index) && l.noarp && l.mtu == mtu => {
                if !l.up {
                    nl.set_up(l.index).await?;
                }
                return Ok(l);
            }
            Some(l) => {
                tracing::warn!(device = %name, mtu = l.mtu, want_mtu = mtu, noarp = l.noarp, "IP-in-IP device differs from the plan; recreating it");
                nl.delete_link(&name).await?;
            }
            None => {}
        }
        nl.create_standin(&name, uplink.index, mtu).await?;
        // Its IPv6 housekeeping (router solicitations, MLD) would only be
        // dropped by tunnel_encap; a kernel without IPv6 has nothing to stop.
        let _ = strait_netlink::write_sysctl(&["net", "ipv6", "conf", &name, "disable_ipv6"], "1");
        let link = nl
            .link(&name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name} vanished after it was created"))?;
        tracing::info!(device = %name, mtu, uplink = %self.uplink, "IP-in-IP device created");
        Ok(link)
    }

    /// Load the programs once; attach them where they are not yet.
    fn programs(&mut self, dev: &Link, uplink: &Link) -> anyhow::Result<&Tunnel> {
        use anyhow::Context;
        if self.tunnel.is_none() {
            crate::datapath::ensure_pin_root(&self.bpf_dir)?;
            self.tunnel = Some(Tunnel::load(&self.bpf_dir).context("load the IP-in-IP programs")?);
        }
        let t = self.tunnel.as_mut().unwrap();
        if self.encap_on != Some(dev.index) {
            t.attach_encap(&dev.name)?;
            tracing::info!(device = %dev.name, "tunnel_encap attached");
            self.encap_on = Some(dev.index);
        }
        if self.datapath != Mode::Ebpf && self.decap_on != Some(uplink.index) {
            t.attach_decap(&uplink.name)?;
            tracing::info!(uplink = %uplink.name, "tunnel_decap attached");
            self.decap_on = Some(uplink.index);
        }
        Ok(t)
    }
}

/// The next hop out of `uplink` toward `node` by the main table's longest
/// match: its gateway, or the node itself when it is on the link. An outer
/// packet whose next hop is unresolved would be queued by the neighbour
/// layer and sent on the stand-in device's cached route, not the uplink,
/// so strait keeps these entries resolved: managed neighbours
/// (NTF_EXT_MANAGED), as Cilium does for its nodes.
fn next_hop(routes: &[Route], node: IpAddr, uplink: u32) -> Option<IpAddr> {
    routes
        .iter()
        .filter(|r| {
            r.table == strait_netlink::MAIN_TABLE
                && r.kind == RouteKind::Unicast
                && r.oif == Some(uplink)
                && r.dst.contains(&node)
        })
        .max_by_key(|r| r.dst.prefix_len())
        .map(|r| r.via.unwrap_or(node))
}

impl CrossNode for Ipip {
    fn name(&self) -> &'static str {
        "ipip"
    }

    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            // Before tunnel_decap goes on the uplink's ingress.
            self.vlan_leftovers.remove_vlan(nl).await?;
            let (uplink, local) = super::uplink_address(nl, &self.uplink, "IP-in-IP").await?;
            let IpAddr::V4(local4) = local else {
                unreachable!("uplink_address returns IPv4")
            };
            let dev = self.device(nl, &uplink).await?;
            let tunnel = self.programs(&dev, &uplink)?;
            let want = TunnelCfg {
                ifindex: dev.index,
                uplink: uplink.index,
                local4: ip_key(local4),
                flags: 0,
                local6: [0; 16],
            };
            if tunnel.config().ok() != Some(want) {
                tunnel.configure(&want)?;
                tracing::info!(device = %dev.name, %local, "IP-in-IP tunnel configured");
            }
            let nodes: BTreeSet<IpAddr> = plan
                .peers
                .iter()
                .filter(|p| p.via.is_ipv4() && p.pod_cidr.addr().is_ipv4())
                .map(|p| p.via)
                .collect();
            let changed = tunnel.sync_peers(&nodes)?;
            if changed > 0 {
                tracing::info!(nodes = nodes.len(), changed, "IP-in-IP peers updated");
            }
            // The outer packets' next hops stay resolved, so the first packet
            // to a node does not wait for ARP (see keep_next_hops_resolved).
            let routes = nl.routes(true).await?;
            let hops: BTreeSet<IpAddr> = nodes
                .iter()
                .filter_map(|n| next_hop(&routes, *n, uplink.index))
                .collect();
            let mut problems = vec![];
            let have = nl.managed_neighbours(uplink.index, ROUTE_PROTOCOL).await?;
            for ip in have.iter().filter(|ip| !hops.contains(ip)) {
                nl.delete_neighbour(uplink.index, *ip).await?;
            }
            for ip in hops.iter().filter(|ip| !have.contains(ip)) {
                if let Err(e) = nl
                    .add_managed_neighbour(uplink.index, *ip, ROUTE_PROTOCOL)
                    .await
                {
                    problems.push(format!("managed neighbour {ip} on {}: {e}", uplink.name));
                }
            }
            self.index = Some(dev.index);
            Ok(problems)
        })
    }

    /// Each peer's pod CIDR via the peer, on the stand-in device (Calico's
    /// `via NODE dev tunl0 onlink`).
    fn routes(&self, peers: &[NodeRoute]) -> Vec<Route> {
        let Some(index) = self.index else {
            return vec![];
        };
        peers
            .iter()
            .filter(|r| r.pod_cidr.addr().is_ipv4() && r.via.is_ipv4())
            .map(|r| Route {
                dst: r.pod_cidr,
                via: Some(r.via),
                oif: Some(index),
                kind: RouteKind::Unicast,
                protocol: ROUTE_PROTOCOL,
                table: strait_netlink::MAIN_TABLE,
                onlink: true,
                multipath: vec![],
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, via: Option<&str>, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            via: via.map(|v| v.parse().unwrap()),
            oif: Some(oif),
            kind: RouteKind::Unicast,
            protocol: 2,
            table: strait_netlink::MAIN_TABLE,
            onlink: false,
            multipath: vec![],
        }
    }

    #[test]
    fn next_hop_is_the_node_on_link_or_the_longest_match_gateway() {
        let routes = [
            route("0.0.0.0/0", Some("198.18.0.254"), 2),
            route("198.18.0.0/24", None, 2),
            route("198.18.8.0/22", Some("198.18.0.9"), 2),
            route("198.18.9.0/24", Some("198.18.0.7"), 3),
        ];
        let hop = |n: &str| next_hop(&routes, n.parse().unwrap(), 2).map(|h| h.to_string());
        assert_eq!(hop("198.18.0.2").as_deref(), Some("198.18.0.2"));
        assert_eq!(hop("198.18.9.5").as_deref(), Some("198.18.0.9"));
        assert_eq!(hop("198.19.5.5").as_deref(), Some("198.18.0.254"));
        assert_eq!(
            next_hop(&routes[1..2], "198.19.5.5".parse().unwrap(), 2),
            None
        );
    }
}
