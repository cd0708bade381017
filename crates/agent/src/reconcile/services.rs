//! Services: compile Services and EndpointSlices into this node's service
//! table and hand it to the service backend. Objects that cannot be
//! compiled are reported by name; the rest are programmed.

use super::{Reconciler, Report};
use crate::daemon::Agent;
use crate::svcbackend::ServiceBackend;
use std::net::IpAddr;
use strait_model::cluster::Kind;
use strait_model::cluster::{node_internal_ip, ClusterSnapshot};
use strait_model::services::{ServiceTable, ThisNode};

pub struct Services {
    backend: Box<dyn ServiceBackend>,
    compiler: strait_model::services::IncrementalCompiler,
}

impl Services {
    pub fn new(backend: Box<dyn ServiceBackend>) -> Self {
        Services {
            backend,
            compiler: Default::default(),
        }
    }
}

/// This node's service table (only changed services are compiled again).
fn table_for(
    compiler: &mut strait_model::services::IncrementalCompiler,
    agent: &Agent,
    snap: &ClusterSnapshot,
) -> ServiceTable {
    let me = &agent.cfg.node_name;
    let this = snap
        .node(me)
        .and_then(|n| node_internal_ip(n, true))
        .and_then(|ip| match ip {
            IpAddr::V4(ip) => Some(ThisNode {
                name: me.clone(),
                ip,
            }),
            IpAddr::V6(_) => None,
        });
    compiler.compile(snap, this.as_ref())
}

impl Reconciler for Services {
    const NAME: &'static str = "services";
    const READS: &'static [Kind] = &[Kind::Services, Kind::EndpointSlices, Kind::Nodes];

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let compile = std::time::Instant::now();
        let table = table_for(&mut self.compiler, agent, snap);
        let t0 = std::time::Instant::now();
        let changed = tokio::task::block_in_place(|| self.backend.apply(&table))?;
        let mut pb = agent.published.lock().unwrap();
        if changed > 0 {
            agent.metrics.services_programmed(compile.elapsed());
            let micros = t0.elapsed().as_micros() as u64;
            tracing::info!(
                backend = self.backend.name(),
                frontends = table.entries.len(),
                changed,
                micros,
                "service table applied"
            );
            pb.service_sync = Some(strait_model::api::ServiceSync {
                frontends: table.entries.len(),
                changed,
                micros,
            });
        }
        pb.services = table.entries;
        pb.service_problems = table.problems.clone();
        // The health reconciler serves from what is published here.
        let health_changed = pb.health_checks != table.health_checks;
        pb.health_checks = table.health_checks;
        drop(pb);
        if health_changed {
            agent.nudge();
        }
        // Rejected objects are the user's to fix, not a reason to retry:
        // they are published in status, logged once, and not problems of
        // this pass.
        let mut seen = agent.service_problems_logged.lock().unwrap();
        for p in table.problems.iter().filter(|p| !seen.contains(*p)) {
            tracing::warn!(problem = %p, "service object rejected; fix the object");
        }
        *seen = table.problems;
        Ok(Report {
            changed,
            problems: vec![],
        })
    }
}
