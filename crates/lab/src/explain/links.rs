//! Leaving a namespace: where a device leads (a veth's peer, a macvlan's
//! lower device, a VXLAN or IP-in-IP tunnel, a shared segment by MAC).

use super::live::{self, RouteGet};
use super::walk::{Loc, Walker};
use super::{Dir, Encap, Hop, Packet, Sight, Verdict};
use std::net::IpAddr;

impl Walker<'_> {
    /// Leave `ns` through `dev` towards `gateway` (or the destination):
    /// where the link leads, with any tunnel on the way.
    pub(super) fn out(
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
        if self
            .progs(ns, dev, "egress")
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
        if pkt.vlan.is_none() && super::vlan::pushes(&self.progs(ns, dev, "egress")) {
            let node = self.scope.nodes.get(ns).map(String::as_str);
            if let Some(v) = super::vlan::Tagger::of(self.scope.site, &self.label(ns), node)
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
            let remote = self.world.vxlan_remote(ns, dev, next_hop).ok_or_else(|| {
                Verdict::Dropped(format!(
                    "{}: {dev} has no FDB entry for {next_hop}'s MAC",
                    self.label(ns)
                ))
            })?;
            let v4 = remote.is_ipv4();
            let RouteGet::Out {
                dev: up, gateway, ..
            } = self
                .world
                .route_get(ns, remote, self.any_address(ns, v4).unwrap_or(remote), None)
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

    /// IP-in-IP out of the stand-in device's parent, to `node`.
    pub(super) fn ipip_out(
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
    pub(super) fn l2(&self, ns: &str, dev: &str, next_hop: IpAddr) -> Result<Loc, Verdict> {
        let Some(owner) = self.world.receiver(ns, dev, next_hop) else {
            return Err(self.beyond(ns, dev, next_hop));
        };
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

    /// Nobody read holds the next hop: in the lab a drop; on a node, where
    /// the flow leaves what explain can read.
    pub(super) fn beyond(&self, ns: &str, dev: &str, next_hop: IpAddr) -> Verdict {
        if self.scope.whole {
            return Verdict::Dropped(format!(
                "{}: no namespace of {} holds the next hop {next_hop}",
                self.label(ns),
                self.scope.what
            ));
        }
        let from = format!("{} out of {dev}", self.label(ns));
        Verdict::Left(match self.scope.node_at(next_hop) {
            Some(n) => match self.scope.unreachable.get(n) {
                Some(why) => format!(
                    "continues on node {n} ({next_hop}) from {from}, whose agent did not answer: {why}"
                ),
                None => format!("continues on node {n} ({next_hop}) from {from}"),
            },
            None => format!(
                "leaves {from} for {next_hop}, which is not a node whose agent answers (a router, or outside the cluster)"
            ),
        })
    }

    /// Where a frame for `to` enters from the segment: a pod's macvlan is
    /// reached through its node's uplink (and the VLAN port behind it);
    /// anything else directly.
    pub(super) fn entry(&self, to: &live::Link) -> (String, String) {
        if let (true, Some(node_ns)) = (to.kind == "macvlan", to.link_netns.as_ref()) {
            if self.scope.nodes.contains_key(node_ns) && self.world.link(node_ns, "eth0").is_some()
            {
                return (node_ns.clone(), "eth0".into());
            }
        }
        (to.netns.clone(), to.name.clone())
    }
}
