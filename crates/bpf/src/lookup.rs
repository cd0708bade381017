//! One lookup in a node's pinned maps, answered the way its programs look
//! it up (`strait explain` asks these, locally or through a node's agent).

use crate::maps::{self, EndpointMap, TunnelMap};
use crate::vlan::{subnet_key, PortMap, VlanMap};
use std::net::IpAddr;
use std::path::Path;
use strait_model::api::{MapEntry, MapQuestion};

/// What the map in `pins` holds for `q`; None: no entry, or no such map
/// (a mode that does not pin it).
pub fn answer(pins: &Path, q: &MapQuestion) -> Option<MapEntry> {
    match *q {
        MapQuestion::Endpoint { ip } => {
            // The endpoint map is keyed by IPv4 address today.
            let IpAddr::V4(v4) = ip else { return None };
            let m: EndpointMap = maps::open(pins, "strait_endpoints").ok()?;
            let ep = m.get(&maps::ip_key(v4), 0).ok()?;
            Some(MapEntry {
                ifindex: ep.ifindex,
                ..Default::default()
            })
        }
        MapQuestion::Tunnel => {
            let m: TunnelMap = maps::open(pins, "strait_tunnel").ok()?;
            let cfg = m.get(&0, 0).ok()?;
            (cfg.ifindex != 0).then_some(MapEntry {
                ifindex: cfg.ifindex,
                ..Default::default()
            })
        }
        MapQuestion::VlanPort { vid } => port(pins, "strait_vlan_ports", u32::from(vid)),
        MapQuestion::VlanTrunk { ifindex } => port(pins, "strait_vlan_trunks", ifindex),
        MapQuestion::VlanTag { ip } => {
            let m: VlanMap = maps::open(pins, "strait_vlan_subnets").ok()?;
            let v = m.get(&subnet_key(ipnet::IpNet::from(ip)), 0).ok()?;
            Some(MapEntry {
                vid: v.vid,
                ..Default::default()
            })
        }
    }
}

fn port(pins: &Path, map: &str, key: u32) -> Option<MapEntry> {
    let m: PortMap = maps::open(pins, map).ok()?;
    let p = m.get(&key, 0).ok()?;
    Some(MapEntry {
        ifindex: p.ifindex,
        vid: p.vid,
        uplink: p.uplink,
    })
}
