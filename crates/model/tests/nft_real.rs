//! The nftables plans applied to the real nft, in a private network
//! namespace: a cold table, changes, removals, a table adopted from an
//! earlier agent, and ClientIP affinity surviving unrelated changes. Needs
//! root and nft; skipped loudly otherwise, and a failure under CI=true.

use std::process::{Command, Stdio};
use strait_model::nft::{parse_listing, plan, Programmed};
use strait_model::services::*;

fn root_and_nft() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let have_nft = Command::new("nft").arg("--version").output().is_ok();
    if !root || !have_nft {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: this test needs root and nft"
        );
        eprintln!("!!! SKIPPED the real-nft tests: need root and nft !!!");
        return false;
    }
    true
}

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = format!("strait-nfttest-{}-{tag}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success());
        Ns(ns)
    }

    fn nft(&self, args: &[&str], stdin: &str) -> String {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?} rejected:\n{}\n{stdin}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, prev: &Programmed, t: &ServiceTable) -> Programmed {
        let (script, next) = plan(prev, t, Some("198.18.64.0/20".parse().unwrap()));
        if !script.is_empty() {
            self.nft(&["-f", "-"], &script);
        }
        next
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn e(port: u16, proto: Proto, backends: &[&str], aff: Option<u32>, external: bool) -> ServiceEntry {
    ServiceEntry {
        id: 1,
        namespace: "d".into(),
        name: "s".into(),
        port_name: "p".into(),
        frontend: Frontend {
            ip: "198.18.64.10".parse().unwrap(),
            port,
            proto,
        },
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: ip.parse().unwrap(),
                port: 8080,
                state: BackendState::Active,
                pod: None,
                node: None,
            })
            .collect(),
        affinity_secs: aff,
        external,
        local_only: false,
    }
}

fn t(entries: Vec<ServiceEntry>) -> ServiceTable {
    ServiceTable {
        entries: entries.into_iter().map(std::sync::Arc::new).collect(),
        ..Default::default()
    }
}

const STICKY_SET: &str = "aff_c612400a_tcp_81_b_0a000001_8080";

#[test]
fn plans_apply_and_affinity_survives_unrelated_changes() {
    if !root_and_nft() {
        return;
    }
    let ns = Ns::new("incr");
    let sticky = e(81, Proto::Tcp, &["10.0.0.1", "10.0.0.2"], Some(30), true);
    let p = ns.apply(
        &Programmed::default(),
        &t(vec![
            e(80, Proto::Tcp, &["10.0.0.1", "10.0.0.2"], None, false),
            e(53, Proto::Udp, &["10.0.0.1"], None, false),
            sticky.clone(),
        ]),
    );
    // A client is stuck to 10.0.0.1 (as the datapath would record it).
    let stick = |ns: &Ns, client: &str| {
        ns.nft(
            &[
                "add",
                "element",
                "ip",
                "strait_svc",
                STICKY_SET,
                &format!("{{ {client} }}"),
            ],
            "",
        )
    };
    stick(&ns, "10.9.9.9");
    let members = |ns: &Ns| ns.nft(&["list", "set", "ip", "strait_svc", STICKY_SET], "");
    // An unrelated service goes, the UDP one gains a backend.
    let p = ns.apply(
        &p,
        &t(vec![
            e(53, Proto::Udp, &["10.0.0.1", "10.0.0.3"], None, false),
            sticky.clone(),
        ]),
    );
    assert!(
        members(&ns).contains("10.9.9.9"),
        "affinity kept: {}",
        members(&ns)
    );
    // The sticky service itself loses its other backend: the client's
    // backend stays, so does its membership.
    let p = ns.apply(
        &p,
        &t(vec![e(81, Proto::Tcp, &["10.0.0.1"], Some(30), true)]),
    );
    assert!(members(&ns).contains("10.9.9.9"), "{}", members(&ns));
    // Its timeout changes: the set is made anew (and the plan applies).
    let p = ns.apply(
        &p,
        &t(vec![e(81, Proto::Tcp, &["10.0.0.1"], Some(60), true)]),
    );
    // An agent restart: the table is adopted from the kernel's listing and
    // rewritten in place; members stay.
    let found = parse_listing(&ns.nft(&["-j", "list", "table", "ip", "strait_svc"], "")).unwrap();
    assert!(
        found.stray_chains.contains("svc_c612400a_tcp_81"),
        "{found:?}"
    );
    stick(&ns, "10.9.9.8");
    let q = ns.apply(
        &found,
        &t(vec![e(81, Proto::Tcp, &["10.0.0.1"], Some(60), true)]),
    );
    assert!(
        members(&ns).contains("10.9.9.8"),
        "affinity survives an agent restart: {}",
        members(&ns)
    );
    assert_eq!(q.services, p.services);
    // Everything goes.
    ns.apply(&q, &t(vec![]));
    let left = ns.nft(&["list", "table", "ip", "strait_svc"], "");
    assert!(!left.contains("svc_") && !left.contains("aff_"), "{left}");
}
