//! Cross-node modes: how pod traffic reaches other nodes. One backend per
//! mode behind [`CrossNode`], chosen by name; the node-routes reconciler
//! drives whichever is configured.

pub mod bgp;
pub mod eni;
pub mod ipip;
pub mod macvlan;
pub mod routed;
pub mod tor;
pub mod vlan;
pub mod vxlan;

use futures::future::BoxFuture;
use strait_model::naming::ROUTE_PROTOCOL;
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route, Rule};

/// What a cross-node mode makes the kernel match on one pass.
pub struct Plan<'a> {
    /// The other nodes: their pod CIDRs and addresses.
    pub peers: &'a [NodeRoute],
    /// This node's blocks: its pod CIDR and IPPool blocks.
    pub local: &'a [ipnet::IpNet],
    /// The cluster's underlay (VLAN) subnets.
    pub underlay: &'a [strait_model::underlay::Underlay],
}

pub trait CrossNode: Send + Sync {
    /// The mode's name, as in `--cross-node` and `strait status`.
    fn name(&self) -> &'static str;

    /// Kernel objects other than main-table routes (devices, FDB,
    /// neighbours, rules, other tables, tc programs): make them match the
    /// plan. Returns per-object problems. Routed mode has none.
    fn prepare<'a>(
        &'a mut self,
        _nl: &'a Netlink,
        _plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }

    /// Main-table routes that send traffic for peers' pods on its way.
    fn routes(&self, peers: &[NodeRoute]) -> Vec<Route>;
}

/// The cross-node modes strait has, by name.
pub const MODES: &[&str] = &[
    "routed", "vxlan", "ipip", "bgp", "bgp-tor", "vlan", "macvlan", "eni",
];

/// `ports`: macvlan mode's VLAN ports, shared with the agent's API.
pub fn by_name(
    cfg: &crate::AgentConfig,
    ports: Option<std::sync::Arc<crate::macvlan::Ports>>,
) -> anyhow::Result<Box<dyn CrossNode>> {
    match cfg.cross_node.as_str() {
        "macvlan" => Ok(Box::new(macvlan::MacvlanMode::new(
            IpipLeftovers::new(cfg),
            cfg.uplink.clone(),
            ports.expect("macvlan mode has its ports"),
            cfg.mode == strait_model::lab::Mode::Ebpf,
        ))),
        "eni" => Ok(Box::new(eni::EniMode {
            ipip: IpipLeftovers::new(cfg),
            trunk: cfg.eni.as_ref().is_some_and(|e| e.pool.trunk),
        })),
        "routed" => Ok(Box::new(routed::Routed {
            ipip: IpipLeftovers::new(cfg),
        })),
        "bgp" => Ok(Box::new(bgp::Bgp {
            routed: routed::Routed {
                ipip: IpipLeftovers::new(cfg),
            },
        })),
        "vlan" => Ok(Box::new(vlan::VlanMode::new(
            IpipLeftovers::new(cfg),
            cfg.uplink.clone(),
            cfg.bpf_dir.clone(),
            cfg.mode == strait_model::lab::Mode::Ebpf,
        ))),
        "bgp-tor" => Ok(Box::new(tor::BgpTor {
            ipip: IpipLeftovers::new(cfg),
            uplink: cfg.uplink.clone(),
        })),
        "vxlan" => {
            strait_model::overlay::vxlan_device(&cfg.uplink, cfg.vxlan_vni)
                .map_err(anyhow::Error::msg)?;
            Ok(Box::new(vxlan::Vxlan {
                ipip: IpipLeftovers::new(cfg),
                uplink: cfg.uplink.clone(),
                vni: cfg.vxlan_vni,
                port: cfg.vxlan_port,
            }))
        }
        "ipip" => {
            strait_model::overlay::ipip_device(&cfg.uplink).map_err(anyhow::Error::msg)?;
            Ok(Box::new(ipip::Ipip::new(cfg)))
        }
        other => anyhow::bail!(
            "cross-node mode {other:?} is not one strait has; choose one of {}",
            MODES.join(", ")
        ),
    }
}

/// A rule of strait's: `from <src> lookup <table>` (from all when None).
pub(crate) fn strait_rule(priority: u32, src: Option<ipnet::IpNet>, table: u32) -> Rule {
    Rule {
        priority,
        src,
        dst: None,
        iif: None,
        table,
        protocol: ROUTE_PROTOCOL,
    }
}

/// Make strait's policy rules of one family exactly `want`: others of
/// strait's go (another mode's, or a VLAN subnet's that is gone) with
/// strait's routes in their tables (unless a wanted rule still uses the
/// table; main and the pods' 39999 are never emptied here), missing ones
/// are added.
pub(crate) async fn sync_rules(nl: &Netlink, v4: bool, want: &[Rule]) -> anyhow::Result<()> {
    let rules = nl.rules(v4).await?;
    let keep: std::collections::BTreeSet<u32> = want
        .iter()
        .map(|r| r.table)
        .chain([
            strait_netlink::MAIN_TABLE,
            strait_model::overlay::LOCAL_POD_TABLE,
        ])
        .collect();
    let mut emptied = std::collections::BTreeSet::new();
    for r in rules
        .iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL && !want.contains(r))
    {
        // The table first: the rule is the mark that there is something
        // to clean, so a crash in between leaves it for the next pass.
        if !keep.contains(&r.table) && emptied.insert(r.table) {
            for route in nl.routes_of(r.table, v4, ROUTE_PROTOCOL).await? {
                nl.delete_route(&route).await?;
            }
        }
        nl.delete_rule(r).await?;
        tracing::info!(rule = ?r, "policy rule removed");
    }
    for rule in want {
        if !rules.contains(rule) {
            nl.add_rule(rule).await?;
        }
    }
    Ok(())
}

/// Make strait's routes in `table` exactly `want` (all in that table).
/// Routes the kernel refuses are returned as problems.
pub(crate) async fn sync_table(
    nl: &Netlink,
    table: u32,
    v4: bool,
    want: &[Route],
) -> anyhow::Result<Vec<String>> {
    let mut problems = vec![];
    let have = nl.routes_in(table, v4).await?;
    for r in have.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
        if !want.contains(r) {
            nl.delete_route(r).await?;
        }
    }
    for r in want {
        if !have.contains(r) {
            if let Err(e) = nl.replace_route(r).await {
                problems.push(format!("route {} in table {table}: {e}", r.dst));
            }
        }
    }
    Ok(problems)
}

/// The uplink, which the mode named `mode` needs.
pub(crate) async fn uplink_link(
    nl: &Netlink,
    uplink: &str,
    mode: &str,
) -> anyhow::Result<strait_netlink::Link> {
    nl.link(uplink)
        .await?
        .ok_or_else(|| anyhow::anyhow!("uplink {uplink} not found: {mode} needs it (--uplink)"))
}

/// The uplink and its first address of the family the overlay runs on:
/// the outer source of an overlay's packets.
pub(crate) async fn uplink_address(
    nl: &Netlink,
    uplink: &str,
    mode: &str,
) -> anyhow::Result<(strait_netlink::Link, std::net::IpAddr)> {
    let link = uplink_link(nl, uplink, mode).await?;
    let local = nl
        .addresses(link.index)
        .await?
        .into_iter()
        .map(|n| n.addr())
        .find(|a| a.is_ipv4())
        .ok_or_else(|| {
            anyhow::anyhow!("uplink {uplink} has no IPv4 address to be the outer source of {mode}")
        })?;
    Ok((link, local))
}

/// What IP-in-IP leaves on a node that now runs another cross-node mode:
/// its stand-in device (the routes through it go with it), the tunnel's
/// map entries and, on the kernel datapath, tunnel_decap on the uplink.
/// Checked on every pass of the other modes: one link lookup when there is
/// nothing.
pub(crate) struct IpipLeftovers {
    uplink: String,
    pub(crate) bpf_dir: std::path::PathBuf,
    kernel_datapath: bool,
}

impl IpipLeftovers {
    fn new(cfg: &crate::AgentConfig) -> Self {
        IpipLeftovers {
            uplink: cfg.uplink.clone(),
            bpf_dir: cfg.bpf_dir.clone(),
            kernel_datapath: cfg.mode != strait_model::lab::Mode::Ebpf,
        }
    }

    /// What macvlan mode leaves: its VLAN ports (the links, which take
    /// any macvlan pods along) and their map entries. One file check when
    /// there are none.
    pub(crate) async fn remove_macvlan(&self, nl: &Netlink) -> anyhow::Result<()> {
        let ports = strait_bpf::vlan::ports(&self.bpf_dir)?;
        if ports.is_empty() {
            return Ok(());
        }
        for p in &ports {
            let (_, trunk) = strait_model::naming::vlan_port_names(&self.uplink, p.vid);
            nl.delete_link(&trunk).await?;
        }
        strait_bpf::vlan::set_ports(&self.bpf_dir, &[])?;
        tracing::info!(
            ports = ports.len(),
            "macvlan VLAN ports removed (another cross-node mode runs now)"
        );
        Ok(())
    }

    /// What vlan and macvlan modes leave: the ports; on the kernel datapath
    /// the tc programs on the uplink and the pinned maps (one file check
    /// when there are none); on the eBPF datapath (whose own programs tag)
    /// the maps' entries.
    pub(crate) async fn remove_vlan(&self, nl: &Netlink) -> anyhow::Result<()> {
        self.remove_macvlan(nl).await?;
        let done = if self.kernel_datapath {
            strait_bpf::vlan::retire(&self.bpf_dir, Some(self.uplink.as_str()))?
        } else {
            strait_bpf::vlan::clear(&self.bpf_dir)?
        };
        if done {
            tracing::info!(uplink = %self.uplink, "VLAN tagging removed (another cross-node mode runs now)");
        }
        Ok(())
    }

    pub(crate) async fn remove(&self, nl: &Netlink) -> anyhow::Result<()> {
        let Ok(dev) = strait_model::overlay::ipip_device(&self.uplink) else {
            return Ok(());
        };
        match nl.link(&dev).await? {
            Some(l) if l.kind.as_deref() == Some("macvlan") => {}
            _ => return Ok(()),
        }
        // The maps and the uplink's program first: once the device is gone,
        // nothing of IP-in-IP is left (and a crash between the two leaves
        // the device, which the next pass finds again).
        let decap = self.kernel_datapath.then_some(self.uplink.as_str());
        strait_bpf::tunnel::retire(&self.bpf_dir, decap)?;
        nl.delete_link(&dev).await?;
        tracing::info!(device = %dev, "IP-in-IP removed (another cross-node mode runs now)");
        Ok(())
    }
}
