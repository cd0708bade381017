use super::*;

fn req(id: &str) -> AllocationRequest {
    AllocationRequest {
        attachment: Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        },
        pod: PodRef {
            namespace: "default".into(),
            name: id.into(),
            uid: String::new(),
        },
        netns: format!("/run/netns/{id}"),
        host_veth: crate::naming::host_veth_name(id, "eth0"),
        netns_ino: None,
        requested: None,
        host_ports: vec![],
        pool: None,
    }
}

fn att(id: &str) -> Attachment {
    req(id).attachment
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn allocates_distinct_addresses_skipping_network_and_broadcast() {
    let mut s = IpamState::new("10.0.0.0/30".parse().unwrap());
    assert_eq!(s.capacity(), 2);
    let a = s.allocate(req("a"), 0, 0).unwrap();
    let b = s.allocate(req("b"), 0, 0).unwrap();
    assert_eq!(a.ip, ip("10.0.0.1"));
    assert_eq!(b.ip, ip("10.0.0.2"));
    let err = s.allocate(req("c"), 0, 0).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { in_use: 2, .. }));
    assert!(err.to_string().contains("10.0.0.0/30"));
}

#[test]
fn requested_address_is_honoured_or_refused_clearly() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    let want = |id: &str, a: &str| AllocationRequest {
        requested: Some(ip(a)),
        ..req(id)
    };
    assert_eq!(
        s.allocate(want("a", "10.0.0.77"), 0, 0).unwrap().ip,
        ip("10.0.0.77")
    );
    // Idempotent retry with the same request; a different one is refused.
    assert_eq!(
        s.allocate(want("a", "10.0.0.77"), 0, 0).unwrap().ip,
        ip("10.0.0.77")
    );
    assert!(matches!(
        s.allocate(want("a", "10.0.0.78"), 0, 0),
        Err(IpamError::AlreadyHolds { .. })
    ));
    let before = s.clone();
    let e = s.allocate(want("b", "10.0.0.77"), 0, 0).unwrap_err();
    assert!(e.to_string().contains("in use by pod default/a"), "{e}");
    for bad in ["10.0.1.5", "10.0.0.0", "10.0.0.255", "fd00::1"] {
        let e = s.allocate(want("b", bad), 0, 0).unwrap_err();
        assert!(matches!(e, IpamError::OutsidePool { .. }), "{bad}: {e}");
    }
    assert_eq!(s, before, "refused requests change nothing");
    // A released address may be requested back during its cool-down.
    s.release(&att("a"), 10);
    assert_eq!(
        s.allocate(want("a2", "10.0.0.77"), 20, 1000).unwrap().ip,
        ip("10.0.0.77")
    );
    assert!(s.cooling.is_empty());
}

#[test]
fn recovered_allocations_are_matched_by_host_veth() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    let veth = crate::naming::host_veth_name("lost", "eth0");
    let a = s.adopt(ip("10.0.0.9"), &veth, 0).unwrap();
    assert!(a.recovered);
    assert!(s.adopt(ip("10.0.0.9"), "other", 0).is_none(), "state wins");
    // Never handed to anyone else.
    for i in 0..20 {
        assert_ne!(s.allocate(req(&format!("n{i}")), 0, 0).unwrap().ip, a.ip);
    }
    // GC keeps it while the runtime lists it, DEL by container id finds it.
    assert!(s
        .retain_attachments(&[att("lost")], 0)
        .iter()
        .all(|r| r.ip != a.ip));
    assert_eq!(s.find(&att("lost")).unwrap().ip, a.ip);
    // An ADD retry claims it under its real identity.
    let claimed = s.allocate(req("lost"), 5, 0).unwrap();
    assert_eq!(claimed.ip, a.ip);
    assert!(!claimed.recovered);
    assert_eq!(claimed.attachment, att("lost"));
    assert_eq!(s.release(&att("lost"), 6).unwrap().ip, a.ip);
}

#[test]
fn allocate_is_idempotent_per_attachment() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    let a1 = s.allocate(req("a"), 0, 0).unwrap();
    let a2 = s.allocate(req("a"), 5, 0).unwrap();
    assert_eq!(a1, a2);
    assert_eq!(s.allocations.len(), 1);
}

#[test]
fn released_address_cools_down_before_reuse() {
    let mut s = IpamState::new("10.0.0.0/30".parse().unwrap());
    let a = s.allocate(req("a"), 0, 1000).unwrap();
    s.allocate(req("b"), 0, 1000).unwrap();
    assert_eq!(s.release(&att("a"), 100).unwrap().ip, a.ip);
    // Only a.ip is free, and it is cooling.
    let err = s.allocate(req("c"), 500, 1000).unwrap_err();
    assert_eq!(
        err,
        IpamError::Exhausted {
            cidr: "10.0.0.0/30".parse().unwrap(),
            in_use: 1,
            cooling: 1
        }
    );
    // After the cool-down it is handed out again.
    let c = s.allocate(req("c"), 1100, 1000).unwrap();
    assert_eq!(c.ip, a.ip);
    assert!(s.cooling.is_empty());
}

#[test]
fn round_robin_prefers_never_used_addresses() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    let a = s.allocate(req("a"), 0, 0).unwrap();
    s.release(&att("a"), 0);
    // Even with no cool-down the next pod gets the next address.
    let b = s.allocate(req("b"), 0, 0).unwrap();
    assert_ne!(a.ip, b.ip);
    assert_eq!(b.ip, ip("10.0.0.2"));
}

#[test]
fn release_unknown_is_none_and_changes_nothing() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    s.allocate(req("a"), 0, 0).unwrap();
    let before = s.clone();
    assert!(s.release(&att("zzz"), 0).is_none());
    assert_eq!(s, before);
}

#[test]
fn retain_attachments_releases_the_rest() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    for id in ["a", "b", "c"] {
        s.allocate(req(id), 0, 0).unwrap();
    }
    let released = s.retain_attachments(&[att("b")], 10);
    let mut names: Vec<_> = released
        .iter()
        .map(|a| a.attachment.container_id.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(s.allocations.len(), 1);
    assert_eq!(s.cooling.len(), 2);
}

#[test]
fn expire_cooling_forgets_old_records() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    s.allocate(req("a"), 0, 0).unwrap();
    s.release(&att("a"), 0);
    s.expire_cooling(10, 100);
    assert_eq!(s.cooling.len(), 1);
    s.expire_cooling(200, 100);
    assert!(s.cooling.is_empty());
}

#[test]
fn ipv6_and_tiny_cidrs() {
    let mut s = IpamState::new("fd00:5::/126".parse().unwrap());
    assert_eq!(s.capacity(), 3);
    assert_eq!(s.allocate(req("a"), 0, 0).unwrap().ip, ip("fd00:5::1"));
    let mut t = IpamState::new("10.9.9.9/32".parse().unwrap());
    assert_eq!(t.allocate(req("a"), 0, 0).unwrap().ip, ip("10.9.9.9"));
}

#[test]
fn wraps_around_after_the_last_address() {
    let mut s = IpamState::new("10.0.0.0/29".parse().unwrap());
    let mut ids = vec![];
    for i in 0..6 {
        ids.push(s.allocate(req(&format!("p{i}")), 0, 0).unwrap().ip);
    }
    assert_eq!(ids.last(), Some(&ip("10.0.0.6")));
    s.release(&att("p1"), 0);
    assert_eq!(s.allocate(req("x"), 0, 0).unwrap().ip, ip("10.0.0.2"));
}

#[test]
fn cidr_change_keeps_existing_allocations() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    s.allocate(req("a"), 0, 0).unwrap();
    s.set_cidr("10.0.1.0/24".parse().unwrap());
    assert_eq!(s.allocations.len(), 1);
    assert_eq!(s.allocate(req("b"), 0, 0).unwrap().ip, ip("10.0.1.1"));
}

#[test]
fn state_round_trips_through_json() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    s.allocate(req("a"), 7, 0).unwrap();
    s.release(&att("a"), 9);
    s.allocate(req("b"), 11, 0).unwrap();
    let j = serde_json::to_string(&s).unwrap();
    let back: IpamState = serde_json::from_str(&j).unwrap();
    assert_eq!(back, s);
}

fn in_pool(id: &str, pool: &str) -> AllocationRequest {
    AllocationRequest {
        pool: Some(pool.into()),
        ..req(id)
    }
}

#[test]
fn pool_addresses_come_from_the_nodes_blocks_of_that_pool_only() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    // No block yet: the caller must claim one.
    let e = s.allocate(in_pool("a", "blue"), 0, 0).unwrap_err();
    assert_eq!(
        e,
        IpamError::PoolNeedsBlock {
            pool: "blue".into()
        }
    );
    s.blocks
        .insert("10.9.0.0/31".parse().unwrap(), "blue".into());
    s.blocks
        .insert("10.8.0.0/31".parse().unwrap(), "green".into());
    // Every address of a block is handed out (/31: two).
    let a = s.allocate(in_pool("a", "blue"), 0, 0).unwrap();
    let b = s.allocate(in_pool("b", "blue"), 0, 0).unwrap();
    assert_eq!((a.ip, b.ip), (ip("10.9.0.0"), ip("10.9.0.1")));
    assert_eq!(a.pool.as_deref(), Some("blue"));
    assert_eq!(
        s.allocate(in_pool("c", "blue"), 0, 0).unwrap_err(),
        IpamError::PoolNeedsBlock {
            pool: "blue".into()
        }
    );
    // The pod CIDR is not used for a pool, nor a pool for the pod CIDR.
    let d = s.allocate(req("d"), 0, 0).unwrap();
    assert!(d.ip.to_string().starts_with("10.0.0."), "{d:?}");
    assert_eq!(d.pool, None);
    // A second block is used once claimed.
    s.blocks
        .insert("10.9.0.2/31".parse().unwrap(), "blue".into());
    assert_eq!(
        s.allocate(in_pool("c", "blue"), 0, 0).unwrap().ip,
        ip("10.9.0.2")
    );
    // A requested address must be in one of the pool's blocks.
    let want = AllocationRequest {
        requested: Some(ip("10.8.0.1")),
        ..in_pool("e", "blue")
    };
    assert!(matches!(
        s.allocate(want, 0, 0),
        Err(IpamError::OutsidePool { .. })
    ));
}

#[test]
fn a_block_is_idle_once_nothing_in_it_is_held_or_cooling() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    let blk: IpNet = "10.9.0.0/30".parse().unwrap();
    s.blocks.insert(blk, "blue".into());
    assert_eq!(s.idle_blocks(0, 1000), vec![blk]);
    let a = s.allocate(in_pool("a", "blue"), 0, 1000).unwrap();
    assert!(s.idle_blocks(0, 1000).is_empty());
    s.release(&att("a"), 10);
    assert!(s.idle_blocks(500, 1000).is_empty(), "cooling down");
    assert_eq!(s.idle_blocks(2000, 1000), vec![blk]);
    // Recovered from the kernel, the address still names its pool.
    let r = s.adopt(a.ip, "strt0", 3000).unwrap();
    assert_eq!(r.pool.as_deref(), Some("blue"));
}

#[test]
fn state_from_before_pools_loads() {
    let old = r#"{"cidr":"10.0.0.0/24","allocations":{},"cooling":{},"last":null}"#;
    let s: IpamState = serde_json::from_str(old).unwrap();
    assert!(s.blocks.is_empty());
}

#[test]
fn an_underlay_pools_network_gateway_and_broadcast_are_never_handed_out() {
    let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
    s.blocks
        .insert("198.18.20.0/30".parse().unwrap(), "vlan20".into());
    s.reserved.insert(
        "vlan20".into(),
        [ip("198.18.20.0"), ip("198.18.20.1"), ip("198.18.20.255")].into(),
    );
    let a = s.allocate(in_pool("a", "vlan20"), 0, 0).unwrap();
    let b = s.allocate(in_pool("b", "vlan20"), 0, 0).unwrap();
    assert_eq!((a.ip, b.ip), (ip("198.18.20.2"), ip("198.18.20.3")));
    assert!(matches!(
        s.allocate(in_pool("c", "vlan20"), 0, 0),
        Err(IpamError::PoolNeedsBlock { .. })
    ));
    let gw = AllocationRequest {
        requested: Some(ip("198.18.20.1")),
        ..in_pool("d", "vlan20")
    };
    assert!(matches!(
        s.allocate(gw, 0, 0),
        Err(IpamError::OutsidePool { .. })
    ));
}

#[test]
fn cloud_addresses_are_a_pool_of_single_addresses_per_eni() {
    let mut s = IpamState::new("10.9.0.0/24".parse().unwrap());
    s.external = [("198.18.32.3", "eni-1"), ("198.18.32.4", "eni-1")]
        .into_iter()
        .chain([("198.18.32.9", "eni-2")])
        .map(|(a, e)| (ip(a), e.to_string()))
        .collect();
    let a = s.allocate(in_pool("a", "eni-1"), 0, 0).unwrap();
    let b = s.allocate(in_pool("b", "eni-1"), 0, 0).unwrap();
    assert_eq!((a.ip, b.ip), (ip("198.18.32.3"), ip("198.18.32.4")));
    assert_eq!(s.pool_of(a.ip).as_deref(), Some("eni-1"));
    // eni-1 is full: the caller picks another ENI or asks the cloud.
    assert!(matches!(
        s.allocate(in_pool("c", "eni-1"), 0, 0),
        Err(IpamError::PoolNeedsBlock { .. })
    ));
    // A requested address must be one of that ENI's.
    let mut r = in_pool("d", "eni-2");
    r.requested = Some(ip("198.18.32.3"));
    assert!(s.allocate(r.clone(), 0, 0).is_err());
    r.requested = Some(ip("198.18.32.9"));
    assert_eq!(s.allocate(r, 0, 0).unwrap().ip, ip("198.18.32.9"));
    // Not stored: the cloud says again after a restart.
    let back: IpamState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert!(back.external.is_empty());
    assert_eq!(back.allocations.len(), 3);
}
