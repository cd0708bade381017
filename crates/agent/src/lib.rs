//! The strait node agent. One runs per node: it owns the node's IPAM (the CNI
//! plugin asks it for addresses over a unix socket), watches a cluster source
//! for Nodes, Pods, Services, EndpointSlices and NetworkPolicies, and
//! reconciles the kernel to match: in routed mode, a route to every other
//! node's pod CIDR via its node IP, a /32 per local pod, and a blackhole for
//! the node's own pod CIDR.
//!
//! Reconcilers are level-triggered: each pass computes the desired state from
//! the latest snapshot and applies the difference, so a restart or a missed
//! event heals itself on the next pass.

pub mod api;
pub mod config;
pub mod daemon;
pub mod ipam;
pub mod reconcile;
pub mod source;
pub mod store;

pub use config::AgentConfig;
pub use daemon::run;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
