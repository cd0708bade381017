//! Cross-node overlays in the lab, as seed 001 walks them. VXLAN
//! (Hybridnet): pods talk over eth0.vxlan20; on the wire between nodes only
//! node addresses and UDP 8472 show, the pod addresses inside; nothing is
//! encapsulated between pods of one node; FDB, neighbour and table-40000
//! entries follow the Node objects and heal when disturbed.

mod common;
use common::explain;
use common::svc::*;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use strait_lab::hops;

fn vxlan_lab(name: &str, datapath: &str) -> Lab {
    svc_lab_spec(name, &format!("mode: {datapath}\n  crossNode: vxlan"))
}

#[test]
fn vxlan_on_the_kernel_datapath() {
    if !require_root("vxlan_on_the_kernel_datapath") {
        return;
    }
    let lab = vxlan_lab("t-vxlan", "routed");
    vxlan_carries_pods_and_services_between_nodes(&lab, false);
    back_to_routed_leaves_no_overlay_state(&lab);
}

/// The agents restart with --cross-node routed: strait's rules and
/// table-40000 routes go, the pods' routes return from 39999 to main, and
/// pods talk over the plain underlay. (The device itself stays; see README.)
fn back_to_routed_leaves_no_overlay_state(lab: &Lab) {
    lab.restart_agents_with(strait_model::lab::CrossNodeMode::Routed);
    let b = lab.node("node-b").ip;
    for node in ["node-a", "node-b"] {
        lab.until(node, &["ip", "rule"], "strait's rules gone", |o| {
            !o.contains("39999") && !o.contains("40000")
        });
        lab.until(
            node,
            &["ip", "route", "show", "table", "39999"],
            "39999 empty",
            |o| o.trim().is_empty(),
        );
        lab.until(
            node,
            &["ip", "route", "show", "table", "40000"],
            "40000 empty",
            |o| o.trim().is_empty(),
        );
    }
    let client_ip = pod_ip(lab, "client");
    lab.until("node-a", &["ip", "route"], "routed mode's routes", |o| {
        o.contains(&format!("{client_ip} dev strt")) && o.contains(&format!("via {b}"))
    });
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
    assert_eq!(lab.status("node-a").cross_node, "routed");
}

/// The fast path over the overlay: from-container sends cross-node packets
/// straight to eth0.vxlan20 (FIB lookup through table 40000, then
/// bpf_redirect_neigh), and from-netdev on eth0.vxlan20 puts decapsulated
/// packets into the pod with bpf_redirect_peer: the destination's host veth
/// sees no request, the source's no reply.
#[test]
fn vxlan_on_the_ebpf_datapath() {
    if !require_root("vxlan_on_the_ebpf_datapath") {
        return;
    }
    vxlan_carries_pods_and_services_between_nodes(&vxlan_lab("t-vxlanbpf", "ebpf"), true);
}

fn vxlan_carries_pods_and_services_between_nodes(lab: &Lab, ebpf: bool) {
    let (a, b) = (lab.node("node-a").ip, lab.node("node-b").ip);

    // The kernel objects the seed names.
    let link = lab.exec("node-a", &["ip", "-d", "link", "show", "eth0.vxlan20"]);
    assert!(
        link.contains("vxlan id 20")
            && link.contains("dstport 8472")
            && link.contains("nolearning"),
        "{link}"
    );
    assert!(link.contains("mtu 1450"), "{link}");
    let rules = lab.exec("node-a", &["ip", "rule"]);
    assert!(rules.contains("lookup 40000"), "{rules}");
    let t = lab.exec("node-a", &["ip", "route", "show", "table", "40000"]);
    assert!(
        t.contains("198.19.1.0/24 via 198.19.1.0 dev eth0.vxlan20") && t.contains("onlink"),
        "{t}"
    );
    let fdb = lab.exec("node-a", &["bridge", "fdb", "show", "dev", "eth0.vxlan20"]);
    assert!(fdb.contains(&format!("00:00:00:00:00:00 dst {b}")), "{fdb}");
    assert!(fdb.contains(&format!("0a:58:c6:12:00:02 dst {b}")), "{fdb}");
    let main = lab.exec("node-a", &["ip", "route"]);
    assert!(
        !main.contains(&format!("via {b}")),
        "no routed-mode route: {main}"
    );
    // The seed's same-node step: this node's pods are in table 39999 (moved
    // out of main, where the CNI plugin put them at ADD), and a rule sends
    // lookups there before table 40000.
    let client_ip = pod_ip(lab, "client");
    let local = lab.until(
        "node-a",
        &["ip", "route", "show", "table", "39999"],
        "pods in table 39999",
        |o| o.contains(&format!("{client_ip} dev strt")),
    );
    lab.until(
        "node-a",
        &["ip", "route"],
        "pod routes moved out of main",
        |o| !o.contains(&format!("{client_ip} dev")),
    );
    eprintln!("table 39999 on node-a:\n{local}");
    let rules = lab.exec("node-a", &["ip", "rule"]);
    let (p39999, p40000) = (rules.find("lookup 39999"), rules.find("lookup 40000"));
    assert!(
        p39999.is_some() && p39999 < p40000,
        "39999 before 40000: {rules}"
    );
    let mtu = lab.exec("client", &["ip", "link", "show", "eth0"]);
    assert!(
        mtu.contains("mtu 1450"),
        "pods get the overlay's MTU: {mtu}"
    );

    // The matrix: TCP and UDP, same node and across.
    for dst in ["web-a", "web-b"] {
        assert_eq!(lab.probe("client", dst).unwrap(), dst);
        let ip: std::net::IpAddr = pod_ip(lab, dst).parse().unwrap();
        let udp = strait_lab::probe::probe(
            &strait_lab::run::netns_path(&lab.st.plan.pod("client").unwrap().netns),
            SocketAddr::new(ip, 8080),
            true,
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(udp.answered_by, dst, "UDP to {dst}");
    }

    // The seed's walk: encapsulated between the nodes, plain elsewhere.
    let r = hops::trace(&lab.st, "client", "web-b").unwrap();
    eprintln!("{}", r.table());
    for n in ["node-a eth0", "node-b eth0"] {
        let s = r.seen(n);
        assert!(s.request > 0 && s.reply > 0, "{n}: {s:?}");
        let outer = |o: Option<strait_lab::hops::Outer>| o.map(|o| (o.encap, o.src, o.dst));
        assert_eq!(outer(s.request_outer), Some(("vxlan", a, b)), "{n}");
        assert_eq!(outer(s.reply_outer), Some(("vxlan", b, a)), "{n}");
    }
    for n in ["node-a eth0.vxlan20", "node-b eth0.vxlan20"] {
        let s = r.seen(n);
        assert!(s.request > 0 && s.reply > 0, "{n}: {s:?}");
        assert_eq!((s.request_outer, s.reply_outer), (None, None), "{n}");
    }
    let (dst_veth, src_veth) = (r.seen("web-b host veth"), r.seen("client host veth"));
    if ebpf {
        assert_eq!(dst_veth.request, 0, "redirect_peer skips web-b's host veth");
        assert_eq!(src_veth.reply, 0, "and the client's on the way back");
        assert!(dst_veth.reply > 0 && src_veth.request > 0);
    } else {
        assert!(
            dst_veth.request > 0 && src_veth.reply > 0,
            "the kernel path"
        );
    }
    // Full-size segments cross the overlay: 8 MiB, every byte checked.
    let (got, intact) = bulk_transfer(lab, "client", "web-b", 8 << 20);
    assert_eq!((got, intact), (8 << 20, true));
    // Path-MTU discovery, answered at eth0.vxlan20.
    path_mtu_is_learned(lab, 1450);

    let same = hops::trace(&lab.st, "client", "web-a").unwrap();
    let up = same.seen("node-a eth0");
    assert_eq!((up.request, up.reply), (0, 0), "nothing leaves the node");

    // `lab explain` from live state, confirmed by capture: the VXLAN
    // device both ways, VXLAN on both uplinks; eBPF skips only the
    // receiving pod's host veth.
    let v = explain::verified(lab, "client", "web-b");
    let e = &v.explanation;
    for leg in [&e.request, e.reply.as_ref().unwrap()] {
        assert_eq!(
            explain::skipped(leg).len(),
            usize::from(ebpf),
            "{}",
            v.table()
        );
        let vx = leg
            .hops
            .iter()
            .filter(|h| h.iface == "eth0.vxlan20")
            .count();
        let wrapped = leg
            .hops
            .iter()
            .filter(|h| h.packet.outer.is_some_and(|o| o.kind == "vxlan"))
            .count();
        assert_eq!((vx, wrapped), (2, 2), "{}", v.table());
    }
    let v = explain::verified(lab, "client", "svc/web:80");
    explain::vip_only_on_client_side(lab, &v, "client", "web");

    // Established cross-node streams ride out agent restarts (the overlay's
    // kernel objects stay; the restarted agent finds them as they are).
    streams_survive_agent_restarts(lab, "client", &["web-b", "web-a"], || {
        for n in ["node-a", "node-b"] {
            lab.until(
                n,
                &["ip", "route", "show", "table", "40000"],
                "table kept",
                |o| o.contains("via"),
            );
        }
    });

    // Services across the overlay (nftables backend on the kernel datapath),
    // and a NodePort whose remote backend is reached through it.
    assert_example_serves_and_changes(lab);
    nodeport_cluster(lab);

    // Drift heals: a deleted FDB entry and table route come back.
    lab.exec(
        "node-a",
        &[
            "bridge",
            "fdb",
            "del",
            "0a:58:c6:12:00:02",
            "dev",
            "eth0.vxlan20",
            "dst",
            &b.to_string(),
        ],
    );
    lab.exec(
        "node-a",
        &["ip", "route", "del", "198.19.1.0/24", "table", "40000"],
    );
    lab.until(
        "node-a",
        &["bridge", "fdb", "show", "dev", "eth0.vxlan20"],
        "fdb healed",
        |o| o.contains("0a:58:c6:12:00:02"),
    );
    lab.until(
        "node-a",
        &["ip", "route", "show", "table", "40000"],
        "route healed",
        |o| o.contains("198.19.1.0/24"),
    );
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");

    // A node that leaves takes its entries with it, and they return with it.
    let all = strait_lab::run::node_objects(&lab.st);
    let without_b: Vec<_> = all
        .iter()
        .filter(|n| n["metadata"]["name"] != "node-b")
        .cloned()
        .collect();
    strait_lab::publish::put(&lab.st, "nodes", &without_b).unwrap();
    lab.until(
        "node-a",
        &["bridge", "fdb", "show", "dev", "eth0.vxlan20"],
        "fdb of node-b gone",
        |o| !o.contains(&b.to_string()),
    );
    lab.until(
        "node-a",
        &["ip", "route", "show", "table", "40000"],
        "route gone",
        |o| o.trim().is_empty(),
    );
    let neigh = lab.exec("node-a", &["ip", "neigh", "show", "dev", "eth0.vxlan20"]);
    assert!(!neigh.contains("198.19.1.0"), "neighbour gone: {neigh}");
    strait_lab::publish::put(&lab.st, "nodes", &all).unwrap();
    lab.until(
        "node-a",
        &["ip", "route", "show", "table", "40000"],
        "route back",
        |o| o.contains("198.19.1.0/24"),
    );
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
}
