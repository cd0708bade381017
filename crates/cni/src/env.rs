//! The CNI environment variables, validated (spec error 4 when wrong).

use crate::types::{CniError, ErrorCode};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: HashMap<String, String>,
}

impl CniEnv {
    pub fn pod_namespace(&self) -> String {
        self.args
            .get("K8S_POD_NAMESPACE")
            .cloned()
            .unwrap_or_default()
    }
    pub fn pod_name(&self) -> String {
        self.args.get("K8S_POD_NAME").cloned().unwrap_or_default()
    }
    pub fn pod_uid(&self) -> String {
        self.args.get("K8S_POD_UID").cloned().unwrap_or_default()
    }
    /// `IP=` in CNI_ARGS (podman, host-local's convention), possibly
    /// several addresses separated by commas.
    pub fn requested_ips(&self) -> Result<Vec<std::net::IpAddr>, CniError> {
        let Some(v) = self.args.get("IP") else {
            return Ok(vec![]);
        };
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                crate::types::parse_requested_ip(s)
                    .map_err(|_| bad(format!("CNI_ARGS IP={v:?} is not a list of IP addresses")))
            })
            .collect()
    }

    /// Read the process environment. A variable that is set but not valid
    /// UTF-8 is an error naming it, not "unset".
    pub fn from_process_env() -> Result<CniEnv, CniError> {
        for name in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            utf8_var(name, std::env::var_os(name))?;
        }
        CniEnv::from_lookup(|k| std::env::var(k).ok())
    }
}

/// A variable's value as UTF-8, or error 4 naming it.
pub fn utf8_var(name: &str, v: Option<std::ffi::OsString>) -> Result<Option<String>, CniError> {
    v.map(|v| {
        v.into_string()
            .map_err(|raw| bad(format!("{name} is not valid UTF-8: {raw:?}")))
    })
    .transpose()
}

fn bad(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

/// `K=V;K=V` as in CNI_ARGS. A pair without '=' is an error.
pub fn parse_args(s: &str) -> Result<HashMap<String, String>, CniError> {
    let mut m = HashMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(bad(format!("CNI_ARGS entry {pair:?} has an empty key")));
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.contains(['/', ':'])
        && !s.chars().any(char::is_whitespace)
}

impl CniEnv {
    /// Read and validate the environment through `get` (std::env::var in the
    /// binary, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let cmd = get("CNI_COMMAND").ok_or_else(|| {
            bad(
                "CNI_COMMAND is not set; it must be one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    .into(),
            )
        })?;
        let command = match cmd.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(bad(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )))
            }
        };
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let require = |name: &str| -> Result<String, CniError> {
            match get(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ if !needs_attachment => Ok(String::new()),
                _ => Err(bad(format!("{name} must be set for {cmd}"))),
            }
        };
        let container_id = require("CNI_CONTAINERID")?;
        let ifname = require("CNI_IFNAME")?;
        // DEL may come without a netns (the sandbox is already gone).
        let netns = if matches!(command, Command::Add | Command::Check) {
            require("CNI_NETNS")?
        } else {
            get("CNI_NETNS").unwrap_or_default()
        };
        if needs_attachment && !valid_ifname(&ifname) {
            return Err(bad(format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            )));
        }
        if needs_attachment
            && !container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(format!(
                "CNI_CONTAINERID {container_id:?} may only contain letters, digits, '-', '_' and '.'"
            )));
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=p1;K8S_POD_UID=u-1",
        ),
    ];

    #[test]
    fn reads_pod_identity_from_cni_args() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            (
                e.pod_namespace().as_str(),
                e.pod_name().as_str(),
                e.pod_uid().as_str()
            ),
            ("web", "p1", "u-1")
        );
    }

    #[test]
    fn missing_or_bad_variables_are_error_4() {
        for (drop, want) in [
            ("CNI_COMMAND", "CNI_COMMAND"),
            ("CNI_NETNS", "CNI_NETNS"),
            ("CNI_IFNAME", "CNI_IFNAME"),
            ("CNI_CONTAINERID", "CNI_CONTAINERID"),
        ] {
            let v: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != drop).collect();
            let e = env(&v).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment);
            assert!(e.msg.contains(want), "{}", e.msg);
        }
        let mut v = ADD.to_vec();
        v[0] = ("CNI_COMMAND", "EXPLODE");
        assert!(env(&v).unwrap_err().msg.contains("EXPLODE"));
        let mut v = ADD.to_vec();
        v[4] = ("CNI_ARGS", "K8S_POD_NAME");
        assert!(env(&v).unwrap_err().msg.contains("KEY=VALUE"));
        let mut v = ADD.to_vec();
        v[3] = ("CNI_IFNAME", "a-very-long-interface-name");
        assert_eq!(env(&v).unwrap_err().code, ErrorCode::InvalidEnvironment);
        let mut v = ADD.to_vec();
        v[1] = ("CNI_CONTAINERID", "../../etc");
        assert_eq!(env(&v).unwrap_err().code, ErrorCode::InvalidEnvironment);
    }

    #[test]
    fn requested_ip_from_cni_args() {
        let mut v = ADD.to_vec();
        v[4] = ("CNI_ARGS", "IgnoreUnknown=1;IP=198.19.0.9");
        assert_eq!(
            env(&v).unwrap().requested_ips().unwrap(),
            vec!["198.19.0.9".parse::<std::net::IpAddr>().unwrap()]
        );
        v[4] = ("CNI_ARGS", "IP=banana");
        assert_eq!(
            env(&v).unwrap().requested_ips().unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
        assert!(env(ADD).unwrap().requested_ips().unwrap().is_empty());
    }

    #[test]
    fn non_utf8_variable_is_an_error_not_unset() {
        use std::os::unix::ffi::OsStringExt;
        let raw = std::ffi::OsString::from_vec(vec![b'I', b'P', b'=', 0xff]);
        let e = utf8_var("CNI_ARGS", Some(raw)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
        assert_eq!(utf8_var("CNI_ARGS", None).unwrap(), None);
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let v: Vec<_> = ADD
            .iter()
            .copied()
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env(&v).unwrap().netns, "");
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
    }
}
