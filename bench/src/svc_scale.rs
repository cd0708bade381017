//! Services at scale: 10, 1 000 and 10 000 services of 10 backends each,
//! for strait's eBPF backend, strait's nftables backend, and an iptables
//! rule set shaped like kube-proxy's iptables mode (generated here and
//! loaded with iptables-restore), in one run. For each: the time to program
//! the whole table from cold, the time to apply one endpoint change, TCP
//! connect latency through the service beside straight to a backend pod,
//! and the agent's memory.
//!
//! Usage: svc-scale [--scales 10,1000,10000] [--out FILE]   (root)

use anyhow::{bail, Context};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strait_lab::run::{self as labrun, netns_path, Binaries};

const REAL_VIP: &str = "198.18.128.10";
const FAKE_BACKENDS: usize = 10;

fn lab_yaml(name: &str, mode: &str, with_service: bool) -> String {
    let mut y = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 24, serviceCIDR: 198.18.128.0/17}}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec: {{nodeName: node-a, containers: [{{name: c}}]}}\n"
    );
    for i in 0..10 {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        y.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: r{i}, labels: {{app: real}}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\n"));
    }
    if with_service {
        y.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: real}}\nspec: {{clusterIP: {REAL_VIP}, selector: {{app: real}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"));
    }
    y
}

fn dummy_vip(i: usize) -> String {
    let n = 129 * 256 + i; // 198.18.129.0 onwards, inside 198.18.128.0/17
    format!("198.18.{}.{}", n / 256, n % 256)
}

fn fake_backend(j: usize, changed: bool) -> String {
    format!("198.19.250.{}", j + 1 + if changed { 100 } else { 0 })
}

/// `count` selector-less services with 10 (fake) backends each; the first
/// one's first backend differs when `change` is set.
fn dummy_manifests(count: usize, change: bool) -> String {
    let mut y = String::with_capacity(count * 700);
    for i in 0..count {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: scale}}\nspec: {{clusterIP: {}, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: scale, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
            dummy_vip(i)
        ));
        for j in 0..FAKE_BACKENDS {
            y.push_str(&format!(
                "- {{addresses: [{}]}}\n",
                fake_backend(j, change && i == 0 && j == 0)
            ));
        }
    }
    y
}

/// kube-proxy iptables mode: KUBE-SERVICES -> KUBE-SVC-* (random
/// probability per endpoint) -> KUBE-SEP-* (DNAT). The real service goes
/// last, the worst case for the linear KUBE-SERVICES chain.
fn iptables_rules(count: usize, change: bool, real: &[String]) -> String {
    let mut svcs: Vec<(String, Vec<String>)> = (0..count)
        .map(|i| {
            (
                dummy_vip(i),
                (0..FAKE_BACKENDS)
                    .map(|j| fake_backend(j, change && i == 0 && j == 0))
                    .collect(),
            )
        })
        .collect();
    svcs.push((REAL_VIP.to_string(), real.to_vec()));
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n");
    for (i, (vip, eps)) in svcs.iter().enumerate() {
        chains.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}\n"
        ));
        for (j, ep) in eps.iter().enumerate() {
            chains.push_str(&format!(":KUBE-SEP-{i}-{j} - [0:0]\n"));
            let left = eps.len() - j;
            if left > 1 {
                rules.push_str(&format!("-A KUBE-SVC-{i} -m statistic --mode random --probability {:.5} -j KUBE-SEP-{i}-{j}\n", 1.0 / left as f64));
            } else {
                rules.push_str(&format!("-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{j}\n"));
            }
            rules.push_str(&format!(
                "-A KUBE-SEP-{i}-{j} -p tcp -m tcp -j DNAT --to-destination {ep}:8080\n"
            ));
        }
    }
    format!("{chains}{rules}COMMIT\n")
}

fn iptables_restore(netns: &str, rules: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut c = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "iptables-restore"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    c.stdin.take().unwrap().write_all(rules.as_bytes())?;
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!("iptables-restore: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(t0.elapsed())
}

/// Connect latency (median, p99 in µs) to `addr` from the namespace.
fn connect_latency(netns: &str, addr: SocketAddr, n: usize) -> anyhow::Result<(f64, f64)> {
    let ns = strait_netlink::NetnsFile::open(&netns_path(netns))?;
    let mut v = strait_netlink::in_netns(&ns, move || -> anyhow::Result<Vec<f64>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .with_context(|| format!("connect {addr}"))?;
            v.push(t0.elapsed().as_secs_f64() * 1e6);
            drop(s);
        }
        Ok(v)
    })??;
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((v[v.len() / 2], v[(v.len() - 1) * 99 / 100]))
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn wait_programmed(
    st: &strait_lab::LabState,
    frontends: usize,
    after: Option<&strait_model::api::ServiceSync>,
) -> anyhow::Result<(Duration, strait_model::api::ServiceSync)> {
    let t0 = Instant::now();
    let sock = st.socket(st.plan.node("node-a").unwrap());
    loop {
        if let Ok(s) = labrun::agent_status(&sock) {
            let n = s.services.iter().filter(|e| !e.external).count();
            if let Some(sync) = s.service_sync {
                if n == frontends && after != Some(&sync) {
                    return Ok((t0.elapsed(), sync));
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the agent did not program {frontends} frontends within 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Row {
    backend: &'static str,
    services: usize,
    cold_e2e: Option<Duration>,
    cold_apply: Duration,
    change_apply: Duration,
    via_svc: (f64, f64),
    direct: (f64, f64),
    rss_mb: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let scales: Vec<usize> = strait_bench::flag("--scales")
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 1000, 10000]);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    if !nix::unistd::geteuid().is_root() {
        bail!("svc-scale needs root (it creates network namespaces)");
    }
    let bins = Binaries::locate()?;
    let mut rows = vec![];
    std::fs::create_dir_all("/run/strait-bench-svc")?;
    for (backend, mode, with_service) in [
        ("eBPF", "ebpf", true),
        ("nftables", "routed", true),
        ("iptables (kube-proxy shape)", "routed", false),
    ] {
        let name = format!("svcscale{}", &mode[..1]) + if with_service { "" } else { "i" };
        let f = PathBuf::from(format!("/run/strait-bench-svc/{name}.yaml"));
        std::fs::write(&f, lab_yaml(&name, mode, with_service))?;
        let _ = labrun::down(&name, &bins);
        let st = labrun::up(&f, &bins)?;
        let guard = Guard(
            name.clone(),
            Binaries {
                strait: bins.strait.clone(),
                cni: bins.cni.clone(),
            },
        );
        let real: Vec<String> = (0..10)
            .map(|i| {
                st.pod_ip(st.plan.pod(&format!("r{i}")).unwrap())
                    .unwrap()
                    .to_string()
            })
            .collect();
        let client = st.plan.pod("client").unwrap().netns.clone();
        let node_a = st.plan.node("node-a").unwrap().netns.clone();
        let direct_addr: SocketAddr = format!("{}:8080", real[0]).parse()?;
        let vip: SocketAddr = format!("{REAL_VIP}:80").parse()?;
        for &n in &scales {
            eprintln!("{backend}: {n} services");
            let dummies = n - 1;
            let row = if with_service {
                let path = st.manifests_dir().join("scale.yaml");
                let before =
                    labrun::agent_status(&st.socket(st.plan.node("node-a").unwrap()))?.service_sync;
                // Cold: the whole table, from an empty one (the previous
                // scale's services are removed first).
                let _ = before;
                write_atomic(&path, "")?;
                // Past the files source's poll and a reconcile pass.
                std::thread::sleep(Duration::from_millis(1500));
                let empty =
                    labrun::agent_status(&st.socket(st.plan.node("node-a").unwrap()))?.service_sync;
                let t0 = Instant::now();
                write_atomic(&path, &dummy_manifests(dummies, false))?;
                let (_, cold) = wait_programmed(&st, n, empty.as_ref())?;
                let cold_e2e = t0.elapsed();
                write_atomic(&path, &dummy_manifests(dummies, true))?;
                let (_, change) = if dummies > 0 {
                    wait_programmed(&st, n, Some(&cold))?
                } else {
                    (Duration::ZERO, cold.clone())
                };
                let pid =
                    strait_lab::LabState::read_pid(&st.agent_pid(st.plan.node("node-a").unwrap()))
                        .unwrap_or(0);
                Row {
                    backend,
                    services: n,
                    cold_e2e: Some(cold_e2e),
                    cold_apply: Duration::from_micros(cold.micros),
                    change_apply: Duration::from_micros(change.micros),
                    via_svc: connect_latency(&client, vip, 500)?,
                    direct: connect_latency(&client, direct_addr, 500)?,
                    rss_mb: Some(rss_kb(pid) as f64 / 1024.0),
                }
            } else {
                let cold = iptables_restore(&node_a, &iptables_rules(dummies, false, &real))?;
                let change = iptables_restore(&node_a, &iptables_rules(dummies, true, &real))?;
                Row {
                    backend,
                    services: n,
                    cold_e2e: None,
                    cold_apply: cold,
                    change_apply: change,
                    via_svc: connect_latency(&client, vip, 500)?,
                    direct: connect_latency(&client, direct_addr, 500)?,
                    rss_mb: None,
                }
            };
            rows.push(row);
        }
        drop(guard);
    }
    let mut report = String::from("# Services at scale\n\n");
    report.push_str(&format!("machine: {}. 10 backends per service; connect latency: 500 TCP connects from a pod, to the service VIP (10 real backends) and straight to one backend pod.\n", strait_bench::machine()));
    report.push_str("Cold end to end = from writing the manifests to the agent reporting them programmed (includes the files source's poll of up to 0.5 s); apply = the datapath update alone. iptables rows: iptables-restore of the whole generated rule set (kube-proxy restores it whole on every change); its real service is last in KUBE-SERVICES.\n\n");
    report.push_str("| backend | services | cold, end to end | cold, apply | one endpoint change, apply | connect via service p50 / p99 | connect direct p50 / p99 | overhead p50 | agent RSS |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        report.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:.3} ms | {:.0} / {:.0} us | {:.0} / {:.0} us | {:+.1}% | {} |\n",
            r.backend,
            r.services,
            r.cold_e2e.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "-".into()),
            r.cold_apply.as_secs_f64() * 1e3,
            r.change_apply.as_secs_f64() * 1e3,
            r.via_svc.0,
            r.via_svc.1,
            r.direct.0,
            r.direct.1,
            (r.via_svc.0 / r.direct.0 - 1.0) * 100.0,
            r.rss_mb.map(|m| format!("{m:.1} MB")).unwrap_or_else(|| "-".into()),
        ));
    }
    print!("{report}");
    if let Some(f) = out_file {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {}", f.display());
    }
    let _ = std::fs::remove_dir_all("/run/strait-bench-svc");
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Guard(String, Binaries);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = labrun::down(&self.0, &self.1);
    }
}
