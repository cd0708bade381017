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
use std::time::Duration;
use strait_model::lab::LabPlan;

pub(crate) mod capture;
pub mod eni;
use capture::{capture_during, Captured, Pairs};

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
        let l = label_width(self.hops.iter().map(|(h, _)| h));
        out.push_str(&format!(
            "{:<l$} {:<18} {:<w$} {}\n",
            "HOP", "INTERFACE", "REQUEST", "REPLY"
        ));
        for (h, s) in &self.hops {
            out.push_str(&format!(
                "{:<l$} {:<18} {:<w$} {}\n",
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
    if plan.cross_node == strait_model::lab::CrossNodeMode::Eni {
        return eni::path(st, src, dst);
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

/// The HOP column's width: the longest label (at least 22).
fn label_width<'a>(hops: impl Iterator<Item = &'a Hop>) -> usize {
    hops.map(|h| h.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(22)
}

fn v4(ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => anyhow::bail!("hop captures are IPv4-only for now"),
    }
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
        let l = label_width(self.hops.iter().map(|(h, ..)| h));
        out.push_str(&format!(
            "{:<l$} {:<18} {:<14} {}\n",
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
                "{:<l$} {:<18} {:<14} {}\n",
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
    if plan.cross_node == strait_model::lab::CrossNodeMode::Eni {
        // Pod traffic between nodes crosses the pods' ENIs, not eth0.
        hops.extend(eni::every_eni(st)?);
    } else {
        for n in &plan.nodes {
            hops.push(Hop {
                label: format!("{} eth0", n.name),
                netns: n.netns.clone(),
                iface: "eth0".into(),
            });
        }
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
