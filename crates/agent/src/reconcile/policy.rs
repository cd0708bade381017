//! NetworkPolicy: compiles, for every pod on this node, the policies that
//! isolate it in each direction (selectors, ipBlocks and named ports
//! resolved against every pod and namespace of the cluster), and hands the
//! result to the datapath's [`crate::policybackend::PolicyBackend`].

use super::{Reconciler, Report};
use crate::daemon::Agent;
use crate::policybackend::{PodRules, PolicyBackend};
use strait_model::cluster::{ClusterSnapshot, Kind};
use strait_model::policy::{pod_ips, Direction, View};

pub struct Policy {
    backend: Box<dyn PolicyBackend>,
}

impl Policy {
    pub fn new(backend: Box<dyn PolicyBackend>) -> Self {
        Policy { backend }
    }
}

impl Reconciler for Policy {
    const NAME: &'static str = "policy";
    const READS: &'static [Kind] = &[Kind::Pods, Kind::Namespaces, Kind::NetworkPolicies];

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let t0 = std::time::Instant::now();
        let mut rep = Report::default();
        let view = View::new(snap);
        let node = agent.cfg.node_name.as_str();
        let mut pods = vec![];
        for p in &snap.pods {
            let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let ips = pod_ips(p);
            if on != Some(node) || ips.is_empty() {
                continue;
            }
            let (ingress, pi) = view.compile(p, Direction::Ingress);
            let (egress, pe) = view.compile(p, Direction::Egress);
            for pr in pi.into_iter().chain(pe) {
                rep.problems
                    .push(format!("policy {}: {}", pr.policy, pr.message));
            }
            pods.push(PodRules {
                pod: format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default()
                ),
                ips,
                ingress,
                egress,
            });
        }
        let backend = &mut self.backend;
        let applied = tokio::task::block_in_place(|| backend.apply(&pods));
        // What is enforced (or, on failure, what should be: the problem
        // says it is not), for `strait policy list`.
        agent.published.lock().unwrap().policy = pods;
        rep.changed = applied?;
        if rep.changed > 0 {
            agent.metrics.policy_programmed(t0.elapsed());
        }
        Ok(rep)
    }
}
