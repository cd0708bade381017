//! macvlan mode's VLAN ports ([`crate::macvlan`]): one per VLAN that has a
//! pod on this node, none for the others. CNI ADD makes a missing port at
//! once; this pass removes the ports whose last pod went (DEL, GC, a pod
//! whose namespace vanished) and re-programs the ones it finds.

use super::{Reconciler, Report};
use crate::daemon::Agent;
use std::sync::Arc;
use strait_model::cluster::{ClusterSnapshot, Kind};
use strait_netlink::Netlink;

pub struct MacvlanPorts {
    nl: Netlink,
    ports: Arc<crate::macvlan::Ports>,
}

impl MacvlanPorts {
    pub fn new(ports: Arc<crate::macvlan::Ports>) -> anyhow::Result<Self> {
        Ok(MacvlanPorts {
            nl: Netlink::connect()?,
            ports,
        })
    }
}

impl Reconciler for MacvlanPorts {
    const NAME: &'static str = "macvlan-ports";
    const READS: &'static [Kind] = &[Kind::IpPools];

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let (underlay, _) = strait_model::underlay::underlay_subnets(snap);
        let in_use = || {
            crate::macvlan::vlans_in_use(agent.ipam.allocations().iter().map(|a| a.ip), &underlay)
        };
        let (changed, problems) = self.ports.sync(&self.nl, in_use).await?;
        Ok(Report { changed, problems })
    }
}
