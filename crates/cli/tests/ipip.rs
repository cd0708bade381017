//! IP-in-IP in the lab, as seed 001 walks Calico's IPIP mode, done in eBPF
//! (the kernel has no ipip module): routes via each node on eth0.ipip (the
//! stand-in for tunl0); between the nodes only node addresses and protocol
//! 4 show, the pod addresses inside; nothing is encapsulated between pods
//! of one node; IP-in-IP from anyone but a node is dropped and counted.

mod common;
use common::explain;
use common::svc::*;
use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use strait_bpf::reason;
use strait_lab::hops;

fn ipip_lab(name: &str, datapath: &str) -> Lab {
    svc_lab_spec(name, &format!("datapath: {datapath}\n  crossNode: ipip"))
}

#[test]
fn ipip_on_the_kernel_datapath() {
    if !require_root("ipip_on_the_kernel_datapath") {
        return;
    }
    let lab = ipip_lab("t-ipip", "kernel");
    ipip_carries_pods_and_services_between_nodes(&lab, false);
    back_to_routed_removes_ipip(&lab, false);
}

/// The fast path: from-container wraps cross-node packets itself and sends
/// them out of eth0 (eth0.ipip and the host stack are skipped); from-netdev
/// opens them and puts the inner packet into the pod with
/// bpf_redirect_peer, so the destination's host veth sees no request.
#[test]
fn ipip_on_the_ebpf_datapath() {
    if !require_root("ipip_on_the_ebpf_datapath") {
        return;
    }
    let lab = ipip_lab("t-ipipbpf", "ebpf");
    ipip_carries_pods_and_services_between_nodes(&lab, true);
    back_to_routed_removes_ipip(&lab, true);
}

/// The agents restart with --cross-node routed: the stand-in device (and
/// the routes through it) goes, the tunnel's map entries are cleared, the
/// kernel datapath's tunnel_decap leaves eth0; pods talk over the plain
/// underlay.
fn back_to_routed_removes_ipip(lab: &Lab, ebpf: bool) {
    lab.restart_agents_with(strait_model::lab::CrossNodeMode::Routed);
    let b = lab.node("node-b").ip;
    for node in ["node-a", "node-b"] {
        lab.until(node, &["ip", "link"], "eth0.ipip gone", |o| {
            !o.contains("eth0.ipip")
        });
        let ingress = lab.exec(node, &["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(!ingress.contains("tunnel_decap"), "{ingress}");
        assert_eq!(ingress.contains("from_netdev"), ebpf, "{ingress}");
        let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(lab.name(), node));
        assert!(strait_bpf::tunnel::peers(&pins).unwrap().is_empty());
    }
    lab.until("node-a", &["ip", "route"], "routed mode's route", |o| {
        o.contains(&format!("198.19.1.0/24 via {b} dev eth0"))
    });
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
    assert_eq!(lab.status("node-a").cross_node, "routed");
}

/// A node's packet counter for one reason.
fn counted(lab: &Lab, node: &str, code: u8) -> u64 {
    let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(lab.name(), node));
    let m: strait_bpf::maps::MetricsMap = strait_bpf::maps::open(&pins, "strait_metrics").unwrap();
    strait_bpf::maps::metric(&m, code).unwrap().0
}

/// From the namespace `from`, send one IP-in-IP packet to `node` (the
/// kernel adds the outer header, from `from`'s own address) carrying a UDP
/// datagram to `inner_dst`.
fn send_ipip(from_netns: &str, node: Ipv4Addr, inner_dst: Ipv4Addr) {
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip.extend(Ipv4Addr::new(198, 19, 200, 1).octets());
    ip.extend(inner_dst.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend([0x30, 0x39, 0, 9, 0, 8, 0, 0]); // UDP 12345 -> 9, no checksum
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(from_netns)).unwrap();
    strait_netlink::in_netns(&ns, move || {
        // SAFETY: plain socket calls on valid buffers; the fd is closed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from(node).to_be();
            let n = libc::sendto(
                fd,
                ip.as_ptr() as *const libc::c_void,
                ip.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            libc::close(fd);
            assert_eq!(n, ip.len() as isize, "{}", std::io::Error::last_os_error());
        }
    })
    .unwrap();
}

fn ipip_carries_pods_and_services_between_nodes(lab: &Lab, ebpf: bool) {
    let (a, b) = (lab.node("node-a").ip, lab.node("node-b").ip);

    // The kernel objects: the stand-in device, Calico's route shape, the
    // programs, and the outer next hop kept resolved.
    let link = lab.exec("node-a", &["ip", "-d", "link", "show", "eth0.ipip"]);
    assert!(
        link.contains("macvlan mode source") && link.contains("NOARP") && link.contains("mtu 1480"),
        "{link}"
    );
    let main = lab.exec("node-a", &["ip", "route"]);
    assert!(
        main.contains(&format!("198.19.1.0/24 via {b} dev eth0.ipip")) && main.contains("onlink"),
        "{main}"
    );
    let egress = lab.exec(
        "node-a",
        &["tc", "filter", "show", "dev", "eth0.ipip", "egress"],
    );
    assert!(egress.contains("tunnel_encap"), "{egress}");
    let ingress = lab.exec(
        "node-a",
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    let opener = if ebpf { "from_netdev" } else { "tunnel_decap" };
    assert!(ingress.contains(opener), "{ingress}");
    let neigh = lab.exec("node-a", &["ip", "neigh", "show", "dev", "eth0"]);
    assert!(
        neigh.contains(&format!("{b} ")) && neigh.contains("managed"),
        "{neigh}"
    );
    let mtu = lab.exec("client", &["ip", "link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1480"), "pods get MTU 1500 - 20: {mtu}");

    // The matrix: TCP and UDP, same node and across.
    for dst in ["web-a", "web-b"] {
        assert_eq!(lab.probe("client", dst).unwrap(), dst);
        let ip: IpAddr = pod_ip(lab, dst).parse().unwrap();
        let udp = strait_lab::probe::probe(
            &strait_lab::run::netns_path(&lab.st.plan.pod("client").unwrap().netns),
            SocketAddr::new(ip, 8080),
            true,
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(udp.answered_by, dst, "UDP to {dst}");
    }
    assert_eq!(
        lab.probe("node-a", "web-b").unwrap(),
        "web-b",
        "node to pod"
    );

    // The seed's walk: node addresses and protocol 4 between the nodes, the
    // pod addresses inside; eth0.ipip itself shows nothing (the wrap runs
    // before its capture taps), and the table says where it happens.
    let r = hops::trace(&lab.st, "client", "web-b").unwrap();
    eprintln!("{}", r.table());
    let outer = |o: Option<hops::Outer>| o.map(|o| (o.encap, o.src, o.dst));
    for n in ["node-a eth0", "node-b eth0"] {
        let s = r.seen(n);
        assert!(s.request > 0 && s.reply > 0, "{n}: {s:?}");
        assert_eq!(outer(s.request_outer), Some(("ipip", a, b)), "{n}");
        assert_eq!(outer(s.reply_outer), Some(("ipip", b, a)), "{n}");
    }
    assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    let (dst_veth, src_veth) = (r.seen("web-b host veth"), r.seen("client host veth"));
    assert_eq!(dst_veth.request_outer, None, "opened before the pod");
    if ebpf {
        assert_eq!(dst_veth.request, 0, "redirect_peer skips web-b's host veth");
        assert_eq!(src_veth.reply, 0, "and the client's on the way back");
        assert!(dst_veth.reply > 0 && src_veth.request > 0);
    } else {
        assert!(
            dst_veth.request > 0 && src_veth.reply > 0,
            "the kernel path"
        );
    }
    let same = hops::trace(&lab.st, "client", "web-a").unwrap();
    let up = same.seen("node-a eth0");
    assert_eq!((up.request, up.reply), (0, 0), "nothing leaves the node");

    // `lab explain` from live state, confirmed by capture: the stand-in is
    // skipped both ways, the uplinks carry IP-in-IP between the nodes.
    let v = explain::verified(lab, "client", "web-b");
    let e = &v.explanation;
    for leg in [&e.request, e.reply.as_ref().unwrap()] {
        let s = explain::skipped(leg);
        assert!(s.iter().any(|h| h.ends_with(" eth0.ipip")), "{}", v.table());
        assert_eq!(s.len(), if ebpf { 2 } else { 1 }, "{}", v.table());
        let wrapped: Vec<_> = leg
            .hops
            .iter()
            .filter(|h| h.packet.outer.is_some())
            .collect();
        assert!(
            wrapped.len() == 2
                && wrapped
                    .iter()
                    .all(|h| h.iface == "eth0" && h.packet.outer.unwrap().kind == "ipip"),
            "{}",
            v.table()
        );
    }
    let v = explain::verified(lab, "client", "svc/web:80");
    explain::vip_only_on_client_side(lab, &v, "client", "web");

    // Full-size GSO segments cross: 8 MiB, every byte checked.
    let (got, intact) = bulk_transfer(lab, "client", "web-b", 8 << 20);
    assert_eq!((got, intact), (8 << 20, true));

    // Only nodes may send IP-in-IP: the same packet is opened from node-a
    // and dropped, counted, from the lab's external host.
    let web_b: Ipv4Addr = pod_ip(lab, "web-b").parse().unwrap();
    let (opened, dropped) = (reason::IPIP_DECAP, reason::DROP_IPIP_UNKNOWN_PEER);
    let before = (
        counted(lab, "node-b", opened),
        counted(lab, "node-b", dropped),
    );
    send_ipip(&lab.node("node-a").netns, b, web_b);
    send_ipip(&strait_model::lab::external_netns(lab.name()), b, web_b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (
            counted(lab, "node-b", opened),
            counted(lab, "node-b", dropped),
        );
        if now.1 > before.1 && now.0 > before.0 {
            assert_eq!(now.1, before.1 + 1, "exactly the external packet dropped");
            break;
        }
        assert!(Instant::now() < deadline, "before {before:?}, now {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Path-MTU discovery, answered at eth0.ipip.
    path_mtu_is_learned(lab, 1480);

    // Established cross-node streams ride out agent restarts.
    streams_survive_agent_restarts(lab, "client", &["web-b", "web-a"], || {
        lab.until("node-a", &["ip", "route"], "route kept", |o| {
            o.contains("dev eth0.ipip")
        });
    });

    // Services across the tunnel, and a NodePort whose remote backend is
    // reached through it (masqueraded to node-a).
    assert_example_serves_and_changes(lab);
    nodeport_cluster(lab);

    // Drift heals: a deleted device comes back with its program and routes.
    lab.exec("node-a", &["ip", "link", "del", "eth0.ipip"]);
    lab.until("node-a", &["ip", "route"], "route back", |o| {
        o.contains("198.19.1.0/24 via") && o.contains("dev eth0.ipip")
    });
    lab.until(
        "node-a",
        &["tc", "filter", "show", "dev", "eth0.ipip", "egress"],
        "tunnel_encap back",
        |o| o.contains("tunnel_encap"),
    );
    assert_eq!(lab.probe("node-a", "web-b").unwrap(), "web-b");

    // A node that leaves takes its route, its peer entry and its next hop
    // with it (its IP-in-IP is refused), and they return with it.
    let all = strait_lab::run::node_objects(&lab.st);
    let without_b: Vec<_> = all
        .iter()
        .filter(|n| n["metadata"]["name"] != "node-b")
        .cloned()
        .collect();
    strait_lab::publish::put(&lab.st, "nodes", &without_b).unwrap();
    lab.until("node-a", &["ip", "route"], "route gone", |o| {
        !o.contains("198.19.1.0/24")
    });
    let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(lab.name(), "node-a"));
    let peers = strait_bpf::tunnel::peers(&pins).unwrap();
    assert!(!peers.contains(&IpAddr::V4(b)), "{peers:?}");
    lab.until(
        "node-a",
        &["ip", "neigh", "show", "dev", "eth0"],
        "no managed entry",
        |o| !o.contains("managed"),
    );
    strait_lab::publish::put(&lab.st, "nodes", &all).unwrap();
    lab.until("node-a", &["ip", "route"], "route back", |o| {
        o.contains("198.19.1.0/24")
    });
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
}
