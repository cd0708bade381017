//! The eBPF datapath in the lab, against seed 000's observations (Terway
//! DataPath V2): which interface sees the request and which the reply.

mod common;
use common::explain::skipped;
use common::*;
use std::time::{Duration, Instant};

fn ebpf_lab(name: &str, legacy: bool) -> String {
    let mut y = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/two-nodes-ebpf.yaml"
    ))
    .unwrap()
    .replace("name: ebpf", &format!("name: {name}"));
    if legacy {
        y = y.replace("  mode: ebpf", "  mode: ebpf\n  noRedirectPeer: true");
    }
    y
}

/// Wait until every pod's host veth carries from-container.
fn wait_programmed(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in ["node-a", "node-b"] {
        loop {
            let d = lab
                .status(n)
                .datapath
                .expect("ebpf mode reports its datapath");
            if d.attached.len() == 2 && d.endpoints == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n}: datapath not programmed: {d:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn seen(r: &strait_lab::hops::HopReport, hop: &str) -> (bool, bool) {
    let s = r.seen(hop);
    (s.request > 0, s.reply > 0)
}

#[test]
fn seed_scenarios_newer_kernel_redirect_peer() {
    if !require_root("seed_scenarios_newer_kernel_redirect_peer") {
        return;
    }
    let lab = Lab::up(&ebpf_lab("t-seed3", false));
    wait_programmed(&lab);
    let d = lab.status("node-a").datapath.unwrap();
    assert!(d.redirect_peer, "{}", d.reason);

    // Scenario 1: node -> pod on the same node goes through the host stack
    // and the pod's host veth, both ways.
    let r = strait_lab::hops::trace(&lab.st, "node-a", "a1").unwrap();
    assert_eq!(r.answered_by, "a1");
    assert_eq!(seen(&r, "a1 host veth"), (true, true), "{}", r.table());

    // Scenario 2/3: pod -> pod on the same node. The request skips the
    // destination's host veth; the reply skips the client's.
    let r = strait_lab::hops::trace(&lab.st, "a1", "a2").unwrap();
    assert_eq!(r.answered_by, "a2");
    assert_eq!(seen(&r, "a1 host veth"), (true, false), "{}", r.table());
    assert_eq!(seen(&r, "a2 host veth"), (false, true), "{}", r.table());
    assert_eq!(seen(&r, "a2 eth0"), (true, true));
    assert_eq!(
        seen(&r, "node-a eth0"),
        (false, false),
        "same-node traffic stays off the uplink"
    );

    // Scenario 4: pod -> pod across nodes: out through the client's host
    // veth and both uplinks, straight into the destination pod.
    let r = strait_lab::hops::trace(&lab.st, "a1", "b1").unwrap();
    assert_eq!(r.answered_by, "b1");
    assert_eq!(seen(&r, "a1 host veth"), (true, false), "{}", r.table());
    assert_eq!(seen(&r, "node-a eth0"), (true, true));
    assert_eq!(seen(&r, "node-b eth0"), (true, true));
    assert_eq!(seen(&r, "b1 host veth"), (false, true), "{}", r.table());
    assert_eq!(seen(&r, "b1 eth0"), (true, true));

    // `lab explain` predicts the same from live state, and captures on
    // every hop confirm it: the node's own traffic takes the host veth;
    // between pods, each direction skips the receiver's host veth.
    let v = common::explain::verified(&lab, "node-a", "a1");
    assert!(skipped(&v.explanation.request).is_empty(), "{}", v.table());
    let v = common::explain::verified(&lab, "a1", "a2");
    let reply = v.explanation.reply.as_ref().unwrap();
    assert_eq!(
        skipped(&v.explanation.request),
        [format!("node-a {}", lab.host_veth("a2"))],
        "{}",
        v.table()
    );
    assert_eq!(
        skipped(reply),
        [format!("node-a {}", lab.host_veth("a1"))],
        "{}",
        v.table()
    );
    let v = common::explain::verified(&lab, "a1", "b1");
    assert_eq!(
        skipped(&v.explanation.request),
        [format!("node-b {}", lab.host_veth("b1"))],
        "{}",
        v.table()
    );

    // The CLI: the diagram as SVG (Graphviz) holds the namespaces, the
    // numbered arrows and a dashed, skipped host veth; a flow to an
    // address nobody routes is explained as dropped (exit 2) and says why.
    let svg = lab.strait(&[
        "lab", "--lab", "t-seed3", "explain", "a1", "b1", "-o", "svg",
    ]);
    for want in [
        "<svg",
        ">a1<",
        ">b1<",
        ">node&#45;a<",
        ">req 1<",
        ">rep 1<",
        "stroke-dasharray",
    ] {
        assert!(svg.contains(want), "{want} not in the SVG:\n{svg}");
    }
    // As a person sees it: Chromium renders it, and there is a drawing.
    let (w, h, inked) = common::explain::render(&svg);
    assert!(
        w > 0 && h > 0 && inked > 2000,
        "{w}x{h}, {inked} inked pixels"
    );
    let out = std::process::Command::new(&lab.bins.strait)
        .args(["lab", "--lab", "t-seed3", "explain", "a1", "198.18.200.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("verdict: dropped: "), "{text}");

    // The counters saw it.
    let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir("t-seed3", "node-a"));
    let m: strait_bpf::maps::MetricsMap = strait_bpf::maps::open(&pins, "strait_metrics").unwrap();
    assert!(
        strait_bpf::maps::metric(&m, strait_bpf::reason::PEER_LOCAL)
            .unwrap()
            .0
            > 0
    );
    assert!(
        strait_bpf::maps::metric(&m, strait_bpf::reason::NEIGH_REMOTE)
            .unwrap()
            .0
            > 0
    );
    assert!(
        strait_bpf::maps::metric(&m, strait_bpf::reason::PEER_FROM_NETDEV)
            .unwrap()
            .0
            > 0
    );
}

#[test]
fn seed_scenarios_older_kernel_host_veth_path() {
    if !require_root("seed_scenarios_older_kernel_host_veth_path") {
        return;
    }
    let lab = Lab::up(&ebpf_lab("t-seed2", true));
    wait_programmed(&lab);
    assert!(!lab.status("node-a").datapath.unwrap().redirect_peer);
    // Without redirect_peer both host veths see both directions (seed: "Pod1
    // calixxx -> Pod2 calixxx").
    let r = strait_lab::hops::trace(&lab.st, "a1", "a2").unwrap();
    assert_eq!(seen(&r, "a1 host veth"), (true, true), "{}", r.table());
    assert_eq!(seen(&r, "a2 host veth"), (true, true), "{}", r.table());
    let r = strait_lab::hops::trace(&lab.st, "a1", "b1").unwrap();
    assert_eq!(seen(&r, "b1 host veth"), (true, true), "{}", r.table());
    // Explained the same way: nothing skipped.
    for (src, dst) in [("a1", "a2"), ("a1", "b1")] {
        let v = common::explain::verified(&lab, src, dst);
        let reply = v.explanation.reply.as_ref().unwrap();
        assert!(
            skipped(&v.explanation.request).is_empty() && skipped(reply).is_empty(),
            "{}",
            v.table()
        );
    }
}

#[test]
fn routed_mode_baseline_every_hop_sees_everything() {
    if !require_root("routed_mode_baseline_every_hop_sees_everything") {
        return;
    }
    let yaml = ebpf_lab("t-seedr", false).replace("mode: ebpf", "mode: routed");
    let lab = Lab::up(&yaml);
    let r = strait_lab::hops::trace(&lab.st, "a1", "a2").unwrap();
    for hop in ["a1 host veth", "a2 host veth"] {
        assert_eq!(seen(&r, hop), (true, true), "{}", r.table());
    }
}

#[test]
fn tcp_stream_survives_agent_restarts_without_loss() {
    if !require_root("tcp_stream_survives_agent_restarts_without_loss") {
        return;
    }
    let lab = Lab::up(&ebpf_lab("t-restartbpf", false));
    wait_programmed(&lab);
    streams_survive_agent_restarts(&lab, "a1", &["b1", "a2"], || wait_programmed(&lab));
    // Still on the fast path after the restarts.
    let r = strait_lab::hops::trace(&lab.st, "a1", "a2").unwrap();
    assert_eq!(seen(&r, "a2 host veth"), (false, true), "{}", r.table());
}

#[test]
fn down_leaves_no_pinned_maps_or_filters() {
    if !require_root("down_leaves_no_pinned_maps_or_filters") {
        return;
    }
    let lab = Lab::up(&ebpf_lab("t-bpfclean", false));
    wait_programmed(&lab);
    let pins = std::path::PathBuf::from(strait_model::lab::lab_bpf_dir("t-bpfclean"));
    assert!(strait_bpf::upgrade::maps_dir(&pins.join("node-a"))
        .join("strait_endpoints")
        .exists());
    let filters = lab.exec(
        "node-a",
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    assert!(filters.contains("from_netdev"), "{filters}");
    drop(lab);
    assert!(!pins.exists(), "pinned maps removed");
    assert!(strait_lab::cmd::netns_with_prefix("strait-t-bpfclean-").is_empty());
}

#[test]
fn spoofed_source_is_dropped_and_shows_in_monitor_and_metrics() {
    if !require_root("spoofed_source_is_dropped_and_shows_in_monitor_and_metrics") {
        return;
    }
    let lab = Lab::up(&ebpf_lab("t-spoof", false));
    wait_programmed(&lab);
    // a1 adds an address that is not its own and sends from it.
    lab.exec(
        "a1",
        &["ip", "addr", "add", "198.19.0.99/32", "dev", "eth0"],
    );
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
        &lab.st.plan.pod("a1").unwrap().netns,
    ))
    .unwrap();
    strait_netlink::in_netns(&ns, || {
        let s = std::net::UdpSocket::bind("198.19.0.99:0").unwrap();
        s.send_to(b"spoof", "198.19.0.2:8080").unwrap();
    })
    .unwrap();
    // Its own address still works.
    assert_eq!(lab.probe("a1", "a2").unwrap(), "a2");
    let strait = |args: &[&str]| {
        let mut full = vec!["lab", "--lab", "t-spoof"];
        full.extend_from_slice(args);
        lab.strait(&full)
    };
    let ev: serde_json::Value = serde_json::from_str(
        strait(&[
            "monitor",
            "node-a",
            "--",
            "--count",
            "1",
            "--seconds",
            "5",
            "-o",
            "json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(ev["kind"], "drop");
    assert_eq!(ev["reason"], "drop-source-spoof");
    assert_eq!(
        (ev["src"].as_str(), ev["dst"].as_str(), ev["dport"].as_u64()),
        (Some("198.19.0.99"), Some("198.19.0.2"), Some(8080))
    );
    assert_eq!(
        ev["iface"],
        strait_model::naming::host_veth_name("lab-t-spoof-default-a1", "eth0")
    );
    let m: serde_json::Value =
        serde_json::from_str(&strait(&["metrics", "node-a", "--", "-o", "json"])).unwrap();
    let spoof = m
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "drop-source-spoof")
        .expect("counted");
    assert_eq!(spoof["packets"], 1);
    assert_eq!(spoof["drop"], true);
}
