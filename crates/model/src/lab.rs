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
        }
    }

    /// Bytes of encapsulation a pod's packets carry across nodes.
    pub fn overhead(self) -> u32 {
        match self {
            CrossNodeMode::Routed
            | CrossNodeMode::Bgp
            | CrossNodeMode::BgpTor
            | CrossNodeMode::Vlan
            | CrossNodeMode::Macvlan => 0,
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
    /// A cloud VPC around the nodes (Terway's ENI modes): vSwitches,
    /// security groups, ENI quotas. The lab runs its emulator.
    #[serde(default)]
    pub cloud: Option<crate::cloud::VpcSpec>,
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
    pub mtu: u32,
    pub fabric: Ipv4Net,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub racks: Vec<crate::racks::RackPlan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub underlay: Vec<crate::underlay::LabSubnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<crate::cloud::VpcSpec>,
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

impl LabFile {
    /// Check the file and compute the address plan.
    pub fn plan(&self) -> Result<LabPlan, LabError> {
        let name = &self.name;
        if !valid_name(name, 16) {
            return Err(LabError::Invalid(format!(
                "lab name {name:?} must be 1-16 characters of a-z, 0-9 and '-'"
            )));
        }
        let spec = &self.spec;
        if spec.nodes.is_empty() {
            return Err(LabError::Invalid(
                "spec.nodes is empty: a lab needs at least one node".into(),
            ));
        }
        if !(576..=9000).contains(&spec.mtu) {
            return Err(LabError::Invalid(format!(
                "spec.mtu {} is outside 576..=9000",
                spec.mtu
            )));
        }
        let mode = match (spec.mode, spec.datapath) {
            (Some(m), Some(d)) if m != d => {
                return Err(LabError::Invalid(format!(
                    "spec.mode ({m}) and spec.datapath ({d}) disagree; keep spec.datapath (kernel or ebpf) and drop spec.mode"
                )))
            }
            (m, d) => d.or(m).unwrap_or_default(),
        };
        let ap = &spec.address_plan;
        let fabric_hosts = ap.fabric.hosts().count();
        if spec.nodes.len() > fabric_hosts.saturating_sub(8) {
            return Err(LabError::Invalid(format!(
                "fabric {} has room for {} nodes, the lab has {} (the top 8 addresses are kept for external clients)",
                ap.fabric,
                fabric_hosts.saturating_sub(8),
                spec.nodes.len()
            )));
        }
        let blocks: Vec<Ipv4Net> = ap
            .pod_cidr
            .subnets(ap.node_mask_size)
            .map_err(|_| {
                LabError::Invalid(format!(
                    "nodeMaskSize /{} must be at least the pod CIDR's /{} and at most /30",
                    ap.node_mask_size,
                    ap.pod_cidr.prefix_len()
                ))
            })?
            .take(spec.nodes.len())
            .collect();
        if ap.node_mask_size > 30 {
            return Err(LabError::Invalid(format!(
                "nodeMaskSize /{} leaves no pod addresses",
                ap.node_mask_size
            )));
        }
        if blocks.len() < spec.nodes.len() {
            return Err(LabError::Invalid(format!(
                "pod CIDR {} has only {} /{} blocks for {} nodes",
                ap.pod_cidr,
                blocks.len(),
                ap.node_mask_size,
                spec.nodes.len()
            )));
        }
        if ap.fabric.contains(&ap.pod_cidr.network()) || ap.pod_cidr.contains(&ap.fabric.network())
        {
            return Err(LabError::Invalid(format!(
                "fabric {} and pod CIDR {} overlap",
                ap.fabric, ap.pod_cidr
            )));
        }
        let racks = self.plan_racks()?;
        let mut per_rack: BTreeMap<&str, usize> = BTreeMap::new();
        let mut nodes = vec![];
        for (i, n) in spec.nodes.iter().enumerate() {
            if !valid_name(&n.name, 20) {
                return Err(LabError::Invalid(format!(
                    "node name {:?} must be 1-20 characters of a-z, 0-9 and '-'",
                    n.name
                )));
            }
            if nodes.iter().any(|x: &NodePlan| x.name == n.name) {
                return Err(LabError::Invalid(format!(
                    "node {:?} is listed twice",
                    n.name
                )));
            }
            let mut labels = n.labels.clone();
            let ip = match (&n.rack, racks.is_empty()) {
                (None, true) => ap.fabric.hosts().nth(i).expect("checked above"),
                (None, false) => {
                    return Err(LabError::Invalid(format!(
                        "node {}: the lab has racks; give it one (rack: {})",
                        n.name, racks[0].name
                    )))
                }
                (Some(r), _) => {
                    let rack = racks.iter().find(|x| &x.name == r).ok_or_else(|| {
                        LabError::Invalid(format!(
                            "node {}: rack {r:?} is not in spec.racks ({})",
                            n.name,
                            racks
                                .iter()
                                .map(|x| x.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    let k = per_rack.entry(r).or_default();
                    *k += 1;
                    labels.insert(crate::racks::RACK_LABEL.into(), r.clone());
                    crate::racks::node_address(rack, *k - 1).ok_or_else(|| {
                        LabError::Invalid(format!(
                            "rack {r}: subnet {} has no room for another node",
                            rack.subnet
                        ))
                    })?
                }
            };
            nodes.push(NodePlan {
                name: n.name.clone(),
                ip,
                pod_cidr: IpNet::V4(blocks[i]),
                netns: node_netns(name, &n.name),
                fabric_port: format!("n{i}"),
                labels,
                annotations: n.annotations.clone(),
                rack: n.rack.clone(),
            });
        }
        let mut pods: Vec<PodPlan> = vec![];
        let mut next = 0usize;
        for obj in &self.objects {
            let ClusterObject::Pod(p) = obj else { continue };
            let pod = plan_pod(name, &nodes, &pods, &mut next, p)?;
            pods.push(pod);
        }
        let services = plan_services(ap.service_cidr, &[], &self.objects)?;
        Ok(LabPlan {
            name: name.clone(),
            mode,
            cross_node: spec.cross_node,
            control_plane: spec.control_plane,
            service_cidr: ap.service_cidr,
            services,
            no_redirect_peer: spec.no_redirect_peer,
            mtu: spec.mtu,
            fabric: ap.fabric,
            racks,
            underlay: self.plan_underlay()?,
            cloud: self.plan_cloud()?,
            nodes,
            pods,
        })
    }

    /// The VPC, checked on its own and against the address plan.
    fn plan_cloud(&self) -> Result<Option<crate::cloud::VpcSpec>, LabError> {
        let Some(c) = &self.spec.cloud else {
            return Ok(None);
        };
        c.check().map_err(LabError::Invalid)?;
        let ap = &self.spec.address_plan;
        let taken = [
            ("fabric", IpNet::V4(ap.fabric)),
            ("pod CIDR", IpNet::V4(ap.pod_cidr)),
            ("service CIDR", IpNet::V4(ap.service_cidr)),
        ];
        for v in &c.vswitches {
            let under = self
                .spec
                .underlay
                .iter()
                .map(|u| ("underlay subnet", IpNet::V4(u.cidr)));
            for (what, net) in taken.iter().copied().chain(under) {
                if net.contains(&v.cidr.network()) || v.cidr.contains(&net.network()) {
                    return Err(LabError::Invalid(format!(
                        "vSwitch {} ({}) overlaps the {what} {net}",
                        v.id, v.cidr
                    )));
                }
            }
        }
        Ok(Some(c.clone()))
    }

    /// The underlay subnets, checked against the cross-node mode and the
    /// address plan.
    fn plan_underlay(&self) -> Result<Vec<crate::underlay::LabSubnet>, LabError> {
        let spec = &self.spec;
        let ap = &spec.address_plan;
        let l2 = matches!(
            spec.cross_node,
            CrossNodeMode::Vlan | CrossNodeMode::Macvlan
        );
        match (spec.underlay.is_empty(), l2) {
            (true, true) => {
                return Err(LabError::Invalid(format!(
                    "crossNode {} needs spec.underlay (subnets with a vlan, a cidr and a gateway)",
                    spec.cross_node
                )))
            }
            (false, true) | (true, false) => {}
            (false, false) => {
                return Err(LabError::Invalid(format!(
                    "spec.underlay needs crossNode vlan or macvlan; crossNode is {}",
                    spec.cross_node
                )))
            }
        }
        crate::underlay::check_lab_subnets(
            &spec.underlay,
            &[
                ("fabric", IpNet::V4(ap.fabric)),
                ("pod CIDR", IpNet::V4(ap.pod_cidr)),
                ("service CIDR", IpNet::V4(ap.service_cidr)),
            ],
        )
        .map_err(LabError::Invalid)?;
        Ok(spec.underlay.clone())
    }

    /// The racks, checked against the cross-node mode and the address plan.
    fn plan_racks(&self) -> Result<Vec<crate::racks::RackPlan>, LabError> {
        let spec = &self.spec;
        let ap = &spec.address_plan;
        match (spec.racks.is_empty(), spec.cross_node) {
            (true, CrossNodeMode::BgpTor) => {
                return Err(LabError::Invalid(
                    "crossNode bgp-tor needs spec.racks (each a subnet with a top-of-rack router)"
                        .into(),
                ))
            }
            (false, CrossNodeMode::BgpTor) | (true, _) => {}
            (false, other) => {
                return Err(LabError::Invalid(format!(
                    "spec.racks needs crossNode bgp-tor (nodes in different subnets reach each other through their racks' routers); crossNode is {other}"
                )))
            }
        }
        crate::racks::plan_racks(
            &self.name,
            &spec.racks,
            ap.fabric,
            &[
                ("pod CIDR", IpNet::V4(ap.pod_cidr)),
                ("service CIDR", IpNet::V4(ap.service_cidr)),
            ],
        )
        .map_err(LabError::Invalid)
    }
}

/// Cluster IPs for the Services among `objects`: as written (inside the
/// service CIDR), or the next free one; `existing` are taken already.
fn plan_services(
    service_cidr: Ipv4Net,
    existing: &[ServicePlan],
    objects: &[ClusterObject],
) -> Result<Vec<ServicePlan>, LabError> {
    let mut out: Vec<ServicePlan> = vec![];
    let mut taken: Vec<Ipv4Addr> = existing.iter().map(|s| s.cluster_ip).collect();
    let svcs: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    for s in &svcs {
        if let Some(ip) = s
            .spec
            .as_ref()
            .and_then(|sp| sp.cluster_ip.as_deref())
            .filter(|c| *c != "None" && !c.is_empty())
        {
            let name = s.metadata.name.clone().unwrap_or_default();
            let ip: Ipv4Addr = ip.parse().map_err(|_| {
                LabError::Invalid(format!(
                    "service {name}: clusterIP {ip:?} is not an IPv4 address"
                ))
            })?;
            if !service_cidr.contains(&ip) {
                return Err(LabError::Invalid(format!(
                    "service {name}: clusterIP {ip} is outside the service CIDR {}",
                    service_cidr
                )));
            }
            if taken.contains(&ip) {
                return Err(LabError::Invalid(format!(
                    "service {name}: clusterIP {ip} is used twice"
                )));
            }
            taken.push(ip);
        }
    }
    let mut free = service_cidr
        .hosts()
        .skip(9)
        .filter(|ip| !taken.contains(ip));
    for s in svcs {
        let name = s.metadata.name.clone().unwrap_or_default();
        let namespace = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if !valid_name(&name, 40) {
            return Err(LabError::Invalid(format!(
                "service {name:?}: names must be lowercase a-z, 0-9 and '-'"
            )));
        }
        let given = s.spec.as_ref().and_then(|sp| sp.cluster_ip.clone());
        if given.as_deref() == Some("None") {
            continue;
        }
        let cluster_ip = match given.and_then(|c| c.parse().ok()) {
            Some(ip) => ip,
            None => free.next().ok_or_else(|| {
                LabError::Invalid(format!("service CIDR {} is full", service_cidr))
            })?,
        };
        out.push(ServicePlan {
            namespace,
            name,
            cluster_ip,
        });
    }
    Ok(out)
}

/// Plan one pod: its node (nodeName, or the next node round robin), its
/// namespace, its uid.
fn plan_pod(
    lab: &str,
    nodes: &[NodePlan],
    pods: &[PodPlan],
    next: &mut usize,
    p: &k8s_openapi::api::core::v1::Pod,
) -> Result<PodPlan, LabError> {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let ns = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if !valid_name(&pname, 30) || !valid_name(&ns, 20) {
        return Err(LabError::Invalid(format!(
            "pod {ns}/{pname}: names must be lowercase a-z, 0-9 and '-' (pod up to 30, namespace up to 20 characters)"
        )));
    }
    if pods.iter().any(|x| x.name == pname && x.namespace == ns) {
        return Err(LabError::Invalid(format!(
            "pod {ns}/{pname} is defined twice"
        )));
    }
    let node = match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
        Some(n) => {
            if !nodes.iter().any(|x| x.name == n) {
                return Err(LabError::Invalid(format!(
                    "pod {ns}/{pname} has nodeName {n:?}, which is not a lab node ({})",
                    nodes
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            n
        }
        None => {
            let n = nodes[*next % nodes.len()].name.clone();
            *next += 1;
            n
        }
    };
    let uid = p
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("lab-{lab}-{ns}-{pname}"));
    let mut ports: Vec<u16> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| u16::try_from(cp.container_port).ok())
        .filter(|port| *port != crate::lab::LAB_ECHO_PORT)
        .collect();
    ports.sort();
    ports.dedup();
    Ok(PodPlan {
        netns: pod_netns(lab, &ns, &pname),
        namespace: ns,
        name: pname,
        uid,
        node,
        ports,
    })
}

impl LabPlan {
    /// Plan objects added to a running lab (`strait lab apply`): new pods
    /// get a node and a namespace, new services a cluster IP. Pods and
    /// services the plan has already are left as they are. Returns what
    /// was added; the plan includes it.
    pub fn add(
        &mut self,
        objects: &[ClusterObject],
    ) -> Result<(Vec<PodPlan>, Vec<ServicePlan>), LabError> {
        let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            format!(
                "{}/{}",
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or_default()
            )
        };
        let fresh: Vec<ClusterObject> = objects
            .iter()
            .filter(|o| match o {
                ClusterObject::Pod(p) => self.pod(&key(&p.metadata)).is_none(),
                ClusterObject::Service(s) => self.service(&key(&s.metadata)).is_none(),
                _ => false,
            })
            .cloned()
            .collect();
        let mut next = self.pods.len();
        let mut pods = vec![];
        for o in &fresh {
            if let ClusterObject::Pod(p) = o {
                let mut all = self.pods.clone();
                all.extend(pods.iter().cloned());
                pods.push(plan_pod(&self.name, &self.nodes, &all, &mut next, p)?);
            }
        }
        let services = plan_services(self.service_cidr, &self.services, &fresh)?;
        self.pods.extend(pods.iter().cloned());
        self.services.extend(services.iter().cloned());
        Ok((pods, services))
    }

    pub fn service(&self, key: &str) -> Option<&ServicePlan> {
        match key.split_once('/') {
            Some((ns, n)) => self
                .services
                .iter()
                .find(|s| s.namespace == ns && s.name == n),
            None => self.services.iter().find(|s| s.name == key),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by `name` or `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodPlan> {
        match key.split_once('/') {
            Some((ns, n)) => self.pods.iter().find(|p| p.namespace == ns && p.name == n),
            None => self.pods.iter().find(|p| p.name == key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: Lab
metadata: {name: demo}
spec:
  mode: routed
  nodes: [{name: node-a}, {name: node-b}]
---
apiVersion: v1
kind: Pod
metadata: {name: a1}
spec: {nodeName: node-a, containers: [{name: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: web}
spec: {containers: [{name: echo}]}
"#;

    #[test]
    fn assigns_cluster_ips_and_checks_given_ones() {
        let with = |svcs: &str| parse_lab_file(&format!("{LAB}{svcs}")).unwrap().plan();
        let p = with("---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: 198.18.64.10, ports: [{port: 5432}]}\n").unwrap();
        assert_eq!(
            p.service("db").unwrap().cluster_ip,
            Ipv4Addr::new(198, 18, 64, 10)
        );
        assert_eq!(
            p.service("web").unwrap().cluster_ip,
            Ipv4Addr::new(198, 18, 64, 11),
            "the next free address"
        );
        let e = with("---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n").unwrap_err();
        assert!(e.to_string().contains("outside the service CIDR"), "{e}");
    }

    #[test]
    fn plans_addresses_and_namespaces() {
        let plan = parse_lab_file(LAB).unwrap().plan().unwrap();
        assert_eq!(plan.nodes.len(), 2);
        assert_eq!(plan.nodes[0].ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(plan.nodes[1].ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(plan.nodes[1].pod_cidr.to_string(), "198.19.1.0/24");
        assert_eq!(plan.nodes[0].netns, "strait-demo-node-node-a");
        assert_eq!(plan.pods.len(), 2);
        assert_eq!(plan.pod("a1").unwrap().node, "node-a");
        assert_eq!(plan.pod("web/x").unwrap().netns, "strait-demo-pod-web-x");
        assert!(plan.pod("nope").is_none());
    }

    #[test]
    fn objects_added_to_a_running_lab_are_planned_like_the_first() {
        let mut plan = parse_lab_file(&format!("{LAB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n")).unwrap().plan().unwrap();
        let more = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: a2}\nspec: {nodeName: node-b, containers: [{name: echo}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a1}\nspec: {nodeName: node-a, containers: [{name: echo}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432}]}\n").unwrap();
        let (pods, svcs) = plan.add(&more).unwrap();
        assert_eq!(pods.len(), 1, "a1 is already planned");
        assert_eq!(
            (pods[0].name.as_str(), pods[0].node.as_str()),
            ("a2", "node-b")
        );
        assert_eq!(pods[0].netns, "strait-demo-pod-default-a2");
        assert_eq!(svcs.len(), 1);
        assert_ne!(
            svcs[0].cluster_ip,
            plan.service("web").unwrap().cluster_ip,
            "a free address"
        );
        assert!(plan.pod("a2").is_some() && plan.service("db").is_some());
        let bad = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: z}\nspec: {nodeName: node-q, containers: [{name: echo}]}\n").unwrap();
        assert!(plan
            .add(&bad)
            .unwrap_err()
            .to_string()
            .contains("not a lab node"));
    }

    fn plan_err(text: &str) -> String {
        match parse_lab_file(text) {
            Err(e) => e.to_string(),
            Ok(f) => f
                .plan()
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string()),
        }
    }

    #[test]
    fn rejects_bad_lab_files_with_a_reason() {
        assert!(plan_err("apiVersion: v1\nkind: Pod\n").contains("kind: Lab"));
        assert!(
            plan_err(&LAB.replace("node-a, containers", "node-z, containers"))
                .contains("not a lab node")
        );
        assert!(plan_err(&LAB.replace("mode: routed", "mode: warp")).contains("unknown variant"));
        assert!(plan_err(&LAB.replace("name: demo", "name: Demo_Lab")).contains("lab name"));
        assert!(plan_err(&LAB.replace("{name: node-b}", "{name: node-a}")).contains("listed twice"));
        let small = LAB.replace(
            "mode: routed",
            "mode: routed\n  addressPlan: {fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/24, nodeMaskSize: 24}",
        );
        assert!(
            plan_err(&small).contains("only 1 /24 blocks"),
            "{}",
            plan_err(&small)
        );
        let overlap = LAB.replace(
            "mode: routed",
            "mode: routed\n  addressPlan: {fabric: 198.19.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 24}",
        );
        assert!(plan_err(&overlap).contains("overlap"));
        assert!(plan_err(&LAB.replace("mode: routed", "mode: routed\n  mtu: 100")).contains("mtu"));
        assert!(
            plan_err(&LAB.replace("mode: routed", "mode: routed\n  colour: blue"))
                .contains("unknown field")
        );
        let both = LAB.replace("mode: routed", "mode: routed\n  datapath: ebpf");
        assert!(plan_err(&both).contains("disagree"), "{}", plan_err(&both));
        assert!(
            plan_err(&LAB.replace("mode: routed", "crossNode: gre")).contains("unknown variant")
        );
    }

    #[test]
    fn datapath_and_cross_node_are_two_choices_and_old_files_still_work() {
        let plan = |text: &str| parse_lab_file(text).unwrap().plan().unwrap();
        let old = plan(LAB);
        assert_eq!(
            (old.mode, old.cross_node),
            (Mode::Routed, CrossNodeMode::Routed)
        );
        let new = plan(&LAB.replace("mode: routed", "datapath: kernel\n  crossNode: vxlan"));
        assert_eq!(
            (new.mode, new.cross_node),
            (Mode::Routed, CrossNodeMode::Vxlan)
        );
        assert_eq!((new.mtu, new.pod_mtu()), (1500, 1450));
        let ebpf = plan(&LAB.replace("mode: routed", "datapath: ebpf\n  crossNode: vxlan"));
        assert_eq!(ebpf.mode, Mode::Ebpf);
        let ipip = plan(&LAB.replace("mode: routed", "datapath: ebpf\n  crossNode: ipip"));
        assert_eq!(
            (ipip.mode, ipip.cross_node, ipip.pod_mtu()),
            (Mode::Ebpf, CrossNodeMode::Ipip, 1480)
        );
        let same = plan(&LAB.replace("mode: routed", "mode: ebpf\n  datapath: ebpf"));
        assert_eq!(same.mode, Mode::Ebpf);
    }

    #[test]
    fn racks_give_nodes_their_subnet_label_and_gateway() {
        let racked = LAB
            .replace(
                "mode: routed\n  nodes: [{name: node-a}, {name: node-b}]",
                "crossNode: bgp-tor\n  racks:\n  - {name: r1, subnet: 198.18.1.0/24, asn: 65101}\n  - {name: r2, subnet: 198.18.2.0/24, asn: 65102, router: frr}\n  nodes: [{name: node-a, rack: r1}, {name: node-b, rack: r2}, {name: node-c, rack: r1}]",
            );
        let plan = parse_lab_file(&racked).unwrap().plan().unwrap();
        let ip = |n: &str| plan.node(n).unwrap().ip.to_string();
        assert_eq!(
            (ip("node-a"), ip("node-b"), ip("node-c")),
            (
                "198.18.1.2".into(),
                "198.18.2.2".into(),
                "198.18.1.3".into()
            )
        );
        let b = plan.node("node-b").unwrap();
        assert_eq!(
            b.labels.get(crate::racks::RACK_LABEL).map(String::as_str),
            Some("r2")
        );
        assert_eq!(plan.node_subnet(b).to_string(), "198.18.2.0/24");
        assert_eq!(plan.rack_of(b).unwrap().router, crate::racks::Router::Frr);
        let err = |text: &str| {
            parse_lab_file(text)
                .unwrap()
                .plan()
                .unwrap_err()
                .to_string()
        };
        assert!(err(&racked.replace("crossNode: bgp-tor", "crossNode: bgp"))
            .contains("needs crossNode bgp-tor"));
        assert!(err(&racked.replace("rack: r2}", "rack: r9}"))
            .contains("rack \"r9\" is not in spec.racks (r1, r2)"));
        assert!(
            err(&racked.replace("{name: node-c, rack: r1}", "{name: node-c}"))
                .contains("give it one")
        );
        assert!(
            err(&LAB.replace("mode: routed", "crossNode: bgp-tor")).contains("needs spec.racks")
        );
    }
}
