//! Agent start-up and the main loop.

use crate::config::AgentConfig;
use crate::ipam::NodeIpam;
use crate::source::{ClusterSource, DirectorySource};
use anyhow::Context;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_model::cluster::{node_internal_ip, node_pod_cidrs, ClusterSnapshot};
use strait_model::routes::NodeRoute;
use tokio::sync::{watch, Notify};

pub struct Agent {
    pub cfg: AgentConfig,
    pub ipam: NodeIpam,
    pub snapshot: watch::Receiver<Arc<ClusterSnapshot>>,
    /// Ask the reconciler for a pass now (after GC, say).
    pub nudge: Notify,
    /// What the last reconcile pass programmed, for `status`.
    pub programmed: Mutex<Vec<NodeRoute>>,
    /// Host veths of released pods, to delete on the next pass.
    pub doomed_links: Mutex<Vec<String>>,
    /// Host veths no allocation owns, and when they were first seen so.
    pub orphan_links: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Agent {
    /// Why the node cannot serve ADDs, if it cannot.
    pub fn not_ready_reason(&self) -> Option<String> {
        let snap = self.snapshot.borrow().clone();
        let Some(node) = snap.node(&self.cfg.node_name) else {
            return Some(format!(
                "no Node object named {:?} in the cluster source",
                self.cfg.node_name
            ));
        };
        if node_pod_cidrs(node).is_empty() {
            return Some(format!("Node {:?} has no spec.podCIDR", self.cfg.node_name));
        }
        if node_internal_ip(node, true).is_none() {
            return Some(format!(
                "Node {:?} has no InternalIP address",
                self.cfg.node_name
            ));
        }
        None
    }
}

/// Test hook: pause forever at a named point so crash tests can kill -9 the
/// agent mid-operation. Unset in production.
pub fn pause_point(step: &str) {
    if std::env::var("STRAIT_AGENT_PAUSE_AT").as_deref() == Ok(step) {
        tracing::warn!(step, "paused (STRAIT_AGENT_PAUSE_AT)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("create state dir {}", cfg.state_dir.display()))?;
    let stale = crate::store::remove_stale_temps(&cfg.state_dir);
    if stale > 0 {
        tracing::info!(stale, "removed temp files left by a crash");
    }
    strait_netlink::write_sysctl(&["net", "ipv4", "ip_forward"], "1")
        .context("enable IPv4 forwarding in the node's namespace")?;
    let ipam = NodeIpam::load(cfg.state_dir.join("ipam.json"), cfg.ip_cooldown)
        .context("load IPAM state")?;
    let source = DirectorySource::start(cfg.manifests_dir.clone(), Duration::from_millis(500));
    let agent = Arc::new(Agent {
        ipam,
        snapshot: source.subscribe(),
        nudge: Notify::new(),
        programmed: Mutex::new(vec![]),
        doomed_links: Mutex::new(vec![]),
        orphan_links: Mutex::new(Default::default()),
        cfg,
    });
    let listener = crate::api::bind(&agent.cfg.socket)?;
    tracing::info!(node = %agent.cfg.node_name, socket = %agent.cfg.socket.display(), "strait agent started (mode routed)");
    let api = tokio::spawn(crate::api::serve(agent.clone(), listener));
    let rec = tokio::spawn(crate::reconcile::run(agent.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = api => r??,
        r = rec => r??,
    }
    // Routes and pods stay as they are: forwarding must not depend on the
    // agent running. Only the socket goes.
    let _ = std::fs::remove_file(&agent.cfg.socket);
    tracing::info!("strait agent stopped; the datapath stays programmed");
    Ok(())
}
