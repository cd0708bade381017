//! Route reflection (RFC 4456): what a reflector passes on to one iBGP
//! peer. A path from a client goes to every other iBGP peer; a path from a
//! non-client goes to clients only; the path keeps its next hop, gains an
//! ORIGINATOR_ID (the router that first sent it into the AS) and has the
//! reflector's cluster id put in front of its CLUSTER_LIST. Pure: the
//! speaker sends what this returns.

use crate::rib::{Path, Rib};
use crate::wire::{Codec, PathAttrs, Update};
use ipnet::IpNet;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The peer routes are reflected to, and what it has been sent so far.
pub struct Target<'a> {
    pub address: IpAddr,
    pub client: bool,
    /// Prefixes reflected to it and not withdrawn since.
    pub sent: &'a mut HashSet<IpNet>,
}

/// The UPDATEs that bring `to` up to date for `prefixes`. `is_client`
/// says which peers are our clients; prefixes we originate ourselves are
/// never reflected.
pub fn reflect<'p>(
    rib: &Rib,
    cluster_id: Ipv4Addr,
    origin: &BTreeSet<IpNet>,
    is_client: impl Fn(IpAddr) -> bool,
    to: Target<'_>,
    prefixes: impl IntoIterator<Item = &'p IpNet>,
) -> Vec<Update> {
    let eligible = |p: &Path| {
        p.peer.address != to.address && !p.peer.ebgp && (to.client || is_client(p.peer.address))
    };
    // Paths sharing attributes and next hop go in one UPDATE.
    let mut groups: HashMap<(*const PathAttrs, IpAddr), (&Path, Vec<IpNet>)> = HashMap::new();
    let mut gone = vec![];
    for prefix in prefixes {
        let best = rib
            .best(prefix)
            .filter(|p| !origin.contains(prefix) && eligible(p));
        match best {
            Some(p) => {
                to.sent.insert(*prefix);
                groups
                    .entry((Arc::as_ptr(&p.attrs), p.next_hop))
                    .or_insert_with(|| (p, vec![]))
                    .1
                    .push(*prefix);
            }
            None => {
                if to.sent.remove(prefix) {
                    gone.push(*prefix);
                }
            }
        }
    }
    let mut out = Update::withdraw(&gone);
    let mut groups: Vec<_> = groups.into_values().collect();
    groups.sort_by_key(|(_, v)| v[0]);
    for (path, mut prefixes) in groups {
        prefixes.sort();
        let mut attrs = (*path.attrs).clone();
        attrs.originator_id = attrs.originator_id.or(Some(path.peer.router_id));
        attrs.cluster_list.insert(0, cluster_id);
        attrs.local_pref = attrs.local_pref.or(Some(100));
        attrs.next_hop = match path.next_hop {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        };
        out.extend(Update::announce(
            &attrs,
            &prefixes,
            &[path.next_hop],
            Codec::default(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::PeerInfo;
    use crate::wire::Origin;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
    }

    fn peer(n: u8) -> PeerInfo {
        PeerInfo {
            address: ip(n),
            router_id: Ipv4Addr::new(198, 18, 0, n),
            ebgp: false,
        }
    }

    fn announce(prefix: &str, nh: u8) -> Update {
        Update {
            attrs: PathAttrs {
                origin: Some(Origin::Igp),
                next_hop: Some(Ipv4Addr::new(198, 18, 0, nh)),
                local_pref: Some(100),
                ..Default::default()
            },
            nlri: vec![prefix.parse().unwrap()],
            ..Default::default()
        }
    }

    const CID: Ipv4Addr = Ipv4Addr::new(244, 0, 0, 1);

    /// Peers 2 and 3 are clients, 4 is not (another reflector).
    fn run(rib: &Rib, to: u8, sent: &mut HashSet<IpNet>, prefixes: &[IpNet]) -> Vec<Update> {
        let is_client = |a: IpAddr| a == ip(2) || a == ip(3);
        let target = Target {
            address: ip(to),
            client: is_client(ip(to)),
            sent,
        };
        reflect(rib, CID, &BTreeSet::new(), is_client, target, prefixes)
    }

    #[test]
    fn client_routes_go_everywhere_but_home_with_originator_and_cluster() {
        let mut rib = Rib::new(64512, Ipv4Addr::new(198, 18, 0, 1));
        rib.update(peer(2), &announce("198.19.2.0/26", 2));
        let p: Vec<IpNet> = vec!["198.19.2.0/26".parse().unwrap()];
        let mut sent = HashSet::new();
        // Not back to its sender.
        assert!(run(&rib, 2, &mut sent, &p).is_empty());
        // To the other client and to the non-client.
        for to in [3, 4] {
            let mut sent = HashSet::new();
            let u = run(&rib, to, &mut sent, &p);
            assert_eq!(u.len(), 1);
            assert_eq!(u[0].nlri, p);
            assert_eq!(u[0].attrs.next_hop, Some(Ipv4Addr::new(198, 18, 0, 2)));
            assert_eq!(u[0].attrs.originator_id, Some(Ipv4Addr::new(198, 18, 0, 2)));
            assert_eq!(u[0].attrs.cluster_list, vec![CID]);
            assert!(sent.contains(&p[0]));
        }
    }

    #[test]
    fn non_client_routes_go_to_clients_only() {
        let mut rib = Rib::new(64512, Ipv4Addr::new(198, 18, 0, 1));
        let mut u = announce("198.19.4.0/26", 4);
        u.attrs.originator_id = Some(Ipv4Addr::new(198, 18, 0, 40));
        u.attrs.cluster_list = vec![Ipv4Addr::new(244, 0, 0, 2)];
        rib.update(peer(4), &u);
        let p: Vec<IpNet> = vec!["198.19.4.0/26".parse().unwrap()];
        let mut sent = HashSet::new();
        let out = run(&rib, 2, &mut sent, &p);
        assert_eq!(out.len(), 1);
        // The first originator stays; our cluster goes in front.
        assert_eq!(
            out[0].attrs.originator_id,
            Some(Ipv4Addr::new(198, 18, 0, 40))
        );
        assert_eq!(
            out[0].attrs.cluster_list,
            vec![CID, Ipv4Addr::new(244, 0, 0, 2)]
        );
        // Another non-client (a peer reflector) does not get it.
        let mut rib2 = Rib::new(64512, Ipv4Addr::new(198, 18, 0, 1));
        rib2.update(peer(4), &announce("198.19.4.0/26", 4));
        let mut sent5 = HashSet::new();
        let target = Target {
            address: ip(5),
            client: false,
            sent: &mut sent5,
        };
        let none = reflect(&rib2, CID, &BTreeSet::new(), |_| false, target, &p);
        assert!(none.is_empty());
    }

    #[test]
    fn a_withdrawal_goes_only_where_the_route_was_sent() {
        let mut rib = Rib::new(64512, Ipv4Addr::new(198, 18, 0, 1));
        let p: Vec<IpNet> = vec!["198.19.2.0/26".parse().unwrap()];
        rib.update(peer(2), &announce("198.19.2.0/26", 2));
        let mut sent = HashSet::new();
        assert_eq!(run(&rib, 3, &mut sent, &p).len(), 1);
        rib.update(
            peer(2),
            &Update {
                withdrawn: p.clone(),
                ..Default::default()
            },
        );
        let out = run(&rib, 3, &mut sent, &p);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].withdrawn, p);
        assert!(sent.is_empty());
        // Nothing was sent to 4: nothing to withdraw there.
        assert!(run(&rib, 4, &mut HashSet::new(), &p).is_empty());
    }

    #[test]
    fn originated_prefixes_are_not_reflected() {
        let mut rib = Rib::new(64512, Ipv4Addr::new(198, 18, 0, 1));
        rib.update(peer(2), &announce("198.19.2.0/26", 2));
        let p: Vec<IpNet> = vec!["198.19.2.0/26".parse().unwrap()];
        let origin: BTreeSet<IpNet> = p.iter().copied().collect();
        let mut sent = HashSet::new();
        let target = Target {
            address: ip(3),
            client: true,
            sent: &mut sent,
        };
        assert!(reflect(&rib, CID, &origin, |_| true, target, &p).is_empty());
    }
}
