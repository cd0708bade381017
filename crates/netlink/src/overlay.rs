//! Kernel objects of the overlays and policy routing: VXLAN devices, their
//! forwarding database (FDB), routing rules, and routes in tables other than
//! main. Address-family generic: every address is an `IpAddr`.

use crate::rt::{link_from, nl, Link, Netlink};
use crate::{KernelError, Result};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteProtocol, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{IpVersion, LinkVxlan};
use std::net::IpAddr;

/// A VXLAN device's settings, as strait creates and checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// The VTEP address (the node's IP).
    pub local: Option<IpAddr>,
    /// The underlay device's index.
    pub dev: Option<u32>,
    pub learning: bool,
}

/// One FDB entry of a device: frames to `mac` go to the VTEP `dst`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// A routing rule, in the terms strait uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub priority: u32,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    /// Input interface name.
    pub iif: Option<String>,
    pub table: u32,
    /// The `protocol` it carries (strait's marks its own).
    pub protocol: u8,
}

impl Netlink {
    /// Create a VXLAN device (down; the caller sets its MTU and brings it
    /// up). Learning as given, no multicast group.
    pub async fn create_vxlan(
        &self,
        name: &str,
        v: &Vxlan,
        mac: Option<[u8; 6]>,
        mtu: u32,
    ) -> Result<()> {
        let mut b = LinkVxlan::new(name, v.vni)
            .port(v.port)
            .learning(v.learning)
            .mtu(mtu);
        if let Some(mac) = mac {
            b = b.address(mac.to_vec());
        }
        if let Some(dev) = v.dev {
            b = b.dev(dev);
        }
        match v.local {
            Some(IpAddr::V4(a)) => b = b.local(a),
            Some(IpAddr::V6(a)) => b = b.local6(a),
            None => {}
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl(format!("create vxlan device {name}")))
    }

    /// Create a macvlan of `lower` (a link in this namespace) in bridge
    /// mode, made directly in the namespace `netns_fd` under `name` (the
    /// pod's eth0 in macvlan mode), with a MAC of our choosing; left down.
    pub async fn create_macvlan_in(
        &self,
        name: &str,
        lower: u32,
        mac: [u8; 6],
        mtu: u32,
        netns_fd: i32,
    ) -> Result<()> {
        let msg = rtnetlink::LinkMacVlan::new(
            name,
            lower,
            rtnetlink::packet_route::link::MacVlanMode::Bridge,
        )
        .address(mac.to_vec())
        .mtu(mtu)
        .setns_by_fd(netns_fd)
        .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create macvlan {name} on link #{lower}")))
    }

    /// Create a stand-in device for a tunnel done in eBPF: a macvlan of
    /// `lower` in source mode with no sources listed, so it receives
    /// nothing; no ARP (its neighbours need no resolution); up. Routes point
    /// at it and a tc egress program takes every packet it would send.
    pub async fn create_standin(&self, name: &str, lower: u32, mtu: u32) -> Result<()> {
        let msg = rtnetlink::LinkMacVlan::new(
            name,
            lower,
            rtnetlink::packet_route::link::MacVlanMode::Source,
        )
        .mtu(mtu)
        .arp(false)
        .up()
        .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create macvlan {name}")))
    }

    /// The link named `name`, if there is one, with its settings when it is
    /// a VXLAN device (one request for both).
    pub async fn vxlan(&self, name: &str) -> Result<Option<(Link, Option<Vxlan>)>> {
        let mut s = self.handle.link().get().match_name(name).execute();
        let msg = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => {
                let e = nl(format!("get link {name}"))(e);
                return if e.is_not_found() { Ok(None) } else { Err(e) };
            }
        };
        let mut out = None;
        for a in &msg.attributes {
            let LinkAttribute::LinkInfo(infos) = a else {
                continue;
            };
            let is_vxlan = infos
                .iter()
                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
            for i in infos {
                if let (true, LinkInfo::Data(InfoData::Vxlan(attrs))) = (is_vxlan, i) {
                    let mut v = Vxlan {
                        vni: 0,
                        port: 0,
                        local: None,
                        dev: None,
                        learning: false,
                    };
                    for x in attrs {
                        match x {
                            InfoVxlan::Id(id) => v.vni = *id,
                            InfoVxlan::Port(p) => v.port = *p,
                            InfoVxlan::Local(a) => v.local = Some((*a).into()),
                            InfoVxlan::Local6(a) => v.local = Some((*a).into()),
                            InfoVxlan::Link(l) => v.dev = Some(*l),
                            InfoVxlan::Learning(l) => v.learning = *l,
                            _ => {}
                        }
                    }
                    out = Some(v);
                }
            }
        }
        Ok(Some((link_from(msg), out)))
    }

    /// Permanent FDB entries of a device that point at a remote VTEP.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut req = self.handle.neighbours().get();
        req.message_mut().header.family = AddressFamily::Bridge;
        let msgs: Vec<NeighbourMessage> =
            req.execute().try_collect().await.map_err(nl("dump fdb"))?;
        let mut out = vec![];
        for m in msgs {
            if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                continue;
            }
            let (mut mac, mut dst) = (None, None);
            for a in m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(v6))
                    }
                    // A bridge-family message leaves the VTEP's family open.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst) {
                out.push(FdbEntry { mac, dst });
            }
        }
        out.sort();
        Ok(out)
    }

    fn fdb_message(index: u32, e: &FdbEntry) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unspec;
        // The device's own FDB (NTF_SELF), not a bridge master's.
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(match e.dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        m
    }

    /// Add an FDB entry beside those of the same MAC (`bridge fdb append`):
    /// the all-zeros MAC has one entry per remote VTEP, for BUM traffic.
    pub async fn append_fdb(&self, index: u32, e: &FdbEntry) -> Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(Self::fdb_message(
            index, e,
        )));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.acked(req, format!("append fdb {:02x?} -> {}", e.mac, e.dst))
            .await
    }

    /// Send a request with flags of the caller's choosing; wait for its ack.
    pub(crate) async fn acked(
        &self,
        req: NetlinkMessage<RouteNetlinkMessage>,
        op: String,
    ) -> Result<()> {
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(nl(op.clone()))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(err) = m.payload {
                if err.code.is_some() {
                    return Err(KernelError::Netlink {
                        op,
                        source: rtnetlink::Error::NetlinkError(err),
                    });
                }
            }
        }
        Ok(())
    }

    /// Delete an FDB entry. Idempotent: deleting what is not there is no
    /// error (a VXLAN device answers success for an unknown remote anyway).
    pub async fn delete_fdb(&self, index: u32, e: &FdbEntry) -> Result<()> {
        match self
            .handle
            .neighbours()
            .del(Self::fdb_message(index, e))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(err) => {
                let err = nl(format!("delete fdb {:02x?} -> {}", e.mac, e.dst))(err);
                if err.is_not_found() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Delete a neighbour entry; idempotent.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl(format!("delete neighbour {ip} on link #{index}"))(e);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The rules of one address family.
    pub async fn rules(&self, v4: bool) -> Result<Vec<Rule>> {
        let v = if v4 { IpVersion::V4 } else { IpVersion::V6 };
        let msgs: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(v)
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump rules"))?;
        Ok(msgs.into_iter().map(rule_from).collect())
    }

    fn rule_message(r: &Rule) -> RuleMessage {
        let mut m = RuleMessage::default();
        let v4 = match (r.src, r.dst) {
            (Some(n), _) | (None, Some(n)) => n.addr().is_ipv4(),
            (None, None) => true,
        };
        m.header.family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.action = RuleAction::ToTable;
        m.header.table = if r.table < 256 { r.table as u8 } else { 0 };
        m.attributes.push(RuleAttribute::Table(r.table));
        m.attributes.push(RuleAttribute::Priority(r.priority));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(r.protocol)));
        if let Some(s) = r.src {
            m.header.src_len = s.prefix_len();
            m.attributes.push(RuleAttribute::Source(s.addr()));
        }
        if let Some(d) = r.dst {
            m.header.dst_len = d.prefix_len();
            m.attributes.push(RuleAttribute::Destination(d.addr()));
        }
        if let Some(i) = &r.iif {
            m.attributes.push(RuleAttribute::Iifname(i.clone()));
        }
        m
    }

    pub async fn add_rule(&self, r: &Rule) -> Result<()> {
        let mut req = self.handle.rule().add();
        *req.message_mut() = Self::rule_message(r);
        req.execute().await.map_err(nl(format!("add rule {r:?}")))
    }

    /// Delete a rule; false when it did not exist.
    pub async fn delete_rule(&self, r: &Rule) -> Result<bool> {
        match self
            .handle
            .rule()
            .del(Self::rule_message(r))
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl(format!("delete rule {r:?}"))(e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

fn rule_from(m: RuleMessage) -> Rule {
    let mut r = Rule {
        priority: 0,
        src: None,
        dst: None,
        iif: None,
        table: m.header.table as u32,
        protocol: 0,
    };
    for a in m.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = p,
            RuleAttribute::Table(t) => r.table = t,
            RuleAttribute::Source(s) => r.src = IpNet::new(s, m.header.src_len).ok(),
            RuleAttribute::Destination(d) => r.dst = IpNet::new(d, m.header.dst_len).ok(),
            RuleAttribute::Iifname(i) => r.iif = Some(i),
            RuleAttribute::Protocol(p) => r.protocol = u8::from(p),
            _ => {}
        }
    }
    r
}
