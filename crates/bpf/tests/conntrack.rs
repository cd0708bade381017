//! Service conntrack, hairpin, fragments, ICMP errors and the load
//! balancer's map, with BPF_PROG_TEST_RUN: crafted packets in, packets,
//! verdicts and map entries out. Needs root (skips loudly; under CI=true a
//! skip is a failure).

mod common;
use common::*;
use std::net::Ipv4Addr;
use strait_bpf::datapath::Prog;
use strait_bpf::maps::{self, CtMap};
use strait_bpf::reason::*;
use strait_model::services::Proto;

const POD_C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

/// TCP with flags from A:port to the VIP; returns the backend it went to
/// (C is not on this node: its packets go on to the FIB, then the stack).
fn to_vip(l: &mut Loaded, port: u16, flags: u8) -> Ipv4Addr {
    let (rc, out) = run(
        l,
        Prog::FromContainer,
        &tcp_flags(POD_A, port, VIP, 80, flags),
        IF_A,
    );
    assert_ne!(rc, TC_ACT_SHOT);
    assert!(tcp_ok(&out));
    ip_dst(&out)
}

#[test]
fn syn_retransmission_keeps_its_backend_and_states_advance() {
    if !root() {
        return;
    }
    let mut l = load("synrtx", true);
    add_service(&l, &[(POD_B, 8080), (POD_C, 8080)]);
    // 16 handshakes whose SYN is sent 4 times (the SYN-ACK lost): each
    // keeps the backend of its first SYN. Re-picking at random would
    // switch with probability 1 - 2^-48 over all of them.
    for port in 41000..41016 {
        let first = to_vip(&mut l, port, 0x02);
        for _ in 0..3 {
            assert_eq!(to_vip(&mut l, port, 0x02), first, "port {port}");
        }
        let fwd = ct_entries(&l, "strait_ct");
        let (_, v) = fwd
            .iter()
            .find(|(k, _)| u16::from_be(k.sport) == port)
            .expect("tracked");
        assert_eq!(v.state, maps::CT_SYN_SENT);
        // The client's ACK ends the handshake; FIN starts the close.
        assert_eq!(to_vip(&mut l, port, 0x10), first);
        let st = |l: &Loaded| {
            ct_entries(l, "strait_ct")
                .into_iter()
                .find(|(k, _)| u16::from_be(k.sport) == port)
                .unwrap()
                .1
                .state
        };
        assert_eq!(st(&l), maps::CT_ESTABLISHED);
        // A SYN now would be a reused port: not a retransmission.
        assert_eq!(to_vip(&mut l, port, 0x11), first);
        assert_eq!(st(&l), maps::CT_CLOSING);
        // Both entries of the pair carry the state.
        let rev = ct_entries(&l, "strait_ct_rev");
        let (_, rv) = rev
            .iter()
            .find(|(k, _)| u16::from_be(k.dport) == port)
            .unwrap();
        assert_eq!(rv.state, maps::CT_CLOSING);
        assert_eq!(rv.flags & maps::CT_F_REVERSE, maps::CT_F_REVERSE);
    }
}

#[test]
fn an_evicted_twin_is_rebuilt_from_the_other_entry() {
    if !root() {
        return;
    }
    let mut l = load("twin", true);
    add_service(&l, &[(POD_B, 8080)]);
    to_vip(&mut l, 42000, 0x02);
    // The LRU evicts the reverse entry.
    let mut rev: CtMap = maps::open(&l.dir, "strait_ct_rev").unwrap();
    let (rk, _) = ct_entries(&l, "strait_ct_rev")[0];
    rev.remove(&rk).unwrap();
    // The handshake's ACK (a state change) rebuilds it, so the reply is
    // still translated back.
    to_vip(&mut l, 42000, 0x10);
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp_flags(POD_B, 8080, POD_A, 42000, 0x10),
        IF_B,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(ip_src(&out), VIP, "reply translated by the rebuilt entry");
    assert!(tcp_ok(&out));
}

#[test]
fn gc_deletes_expired_pairs_repairs_halves_and_counts_states() {
    if !root() {
        return;
    }
    let mut l = load("gc", true);
    add_service(&l, &[(POD_B, 8080)]);
    for port in [43000, 43001, 43002] {
        to_vip(&mut l, port, 0x02);
    }
    to_vip(&mut l, 43001, 0x10); // established
    let mut fwd: CtMap = maps::open(&l.dir, "strait_ct").unwrap();
    let mut rev: CtMap = maps::open(&l.dir, "strait_ct_rev").unwrap();
    // 43000: both halves idle for over a minute in SYN_SENT: expired.
    for (k, mut v) in ct_entries(&l, "strait_ct") {
        if u16::from_be(k.sport) == 43000 {
            v.last_seen = 1;
            fwd.insert(k, v, 0).unwrap();
        }
    }
    for (k, mut v) in ct_entries(&l, "strait_ct_rev") {
        if u16::from_be(k.dport) == 43000 {
            v.last_seen = 1;
            rev.insert(k, v, 0).unwrap();
        }
        // 43002 lost its reverse half.
        if u16::from_be(k.dport) == 43002 {
            rev.remove(&k).unwrap();
        }
    }
    let now = strait_bpf::ct::ktime_ns();
    let st = strait_bpf::ct::gc(&l.dir, now).unwrap();
    assert_eq!(st.expired, 1, "{st:?}");
    assert_eq!(st.repaired, 1, "{st:?}");
    assert_eq!((st.forward, st.reverse), (2, 2), "{st:?}");
    assert_eq!(st.by_state.get("established"), Some(&1));
    assert_eq!(st.by_state.get("syn-sent"), Some(&1));
    assert_eq!(st.capacity, 262144);
    assert!(st.pressure() > 0.0 && st.pressure() < 0.001);
}

#[test]
fn flushing_a_removed_backend_moves_a_steady_udp_flow() {
    if !root() {
        return;
    }
    let mut l = load("flush", true);
    add_service_proto(&l, Proto::Udp, &[(POD_B, 53), (POD_C, 53)]);
    let send = |l: &mut Loaded| {
        let seg = udp_seg(POD_A, 5353, VIP, 80, b"q", true);
        let (rc, out) = run(
            l,
            Prog::FromContainer,
            &ipv4(POD_A, VIP, 17, 1, 0x4000, &seg),
            IF_A,
        );
        assert_ne!(rc, TC_ACT_SHOT);
        ip_dst(&out)
    };
    let first = send(&mut l);
    assert_eq!(send(&mut l), first, "a flow sticks to its backend");
    let other = if first == POD_B { POD_C } else { POD_B };
    // The backend leaves the service: the agent rewrites the slots and
    // flushes its connections.
    let mut lb: maps::LbMap = maps::open(&l.dir, "strait_lb").unwrap();
    let keys: Vec<maps::LbKey> = lb.keys().map(Result::unwrap).collect();
    for k in keys {
        lb.remove(&k).unwrap();
    }
    drop(lb);
    add_service_proto(&l, Proto::Udp, &[(other, 53)]);
    let n = strait_bpf::ct::flush_backends(
        &l.dir,
        17,
        strait_bpf::ct::Addr {
            ip: maps::ip_key(VIP),
            port: 80u16.to_be(),
        },
        &[strait_bpf::ct::Addr {
            ip: maps::ip_key(first),
            port: 53u16.to_be(),
        }],
    )
    .unwrap();
    assert_eq!(n, 1);
    assert!(
        ct_entries(&l, "strait_ct_rev").is_empty(),
        "both halves gone"
    );
    assert_eq!(
        send(&mut l),
        other,
        "the flow's next packet goes to a live backend"
    );
}

#[test]
fn hairpin_connection_is_source_natted_and_its_reply_restored() {
    if !root() {
        return;
    }
    let mut l = load("hairpin", true);
    add_service(&l, &[(POD_A, 8080)]);
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 44000, VIP, 80),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(ip_dst(&out), POD_A, "to the pod itself");
    assert_eq!(ip_src(&out), maps::HAIRPIN_IP4, "from the hairpin address");
    assert_eq!((sport(&out), dport(&out)), (44000, 8080));
    assert!(tcp_ok(&out));
    assert_eq!(count(&l, SVC_HAIRPIN), 1);
    // The pod answers the hairpin address, through its own veth.
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp_flags(POD_A, 8080, maps::HAIRPIN_IP4, 44000, 0x12),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!((ip_src(&out), sport(&out)), (VIP, 80), "from the service");
    assert_eq!((ip_dst(&out), dport(&out)), (POD_A, 44000), "to the client");
    assert!(tcp_ok(&out));
}

#[test]
fn every_fragment_of_a_service_datagram_is_translated() {
    if !root() {
        return;
    }
    let mut l = load("frag", true);
    add_service_proto(&l, Proto::Udp, &[(POD_B, 53)]);
    // A 24-byte UDP datagram in two fragments: 16 bytes (with the UDP
    // header), then 8 at offset 16 (2 units of 8).
    let whole = udp_seg(POD_A, 5000, VIP, 80, &[7u8; 16], true);
    let first = ipv4(POD_A, VIP, 17, 0x1234, 0x2000, &whole[..16]);
    let later = ipv4(POD_A, VIP, 17, 0x1234, 2, &whole[16..]);
    let (rc, out1) = run(&mut l, Prog::FromContainer, &first, IF_A);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!((ip_dst(&out1), dport(&out1)), (POD_B, 53));
    let (rc, out2) = run(&mut l, Prog::FromContainer, &later, IF_A);
    assert_eq!(rc, TC_ACT_REDIRECT, "the later fragment follows the first");
    assert_eq!(ip_dst(&out2), POD_B, "the later fragment is translated too");
    assert_eq!(checksum(&out2[14..34]), 0);
    assert_eq!(&out2[34..], &whole[16..], "its payload is untouched");
    // Reassembled, the datagram's checksum is right for the new address.
    let mut seg = out1[34..].to_vec();
    seg.extend(&out2[34..]);
    assert_eq!(l4_checksum(POD_A, POD_B, 17, &seg), 0);
}

#[test]
fn udp_without_a_checksum_keeps_none() {
    if !root() {
        return;
    }
    let mut l = load("udp0", true);
    add_service_proto(&l, Proto::Udp, &[(POD_B, 53)]);
    let seg = udp_seg(POD_A, 5001, VIP, 80, b"q", false);
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &ipv4(POD_A, VIP, 17, 9, 0, &seg),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(
        &out[40..42],
        &[0, 0],
        "a zero UDP checksum means none and stays 0"
    );
    assert_eq!(checksum(&out[14..34]), 0);
}

/// An ICMP error from `from` to the client quoting client -> backend.
fn icmp_error(
    from: Ipv4Addr,
    client: Ipv4Addr,
    backend: Ipv4Addr,
    cport: u16,
    bport: u16,
    mtu: u16,
) -> Vec<u8> {
    let quoted_l4 = udp_seg(client, cport, backend, bport, b"0123", true);
    let quoted = ipv4(client, backend, 17, 77, 0x4000, &quoted_l4)[14..].to_vec();
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend(mtu.to_be_bytes());
    icmp.extend(&quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(from, client, 1, 5, 0, &icmp)
}

#[test]
fn icmp_errors_about_a_translated_connection_are_translated_back() {
    if !root() {
        return;
    }
    let mut l = load("icmp", true);
    add_service_proto(&l, Proto::Udp, &[(POD_B, 53)]);
    let seg = udp_seg(POD_A, 5002, VIP, 80, b"big", true);
    run(
        &mut l,
        Prog::FromContainer,
        &ipv4(POD_A, VIP, 17, 3, 0, &seg),
        IF_A,
    );
    // "Fragmentation needed" from a router on the way (from the uplink):
    // the quoted packet must name the VIP, or the client's socket never
    // learns the path MTU.
    let router = Ipv4Addr::new(198, 18, 0, 1);
    let (rc, out) = run(
        &mut l,
        Prog::FromNetdev,
        &icmp_error(router, POD_A, POD_B, 5002, 53, 1400),
        1,
    );
    assert_eq!(rc, TC_ACT_REDIRECT, "delivered to the client");
    assert_eq!(ip_src(&out), router, "a router's error keeps its source");
    let icmp = &out[34..];
    assert_eq!(checksum(icmp), 0, "ICMP checksum valid");
    let quoted = &icmp[8..];
    assert_eq!(
        &quoted[16..20],
        &VIP.octets(),
        "quoted destination is the VIP"
    );
    assert_eq!(
        u16::from_be_bytes([quoted[22], quoted[23]]),
        80,
        "and its port"
    );
    assert_eq!(checksum(&quoted[..20]), 0, "quoted IPv4 checksum valid");
    assert_eq!(count(&l, ICMP_REVNAT), 1);
    // Port unreachable from the backend itself: it comes from the VIP.
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &icmp_error(POD_B, POD_A, POD_B, 5002, 53, 0),
        IF_B,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(ip_src(&out), VIP);
    assert_eq!(checksum(&out[14..34]), 0);
    assert_eq!(checksum(&out[34..]), 0);
}

#[test]
fn a_missing_backend_slot_is_reported_not_taken_for_no_backend() {
    if !root() {
        return;
    }
    let mut l = load("slot", true);
    add_service(&l, &[(POD_B, 8080), (POD_C, 8080)]);
    let mut lb: maps::LbMap = maps::open(&l.dir, "strait_lb").unwrap();
    let k = lb.keys().map(Result::unwrap).find(|k| k.slot == 2).unwrap();
    lb.remove(&k).unwrap();
    let mut saw = 0;
    for port in 45000..45040 {
        let (rc, _) = run(
            &mut l,
            Prog::FromContainer,
            &tcp(POD_A, port, VIP, 80),
            IF_A,
        );
        if rc == TC_ACT_SHOT {
            saw += 1;
        }
    }
    assert!(saw > 0, "a pick of the missing slot is dropped");
    assert_eq!(count(&l, DROP_LB_INCONSISTENT), saw);
    assert_eq!(
        count(&l, SVC_NO_BACKEND),
        0,
        "not confused with an empty service"
    );
}

#[test]
fn unprogrammed_veths_and_other_families_fail_closed() {
    if !root() {
        return;
    }
    let mut l = load("closed", true);
    // A host veth the agent has not programmed forwards nothing.
    assert_eq!(
        run(&mut l, Prog::FromContainer, &udp(POD_A, POD_B, 64), 4242).0,
        TC_ACT_SHOT
    );
    assert_eq!(count(&l, DROP_UNKNOWN_ENDPOINT), 1);
    // ARP claiming another pod's address.
    assert_eq!(
        run(&mut l, Prog::FromContainer, &arp(POD_B), IF_A).0,
        TC_ACT_SHOT
    );
    assert_eq!(count(&l, DROP_ARP_SPOOF), 1);
    // IPv6 from a global address the pod does not have.
    let mut global = [0u8; 16];
    global[..2].copy_from_slice(&[0xfd, 0x00]);
    global[15] = 1;
    let mut peer = global;
    peer[15] = 2;
    assert_eq!(
        run(&mut l, Prog::FromContainer, &ipv6(global, peer), IF_A).0,
        TC_ACT_SHOT
    );
    assert_eq!(count(&l, DROP_SOURCE_SPOOF), 1);
    // Link-local housekeeping (router solicitation) is the stack's.
    let mut ll = [0u8; 16];
    ll[..2].copy_from_slice(&[0xfe, 0x80]);
    ll[15] = 9;
    let mut all_routers = [0u8; 16];
    all_routers[..2].copy_from_slice(&[0xff, 0x02]);
    all_routers[15] = 2;
    assert_eq!(
        run(&mut l, Prog::FromContainer, &ipv6(ll, all_routers), IF_A).0,
        TC_ACT_OK
    );
    // Neither IPv4, IPv6 nor ARP.
    let mut other = udp(POD_A, POD_B, 64);
    other[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_eq!(
        run(&mut l, Prog::FromContainer, &other, IF_A).0,
        TC_ACT_SHOT
    );
    assert_eq!(count(&l, DROP_ETHERTYPE), 1);
}

#[test]
fn a_pinned_map_of_another_layout_is_replaced_not_misread() {
    if !root() {
        return;
    }
    let l = load("layout", true);
    let dir = l.dir.clone();
    // Pin a map with the right name and the wrong value size where this
    // build's strait_ct lives, as an older build's would be.
    let bogus = tempfile_map(&dir);
    let dp = strait_bpf::Datapath::load(
        &dir,
        strait_bpf::Features {
            redirect_peer: true,
            reason: "test".into(),
        },
    )
    .unwrap();
    assert!(
        dp.upgrade_notes
            .iter()
            .any(|n| n.starts_with("strait_ct:") && n.contains("replaced")),
        "{:?}",
        dp.upgrade_notes
    );
    let have = strait_bpf::upgrade::pinned(&bogus).unwrap();
    assert_eq!(have.value_size, 24, "the declared layout is pinned now");
    drop(dp);
    drop(l);
}

/// Replace strait_ct's pin with a hash map of value size 8.
fn tempfile_map(dir: &std::path::Path) -> std::path::PathBuf {
    let path = strait_bpf::upgrade::maps_dir(dir).join("strait_ct");
    std::fs::remove_file(&path).unwrap();
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = Create {
        map_type: 1, // BPF_MAP_TYPE_HASH
        key_size: 16,
        value_size: 8,
        max_entries: 16,
        map_flags: 0,
    };
    // SAFETY: a valid BPF_MAP_CREATE attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const Create,
            std::mem::size_of::<Create>() as u32,
        )
    };
    assert!(fd >= 0, "map create: {}", std::io::Error::last_os_error());
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = Pin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_PIN with a valid path and fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            &pin as *const Pin,
            std::mem::size_of::<Pin>() as u32,
        )
    };
    assert_eq!(r, 0, "pin: {}", std::io::Error::last_os_error());
    // SAFETY: fd is ours.
    unsafe { libc::close(fd as i32) };
    path
}
