//! Conntrack (eBPF datapath): every resync, delete expired connections
//! (both entries), rebuild the missing half of a live one, publish counts by
//! state and how full the maps are. At 90 % the LRU is about to evict live
//! connections: that is logged as a warning and reported as a problem in
//! `strait status`.

use super::{Reconciler, Report};
use crate::daemon::Agent;
use strait_model::api::ConntrackStatus;
use strait_model::cluster::ClusterSnapshot;

/// Above this share of capacity, the maps are "under pressure".
pub const PRESSURE_WARN: f64 = 0.9;

pub struct Conntrack {
    pin_dir: std::path::PathBuf,
    expired_total: u64,
    repaired_total: u64,
}

impl Conntrack {
    pub fn new(pin_dir: std::path::PathBuf) -> Self {
        Conntrack {
            pin_dir,
            expired_total: 0,
            repaired_total: 0,
        }
    }
}

impl Reconciler for Conntrack {
    const NAME: &'static str = "conntrack";
    const READS: &'static [strait_model::cluster::Kind] = &[];

    async fn pass(&mut self, agent: &Agent, _snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let st = tokio::task::block_in_place(|| {
            strait_bpf::ct::gc(&self.pin_dir, strait_bpf::ct::ktime_ns())
        })?;
        self.expired_total += st.expired as u64;
        self.repaired_total += st.repaired as u64;
        let mut problems = vec![];
        if st.pressure() >= PRESSURE_WARN {
            let p = format!(
                "service conntrack is {:.0}% full ({} of {} entries): the oldest connections are being evicted",
                st.pressure() * 100.0,
                st.forward.max(st.reverse),
                st.capacity
            );
            tracing::warn!(problem = %p, "conntrack under pressure");
            problems.push(p);
        }
        agent.published.lock().unwrap().conntrack = Some(ConntrackStatus {
            by_state: st
                .by_state
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            forward: st.forward,
            reverse: st.reverse,
            capacity: st.capacity,
            expired_total: self.expired_total,
            repaired_total: self.repaired_total,
        });
        Ok(Report {
            changed: st.expired + st.repaired,
            problems,
        })
    }
}
