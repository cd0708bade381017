use crate::{KernelError, Result};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

/// An open handle on a network namespace (a bind-mounted nsfs file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`).
pub struct NetnsFile {
    file: File,
}

impl NetnsFile {
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a FIFO at the path must not hang the caller in open().
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| KernelError::Io {
                what: format!("open network namespace {}", path.display()),
                source,
            })?;
        // A regular file or directory is not a namespace; catch the common
        // mistake of a wrong path with a clear error.
        let st = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| KernelError::Io {
            what: format!("statfs {}", path.display()),
            source: e.into(),
        })?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(KernelError::Io {
                what: format!("{} is not a network namespace", path.display()),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        Ok(NetnsFile { file })
    }

    /// The namespace's identity: nsfs device and inode. Two handles on one
    /// namespace have the same identity, whatever paths they came from.
    pub fn id(&self) -> Result<NetnsId> {
        let st = nix::sys::stat::fstat(self.file.as_raw_fd()).map_err(|e| KernelError::Io {
            what: "fstat network namespace".into(),
            source: e.into(),
        })?;
        Ok(NetnsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// True when this is the calling thread's own network namespace (a
    /// runtime bug or a hostNetwork pod sent to a CNI plugin by mistake:
    /// wiring it would rename and re-address the node's own interfaces).
    pub fn is_current(&self) -> Result<bool> {
        let me = NetnsFile::open(Path::new("/proc/thread-self/ns/net"))?;
        Ok(me.id()? == self.id()?)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn enter(&self) -> Result<()> {
        nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            KernelError::Io {
                what: "setns into the network namespace".into(),
                source: e.into(),
            }
        })
    }
}

/// A network namespace's identity (nsfs device and inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// Run `f` on a new thread inside the network namespace at `path`. The
/// calling thread's namespace is never changed, so callers on any runtime are
/// safe; the helper thread ends with `f`.
pub fn in_netns<T, F>(ns: &NetnsFile, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter()?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let d = std::env::temp_dir().join(format!("strait-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        nix::unistd::mkfifo(&d, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = d.clone();
        std::thread::spawn(move || {
            let _ = tx.send(NetnsFile::open(&p).err().map(|e| e.to_string()));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        let _ = std::fs::remove_file(&d);
        let err = got
            .expect("open of a FIFO returned")
            .expect("a FIFO is not a namespace");
        assert!(err.contains("not a network namespace"), "{err}");
    }

    #[test]
    fn own_namespace_is_recognised() {
        let me = NetnsFile::open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(me.is_current().unwrap());
    }
}
