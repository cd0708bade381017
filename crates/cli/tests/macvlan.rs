//! Bifrost's macvlan mode (seed 001 "MACVLAN模式") in the lab: two nodes,
//! VLANs 5 and 10 with a gateway namespace routing between them; on
//! node-a pods a5, a5b (VLAN 5) and a10, on node-b b5 and b10. The seed's
//! three walks are asserted by captures: one node and one VLAN stays inside
//! macvlan (nothing on the port's far end or the uplink); one node and two
//! VLANs leaves tagged 5 and comes back tagged 10 through the gateway;
//! across nodes the tags are on the wire. Service traffic goes through the
//! service veth and the host, on both datapaths. DEL, a second DEL and GC
//! take the macvlan, the service veth and the VLAN's port away with the
//! VLAN's last pod.

mod common;
use common::capture::{frames, tagged};
use common::*;

const PODS: [&str; 5] = ["a5", "a5b", "a10", "b5", "b10"];

fn yaml(name: &str, datapath: &str) -> String {
    include_str!("../../../examples/two-nodes-macvlan.yaml")
        .replace(
            "metadata:\n  name: bifrost\n",
            &format!("metadata:\n  name: {name}\n"),
        )
        .replace("datapath: kernel", &format!("datapath: {datapath}"))
}

fn ip(lab: &Lab, p: &str) -> String {
    lab.st
        .pod_ip(lab.st.plan.pod(p).unwrap())
        .unwrap()
        .to_string()
}

fn matrix(lab: &Lab) {
    for src in PODS {
        for dst in PODS.iter().filter(|d| **d != src) {
            assert_eq!(lab.probe(src, dst).unwrap(), *dst, "{src} -> {dst}");
        }
    }
}

/// Who answers `svc/web:80` from `pod` over a few connections, and as whom
/// it saw the client.
/// Forty tries: with two backends picked at random, eight left a 1 in 128
/// chance that one was never seen.
fn service_answers(lab: &Lab, pod: &str) -> Vec<(String, String)> {
    (0..40)
        .map(|_| {
            let out = lab.strait(&["lab", "--lab", lab.name(), "probe", pod, "svc/web:80"]);
            let by = out.split("answered by ").nth(1).expect(&out);
            let who = by.split_whitespace().next().unwrap().to_string();
            let client = out
                .split("saw the client as ")
                .nth(1)
                .and_then(|c| c.split(':').next())
                .unwrap()
                .to_string();
            (who, client)
        })
        .collect()
}

/// A pod reaching itself through the service is answered (hairpinned:
/// the source becomes 169.254.42.1, whose reply the pod sends back by its
/// service veth, not its VLAN's gateway).
fn hairpin(lab: &Lab) {
    let who: std::collections::BTreeSet<String> = service_answers(lab, "a5")
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    assert!(who.contains("a5"), "a5 never answered itself: {who:?}");
}

/// `lab explain --verify` over Bifrost's paths, confirmed by capture with
/// the VLAN tags: same VLAN on one node (bridged by the macvlan), across
/// VLANs (out by the VLAN port tagged 5, back in tagged 10 through the
/// gateway), across nodes, and a service through the service veth.
fn explained(lab: &Lab) {
    for (s, d) in [
        ("a5", "a5b"),
        ("a5", "a10"),
        ("a5", "b5"),
        ("a5b", "svc/web:80"),
        // A hairpin when a5 picks itself.
        ("a5", "svc/web:80"),
        ("a5", "svc/web:80"),
    ] {
        common::explain::verified(lab, s, d);
    }
    let v = common::explain::verified(lab, "a5", "b10");
    let tag = |at: &str, iface: &str, dir: strait_lab::explain::Dir| {
        v.explanation
            .request
            .hops
            .iter()
            .find(|h| h.at == at && h.iface == iface && h.dir == dir)
            .unwrap_or_else(|| panic!("no hop {at} {iface}: {}", v.table()))
            .packet
            .vlan
    };
    use strait_lab::explain::Dir::{In, Out};
    assert_eq!(tag("node-a", "eth0", Out), Some(5), "{}", v.table());
    assert_eq!(tag("gateway", "eth0", In), Some(5), "{}", v.table());
    assert_eq!(tag("gateway", "eth0", Out), Some(10), "{}", v.table());
    assert_eq!(tag("node-b", "eth0", In), Some(10), "{}", v.table());
    assert_eq!(tag("b10", "eth0", In), None, "{}", v.table());
}

fn links(lab: &Lab, node: &str) -> String {
    lab.exec(node, &["ip", "-o", "link"])
}

#[test]
fn macvlan_mode_walks_the_seeds_paths_serves_services_and_cleans_up() {
    if !require_root("macvlan_mode_walks_the_seeds_paths_serves_services_and_cleans_up") {
        return;
    }
    let mut lab = Lab::up(&yaml("t-mv", "kernel"));
    for p in PODS {
        let want = if p.contains("10") {
            "198.18.10."
        } else {
            "198.18.5."
        };
        let a = ip(&lab, p);
        assert!(a.starts_with(want), "{p}: {a}");
        assert!(!a.ends_with(".0") && !a.ends_with(".1"), "{p}: {a}");
    }
    // The pod side as Bifrost wires it: eth0 a macvlan of eth0-5 (bridge
    // mode), the default via the VLAN's gateway, the service CIDR through
    // veth0.
    let eth0 = lab.exec("a5", &["ip", "-d", "link", "show", "eth0"]);
    assert!(
        eth0.contains("macvlan mode bridge") && eth0.contains("eth0@if"),
        "{eth0}"
    );
    let routes = lab.exec("a5", &["ip", "route"]);
    assert!(
        routes.contains("default via 198.18.5.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains(&format!(
            "{} via 169.254.1.1 dev veth0",
            lab.st.plan.service_cidr
        )),
        "{routes}"
    );
    let node_links = links(&lab, "node-a");
    for l in ["eth0-5@trunk5", "trunk5@eth0-5", "eth0-10@", "trunk10@"] {
        assert!(node_links.contains(l), "{l} missing: {node_links}");
    }
    matrix(&lab);
    // `strait status` lists the node's ports and their pods.
    let ports: Vec<(u16, usize)> = lab
        .status("node-a")
        .vlan_ports
        .iter()
        .map(|p| (p.vlan, p.pods))
        .collect();
    assert_eq!(ports, [(5, 2), (10, 1)]);

    let fabric = format!("strait-{}-fabric", lab.name());
    let (a5, a10, b5, b10) = (
        ip(&lab, "a5"),
        ip(&lab, "a10"),
        ip(&lab, "b5"),
        ip(&lab, "b10"),
    );

    // 1. One node, one VLAN: macvlan to macvlan. The parent's taps see the
    // frames (as a VLAN sub-interface's would); its far end, the uplink
    // and the host's service veths see nothing.
    let h = strait_lab::hops::trace(&lab.st, "a5", "a5b").unwrap();
    assert!(h.seen("a5b eth0").request > 0, "{}", h.table());
    for hop in ["node-a trunk5", "node-a eth0"] {
        let s = h.seen(hop);
        assert_eq!((s.request, s.reply), (0, 0), "{hop}: {}", h.table());
    }
    let on_host = frames(&lab.node("node-a").netns, "any", "tcp port 8080", || {
        assert_eq!(lab.probe("a5", "a5b").unwrap(), "a5b")
    });
    // "any" also lists the port's parent (where macvlan hands bridged
    // frames to the taps); nothing else of the node may see them.
    assert!(
        !on_host.is_empty() && on_host.iter().all(|l| l.contains("eth0-5 ")),
        "the node's stack saw same-VLAN traffic: {on_host:#?}"
    );

    // 2. One node, two VLANs: out of the uplink tagged 5 (the source's
    // VLAN), through the gateway, back in tagged 10; the reply the other
    // way round.
    let seen = tagged(&fabric, "n0", || {
        assert_eq!(lab.probe("a5", "a10").unwrap(), "a10")
    });
    for want in [
        (5, format!("{a5} > {a10}")),
        (10, format!("{a5} > {a10}")),
        (10, format!("{a10} > {a5}")),
        (5, format!("{a10} > {a5}")),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    let h = strait_lab::hops::trace(&lab.st, "a5", "a10").unwrap();
    assert_eq!(
        h.seen("gateway eth0").request_vlans,
        [5, 10],
        "{}",
        h.table()
    );
    assert!(h.seen("node-a eth0-10").request > 0, "{}", h.table());

    // 3. Across nodes: one VLAN goes node to node, tagged, without the
    // gateway; two VLANs reach node-b tagged with the destination's.
    let gw = strait_model::underlay::gateway_netns(lab.name());
    let mut at_gw = vec![];
    let seen = tagged(&fabric, "n1", || {
        at_gw = frames(
            &gw,
            "eth0",
            "tcp port 8080 or (vlan and tcp port 8080)",
            || assert_eq!(lab.probe("a5", "b5").unwrap(), "b5"),
        );
    });
    assert!(seen.contains(&(5, format!("{a5} > {b5}"))), "{seen:?}");
    assert!(seen.contains(&(5, format!("{b5} > {a5}"))), "{seen:?}");
    assert!(at_gw.is_empty(), "same VLAN passed the gateway: {at_gw:#?}");
    let mut at_b = vec![];
    let at_a = tagged(&fabric, "n0", || {
        at_b = tagged(&fabric, "n1", || {
            assert_eq!(lab.probe("a5", "b10").unwrap(), "b10")
        });
    });
    assert!(at_a.contains(&(5, format!("{a5} > {b10}"))), "{at_a:?}");
    assert!(at_b.contains(&(10, format!("{a5} > {b10}"))), "{at_b:?}");
    assert!(at_b.contains(&(10, format!("{b10} > {a5}"))), "{at_b:?}");

    // Services: through veth0 and the host's nftables, to a local backend
    // (a5, over its service veth) and a remote one (b10, via the gateway),
    // masqueraded to the node so the reply comes back the same way.
    let answers = service_answers(&lab, "a5b");
    let who: std::collections::BTreeSet<&str> = answers.iter().map(|(w, _)| w.as_str()).collect();
    assert!(who.contains("a5") && who.contains("b10"), "{answers:?}");
    let node_a = lab.node("node-a").ip.to_string();
    assert!(answers.iter().all(|(_, c)| *c == node_a), "{answers:?}");
    hairpin(&lab);
    explained(&lab);

    // CHECK passes on a wired pod and names what is broken.
    let a5_cid = lab.st.container_id(lab.st.plan.pod("a5").unwrap());
    let a5_ns = lab.st.plan.pod("a5").unwrap().netns.clone();
    let check = |lab: &Lab| {
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "strait", "type": "strait-cni",
            "agentSocket": lab.st.socket(lab.node("node-a")), "mtu": 1500,
            "prevResult": {"cniVersion": "1.0.0",
                "ips": [{"address": format!("{a5}/24"), "gateway": "198.18.5.1", "interface": 1}]}});
        cni_raw(
            &lab.bins.cni,
            &lab.node("node-a").netns,
            &as_refs(&cni_env("CHECK", &a5_cid, &a5_ns, "a5")),
            conf.to_string().as_bytes(),
        )
    };
    let ok = check(&lab);
    assert!(ok.ok, "{} {}", ok.json, ok.stderr);

    // An ADD that names no VLAN while there are two: a clear error,
    // nothing made.
    let before = links(&lab, "node-a");
    let ns = lab.pod_netns("fresh");
    let ns = ns.as_str();
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "strait", "type": "strait-cni",
        "agentSocket": lab.st.socket(lab.node("node-a")), "mtu": 1500});
    let add = cni_raw(
        &lab.bins.cni,
        &lab.node("node-a").netns,
        &as_refs(&cni_env("ADD", "fresh1", ns, "fresh")),
        conf.to_string().as_bytes(),
    );
    assert!(
        add.msg().contains("strait.dev/ippool") && add.msg().contains("vlan10"),
        "{}",
        add.json
    );
    assert_eq!(
        links(&lab, "node-a").lines().count(),
        before.lines().count()
    );
    let in_fresh = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "link"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&in_fresh.stdout).lines().count(),
        1,
        "only lo"
    );

    // DEL of VLAN 10's last pod on node-a: its service veth, its macvlan
    // and the VLAN's port go; VLAN 5's stay. A second DEL, with and
    // without prevResult, succeeds and changes nothing.
    let a10_cid = lab.st.container_id(lab.st.plan.pod("a10").unwrap());
    let a10_veth = strait_model::naming::svc_veth_name(&a10_cid, "eth0");
    let a10_ns = lab.st.plan.pod("a10").unwrap().netns.clone();
    let pod_a10 = "apiVersion: v1\nkind: Pod\nmetadata: {name: a10, namespace: default}\n";
    strait_lab::objects::delete(&mut lab.st, &lab.bins, pod_a10).unwrap();
    let l = links(&lab, "node-a");
    for gone in [a10_veth.as_str(), "eth0-10@", "trunk10@"] {
        assert!(!l.contains(gone), "{gone} left after DEL: {l}");
    }
    assert!(l.contains("eth0-5@") && l.contains("trunk5@"), "{l}");
    let ports: Vec<u16> = lab
        .status("node-a")
        .vlan_ports
        .iter()
        .map(|p| p.vlan)
        .collect();
    assert_eq!(ports, [5]);
    for prev in [false, true] {
        let mut conf = conf.clone();
        if prev {
            conf["prevResult"] = serde_json::json!({"cniVersion": "1.0.0",
                "ips": [{"address": "198.18.10.2/24"}]});
        }
        let del = cni_raw(
            &lab.bins.cni,
            &lab.node("node-a").netns,
            &as_refs(&cni_env("DEL", &a10_cid, &a10_ns, "a10")),
            conf.to_string().as_bytes(),
        );
        assert!(del.ok, "second DEL (prevResult {prev}): {}", del.json);
    }
    let ports = lab.exec("node-a", &["ip", "-o", "link"]);
    assert!(!ports.contains("trunk10@"), "{ports}");
    assert_eq!(lab.probe("a5", "b10").unwrap(), "b10");

    // CHECK sees a missing service veth.
    lab.exec("a5", &["ip", "link", "del", "veth0"]);
    let bad = check(&lab);
    assert!(bad.msg().contains("service veth"), "{}", bad.json);

    // GC: the runtime keeps only b10 on node-b; b5, VLAN 5's last pod
    // there, loses its service veth, its address and the port (whose
    // removal takes b5's macvlan along).
    let b10_cid = lab.st.container_id(lab.st.plan.pod("b10").unwrap());
    let b5_veth = strait_model::naming::svc_veth_name(
        &lab.st.container_id(lab.st.plan.pod("b5").unwrap()),
        "eth0",
    );
    let gc_conf = serde_json::json!({"cniVersion": "1.1.0", "name": "strait", "type": "strait-cni",
        "agentSocket": lab.st.socket(lab.node("node-b")), "mtu": 1500,
        "cni.dev/valid-attachments": [{"containerID": b10_cid, "ifname": "eth0"}]});
    let gc = cni_raw(
        &lab.bins.cni,
        &lab.node("node-b").netns,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        gc_conf.to_string().as_bytes(),
    );
    assert!(gc.ok, "{} {}", gc.json, gc.stderr);
    lab.until(
        "node-b",
        &["ip", "-o", "link"],
        "b5's veth and VLAN 5's port gone",
        |o| !o.contains(&b5_veth) && !o.contains("trunk5@") && !o.contains("eth0-5@"),
    );
    let b5_links = lab.exec("b5", &["ip", "-o", "link"]);
    assert!(
        !b5_links.contains("eth0"),
        "b5's macvlan went with its parent: {b5_links}"
    );
    assert_eq!(lab.probe("b10", "a5").unwrap(), "a5");

    // Isolation: with the gateway's forwarding off, a VLAN still reaches
    // itself (across nodes too) but not the other VLAN.
    lab.exec("gw", &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_eq!(lab.probe("a5", "a5b").unwrap(), "a5b");
    assert!(
        lab.probe("a5", "b10").is_err(),
        "cross-VLAN without the gateway"
    );
    lab.exec("gw", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert_eq!(lab.probe("a5", "b10").unwrap(), "b10");

    // A restarted agent keeps the ports it finds (the same links, still
    // programmed) and the pods keep talking.
    let trunk_index = |lab: &Lab| lab.exec("node-a", &["cat", "/sys/class/net/trunk5/ifindex"]);
    let before = trunk_index(&lab);
    lab.restart_agents_with(strait_model::lab::CrossNodeMode::Macvlan);
    assert_eq!(lab.probe("a5", "b10").unwrap(), "b10");
    assert_eq!(lab.probe("b10", "a5b").unwrap(), "a5b");
    assert_eq!(trunk_index(&lab), before, "the port was made again");

    // Another cross-node mode takes the ports and their programs away.
    lab.restart_agents_with(strait_model::lab::CrossNodeMode::Routed);
    lab.until("node-a", &["ip", "-o", "link"], "ports removed", |o| {
        !o.contains("trunk5@") && !o.contains("eth0-5@")
    });
    let filters = lab.exec(
        "node-a",
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    assert!(!filters.contains("vlan_ingress"), "{filters}");
}

/// The same on the eBPF datapath: from-netdev hands VLAN frames to the
/// ports, and service traffic from a service veth is translated by
/// from-container, masqueraded by the host and translated back by
/// to-container.
#[test]
fn macvlan_mode_on_the_ebpf_datapath() {
    if !require_root("macvlan_mode_on_the_ebpf_datapath") {
        return;
    }
    let lab = Lab::up(&yaml("t-mv-ebpf", "ebpf"));
    matrix(&lab);
    let fabric = format!("strait-{}-fabric", lab.name());
    let (a5, b10) = (ip(&lab, "a5"), ip(&lab, "b10"));
    let mut at_b = vec![];
    let at_a = tagged(&fabric, "n0", || {
        at_b = tagged(&fabric, "n1", || {
            assert_eq!(lab.probe("a5", "b10").unwrap(), "b10")
        });
    });
    assert!(at_a.contains(&(5, format!("{a5} > {b10}"))), "{at_a:?}");
    assert!(at_b.contains(&(10, format!("{b10} > {a5}"))), "{at_b:?}");
    let answers = service_answers(&lab, "a5b");
    let who: std::collections::BTreeSet<&str> = answers.iter().map(|(w, _)| w.as_str()).collect();
    assert!(who.contains("a5") && who.contains("b10"), "{answers:?}");
    hairpin(&lab);
    explained(&lab);
    let veth = strait_model::naming::svc_veth_name(
        &lab.st.container_id(lab.st.plan.pod("a5b").unwrap()),
        "eth0",
    );
    let egress = lab.exec("node-a", &["tc", "filter", "show", "dev", &veth, "egress"]);
    assert!(egress.contains("to_container"), "{egress}");
}
