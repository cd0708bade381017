//! macvlan: Bifrost's mode (seed 001 "MACVLAN模式"). Each pod's eth0 is a
//! macvlan (bridge mode) on its VLAN's port ([`crate::macvlan`]), with an
//! address of the VLAN's subnet and a default route via the VLAN's
//! gateway: the datacenter's switch and gateway carry all pod traffic, the
//! node routes none of it. So this backend has no routes, rules or tables
//! of its own; it removes other modes' and, on the kernel datapath, puts
//! vlan_ingress on the uplink so tagged frames reach the ports (the eBPF
//! datapath's from-netdev does that itself). The ports come and go with
//! their pods (the macvlan-ports reconciler); the service veths with the
//! pods' CNI verbs.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use std::sync::Arc;
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route};

pub struct MacvlanMode {
    pub(super) ipip: super::IpipLeftovers,
    pub uplink: String,
    pub ports: Arc<crate::macvlan::Ports>,
    ebpf: bool,
    attached: bool,
}

impl MacvlanMode {
    pub(crate) fn new(
        ipip: super::IpipLeftovers,
        uplink: String,
        ports: Arc<crate::macvlan::Ports>,
        ebpf: bool,
    ) -> Self {
        MacvlanMode {
            ipip,
            uplink,
            ports,
            ebpf,
            attached: false,
        }
    }
}

impl CrossNode for MacvlanMode {
    fn name(&self) -> &'static str {
        "macvlan"
    }

    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            self.ipip.remove(nl).await?;
            super::uplink_link(nl, &self.uplink, "macvlan mode").await?;
            if !self.attached && !self.ebpf {
                self.ports.attach_uplink().await?;
                tracing::info!(uplink = %self.uplink, "VLAN ports joined to the uplink (802.1Q in eBPF at tc)");
            }
            self.attached = true;
            // No subnet is tagged by address here (that is vlan mode): the
            // ports tag what their pods send.
            strait_bpf::vlan::set_subnets(&self.ipip.bpf_dir, &Default::default())?;
            // Another mode's rules and tables go.
            super::sync_rules(nl, true, &[]).await?;
            let mut problems = vec![];
            if plan.underlay.is_empty() {
                problems.push(
                    "macvlan mode: no IPPool has a vlanID and gateway; pods cannot be wired".into(),
                );
            }
            Ok(problems)
        })
    }

    /// Nothing in main: the VLANs and their gateway carry pod traffic.
    fn routes(&self, _peers: &[NodeRoute]) -> Vec<Route> {
        vec![]
    }
}
