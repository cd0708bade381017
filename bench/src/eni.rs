//! ENI multi-IP benchmark (issue 13), in one run:
//!
//! - pod-ready latency (CNI ADD, the plugin's wall time) when the warm
//!   pool is empty (the agent asks the lab's cloud for an address during
//!   the ADD) and when it is warm, beside Debian's bridge + host-local
//!   (what a user without a cloud runs; no cloud call);
//! - 100 pods created at once on one node: p50/p99 ADD, pool empty and
//!   pool warm;
//! - TCP request/response between ENI multi-IP pods on one ENI, across two
//!   ENIs of one node, and across nodes (kernel and eBPF datapaths), beside
//!   the limits (a bare veth; node to node).
//!
//! Usage: eni [--rounds N] [--seconds S] [--out FILE]   (root)

use anyhow::bail;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strait_bench::labs::Cleanup;
use strait_bench::rr::{measure, Rr, PORT};
use strait_lab::cmd::ip;
use strait_lab::run::{netns_path, Binaries};
use strait_netlink::{in_netns, NetnsFile};

/// A two-node ENI lab; an ENI holds `ips` addresses (its primary among
/// them), a node up to `enis` ENIs; the warm pool keeps `min`..`max`.
fn lab_yaml(name: &str, datapath: &str, quota: (usize, usize), pool: (usize, usize)) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  datapath: {datapath}\n  crossNode: eni\n  ipCooldownSecs: 0\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 24}}\n  cloud:\n    vswitches: [{{id: vsw-pods, cidr: 198.18.32.0/22, zone: a}}]\n    securityGroups: [{{id: sg-nodes}}]\n    quota: {{enis: {}, ipsPerEni: {}, membersPerTrunk: 10}}\n  eniPool: {{vswitch: vsw-pods, securityGroups: [sg-nodes], minIdle: {}, maxIdle: {}}}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n",
        quota.0, quota.1, pool.0, pool.1
    )
}

fn pods_yaml(pods: &[(&str, &str)]) -> String {
    pods.iter()
        .map(|(p, n)| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}}}\nspec: {{nodeName: {n}, containers: [{{name: c}}]}}\n"))
        .collect()
}

/// One CNI call of `plugin` from inside `node` (as a runtime in the
/// node's namespace would): its wall time.
fn cni(
    node: &NetnsFile,
    plugin: &std::path::Path,
    cmd: &str,
    cid: &str,
    pod_ns: &str,
    conf: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let conf = conf.to_string();
    in_netns(node, || -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let mut child = Command::new(plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns_path(pod_ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let dt = t0.elapsed();
        if !out.status.success() {
            bail!("{cmd} {cid}: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(dt)
    })?
}

fn ms(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// The node's secondary addresses in the VPC.
fn held(st: &strait_lab::LabState, node: &str) -> usize {
    strait_lab::cloud::LabCloud {
        socket: strait_lab::cloud::socket(st),
    }
    .list()
    .map(|v| {
        v.iter()
            .filter(|e| e.node.as_deref() == Some(node))
            .map(|e| e.secondary_ips.len())
            .sum()
    })
    .unwrap_or(0)
}

fn wait_held(st: &strait_lab::LabState, node: &str, f: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f(held(st, node)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Adds {
    setup: String,
    one: Vec<Duration>,
    burst: Vec<Duration>,
}

/// `rounds` single ADDs (each followed by its DEL) and one burst of
/// `burst` ADDs at once, through `plugin`. With `cold`, each single ADD
/// waits until the pool has given every idle address back first.
#[allow(clippy::too_many_arguments)]
fn adds(
    c: &mut Cleanup,
    st: &strait_lab::LabState,
    setup: &str,
    plugin: &std::path::Path,
    conf: impl Fn(usize) -> serde_json::Value + Sync,
    rounds: usize,
    burst: usize,
    cold: bool,
) -> anyhow::Result<Adds> {
    let node = NetnsFile::open(&netns_path(&st.plan.node("node-a").unwrap().netns))?;
    let mut one = vec![];
    // The reference runs in the same lab: its namespaces are its own.
    let prefix = if plugin.ends_with("strait-cni") {
        "s"
    } else {
        "r"
    };
    let made = |tag: &str, i: usize, c: &mut Cleanup| -> anyhow::Result<String> {
        let ns = format!("strait-{}-pod-{prefix}{tag}{i}", st.plan.name);
        ip(&["netns", "add", &ns])?;
        c.netns.push(ns.clone());
        Ok(ns)
    };
    for i in 0..rounds {
        if cold {
            wait_held(st, "node-a", |n| n == 0);
        }
        let ns = made("one", i, c)?;
        let cid = format!("{prefix}one{i}");
        one.push(cni(&node, plugin, "ADD", &cid, &ns, &conf(i))?);
        cni(&node, plugin, "DEL", &cid, &ns, &conf(i))?;
    }
    if cold {
        wait_held(st, "node-a", |n| n == 0);
    } else {
        std::thread::sleep(Duration::from_secs(3));
    }
    let names: Vec<String> = (0..burst)
        .map(|i| made("burst", i, c))
        .collect::<anyhow::Result<_>>()?;
    let burst: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    cni(
                        node,
                        plugin,
                        "ADD",
                        &format!("burst{i}"),
                        ns,
                        &conf(1000 + i),
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<anyhow::Result<_>>()
    })?;
    for (i, ns) in names.iter().enumerate() {
        cni(
            &node,
            plugin,
            "DEL",
            &format!("burst{i}"),
            ns,
            &conf(1000 + i),
        )?;
    }
    Ok(Adds {
        setup: setup.into(),
        one,
        burst,
    })
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = strait_bench::flag_or("--rounds", 20);
    let secs: f64 = strait_bench::flag_or("--seconds", 3.0);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    if !nix::unistd::geteuid().is_root() {
        bail!("eni needs root (it creates network namespaces)");
    }
    let bins = Binaries::locate()?;
    let mut c = Cleanup::new("/run/strait-bench-eni", &bins);
    const BURST: usize = 100;

    // Pod-ready latency: quota for a burst of 100 (4 pod ENIs of 29).
    let mut add_rows = vec![];
    for (name, pool, cold, label) in [
        (
            "benchenic",
            (0, 0),
            true,
            "strait eni, pool empty (the ADD asks the cloud)",
        ),
        (
            "benchenw",
            (BURST + 5, BURST + 20),
            false,
            "strait eni, pool warm",
        ),
    ] {
        let st = c.lab(name, &lab_yaml(name, "kernel", (5, 30), pool))?;
        if !cold {
            wait_held(&st, "node-a", |n| n >= BURST + 5);
        }
        let sock = st.socket(st.plan.node("node-a").unwrap());
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "strait", "type": "strait-cni",
            "agentSocket": sock, "mtu": 1500});
        add_rows.push(adds(
            &mut c,
            &st,
            label,
            &bins.cni,
            |_| conf.clone(),
            rounds,
            BURST,
            cold,
        )?);
    }

    // The reference: what a user without a cloud would run, Debian's
    // bridge with host-local addresses, on a node of the same kind of lab.
    {
        let st = c.lab(
            "benchenref",
            &lab_yaml("benchenref", "kernel", (3, 3), (0, 0)),
        )?;
        let data = std::path::Path::new("/run/strait-bench-eni/host-local");
        let _ = std::fs::remove_dir_all(data);
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
            "bridge": "refbr0", "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "198.18.220.0/24"}]]}});
        add_rows.push(adds(
            &mut c,
            &st,
            "reference: Debian bridge + host-local (no cloud)",
            std::path::Path::new("/usr/lib/cni/bridge"),
            |_| conf.clone(),
            rounds,
            BURST,
            false,
        )?);
        let _ = std::fs::remove_dir_all(data);
    }

    // Request/response: one ENI, two ENIs, two nodes.
    let pods = pods_yaml(&[
        ("centos", "node-a"),
        ("nginx2", "node-a"),
        ("nginx3", "node-a"),
        ("nginx1", "node-b"),
    ]);
    let mut pairs: Vec<(String, String, String, SocketAddr)> = vec![];
    for datapath in ["kernel", "ebpf"] {
        let name = format!("benchenrr{}", &datapath[..1]);
        let st = c.lab(&name, &(lab_yaml(&name, datapath, (3, 3), (0, 2)) + &pods))?;
        let ns = |p: &str| st.plan.pod(p).unwrap().netns.clone();
        let at = |p: &str| SocketAddr::new(st.pod_ip(st.plan.pod(p).unwrap()).unwrap(), PORT);
        for (what, dst) in [
            ("same node, one ENI", "nginx2"),
            ("same node, two ENIs", "nginx3"),
            ("across nodes (ENI, VPC, ENI)", "nginx1"),
        ] {
            pairs.push((
                format!("strait eni, {datapath}: {what}"),
                ns("centos"),
                ns(dst),
                at(dst),
            ));
        }
        if datapath == "kernel" {
            let (na, nb) = (
                st.plan.node("node-a").unwrap(),
                st.plan.node("node-b").unwrap(),
            );
            pairs.push((
                "limit: node to node over the fabric".into(),
                na.netns.clone(),
                nb.netns.clone(),
                SocketAddr::new(nb.ip.into(), PORT),
            ));
        }
    }
    let (l1, l2) = ("strait-benchen-limit-1", "strait-benchen-limit-2");
    for n in [l1, l2] {
        ip(&["netns", "add", n])?;
        c.netns.push(n.into());
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", l1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", l2,
    ])?;
    for (n, a) in [(l1, "198.18.200.1/24"), (l2, "198.18.200.2/24")] {
        ip(&["-n", n, "addr", "add", a, "dev", "eth0"])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
    }
    pairs.push((
        "limit: bare veth between two namespaces".into(),
        l1.into(),
        l2.into(),
        "198.18.200.2:0".parse()?,
    ));
    let rr_rounds = 3;
    let mut results: Vec<Vec<(Rr, f64)>> = pairs.iter().map(|_| vec![]).collect();
    for round in 0..rr_rounds {
        for (i, (what, cl, sv, addr)) in pairs.iter().enumerate() {
            eprintln!("round {}/{rr_rounds}: {what}", round + 1);
            results[i].push(measure(cl, sv, *addr, secs)?);
        }
    }

    let mut report = format!(
        "# ENI multi-IP (Terway ENIIP / DataPath V2)\n\nmachine: {}\n\n## Pod-ready latency (CNI ADD wall time, node-a)\n\n{rounds} single ADDs (each then deleted), and {BURST} ADDs started at once. Pool empty: minIdle 0, maxIdle 0, so every ADD asks the lab's cloud (AssignPrivateIpAddresses, and CreateNetworkInterface when an ENI is full) and the single ADDs wait until the pool has given everything back. Warm: {} idle addresses kept. The reference is Debian's bridge plugin with host-local addresses on a node of the same kind of lab (no cloud call at all). The cloud is the lab's emulator (a local socket, one call at a time): a real cloud API adds its own round trip to every empty-pool ADD.\n\n| setup | single ADD p50 | p99 | burst of {BURST}: p50 | p99 | max |\n|---|---|---|---|---|---|\n",
        strait_bench::machine(),
        BURST + 5
    );
    for a in &mut add_rows {
        let (o50, o99) = (ms(&mut a.one, 0.5), ms(&mut a.one, 0.99));
        let (b50, b99, bmax) = (
            ms(&mut a.burst, 0.5),
            ms(&mut a.burst, 0.99),
            ms(&mut a.burst, 1.0),
        );
        report.push_str(&format!(
            "| {} | {o50:.1} ms | {o99:.1} ms | {b50:.1} ms | {b99:.1} ms | {bmax:.1} ms |\n",
            a.setup
        ));
    }
    report.push_str(&format!(
        "\n## Request/response between pods\n\nOne TCP connection, 64-byte messages, TCP_NODELAY, {secs} s, client and server pinned to one CPU; {rr_rounds} interleaved rounds, the median round shown.\n\n| setup | RR p50 | RR p99 | transactions/s | stream |\n|---|---|---|---|---|\n"
    ));
    for ((what, ..), mut runs) in pairs.iter().zip(results) {
        runs.sort_by(|a, b| a.0.p50_us.partial_cmp(&b.0.p50_us).unwrap());
        let (rr, g) = &runs[runs.len() / 2];
        report.push_str(&format!(
            "| {what} | {:.1} us | {:.1} us | {:.0} | {g:.2} Gbit/s |\n",
            rr.p50_us, rr.p99_us, rr.tps
        ));
    }
    print!("{report}");
    if let Some(f) = out_file {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {}", f.display());
    }
    Ok(())
}
