//! Hybridnet's VLAN mode (seed 001 "VLAN模式") in the lab: two nodes, two
//! VLAN subnets (20 and 30) with a gateway namespace routing between them,
//! a pod of each VLAN on each node. The tags are asserted on the wire
//! (tcpdump on the fabric's port of each node): same VLAN across nodes
//! goes node to node tagged 20 both ways, never through the gateway; across
//! VLANs the request leaves tagged 20 to the gateway and reaches the other
//! node tagged 30 (and the reply the reverse); on one node table 39999
//! keeps it off the uplink. With the gateway's forwarding off, only the
//! VLAN's own traffic still flows (isolation).

mod common;
use common::capture::{frames, tagged};
use common::*;

const PODS: [&str; 4] = ["a20", "a30", "b20", "b30"];

/// `lab explain --verify` in vlan mode, confirmed by capture with the
/// tags: a VLAN's pods across nodes go tagged with their VLAN; between
/// VLANs the gateway takes the frame in with one tag and out with the
/// other.
fn explained(lab: &Lab) {
    common::explain::verified(lab, "a20", "b20");
    let v = common::explain::verified(lab, "a20", "b30");
    let tags: Vec<(String, u16)> = v
        .explanation
        .request
        .hops
        .iter()
        .filter_map(|h| Some((format!("{} {}", h.at, h.iface), h.packet.vlan?)))
        .collect();
    assert!(
        tags.iter().any(|(h, t)| h == "gateway eth0" && *t == 20)
            && tags.iter().any(|(h, t)| h == "gateway eth0" && *t == 30),
        "{tags:?}\n{}",
        v.table()
    );
}

#[test]
fn vlan_mode_tags_on_the_wire_routes_between_vlans_at_the_gateway_and_isolates() {
    if !require_root("vlan_mode_tags_on_the_wire_routes_between_vlans_at_the_gateway_and_isolates")
    {
        return;
    }
    let yaml = include_str!("../../../examples/two-nodes-vlan.yaml")
        .replace("metadata:\n  name: vlan\n", "metadata:\n  name: t-vlan\n");
    let lab = Lab::up(&yaml);
    let ip = |p: &str| {
        lab.st
            .pod_ip(lab.st.plan.pod(p).unwrap())
            .unwrap()
            .to_string()
    };
    // Addresses of their VLAN's subnet, never its network or gateway.
    for p in PODS {
        let want = if p.ends_with("20") {
            "198.18.20."
        } else {
            "198.18.30."
        };
        let a = ip(p);
        assert!(a.starts_with(want), "{p}: {a}");
        assert!(!a.ends_with(".0") && !a.ends_with(".1"), "{p}: {a}");
    }
    for src in PODS {
        for dst in PODS.iter().filter(|d| **d != src) {
            assert_eq!(lab.probe(src, dst).unwrap(), *dst, "{src} -> {dst}");
        }
    }
    explained(&lab);
    let fabric = format!("strait-{}-fabric", lab.name());
    let (a20, b20, b30) = (ip("a20"), ip("b20"), ip("b30"));

    // Same VLAN across nodes: tagged 20 both ways on both nodes' ports,
    // and the gateway never sees it.
    let gw = strait_model::underlay::gateway_netns(lab.name());
    let mut at_gw = vec![];
    let seen = tagged(&fabric, "n0", || {
        at_gw = frames(
            &gw,
            "eth0",
            "tcp port 8080 or (vlan and tcp port 8080)",
            || assert_eq!(lab.probe("a20", "b20").unwrap(), "b20"),
        );
    });
    assert!(seen.contains(&(20, format!("{a20} > {b20}"))), "{seen:?}");
    assert!(seen.contains(&(20, format!("{b20} > {a20}"))), "{seen:?}");
    assert!(seen.iter().all(|(v, _)| *v == 20), "{seen:?}");
    assert!(
        at_gw.is_empty(),
        "same-VLAN traffic must not pass the gateway: {at_gw:#?}"
    );

    // Across VLANs: leaves node-a tagged 20 (its source's VLAN), reaches
    // node-b tagged 30 (the gateway tags by destination); replies the
    // other way round.
    let mut at_b = vec![];
    let at_a = tagged(&fabric, "n0", || {
        at_b = tagged(&fabric, "n1", || {
            assert_eq!(lab.probe("a20", "b30").unwrap(), "b30")
        });
    });
    assert!(at_a.contains(&(20, format!("{a20} > {b30}"))), "{at_a:?}");
    assert!(at_a.contains(&(20, format!("{b30} > {a20}"))), "{at_a:?}");
    assert!(at_b.contains(&(30, format!("{a20} > {b30}"))), "{at_b:?}");
    assert!(at_b.contains(&(30, format!("{b30} > {a20}"))), "{at_b:?}");

    // `lab hops` shows the same from the capture's aux data: the tag at
    // each node's uplink, both tags at the gateway's port, and no gateway
    // on a same-VLAN path.
    let h = strait_lab::hops::trace(&lab.st, "a20", "b30").unwrap();
    assert_eq!(h.seen("node-a eth0").request_vlans, [20], "{}", h.table());
    assert_eq!(h.seen("node-b eth0").request_vlans, [30], "{}", h.table());
    assert_eq!(h.seen("node-b eth0").reply_vlans, [30], "{}", h.table());
    assert_eq!(
        h.seen("gateway eth0").request_vlans,
        [20, 30],
        "{}",
        h.table()
    );
    assert!(h.table().contains("vlan 20,30"), "{}", h.table());
    let h = strait_lab::hops::trace(&lab.st, "a20", "b20").unwrap();
    assert!(h.hops.iter().all(|(hop, _)| hop.label != "gateway eth0"));
    assert_eq!(h.seen("node-b eth0").request_vlans, [20], "{}", h.table());

    // One node, two VLANs: table 39999, never the uplink.
    let h = strait_lab::hops::trace(&lab.st, "a20", "a30").unwrap();
    let s = h.seen("node-a eth0");
    assert_eq!((s.request, s.reply), (0, 0), "{}", h.table());

    // The node side as the seed shows it.
    let rules = lab.exec("node-a", &["ip", "rule"]);
    assert!(rules.contains("1998:\tfrom all lookup 39999"), "{rules}");
    assert!(
        rules.contains("from 198.18.20.0/24 lookup 10001"),
        "{rules}"
    );
    assert!(
        rules.contains("from 198.18.30.0/24 lookup 10002"),
        "{rules}"
    );
    let t = lab.exec("node-a", &["ip", "route", "show", "table", "10001"]);
    assert!(t.contains("default via 198.18.20.1 dev eth0"), "{t}");
    assert!(t.contains("198.18.20.0/24 dev eth0"), "{t}");

    // Isolation: without the gateway's forwarding, a VLAN still reaches
    // itself (across nodes) but not the other VLAN.
    lab.exec("gw", &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_eq!(lab.probe("a20", "b20").unwrap(), "b20");
    assert!(
        lab.probe("a20", "b30").is_err(),
        "cross-VLAN without the gateway"
    );
    lab.exec("gw", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert_eq!(lab.probe("a20", "b30").unwrap(), "b30");

    // Another cross-node mode takes everything of vlan mode away: rules,
    // tables, the tc programs on the uplink and the pinned map.
    lab.restart_agents_with(strait_model::lab::CrossNodeMode::Routed);
    lab.until("node-a", &["ip", "rule"], "rules gone", |o| {
        !o.contains("proto 90")
    });
    for table in ["10001", "10002"] {
        lab.until(
            "node-a",
            &["ip", "route", "show", "table", table],
            "underlay tables emptied",
            |o| o.trim().is_empty(),
        );
    }
    let filters = lab.exec("node-a", &["tc", "filter", "show", "dev", "eth0", "egress"]);
    assert!(!filters.contains("vlan_egress"), "{filters}");
    let pin = std::path::PathBuf::from(strait_model::lab::bpf_dir(lab.name(), "node-a"));
    assert!(
        !strait_bpf::upgrade::maps_dir(&pin)
            .join("strait_vlan_subnets")
            .exists(),
        "the VLAN map's pin is gone"
    );
}

/// The same VLANs on the eBPF datapath: from-netdev untags and to-netdev
/// tags, so the fast path carries VLAN pods (redirect_neigh out of the
/// uplink, tagged; redirect_peer in, past the host veth).
#[test]
fn vlan_mode_on_the_ebpf_datapath_tags_the_fast_path() {
    if !require_root("vlan_mode_on_the_ebpf_datapath_tags_the_fast_path") {
        return;
    }
    let yaml = include_str!("../../../examples/two-nodes-vlan.yaml")
        .replace(
            "metadata:\n  name: vlan\n",
            "metadata:\n  name: t-vlan-ebpf\n",
        )
        .replace("datapath: kernel", "datapath: ebpf");
    let lab = Lab::up(&yaml);
    for src in PODS {
        for dst in PODS.iter().filter(|d| **d != src) {
            assert_eq!(lab.probe(src, dst).unwrap(), *dst, "{src} -> {dst}");
        }
    }
    explained(&lab);
    let ip = |p: &str| {
        lab.st
            .pod_ip(lab.st.plan.pod(p).unwrap())
            .unwrap()
            .to_string()
    };
    let fabric = format!("strait-{}-fabric", lab.name());
    let mut at_b = vec![];
    let at_a = tagged(&fabric, "n0", || {
        at_b = tagged(&fabric, "n1", || {
            assert_eq!(lab.probe("a20", "b30").unwrap(), "b30")
        });
    });
    let (a20, b30) = (ip("a20"), ip("b30"));
    assert!(at_a.contains(&(20, format!("{a20} > {b30}"))), "{at_a:?}");
    assert!(at_b.contains(&(30, format!("{a20} > {b30}"))), "{at_b:?}");
    // Same VLAN across nodes: the fast path, tagged on the wire, past the
    // destination's host veth.
    let h = strait_lab::hops::trace(&lab.st, "a20", "b20").unwrap();
    assert!(h.seen("node-a eth0").request > 0, "{}", h.table());
    assert_eq!(h.seen("b20 host veth").request, 0, "{}", h.table());
}
