//! Upgrading the agent in place from the last build with map layout 1
//! (built by scripts/build-prev.sh) to this one, under live TCP streams:
//! six through a service (their conntrack entries must carry over), one
//! straight to a pod on the other node. Nothing may reset or stall, and the old layout's
//! pins are gone afterwards.

mod common;
use common::svc::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The previous build's binaries, or None (a loud skip; a failure in CI).
fn previous() -> Option<strait_lab::run::Binaries> {
    let commit = std::env::var("STRAIT_UPGRADE_FROM").unwrap_or_else(|_| "eafaae3".into());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/upgrade-from")
        .join(&commit);
    let (strait, cni) = (dir.join("strait"), dir.join("strait-cni"));
    if strait.exists() && cni.exists() {
        return Some(strait_lab::run::Binaries { strait, cni });
    }
    let msg = format!(
        "{} missing: run scripts/build-prev.sh (scripts/test.sh does)",
        dir.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPED the upgrade test: {msg} !!!\n");
    None
}

/// A request/reply stream from the client pod to `addr` until `stop`;
/// counts round trips, and those made while `upgrading`.
fn stream(
    lab: &Lab,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    upgrading: Arc<AtomicBool>,
    during: Arc<AtomicU64>,
) -> std::thread::JoinHandle<std::io::Result<(u64, String)>> {
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
        &lab.st.plan.pod("client").unwrap().netns,
    ))
    .unwrap();
    std::thread::spawn(move || {
        strait_netlink::in_netns(&ns, move || -> std::io::Result<(u64, String)> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut r = BufReader::new(s.try_clone()?);
            let (mut got, mut who) = (0u64, String::new());
            let mut line = String::new();
            while !stop.load(Ordering::SeqCst) {
                s.write_all(b"x\n")?;
                line.clear();
                r.read_line(&mut line)?;
                let name = line.split_whitespace().next().unwrap_or("").to_string();
                if who.is_empty() {
                    who = name.clone();
                }
                assert_eq!(name, who, "every reply from the same backend");
                got += 1;
                if upgrading.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok((got, who))
        })
        .unwrap()
    })
}

#[test]
fn upgrade_from_map_layout_1_under_live_streams() {
    if !require_root("upgrade_from_map_layout_1_under_live_streams") {
        return;
    }
    let Some(old) = previous() else { return };
    let y = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/services-ebpf.yaml"
    ))
    .unwrap()
    .replace("name: svc", "name: t-upgrade");
    let mut lab = Lab::up_with(&y, old);
    let pins = |node: &str| PathBuf::from(strait_model::lab::bpf_dir("t-upgrade", node));
    assert!(
        pins("node-a").join("strait_ct").exists(),
        "the old build pins layout 1 in the pin directory"
    );
    let (stop, upgrading) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let during = Arc::new(AtomicU64::new(0));
    let web = SocketAddr::new(vip(&lab, "web").into(), 80);
    let b = SocketAddr::new(pod_ip(&lab, "web-b").parse().unwrap(), 8080);
    // Six connections through the service: were their conntrack lost, each
    // next packet would pick a backend afresh, and all six keeping theirs
    // by chance has odds of 1 in 64.
    let streams: Vec<_> = [web, web, web, web, web, web, b]
        .into_iter()
        .map(|a| stream(&lab, a, stop.clone(), upgrading.clone(), during.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Node by node, as a DaemonSet rolls: the old agent stops, the new
    // one starts on the old one's pins and programs.
    let new = bins();
    upgrading.store(true, Ordering::SeqCst);
    for node in ["node-a", "node-b"] {
        let n = lab.node(node).clone();
        let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n)).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t0 = Instant::now();
        // Exited (a zombie until the lab reaps it) or gone.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        };
        while running() {
            assert!(t0.elapsed() < Duration::from_secs(10), "old agent exits");
            std::thread::sleep(Duration::from_millis(20));
        }
        strait_lab::run::start_agent(&lab.st, &new, &n, &[]).unwrap();
        // Generous: the whole suite loads the machine while BPF verifies.
        strait_lab::run::wait_agent_ready(&lab.st, &n, Duration::from_secs(30)).unwrap();
    }
    lab.bins = new;
    // The new agents finish: every host veth carries the new program, and
    // layout 1 is retired.
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in ["node-a", "node-b"] {
        while pins(node).join("strait_ct").exists() {
            assert!(Instant::now() < deadline, "{node}: layout 1 pins retired");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(strait_bpf::upgrade::maps_dir(&pins(node))
            .join("strait_ct")
            .exists());
    }
    upgrading.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    // The service connection's conntrack came along, as established.
    let ct: strait_bpf::maps::CtMap = strait_bpf::maps::open(&pins("node-a"), "strait_ct").unwrap();
    let vip = strait_bpf::maps::ip_key(vip(&lab, "web"));
    assert!(
        ct.iter()
            .map(Result::unwrap)
            .any(|(k, v)| k.daddr == vip && v.state == strait_bpf::maps::CT_ESTABLISHED),
        "the service stream's connection is tracked by the new maps"
    );

    stop.store(true, Ordering::SeqCst);
    for s in streams {
        let (got, who) = s
            .join()
            .unwrap()
            .expect("no reset, no stall: the stream kept flowing");
        assert!(
            got > 100,
            "{who}: the stream carried traffic throughout ({got} round trips)"
        );
    }
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "round trips completed during the upgrade"
    );
    let st = lab.status("node-a");
    for r in &st.reconcilers {
        assert!(r.problems.is_empty() && r.error.is_none(), "{r:?}");
    }
    let log = std::fs::read_to_string(lab.st.log_dir().join("agent-node-a.log")).unwrap();
    assert!(
        log.contains("strait_ct, strait_ct_rev:"),
        "the migration is logged"
    );
}
