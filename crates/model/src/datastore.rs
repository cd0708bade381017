//! strait's etcd datastore: Kubernetes objects kept as JSON in an etcd of
//! strait's own (Calico's "etcd datastore" mode), without a kube-apiserver.
//!
//! Key layout, under a prefix (default `/strait/v1/`):
//!
//! ```text
//! <prefix><resource>/<name>               cluster-scoped (nodes, namespaces,
//!                                         ippools, ipamblocks, bgpconfigurations, bgppeers)
//! <prefix>secrets/strait-secrets/<name>   BGP passwords (only that namespace is read)
//! <prefix><resource>/<namespace>/<name>   namespaced (pods, services, ...)
//! ```
//!
//! The value is the object as the Kubernetes API writes it (`apiVersion`,
//! `kind`, `metadata`, `spec`, `status`), EndpointSlices as
//! `discovery.k8s.io/v1`. [`Store`] is the watcher's state machine with no
//! I/O: a consistent list, then events in revision order.

use crate::bgp::{BGPConfiguration, BGPPeer};
use crate::cluster::{ClusterObject, ClusterSnapshot, Kind};
use crate::ippool::{IPAMBlock, IPPool};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const DEFAULT_PREFIX: &str = "/strait/v1/";

/// Every resource in the datastore: its path segment, kind, and whether it
/// is namespaced.
pub const RESOURCES: [(&str, Kind, bool); 12] = [
    ("nodes", Kind::Nodes, false),
    ("namespaces", Kind::Namespaces, false),
    ("pods", Kind::Pods, true),
    ("services", Kind::Services, true),
    ("endpointslices", Kind::EndpointSlices, true),
    ("networkpolicies", Kind::NetworkPolicies, true),
    ("ippools", Kind::IpPools, false),
    ("ipamblocks", Kind::IpamBlocks, false),
    ("bgpconfigurations", Kind::BgpConfigurations, false),
    ("bgppeers", Kind::BgpPeers, false),
    ("podnetworkings", Kind::PodNetworkings, false),
    ("secrets", Kind::Secrets, true),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {0:?} is not under the prefix {1:?}")]
    Prefix(String, String),
    #[error("key {0:?}: unknown resource {1:?} (known: nodes, namespaces, pods, services, endpointslices, networkpolicies, ippools, ipamblocks, bgpconfigurations, bgppeers, podnetworkings, secrets)")]
    Resource(String, String),
    #[error("key {0:?}: expected {1}")]
    Shape(String, &'static str),
}

/// What a key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub kind: Kind,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

fn kind_named(kind: &str) -> Option<Kind> {
    Some(match kind {
        "Node" => Kind::Nodes,
        "Namespace" => Kind::Namespaces,
        "Pod" => Kind::Pods,
        "Service" => Kind::Services,
        "EndpointSlice" => Kind::EndpointSlices,
        "NetworkPolicy" => Kind::NetworkPolicies,
        "IPPool" => Kind::IpPools,
        "IPAMBlock" => Kind::IpamBlocks,
        "BGPConfiguration" => Kind::BgpConfigurations,
        "BGPPeer" => Kind::BgpPeers,
        "PodNetworking" => Kind::PodNetworkings,
        "Secret" => Kind::Secrets,
        _ => return None,
    })
}

/// Whether objects of this Kubernetes kind are namespaced (None: a kind
/// the datastore does not hold).
pub fn namespaced(kind: &str) -> Option<bool> {
    kind_named(kind).map(|k| resource_of(k).1)
}

fn resource_of(kind: Kind) -> (&'static str, bool) {
    let (r, _, ns) = RESOURCES
        .iter()
        .find(|(_, k, _)| *k == kind)
        .expect("every kind has a resource");
    (r, *ns)
}

/// The key of an object given by its Kubernetes kind ("Pod", "Node", ...);
/// None for kinds the datastore does not hold. A namespaced object without
/// a namespace is in `default`, as the API would put it.
pub fn key_of(prefix: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<String> {
    let (resource, namespaced) = resource_of(kind_named(kind)?);
    Some(if namespaced {
        let ns = namespace.unwrap_or("default");
        format!("{prefix}{resource}/{ns}/{name}")
    } else {
        format!("{prefix}{resource}/{name}")
    })
}

/// The key of an object (None for kinds the datastore does not hold).
pub fn key(prefix: &str, obj: &ClusterObject) -> Option<String> {
    let (kind, meta) = match obj {
        ClusterObject::Node(o) => (Kind::Nodes, &o.metadata),
        ClusterObject::Namespace(o) => (Kind::Namespaces, &o.metadata),
        ClusterObject::Pod(o) => (Kind::Pods, &o.metadata),
        ClusterObject::Service(o) => (Kind::Services, &o.metadata),
        ClusterObject::EndpointSlice(o) => (Kind::EndpointSlices, &o.metadata),
        ClusterObject::NetworkPolicy(o) => (Kind::NetworkPolicies, &o.metadata),
        ClusterObject::IpPool(o) => (Kind::IpPools, &o.metadata),
        ClusterObject::IpamBlock(o) => (Kind::IpamBlocks, &o.metadata),
        ClusterObject::BgpConfiguration(o) => (Kind::BgpConfigurations, &o.metadata),
        ClusterObject::BgpPeer(o) => (Kind::BgpPeers, &o.metadata),
        ClusterObject::PodNetworking(o) => (Kind::PodNetworkings, &o.metadata),
        ClusterObject::Secret(o) => (Kind::Secrets, &o.metadata),
        ClusterObject::Other { .. } => return None,
    };
    let (resource, namespaced) = resource_of(kind);
    let name = meta.name.as_deref()?;
    Some(if namespaced {
        let ns = meta.namespace.as_deref().unwrap_or("default");
        format!("{prefix}{resource}/{ns}/{name}")
    } else {
        format!("{prefix}{resource}/{name}")
    })
}

/// What `key` names.
pub fn parse_key(prefix: &str, key: &[u8]) -> Result<KeyRef, KeyError> {
    let text = String::from_utf8_lossy(key);
    let rest = text
        .strip_prefix(prefix)
        .ok_or_else(|| KeyError::Prefix(text.to_string(), prefix.into()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (_, kind, namespaced) = RESOURCES
        .iter()
        .find(|(r, _, _)| *r == parts[0])
        .ok_or_else(|| KeyError::Resource(text.to_string(), parts[0].into()))?;
    let ok = |s: &&str| !s.is_empty();
    match (namespaced, &parts[1..]) {
        (false, [name]) if ok(name) => Ok(KeyRef {
            kind: *kind,
            namespace: String::new(),
            name: name.to_string(),
        }),
        (true, [ns, name]) if ok(ns) && ok(name) => Ok(KeyRef {
            kind: *kind,
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        (false, _) => Err(KeyError::Shape(text.to_string(), "<resource>/<name>")),
        (true, _) => Err(KeyError::Shape(
            text.to_string(),
            "<resource>/<namespace>/<name>",
        )),
    }
}

/// One stored object, shared with the snapshots that hold it.
#[derive(Clone, Debug)]
enum Obj {
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<crate::slice::Slice>),
    NetworkPolicy(Arc<NetworkPolicy>),
    IpPool(Arc<IPPool>),
    IpamBlock(Arc<IPAMBlock>),
    BgpConfiguration(Arc<BGPConfiguration>),
    BgpPeer(Arc<BGPPeer>),
    PodNetworking(Arc<crate::cloud::trunking::PodNetworking>),
    Secret(Arc<Secret>),
}

/// Decode a value stored at `key`. The object's kind, namespace and name
/// must be the key's: a value filed under the wrong key is refused rather
/// than guessed at.
fn decode(k: &KeyRef, value: &[u8]) -> Result<Obj, String> {
    fn de<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<Arc<T>, String> {
        serde_json::from_slice(v)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let want = match k.kind {
        Kind::Nodes => ("v1", "Node"),
        Kind::Namespaces => ("v1", "Namespace"),
        Kind::Pods => ("v1", "Pod"),
        Kind::Services => ("v1", "Service"),
        Kind::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSlice"),
        Kind::NetworkPolicies => ("networking.k8s.io/v1", "NetworkPolicy"),
        Kind::IpPools => (crate::ippool::API_VERSION, "IPPool"),
        Kind::IpamBlocks => (crate::ippool::API_VERSION, "IPAMBlock"),
        Kind::BgpConfigurations => (crate::ippool::API_VERSION, "BGPConfiguration"),
        Kind::BgpPeers => (crate::ippool::API_VERSION, "BGPPeer"),
        Kind::PodNetworkings => (crate::ippool::API_VERSION, "PodNetworking"),
        Kind::Secrets => ("v1", "Secret"),
    };
    let got = (
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    );
    if got != want {
        return Err(format!(
            "holds {} {}, expected {} {}",
            got.0, got.1, want.0, want.1
        ));
    }
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
    let ns_ok = k.namespace.is_empty() || ns == k.namespace;
    if name != k.name || !ns_ok {
        return Err(format!("holds an object named {ns}/{name}"));
    }
    Ok(match k.kind {
        Kind::Nodes => Obj::Node(de(value)?),
        Kind::Namespaces => {
            let mut n: Namespace = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            // Once here rather than on every snapshot.
            crate::cluster::label_namespace(&mut n);
            Obj::Namespace(Arc::new(n))
        }
        Kind::Pods => Obj::Pod(de(value)?),
        Kind::Services => Obj::Service(de(value)?),
        Kind::EndpointSlices => {
            let s: EndpointSlice = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            Obj::EndpointSlice(Arc::new(crate::slice::Slice::from_k8s(&s)))
        }
        Kind::NetworkPolicies => Obj::NetworkPolicy(de(value)?),
        Kind::IpPools => Obj::IpPool(de(value)?),
        Kind::IpamBlocks => Obj::IpamBlock(de(value)?),
        Kind::BgpConfigurations => Obj::BgpConfiguration(de(value)?),
        Kind::BgpPeers => Obj::BgpPeer(de(value)?),
        Kind::PodNetworkings => Obj::PodNetworking(de(value)?),
        Kind::Secrets => Obj::Secret(de(value)?),
    })
}

/// A change the watcher reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
        mod_revision: i64,
    },
    Delete {
        key: &'a [u8],
        mod_revision: i64,
    },
}

/// What applying changes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The snapshot differs.
    pub changed: bool,
    /// Changes at or before the store's revision, skipped (a resumed watch
    /// that repeats what was already seen).
    pub stale: usize,
    /// Keys that could not be read, with why; their objects are dropped
    /// (an unreadable object is absent, not stale).
    pub refused: Vec<String>,
}

/// The datastore's objects as the watcher knows them.
pub struct Store {
    prefix: String,
    objects: BTreeMap<Vec<u8>, Obj>,
    revision: i64,
}

impl Store {
    /// Every node's pods are kept: NetworkPolicy selectors resolve to pods
    /// anywhere in the cluster.
    pub fn new(prefix: &str) -> Self {
        Store {
            prefix: prefix.into(),
            objects: BTreeMap::new(),
            revision: 0,
        }
    }

    /// The revision the store is at: a watch resumes after it.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Read one key (Ok(None): nothing to keep).
    fn read(&self, key: &[u8], value: &[u8]) -> Result<Option<Obj>, String> {
        let k = parse_key(&self.prefix, key).map_err(|e| e.to_string())?;
        let o = decode(&k, value).map_err(|e| format!("{}: {e}", String::from_utf8_lossy(key)))?;
        Ok(Some(o))
    }

    /// Replace everything with a consistent list taken at `revision`.
    pub fn replace<'a>(
        &mut self,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        revision: i64,
    ) -> Applied {
        let mut out = Applied {
            changed: true,
            ..Default::default()
        };
        let mut objects = BTreeMap::new();
        for (key, value) in kvs {
            match self.read(key, value) {
                Ok(Some(o)) => {
                    // Unchanged objects keep their identity, so consumers
                    // that compare by pointer see no change after a relist.
                    let kept = self
                        .objects
                        .get(key)
                        .filter(|old| same(old, &o))
                        .cloned()
                        .unwrap_or(o);
                    objects.insert(key.to_vec(), kept);
                }
                Ok(None) => {}
                Err(e) => out.refused.push(e),
            }
        }
        self.objects = objects;
        self.revision = revision;
        out
    }

    /// Apply watch changes, in revision order.
    pub fn apply(&mut self, changes: &[Change<'_>]) -> Applied {
        let mut out = Applied::default();
        for c in changes {
            let (key, rev) = match c {
                Change::Put {
                    key, mod_revision, ..
                }
                | Change::Delete { key, mod_revision } => (*key, *mod_revision),
            };
            if rev <= self.revision {
                out.stale += 1;
                continue;
            }
            self.revision = rev;
            let now = match c {
                Change::Put { value, .. } => match self.read(key, value) {
                    Ok(o) => o,
                    Err(e) => {
                        out.refused.push(e);
                        None
                    }
                },
                Change::Delete { .. } => None,
            };
            out.changed |= match now {
                Some(o) => {
                    self.objects.insert(key.to_vec(), o);
                    true
                }
                None => self.objects.remove(key).is_some(),
            };
        }
        out
    }

    /// Move the revision on without changes (a progress notification).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Every object, shared.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut s = ClusterSnapshot::default();
        for o in self.objects.values() {
            match o {
                Obj::Node(x) => s.nodes.push(x.clone()),
                Obj::Namespace(x) => s.namespaces.push(x.clone()),
                Obj::Pod(x) => s.pods.push(x.clone()),
                Obj::Service(x) => s.services.push(x.clone()),
                Obj::EndpointSlice(x) => s.endpoint_slices.push(x.clone()),
                Obj::NetworkPolicy(x) => s.network_policies.push(x.clone()),
                Obj::IpPool(x) => s.ip_pools.push(x.clone()),
                Obj::IpamBlock(x) => s.ipam_blocks.push(x.clone()),
                Obj::BgpConfiguration(x) => s.bgp_configurations.push(x.clone()),
                Obj::BgpPeer(x) => s.bgp_peers.push(x.clone()),
                Obj::PodNetworking(x) => s.pod_networkings.push(x.clone()),
                Obj::Secret(x) => s.secrets.push(x.clone()),
            }
        }
        s.normalize();
        s
    }
}

fn same(a: &Obj, b: &Obj) -> bool {
    match (a, b) {
        (Obj::Node(x), Obj::Node(y)) => x == y,
        (Obj::Namespace(x), Obj::Namespace(y)) => x == y,
        (Obj::Pod(x), Obj::Pod(y)) => x == y,
        (Obj::Service(x), Obj::Service(y)) => x == y,
        (Obj::EndpointSlice(x), Obj::EndpointSlice(y)) => x == y,
        (Obj::NetworkPolicy(x), Obj::NetworkPolicy(y)) => x == y,
        (Obj::IpPool(x), Obj::IpPool(y)) => x == y,
        (Obj::IpamBlock(x), Obj::IpamBlock(y)) => x == y,
        (Obj::BgpConfiguration(x), Obj::BgpConfiguration(y)) => x == y,
        (Obj::BgpPeer(x), Obj::BgpPeer(y)) => x == y,
        (Obj::PodNetworking(x), Obj::PodNetworking(y)) => x == y,
        (Obj::Secret(x), Obj::Secret(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
#[path = "datastore_tests.rs"]
mod tests;
