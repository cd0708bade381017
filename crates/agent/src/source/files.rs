//! The files source: a directory of YAML/JSON manifests (the lab's default,
//! and tests').

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strait_model::cluster::{parse_manifests, ClusterSnapshot};
use tokio::sync::watch;

use super::ClusterSource;

/// Watches a directory of manifests (polling, so it works on any
/// filesystem and notices edits made while the agent was down).
pub struct DirectorySource {
    rx: watch::Receiver<Arc<ClusterSnapshot>>,
    dir: PathBuf,
}

type Fingerprint = BTreeMap<PathBuf, (SystemTime, u64)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut fp = Fingerprint::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            if !matches!(ext, "yaml" | "yml" | "json") {
                continue;
            }
            if let Ok(m) = e.metadata() {
                fp.insert(p, (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            }
        }
    }
    fp
}

/// Read every manifest in `dir`. A file that does not parse is skipped with a
/// log line naming the file and the problem; the rest still apply.
pub fn read_dir_snapshot(dir: &Path) -> ClusterSnapshot {
    let mut snap = ClusterSnapshot::default();
    for path in fingerprint(dir).keys() {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read manifest; skipped");
                continue;
            }
        };
        match parse_manifests(&text) {
            Ok(objs) => objs.into_iter().for_each(|o| snap.add(o)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "invalid manifest; skipped, fix the file")
            }
        }
    }
    snap.normalize();
    snap
}

impl DirectorySource {
    pub fn start(dir: PathBuf, poll: Duration) -> Self {
        // Fingerprint before reading, so an edit that lands in between is
        // seen as a change on the first poll rather than lost.
        let dir_for_status = dir.clone();
        let mut last = fingerprint(&dir);
        let initial = read_dir_snapshot(&dir);
        let (tx, rx) = watch::channel(Arc::new(initial));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                if tx.is_closed() {
                    break;
                }
                let fp = fingerprint(&dir);
                if fp == last {
                    continue;
                }
                last = fp;
                let mut snap = read_dir_snapshot(&dir);
                // Unchanged objects keep their allocations: the services
                // reconciler then recompiles only what changed.
                snap.reuse_unchanged(&tx.borrow());
                tx.send_if_modified(|cur| {
                    if **cur == snap {
                        false
                    } else {
                        *cur = Arc::new(snap);
                        true
                    }
                });
            }
        });
        DirectorySource {
            rx,
            dir: dir_for_status,
        }
    }
}

/// Where a block's claim lives in the directory.
fn block_file(dir: &Path, block: &strait_model::ippool::Block) -> PathBuf {
    dir.join(format!(
        "ipamblock-{}.yaml",
        strait_model::ippool::block_name(&block.cidr)
    ))
}

impl ClusterSource for DirectorySource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>> {
        self.rx.clone()
    }

    /// A file per block, created exclusively (O_EXCL): the directory is
    /// shared by the nodes (the lab's), so the first creator holds it.
    fn claim_block<'a>(
        &'a self,
        block: &'a strait_model::ippool::Block,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let path = block_file(&self.dir, block);
            let text = serde_yaml::to_string(&block.to_crd())?;
            let tmp = path.with_extension("claim");
            // Written whole first, then linked in: link() fails when the
            // name exists, and the poller never reads half a file.
            std::fs::write(&tmp, text)?;
            let won = match std::fs::hard_link(&tmp, &path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(anyhow::anyhow!("claim {}: {e}", path.display()));
                }
            };
            let _ = std::fs::remove_file(&tmp);
            Ok(won)
        })
    }

    fn release_block<'a>(
        &'a self,
        block: &'a strait_model::ippool::Block,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match std::fs::remove_file(block_file(&self.dir, block)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        })
    }

    fn health(&self) -> strait_model::api::SourceStatus {
        strait_model::api::SourceStatus {
            kind: "files".into(),
            from: self.dir.display().to_string(),
            ready: true,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str =
        "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nspec: {podCIDR: 10.1.0.0/24}\n";

    #[test]
    fn bad_files_are_skipped_good_ones_apply() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("node.yaml"), NODE).unwrap();
        std::fs::write(d.path().join("broken.yaml"), "kind: [").unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let s = read_dir_snapshot(d.path());
        assert_eq!(s.nodes.len(), 1);
    }

    #[tokio::test]
    async fn notices_new_files() {
        let d = tempfile::tempdir().unwrap();
        let src = DirectorySource::start(d.path().to_path_buf(), Duration::from_millis(20));
        let mut rx = src.subscribe();
        assert!(rx.borrow().nodes.is_empty());
        std::fs::write(d.path().join("node.yaml"), NODE).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow().nodes.len(), 1);
    }

    /// A rewritten file changes only what changed in it: every other
    /// object is the previous snapshot's allocation (what lets the
    /// reconcilers skip it by pointer).
    #[tokio::test]
    async fn a_rewrite_keeps_unchanged_objects_shared() {
        let d = tempfile::tempdir().unwrap();
        let svc = |port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{clusterIP: 10.96.0.10, ports: [{{port: {port}}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: IPv4\nendpoints: [{{addresses: [10.0.0.{port}]}}]\n---\n{NODE}"
            )
        };
        std::fs::write(d.path().join("all.yaml"), svc(80)).unwrap();
        let src = DirectorySource::start(d.path().to_path_buf(), Duration::from_millis(20));
        let mut rx = src.subscribe();
        let before = rx.borrow_and_update().clone();
        // Same length, so the fingerprint differs by mtime only: sleep past
        // the filesystem's timestamp granularity.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(d.path().join("all.yaml"), svc(81)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let after = rx.borrow().clone();
        assert!(
            Arc::ptr_eq(&before.nodes[0], &after.nodes[0]),
            "the node did not change"
        );
        assert!(!Arc::ptr_eq(&before.services[0], &after.services[0]));
        assert!(!Arc::ptr_eq(
            &before.endpoint_slices[0],
            &after.endpoint_slices[0]
        ));
        assert!(!after.kind_changed(&before, strait_model::cluster::Kind::Nodes));
    }

    /// Two nodes claiming one block: the first holds it, the second is
    /// told so; the claim is read back as an IPAMBlock; releasing twice
    /// is fine and frees it for the other.
    #[tokio::test]
    async fn block_claims_are_exclusive_files() {
        use strait_model::ippool::Block;
        let d = tempfile::tempdir().unwrap();
        let src = DirectorySource::start(d.path().to_path_buf(), Duration::from_millis(20));
        let block = |node: &str| Block {
            cidr: "10.9.0.0/26".parse().unwrap(),
            pool: "blue".into(),
            node: node.into(),
        };
        assert!(src.claim_block(&block("a")).await.unwrap());
        assert!(!src.claim_block(&block("b")).await.unwrap());
        let snap = read_dir_snapshot(d.path());
        assert_eq!(strait_model::ippool::held_blocks(&snap), vec![block("a")]);
        src.release_block(&block("a")).await.unwrap();
        src.release_block(&block("a")).await.unwrap();
        assert!(src.claim_block(&block("b")).await.unwrap());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["ipamblock-10-9-0-0-26.yaml"]);
    }
}
