//! Terway ENI-Trunking (seed 002) in the lab, on both datapaths
//! (examples/two-nodes-trunk.yaml): PodNetworkings give pods member ENIs of
//! their node's trunk ENI, each with its own vSwitch and security groups.
//! The seed's ten scenarios are asserted by captures on the pods, host
//! veths, the trunk ENIs (with the 802.1Q tags they carry) and the VPC's
//! ends, and by which connections the members' groups let through:
//! nothing within a node reaches a trunk, so no group applies there;
//! across nodes the members' groups decide.
//!
//! Where strait differs from the seed (which runs kube-proxy in IPVS
//! mode): a pod's connection to a ClusterIP leaves through its own member
//! ENI with its own address (translated at the pod's host veth or in the
//! node's prerouting, never SNATed), so the client's and the backend's
//! member groups decide, not the node's eth0. ExternalIP with policy
//! Cluster: see scenarios 8 and 9 below.

mod common;
use common::hops::{both_ways, host_veths, silent};
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use strait_lab::hops::{trace, trace_service};
use strait_model::cloud::provider::{Eni, EniKind, EniProvider};

fn yaml(name: &str, datapath: &str) -> String {
    include_str!("../../../examples/two-nodes-trunk.yaml")
        .replace(
            "metadata:\n  name: trunk\n",
            &format!("metadata:\n  name: {name}\n"),
        )
        .replace("datapath: ebpf", &format!("datapath: {datapath}"))
}

fn cloud(lab: &Lab) -> Vec<Eni> {
    strait_lab::cloud::LabCloud {
        socket: strait_lab::cloud::socket(&lab.st),
    }
    .list()
    .unwrap()
}

fn ip(lab: &Lab, p: &str) -> IpAddr {
    lab.st.pod_ip(lab.st.plan.pod(p).unwrap()).unwrap()
}

fn member<'a>(enis: &'a [Eni], lab: &Lab, pod: &str) -> &'a Eni {
    let a = ip(lab, pod);
    enis.iter()
        .find(|e| matches!(e.kind, EniKind::Member { .. }) && e.primary_ip == a)
        .unwrap_or_else(|| panic!("no member ENI holds {pod}'s {a}: {enis:#?}"))
}

fn vlan(e: &Eni) -> u16 {
    match &e.kind {
        EniKind::Member { vlan, .. } => *vlan,
        k => panic!("{} is {k:?}", e.id),
    }
}

fn trunk<'a>(enis: &'a [Eni], node: &str) -> &'a Eni {
    enis.iter()
        .find(|e| e.kind == EniKind::Trunk && e.node.as_deref() == Some(node))
        .unwrap_or_else(|| panic!("{node} has no trunk ENI: {enis:#?}"))
}

fn trunk_label(enis: &[Eni], node: &str) -> String {
    let t = trunk(enis, node);
    format!("{node} eth{} (trunk {})", t.device_index.unwrap(), t.id)
}

/// Connect from `src` (pod or node) to `to`; the answering pod and the
/// client address it saw, or None when nothing answers.
fn connect(lab: &Lab, src: &str, to: SocketAddr) -> Option<(String, String)> {
    let ns = strait_lab::run::target_netns(&lab.st.plan, src).unwrap();
    strait_lab::probe::probe(
        &strait_lab::run::netns_path(&ns),
        to,
        false,
        Duration::from_secs(2),
    )
    .ok()
    .map(|r| {
        let from = r.seen_from.unwrap_or_default();
        let host = from.rsplit_once(':').map(|x| x.0.to_string());
        (r.answered_by, host.unwrap_or(from))
    })
}

fn pod_port(lab: &Lab, pod: &str) -> SocketAddr {
    SocketAddr::new(ip(lab, pod), 8080)
}

/// A LoadBalancer service's external address (the lab assigns them).
fn external(lab: &Lab, svc: &str) -> SocketAddr {
    let text = std::fs::read_to_string(lab.st.manifests_dir().join("services.yaml")).unwrap();
    let ip = strait_model::cluster::parse_manifests(&text)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            strait_model::cluster::ClusterObject::Service(s)
                if s.metadata.name.as_deref() == Some(svc) =>
            {
                s.status?.load_balancer?.ingress?.first()?.ip.clone()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("service {svc} has no external address"));
    SocketAddr::new(ip.parse().unwrap(), 80)
}

fn layout(lab: &Lab, enis: &[Eni]) {
    for (pod, node, vsw, sg) in [
        ("nginx", "node-a", "vsw-trunk", "sg-web"),
        ("busybox", "node-a", "vsw-trunk", "sg-web"),
        ("nginx-locked", "node-a", "vsw-trunk", "sg-locked"),
        ("centos", "node-b", "vsw-client", "sg-client"),
        ("intruder", "node-b", "vsw-trunk", "sg-web"),
    ] {
        let m = member(enis, lab, pod);
        assert_eq!(
            (m.vswitch.as_str(), m.security_groups.clone()),
            (vsw, vec![sg.to_string()]),
            "{pod}"
        );
        let EniKind::Member { trunk: t, .. } = &m.kind else {
            unreachable!()
        };
        assert_eq!(t, &trunk(enis, node).id, "{pod} rides its node's trunk");
    }
    // No PodNetworking selects plain: a shared ENI's secondary address.
    let plain = ip(lab, "plain");
    assert!(
        enis.iter()
            .any(|e| e.kind == EniKind::Secondary && e.secondary_ips.contains(&plain)),
        "{plain}"
    );
    // Terway's rules send a member pod out of the trunk.
    let t = trunk(enis, "node-a");
    let dev = format!("eth{}", t.device_index.unwrap());
    let idx: u32 = lab
        .exec("node-a", &["cat", &format!("/sys/class/net/{dev}/ifindex")])
        .trim()
        .parse()
        .unwrap();
    let rules = lab.exec("node-a", &["ip", "rule"]);
    let nginx = ip(lab, "nginx");
    assert!(
        rules.contains(&format!("2048:\tfrom {nginx} lookup {}", 1000 + idx)),
        "{rules}"
    );
    assert!(rules.contains(&format!("512:\tfrom all to {nginx} lookup main")));
}

fn scenarios(lab: &Lab, ebpf: bool) {
    let enis = cloud(lab);
    layout(lab, &enis);
    let (ta, tb) = (trunk_label(&enis, "node-a"), trunk_label(&enis, "node-b"));

    // 1. The node reaches its pod through the host veth; the trunk sees
    // nothing, so nginx-locked's enterprise group (it admits only
    // vsw-client) does not apply: the node's address gets through.
    let h = trace(&lab.st, "node-a", "nginx-locked").unwrap();
    silent(&h, &ta);
    both_ways(&h, "nginx-locked host veth");

    // 2. Same node, same group: host veth to host veth, never the trunk;
    // a ClusterIP is seen only on the client's side.
    let h = trace(&lab.st, "busybox", "nginx").unwrap();
    silent(&h, &ta);
    host_veths(&h, "busybox", "nginx", ebpf);
    let r = trace_service(&lab.st, "busybox", "nginx", 80).unwrap();
    assert_eq!(r.answered_by, "nginx", "{}", r.table());
    assert_eq!(r.at(&ta), (0, 0), "{}", r.table());
    for (hop, vip, _) in &r.hops {
        if !hop.label.starts_with("busybox ") {
            assert_eq!(*vip, 0, "service IP at {}: {}", hop.label, r.table());
        }
    }

    // 3. Same node, different groups: sg-locked would refuse busybox
    // (sg-web, vsw-trunk), but nothing crosses the member ENIs.
    let h = trace(&lab.st, "busybox", "nginx-locked").unwrap();
    silent(&h, &ta);
    host_veths(&h, "busybox", "nginx-locked", ebpf);

    // 4. Across nodes, same group: out of node-b's trunk tagged with
    // intruder's member VLAN, through the VPC, into node-a's trunk tagged
    // with nginx's, both ways; the members talk freely.
    let h = trace(&lab.st, "intruder", "nginx").unwrap();
    for (hop, m) in [(&tb, "intruder"), (&ta, "nginx")] {
        let s = h.seen(hop);
        let v = vlan(member(&enis, lab, m));
        assert!(s.request > 0 && s.reply > 0, "{hop}: {}", h.table());
        assert_eq!(
            (s.request_vlans.clone(), s.reply_vlans.clone()),
            (vec![v], vec![v]),
            "{hop}: {}",
            h.table()
        );
    }
    for t in [trunk(&enis, "node-a"), trunk(&enis, "node-b")] {
        both_ways(&h, &format!("vpc {}", t.id));
    }
    host_veths(&h, "intruder", "nginx", ebpf);

    // 5. Across nodes, different groups: the rules decide. sg-locked admits
    // vsw-client (centos) and refuses sg-web's intruder.
    let h = trace(&lab.st, "centos", "nginx-locked").unwrap();
    let v = vlan(member(&enis, lab, "nginx-locked"));
    assert_eq!(h.seen(&ta).request_vlans, vec![v], "{}", h.table());
    let c = ip(lab, "centos").to_string();
    assert_eq!(
        connect(lab, "centos", pod_port(lab, "nginx-locked")),
        Some(("nginx-locked".into(), c.clone()))
    );
    assert_eq!(
        connect(lab, "intruder", pod_port(lab, "nginx-locked")),
        None,
        "sg-locked refuses sg-web"
    );

    // 6, 7. A ClusterIP across nodes: translated at the client's host veth,
    // then the same path as the pod's address, so the same groups decide.
    let r = trace_service(&lab.st, "centos", "nginx-locked", 80).unwrap();
    assert_eq!(r.answered_by, "nginx-locked", "{}", r.table());
    for hop in [&ta, &tb] {
        let (vip, pods) = r.at(hop);
        assert!(vip == 0 && pods > 0, "{hop}: {}", r.table());
    }
    let vip = SocketAddr::new(
        lab.st
            .plan
            .service("nginx-locked")
            .unwrap()
            .cluster_ip
            .into(),
        80,
    );
    assert_eq!(
        connect(lab, "intruder", vip),
        None,
        "the backend's member group decides"
    );
    // ExternalIP, externalTrafficPolicy Local, from the backend's node:
    // the client keeps its address.
    let local = external(lab, "locked-local");
    let b = ip(lab, "busybox").to_string();
    assert_eq!(
        connect(lab, "busybox", local),
        Some(("nginx-locked".into(), b))
    );

    // 8, 9. ExternalIP, Cluster, across nodes. The eBPF datapath
    // translates at the client's host veth and keeps its address, so the
    // client's member and the backend's member decide: centos admitted,
    // intruder refused. The kernel datapath masquerades Cluster external
    // traffic to the node, as kube-proxy does (the seed's scenarios 8 and 9:
    // the node's ENI and the backend's member decide): sg-locked sees the
    // node's trunk address, which it does not admit. Within the backend's
    // node nothing reaches a member ENI.
    let cluster = external(lab, "locked-cluster");
    if ebpf {
        assert_eq!(
            connect(lab, "centos", cluster),
            Some(("nginx-locked".into(), c))
        );
        assert_eq!(
            connect(lab, "intruder", cluster),
            None,
            "refused by sg-locked"
        );
    } else {
        assert_eq!(
            connect(lab, "centos", cluster),
            None,
            "the node's address, refused by sg-locked"
        );
    }
    assert_eq!(
        connect(lab, "busybox", cluster).map(|x| x.0),
        Some("nginx-locked".into())
    );

    // `lab explain --verify`, from live state (the member VLANs in the
    // tagger's map, the VPC's groups over its records), confirmed by
    // capture with the tags: 1-4, 6/7, and the refusals of 5 and 8/9
    // explained as drops in the VPC.
    for (s, d) in [
        ("node-a", "nginx-locked"),
        ("busybox", "nginx"),
        ("busybox", "nginx-locked"),
        ("centos", "nginx-locked"),
        ("centos", "svc/nginx-locked:80"),
    ] {
        common::explain::verified(lab, s, d);
    }
    let v = common::explain::verified(lab, "intruder", "nginx");
    let tags: Vec<(String, Option<u16>)> = v
        .explanation
        .request
        .hops
        .iter()
        .filter(|h| h.packet.vlan.is_some())
        .map(|h| (format!("{} {}", h.at, h.iface), h.packet.vlan))
        .collect();
    let (vi, vn) = (
        vlan(member(&enis, lab, "intruder")),
        vlan(member(&enis, lab, "nginx")),
    );
    assert!(
        tags.first().is_some_and(|t| t.1 == Some(vi))
            && tags.last().is_some_and(|t| t.1 == Some(vn)),
        "{tags:?}\n{}",
        v.table()
    );
    let refused = |s: &str, d: &str| {
        let v = strait_lab::explain::verify(&lab.st, s, d).unwrap();
        assert!(v.contradictions().is_empty(), "{}", v.table());
        match &v.explanation.request.verdict {
            strait_lab::explain::Verdict::Dropped(why) => {
                assert!(why.starts_with("vpc: security group"), "{}", v.table())
            }
            other => panic!("{other:?}\n{}", v.table()),
        }
    };
    refused("intruder", "nginx-locked");
    let cluster_ip = external(lab, "locked-cluster").to_string();
    if ebpf {
        common::explain::verified(lab, "centos", &cluster_ip);
    } else {
        refused("centos", &cluster_ip);
    }

    // 10. From outside through the SLB, whose backend is nginx's member
    // ENI: translated in the VPC, then tagged down node-a's trunk (the
    // eBPF datapath's from-netdev sends it past the host veth).
    let r = strait_lab::hops::eni::trace_slb(&lab.st, "lb-web", 80).unwrap();
    assert_eq!(r.answered_by, "nginx", "{}", r.table());
    let (vip, pods) = r.at(&ta);
    assert!(vip == 0 && pods > 0, "{}", r.table());
    let (veth, pod) = (r.at("nginx host veth").1, r.at("nginx eth0").1);
    if ebpf {
        assert!(
            veth > 0 && veth < pod,
            "request skipped the host veth: {}",
            r.table()
        );
    } else {
        assert_eq!(veth, pod, "{}", r.table());
    }

    // `strait mapping`: the members and their PodENIs, consistent.
    let sock = lab.st.socket(lab.node("node-a"));
    let out = lab.strait(&["mapping", "--socket", sock.to_str().unwrap()]);
    assert!(out.contains("consistent"), "{out}");
    for p in [
        "default/nginx ",
        "default/nginx-locked",
        "default/busybox",
        "default/plain",
    ] {
        assert!(out.contains(p), "{p}: {out}");
    }
    assert!(
        out.contains("PodENIs") && out.contains("sg-locked") && out.contains("Fixed"),
        "{out}"
    );
}

#[test]
fn seed_002_scenarios_on_the_ebpf_datapath() {
    if !require_root("seed_002_scenarios_on_the_ebpf_datapath") {
        return;
    }
    let lab = Lab::up(&yaml("t-trunk-e", "ebpf"));
    scenarios(&lab, true);
}

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: nginx-locked, namespace: default, labels: {app: nginx-locked}}
spec: {nodeName: node-a, containers: [{name: echo, image: strait/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: nginx, namespace: default, labels: {app: nginx}}
spec: {nodeName: node-a, containers: [{name: echo, image: strait/echo}]}
";

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The kernel datapath, then the members' life cycle: Elastic members go
/// with their pods, a Fixed one comes back to its pod, a member no record
/// names (an agent that died between the cloud call and its record) is
/// deleted, and an agent killed and restarted keeps every pod's member.
#[test]
fn seed_002_scenarios_on_the_kernel_datapath_then_member_life_cycle() {
    if !require_root("seed_002_scenarios_on_the_kernel_datapath_then_member_life_cycle") {
        return;
    }
    let lab = Lab::up(&yaml("t-trunk-k", "kernel"));
    scenarios(&lab, false);
    let before = cloud(&lab);
    let locked = member(&before, &lab, "nginx-locked").clone();
    let nginx = member(&before, &lab, "nginx").clone();

    // Delete both pods: the Elastic member goes, the Fixed one stays.
    let mut st = strait_lab::LabState::load(lab.name()).unwrap();
    strait_lab::objects::delete(&mut st, &lab.bins, PODS).unwrap();
    wait_for("nginx's Elastic member to be deleted", 30, || {
        !cloud(&lab).iter().any(|e| e.id == nginx.id)
    });
    assert!(cloud(&lab).iter().any(|e| e.id == locked.id), "Fixed: kept");
    // Recreated with the same names: nginx-locked gets its member and
    // address back, nginx a new member.
    strait_lab::objects::apply(&mut st, &lab.bins, PODS).unwrap();
    let lab_ip = |p: &str| st.pod_ip(st.plan.pod(p).unwrap()).unwrap();
    assert_eq!(lab_ip("nginx-locked"), locked.primary_ip);
    let after = cloud(&lab);
    let again = after
        .iter()
        .find(|e| e.primary_ip == locked.primary_ip)
        .unwrap();
    assert_eq!(again.id, locked.id, "the same member ENI");
    assert!(after
        .iter()
        .any(|e| matches!(e.kind, EniKind::Member { .. })
            && e.primary_ip == lab_ip("nginx")
            && e.id != nginx.id));
    assert_eq!(
        connect(&lab, "centos", SocketAddr::new(locked.primary_ip, 8080)).map(|x| x.0),
        Some("nginx-locked".into())
    );

    // A member on node-a's trunk that no PodENI names goes.
    let c = strait_lab::cloud::LabCloud {
        socket: strait_lab::cloud::socket(&lab.st),
    };
    let orphan = c
        .create_member(&trunk(&after, "node-a").id, "vsw-trunk", &["sg-web".into()])
        .unwrap();
    wait_for("the orphan member to be deleted", 40, || {
        !cloud(&lab).iter().any(|e| e.id == orphan.id)
    });

    // The agent killed and restarted: its records come back from its
    // state; no member is deleted and traffic flows.
    let members = |enis: &[Eni]| {
        let mut v: Vec<String> = enis
            .iter()
            .filter(|e| matches!(e.kind, EniKind::Member { .. }))
            .map(|e| e.id.clone())
            .collect();
        v.sort();
        v
    };
    let held = members(&cloud(&lab));
    let n = lab.node("node-a").clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    strait_lab::run::start_agent(&lab.st, &lab.bins, &n, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &n, Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(members(&cloud(&lab)), held, "no member lost or leaked");
    assert_eq!(
        connect(&lab, "intruder", SocketAddr::new(lab_ip("nginx"), 8080)).map(|x| x.0),
        Some("nginx".into())
    );
    let sock = lab.st.socket(lab.node("node-a"));
    let out = lab.strait(&["mapping", "--socket", sock.to_str().unwrap()]);
    assert!(out.contains("consistent"), "{out}");
}
