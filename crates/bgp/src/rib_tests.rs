use super::*;
use crate::wire::AsSegment;

fn peer(n: u8, ebgp: bool) -> PeerInfo {
    PeerInfo {
        address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, n)),
        router_id: Ipv4Addr::new(198, 18, 0, n),
        ebgp,
    }
}

fn announce(prefixes: &[&str], nh: u8, path: &[u32]) -> Update {
    Update {
        withdrawn: vec![],
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: if path.is_empty() {
                vec![]
            } else {
                vec![AsSegment::Sequence(path.to_vec())]
            },
            next_hop: Some(Ipv4Addr::new(198, 18, 0, nh)),
            ..Default::default()
        },
        nlri: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

fn withdraw(prefixes: &[&str]) -> Update {
    Update {
        withdrawn: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        ..Default::default()
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn rib() -> Rib {
    Rib::new(64512, Ipv4Addr::new(198, 18, 0, 1))
}

#[test]
fn a_route_is_installed_and_withdrawn() {
    let mut r = rib();
    let c = r.update(peer(2, false), &announce(&["198.19.2.0/26"], 2, &[]));
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("198.19.2.0/26"),
            next_hops: vec![ip(2)]
        }]
    );
    assert!(
        r.update(peer(2, false), &announce(&["198.19.2.0/26"], 2, &[]))
            .is_empty(),
        "no change, nothing to do"
    );
    let c = r.update(peer(2, false), &withdraw(&["198.19.2.0/26"]));
    assert_eq!(
        c,
        [FibChange::Remove {
            prefix: net("198.19.2.0/26")
        }]
    );
    assert!(r.installed().is_empty());
}

#[test]
fn equal_paths_from_two_peers_are_ecmp_and_a_better_one_wins() {
    let mut r = rib();
    r.update(peer(2, true), &announce(&["198.19.9.0/24"], 2, &[65001]));
    let c = r.update(peer(3, true), &announce(&["198.19.9.0/24"], 3, &[65002]));
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("198.19.9.0/24"),
            next_hops: vec![ip(2), ip(3)]
        }]
    );
    // A longer AS path loses.
    let c = r.update(
        peer(3, true),
        &announce(&["198.19.9.0/24"], 3, &[65002, 65009]),
    );
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("198.19.9.0/24"),
            next_hops: vec![ip(2)]
        }]
    );
    // Higher local preference beats a shorter path.
    let mut u = announce(&["198.19.9.0/24"], 4, &[65003, 65004, 65005]);
    u.attrs.local_pref = Some(200);
    let c = r.update(peer(4, true), &u);
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("198.19.9.0/24"),
            next_hops: vec![ip(4)]
        }]
    );
    // eBGP beats iBGP when all else is equal.
    let mut r = rib();
    r.update(peer(5, false), &announce(&["198.19.8.0/24"], 5, &[65001]));
    let c = r.update(peer(6, true), &announce(&["198.19.8.0/24"], 6, &[65001]));
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("198.19.8.0/24"),
            next_hops: vec![ip(6)]
        }]
    );
}

#[test]
fn losing_a_peer_falls_back_to_the_other_path() {
    let mut r = rib();
    r.update(peer(2, false), &announce(&["198.19.2.0/26"], 2, &[]));
    r.update(peer(3, false), &announce(&["198.19.2.0/26"], 3, &[]));
    let c = r.peer_down(ip(2), false);
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("198.19.2.0/26"),
            next_hops: vec![ip(3)]
        }]
    );
    assert_eq!(
        r.peer_down(ip(3), false),
        [FibChange::Remove {
            prefix: net("198.19.2.0/26")
        }]
    );
}

#[test]
fn loops_are_refused() {
    let mut r = rib();
    assert!(r
        .update(
            peer(2, true),
            &announce(&["198.19.2.0/26"], 2, &[65001, 64512])
        )
        .is_empty());
    let mut u = announce(&["198.19.3.0/26"], 2, &[]);
    u.attrs.originator_id = Some(Ipv4Addr::new(198, 18, 0, 1));
    assert!(r.update(peer(2, false), &u).is_empty());
    assert_eq!(r.loops, 2);
}

#[test]
fn graceful_restart_keeps_routes_until_end_of_rib() {
    let mut r = rib();
    r.update(
        peer(2, false),
        &announce(&["198.19.2.0/26", "198.19.2.64/26"], 2, &[]),
    );
    assert!(r.peer_down(ip(2), true).is_empty(), "forwarding untouched");
    assert_eq!(r.stale(ip(2)), 2);
    assert_eq!(r.installed().len(), 2);
    // The peer is back and re-sends one of the two, then End-of-RIB.
    assert!(r
        .update(peer(2, false), &announce(&["198.19.2.0/26"], 2, &[]))
        .is_empty());
    assert_eq!(r.stale(ip(2)), 1);
    let c = r.sweep_stale(ip(2), Some(Family::IPV4_UNICAST));
    assert_eq!(
        c,
        [FibChange::Remove {
            prefix: net("198.19.2.64/26")
        }]
    );
    assert_eq!(r.stale(ip(2)), 0);
    assert_eq!(r.received(ip(2)), 1);
    assert_eq!(r.installed().len(), 1);
    // Gone for good: nothing counted.
    r.peer_down(ip(2), false);
    assert_eq!((r.received(ip(2)), r.stale(ip(2))), (0, 0));
}

#[test]
fn ipv6_routes_come_in_mp_reach() {
    let mut r = rib();
    let u = Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            mp_reach: Some(crate::wire::MpReach {
                family: Family::IPV6_UNICAST,
                next_hops: vec!["fd00::2".parse().unwrap()],
                nlri: vec![net("fd00:198:19:2::/64")],
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let c = r.update(peer(2, false), &u);
    assert_eq!(
        c,
        [FibChange::Set {
            prefix: net("fd00:198:19:2::/64"),
            next_hops: vec!["fd00::2".parse().unwrap()]
        }]
    );
    // A v4 End-of-RIB does not sweep v6 paths.
    r.peer_down(ip(2), true);
    assert!(r.sweep_stale(ip(2), Some(Family::IPV4_UNICAST)).is_empty());
    assert_eq!(r.sweep_stale(ip(2), None).len(), 1);
}

#[test]
fn a_reflector_refuses_paths_that_went_round_its_cluster() {
    let mut r = rib();
    let cid = Ipv4Addr::new(244, 0, 0, 1);
    let mut u = announce(&["198.19.3.0/26"], 2, &[]);
    u.attrs.cluster_list = vec![Ipv4Addr::new(244, 0, 0, 9), cid];
    // Not a reflector: the cluster list is someone else's business.
    assert_eq!(r.update(peer(2, false), &u).len(), 1);
    r.set_cluster_id(Some(cid));
    // As a reflector of that cluster, the re-announcement is a loop and
    // replaces (withdraws) what the peer had sent.
    assert_eq!(
        r.update(peer(2, false), &u),
        [FibChange::Remove {
            prefix: net("198.19.3.0/26")
        }]
    );
    assert_eq!(r.loops, 1);
}

#[test]
fn the_best_single_path_breaks_ties_by_originator_then_cluster_list() {
    let mut r = rib();
    let p = "198.19.4.0/26";
    // Equal cost from peers 3 and 2: both installed (ECMP) ...
    r.update(peer(3, false), &announce(&[p], 3, &[]));
    r.update(peer(2, false), &announce(&[p], 2, &[]));
    assert_eq!(r.installed()[&net(p)], vec![ip(2), ip(3)]);
    // ... and the lower router id is the one best path.
    assert_eq!(r.best(&net(p)).unwrap().peer.address, ip(2));
    // A reflected path counts its originator, not the reflector's id.
    let mut u = announce(&[p], 9, &[]);
    u.attrs.originator_id = Some(Ipv4Addr::new(198, 18, 0, 250));
    r.update(peer(2, false), &u);
    assert_eq!(r.best(&net(p)).unwrap().peer.address, ip(3));
    // Same originator: the shorter cluster list wins.
    let mut a = announce(&[p], 7, &[]);
    a.attrs.originator_id = Some(Ipv4Addr::new(198, 18, 0, 7));
    a.attrs.cluster_list = vec![Ipv4Addr::new(244, 0, 0, 1), Ipv4Addr::new(244, 0, 0, 2)];
    let mut b = a.clone();
    b.attrs.cluster_list.truncate(1);
    b.attrs.next_hop = Some(Ipv4Addr::new(198, 18, 0, 8));
    r.update(peer(2, false), &a);
    r.update(peer(3, false), &b);
    assert_eq!(r.best(&net(p)).unwrap().next_hop, ip(8));
    assert!(r.best(&net("198.19.99.0/24")).is_none());
}

#[test]
fn a_reflector_hears_of_attribute_changes_that_keep_the_next_hop() {
    let mut r = rib();
    let p = "198.19.5.0/26";
    // Not a reflector: nothing is collected.
    r.update(peer(2, false), &announce(&[p], 2, &[]));
    assert!(r.take_touched().is_empty());
    r.set_cluster_id(Some(Ipv4Addr::new(244, 0, 0, 1)));
    // Same next hop, new MED: no FIB change, but a touched prefix.
    let mut u = announce(&[p], 2, &[]);
    u.attrs.med = Some(50);
    assert!(r.update(peer(2, false), &u).is_empty());
    assert_eq!(r.take_touched(), BTreeSet::from([net(p)]));
    assert!(r.take_touched().is_empty(), "taken once");
    assert_eq!(r.best(&net(p)).unwrap().attrs.med, Some(50));
}
