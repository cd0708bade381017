//! 802.1Q tags on a walk: where a VLAN program pushes one (tc egress:
//! vlan_egress, or to_netdev on the eBPF datapath) and pops it (tc ingress:
//! vlan_ingress, from_netdev), with the tag read from that namespace's
//! strait_vlan_subnets map: a node tags by the packet's source (then its
//! destination), a router (the VLAN gateway, the VPC's trunk ends) by its
//! destination alone.

use super::site::Site;
use std::net::IpAddr;

/// Who reads the map: a node by its name, a router by its label.
pub struct Tagger<'a> {
    site: &'a dyn Site,
    at: String,
    router: bool,
}

impl<'a> Tagger<'a> {
    /// The tagger of a namespace: a node's, the VLAN gateway's, the VPC's.
    pub fn of(site: &'a dyn Site, label: &str, node: Option<&str>) -> Option<Tagger<'a>> {
        let (at, router) = match (label, node) {
            ("gateway" | "vpc", _) => (label, true),
            (_, Some(n)) => (n, false),
            _ => return None,
        };
        Some(Tagger {
            site,
            at: at.to_string(),
            router,
        })
    }

    fn lookup(&self, ip: IpAddr) -> Option<u16> {
        self.site
            .map(&self.at, &strait_model::api::MapQuestion::VlanTag { ip })
            .map(|e| e.vid)
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
