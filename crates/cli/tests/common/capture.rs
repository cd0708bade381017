//! Captures for the VLAN tests: what tcpdump sees on an interface of a lab
//! namespace while a probe runs.

use std::process::{Command, Stdio};
use std::time::Duration;

/// One tagged frame seen: (VLAN id, "src > dst" without ports).
pub type Tagged = (u16, String);

/// What tcpdump (link-level headers shown) prints for `filter` on `iface`
/// of namespace `ns` while `f` runs, a line per frame.
pub fn frames(ns: &str, iface: &str, filter: &str, f: impl FnOnce()) -> Vec<String> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "4", "tcpdump"])
        .args(["--immediate-mode", "-l", "-nn", "-e", "-i", iface, filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    f();
    let out = child.wait_with_output().unwrap();
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
