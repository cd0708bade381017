//! Routes learned from peers (Adj-RIB-In, one path per peer and prefix),
//! the best of them per prefix (RFC 4271 §9.1.2, with equal-cost paths
//! kept together for ECMP), and what that changes in the forwarding
//! table. Graceful restart: a restarting peer's paths stay, marked stale,
//! until it re-sends them and its End-of-RIB, or its time runs out.
//! Pure: no I/O.

use crate::wire::{Family, Origin, PathAttrs, Update};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The session a path came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub address: IpAddr,
    pub router_id: Ipv4Addr,
    /// The peer is in another AS.
    pub ebgp: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub peer: PeerInfo,
    pub next_hop: IpAddr,
    pub attrs: Arc<PathAttrs>,
    /// Kept from before the peer's restart, not re-sent yet.
    pub stale: bool,
}

impl Path {
    /// The comparison of RFC 4271 §9.1.2.2 up to (not including) the
    /// tie-breakers: paths equal here are equal-cost.
    fn rank(&self) -> (std::cmp::Reverse<u32>, usize, Origin, u32, bool) {
        (
            std::cmp::Reverse(self.attrs.local_pref.unwrap_or(100)),
            self.attrs.as_path_len(),
            self.attrs.origin.unwrap_or(Origin::Incomplete),
            self.attrs.med.unwrap_or(0),
            !self.peer.ebgp,
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    received: usize,
    stale: usize,
}

/// A change to make in the kernel's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FibChange {
    /// Route `prefix` via these next hops (several: ECMP).
    Set {
        prefix: IpNet,
        next_hops: Vec<IpAddr>,
    },
    Remove {
        prefix: IpNet,
    },
}

#[derive(Debug, Default)]
pub struct Rib {
    local_as: u32,
    router_id: Option<Ipv4Addr>,
    paths: BTreeMap<IpNet, Vec<Path>>,
    /// Per peer: paths held, and of those stale (kept up to date, so
    /// status never walks 100 000 prefixes).
    counts: HashMap<IpAddr, Counts>,
    installed: BTreeMap<IpNet, Vec<IpAddr>>,
    /// Set when we are a route reflector: a path whose cluster list holds
    /// it has been round the cluster already.
    cluster_id: Option<Ipv4Addr>,
    /// A reflector's prefixes whose paths changed since the last
    /// [`Rib::take_touched`] (a new best path may have the same next hops:
    /// it must be re-sent all the same).
    touched: BTreeSet<IpNet>,
    /// Updates refused as loops (our AS in the path, our id as originator).
    pub loops: u64,
}

impl Rib {
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> Rib {
        Rib {
            local_as,
            router_id: Some(router_id),
            ..Default::default()
        }
    }

    /// We reflect routes, as cluster `id` (RFC 4456).
    pub fn set_cluster_id(&mut self, id: Option<Ipv4Addr>) {
        self.cluster_id = id;
    }

    /// The one best path of `prefix` (what a reflector passes on): the
    /// equal-cost paths' tie broken by originator (or router) id, cluster
    /// list length and peer address (RFC 4271 §9.1.2.2, RFC 4456 §9).
    pub fn best(&self, prefix: &IpNet) -> Option<&Path> {
        self.paths.get(prefix)?.iter().min_by_key(|p| {
            (
                p.rank(),
                p.attrs.originator_id.unwrap_or(p.peer.router_id),
                p.attrs.cluster_list.len(),
                p.peer.address,
            )
        })
    }

    /// As a reflector: the prefixes whose paths changed since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<IpNet> {
        std::mem::take(&mut self.touched)
    }

    /// Every prefix some peer sent.
    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.paths.keys()
    }

    /// Apply one UPDATE from `peer`.
    pub fn update(&mut self, peer: PeerInfo, u: &Update) -> Vec<FibChange> {
        let mut touched = BTreeSet::new();
        let mut withdrawn: Vec<IpNet> = u.withdrawn.clone();
        if let Some(m) = &u.attrs.mp_unreach {
            withdrawn.extend(m.withdrawn.iter().copied());
        }
        for p in withdrawn {
            if self.remove_path(&p, peer.address) {
                touched.insert(p);
            }
        }
        let mut announced: Vec<(IpNet, IpAddr)> = vec![];
        if let Some(nh) = u.attrs.next_hop {
            announced.extend(u.nlri.iter().map(|p| (*p, IpAddr::V4(nh))));
        }
        if let Some(r) = &u.attrs.mp_reach {
            if let Some(nh) = r.next_hops.first() {
                announced.extend(r.nlri.iter().map(|p| (*p, *nh)));
            }
        }
        if !announced.is_empty() {
            let looped = (peer.ebgp && u.attrs.contains_as(self.local_as))
                || (u.attrs.originator_id.is_some() && u.attrs.originator_id == self.router_id)
                || self
                    .cluster_id
                    .is_some_and(|c| u.attrs.cluster_list.contains(&c));
            if looped {
                self.loops += 1;
                // A looped announcement replaces (withdraws) what the peer
                // had sent for these prefixes.
                for (p, _) in announced {
                    if self.remove_path(&p, peer.address) {
                        touched.insert(p);
                    }
                }
            } else {
                let mut attrs = u.attrs.clone();
                attrs.mp_reach = None;
                attrs.mp_unreach = None;
                let attrs = Arc::new(attrs);
                for (p, nh) in announced {
                    self.remove_path(&p, peer.address);
                    self.counts.entry(peer.address).or_default().received += 1;
                    self.paths.entry(p).or_default().push(Path {
                        peer,
                        next_hop: nh,
                        attrs: attrs.clone(),
                        stale: false,
                    });
                    touched.insert(p);
                }
            }
        }
        self.reselect(touched)
    }

    /// The session with `peer` ended. Graceful: keep its paths, stale.
    pub fn peer_down(&mut self, peer: IpAddr, graceful: bool) -> Vec<FibChange> {
        if graceful {
            for v in self.paths.values_mut() {
                for p in v.iter_mut().filter(|p| p.peer.address == peer) {
                    p.stale = true;
                }
            }
            if let Some(c) = self.counts.get_mut(&peer) {
                c.stale = c.received;
            }
            return vec![];
        }
        let mut touched = BTreeSet::new();
        for (prefix, v) in self.paths.iter_mut() {
            let before = v.len();
            v.retain(|p| p.peer.address != peer);
            if v.len() != before {
                touched.insert(*prefix);
            }
        }
        self.counts.remove(&peer);
        self.reselect(touched)
    }

    /// The peer's End-of-RIB for `family`, or its restart time is over:
    /// what it did not re-send is gone.
    pub fn sweep_stale(&mut self, peer: IpAddr, family: Option<Family>) -> Vec<FibChange> {
        let of_family = |p: &IpNet| match family {
            None => true,
            Some(f) if f == Family::IPV4_UNICAST => matches!(p, IpNet::V4(_)),
            Some(f) if f == Family::IPV6_UNICAST => matches!(p, IpNet::V6(_)),
            Some(_) => false,
        };
        let mut touched = BTreeSet::new();
        let mut swept = 0;
        for (prefix, v) in self.paths.iter_mut() {
            if !of_family(prefix) {
                continue;
            }
            let before = v.len();
            v.retain(|p| !(p.peer.address == peer && p.stale));
            if v.len() != before {
                swept += before - v.len();
                touched.insert(*prefix);
            }
        }
        if let Some(c) = self.counts.get_mut(&peer) {
            c.received -= swept;
            c.stale -= swept;
        }
        self.reselect(touched)
    }

    /// How many of `peer`'s paths are stale.
    pub fn stale(&self, peer: IpAddr) -> usize {
        self.counts.get(&peer).map_or(0, |c| c.stale)
    }

    /// Prefixes received from `peer`.
    pub fn received(&self, peer: IpAddr) -> usize {
        self.counts.get(&peer).map_or(0, |c| c.received)
    }

    pub fn paths(&self, prefix: &IpNet) -> &[Path] {
        self.paths.get(prefix).map(Vec::as_slice).unwrap_or(&[])
    }

    /// What the forwarding table should hold: prefix → next hops.
    pub fn installed(&self) -> &BTreeMap<IpNet, Vec<IpAddr>> {
        &self.installed
    }

    fn remove_path(&mut self, prefix: &IpNet, peer: IpAddr) -> bool {
        let Some(v) = self.paths.get_mut(prefix) else {
            return false;
        };
        let Some(i) = v.iter().position(|p| p.peer.address == peer) else {
            return false;
        };
        let old = v.swap_remove(i);
        if let Some(c) = self.counts.get_mut(&peer) {
            c.received -= 1;
            c.stale -= usize::from(old.stale);
        }
        true
    }

    /// Best paths of the touched prefixes, and the FIB changes they make.
    fn reselect(&mut self, touched: BTreeSet<IpNet>) -> Vec<FibChange> {
        if self.cluster_id.is_some() {
            self.touched.extend(touched.iter().copied());
        }
        let mut out = vec![];
        for prefix in touched {
            let hops = match self.paths.get(&prefix) {
                Some(v) if !v.is_empty() => {
                    let best = v.iter().map(Path::rank).min().expect("not empty");
                    let mut hops: Vec<IpAddr> = v
                        .iter()
                        .filter(|p| p.rank() == best)
                        .map(|p| p.next_hop)
                        .collect();
                    hops.sort();
                    hops.dedup();
                    Some(hops)
                }
                _ => {
                    self.paths.remove(&prefix);
                    None
                }
            };
            match hops {
                Some(h) => {
                    if self.installed.get(&prefix) != Some(&h) {
                        self.installed.insert(prefix, h.clone());
                        out.push(FibChange::Set {
                            prefix,
                            next_hops: h,
                        });
                    }
                }
                None => {
                    if self.installed.remove(&prefix).is_some() {
                        out.push(FibChange::Remove { prefix });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "rib_tests.rs"]
mod tests;
