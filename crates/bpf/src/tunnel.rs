//! The IP-in-IP tunnel's programs (bpf/bpf_tunnel.c), loaded on their own:
//! the kernel datapath runs them and nothing else of strait's eBPF; the
//! eBPF datapath runs tunnel_encap beside its own programs (from-container
//! and from-netdev wrap and open IP-in-IP inline). Their maps are pinned
//! with the datapath's, by name, so both see one configuration.

use crate::datapath::{attach_classifier, classifier, load_object, DatapathError};
use crate::maps::{self, AddrKey, TunnelCfg, TunnelMap, TunnelPeer, TunnelPeerMap};
use aya::programs::tc::TcAttachType;
use aya::Ebpf;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const ENCAP: &str = "tunnel_encap";
pub const DECAP: &str = "tunnel_decap";

pub struct Tunnel {
    pin_dir: PathBuf,
    ebpf: Ebpf,
}

impl Tunnel {
    /// Load both programs; their maps are created pinned in `pin_dir`, or
    /// reused from there.
    pub fn load(pin_dir: &Path) -> Result<Tunnel, DatapathError> {
        let maps_dir = crate::datapath::maps_dir_on_bpffs(pin_dir)?;
        let mut ebpf = load_object(&maps_dir, "bpf_tunnel.o", crate::tunnel_object(), 0)?;
        crate::datapath::load_classifiers(&mut ebpf, &[ENCAP, DECAP])?;
        Ok(Tunnel {
            pin_dir: pin_dir.to_path_buf(),
            ebpf,
        })
    }

    /// tunnel_encap on tc egress of the stand-in device.
    pub fn attach_encap(&mut self, dev: &str) -> Result<(), DatapathError> {
        let p = classifier(&mut self.ebpf, ENCAP)?;
        attach_classifier(p, ENCAP, dev, TcAttachType::Egress)
    }

    /// tunnel_decap on tc ingress of the uplink (kernel datapath only: the
    /// eBPF datapath's from-netdev sits there and opens IP-in-IP itself).
    pub fn attach_decap(&mut self, uplink: &str) -> Result<(), DatapathError> {
        let p = classifier(&mut self.ebpf, DECAP)?;
        attach_classifier(p, DECAP, uplink, TcAttachType::Ingress)
    }

    /// What strait_tunnel holds now.
    pub fn config(&self) -> Result<TunnelCfg, aya::maps::MapError> {
        let m: TunnelMap = maps::open(&self.pin_dir, "strait_tunnel")?;
        m.get(&0, 0)
    }

    pub fn configure(&self, cfg: &TunnelCfg) -> Result<(), aya::maps::MapError> {
        let mut m: TunnelMap = maps::open(&self.pin_dir, "strait_tunnel")?;
        m.set(0, cfg, 0)
    }

    /// Make strait_tunnel_peers hold exactly `nodes`. Returns how many
    /// entries changed.
    pub fn sync_peers(&self, nodes: &BTreeSet<IpAddr>) -> Result<usize, aya::maps::MapError> {
        sync_peers(&self.pin_dir, nodes)
    }
}

/// Make a node's strait_tunnel_peers hold exactly `nodes`.
pub fn sync_peers(pin_dir: &Path, nodes: &BTreeSet<IpAddr>) -> Result<usize, aya::maps::MapError> {
    let mut m: TunnelPeerMap = maps::open(pin_dir, "strait_tunnel_peers")?;
    let want: BTreeSet<AddrKey> = nodes.iter().map(|ip| AddrKey::from(*ip)).collect();
    let have: BTreeSet<AddrKey> = m.keys().collect::<Result<_, _>>()?;
    let mut changed = 0;
    for k in have.difference(&want) {
        m.remove(k)?;
        changed += 1;
    }
    for k in want.difference(&have) {
        m.insert(k, TunnelPeer::default(), 0)?;
        changed += 1;
    }
    Ok(changed)
}

/// The nodes a node accepts IP-in-IP from (its strait_tunnel_peers).
pub fn peers(pin_dir: &Path) -> Result<BTreeSet<IpAddr>, aya::maps::MapError> {
    let m: TunnelPeerMap = maps::open(pin_dir, "strait_tunnel_peers")?;
    m.keys().map(|k| k.map(|k| k.ip())).collect()
}

/// Undo IP-in-IP on a node that no longer runs it: the tunnel's
/// configuration and peers are cleared (nothing is wrapped or opened any
/// more) and, when `decap_on` names the uplink, tunnel_decap leaves its tc
/// ingress. Returns whether there was anything to undo.
pub fn retire(pin_dir: &Path, decap_on: Option<&str>) -> Result<bool, DatapathError> {
    let mut did = false;
    if let Ok(mut m) = maps::open::<TunnelMap>(pin_dir, "strait_tunnel") {
        if m.get(&0, 0).map(|c| c.ifindex != 0).unwrap_or(false) {
            m.set(0, TunnelCfg::default(), 0)
                .map_err(|e| DatapathError::Io {
                    what: "clear strait_tunnel".into(),
                    source: std::io::Error::other(e),
                })?;
            sync_peers(pin_dir, &BTreeSet::new()).map_err(|e| DatapathError::Io {
                what: "clear strait_tunnel_peers".into(),
                source: std::io::Error::other(e),
            })?;
            did = true;
        }
    }
    if let Some(uplink) = decap_on {
        use crate::datapath::{TC_HANDLE, TC_PRIORITY};
        use aya::programs::links::Link;
        use aya::programs::tc::SchedClassifierLink;
        if let Ok(link) = SchedClassifierLink::attached(
            uplink,
            TcAttachType::Ingress,
            TC_PRIORITY,
            TC_HANDLE,
            None,
        ) {
            link.detach().map_err(|e| DatapathError::Attach {
                program: DECAP,
                iface: uplink.to_string(),
                message: format!("detach: {e}"),
            })?;
            did = true;
        }
    }
    Ok(did)
}
