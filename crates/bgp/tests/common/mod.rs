//! Helpers the BGP integration tests share.

use std::process::Command;
use std::time::{Duration, Instant};

/// Root and bird are here; a skip is loud, and a failure under CI=true.
pub fn ready() -> bool {
    let root = nix_uid_is_root();
    let bird = Command::new("bird").arg("--version").output().is_ok();
    if !root || !bird {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: the BIRD interop tests need root and bird (scripts/setup.sh installs bird2)"
        );
        eprintln!("!!! SKIPPED the BIRD interop tests: need root and bird !!!");
        return false;
    }
    true
}

fn nix_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Run a command; its stdout, or a panic with its stderr.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` every 50 ms until it holds, or panic naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a speaker started with `cfg` inside namespace `ns` (on a thread of
/// its own, whose runtime workers are in `ns` too), hand it and its FIB
/// changes to `f`, then stop it.
pub fn with_speaker_in<T: Send>(
    ns: &str,
    cfg: strait_bgp::speaker::SpeakerConfig,
    f: impl FnOnce(
            &strait_bgp::speaker::Speaker,
            &mut tokio::sync::mpsc::UnboundedReceiver<strait_bgp::rib::FibChange>,
        ) -> T
        + Send,
) -> T {
    let ns = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // Worker threads are spawned from this one: they are in ns.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let sp = rt
                .block_on(strait_bgp::speaker::Speaker::start(cfg, tx))
                .unwrap();
            let out = f(&sp, &mut rx);
            drop(sp);
            rt.shutdown_timeout(Duration::from_secs(2));
            out
        })
        .join()
        .unwrap()
    })
}
