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
