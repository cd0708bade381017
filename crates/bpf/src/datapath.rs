//! Loading, pinning and attaching the datapath.

use aya::programs::tc::{
    self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle,
};
use aya::programs::{ProgramType, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use std::path::{Path, PathBuf};

/// Our cls_bpf filters sit at this priority and handle on every device, so a
/// restarted or upgraded agent finds and atomically replaces them.
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 0x5a);

pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path} is not on a bpf filesystem; mount one there (mount -t bpf bpf {path}) or choose another --bpf-dir")]
    NotBpffs { path: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("load {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("{program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attach {program} to {iface}: {message}")]
    Attach {
        program: &'static str,
        iface: String,
        message: String,
    },
}

/// Which forwarding path the kernel allows, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    pub redirect_peer: bool,
    pub reason: String,
}

impl Features {
    /// Probe the kernel for bpf_redirect_peer (Linux 5.10+). `force_legacy`
    /// takes the older path on purpose, to compare the two.
    pub fn probe(force_legacy: bool) -> Features {
        if force_legacy {
            return Features {
                redirect_peer: false,
                reason: "redirect_peer disabled by configuration (--no-redirect-peer): traffic to a pod goes through its host veth".into(),
            };
        }
        match aya::sys::is_helper_supported(ProgramType::SchedClassifier, aya::sys::BpfHelper::BPF_FUNC_redirect_peer) {
            Ok(true) => Features {
                redirect_peer: true,
                reason: "kernel has bpf_redirect_peer: traffic to a pod enters its namespace directly, skipping its host veth".into(),
            },
            Ok(false) => Features {
                redirect_peer: false,
                reason: "kernel lacks bpf_redirect_peer (needs Linux 5.10+): traffic to a pod goes through its host veth".into(),
            },
            Err(e) => Features {
                redirect_peer: false,
                reason: format!("probing bpf_redirect_peer failed ({e}): using the host-veth path"),
            },
        }
    }
}

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mount a bpf filesystem at `mount_point` unless one is there already.
pub fn ensure_bpffs(mount_point: &Path) -> Result<(), DatapathError> {
    if is_bpffs(mount_point) {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point).map_err(|source| DatapathError::Io {
        what: format!("create {}", mount_point.display()),
        source,
    })?;
    let target = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes()).unwrap();
    let fstype = c"bpf";
    // SAFETY: all pointers are valid C strings; no data argument.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(DatapathError::Io {
            what: format!("mount bpffs at {}", mount_point.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    FromContainer,
    FromNetdev,
    ToNetdev,
    /// Egress of a macvlan pod's service veth.
    ToContainer,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::FromContainer => "from_container",
            Prog::FromNetdev => "from_netdev",
            Prog::ToNetdev => "to_netdev",
            Prog::ToContainer => "to_container",
        }
    }
}

pub struct Datapath {
    pub pin_dir: PathBuf,
    pub features: Features,
    /// What loading did to maps an earlier build left: layouts replaced,
    /// state migrated from an older version (see [`crate::upgrade`]).
    pub upgrade_notes: Vec<String>,
    lxc: Ebpf,
    netdev: Ebpf,
    sock: Ebpf,
}

/// The socket-LB programs, attached to the node's cgroup.
pub const SOCK_PROGRAMS: [&str; 4] = [
    "sock4_connect",
    "sock4_sendmsg",
    "sock4_recvmsg",
    "sock4_getpeername",
];

pub(crate) fn load_object(
    pin_dir: &Path,
    object: &'static str,
    data: &[u8],
    peer: u32,
) -> Result<Ebpf, DatapathError> {
    let load = || {
        EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global("USE_REDIRECT_PEER", &peer, false)
            .load(data)
    };
    // Two loaders sharing maps (the datapath and the tunnel) may race to
    // create the same pin; the loser finds it pinned on a second try.
    load().or_else(|_| load()).map_err(|e| DatapathError::Load {
        object,
        source: Box::new(e),
    })
}

impl Datapath {
    /// Load both programs; maps are created pinned in `pin_dir`, or reused
    /// from there when an earlier agent left them (so state carries over).
    pub fn load(pin_dir: &Path, features: Features) -> Result<Datapath, DatapathError> {
        std::fs::create_dir_all(pin_dir).map_err(|source| DatapathError::Io {
            what: format!("create {}", pin_dir.display()),
            source,
        })?;
        if !is_bpffs(pin_dir) {
            return Err(DatapathError::NotBpffs {
                path: pin_dir.display().to_string(),
            });
        }
        let maps_dir = crate::upgrade::maps_dir(pin_dir);
        std::fs::create_dir_all(&maps_dir).map_err(|source| DatapathError::Io {
            what: format!("create {}", maps_dir.display()),
            source,
        })?;
        let mut upgrade_notes =
            crate::upgrade::check_pins(pin_dir).map_err(|source| DatapathError::Io {
                what: format!("check the maps pinned in {}", maps_dir.display()),
                source,
            })?;
        let peer = features.redirect_peer as u32;
        let mut lxc = load_object(&maps_dir, "bpf_lxc.o", crate::lxc_object(), peer)?;
        let mut netdev = load_object(&maps_dir, "bpf_netdev.o", crate::netdev_object(), peer)?;
        for prog in [Prog::FromContainer, Prog::ToContainer, Prog::FromNetdev] {
            let ebpf = if prog == Prog::FromNetdev {
                &mut netdev
            } else {
                &mut lxc
            };
            program(ebpf, prog)?
                .load()
                .map_err(|e| DatapathError::Program {
                    program: prog.name(),
                    source: Box::new(e),
                })?;
        }
        program(&mut netdev, Prog::ToNetdev)?
            .load()
            .map_err(|e| DatapathError::Program {
                program: Prog::ToNetdev.name(),
                source: Box::new(e),
            })?;
        let mut sock = load_object(&maps_dir, "bpf_sock.o", crate::sock_object(), peer)?;
        for name in SOCK_PROGRAMS {
            let p: &mut aya::programs::CgroupSockAddr = sock
                .program_mut(name)
                .ok_or_else(|| DatapathError::Program {
                    program: name,
                    source: Box::new(aya::programs::ProgramError::NotLoaded),
                })?
                .try_into()
                .map_err(|e| DatapathError::Program {
                    program: name,
                    source: Box::new(e),
                })?;
            p.load().map_err(|e| DatapathError::Program {
                program: name,
                source: Box::new(e),
            })?;
        }
        // The maps exist now; nothing new is attached yet: bring in what an
        // older layout holds.
        upgrade_notes.extend(
            crate::upgrade::migrate(pin_dir).map_err(|e| DatapathError::Io {
                what: format!("migrate maps from an older layout: {e}"),
                source: std::io::Error::other(e),
            })?,
        );
        Ok(Datapath {
            pin_dir: pin_dir.to_path_buf(),
            features,
            upgrade_notes,
            lxc,
            netdev,
            sock,
        })
    }

    /// Once every program is replaced by this build's: remove an older
    /// layout's maps (see [`crate::upgrade::retire`]).
    pub fn retire_old_layouts(&self) -> Result<Vec<String>, String> {
        crate::upgrade::retire(&self.pin_dir)
    }

    pub fn program(&mut self, prog: Prog) -> Result<&mut SchedClassifier, DatapathError> {
        match prog {
            Prog::FromContainer | Prog::ToContainer => program(&mut self.lxc, prog),
            Prog::FromNetdev | Prog::ToNetdev => program(&mut self.netdev, prog),
        }
    }

    /// Attach `prog` to tc ingress (to-*: egress) of `iface` (in the
    /// calling thread's namespace), replacing our earlier filter atomically
    /// if there is one. The attachment belongs to the device, not to this
    /// process: it stays when the agent exits.
    pub fn attach(&mut self, prog: Prog, iface: &str) -> Result<(), DatapathError> {
        let hook = if matches!(prog, Prog::ToNetdev | Prog::ToContainer) {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        attach_classifier(self.program(prog)?, prog.name(), iface, hook)
    }
}

/// Attach a loaded classifier to `hook` of `iface` at strait's priority and
/// handle, replacing whatever strait attached there before, atomically.
/// An object's versioned maps directory under `pin_dir`, created, after
/// checking that `pin_dir` is on a bpf filesystem.
pub(crate) fn maps_dir_on_bpffs(pin_dir: &Path) -> Result<std::path::PathBuf, DatapathError> {
    let maps_dir = crate::upgrade::maps_dir(pin_dir);
    std::fs::create_dir_all(&maps_dir).map_err(|source| DatapathError::Io {
        what: format!("create {}", maps_dir.display()),
        source,
    })?;
    if !is_bpffs(pin_dir) {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.display().to_string(),
        });
    }
    Ok(maps_dir)
}

/// Load (verify) an object's classifiers by name.
pub(crate) fn load_classifiers(
    ebpf: &mut Ebpf,
    names: &[&'static str],
) -> Result<(), DatapathError> {
    for name in names {
        classifier(ebpf, name)?
            .load()
            .map_err(|e| DatapathError::Program {
                program: name,
                source: Box::new(e),
            })?;
    }
    Ok(())
}

/// A loaded object's classifier by name.
pub(crate) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::Program {
            program: name,
            source: Box::new(aya::programs::ProgramError::NotLoaded),
        })?;
    p.try_into().map_err(|e| DatapathError::Program {
        program: name,
        source: Box::new(e),
    })
}

pub(crate) fn attach_classifier(
    p: &mut SchedClassifier,
    program: &'static str,
    iface: &str,
    hook: TcAttachType,
) -> Result<(), DatapathError> {
    let err = |message: String| DatapathError::Attach {
        program,
        iface: iface.to_string(),
        message,
    };
    // clsact may already be there (ours, from an earlier run).
    let _ = tc::qdisc_add_clsact(iface);
    let opts = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: TC_PRIORITY,
            handle: TC_HANDLE,
            ..Default::default()
        })
    };
    let id = match p.attach_with_options(iface, hook, opts()) {
        Ok(id) => id,
        Err(first) => {
            let link = SchedClassifierLink::attached(iface, hook, TC_PRIORITY, TC_HANDLE, None)
                .map_err(|e| err(format!("{first}; and looking up the existing filter: {e}")))?;
            p.attach_to_link(link)
                .map_err(|e| err(format!("{first}; replace: {e}")))?
        }
    };
    let link = p.take_link(id).map_err(|e| err(e.to_string()))?;
    // Dropping the link would detach it; the filter must outlive us.
    std::mem::forget(link);
    Ok(())
}

fn program(ebpf: &mut Ebpf, prog: Prog) -> Result<&mut SchedClassifier, DatapathError> {
    let p = ebpf
        .program_mut(prog.name())
        .ok_or_else(|| DatapathError::Program {
            program: prog.name(),
            source: Box::new(aya::programs::ProgramError::NotLoaded),
        })?;
    p.try_into().map_err(|e| DatapathError::Program {
        program: prog.name(),
        source: Box::new(e),
    })
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

impl Datapath {
    /// Attach socket-level load balancing to the node's cgroup (v2). The
    /// links are pinned in the pin directory, so they stay when the agent
    /// exits. A restart or upgrade attaches the new programs first (several
    /// may run; both translate the same way) and then releases the old ones:
    /// no connect ever misses translation.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        use aya::programs::links::{FdLink, PinnedLink};
        use aya::programs::{CgroupAttachMode, CgroupSockAddr};
        let err = |program: &'static str, message: String| DatapathError::Attach {
            program,
            iface: cgroup.display().to_string(),
            message,
        };
        let cg = std::fs::File::open(cgroup).map_err(|source| DatapathError::Io {
            what: format!("open cgroup {}", cgroup.display()),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = self
                .sock
                .program_mut(name)
                .ok_or_else(|| err(name, "not loaded".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| err(name, e.to_string()))?;
            // Link-based cgroup attachments always allow several programs;
            // the multi flag is for the legacy attach and must not be given.
            let id = p
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(|e| err(name, chain(&e)))?;
            let link = p.take_link(id).map_err(|e| err(name, e.to_string()))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| err(name, e.to_string()))?;
            let pin = self.pin_dir.join(format!("link_{name}"));
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                // Dropping the unpinned old link detaches the old program.
                drop(old.unpin());
            }
            fd.pin(&pin).map_err(|e| err(name, e.to_string()))?;
        }
        Ok(())
    }
}
