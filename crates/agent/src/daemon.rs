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
    /// The eBPF datapath, in ebpf mode.
    pub bpf: Option<Mutex<BpfState>>,
    /// The programmed service table and the objects rejected from it.
    pub services: Mutex<Vec<strait_model::services::ServiceEntry>>,
    /// healthCheckNodePort servers: port -> (server task, local endpoints).
    pub health: Mutex<HealthServers>,
    pub service_problems: Mutex<Vec<String>>,
    /// Routed mode: the nftables service table last applied.
    pub nft_applied: Mutex<String>,
    /// How the last change to the service table was applied.
    pub service_sync: Mutex<Option<strait_model::api::ServiceSync>>,
}

/// healthCheckNodePort servers: port -> (server task, local endpoints).
pub type HealthServers = std::collections::HashMap<
    u16,
    (
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ),
>;

/// What strait_lb holds, per frontend: the service as programmed and its
/// map entries. A change touches only the frontends that differ.
pub type LbProgrammed = std::collections::HashMap<
    strait_model::services::Frontend,
    (
        strait_model::services::ServiceEntry,
        Vec<(strait_bpf::maps::LbKey, strait_bpf::maps::LbVal)>,
    ),
>;

pub struct BpfState {
    pub dp: strait_bpf::Datapath,
    /// Host veths this agent attached from-container to since it started
    /// (an agent restart re-attaches all, atomically replacing the old).
    pub attached: std::collections::BTreeSet<String>,
    pub endpoints: usize,
    /// strait_lb as last programmed, so a change costs only its difference
    /// (read from the pinned map once, at the first sync after start).
    pub lb_programmed: Option<LbProgrammed>,
}

impl Agent {
    pub fn datapath_status(&self) -> Option<strait_model::api::DatapathStatus> {
        let b = self.bpf.as_ref()?.lock().unwrap();
        Some(strait_model::api::DatapathStatus {
            pin_dir: b.dp.pin_dir.display().to_string(),
            redirect_peer: b.dp.features.redirect_peer,
            reason: b.dp.features.reason.clone(),
            uplink: self.cfg.uplink.clone(),
            attached: b.attached.iter().cloned().collect(),
            endpoints: b.endpoints,
        })
    }

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

fn load_datapath(cfg: &AgentConfig) -> anyhow::Result<BpfState> {
    use strait_bpf::datapath::{ensure_bpffs, Prog};
    let default_root = std::path::Path::new("/sys/fs/bpf");
    if cfg.bpf_dir.starts_with(default_root) {
        ensure_bpffs(default_root).context("mount bpffs at /sys/fs/bpf")?;
    }
    let features = strait_bpf::Features::probe(cfg.no_redirect_peer);
    tracing::info!(redirect_peer = features.redirect_peer, reason = %features.reason, pin_dir = %cfg.bpf_dir.display(), "eBPF datapath");
    let mut dp =
        strait_bpf::Datapath::load(&cfg.bpf_dir, features).context("load the eBPF datapath")?;
    dp.attach(Prog::FromNetdev, &cfg.uplink)
        .with_context(|| format!("attach from-netdev to the uplink {}", cfg.uplink))?;
    dp.attach(Prog::ToNetdev, &cfg.uplink)
        .with_context(|| format!("attach to-netdev to the uplink {}", cfg.uplink))?;
    install_masquerade().context("install the nftables masquerade rule for external traffic")?;
    if let Some(cg) = &cfg.cgroup {
        dp.attach_cgroup(cg)
            .with_context(|| format!("attach socket load balancing to cgroup {}", cg.display()))?;
        tracing::info!(cgroup = %cg.display(), "socket-level load balancing for node processes");
    }
    Ok(BpfState {
        dp,
        attached: Default::default(),
        endpoints: 0,
        lb_programmed: None,
    })
}

/// External connections to a backend on another node are forwarded by the
/// host stack and masqueraded to this node, so their replies come back
/// here. from-netdev (or the nftables backend) marks them; this rule (one
/// atomic nftables transaction, idempotent) does the masquerade, except
/// towards a local pod's host veth: a local backend sees the real client in
/// both backends.
fn install_masquerade() -> anyhow::Result<()> {
    nft_apply("add table ip strait\ndelete table ip strait\ntable ip strait {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x00005a00 == 0x00005a00 oifname != \"strt*\" masquerade\n  }\n}\n")
}

/// Run an nft script (one atomic transaction).
pub fn nft_apply(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run nft (install nftables)")?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
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
    let bpf = match cfg.mode {
        strait_model::lab::Mode::Routed => {
            install_masquerade()
                .context("install the nftables masquerade rule for external traffic")?;
            None
        }
        strait_model::lab::Mode::Ebpf => Some(Mutex::new(load_datapath(&cfg)?)),
    };
    let source = DirectorySource::start(cfg.manifests_dir.clone(), Duration::from_millis(500));
    let agent = Arc::new(Agent {
        ipam,
        snapshot: source.subscribe(),
        nudge: Notify::new(),
        programmed: Mutex::new(vec![]),
        doomed_links: Mutex::new(vec![]),
        orphan_links: Mutex::new(Default::default()),
        bpf,
        services: Mutex::new(vec![]),
        health: Mutex::new(Default::default()),
        service_problems: Mutex::new(vec![]),
        nft_applied: Mutex::new(String::new()),
        service_sync: Mutex::new(None),
        cfg,
    });
    let listener = crate::api::bind(&agent.cfg.socket)?;
    tracing::info!(node = %agent.cfg.node_name, socket = %agent.cfg.socket.display(), "strait agent started");
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
