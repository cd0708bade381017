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

/// `struct lxc`: the address a host veth's pod may send from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lxc {
    pub ip: u32,
    pub flags: u32,
}
unsafe impl aya::Pod for Lxc {}

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
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub last_seen: u64,
}
unsafe impl aya::Pod for CtVal {}

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
/// node's pin directory: the CLI and tests read state this way.
pub fn open<T>(pin_dir: &std::path::Path, name: &str) -> Result<T, aya::maps::MapError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pin_dir.join(name))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Endpoint>(), 20);
        assert_eq!(std::mem::size_of::<Lxc>(), 8);
        assert_eq!(std::mem::size_of::<Metric>(), 16);
        assert_eq!(std::mem::size_of::<Event>(), 40);
        assert_eq!(std::mem::size_of::<LbKey>(), 12);
        assert_eq!(std::mem::size_of::<LbVal>(), 16);
        assert_eq!(std::mem::size_of::<CtKey>(), 16);
        assert_eq!(std::mem::size_of::<CtVal>(), 16);
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
