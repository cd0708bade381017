//! iproute2's JSON view of a namespace (`ip -j`, `tc -j`, `bridge -j`):
//! what `strait explain` asks a kernel, read-only, locally or through a
//! node's agent.

use std::process::Command;

/// Where a query runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryNs<'a> {
    /// The caller's own network namespace.
    Here,
    /// A namespace named under /run/netns (`ip -n NAME`).
    Named(&'a str),
    /// A namespace file anywhere else (`/proc/PID/ns/net`), entered with
    /// nsenter.
    Path(&'a str),
}

impl<'a> QueryNs<'a> {
    /// A netns path as a runtime gives it: one under /run/netns (or
    /// /var/run/netns) is used by name, anything else as a file.
    pub fn of_path(path: &'a str) -> QueryNs<'a> {
        for dir in ["/var/run/netns/", "/run/netns/"] {
            if let Some(name) = path.strip_prefix(dir) {
                if !name.is_empty() && !name.contains('/') {
                    return QueryNs::Named(name);
                }
            }
        }
        if path.contains('/') {
            QueryNs::Path(path)
        } else {
            QueryNs::Named(path)
        }
    }
}

/// Run `tool -j args` in `ns` and parse its JSON (an empty answer is an
/// empty list). The error carries iproute2's own message.
pub fn json(ns: QueryNs, tool: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut cmd = match ns {
        QueryNs::Here => Command::new(tool),
        QueryNs::Named(n) => {
            let mut c = Command::new(tool);
            c.args(["-n", n]);
            c
        }
        QueryNs::Path(p) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={p}")).arg(tool);
            c
        }
    };
    let out = cmd
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("run {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_str(&text).map_err(|e| format!("{tool} -j {}: {e}", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::QueryNs;

    #[test]
    fn runtime_paths_are_used_by_name_when_they_can_be() {
        assert_eq!(
            QueryNs::of_path("/var/run/netns/cni-1"),
            QueryNs::Named("cni-1")
        );
        assert_eq!(QueryNs::of_path("/run/netns/x"), QueryNs::Named("x"));
        assert_eq!(
            QueryNs::of_path("/proc/42/ns/net"),
            QueryNs::Path("/proc/42/ns/net")
        );
        assert_eq!(
            QueryNs::of_path("/run/netns/a/b"),
            QueryNs::Path("/run/netns/a/b")
        );
        assert_eq!(QueryNs::of_path("lab-pod"), QueryNs::Named("lab-pod"));
    }
}
