//! Names and addresses strait derives for the kernel objects it creates, so
//! that every object can be found again from the container id alone (DEL,
//! CHECK, GC) without consulting any state.

use sha2::{Digest, Sha256};

/// Prefix of every host-side pod veth, like Calico's `cali`.
pub const HOST_VETH_PREFIX: &str = "strt";
/// macvlan mode (Bifrost): the host end of a pod's service veth.
pub const SVC_VETH_PREFIX: &str = "bifr";
/// macvlan mode: the pod end of its service veth, as Bifrost names it.
pub const POD_SVC_VETH: &str = "veth0";

/// Link-local gateway every pod routes through (Calico's 169.254.1.1). The pod
/// has a permanent neighbour entry for it, so the host never answers ARP for it.
pub const POD_GATEWAY_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// Route protocol number strait stamps on the routes it owns, so reconcilers
/// can tell them from routes others installed (`ip route show proto 0x5a`).
pub const ROUTE_PROTOCOL: u8 = 0x5a;
/// Routes learned over BGP: the kernel's "bgp" protocol (186 in
/// /etc/iproute2/rt_protos), so `ip route show proto bgp` lists them.
pub const BGP_ROUTE_PROTOCOL: u8 = 186;

fn digest(container_id: &str, ifname: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update(b".");
    h.update(ifname.as_bytes());
    h.finalize().into()
}

/// Host end of the pod's veth: prefix plus 11 hex characters of a hash of the
/// container id and interface name. 15 characters, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    prefixed(HOST_VETH_PREFIX, container_id, ifname)
}

/// macvlan mode: the host end of the pod's service veth (Bifrost's
/// `bifrXXX`), named like [`host_veth_name`] with its own prefix.
pub fn svc_veth_name(container_id: &str, ifname: &str) -> String {
    prefixed(SVC_VETH_PREFIX, container_id, ifname)
}

fn prefixed(prefix: &str, container_id: &str, ifname: &str) -> String {
    let d = digest(container_id, ifname);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// macvlan mode: a VLAN's port, the stand-in for the seed's `eth0-<vid>`
/// sub-interface: the parent of the VLAN's macvlan pods (`<uplink>-<vid>`,
/// `vlan<vid>` when that would not fit IFNAMSIZ) and its veth peer, which
/// eBPF joins to the uplink (`trunk<vid>`).
pub fn vlan_port_names(uplink: &str, vid: u16) -> (String, String) {
    let parent = format!("{uplink}-{vid}");
    let parent = if parent.len() <= 15 {
        parent
    } else {
        format!("vlan{vid}")
    };
    (parent, format!("trunk{vid}"))
}

/// The VLAN id of a port's far end (`trunk<vid>`).
pub fn trunk_vid(name: &str) -> Option<u16> {
    let v: u16 = name.strip_prefix("trunk")?.parse().ok()?;
    (1..=4094).contains(&v).then_some(v)
}

/// MAC address of the host end: locally administered, unicast, derived from
/// the same hash so the plugin knows it before the link exists.
pub fn host_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let d = digest(container_id, ifname);
    [0xee, d[11], d[12], d[13], d[14], d[15]]
}

/// MAC address of the pod end: also derived, so the plugin never has to
/// look it up in the pod's namespace. The link is point-to-point, so it only
/// has to differ from the host end's.
pub fn pod_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let d = digest(container_id, ifname);
    [0x0a, d[16], d[17], d[18], d[19], d[20]]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A pod's host veth: its data path (`strt…`) or, in macvlan mode, its
/// service veth (`bifr…`).
pub fn is_host_veth(name: &str) -> bool {
    [HOST_VETH_PREFIX, SVC_VETH_PREFIX].iter().any(|p| {
        name.len() == p.len() + 11
            && name.starts_with(p)
            && name[p.len()..].chars().all(|c| c.is_ascii_hexdigit())
    })
}

pub fn is_svc_veth(name: &str) -> bool {
    is_host_veth(name) && name.starts_with(SVC_VETH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_name_is_prefix_plus_11_hex_and_fits_ifnamsiz() {
        let n = host_veth_name("abc123", "eth0");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("strt"));
        assert!(is_host_veth(&n));
        assert!(!is_host_veth("eth0"));
        assert!(!is_host_veth("strtZZZZZZZZZZZ"));
        let b = svc_veth_name("abc123", "eth0");
        assert!(b.starts_with("bifr") && b.len() == 15 && is_host_veth(&b) && is_svc_veth(&b));
        assert!(!is_svc_veth(&n));
    }

    #[test]
    fn vlan_ports_are_named_like_the_seeds_sub_interfaces() {
        assert_eq!(
            vlan_port_names("eth0", 10),
            ("eth0-10".to_string(), "trunk10".to_string())
        );
        assert_eq!(vlan_port_names("enp129s0f0np0", 4094).0, "vlan4094");
        assert_eq!(trunk_vid("trunk10"), Some(10));
        assert_eq!(trunk_vid("trunk0"), None);
        assert_eq!(trunk_vid("trunk4095"), None);
        assert_eq!(trunk_vid("eth0"), None);
    }

    #[test]
    fn host_veth_name_depends_on_container_and_ifname() {
        assert_eq!(host_veth_name("c1", "eth0"), host_veth_name("c1", "eth0"));
        assert_ne!(host_veth_name("c1", "eth0"), host_veth_name("c2", "eth0"));
        assert_ne!(host_veth_name("c1", "eth0"), host_veth_name("c1", "eth1"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
    }

    #[test]
    fn host_mac_is_local_unicast() {
        let m = host_veth_mac("c1", "eth0");
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        let p = pod_veth_mac("c1", "eth0");
        assert_eq!(p[0] & 0x03, 0x02, "pod end: local unicast too");
        assert_ne!(p, m);
        assert_eq!(format_mac(&[0xee, 1, 2, 3, 4, 0xff]), "ee:01:02:03:04:ff");
    }
}
