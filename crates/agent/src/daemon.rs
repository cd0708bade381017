//! Agent start-up and the main loop.

use crate::config::AgentConfig;
use crate::ipam::NodeIpam;
use crate::source::{ClusterSource, DirectorySource};
use anyhow::Context;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_model::api::ReconcilerStatus;
use strait_model::cluster::{node_internal_ip, node_pod_cidrs, ClusterSnapshot};
use strait_model::routes::NodeRoute;
use tokio::sync::watch;

pub struct Agent {
    pub cfg: AgentConfig,
    pub ipam: NodeIpam,
    pub snapshot: watch::Receiver<Arc<ClusterSnapshot>>,
    /// The cluster source (its health is in `strait status`).
    pub source: Box<dyn ClusterSource>,
    /// Wakes every reconciler for a pass now (after a GC, say).
    nudge: watch::Sender<u64>,
    /// Host veths of pods released by GC, for the endpoints reconciler to
    /// delete on its next pass.
    pub doomed_links: Mutex<Vec<String>>,
    /// Host veths of ADDs the agent is working on (the plugin makes the
    /// veth while the agent allocates): not orphans, however long the
    /// allocation takes (a burst of ADDs waiting on the cloud).
    pub adding: Mutex<std::collections::BTreeMap<String, usize>>,
    /// What the reconcilers programmed, for `status`; each field has one writer.
    pub published: Mutex<Published>,
    /// Each reconciler's health.
    pub reconcilers: Mutex<std::collections::BTreeMap<&'static str, ReconcilerStatus>>,
    /// Host veths whose pods are fully programmed; None until the endpoints
    /// reconciler's first pass (which recovers pods from the kernel) is done.
    pub programmed: watch::Sender<Option<Arc<std::collections::BTreeSet<String>>>>,
    /// The eBPF datapath's features, in ebpf mode.
    pub datapath: Option<(String, strait_bpf::Features)>,
    /// Service objects whose rejection was already logged.
    pub service_problems_logged: Mutex<Vec<String>>,
    pub cross_node: &'static str,
    /// The BGP speaker's sessions, once it runs (bgp mode).
    pub bgp: std::sync::OnceLock<strait_bgp::speaker::StatusHandle>,
    pub service_backend: &'static str,
    pub policy_backend: &'static str,
    /// macvlan mode's VLAN ports (ADD makes a missing one).
    pub macvlan: Option<Arc<crate::macvlan::Ports>>,
    /// eni mode's ENIs and warm pool (ADD takes addresses from it).
    pub eni: Option<Arc<crate::eni::Enis>>,
    /// Prometheus histograms and counters (served with --metrics-addr).
    pub metrics: crate::metrics::Metrics,
}

/// What the reconcilers last programmed.
#[derive(Default)]
pub struct Published {
    pub node_routes: Vec<NodeRoute>,
    /// Every local pod's compiled NetworkPolicy.
    pub policy: Vec<strait_model::policy::PodRules>,
    pub services: Vec<std::sync::Arc<strait_model::services::ServiceEntry>>,
    pub service_problems: Vec<String>,
    pub service_sync: Option<strait_model::api::ServiceSync>,
    /// healthCheckNodePorts of the last service table, for the health reconciler.
    pub health_checks: Vec<strait_model::services::HealthCheck>,
    /// Host veths carrying from-container, and pods in the endpoint map.
    pub attached: Vec<String>,
    pub endpoints: usize,
    pub conntrack: Option<strait_model::api::ConntrackStatus>,
}

impl Agent {
    pub fn nudge(&self) {
        self.nudge.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn nudges(&self) -> watch::Receiver<u64> {
        self.nudge.subscribe()
    }

    pub fn datapath_status(&self) -> Option<strait_model::api::DatapathStatus> {
        let (pin_dir, f) = self.datapath.as_ref()?;
        let pb = self.published.lock().unwrap();
        Some(strait_model::api::DatapathStatus {
            pin_dir: pin_dir.clone(),
            redirect_peer: f.redirect_peer,
            reason: f.reason.clone(),
            uplink: self.cfg.uplink.clone(),
            attached: pb.attached.clone(),
            endpoints: pb.endpoints,
        })
    }

    /// Wait until the endpoints reconciler has programmed `host_veth`.
    pub async fn wait_programmed(&self, host_veth: &str, within: Duration) -> Result<(), String> {
        self.nudge();
        let mut rx = self.programmed.subscribe();
        let ok = {
            let done = rx.wait_for(|p| p.as_ref().is_some_and(|s| s.contains(host_veth)));
            matches!(tokio::time::timeout(within, done).await, Ok(Ok(_)))
        };
        match ok {
            true => Ok(()),
            false => {
                let st = self.reconcilers.lock().unwrap().get("endpoints").cloned();
                let why = st
                    .map(|s| {
                        s.error
                            .into_iter()
                            .chain(s.problems.into_iter().filter(|p| p.contains(host_veth)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| "no error reported; the agent may be overloaded".into());
                Err(format!(
                    "the agent did not program {host_veth} within {within:?}: {why}"
                ))
            }
        }
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
        if self.programmed.borrow().is_none() {
            return Some("still recovering this node's pods from the kernel".into());
        }
        let pending: Vec<&str> = self
            .reconcilers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| r.passes == 0)
            .map(|(name, _)| *name)
            .collect();
        if !pending.is_empty() {
            return Some(format!(
                "not yet programmed: first pass of {} under way",
                pending.join(", ")
            ));
        }
        None
    }
}

/// [`pause_point`] for async code: the task waits forever, the runtime's
/// threads stay free (the API still answers).
pub async fn pause_point_async(step: &str) {
    if std::env::var("STRAIT_AGENT_PAUSE_AT").as_deref() == Ok(step) {
        tracing::warn!(step, "paused (STRAIT_AGENT_PAUSE_AT)");
        std::future::pending::<()>().await;
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

/// External connections to a backend on another node are forwarded by the
/// host stack and masqueraded to this node, so their replies come back
/// here. from-netdev (or the nftables backend) marks them; this rule (one
/// atomic nftables transaction, idempotent) does the masquerade, except
/// towards a local pod's host veth: a local backend sees the real client in
/// both backends. In macvlan mode everything a pod sends through its
/// service veth (`bifr…`) and the node forwards is masqueraded too: the
/// backend's reply must come back to this node, not straight to the pod's
/// macvlan, for the translation to be undone.
fn install_masquerade() -> anyhow::Result<()> {
    nft_apply("add table ip strait\ndelete table ip strait\ntable ip strait {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x00005a00 == 0x00005a00 oifname != \"strt*\" masquerade\n    iifname \"bifr*\" masquerade\n  }\n}\n")
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
    use crate::reconcile::{
        self, conntrack::Conntrack, endpoints::Endpoints, health::Health, node_routes::NodeRoutes,
        policy::Policy, services::Services,
    };
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
    // Backends by name: every choice is checked before anything is loaded.
    let macvlan = (cfg.cross_node == "macvlan").then(|| {
        Arc::new(crate::macvlan::Ports::new(
            cfg.uplink.clone(),
            cfg.bpf_dir.clone(),
        ))
    });
    let cross_node = crate::crossnode::by_name(&cfg, macvlan.clone())?;
    let eni = match (cfg.cross_node == "eni", &cfg.eni) {
        (false, _) => None,
        (true, None) => {
            anyhow::bail!("cross-node mode eni needs the cloud: --cloud-socket and --eni-vswitch")
        }
        (true, Some(e)) => {
            let enis = crate::eni::Enis::new(
                cfg.node_name.clone(),
                Box::new(strait_model::cloud::wire::SocketCloud {
                    socket: e.cloud_socket.clone(),
                }),
                e.pool.clone(),
            );
            if e.pool.trunk {
                enis.enable_trunk(crate::eni::TrunkSetup {
                    state_dir: cfg.state_dir.clone(),
                    bpf_dir: cfg.bpf_dir.clone(),
                    ebpf: cfg.mode == strait_model::lab::Mode::Ebpf,
                })?;
            }
            Some(Arc::new(enis))
        }
    };
    let svc_name = match cfg.mode {
        strait_model::lab::Mode::Routed => "nftables",
        strait_model::lab::Mode::Ebpf => "ebpf",
    };
    let bpf = match cfg.mode {
        strait_model::lab::Mode::Routed => None,
        strait_model::lab::Mode::Ebpf => Some(crate::datapath::load(&cfg)?),
    };
    install_masquerade().context("install the nftables masquerade rule for external traffic")?;
    let services = crate::svcbackend::by_name(
        svc_name,
        bpf.as_ref().map(|b| b.dp.pin_dir.as_path()),
        cfg.service_cidr,
    )?;
    let policy =
        crate::policybackend::for_datapath(cfg.mode, bpf.as_ref().map(|b| b.dp.pin_dir.as_path()))?;
    let mut kube_client = None;
    let source: Box<dyn ClusterSource> = match &cfg.source {
        crate::SourceConfig::Files { dir } => Box::new(DirectorySource::start(
            dir.clone(),
            Duration::from_millis(500),
        )),
        crate::SourceConfig::Kube { kubeconfig } => {
            let (client, url) = crate::source::kube::client(kubeconfig.as_deref()).await?;
            tracing::info!(apiserver = %url, "cluster source: kube-apiserver; waiting for the first lists");
            kube_client = Some(client.clone());
            Box::new(crate::source::kube::KubeSource::start(client, url).await?)
        }
        crate::SourceConfig::Etcd { endpoint, prefix } => {
            tracing::info!(%endpoint, %prefix, "cluster source: etcd; waiting for the first list");
            Box::new(crate::source::etcd::EtcdSource::start(endpoint, prefix).await?)
        }
    };
    // A taken metrics port stops start-up before any reconciler runs.
    let metrics = match cfg.metrics_addr {
        Some(a) => Some(crate::metrics::bind(a).await?),
        None => None,
    };
    let explain = match cfg.explain_addr {
        Some(a) => Some(crate::explain_api::bind(a).await?),
        None => None,
    };
    let agent = Arc::new(Agent {
        ipam,
        snapshot: source.subscribe(),
        source,
        nudge: watch::channel(0).0,
        doomed_links: Mutex::new(vec![]),
        adding: Mutex::new(Default::default()),
        published: Mutex::new(Published::default()),
        reconcilers: Mutex::new(Default::default()),
        programmed: watch::channel(None).0,
        datapath: bpf
            .as_ref()
            .map(|b| (b.dp.pin_dir.display().to_string(), b.dp.features.clone())),
        service_problems_logged: Mutex::new(vec![]),
        cross_node: cross_node.name(),
        bgp: Default::default(),
        service_backend: services.name(),
        policy_backend: policy.name(),
        macvlan,
        eni,
        metrics: Default::default(),
        cfg,
    });
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(b) = &bpf {
        tasks.spawn(reconcile::run(
            Conntrack::new(b.dp.pin_dir.clone()),
            agent.clone(),
        ));
    }
    tasks.spawn(reconcile::run(Endpoints::new(bpf)?, agent.clone()));
    tasks.spawn(reconcile::run(NodeRoutes::new(cross_node)?, agent.clone()));
    if matches!(agent.cross_node, "bgp" | "bgp-tor") {
        tasks.spawn(reconcile::run(
            reconcile::bgp::BgpRoutes::new()?,
            agent.clone(),
        ));
    }
    if let Some(ports) = &agent.macvlan {
        tasks.spawn(reconcile::run(
            reconcile::macvlan_ports::MacvlanPorts::new(ports.clone())?,
            agent.clone(),
        ));
    }
    if let Some(enis) = &agent.eni {
        tasks.spawn(reconcile::run(
            reconcile::eni_pool::EniPool::new(enis.clone())?,
            agent.clone(),
        ));
    }
    tasks.spawn(reconcile::run(Services::new(services), agent.clone()));
    tasks.spawn(reconcile::run(Health::default(), agent.clone()));
    tasks.spawn(reconcile::run(
        reconcile::ipam_blocks::IpamBlocks::default(),
        agent.clone(),
    ));
    tasks.spawn(reconcile::run(Policy::new(policy), agent.clone()));
    tokio::spawn(crate::readiness::announce(agent.clone(), kube_client));
    tokio::spawn(trim_heap(agent.snapshot.clone()));
    let listener = crate::api::bind(&agent.cfg.socket)?;
    tracing::info!(node = %agent.cfg.node_name, socket = %agent.cfg.socket.display(), cross_node = agent.cross_node, services = agent.service_backend, "strait agent started");
    let api = tokio::spawn(crate::api::serve(agent.clone(), listener));
    if let Some(l) = metrics {
        tracing::info!(addr = ?agent.cfg.metrics_addr, "serving Prometheus metrics at /metrics");
        tokio::spawn(crate::metrics::serve(agent.clone(), l));
    }
    if let Some(l) = explain {
        tracing::info!(addr = ?agent.cfg.explain_addr, "answering strait explain's read-only questions");
        tokio::spawn(crate::explain_api::serve(agent.clone(), l));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = api => r??,
        _ = tasks.join_next() => anyhow::bail!("the cluster source ended"),
    }
    // Routes and pods stay as they are: forwarding must not depend on the
    // agent running. Only the socket goes.
    let _ = std::fs::remove_file(&agent.cfg.socket);
    tracing::info!("strait agent stopped; the datapath stays programmed");
    Ok(())
}

/// Give memory the allocator holds free back to the system, a while after
/// the cluster changed. A burst of changes (a relist, 10 000 services
/// created) leaves megabytes of freed parse buffers and replaced objects
/// in glibc's arenas, which it keeps and RSS counts; malloc_trim returns
/// them. Quiet clusters cost nothing: no change, no trim.
async fn trim_heap(mut snap: watch::Receiver<Arc<ClusterSnapshot>>) {
    const SETTLE: Duration = Duration::from_secs(2);
    loop {
        if snap.changed().await.is_err() {
            return;
        }
        // Wait for the burst to end (no change for SETTLE).
        while tokio::time::timeout(SETTLE, snap.changed()).await.is_ok() {}
        // SAFETY: malloc_trim only releases free memory; any thread may call it.
        let released = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        tracing::debug!(?released, "heap trimmed after cluster changes");
    }
}
