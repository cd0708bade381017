//! IP pools, as Calico's `IPPool`: address ranges beside the nodes' pod
//! CIDRs that a pod asks for by annotation (`strait.dev/ippool: NAME`).
//! A pool is carved into blocks (a /26 by default); a node claims a block
//! when it first needs an address of the pool, by creating an `IPAMBlock`
//! object named after the block. The create is the lock: the control plane
//! refuses a second create of the same name, so two nodes never hold one
//! block. Other nodes route each block to the node that holds it.
//!
//! Both kinds are strait's own CRDs (`strait.dev/v1alpha1`); the CRD YAML
//! in deploy/crds.yaml is generated from these types (`strait crds`).
//! Everything is address-family generic: a pool may be IPv6.

use crate::policy::selector::selects;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The pod annotation that picks a pool.
pub const POOL_ANNOTATION: &str = "strait.dev/ippool";
pub const API_VERSION: &str = "strait.dev/v1alpha1";

/// Default block sizes, Calico's: 64 addresses.
pub const DEFAULT_BLOCK_V4: u8 = 26;
pub const DEFAULT_BLOCK_V6: u8 = 122;

/// An address range pods may take addresses from.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    derive = "PartialEq",
    doc = "An IP pool: a range pods take addresses from by the strait.dev/ippool annotation.",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Block","type":"integer","jsonPath":".spec.blockSize"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's range, IPv4 or IPv6 (e.g. 198.19.128.0/20).
    pub cidr: String,
    /// Prefix length of the blocks nodes claim: 26 (IPv4) or 122 (IPv6)
    /// unless set. Between the pool's prefix length and 32 (128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// Nodes that may take addresses from the pool; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// A disabled pool hands out no new addresses; pods holding some keep
    /// them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// An underlay subnet (Hybridnet's VLAN mode): the pool is a subnet of
    /// the datacenter's VLAN with this id (1-4094); its pods' traffic
    /// leaves the nodes tagged.
    #[serde(default, rename = "vlanID", skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// With vlanID: the subnet's gateway (the router between VLANs), an
    /// address inside cidr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A block of a pool, held by one node.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    derive = "PartialEq",
    doc = "A block of an IPPool, held by one node (created by its agent).",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's range; the object's name is derived from it.
    pub cidr: String,
    /// The pool it was carved from.
    pub pool: String,
    /// The node holding it.
    pub node: String,
}

/// The CRDs of strait's own kinds, as deploy/crds.yaml ships them.
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube_core::CustomResourceExt;
    vec![
        IPPool::crd(),
        IPAMBlock::crd(),
        crate::bgp::BGPConfiguration::crd(),
        crate::bgp::BGPPeer::crd(),
        crate::cloud::trunking::PodNetworking::crd(),
    ]
}

/// deploy/crds.yaml's text.
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# strait's CustomResourceDefinitions, generated from the Rust types\n# (crates/model/src/ippool.rs, bgp.rs, cloud/trunking.rs): `strait crds > deploy/crds.yaml`.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRDs serialise"));
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("IPPool {pool}: cidr {cidr:?} is not an address range (e.g. 198.19.128.0/20)")]
    Cidr { pool: String, cidr: String },
    #[error(
        "IPPool {pool}: blockSize {size} must be between the pool's prefix length {min} and {max}"
    )]
    BlockSize {
        pool: String,
        size: u8,
        min: u8,
        max: u8,
    },
    #[error("IPPool {pool}: nodeSelector: {error}")]
    Selector { pool: String, error: String },
    #[error("pod {pod} asks for IPPool {pool:?} (annotation {POOL_ANNOTATION}), which does not exist; create it or fix the annotation")]
    NoSuchPool { pod: String, pool: String },
    #[error("IPPool {pool} ({cidr}) overlaps node {node}'s pod CIDR {node_cidr}; a pool must not share addresses with any node's podCIDR")]
    OverlapsNode {
        pool: String,
        cidr: IpNet,
        node: String,
        node_cidr: IpNet,
    },
    #[error("pod {pod} asks for IPPool {pool}, which is disabled")]
    Disabled { pod: String, pool: String },
    #[error("pod {pod} asks for IPPool {pool}, whose nodeSelector does not select node {node}; schedule the pod on a selected node or widen the selector")]
    NodeNotSelected {
        pod: String,
        pool: String,
        node: String,
    },
}

/// A pool, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub cidr: IpNet,
    pub block_prefix: u8,
    pub node_selector: Option<LabelSelector>,
    pub disabled: bool,
    /// An underlay subnet's gateway (the pool is a link's subnet then).
    pub gateway: Option<std::net::IpAddr>,
}

impl Pool {
    /// Addresses never handed out: on an underlay subnet (a real link's
    /// subnet, unlike routed blocks) its network and broadcast addresses
    /// and its gateway's.
    pub fn reserved(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        let Some(gw) = self.gateway else {
            return Default::default();
        };
        let mut out = std::collections::BTreeSet::from([gw, self.cidr.network()]);
        if self.cidr.addr().is_ipv4() {
            out.insert(self.cidr.broadcast());
        }
        out
    }

    pub fn from_crd(p: &IPPool) -> Result<Pool, PoolError> {
        let name = p.metadata.name.clone().unwrap_or_default();
        let cidr: IpNet = p.spec.cidr.parse().map_err(|_| PoolError::Cidr {
            pool: name.clone(),
            cidr: p.spec.cidr.clone(),
        })?;
        let cidr = cidr.trunc();
        let (default, max) = match cidr {
            IpNet::V4(_) => (DEFAULT_BLOCK_V4, 32),
            IpNet::V6(_) => (DEFAULT_BLOCK_V6, 128),
        };
        // A pool smaller than a default block is one block.
        let size = p.spec.block_size.unwrap_or(default.max(cidr.prefix_len()));
        if size < cidr.prefix_len() || size > max {
            return Err(PoolError::BlockSize {
                pool: name,
                size,
                min: cidr.prefix_len(),
                max,
            });
        }
        if let Some(sel) = &p.spec.node_selector {
            selects(sel, &BTreeMap::new()).map_err(|e| PoolError::Selector {
                pool: name.clone(),
                error: e.to_string(),
            })?;
        }
        Ok(Pool {
            name,
            cidr,
            block_prefix: size,
            node_selector: p.spec.node_selector.clone(),
            disabled: p.spec.disabled,
            gateway: p
                .spec
                .vlan_id
                .and(p.spec.gateway.as_deref())
                .and_then(|g| g.parse().ok()),
        })
    }

    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.node_selector {
            None => true,
            Some(sel) => selects(sel, labels).unwrap_or(false),
        }
    }

    /// The first block of the pool that overlaps none of `taken` (blocks
    /// any node holds, of any pool), in address order.
    pub fn free_block<'a>(&self, taken: impl Iterator<Item = &'a IpNet> + Clone) -> Option<IpNet> {
        self.cidr
            .subnets(self.block_prefix)
            .ok()?
            .find(|b| !taken.clone().any(|t| overlaps(b, t)))
    }
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// An IPAMBlock's object name: its range with `.`, `:` and `/` as `-`
/// (`198-19-128-0-26`), a valid Kubernetes name for either family.
pub fn block_name(cidr: &IpNet) -> String {
    let addr = match cidr {
        IpNet::V4(n) => n.network().to_string(),
        // Every group written out, so the name never has an empty part.
        IpNet::V6(n) => n
            .network()
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    format!("{}-{}", addr.replace('.', "-"), cidr.prefix_len())
}

/// A held block, checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    pub cidr: IpNet,
    pub pool: String,
    pub node: String,
}

impl Block {
    /// None for an object whose range does not parse or whose name is not
    /// its range's (written by hand, not by an agent).
    pub fn from_crd(b: &IPAMBlock) -> Option<Block> {
        let cidr: IpNet = b.spec.cidr.parse().ok()?;
        (b.metadata.name.as_deref() == Some(block_name(&cidr).as_str())).then(|| Block {
            cidr,
            pool: b.spec.pool.clone(),
            node: b.spec.node.clone(),
        })
    }

    pub fn to_crd(&self) -> IPAMBlock {
        let mut o = IPAMBlock::new(
            &block_name(&self.cidr),
            IPAMBlockSpec {
                cidr: self.cidr.to_string(),
                pool: self.pool.clone(),
                node: self.node.clone(),
            },
        );
        o.metadata.labels = Some(BTreeMap::from([
            ("strait.dev/node".to_string(), self.node.clone()),
            ("strait.dev/pool".to_string(), self.pool.clone()),
        ]));
        o
    }
}

/// The pool a pod's annotation names, if it names one.
pub fn requested_pool(pod: &k8s_openapi::api::core::v1::Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(POOL_ANNOTATION)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// Resolve the pool a pod on `node` asks for, against the snapshot's pools
/// and nodes (a pool that overlaps a node's pod CIDR is refused).
pub fn pool_for_pod(
    pod_ref: &str,
    wanted: &str,
    snap: &crate::cluster::ClusterSnapshot,
    node: &str,
) -> Result<Pool, PoolError> {
    let node_labels = snap
        .node(node)
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    let crd = snap
        .ip_pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(wanted))
        .ok_or_else(|| PoolError::NoSuchPool {
            pod: pod_ref.into(),
            pool: wanted.into(),
        })?;
    let pool = Pool::from_crd(crd)?;
    if pool.disabled {
        return Err(PoolError::Disabled {
            pod: pod_ref.into(),
            pool: pool.name,
        });
    }
    for n in &snap.nodes {
        for c in crate::cluster::node_pod_cidrs(n) {
            if overlaps(&c, &pool.cidr) {
                return Err(PoolError::OverlapsNode {
                    pool: pool.name,
                    cidr: pool.cidr,
                    node: n.metadata.name.clone().unwrap_or_default(),
                    node_cidr: c,
                });
            }
        }
    }
    if !pool.selects_node(&node_labels) {
        return Err(PoolError::NodeNotSelected {
            pod: pod_ref.into(),
            pool: pool.name,
            node: node.into(),
        });
    }
    Ok(pool)
}

/// Every block held, as the snapshot has them (hand-written objects that
/// do not check out are left out).
pub fn held_blocks(snap: &crate::cluster::ClusterSnapshot) -> Vec<Block> {
    snap.ipam_blocks
        .iter()
        .filter_map(|b| Block::from_crd(b))
        .collect()
}

#[cfg(test)]
mod tests;
