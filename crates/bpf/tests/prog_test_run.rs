//! The datapath's decisions, tested with BPF_PROG_TEST_RUN: crafted packets
//! in, verdicts and map side effects out. Needs root (and a bpffs, which the
//! test mounts at /sys/fs/bpf when missing); skips loudly otherwise, and
//! under CI=true a skip is a failure.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use strait_bpf::datapath::{ensure_bpffs, Prog};
use strait_bpf::maps::{self, Endpoint, EndpointMap, EventRing, Lxc, LxcMap, MetricsMap};
use strait_bpf::reason::*;
use strait_bpf::{Datapath, Features};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const IF_A: u32 = 7001;
const IF_B: u32 = 7002;
const B_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb0];
const B_HOST_MAC: [u8; 6] = [0xee, 0, 0, 0, 0, 0xb1];

fn root() -> bool {
    if nix_is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("BPF tests need root, and CI=true forbids skipping them");
    }
    eprintln!("\n!!! SKIPPED BPF_PROG_TEST_RUN tests: need root !!!\n");
    false
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A datapath loaded with its maps pinned in a private directory, removed
/// on drop.
struct Loaded {
    dp: Datapath,
    dir: PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load(test: &str, peer: bool) -> Loaded {
    ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).unwrap();
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/strait-test-{}-{test}",
        std::process::id()
    ));
    let features = Features {
        redirect_peer: peer,
        reason: "test".into(),
    };
    let dp = Datapath::load(&dir, features).unwrap();
    let mut lxc: LxcMap = maps::open(&dir, "strait_lxc").unwrap();
    lxc.insert(
        IF_A,
        Lxc {
            ip: maps::ip_key(POD_A),
            flags: 0,
        },
        0,
    )
    .unwrap();
    let mut eps: EndpointMap = maps::open(&dir, "strait_endpoints").unwrap();
    eps.insert(
        maps::ip_key(POD_B),
        Endpoint {
            ifindex: IF_B,
            pod_mac: B_POD_MAC,
            host_mac: B_HOST_MAC,
            flags: 0,
        },
        0,
    )
    .unwrap();
    eps.insert(
        maps::ip_key(POD_A),
        Endpoint {
            ifindex: IF_A,
            pod_mac: [0x0a, 0, 0, 0, 0, 0xa0],
            host_mac: [0xee, 0, 0, 0, 0, 0xa1],
            flags: 0,
        },
        0,
    )
    .unwrap();
    lxc.insert(
        IF_B,
        Lxc {
            ip: maps::ip_key(POD_B),
            flags: 0,
        },
        0,
    )
    .unwrap();
    Loaded { dp, dir }
}

fn checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Ethernet + IPv4 + UDP, with a valid header checksum.
fn udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut p = vec![];
    p.extend([0xee, 1, 1, 1, 1, 1]); // to the host end of the sender's veth
    p.extend([0x0a, 2, 2, 2, 2, 2]);
    p.extend([0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 32, 0, 1, 0x40, 0, ttl, 17, 0, 0];
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend(ip);
    p.extend([0x30, 0x39, 0x1f, 0x90, 0, 12, 0, 0]); // 12345 -> 8080
    p.extend(b"ping");
    p
}

fn run(l: &mut Loaded, prog: Prog, pkt: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let p = l.dp.program(prog).unwrap();
    strait_bpf::testrun::run_skb(p.fd().unwrap(), pkt, ifindex).unwrap()
}

fn count(l: &Loaded, reason: u8) -> u64 {
    let m: MetricsMap = maps::open(&l.dir, "strait_metrics").unwrap();
    maps::metric(&m, reason).unwrap().0
}

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
    // Unknown host veth: the agent has not programmed it (yet).
    let (rc, _) = run(&mut l, Prog::FromContainer, &udp(POD_A, POD_B, 64), 4242);
    assert_eq!(rc, TC_ACT_OK);
    // ARP.
    let mut arp = udp(POD_A, POD_B, 64);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(run(&mut l, Prog::FromContainer, &arp, IF_A).0, TC_ACT_OK);
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
    assert_eq!(count(&l, TO_STACK), 3);
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

/// Ethernet + IPv4 + TCP SYN with valid IPv4 and TCP checksums.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_flags(src, sport, dst, dport, 0x02)
}

fn tcp_flags(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0xee, 1, 1, 1, 1, 1, 0x0a, 2, 2, 2, 2, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut t = vec![];
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let c = tcp_checksum(src, dst, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    p.extend(ip);
    p.extend(t);
    p
}

fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut pseudo = vec![];
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, 6]);
    pseudo.extend((seg.len() as u16).to_be_bytes());
    pseudo.extend(seg);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    checksum(&pseudo)
}

fn tcp_ok(pkt: &[u8]) -> bool {
    let src = Ipv4Addr::new(pkt[26], pkt[27], pkt[28], pkt[29]);
    let dst = Ipv4Addr::new(pkt[30], pkt[31], pkt[32], pkt[33]);
    tcp_checksum(src, dst, &pkt[34..]) == 0 && checksum(&pkt[14..34]) == 0
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn add_service(l: &Loaded, backends: &[(Ipv4Addr, u16)]) {
    use strait_model::services::*;
    let mut lb: maps::LbMap = maps::open(&l.dir, "strait_lb").unwrap();
    let entry = ServiceEntry {
        id: 7,
        namespace: "default".into(),
        name: "web".into(),
        port_name: "http".into(),
        frontend: Frontend {
            ip: VIP,
            port: 80,
            proto: Proto::Tcp,
        },
        backends: backends
            .iter()
            .map(|(ip, port)| Backend {
                ip: *ip,
                port: *port,
                state: BackendState::Active,
                pod: None,
                node: None,
            })
            .collect(),
        affinity_secs: None,
        external: false,
        local_only: false,
    };
    for (k, v) in maps::lb_entries(&[entry]) {
        lb.insert(k, v, 0).unwrap();
    }
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
