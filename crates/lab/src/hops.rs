//! `strait lab hops`: which interface sees which packet. Raw AF_PACKET
//! captures run on every interface along a path (pod eth0s, host veths,
//! node uplinks) while one TCP request/response crosses it; the table says,
//! for the request and the reply separately, where each was seen. This is
//! how the seeds' observations ("the destination's host veth sees only the
//! reply") are reproduced. VXLAN frames (UDP 8472) and IP-in-IP packets
//! (protocol 4) are opened: the inner addresses count, and the outer ones
//! are shown beside them.

use crate::run::netns_path;
use crate::state::LabState;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_model::lab::LabPlan;
use strait_netlink::{in_netns, NetnsFile};

/// One capture point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Human label: "a1 eth0", "a1 host veth", "node-a eth0".
    pub label: String,
    pub netns: String,
    pub iface: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub request: usize,
    pub reply: usize,
    /// The request inside a tunnel: how, and the outer addresses.
    pub request_outer: Option<Outer>,
    pub reply_outer: Option<Outer>,
    /// The 802.1Q tags the request / reply carried there (vlan mode; a
    /// router's port sees a packet come in with one and leave with
    /// another).
    pub request_vlans: Vec<u16>,
    pub reply_vlans: Vec<u16>,
}

/// The outer header a packet was seen inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    /// "vxlan" or "ipip".
    pub encap: &'static str,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

#[derive(Debug)]
pub struct HopReport {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub answered_by: String,
    pub hops: Vec<(Hop, Seen)>,
    /// Where steps happen that no capture can see (a tunnel done in eBPF).
    pub notes: Vec<String>,
}

impl HopReport {
    pub fn seen(&self, label: &str) -> &Seen {
        &self
            .hops
            .iter()
            .find(|(h, _)| h.label == label)
            .unwrap_or_else(|| panic!("no hop {label}"))
            .1
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{} -> {} (answered by {})\n\n",
            self.src, self.dst, self.answered_by
        );
        let mark = |n: usize, outer: Option<Outer>, vlans: &[u16]| {
            let tag = if vlans.is_empty() {
                String::new()
            } else {
                let v: Vec<String> = vlans.iter().map(u16::to_string).collect();
                format!(" vlan {}", v.join(","))
            };
            match (n, outer) {
                (0, _) => "-".to_string(),
                (n, None) => format!("seen ({n}){tag}"),
                (n, Some(o)) => format!("{} ({n}) {}>{}{tag}", o.encap, o.src, o.dst),
            }
        };
        let w = self
            .hops
            .iter()
            .map(|(_, s)| mark(s.request, s.request_outer, &s.request_vlans).len())
            .max()
            .unwrap_or(0)
            .max(10);
        out.push_str(&format!(
            "{:<22} {:<18} {:<w$} {}\n",
            "HOP", "INTERFACE", "REQUEST", "REPLY"
        ));
        for (h, s) in &self.hops {
            out.push_str(&format!(
                "{:<22} {:<18} {:<w$} {}\n",
                h.label,
                h.iface,
                mark(s.request, s.request_outer, &s.request_vlans),
                mark(s.reply, s.reply_outer, &s.reply_vlans)
            ));
        }
        let path = |f: &dyn Fn(&Seen) -> bool| {
            self.hops
                .iter()
                .filter(|(_, s)| f(s))
                .map(|(h, _)| h.label.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        out.push_str(&format!("\nrequest: {}\n", path(&|s| s.request > 0)));
        let mut reply: Vec<&str> = self
            .hops
            .iter()
            .filter(|(_, s)| s.reply > 0)
            .map(|(h, _)| h.label.as_str())
            .collect();
        reply.reverse();
        out.push_str(&format!("reply:   {}\n", reply.join(" -> ")));
        for n in &self.notes {
            out.push_str(&format!("note:    {n}\n"));
        }
        out
    }
}

/// The capture points from `src` (a pod or node) to the pod `dst`, in path
/// order.
pub fn path(
    st: &LabState,
    src: &str,
    dst: &str,
) -> anyhow::Result<(Vec<Hop>, Ipv4Addr, Ipv4Addr, String)> {
    let plan: &LabPlan = &st.plan;
    if plan.cross_node == strait_model::lab::CrossNodeMode::Macvlan {
        return crate::hops_macvlan::path(st, src, dst);
    }
    let dpod = plan
        .pod(dst)
        .with_context(|| format!("{dst} is not a pod of lab {}", plan.name))?;
    let dnode = plan.node(&dpod.node).unwrap();
    let dip = v4(st.pod_ip(dpod).context("destination has no address")?)?;
    let host_veth = |p: &strait_model::lab::PodPlan| {
        strait_model::naming::host_veth_name(&st.container_id(p), "eth0")
    };
    let mut hops = vec![];
    let (sip, snode) = if let Some(spod) = plan.pod(src) {
        let snode = plan.node(&spod.node).unwrap();
        hops.push(Hop {
            label: format!("{} eth0", spod.name),
            netns: spod.netns.clone(),
            iface: "eth0".into(),
        });
        hops.push(Hop {
            label: format!("{} host veth", spod.name),
            netns: snode.netns.clone(),
            iface: host_veth(spod),
        });
        (
            v4(st.pod_ip(spod).context("source has no address")?)?,
            snode,
        )
    } else if let Some(n) = plan.node(src) {
        (n.ip, n)
    } else {
        anyhow::bail!("{src} is neither a pod nor a node of lab {}", plan.name);
    };
    // The overlay's device, where the packet is encapsulated / opened.
    let vxlan = (plan.cross_node == strait_model::lab::CrossNodeMode::Vxlan
        && dnode.name != snode.name)
        .then(|| {
            strait_model::overlay::vxlan_device("eth0", strait_model::overlay::VXLAN_VNI)
                .expect("eth0.vxlan<VNI> fits")
        });
    if let Some(dev) = &vxlan {
        hops.push(Hop {
            label: format!("{} {dev}", snode.name),
            netns: snode.netns.clone(),
            iface: dev.clone(),
        });
    }
    // IP-in-IP's stand-in for tunl0: routes point at it (see `notes`).
    if plan.cross_node == strait_model::lab::CrossNodeMode::Ipip && dnode.name != snode.name {
        let dev = strait_model::overlay::ipip_device("eth0").expect("eth0.ipip fits");
        hops.push(Hop {
            label: format!("{} {dev}", snode.name),
            netns: snode.netns.clone(),
            iface: dev,
        });
    }
    hops.push(Hop {
        label: format!("{} eth0", snode.name),
        netns: snode.netns.clone(),
        iface: "eth0".into(),
    });
    if dnode.name != snode.name {
        hops.extend(rack_hops(plan, snode, dnode));
        // vlan mode: between VLANs, the gateway routes (its one port).
        let vlan_of = |ip: Ipv4Addr| plan.underlay.iter().position(|s| s.cidr.contains(&ip));
        if plan.cross_node == strait_model::lab::CrossNodeMode::Vlan && vlan_of(sip) != vlan_of(dip)
        {
            hops.push(Hop {
                label: "gateway eth0".into(),
                netns: strait_model::underlay::gateway_netns(&plan.name),
                iface: "eth0".into(),
            });
        }
        hops.push(Hop {
            label: format!("{} eth0", dnode.name),
            netns: dnode.netns.clone(),
            iface: "eth0".into(),
        });
    }
    if let Some(dev) = &vxlan {
        hops.push(Hop {
            label: format!("{} {dev}", dnode.name),
            netns: dnode.netns.clone(),
            iface: dev.clone(),
        });
    }
    hops.push(Hop {
        label: format!("{} host veth", dpod.name),
        netns: dnode.netns.clone(),
        iface: host_veth(dpod),
    });
    hops.push(Hop {
        label: format!("{} eth0", dpod.name),
        netns: dpod.netns.clone(),
        iface: "eth0".into(),
    });
    Ok((hops, sip, dip, dpod.name.clone()))
}

/// Top-of-rack routers between two nodes (bgp-tor): the source rack's
/// port to the source node and its router, both routers' uplinks (and the
/// second router) when the racks differ, and the destination rack's port
/// to the destination node.
fn rack_hops(
    plan: &LabPlan,
    snode: &strait_model::lab::NodePlan,
    dnode: &strait_model::lab::NodePlan,
) -> Vec<Hop> {
    let (Some(sr), Some(dr)) = (plan.rack_of(snode), plan.rack_of(dnode)) else {
        return vec![];
    };
    let port = |r: &strait_model::racks::RackPlan, n: &strait_model::lab::NodePlan| Hop {
        label: format!("tor-{} {} port", r.name, n.name),
        netns: r.netns.clone(),
        iface: n.fabric_port.clone(),
    };
    let uplink = |r: &strait_model::racks::RackPlan| Hop {
        label: format!("tor-{} uplink", r.name),
        netns: r.netns.clone(),
        iface: "uplink".into(),
    };
    // The router's own side of the bridge sees only what it routes: a
    // frame bridged straight from node to node never reaches it.
    let router = |r: &strait_model::racks::RackPlan| Hop {
        label: format!("tor-{} router", r.name),
        netns: r.netns.clone(),
        iface: "br0".into(),
    };
    let mut hops = vec![port(sr, snode), router(sr)];
    if sr.name != dr.name {
        hops.push(uplink(sr));
        hops.push(uplink(dr));
        hops.push(router(dr));
    }
    hops.push(port(dr, dnode));
    hops
}

fn v4(ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => anyhow::bail!("hop captures are IPv4-only for now"),
    }
}

/// (source, destination).
type Pair = (Ipv4Addr, Ipv4Addr);
type Pairs = std::collections::HashMap<Pair, usize>;

/// One interface's capture: packets by inner (source, destination), and
/// for those that came inside VXLAN, their outer pair.
#[derive(Default)]
struct Captured {
    pairs: Pairs,
    outer: std::collections::HashMap<Pair, Outer>,
    /// The VLAN tag a pair was seen with (from the capture's aux data: the
    /// kernel keeps tags out of the frame bytes).
    vlans: std::collections::HashMap<Pair, std::collections::BTreeSet<u16>>,
}

/// Where the steps of an eBPF tunnel happen, since a capture cannot show
/// them: the wrap runs before a device's capture taps on egress, the
/// opening after them on ingress.
pub fn notes(plan: &LabPlan, snode: &str, dnode: &str) -> Vec<String> {
    use strait_model::lab::{CrossNodeMode, Mode};
    if plan.cross_node != CrossNodeMode::Ipip || snode == dnode {
        return vec![];
    }
    let open = match plan.mode {
        Mode::Ebpf => "from-netdev at its eth0 tc ingress opens IP-in-IP and redirects the inner packet into the pod (bpf_redirect_peer)",
        Mode::Routed => "tunnel_decap at its eth0 tc ingress opens IP-in-IP and the host stack routes the inner packet to the pod's host veth",
    };
    let wrap = match plan.mode {
        Mode::Ebpf => format!("{snode}: from-container wraps the packet in IP-in-IP itself and redirects it out of eth0, so eth0.ipip (Calico's tunl0) and the host stack see nothing"),
        Mode::Routed => format!("{snode}: the route sends the packet to eth0.ipip (Calico's tunl0); tunnel_encap at its tc egress wraps it and redirects it out of eth0 before a capture there could see it"),
    };
    vec![
        wrap,
        format!("{dnode}: no tunl0: {open}; eth0's capture sees the outer header"),
    ]
}

/// The IPv4 (source, destination) of an Ethernet frame, and, when it is
/// a VXLAN frame (UDP to 8472) or IP-in-IP (protocol 4), those of the packet
/// inside it.
fn addresses(f: &[u8]) -> Option<(Pair, Option<Outer>)> {
    let ip = |b: &[u8]| -> Option<Pair> {
        if b.len() < 34 || b[12..14] != [0x08, 0x00] {
            return None;
        }
        Some((
            Ipv4Addr::new(b[26], b[27], b[28], b[29]),
            Ipv4Addr::new(b[30], b[31], b[32], b[33]),
        ))
    };
    let outer = ip(f)?;
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let is_vxlan = f[23] == 17
        && f.len() >= udp + 16
        && u16::from_be_bytes([f[udp + 2], f[udp + 3]]) == strait_model::overlay::VXLAN_PORT;
    let wrap = |encap| Outer {
        encap,
        src: outer.0,
        dst: outer.1,
    };
    if is_vxlan {
        if let Some(inner) = ip(&f[udp + 16..]) {
            return Some((inner, Some(wrap("vxlan"))));
        }
    }
    // IP-in-IP: the inner header follows the outer one (no Ethernet header
    // of its own; give it the outer frame's so `ip` reads it the same way).
    if f[23] == 4 && f.len() >= udp + 20 {
        let mut inner = f[..14].to_vec();
        inner.extend_from_slice(&f[udp..]);
        if let Some(pair) = ip(&inner) {
            return Some((pair, Some(wrap("ipip"))));
        }
    }
    Some((outer, None))
}

/// Count IPv4 packets by (source, destination) seen on one interface
/// until `stop`.
fn capture(
    ns: &NetnsFile,
    iface: &str,
    ready: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Captured> {
    let iface = iface.to_string();
    in_netns(ns, move || -> anyhow::Result<Captured> {
        let cname = std::ffi::CString::new(iface.clone())?;
        // SAFETY: plain libc calls with valid arguments; the fd is closed below.
        unsafe {
            let idx = libc::if_nametoindex(cname.as_ptr());
            anyhow::ensure!(idx != 0, "no interface {iface}");
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
            anyhow::ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = idx as i32;
            let r = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if r != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                anyhow::bail!("bind to {iface}: {e}");
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            // VLAN tags travel beside the frame (skb->vlan_tci), not in it:
            // the aux data of each frame carries them.
            let on: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
            ready.store(true, Ordering::SeqCst);
            let mut seen = Captured::default();
            let mut buf = [0u8; 2048];
            let mut control = [0u64; 16];
            while !stop.load(Ordering::SeqCst) {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = std::mem::size_of_val(&control);
                let n = libc::recvmsg(fd, &mut msg, 0);
                if n < 34 {
                    continue;
                }
                let Some((pair, outer)) = addresses(&buf[..n as usize]) else {
                    continue;
                };
                *seen.pairs.entry(pair).or_default() += 1;
                if let Some(o) = outer {
                    seen.outer.insert(pair, o);
                }
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux = std::ptr::read_unaligned(
                            libc::CMSG_DATA(c) as *const libc::tpacket_auxdata
                        );
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                            seen.vlans
                                .entry(pair)
                                .or_default()
                                .insert(aux.tp_vlan_tci & 0x0fff);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            libc::close(fd);
            Ok(seen)
        }
    })?
}

/// Capture on `hops` while `traffic` runs.
fn capture_during<T>(
    hops: &[Hop],
    traffic: impl FnOnce() -> T,
) -> anyhow::Result<(Vec<Captured>, T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = vec![];
    let mut readies = vec![];
    for h in hops {
        let ns = NetnsFile::open(&netns_path(&h.netns))?;
        let (stop, ready) = (stop.clone(), Arc::new(AtomicBool::new(false)));
        readies.push(ready.clone());
        let iface = h.iface.clone();
        handles.push(std::thread::spawn(move || {
            capture(&ns, &iface, &ready, &stop)
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !readies.iter().all(|r| r.load(Ordering::SeqCst)) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = traffic();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let mut pairs = vec![];
    for t in handles {
        pairs.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("capture thread panicked"))??,
        );
    }
    Ok((pairs, out))
}

/// Capture along the path while one TCP request/response crosses it.
pub fn trace(st: &LabState, src: &str, dst: &str) -> anyhow::Result<HopReport> {
    let (hops, sip, dip, _) = path(st, src, dst)?;
    let src_ns = crate::run::target_netns(&st.plan, src)?;
    let (pairs, probe) = capture_during(&hops, || {
        crate::probe::probe(
            &netns_path(&src_ns),
            SocketAddr::new(dip.into(), crate::echo::ECHO_PORT),
            false,
            Duration::from_secs(2),
        )
    })?;
    let probe = probe?;
    let hops = hops
        .into_iter()
        .zip(pairs)
        .map(|(h, c)| {
            let seen = Seen {
                request: c.pairs.get(&(sip, dip)).copied().unwrap_or(0),
                reply: c.pairs.get(&(dip, sip)).copied().unwrap_or(0),
                request_outer: c.outer.get(&(sip, dip)).copied(),
                reply_outer: c.outer.get(&(dip, sip)).copied(),
                request_vlans: c
                    .vlans
                    .get(&(sip, dip))
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default(),
                reply_vlans: c
                    .vlans
                    .get(&(dip, sip))
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default(),
            };
            (h, seen)
        })
        .collect();
    let node_of = |name: &str| {
        st.plan
            .pod(name)
            .map(|p| p.node.clone())
            .unwrap_or_else(|| name.to_string())
    };
    Ok(HopReport {
        src: sip,
        dst: dip,
        answered_by: probe.answered_by,
        hops,
        notes: notes(&st.plan, &node_of(src), &node_of(dst)),
    })
}

/// Where a service's virtual IP is seen, and where only pod IPs are.
#[derive(Debug)]
pub struct ServiceHopReport {
    pub client: Ipv4Addr,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub answered_by: String,
    /// Per hop: packets carrying the VIP, and packets between the client
    /// and a backend's pod IP.
    pub hops: Vec<(Hop, usize, usize)>,
}

impl ServiceHopReport {
    pub fn at(&self, label: &str) -> (usize, usize) {
        let (_, v, p) = self
            .hops
            .iter()
            .find(|(h, ..)| h.label == label)
            .unwrap_or_else(|| panic!("no hop {label}"));
        (*v, *p)
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{} -> service {}:{} (answered by {})\n\n",
            self.client, self.vip, self.port, self.answered_by
        );
        out.push_str(&format!(
            "{:<22} {:<18} {:<14} {}\n",
            "HOP", "INTERFACE", "SERVICE IP", "POD IPs ONLY"
        ));
        let mark = |n: usize| {
            if n > 0 {
                format!("seen ({n})")
            } else {
                "-".into()
            }
        };
        for (h, v, p) in &self.hops {
            out.push_str(&format!(
                "{:<22} {:<18} {:<14} {}\n",
                h.label,
                h.iface,
                mark(*v),
                mark(*p)
            ));
        }
        out
    }
}

/// Capture while the pod `src` talks to service `svc` on `port`, on the
/// client's interfaces, every node uplink, and every backend pod's
/// interfaces.
pub fn trace_service(
    st: &LabState,
    src: &str,
    svc: &str,
    port: u16,
) -> anyhow::Result<ServiceHopReport> {
    let plan = &st.plan;
    let spod = plan
        .pod(src)
        .with_context(|| format!("{src} is not a pod of lab {}", plan.name))?;
    let client = v4(st.pod_ip(spod).context("client has no address")?)?;
    let sp = plan
        .service(svc)
        .with_context(|| format!("no service {svc} in lab {}", plan.name))?;
    let vip = sp.cluster_ip;
    let host_veth = |p: &strait_model::lab::PodPlan| {
        strait_model::naming::host_veth_name(&st.container_id(p), "eth0")
    };
    // Backends: from the endpoint slices the lab wrote.
    let slices =
        std::fs::read_to_string(st.manifests_dir().join("endpointslices.yaml")).unwrap_or_default();
    let backend_pods: Vec<&strait_model::lab::PodPlan> = plan
        .pods
        .iter()
        .filter(|p| {
            st.pod_ip(p)
                .is_some_and(|ip| slices.contains(&ip.to_string()))
        })
        .collect();
    let backend_ips: Vec<Ipv4Addr> = backend_pods
        .iter()
        .filter_map(|p| st.pod_ip(p))
        .filter_map(|ip| v4(ip).ok())
        .collect();
    let snode = plan.node(&spod.node).unwrap();
    let mut hops = vec![
        Hop {
            label: format!("{} eth0", spod.name),
            netns: spod.netns.clone(),
            iface: "eth0".into(),
        },
        Hop {
            label: format!("{} host veth", spod.name),
            netns: snode.netns.clone(),
            iface: host_veth(spod),
        },
    ];
    for n in &plan.nodes {
        hops.push(Hop {
            label: format!("{} eth0", n.name),
            netns: n.netns.clone(),
            iface: "eth0".into(),
        });
    }
    for b in &backend_pods {
        let bn = plan.node(&b.node).unwrap();
        hops.push(Hop {
            label: format!("{} host veth", b.name),
            netns: bn.netns.clone(),
            iface: host_veth(b),
        });
        hops.push(Hop {
            label: format!("{} eth0", b.name),
            netns: b.netns.clone(),
            iface: "eth0".into(),
        });
    }
    let (pairs, probe) = capture_during(&hops, || {
        crate::probe::probe(
            &netns_path(&spod.netns),
            SocketAddr::new(vip.into(), port),
            false,
            Duration::from_secs(2),
        )
    })?;
    let probe = probe?;
    let hops = tally(hops, pairs, vip, client, &backend_ips);
    Ok(ServiceHopReport {
        client,
        vip,
        port,
        answered_by: probe.answered_by,
        hops,
    })
}

/// Capture while the external client connects to `frontend` (a
/// LoadBalancer IP, externalIP or NodePort), on the external client, every
/// node uplink, and the interfaces of the pods named in `backends`.
pub fn trace_external(
    st: &LabState,
    frontend: SocketAddr,
    backends: &[&str],
) -> anyhow::Result<ServiceHopReport> {
    let plan = &st.plan;
    let ext = strait_model::lab::external_netns(&plan.name);
    let client = crate::run::external_ip(plan);
    let host_veth = |p: &strait_model::lab::PodPlan| {
        strait_model::naming::host_veth_name(&st.container_id(p), "eth0")
    };
    let mut hops = vec![Hop {
        label: "external eth0".into(),
        netns: ext.clone(),
        iface: "eth0".into(),
    }];
    for n in &plan.nodes {
        hops.push(Hop {
            label: format!("{} eth0", n.name),
            netns: n.netns.clone(),
            iface: "eth0".into(),
        });
    }
    let mut backend_ips = vec![];
    for b in backends {
        let p = plan.pod(b).with_context(|| format!("{b} is not a pod"))?;
        let bn = plan.node(&p.node).unwrap();
        backend_ips.push(v4(st.pod_ip(p).context("backend has no address")?)?);
        hops.push(Hop {
            label: format!("{} host veth", p.name),
            netns: bn.netns.clone(),
            iface: host_veth(p),
        });
        hops.push(Hop {
            label: format!("{} eth0", p.name),
            netns: p.netns.clone(),
            iface: "eth0".into(),
        });
    }
    let IpAddr::V4(fip) = frontend.ip() else {
        anyhow::bail!("IPv4 frontends only")
    };
    let (pairs, probe) = capture_during(&hops, || {
        crate::probe::probe(&netns_path(&ext), frontend, false, Duration::from_secs(2))
    })?;
    let probe = probe?;
    let hops = tally(hops, pairs, fip, client, &backend_ips);
    Ok(ServiceHopReport {
        client,
        vip: fip,
        port: frontend.port(),
        answered_by: probe.answered_by,
        hops,
    })
}

/// Per hop: packets carrying the service address `vip`, and packets
/// between the client and a backend's own address.
fn tally(
    hops: Vec<Hop>,
    captured: Vec<Captured>,
    vip: Ipv4Addr,
    client: Ipv4Addr,
    backends: &[Ipv4Addr],
) -> Vec<(Hop, usize, usize)> {
    let count = |p: &Pairs, f: &dyn Fn(Ipv4Addr, Ipv4Addr) -> bool| -> usize {
        p.iter()
            .filter(|((s, d), _)| f(*s, *d))
            .map(|(_, n)| n)
            .sum()
    };
    hops.into_iter()
        .zip(captured)
        .map(|(h, c)| {
            let p = c.pairs;
            let v = count(&p, &|s, d| s == vip || d == vip);
            let pods = count(&p, &|s, d| {
                (s == client && backends.contains(&d)) || (d == client && backends.contains(&s))
            });
            (h, v, pods)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0]);
        f.extend(src);
        f.extend(dst);
        f.extend(payload);
        f
    }

    #[test]
    fn vxlan_frames_are_opened() {
        let inner = ipv4([198, 19, 0, 1], [198, 19, 1, 1], 6, &[0; 20]);
        let mut udp = vec![0x12, 0x34];
        udp.extend(strait_model::overlay::VXLAN_PORT.to_be_bytes());
        udp.extend([0, 0, 0, 0]);
        udp.extend([0x08, 0, 0, 0, 0, 0, 20, 0]);
        udp.extend(&inner);
        let outer = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &udp);
        let a = |x: [u8; 4]| Ipv4Addr::from(x);
        assert_eq!(
            addresses(&outer),
            Some((
                (a([198, 19, 0, 1]), a([198, 19, 1, 1])),
                Some(Outer {
                    encap: "vxlan",
                    src: a([198, 18, 0, 1]),
                    dst: a([198, 18, 0, 2])
                })
            ))
        );
        assert_eq!(
            addresses(&inner),
            Some(((a([198, 19, 0, 1]), a([198, 19, 1, 1])), None))
        );
        // UDP to another port is not opened; ARP is not IPv4.
        let mut dns = udp.clone();
        dns[2..4].copy_from_slice(&53u16.to_be_bytes());
        let plain = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &dns);
        assert_eq!(addresses(&plain).unwrap().1, None);
        let mut arp = inner.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(addresses(&arp), None);
    }

    #[test]
    fn ipip_packets_are_opened() {
        let inner = ipv4([198, 19, 0, 1], [198, 19, 1, 1], 6, &[0; 20]);
        // The inner IPv4 header follows the outer one directly.
        let outer = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 4, &inner[14..]);
        let a = |x: [u8; 4]| Ipv4Addr::from(x);
        assert_eq!(
            addresses(&outer),
            Some((
                (a([198, 19, 0, 1]), a([198, 19, 1, 1])),
                Some(Outer {
                    encap: "ipip",
                    src: a([198, 18, 0, 1]),
                    dst: a([198, 18, 0, 2])
                })
            ))
        );
        // Protocol 4 with a truncated inner header is left as it is.
        let short = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 4, &inner[14..20]);
        assert_eq!(addresses(&short).unwrap().1, None);
    }
}
