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

use std::sync::{Arc, Mutex};
use strait_model::api::SourceStatus;
use strait_model::cluster::ClusterSnapshot;
use tokio::sync::watch;

pub trait ClusterSource: Send + Sync {
    /// The receiver always holds the newest snapshot.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>>;
    /// How the source is doing, for `strait status`.
    fn health(&self) -> SourceStatus;
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
