//! `lab up`, `lab down`, `lab status` and target resolution.

use crate::cmd::{alive, ip, netns_pids, stop};
use crate::state::LabState;
use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strait_model::api::{NodeStatus, Request, Response};
use strait_model::cluster::ClusterObject;
use strait_model::lab::{external_netns, fabric_netns, parse_lab_file, LabPlan, NodePlan, PodPlan};

/// Binaries the lab runs: this `strait` and the `strait-cni` beside it.
pub struct Binaries {
    pub strait: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("locate the strait binary")?;
        // Run as `strait`, or as another tool (a benchmark) next to it.
        let strait = if exe.file_name().is_some_and(|n| n == "strait") {
            exe
        } else {
            exe.with_file_name("strait")
        };
        if !strait.exists() {
            bail!(
                "strait not found at {}; build it with `cargo build --workspace`",
                strait.display()
            );
        }
        let cni = match std::env::var_os("STRAIT_CNI") {
            Some(p) => PathBuf::from(p),
            None => strait.with_file_name("strait-cni"),
        };
        if !cni.exists() {
            bail!(
                "strait-cni not found at {}; build it with `cargo build --workspace` or point STRAIT_CNI at it",
                cni.display()
            );
        }
        Ok(Binaries { strait, cni })
    }
}

fn step(msg: &str) {
    eprintln!("  • {msg}");
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Ask a node's agent over its socket (the same client the plugin uses).
pub fn agent_call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    strait_cni::client::call(socket, req).map_err(|e| anyhow::anyhow!(e.msg))
}

pub fn agent_status(socket: &Path) -> anyhow::Result<NodeStatus> {
    strait_cni::client::status(socket).map_err(|e| anyhow::anyhow!(e.msg))
}

/// Run `strait-cni` for a pod as a runtime would: inside the node's network
/// namespace, CNI_* in the environment, the network config on stdin.
pub fn run_cni(
    bins: &Binaries,
    node_netns: &str,
    conf: &[u8],
    command: &str,
    container_id: &str,
    pod_netns: &str,
    pod: &PodPlan,
) -> anyhow::Result<serde_json::Value> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(&bins.cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod_netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bins.cni.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                pod.namespace, pod.name, pod.uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run strait-cni")?;
    child.stdin.take().unwrap().write_all(conf)?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "CNI {command} for pod {}/{} failed: {}",
            pod.namespace,
            pod.name,
            stdout.trim()
        );
    }
    if stdout.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&stdout)?)
}

fn write_node_manifests(st: &LabState) -> anyhow::Result<()> {
    crate::publish::put(st, "nodes", &node_objects(st))
}

/// The lab's Node objects, as it publishes them (set "nodes").
pub fn node_objects(st: &LabState) -> Vec<serde_json::Value> {
    st.plan
        .nodes
        .iter()
        .map(|n| {
            let mut node = strait_model::cluster::test_node(
                &n.name,
                Some(&n.pod_cidr.to_string()),
                Some(&n.ip.to_string()),
            );
            if !n.labels.is_empty() {
                node.metadata.labels = Some(n.labels.clone());
            }
            if !n.annotations.is_empty() {
                node.metadata.annotations = Some(n.annotations.clone());
            }
            serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": node.metadata, "spec": node.spec, "status": node.status,
            })
        })
        .collect()
}

pub(crate) fn spawn_daemon(
    netns: &str,
    prog: &Path,
    args: &[&str],
    log: &Path,
    pidfile: &Path,
    env: &[(String, String)],
) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let logf = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    // nsenter enters only the network namespace: unlike `ip netns exec` it
    // keeps the host's mount namespace, so agents share /sys/fs/bpf and
    // their pinned maps outlive them.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(netns).display()))
        .arg("--")
        .arg(prog)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {} in {netns}", prog.display()))?;
    let pid = child.id() as i32;
    std::fs::write(pidfile, pid.to_string())?;
    // The lab does not wait on its daemons; `down` stops them by pid.
    std::mem::forget(child);
    Ok(pid)
}

/// Whether `strait agent` of this binary knows `flag` (builds differ: the
/// upgrade test runs an older one). Asked once per binary.
fn agent_supports(strait: &Path, flag: &str) -> bool {
    static HELP: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = HELP.lock().unwrap();
    if let Some((_, h)) = cache.iter().find(|(p, _)| p == strait) {
        return h.contains(flag);
    }
    let help = Command::new(strait)
        .args(["agent", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let yes = help.contains(flag);
    cache.push((strait.to_path_buf(), help));
    yes
}

/// Start (or restart) a node's agent. Extra environment is for tests.
pub fn start_agent(
    st: &LabState,
    bins: &Binaries,
    n: &NodePlan,
    env: &[(String, String)],
) -> anyhow::Result<i32> {
    let nd = st.node_dir(n);
    let state = nd.join("state");
    let sock = st.socket(n);
    let manifests = st.manifests_dir();
    let bpf_dir = strait_model::lab::bpf_dir(&st.plan.name, &n.name);
    let service_cidr = st.plan.service_cidr.to_string();
    let mut args = vec![
        "agent",
        "--node",
        &n.name,
        "--state-dir",
        state.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        // A lab is small: a quick full resync heals drift fast.
        "--resync-secs",
        "2",
        "--service-cidr",
        &service_cidr,
    ];
    let agent_kc = crate::control_plane::agent_kubeconfig(st);
    let etcd_url = crate::control_plane::etcd_url(&st.plan);
    // As on a real node: the agent installs the CNI config when it is ready
    // (an older build, started by the upgrade test, has no such flag).
    let net_d = nd.join("net.d");
    let mtu = st.plan.pod_mtu().to_string();
    if agent_supports(&bins.strait, "--cni-conf-dir") {
        args.extend(["--cni-conf-dir", net_d.to_str().unwrap(), "--mtu", &mtu]);
    }
    match st.plan.control_plane {
        strait_model::lab::ControlPlane::Files => {
            args.extend(["--manifests", manifests.to_str().unwrap()])
        }
        strait_model::lab::ControlPlane::KubeApiserver => args.extend([
            "--source",
            "kube",
            "--kubeconfig",
            agent_kc.to_str().unwrap(),
        ]),
        strait_model::lab::ControlPlane::Etcd => {
            args.extend(["--source", "etcd", "--etcd-endpoint", &etcd_url])
        }
    }
    let cgroup = crate::cgroup::node_cgroup(&st.plan.name, &n.name)
        .filter(|c| c.exists())
        .map(|c| c.display().to_string());
    if let (strait_model::lab::Mode::Ebpf, Some(cg)) = (st.plan.mode, &cgroup) {
        args.extend(["--cgroup", cg.as_str()]);
    }
    if st.plan.mode == strait_model::lab::Mode::Ebpf {
        args.extend([
            "--datapath",
            "ebpf",
            "--bpf-dir",
            &bpf_dir,
            "--uplink",
            "eth0",
        ]);
        if st.plan.no_redirect_peer {
            args.push("--no-redirect-peer");
        }
    }
    // Only when not routed: an older build (the upgrade test's) predates it.
    if st.plan.cross_node != strait_model::lab::CrossNodeMode::Routed {
        args.extend(["--cross-node", st.plan.cross_node.as_str()]);
        if st.plan.mode != strait_model::lab::Mode::Ebpf {
            args.extend(["--uplink", "eth0"]);
        }
    }
    let cooldown = st.plan.ip_cooldown_secs.map(|s| s.to_string());
    if let Some(c) = &cooldown {
        args.extend(["--ip-cooldown-secs", c]);
    }
    let metrics_addr = st
        .plan
        .metrics_port
        .map(|p| std::net::SocketAddr::new(n.ip.into(), p).to_string());
    if let Some(m) = &metrics_addr {
        args.extend(["--metrics-addr", m]);
    }
    let explain_addr = st
        .plan
        .explain_port
        .map(|p| std::net::SocketAddr::new(n.ip.into(), p).to_string());
    if let Some(e) = &explain_addr {
        args.extend(["--explain-addr", e]);
    }
    let cloud_socket = crate::cloud::socket(st).display().to_string();
    let (min_idle, max_idle);
    if let Some(pool) = &st.plan.eni_pool {
        min_idle = pool.min_idle.to_string();
        max_idle = pool.max_idle.to_string();
        args.extend([
            "--cloud-socket",
            &cloud_socket,
            "--eni-vswitch",
            &pool.vswitch,
            "--eni-min-idle",
            &min_idle,
            "--eni-max-idle",
            &max_idle,
        ]);
        for g in &pool.security_groups {
            args.extend(["--eni-security-group", g]);
        }
        if pool.trunk {
            args.push("--eni-trunk");
        }
    }
    // IP-in-IP is eBPF on either datapath: its maps need a home (and an
    // agent switched away from it finds them there to clear).
    if st.plan.mode != strait_model::lab::Mode::Ebpf {
        args.extend(["--bpf-dir", &bpf_dir]);
    }
    spawn_daemon(
        &n.netns,
        &bins.strait,
        &args,
        &st.log_dir().join(format!("agent-{}.log", n.name)),
        &st.agent_pid(n),
        env,
    )
}

/// Wait until the node's agent answers and is ready.
pub fn wait_agent_ready(st: &LabState, n: &NodePlan, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    let mut exited = false;
    while Instant::now() < deadline {
        match agent_status(&st.socket(n)) {
            Ok(s) if s.ready => return Ok(()),
            Ok(s) => last = s.reason.unwrap_or_else(|| "not ready".into()),
            Err(e) => last = e.to_string(),
        }
        // An agent that exited will not become ready: say so at once.
        if LabState::read_pid(&st.agent_pid(n)).is_some_and(|pid| !process_alive(pid)) {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = st.log_dir().join(format!("agent-{}.log", n.name));
    let tail: String = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|l| format!("\n    {l}"))
        .collect();
    if exited {
        bail!(
            "agent on node {} exited before it was ready\n  last lines of {}:{tail}",
            n.name,
            log.display()
        )
    }
    bail!(
        "agent on node {} not ready after {timeout:?}: {last}\n  last lines of {}:{tail}",
        n.name,
        log.display()
    )
}

/// Whether a process runs (a zombie does not).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn cni_conf(st: &LabState, n: &NodePlan) -> Vec<u8> {
    // 1.0.0: what containerd 1.6 and podman 4.3 read (they refuse 1.1.0 results).
    serde_json::to_vec(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("strait-lab-{}", st.plan.name),
        "type": "strait-cni",
        "agentSocket": st.socket(n),
        "mtu": st.plan.pod_mtu(),
    }))
    .unwrap()
}

/// Create a pod: its namespace, CNI ADD, and its echo server.
pub fn add_pod(st: &LabState, bins: &Binaries, p: &PodPlan) -> anyhow::Result<()> {
    let node = st.plan.node(&p.node).context("pod's node")?;
    ip(&["netns", "add", &p.netns])?;
    let conf = cni_conf(st, node);
    let res = run_cni(
        bins,
        &node.netns,
        &conf,
        "ADD",
        &st.container_id(p),
        netns_path(&p.netns).to_str().unwrap(),
        p,
    )?;
    std::fs::write(st.pod_result(p), serde_json::to_vec_pretty(&res)?)?;
    let ports: Vec<String> = std::iter::once(crate::echo::ECHO_PORT)
        .chain(p.ports.iter().copied())
        .map(|port| port.to_string())
        .collect();
    let mut args = vec!["lab", "serve-echo", "--name", &p.name];
    for port in &ports {
        args.extend(["--port", port.as_str()]);
    }
    spawn_daemon(
        &p.netns,
        &bins.strait,
        &args,
        &st.log_dir()
            .join(format!("pod-{}_{}.log", p.namespace, p.name)),
        &st.pod_pid(p),
        &[],
    )?;
    Ok(())
}

pub fn up(file: &Path, bins: &Binaries) -> anyhow::Result<LabState> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let lab = parse_lab_file(&text)?;
    let plan = lab.plan()?;
    let t0 = Instant::now();
    eprintln!(
        "lab {}: {} nodes, {} pods, datapath {}, cross-node {}",
        plan.name,
        plan.nodes.len(),
        plan.pods.len(),
        plan.mode,
        plan.cross_node
    );
    if !crate::cmd::lab_netns(&plan.name).is_empty() || LabState::dir_for(&plan.name).exists() {
        step("cleaning up the leftovers of an earlier run of this lab");
        down(&plan.name, bins)?;
    }
    let dir = LabState::dir_for(&plan.name);
    let st = LabState { dir, plan };
    for d in [st.manifests_dir(), st.pod_dir(), st.log_dir()] {
        std::fs::create_dir_all(&d)?;
    }
    std::fs::write(
        st.dir.join("plan.json"),
        serde_json::to_vec_pretty(&st.plan)?,
    )?;
    // From here on a failure leaves state that `down` (or the next `up`) removes.
    let result = build(&st, bins, &lab.objects);
    if let Err(e) = result {
        eprintln!("lab up failed: {e:#}\n  cleaning up");
        let _ = down(&st.plan.name, bins);
        return Err(e);
    }
    eprintln!(
        "lab {} is up in {:.1}s",
        st.plan.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(st)
}

fn build(st: &LabState, bins: &Binaries, objects: &[ClusterObject]) -> anyhow::Result<()> {
    let plan = &st.plan;
    let fabric = fabric_netns(&plan.name);
    let mtu = plan.mtu.to_string();
    step(&format!(
        "fabric: namespace {fabric} with bridge br0 on {}",
        plan.fabric
    ));
    ip(&["netns", "add", &fabric])?;
    ip(&["-n", &fabric, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", &fabric, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
    ])?;
    ip(&["-n", &fabric, "link", "set", "br0", "up"])?;
    crate::racks::plumb(st, step)?;
    for n in &plan.nodes {
        // A node plugs into its rack's switch, or into the fabric.
        let rack = plan.rack_of(n);
        let switch = rack.map(|r| r.netns.clone()).unwrap_or(fabric.clone());
        let prefix = plan.node_subnet(n).prefix_len();
        step(&format!(
            "node {}: namespace {}, eth0 {}/{prefix}{}",
            n.name,
            n.netns,
            n.ip,
            rack.map(|r| format!(" in rack {} (gateway {})", r.name, r.gateway))
                .unwrap_or_default()
        ));
        ip(&["netns", "add", &n.netns])?;
        ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &switch,
            "link",
            "add",
            &n.fabric_port,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &n.netns,
        ])?;
        ip(&[
            "-n",
            &switch,
            "link",
            "set",
            &n.fabric_port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &n.netns,
            "addr",
            "add",
            &format!("{}/{prefix}", n.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &n.netns, "link", "set", "eth0", "up"])?;
        if let Some(r) = rack {
            // The rack's router is the node's gateway (and, in bgp-tor
            // mode, table 10001's).
            ip(&[
                "-n",
                &n.netns,
                "route",
                "add",
                "default",
                "via",
                &r.gateway.to_string(),
            ])?;
        }
        std::fs::create_dir_all(st.node_dir(n).join("state"))?;
        if let Some(cg) = crate::cgroup::node_cgroup(&plan.name, &n.name) {
            if let Err(e) = std::fs::create_dir_all(&cg) {
                step(&format!(
                    "node {}: no cgroup ({e}); node processes will not get socket load balancing",
                    n.name
                ));
            }
        }
    }
    // A client outside the cluster, on the fabric's last address.
    let ext = external_netns(&plan.name);
    let ext_ip = external_ip(plan);
    step(&format!(
        "external client: namespace {ext}, eth0 {ext_ip}/{}",
        plan.fabric.prefix_len()
    ));
    ip(&["netns", "add", &ext])?;
    ip(&["-n", &ext, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", &fabric, "link", "add", "ext", "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
        "netns", &ext,
    ])?;
    ip(&["-n", &fabric, "link", "set", "ext", "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ext,
        "addr",
        "add",
        &format!("{ext_ip}/{}", plan.fabric.prefix_len()),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ext, "link", "set", "eth0", "up"])?;
    crate::racks::route_from_fabric(plan, &ext)?;
    if st.plan.control_plane != strait_model::lab::ControlPlane::Files {
        crate::control_plane::up(st, step)?;
        crate::racks::route_from_fabric(plan, &strait_model::lab::control_plane_netns(&plan.name))?;
    }
    crate::racks::start_routers(st, step)?;
    crate::gateway::up(st, step)?;
    crate::cloud::up(st, bins, step)?;
    // The cluster source: Node objects for the plan, the racks' BGPPeers,
    // then the user's manifests.
    write_node_manifests(st)?;
    let objects = crate::objects::with_generated(plan, objects);
    crate::objects::store(st, &objects)?;
    crate::objects::publish_all(st)?;
    for n in &plan.nodes {
        let pid = start_agent(st, bins, n, &[])?;
        step(&format!(
            "node {}: agent pid {pid}, socket {}",
            n.name,
            st.socket(n).display()
        ));
    }
    for n in &plan.nodes {
        // Generous: on a loaded 2-core machine the verifier alone can take
        // seconds per program.
        wait_agent_ready(st, n, Duration::from_secs(60))?;
    }
    if !plan.racks.is_empty() {
        let t = Instant::now();
        crate::racks::wait_converged(st, Duration::from_secs(20))?;
        step(&format!(
            "BGP converged in {:.1}s: every rack's router routes every node's pod block",
            t.elapsed().as_secs_f64()
        ));
    }
    for p in &plan.pods {
        add_pod(st, bins, p)?;
        step(&format!(
            "pod {}/{} on {}: {}",
            p.namespace,
            p.name,
            p.node,
            st.pod_ip(p).map(|i| i.to_string()).unwrap_or_default()
        ));
    }
    // Give echo servers a moment to bind before anyone probes.
    for p in &plan.pods {
        wait_listening(&p.netns, Duration::from_secs(5));
    }
    // Now that pods have addresses: their status, and (as
    // kube-controller-manager would) the EndpointSlices of selector Services.
    let services = crate::objects::publish_all(st)?;
    if !services.is_empty() {
        wait_services_programmed(st, Duration::from_secs(10))?;
        step(&format!(
            "{} services programmed on every node",
            services.len()
        ));
        route_external(st, &services)?;
    }
    Ok(())
}

/// The external client sits on the fabric's last host address.
pub fn external_ip(plan: &LabPlan) -> std::net::Ipv4Addr {
    plan.fabric
        .hosts()
        .last()
        .expect("the fabric has host addresses")
}

/// The lab's cloud load balancer: each LoadBalancer ingress IP and
/// externalIP is routed, from the external client, via one node. For
/// externalTrafficPolicy Local that is the first node whose
/// healthCheckNodePort answers 200 (probed from outside, as a cloud LB
/// does); otherwise the first node.
fn route_external(st: &LabState, services: &[Service]) -> anyhow::Result<()> {
    let ext = external_netns(&st.plan.name);
    for s in services {
        let Some(spec) = &s.spec else { continue };
        let mut ips: Vec<String> = spec.external_ips.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("LoadBalancer") {
            ips.extend(
                s.status
                    .iter()
                    .flat_map(|st| st.load_balancer.iter())
                    .flat_map(|l| l.ingress.iter().flatten())
                    .filter_map(|i| i.ip.clone()),
            );
        }
        if ips.is_empty() {
            continue;
        }
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let via = if let (true, Some(hc)) = (local, spec.health_check_node_port) {
            let ns = crate::run::netns_path(&ext);
            st.plan
                .nodes
                .iter()
                .find(|n| health_ok(&ns, std::net::SocketAddr::new(n.ip.into(), hc as u16)))
                .map(|n| n.ip)
        } else {
            st.plan.nodes.first().map(|n| n.ip)
        };
        let name = s.metadata.name.clone().unwrap_or_default();
        let Some(via) = via else {
            step(&format!(
                "service {name}: no node reports a local backend; external addresses not routed"
            ));
            continue;
        };
        for ipaddr in ips {
            ip(&[
                "-n",
                &ext,
                "route",
                "replace",
                &format!("{ipaddr}/32"),
                "via",
                &via.to_string(),
            ])?;
            step(&format!(
                "service {name}: external address {ipaddr} routed via node {via}{}",
                if local {
                    " (healthy: has a local backend)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// GET a healthCheckNodePort from a namespace; true on HTTP 200.
pub fn health_ok(netns: &Path, addr: std::net::SocketAddr) -> bool {
    let Ok(ns) = strait_netlink::NetnsFile::open(netns) else {
        return false;
    };
    strait_netlink::in_netns(&ns, move || {
        use std::io::Read;
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lab\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
    })
    .unwrap_or(false)
}

/// What the cloud and the API server would fill in for an external service:
/// NodePorts, a LoadBalancer ingress IP from 198.18.96.0/24, and a
/// healthCheckNodePort for externalTrafficPolicy Local. Given values stay.
pub(crate) fn assign_external(s: &mut Service, index: usize) {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    let Some(spec) = s.spec.as_mut() else { return };
    let ty = spec.type_.clone().unwrap_or_default();
    if ty != "NodePort" && ty != "LoadBalancer" {
        return;
    }
    for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
        if p.node_port.is_none() {
            p.node_port = Some(30000 + (index as i32) * 10 + i as i32);
        }
    }
    if ty == "LoadBalancer" {
        if spec.external_traffic_policy.as_deref() == Some("Local")
            && spec.health_check_node_port.is_none()
        {
            spec.health_check_node_port = Some(32000 + index as i32);
        }
        let has = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .is_some_and(|i| !i.is_empty());
        if !has {
            s.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some(format!("198.18.96.{}", 10 + index)),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            });
        }
    }
}

/// Wait until every node's agent programs the whole service table.
pub fn wait_services_programmed(st: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let snap_services = strait_model::services::compile(&{
        let mut s = strait_model::cluster::ClusterSnapshot::default();
        for e in std::fs::read_dir(crate::publish::objects_dir(st))?.flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                for o in
                    strait_model::cluster::parse_manifests(&std::fs::read_to_string(e.path())?)?
                {
                    s.add(o);
                }
            }
        }
        s
    });
    let want: Vec<_> = snap_services
        .entries
        .iter()
        .map(|e| (**e).clone())
        .collect();
    let deadline = Instant::now() + timeout;
    for n in &st.plan.nodes {
        loop {
            // Cluster IPs only: external frontends differ per node. The
            // apiserver's own `kubernetes` service is not the lab's.
            let got: Vec<_> = agent_status(&st.socket(n))
                .map(|s| s.services)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| !e.external)
                .filter(|e| !(e.namespace == "default" && e.name == "kubernetes"))
                .collect();
            if got == want {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {}: agent programmed {} of {} service frontends",
                    n.name,
                    got.len(),
                    want.len()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

pub(crate) fn wait_listening(netns: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(ns) = strait_netlink::NetnsFile::open(&netns_path(netns)) {
            let ok = strait_netlink::in_netns(&ns, || {
                std::net::TcpStream::connect_timeout(
                    &"127.0.0.1:8080".parse().unwrap(),
                    Duration::from_millis(100),
                )
                .is_ok()
            })
            .unwrap_or(false);
            if ok {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Remove everything the lab made: pods (CNI DEL), processes, namespaces,
/// files. Best effort throughout; reports what it could not remove.
pub fn down(name: &str, bins: &Binaries) -> anyhow::Result<()> {
    let mut problems = vec![];
    if let Ok(st) = LabState::load(name) {
        for p in &st.plan.pods {
            if let Some(pid) = LabState::read_pid(&st.pod_pid(p)) {
                stop(&[pid], Duration::from_secs(1));
            }
            if let Some(node) = st.plan.node(&p.node) {
                if netns_path(&node.netns).exists() && st.socket(node).exists() {
                    let conf = cni_conf(&st, node);
                    if let Err(e) = run_cni(
                        bins,
                        &node.netns,
                        &conf,
                        "DEL",
                        &st.container_id(p),
                        netns_path(&p.netns).to_str().unwrap(),
                        p,
                    ) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
        }
        for n in &st.plan.nodes {
            if let Some(pid) = LabState::read_pid(&st.agent_pid(n)) {
                stop(&[pid], Duration::from_secs(3));
            }
        }
    }
    // Whatever else still runs in the lab's namespaces (crashed runs).
    for ns in crate::cmd::lab_netns(name) {
        let pids = netns_pids(&ns);
        stop(&pids, Duration::from_secs(2));
    }
    // Pods first, then nodes (which takes their host veths), then the fabric.
    let mut all = crate::cmd::lab_netns(name);
    all.sort_by_key(|n| {
        if n.contains("-pod-") {
            0
        } else if n.ends_with("-fabric") {
            2
        } else {
            1
        }
    });
    for ns in all {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            problems.push(format!("{e:#}"));
        }
    }
    problems.extend(crate::cgroup::remove_lab(name));
    // Pinned maps: the programs went with the namespaces' devices.
    let pins = std::path::PathBuf::from(strait_model::lab::lab_bpf_dir(name));
    if pins.exists() {
        if let Err(e) = std::fs::remove_dir_all(&pins) {
            problems.push(format!("remove {}: {e}", pins.display()));
        }
        let parent = pins.parent().unwrap();
        if std::fs::read_dir(parent)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            let _ = std::fs::remove_dir(parent);
        }
    }
    let dir = LabState::dir_for(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            problems.push(format!("remove {}: {e}", dir.display()));
        }
    }
    if !problems.is_empty() {
        eprintln!(
            "lab down: finished with problems:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Resolve a lab target (node or pod name) to its namespace.
pub fn target_netns(plan: &LabPlan, target: &str) -> anyhow::Result<String> {
    if let Some(n) = plan.node(target) {
        return Ok(n.netns.clone());
    }
    if let Some(p) = plan.pod(target) {
        return Ok(p.netns.clone());
    }
    if target == "fabric" {
        return Ok(fabric_netns(&plan.name));
    }
    if target == "external" {
        return Ok(external_netns(&plan.name));
    }
    if matches!(target, "gateway" | "gw") && !plan.underlay.is_empty() {
        return Ok(strait_model::underlay::gateway_netns(&plan.name));
    }
    // A rack's router: `tor-r1` (or the rack's name).
    if let Some(r) = plan
        .racks
        .iter()
        .find(|r| target == r.name || target.strip_prefix("tor-") == Some(&r.name))
    {
        return Ok(r.netns.clone());
    }
    bail!(
        "{target:?} is neither a node ({}) nor a pod ({}) of lab {}",
        plan.nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        plan.pods
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        plan.name
    )
}

/// Print nodes and pods as tables.
pub fn status(st: &LabState) -> String {
    let mut out = String::new();
    let plan = &st.plan;
    out.push_str(&format!(
        "lab {}  datapath {}  cross-node {}  fabric {}  mtu {} (pods {})\n\n",
        plan.name,
        plan.mode,
        plan.cross_node,
        plan.fabric,
        plan.mtu,
        plan.pod_mtu()
    ));
    if !plan.racks.is_empty() {
        out.push_str(&format!(
            "{:<10} {:<18} {:<14} {:<8} {:<7} {}\n",
            "RACK", "SUBNET", "ROUTER", "", "AS", "NODES"
        ));
        for r in &plan.racks {
            let nodes: Vec<&str> = plan
                .nodes
                .iter()
                .filter(|n| n.rack.as_deref() == Some(r.name.as_str()))
                .map(|n| n.name.as_str())
                .collect();
            out.push_str(&format!(
                "{:<10} {:<18} {:<14} {:<8} {:<7} {}\n",
                r.name,
                r.subnet.to_string(),
                r.gateway.to_string(),
                r.router.to_string(),
                r.asn,
                nodes.join(", ")
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{:<12} {:<14} {:<16} {:<8} {:<6} {}\n",
        "NODE", "IP", "POD CIDR", "AGENT", "READY", "PODS"
    ));
    for n in &plan.nodes {
        let pid = LabState::read_pid(&st.agent_pid(n));
        let running = pid.is_some_and(alive);
        let s = agent_status(&st.socket(n)).ok();
        out.push_str(&format!(
            "{:<12} {:<14} {:<16} {:<8} {:<6} {}\n",
            n.name,
            n.ip.to_string(),
            n.pod_cidr.to_string(),
            if running {
                format!("{}", pid.unwrap())
            } else {
                "down".into()
            },
            match &s {
                Some(s) if s.ready => "yes",
                Some(_) => "no",
                None => "?",
            },
            s.as_ref()
                .map(|s| s.allocations.len().to_string())
                .unwrap_or_else(|| "?".into()),
        ));
    }
    out.push_str(&format!(
        "\n{:<20} {:<12} {:<16} {:<16} {}\n",
        "POD", "NODE", "IP", "HOST VETH", "ECHO"
    ));
    for p in &plan.pods {
        let echo = LabState::read_pid(&st.pod_pid(p)).is_some_and(alive);
        out.push_str(&format!(
            "{:<20} {:<12} {:<16} {:<16} {}\n",
            format!("{}/{}", p.namespace, p.name),
            p.node,
            st.pod_ip(p)
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            if st.plan.cross_node == strait_model::lab::CrossNodeMode::Macvlan {
                strait_model::naming::svc_veth_name(&st.container_id(p), "eth0")
            } else {
                strait_model::naming::host_veth_name(&st.container_id(p), "eth0")
            },
            if echo { "up" } else { "down" },
        ));
    }
    out
}
