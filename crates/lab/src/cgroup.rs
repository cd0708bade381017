//! Each lab node has a cgroup (v2): its processes reach services through
//! the socket-level load balancing the node's agent attaches there, as a
//! real node's processes would.

use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts), if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fs) = (f.next()?, f.next()?, f.next()?);
        (fs == "cgroup2").then(|| PathBuf::from(dir))
    })
}

pub fn lab_cgroup(lab: &str) -> Option<PathBuf> {
    Some(cgroup2_root()?.join("strait-lab").join(lab))
}

pub fn node_cgroup(lab: &str, node: &str) -> Option<PathBuf> {
    Some(lab_cgroup(lab)?.join(node))
}

/// Move a process into a cgroup.
pub fn join(cgroup: &Path, pid: u32) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
}

/// Remove the lab's cgroups (their processes must be gone).
pub fn remove_lab(lab: &str) -> Vec<String> {
    let mut problems = vec![];
    let Some(dir) = lab_cgroup(lab) else {
        return problems;
    };
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            if let Err(err) = std::fs::remove_dir(e.path()) {
                problems.push(format!("remove cgroup {}: {err}", e.path().display()));
            }
        }
    }
    if dir.exists() {
        if let Err(err) = std::fs::remove_dir(&dir) {
            problems.push(format!("remove cgroup {}: {err}", dir.display()));
        }
    }
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent); // only if empty
    }
    problems
}
