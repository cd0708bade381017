//! ENI multi-IP ([`crate::eni`]): the warm pool kept between its bounds
//! through the cloud, then the node's ENI links, their tables and
//! Terway's per-pod rules made to match the cloud's view and the pods.
//! CNI ADD takes addresses (and asks the cloud when none is idle); DEL
//! and GC return them here, and what is above the pool's max goes back to
//! the cloud.

use super::{Reconciler, Report};
use crate::daemon::Agent;
use std::sync::Arc;
use strait_model::cluster::{ClusterSnapshot, Kind};
use strait_netlink::Netlink;

pub struct EniPool {
    nl: Netlink,
    enis: Arc<crate::eni::Enis>,
}

impl EniPool {
    pub fn new(enis: Arc<crate::eni::Enis>) -> anyhow::Result<Self> {
        Ok(EniPool {
            nl: Netlink::connect()?,
            enis,
        })
    }
}

impl Reconciler for EniPool {
    const NAME: &'static str = "eni-pool";
    const READS: &'static [Kind] = &[Kind::Nodes];

    async fn pass(&mut self, agent: &Agent, _snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let mut rep = Report::default();
        // Without IPAM state (no pod CIDR yet) the pods in use are unknown:
        // nothing may be given back.
        if agent.ipam.cidr().is_none() {
            rep.problems
                .push("IPAM is not ready; the ENI pool waits".into());
            return Ok(rep);
        }
        match tokio::task::block_in_place(|| self.enis.maintain(&agent.ipam)) {
            Ok(done) => rep.changed += done.len(),
            Err(e) => rep.problems.push(format!("ENI pool: {e}")),
        }
        let before = self.enis.links();
        let k = self
            .enis
            .sync_kernel(&self.nl, || agent.ipam.allocations())
            .await?;
        if self.enis.links() != before {
            // The eBPF datapath puts from-netdev on new ENI links.
            agent.nudge();
        }
        rep.changed += k.changed;
        rep.problems.extend(k.problems);
        Ok(rep)
    }
}
