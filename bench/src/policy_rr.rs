//! What NetworkPolicy costs on the path: pod-to-pod across nodes, TCP
//! request/response latency, new connections per second and one stream,
//! with no policy and with 1 000 policies selecting the destination (one
//! of which admits the client), on both datapaths, in one run. Rounds are
//! interleaved (none, policies, none, ...) and the median round is shown.
//!
//! Usage: policy-rr [--seconds S] [--rounds N] [--policies N] [--out FILE]   (root)

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strait_bench::rr::{connect_rate, measure, PORT};
use strait_bench::{flag, flag_or, machine};
use strait_lab::run::{self as labrun, Binaries};

fn lab_yaml(name: &str, datapath: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  datapath: {datapath}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client, labels: {{app: client}}}}\nspec: {{nodeName: node-a, containers: [{{name: c}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: other, labels: {{app: other}}}}\nspec: {{nodeName: node-a, containers: [{{name: c}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: server, labels: {{app: server}}}}\nspec: {{nodeName: node-b, containers: [{{name: c}}]}}\n"
    )
}

fn policies(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let mut from = vec![
                serde_json::json!({"podSelector": {"matchLabels": {"app": format!("peer{i}")}}}),
            ];
            if i == 0 {
                from.push(serde_json::json!({"podSelector": {"matchLabels": {"app": "client"}}}));
            }
            serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("p{i}"), "namespace": "default"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                         "ingress": [{"from": from}]}
            })
        })
        .collect()
}

/// Until `other` is refused and `client` admitted (the policies are in).
fn wait_enforced(st: &strait_lab::LabState, server: SocketAddr) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let ns = |p: &str| labrun::netns_path(&st.plan.pod(p).unwrap().netns);
    let echo = SocketAddr::new(server.ip(), strait_lab::echo::ECHO_PORT);
    loop {
        let other = strait_lab::probe::probe(&ns("other"), echo, false, Duration::from_millis(300));
        let client =
            strait_lab::probe::probe(&ns("client"), echo, false, Duration::from_millis(300));
        if other.is_err() && client.is_ok() {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "policies not enforced after 20 s"
        );
    }
}

struct Row {
    datapath: &'static str,
    setup: String,
    p50: f64,
    p99: f64,
    conns: f64,
    gbps: f64,
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = flag_or("--seconds", 2.0);
    let rounds: usize = flag_or("--rounds", 3);
    let n: usize = flag_or("--policies", 1000);
    let bins = Binaries::locate()?;
    let mut rows = vec![];
    for (datapath, name) in [("ebpf", "benchpole"), ("kernel", "benchpolk")] {
        let _ = labrun::down(name, &bins);
        std::fs::create_dir_all("/run/strait-bench-pol")?;
        let f = std::path::PathBuf::from(format!("/run/strait-bench-pol/{name}.yaml"));
        std::fs::write(&f, lab_yaml(name, datapath))?;
        let st = labrun::up(&f, &bins)?;
        let guard = Down(name, &bins);
        std::thread::sleep(Duration::from_millis(500));
        let ns = |p: &str| st.plan.pod(p).unwrap().netns.clone();
        let server = SocketAddr::new(st.pod_ip(st.plan.pod("server").unwrap()).unwrap(), PORT);
        let mut runs: [Vec<(f64, f64, f64, f64)>; 2] = [vec![], vec![]];
        let mut enforce = vec![];
        for round in 0..rounds {
            for (i, with) in [0, n].into_iter().enumerate() {
                strait_lab::publish::put(&st, "networkpolicies", &policies(with))?;
                if with > 0 {
                    enforce.push(wait_enforced(&st, server)?);
                } else {
                    std::thread::sleep(Duration::from_secs(1));
                }
                eprintln!("round {}/{rounds}: {datapath}, {with} policies", round + 1);
                let (rr, gbps) = measure(&ns("client"), &ns("server"), server, secs)?;
                let conns = connect_rate(&ns("client"), &ns("server"), server, secs)?;
                runs[i].push((rr.p50_us, rr.p99_us, conns, gbps));
            }
        }
        for (i, label) in [
            "no policy".to_string(),
            format!("{n} policies select the server"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = runs[i].clone();
            r.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            let (p50, p99, conns, gbps) = r[r.len() / 2];
            rows.push(Row {
                datapath,
                setup: label,
                p50,
                p99,
                conns,
                gbps,
            });
        }
        enforce.sort();
        eprintln!(
            "{datapath}: publishing {n} policies to enforced (probe-observed): median {:?}",
            enforce[enforce.len() / 2]
        );
        drop(guard);
    }
    let mut report = format!(
        "# NetworkPolicy on the path\n\nmachine: {}\nPod to pod across nodes (client on node-a, server on node-b); TCP request/response with 64-byte messages, new connections (connect, 1 byte each way, close) and one stream, {secs} s each, {rounds} interleaved rounds, the median round shown. With policies, {n} NetworkPolicies select the server; one admits the client.\n\n| datapath | setup | RR p50 | RR p99 | new connections/s | stream |\n|---|---|---|---|---|---|\n",
        machine()
    );
    for r in &rows {
        report.push_str(&format!(
            "| {} | {} | {:.1} us | {:.1} us | {:.0} | {:.2} Gbit/s |\n",
            r.datapath, r.setup, r.p50, r.p99, r.conns, r.gbps
        ));
    }
    report.push_str("\nAdded by the policies (target: under 3% on established flows):\n\n");
    for pair in rows.chunks(2) {
        report.push_str(&format!(
            "- {}: RR p50 {:+.1}%, new connections {:+.1}%, stream {:+.1}%\n",
            pair[0].datapath,
            (pair[1].p50 / pair[0].p50 - 1.0) * 100.0,
            (pair[1].conns / pair[0].conns - 1.0) * 100.0,
            (pair[1].gbps / pair[0].gbps - 1.0) * 100.0,
        ));
    }
    print!("{report}");
    if let Some(f) = flag("--out") {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {f}");
    }
    Ok(())
}

struct Down<'a>(&'a str, &'a Binaries);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = labrun::down(self.0, self.1);
    }
}
