//! The etcd datastore source: strait's objects kept in an etcd of its own,
//! with no kube-apiserver (the key layout is in
//! `strait_model::datastore`). One consistent list of the prefix, then one
//! watch from the revision after it:
//!
//! - a broken connection resumes the watch after the last revision seen,
//!   so nothing is missed and nothing is listed again;
//! - a compacted start revision ("required revision has been compacted")
//!   lists again, counted as a relist;
//! - errors are retried with backoff (0.2 s doubling to 5 s).
//!
//! The first snapshot is published only after the first list.

use super::{now_ms, ClusterSource, SharedHealth};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_etcd::{Client, Event, WatchMsg};
use strait_model::api::SourceStatus;
use strait_model::cluster::ClusterSnapshot;
use strait_model::datastore::{Change, Store, RESOURCES};
use tokio::sync::{watch, Notify};

/// Events closer together than this are published as one snapshot (as in
/// the apiserver source).
const COALESCE: Duration = Duration::from_millis(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Wait `backoff`, then double it (up to BACKOFF_MAX).
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

pub struct EtcdSource {
    rx: watch::Receiver<Arc<ClusterSnapshot>>,
    health: SharedHealth,
    client: Client,
    prefix: String,
}

struct Shared {
    store: Mutex<Store>,
    health: SharedHealth,
    dirty: Notify,
    prefix: String,
}

impl Shared {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        let mut h = self.health.lock().unwrap();
        h.errors += 1;
        h.last_error = Some(format!("{what}: {e}"));
        tracing::warn!(error = %e, "etcd source: {what}; retrying with backoff");
    }

    fn refused(&self, refused: &[String]) {
        for r in refused {
            self.error("object not readable, taken as absent", r);
        }
    }

    /// List until it works (waiting `backoff`, doubling, between tries).
    async fn list_until_ok(&self, client: &Client, what: &str, backoff: &mut Duration) {
        while let Err(e) = self.list(client).await {
            self.error(what, &e);
            back_off(backoff).await;
        }
    }

    /// List the prefix and replace the store.
    async fn list(&self, client: &Client) -> Result<(), strait_etcd::Error> {
        let l = client.range_prefix(self.prefix.as_bytes()).await?;
        let applied = self.store.lock().unwrap().replace(
            l.kvs
                .iter()
                .map(|kv| (kv.key.as_slice(), kv.value.as_slice())),
            l.revision,
        );
        self.refused(&applied.refused);
        self.health.lock().unwrap().last_event_ms = Some(now_ms());
        self.dirty.notify_one();
        tracing::info!(
            keys = l.kvs.len(),
            revision = l.revision,
            "etcd source: listed"
        );
        Ok(())
    }

    /// Watch after the store's revision until the stream ends or fails.
    /// Ok(true) when the history was compacted and a relist is due.
    async fn watch(
        &self,
        client: &Client,
        connected: &mut bool,
    ) -> Result<bool, strait_etcd::Error> {
        let from = self.store.lock().unwrap().revision() + 1;
        let mut w = client.watch_prefix(self.prefix.as_bytes(), from).await?;
        *connected = true;
        loop {
            let Some(msg) = w.next().await? else {
                return Ok(false);
            };
            match msg {
                WatchMsg::Created { .. } => {}
                WatchMsg::Progress { revision } => {
                    self.store.lock().unwrap().advance(revision);
                }
                WatchMsg::Compacted { compact_revision } => {
                    tracing::info!(
                        compact_revision,
                        from,
                        "etcd source: the watch's start revision was compacted; listing again"
                    );
                    return Ok(true);
                }
                WatchMsg::Canceled { reason } => {
                    self.error("watch canceled by etcd", reason);
                    return Ok(false);
                }
                WatchMsg::Events { events, .. } => {
                    let changes: Vec<Change<'_>> = events
                        .iter()
                        .map(|e| match e {
                            Event::Put(kv) => Change::Put {
                                key: &kv.key,
                                value: &kv.value,
                                mod_revision: kv.mod_revision,
                            },
                            Event::Delete { key, mod_revision } => Change::Delete {
                                key,
                                mod_revision: *mod_revision,
                            },
                        })
                        .collect();
                    let applied = self.store.lock().unwrap().apply(&changes);
                    self.refused(&applied.refused);
                    self.health.lock().unwrap().last_event_ms = Some(now_ms());
                    if applied.changed {
                        self.dirty.notify_one();
                    }
                }
            }
        }
    }
}

impl EtcdSource {
    /// Connect, list, start the watch, and return once the first list is in
    /// (retrying, and saying why, until etcd answers).
    pub async fn start(endpoint: &str, prefix: &str) -> anyhow::Result<Self> {
        if !prefix.starts_with('/') || !prefix.ends_with('/') {
            anyhow::bail!("etcd prefix {prefix:?}: must start and end with '/' (like /strait/v1/)");
        }
        let client = Client::new(endpoint)?;
        let health: SharedHealth = Arc::new(Mutex::new(SourceStatus {
            kind: "etcd".into(),
            from: format!("{endpoint} {prefix}"),
            kinds: RESOURCES
                .iter()
                .map(|(r, _, ns)| {
                    if *ns {
                        format!("{r} ({prefix}{r}/<namespace>/<name>)")
                    } else {
                        format!("{r} ({prefix}{r}/<name>)")
                    }
                })
                .collect(),
            ..Default::default()
        }));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(prefix)),
            health: health.clone(),
            dirty: Notify::new(),
            prefix: prefix.into(),
        });
        let mut backoff = BACKOFF_MIN;
        shared
            .list_until_ok(&client, "first list", &mut backoff)
            .await;
        health.lock().unwrap().ready = true;
        let first = shared.store.lock().unwrap().snapshot();
        let (tx, rx) = watch::channel(Arc::new(first));
        let sh = shared.clone();
        tokio::spawn(async move {
            loop {
                sh.dirty.notified().await;
                if tx.is_closed() {
                    break;
                }
                tokio::time::sleep(COALESCE).await;
                let snap = sh.store.lock().unwrap().snapshot();
                tx.send_replace(Arc::new(snap));
            }
        });
        let claims = client.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                let mut connected = false;
                let relist = match shared.watch(&client, &mut connected).await {
                    Ok(relist) => relist,
                    Err(strait_etcd::Error::Compacted) => true,
                    Err(e) => {
                        shared.error("watch", &e);
                        false
                    }
                };
                if connected {
                    backoff = BACKOFF_MIN;
                }
                if relist {
                    shared.list_until_ok(&client, "relist", &mut backoff).await;
                    shared.health.lock().unwrap().relists += 1;
                } else {
                    back_off(&mut backoff).await;
                }
            }
        });
        Ok(EtcdSource {
            rx,
            health,
            client: claims,
            prefix: prefix.into(),
        })
    }
}

impl ClusterSource for EtcdSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>> {
        self.rx.clone()
    }

    fn health(&self) -> SourceStatus {
        self.health.lock().unwrap().clone()
    }

    /// A transaction that puts the block only if its key was never
    /// created (create_revision 0).
    fn claim_block<'a>(
        &'a self,
        block: &'a strait_model::ippool::Block,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let key = self.block_key(block);
            let value = serde_json::to_vec(&block.to_crd())?;
            Ok(self.client.put_if_absent(key.as_bytes(), &value).await?)
        })
    }

    fn release_block<'a>(
        &'a self,
        block: &'a strait_model::ippool::Block,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.client.delete(self.block_key(block).as_bytes()).await?;
            Ok(())
        })
    }
}

impl EtcdSource {
    fn block_key(&self, block: &strait_model::ippool::Block) -> String {
        strait_model::datastore::key_of(
            &self.prefix,
            "IPAMBlock",
            None,
            &strait_model::ippool::block_name(&block.cidr),
        )
        .expect("the datastore holds IPAMBlocks")
    }
}
