//! The CNI network configuration the agent installs on its node once it is
//! ready (kubelet reports the node NotReady until a config exists, so no
//! pod is wired before the agent can serve it).

use serde_json::{json, Value};

/// What goes into the conflist.
#[derive(Clone, Debug, PartialEq)]
pub struct CniConf {
    /// 1.0.0 by default: containerd 1.6 and podman 4 reject 1.1.0 results.
    pub cni_version: String,
    pub agent_socket: String,
    pub mtu: u32,
    /// Chain the reference `portmap` plugin for hostPorts.
    pub portmap: bool,
}

/// CNI versions strait can be configured with.
pub const VERSIONS: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl CniConf {
    pub fn conflist(&self) -> Result<Value, String> {
        if !VERSIONS.contains(&self.cni_version.as_str()) {
            return Err(format!(
                "cniVersion {:?} is not one strait speaks ({})",
                self.cni_version,
                VERSIONS.join(", ")
            ));
        }
        let mut plugins = vec![json!({
            "type": "strait-cni",
            "agentSocket": self.agent_socket,
            "mtu": self.mtu,
            "capabilities": {"ips": true, "portMappings": true},
        })];
        if self.portmap {
            plugins.push(
                json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}),
            );
        }
        Ok(json!({"cniVersion": self.cni_version, "name": "strait", "plugins": plugins}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_is_1_0_0_with_portmap_and_refuses_unknown_versions() {
        let mut c = CniConf {
            cni_version: "1.0.0".into(),
            agent_socket: "/run/strait/agent.sock".into(),
            mtu: 1450,
            portmap: true,
        };
        let v = c.conflist().unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "strait-cni");
        assert_eq!(v["plugins"][0]["mtu"], 1450);
        assert_eq!(v["plugins"][0]["capabilities"]["portMappings"], true);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        c.cni_version = "2.0".into();
        assert!(c.conflist().unwrap_err().contains("2.0"));
    }
}
