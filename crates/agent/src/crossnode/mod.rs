//! Cross-node modes: how pod traffic reaches other nodes. One backend per
//! mode behind [`CrossNode`], chosen by name; the node-routes reconciler
//! drives whichever is configured. Routed and VXLAN are here; IPIP, BGP
//! and VLAN slot in beside them.

pub mod routed;
pub mod vxlan;

use futures::future::BoxFuture;
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route};

pub trait CrossNode: Send + Sync {
    /// The mode's name, as in `--cross-node` and `strait status`.
    fn name(&self) -> &'static str;

    /// Kernel objects other than main-table routes (devices, FDB,
    /// neighbours, rules, other tables): make them match `peers`. Returns
    /// per-object problems. Routed mode has none.
    fn prepare<'a>(
        &'a mut self,
        _nl: &'a Netlink,
        _peers: &'a [NodeRoute],
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }

    /// Main-table routes that send traffic for peers' pods on its way.
    fn routes(&self, peers: &[NodeRoute]) -> Vec<Route>;
}

/// The cross-node modes strait has, by name.
pub const MODES: &[&str] = &["routed", "vxlan"];

pub fn by_name(cfg: &crate::AgentConfig) -> anyhow::Result<Box<dyn CrossNode>> {
    match cfg.cross_node.as_str() {
        "routed" => Ok(Box::new(routed::Routed)),
        "vxlan" => {
            strait_model::overlay::vxlan_device(&cfg.uplink, cfg.vxlan_vni)
                .map_err(anyhow::Error::msg)?;
            Ok(Box::new(vxlan::Vxlan {
                uplink: cfg.uplink.clone(),
                vni: cfg.vxlan_vni,
                port: cfg.vxlan_port,
            }))
        }
        other => anyhow::bail!(
            "cross-node mode {other:?} is not one strait has; choose one of {}",
            MODES.join(", ")
        ),
    }
}
