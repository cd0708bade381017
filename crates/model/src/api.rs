//! Messages on the agent's local unix socket: one JSON request per line, one
//! JSON response per line. The CNI plugin and the `strait` CLI are the clients.

use crate::ipam::{Allocation, Attachment, PodRef};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Reserve an address for a new attachment (CNI ADD).
    Allocate {
        attachment: Attachment,
        pod: PodRef,
        netns: String,
        host_veth: String,
        /// The pod namespace's inode, so the agent can tell "this pod's
        /// namespace is gone" from "its path now names another one".
        #[serde(default)]
        netns_ino: Option<u64>,
        /// The address the runtime asked for (CNI_ARGS IP=, runtimeConfig.ips).
        #[serde(default)]
        requested: Option<IpAddr>,
        /// The pod's hostPorts (runtimeConfig.portMappings).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        host_ports: Vec<crate::ipam::HostPort>,
    },
    /// Release the attachment's address (CNI DEL). Unknown attachments are fine.
    Release { attachment: Attachment },
    /// Look up an attachment's allocation (CNI CHECK).
    Get { attachment: Attachment },
    /// Release everything not in `valid` and remove its host links (CNI GC).
    Gc { valid: Vec<Attachment> },
    /// Node status and every allocation.
    Status,
    /// The plugin finished wiring this attachment (sent without waiting for
    /// an answer): the agent programs the datapath for it now rather than
    /// on its next pass.
    Wired { attachment: Attachment },
    /// This node's pods' compiled NetworkPolicy.
    PolicyList,
    /// What policy says of a new connection: endpoints are pods (ns/name or
    /// name) or IP addresses.
    PolicyExplain {
        src: String,
        dst: String,
        port: u16,
        proto: crate::policy::Proto,
    },
    /// The BGP speaker's routes: learned, and advertised to each peer.
    BgpRoutes,
    /// eni mode: the node's ENIs, their addresses and pods, checked pod ↔
    /// agent ↔ cloud (`strait mapping`).
    EniMapping,
    /// `strait explain`'s question to a node: its datapath, and the service
    /// programmed for a frontend, if any (the status holds every service;
    /// this is one lookup).
    ServiceLookup {
        ip: std::net::IpAddr,
        port: u16,
        udp: bool,
    },
    /// `strait explain`'s read-only question to a node's kernel: one
    /// iproute2 query (JSON out) in the node's namespace or one of its
    /// pods'. Only the queries in [`KERNEL_QUERIES`] are answered.
    Kernel {
        /// None: the node's own namespace; else a pod's netns path, as its
        /// allocation records it.
        #[serde(default)]
        netns: Option<String>,
        tool: String,
        args: Vec<String>,
    },
    /// `strait explain`'s question to a node's BPF maps.
    Map { question: MapQuestion },
}

/// The iproute2 queries a node answers for `strait explain` (tool, leading
/// arguments): reads only.
pub const KERNEL_QUERIES: &[(&str, &[&str])] = &[
    ("ip", &["-d", "addr", "show"]),
    ("ip", &["netns", "list-id"]),
    ("ip", &["route", "get"]),
    ("ip", &["neigh", "show"]),
    ("bridge", &["fdb", "show"]),
    ("tc", &["filter", "show"]),
];

/// Whether `tool args` is one of [`KERNEL_QUERIES`], with no option among
/// the free arguments (which could switch namespace or write a file).
pub fn kernel_query_allowed(tool: &str, args: &[String]) -> bool {
    KERNEL_QUERIES.iter().any(|(t, head)| {
        *t == tool
            && args.len() >= head.len()
            && args.iter().zip(head.iter()).all(|(a, h)| a == h)
            && args[head.len()..]
                .iter()
                .all(|a| !a.starts_with('-') && !a.is_empty() && a.len() < 256)
    })
}

/// One lookup in a node's datapath maps, as its programs look it up.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "map", rename_all = "snake_case")]
pub enum MapQuestion {
    /// strait_endpoints: is this a pod of the node (its host veth).
    Endpoint { ip: IpAddr },
    /// strait_tunnel: the IP-in-IP stand-in device.
    Tunnel,
    /// strait_vlan_ports: the macvlan port of a VLAN.
    VlanPort { vid: u16 },
    /// strait_vlan_trunks: a port's far end -> its VLAN and uplink.
    VlanTrunk { ifindex: u32 },
    /// strait_vlan_subnets: the VLAN of the subnet holding an address.
    VlanTag { ip: IpAddr },
}

/// What a map held for a [`MapQuestion`] (the fields its entry has).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapEntry {
    #[serde(default)]
    pub ifindex: u32,
    #[serde(default)]
    pub vid: u16,
    #[serde(default)]
    pub uplink: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Allocated {
        allocation: Allocation,
        /// Prefix length of the pod CIDR, for information; the pod gets a /32.
        cidr_prefix: u8,
        /// macvlan mode: how to wire the pod (its eth0 is a macvlan on its
        /// VLAN's port); absent in the veth modes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        macvlan: Option<MacvlanWiring>,
    },
    Released {
        allocation: Option<Allocation>,
    },
    Found {
        allocation: Option<Allocation>,
    },
    Collected {
        released: Vec<Allocation>,
    },
    Status(Box<NodeStatus>),
    /// The attachment's endpoint is programmed (answer to `Wired`).
    Programmed {},
    Policy {
        pods: Vec<crate::policy::PodRules>,
    },
    PolicyVerdict(Box<PolicyExplanation>),
    BgpRoutes(Box<BgpRoutes>),
    EniMapping(Box<crate::cloud::eniip::EniMapping>),
    ServiceLookup(Box<ServiceLookup>),
    /// iproute2's JSON answer to a [`Request::Kernel`].
    Kernel {
        answer: serde_json::Value,
    },
    /// None: no entry (or no such map on this node).
    Map {
        entry: Option<MapEntry>,
    },
    Error(ApiError),
}

/// The answer to [`Request::ServiceLookup`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceLookup {
    /// "ebpf" or "routed" (the kernel datapath).
    pub mode: String,
    /// The eBPF datapath delivers to pods with bpf_redirect_peer.
    pub redirect_peer: bool,
    pub entry: Option<crate::services::ServiceEntry>,
}

/// `strait bgp routes`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BgpRoutes {
    pub learned: Vec<BgpLearnedRoute>,
    pub advertised: Vec<BgpAdvertisedRoute>,
}

/// One path a peer sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BgpLearnedRoute {
    pub prefix: ipnet::IpNet,
    pub peer: IpAddr,
    pub next_hop: IpAddr,
    pub as_path: String,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    /// Forwarding uses it (one of several when equal-cost).
    pub installed: bool,
    /// Kept from before the peer restarted, not re-sent yet.
    pub stale: bool,
    /// Reflected routes: the router that first announced it.
    pub originator: Option<std::net::Ipv4Addr>,
}

/// One prefix sent to one peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BgpAdvertisedRoute {
    pub prefix: ipnet::IpNet,
    pub peer: IpAddr,
    /// None: this node originates it; else reflected from that peer.
    pub reflected_from: Option<IpAddr>,
}

/// `strait policy explain`: both ends resolved, and both directions' decisions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyExplanation {
    pub src: String,
    pub src_ip: IpAddr,
    pub dst: String,
    pub dst_ip: IpAddr,
    pub port: u16,
    pub proto: crate::policy::Proto,
    pub verdict: crate::policy::Verdict,
}

/// How one of the agent's reconcilers is doing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReconcilerStatus {
    pub name: String,
    pub passes: u64,
    /// Failed passes in a row (0 when the last one succeeded).
    pub consecutive_failures: u32,
    /// When the last pass ended (unix ms) and how long it took.
    pub last_pass_ms: u64,
    pub last_pass_micros: u64,
    /// Why the last pass failed as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Objects the last pass could not program, each with its reason; the
    /// rest were programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub node: String,
    pub mode: String,
    pub pod_cidr: Option<String>,
    pub node_ip: Option<IpAddr>,
    pub ready: bool,
    /// Why the node is not ready, when it is not.
    pub reason: Option<String>,
    pub allocations: Vec<Allocation>,
    pub cooling: usize,
    pub node_routes: Vec<crate::routes::NodeRoute>,
    /// The eBPF datapath, in ebpf mode.
    #[serde(default)]
    pub datapath: Option<DatapathStatus>,
    /// The programmed service table.
    #[serde(default)]
    pub services: Vec<crate::services::ServiceEntry>,
    /// Service objects left out, and why.
    #[serde(default)]
    pub service_problems: Vec<String>,
    /// How the last change to the service table was applied.
    #[serde(default)]
    pub service_sync: Option<ServiceSync>,
    /// One entry per reconciler: endpoints, node-routes, services, health.
    #[serde(default)]
    pub reconcilers: Vec<ReconcilerStatus>,
    /// The cross-node mode and the service backend in use.
    #[serde(default)]
    pub cross_node: String,
    #[serde(default)]
    pub service_backend: String,
    /// How NetworkPolicy is enforced (ebpf, nftables).
    #[serde(default)]
    pub policy_backend: String,
    /// Service conntrack (eBPF datapath): entries by state, how full.
    #[serde(default)]
    pub conntrack: Option<ConntrackStatus>,
    /// The cluster source: which, and how it is doing.
    #[serde(default)]
    pub source: Option<SourceStatus>,
    /// IPPool blocks this node holds.
    #[serde(default)]
    pub ipam_blocks: Vec<BlockStatus>,
    /// BGP sessions (cross-node mode bgp).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp_peers: Vec<BgpPeerStatus>,
    /// macvlan mode's VLAN ports on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlan_ports: Vec<VlanPortStatus>,
}

/// One VLAN port (macvlan mode), as `strait status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VlanPortStatus {
    pub vlan: u16,
    /// The macvlan parent, e.g. `eth0-5`.
    pub parent: String,
    /// Its far end, joined to the uplink in eBPF, e.g. `trunk5`.
    pub trunk: String,
    /// Pods of the VLAN on this node.
    pub pods: usize,
}

/// One BGP session, as `strait status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    /// Idle, Connect, Active, OpenSent, OpenConfirm or Established.
    pub state: String,
    /// Seconds since it reached Established.
    pub up_secs: Option<u64>,
    /// Prefixes received (of those, kept stale from before its restart).
    pub received: usize,
    pub stale: usize,
    pub advertised: usize,
    /// Times the session went down.
    pub flaps: u64,
    pub last_error: Option<String>,
}

/// One IPPool block a node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatus {
    pub cidr: ipnet::IpNet,
    pub pool: String,
    /// Addresses held by pods.
    pub in_use: usize,
    /// Addresses in the block (saturating: an IPv6 block may hold more).
    pub size: u64,
}

/// A cluster source's health.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// "files" or "kube-apiserver".
    pub kind: String,
    /// Where from: the manifests directory, or the apiserver's URL.
    pub from: String,
    /// Every watched kind has been listed once.
    pub ready: bool,
    /// Kinds watched, with the API version read (EndpointSlice: v1 or v1beta1).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Lists after the first (a watch that expired, "410 Gone", or a reconnect).
    pub relists: u64,
    /// Watch errors (each retried with backoff).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Unix time (ms) of the last event from the source.
    pub last_event_ms: Option<u64>,
}

/// The eBPF service conntrack as the last GC pass found it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConntrackStatus {
    /// Connections by state (syn-sent, established, closing, udp).
    pub by_state: std::collections::BTreeMap<String, usize>,
    pub forward: usize,
    pub reverse: usize,
    pub capacity: usize,
    /// Since the agent started: pairs expired, halves rebuilt.
    pub expired_total: u64,
    pub repaired_total: u64,
}

/// The last service-table change: how many frontends the table had, how
/// many datapath entries changed, and how long applying took.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceSync {
    pub frontends: usize,
    pub changed: usize,
    pub micros: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatapathStatus {
    /// Where the maps are pinned.
    pub pin_dir: String,
    /// True when traffic to a pod uses bpf_redirect_peer ("newer kernel").
    pub redirect_peer: bool,
    /// Why that path was chosen.
    pub reason: String,
    /// The uplink carrying from-netdev.
    pub uplink: String,
    /// Host veths carrying from-container.
    pub attached: Vec<String>,
    /// Pods in the endpoint map.
    pub endpoints: usize,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// The agent cannot serve yet (no pod CIDR, still starting): retry later.
    NotReady,
    /// The node's pod CIDR has no free address.
    Exhausted,
    /// The request itself is wrong.
    Invalid,
    /// Something failed inside the agent (disk, kernel).
    Internal,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_tagged() {
        let r = Request::Release {
            attachment: Attachment {
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"op":"release","attachment":{"container_id":"c","ifname":"eth0"}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }

    /// explain's questions and answers go over the wire (a tagged enum
    /// cannot carry a bare list or None: this failed before they were
    /// struct variants, and the agent dropped the connection).
    #[test]
    fn explain_questions_and_answers_round_trip() {
        let reqs = [
            Request::Kernel {
                netns: None,
                tool: "ip".into(),
                args: vec!["netns".into(), "list-id".into()],
            },
            Request::Map {
                question: MapQuestion::VlanTag {
                    ip: "198.19.0.1".parse().unwrap(),
                },
            },
            Request::Map {
                question: MapQuestion::Tunnel,
            },
        ];
        for r in reqs {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r, "{j}");
        }
        let resps = [
            Response::Kernel {
                answer: serde_json::json!([{"nsid": 0}]),
            },
            Response::Map { entry: None },
            Response::Map {
                entry: Some(MapEntry {
                    ifindex: 7,
                    vid: 20,
                    uplink: 2,
                }),
            },
        ];
        for r in resps {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&j).unwrap(), r, "{j}");
        }
    }
}

/// macvlan mode (Bifrost): what the CNI plugin needs to wire a pod. The
/// pod's eth0 is a macvlan (bridge mode) on `parent`, with the address in
/// its subnet (`prefix_len`) and a default route via the VLAN's gateway;
/// its service veth (host end `bifrXXX`, pod end `veth0`) carries the
/// service CIDR and the node's own address through the host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MacvlanWiring {
    pub vlan: u16,
    /// The VLAN's port, e.g. `eth0-10`.
    pub parent: String,
    pub gateway: std::net::IpAddr,
    pub prefix_len: u8,
    /// Routed through the service veth.
    pub via_host: Vec<ipnet::IpNet>,
}
