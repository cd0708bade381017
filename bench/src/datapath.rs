//! Pod-to-pod datapath benchmark: TCP request/response latency (p50, p99,
//! transactions/s) and single-stream throughput, same node and across
//! nodes, for strait's ebpf and kernel datapaths, each over the routed
//! underlay, over VXLAN and over IP-in-IP; Debian's bridge plugin with host-gw
//! routes, and with a VXLAN overlay wired the way flannel's vxlan backend
//! does it (the reference overlay); and the limits: two namespaces joined
//! by a bare veth (same node) and node-to-node over the fabric (across
//! nodes).
//! The eBPF lab once more with every agent serving /metrics, unscraped: an
//! idle metrics endpoint must not show.
//! Everything runs in one run, in namespaces this program makes and removes.
//!
//! Usage: datapath [--seconds S] [--rounds N] [--out FILE]   (root)

use anyhow::bail;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use strait_bench::labs::Cleanup;
use strait_bench::rr::{measure, Rr, MSG, PORT};
use strait_lab::cmd::ip;
use strait_lab::run::Binaries;

struct Row {
    scope: &'static str,
    setup: String,
    rr: Rr,
    gbps: f64,
}

fn lab_yaml(name: &str, mode: &str, cross: &str, pods: &[(&str, &str)]) -> String {
    let mut s = format!("apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  crossNode: {cross}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n");
    for (p, n) in pods {
        s.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}}}\nspec: {{nodeName: {n}, containers: [{{name: c}}]}}\n"));
    }
    s
}

fn up(
    name: &str,
    mode: &str,
    cross: &str,
    pods: &[(&str, &str)],
    c: &mut Cleanup,
) -> anyhow::Result<strait_lab::LabState> {
    c.lab(name, &lab_yaml(name, mode, cross, pods))
}

fn pod_addr(st: &strait_lab::LabState, pod: &str) -> SocketAddr {
    SocketAddr::new(st.pod_ip(st.plan.pod(pod).unwrap()).unwrap(), PORT)
}

/// Debian's bridge plugin on each node of a routed lab (whose agents only
/// own 198.19.0.0/24 and 198.19.1.0/24), with host-gw routes between the
/// nodes' bridge subnets.
fn bridge_pods(
    st: &strait_lab::LabState,
    c: &mut Cleanup,
    flannel: bool,
) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut out = vec![];
    for (i, (pod, node)) in [
        ("br-a1", "node-a"),
        ("br-a2", "node-a"),
        ("br-b1", "node-b"),
    ]
    .into_iter()
    .enumerate()
    {
        let n = st.plan.node(node).unwrap();
        let nsname = format!("strait-{}-pod-{pod}", st.plan.name);
        ip(&["netns", "add", &nsname])?;
        c.netns.push(nsname.clone());
        let subnet = if node == "node-a" {
            "198.19.100.0/24"
        } else {
            "198.19.101.0/24"
        };
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": false, "mtu": if flannel { 1450 } else { 1500 },
            "ipam": {"type": "host-local", "subnet": subnet,
                     "dataDir": format!("/run/strait-bench-dp/hl-{}-{node}", st.plan.name),
                     "routes": [{"dst": "0.0.0.0/0"}]}
        });
        let v = strait_bench::labs::reference_add(
            "bridge",
            &n.netns,
            &format!("bench{i}"),
            &nsname,
            &conf,
        )?;
        let addr = v["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()?;
        out.push((nsname, SocketAddr::new(addr, PORT)));
    }
    if flannel {
        flannel_vxlan(st)?;
        return Ok(out);
    }
    ip(&[
        "-n",
        &st.plan.node("node-a").unwrap().netns,
        "route",
        "add",
        "198.19.101.0/24",
        "via",
        "198.18.0.2",
    ])?;
    ip(&[
        "-n",
        &st.plan.node("node-b").unwrap().netns,
        "route",
        "add",
        "198.19.100.0/24",
        "via",
        "198.18.0.1",
    ])?;
    Ok(out)
}

/// The reference overlay, wired as flannel's vxlan backend does (no strait
/// involved): flannel.1 (VNI 1, UDP 8472, learning off, MTU 1450) holding
/// the node's subnet .0/32; per peer a route `via <peer .0> dev flannel.1
/// onlink`, a permanent neighbour for that address, and an FDB entry to the
/// peer's node IP.
fn flannel_vxlan(st: &strait_lab::LabState) -> anyhow::Result<()> {
    let nodes = [
        ("node-a", "198.19.100", "0e:00:00:00:00:0a"),
        ("node-b", "198.19.101", "0e:00:00:00:00:0b"),
    ];
    for (i, (node, net, mac)) in nodes.iter().enumerate() {
        let (peer, pnet, pmac) = nodes[1 - i];
        let n = st.plan.node(node).unwrap();
        let pip = st.plan.node(peer).unwrap().ip.to_string();
        let ns = n.netns.as_str();
        let local = n.ip.to_string();
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "flannel.1",
            "address",
            mac,
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &local,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{net}.0/32"),
            "dev",
            "flannel.1",
        ])?;
        ip(&["-n", ns, "link", "set", "flannel.1", "up"])?;
        let gw = format!("{pnet}.0");
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &gw,
            "lladdr",
            pmac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{pnet}.0/24"),
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
        ])?;
        let out = Command::new("bridge")
            .args([
                "-n",
                ns,
                "fdb",
                "append",
                pmac,
                "dev",
                "flannel.1",
                "dst",
                &pip,
            ])
            .output()?;
        if !out.status.success() {
            bail!("bridge fdb: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

use strait_bench::machine;

fn main() -> anyhow::Result<()> {
    let secs: f64 = strait_bench::flag_or("--seconds", 3.0);
    let rounds: usize = strait_bench::flag_or("--rounds", 3);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    if !nix::unistd::geteuid().is_root() {
        bail!("datapath needs root (it creates network namespaces)");
    }
    let bins = Binaries::locate()?;
    let mut c = Cleanup::new("/run/strait-bench-dp", &bins);
    let pods = [("a1", "node-a"), ("a2", "node-a"), ("b1", "node-b")];
    // Every setup stays up; rounds interleave them so drift hits all alike.
    let (l1, l2) = (
        "strait-benchdp-limit-1".to_string(),
        "strait-benchdp-limit-2".to_string(),
    );
    for n in [&l1, &l2] {
        ip(&["netns", "add", n])?;
        c.netns.push(n.clone());
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", &l1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &l2,
    ])?;
    for (n, a) in [(&l1, "198.18.200.1/24"), (&l2, "198.18.200.2/24")] {
        ip(&["-n", n, "addr", "add", a, "dev", "eth0"])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
    }
    // (scope, setup, client netns, server netns, server address)
    let mut pairs: Vec<(&'static str, String, String, String, SocketAddr)> = vec![(
        "same node",
        "limit: bare veth between two namespaces".into(),
        l1.clone(),
        l2.clone(),
        "198.18.200.2:0".parse()?,
    )];
    for (mode, cross) in [
        ("ebpf", "routed"),
        ("routed", "routed"),
        ("ebpf", "vxlan"),
        ("routed", "vxlan"),
        ("ebpf", "ipip"),
        ("routed", "ipip"),
    ] {
        let short = &cross[..1];
        let st = up(&format!("benchdp{mode}{short}"), mode, cross, &pods, &mut c)?;
        let netns = |p: &str| st.plan.pod(p).unwrap().netns.clone();
        let datapath = if mode == "ebpf" { "ebpf" } else { "kernel" };
        if cross != "routed" {
            pairs.push((
                "across nodes",
                format!("strait {datapath} + {cross}"),
                netns("a1"),
                netns("b1"),
                pod_addr(&st, "b1"),
            ));
            continue;
        }
        pairs.push((
            "same node",
            format!("strait {datapath}"),
            netns("a1"),
            netns("a2"),
            pod_addr(&st, "a2"),
        ));
        pairs.push((
            "across nodes",
            format!("strait {datapath}"),
            netns("a1"),
            netns("b1"),
            pod_addr(&st, "b1"),
        ));
        if mode == "ebpf" {
            let (na, nb) = (
                st.plan.node("node-a").unwrap(),
                st.plan.node("node-b").unwrap(),
            );
            pairs.push((
                "across nodes",
                "limit: node to node over the fabric".into(),
                na.netns.clone(),
                nb.netns.clone(),
                SocketAddr::new(nb.ip.into(), PORT),
            ));
        }
    }
    // The same eBPF lab with each agent serving Prometheus metrics, idle
    // (nobody scrapes): it must cost the datapath nothing measurable.
    let yaml = lab_yaml("benchdpmetrics", "ebpf", "routed", &pods).replace(
        "  crossNode: routed\n",
        "  crossNode: routed\n  metricsPort: 9476\n",
    );
    let st = c.lab("benchdpmetrics", &yaml)?;
    let netns = |p: &str| st.plan.pod(p).unwrap().netns.clone();
    pairs.push((
        "same node",
        "strait ebpf, /metrics served (idle)".into(),
        netns("a1"),
        netns("a2"),
        pod_addr(&st, "a2"),
    ));
    pairs.push((
        "across nodes",
        "strait ebpf, /metrics served (idle)".into(),
        netns("a1"),
        netns("b1"),
        pod_addr(&st, "b1"),
    ));
    let st = up("benchdpbridge", "routed", "routed", &[], &mut c)?;
    let br = bridge_pods(&st, &mut c, false)?;
    pairs.push((
        "same node",
        "reference: bridge + host-local".into(),
        br[0].0.clone(),
        br[1].0.clone(),
        br[1].1,
    ));
    pairs.push((
        "across nodes",
        "reference: bridge + host-local, host-gw routes".into(),
        br[0].0.clone(),
        br[2].0.clone(),
        br[2].1,
    ));

    let st = up("benchdpflannel", "routed", "routed", &[], &mut c)?;
    let fl = bridge_pods(&st, &mut c, true)?;
    pairs.push((
        "across nodes",
        "reference: bridge + host-local, flannel-style vxlan".into(),
        fl[0].0.clone(),
        fl[2].0.clone(),
        fl[2].1,
    ));

    let mut results: Vec<Vec<(Rr, f64)>> = pairs.iter().map(|_| vec![]).collect();
    for round in 0..rounds {
        for (i, (scope, setup, cn, sn, addr)) in pairs.iter().enumerate() {
            eprintln!("round {}/{rounds}: {scope}, {setup}", round + 1);
            results[i].push(measure(cn, sn, *addr, secs)?);
        }
    }
    let mut rows = vec![];
    for ((scope, setup, ..), mut runs) in pairs.into_iter().zip(results) {
        // The round with the median p50 stands for the setup.
        runs.sort_by(|a, b| a.0.p50_us.partial_cmp(&b.0.p50_us).unwrap());
        let mid = runs.len() / 2;
        let (rr, gbps) = runs.swap_remove(mid);
        rows.push(Row {
            scope,
            setup,
            rr,
            gbps,
        });
    }

    rows.sort_by_key(|r| r.scope != "same node");
    let mut report = format!(
        "# Pod-to-pod datapath\n\nmachine: {}\nTCP request/response: one connection, {MSG}-byte messages, TCP_NODELAY, {secs} s; stream: one connection, 64 KiB writes, {secs} s. Client and server pinned to one CPU (the path, not cross-CPU wakeups); {rounds} interleaved rounds, the median round shown.\n\n",
        machine()
    );
    report.push_str("| scope | setup | RR p50 | RR p99 | transactions/s | stream |\n|---|---|---|---|---|---|\n");
    for r in &rows {
        report.push_str(&format!(
            "| {} | {} | {:.1} us | {:.1} us | {:.0} | {:.2} Gbit/s |\n",
            r.scope, r.setup, r.rr.p50_us, r.rr.p99_us, r.rr.tps, r.gbps
        ));
    }
    // An exact name first ("strait ebpf" is not "strait ebpf + vxlan").
    let find = |setup: &str, scope: &str| {
        rows.iter()
            .find(|r| r.setup == setup && r.scope == scope)
            .or_else(|| {
                rows.iter()
                    .find(|r| r.setup.starts_with(setup) && r.scope == scope)
            })
            .unwrap()
    };
    let (e, v) = (
        find("strait ebpf", "same node"),
        find("limit: bare veth", "same node"),
    );
    let (ex, n) = (
        find("strait ebpf", "across nodes"),
        find("limit: node to node", "across nodes"),
    );
    report.push_str(&format!(
        "\nebpf same-node p50 is {:+.1}% vs the bare veth; kernel {:+.1}%; bridge {:+.1}%.\nebpf cross-node p50 is {:+.1}% vs node to node; kernel {:+.1}%; bridge {:+.1}%.\n",
        (e.rr.p50_us / v.rr.p50_us - 1.0) * 100.0,
        (find("strait kernel", "same node").rr.p50_us / v.rr.p50_us - 1.0) * 100.0,
        (find("reference", "same node").rr.p50_us / v.rr.p50_us - 1.0) * 100.0,
        (ex.rr.p50_us / n.rr.p50_us - 1.0) * 100.0,
        (find("strait kernel", "across nodes").rr.p50_us / n.rr.p50_us - 1.0) * 100.0,
        (find("reference", "across nodes").rr.p50_us / n.rr.p50_us - 1.0) * 100.0,
    ));
    let fl = find("reference: bridge + host-local, flannel", "across nodes");
    let (re, rk) = (
        find("strait ebpf", "across nodes"),
        find("strait kernel", "across nodes"),
    );
    report.push_str("\nOverlay targets (issue 9): stream vs node to node >= 90%; RR p50 vs routed on the same datapath <= 1.10x; strait ebpf + vxlan p50 vs the flannel-style reference <= 1.00x.\n\n| overlay | stream vs node to node | RR p50 vs routed |\n|---|---|---|\n");
    for (setup, routed) in [
        ("strait ebpf + vxlan", re),
        ("strait kernel + vxlan", rk),
        ("strait ebpf + ipip", re),
        ("strait kernel + ipip", rk),
    ] {
        let o = find(setup, "across nodes");
        report.push_str(&format!(
            "| {setup} | {:.0}% | {:.2}x |\n",
            o.gbps / n.gbps * 100.0,
            o.rr.p50_us / routed.rr.p50_us
        ));
    }
    report.push_str(&format!(
        "\nstrait ebpf + vxlan p50 vs the flannel-style reference: {:.2}x.\n",
        find("strait ebpf + vxlan", "across nodes").rr.p50_us / fl.rr.p50_us,
    ));
    print!("{report}");
    if let Some(f) = out_file {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {}", f.display());
    }
    Ok(())
}
