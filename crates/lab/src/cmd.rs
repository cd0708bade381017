//! Small wrappers around the commands the lab runs (iproute2, the plugin).

use anyhow::{bail, Context};
use std::process::{Command, Stdio};

/// Run a command; fail with its stderr when it fails.
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {prog}: is it installed?"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// Network namespaces whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The network namespaces of lab `lab`: those named with its prefix,
/// except those of another lab that is up whose longer name extends it
/// (lab `t-tor`'s prefix `strait-t-tor-` also matches lab `t-tor-ebpf`'s
/// namespaces; cleaning one must not take the other down).
pub fn lab_netns(lab: &str) -> Vec<String> {
    let others = crate::state::list();
    netns_with_prefix(&strait_model::lab::netns_prefix(lab))
        .into_iter()
        .filter(|ns| !of_longer_lab(ns, lab, &others))
        .collect()
}

/// Whether `ns` belongs to one of `others` whose name extends `lab`'s.
fn of_longer_lab(ns: &str, lab: &str, others: &[String]) -> bool {
    others.iter().any(|o| {
        o.len() > lab.len()
            && o.starts_with(lab)
            && ns.starts_with(&strait_model::lab::netns_prefix(o))
    })
}

/// Pids of processes running in a named network namespace.
pub fn netns_pids(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn alive(pid: i32) -> bool {
    // Zombies count as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop(pids: &[i32], grace: std::time::Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for &p in pids {
        if alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_labs_namespaces_exclude_those_of_a_lab_whose_name_extends_it() {
        let others = vec!["t-tor".to_string(), "t-tor-ebpf".to_string()];
        assert!(super::of_longer_lab(
            "strait-t-tor-ebpf-fabric",
            "t-tor",
            &others
        ));
        assert!(!super::of_longer_lab(
            "strait-t-tor-fabric",
            "t-tor",
            &others
        ));
        assert!(!super::of_longer_lab(
            "strait-t-tor-ebpf-fabric",
            "t-tor-ebpf",
            &others
        ));
        // Once the longer lab is gone, its leftovers are the shorter one's
        // to clean (nothing else claims them).
        assert!(!super::of_longer_lab(
            "strait-t-tor-ebpf-fabric",
            "t-tor",
            &others[..1]
        ));
    }
}
