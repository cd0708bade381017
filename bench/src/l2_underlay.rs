//! L2 underlay benchmark (issue 12): TCP request/response latency and
//! single-stream throughput for strait's macvlan pods (Bifrost) and VLAN
//! veth pods (Hybridnet's VLAN mode, kernel and ebpf datapaths), beside
//! the reference, Debian's macvlan plugin on the same VLAN port, and the
//! limits: a bare veth between two namespaces (same node) and node to node
//! over the fabric (across nodes). One run; every namespace is made and
//! removed here.
//!
//! Usage: l2-underlay [--seconds S] [--rounds N] [--out FILE]   (root)

use anyhow::bail;
use std::net::SocketAddr;
use std::path::PathBuf;
use strait_bench::labs::Cleanup;
use strait_bench::rr::{measure, Rr, MSG, PORT};
use strait_lab::cmd::ip;
use strait_lab::run::Binaries;

/// A two-node lab with VLANs 5 and 10 in `cross` mode (macvlan or vlan)
/// and `pods` as (name, node, VLAN).
fn lab_yaml(name: &str, datapath: &str, cross: &str, pods: &[(&str, &str, u16)]) -> String {
    let mut s = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  datapath: {datapath}\n  crossNode: {cross}\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 24}}\n  underlay:\n  - {{name: vlan5, vlan: 5, cidr: 198.18.5.0/24, gateway: 198.18.5.1}}\n  - {{name: vlan10, vlan: 10, cidr: 198.18.10.0/24, gateway: 198.18.10.1}}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n"
    );
    for (p, n, v) in pods {
        s.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, annotations: {{strait.dev/ippool: vlan{v}}}}}\nspec: {{nodeName: {n}, containers: [{{name: c}}]}}\n"));
    }
    s
}

fn up(
    name: &str,
    datapath: &str,
    cross: &str,
    pods: &[(&str, &str, u16)],
    c: &mut Cleanup,
) -> anyhow::Result<strait_lab::LabState> {
    c.lab(name, &lab_yaml(name, datapath, cross, pods))
}

fn pod_addr(st: &strait_lab::LabState, pod: &str) -> SocketAddr {
    SocketAddr::new(st.pod_ip(st.plan.pod(pod).unwrap()).unwrap(), PORT)
}

/// Debian's macvlan plugin (bridge mode) on `master` of `node`, with a
/// static address (its gateway is `gw`): the reference a Bifrost user
/// would pick instead.
fn reference_pod(
    st: &strait_lab::LabState,
    node: &str,
    (master, gw): (&str, &str),
    name: &str,
    addr: &str,
    c: &mut Cleanup,
) -> anyhow::Result<(String, SocketAddr)> {
    let n = st.plan.node(node).unwrap();
    let ns = format!("strait-{}-pod-{name}", st.plan.name);
    ip(&["netns", "add", &ns])?;
    c.netns.push(ns.clone());
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "benchmv", "type": "macvlan", "master": master,
        "mode": "bridge", "mtu": 1500,
        "ipam": {"type": "static", "addresses": [{"address": format!("{addr}/24"), "gateway": gw}],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    strait_bench::labs::reference_add("macvlan", &n.netns, &format!("bench-{name}"), &ns, &conf)?;
    Ok((ns, SocketAddr::new(addr.parse()?, PORT)))
}

struct Pair {
    scope: &'static str,
    setup: String,
    client: String,
    server: String,
    addr: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = strait_bench::flag_or("--seconds", 3.0);
    let rounds: usize = strait_bench::flag_or("--rounds", 3);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    if !nix::unistd::geteuid().is_root() {
        bail!("l2-underlay needs root (it creates network namespaces)");
    }
    let bins = Binaries::locate()?;
    let mut c = Cleanup::new("/run/strait-bench-l2", &bins);
    let mut pairs: Vec<Pair> = vec![];
    let pair = |scope, setup: String, client: String, server: String, addr| Pair {
        scope,
        setup,
        client,
        server,
        addr,
    };

    // The limit on one node: a bare veth between two namespaces.
    let (l1, l2) = ("strait-benchl2-limit-1", "strait-benchl2-limit-2");
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
    pairs.push(pair(
        "same node",
        "limit: bare veth between two namespaces".into(),
        l1.into(),
        l2.into(),
        "198.18.200.2:0".parse()?,
    ));

    // macvlan mode: same VLAN on one node, two VLANs on one node (through
    // the gateway), same VLAN across nodes, two VLANs across nodes.
    let mv_pods = [
        ("a5", "node-a", 5),
        ("a5b", "node-a", 5),
        ("a10", "node-a", 10),
        ("b5", "node-b", 5),
        ("b10", "node-b", 10),
    ];
    for datapath in ["kernel", "ebpf"] {
        let st = up(
            &format!("benchl2mv{}", &datapath[..1]),
            datapath,
            "macvlan",
            &mv_pods,
            &mut c,
        )?;
        let ns = |p: &str| st.plan.pod(p).unwrap().netns.clone();
        let setup = format!("strait macvlan, {datapath}");
        for (scope, dst, what) in [
            ("same node", "a5b", "same VLAN"),
            ("same node", "a10", "two VLANs, via the gateway"),
            ("across nodes", "b5", "same VLAN"),
            ("across nodes", "b10", "two VLANs, via the gateway"),
        ] {
            pairs.push(pair(
                scope,
                format!("{setup}: {what}"),
                ns("a5"),
                ns(dst),
                pod_addr(&st, dst),
            ));
        }
        if datapath == "kernel" {
            // The reference on the same VLAN ports, and the fabric limit.
            let port = ("eth0-5", "198.18.5.1");
            let r1 = reference_pod(&st, "node-a", port, "ref1", "198.18.5.201", &mut c)?;
            let r2 = reference_pod(&st, "node-a", port, "ref2", "198.18.5.202", &mut c)?;
            let r3 = reference_pod(&st, "node-b", port, "ref3", "198.18.5.203", &mut c)?;
            let refname = "reference: Debian macvlan plugin on the same port: same VLAN";
            pairs.push(pair("same node", refname.into(), r1.0.clone(), r2.0, r2.1));
            pairs.push(pair("across nodes", refname.into(), r1.0, r3.0, r3.1));
            // The same plugin straight on eth0, untagged: what the VLAN
            // port (a veth hop and the eBPF push/pop) costs.
            let flat = ("eth0", "198.18.0.254");
            let f1 = reference_pod(&st, "node-a", flat, "flat1", "198.18.0.201", &mut c)?;
            let f2 = reference_pod(&st, "node-a", flat, "flat2", "198.18.0.202", &mut c)?;
            let f3 = reference_pod(&st, "node-b", flat, "flat3", "198.18.0.203", &mut c)?;
            let flatname = "reference: Debian macvlan plugin on eth0, no VLAN";
            pairs.push(pair("same node", flatname.into(), f1.0.clone(), f2.0, f2.1));
            pairs.push(pair("across nodes", flatname.into(), f1.0, f3.0, f3.1));
            let (na, nb) = (
                st.plan.node("node-a").unwrap(),
                st.plan.node("node-b").unwrap(),
            );
            pairs.push(pair(
                "across nodes",
                "limit: node to node over the fabric".into(),
                na.netns.clone(),
                nb.netns.clone(),
                SocketAddr::new(nb.ip.into(), PORT),
            ));
        }
    }

    // Hybridnet VLAN mode: veth pods, same VLAN, on one node and across.
    let vl_pods = [
        ("a5", "node-a", 5),
        ("a5b", "node-a", 5),
        ("b5", "node-b", 5),
    ];
    for datapath in ["kernel", "ebpf"] {
        let st = up(
            &format!("benchl2vl{}", &datapath[..1]),
            datapath,
            "vlan",
            &vl_pods,
            &mut c,
        )?;
        let ns = |p: &str| st.plan.pod(p).unwrap().netns.clone();
        for (scope, dst) in [("same node", "a5b"), ("across nodes", "b5")] {
            pairs.push(pair(
                scope,
                format!("strait vlan (veth pods), {datapath}: same VLAN"),
                ns("a5"),
                ns(dst),
                pod_addr(&st, dst),
            ));
        }
    }

    let mut results: Vec<Vec<(Rr, f64)>> = pairs.iter().map(|_| vec![]).collect();
    for round in 0..rounds {
        for (i, p) in pairs.iter().enumerate() {
            eprintln!("round {}/{rounds}: {}, {}", round + 1, p.scope, p.setup);
            results[i].push(measure(&p.client, &p.server, p.addr, secs)?);
        }
    }
    let mut rows: Vec<(&Pair, Rr, f64)> = vec![];
    for (p, mut runs) in pairs.iter().zip(results) {
        runs.sort_by(|a, b| a.0.p50_us.partial_cmp(&b.0.p50_us).unwrap());
        let mid = runs.len() / 2;
        let (rr, gbps) = runs.swap_remove(mid);
        rows.push((p, rr, gbps));
    }
    rows.sort_by_key(|(p, ..)| p.scope != "same node");
    let mut report = format!(
        "# L2 underlays: macvlan (Bifrost) and VLAN (Hybridnet) pods\n\nmachine: {}\nTCP request/response: one connection, {MSG}-byte messages, TCP_NODELAY, {secs} s; stream: one connection, 64 KiB writes, {secs} s. Client and server pinned to one CPU; {rounds} interleaved rounds, the median round shown. 802.1Q tags are pushed and popped in eBPF (no VLAN devices on this kernel); the reference plugin's pods sit on strait's VLAN port, so both pay for it alike.\n\n| scope | setup | RR p50 | RR p99 | transactions/s | stream |\n|---|---|---|---|---|---|\n",
        strait_bench::machine()
    );
    for (p, rr, g) in &rows {
        report.push_str(&format!(
            "| {} | {} | {:.1} us | {:.1} us | {:.0} | {:.2} Gbit/s |\n",
            p.scope, p.setup, rr.p50_us, rr.p99_us, rr.tps, g
        ));
    }
    let find = |prefix: &str, scope: &str| {
        rows.iter()
            .find(|(p, ..)| p.setup.starts_with(prefix) && p.scope == scope)
            .unwrap()
    };
    let limit = find("limit: bare veth", "same node");
    let fabric = find("limit: node to node", "across nodes");
    let mv = find("strait macvlan, kernel: same VLAN", "same node");
    let reff = find("reference: Debian macvlan plugin on the same", "same node");
    let mvx = find("strait macvlan, kernel: same VLAN", "across nodes");
    let refx = find(
        "reference: Debian macvlan plugin on the same",
        "across nodes",
    );
    let flatx = find("reference: Debian macvlan plugin on eth0", "across nodes");
    report.push_str(&format!(
        "\nTargets (issue 12): macvlan same VLAN within 5% of the limit; strait no slower than the reference plugin.\n\n- macvlan same VLAN, one node: p50 {:+.1}% vs the bare veth, stream {:.0}% of it; vs the reference: p50 {:.2}x, stream {:.0}%.\n- macvlan same VLAN, across nodes: p50 {:+.1}% vs node to node, stream {:.0}% of it; vs the reference: p50 {:.2}x, stream {:.0}%; vs the plugin on eth0 without VLANs: p50 {:.2}x, stream {:.0}%.\n",
        (mv.1.p50_us / limit.1.p50_us - 1.0) * 100.0,
        mv.2 / limit.2 * 100.0,
        mv.1.p50_us / reff.1.p50_us,
        mv.2 / reff.2 * 100.0,
        (mvx.1.p50_us / fabric.1.p50_us - 1.0) * 100.0,
        mvx.2 / fabric.2 * 100.0,
        mvx.1.p50_us / refx.1.p50_us,
        mvx.2 / refx.2 * 100.0,
        mvx.1.p50_us / flatx.1.p50_us,
        mvx.2 / flatx.2 * 100.0,
    ));
    print!("{report}");
    if let Some(f) = out_file {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {}", f.display());
    }
    Ok(())
}
