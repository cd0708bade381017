//! The VXLAN overlay's plan, with no I/O: the device's name, each VTEP's
//! MAC, and for every peer node the FDB entries, the neighbour entry of its
//! next hop and its route in the overlay table, as Hybridnet and flannel
//! wire them. The agent's backend makes the kernel match it.

use crate::routes::NodeRoute;
use ipnet::IpNet;
use std::net::IpAddr;

/// UDP port of the overlay, as Hybridnet and flannel use it.
pub const VXLAN_PORT: u16 = 8472;
/// VNI when none is configured (the seed's `eth0.vxlan20`).
pub const VXLAN_VNI: u32 = 20;
/// Outer Ethernet + IPv4 + UDP + VXLAN headers.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// The outer IPv4 header of IP-in-IP.
pub const IPIP_OVERHEAD_V4: u32 = 20;

/// The IP-in-IP stand-in device on `uplink` (`eth0.ipip`): routes to other
/// nodes' pods point at it, as Calico's point at tunl0; eBPF on its egress
/// does the encapsulation. Refused when it would not fit 15 characters.
pub fn ipip_device(uplink: &str) -> Result<String, String> {
    let name = format!("{uplink}.ipip");
    if name.len() > 15 {
        return Err(format!(
            "IP-in-IP device name {name:?} is longer than 15 characters; use a shorter uplink name"
        ));
    }
    Ok(name)
}

/// Hybridnet's table for remote pod subnets (the seed's "40000 路由表").
pub const OVERLAY_TABLE: u32 = 40000;
/// Hybridnet's table for this node's pods (the seed's "39999 路由表"): in
/// overlay modes the pods' /32s live here instead of main.
pub const LOCAL_POD_TABLE: u32 = 39999;
/// The rule that sends lookups through [`LOCAL_POD_TABLE`].
pub const LOCAL_POD_RULE_PRIORITY: u32 = 1998;
/// The rule that sends lookups through [`OVERLAY_TABLE`] (before main, so
/// a stale main-table route cannot shadow the overlay).
pub const OVERLAY_RULE_PRIORITY: u32 = 1999;
/// Hybridnet's underlay table (the seed's "10001 路由表"): in top-of-rack
/// BGP mode it holds the default route to the rack's router, and traffic
/// from this node's pods looks it up.
pub const UNDERLAY_TABLE: u32 = 10001;
/// The rules `from <this node's pod block> lookup 10001`: after table
/// 39999 (a local pod stays on the node), before main.
pub const UNDERLAY_RULE_PRIORITY: u32 = 1999;

/// The VXLAN device on `uplink`: `eth0.vxlan20`, as in the seed. Refused
/// when it would not fit the kernel's 15 characters.
pub fn vxlan_device(uplink: &str, vni: u32) -> Result<String, String> {
    let name = format!("{uplink}.vxlan{vni}");
    if name.len() > 15 {
        return Err(format!(
            "VXLAN device name {name:?} is longer than 15 characters; use a shorter uplink name or a smaller VNI"
        ));
    }
    Ok(name)
}

/// A VTEP's MAC, derived from its address so that no node has to publish
/// it: 0a:58 (locally administered) and the IPv4 address; an IPv6 VTEP uses
/// its last four bytes.
pub fn vtep_mac(ip: IpAddr) -> [u8; 6] {
    let b: [u8; 4] = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, b[0], b[1], b[2], b[3]]
}

/// What one peer node needs on this node's VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VtepPeer {
    pub node: String,
    /// Its node IP: the outer destination.
    pub vtep: IpAddr,
    pub mac: [u8; 6],
    pub pod_cidr: IpNet,
    /// The next hop of the route to its pods: the CIDR's first address,
    /// resolved by a permanent neighbour entry to the peer's VTEP MAC.
    pub gateway: IpAddr,
}

/// One [`VtepPeer`] per peer pod CIDR of the VTEP's family.
pub fn vtep_peers(peers: &[NodeRoute], local_is_v4: bool) -> Vec<VtepPeer> {
    let mut out: Vec<VtepPeer> = peers
        .iter()
        .filter(|p| p.via.is_ipv4() == local_is_v4 && p.pod_cidr.addr().is_ipv4() == local_is_v4)
        .map(|p| VtepPeer {
            node: p.node.clone(),
            vtep: p.via,
            mac: vtep_mac(p.via),
            pod_cidr: p.pod_cidr,
            gateway: p.pod_cidr.network(),
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_macs_and_peers() {
        assert_eq!(vxlan_device("eth0", 20).unwrap(), "eth0.vxlan20");
        assert!(vxlan_device("enp0s31f6", 4096)
            .unwrap_err()
            .contains("15 characters"));
        assert_eq!(
            vtep_mac("198.18.0.2".parse().unwrap()),
            [0x0a, 0x58, 198, 18, 0, 2]
        );
        assert_eq!(
            vtep_mac("fd00::1:2:3".parse().unwrap()),
            [0x0a, 0x58, 0, 2, 0, 3]
        );
        let peers = vec![
            NodeRoute {
                node: "b".into(),
                pod_cidr: "198.19.1.0/24".parse().unwrap(),
                via: "198.18.0.2".parse().unwrap(),
            },
            NodeRoute {
                node: "c".into(),
                pod_cidr: "fd10::/64".parse().unwrap(),
                via: "fd00::3".parse().unwrap(),
            },
        ];
        let v = vtep_peers(&peers, true);
        assert_eq!(v.len(), 1, "an IPv4 VTEP carries the IPv4 peers");
        assert_eq!(v[0].gateway, "198.19.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(v[0].mac, [0x0a, 0x58, 198, 18, 0, 2]);
        assert_eq!(vtep_peers(&peers, false)[0].node, "c");
    }
}
