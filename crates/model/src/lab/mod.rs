//! The lab file and its address plan. A lab file is a `kind: Lab` document
//! (nodes, datapath mode, address plan) followed by ordinary Kubernetes
//! manifests. Resolving it gives every node its fabric IP and pod CIDR and
//! every pod its node and network namespace, before anything is created.

use crate::cluster::{parse_manifests, ClusterObject, ManifestError};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const LAB_API_VERSION: &str = "strait.dev/v1alpha1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kernel routing: host routes per pod, a route per node. Lab files
    /// may call it `kernel` (the node-local datapath's name).
    #[default]
    #[serde(alias = "kernel")]
    Routed,
    /// Routed, plus the eBPF fast path (Terway DataPath V2).
    Ebpf,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Routed => f.write_str("kernel"),
            Mode::Ebpf => f.write_str("ebpf"),
        }
    }
}

/// Where the lab's cluster state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ControlPlane {
    /// A directory of manifests the agents watch (fast; the default).
    #[default]
    #[serde(rename = "files")]
    Files,
    /// A real etcd and kube-apiserver in a control-plane namespace on the
    /// fabric; the lab creates every object through the API and the agents
    /// watch it.
    #[serde(rename = "kube-apiserver")]
    KubeApiserver,
    /// strait's etcd datastore with no apiserver (Calico's etcd mode): an
    /// etcd in the control-plane namespace, objects as JSON under
    /// `/strait/v1/`.
    #[serde(rename = "etcd")]
    Etcd,
}

impl std::fmt::Display for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlPlane::Files => f.write_str("files"),
            ControlPlane::KubeApiserver => f.write_str("kube-apiserver"),
            ControlPlane::Etcd => f.write_str("etcd"),
        }
    }
}

/// How pod traffic crosses between the lab's nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CrossNodeMode {
    /// A route per node's pod CIDR via its node IP.
    #[default]
    Routed,
    /// Hybridnet's VXLAN overlay (`eth0.vxlan20`, tables 40000).
    Vxlan,
    /// Calico's IP-in-IP overlay, done in eBPF (`eth0.ipip` stands in for
    /// tunl0).
    Ipip,
    /// Calico's BGP mode: nodes exchange pod routes over a BGP full mesh
    /// and forward natively.
    Bgp,
    /// Hybridnet's BGP mode: nodes in different subnets (racks) announce
    /// their pods to their top-of-rack router and send pod traffic to it
    /// through table 10001.
    #[serde(rename = "bgp-tor")]
    BgpTor,
    /// Hybridnet's VLAN mode: pods of underlay subnets sit on the
    /// datacenter's VLANs, tagged in eBPF; a gateway routes between VLANs.
    Vlan,
    /// Bifrost: each pod's eth0 is a macvlan on its VLAN's port (tagged in
    /// eBPF); the switch and the VLAN's gateway carry all pod traffic, a
    /// service veth carries service traffic through the host.
    Macvlan,
    /// Terway's ENI multi-IP: pods hold secondary addresses of their
    /// node's ENIs, and the lab's VPC (`cloud:`) routes them.
    Eni,
}

impl CrossNodeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CrossNodeMode::Routed => "routed",
            CrossNodeMode::Vxlan => "vxlan",
            CrossNodeMode::Ipip => "ipip",
            CrossNodeMode::Bgp => "bgp",
            CrossNodeMode::BgpTor => "bgp-tor",
            CrossNodeMode::Vlan => "vlan",
            CrossNodeMode::Macvlan => "macvlan",
            CrossNodeMode::Eni => "eni",
        }
    }

    /// Bytes of encapsulation a pod's packets carry across nodes.
    pub fn overhead(self) -> u32 {
        match self {
            CrossNodeMode::Routed
            | CrossNodeMode::Bgp
            | CrossNodeMode::BgpTor
            | CrossNodeMode::Vlan
            | CrossNodeMode::Macvlan
            | CrossNodeMode::Eni => 0,
            CrossNodeMode::Vxlan => crate::overlay::VXLAN_OVERHEAD_V4,
            CrossNodeMode::Ipip => crate::overlay::IPIP_OVERHEAD_V4,
        }
    }
}

impl std::fmt::Display for CrossNodeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSpec {
    /// The node-local datapath under its older name (`routed` = kernel).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The node-local datapath: `kernel` or `ebpf`.
    #[serde(default)]
    pub datapath: Option<Mode>,
    /// Cross-node transport (the node-local datapath is `datapath`).
    #[serde(default)]
    pub cross_node: CrossNodeMode,
    #[serde(default)]
    pub control_plane: ControlPlane,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub address_plan: AddressPlan,
    pub nodes: Vec<LabNodeSpec>,
    /// Top-of-rack topology (crossNode bgp-tor): each rack a subnet behind
    /// a router running BIRD 2 or FRR. Without racks, nodes share the
    /// fabric.
    #[serde(default)]
    pub racks: Vec<crate::racks::RackSpec>,
    /// Underlay subnets (crossNode vlan): each a VLAN with a CIDR and a
    /// gateway; the lab makes the gateway and an IPPool per subnet.
    #[serde(default)]
    pub underlay: Vec<crate::underlay::LabSubnet>,
    /// ebpf mode: take the older host-veth path (the seed's "Aliyun2"
    /// column) even where the kernel has bpf_redirect_peer.
    #[serde(default)]
    pub no_redirect_peer: bool,
    /// Seconds a released pod address rests before reuse (the agents'
    /// --ip-cooldown-secs); absent: the agent's default.
    #[serde(default)]
    pub ip_cooldown_secs: Option<u64>,
    /// A cloud VPC around the nodes (Terway's ENI modes): vSwitches,
    /// security groups, ENI quotas. The lab runs its emulator.
    #[serde(default)]
    pub cloud: Option<crate::cloud::VpcSpec>,
    /// crossNode eni: the agents' warm pool (default: the first vSwitch,
    /// the first security group, 2 to 5 idle addresses).
    #[serde(default)]
    pub eni_pool: Option<crate::cloud::eniip::PoolConfig>,
    /// Each agent serves Prometheus metrics on its node's address at this
    /// port (`--metrics-addr`); absent: off, as is the lab's default.
    #[serde(default)]
    pub metrics_port: Option<u16>,
    /// Each agent answers `strait explain` from other nodes on its node's
    /// address at this port (`--explain-addr`); absent: off.
    #[serde(default)]
    pub explain_port: Option<u16>,
}

fn default_mtu() -> u32 {
    1500
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressPlan {
    /// The L2 segment joining the nodes; node i gets host address i+1.
    pub fabric: Ipv4Net,
    /// Cluster pod CIDR, split into one block per node.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    pub node_mask_size: u8,
    /// Where Services get their cluster IPs.
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
}

fn default_service_cidr() -> Ipv4Net {
    "198.18.64.0/20".parse().unwrap()
}

impl Default for AddressPlan {
    fn default() -> Self {
        AddressPlan {
            fabric: "198.18.0.0/24".parse().unwrap(),
            pod_cidr: "198.19.0.0/16".parse().unwrap(),
            node_mask_size: 24,
            service_cidr: default_service_cidr(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabNodeSpec {
    pub name: String,
    /// The Node object's labels (BGPPeer and IPPool selectors match them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The Node object's annotations (e.g. a route reflector's cluster id).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The rack the node sits in (when the lab has racks).
    #[serde(default)]
    pub rack: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LabPlan {
    pub name: String,
    pub mode: Mode,
    #[serde(default)]
    pub cross_node: CrossNodeMode,
    #[serde(default)]
    pub control_plane: ControlPlane,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
    #[serde(default)]
    pub services: Vec<ServicePlan>,
    #[serde(default)]
    pub no_redirect_peer: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_cooldown_secs: Option<u64>,
    /// Agents serve /metrics on their node's address at this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
    /// Agents answer other nodes' `strait explain` at this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain_port: Option<u16>,
    pub mtu: u32,
    pub fabric: Ipv4Net,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub racks: Vec<crate::racks::RackPlan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub underlay: Vec<crate::underlay::LabSubnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<crate::cloud::VpcSpec>,
    /// crossNode eni: what the agents' warm pool asks of the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_pool: Option<crate::cloud::eniip::PoolConfig>,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
}

impl LabPlan {
    /// The pods' MTU: the fabric's, less the cross-node encapsulation.
    pub fn pod_mtu(&self) -> u32 {
        self.mtu - self.cross_node.overhead()
    }

    /// The node's rack, if the lab has racks.
    pub fn rack_of(&self, n: &NodePlan) -> Option<&crate::racks::RackPlan> {
        let r = n.rack.as_deref()?;
        self.racks.iter().find(|x| x.name == r)
    }

    /// The L3 subnet of the node's eth0: its rack's, or the fabric.
    pub fn node_subnet(&self, n: &NodePlan) -> Ipv4Net {
        self.rack_of(n).map(|r| r.subnet).unwrap_or(self.fabric)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: IpNet,
    pub netns: String,
    /// Name of the node's link inside the fabric namespace.
    pub fabric_port: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The node's rack (its subnet and gateway are the rack's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
}

/// The port every lab pod's echo server answers on.
pub const LAB_ECHO_PORT: u16 = 8080;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub netns: String,
    /// Container ports the pod declares: its echo server answers on each
    /// (TCP and UDP), besides the lab's own port.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab file: {0}")]
    Manifest(#[from] ManifestError),
    #[error("lab file: the first document must be `apiVersion: {LAB_API_VERSION}`, `kind: Lab`")]
    NoLabDocument,
    #[error("lab file: invalid Lab spec: {0}")]
    Spec(String),
    #[error("lab file: {0}")]
    Invalid(String),
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A client outside the cluster, on the fabric.
/// The control-plane namespace (etcd and kube-apiserver) of a lab.
pub fn control_plane_netns(lab: &str) -> String {
    format!("strait-{lab}-cp")
}

pub fn external_netns(lab: &str) -> String {
    format!("strait-{lab}-external")
}

pub fn fabric_netns(lab: &str) -> String {
    format!("strait-{lab}-fabric")
}

pub fn node_netns(lab: &str, node: &str) -> String {
    format!("strait-{lab}-node-{node}")
}

pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    format!("strait-{lab}-pod-{namespace}-{pod}")
}

/// Prefix shared by every namespace of a lab: what `down` and `up` clean.
/// Where a lab node's agent pins its BPF maps.
pub fn bpf_dir(lab: &str, node: &str) -> String {
    format!("{}/{node}", lab_bpf_dir(lab))
}

pub fn lab_bpf_dir(lab: &str) -> String {
    format!("/sys/fs/bpf/strait-lab/{lab}")
}

pub fn netns_prefix(lab: &str) -> String {
    format!("strait-{lab}-")
}

/// A lab file split into its Lab document and the Kubernetes manifests.
pub struct LabFile {
    pub name: String,
    pub spec: LabSpec,
    pub objects: Vec<ClusterObject>,
}

pub fn parse_lab_file(text: &str) -> Result<LabFile, LabError> {
    let mut docs = serde_yaml::Deserializer::from_str(text);
    let first = docs.next().ok_or(LabError::NoLabDocument)?;
    let v = serde_yaml::Value::deserialize(first).map_err(|e| LabError::Spec(e.to_string()))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("Lab")
        || v.get("apiVersion").and_then(|k| k.as_str()) != Some(LAB_API_VERSION)
    {
        return Err(LabError::NoLabDocument);
    }
    let name = v
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| LabError::Spec("metadata.name is required".into()))?
        .to_string();
    let spec_v = v
        .get("spec")
        .cloned()
        .ok_or_else(|| LabError::Spec("spec is required".into()))?;
    let spec: LabSpec =
        serde_yaml::from_value(spec_v).map_err(|e| LabError::Spec(e.to_string()))?;
    // The rest of the file is ordinary manifests: re-serialise the remaining
    // documents and hand them to the manifest parser, which reports indexes.
    let mut rest = String::new();
    for doc in docs {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| LabError::Spec(e.to_string()))?;
        if v.is_null() {
            continue;
        }
        rest.push_str("---\n");
        rest.push_str(&serde_yaml::to_string(&v).map_err(|e| LabError::Spec(e.to_string()))?);
    }
    let objects = parse_manifests(&rest)?;
    Ok(LabFile {
        name,
        spec,
        objects,
    })
}

mod plan;
#[cfg(test)]
mod tests;
