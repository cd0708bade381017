//! IPPool blocks: the control plane's IPAMBlock objects and this node's
//! IPAM state kept in step, and nothing leaked.
//!
//! - A block the control plane says this node holds, but the state lacks
//!   (state lost, or an ADD that died between claiming and allocating), is
//!   adopted, and given back below if nothing is in it.
//! - A block the state holds but the control plane lacks (deleted by
//!   hand) is claimed again, so no other node takes addresses in use here;
//!   one another node holds is reported.
//! - A block of this node with nothing in use or cooling down is given
//!   back (its object deleted).
//! - A block held by a node that no longer exists is deleted by whichever
//!   agent sees it first (deletes are idempotent).
//!
//! Routes to blocks are the node-routes reconciler's.

use super::{Reconciler, Report};
use crate::daemon::Agent;
use std::collections::BTreeSet;
use strait_model::cluster::{ClusterSnapshot, Kind};
use strait_model::ippool::{held_blocks, Block};

#[derive(Default)]
pub struct IpamBlocks {
    /// Blocks given back whose objects the snapshot may still show.
    released: BTreeSet<ipnet::IpNet>,
}

impl Reconciler for IpamBlocks {
    const NAME: &'static str = "ipam-blocks";
    const READS: &'static [Kind] = &[Kind::Nodes, Kind::IpamBlocks];

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let mut rep = Report::default();
        let me = agent.cfg.node_name.as_str();
        let held = held_blocks(snap);
        let nodes: BTreeSet<&str> = snap
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        for b in held.iter().filter(|b| !nodes.contains(b.node.as_str())) {
            agent.source.release_block(b).await?;
            tracing::info!(block = %b.cidr, pool = %b.pool, node = %b.node, "released the block of a node that is gone");
            rep.changed += 1;
        }
        // Blocks given back stay out until the snapshot stops showing them.
        self.released
            .retain(|c| held.iter().any(|b| b.cidr == *c && b.node == me));
        let ours: Vec<(ipnet::IpNet, String)> = held
            .iter()
            .filter(|b| b.node == me && !self.released.contains(&b.cidr))
            .map(|b| (b.cidr, b.pool.clone()))
            .collect();
        let idle = {
            // An ADD claiming a block holds this lock from its claim until
            // the block is in the state: without it, this pass could adopt
            // the just-claimed (still empty) block and give it back.
            let Ok(_claiming) = agent.ipam.claims.try_lock() else {
                return Ok(rep);
            };
            if agent
                .ipam
                .adopt_blocks(&ours)
                .map_err(|e| anyhow::anyhow!(e.message))?
                > 0
            {
                tracing::info!("adopted blocks the control plane says this node holds");
            }
            agent
                .ipam
                .take_idle_blocks()
                .map_err(|e| anyhow::anyhow!(e.message))?
        };
        for (cidr, pool) in agent.ipam.blocks() {
            let block = Block {
                cidr,
                pool,
                node: me.to_string(),
            };
            match held.iter().find(|b| b.cidr == cidr) {
                Some(b) if b.node != me => rep.problems.push(format!(
                    "block {cidr} of IPPool {} is held by node {} in the control plane, but this node has pods in it; delete those pods",
                    b.pool, b.node
                )),
                Some(_) => {}
                None => {
                    if agent.source.claim_block(&block).await? {
                        tracing::warn!(block = %cidr, "this node's block was missing from the control plane; claimed it again");
                        rep.changed += 1;
                    }
                }
            }
        }
        for (cidr, pool) in idle {
            let block = Block {
                cidr,
                pool,
                node: me.to_string(),
            };
            if let Err(e) = agent.source.release_block(&block).await {
                // Back into the state, so the next pass tries again.
                let _ = agent.ipam.adopt_blocks(&[(block.cidr, block.pool.clone())]);
                rep.problems.push(format!("give back block {cidr}: {e:#}"));
                continue;
            }
            tracing::info!(block = %cidr, pool = %block.pool, "gave back an idle block");
            self.released.insert(cidr);
            rep.changed += 1;
        }
        Ok(rep)
    }
}
