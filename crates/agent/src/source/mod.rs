//! Cluster sources. A source delivers the latest [`ClusterSnapshot`] through
//! a watch channel; reconcilers read the newest value whenever it changes, so
//! a burst of edits costs one pass.
//!
//! - [`files`]: a directory of manifests (the lab's default, and tests');
//! - [`kube`]: a kube-apiserver, through reflectors (the primary control
//!   plane);
//! - [`etcd`]: strait's own etcd datastore, without an apiserver.

pub mod etcd;
pub mod files;
pub mod kube;

pub use files::DirectorySource;

use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use strait_model::api::SourceStatus;
use strait_model::cluster::ClusterSnapshot;
use strait_model::ippool::Block;
use tokio::sync::watch;

pub trait ClusterSource: Send + Sync {
    /// The receiver always holds the newest snapshot.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>>;
    /// How the source is doing, for `strait status`.
    fn health(&self) -> SourceStatus;
    /// Create `block`'s IPAMBlock object unless one of that name exists:
    /// true when this call created it (the node now holds the block),
    /// false when another holder was first. The create is the lock.
    fn claim_block<'a>(&'a self, block: &'a Block) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Delete the IPAMBlock object of `block` (already gone is fine).
    fn release_block<'a>(&'a self, block: &'a Block) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Health shared between a source's watch tasks and `strait status`.
pub type SharedHealth = Arc<Mutex<SourceStatus>>;

/// Unix time in ms, for `SourceStatus::last_event_ms`.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
