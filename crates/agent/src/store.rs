//! Atomic persistence: write a temp file and rename it over the old one. A
//! process crash at any point leaves the old or the new file, never a torn
//! one: the rename is atomic and the page cache outlives the process.
//!
//! There is deliberately no fsync. The state kept here (pod addresses) is
//! only meaningful while the machine stays up: a kernel crash or power loss
//! kills every pod too, and callers stamp their state with the boot id and
//! discard state from an earlier boot (see [`boot_id`]). Two fsyncs per pod
//! ADD cost ~1 ms on a disk-backed /run for no gain.

use serde::{de::DeserializeOwned, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({source}); move it aside to start with empty state")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

const TMP_SUFFIX: &str = ".tmp";

pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("json{TMP_SUFFIX}"));
    let data = serde_json::to_vec_pretty(value).expect("state serialises");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(&data).map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into", path))?;
    Ok(())
}

/// This boot of the kernel. State stamped with another boot id describes
/// pods that no longer exist.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: path.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Remove temp files a crash left behind in `dir`.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(TMP_SUFFIX))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_and_no_temp_left() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ipam.json");
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), None);
        save(&p, &vec![1u32, 2, 3]).unwrap();
        save(&p, &vec![4u32]).unwrap();
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), Some(vec![4]));
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ipam.json")]);
    }

    #[test]
    fn corrupt_state_is_reported_not_discarded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ipam.json");
        fs::write(&p, b"{half").unwrap();
        let e = load::<Vec<u32>>(&p).unwrap_err();
        assert!(e.to_string().contains("move it aside"));
        assert_eq!(fs::read(&p).unwrap(), b"{half");
    }

    #[test]
    fn stale_temps_are_removed() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("ipam.json.tmp"), b"x").unwrap();
        fs::write(d.path().join("keep.json"), b"x").unwrap();
        assert_eq!(remove_stale_temps(d.path()), 1);
        assert!(d.path().join("keep.json").exists());
    }
}
