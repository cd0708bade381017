//! NetworkPolicy at scale: 5 000 pods in 100 namespaces and 1 000 policies
//! (pod and namespace selectors, ports, an ipBlock each tenth), one node's
//! share of the pods (50) compiled and programmed, in the same run, with
//! strait's nftables backend (into a private namespace) and its eBPF
//! backend (into maps pinned in a private bpffs directory); then one
//! policy changed. Prints, for each, the compile time, what was written and
//! the apply time, cold and for the change.
//!
//! Usage: policy-scale [--pods N] [--policies N] [--out FILE]   (root)

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strait_agent::policybackend::{ebpf::EbpfPolicy, PodRules, PolicyBackend};
use strait_model::policy::nft::{desired, plan, PodPolicy, Programmed};
use strait_model::policy::{pod_ips, Direction, View};

#[global_allocator]
static HEAP: strait_bench::Counting = strait_bench::Counting;

const NAMESPACES: usize = 100;
const LOCAL: usize = 50;

fn pod(i: usize) -> Pod {
    let ns = i % NAMESPACES;
    let ip = IpAddr::from([
        10,
        100 + (i / 65536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256) as u8,
    ]);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("p{i}"), "namespace": format!("ns{ns}"),
                     "labels": {"app": format!("app{}", i % 20), "tier": if i.is_multiple_of(3) {"web"} else {"db"}}},
        "spec": {"nodeName": if i < LOCAL { "local" } else { "other" },
                 "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip.to_string()}
    }))
    .unwrap()
}

fn namespace(i: usize) -> Namespace {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("ns{i}"), "labels": {"team": format!("t{}", i % 10)}}
    }))
    .unwrap()
}

fn policy(i: usize, variant: usize) -> NetworkPolicy {
    let ns = i % NAMESPACES;
    let mut from = vec![
        serde_json::json!({"podSelector": {"matchLabels": {"app": format!("app{}", (i + variant) % 20)}}}),
        serde_json::json!({"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 10)}},
                           "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}}),
    ];
    if i.is_multiple_of(10) {
        from.push(
            serde_json::json!({"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}),
        );
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("pol{i}"), "namespace": format!("ns{ns}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app{}", i % 20)}},
            "ingress": [{"from": from, "ports": [{"port": "http"}, {"port": 443 + variant}]}]
        }
    }))
    .unwrap()
}

/// Compile every local pod; returns the table and how long it took.
fn compile(
    pods: &[Pod],
    nss: &[Namespace],
    pols: &[NetworkPolicy],
) -> (Programmed, Vec<PodRules>, Duration, usize) {
    let t0 = Instant::now();
    let view = View::from_parts(pods, nss, pols);
    let mut sets = vec![];
    for p in pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("local"))
    {
        let key = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap(),
            p.metadata.name.as_deref().unwrap()
        );
        sets.push((
            key,
            pod_ips(p),
            view.compile(p, Direction::Ingress).0,
            view.compile(p, Direction::Egress).0,
        ));
    }
    let isolated = sets.iter().filter(|s| !s.2.isolated_by.is_empty()).count();
    let views: Vec<PodPolicy> = sets
        .iter()
        .map(|(k, ips, i, e)| PodPolicy {
            key: k,
            ips,
            ingress: i,
            egress: e,
        })
        .collect();
    let t = desired(&views);
    let rules = sets
        .iter()
        .map(|(k, ips, i, e)| PodRules {
            pod: k.clone(),
            ips: ips.clone(),
            ingress: i.clone(),
            egress: e.clone(),
        })
        .collect();
    (t, rules, t0.elapsed(), isolated)
}

fn nft(ns: &str, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin.take().unwrap().write_all(stdin.as_bytes())?;
    let out = c.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct PinDir(std::path::PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let npods: usize = get("--pods")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(5000);
    let npols: usize = get("--policies")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(1000);
    let base = strait_bench::heap_live();
    let pods: Vec<Pod> = (0..npods).map(pod).collect();
    let nss: Vec<Namespace> = (0..NAMESPACES).map(namespace).collect();
    let mut pols: Vec<NetworkPolicy> = (0..npols).map(|i| policy(i, 0)).collect();
    let objects_bytes = strait_bench::heap_live() - base;

    let ns = Netns(format!("strait-benchpol-{}", std::process::id()));
    anyhow::ensure!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()?
        .success());

    let before = strait_bench::heap_live();
    let (cold, cold_rules, cold_compile, isolated) = compile(&pods, &nss, &pols);
    // What the agent keeps after compiling: the per-pod rules (both
    // backends) and, for nftables, the table as programmed.
    let compiled_bytes = strait_bench::heap_live() - before;
    let script = plan(None, &cold);
    let t0 = Instant::now();
    nft(&ns.0, &["-f", "-"], &script).context("cold apply")?;
    let cold_apply = t0.elapsed();
    let rules: usize = cold.chains.values().map(|c| c.len()).sum();

    // One policy's peer selector and port change.
    pols[0] = policy(0, 7);
    let (next, next_rules, change_compile, _) = compile(&pods, &nss, &pols);
    let step = plan(Some(&cold), &next);
    let t0 = Instant::now();
    nft(&ns.0, &["-f", "-"], &step).context("change apply")?;
    let change_apply = t0.elapsed();
    let listing = nft(&ns.0, &["list", "table", "inet", "strait_policy"], "")?;
    anyhow::ensure!(listing.lines().count() > rules, "the table holds the rules");

    // The eBPF backend, into maps of a datapath loaded in a private pin dir.
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/strait-benchpol-{}",
        std::process::id()
    ));
    let _pins = PinDir(pins.clone());
    strait_bpf::datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    let dp = strait_bpf::Datapath::load(&pins, strait_bpf::Features::probe(false))
        .context("load the eBPF datapath")?;
    let before = strait_bench::heap_live();
    let mut ebpf = EbpfPolicy::new(pins.clone());
    let t0 = Instant::now();
    let ebpf_cold_entries = ebpf.apply(&cold_rules)?;
    let ebpf_cold = t0.elapsed();
    // The eBPF backend's record of what it programmed.
    let ebpf_bytes = strait_bench::heap_live().saturating_sub(before);
    let t0 = Instant::now();
    let ebpf_change_entries = ebpf.apply(&next_rules)?;
    let ebpf_change = t0.elapsed();
    drop(dp);

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let mb = |b: usize| format!("{:.1} MB", b as f64 / 1e6);
    let report = format!(
        "# NetworkPolicy at scale\n\n{npods} pods in {NAMESPACES} namespaces, {npols} policies (pod, namespace+expression and ipBlock peers, a named and a numeric port); one node's {LOCAL} pods compiled ({isolated} isolated). nftables: {} chains, {rules} rules. eBPF: LPM entries in strait_policy.\n\n| backend | step | compile | written | apply | change to enforcement |\n|---|---|---|---|---|---|\n| nftables | cold | {} | {} script lines | {} | {} |\n| nftables | one policy's selector and port changed | {} | {} script lines | {} | {} |\n| eBPF | cold | {} | {ebpf_cold_entries} map entries | {} | {} |\n| eBPF | one policy's selector and port changed | {} | {ebpf_change_entries} map entries | {} | {} |\n\nCompile is the same model for both (strait_model::policy); nftables applies with one `nft -f`, eBPF with map syscalls.\n\nMemory, as live heap bytes (a counting allocator, not RSS): the cluster objects as parsed {}; compiled, what the agent keeps for this node's pods (per-pod rules and the nftables table) {}; the eBPF backend's record of what it programmed, on top {}.\n",
        cold.chains.len(),
        ms(cold_compile),
        script.lines().count(),
        ms(cold_apply),
        ms(cold_compile + cold_apply),
        ms(change_compile),
        step.lines().count(),
        ms(change_apply),
        ms(change_compile + change_apply),
        ms(cold_compile),
        ms(ebpf_cold),
        ms(cold_compile + ebpf_cold),
        ms(change_compile),
        ms(ebpf_change),
        ms(change_compile + ebpf_change),
        mb(objects_bytes),
        mb(compiled_bytes),
        mb(ebpf_bytes),
    );
    print!("{report}");
    if let Some(f) = get("--out") {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {f}");
    }
    Ok(())
}
