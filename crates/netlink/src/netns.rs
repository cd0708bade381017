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
        let file = File::open(path).map_err(|source| KernelError::Io {
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
