//! The strait node agent. One runs per node: it owns the node's IPAM (the CNI
//! plugin asks it for addresses over a unix socket), watches a cluster source
//! for Nodes, Pods, Services, EndpointSlices and NetworkPolicies, and
//! reconciles the kernel to match: in routed mode, a route to every other
//! node's pod CIDR via its node IP, a /32 per local pod, and a blackhole for
//! the node's own pod CIDR.
//!
//! One reconciler per concern (see [`reconcile`]): endpoints, node routes,
//! services and health checks. Each is level-triggered: a pass computes the
//! desired state from the latest snapshot and the kernel and applies the
//! difference, so a restart or a missed event heals itself on the next
//! pass. Modes are backends behind traits, chosen by name: the cross-node
//! mode ([`crossnode`]) and the service backend ([`svcbackend`]).

pub mod api;
pub mod config;
pub mod crossnode;
pub mod daemon;
pub mod datapath;
pub mod eni;
pub mod explain_api;
pub mod ipam;
pub mod macvlan;
pub mod metrics;
pub mod policybackend;
pub mod pools;
pub mod readiness;
pub mod reconcile;
pub mod source;
pub mod store;
pub mod svcbackend;

pub use config::{AgentConfig, SourceConfig};
pub use daemon::run;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
