//! Arriving on an interface: the programs at its tc ingress (from-container,
//! from-netdev, tunnel_decap, the VLAN programs), then the host stack:
//! nftables' translation, policy and masquerade, the VPC's security
//! groups, and the FIB.

use super::live::RouteGet;
use super::walk::{route_words, Loc, Walker};
use super::{Dir, Hop, Nat, Packet, Sight, Verdict};
use std::net::IpAddr;

impl Walker<'_> {
    /// Arrived on `iface` of `ns` (the hop is recorded): the programs at its
    /// tc ingress, then the host stack.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn arrive(
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
        let progs = self.progs(ns, iface, "ingress");
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
        if self.scope.nodes.contains_key(ns) && !self.ebpf(&node) && !reply && pkt.outer.is_none() {
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
        match self.world.route_get(ns, dst, src, Some(iface)) {
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
                if self.scope.nodes.contains_key(ns) && !self.ebpf(&node) {
                    notes.extend(self.policy(ns, pkt, reply)?);
                }
                // The VPC: security groups on new connections between ENIs.
                if let Some(g) = self
                    .scope
                    .groups
                    .as_ref()
                    .filter(|_| !reply && self.label(ns) == "vpc")
                {
                    let judged = g.cross(iface, &dev, pkt.src, pkt.dst, pkt.udp, pkt.port);
                    notes.extend(judged.map_err(|why| Verdict::Dropped(format!("vpc: {why}")))?);
                }
                let masqueraded = nat.as_ref().is_some_and(|n| n.masquerade.is_some());
                if self.scope.nodes.contains_key(ns) && (!self.ebpf(&node) || masqueraded) {
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
}
