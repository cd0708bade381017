//! Terway DataPath V2 on ENI multi-IP (seed 000) in the lab, on both
//! datapaths: pods hold secondary addresses of their node's ENIs (from the
//! lab's VPC emulator), Terway's rules send a pod's traffic out of its own
//! ENI, and the seed's eight scenarios are asserted by captures on the
//! pods, their host veths, the node's ENIs and the VPC's ends of them (the
//! eighth through the VPC's SLB, whose backend is a pod's ENI). On
//! node-a centos and nginx2 share eth1 and nginx3 has eth2 (an ENI holds
//! two pod addresses here); nginx1 is on node-b's eth1.
//!
//! The kernel datapath walks every hop through the host stack; the eBPF
//! datapath skips the destination's host veth (bpf_redirect_peer from the
//! source's host veth, or from the ENI's from-netdev) and the source's on
//! the reply, as the seed's Aliyun3 column shows.

mod common;
use common::hops::{both_ways, host_veths, silent};
use common::*;
use strait_lab::hops::{trace, trace_service};
use strait_model::cloud::provider::Eni;

fn yaml(name: &str, datapath: &str) -> String {
    include_str!("../../../examples/two-nodes-eni.yaml")
        .replace(
            "metadata:\n  name: terway\n",
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

fn ip(lab: &Lab, p: &str) -> std::net::IpAddr {
    lab.st.pod_ip(lab.st.plan.pod(p).unwrap()).unwrap()
}

/// The device (eth<N>) of the ENI holding `pod`'s address.
fn dev_of(enis: &[Eni], lab: &Lab, pod: &str) -> String {
    let a = ip(lab, pod);
    let e = enis
        .iter()
        .find(|e| e.secondary_ips.contains(&a))
        .unwrap_or_else(|| panic!("no ENI holds {pod}'s {a}: {enis:#?}"));
    format!("eth{}", e.device_index.unwrap())
}

fn eni_label(enis: &[Eni], lab: &Lab, pod: &str) -> String {
    let a = ip(lab, pod);
    let e = enis.iter().find(|e| e.secondary_ips.contains(&a)).unwrap();
    format!(
        "{} eth{} ({})",
        e.node.as_deref().unwrap(),
        e.device_index.unwrap(),
        e.id
    )
}

fn scenarios(lab: &Lab, ebpf: bool) {
    let enis = cloud(lab);
    // The layout the scenarios need: one ENI shared, one not.
    assert_eq!(dev_of(&enis, lab, "centos"), "eth1");
    assert_eq!(dev_of(&enis, lab, "nginx2"), "eth1");
    assert_eq!(dev_of(&enis, lab, "nginx3"), "eth2");
    assert_eq!(dev_of(&enis, lab, "nginx1"), "eth1");
    for p in ["centos", "nginx2", "nginx3", "nginx1"] {
        assert!(ip(lab, p).to_string().starts_with("198.18.32."), "{p}");
    }

    // Terway's rules: to the pod by main (512), from it by its ENI's
    // table (2048), which leaves by that ENI via the vSwitch's gateway.
    let centos = ip(lab, "centos");
    let eth1 = lab.exec("node-a", &["cat", "/sys/class/net/eth1/ifindex"]);
    let table = 1000 + eth1.trim().parse::<u32>().unwrap();
    let rules = lab.exec("node-a", &["ip", "rule"]);
    assert!(
        rules.contains(&format!("512:\tfrom all to {centos} lookup main")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("2048:\tfrom {centos} lookup {table}")),
        "{rules}"
    );
    let t = lab.exec(
        "node-a",
        &["ip", "route", "show", "table", &table.to_string()],
    );
    assert!(
        t.contains("default via 198.18.32.1 dev eth1") && t.contains("onlink"),
        "{t}"
    );

    // 1. Node to a pod: through the host stack and the host veth; no ENI.
    let h = trace(&lab.st, "node-a", "nginx2").unwrap();
    silent(&h, &eni_label(&enis, lab, "nginx2"));
    both_ways(&h, "nginx2 host veth");

    // 2. Same node, same ENI: the ENI sees nothing.
    let h = trace(&lab.st, "centos", "nginx2").unwrap();
    silent(&h, &eni_label(&enis, lab, "centos"));
    host_veths(&h, "centos", "nginx2", ebpf);

    // 3. Same node, different ENIs: neither ENI sees anything.
    let h = trace(&lab.st, "centos", "nginx3").unwrap();
    silent(&h, &eni_label(&enis, lab, "centos"));
    silent(&h, &eni_label(&enis, lab, "nginx3"));
    host_veths(&h, "centos", "nginx3", ebpf);

    // 4. Across nodes: out of the client's ENI, through the VPC, in at the
    // server's ENI, both ways.
    let h = trace(&lab.st, "centos", "nginx1").unwrap();
    let (a, b) = (
        eni_label(&enis, lab, "centos"),
        eni_label(&enis, lab, "nginx1"),
    );
    for hop in [a.as_str(), b.as_str()] {
        both_ways(&h, hop);
    }
    for e in enis.iter().filter(|e| {
        [ip(lab, "centos"), ip(lab, "nginx1")]
            .iter()
            .any(|a| e.secondary_ips.contains(a))
    }) {
        both_ways(&h, &format!("vpc {}", e.id));
    }
    host_veths(&h, "centos", "nginx1", ebpf);

    // `lab explain` from live state (Terway's rules and per-ENI tables,
    // asked of each FIB), confirmed by capture: 1-4, then a service across
    // nodes. Across nodes the walk leaves by the client's ENI into the VPC
    // and enters by the server's.
    for (src, dst) in [
        ("node-a", "nginx2"),
        ("centos", "nginx2"),
        ("centos", "nginx3"),
        ("centos", "nginx1"),
    ] {
        common::explain::verified(lab, src, dst);
    }
    let v = common::explain::verified(lab, "centos", "nginx1");
    let at: Vec<String> = v
        .explanation
        .request
        .hops
        .iter()
        .map(|h| format!("{} {}", h.at, h.iface))
        .collect();
    let (ca, nb) = (dev_of(&enis, lab, "centos"), dev_of(&enis, lab, "nginx1"));
    assert!(
        at.contains(&format!("node-a {ca}"))
            && at.iter().any(|h| h.starts_with("vpc "))
            && at.contains(&format!("node-b {nb}")),
        "{}",
        v.table()
    );
    let v = common::explain::verified(lab, "centos", "svc/nginx1:80");
    common::explain::vip_only_on_client_side(lab, &v, "centos", "nginx1");

    // 5–7. A service: its address is seen only on the client's side; after
    // that only pod addresses. Same node (same ENI, then another ENI): no
    // ENI sees it; across nodes: both pods' ENIs, nothing on eth2.
    for (svc, backend, enis_carry) in [
        ("nginx2", "nginx2", false),
        ("nginx3", "nginx3", false),
        ("nginx1", "nginx1", true),
    ] {
        let r = trace_service(&lab.st, "centos", svc, 80).unwrap();
        assert_eq!(r.answered_by, backend, "{}", r.table());
        assert!(r.at("centos eth0").0 > 0, "{}", r.table());
        for (hop, vip, _) in &r.hops {
            if !hop.label.starts_with("centos ") {
                assert_eq!(*vip, 0, "service IP at {}: {}", hop.label, r.table());
            }
        }
        assert!(r.at(&format!("{backend} eth0")).1 > 0, "{}", r.table());
        let eth2 = eni_label(&enis, lab, "nginx3");
        assert_eq!(r.at(&eth2), (0, 0), "{}", r.table());
        for pod in ["centos", backend] {
            let at = r.at(&eni_label(&enis, lab, pod)).1;
            assert_eq!(at > 0, enis_carry, "{svc} at {pod}'s ENI: {}", r.table());
        }
    }

    // 8. From outside through the SLB, whose backend is nginx1's address
    // on its ENI: the SLB's address is translated in the VPC, then the
    // packet enters node-b at nginx1's ENI and goes to the pod (past its
    // host veth with the eBPF datapath: only the reply crosses it).
    let r = strait_lab::hops::eni::trace_slb(&lab.st, "lb-nginx", 80).unwrap();
    assert_eq!(r.answered_by, "nginx1", "{}", r.table());
    for hop in ["external eth0", "vpc eth0 (fabric)"] {
        assert!(r.at(hop).0 > 0, "{hop}: {}", r.table());
    }
    let eni = eni_label(&enis, lab, "nginx1");
    let (vip, pods) = r.at(&eni);
    assert!(vip == 0 && pods > 0, "{}", r.table());
    let (veth, pod) = (r.at("nginx1 host veth").1, r.at("nginx1 eth0").1);
    if ebpf {
        assert!(
            veth > 0 && veth < pod,
            "request skipped the host veth: {}",
            r.table()
        );
    } else {
        assert_eq!(veth, pod, "{}", r.table());
    }

    // `lab explain` does not follow the SLB (it translates in the cloud)
    // and says so, pointing at `lab hops`, rather than explain it wrong.
    let slb = lab.st.plan.cloud.as_ref().unwrap().slbs[0].address;
    let out = std::process::Command::new(&lab.bins.strait)
        .args(["lab", "--lab", lab.name(), "explain", "external"])
        .arg(format!("{slb}:80"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("load balancer lb-nginx") && err.contains("lab hops"),
        "{err}"
    );

    // `strait mapping`: every pod's address on the ENI the cloud says.
    let sock = lab.st.socket(lab.node("node-a"));
    let out = lab.strait(&["mapping", "--socket", sock.to_str().unwrap()]);
    assert!(out.contains("consistent"), "{out}");
    for p in ["centos", "nginx2", "nginx3"] {
        assert!(out.contains(&format!("default/{p}")), "{out}");
    }
}

#[test]
fn seed_000_scenarios_on_the_ebpf_datapath() {
    if !require_root("seed_000_scenarios_on_the_ebpf_datapath") {
        return;
    }
    let lab = Lab::up(&yaml("t-eni-e", "ebpf"));
    scenarios(&lab, true);
}

#[test]
fn seed_000_scenarios_on_the_kernel_datapath_then_quota_and_churn() {
    if !require_root("seed_000_scenarios_on_the_kernel_datapath_then_quota_and_churn") {
        return;
    }
    let mut lab = Lab::up(&yaml("t-eni-k", "kernel"));
    scenarios(&lab, false);

    // node-b may hold 2 ENIs of 2 pod addresses: nginx1 and three more
    // fit, the fifth is refused with the quota named, and nothing leaks.
    let pod = |n: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}, namespace: default}}\nspec: {{nodeName: node-b, containers: [{{name: echo}}]}}\n")
    };
    for n in ["b2", "b3", "b4"] {
        strait_lab::objects::apply(&mut lab.st, &lab.bins, &pod(n)).unwrap();
    }
    let on_b = |lab: &Lab| -> Vec<Eni> {
        cloud(lab)
            .into_iter()
            .filter(|e| e.node.as_deref() == Some("node-b") && !e.secondary_ips.is_empty())
            .collect()
    };
    assert_eq!(on_b(&lab).len(), 2);
    let rules_before = lab.exec("node-b", &["ip", "rule"]);
    let err = strait_lab::objects::apply(&mut lab.st, &lab.bins, &pod("b5")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no pod address left") && msg.contains("quota"),
        "{msg}"
    );
    assert_eq!(lab.exec("node-b", &["ip", "rule"]), rules_before);
    assert_eq!(lab.status("node-b").allocations.len(), 4);
    for n in ["b2", "b3", "b4"] {
        assert_eq!(lab.probe("centos", n).unwrap(), n);
    }

    // DEL gives the rules back at once, and the pool (max 2 idle) gives
    // the cloud back what it does not need once the addresses have
    // cooled down (30 s): an emptied ENI goes.
    for n in ["b2", "b3", "b4"] {
        let a = ip(&lab, n);
        strait_lab::objects::delete(&mut lab.st, &lab.bins, &pod(n)).unwrap();
        let rules = lab.exec("node-b", &["ip", "rule"]);
        assert!(
            !rules.contains(&format!("{a} ")),
            "{n}'s rules left: {rules}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let held: usize = on_b(&lab).iter().map(|e| e.secondary_ips.len()).sum();
        if held <= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node-b still holds {held} addresses: {:#?}",
            on_b(&lab)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(lab.probe("centos", "nginx1").unwrap(), "nginx1");
}

/// 200 pods created and deleted on node-a (as a runtime does: ADD, then
/// DEL twice, with and without prevResult), the agent killed (SIGKILL) at
/// a random moment during every tenth ADD and started again. Afterwards
/// the VPC's own records hold no address beyond the pods left and the warm
/// pool's maximum, and the node holds no rule, host veth or allocation of
/// a deleted pod.
#[test]
fn eni_churn_with_agent_kills_leaks_nothing_in_the_vpc() {
    if !require_root("eni_churn_with_agent_kills_leaks_nothing_in_the_vpc") {
        return;
    }
    // No idle addresses kept: every ADD asks the cloud.
    let text = yaml("t-eni-c", "kernel")
        .replace(
            "  crossNode: eni\n",
            "  crossNode: eni\n  ipCooldownSecs: 0\n",
        )
        .replace("maxIdle: 2", "maxIdle: 0");
    let lab = Lab::up(&text);
    let node = lab.node("node-a").clone();
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "strait", "type": "strait-cni",
        "agentSocket": lab.st.socket(&node), "mtu": 1500});
    let agent_pid = || strait_lab::LabState::read_pid(&lab.st.agent_pid(&node)).unwrap();
    // A fixed-seed generator: varied kill moments, the same every run.
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let (mut added, mut killed) = (0, 0);
    for i in 0..200 {
        let name = format!("c{i}");
        let ns = lab.pod_netns(&name);
        let cid = format!("churn{i}");
        let env = cni_env("ADD", &cid, &ns, &name);
        let kill = (i % 10 == 9).then(|| {
            let delay = std::time::Duration::from_millis(next() % 40);
            let pid = agent_pid();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
            })
        });
        let add = cni_raw(
            &lab.bins.cni,
            &node.netns,
            &as_refs(&env),
            conf.to_string().as_bytes(),
        );
        if let Some(k) = kill {
            k.join().unwrap();
            killed += 1;
            strait_lab::run::start_agent(&lab.st, &lab.bins, &node, &[]).unwrap();
            strait_lab::run::wait_agent_ready(&lab.st, &node, std::time::Duration::from_secs(30))
                .unwrap();
        }
        if add.ok {
            added += 1;
        }
        for prev in [true, false] {
            let mut c = conf.clone();
            if prev && add.ok {
                c["prevResult"] = add.json.clone();
            }
            let del = cni_raw(
                &lab.bins.cni,
                &node.netns,
                &as_refs(&cni_env("DEL", &cid, &ns, &name)),
                c.to_string().as_bytes(),
            );
            assert!(del.ok, "cycle {i}: DEL: {} {}", del.json, del.stderr);
        }
        strait_lab::cmd::ip(&["netns", "del", &ns]).unwrap();
    }
    assert!(added >= 180, "only {added} of 200 ADDs succeeded");
    assert_eq!(killed, 20);

    // An ADD that waits on a slow cloud longer than the orphan grace (5 s;
    // a burst of ADDs queued behind cloud calls does): the veth the plugin
    // made meanwhile is not swept as an orphan, and the ADD succeeds.
    let cloud_pid = strait_lab::LabState::read_pid(&strait_lab::cloud::pid_file(&lab.st)).unwrap();
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(cloud_pid), s).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    let ns = lab.pod_netns("slow");
    let env = cni_env("ADD", "slow1", &ns, "slow");
    let slow = std::thread::scope(|s| {
        let h = s.spawn(|| {
            cni_raw(
                &lab.bins.cni,
                &node.netns,
                &as_refs(&env),
                conf.to_string().as_bytes(),
            )
        });
        std::thread::sleep(std::time::Duration::from_secs(8));
        signal(nix::sys::signal::Signal::SIGCONT);
        h.join().unwrap()
    });
    assert!(slow.ok, "{} {}", slow.json, slow.stderr);
    let del = cni_raw(
        &lab.bins.cni,
        &node.netns,
        &as_refs(&cni_env("DEL", "slow1", &ns, "slow")),
        conf.to_string().as_bytes(),
    );
    assert!(del.ok, "{}", del.json);

    // What is left: the three pods of the lab file on node-a.
    let live: Vec<std::net::IpAddr> = ["centos", "nginx2", "nginx3"]
        .iter()
        .map(|p| ip(&lab, p))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held: Vec<std::net::IpAddr> = cloud(&lab)
            .iter()
            .filter(|e| e.node.as_deref() == Some("node-a"))
            .flat_map(|e| e.secondary_ips.clone())
            .collect();
        let allocs = lab.status("node-a").allocations;
        let ok = live.iter().all(|a| held.contains(a))
            && held.len() <= live.len() + 2
            && allocs.len() == live.len();
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node-a holds {held:?} in the VPC and {} allocations: {allocs:#?}",
            allocs.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let rules = lab.exec("node-a", &["ip", "rule"]);
    let pod_rules = rules
        .lines()
        .filter(|l| l.starts_with("512:") || l.starts_with("2048:"))
        .count();
    assert_eq!(pod_rules, 2 * live.len(), "{rules}");
    assert_eq!(lab.host_veths("node-a").len(), live.len());
    let sock = lab.st.socket(&node);
    let out = lab.strait(&["mapping", "--socket", sock.to_str().unwrap()]);
    assert!(out.contains("consistent"), "{out}");
    assert_eq!(lab.probe("centos", "nginx1").unwrap(), "nginx1");
}
