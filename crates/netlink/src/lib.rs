//! strait's seam to the kernel. Everything that touches links, addresses,
//! routes, neighbours, network namespaces or sysctls goes through here, so
//! the logic above it computes a desired state and this crate makes it so.
//!
//! Netlink sockets belong to the namespace they were opened in; to work in a
//! pod's namespace, [`in_netns`] runs a closure on a thread that has entered
//! it, and that closure opens its own [`Netlink`].

mod neigh;
mod netns;
mod overlay;
pub mod query;
mod rt;
mod sysctl;

pub use netns::{in_netns, NetnsFile, NetnsId};
pub use overlay::{FdbEntry, Rule, Vxlan};
pub use rt::{block_on, Link, Netlink, Route, RouteFilter, RouteKind, MAIN_TABLE};
pub use sysctl::write_sysctl;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} not found")]
    NotFound(String),
}

impl KernelError {
    /// The errno behind a netlink failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, KernelError::NotFound(_))
            || matches!(
                self.errno(),
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH)
            )
    }
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;
