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
                let snap = read_dir_snapshot(&dir);
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

impl ClusterSource for DirectorySource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>> {
        self.rx.clone()
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
}
