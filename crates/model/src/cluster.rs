//! The cluster as strait sees it: Nodes, Pods, Services, EndpointSlices and
//! NetworkPolicies, in Kubernetes' own types (k8s-openapi), so the files, etcd
//! and kube-apiserver sources all produce the same thing.

use crate::bgp::{BGPConfiguration, BGPPeer};
use crate::cloud::trunking::PodNetworking;
use crate::ippool::{IPAMBlock, IPPool};
use crate::slice::Slice;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

/// One consistent view of the cluster objects strait cares about. Objects
/// are shared (`Arc`) with the source's stores: a new snapshot after one
/// change copies pointers, not 20 000 objects.
#[derive(Clone, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub nodes: Vec<Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    /// Compact (see [`crate::slice`]), converted by every source on arrival.
    pub endpoint_slices: Vec<Arc<Slice>>,
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub namespaces: Vec<Arc<Namespace>>,
    /// strait's IPPools and the blocks nodes hold of them.
    pub ip_pools: Vec<Arc<IPPool>>,
    pub ipam_blocks: Vec<Arc<IPAMBlock>>,
    /// BGP mode's topology (see [`crate::bgp`]).
    pub bgp_configurations: Vec<Arc<BGPConfiguration>>,
    pub bgp_peers: Vec<Arc<BGPPeer>>,
    /// ENI-Trunking's network planes (see [`crate::cloud::trunking`]).
    pub pod_networkings: Vec<Arc<PodNetworking>>,
    /// Secrets of strait's secrets namespace ([`crate::bgp::SECRETS_NAMESPACE`]):
    /// BGP passwords. Never logged (see [`ClusterSnapshot`]'s Debug).
    pub secrets: Vec<Arc<Secret>>,
}

/// Every field but the secrets' contents, which are named only.
impl std::fmt::Debug for ClusterSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secrets: Vec<(&str, &str)> =
            self.secrets.iter().map(|s| meta_key(&s.metadata)).collect();
        f.debug_struct("ClusterSnapshot")
            .field("nodes", &self.nodes)
            .field("pods", &self.pods)
            .field("services", &self.services)
            .field("endpoint_slices", &self.endpoint_slices)
            .field("network_policies", &self.network_policies)
            .field("namespaces", &self.namespaces)
            .field("ip_pools", &self.ip_pools)
            .field("ipam_blocks", &self.ipam_blocks)
            .field("bgp_configurations", &self.bgp_configurations)
            .field("bgp_peers", &self.bgp_peers)
            .field("pod_networkings", &self.pod_networkings)
            .field("secrets (contents withheld)", &secrets)
            .finish()
    }
}

impl ClusterSnapshot {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .map(|n| &**n)
    }

    /// Add one decoded object. Objects of kinds strait does not use are
    /// ignored; a `List` is unpacked.
    pub fn add(&mut self, obj: ClusterObject) {
        match obj {
            ClusterObject::Node(n) => self.nodes.push(Arc::from(n)),
            ClusterObject::Pod(p) => self.pods.push(Arc::from(p)),
            ClusterObject::Service(s) => self.services.push(Arc::from(s)),
            ClusterObject::EndpointSlice(e) => {
                self.endpoint_slices.push(Arc::new(Slice::from_k8s(&e)))
            }
            ClusterObject::NetworkPolicy(p) => self.network_policies.push(Arc::from(p)),
            ClusterObject::Namespace(n) => self.namespaces.push(Arc::from(n)),
            ClusterObject::IpPool(p) => self.ip_pools.push(Arc::from(p)),
            ClusterObject::IpamBlock(b) => self.ipam_blocks.push(Arc::from(b)),
            ClusterObject::BgpConfiguration(c) => self.bgp_configurations.push(Arc::from(c)),
            ClusterObject::BgpPeer(p) => self.bgp_peers.push(Arc::from(p)),
            ClusterObject::PodNetworking(p) => self.pod_networkings.push(Arc::from(p)),
            ClusterObject::Secret(s) => self.secrets.push(Arc::from(s)),
            ClusterObject::Other { .. } => {}
        }
    }

    /// Sort every list by namespace/name so equal clusters compare equal
    /// whatever order the source read them in.
    pub fn normalize(&mut self) {
        for k in Kind::ALL {
            self.sort_kind(k);
        }
        // Kubernetes before 1.21 does not set this label; policies select
        // namespaces by it.
        // Sources label them on arrival (label_namespace), so this copies
        // nothing: a copy is a new object, and every snapshot would look
        // like a change of namespaces to the policy reconciler.
        for n in &mut self.namespaces {
            if !namespace_labelled(n) && n.metadata.name.is_some() {
                label_namespace(Arc::make_mut(n));
            }
        }
    }

    /// Sort one kind's list by namespace/name (a source that rebuilt only
    /// that list sorts only it). Borrowed keys: sorting 20 000 objects
    /// allocates nothing, and a sorted list costs one pass.
    pub fn sort_kind(&mut self, kind: Kind) {
        fn sort<
            K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
        >(
            v: &mut [Arc<K>],
        ) {
            v.sort_unstable_by(|a, b| meta_key(a.metadata()).cmp(&meta_key(b.metadata())));
        }
        fn sort_crd<T>(v: &mut [Arc<T>], meta: impl Fn(&T) -> &ObjectMeta) {
            v.sort_unstable_by(|a, b| meta_key(meta(a)).cmp(&meta_key(meta(b))));
        }
        match kind {
            Kind::Nodes => sort(&mut self.nodes),
            Kind::Pods => sort(&mut self.pods),
            Kind::Services => sort(&mut self.services),
            Kind::EndpointSlices => self
                .endpoint_slices
                .sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))),
            Kind::NetworkPolicies => sort(&mut self.network_policies),
            Kind::Namespaces => sort(&mut self.namespaces),
            Kind::Secrets => sort(&mut self.secrets),
            Kind::IpPools => sort_crd(&mut self.ip_pools, |x| &x.metadata),
            Kind::IpamBlocks => sort_crd(&mut self.ipam_blocks, |x| &x.metadata),
            Kind::BgpConfigurations => sort_crd(&mut self.bgp_configurations, |x| &x.metadata),
            Kind::BgpPeers => sort_crd(&mut self.bgp_peers, |x| &x.metadata),
            Kind::PodNetworkings => sort_crd(&mut self.pod_networkings, |x| &x.metadata),
        }
    }
}

fn namespace_labelled(n: &k8s_openapi::api::core::v1::Namespace) -> bool {
    n.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key("kubernetes.io/metadata.name"))
}

/// Give a namespace the `kubernetes.io/metadata.name` label Kubernetes
/// 1.21+ sets (policies select namespaces by it). Sources call this when
/// an object arrives, once.
pub fn label_namespace(n: &mut k8s_openapi::api::core::v1::Namespace) {
    if let Some(name) = n.metadata.name.clone() {
        n.metadata
            .labels
            .get_or_insert_with(Default::default)
            .entry("kubernetes.io/metadata.name".into())
            .or_insert(name);
    }
}

impl ClusterSnapshot {
    /// Take `prev`'s object wherever it equals this snapshot's (same
    /// namespace/name, same content). For a source that rebuilds every
    /// object on each change (the files source rereads whole files), so
    /// unchanged objects stay the same allocations: consumers skip them by
    /// pointer, and the duplicates are freed at once.
    pub fn reuse_unchanged(&mut self, prev: &ClusterSnapshot) {
        fn reuse<T: PartialEq>(
            new: &mut [Arc<T>],
            old: &[Arc<T>],
            key: impl Fn(&T) -> (&str, &str),
        ) {
            let by_key: std::collections::HashMap<(&str, &str), &Arc<T>> =
                old.iter().map(|o| (key(o), o)).collect();
            for n in new.iter_mut() {
                let hit = by_key
                    .get(&key(n))
                    .filter(|o| ***o == *n)
                    .map(|o| Arc::clone(o));
                if let Some(h) = hit {
                    *n = h;
                }
            }
        }
        reuse(&mut self.nodes, &prev.nodes, |x| meta_key(&x.metadata));
        reuse(&mut self.pods, &prev.pods, |x| meta_key(&x.metadata));
        reuse(&mut self.services, &prev.services, |x| {
            meta_key(&x.metadata)
        });
        reuse(&mut self.endpoint_slices, &prev.endpoint_slices, |x| {
            (x.namespace.as_str(), x.name.as_str())
        });
        reuse(&mut self.network_policies, &prev.network_policies, |x| {
            meta_key(&x.metadata)
        });
        reuse(&mut self.namespaces, &prev.namespaces, |x| {
            meta_key(&x.metadata)
        });
        reuse(&mut self.ip_pools, &prev.ip_pools, |x| {
            meta_key(&x.metadata)
        });
        reuse(&mut self.ipam_blocks, &prev.ipam_blocks, |x| {
            meta_key(&x.metadata)
        });
        reuse(
            &mut self.bgp_configurations,
            &prev.bgp_configurations,
            |x| meta_key(&x.metadata),
        );
        reuse(&mut self.bgp_peers, &prev.bgp_peers, |x| {
            meta_key(&x.metadata)
        });
        reuse(&mut self.pod_networkings, &prev.pod_networkings, |x| {
            meta_key(&x.metadata)
        });
    }
}

/// An object's (namespace, name), borrowed: the order snapshots are sorted in.
pub fn meta_key(m: &ObjectMeta) -> (&str, &str) {
    (
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// The kinds a snapshot holds, for consumers that care about some only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nodes,
    Pods,
    Services,
    EndpointSlices,
    NetworkPolicies,
    Namespaces,
    IpPools,
    IpamBlocks,
    BgpConfigurations,
    BgpPeers,
    PodNetworkings,
    Secrets,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Nodes,
        Kind::Pods,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::NetworkPolicies,
        Kind::Namespaces,
        Kind::IpPools,
        Kind::IpamBlocks,
        Kind::BgpConfigurations,
        Kind::BgpPeers,
        Kind::PodNetworkings,
        Kind::Secrets,
    ];

    /// The API's plural resource name (what `strait status` lists).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Nodes => "nodes",
            Kind::Pods => "pods",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::NetworkPolicies => "networkpolicies",
            Kind::Namespaces => "namespaces",
            Kind::IpPools => "ippools",
            Kind::IpamBlocks => "ipamblocks",
            Kind::BgpConfigurations => "bgpconfigurations",
            Kind::BgpPeers => "bgppeers",
            Kind::PodNetworkings => "podnetworkings",
            Kind::Secrets => "secrets",
        }
    }
}

impl ClusterSnapshot {
    /// Whether `kind` differs between the two snapshots, by object identity:
    /// sources share unchanged objects between snapshots, so this is a
    /// pointer walk, not a deep comparison. (A source that rebuilds every
    /// object reports every kind as changed, which is only slower.)
    pub fn kind_changed(&self, other: &ClusterSnapshot, kind: Kind) -> bool {
        fn differ<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
            a.len() != b.len() || a.iter().zip(b).any(|(x, y)| !Arc::ptr_eq(x, y))
        }
        match kind {
            Kind::Nodes => differ(&self.nodes, &other.nodes),
            Kind::Pods => differ(&self.pods, &other.pods),
            Kind::Services => differ(&self.services, &other.services),
            Kind::EndpointSlices => differ(&self.endpoint_slices, &other.endpoint_slices),
            Kind::NetworkPolicies => differ(&self.network_policies, &other.network_policies),
            Kind::Namespaces => differ(&self.namespaces, &other.namespaces),
            Kind::IpPools => differ(&self.ip_pools, &other.ip_pools),
            Kind::IpamBlocks => differ(&self.ipam_blocks, &other.ipam_blocks),
            Kind::BgpConfigurations => differ(&self.bgp_configurations, &other.bgp_configurations),
            Kind::BgpPeers => differ(&self.bgp_peers, &other.bgp_peers),
            Kind::PodNetworkings => differ(&self.pod_networkings, &other.pod_networkings),
            Kind::Secrets => differ(&self.secrets, &other.secrets),
        }
    }
}

#[derive(Clone, Debug)]
pub enum ClusterObject {
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    Namespace(Box<Namespace>),
    IpPool(Box<IPPool>),
    IpamBlock(Box<IPAMBlock>),
    BgpConfiguration(Box<BGPConfiguration>),
    BgpPeer(Box<BGPPeer>),
    PodNetworking(Box<PodNetworking>),
    Secret(Box<Secret>),
    Other { api_version: String, kind: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML/JSON: {source}")]
    Syntax {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {index}: missing `kind` or `apiVersion`")]
    NoKind { index: usize },
    #[error("document {index} ({kind} {name}): {source}")]
    Invalid {
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: serde_yaml::Error,
    },
}

fn decode_value(
    index: usize,
    v: serde_yaml::Value,
    out: &mut Vec<ClusterObject>,
) -> Result<(), ManifestError> {
    let kind = v.get("kind").and_then(|k| k.as_str()).map(str::to_string);
    let api = v
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .map(str::to_string);
    let (Some(kind), Some(api_version)) = (kind, api) else {
        return Err(ManifestError::NoKind { index });
    };
    let name = v
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>")
        .to_string();
    fn de<T: for<'de> Deserialize<'de>>(
        index: usize,
        kind: &str,
        name: &str,
        v: serde_yaml::Value,
    ) -> Result<Box<T>, ManifestError> {
        serde_yaml::from_value(v)
            .map(Box::new)
            .map_err(|source| ManifestError::Invalid {
                index,
                kind: kind.to_string(),
                name: name.to_string(),
                source,
            })
    }
    let obj = match (api_version.as_str(), kind.as_str()) {
        (_, "List") => {
            if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                for item in items.clone() {
                    decode_value(index, item, out)?;
                }
            }
            return Ok(());
        }
        ("v1", "Node") => ClusterObject::Node(de(index, &kind, &name, v)?),
        ("v1", "Pod") => ClusterObject::Pod(de(index, &kind, &name, v)?),
        ("v1", "Service") => ClusterObject::Service(de(index, &kind, &name, v)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            ClusterObject::EndpointSlice(de(index, &kind, &name, v)?)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            ClusterObject::NetworkPolicy(de(index, &kind, &name, v)?)
        }
        ("v1", "Namespace") => ClusterObject::Namespace(de(index, &kind, &name, v)?),
        ("v1", "Secret") => ClusterObject::Secret(de(index, &kind, &name, v)?),
        (crate::ippool::API_VERSION, "IPPool") => {
            ClusterObject::IpPool(de(index, &kind, &name, v)?)
        }
        (crate::ippool::API_VERSION, "IPAMBlock") => {
            ClusterObject::IpamBlock(de(index, &kind, &name, v)?)
        }
        (crate::ippool::API_VERSION, "BGPConfiguration") => {
            ClusterObject::BgpConfiguration(de(index, &kind, &name, v)?)
        }
        (crate::ippool::API_VERSION, "BGPPeer") => {
            ClusterObject::BgpPeer(de(index, &kind, &name, v)?)
        }
        (crate::ippool::API_VERSION, "PodNetworking") => {
            ClusterObject::PodNetworking(de(index, &kind, &name, v)?)
        }
        _ => ClusterObject::Other { api_version, kind },
    };
    out.push(obj);
    Ok(())
}

/// Decode a manifest file: one or more YAML documents (JSON is YAML too).
pub fn parse_manifests(text: &str) -> Result<Vec<ClusterObject>, ManifestError> {
    let mut out = vec![];
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(doc)
            .map_err(|source| ManifestError::Syntax { index, source })?;
        if v.is_null() {
            continue;
        }
        decode_value(index, v, &mut out)?;
    }
    Ok(out)
}

/// The node's pod CIDRs: spec.podCIDRs, falling back to spec.podCIDR.
/// Unparsable entries are skipped.
pub fn node_pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = &node.spec else {
        return vec![];
    };
    let mut raw: Vec<&String> = spec.pod_cidrs.iter().flatten().collect();
    if raw.is_empty() {
        raw.extend(spec.pod_cidr.as_ref());
    }
    raw.iter()
        .filter_map(|s| s.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// The node's InternalIP of the wanted family.
pub fn node_internal_ip(node: &Node, v4: bool) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == v4)
}

/// A Node as the lab and tests write it.
pub fn test_node(name: &str, pod_cidr: Option<&str>, ip: Option<&str>) -> Node {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(Into::into),
            pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
            ..Default::default()
        }),
        status: ip.map(|ip| NodeStatus {
            addresses: Some(vec![NodeAddress {
                address: ip.into(),
                type_: "InternalIP".into(),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml_and_lists() {
        let text = r#"
apiVersion: v1
kind: Node
metadata: {name: a}
spec: {podCIDR: 10.1.0.0/24}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: default}, spec: {nodeName: a, containers: [{name: c}]}}
- {apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}
---
"#;
        let mut snap = ClusterSnapshot::default();
        for o in parse_manifests(text).unwrap() {
            snap.add(o);
        }
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(snap.pods.len(), 1);
        let n = snap.node("a").unwrap();
        assert_eq!(
            node_pod_cidrs(n),
            vec!["10.1.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            node_internal_ip(n, true),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(node_internal_ip(n, false), None);
    }

    #[test]
    fn reports_which_document_is_wrong() {
        let e = parse_manifests("kind: Pod\n").unwrap_err();
        assert!(matches!(e, ManifestError::NoKind { index: 0 }));
        let e = parse_manifests("apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("document 1") && msg.contains("Pod p"), "{msg}");
        assert!(parse_manifests("a: [").is_err());
    }

    #[test]
    fn pod_cidrs_prefers_the_plural_field_and_truncates() {
        let mut n = test_node("a", Some("10.1.0.7/24"), None);
        assert_eq!(
            node_pod_cidrs(&n),
            vec!["10.1.0.0/24".parse::<IpNet>().unwrap()]
        );
        n.spec.as_mut().unwrap().pod_cidrs = None;
        assert_eq!(node_pod_cidrs(&n).len(), 1);
        n.spec.as_mut().unwrap().pod_cidr = Some("garbage".into());
        assert!(node_pod_cidrs(&n).is_empty());
    }
}
