//! 802.1Q tags on a walk: where a VLAN program pushes one (tc egress:
//! vlan_egress, or to_netdev on the eBPF datapath) and pops it (tc ingress:
//! vlan_ingress, from_netdev), with the tag read from that namespace's
//! strait_vlan_subnets map: a node tags by the packet's source (then its
//! destination), a router (the VLAN gateway, the VPC's trunk ends) by its
//! destination alone.

use std::net::IpAddr;
use std::path::PathBuf;

/// Who reads the map, and where it is pinned.
pub struct Tagger {
    pins: PathBuf,
    router: bool,
}

impl Tagger {
    /// The tagger of a namespace: a node's, the VLAN gateway's, the VPC's.
    pub fn of(lab: &str, label: &str, node: Option<&str>) -> Option<Tagger> {
        let (pins, router) = match (label, node) {
            ("gateway", _) => (crate::gateway::pin_dir(lab), true),
            ("vpc", _) => (crate::cloud::kernel::pin_dir(lab), true),
            (_, Some(n)) => (PathBuf::from(strait_model::lab::bpf_dir(lab, n)), false),
            _ => return None,
        };
        Some(Tagger { pins, router })
    }

    fn lookup(&self, ip: IpAddr) -> Option<u16> {
        let m: strait_bpf::vlan::VlanMap =
            strait_bpf::maps::open(&self.pins, "strait_vlan_subnets").ok()?;
        let net = ipnet::IpNet::from(ip);
        m.get(&strait_bpf::vlan::subnet_key(net), 0)
            .ok()
            .map(|v| v.vid)
    }

    /// The tag a packet from `src` to `dst` is given.
    pub fn tag(&self, src: IpAddr, dst: IpAddr) -> Option<u16> {
        if self.router {
            return self.lookup(dst);
        }
        self.lookup(src).or_else(|| self.lookup(dst))
    }
}

/// The programs that push tags on egress / pop them on ingress.
pub fn pushes(progs: &[String]) -> bool {
    progs
        .iter()
        .any(|p| p == strait_bpf::vlan::EGRESS || p == "to_netdev")
}

pub fn pops(progs: &[String]) -> bool {
    progs
        .iter()
        .any(|p| p == strait_bpf::vlan::INGRESS || p == "from_netdev")
}
