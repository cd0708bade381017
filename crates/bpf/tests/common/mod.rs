//! Shared by the BPF_PROG_TEST_RUN tests: a datapath loaded in a private
//! pin directory with two pods, packet builders, and runners.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use strait_bpf::datapath::{ensure_bpffs, Prog};
use strait_bpf::maps::{self, Endpoint, EndpointMap, Lxc, LxcMap, MetricsMap};
use strait_bpf::{Datapath, Features};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const IF_A: u32 = 7001;
pub const IF_B: u32 = 7002;
pub const B_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb0];
pub const B_HOST_MAC: [u8; 6] = [0xee, 0, 0, 0, 0, 0xb1];

pub fn root() -> bool {
    if nix_is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("BPF tests need root, and CI=true forbids skipping them");
    }
    eprintln!("\n!!! SKIPPED BPF_PROG_TEST_RUN tests: need root !!!\n");
    false
}

pub fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A datapath loaded with its maps pinned in a private directory, removed
/// on drop.
pub struct Loaded {
    pub dp: Datapath,
    pub dir: PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn load(test: &str, peer: bool) -> Loaded {
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
            ip4: maps::ip_key(POD_A),
            ip6: [0; 16],
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
            ip4: maps::ip_key(POD_B),
            ip6: [0; 16],
            flags: 0,
        },
        0,
    )
    .unwrap();
    Loaded { dp, dir }
}

pub fn checksum(h: &[u8]) -> u16 {
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
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
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

pub fn run(l: &mut Loaded, prog: Prog, pkt: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let p = l.dp.program(prog).unwrap();
    strait_bpf::testrun::run_skb(p.fd().unwrap(), pkt, ifindex).unwrap()
}

pub fn count(l: &Loaded, reason: u8) -> u64 {
    let m: MetricsMap = maps::open(&l.dir, "strait_metrics").unwrap();
    maps::metric(&m, reason).unwrap().0
}

/// Ethernet + IPv4 + TCP SYN with valid IPv4 and TCP checksums.
pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_flags(src, sport, dst, dport, 0x02)
}

pub fn tcp_flags(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
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

pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    l4_checksum(src, dst, 6, seg)
}

pub fn tcp_ok(pkt: &[u8]) -> bool {
    let src = Ipv4Addr::new(pkt[26], pkt[27], pkt[28], pkt[29]);
    let dst = Ipv4Addr::new(pkt[30], pkt[31], pkt[32], pkt[33]);
    tcp_checksum(src, dst, &pkt[34..]) == 0 && checksum(&pkt[14..34]) == 0
}

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub fn add_service(l: &Loaded, backends: &[(Ipv4Addr, u16)]) {
    add_service_proto(l, strait_model::services::Proto::Tcp, backends);
}

/// An ARP request from a pod claiming `spa`.
pub fn arp(spa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0xff; 6];
    p.extend([0x0a, 2, 2, 2, 2, 2, 0x08, 0x06]);
    p.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
    p.extend([0x0a, 2, 2, 2, 2, 2]);
    p.extend(spa.octets());
    p.extend([0; 6]);
    p.extend([169, 254, 1, 1]);
    p
}

/// An IPv6 packet (no payload) from `src` to `dst`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut p = vec![0x33, 0x33, 0, 0, 0, 1, 0x0a, 2, 2, 2, 2, 2, 0x86, 0xdd];
    p.extend([0x60, 0, 0, 0, 0, 0, 59, 255]);
    p.extend(src);
    p.extend(dst);
    p
}

/// Ethernet + IPv4 with `l4` as payload: IP id, flags/fragment offset
/// (host order, as in the header) and a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0xee, 1, 1, 1, 1, 1, 0x0a, 2, 2, 2, 2, 2, 0x08, 0x00];
    let len = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend(len.to_be_bytes());
    ip.extend(id.to_be_bytes());
    ip.extend(frag.to_be_bytes());
    ip.extend([64, proto, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend(ip);
    p.extend(l4);
    p
}

/// A UDP header + payload with a valid checksum (or 0, none).
pub fn udp_seg(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    data: &[u8],
    csum: bool,
) -> Vec<u8> {
    let mut u = vec![];
    u.extend(sport.to_be_bytes());
    u.extend(dport.to_be_bytes());
    u.extend(((8 + data.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(data);
    if csum {
        let c = l4_checksum(src, dst, 17, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let mut pseudo = vec![];
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, proto]);
    pseudo.extend((seg.len() as u16).to_be_bytes());
    pseudo.extend(seg);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    checksum(&pseudo)
}

pub fn ip_src(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[26], p[27], p[28], p[29])
}

pub fn ip_dst(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[30], p[31], p[32], p[33])
}

pub fn sport(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[34], p[35]])
}

pub fn dport(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[36], p[37]])
}

/// A service at VIP:80 over `proto` with `backends`.
pub fn add_service_proto(
    l: &Loaded,
    proto: strait_model::services::Proto,
    backends: &[(Ipv4Addr, u16)],
) {
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
            proto,
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

pub fn ct_entries(l: &Loaded, name: &str) -> Vec<(maps::CtKey, maps::CtVal)> {
    let m: maps::CtMap = maps::open(&l.dir, name).unwrap();
    m.iter().map(Result::unwrap).collect()
}
