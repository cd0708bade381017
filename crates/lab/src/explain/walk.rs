//! The walk: from the source's namespace, ask each namespace's kernel
//! where the packet goes, follow links to the next namespace, and at each
//! interface with a strait program, read the map the program reads.

use super::live::{RouteGet, World};
use super::site::{LabSite, Scope, Site};
use super::{Dir, Explanation, Hop, Leg, Nat, Packet, Sight, Verdict};
use crate::state::LabState;
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::IpAddr;
use strait_model::api::{Request, Response, ServiceLookup};

/// Where the walk is: a packet sent by this namespace, or arriving on an
/// interface of it (`how`: what brought it there).
pub(super) enum Loc {
    Origin(String),
    In {
        netns: String,
        iface: String,
        how: String,
    },
}

/// (namespace, device, "ingress" | "egress").
pub(super) type TcHook = (String, String, &'static str);

pub(super) struct Walker<'a> {
    pub(super) scope: Scope<'a>,
    pub(super) world: World<'a>,
    /// Each node's datapath (mode, bpf_redirect_peer).
    pub(super) status: BTreeMap<String, ServiceLookup>,
    /// A frame on its way through a macvlan port: where its next hop was
    /// resolved (namespace, device, next hop), to follow it by MAC once
    /// the port sends it out of the uplink.
    pub(super) frame_to: std::cell::RefCell<Option<(String, String, IpAddr)>>,
    /// The tc programs seen per (namespace, device, direction).
    pub(super) tc: std::cell::RefCell<BTreeMap<TcHook, Vec<String>>>,
}

/// Ask `node`'s agent for the service programmed at a frontend (and its
/// datapath): one lookup, not the status with every service.
pub(super) fn lookup(
    site: &dyn Site,
    node: &str,
    ip: IpAddr,
    port: u16,
    udp: bool,
) -> anyhow::Result<ServiceLookup> {
    match site.agent(node, &Request::ServiceLookup { ip, port, udp })? {
        Response::ServiceLookup(l) => Ok(*l),
        Response::Error(e) => anyhow::bail!("{}", e.message),
        other => anyhow::bail!("the agent answered {other:?}"),
    }
}

/// Explain the flow from `src` (a pod, a node) to `dst` (a pod, a node, an
/// address, or `svc/NAME:PORT`) in the lab. `backend` forces the service
/// backend the walk follows (verify passes the one that answered).
pub fn explain(
    st: &LabState,
    src: &str,
    dst: &str,
    backend: Option<IpAddr>,
) -> anyhow::Result<Explanation> {
    let site = LabSite { st };
    let scope = Scope::lab(&site);
    let (dst_ip, port, _) = destination(&scope, dst)?;
    // The VPC's load balancer translates in the cloud, which the walk does
    // not read yet: say so rather than explain it as delivered to the VPC.
    if let Some(slb) = st
        .plan
        .cloud
        .iter()
        .flat_map(|c| &c.slbs)
        .find(|s| s.address == dst_ip)
    {
        anyhow::bail!(
            "{dst} is the VPC's load balancer {}: explain does not follow it yet; `strait lab hops external slb/{}:{port}` captures its path",
            slb.id,
            slb.id
        );
    }
    explain_in(scope, src, dst, backend)
}

/// Explain a flow over whatever `scope` reads.
pub fn explain_in(
    scope: Scope<'_>,
    src: &str,
    dst: &str,
    backend: Option<IpAddr>,
) -> anyhow::Result<Explanation> {
    // Each node's datapath, asked once (every agent read must answer).
    let mut status = BTreeMap::new();
    for node in scope.nodes.values() {
        if scope.unreachable.contains_key(node) {
            continue;
        }
        let s = lookup(scope.site, node, IpAddr::from([0, 0, 0, 0]), 0, false)
            .with_context(|| format!("ask node {node}'s agent"))?;
        status.insert(node.clone(), s);
    }
    let names: Vec<String> = scope.labels.keys().cloned().collect();
    let w = Walker {
        world: World::read(scope.site, &names)?,
        scope,
        status,
        frame_to: Default::default(),
        tc: Default::default(),
    };
    let (src_ns, src_ip) = w.scope.target(src)?;
    let (dst_ip, port, udp) = destination(&w.scope, dst)?;
    let mut nat = None;
    let pkt = Packet {
        src: src_ip,
        dst: dst_ip,
        port,
        udp,
        outer: None,
        vlan: None,
    };
    let request = w.leg(Loc::Origin(src_ns.clone()), pkt, &mut nat, backend, false);
    let reply = match &request.verdict {
        Verdict::Delivered(to) => {
            let to_ns = w
                .scope
                .labels
                .iter()
                .find(|(_, l)| *l == to)
                .map(|(ns, _)| ns.clone())
                .unwrap_or_default();
            let answer = Packet {
                src: nat.as_ref().map(|n| n.backend).unwrap_or(dst_ip),
                dst: nat.as_ref().and_then(|n| n.masquerade).unwrap_or(src_ip),
                port: 0,
                udp,
                outer: None,
                vlan: None,
            };
            Some(w.leg(Loc::Origin(to_ns), answer, &mut nat, None, true))
        }
        Verdict::Dropped(_) | Verdict::Left(_) => None,
    };
    Ok(Explanation {
        src: src.to_string(),
        dst: dst.to_string(),
        sent: pkt,
        request,
        reply,
        nat,
    })
}

/// (address, port, udp) of the destination.
pub(super) fn destination(scope: &Scope, dst: &str) -> anyhow::Result<(IpAddr, u16, bool)> {
    let echo = crate::echo::ECHO_PORT;
    if let Some(rest) = dst.strip_prefix("svc/") {
        let (name, port) = rest
            .split_once(':')
            .with_context(|| format!("{dst}: say the port, svc/NAME:PORT"))?;
        let (port, udp) = match port.split_once('/') {
            Some((p, proto)) => (p, proto.eq_ignore_ascii_case("udp")),
            None => (port, false),
        };
        let port: u16 = port.parse().with_context(|| format!("port {port:?}"))?;
        let svc = scope
            .service(name)
            .with_context(|| format!("no service {name} in {}", scope.what))?;
        return Ok((svc.ip, port, udp));
    }
    if let Ok(ip) = dst.parse::<IpAddr>() {
        return Ok((ip, echo, false));
    }
    if let Ok(sa) = dst.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), sa.port(), false));
    }
    // POD:PORT (pods may be ns/name; ports are numbers).
    if let Some((target, port)) = dst.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok((scope.target(target)?.1, port, false));
        }
    }
    Ok((scope.target(dst)?.1, echo, false))
}

impl Walker<'_> {
    pub(super) fn label(&self, netns: &str) -> String {
        self.scope
            .labels
            .get(netns)
            .cloned()
            .unwrap_or_else(|| netns.to_string())
    }

    /// The node a namespace belongs to: itself for a node, a pod's node.
    pub(super) fn node_of(&self, netns: &str) -> String {
        if let Some(n) = self.scope.nodes.get(netns) {
            return n.clone();
        }
        self.scope
            .pods
            .iter()
            .find(|p| p.netns == netns)
            .map(|p| p.node.clone())
            .unwrap_or_else(|| self.label(netns))
    }

    pub(super) fn hop(
        &self,
        netns: &str,
        iface: &str,
        dir: Dir,
        pkt: &Packet,
        sight: Sight,
        why: String,
    ) -> Hop {
        Hop {
            at: self.label(netns),
            node: self.node_of(netns),
            netns: netns.to_string(),
            iface: iface.to_string(),
            dir,
            packet: *pkt,
            sight,
            why,
        }
    }

    fn leg(
        &self,
        start: Loc,
        mut pkt: Packet,
        nat: &mut Option<Nat>,
        pick: Option<IpAddr>,
        reply: bool,
    ) -> Leg {
        let mut hops = vec![];
        let mut loc = start;
        for _ in 0..64 {
            let next = match loc {
                Loc::Origin(ns) => self.origin(&mut hops, &ns, &mut pkt, nat, pick, reply),
                Loc::In { netns, iface, how } => {
                    hops.push(self.hop(&netns, &iface, Dir::In, &pkt, Sight::Seen, how));
                    self.arrive(&mut hops, &netns, &iface, &mut pkt, nat, pick, reply)
                }
            };
            match next {
                Ok(l) => loc = l,
                Err(verdict) => return Leg { hops, verdict },
            }
        }
        Leg {
            hops,
            verdict: Verdict::Dropped("the walk did not end after 64 hops (a loop?)".into()),
        }
    }

    /// A packet the namespace sends itself.
    fn origin(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        pkt: &mut Packet,
        nat: &mut Option<Nat>,
        pick: Option<IpAddr>,
        reply: bool,
    ) -> Result<Loc, Verdict> {
        let mut why = String::new();
        if !reply && self.scope.nodes.contains_key(ns) {
            // A node's own connection: eBPF translates at connect()
            // (bpf_sock), nftables in the output hook; either way before
            // the route lookup.
            let node = self.node_of(ns);
            let by = if self.ebpf(&node) {
                "bpf_sock at connect(): no packet carries the service address"
            } else {
                "nftables DNAT in the output hook"
            };
            why = self.translate(&node, pkt, nat, pick, by)?;
        }
        match self.world.route_get(ns, pkt.dst, pkt.src, None) {
            RouteGet::Local => Err(Verdict::Delivered(self.label(ns))),
            RouteGet::Refused(r) => Err(Verdict::Dropped(format!(
                "{}: {r} for {}",
                self.label(ns),
                pkt.dst
            ))),
            RouteGet::Out {
                dev,
                gateway,
                table,
            } => {
                let via = route_words(pkt.dst, gateway, &dev, table.as_deref());
                let why = if why.is_empty() {
                    via
                } else {
                    format!("{why}; {via}")
                };
                self.out(hops, ns, &dev, gateway, pkt, why)
            }
        }
    }

    /// The BPF programs at a device's tc hook, asked once per walk.
    pub(super) fn progs(&self, ns: &str, dev: &str, dir: &'static str) -> Vec<String> {
        let key = (ns.to_string(), dev.to_string(), dir);
        if let Some(p) = self.tc.borrow().get(&key) {
            return p.clone();
        }
        let p = self.world.tc_programs(ns, dev, dir);
        self.tc.borrow_mut().insert(key, p.clone());
        p
    }

    pub(super) fn ebpf(&self, node: &str) -> bool {
        self.status.get(node).is_some_and(|s| s.mode == "ebpf")
    }

    pub(super) fn any_address(&self, ns: &str, v4: bool) -> Option<IpAddr> {
        self.world
            .links
            .iter()
            .filter(|l| l.netns == ns)
            .flat_map(|l| l.addrs.iter().copied())
            .find(|a| a.is_ipv4() == v4)
    }
}

/// "198.19.1.0 via 198.18.0.2 dev eth0 (table 1003)" in words.
pub(super) fn route_words(
    dst: IpAddr,
    gateway: Option<IpAddr>,
    dev: &str,
    table: Option<&str>,
) -> String {
    let mut s = match gateway {
        Some(g) => format!("route to {dst} via {g} dev {dev}"),
        None => format!("route to {dst} dev {dev} (on-link)"),
    };
    if let Some(t) = table.filter(|t| *t != "main") {
        s.push_str(&format!(" in table {t}"));
    }
    s
}
