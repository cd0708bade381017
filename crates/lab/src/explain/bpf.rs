//! The eBPF programs' own forwarding decisions, read from the maps they
//! read: bpf_redirect_peer into a pod of this node, bpf_fib_lookup and
//! bpf_redirect_neigh or IP-in-IP, and Bifrost's VLAN ports.

use super::live::RouteGet;
use super::walk::{route_words, Loc, Walker};
use super::{Dir, Hop, Packet, Sight, Verdict};
use std::net::IpAddr;
use strait_model::api::MapQuestion;

impl Walker<'_> {
    /// from-container / from-netdev: a destination in this node's
    /// strait_endpoints map goes straight into its pod (bpf_redirect_peer):
    /// its host veth is skipped.
    pub(super) fn redirect_peer(
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
        let ep = self
            .scope
            .site
            .map(&node, &MapQuestion::Endpoint { ip: d.into() })?;
        let host = self
            .world
            .links
            .iter()
            .find(|l| l.netns == ns && l.ifindex == ep.ifindex)?;
        let pod = self.world.peer(host)?;
        let mut why = notes.to_vec();
        let peer = self.status.get(&node).is_some_and(|s| s.redirect_peer);
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
    pub(super) fn fast_forward(
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
        match self.world.route_get(ns, pkt.dst, sent_from, Some(iface)) {
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

    /// The IP-in-IP stand-in device from-container wraps for
    /// (strait_tunnel; none: no tunnel).
    pub(super) fn tunnel_ifindex(&self, ns: &str) -> Option<u32> {
        let node = self.node_of(ns);
        self.scope
            .site
            .map(&node, &MapQuestion::Tunnel)
            .map(|e| e.ifindex)
    }

    /// A tagged frame whose VLAN has a macvlan port on this node
    /// (strait_vlan_ports): untagged and redirected to the port's far end
    /// (trunk<vid>), whose peer is the macvlans' lower device.
    pub(super) fn to_port(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        vid: u16,
        pkt: &Packet,
    ) -> Option<Loc> {
        let node = self.scope.nodes.get(ns)?;
        let port = self.scope.site.map(node, &MapQuestion::VlanPort { vid })?;
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
    pub(super) fn out_of_port(
        &self,
        hops: &mut Vec<Hop>,
        ns: &str,
        iface: &str,
        pkt: &mut Packet,
    ) -> Result<Loc, Verdict> {
        let drop = |why: &str| Verdict::Dropped(format!("{}: {why}", self.label(ns)));
        let node = self
            .scope
            .nodes
            .get(ns)
            .ok_or_else(|| drop("a VLAN port outside a node"))?;
        let me = self
            .world
            .link(ns, iface)
            .ok_or_else(|| drop("no such port"))?;
        let port = self
            .scope
            .site
            .map(
                node,
                &MapQuestion::VlanTrunk {
                    ifindex: me.ifindex,
                },
            )
            .ok_or_else(|| {
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
        let Some(to) = self.world.receiver(&from_ns, &from_dev, nh) else {
            return Err(self.beyond(ns, &uplink.name, nh));
        };
        let (netns, iface) = self.entry(to);
        Ok(Loc::In {
            netns,
            iface,
            how: format!("from {} across the segment (next hop {nh})", self.label(ns)),
        })
    }
}
