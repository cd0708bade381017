//! The lab's control plane for `controlPlane: kube-apiserver`: a real etcd
//! and kube-apiserver (1.20.2, from scripts/kube-bins.sh) in a namespace of
//! their own on the fabric, so every node's agent reaches the apiserver over
//! the lab's network and nothing listens in the host's namespace. With
//! `controlPlane: etcd` the namespace runs etcd alone, serving the agents
//! on the fabric (strait's etcd datastore).
//!
//! Token auth: `admin` (system:masters) for the lab itself, `strait-agent`
//! for the agents, bound to a least-privilege ClusterRole. The apiserver
//! makes its own self-signed serving certificate; kubeconfigs trust it.

use crate::cmd::ip;
use crate::run::{netns_path, spawn_daemon};
use crate::LabState;
use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strait_model::lab::{control_plane_netns, fabric_netns, ControlPlane, LabPlan};

pub const PORT: u16 = 6443;

/// The control plane's fabric address: the second-to-last host (the
/// external client has the last).
pub fn address(plan: &LabPlan) -> Ipv4Addr {
    let hosts: Vec<Ipv4Addr> = plan.fabric.hosts().collect();
    hosts[hosts.len() - 2]
}

pub fn url(plan: &LabPlan) -> String {
    format!("https://{}:{PORT}", address(plan))
}

pub fn dir(st: &LabState) -> PathBuf {
    st.dir.join("control-plane")
}

pub fn admin_kubeconfig(st: &LabState) -> PathBuf {
    dir(st).join("admin.kubeconfig")
}

pub fn agent_kubeconfig(st: &LabState) -> PathBuf {
    dir(st).join("agent.kubeconfig")
}

fn apiserver_pid(st: &LabState) -> PathBuf {
    dir(st).join("apiserver.pid")
}

fn etcd_pid(st: &LabState) -> PathBuf {
    dir(st).join("etcd.pid")
}

/// kube-apiserver: $STRAIT_KUBE_APISERVER, or the one scripts/kube-bins.sh
/// builds into target/kube/ (with reflect2 1.0.2: see that script).
pub fn apiserver_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("STRAIT_KUBE_APISERVER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(4) {
        let p = dir.join("kube").join(APISERVER_FILE);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no kube-apiserver found: run scripts/kube-bins.sh (it fetches or builds one into target/kube/), or set STRAIT_KUBE_APISERVER")
}

/// scripts/kube-bins.sh's output; a copy without the reflect2 fix has
/// another name, so a stale cache is never picked up.
pub const APISERVER_FILE: &str = "kube-apiserver-1.20.2-reflect2";

fn token() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn kubeconfig(url: &str, ca: &std::path::Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {url}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: u}}\ncurrent-context: lab\n",
        ca.display()
    )
}

/// etcd's client URL on the fabric (`controlPlane: etcd`).
pub fn etcd_url(plan: &LabPlan) -> String {
    format!("http://{}:{ETCD_PORT}", address(plan))
}

pub const ETCD_PORT: u16 = 2379;

/// Bring up the control plane: etcd alone (`etcd`), or etcd and
/// kube-apiserver (`kube-apiserver`), and wait until it serves.
pub fn up(st: &LabState, step: impl Fn(&str)) -> anyhow::Result<()> {
    let plan = &st.plan;
    let ns = control_plane_netns(&plan.name);
    let addr = address(plan);
    std::fs::create_dir_all(dir(st))?;
    if plan.control_plane == ControlPlane::Etcd {
        step(&format!(
            "control plane: namespace {ns}, eth0 {addr}/{}, etcd at {} (strait's datastore, keys under {})",
            plan.fabric.prefix_len(),
            etcd_url(plan),
            strait_model::datastore::DEFAULT_PREFIX
        ));
        plumb(st)?;
        start_etcd(st)?;
        return wait_etcd(st, Duration::from_secs(30));
    }
    let apiserver = apiserver_binary()?;
    step(&format!(
        "control plane: namespace {ns}, eth0 {addr}/{}, etcd and {}",
        plan.fabric.prefix_len(),
        apiserver.display()
    ));
    plumb(st)?;
    let d = dir(st);
    let key = d.join("sa.key");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .context("run openssl (scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("openssl genrsa: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (admin, agent) = (token()?, token()?);
    std::fs::write(
        d.join("tokens.csv"),
        format!("{admin},admin,admin,\"system:masters\"\n{agent},strait-agent,strait-agent\n"),
    )?;
    start_etcd(st)?;
    start_apiserver(st)?;
    let ca = d.join("certs").join("apiserver.crt");
    std::fs::write(admin_kubeconfig(st), kubeconfig(&url(plan), &ca, &admin))?;
    std::fs::write(agent_kubeconfig(st), kubeconfig(&url(plan), &ca, &agent))?;
    wait_ready(st, Duration::from_secs(60))?;
    crate::publish::bootstrap_rbac(st)?;
    crate::publish::install_crds(st)?;
    Ok(())
}

/// Until etcd answers.
pub fn wait_etcd(st: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match with_etcd(st, |c| async move { Ok(c.revision().await?) }) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "etcd did not answer in {timeout:?} (last: {last}); see {}",
        st.log_dir().join("etcd.log").display()
    )
}

/// Run `f` with an etcd client, on a thread inside the control-plane
/// namespace.
pub fn with_etcd<F, Fut, T>(st: &LabState, f: F) -> anyhow::Result<T>
where
    F: FnOnce(strait_etcd::Client) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send,
{
    let ns = strait_netlink::NetnsFile::open(&netns(st))?;
    strait_netlink::in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let c = strait_etcd::Client::new(&format!("http://127.0.0.1:{ETCD_PORT}"))?;
            f(c).await
        })
    })?
}

/// The control plane's namespace, on the fabric.
fn plumb(st: &LabState) -> anyhow::Result<()> {
    let plan = &st.plan;
    let ns = control_plane_netns(&plan.name);
    let fabric = fabric_netns(&plan.name);
    let addr = address(plan);
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", &fabric, "link", "add", "cp", "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", &fabric, "link", "set", "cp", "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{addr}/{}", plan.fabric.prefix_len()),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    Ok(())
}

pub fn start_etcd(st: &LabState) -> anyhow::Result<i32> {
    start_etcd_serving(st, st.plan.control_plane == ControlPlane::Etcd)
}

/// Start etcd, serving the agents on the fabric or only loopback (tests
/// change the store behind the agents' backs that way).
pub fn start_etcd_serving(st: &LabState, agents: bool) -> anyhow::Result<i32> {
    let d = dir(st);
    let data = d.join("etcd");
    let ns = control_plane_netns(&st.plan.name);
    let local = format!("http://127.0.0.1:{ETCD_PORT}");
    // The agents read etcd over the fabric only when it is their datastore;
    // under an apiserver it stays on loopback.
    let (listen, advertise) = if agents {
        (
            format!("{local},{}", etcd_url(&st.plan)),
            etcd_url(&st.plan),
        )
    } else {
        (local.clone(), local)
    };
    spawn_daemon(
        &ns,
        std::path::Path::new("etcd"),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--listen-client-urls",
            &listen,
            "--advertise-client-urls",
            &advertise,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
        ],
        &st.log_dir().join("etcd.log"),
        &etcd_pid(st),
        &[],
    )
}

pub fn start_apiserver(st: &LabState) -> anyhow::Result<i32> {
    let d = dir(st);
    let ns = control_plane_netns(&st.plan.name);
    let addr = address(&st.plan).to_string();
    let s = |p: &str| d.join(p).display().to_string();
    let args = [
        "--etcd-servers=http://127.0.0.1:2379".to_string(),
        format!("--bind-address={addr}"),
        format!("--advertise-address={addr}"),
        format!("--secure-port={PORT}"),
        format!("--token-auth-file={}", s("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        format!("--service-cluster-ip-range={}", st.plan.service_cidr),
        format!("--service-account-key-file={}", s("sa.key")),
        format!("--service-account-signing-key-file={}", s("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--cert-dir={}", s("certs")),
        // No controller manager runs: nothing would create the default
        // ServiceAccount this admission plugin insists on.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--enable-priority-and-fairness=false".into(),
        // As kubeadm sets it: CNI agents run privileged.
        "--allow-privileged=true".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_daemon(
        &ns,
        &apiserver_binary()?,
        &args,
        &st.log_dir().join("kube-apiserver.log"),
        &apiserver_pid(st),
        &[],
    )
}

/// Stop the apiserver (tests restart it under running agents).
pub fn stop_apiserver(st: &LabState) {
    if let Some(pid) = LabState::read_pid(&apiserver_pid(st)) {
        crate::cmd::stop(&[pid], Duration::from_secs(5));
    }
}

/// Stop etcd (tests restart it under the apiserver).
pub fn stop_etcd(st: &LabState) {
    if let Some(pid) = LabState::read_pid(&etcd_pid(st)) {
        crate::cmd::stop(&[pid], Duration::from_secs(5));
    }
}

/// Until the apiserver answers with its `default` namespace in place.
pub fn wait_ready(st: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match crate::publish::admin(st, |c| async move {
            let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(c);
            ns.get("default")
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the apiserver did not become ready in {timeout:?} (last: {last}); see {}",
        st.log_dir().join("kube-apiserver.log").display()
    )
}

/// The apiserver's netns path (for clients the lab runs).
pub fn netns(st: &LabState) -> PathBuf {
    netns_path(&control_plane_netns(&st.plan.name))
}

/// One JSON POST to etcd's gRPC gateway, from inside the control plane.
fn etcd_post(
    st: &LabState,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let ns = strait_netlink::NetnsFile::open(&netns(st))?;
    let body = body.to_string();
    let url = path.to_string();
    let raw = strait_netlink::in_netns(&ns, move || -> std::io::Result<String> {
        let path = url;
        let mut s = std::net::TcpStream::connect("127.0.0.1:2379")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let json = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(json).with_context(|| format!("etcd {path}: {raw}"))
}

/// Compact etcd's history up to its current revision (as etcd's periodic
/// compaction does): watches resuming from before it get "410 Gone" and
/// must relist. Returns the revision.
pub fn etcd_compact(st: &LabState) -> anyhow::Result<u64> {
    let r = etcd_post(st, "/v3/kv/range", &serde_json::json!({"key": "AA=="}))?;
    let rev: u64 = r["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("etcd revision")?;
    etcd_post(
        st,
        "/v3/kv/compaction",
        &serde_json::json!({"revision": rev, "physical": true}),
    )?;
    Ok(rev)
}
