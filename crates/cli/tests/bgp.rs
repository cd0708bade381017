//! Calico's BGP mode in the lab (seed 001): four nodes in an iBGP full mesh
//! of strait's own speaker. Each node learns the other nodes' pod blocks
//! (routes with protocol bgp, via the node, no tunnel) and every pod
//! reaches every pod. Graceful restart: agents killed with SIGKILL and
//! started again under a live TCP stream; the routes stay and the stream
//! never breaks. Then route reflectors: node-a reflects, the mesh goes
//! off, and no mesh session is left behind.

mod common;
use common::*;
use std::time::Duration;

const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];
const PODS: [(&str, &str); 4] = [
    ("a1", "node-a"),
    ("b1", "node-b"),
    ("c1", "node-c"),
    ("d1", "node-d"),
];

/// Every node holds a bgp route to each other node's pod block, via that
/// node's address.
fn mesh_routes_in_place(lab: &Lab) {
    for me in NODES {
        let out = lab.until(
            me,
            &["ip", "route", "show", "proto", "bgp"],
            "three BGP routes",
            |o| o.lines().count() == 3,
        );
        for other in NODES.iter().filter(|n| **n != me) {
            let n = lab.node(other);
            let want = format!("{} via {} dev eth0", n.pod_cidr, n.ip);
            assert!(out.contains(&want), "{me} lacks {want}:\n{out}");
        }
    }
}

#[test]
fn bgp_full_mesh_carries_every_pod_to_every_pod() {
    if !require_root("bgp_full_mesh_carries_every_pod_to_every_pod") {
        return;
    }
    // The README's example, under the test's own name.
    // node-a is marked a route reflector from the start; in the mesh it
    // reflects too (a second path, same next hop, to every client).
    let yaml = include_str!("../../../examples/four-nodes-bgp.yaml")
        .replace("name: bdemo", "name: t-bgp")
        .replace("  - name: node-a\n", RR_NODE)
        .replace(
            "  crossNode: bgp\n",
            "  crossNode: bgp\n  metricsPort: 9476\n",
        );
    let lab = Lab::up(&yaml);
    mesh_routes_in_place(&lab);
    for (src, _) in PODS {
        for (dst, _) in PODS {
            if src != dst {
                assert_eq!(lab.probe(src, dst).unwrap(), dst, "{src} -> {dst}");
            }
        }
    }
    // `lab explain --verify` follows the routes BGP learned, confirmed by
    // capture.
    for (dst, _) in &PODS[1..] {
        common::explain::verified(&lab, PODS[0].0, dst);
    }
    // Native forwarding: no strait route to another node's block (those
    // are routed mode's), no tunnel device.
    let strait_routes = lab.exec("node-a", &["ip", "route", "show", "proto", "0x5a"]);
    assert!(
        !strait_routes.contains(&format!("{} via", lab.node("node-b").pod_cidr)),
        "{strait_routes}"
    );
    // The seed's walk across nodes: out of node-a's eth0 and in at
    // node-b's as the pods' own packet (no outer header), both ways.
    let h = strait_lab::hops::trace(&lab.st, "a1", "b1").unwrap();
    for hop in ["node-a eth0", "node-b eth0", "b1 host veth"] {
        let s = h.seen(hop);
        assert!(s.request > 0 && s.reply > 0, "{hop}:\n{}", h.table());
        assert_eq!(
            (s.request_outer, s.reply_outer),
            (None, None),
            "{}",
            h.table()
        );
    }
    let st = lab.status("node-a");
    assert_eq!(st.cross_node, "bgp");
    let bgp = st
        .reconcilers
        .iter()
        .find(|r| r.name == "bgp")
        .expect("a bgp reconciler");
    assert!(bgp.problems.is_empty(), "{:?}", bgp.problems);
    // strait status: one Established session per other node, each having
    // sent its block and received ours; the reflector sent the other two
    // blocks as well.
    let rr_ip = std::net::IpAddr::V4(lab.node("node-a").ip);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let peers = lab.status("node-b").bgp_peers;
        let settled = peers.len() == 3
            && peers.iter().all(|p| {
                let from_rr = p.address == rr_ip;
                p.state == "Established"
                    && p.received == if from_rr { 3 } else { 1 }
                    && p.advertised == 1
                    && p.last_error.is_none()
            });
        if settled {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{peers:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // /metrics: each session's state as one 1 among six series.
    let m = common::scrape::scrape(&lab, "node-b", 9476);
    for other in ["node-a", "node-c", "node-d"] {
        let peer = lab.node(other).ip.to_string();
        let up = m.find("strait_bgp_session_state", &[("peer", &peer)]);
        assert_eq!(up.len(), 6, "{up:?}");
        for s in up {
            let want = if s.labels["state"] == "Established" {
                1.0
            } else {
                0.0
            };
            assert_eq!(s.value, want, "{s:?}");
        }
        let received = if other == "node-a" { 3.0 } else { 1.0 };
        assert_eq!(
            m.value("strait_bgp_prefixes_received", &[("peer", &peer)]),
            received
        );
    }
    let sock = lab.st.socket(lab.node("node-a"));
    let shown = lab.strait(&["status".as_ref(), "--socket".as_ref(), sock.as_os_str()]);
    assert!(
        shown.contains("BGP PEER") && shown.contains("198.18.0.4") && shown.contains("Established"),
        "{shown}"
    );

    // Graceful restart: a stream from a1 to b1 across the agents' SIGKILL
    // and restart; peers keep the routes, the restarted agent keeps its
    // kernel's until the mesh has re-sent them.
    streams_survive_agent_restarts(&lab, "a1", &["b1"], || {
        for n in ["node-a", "node-b"] {
            lab.until(
                n,
                &["ip", "route", "show", "proto", "bgp"],
                "routes after the restart",
                |o| o.lines().count() == 3,
            );
        }
    });
    mesh_routes_in_place(&lab);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = lab.status("node-a");
        let bgp = st.reconcilers.iter().find(|r| r.name == "bgp").unwrap();
        if bgp.problems.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions back up: {:?}",
            bgp.problems
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.probe("d1", "a1").unwrap(), "a1");

    // An agent down for longer: its peers keep its routes (stale, for the
    // restart time) and traffic to its pods flows meanwhile.
    let c = lab.node("node-c").clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&c)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for n in ["node-a", "node-b", "node-d"] {
        let r = lab.exec(n, &["ip", "route", "show", "proto", "bgp"]);
        assert!(
            r.contains(&format!("{} via {}", c.pod_cidr, c.ip)),
            "{n} dropped node-c's block while its agent was down:\n{r}"
        );
    }
    assert_eq!(lab.probe("d1", "c1").unwrap(), "c1");
    strait_lab::run::start_agent(&lab.st, &lab.bins, &c, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &c, Duration::from_secs(10)).unwrap();
    // Restarted, it keeps its kernel's routes until the mesh re-sent them.
    let r = lab.exec("node-c", &["ip", "route", "show", "proto", "bgp"]);
    assert_eq!(r.lines().count(), 3, "{r}");
    mesh_routes_in_place(&lab);
    assert_eq!(lab.probe("c1", "a1").unwrap(), "a1");

    switch_to_route_reflector(&lab);

    // The seed's walk on one node: a second pod on node-a is reached
    // through the host veths only; node-a's eth0 never sees it.
    let mut st = strait_lab::LabState::load(lab.name()).unwrap();
    strait_lab::objects::apply(
        &mut st,
        &lab.bins,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a2, namespace: default}\nspec: {nodeName: node-a, containers: [{name: echo}]}\n",
    )
    .unwrap();
    let h = strait_lab::hops::trace(&st, "a1", "a2").unwrap();
    assert!(h.seen("a2 host veth").request > 0, "{}", h.table());
    let s = h.seen("node-a eth0");
    assert_eq!((s.request, s.reply), (0, 0), "{}", h.table());
}

const RR_NODE: &str = "  - name: node-a
    labels: {route-reflector: 'true'}
    annotations: {strait.dev/route-reflector-cluster-id: 244.0.0.1}
";

/// Mesh off, every node peers with the reflector: the clients drop their
/// mesh sessions, keep every route (reflected, next hop the originating
/// node) and every pod still reaches every pod.
fn switch_to_route_reflector(lab: &Lab) {
    let yaml = "apiVersion: strait.dev/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: to-reflectors}
spec:
  peerSelector: {matchLabels: {route-reflector: 'true'}}
";
    let mut st = strait_lab::LabState::load(lab.name()).unwrap();
    strait_lab::objects::apply(&mut st, &lab.bins, yaml).unwrap();
    let rr_ip = std::net::IpAddr::V4(lab.node("node-a").ip);
    for client in ["node-b", "node-c", "node-d"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let peers = lab.status(client).bgp_peers;
            let only_rr = peers.len() == 1
                && peers[0].address == rr_ip
                && peers[0].state == "Established"
                && peers[0].received == 3;
            if only_rr {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{client}: {peers:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // No mesh session left in the kernel either: one BGP connection.
        let ss = lab.exec(
            client,
            &[
                "ss",
                "-Htn",
                "state",
                "established",
                "( sport = :179 or dport = :179 )",
            ],
        );
        assert_eq!(ss.lines().count(), 1, "{client}: {ss}");
    }
    let peers = lab.status("node-a").bgp_peers;
    assert_eq!(peers.len(), 3, "{peers:?}");
    assert!(
        peers
            .iter()
            .all(|p| p.state == "Established" && p.advertised == 3),
        "{peers:?}"
    );
    mesh_routes_in_place(lab);
    for (src, _) in PODS {
        for (dst, _) in PODS {
            if src != dst {
                assert_eq!(lab.probe(src, dst).unwrap(), dst, "{src} -> {dst}");
            }
        }
    }
    bgp_verbs_show_the_reflection(lab);
    per_pod_routes_come_and_go(lab);
}

const SOLO_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: s1, namespace: default, annotations: {strait.dev/ippool: solo}}
spec: {nodeName: node-a, containers: [{name: echo, image: strait/echo}]}
";

/// A pod of an IPPool of /32 blocks: its own /32 is advertised (via its
/// node, everywhere), its node's route to it stays a route to the pod (not
/// the block's blackhole), and deleting the pod withdraws the /32.
fn per_pod_routes_come_and_go(lab: &Lab) {
    let pool = "apiVersion: strait.dev/v1alpha1
kind: IPPool
metadata: {name: solo}
spec: {cidr: 198.19.200.0/29, blockSize: 32}
";
    let mut st = strait_lab::LabState::load(lab.name()).unwrap();
    strait_lab::objects::apply(&mut st, &lab.bins, pool).unwrap();
    // The agents read the lab's manifests every 500 ms: the pool first, so
    // the pod's ADD finds it (an ADD that sees no pool at all takes the
    // node's pod CIDR; see the agent's pools.rs).
    std::thread::sleep(Duration::from_millis(1500));
    strait_lab::objects::apply(&mut st, &lab.bins, SOLO_POD).unwrap();
    let st = strait_lab::LabState::load(lab.name()).unwrap();
    let ip = st.pod_ip(st.plan.pod("default/s1").unwrap()).unwrap();
    let a_ip = lab.node("node-a").ip;
    for n in ["node-b", "node-c", "node-d"] {
        let want = format!("{ip} via {a_ip} dev eth0");
        lab.until(n, &["ip", "route", "show", "proto", "bgp"], &want, |o| {
            o.contains(&want)
        });
    }
    // The pod's node keeps routing to the pod across reconciler passes
    // (a /32 block's blackhole used to replace it every resync).
    for _ in 0..15 {
        let r = lab.exec("node-a", &["ip", "route", "show", &format!("{ip}/32")]);
        assert!(
            !r.contains("blackhole") && r.contains("dev "),
            "node-a's route to s1: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // d1 on node-d reaches s1 through the reflected /32.
    let d = strait_lab::run::target_netns(&st.plan, "d1").unwrap();
    let r = strait_lab::probe::probe(
        &strait_lab::run::netns_path(&d),
        std::net::SocketAddr::new(ip, 8080),
        false,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.answered_by, "s1");
    let mut st = strait_lab::LabState::load(lab.name()).unwrap();
    strait_lab::objects::delete(&mut st, &lab.bins, SOLO_POD).unwrap();
    for n in ["node-b", "node-c", "node-d"] {
        let gone = format!("{ip} via");
        lab.until(
            n,
            &["ip", "route", "show", "proto", "bgp"],
            "the removed pod's /32 withdrawn",
            |o| !o.contains(&gone),
        );
    }
}

/// `strait bgp routes -o json` on a client: node-c's block came from the
/// reflector with node-c as originator and next hop, and is installed;
/// `strait lab bgp` prints both tables.
fn bgp_verbs_show_the_reflection(lab: &Lab) {
    let strait = |args: &[&str]| lab.strait(args);
    let sock = lab.st.socket(lab.node("node-b"));
    let sock = sock.to_str().unwrap();
    let json = strait(&["bgp", "routes", "-o", "json", "--socket", sock]);
    let r: strait_model::api::BgpRoutes = serde_json::from_str(&json).unwrap();
    let c = lab.node("node-c");
    let rr = std::net::IpAddr::V4(lab.node("node-a").ip);
    let b_block = lab.node("node-b").pod_cidr;
    assert!(
        r.advertised
            .iter()
            .any(|a| a.prefix == b_block && a.peer == rr && a.reflected_from.is_none()),
        "{json}"
    );
    // Only node-c's block, by prefix: one path, from the reflector.
    let c_block = c.pod_cidr.to_string();
    let json = strait(&["bgp", "routes", &c_block, "-o", "json", "--socket", sock]);
    let r: strait_model::api::BgpRoutes = serde_json::from_str(&json).unwrap();
    assert_eq!((r.learned.len(), r.advertised.len()), (1, 0), "{json}");
    let l = &r.learned[0];
    assert_eq!(
        (
            l.prefix,
            l.peer,
            l.next_hop,
            l.originator,
            l.installed,
            l.stale
        ),
        (
            c.pod_cidr,
            rr,
            std::net::IpAddr::V4(c.ip),
            Some(c.ip),
            true,
            false
        ),
        "{json}"
    );
    let table = strait(&["lab", "--lab", lab.name(), "bgp", "node-b"]);
    for want in [
        "BGP PEER",
        "Established",
        "LEARNED",
        "reflected (originator",
        "ADVERTISED",
        "this node",
    ] {
        assert!(table.contains(want), "{want:?} missing:\n{table}");
    }
}
