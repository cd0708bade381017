//! The speaker's routes as `strait bgp routes` shows them: every path
//! learned (with whether it is the one used, and stale), and every prefix
//! sent to each peer (originated here, or reflected).

use crate::rib::Rib;
use crate::wire::AsSegment;
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnedRoute {
    pub prefix: IpNet,
    pub peer: IpAddr,
    pub next_hop: IpAddr,
    /// The AS path, flattened (a set's members in braces).
    pub as_path: String,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    /// One of the paths forwarding uses (several when equal-cost).
    pub installed: bool,
    /// Kept from before the peer's restart, not re-sent yet.
    pub stale: bool,
    /// Set on reflected routes: the router that first announced it.
    pub originator: Option<std::net::Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertisedRoute {
    pub prefix: IpNet,
    pub peer: IpAddr,
    /// Originated by this node, or reflected (from the peer that sent it).
    pub reflected_from: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteView {
    pub learned: Vec<LearnedRoute>,
    pub advertised: Vec<AdvertisedRoute>,
}

pub fn as_path_text(segs: &[AsSegment]) -> String {
    segs.iter()
        .map(|s| match s {
            AsSegment::Sequence(v) => v.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            AsSegment::Set(v) => format!(
                "{{{}}}",
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every learned path, by prefix then peer.
pub fn learned(rib: &Rib) -> Vec<LearnedRoute> {
    let mut out = vec![];
    for prefix in rib.prefixes() {
        let used = rib.installed().get(prefix);
        let mut paths: Vec<_> = rib.paths(prefix).iter().collect();
        paths.sort_by_key(|p| p.peer.address);
        for p in paths {
            out.push(LearnedRoute {
                prefix: *prefix,
                peer: p.peer.address,
                next_hop: p.next_hop,
                as_path: as_path_text(&p.attrs.as_path),
                local_pref: p.attrs.local_pref,
                med: p.attrs.med,
                installed: used.is_some_and(|h| h.contains(&p.next_hop)),
                stale: p.stale,
                originator: p.attrs.originator_id,
            });
        }
    }
    out
}
