//! Services in the eBPF datapath, with real packets: seed 000 scenarios 5
//! and 7, backend choice, affinity, draining, UDP, rejection, bad objects.

mod common;
use common::svc::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn seed_scenarios_5_and_7_service_ip_only_on_the_client_side() {
    if !require_root("seed_scenarios_5_and_7_service_ip_only_on_the_client_side") {
        return;
    }
    let lab = svc_lab("t-svcseed");
    let mut seen_same = false;
    let mut seen_other = false;
    for _ in 0..40 {
        let r = strait_lab::hops::trace_service(&lab.st, "client", "web", 80).unwrap();
        let (backend, other) = match r.answered_by.as_str() {
            "web-a" => ("web-a", "web-b"),
            "web-b" => ("web-b", "web-a"),
            who => panic!("answered by {who:?}, not a backend of the service"),
        };
        // The VIP is seen on the client's side only.
        assert!(r.at("client host veth").0 > 0, "{}", r.table());
        for hop in [
            "node-a eth0",
            "node-b eth0",
            "web-a host veth",
            "web-b host veth",
            "web-a eth0",
            "web-b eth0",
        ] {
            assert_eq!(
                r.at(hop).0,
                0,
                "the service IP must not appear at {hop}\n{}",
                r.table()
            );
        }
        // The backend's host veth sees pod IPs only (its reply), and the
        // other backend sees nothing.
        assert!(r.at(&format!("{backend} host veth")).1 > 0, "{}", r.table());
        assert_eq!(r.at(&format!("{other} host veth")), (0, 0), "{}", r.table());
        if backend == "web-a" {
            // Scenario 5: backend on the client's node; nothing on the uplinks.
            assert_eq!(r.at("node-a eth0"), (0, 0), "{}", r.table());
            seen_same = true;
        } else {
            // Scenario 7: backend on the other node; both uplinks carry pod IPs.
            assert!(
                r.at("node-a eth0").1 > 0 && r.at("node-b eth0").1 > 0,
                "{}",
                r.table()
            );
            seen_other = true;
        }
        if seen_same && seen_other {
            break;
        }
    }
    assert!(seen_same && seen_other, "40 connections never reached both backends (same node: {seen_same}, other node: {seen_other})");
    // `lab explain` says the same from live state, and captures agree.
    let v = common::explain::verified(&lab, "client", "svc/web:80");
    common::explain::vip_only_on_client_side(&lab, &v, "client", "web");
}

both_backends!(even_split, even_split_ebpf, even_split_nftables);

fn even_split(lab: &Lab) {
    let addr = SocketAddr::new(vip(lab, "web").into(), 80);
    let n = 2000;
    let counts = in_client(lab, move || {
        let mut c = std::collections::HashMap::<String, usize>::new();
        for _ in 0..n {
            *c.entry(ask(addr).unwrap()).or_default() += 1;
        }
        c
    });
    assert_eq!(counts.len(), 2, "{counts:?}");
    for (b, k) in &counts {
        let share = *k as f64 / (n as f64 / 2.0);
        assert!(
            (0.9..=1.1).contains(&share),
            "{b} got {k} of {n}: outside ±10% of an even split ({counts:?})"
        );
    }
    // UDP: the answer comes back from the VIP (the probe checks the source).
    let ns = strait_lab::run::netns_path(&lab.st.plan.pod("client").unwrap().netns);
    let r = strait_lab::probe::probe(
        &ns,
        SocketAddr::new(vip(lab, "web").into(), 53),
        true,
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(r.answered_by == "web-a" || r.answered_by == "web-b");
    // TCP: the connected socket's peer is the VIP.
    let peer = in_client(lab, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap()
            .peer_addr()
            .unwrap()
    });
    assert_eq!(peer, addr);
}

both_backends!(refused, refused_ebpf, refused_nftables);

fn refused(lab: &Lab) {
    let addr = SocketAddr::new(vip(lab, "empty").into(), 80);
    let t0 = Instant::now();
    let err = in_client(lab, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_err()
    });
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "refused at once, not after a timeout ({:?})",
        t0.elapsed()
    );
    assert_eq!(err.raw_os_error(), Some(libc_ehostunreach()), "{err}");
}

both_backends!(affinity, affinity_ebpf, affinity_nftables);

fn affinity(lab: &Lab) {
    let (a, b) = (pod_ip(lab, "web-a"), pod_ip(lab, "web-b"));
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: default}}\nspec: {{clusterIP: 198.18.64.50, sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}, ports: [{{name: http, port: 80}}]}}\n{}",
        slice("sticky-1", "sticky", &[(&a, READY), (&b, READY)])
    );
    apply(lab, "sticky.yaml", &yaml, |s| {
        s.services
            .iter()
            .any(|e| e.name == "sticky" && e.backends.len() == 2)
    });
    let addr: SocketAddr = "198.18.64.50:80".parse().unwrap();
    let answers = in_client(lab, move || {
        (0..40)
            .map(|_| ask(addr).unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    });
    assert_eq!(
        answers.len(),
        1,
        "all 40 connections went to one backend: {answers:?}"
    );
}

both_backends!(drain, drain_ebpf, drain_nftables);

fn drain(lab: &Lab) {
    let (a, b) = (pod_ip(lab, "web-a"), pod_ip(lab, "web-b"));
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: drain, namespace: default}\nspec: {clusterIP: 198.18.64.60, ports: [{name: http, port: 80}]}\n";
    apply(
        lab,
        "drain.yaml",
        &format!(
            "{svc}{}",
            slice("drain-1", "drain", &[(&a, READY), (&b, READY)])
        ),
        |s| {
            s.services
                .iter()
                .any(|e| e.name == "drain" && e.backends.len() == 2)
        },
    );
    let addr: SocketAddr = "198.18.64.60:80".parse().unwrap();
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
        &lab.st.plan.pod("client").unwrap().netns,
    ))
    .unwrap();
    // A long-lived connection that landed on web-a.
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<String>();
    let conn = std::thread::spawn(move || {
        strait_netlink::in_netns(&ns, move || {
            // Random picks: web-a comes up within 60 tries unless something
            // is wrong (the chance of missing it by luck is 2^-60).
            let mut tries = 0;
            let mut s = loop {
                tries += 1;
                assert!(tries <= 60, "60 connections never reached web-a");
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                let mut line = String::new();
                (&s).write_all(b"hi\n").unwrap();
                BufReader::new(&s).read_line(&mut line).unwrap();
                if line.split_whitespace().next() == Some("web-a") {
                    break s;
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            back_tx.send("connected".into()).unwrap();
            while let Ok(cmd) = rx.recv() {
                if cmd == "ask" {
                    s.write_all(b"hi\n").unwrap();
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line).unwrap();
                    back_tx
                        .send(line.split_whitespace().next().unwrap_or("").to_string())
                        .unwrap();
                }
            }
        })
        .unwrap()
    });
    assert_eq!(back_rx.recv().unwrap(), "connected");
    // web-a starts terminating.
    apply(
        lab,
        "drain.yaml",
        &format!(
            "{svc}{}",
            slice("drain-1", "drain", &[(&a, TERMINATING), (&b, READY)])
        ),
        |s| {
            s.services
                .iter()
                .any(|e| e.name == "drain" && e.active().count() == 1)
        },
    );
    tx.send("ask").unwrap();
    assert_eq!(
        back_rx.recv().unwrap(),
        "web-a",
        "the existing connection keeps its backend"
    );
    let fresh = in_client(lab, move || {
        (0..50)
            .map(|_| ask(addr).unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    });
    assert_eq!(
        fresh,
        ["web-b".to_string()].into(),
        "no new connection goes to the terminating backend"
    );
    // web-a is removed altogether: its connection still finishes.
    apply(
        lab,
        "drain.yaml",
        &format!("{svc}{}", slice("drain-1", "drain", &[(&b, READY)])),
        |s| {
            s.services
                .iter()
                .any(|e| e.name == "drain" && e.backends.len() == 1)
        },
    );
    tx.send("ask").unwrap();
    assert_eq!(back_rx.recv().unwrap(), "web-a");
    drop(tx);
    conn.join().unwrap();
}

both_backends!(bad_objects, bad_objects_ebpf, bad_objects_nftables);

fn bad_objects(lab: &Lab) {
    let before = lab.status("node-a").services;
    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: default}\nspec: {clusterIP: 198.18.64.70, ports: [{name: http, port: 70000}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: manual, namespace: default}\nspec: {clusterIP: 198.18.64.71, ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: manual-1, namespace: default, labels: {kubernetes.io/service-name: manual}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [not-an-address]}]\n";
    apply(lab, "bad.yaml", bad, |s| s.service_problems.len() >= 2);
    let st = lab.status("node-a");
    assert!(
        st.service_problems
            .iter()
            .any(|p| p.contains("broken") && p.contains("70000")),
        "{:?}",
        st.service_problems
    );
    assert!(
        st.service_problems
            .iter()
            .any(|p| p.contains("manual-1") && p.contains("not-an-address")),
        "{:?}",
        st.service_problems
    );
    assert!(st.services.iter().all(|e| e.name != "broken"));
    // The good services are untouched and still answer.
    let kept: Vec<_> = st
        .services
        .iter()
        .filter(|e| e.name != "manual")
        .cloned()
        .collect();
    assert_eq!(kept, before);
    let addr = SocketAddr::new(vip(lab, "web").into(), 80);
    assert!(in_client(lab, move || ask(addr)).is_ok());
    let log = std::fs::read_to_string(lab.st.log_dir().join("agent-node-a.log")).unwrap();
    assert!(
        log.contains("service object rejected") && log.contains("70000"),
        "a clear log line"
    );
}

fn lb_ip(lab: &Lab, svc: &str) -> Ipv4Addr {
    let st = lab.status("node-b");
    st.services
        .iter()
        .find(|e| e.name == svc && e.external && e.frontend.port == 80)
        .map(|e| e.frontend.ip)
        .unwrap()
}

#[test]
fn seed_scenario_8_loadbalancer_local_policy_from_outside() {
    if !require_root("seed_scenario_8_loadbalancer_local_policy_from_outside") {
        return;
    }
    let lab = svc_lab("t-svclb");
    let lb = SocketAddr::new(lb_ip(&lab, "edge").into(), 80);
    let ext_ip = strait_lab::run::external_ip(&lab.st.plan).to_string();
    // healthCheckNodePort: healthy only where the backend runs.
    let hc = lab
        .status("node-b")
        .services
        .iter()
        .any(|e| e.name == "edge");
    assert!(hc);
    let ext_ns = strait_lab::run::netns_path(&strait_model::lab::external_netns(lab.name()));
    let hc_port = health_check_port(&lab, "edge");
    let node_ip = |n: &str| lab.node(n).ip;
    assert!(
        strait_lab::run::health_ok(&ext_ns, SocketAddr::new(node_ip("node-b").into(), hc_port)),
        "node-b has a local backend"
    );
    assert!(
        !strait_lab::run::health_ok(&ext_ns, SocketAddr::new(node_ip("node-a").into(), hc_port)),
        "node-a has none: 503"
    );
    // Local policy: the client's source address reaches the pod intact.
    let r = external_probe(&lab, lb);
    assert_eq!(r.answered_by, "edge");
    assert!(
        r.seen_from
            .as_deref()
            .unwrap()
            .starts_with(&format!("{ext_ip}:")),
        "source preserved: {:?}",
        r.seen_from
    );
    // Seed 000 scenario 8 (newer kernel): from the node's uplink straight
    // into the pod, skipping its host veth on the way in.
    let h = strait_lab::hops::trace_external(&lab.st, lb, &["edge"]).unwrap();
    assert_eq!(h.answered_by, "edge");
    assert!(h.at("node-b eth0").0 > 0, "{}", h.table());
    assert_eq!(h.at("node-a eth0"), (0, 0), "{}", h.table());
    let (vip, pods) = h.at("edge host veth");
    assert_eq!(
        vip,
        0,
        "the LB address never reaches the pod's host veth\n{}",
        h.table()
    );
    assert!(
        pods > 0,
        "only the pod's reply (pod address) crosses its host veth\n{}",
        h.table()
    );
    assert!(h.at("edge eth0").1 > 0, "{}", h.table());
    // Explained from live state and confirmed by capture: from_netdev
    // translates and redirects into the pod, past its host veth.
    let v = common::explain::verified(&lab, "external", &lb.to_string());
    let edge_veth = lab.host_veth("edge");
    assert_eq!(
        common::explain::skipped(&v.explanation.request),
        [format!("node-b {edge_veth}")],
        "{}",
        v.table()
    );
}

both_backends!(
    nodeport_cluster,
    nodeport_cluster_ebpf,
    nodeport_cluster_nftables
);

both_backends!(lb_local, lb_local_ebpf, lb_local_nftables);

/// externalTrafficPolicy Local from outside: only the node with a local
/// backend is healthy, and the pod sees the real client.
fn lb_local(lab: &Lab) {
    let lb = SocketAddr::new(lb_ip(lab, "edge").into(), 80);
    let hc_port = health_check_port(lab, "edge");
    let ext_ns = strait_lab::run::netns_path(&strait_model::lab::external_netns(lab.name()));
    assert!(strait_lab::run::health_ok(
        &ext_ns,
        SocketAddr::new(lab.node("node-b").ip.into(), hc_port)
    ));
    assert!(!strait_lab::run::health_ok(
        &ext_ns,
        SocketAddr::new(lab.node("node-a").ip.into(), hc_port)
    ));
    let ext_ip = strait_lab::run::external_ip(&lab.st.plan).to_string();
    for _ in 0..5 {
        let r = external_probe(lab, lb);
        assert_eq!(r.answered_by, "edge");
        assert!(
            r.seen_from
                .as_deref()
                .unwrap()
                .starts_with(&format!("{ext_ip}:")),
            "source preserved: {:?}",
            r.seen_from
        );
    }
}

/// `strait lab probe` from a node: the CLI joins the node's cgroup, as the
/// node's own processes are.
fn node_probe(lab: &Lab, node: &str, dst: &str, udp: bool) -> String {
    let mut args = vec!["lab", "--lab", lab.name(), "probe", node, dst];
    if udp {
        args.push("--udp");
    }
    let out = std::process::Command::new(&lab.bins.strait)
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{node} -> {dst}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

both_backends!(
    node_to_service,
    node_to_service_ebpf,
    node_to_service_nftables
);

/// Node processes reach services (seed 000 scenario 1), TCP and UDP, with
/// replies from the service address.
fn node_to_service(lab: &Lab) {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let out = node_probe(lab, "node-a", "svc/web:80", false);
        seen.insert(if out.contains("answered by web-a") {
            "web-a"
        } else {
            "web-b"
        });
    }
    assert_eq!(seen.len(), 2, "both backends serve the node");
    node_probe(lab, "node-b", "svc/web:53", true); // the probe checks the reply's source is the VIP
}

#[test]
fn node_sockets_are_balanced_without_nat_and_survive_agent_restarts() {
    if !require_root("node_sockets_are_balanced_without_nat_and_survive_agent_restarts") {
        return;
    }
    let lab = svc_lab("t-socklb");
    let metric = |reason: u8| {
        let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(lab.name(), "node-a"));
        let m: strait_bpf::maps::MetricsMap =
            strait_bpf::maps::open(&pins, "strait_metrics").unwrap();
        strait_bpf::maps::metric(&m, reason).unwrap().0
    };
    let dnat_before = metric(strait_bpf::reason::SVC_DNAT);
    node_probe(&lab, "node-a", "svc/web:80", false);
    assert!(
        metric(strait_bpf::reason::SOCK_LB) > 0,
        "translated at connect()"
    );
    assert_eq!(
        metric(strait_bpf::reason::SVC_DNAT),
        dnat_before,
        "no packet was NATed"
    );
    // The links are pinned: with the agent gone, node sockets still work.
    let n = lab.node("node-a").clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n)).unwrap();
    strait_lab::cmd::stop(&[pid], Duration::from_secs(2));
    node_probe(&lab, "node-a", "svc/web:80", false);
    strait_lab::run::start_agent(&lab.st, &lab.bins, &n, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &n, Duration::from_secs(10)).unwrap();
    node_probe(&lab, "node-a", "svc/web:80", false);
}

/// The healthCheckNodePort the lab (as the API server would) assigned.
fn health_check_port(lab: &Lab, svc: &str) -> u16 {
    let written = std::fs::read_to_string(lab.st.manifests_dir().join("services.yaml")).unwrap();
    strait_model::cluster::parse_manifests(&written)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            strait_model::cluster::ClusterObject::Service(s)
                if s.metadata.name.as_deref() == Some(svc) =>
            {
                s.spec?.health_check_node_port
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{svc} has no healthCheckNodePort")) as u16
}

/// `strait explain` run on node-a itself (in its namespace, with its
/// agent's socket), as an operator runs it on a real node: node-a's hops
/// are read here, node-b's through node-b's agent at its explain address.
/// It must say exactly what the lab's explain says; with node-b's agent
/// unreachable it stops where the flow leaves node-a and says why; the
/// network listener answers reads only.
#[test]
fn explain_on_a_node_reads_the_next_node_through_its_agent() {
    if !require_root("explain_on_a_node_reads_the_next_node_through_its_agent") {
        return;
    }
    let lab = svc_lab_spec("t-svcnode", "mode: ebpf\n  explainPort: 9477");
    let node_ns = lab.node("node-a").netns.clone();
    let socket = lab.st.socket(lab.node("node-a")).display().to_string();
    let on_node = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &node_ns])
            .arg(&lab.bins.strait)
            .args(["explain", "--socket", &socket])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let web_b = lab.st.pod_ip(lab.st.plan.pod("web-b").unwrap()).unwrap();
    let backend = web_b.to_string();
    for (dst, extra) in [
        ("web-b", vec![]),
        ("svc/web:80", vec!["--backend", backend.as_str()]),
        ("node-b", vec![]),
    ] {
        let lab_view = strait_lab::explain::explain(
            &lab.st,
            "client",
            dst,
            dst.starts_with("svc/").then_some(web_b),
        )
        .unwrap();
        let mut args = vec!["client", dst];
        args.extend(&extra);
        let (code, out, err) = on_node(&args);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out,
            lab_view.table(),
            "node-a's view differs from the lab's"
        );
        // The flow crosses node-b: its hops came from node-b's agent.
        assert!(out.contains("node-b eth0 in"), "{out}");
    }
    // node-b's agent not reachable (nobody answers on port 1): node-a's
    // hops alone, then where the flow leaves and why.
    let (code, out, err) = on_node(&["client", &backend, "--peer-port", "1"]);
    assert_eq!(code, 3, "{out}{err}");
    let lab_view = strait_lab::explain::explain(&lab.st, "client", &backend, None).unwrap();
    let local: Vec<_> = lab_view
        .request
        .hops
        .iter()
        .take_while(|h| h.node == "node-a" || h.at == "client")
        .collect();
    assert_eq!(local.len(), 3, "{}", lab_view.table());
    let got = strait_lab::explain::Explanation {
        request: strait_lab::explain::Leg {
            hops: local.into_iter().cloned().collect(),
            verdict: strait_lab::explain::Verdict::Left(String::new()),
        },
        reply: None,
        ..lab_view.clone()
    };
    let want = got.table();
    let want_rows: Vec<&str> = want.lines().skip(3).take(4).map(str::trim_end).collect();
    let got_rows: Vec<&str> = out.lines().skip(3).take(4).map(str::trim_end).collect();
    assert_eq!(got_rows, want_rows, "{out}");
    assert!(
        out.contains("continues on node node-b (198.18.0.2) from node-a out of eth0, whose agent did not answer"),
        "{out}"
    );
    // A pod of the unread node cannot be named, and the error says why.
    let (code, _, err) = on_node(&["client", "web-b", "--peer-port", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("node node-b was not read"), "{err}");
    // The listener answers reads only: no CNI verbs, no other commands.
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(&node_ns)).unwrap();
    let (gc, write, read) = strait_netlink::in_netns(&ns, || {
        let at = std::net::SocketAddr::new(lab.node("node-b").ip.into(), 9477);
        let t = Duration::from_secs(2);
        let ask = |r: &strait_model::api::Request| match strait_cni::client::call_at(at, r, t) {
            Ok(strait_model::api::Response::Kernel { answer }) => Ok(answer),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.msg),
        };
        (
            ask(&strait_model::api::Request::Gc { valid: vec![] }),
            ask(&strait_model::api::Request::Kernel {
                netns: None,
                tool: "ip".into(),
                args: vec!["link".into(), "del".into(), "eth0".into()],
            }),
            ask(&strait_model::api::Request::Kernel {
                netns: None,
                tool: "ip".into(),
                args: vec!["route".into(), "get".into(), web_b.to_string()],
            }),
        )
    })
    .unwrap();
    assert!(gc.unwrap_err().contains("read-only questions only"));
    assert!(write.unwrap_err().contains("not one of the queries"));
    assert!(read.unwrap().to_string().contains("\"dev\""));
    // Still there: node-b's pods were not collected, its eth0 not deleted.
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
}
