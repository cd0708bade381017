//! `strait lab explain` latency (issue 14), in one run: one flow in a
//! 3-node lab (eBPF datapath) holding 1 000 services and 500
//! NetworkPolicies, pod to pod across nodes and pod to a service, without
//! --verify (the target: under 200 ms). Beside it, what a user would do
//! instead: `strait lab hops` (a probe captured on every interface of the
//! path), and the floor: a single question to a kernel (`ip -j route
//! get` in one namespace), of which explain asks a few per hop.
//!
//! Usage: explain [--rounds N] [--services N] [--policies N] [--out FILE]   (root)

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use strait_bench::labs::Cleanup;
use strait_lab::run::Binaries;

fn lab_yaml(services: usize, policies: usize) -> String {
    let mut s = String::from(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {name: benchexpl}\nspec:\n  datapath: ebpf\n  nodes: [{name: node-a}, {name: node-b}, {name: node-c}]\n",
    );
    for (p, n) in [("a1", "node-a"), ("b1", "node-b"), ("c1", "node-c")] {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, labels: {{app: web}}}}\nspec: {{nodeName: {n}, containers: [{{name: echo, ports: [{{name: http, containerPort: 8080}}]}}]}}\n"
        ));
    }
    for i in 0..services {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        ));
    }
    // Every policy isolates the web pods and admits its own peers: the
    // compiler sees all 500 for each pod.
    for i in 0..policies {
        s.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: default}}\nspec: {{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}], ports: [{{port: 8080}}]}}]}}\n"
        ));
    }
    s
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn time<T>(
    rounds: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = vec![];
    for _ in 0..rounds {
        let t0 = Instant::now();
        f()?;
        out.push(t0.elapsed());
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = strait_bench::flag_or("--rounds", 20);
    let services: usize = strait_bench::flag_or("--services", 1000);
    let policies: usize = strait_bench::flag_or("--policies", 500);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    let bins = Binaries::locate()?;
    let mut c = Cleanup::new("/run/strait-bench-explain", &bins);
    eprintln!("bringing up 3 nodes with {services} services and {policies} policies");
    let st = c.lab("benchexpl", &lab_yaml(services, policies))?;
    // Programmed everywhere before measuring.
    for n in &st.plan.nodes {
        let s = strait_lab::run::agent_status(&st.socket(n))?;
        anyhow::ensure!(
            s.services.len() >= services,
            "{}: {} services programmed",
            n.name,
            s.services.len()
        );
    }
    let e = strait_lab::explain::explain(&st, "a1", "c1", None)?;
    anyhow::ensure!(
        matches!(
            e.request.verdict,
            strait_lab::explain::Verdict::Delivered(_)
        ),
        "{}",
        e.table()
    );
    let hops = e.request.hops.len() + e.reply.as_ref().map_or(0, |r| r.hops.len());
    use std::sync::atomic::Ordering::Relaxed;
    use strait_lab::explain::live::{QUESTIONS, QUESTION_MICROS};
    let (q0, m0) = (QUESTIONS.load(Relaxed), QUESTION_MICROS.load(Relaxed));
    let t0 = Instant::now();
    strait_lab::explain::explain(&st, "a1", "c1", None)?;
    let whole = t0.elapsed();
    let (q, m) = (
        QUESTIONS.load(Relaxed) - q0,
        QUESTION_MICROS.load(Relaxed) - m0,
    );
    let questions = format!(
        "One explain of a1 -> c1 took {:.1} ms; it asked {q} kernel questions (processes of iproute2), {:.1} ms of their time (some in parallel).",
        whole.as_secs_f64() * 1e3,
        m as f64 / 1e3
    );
    let mut pod = time(rounds, || {
        strait_lab::explain::explain(&st, "a1", "c1", None)
    })?;
    let mut svc = time(rounds, || {
        strait_lab::explain::explain(&st, "a1", "svc/s0:80", None)
    })?;
    let mut hops_ref = time(rounds.min(5), || strait_lab::hops::trace(&st, "a1", "c1"))?;
    let node_ns = st.plan.node("node-a").unwrap().netns.clone();
    let mut floor = time(rounds, || {
        let out = Command::new("ip")
            .args(["-n", &node_ns, "-j", "route", "get", "198.19.2.1"])
            .output()?;
        anyhow::ensure!(out.status.success());
        Ok(())
    })?;

    let mut r = String::new();
    r.push_str("# strait lab explain latency\n\n");
    r.push_str(&format!("machine: {}\n\n", strait_bench::machine()));
    r.push_str(&format!(
        "A 3-node lab, eBPF datapath, {services} services (each with the 3 pods as backends) and {policies} NetworkPolicies (all isolating the 3 pods); {rounds} rounds each, without --verify. Target: under 200 ms.\n\n"
    ));
    r.push_str("| what | p50 | p99 |\n|---|---|---|\n");
    let row = |r: &mut String, what: &str, v: &mut Vec<Duration>| {
        let (a, b) = (pct(v, 0.5), pct(v, 0.99));
        r.push_str(&format!("| {what} | {a:.1} ms | {b:.1} ms |\n"));
    };
    row(
        &mut r,
        &format!("strait lab explain a1 c1 (pod to pod across nodes, {hops} hops)"),
        &mut pod,
    );
    row(
        &mut r,
        "strait lab explain a1 svc/s0:80 (to a service; the walk follows its first ready backend)",
        &mut svc,
    );
    row(
        &mut r,
        "reference: strait lab hops a1 c1 (capture on the path while a probe crosses)",
        &mut hops_ref,
    );
    row(
        &mut r,
        "floor: one kernel question (ip -j route get in a namespace)",
        &mut floor,
    );
    r.push_str(&format!("\n{questions} Each hop asks the kernel (the route, the tc programs, the neighbour) through iproute2; each node's agent is asked for a service by one lookup, not its status with every service. The cluster's size shows only in those lookups.\n"));
    print!("{r}");
    if let Some(f) = out_file {
        std::fs::File::create(&f)?.write_all(r.as_bytes())?;
        eprintln!("saved to {}", f.display());
    }
    Ok(())
}
