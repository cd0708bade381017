//! BGP topology as Calico describes it: a `BGPConfiguration` (the cluster's
//! AS, whether nodes form a full mesh) and `BGPPeer`s (which nodes peer
//! with whom: an address outside the cluster, such as a top-of-rack
//! router, or other nodes picked by label, such as route reflectors).
//! A node is a route reflector when it carries the
//! [`RR_CLUSTER_ID_ANNOTATION`]; its node peers that are not reflectors of
//! the same cluster are its clients.
//!
//! [`plan_peers`] turns the objects into the sessions one node should run.
//! Pure, and address-family generic (a peer may be IPv6).

use crate::cluster::{node_internal_ip, ClusterSnapshot};
use crate::policy::selector::selects;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Marks a node as a route reflector; the value is its cluster id (an IPv4
/// address, e.g. 244.0.0.1). Reflectors sharing an id are one cluster.
pub const RR_CLUSTER_ID_ANNOTATION: &str = "strait.dev/route-reflector-cluster-id";
/// The one BGPConfiguration that counts (as Calico's).
pub const DEFAULT_CONFIG: &str = "default";

/// Cluster-wide BGP settings. Only the object named `default` is read.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    derive = "PartialEq",
    doc = "Cluster-wide BGP settings (only the one named default is read).",
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Mesh","type":"boolean","jsonPath":".spec.nodeToNodeMeshEnabled"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// The cluster's AS (the agent's --bgp-as when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Every node peers with every other node; true when unset. Turn it
    /// off when route reflectors (or top-of-rack peers) carry the routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
}

/// Sessions some nodes run: with an address (`peerIP`) or with the nodes a
/// selector picks (`peerSelector`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    derive = "PartialEq",
    doc = "BGP sessions: which nodes (node, nodeSelector; all when neither) peer with an address (peerIP, asNumber) or with other nodes (peerSelector).",
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".spec.peerIP"}"#,
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The one node that runs the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes that run the session (all nodes when neither this nor
    /// `node` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The peer's address, `IP` or `IP:port` (`[IPv6]:port`).
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// The peer's AS (with peerIP; the cluster's AS when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Peer with the nodes this selects instead of an address (both sides
    /// run the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<LabelSelector>,
    /// The longest we keep a restarting peer's routes, whatever restart
    /// time it asks for (e.g. "120s", "2m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
    /// TCP MD5 password (RFC 2385), from a key of a Secret in strait's
    /// secrets namespace (`strait-secrets`), as Calico's BGPPeer names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPassword {
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in [`SECRETS_NAMESPACE`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// The namespace whose Secrets the agents read (and only those: its RBAC
/// Role is all the agents get on Secrets).
pub const SECRETS_NAMESPACE: &str = "strait-secrets";

/// A password that never shows in logs or Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<password>")
    }
}

/// The password a BGPPeer names, from the snapshot's Secrets.
fn resolve_password(snap: &ClusterSnapshot, r: &SecretKeyRef) -> Result<Password, String> {
    let s = snap
        .secrets
        .iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(SECRETS_NAMESPACE)
                && s.metadata.name.as_deref() == Some(r.name.as_str())
        })
        .ok_or_else(|| {
            format!(
                "password: Secret {SECRETS_NAMESPACE}/{} not found (the agents read Secrets only from {SECRETS_NAMESPACE})",
                r.name
            )
        })?;
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|v| v.clone().into_bytes())
        })
        .ok_or_else(|| {
            format!(
                "password: Secret {SECRETS_NAMESPACE}/{} has no key {:?}",
                r.name, r.key
            )
        })?;
    let pw = String::from_utf8(bytes).map_err(|_| {
        format!(
            "password: key {:?} of Secret {SECRETS_NAMESPACE}/{} is not UTF-8 text",
            r.key, r.name
        )
    })?;
    if pw.is_empty() || pw.len() > 80 {
        return Err(format!(
            "password: key {:?} of Secret {SECRETS_NAMESPACE}/{} must be 1 to 80 bytes (TCP MD5)",
            r.key, r.name
        ));
    }
    Ok(Password(pw))
}

/// One session a node should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPeer {
    pub address: IpAddr,
    pub port: Option<u16>,
    pub asn: u32,
    /// We reflect routes to it (we are a reflector, it is not one of ours).
    pub rr_client: bool,
    pub max_restart_time: Option<Duration>,
    /// TCP MD5 password.
    pub password: Option<Password>,
    /// Why: "mesh", or "BGPPeer NAME".
    pub why: String,
}

/// What one node's speaker should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPlan {
    pub local_as: u32,
    /// Set when this node is a route reflector.
    pub cluster_id: Option<Ipv4Addr>,
    pub peers: Vec<DesiredPeer>,
    /// Objects that could not be used, and why (shown, not fatal).
    pub problems: Vec<String>,
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn name(n: &Node) -> &str {
    n.metadata.name.as_deref().unwrap_or_default()
}

/// A node's route-reflector cluster id, if it is one.
pub fn cluster_id(n: &Node) -> Result<Option<Ipv4Addr>, String> {
    let Some(v) = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RR_CLUSTER_ID_ANNOTATION))
    else {
        return Ok(None);
    };
    v.parse().map(Some).map_err(|_| {
        format!(
            "node {}: {RR_CLUSTER_ID_ANNOTATION} {v:?} is not an IPv4 address (e.g. 244.0.0.1)",
            name(n)
        )
    })
}

/// "90s", "2m", "1h", or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 120s, 2m)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unit {unit:?} is not s, m or h")),
    };
    Ok(Duration::from_secs(n * mult))
}

fn parse_peer_ip(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    s.parse::<SocketAddr>()
        .map(|a| (a.ip(), Some(a.port())))
        .map_err(|_| format!("peerIP {s:?} is not an address (IP, IP:port or [IPv6]:port)"))
}

fn node_selected(p: &BGPPeerSpec, n: &Node) -> Result<bool, String> {
    if let Some(want) = &p.node {
        if want != name(n) {
            return Ok(false);
        }
    }
    match &p.node_selector {
        Some(s) => selects(s, &labels(n)).map_err(|e| e.to_string()),
        None => Ok(true),
    }
}

/// The sessions `me` should run, from the cluster's BGP objects. The
/// node-to-node mesh uses each node's InternalIP of the family of
/// `me`'s (IPv4 first); it runs unless `BGPConfiguration default` says
/// otherwise or, when it says nothing, `mesh_by_default` is false
/// (top-of-rack mode: nodes peer with their router, not each other).
pub fn plan_peers(
    snap: &ClusterSnapshot,
    me: &str,
    default_as: u32,
    mesh_by_default: bool,
) -> PeerPlan {
    let config = snap
        .bgp_configurations
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(DEFAULT_CONFIG))
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    let local_as = config.as_number.unwrap_or(default_as);
    let mut plan = PeerPlan {
        local_as,
        cluster_id: None,
        peers: vec![],
        problems: vec![],
    };
    let Some(me_node) = snap.node(me) else {
        return plan;
    };
    let ids: BTreeMap<&str, Option<Ipv4Addr>> = snap
        .nodes
        .iter()
        .map(|n| {
            let id = cluster_id(n).unwrap_or_else(|e| {
                plan.problems.push(e);
                None
            });
            (name(n), id)
        })
        .collect();
    plan.cluster_id = ids.get(me).copied().flatten();
    let my_ip = node_internal_ip(me_node, true).or_else(|| node_internal_ip(me_node, false));
    let cid = plan.cluster_id;
    let v4 = my_ip.is_none_or(|a| a.is_ipv4());
    // A session with another node (none with itself, or a node without an
    // address of our family).
    let node_peer = |other: &Node, why: String, max: Option<Duration>| {
        if name(other) == me {
            return None;
        }
        let ip = node_internal_ip(other, v4)?;
        let other_id = ids.get(name(other)).copied().flatten();
        Some(DesiredPeer {
            address: ip,
            port: None,
            asn: local_as,
            rr_client: cid.is_some() && other_id != cid,
            max_restart_time: max,
            password: None,
            why,
        })
    };
    let mut by_addr: BTreeMap<IpAddr, DesiredPeer> = BTreeMap::new();
    let mut add = |p: Option<DesiredPeer>| {
        if let Some(p) = p {
            by_addr.entry(p.address).or_insert(p);
        }
    };
    if config.node_to_node_mesh_enabled.unwrap_or(mesh_by_default) {
        for n in &snap.nodes {
            add(node_peer(n, "mesh".into(), None));
        }
    }
    let mut peers: Vec<&BGPPeer> = snap.bgp_peers.iter().map(|p| &**p).collect();
    peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for p in peers {
        let pname = p.metadata.name.clone().unwrap_or_default();
        let why = format!("BGPPeer {pname}");
        let max = match p.spec.max_restart_time.as_deref().map(parse_duration) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                plan.problems
                    .push(format!("BGPPeer {pname}: maxRestartTime {e}"));
                None
            }
            None => None,
        };
        // A peer whose password cannot be read is not run without one.
        let password = match p
            .spec
            .password
            .as_ref()
            .map(|pw| resolve_password(snap, &pw.secret_key_ref))
        {
            Some(Err(e)) => {
                plan.problems.push(format!("BGPPeer {pname}: {e}"));
                continue;
            }
            Some(Ok(pw)) => Some(pw),
            None => None,
        };
        let sel_me = match node_selected(&p.spec, me_node) {
            Ok(b) => b,
            Err(e) => {
                plan.problems.push(format!("BGPPeer {pname}: {e}"));
                continue;
            }
        };
        match (&p.spec.peer_ip, &p.spec.peer_selector) {
            (Some(_), Some(_)) => plan.problems.push(format!(
                "BGPPeer {pname}: set peerIP or peerSelector, not both"
            )),
            (None, None) => plan.problems.push(format!(
                "BGPPeer {pname}: names no peer (set peerIP or peerSelector)"
            )),
            (Some(ip), None) => {
                if !sel_me {
                    continue;
                }
                match parse_peer_ip(ip) {
                    Ok((address, port)) => {
                        add(Some(DesiredPeer {
                            address,
                            port,
                            asn: p.spec.as_number.unwrap_or(local_as),
                            rr_client: false,
                            max_restart_time: max,
                            password: password.clone(),
                            why: why.clone(),
                        }));
                    }
                    Err(e) => plan.problems.push(format!("BGPPeer {pname}: {e}")),
                }
            }
            (None, Some(sel)) => {
                let peer_me = selects(sel, &labels(me_node)).unwrap_or(false);
                for n in &snap.nodes {
                    // Both ends run the session: the nodes the selector
                    // picks peer back with the nodes the object is for.
                    let picked = match selects(sel, &labels(n)) {
                        Ok(b) => b,
                        Err(e) => {
                            plan.problems.push(format!("BGPPeer {pname}: {e}"));
                            break;
                        }
                    };
                    let back = peer_me && node_selected(&p.spec, n).unwrap_or(false);
                    if (sel_me && picked) || back {
                        add(node_peer(n, why.clone(), max).map(|mut d| {
                            d.password = password.clone();
                            d
                        }));
                    }
                }
            }
        }
    }
    plan.peers = by_addr.into_values().collect();
    plan
}

#[cfg(test)]
#[path = "bgp_tests.rs"]
mod tests;
