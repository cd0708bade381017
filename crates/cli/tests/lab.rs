//! The lab end to end: the connectivity matrix, agent restarts, and crashes.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn example(name: &str) -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/two-nodes.yaml"
    ))
    .unwrap()
    .replace("name: demo", &format!("name: {name}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connectivity_matrix_same_node_and_across_nodes() {
    if !require_root("connectivity_matrix_same_node_and_across_nodes") {
        return;
    }
    let lab = Lab::up(&example("t-matrix"));
    let pods = ["a1", "a2", "b1", "b2"];
    for src in pods.iter().chain(["node-a", "node-b"].iter()) {
        for dst in pods {
            let got = lab
                .probe(src, dst)
                .unwrap_or_else(|e| panic!("{src} -> {dst}: {e:#}"));
            assert_eq!(got, dst, "{src} -> {dst} answered by the wrong pod");
        }
    }
    // UDP across nodes too.
    let b2 = lab.st.pod_ip(lab.st.plan.pod("b2").unwrap()).unwrap();
    let r = strait_lab::probe::probe(
        &strait_lab::run::netns_path(&lab.st.plan.pod("a1").unwrap().netns),
        std::net::SocketAddr::new(b2, 8080),
        true,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.answered_by, "b2");
    // Routed mode: node-a routes node-b's pod CIDR via node-b's fabric IP,
    // and blackholes its own CIDR.
    let routes = lab.exec("node-a", &["ip", "route"]);
    assert!(
        routes.contains("198.19.1.0/24 via 198.18.0.2 dev eth0 proto 90"),
        "{routes}"
    );
    assert!(
        routes.contains("blackhole 198.19.0.0/24 proto 90"),
        "{routes}"
    );
    // The CLI probe exits 0 and names the pod; a probe to nowhere exits 1.
    let strait = &lab.bins.strait;
    let ok = std::process::Command::new(strait)
        .args(["lab", "--lab", "t-matrix", "probe", "a1", "b1"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("answered by b1"));
    let bad = std::process::Command::new(strait)
        .args([
            "lab",
            "--lab",
            "t-matrix",
            "probe",
            "a1",
            "198.19.1.200:8080",
            "--timeout-ms",
            "300",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn agent_restart_keeps_pods_reachable_and_heals_routes() {
    if !require_root("agent_restart_keeps_pods_reachable_and_heals_routes") {
        return;
    }
    let lab = Lab::up(&example("t-restart"));
    let before = lab.status("node-a").allocations;
    let a = lab.node("node-a").clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&a)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("agent to die", Duration::from_secs(5), || {
        !strait_lab::cmd::alive(pid)
    });

    // Forwarding does not need the agent.
    assert_eq!(lab.probe("a1", "b1").unwrap(), "b1");
    assert_eq!(lab.probe("b2", "a2").unwrap(), "a2");

    // Drift while the agent is down: a node route and a pod route vanish.
    lab.exec("node-a", &["ip", "route", "del", "198.19.1.0/24"]);
    lab.exec("node-a", &["ip", "route", "del", "198.19.0.2/32"]);
    assert!(lab.probe("a1", "b1").is_err());

    strait_lab::run::start_agent(&lab.st, &lab.bins, &a, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &a, Duration::from_secs(10)).unwrap();
    wait_until("routes to heal", Duration::from_secs(10), || {
        let r = lab.exec("node-a", &["ip", "route"]);
        r.contains("198.19.1.0/24 via 198.18.0.2") && r.contains("198.19.0.2 dev strt")
    });
    for (s, d) in [("a1", "b1"), ("b1", "a2"), ("a1", "a2"), ("node-b", "a2")] {
        assert_eq!(lab.probe(s, d).unwrap(), d, "{s} -> {d} after restart");
    }
    assert_eq!(
        lab.status("node-a").allocations,
        before,
        "IPAM intact across the restart"
    );
}

fn state_files(lab: &Lab, node: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(lab.st.node_dir(lab.node(node)).join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn gc_all(lab: &Lab, node: &str) {
    let mut c: serde_json::Value =
        serde_json::from_slice(&strait_lab::run::cni_conf(&lab.st, lab.node(node))).unwrap();
    c["cni.dev/valid-attachments"] = serde_json::json!([]);
    c["cniVersion"] = serde_json::json!("1.1.0"); // GC is a CNI 1.1 verb
    let out = cni_raw(
        &lab.bins.cni,
        &lab.node(node).netns,
        &[("CNI_COMMAND", "GC")],
        c.to_string().as_bytes(),
    );
    assert!(out.ok, "GC: {}", out.json);
}

fn spawn_add(
    lab: &Lab,
    node: &str,
    cid: &str,
    ns: &str,
    extra: &[(&str, &str)],
) -> std::process::Child {
    use std::io::Write;
    let conf = strait_lab::run::cni_conf(&lab.st, lab.node(node));
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &lab.node(node).netns])
        .arg(&lab.bins.cni);
    for (k, v) in cni_env("ADD", cid, ns, cid) {
        c.env(k, v);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&conf).unwrap();
    child
}

#[test]
fn plugin_killed_mid_add_then_gc_leaks_nothing() {
    if !require_root("plugin_killed_mid_add_then_gc_leaks_nothing") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-crashp", &["n1"], 24, &[]));
    let files_before = state_files(&lab, "n1");
    for point in ["after-allocate", "after-veth"] {
        let ns = lab.pod_netns(point);
        let mut child = spawn_add(&lab, "n1", point, &ns, &[("STRAIT_CNI_PAUSE_AT", point)]);
        wait_until(
            "the plugin to reach its pause point",
            Duration::from_secs(10),
            || {
                lab.status("n1").allocations.len() == 1
                    && (point != "after-veth" || lab.host_veths("n1").len() == 1)
            },
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The runtime's view: the container is gone; GC with no valid attachments.
        gc_all(&lab, "n1");
        assert!(
            lab.status("n1").allocations.is_empty(),
            "{point}: IP leaked"
        );
        wait_until("leftover links to go", Duration::from_secs(5), || {
            lab.host_veths("n1").is_empty()
        });
        assert_eq!(
            state_files(&lab, "n1"),
            files_before,
            "{point}: stray files"
        );
    }
}

#[test]
fn agent_killed_mid_add_then_gc_leaks_nothing() {
    if !require_root("agent_killed_mid_add_then_gc_leaks_nothing") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-crasha", &["n1"], 24, &[]));
    let n1 = lab.node("n1").clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n1)).unwrap();
    strait_lab::cmd::stop(&[pid], Duration::from_secs(3));
    // Restart the agent so that it stops right after persisting an allocation.
    let env = [(
        "STRAIT_AGENT_PAUSE_AT".to_string(),
        "after-allocate".to_string(),
    )];
    let pid = strait_lab::run::start_agent(&lab.st, &lab.bins, &n1, &env).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &n1, Duration::from_secs(10)).unwrap();
    let ns = lab.pod_netns("k1");
    let child = spawn_add(&lab, "n1", "k1", &ns, &[]);
    let ipam = lab.st.node_dir(&n1).join("state/ipam.json");
    wait_until(
        "the allocation to be persisted",
        Duration::from_secs(10),
        || std::fs::read_to_string(&ipam).is_ok_and(|s| s.contains("\"k1\"")),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 11, "agent died mid-request: try again later");

    strait_lab::run::start_agent(&lab.st, &lab.bins, &n1, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &n1, Duration::from_secs(10)).unwrap();
    assert_eq!(
        lab.status("n1").allocations.len(),
        1,
        "the persisted allocation survived"
    );
    gc_all(&lab, "n1");
    assert!(lab.status("n1").allocations.is_empty());
    assert!(lab.host_veths("n1").is_empty());
    assert_eq!(state_files(&lab, "n1"), vec!["ipam.json".to_string()]);
}

#[test]
fn vanished_pod_namespace_releases_its_address() {
    if !require_root("vanished_pod_namespace_releases_its_address") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-vanish", &["n1"], 24, &[("v1", "n1")]));
    assert_eq!(lab.status("n1").allocations.len(), 1);
    let p = lab.st.plan.pod("v1").unwrap().clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.pod_pid(&p)).unwrap();
    strait_lab::cmd::stop(&[pid], Duration::from_secs(2));
    strait_lab::cmd::ip(&["netns", "del", &p.netns]).unwrap();
    // No DEL ever comes; the agent notices the namespace is gone.
    wait_until(
        "the address to be released",
        Duration::from_secs(10),
        || lab.status("n1").allocations.is_empty(),
    );
    wait_until("the host veth to go", Duration::from_secs(5), || {
        lab.host_veths("n1").is_empty()
    });
}

#[test]
fn up_recovers_from_a_crashed_lab_and_the_socket_is_private() {
    if !require_root("up_recovers_from_a_crashed_lab_and_the_socket_is_private") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let yaml = lab_yaml("t-reup", &["n1", "n2"], 24, &[("r1", "n1"), ("r2", "n2")]);
    let first = Lab::up(&yaml);
    let mode = std::fs::metadata(first.st.socket(first.node("n1")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "agent socket must be private");
    // Crash: every process of the lab dies at once, nothing is cleaned up.
    for ns in strait_lab::cmd::netns_with_prefix("strait-t-reup-") {
        for pid in strait_lab::cmd::netns_pids(&ns) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    first.abandon(); // no down: the leftovers stay, as after a crash
    let second = Lab::up(&yaml);
    assert_eq!(second.probe("r1", "r2").unwrap(), "r2");
    assert_eq!(
        second.status("n1").allocations.len(),
        1,
        "no stale allocations from the crashed run"
    );
    assert_eq!(
        strait_lab::cmd::netns_with_prefix("strait-t-reup-").len(),
        6,
        "fabric + external client + 2 nodes + 2 pods"
    );
}

/// A connection flood, an oversized request and a half-written one: the
/// agent answers what it can, closes what it must, and keeps serving. Its
/// file limit is lowered to 200 first so the flood really hits EMFILE.
#[test]
fn agent_api_survives_flood_and_bad_clients() {
    if !require_root("agent_api_survives_flood_and_bad_clients") {
        return;
    }
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let lab = Lab::up(&lab_yaml("t-flood", &["n1"], 24, &[]));
    let n1 = lab.node("n1").clone();
    let sock = lab.st.socket(&n1);
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n1)).unwrap();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=200:200"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A request line of 2 MiB with no end: refused with an error line.
    let mut big = UnixStream::connect(&sock).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..32 {
        if big.write_all(&chunk).is_err() {
            break; // the agent closed it: fine
        }
    }
    let mut reply = String::new();
    let _ = big.read_to_string(&mut reply);
    assert!(reply.contains("longer than the limit"), "reply: {reply:?}");

    // A half-written request is closed after the read timeout.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"{\"op\":").unwrap();
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = half.read(&mut buf).unwrap_or(0);
    assert!(
        t0.elapsed() < Duration::from_secs(19),
        "a half-written request must be timed out by the agent (read {n} bytes)"
    );

    // 400 idle connections: past the file limit and the connection cap.
    let flood: Vec<UnixStream> = (0..400)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    assert!(!flood.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    drop(flood);
    wait_until("the agent to answer again", Duration::from_secs(15), || {
        labrun_status_ok(&lab, "n1")
    });
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "the agent survived"
    );
}

fn labrun_status_ok(lab: &Lab, node: &str) -> bool {
    strait_lab::run::agent_status(&lab.st.socket(lab.node(node))).is_ok()
}

/// IPAM state is per boot (it lives under /run), but a lost or mismatched
/// state file must never cost live pods: the agent rebuilds allocations
/// from the kernel (host veths with strait's routes), keeps their links and
/// never hands their addresses out again. A foreign route to a pod CIDR is
/// left alone and reported.
#[test]
fn lost_ipam_state_is_recovered_from_the_kernel() {
    if !require_root("lost_ipam_state_is_recovered_from_the_kernel") {
        return;
    }
    let lab = Lab::up(&example("t-lostipam"));
    let a = lab.node("node-a").clone();
    let before: Vec<std::net::IpAddr> = lab
        .status("node-a")
        .allocations
        .iter()
        .map(|x| x.ip)
        .collect();
    assert_eq!(before.len(), 2);
    let veths = lab.host_veths("node-a");
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&a)).unwrap();
    strait_lab::cmd::stop(&[pid], Duration::from_secs(3));
    for state in ["lost", "other boot"] {
        let file = lab.st.node_dir(&a).join("state/ipam.json");
        if state == "lost" {
            std::fs::remove_file(&file).unwrap();
        } else {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["boot_id"] = serde_json::json!("a-different-boot");
            std::fs::write(&file, v.to_string()).unwrap();
        }
        let pid = strait_lab::run::start_agent(&lab.st, &lab.bins, &a, &[]).unwrap();
        strait_lab::run::wait_agent_ready(&lab.st, &a, Duration::from_secs(10)).unwrap();
        let st = lab.status("node-a");
        let mut got: Vec<_> = st.allocations.iter().map(|x| x.ip).collect();
        got.sort();
        let mut want = before.clone();
        want.sort();
        assert_eq!(got, want, "{state}: live pods recovered");
        assert!(st.allocations.iter().all(|x| x.recovered), "{state}");
        // Well past the orphan grace: nothing was deleted, pods still answer.
        std::thread::sleep(Duration::from_secs(6));
        assert_eq!(
            lab.host_veths("node-a"),
            veths,
            "{state}: no live link deleted"
        );
        assert_eq!(lab.probe("b1", "a1").unwrap(), "a1", "{state}");
        assert_eq!(lab.probe("a2", "b2").unwrap(), "b2", "{state}");
        // A new pod never gets a live pod's address.
        let ns = lab.pod_netns(&format!("new{}", state.len()));
        let cid = format!("new-{}", state.len());
        let out = cni_raw(
            &lab.bins.cni,
            &a.netns,
            &as_refs(&cni_env("ADD", &cid, &ns, "new")),
            &strait_lab::run::cni_conf(&lab.st, &a),
        );
        assert!(out.ok, "{} {}", out.json, out.stderr);
        let ip: std::net::IpAddr = out.ip();
        assert!(!before.contains(&ip), "{state}: {ip} is a live pod's");
        let del = cni_raw(
            &lab.bins.cni,
            &a.netns,
            &as_refs(&cni_env("DEL", &cid, &ns, "new")),
            &strait_lab::run::cni_conf(&lab.st, &a),
        );
        assert!(del.ok);
        strait_lab::cmd::stop(&[pid], Duration::from_secs(3));
    }
    // DEL of a recovered pod by its container id releases it.
    let pid = strait_lab::run::start_agent(&lab.st, &lab.bins, &a, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &a, Duration::from_secs(10)).unwrap();
    let a1 = lab.st.plan.pod("a1").unwrap().clone();
    let cid = lab.st.container_id(&a1);
    let del = cni_raw(
        &lab.bins.cni,
        &a.netns,
        &as_refs(&cni_env("DEL", &cid, "", "a1")),
        &strait_lab::run::cni_conf(&lab.st, &a),
    );
    assert!(del.ok, "{}", del.json);
    assert_eq!(lab.status("node-a").allocations.len(), 1);
    let _ = pid;
}

/// A route strait did not make to another node's pod CIDR is neither
/// replaced nor deleted; status names it.
#[test]
fn foreign_routes_are_never_adopted() {
    if !require_root("foreign_routes_are_never_adopted") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-foreign", &["n1", "n2"], 24, &[]));
    // A static route of the operator's to n2's pod CIDR, made while
    // strait's own is briefly absent.
    lab.exec("n1", &["ip", "route", "del", "198.19.1.0/24"]);
    lab.exec(
        "n1",
        &[
            "ip",
            "route",
            "add",
            "198.19.1.0/24",
            "via",
            "198.18.0.2",
            "proto",
            "static",
        ],
    );
    wait_until(
        "the conflict to be reported",
        Duration::from_secs(10),
        || {
            lab.status("n1").reconcilers.iter().any(|r| {
                r.name == "node-routes"
                    && r.problems
                        .iter()
                        .any(|p| p.contains("198.19.1.0/24") && p.contains("did not make"))
            })
        },
    );
    let r = lab.exec("n1", &["ip", "route", "show", "198.19.1.0/24"]);
    assert!(
        r.contains("proto static"),
        "the operator's route is untouched: {r}"
    );
    // Once it goes, strait's comes back and the problem clears.
    lab.exec("n1", &["ip", "route", "del", "198.19.1.0/24"]);
    wait_until("strait's route to return", Duration::from_secs(10), || {
        lab.exec("n1", &["ip", "route", "show", "198.19.1.0/24"])
            .contains("198.18.0.2")
            && lab
                .status("n1")
                .reconcilers
                .iter()
                .all(|r| r.problems.is_empty())
    });
}

/// Two labs whose names extend one another (`t-pfx`, `t-pfx-b`): taking
/// the shorter one down (or up again) leaves the longer one's namespaces
/// and agents alone. Its prefix `strait-t-pfx-` matches both; before the
/// fix, `down t-pfx` killed `t-pfx-b`'s processes and deleted its
/// namespaces.
#[test]
fn a_lab_whose_name_extends_another_survives_the_others_down() {
    if !require_root("a_lab_whose_name_extends_another_survives_the_others_down") {
        return;
    }
    let long = Lab::up(&lab_yaml("t-pfx-b", &["n1"], 24, &[("p1", "n1")]));
    {
        let _short = Lab::up(&lab_yaml("t-pfx", &["n1"], 24, &[("q1", "n1")]));
    } // down t-pfx
    assert!(long.status("n1").ready, "t-pfx-b's agent still runs");
    assert_eq!(long.probe("n1", "p1").unwrap(), "p1");
    let left = strait_lab::cmd::lab_netns("t-pfx-b");
    assert!(left.iter().any(|n| n.ends_with("-fabric")), "{left:?}");
}

/// An agent that exits at once (here: a binary that is not strait) fails
/// `lab up` at once, saying so, instead of after the 60 s readiness wait;
/// the half-made lab is removed.
#[test]
fn lab_up_fails_fast_when_an_agent_exits() {
    if !require_root("lab_up_fails_fast_when_an_agent_exits") {
        return;
    }
    let yaml = lab_yaml("t-exits", &["n1"], 24, &[]);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, yaml.as_bytes()).unwrap();
    let bins = strait_lab::run::Binaries {
        strait: "/bin/false".into(),
        cni: bins().cni,
    };
    let err = match strait_lab::run::up(f.path(), &bins) {
        Ok(_) => panic!("lab up with an agent that exits succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("exited before it was ready"), "{err}");
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("strait-t-exits-"), "{left}");
}

/// Ready means programmed: an agent whose routes reconciler has not
/// finished its first pass says so and is not ready (CI once probed a pod
/// on the other node before the route to it existed). Once ready, the
/// route is there without waiting.
#[test]
fn agent_is_not_ready_until_its_routes_are_programmed() {
    if !require_root("agent_is_not_ready_until_its_routes_are_programmed") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-notready", &["n1", "n2"], 24, &[]));
    let n1 = lab.node("n1").clone();
    let block = lab.status("n2").pod_cidr.unwrap();
    let restart = |env: &[(String, String)]| {
        let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n1)).unwrap();
        strait_lab::cmd::stop(&[pid], Duration::from_secs(3));
        // The route survives the agent (forwarding must not depend on
        // it); remove it so the next start has to program it.
        if lab.exec("n1", &["ip", "route"]).contains(&block) {
            lab.exec("n1", &["ip", "route", "del", &block]);
        }
        strait_lab::run::start_agent(&lab.st, &lab.bins, &n1, env).unwrap();
    };
    restart(&[(
        "STRAIT_AGENT_PAUSE_AT".to_string(),
        "node-routes-pass".to_string(),
    )]);
    let err = strait_lab::run::wait_agent_ready(&lab.st, &n1, Duration::from_secs(3))
        .expect_err("ready with its routes reconciler paused");
    assert!(
        err.to_string()
            .contains("first pass of node-routes under way"),
        "{err:#}"
    );
    assert!(!lab.exec("n1", &["ip", "route"]).contains(&block));

    restart(&[]);
    strait_lab::run::wait_agent_ready(&lab.st, &n1, Duration::from_secs(10)).unwrap();
    let routes = lab.exec("n1", &["ip", "route"]);
    assert!(routes.contains(&format!("{block} via")), "{routes}");
}
