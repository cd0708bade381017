//! NetworkPolicy on the kernel datapath: `inet strait_policy`, changed
//! incrementally ([`strait_model::policy::nft::plan`]): a pod whose rules
//! changed has its chain flushed and refilled, in one atomic `nft -f`
//! transaction with whatever else changed; other pods' chains are not
//! touched. The first pass after start rebuilds the table in one
//! transaction (established connections pass on conntrack meanwhile).

use super::{PodRules, PolicyBackend};
use strait_model::policy::nft::{desired, plan, PodPolicy, Programmed};

#[derive(Default)]
pub struct NftPolicy {
    /// What the table holds; None until this agent has written it (and
    /// after a failed apply: the next pass rebuilds).
    programmed: Option<Programmed>,
}

impl PolicyBackend for NftPolicy {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, pods: &[PodRules]) -> anyhow::Result<usize> {
        let views: Vec<PodPolicy> = pods
            .iter()
            .map(|p| PodPolicy {
                key: &p.pod,
                ips: &p.ips,
                ingress: &p.ingress,
                egress: &p.egress,
            })
            .collect();
        let next = desired(&views);
        let script = plan(self.programmed.take().as_ref(), &next);
        if script.is_empty() {
            self.programmed = Some(next);
            return Ok(0);
        }
        crate::daemon::nft_apply(&script)?;
        self.programmed = Some(next);
        Ok(script.lines().count())
    }
}
