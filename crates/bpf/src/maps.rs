//! Typed views of the pinned maps (bpf/lib/maps.h, bpf/lib/common.h).

use aya::maps::{HashMap, MapData, PerCpuArray};
use std::net::Ipv4Addr;
use strait_model::services as strait_model_services;

/// `struct endpoint`: a pod on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub ifindex: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub flags: u32,
}
unsafe impl aya::Pod for Endpoint {}

/// `struct lxc`: the addresses a host veth's pod may send from, one per
/// family (all zeros: none of that family).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lxc {
    pub ip4: u32,
    pub flags: u32,
    pub ip6: [u8; 16],
}
unsafe impl aya::Pod for Lxc {}

/// `Lxc::flags`: the pod publishes hostPorts (only then does from-container
/// look in strait_hostport).
pub const LXC_F_HOSTPORTS: u32 = 1;
/// macvlan mode: the pod's service veth (`bifrXXX`), not its data path.
pub const LXC_F_SVC_VETH: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Metric {
    pub packets: u64,
    pub bytes: u64,
}
unsafe impl aya::Pod for Metric {}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub flags: u32,
    pub _pad: u32,
}
unsafe impl aya::Pod for Config {}

pub const CFG_TRACE: u32 = 1;

/// `struct lb_key`: a frontend's slot (0 = the service, 1.. = backends).
/// Address and port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbKey {
    pub addr: u32,
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
unsafe impl aya::Pod for LbKey {}

/// `struct lb_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbVal {
    pub backend_ip: u32,
    pub backend_port: u16,
    pub count: u16,
    pub svc_id: u32,
    pub affinity_secs: u32,
}
unsafe impl aya::Pod for LbVal {}

/// `struct ct_key` / `struct ct_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
unsafe impl aya::Pod for CtKey {}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtVal {
    /// Forward: the backend; reverse: the frontend.
    pub addr: u32,
    pub port: u16,
    /// `CT_*`.
    pub state: u8,
    /// `CT_F_*`.
    pub flags: u8,
    pub last_seen: u64,
    pub svc_id: u32,
    pub _pad: u32,
}
unsafe impl aya::Pod for CtVal {}

pub const CT_SYN_SENT: u8 = 1;
pub const CT_ESTABLISHED: u8 = 2;
pub const CT_CLOSING: u8 = 3;
pub const CT_UDP: u8 = 4;
pub const CT_F_REVERSE: u8 = 1;
pub const CT_F_HAIRPIN: u8 = 2;
pub use strait_model::services::HAIRPIN_IP4;

impl CtVal {
    /// How long the entry lives without traffic (bpf/lib/conntrack.h).
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(match self.state {
            CT_SYN_SENT => 60,
            CT_ESTABLISHED => 6 * 3600,
            CT_CLOSING => 10,
            _ => 120,
        })
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            CT_SYN_SENT => "syn-sent",
            CT_ESTABLISHED => "established",
            CT_CLOSING => "closing",
            CT_UDP => "udp",
            _ => "unknown",
        }
    }
}

/// A connection's other entry, rebuilt from one entry (as `ct_twin` in
/// bpf/lib/conntrack.h does).
pub fn ct_twin(k: &CtKey, v: &CtVal) -> (CtKey, CtVal) {
    let hairpin = v.flags & CT_F_HAIRPIN != 0;
    if v.flags & CT_F_REVERSE != 0 {
        (
            CtKey {
                saddr: if hairpin { k.saddr } else { k.daddr },
                daddr: v.addr,
                sport: k.dport,
                dport: v.port,
                ..*k
            },
            CtVal {
                addr: k.saddr,
                port: k.sport,
                flags: v.flags & !CT_F_REVERSE,
                ..*v
            },
        )
    } else {
        (
            CtKey {
                saddr: v.addr,
                daddr: if hairpin {
                    ip_key(HAIRPIN_IP4)
                } else {
                    k.saddr
                },
                sport: v.port,
                dport: k.sport,
                ..*k
            },
            CtVal {
                addr: k.daddr,
                port: k.dport,
                flags: v.flags | CT_F_REVERSE,
                ..*v
            },
        )
    }
}

/// `struct hostport_key`: a pod port published as a hostPort.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HostportKey {
    pub addr: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
unsafe impl aya::Pod for HostportKey {}
pub type HostportMap = HashMap<MapData, HostportKey, u32>;

pub type LbMap = HashMap<MapData, LbKey, LbVal>;
pub type CtMap = aya::maps::HashMap<MapData, CtKey, CtVal>;

/// The map entries for a service table: slot 0 per frontend, then one slot
/// per active backend. Terminating backends get no slot (no new
/// connections); their connections live on in conntrack.
pub fn lb_entries(table: &[strait_model_services::ServiceEntry]) -> Vec<(LbKey, LbVal)> {
    let mut out = vec![];
    for e in table {
        let base = LbKey {
            addr: ip_key(e.frontend.ip),
            port: e.frontend.port.to_be(),
            slot: 0,
            proto: e.frontend.proto.number(),
            _pad: [0; 3],
        };
        let active: Vec<_> = e.active().collect();
        let count = active.len().min(u16::MAX as usize / 2) as u16;
        out.push((
            base,
            LbVal {
                backend_ip: 0,
                backend_port: 0,
                count,
                svc_id: e.id,
                affinity_secs: e.affinity_secs.unwrap_or(0),
            },
        ));
        // Active backends in slots 1..=count (the only ones picked), then
        // terminating ones past them: kept for `lb list`, never picked.
        let terminating = e
            .backends
            .iter()
            .filter(|b| b.state == strait_model_services::BackendState::Terminating);
        let slots = active
            .into_iter()
            .map(|b| (b, 0))
            .chain(terminating.map(|b| (b, 1)));
        for (i, (b, state)) in slots.take(u16::MAX as usize - 1).enumerate() {
            out.push((
                LbKey {
                    slot: i as u16 + 1,
                    ..base
                },
                LbVal {
                    backend_ip: ip_key(b.ip),
                    backend_port: b.port.to_be(),
                    count: state,
                    svc_id: e.id,
                    affinity_secs: 0,
                },
            ));
        }
    }
    out
}

/// One write to strait_lb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbOp {
    Put(LbKey, LbVal),
    Delete(LbKey),
}

/// The writes that turn one frontend's entries `old` into `new` (either may
/// be empty) in an order where a packet arriving between any two writes
/// finds a consistent service: every slot it may pick (1..=count) holds an
/// active backend, old or new. So new slots go in before the count that
/// covers them, the count drops before the slots it no longer covers go,
/// and a removed frontend loses its slot 0 first.
pub fn lb_ops(old: &[(LbKey, LbVal)], new: &[(LbKey, LbVal)]) -> Vec<LbOp> {
    let new_count = new
        .iter()
        .find(|(k, _)| k.slot == 0)
        .map(|(_, v)| v.count)
        .unwrap_or(0);
    let changed = |k: &LbKey, v: &LbVal| !old.iter().any(|(ok, ov)| ok == k && ov == v);
    let mut ops = vec![];
    // 1. slots the new count will cover
    for (k, v) in new {
        if k.slot >= 1 && k.slot <= new_count && changed(k, v) {
            ops.push(LbOp::Put(*k, *v));
        }
    }
    // 2. the service entry (count, affinity)
    for (k, v) in new {
        if k.slot == 0 && changed(k, v) {
            ops.push(LbOp::Put(*k, *v));
        }
    }
    // 3. terminating slots past the count (never picked)
    for (k, v) in new {
        if k.slot > new_count && changed(k, v) {
            ops.push(LbOp::Put(*k, *v));
        }
    }
    // 4. what is gone: slot 0 first
    let mut gone: Vec<LbKey> = old
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !new.iter().any(|(nk, _)| nk == k))
        .collect();
    gone.sort_by_key(|k| k.slot);
    ops.extend(gone.into_iter().map(LbOp::Delete));
    ops
}

/// `struct event` on the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub kind: u8,
    pub reason: u8,
    pub len: u16,
    pub ifindex: u32,
    pub out_ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub prog: u8,
    pub _pad: u16,
    pub ts: u64,
}

pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 2;
/// Not a drop, but always reported (a map refused an entry).
pub const EVENT_WARN: u8 = 3;

impl Event {
    pub fn parse(b: &[u8]) -> Option<Event> {
        if b.len() < std::mem::size_of::<Event>() {
            return None;
        }
        // SAFETY: Event is plain old data of this exact size.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const Event) })
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.saddr))
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.daddr))
    }
}

/// Map keys hold addresses in network byte order, as the packet does.
pub fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

pub fn key_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(k))
}

pub type EndpointMap = HashMap<MapData, u32, Endpoint>;
pub type ConfigMap = aya::maps::Array<MapData, Config>;
pub type EventRing = aya::maps::RingBuf<MapData>;

/// Open a pinned map by name (strait_endpoints, strait_lxc, ...) from a
/// node's pin directory (its maps are in the current layout version's
/// subdirectory): the CLI and tests read state this way.
pub fn open<T>(pin_dir: &std::path::Path, name: &str) -> Result<T, aya::maps::MapError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(crate::upgrade::maps_dir(pin_dir).join(name))?;
    T::try_from(aya::maps::Map::from_map_data(data)?)
}

/// Sum of a reason's counters over all CPUs: (packets, bytes).
pub fn metric(map: &MetricsMap, reason: u8) -> Result<(u64, u64), aya::maps::MapError> {
    let v = map.get(&(reason as u32), 0)?;
    Ok(v.iter()
        .fold((0, 0), |(p, b), m| (p + m.packets, b + m.bytes)))
}
pub type LxcMap = HashMap<MapData, u32, Lxc>;
pub type MetricsMap = PerCpuArray<MapData, Metric>;

/// `struct addr_key`: an address of either family; IPv4 as IPv4-mapped
/// IPv6 (::ffff:a.b.c.d).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
}
unsafe impl aya::Pod for AddrKey {}

impl From<std::net::IpAddr> for AddrKey {
    fn from(ip: std::net::IpAddr) -> Self {
        let v6 = match ip {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
            std::net::IpAddr::V6(a) => a,
        };
        AddrKey { addr: v6.octets() }
    }
}

impl AddrKey {
    pub fn ip(&self) -> std::net::IpAddr {
        std::net::Ipv6Addr::from(self.addr).to_canonical()
    }
}

/// `struct tunnel_cfg`: this node's IP-in-IP tunnel (ifindex 0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelCfg {
    pub ifindex: u32,
    pub uplink: u32,
    /// Network byte order, as [`ip_key`] gives it.
    pub local4: u32,
    pub flags: u32,
    pub local6: [u8; 16],
}
unsafe impl aya::Pod for TunnelCfg {}

/// `struct tunnel_peer`: a node IP-in-IP is accepted from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelPeer {
    pub flags: u32,
    pub _pad: u32,
}
unsafe impl aya::Pod for TunnelPeer {}

/// `struct policy_ep`: which directions a pod is isolated in, and by which
/// policy (by id, for drop reports).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEp {
    pub flags: u32,
    pub ingress_by: u32,
    pub egress_by: u32,
    pub _pad: u32,
}
unsafe impl aya::Pod for PolicyEp {}

pub const POLICY_F_INGRESS: u32 = 1;
pub const POLICY_F_EGRESS: u32 = 2;

/// `struct policy_key` without its prefixlen (aya's LPM `Key` adds it):
/// pod, direction, protocol, port (network order), then the peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKey {
    pub ep: [u8; 16],
    pub dir: u8,
    pub proto: u8,
    pub dport: u16,
    pub peer: [u8; 16],
}
unsafe impl aya::Pod for PolicyKey {}

/// Bits of a [`PolicyKey`] before the peer.
pub const POLICY_FIXED_BITS: u32 = 160;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyVal {
    pub policy: u32,
    pub rule: u16,
    pub _pad: u16,
}
unsafe impl aya::Pod for PolicyVal {}

pub type PolicyEpMap = HashMap<MapData, AddrKey, PolicyEp>;
/// strait_policy_drops: drops per deciding policy id, per CPU.
pub type PolicyDropsMap = aya::maps::PerCpuHashMap<MapData, u32, Metric>;

/// Drops per policy id, summed over CPUs: (id, packets, bytes).
pub fn policy_drops(
    pin_dir: &std::path::Path,
) -> Result<Vec<(u32, u64, u64)>, aya::maps::MapError> {
    let m: PolicyDropsMap = open(pin_dir, "strait_policy_drops")?;
    let mut out = vec![];
    for item in m.iter() {
        let (id, per_cpu) = item?;
        let (p, b) = per_cpu
            .iter()
            .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes));
        out.push((id, p, b));
    }
    out.sort();
    Ok(out)
}

/// `struct policy_ct`: a local pod's flow, established once answered.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyCt {
    pub last_seen: u64,
    pub flags: u32,
    pub _pad: u32,
}
unsafe impl aya::Pod for PolicyCt {}

pub const PCT_REPLIED: u32 = 1;

/// strait_policy_ct: flows of local pods (first packet's tuple).
pub type PolicyCtMap = HashMap<MapData, CtKey, PolicyCt>;

/// Remove the flows of these addresses (network order) from
/// strait_policy_ct, when their pods are gone: a new pod given the address
/// must not inherit "established". Returns how many went.
pub fn forget_policy_flows(
    pin_dir: &std::path::Path,
    gone: &[u32],
) -> Result<usize, aya::maps::MapError> {
    let mut ct: PolicyCtMap = open(pin_dir, "strait_policy_ct")?;
    let stale: Vec<CtKey> = ct
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| gone.contains(&k.saddr) || gone.contains(&k.daddr))
        .collect();
    for k in &stale {
        let _ = ct.remove(k);
    }
    Ok(stale.len())
}
pub type PolicyMap = aya::maps::LpmTrie<MapData, PolicyKey, PolicyVal>;

pub type TunnelMap = aya::maps::Array<MapData, TunnelCfg>;
pub type TunnelPeerMap = HashMap<MapData, AddrKey, TunnelPeer>;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(backends: &[u32], terminating: &[u32]) -> Vec<(LbKey, LbVal)> {
        use strait_model::services::*;
        let b = |ip: &u32, state| Backend {
            ip: std::net::Ipv4Addr::from(*ip),
            port: 8080,
            state,
            pod: None,
            node: None,
        };
        lb_entries(&[ServiceEntry {
            id: 7,
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            frontend: Frontend {
                ip: "198.18.64.10".parse().unwrap(),
                port: 80,
                proto: Proto::Tcp,
            },
            backends: backends
                .iter()
                .map(|ip| b(ip, BackendState::Active))
                .chain(
                    terminating
                        .iter()
                        .map(|ip| b(ip, BackendState::Terminating)),
                )
                .collect(),
            affinity_secs: None,
            external: false,
            local_only: false,
        }])
    }

    /// What the datapath would see: None when a pick could miss a slot.
    fn consistent(map: &std::collections::HashMap<LbKey, LbVal>) -> bool {
        let Some((k0, v0)) = map.iter().find(|(k, _)| k.slot == 0) else {
            return true; // no service: not looked at
        };
        (1..=v0.count).all(|i| {
            map.get(&LbKey { slot: i, ..*k0 })
                .is_some_and(|b| b.count == 0)
        })
    }

    #[test]
    fn lb_writes_keep_every_pickable_slot_filled() {
        // (old active, old terminating, new active, new terminating)
        type Case = (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>);
        let cases: Vec<Case> = vec![
            (vec![], vec![], vec![1, 2, 3], vec![]),      // new service
            (vec![1], vec![], vec![1, 2, 3], vec![]),     // grow
            (vec![1, 2, 3], vec![], vec![1], vec![]),     // shrink
            (vec![1, 2, 3], vec![], vec![3], vec![1, 2]), // drain two
            (vec![1, 2], vec![], vec![4, 5, 6], vec![]),  // replace all
            (vec![1, 2, 3], vec![], vec![], vec![]),      // no backends left
            (vec![1, 2, 3], vec![4], vec![5], vec![1]),
        ];
        for (oa, ot, na, nt) in cases {
            let (old, new) = (svc(&oa, &ot), svc(&na, &nt));
            for new in [new.clone(), vec![]] {
                let mut map: std::collections::HashMap<LbKey, LbVal> =
                    old.iter().copied().collect();
                assert!(consistent(&map));
                for op in lb_ops(&old, &new) {
                    match op {
                        LbOp::Put(k, v) => map.insert(k, v),
                        LbOp::Delete(k) => map.remove(&k),
                    };
                    assert!(
                        consistent(&map),
                        "{oa:?}+{ot:?} -> {na:?}+{nt:?}: inconsistent after {op:?}"
                    );
                }
                let want: std::collections::HashMap<LbKey, LbVal> = new.iter().copied().collect();
                assert_eq!(map, want);
            }
        }
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Endpoint>(), 20);
        assert_eq!(std::mem::size_of::<Lxc>(), 24);
        assert_eq!(std::mem::size_of::<Metric>(), 16);
        assert_eq!(std::mem::size_of::<Event>(), 40);
        assert_eq!(std::mem::size_of::<LbKey>(), 12);
        assert_eq!(std::mem::size_of::<LbVal>(), 16);
        assert_eq!(std::mem::size_of::<CtKey>(), 16);
        assert_eq!(std::mem::size_of::<CtVal>(), 24);
        assert_eq!(std::mem::size_of::<HostportKey>(), 8);
        // The tunnel's maps, against the compiled object's own definitions.
        let size = |name: &str| {
            let l = crate::upgrade::declared()
                .into_iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{name} is not in the objects"));
            (l.key_size as usize, l.value_size as usize)
        };
        assert_eq!(size("strait_tunnel"), (4, std::mem::size_of::<TunnelCfg>()));
        assert_eq!(
            size("strait_tunnel_peers"),
            (
                std::mem::size_of::<AddrKey>(),
                std::mem::size_of::<TunnelPeer>()
            )
        );
        assert_eq!(
            size("strait_policy"),
            (
                4 + std::mem::size_of::<PolicyKey>(),
                std::mem::size_of::<PolicyVal>()
            )
        );
        assert_eq!(
            size("strait_policy_ep"),
            (16, std::mem::size_of::<PolicyEp>())
        );
        let v4: std::net::IpAddr = Ipv4Addr::new(198, 18, 0, 2).into();
        assert_eq!(AddrKey::from(v4).ip(), v4);
        assert_eq!(&AddrKey::from(v4).addr[10..], &[0xff, 0xff, 198, 18, 0, 2]);
        assert_eq!(
            key_ip(ip_key(Ipv4Addr::new(198, 19, 0, 1))),
            Ipv4Addr::new(198, 19, 0, 1)
        );
        assert_eq!(
            ip_key(Ipv4Addr::new(1, 2, 3, 4)).to_ne_bytes(),
            [1, 2, 3, 4]
        );
    }
}
