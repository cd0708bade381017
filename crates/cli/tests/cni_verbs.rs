//! Every CNI verb and every error case, against a real agent in a lab node.

mod common;
use common::*;
use serde_json::json;

fn conf(lab: &Lab, node: &str) -> serde_json::Value {
    serde_json::from_slice(&strait_lab::run::cni_conf(&lab.st, lab.node(node))).unwrap()
}

fn run(lab: &Lab, node: &str, env: &[(&'static str, String)], stdin: &serde_json::Value) -> CniOut {
    cni_raw(
        &lab.bins.cni,
        &lab.node(node).netns,
        &as_refs(env),
        stdin.to_string().as_bytes(),
    )
}

#[test]
fn add_check_del_lifecycle() {
    if !require_root("add_check_del_lifecycle") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-verbs", &["n1"], 24, &[]));
    let ns = lab.pod_netns("p1");
    let c = conf(&lab, "n1");

    let add = run(&lab, "n1", &cni_env("ADD", "cid-p1", &ns, "p1"), &c);
    assert!(add.ok, "ADD failed: {} {}", add.json, add.stderr);
    let r = &add.json;
    assert_eq!(r["cniVersion"], "1.0.0");
    let host = strait_model::naming::host_veth_name("cid-p1", "eth0");
    assert_eq!(r["interfaces"][0]["name"], host.as_str());
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], format!("/run/netns/{ns}"));
    assert_eq!(r["ips"][0]["address"], "198.19.0.1/32");
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(
        r["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
    );

    // The kernel is wired as the seeds describe.
    let pod = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(pod(&["ip", "-4", "addr", "show", "eth0"]).contains("inet 198.19.0.1/32"));
    let pod_mac =
        strait_model::naming::format_mac(&strait_model::naming::pod_veth_mac("cid-p1", "eth0"));
    assert_eq!(r["interfaces"][1]["mac"], pod_mac.as_str());
    assert!(
        pod(&["ip", "link", "show", "eth0"]).contains(&pod_mac),
        "the result's MAC is the real one"
    );
    assert!(pod(&["ip", "link", "show", "lo"]).contains("UP"));
    assert!(pod(&["ip", "route"]).contains("default via 169.254.1.1 dev eth0"));
    let host_mac =
        strait_model::naming::format_mac(&strait_model::naming::host_veth_mac("cid-p1", "eth0"));
    let neigh = pod(&["ip", "neigh", "show", "169.254.1.1"]);
    assert!(
        neigh.contains(&host_mac) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let routes = lab.exec("n1", &["ip", "route", "show", "198.19.0.1"]);
    assert!(routes.contains(&format!("dev {host}")), "{routes}");
    // Proxy ARP is not needed, and not switched on.
    assert_eq!(
        lab.exec(
            "n1",
            &["cat", &format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")]
        )
        .trim(),
        "0"
    );

    // CHECK passes on what ADD made...
    let mut cc = c.clone();
    cc["prevResult"] = r.clone();
    let check = run(&lab, "n1", &cni_env("CHECK", "cid-p1", &ns, "p1"), &cc);
    assert!(check.ok, "CHECK failed: {}", check.json);
    // ...and fails, naming the problem, once the pod's default route is gone.
    pod(&["ip", "route", "del", "default"]);
    let check = run(&lab, "n1", &cni_env("CHECK", "cid-p1", &ns, "p1"), &cc);
    assert_eq!(check.code(), 101);
    assert!(check.msg().contains("default route"), "{}", check.msg());
    // CHECK without prevResult is an invalid configuration.
    assert_eq!(
        run(&lab, "n1", &cni_env("CHECK", "cid-p1", &ns, "p1"), &c).code(),
        7
    );

    // DEL removes the link and the address; DEL twice and DEL of a stranger succeed.
    let del = run(&lab, "n1", &cni_env("DEL", "cid-p1", &ns, "p1"), &c);
    assert!(del.ok, "DEL: {}", del.json);
    assert!(lab.host_veths("n1").is_empty());
    assert!(lab.status("n1").allocations.is_empty());
    assert!(run(&lab, "n1", &cni_env("DEL", "cid-p1", &ns, "p1"), &c).ok);
    assert!(run(&lab, "n1", &cni_env("DEL", "never-seen", "", "ghost"), &c).ok);
    assert_eq!(lab.status("n1").cooling, 1, "released address cools down");

    // A new pod does not get the just-released address.
    let ns2 = lab.pod_netns("p2");
    let add2 = run(&lab, "n1", &cni_env("ADD", "cid-p2", &ns2, "p2"), &c);
    assert_eq!(add2.json["ips"][0]["address"], "198.19.0.2/32");
}

#[test]
fn version_status_and_gc() {
    if !require_root("version_status_and_gc") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-gc", &["n1"], 24, &[]));
    // STATUS and GC are CNI 1.1 verbs.
    let mut c = conf(&lab, "n1");
    c["cniVersion"] = json!("1.1.0");
    let v = run(
        &lab,
        "n1",
        &[("CNI_COMMAND", "VERSION".into())],
        &json!({"cniVersion": "1.0.0"}),
    );
    assert!(v.ok);
    assert_eq!(v.json["cniVersion"], "1.0.0");
    assert!(v.json["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.1.0")));

    assert!(run(&lab, "n1", &[("CNI_COMMAND", "STATUS".into())], &c).ok);
    let mut old = c.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(
        run(&lab, "n1", &[("CNI_COMMAND", "STATUS".into())], &old).code(),
        1
    );

    // Three pods; GC keeps only the one the runtime still knows.
    let mut nss = vec![];
    for i in 0..3 {
        let ns = lab.pod_netns(&format!("g{i}"));
        assert!(run(&lab, "n1", &cni_env("ADD", &format!("gc{i}"), &ns, "g"), &c).ok);
        nss.push(ns);
    }
    assert_eq!(lab.host_veths("n1").len(), 3);
    // GC without the list is a configuration error and collects nothing
    // (it used to release every pod on the node).
    let out = run(&lab, "n1", &[("CNI_COMMAND", "GC".into())], &c);
    assert_eq!(out.code(), 7, "{}", out.msg());
    assert!(out.msg().contains("valid-attachments"), "{}", out.msg());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(lab.status("n1").allocations.len(), 3);
    assert_eq!(lab.host_veths("n1").len(), 3);
    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
    let out = run(&lab, "n1", &[("CNI_COMMAND", "GC".into())], &g);
    assert!(out.ok, "GC: {}", out.json);
    let st = lab.status("n1");
    assert_eq!(st.allocations.len(), 1);
    assert_eq!(st.allocations[0].attachment.container_id, "gc1");
    // The reconciler removes the collected pods' links.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lab.host_veths("n1").len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        lab.host_veths("n1"),
        vec![strait_model::naming::host_veth_name("gc1", "eth0")]
    );

    // STATUS with the agent gone: plugin not available (50).
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(lab.node("n1"))).unwrap();
    strait_lab::cmd::stop(&[pid], std::time::Duration::from_secs(2));
    assert_eq!(
        run(&lab, "n1", &[("CNI_COMMAND", "STATUS".into())], &c).code(),
        50
    );
}

#[test]
fn errors_are_spec_json_with_the_right_codes() {
    if !require_root("errors_are_spec_json_with_the_right_codes") {
        return;
    }
    // A /30 per node: two pod addresses, to exhaust.
    let lab = Lab::up(&lab_yaml("t-errors", &["n1"], 30, &[]));
    let c = conf(&lab, "n1");
    let ns = lab.pod_netns("e1");
    let env = cni_env("ADD", "e1", &ns, "e1");
    let without = |k: &str| -> Vec<(&'static str, String)> {
        env.iter().filter(|(n, _)| *n != k).cloned().collect()
    };

    // 4: bad environment.
    for k in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let out = run(&lab, "n1", &without(k), &c);
        assert_eq!(out.code(), 4, "without {k}");
        assert!(out.msg().contains(k), "message names {k}: {}", out.msg());
    }
    let mut bad_args = env.clone();
    bad_args[5].1 = "K8S_POD_NAME".into();
    assert_eq!(run(&lab, "n1", &bad_args, &c).code(), 4);
    let mut bad_ns = env.clone();
    bad_ns[2].1 = "/run/netns/does-not-exist".into();
    let out = run(&lab, "n1", &bad_ns, &c);
    assert_eq!(out.code(), 4);
    assert!(out.msg().contains("does-not-exist"));
    let mut not_ns = env.clone();
    not_ns[2].1 = "/etc/hostname".into();
    assert!(run(&lab, "n1", &not_ns, &c)
        .msg()
        .contains("not a network namespace"));

    // 6: undecodable; 7: invalid; 1: unsupported version.
    let out = cni_raw(
        &lab.bins.cni,
        &lab.node("n1").netns,
        &as_refs(&env),
        b"{not json",
    );
    assert_eq!(out.code(), 6);
    let mut m = c.clone();
    m["mtu"] = json!(12);
    assert_eq!(run(&lab, "n1", &env, &m).code(), 7);
    let mut m = c.clone();
    m["cniVersion"] = json!("0.1.0");
    assert_eq!(run(&lab, "n1", &env, &m).code(), 1);

    // A malformed prevResult is refused before anything is made.
    let mut m = c.clone();
    m["prevResult"] = json!({"interfaces": "not a list"});
    let out = run(&lab, "n1", &env, &m);
    assert_eq!(out.code(), 6, "{}", out.msg());
    assert!(out.msg().contains("prevResult"), "{}", out.msg());
    // `type` must name the plugin.
    let mut m = c.clone();
    m["type"] = json!("");
    assert_eq!(run(&lab, "n1", &env, &m).code(), 7);
    // The node's own namespace is not a pod's (the plugin runs in the node).
    let mut own = env.clone();
    own[2].1 = "/proc/self/ns/net".into();
    let out = run(&lab, "n1", &own, &c);
    assert_eq!(out.code(), 4, "{}", out.msg());
    assert!(out.msg().contains("node's own"), "{}", out.msg());
    // A FIFO at CNI_NETNS is refused at once instead of hanging the plugin.
    let fifo = lab
        .st
        .socket(lab.node("n1"))
        .with_file_name("netns-fifo")
        .display()
        .to_string();
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(fifo.as_str(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut f = env.clone();
    f[2].1 = fifo.clone();
    let out = run(&lab, "n1", &f, &c);
    std::fs::remove_file(&fifo).unwrap();
    assert_eq!(out.code(), 4, "{}", out.msg());
    // Requested addresses outside the pool are refused (7).
    let mut r = env.clone();
    r[5].1.push_str(";IP=198.19.9.9");
    let out = run(&lab, "n1", &r, &c);
    assert_eq!(out.code(), 7, "{}", out.msg());
    assert!(out.msg().contains("198.19.9.9"), "{}", out.msg());

    // 11: agent not reachable.
    let mut m = c.clone();
    m["agentSocket"] = json!("/run/strait-lab/t-errors/nowhere.sock");
    let out = run(&lab, "n1", &env, &m);
    assert_eq!(out.code(), 11);
    assert!(
        out.msg().contains("nowhere.sock") && out.msg().contains("strait agent"),
        "{}",
        out.msg()
    );

    // None of the failures above left anything behind.
    assert!(lab.host_veths("n1").is_empty());
    assert!(lab.status("n1").allocations.is_empty());

    // A foreign eth0 already in the pod: ADD fails, says why, and leaves
    // neither an address nor a link behind.
    let nsf = lab.pod_netns("foreign");
    strait_lab::cmd::ip(&[
        "-n", &nsf, "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ])
    .unwrap();
    let out = run(&lab, "n1", &cni_env("ADD", "foreign", &nsf, "f"), &c);
    assert_eq!(out.code(), 102);
    assert!(out.msg().contains("eth0 already exists"), "{}", out.msg());
    assert!(lab.host_veths("n1").is_empty());
    assert!(lab.status("n1").allocations.is_empty());

    // 100: exhausted pool, and no half-made pod. The /30 has two addresses;
    // the failed ADD above released one, which now cools down, so one more
    // pod fits.
    for i in 0..1 {
        let ns = lab.pod_netns(&format!("x{i}"));
        assert!(run(&lab, "n1", &cni_env("ADD", &format!("x{i}"), &ns, "x"), &c).ok);
    }
    let ns3 = lab.pod_netns("x2");
    let out = run(&lab, "n1", &cni_env("ADD", "x2", &ns3, "x"), &c);
    assert_eq!(out.code(), 100);
    assert!(
        out.msg().contains("exhausted")
            && out.msg().contains("198.19.0.0/30")
            && out.msg().contains("1 cooling down"),
        "{}",
        out.msg()
    );
    assert_eq!(lab.host_veths("n1").len(), 1);
    assert_eq!(lab.status("n1").allocations.len(), 1);
    let links = std::process::Command::new("ip")
        .args(["-n", &ns3, "-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("eth0"),
        "no eth0 in the refused pod"
    );
}

#[test]
fn requested_addresses_are_honoured() {
    if !require_root("requested_addresses_are_honoured") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-reqip", &["n1"], 24, &[]));
    let c = conf(&lab, "n1");
    // podman network reload: IP= in CNI_ARGS.
    let ns = lab.pod_netns("r1");
    let mut env = cni_env("ADD", "r1", &ns, "r1");
    env[5].1.push_str(";IP=198.19.0.50");
    let out = run(&lab, "n1", &env, &c);
    assert!(out.ok, "{} {}", out.json, out.stderr);
    assert_eq!(out.json["ips"][0]["address"], "198.19.0.50/32");
    // The ips capability: runtimeConfig.ips.
    let ns2 = lab.pod_netns("r2");
    let mut c2 = c.clone();
    c2["capabilities"] = json!({"ips": true});
    c2["runtimeConfig"] = json!({"ips": ["198.19.0.60/24"]});
    let out = run(&lab, "n1", &cni_env("ADD", "r2", &ns2, "r2"), &c2);
    assert!(out.ok, "{} {}", out.json, out.stderr);
    assert_eq!(out.json["ips"][0]["address"], "198.19.0.60/32");
    // Taken by r1: a clear error, and nothing changes.
    let ns3 = lab.pod_netns("r3");
    let mut env3 = cni_env("ADD", "r3", &ns3, "r3");
    env3[5].1.push_str(";IP=198.19.0.50");
    let out = run(&lab, "n1", &env3, &c);
    assert_eq!(out.code(), 7, "{}", out.msg());
    assert!(
        out.msg().contains("in use by pod default/r1"),
        "{}",
        out.msg()
    );
    assert_eq!(lab.status("n1").allocations.len(), 2);
    assert_eq!(lab.host_veths("n1").len(), 2);
    // Released, then asked for again by the re-added container (podman
    // network reload re-runs ADD with the old address): it gets it back
    // despite the cool-down.
    let del = cni_env("DEL", "r1", &ns, "r1");
    assert!(run(&lab, "n1", &del, &c).ok);
    let out = run(&lab, "n1", &env, &c);
    assert!(out.ok, "{} {}", out.json, out.stderr);
    assert_eq!(out.json["ips"][0]["address"], "198.19.0.50/32");
}

#[test]
fn parallel_adds_get_distinct_addresses() {
    if !require_root("parallel_adds_get_distinct_addresses") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-par", &["n1"], 24, &[]));
    let c = conf(&lab, "n1");
    let nss: Vec<String> = (0..30).map(|i| lab.pod_netns(&format!("q{i}"))).collect();
    let outs: Vec<CniOut> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (lab, c) = (&lab, &c);
                s.spawn(move || run(lab, "n1", &cni_env("ADD", &format!("q{i}"), ns, "q"), c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(o.ok, "{} {}", o.json, o.stderr);
            o.json["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 30);
    assert_eq!(lab.status("n1").allocations.len(), 30);
}
