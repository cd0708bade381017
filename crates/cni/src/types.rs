//! CNI spec 1.1 types: network configuration, results and errors.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_AGENT_SOCKET: &str = "/run/strait/agent.sock";

/// Error codes from the CNI spec, plus strait's own (100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    /// strait: the node's pod CIDR has no free address.
    PoolExhausted = 100,
    /// strait: CHECK found the pod's network not as ADD left it.
    CheckFailed = 101,
    /// strait: the kernel refused an operation.
    Kernel = 102,
}

/// A CNI error, printed as spec JSON on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), cni_version.into());
        m.insert("code".into(), (self.code as u32).into());
        m.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            m.insert("details".into(), self.details.clone().into());
        }
        Value::Object(m)
    }
}

/// strait's network configuration (one entry of a conflist, or a .conf).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The node agent's socket.
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// MTU of the pod's interface and its host end.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` for GC.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// Capabilities the runtime fills in (`ips` when the config declares
    /// `"capabilities": {"ips": true}`, as podman does).
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// `args.cni.ips`, the conventions' other way to request an address.
    #[serde(default)]
    pub args: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Requested addresses, with or without a prefix length.
    #[serde(default)]
    pub ips: Vec<String>,
    /// hostPorts, when the config declares `"capabilities":
    /// {"portMappings": true}` (the portmap plugin later in the chain NATs
    /// them; strait must know them to hand their replies to that NAT).
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One `runtimeConfig.portMappings` entry, as runtimes send it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

fn default_mtu() -> u32 {
    1500
}

/// Compare dotted versions numerically ("0.4.0" < "1.0.0").
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

impl NetConf {
    /// Decode and validate stdin. Undecodable input is code 6; decodable
    /// input with wrong values is code 7; an unsupported version is code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::DecodeFailure,
                format!("network configuration on stdin is not valid JSON: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(CniError::new(
                ErrorCode::DecodeFailure,
                "network configuration on stdin must be a JSON object",
            ));
        }
        let conf: NetConf = serde_json::from_value(v).map_err(|e| {
            CniError::new(
                ErrorCode::DecodeFailure,
                format!("network configuration could not be decoded: {e}"),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion {:?} is not supported; use one of {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.plugin_type.trim().is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "network configuration: `type` must name the plugin (strait-cni)",
            ));
        }
        if conf.name.trim().is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "network configuration: `name` must not be empty",
            ));
        }
        if !(576..=65535).contains(&conf.mtu) {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "network configuration: `mtu` {} is outside 576..=65535",
                    conf.mtu
                ),
            ));
        }
        if !conf.agent_socket.is_absolute() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "network configuration: `agentSocket` {:?} must be an absolute path",
                    conf.agent_socket
                ),
            ));
        }
        Ok(conf)
    }

    /// The decoded prevResult, if any. Undecodable is code 6, caught before
    /// any side effect.
    pub fn prev(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|v| {
                serde_json::from_value::<CniResult>(v.clone()).map_err(|e| {
                    CniError::new(
                        ErrorCode::DecodeFailure,
                        format!("prevResult could not be decoded: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The pod's hostPorts from `runtimeConfig.portMappings`, checked.
    pub fn host_ports(&self) -> Result<Vec<strait_model::ipam::HostPort>, CniError> {
        let mut out = vec![];
        for m in &self.runtime_config.port_mappings {
            let hp = strait_model::ipam::HostPort {
                host_port: m.host_port,
                container_port: m.container_port,
                protocol: if m.protocol.is_empty() {
                    "tcp".into()
                } else {
                    m.protocol.to_ascii_lowercase()
                },
            };
            if hp.host_port == 0 || hp.container_port == 0 || hp.proto_number().is_none() {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "runtimeConfig.portMappings entry {}:{}/{}: ports must be 1-65535 and the protocol tcp, udp or sctp",
                        m.host_port, m.container_port, m.protocol
                    ),
                ));
            }
            if !out.contains(&hp) {
                out.push(hp);
            }
        }
        Ok(out)
    }

    /// Addresses the runtime asked for, from `runtimeConfig.ips` or
    /// `args.cni.ips` (prefix lengths ignored: pods get a /32 or /128).
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let mut raw: Vec<String> = self.runtime_config.ips.clone();
        if let Some(ips) = self
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
        {
            let list = ips.as_array().ok_or_else(|| {
                CniError::new(ErrorCode::InvalidConfig, "args.cni.ips must be a list")
            })?;
            for v in list {
                raw.push(
                    v.as_str()
                        .ok_or_else(|| {
                            CniError::new(
                                ErrorCode::InvalidConfig,
                                format!("args.cni.ips entry {v} is not a string"),
                            )
                        })?
                        .to_string(),
                );
            }
        }
        let mut out = vec![];
        for s in raw {
            out.push(parse_requested_ip(&s)?);
        }
        out.dedup();
        Ok(out)
    }
}

/// "198.19.0.5" or "198.19.0.5/24".
pub fn parse_requested_ip(s: &str) -> Result<IpAddr, CniError> {
    let addr = s.split_once('/').map(|(a, _)| a).unwrap_or(s);
    addr.trim().parse().map_err(|_| {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!("requested address {s:?} is not an IP address"),
        )
    })
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IpConfig {
    /// Only for cniVersion < 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub dns: Value,
}

impl CniResult {
    /// Append `ours` to a previous plugin's result (strait not first in the
    /// chain), renumbering our interface indexes.
    pub fn merged_onto(self, prev: Option<CniResult>) -> CniResult {
        let Some(mut base) = prev else { return self };
        let offset = base.interfaces.len();
        base.interfaces.extend(self.interfaces);
        base.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        base.routes.extend(self.routes);
        base.cni_version = self.cni_version;
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn parses_minimal_config_with_defaults() {
        let c = conf(r#"{"cniVersion":"1.1.0","name":"k8s","type":"strait-cni"}"#).unwrap();
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn error_codes_follow_the_spec() {
        assert_eq!(conf("{nope").unwrap_err().code, ErrorCode::DecodeFailure);
        assert_eq!(conf("[1]").unwrap_err().code, ErrorCode::DecodeFailure);
        assert_eq!(
            conf(r#"{"cniVersion":"1.1.0","type":"x"}"#)
                .unwrap_err()
                .code,
            ErrorCode::DecodeFailure
        );
        let e = conf(r#"{"cniVersion":"9.9.9","name":"n","type":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e.msg.contains("1.1.0"));
        let e = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"x","mtu":10}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("mtu"));
        let e = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"x","agentSocket":"rel.sock"}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        let e = conf(r#"{"cniVersion":"1.0.0","name":" ","type":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
    }

    #[test]
    fn error_json_has_code_msg_and_optional_details() {
        let e = CniError::new(ErrorCode::TryAgainLater, "agent down");
        assert_eq!(
            e.to_json("1.1.0"),
            serde_json::json!({"cniVersion":"1.1.0","code":11,"msg":"agent down"})
        );
        let e = e.with_details("socket /x");
        assert_eq!(e.to_json("1.1.0")["details"], "socket /x");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "1.1.0"));
        assert!(version_at_least("1.10.0", "1.9.0"));
        assert!(!version_at_least("0.4.0", "1.0.0"));
    }

    #[test]
    fn merges_onto_previous_result() {
        let prev = serde_json::json!({
            "cniVersion":"1.0.0",
            "interfaces":[{"name":"x"}],
            "ips":[{"address":"10.0.0.2/24","interface":0}],
            "dns":{}
        });
        let ours = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.1.0.5/32".into(),
                gateway: None,
                interface: Some(0),
            }],
            routes: vec![],
            dns: Value::Null,
        };
        let c = conf(
            &serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"x","prevResult": prev})
                .to_string(),
        )
        .unwrap();
        let m = ours.merged_onto(c.prev().unwrap());
        assert_eq!(m.interfaces.len(), 2);
        assert_eq!(m.ips[1].interface, Some(1));
        let bad = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"x","prevResult":3}"#).unwrap();
        assert_eq!(bad.prev().unwrap_err().code, ErrorCode::DecodeFailure);
    }

    #[test]
    fn empty_type_is_invalid() {
        let e = conf(r#"{"cniVersion":"1.0.0","name":"n","type":""}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("type"), "{}", e.msg);
    }

    #[test]
    fn requested_ips_from_runtime_config_and_args() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"x","runtimeConfig":{"ips":["198.19.0.7/24"]},"args":{"cni":{"ips":["198.19.0.7"]}}}"#).unwrap();
        assert_eq!(
            c.requested_ips().unwrap(),
            vec!["198.19.0.7".parse::<IpAddr>().unwrap()]
        );
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"x","runtimeConfig":{"ips":["nope"]}}"#,
        )
        .unwrap();
        assert_eq!(
            c.requested_ips().unwrap_err().code,
            ErrorCode::InvalidConfig
        );
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"x","args":{"cni":{"ips":"x"}}}"#)
            .unwrap();
        assert_eq!(
            c.requested_ips().unwrap_err().code,
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn gc_attachments_decode() {
        let c = conf(r#"{"cniVersion":"1.1.0","name":"n","type":"x","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }
}
