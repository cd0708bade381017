//! The datapath's decisions, tested with BPF_PROG_TEST_RUN: crafted packets
//! in, verdicts and map side effects out. Needs root (and a bpffs, which the
//! test mounts at /sys/fs/bpf when missing); skips loudly otherwise, and
//! under CI=true a skip is a failure.

mod common;
use common::*;
use std::net::Ipv4Addr;
use strait_bpf::datapath::Prog;
use strait_bpf::maps::{self, EndpointMap, EventRing};
use strait_bpf::reason::*;
use strait_bpf::{Datapath, Features};

#[test]
fn same_node_pod_to_pod_is_redirect_peer_with_rewritten_headers() {
    if !root() {
        return;
    }
    let mut l = load("peer", true);
    let (rc, out) = run(&mut l, Prog::FromContainer, &udp(POD_A, POD_B, 64), IF_A);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &B_POD_MAC, "destination MAC is the pod's");
    assert_eq!(&out[6..12], &B_HOST_MAC, "source MAC is its host end");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(
        checksum(&out[14..34]),
        0,
        "IPv4 header checksum still valid"
    );
    assert_eq!(count(&l, PEER_LOCAL), 1);
    assert_eq!(count(&l, HOSTVETH_LOCAL), 0);
}

#[test]
fn legacy_kernel_path_goes_through_the_host_veth() {
    if !root() {
        return;
    }
    let mut l = load("legacy", false);
    let (rc, _) = run(&mut l, Prog::FromContainer, &udp(POD_A, POD_B, 64), IF_A);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(count(&l, HOSTVETH_LOCAL), 1);
    assert_eq!(count(&l, PEER_LOCAL), 0);
    let (rc, _) = run(
        &mut l,
        Prog::FromNetdev,
        &udp(Ipv4Addr::new(10, 9, 0, 1), POD_B, 64),
        1,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(count(&l, HOSTVETH_FROM_NETDEV), 1);
}

#[test]
fn spoofed_source_is_dropped_counted_and_reported() {
    if !root() {
        return;
    }
    let mut l = load("spoof", true);
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &udp(Ipv4Addr::new(10, 0, 0, 99), POD_B, 64),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_SOURCE_SPOOF), 1);
    let mut ring: EventRing = maps::open(&l.dir, "strait_events").unwrap();
    let ev = maps::Event::parse(&ring.next().expect("a drop event")).unwrap();
    assert_eq!((ev.kind, ev.reason), (maps::EVENT_DROP, DROP_SOURCE_SPOOF));
    assert_eq!(
        (ev.src(), ev.dst(), ev.sport, ev.dport, ev.proto),
        (Ipv4Addr::new(10, 0, 0, 99), POD_B, 12345, 8080, 17)
    );
    assert_eq!(ev.ifindex, IF_A);
}

#[test]
fn what_is_not_ours_goes_to_the_stack() {
    if !root() {
        return;
    }
    let mut l = load("stack", true);
    // ARP claiming the pod's own address: the stack answers it.
    assert_eq!(
        run(&mut l, Prog::FromContainer, &arp(POD_A), IF_A).0,
        TC_ACT_OK
    );
    assert_eq!(count(&l, LOCAL_LINK), 1);
    // TTL about to expire: the stack answers with ICMP.
    assert_eq!(
        run(&mut l, Prog::FromContainer, &udp(POD_A, POD_B, 1), IF_A).0,
        TC_ACT_OK
    );
    assert_eq!(count(&l, TTL_TO_STACK), 1);
    // From the uplink, for an address that is not a local pod.
    assert_eq!(
        run(
            &mut l,
            Prog::FromNetdev,
            &udp(Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 0, 0, 77), 64),
            1
        )
        .0,
        TC_ACT_OK
    );
    assert_eq!(count(&l, TO_STACK), 1);
    // No route in this (test) namespace for a remote pod: FIB says so.
    assert_eq!(
        run(
            &mut l,
            Prog::FromContainer,
            &udp(POD_A, Ipv4Addr::new(10, 200, 0, 1), 64),
            IF_A
        )
        .0,
        TC_ACT_OK
    );
    assert_eq!(count(&l, FIB_TO_STACK), 1);
}

#[test]
fn malformed_ipv4_is_dropped() {
    if !root() {
        return;
    }
    let mut l = load("malformed", true);
    let mut bad = udp(POD_A, POD_B, 64);
    bad[14] = 0x43; // IHL 3
    assert_eq!(run(&mut l, Prog::FromContainer, &bad, IF_A).0, TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_MALFORMED), 1);
}

#[test]
fn uplink_traffic_for_a_local_pod_is_redirect_peer() {
    if !root() {
        return;
    }
    let mut l = load("netdev", true);
    let (rc, out) = run(
        &mut l,
        Prog::FromNetdev,
        &udp(Ipv4Addr::new(10, 9, 0, 1), POD_B, 64),
        1,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &B_POD_MAC);
    assert_eq!(count(&l, PEER_FROM_NETDEV), 1);
}

#[test]
fn maps_outlive_the_loader_and_are_reused() {
    if !root() {
        return;
    }
    let l = load("reuse", true);
    let dir = l.dir.clone();
    // A second load (an agent restart) reuses the pinned maps and their state.
    let dp2 = Datapath::load(
        &dir,
        Features {
            redirect_peer: true,
            reason: "test".into(),
        },
    )
    .unwrap();
    let eps: EndpointMap = maps::open(&dir, "strait_endpoints").unwrap();
    assert_eq!(eps.get(&maps::ip_key(POD_B), 0).unwrap().ifindex, IF_B);
    drop(dp2);
    drop(l);
    assert!(!dir.exists(), "test pins removed");
}

/// Not a timing assertion: prints the per-packet cost of each path so a
/// regression is visible in the test log (`--nocapture`). The kernel reruns
/// the program on the same buffer, so each batch of 250 starts at TTL 255
/// and every run takes the forwarding path.
#[test]
fn per_packet_cost_is_reported() {
    if !root() {
        return;
    }
    let mut l = load("cost", true);
    let p = l.dp.program(Prog::FromContainer).unwrap();
    let cost = |pkt: &[u8], want: u32| {
        let mut ns: Vec<u32> = (0..200)
            .map(|_| {
                let (rc, _, ns) =
                    strait_bpf::testrun::run_skb_repeat(p.fd().unwrap(), pkt, IF_A, 250).unwrap();
                assert_eq!(rc, want);
                ns
            })
            .collect();
        ns.sort();
        ns[ns.len() / 2]
    };
    let local = cost(&udp(POD_A, POD_B, 255), TC_ACT_REDIRECT);
    let miss = cost(&udp(POD_A, Ipv4Addr::new(10, 200, 0, 1), 255), TC_ACT_OK);
    eprintln!("from_container per packet: same-node redirect_peer {local} ns, FIB miss to stack {miss} ns");
}

#[test]
fn service_vip_is_translated_and_replies_are_translated_back() {
    if !root() {
        return;
    }
    let mut l = load("svc", true);
    add_service(&l, &[(POD_B, 8080)]);
    // Request from A to the VIP: DNAT to B:8080, checksums valid, into B.
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40000, VIP, 80),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[30..34], &POD_B.octets(), "destination is the backend");
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8080);
    assert_eq!(&out[0..6], &B_POD_MAC);
    assert!(
        tcp_ok(&out),
        "IPv4 and TCP checksums valid after translation"
    );
    assert_eq!(count(&l, SVC_DNAT), 1);
    // The reply from B goes back to A with the VIP as its source.
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_B, 8080, POD_A, 40000),
        IF_B,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[26..30], &VIP.octets(), "source is the VIP again");
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 80);
    assert!(tcp_ok(&out));
    assert_eq!(count(&l, SVC_REVNAT), 1);
    // The same connection again (an ACK): conntrack, not a new pick.
    run(
        &mut l,
        Prog::FromContainer,
        &tcp_flags(POD_A, 40000, VIP, 80, 0x10),
        IF_A,
    );
    assert_eq!(count(&l, SVC_CT), 1);
    // A new SYN on the same tuple (a reused client port) is a new pick.
    run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40000, VIP, 80),
        IF_A,
    );
    assert_eq!(count(&l, SVC_DNAT), 2);
}

#[test]
fn service_without_backends_goes_to_the_stack_to_be_rejected() {
    if !root() {
        return;
    }
    let mut l = load("svcnone", true);
    add_service(&l, &[]);
    let (rc, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40001, VIP, 80),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(&out[30..34], &VIP.octets(), "untouched");
    assert_eq!(count(&l, SVC_NO_BACKEND), 1);
}

#[test]
fn a_direct_connection_on_a_reused_port_is_not_reverse_translated() {
    if !root() {
        return;
    }
    let mut l = load("reuse-port", true);
    add_service(&l, &[(POD_B, 8080)]);
    // A service connection from port 40100 leaves a reverse entry.
    run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40100, VIP, 80),
        IF_A,
    );
    // Later the client connects to B directly from the same port.
    run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40100, POD_B, 8080),
        IF_B.min(IF_A),
    );
    // B's SYN-ACK must keep B as its source.
    let (_, out) = run(
        &mut l,
        Prog::FromContainer,
        &tcp_flags(POD_B, 8080, POD_A, 40100, 0x12),
        IF_B,
    );
    assert_eq!(
        &out[26..30],
        &POD_B.octets(),
        "the direct reply keeps the backend's address"
    );
    assert_eq!(count(&l, SVC_REVNAT), 0);
}

/// A namespace with a real FIB: h0 plays a pod's host veth, h1 the uplink
/// with a permanent neighbour 198.18.250.2 and a route to 198.18.251.0/24
/// through it. Removed on drop.
struct FibNs(String);

impl FibNs {
    fn new(test: &str) -> FibNs {
        let name = format!("strait-bpft-{}-{test}", std::process::id());
        let sh = |args: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", args])
                .status()
                .unwrap();
            assert!(st.success(), "{args}");
        };
        sh(&format!("ip netns add {name}"));
        let ns = FibNs(name.clone());
        let x = format!("ip netns exec {name}");
        sh(&format!("{x} ip link add h0 type veth peer name h1"));
        sh(&format!(
            "{x} ip link set h0 up && {x} ip link set h1 up && {x} ip link set lo up"
        ));
        sh(&format!("{x} ip addr add 198.18.250.1/24 dev h1"));
        sh(&format!(
            "{x} ip neigh replace 198.18.250.2 lladdr 02:00:00:00:00:02 dev h1 nud permanent"
        ));
        sh(&format!(
            "{x} ip route add 198.18.251.0/24 via 198.18.250.2"
        ));
        sh(&format!("{x} sysctl -qw net.ipv4.ip_forward=1"));
        ns
    }

    /// Run `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).unwrap();
                // SAFETY: a valid netns fd; only this thread moves.
                let r = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET)
                };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for FibNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Remote traffic through a real FIB: bpf_fib_lookup finds the route and
/// neighbour, bpf_redirect_neigh sends it out of the uplink. A GSO
/// super-packet (IPv4 tot_len far above the MTU, its segments not) keeps
/// the fast path: tot_len is not handed to the lookup, so the kernel checks
/// the skb itself.
#[test]
fn remote_traffic_takes_redirect_neigh_through_a_real_fib_even_gso_sized() {
    if !root() {
        return;
    }
    let ns = FibNs::new("fib");
    let mut l = load("fib", true);
    let remote = Ipv4Addr::new(198, 18, 251, 7);
    let (h0, h1, rc_plain, rc_gso) = ns.run(|| {
        let idx = |n: &str| {
            let c = std::ffi::CString::new(n).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        let (h0, h1) = (idx("h0"), idx("h1"));
        let mut lxc: maps::LxcMap = maps::open(&l.dir, "strait_lxc").unwrap();
        lxc.insert(
            h0,
            maps::Lxc {
                ip4: maps::ip_key(POD_A),
                flags: 0,
                ip6: [0; 16],
            },
            0,
        )
        .unwrap();
        let plain = run(&mut l, Prog::FromContainer, &udp(POD_A, remote, 64), h0).0;
        let mut gso = udp(POD_A, remote, 64);
        gso[16..18].copy_from_slice(&60000u16.to_be_bytes());
        gso[24..26].copy_from_slice(&[0, 0]);
        let c = checksum(&gso[14..34]);
        gso[24..26].copy_from_slice(&c.to_be_bytes());
        let gso_rc = run(&mut l, Prog::FromContainer, &gso, h0).0;
        (h0, h1, plain, gso_rc)
    });
    assert!(h0 > 0 && h1 > 0);
    assert_eq!(rc_plain, TC_ACT_REDIRECT, "redirected out of the uplink");
    assert_eq!(
        rc_gso, TC_ACT_REDIRECT,
        "a GSO-sized packet is not sent to the slow path"
    );
    assert_eq!(count(&l, NEIGH_REMOTE), 2);
    assert_eq!(count(&l, FIB_TO_STACK), 0);
}
