//! The walk: from the source's namespace, ask each namespace's kernel
//! where the packet goes, follow links to the next namespace, and at each
//! interface with a strait program, read the map the program reads.

use super::live::{self, route_get, tc_programs, RouteGet, World};
use super::{Dir, Encap, Explanation, Hop, Leg, Nat, Packet, Sight, Verdict};
use crate::state::LabState;
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::IpAddr;
use strait_model::api::NodeStatus;

/// Where the walk is: a packet sent by this namespace, or arriving on an
/// interface of it (`how`: what brought it there).
enum Loc {
    Origin(String),
    In {
        netns: String,
        iface: String,
        how: String,
    },
}

struct Walker<'a> {
    st: &'a LabState,
    world: World,
    labels: BTreeMap<String, String>,
    /// Node namespace -> node name.
    nodes: BTreeMap<String, String>,
    status: BTreeMap<String, NodeStatus>,
    /// The lab VPC's security groups (a lab with a cloud).
    groups: Option<super::vpc::Groups>,
    /// A frame on its way through a macvlan port: where its next hop was
    /// resolved (namespace, device, next hop), to follow it by MAC once
    /// the port sends it out of the uplink.
    frame_to: std::cell::RefCell<Option<(String, String, IpAddr)>>,
}

/// Explain the flow from `src` (a pod, a node) to `dst` (a pod, a node, an
/// address, or `svc/NAME:PORT`). `backend` forces the service backend the
/// walk follows (verify passes the one that answered).
pub fn explain(
    st: &LabState,
    src: &str,
    dst: &str,
    backend: Option<IpAddr>,
) -> anyhow::Result<Explanation> {
    let plan = &st.plan;
    let mut status = BTreeMap::new();
    for n in &plan.nodes {
        let s = crate::run::agent_status(&st.socket(n))
            .with_context(|| format!("ask node {}'s agent", n.name))?;
        status.insert(n.name.clone(), s);
    }
    let w = Walker {
        st,
        world: World::read(&format!("strait-{}-", plan.name))?,
        labels: live::labels(plan),
        nodes: plan
            .nodes
            .iter()
            .map(|n| (n.netns.clone(), n.name.clone()))
            .collect(),
        status,
        groups: super::vpc::Groups::load(st),
        frame_to: Default::default(),
    };
    let src_ns = crate::run::target_netns(plan, src)?;
    let src_ip = w.address(src)?;
    let (dst_ip, port, udp) = w.destination(dst)?;
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
        Verdict::Dropped(_) => None,
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

impl Walker<'_> {
    fn label(&self, netns: &str) -> String {
        self.labels
            .get(netns)
            .cloned()
            .unwrap_or_else(|| netns.to_string())
    }

    /// The node a namespace belongs to: itself for a node, a pod's node.
    fn node_of(&self, netns: &str) -> String {
        if let Some(n) = self.nodes.get(netns) {
            return n.clone();
        }
        self.st
            .plan
            .pods
            .iter()
            .find(|p| p.netns == netns)
            .map(|p| p.node.clone())
            .unwrap_or_else(|| self.label(netns))
    }

    /// A pod's or node's address.
    fn address(&self, target: &str) -> anyhow::Result<IpAddr> {
        let plan = &self.st.plan;
        if let Some(p) = plan.pod(target) {
            return self
                .st
                .pod_ip(p)
                .with_context(|| format!("pod {target} has no address"));
        }
        if let Some(n) = plan.node(target) {
            return Ok(n.ip.into());
        }
        if target == "external" {
            return Ok(crate::run::external_ip(plan).into());
        }
        anyhow::bail!(
            "{target:?} is neither a pod nor a node of lab {}",
            plan.name
        )
    }

    /// (address, port, udp) of the destination.
    fn destination(&self, dst: &str) -> anyhow::Result<(IpAddr, u16, bool)> {
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
            let svc = self
                .st
                .plan
                .service(name)
                .with_context(|| format!("no service {name} in lab {}", self.st.plan.name))?;
            return Ok((svc.cluster_ip.into(), port, udp));
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
                return Ok((self.address(target)?, port, false));
            }
        }
        Ok((self.address(dst)?, echo, false))
    }

    fn hop(
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
        if !reply && self.nodes.contains_key(ns) {
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
        match route_get(ns, pkt.dst, pkt.src, None) {
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

    fn ebpf(&self, node: &str) -> bool {
        self.status.get(node).is_some_and(|s| s.mode == "ebpf")
    }

    /// A service frontend at `pkt`'s destination: pick a backend (the
    /// forced one, else the first active) and rewrite the destination.
    /// Returns what happened ("" when `pkt` is not for a service).
    fn translate(
        &self,
        node: &str,
        pkt: &mut Packet,
        nat: &mut Option<Nat>,
        pick: Option<IpAddr>,
        by: &str,
    ) -> Result<String, Verdict> {
        let Some(status) = self.status.get(node) else {
            return Ok(String::new());
        };
        let Some(e) = status.services.iter().find(|e| {
            IpAddr::from(e.frontend.ip) == pkt.dst
                && e.frontend.port == pkt.port
                && (e.frontend.proto == strait_model::services::Proto::Udp) == pkt.udp
        }) else {
            return Ok(String::new());
        };
        let candidates: Vec<IpAddr> = e.active().map(|b| IpAddr::from(b.ip)).collect();
        let chosen = pick
            .and_then(|p| e.active().find(|b| IpAddr::from(b.ip) == p))
            .or_else(|| e.active().next());
        let Some(b) = chosen else {
            return Err(Verdict::Dropped(format!(
                "service {}/{} {} has no ready backend on {node}",
                e.namespace, e.name, e.frontend
            )));
        };
        let name = format!("{}/{}", e.namespace, e.name);
        *nat = Some(Nat {
            service: name.clone(),
            vip: pkt.dst,
            vport: pkt.port,
            backend: b.ip.into(),
            bport: b.port,
            node: node.to_string(),
            candidates: candidates.clone(),
            client: pkt.src,
            external: e.external,
            local_only: e.local_only,
            masquerade: None,
        });
        let why = format!(
            "{by}: service {name} {} -> {}:{} ({} of {} backends{})",
            e.frontend,
            b.ip,
            b.port,
            b.pod.as_deref().unwrap_or("a pod"),
            candidates.len(),
            if candidates.len() > 1 {
                ", picked per connection"
            } else {
                ""
            }
        );
        pkt.dst = b.ip.into();
        pkt.port = b.port;
        // A pod reaching itself: it would drop a packet from its own
        // address, so the source becomes the hairpin address (both
        // service backends do this) and the reply comes back to it.
        if pkt.dst == pkt.src {
            let hp = IpAddr::from(strait_model::services::HAIRPIN_IP4);
            pkt.src = hp;
            if let Some(n) = nat.as_mut() {
                n.masquerade = Some(hp);
            }
            return Ok(format!(
                "{why}; hairpin: the pod is its own backend, the source becomes {hp}"
            ));
        }
        Ok(why)
    }

    /// A reply from the backend of a translated connection, at the node
    /// that translated: the source goes back to the service address.
    fn untranslate(
        &self,
        node: &str,
        pkt: &mut Packet,
        nat: &Option<Nat>,
        reply: bool,
        by: &str,
    ) -> String {
        match nat {
            Some(n) if reply && n.node == node && pkt.src == n.backend => {
                pkt.src = n.vip;
                format!(
                    "{by}: reply source {} -> service address {}",
                    n.backend, n.vip
                )
            }
            _ => String::new(),
        }
    }

    /// Arrived on `iface` of `ns` (the hop is recorded): the programs at its
    /// tc ingress, then the host stack.
    #[allow(clippy::too_many_arguments)]
    fn arrive(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        pkt: &mut Packet,
        nat: &mut Option<Nat>,
        pick: Option<IpAddr>,
        reply: bool,
    ) -> Result<Loc, Verdict> {
        let node = self.node_of(ns);
        let progs = tc_programs(ns, iface, "ingress");
        let arrived_src = pkt.src;
        let mut notes = vec![];
        if let Some(v) = pkt.vlan.filter(|_| super::vlan::pops(&progs)) {
            pkt.vlan = None;
            // A VLAN with a macvlan port here goes into the port, untagged.
            if let Some(l) = self.to_port(hops, ns, iface, v, pkt) {
                return Ok(l);
            }
            notes.push(format!("VLAN {v} popped at tc ingress"));
        }
        if progs.iter().any(|p| p == "vlan_port_in") {
            return self.out_of_port(hops, ns, iface, pkt);
        }
        // A lower device of macvlans: the child with the frame's
        // destination takes it.
        if let Some(child) = self.world.links.iter().find(|l| {
            l.kind == "macvlan"
                && l.link_netns.as_deref() == Some(ns)
                && self
                    .world
                    .link(ns, iface)
                    .is_some_and(|me| l.link_index == Some(me.ifindex))
                && l.addrs.contains(&pkt.dst)
        }) {
            return Ok(Loc::In {
                netns: child.netns.clone(),
                iface: child.name.clone(),
                how: format!("the macvlan on {iface} with the destination's MAC"),
            });
        }
        if progs.iter().any(|p| p == "from_container") {
            let sent_from = pkt.src;
            // A hairpin's reply: the program's own reverse entry gives it
            // back its destination (the pod) and the service's address.
            let hp = IpAddr::from(strait_model::services::HAIRPIN_IP4);
            if let Some(n) = nat
                .as_ref()
                .filter(|n| reply && n.node == node && n.masquerade == Some(hp) && pkt.dst == hp)
            {
                notes.push(format!(
                    "from_container (strait_ct hairpin entry): destination {hp} -> the pod {}",
                    n.client
                ));
                pkt.dst = n.client;
            }
            // A masqueraded reply is for the node: the stack undoes the
            // masquerade, the translation is undone on the way out.
            let masqueraded = nat
                .as_ref()
                .is_some_and(|n| n.masquerade.is_some_and(|m| m != hp));
            let n = self.untranslate(
                &node,
                pkt,
                nat,
                reply && !masqueraded,
                "from_container (strait_ct reverse entry)",
            );
            if !n.is_empty() {
                notes.push(n);
            } else if !reply {
                let t = self.translate(&node, pkt, nat, pick, "from_container at tc ingress")?;
                if !t.is_empty() {
                    notes.push(t);
                }
            }
            if iface.starts_with(strait_model::naming::SVC_VETH_PREFIX) {
                // Bifrost's service veth: translated, then the host stack
                // forwards (and masquerades) it; a hairpin (the pod its own
                // backend) goes straight back in.
                let me = self.world.link(ns, iface).and_then(|l| self.world.peer(l));
                if let Some(pod) =
                    me.filter(|p| nat.is_some() && self.world.holds(&p.netns, pkt.dst))
                {
                    notes.push(format!(
                        "from_container on the service veth {iface}: a hairpin, back into the pod (bpf_redirect_peer)"
                    ));
                    hops.push(self.hop(
                        ns,
                        iface,
                        Dir::Out,
                        pkt,
                        Sight::Skipped("bpf_redirect_peer goes past the host veth".into()),
                        notes.join("; "),
                    ));
                    return Ok(Loc::In {
                        netns: pod.netns.clone(),
                        iface: pod.name.clone(),
                        how: "bpf_redirect_peer".into(),
                    });
                }
                notes.push("from_container: a service veth, on to the host stack".into());
            } else {
                notes.extend(self.policy(ns, pkt, reply)?);
                if let Some(l) = self.redirect_peer(hops, ns, iface, pkt, "from_container", &notes)
                {
                    return Ok(l);
                }
                return self.fast_forward(hops, ns, iface, pkt, notes, sent_from);
            }
        }
        if progs.iter().any(|p| p == "from_netdev") {
            if let Some(o) = pkt
                .outer
                .filter(|o| o.kind == "ipip" && self.world.holds(ns, o.dst))
            {
                pkt.outer = None;
                notes.push(format!("from_netdev opens IP-in-IP from {}", o.src));
            }
            // A packet still inside VXLAN is the outer one to the program:
            // no service or pod matches it; the VXLAN device's own
            // from_netdev sees the inner one.
            if pkt.outer.is_none() {
                // A masqueraded reply is for the node; the stack undoes the
                // masquerade and to-netdev the translation, on the way out.
                if nat.as_ref().is_none_or(|n| n.masquerade.is_none()) {
                    let n = self.untranslate(
                        &node,
                        pkt,
                        nat,
                        reply,
                        "from_netdev (strait_ct reverse entry)",
                    );
                    if !n.is_empty() {
                        notes.push(n);
                    }
                }
                if !reply {
                    let t = self.translate(&node, pkt, nat, pick, "from_netdev at tc ingress")?;
                    if !t.is_empty() {
                        notes.push(t);
                    }
                }
                notes.extend(self.policy(ns, pkt, reply)?);
                if let Some(l) = self.redirect_peer(hops, ns, iface, pkt, "from_netdev", &notes) {
                    return Ok(l);
                }
            }
            notes.push("from_netdev: not for a pod of this node, to the host stack".into());
        }
        if progs.iter().any(|p| p == "tunnel_decap") {
            if let Some(o) = pkt
                .outer
                .filter(|o| o.kind == "ipip" && self.world.holds(ns, o.dst))
            {
                pkt.outer = None;
                notes.push(format!(
                    "tunnel_decap at tc ingress opens IP-in-IP from {}",
                    o.src
                ));
            }
        }
        // The kernel's own VXLAN: the outer packet is for this namespace's
        // address, the inner one comes out of its VXLAN device.
        if let Some(o) = pkt
            .outer
            .filter(|o| o.kind == "vxlan" && self.world.holds(ns, o.dst))
        {
            let dev = self
                .world
                .links
                .iter()
                .find(|l| l.netns == ns && l.kind == "vxlan")
                .map(|l| l.name.clone())
                .ok_or_else(|| {
                    Verdict::Dropped(format!(
                        "{}: VXLAN for it but no VXLAN device",
                        self.label(ns)
                    ))
                })?;
            pkt.outer = None;
            return Ok(Loc::In {
                netns: ns.to_string(),
                iface: dev,
                how: format!(
                    "the kernel opens VXLAN from {} (UDP {})",
                    o.src,
                    strait_model::overlay::VXLAN_PORT
                ),
            });
        }
        if let Some(n) = nat
            .as_ref()
            .filter(|n| reply && n.masquerade == Some(pkt.dst))
        {
            let hairpin =
                pkt.dst == IpAddr::from(strait_model::services::HAIRPIN_IP4) && n.node == node;
            if (hairpin || self.world.holds(ns, pkt.dst)) && pkt.outer.is_none() {
                notes.push(format!(
                    "conntrack undoes the masquerade: {} -> client {}",
                    pkt.dst, n.client
                ));
                pkt.dst = n.client;
            }
        }
        // The host stack: nftables translates in prerouting (kernel
        // datapath), then the FIB.
        if self.nodes.contains_key(ns) && !self.ebpf(&node) && !reply && pkt.outer.is_none() {
            let t = self.translate(&node, pkt, nat, pick, "nftables DNAT in prerouting")?;
            if !t.is_empty() {
                notes.push(t);
            }
        }
        if pkt.outer.is_none() && self.world.holds(ns, pkt.dst) {
            return Err(Verdict::Delivered(self.label(ns)));
        }
        // netfilter's source NAT (masquerade, hairpin) comes after the
        // route lookup: the kernel routes by the source as it arrived.
        // A program's rewrite came before.
        let (dst, src) = match pkt.outer {
            Some(o) => (o.dst, o.src),
            None if !self.ebpf(&node) => (pkt.dst, arrived_src),
            None => (pkt.dst, pkt.src),
        };
        match route_get(ns, dst, src, Some(iface)) {
            RouteGet::Local => Err(Verdict::Delivered(self.label(ns))),
            RouteGet::Refused(r) if r.contains("Invalid argument") => {
                Err(Verdict::Dropped(format!(
                    "{}: the kernel will not forward it: the source {src} arriving on {iface} fails its source validation (EINVAL from the input route lookup)",
                    self.label(ns)
                )))
            }
            RouteGet::Refused(r) => Err(Verdict::Dropped(format!(
                "{}: {r} for {dst} (arriving on {iface})",
                self.label(ns)
            ))),
            RouteGet::Out {
                dev,
                gateway,
                table,
            } => {
                // The kernel datapath's policy: nftables' forward hook.
                if self.nodes.contains_key(ns) && !self.ebpf(&node) {
                    notes.extend(self.policy(ns, pkt, reply)?);
                }
                // The VPC: security groups on new connections between ENIs.
                if let Some(g) = self
                    .groups
                    .as_ref()
                    .filter(|_| !reply && self.label(ns) == "vpc")
                {
                    let judged = g.cross(iface, &dev, pkt.src, pkt.dst, pkt.udp, pkt.port);
                    notes.extend(judged.map_err(|why| Verdict::Dropped(format!("vpc: {why}")))?);
                }
                let masqueraded = nat.as_ref().is_some_and(|n| n.masquerade.is_some());
                if self.nodes.contains_key(ns) && (!self.ebpf(&node) || masqueraded) {
                    let by = if !self.ebpf(&node) {
                        "conntrack undoes the DNAT in postrouting"
                    } else if dev.starts_with(strait_model::naming::SVC_VETH_PREFIX) {
                        "to_container at the service veth's tc egress (strait_ct reverse entry)"
                    } else {
                        "to_netdev at tc egress (strait_ct reverse entry)"
                    };
                    let n = self.untranslate(&node, pkt, nat, reply, by);
                    if !n.is_empty() {
                        notes.push(n);
                    }
                }
                notes.push(format!(
                    "host stack forwards: {}",
                    route_words(dst, gateway, &dev, table.as_deref())
                ));
                // An external connection going on to another node's
                // backend is masqueraded to this node, so the reply comes
                // back here (the agent's nftables rule; the service's
                // mark). Not towards a local pod's host veth. So is all
                // that comes in by a macvlan pod's service veth (Bifrost).
                let svc_veth = iface.starts_with(strait_model::naming::SVC_VETH_PREFIX);
                if let Some(n) = nat.as_mut().filter(|n| {
                    !reply
                        && n.node == node
                        && n.masquerade.is_none()
                        && ((n.external
                            && !n.local_only
                            && !strait_model::naming::is_host_veth(&dev))
                            || svc_veth)
                }) {
                    // The device's address, or (one without) the node's:
                    // masquerade picks an address of the host.
                    let v4 = pkt.src.is_ipv4();
                    let masq = self
                        .world
                        .address_of(ns, &dev, v4)
                        .or_else(|| self.any_address(ns, v4));
                    if let Some(a) = masq {
                        let why = if svc_veth {
                            format!("it came in by the service veth {iface}")
                        } else if self.ebpf(&node) {
                            "from_netdev marked it".to_string()
                        } else {
                            "the service's nftables chain marked it".to_string()
                        };
                        notes.push(format!(
                            "nftables masquerades the client {} to {a} ({why})",
                            pkt.src
                        ));
                        pkt.src = a;
                        n.masquerade = Some(a);
                    }
                }
                self.out(hops, ns, &dev, gateway, pkt, notes.join("; "))
            }
        }
    }

    /// from-container / from-netdev: a destination in this node's
    /// strait_endpoints map goes straight into its pod (bpf_redirect_peer):
    /// its host veth is skipped.
    fn redirect_peer(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        pkt: &Packet,
        prog: &str,
        notes: &[String],
    ) -> Option<Loc> {
        let node = self.node_of(ns);
        let IpAddr::V4(d) = pkt.dst else { return None };
        if pkt.outer.is_some() {
            return None;
        }
        let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(&self.st.plan.name, &node));
        let map: strait_bpf::maps::EndpointMap =
            strait_bpf::maps::open(&pins, "strait_endpoints").ok()?;
        let ep = map.get(&strait_bpf::maps::ip_key(d), 0).ok()?;
        let host = self
            .world
            .links
            .iter()
            .find(|l| l.netns == ns && l.ifindex == ep.ifindex)?;
        let pod = self.world.peer(host)?;
        let mut why = notes.to_vec();
        let peer = self
            .status
            .get(&node)
            .and_then(|s| s.datapath.as_ref())
            .is_some_and(|d| d.redirect_peer);
        let (how, sight) = if peer {
            why.push(format!(
                "{prog} on {iface}: {d} is a pod of this node (strait_endpoints), bpf_redirect_peer into it"
            ));
            (
                "bpf_redirect_peer",
                Sight::Skipped("bpf_redirect_peer goes past the host veth".into()),
            )
        } else {
            why.push(format!(
                "{prog} on {iface}: {d} is a pod of this node (strait_endpoints), bpf_redirect to its host veth (this kernel has no bpf_redirect_peer)"
            ));
            ("from its host veth", Sight::Seen)
        };
        hops.push(self.hop(ns, &host.name, Dir::Out, pkt, sight, why.join("; ")));
        Some(Loc::In {
            netns: pod.netns.clone(),
            iface: pod.name.clone(),
            how: how.into(),
        })
    }

    /// from-container for a destination off this node: bpf_fib_lookup (the
    /// FIB `ip route get` asks), then IP-in-IP done by the program itself
    /// or bpf_redirect_neigh out of the FIB's device; the host stack is
    /// skipped. What the FIB does not forward goes to the stack.
    fn fast_forward(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        pkt: &mut Packet,
        mut notes: Vec<String>,
        sent_from: IpAddr,
    ) -> Result<Loc, Verdict> {
        // bpf_fib_lookup does not validate the source; the kernel's input
        // lookup does, and refuses a service address (its route is
        // unreachable). Asked with the source the pod sent.
        match route_get(ns, pkt.dst, sent_from, Some(iface)) {
            RouteGet::Out {
                dev,
                gateway,
                table,
            } => {
                notes.push(format!(
                    "from_container: bpf_fib_lookup {}",
                    route_words(pkt.dst, gateway, &dev, table.as_deref())
                ));
                let ifindex = self.world.link(ns, &dev).map(|l| l.ifindex);
                if ifindex.is_some() && self.tunnel_ifindex(ns) == ifindex {
                    let gw = gateway.unwrap_or(pkt.dst);
                    notes.push(format!(
                        "from_container wraps it in IP-in-IP to {gw} itself and redirects it out of the uplink"
                    ));
                    hops.push(self.hop(
                        ns,
                        &dev,
                        Dir::Out,
                        pkt,
                        Sight::Skipped("the program wraps and redirects before this device".into()),
                        notes.join("; "),
                    ));
                    return self.ipip_out(hops, ns, &dev, gw, pkt);
                }
                notes.push(format!(
                    "bpf_redirect_neigh out of {dev}, host stack skipped"
                ));
                self.out(hops, ns, &dev, gateway, pkt, notes.join("; "))
            }
            RouteGet::Local => Err(Verdict::Delivered(self.label(ns))),
            RouteGet::Refused(r) => Err(Verdict::Dropped(format!(
                "{}: {r} for {} (from_container hands it to the stack, which refuses)",
                self.label(ns),
                pkt.dst
            ))),
        }
    }

    /// Leave `ns` through `dev` towards `gateway` (or the destination):
    /// where the link leads, with any tunnel on the way.
    fn out(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        dev: &str,
        gateway: Option<IpAddr>,
        pkt: &mut Packet,
        why: String,
    ) -> Result<Loc, Verdict> {
        let link = self
            .world
            .link(ns, dev)
            .ok_or_else(|| Verdict::Dropped(format!("{}: no device {dev}", self.label(ns))))?
            .clone();
        let next_hop = gateway.unwrap_or(pkt.dst);
        if tc_programs(ns, dev, "egress")
            .iter()
            .any(|p| p == "tunnel_encap")
        {
            hops.push(self.hop(
                ns,
                dev,
                Dir::Out,
                pkt,
                Sight::Skipped(
                    "tunnel_encap at its tc egress wraps the packet and redirects it before a capture here".into(),
                ),
                why,
            ));
            return self.ipip_out(hops, ns, dev, next_hop, pkt);
        }
        let mut why = why;
        if pkt.vlan.is_none() && super::vlan::pushes(&tc_programs(ns, dev, "egress")) {
            let node = self.nodes.get(ns).map(String::as_str);
            if let Some(v) = super::vlan::Tagger::of(&self.st.plan.name, &self.label(ns), node)
                .and_then(|t| t.tag(pkt.src, pkt.dst))
            {
                pkt.vlan = Some(v);
                why.push_str(&format!(
                    "; VLAN {v} pushed at {dev}'s tc egress (strait_vlan_subnets)"
                ));
            }
        }
        hops.push(self.hop(ns, dev, Dir::Out, pkt, Sight::Seen, why));
        if link.kind == "vxlan" {
            let remote = live::vxlan_remote(ns, dev, next_hop).ok_or_else(|| {
                Verdict::Dropped(format!(
                    "{}: {dev} has no FDB entry for {next_hop}'s MAC",
                    self.label(ns)
                ))
            })?;
            let v4 = remote.is_ipv4();
            let RouteGet::Out {
                dev: up, gateway, ..
            } = route_get(ns, remote, self.any_address(ns, v4).unwrap_or(remote), None)
            else {
                return Err(Verdict::Dropped(format!(
                    "{}: no route to the VXLAN remote {remote}",
                    self.label(ns)
                )));
            };
            let local = self.world.address_of(ns, &up, v4).unwrap_or(remote);
            pkt.outer = Some(Encap {
                kind: "vxlan",
                src: local,
                dst: remote,
            });
            hops.push(self.hop(
                ns,
                &up,
                Dir::Out,
                pkt,
                Sight::Seen,
                format!("{dev} encapsulates: VXLAN to {remote} (FDB: {next_hop}'s MAC)"),
            ));
            return self.l2(ns, &up, gateway.unwrap_or(remote));
        }
        // A pod's macvlan: a sibling on the same lower device gets the
        // frame directly (bridge mode); anything else leaves by the lower
        // device (Bifrost's VLAN port, eth0-<vid>).
        if link.kind == "macvlan" && link.link_netns.is_some() {
            let to = self.world.receiver(ns, dev, next_hop);
            let sibling = to.is_some_and(|r| {
                r.kind == "macvlan"
                    && r.link_index == link.link_index
                    && r.link_netns == link.link_netns
            });
            if let (true, Some(to)) = (sibling, to) {
                return Ok(Loc::In {
                    netns: to.netns.clone(),
                    iface: to.name.clone(),
                    how: format!(
                        "the macvlan bridges it to {}'s {}",
                        self.label(&to.netns),
                        to.name
                    ),
                });
            }
            if let Some(parent) = self.world.peer(&link).cloned() {
                *self.frame_to.borrow_mut() = Some((ns.to_string(), dev.to_string(), next_hop));
                return self.out(
                    hops,
                    &parent.netns,
                    &parent.name,
                    gateway,
                    pkt,
                    format!(
                        "the macvlan hands {}'s frame to its lower device",
                        self.label(ns)
                    ),
                );
            }
        }
        if link.kind == "veth" {
            if let Some(peer) = self.world.peer(&link) {
                if peer.master.is_none() {
                    return Ok(Loc::In {
                        netns: peer.netns.clone(),
                        iface: peer.name.clone(),
                        how: format!("from {}'s {dev}", self.label(ns)),
                    });
                }
            }
        }
        self.l2(ns, dev, next_hop)
    }

    /// A tagged frame whose VLAN has a macvlan port on this node
    /// (strait_vlan_ports): untagged and redirected to the port's far end
    /// (trunk<vid>), whose peer is the macvlans' lower device.
    fn to_port(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        vid: u16,
        pkt: &Packet,
    ) -> Option<Loc> {
        let node = self.nodes.get(ns)?;
        let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(&self.st.plan.name, node));
        let ports: strait_bpf::vlan::PortMap =
            strait_bpf::maps::open(&pins, "strait_vlan_ports").ok()?;
        let port = ports.get(&u32::from(vid), 0).ok()?;
        let far = self.world.by_index(ns, port.ifindex)?;
        let lower = self.world.peer(far)?;
        hops.push(self.hop(
            ns,
            &far.name,
            Dir::Out,
            pkt,
            Sight::Seen,
            format!("{iface}'s tc ingress: VLAN {vid} has a macvlan port here (strait_vlan_ports): untagged, redirected to {}", far.name),
        ));
        Some(Loc::In {
            netns: lower.netns.clone(),
            iface: lower.name.clone(),
            how: format!("from {}", far.name),
        })
    }

    /// vlan_port_in at a port's far end: the port's tag pushed, out of the
    /// uplink (strait_vlan_trunks), to the next hop the pod resolved.
    fn out_of_port(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        pkt: &mut Packet,
    ) -> Result<Loc, Verdict> {
        let drop = |why: &str| Verdict::Dropped(format!("{}: {why}", self.label(ns)));
        let node = self
            .nodes
            .get(ns)
            .ok_or_else(|| drop("a VLAN port outside a node"))?;
        let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(&self.st.plan.name, node));
        let me = self
            .world
            .link(ns, iface)
            .ok_or_else(|| drop("no such port"))?;
        let trunks: strait_bpf::vlan::PortMap = strait_bpf::maps::open(&pins, "strait_vlan_trunks")
            .map_err(|e| drop(&format!("strait_vlan_trunks: {e}")))?;
        let port = trunks.get(&me.ifindex, 0).map_err(|_| {
            drop(&format!(
                "vlan_port_in on {iface} drops it: no port in strait_vlan_trunks"
            ))
        })?;
        let uplink = self
            .world
            .by_index(ns, port.uplink)
            .ok_or_else(|| drop("the port's uplink is gone"))?;
        pkt.vlan = Some(port.vid);
        hops.push(self.hop(
            ns,
            &uplink.name,
            Dir::Out,
            pkt,
            Sight::Seen,
            format!(
                "vlan_port_in on {iface} pushes VLAN {} and redirects out of {}",
                port.vid, uplink.name
            ),
        ));
        let (from_ns, from_dev, nh) = self
            .frame_to
            .borrow_mut()
            .take()
            .ok_or_else(|| drop("a frame in a VLAN port with no next hop"))?;
        let to = self
            .world
            .receiver(&from_ns, &from_dev, nh)
            .ok_or_else(|| drop(&format!("nobody holds the next hop {nh}")))?;
        let (netns, iface) = self.entry(to);
        Ok(Loc::In {
            netns,
            iface,
            how: format!("from {} across the segment (next hop {nh})", self.label(ns)),
        })
    }

    /// IP-in-IP out of the stand-in device's parent, to `node`.
    fn ipip_out(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        standin: &str,
        node: IpAddr,
        pkt: &mut Packet,
    ) -> Result<Loc, Verdict> {
        let parent = self
            .world
            .link(ns, standin)
            .and_then(|l| self.world.peer(l))
            .ok_or_else(|| {
                Verdict::Dropped(format!("{}: {standin} has no uplink", self.label(ns)))
            })?
            .clone();
        let local = self
            .world
            .address_of(ns, &parent.name, node.is_ipv4())
            .unwrap_or(node);
        pkt.outer = Some(Encap {
            kind: "ipip",
            src: local,
            dst: node,
        });
        hops.push(self.hop(
            ns,
            &parent.name,
            Dir::Out,
            pkt,
            Sight::Seen,
            format!("IP-in-IP to node {node}: the capture sees the outer header"),
        ));
        self.l2(ns, &parent.name, node)
    }

    /// Across a shared segment (a bridge, the fabric): the interface the
    /// neighbour table sends the next hop's frames to receives it.
    fn l2(&self, ns: &str, dev: &str, next_hop: IpAddr) -> Result<Loc, Verdict> {
        let owner = self.world.receiver(ns, dev, next_hop).ok_or_else(|| {
            Verdict::Dropped(format!(
                "{}: no namespace of the lab holds the next hop {next_hop}",
                self.label(ns)
            ))
        })?;
        let (netns, iface) = self.entry(owner);
        Ok(Loc::In {
            netns,
            iface,
            how: format!(
                "from {} across the segment (next hop {next_hop})",
                self.label(ns)
            ),
        })
    }

    /// Where a frame for `to` enters from the segment: a pod's macvlan is
    /// reached through its node's uplink (and the VLAN port behind it);
    /// anything else directly.
    fn entry(&self, to: &live::Link) -> (String, String) {
        if let (true, Some(node_ns)) = (to.kind == "macvlan", to.link_netns.as_ref()) {
            if self.nodes.contains_key(node_ns) && self.world.link(node_ns, "eth0").is_some() {
                return (node_ns.clone(), "eth0".into());
            }
        }
        (to.netns.clone(), to.name.clone())
    }

    /// The lab pod of `node` holding `ip`.
    fn local_pod(&self, node: &str, ip: IpAddr) -> Option<String> {
        self.st
            .plan
            .pods
            .iter()
            .find(|p| p.node == node && self.st.pod_ip(p) == Some(ip))
            .map(live::pod_label)
    }

    /// NetworkPolicy where `ns` (a node) enforces it on a new connection:
    /// the sender's egress if it is a pod of this node, the receiver's
    /// ingress if it is, as the node's agent compiles them (the compiler
    /// its policy reconciler programs from). Replies belong to an allowed
    /// connection. The note, or the drop.
    fn policy(&self, ns: &str, pkt: &Packet, reply: bool) -> Result<Vec<String>, Verdict> {
        let node = self.node_of(ns);
        let (out, inn) = (
            self.local_pod(&node, pkt.src),
            self.local_pod(&node, pkt.dst),
        );
        if reply || (out.is_none() && inn.is_none()) {
            return Ok(vec![]);
        }
        let Some(n) = self.st.plan.node(&node) else {
            return Ok(vec![]);
        };
        let req = strait_model::api::Request::PolicyExplain {
            src: pkt.src.to_string(),
            dst: pkt.dst.to_string(),
            port: pkt.port,
            proto: if pkt.udp {
                strait_model::policy::Proto::Udp
            } else {
                strait_model::policy::Proto::Tcp
            },
        };
        let v = match strait_cni::client::call(&self.st.socket(n), &req) {
            Ok(strait_model::api::Response::PolicyVerdict(e)) => e.verdict,
            Ok(_) | Err(_) => {
                return Ok(vec![format!("NetworkPolicy: {node}'s agent did not say")])
            }
        };
        let mut notes = vec![];
        for (who, dir, d) in [(out, "egress", &v.egress), (inn, "ingress", &v.ingress)] {
            let Some(who) = who else { continue };
            if matches!(
                d,
                strait_model::policy::Decision::NotIsolated
                    | strait_model::policy::Decision::Loopback
            ) {
                continue;
            }
            if !d.allows() {
                return Err(Verdict::Dropped(format!(
                    "NetworkPolicy on {node}: {dir} of {who} {d}"
                )));
            }
            notes.push(format!("NetworkPolicy: {dir} of {who} {d}"));
        }
        Ok(notes)
    }

    /// The IP-in-IP stand-in device from-container wraps for
    /// (strait_tunnel; none: no tunnel).
    fn tunnel_ifindex(&self, ns: &str) -> Option<u32> {
        let node = self.node_of(ns);
        let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(&self.st.plan.name, &node));
        let m: strait_bpf::maps::TunnelMap = strait_bpf::maps::open(&pins, "strait_tunnel").ok()?;
        let cfg = m.get(&0, 0).ok()?;
        (cfg.ifindex != 0).then_some(cfg.ifindex)
    }

    fn any_address(&self, ns: &str, v4: bool) -> Option<IpAddr> {
        self.world
            .links
            .iter()
            .filter(|l| l.netns == ns)
            .flat_map(|l| l.addrs.iter().copied())
            .find(|a| a.is_ipv4() == v4)
    }
}

/// "198.19.1.0 via 198.18.0.2 dev eth0 (table 1003)" in words.
fn route_words(dst: IpAddr, gateway: Option<IpAddr>, dev: &str, table: Option<&str>) -> String {
    let mut s = match gateway {
        Some(g) => format!("route to {dst} via {g} dev {dev}"),
        None => format!("route to {dst} dev {dev} (on-link)"),
    };
    if let Some(t) = table.filter(|t| *t != "main") {
        s.push_str(&format!(" in table {t}"));
    }
    s
}
