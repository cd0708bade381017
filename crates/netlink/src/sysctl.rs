use crate::{KernelError, Result};
use std::path::PathBuf;

fn path(parts: &[&str]) -> PathBuf {
    // Parts are joined as path segments, so an interface name containing a
    // dot (a VLAN sub-interface, say) is not split the way `sysctl a.b.c` would.
    let mut p = PathBuf::from("/proc/sys");
    p.extend(parts);
    p
}

/// Write a sysctl of the calling thread's network namespace, e.g.
/// `write_sysctl(&["net", "ipv4", "ip_forward"], "1")`.
pub fn write_sysctl(parts: &[&str], value: &str) -> Result<()> {
    let p = path(parts);
    std::fs::write(&p, value).map_err(|source| KernelError::Io {
        what: format!("write {} = {value}", p.display()),
        source,
    })
}
