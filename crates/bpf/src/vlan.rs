//! 802.1Q tagging done in eBPF (bpf/bpf_vlan.c; the design is in
//! bpf/lib/vlan.h): this kernel has no 8021q module and no bridge VLAN
//! filtering, so a node's (or the VLAN gateway's) uplink pushes and pops
//! tags at tc by the packet's addresses. [`Vlan`] loads the programs with
//! their map pinned by name, attaches them to an uplink and keeps
//! strait_vlan_subnets equal to the underlay subnets the node carries.

use crate::datapath::{attach_classifier, classifier, DatapathError};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::MapData;
use aya::programs::tc::TcAttachType;
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const EGRESS: &str = "vlan_egress";
pub const INGRESS: &str = "vlan_ingress";
/// tc ingress of a macvlan port's far end (`trunk<vid>`).
pub const PORT_IN: &str = "vlan_port_in";
const MAP: &str = "strait_vlan_subnets";
const PORTS: &str = "strait_vlan_ports";
const TRUNKS: &str = "strait_vlan_trunks";

/// `struct vlan_port`: a macvlan port (Bifrost's `eth0-<vid>`), in
/// strait_vlan_ports by VLAN id and in strait_vlan_trunks by its far end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VlanPort {
    /// The far end, `trunk<vid>`.
    pub ifindex: u32,
    pub uplink: u32,
    pub vid: u16,
    pub _pad: u16,
    pub _pad2: u32,
}
unsafe impl aya::Pod for VlanPort {}

pub type PortMap = aya::maps::HashMap<MapData, u32, VlanPort>;

/// `struct vlan_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VlanInfo {
    pub vid: u16,
    pub flags: u16,
    pub _pad: u32,
}
unsafe impl aya::Pod for VlanInfo {}

/// strait_vlan_subnets: subnet (IPv4 as IPv4-mapped IPv6) -> VLAN.
pub type VlanMap = LpmTrie<MapData, [u8; 16], VlanInfo>;

/// Who tags: a node tags by a packet's source (its pods' VLAN), the VLAN
/// gateway by its destination (where it routes the packet to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node,
    Router,
}

/// The trie key of a subnet: IPv4 as IPv4-mapped IPv6 (prefix + 96).
pub fn subnet_key(net: IpNet) -> Key<[u8; 16]> {
    match net {
        IpNet::V4(n) => Key::new(
            96 + n.prefix_len() as u32,
            n.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(n) => Key::new(n.prefix_len() as u32, n.network().octets()),
    }
}

pub struct Vlan {
    pin_dir: PathBuf,
    ebpf: Ebpf,
}

impl Vlan {
    /// Load both programs; the map is created pinned in `pin_dir` (in the
    /// versioned maps directory, beside the datapath's), or reused.
    pub fn load(pin_dir: &Path, role: Role) -> Result<Vlan, DatapathError> {
        let maps_dir = crate::datapath::maps_dir_on_bpffs(pin_dir)?;
        let router = (role == Role::Router) as u32;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .override_global("VLAN_ROUTER", &router, true)
            .load(crate::vlan_object())
            .map_err(|e| DatapathError::Load {
                object: "bpf_vlan.o",
                source: Box::new(e),
            })?;
        crate::datapath::load_classifiers(&mut ebpf, &[EGRESS, INGRESS, PORT_IN])?;
        Ok(Vlan {
            pin_dir: pin_dir.to_path_buf(),
            ebpf,
        })
    }

    /// vlan_egress and vlan_ingress on the uplink's tc hooks (replacing
    /// an earlier attachment of strait's). Must run in the uplink's
    /// network namespace.
    pub fn attach(&mut self, uplink: &str) -> Result<(), DatapathError> {
        for (name, hook) in [
            (EGRESS, TcAttachType::Egress),
            (INGRESS, TcAttachType::Ingress),
        ] {
            let p = classifier(&mut self.ebpf, name)?;
            attach_classifier(p, name, uplink, hook)?;
        }
        Ok(())
    }

    /// Attach only vlan_ingress to the uplink (macvlan mode: the ports tag
    /// what the pods send; the node's own traffic is untagged).
    pub fn attach_ingress(&mut self, uplink: &str) -> Result<(), DatapathError> {
        let p = classifier(&mut self.ebpf, INGRESS)?;
        attach_classifier(p, INGRESS, uplink, TcAttachType::Ingress)
    }

    /// vlan_port_in on a port's far end.
    pub fn attach_port(&mut self, far_end: &str) -> Result<(), DatapathError> {
        let p = classifier(&mut self.ebpf, PORT_IN)?;
        attach_classifier(p, PORT_IN, far_end, TcAttachType::Ingress)
    }

    /// Make strait_vlan_subnets hold exactly `subnets` (subnet -> VLAN
    /// id). Returns how many entries changed.
    pub fn set_subnets(&self, subnets: &BTreeMap<IpNet, u16>) -> Result<usize, DatapathError> {
        set_subnets(&self.pin_dir, subnets)
    }
}

/// Make a pin directory's strait_vlan_subnets hold exactly `subnets`.
pub fn set_subnets(pin_dir: &Path, subnets: &BTreeMap<IpNet, u16>) -> Result<usize, DatapathError> {
    let err = map_err;
    if let Some((net, vid)) = subnets.iter().find(|(_, v)| **v == 0 || **v > 4094) {
        return Err(DatapathError::Io {
            what: format!("VLAN id {vid} of subnet {net}"),
            source: std::io::Error::other("a VLAN id is 1 to 4094"),
        });
    }
    let mut m: VlanMap =
        crate::maps::open(pin_dir, MAP).map_err(err("open strait_vlan_subnets"))?;
    let want: BTreeMap<(u32, [u8; 16]), u16> = subnets
        .iter()
        .map(|(n, v)| {
            let k = subnet_key(n.trunc());
            ((k.prefix_len(), k.data()), *v)
        })
        .collect();
    let have: BTreeMap<(u32, [u8; 16]), u16> = m
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v.vid)))
        .collect::<Result<_, _>>()
        .map_err(err("read strait_vlan_subnets"))?;
    let mut changed = 0;
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        m.remove(&Key::new(k.0, k.1))
            .map_err(err("remove from strait_vlan_subnets"))?;
        changed += 1;
    }
    for (k, vid) in want.iter().filter(|(k, v)| have.get(k) != Some(v)) {
        let info = VlanInfo {
            vid: *vid,
            ..Default::default()
        };
        m.insert(&Key::new(k.0, k.1), info, 0)
            .map_err(err("write strait_vlan_subnets"))?;
        changed += 1;
    }
    Ok(changed)
}

fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let what = what.to_string();
    move |e| DatapathError::Io {
        what,
        source: std::io::Error::other(e),
    }
}

/// Make strait_vlan_ports and strait_vlan_trunks hold exactly `ports`.
/// Returns how many entries changed.
pub fn set_ports(pin_dir: &Path, ports: &[VlanPort]) -> Result<usize, DatapathError> {
    let mut changed = 0;
    for (name, key) in [
        (PORTS, (|p: &VlanPort| p.vid as u32) as fn(&VlanPort) -> u32),
        (TRUNKS, |p: &VlanPort| p.ifindex),
    ] {
        let mut m: PortMap =
            crate::maps::open(pin_dir, name).map_err(map_err(&format!("open {name}")))?;
        let want: BTreeMap<u32, VlanPort> = ports.iter().map(|p| (key(p), *p)).collect();
        let have: BTreeMap<u32, VlanPort> = m
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(&format!("read {name}")))?;
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            m.remove(k)
                .map_err(map_err(&format!("remove from {name}")))?;
            changed += 1;
        }
        for (k, v) in want.iter().filter(|(k, v)| have.get(k) != Some(v)) {
            m.insert(k, v, 0)
                .map_err(map_err(&format!("write {name}")))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// The macvlan ports in strait_vlan_ports (none when it is not pinned).
pub fn ports(pin_dir: &Path) -> Result<Vec<VlanPort>, DatapathError> {
    if !crate::upgrade::maps_dir(pin_dir).join(PORTS).exists() {
        return Ok(vec![]);
    }
    let m: PortMap =
        crate::maps::open(pin_dir, PORTS).map_err(map_err("open strait_vlan_ports"))?;
    m.iter()
        .map(|r| r.map(|(_, v)| v))
        .collect::<Result<_, _>>()
        .map_err(map_err("read strait_vlan_ports"))
}

/// Empty strait_vlan_subnets where it exists (the eBPF datapath leaving
/// vlan mode: its programs stay, with nothing to tag). Returns whether
/// there were entries.
pub fn clear(pin_dir: &Path) -> Result<bool, DatapathError> {
    if !crate::upgrade::maps_dir(pin_dir).join(MAP).exists() {
        return Ok(false);
    }
    Ok(set_subnets(pin_dir, &BTreeMap::new())? > 0)
}

/// Undo VLAN tagging on a node that no longer runs vlan mode: the programs
/// leave the uplink's tc hooks (`detach_from`: on the kernel datapath;
/// the eBPF datapath's own programs replace them there) and the map's pin
/// goes. Returns whether there was anything to undo (the pin is the
/// mark; nothing is looked up when it is absent).
pub fn retire(pin_dir: &Path, detach_from: Option<&str>) -> Result<bool, DatapathError> {
    let pin = crate::upgrade::maps_dir(pin_dir).join(MAP);
    if !pin.exists() {
        return Ok(false);
    }
    if let Some(uplink) = detach_from {
        // By name: macvlan mode has only the ingress program there.
        for (hook, program) in [
            (TcAttachType::Egress, EGRESS),
            (TcAttachType::Ingress, INGRESS),
        ] {
            match aya::programs::tc::qdisc_detach_program(uplink, hook, program) {
                Ok(()) => {}
                Err(aya::programs::tc::TcError::IoError(e))
                    if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DatapathError::Attach {
                        program,
                        iface: uplink.to_string(),
                        message: format!("detach: {e}"),
                    })
                }
            }
        }
    }
    for name in [MAP, PORTS, TRUNKS] {
        let pin = crate::upgrade::maps_dir(pin_dir).join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DatapathError::Io {
                    what: format!("remove {}", pin.display()),
                    source,
                })
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_subnets_are_keyed_as_ipv4_mapped_ipv6() {
        let k = subnet_key("198.18.20.0/24".parse().unwrap());
        assert_eq!(k.prefix_len(), 120);
        assert_eq!(&k.data()[10..], &[0xff, 0xff, 198, 18, 20, 0]);
        let k = subnet_key("fd00:20::/64".parse().unwrap());
        assert_eq!(k.prefix_len(), 64);
        assert_eq!(std::mem::size_of::<VlanInfo>(), 8);
        assert_eq!(std::mem::size_of::<VlanPort>(), 16);
    }
}
