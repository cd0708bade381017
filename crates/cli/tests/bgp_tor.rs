//! Hybridnet's BGP mode (seed 001) on racks: two racks, each an L3 subnet
//! behind a top-of-rack router namespace running a real routing daemon
//! (BIRD 2 in r1, FRR in r2), three nodes (two in r1, one in r2). Nodes
//! announce their pod blocks to their rack's router over eBGP and send pod
//! traffic to it through table 10001, as the seed walks it: a packet
//! between pods of two nodes passes the router (in one rack too); between
//! pods of one node it never leaves the node (table 39999). The routers
//! keep a restarting node's routes (graceful restart) so streams survive
//! agent restarts.

mod common;
use common::*;
use std::time::Duration;
use strait_lab::racks::router_cli;

const PODS: [&str; 4] = ["a1", "a2", "b1", "c1"];

/// Until `f` holds for a router CLI command's output (10 s at most).
fn router_until(lab: &Lab, rack: &str, cmd: &str, what: &str, f: impl Fn(&str) -> bool) {
    let r = lab.st.plan.racks.iter().find(|r| r.name == rack).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = router_cli(&lab.st, r, cmd).unwrap_or_default();
        if f(&out) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn established(out: &str, name: &str) -> bool {
    out.lines()
        .any(|l| l.starts_with(name) && l.contains("Established"))
}

/// Every session up: BIRD's nodes and spine peer in r1, FRR's in r2 (a
/// prefix count instead of a state means Established).
fn sessions_up(lab: &Lab) {
    router_until(lab, "r1", "show protocols", "BIRD sessions", |o| {
        ["node_node_a ", "node_node_b ", "tor_r2 "]
            .iter()
            .all(|p| established(o, p))
    });
    router_until(lab, "r2", "show bgp summary", "FRR sessions", |o| {
        ["198.18.2.2 ", "198.18.0.1 "].iter().all(|p| {
            o.lines().any(|l| {
                l.starts_with(p)
                    && l.split_whitespace()
                        .nth(9)
                        .is_some_and(|pfx| pfx.parse::<u32>().is_ok())
            })
        })
    });
}

#[test]
fn bgp_tor_racks_route_pods_through_their_top_of_rack_routers() {
    if !require_root("bgp_tor_racks_route_pods_through_their_top_of_rack_routers") {
        return;
    }
    let yaml = include_str!("../../../examples/racks-bgp-tor.yaml")
        .replace("metadata:\n  name: tor\n", "metadata:\n  name: t-tor\n");
    let lab = Lab::up(&yaml);
    let (a, b, c) = (
        lab.node("node-a").clone(),
        lab.node("node-b").clone(),
        lab.node("node-c").clone(),
    );
    sessions_up(&lab);

    // The routers learned every node's block and forward by it: BIRD's
    // kernel in r1, FRR's (through zebra) in r2.
    let r1 = lab.until(
        "tor-r1",
        &["ip", "route", "show", "proto", "bird"],
        "r1's kernel routes",
        |o| o.lines().count() >= 3,
    );
    for want in [
        format!("{} via {} dev br0", a.pod_cidr, a.ip),
        format!("{} via {} dev br0", b.pod_cidr, b.ip),
        format!("{} via 198.18.0.2 dev uplink", c.pod_cidr),
    ] {
        assert!(r1.contains(&want), "r1 lacks {want}:\n{r1}");
    }
    let r2 = lab.until(
        "tor-r2",
        &["ip", "route", "show", "proto", "bgp"],
        "r2's kernel routes",
        |o| o.lines().count() >= 3,
    );
    for want in [
        format!("{} nhid", c.pod_cidr),
        format!("{} nhid", a.pod_cidr),
    ] {
        assert!(r2.contains(&want), "r2 lacks {want}:\n{r2}");
    }
    assert!(
        r2.contains(&format!("via {} dev br0", c.ip)) && r2.contains("via 198.18.0.1 dev uplink"),
        "{r2}"
    );

    // Each node: one session, with its rack's router (no mesh); the seed's
    // rules and tables; nothing learned into main.
    for (n, gw) in [(&a, "198.18.1.1"), (&b, "198.18.1.1"), (&c, "198.18.2.1")] {
        let st = lab.status(&n.name);
        let peers: Vec<String> = st
            .bgp_peers
            .iter()
            .map(|p| format!("{} {} {}", p.address, p.asn, p.state))
            .collect();
        let asn = if gw == "198.18.1.1" { 65101 } else { 65102 };
        assert_eq!(peers, [format!("{gw} {asn} Established")], "{}", n.name);
        let rules = lab.exec(&n.name, &["ip", "rule"]);
        assert!(rules.contains("1998:\tfrom all lookup 39999"), "{rules}");
        assert!(
            rules.contains(&format!("1999:\tfrom {} lookup 10001", n.pod_cidr)),
            "{rules}"
        );
        let t = lab.exec(&n.name, &["ip", "route", "show", "table", "10001"]);
        assert_eq!(t.trim(), format!("default via {gw} dev eth0 proto 90"));
        let learned = lab.exec(&n.name, &["ip", "route", "show", "proto", "bgp"]);
        assert!(learned.is_empty(), "{}: {learned}", n.name);
    }
    let local = lab.exec("node-a", &["ip", "route", "show", "table", "39999"]);
    assert_eq!(local.lines().count(), 2, "a1 and a2 in 39999:\n{local}");

    for src in PODS {
        for dst in PODS.iter().filter(|d| **d != src) {
            assert_eq!(lab.probe(src, dst).unwrap(), *dst, "{src} -> {dst}");
        }
    }

    // The seed's walks. One rack: through the router (its own side of the
    // bridge sees the request go in and out), not bridged node to node.
    let h = strait_lab::hops::trace(&lab.st, "a1", "b1").unwrap();
    assert!(h.seen("tor-r1 router").request >= 2, "{}", h.table());
    assert!(h.seen("node-b eth0").request > 0, "{}", h.table());
    // Two racks: both routers, across the spine.
    let h = strait_lab::hops::trace(&lab.st, "a1", "c1").unwrap();
    for hop in ["tor-r1 uplink", "tor-r2 uplink", "tor-r2 node-c port"] {
        let s = h.seen(hop);
        assert!(s.request > 0 && s.reply > 0, "{hop}:\n{}", h.table());
    }
    // One node: table 39999, the node's uplink never sees it.
    let h = strait_lab::hops::trace(&lab.st, "a1", "a2").unwrap();
    let s = h.seen("node-a eth0");
    assert_eq!((s.request, s.reply), (0, 0), "{}", h.table());

    // Graceful restart with real routers: node-a's and node-b's agents
    // killed and restarted under streams from c1; the routers keep their
    // routes meanwhile, and the sessions come back.
    streams_survive_agent_restarts(&lab, "c1", &["a1", "b1"], || sessions_up(&lab));
    let st = lab.status("node-a");
    assert!(
        st.bgp_peers.iter().all(|p| p.state == "Established"),
        "{:?}",
        st.bgp_peers
    );

    // r2's sessions carry MD5 with the password from the Secret: a wrong
    // one (the Secret changed) is refused by FRR's kernel, the right one
    // brings the session back.
    let secret = |pw: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: tor-r2, namespace: strait-secrets}}\nstringData: {{password: {pw}}}\n"
        )
    };
    let node_c_session = |want_up: bool, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let p = lab.status("node-c").bgp_peers;
            if (p.len() == 1 && p[0].state == "Established") == want_up {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {p:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut st = strait_lab::LabState::load(lab.name()).unwrap();
    strait_lab::objects::apply(&mut st, &lab.bins, &secret("wrong")).unwrap();
    node_c_session(false, "session down with the wrong password");
    std::thread::sleep(Duration::from_secs(3));
    node_c_session(false, "still refused");
    strait_lab::objects::apply(&mut st, &lab.bins, &secret("s3cret-r2")).unwrap();
    node_c_session(true, "back with the right password");
    // r2 re-learns node-c's block and passes it on to r1.
    lab.until(
        "tor-r1",
        &["ip", "route", "show", "proto", "bird"],
        "node-c's block back at r1",
        |o| o.contains(&format!("{} via 198.18.0.2", c.pod_cidr)),
    );
    assert_eq!(lab.probe("a1", "c1").unwrap(), "c1");
    through_the_racks(&lab);

    // Another cross-node mode takes the rules and table 10001 away.
    lab.restart_agents_with(strait_model::lab::CrossNodeMode::Routed);
    lab.until("node-a", &["ip", "rule"], "rules gone", |o| {
        !o.contains("proto 90")
    });
    lab.until(
        "node-a",
        &["ip", "route", "show", "table", "10001"],
        "table 10001 emptied",
        |o| o.trim().is_empty(),
    );
}

/// The eBPF datapath on racks, with the cluster in a real kube-apiserver:
/// the agents reach it through their racks' routers, read the rack
/// BGPPeers and r2's password Secret (stringData stored as data, read
/// through the secrets namespace's Role). The FIB lookup in
/// from-container honours the from-block rule, so the fast path sends pod
/// traffic to the rack's router (bpf_redirect_neigh) and delivers arrivals
/// with bpf_redirect_peer: the host veths see only what the stack handles.
#[test]
fn bgp_tor_racks_on_the_ebpf_datapath() {
    if !require_root("bgp_tor_racks_on_the_ebpf_datapath") {
        return;
    }
    let yaml = include_str!("../../../examples/racks-bgp-tor.yaml")
        .replace(
            "metadata:\n  name: tor\n",
            "metadata:\n  name: t-tor-ebpf\n",
        )
        .replace(
            "datapath: kernel",
            "datapath: ebpf\n  controlPlane: kube-apiserver",
        );
    let lab = Lab::up(&yaml);
    sessions_up(&lab);
    for src in PODS {
        for dst in PODS.iter().filter(|d| **d != src) {
            assert_eq!(lab.probe(src, dst).unwrap(), *dst, "{src} -> {dst}");
        }
    }
    let h = strait_lab::hops::trace(&lab.st, "a1", "c1").unwrap();
    for hop in ["tor-r1 router", "tor-r1 uplink", "tor-r2 router"] {
        assert!(h.seen(hop).request > 0, "{hop}:\n{}", h.table());
    }
    // Redirected past the host veths: the request skips c1's, the reply
    // a1's.
    assert_eq!(h.seen("c1 host veth").request, 0, "{}", h.table());
    assert_eq!(h.seen("a1 host veth").reply, 0, "{}", h.table());
    let h = strait_lab::hops::trace(&lab.st, "a1", "b1").unwrap();
    assert!(h.seen("tor-r1 router").request >= 2, "{}", h.table());
    through_the_racks(&lab);
}

/// `lab explain --verify` across the racks, confirmed by capture: a1 to c1
/// is routed by both top-of-rack routers (the routes BGP gave them), a1 to
/// b1 by r1 alone.
fn through_the_racks(lab: &Lab) {
    let racks = |src: &str, dst: &str| -> Vec<String> {
        let v = common::explain::verified(lab, src, dst);
        let mut at: Vec<String> = v
            .explanation
            .request
            .hops
            .iter()
            .filter(|h| h.at.starts_with("tor-"))
            .map(|h| h.at.clone())
            .collect();
        at.dedup();
        at
    };
    assert_eq!(racks("a1", "c1"), ["tor-r1", "tor-r2"]);
    assert_eq!(racks("a1", "b1"), ["tor-r1"]);
}
