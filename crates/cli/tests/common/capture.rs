//! Captures for the VLAN tests: what tcpdump sees on an interface of a lab
//! namespace while a probe runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One tagged frame seen: (VLAN id, "src > dst" without ports).
pub type Tagged = (u16, String);

/// What tcpdump (link-level headers shown) prints for `filter` on `iface`
/// of namespace `ns` while `f` runs, a line per frame.
pub fn frames(ns: &str, iface: &str, filter: &str, f: impl FnOnce()) -> Vec<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "tcpdump"])
        .args(["--immediate-mode", "-l", "-nn", "-e", "-i", iface, filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump says "listening on" once its filter is attached; a fixed
    // sleep instead missed frames on a loaded CI machine.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(20));
    if started.is_ok() {
        f();
        // Let the last frames of the exchange be printed.
        std::thread::sleep(Duration::from_millis(300));
    }
    // SAFETY: signalling our own child; ip netns exec became tcpdump.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(started.is_ok(), "tcpdump on {ns}/{iface} did not start");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// The VLAN-tagged TCP frames to or from port 8080 on `iface` of
/// namespace `ns` while `f` runs.
pub fn tagged(ns: &str, iface: &str, f: impl FnOnce()) -> Vec<Tagged> {
    frames(ns, iface, "vlan and tcp port 8080", f)
        .iter()
        .filter_map(|l| {
            let vid: u16 = l.split("vlan ").nth(1)?.split(',').next()?.parse().ok()?;
            // "... ethertype IPv4 (0x0800), 198.18.20.2.35846 > 198.18.30.16.8080: ..."
            let addrs = l.rsplit("(0x0800), ").next()?.split(':').next()?;
            let strip = |a: &str| a.rsplit_once('.').map(|x| x.0.to_string());
            let (s, d) = addrs.split_once(" > ")?;
            Some((vid, format!("{} > {}", strip(s)?, strip(d)?)))
        })
        .collect()
}
