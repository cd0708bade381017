use crate::{KernelError, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    AddressFamily,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;

/// Run a future to completion on a fresh single-threaded runtime. Used by
/// short-lived callers (the CNI plugin, namespace helper threads).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a current-thread tokio runtime")
        .block_on(f)
}

/// Which routes a dump returns: one table, optionally one protocol's, or
/// those out of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteFilter {
    pub table: u32,
    pub protocol: Option<u8>,
    pub oif: Option<u32>,
}

impl RouteFilter {
    pub fn table(table: u32) -> Self {
        RouteFilter {
            table,
            protocol: None,
            oif: None,
        }
    }
}

/// A route-netlink connection in the namespace it was opened in.
pub struct Netlink {
    pub(crate) handle: Handle,
    /// A second socket with strict checking (NETLINK_GET_STRICT_CHK): its
    /// route dumps are filtered by the kernel (by table and protocol), so
    /// reading strait's own routes never copies a 100 000-route BGP table.
    /// Strict checking is not turned on for `handle`: it changes what
    /// every other dump accepts.
    strict: Handle,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace);
    /// for a macvlan or VXLAN device, its lower device.
    pub peer_index: Option<u32>,
    /// The device answers no ARP and needs none (IFF_NOARP).
    pub noarp: bool,
    /// Its kind ("veth", "vxlan", "macvlan", ...), when it has one.
    pub kind: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    /// Answers with ICMP host unreachable.
    Unreachable,
}

/// The main routing table's id.
pub const MAIN_TABLE: u32 = 254;

/// A route, in the terms strait uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub oif: Option<u32>,
    pub kind: RouteKind,
    pub protocol: u8,
    /// The routing table ([`MAIN_TABLE`] unless policy routing says else).
    pub table: u32,
    /// The gateway is on the link even though no address of the link's
    /// covers it (an overlay's next hop: `via GW dev vxlan onlink`).
    pub onlink: bool,
    /// Equal-cost next hops (ECMP): when not empty, the route goes via
    /// each of these (sorted) and `via` is None.
    pub multipath: Vec<IpAddr>,
}

pub(crate) fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Netlink { op, source }
}

pub(crate) fn link_from(msg: LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        mac: vec![],
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        peer_index: None,
        noarp: msg.header.flags.contains(LinkFlags::Noarp),
        kind: None,
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Address(m) => l.mac = m,
            LinkAttribute::Mtu(m) => l.mtu = m,
            LinkAttribute::Link(i) => l.peer_index = Some(i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let rtnetlink::packet_route::link::LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn route_from(msg: RouteMessage) -> Option<Route> {
    let kind = match msg.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        _ => return None,
    };
    let mut dst: Option<IpAddr> = None;
    let mut via = None;
    let mut oif = None;
    let mut table = msg.header.table as u32;
    let mut multipath: Vec<IpAddr> = vec![];
    for a in msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(v4.into()),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => dst = Some(v6.into()),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => via = Some(v4.into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => via = Some(v6.into()),
            RouteAttribute::Oif(i) => oif = Some(i),
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    for a in h.attributes {
                        match a {
                            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => {
                                multipath.push(v4.into())
                            }
                            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => {
                                multipath.push(v6.into())
                            }
                            _ => {}
                        }
                    }
                }
                multipath.sort();
            }
            _ => {}
        }
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(0.into()),
        (None, AddressFamily::Inet6) => IpAddr::V6(0.into()),
        _ => return None,
    };
    Some(Route {
        dst: IpNet::new(dst, msg.header.destination_prefix_length).ok()?,
        via,
        oif,
        kind,
        protocol: u8::from(msg.header.protocol),
        table,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        multipath,
    })
}

impl Netlink {
    /// Open a connection in the calling thread's network namespace. Must be
    /// called inside a tokio runtime (the connection task is spawned on it).
    pub fn connect() -> Result<Self> {
        let io = |source| KernelError::Io {
            what: "open a netlink socket".into(),
            source,
        };
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io)?;
        tokio::spawn(conn);
        let (conn, strict, _) = rtnetlink::new_connection_with_strict_check().map_err(io)?;
        tokio::spawn(conn);
        Ok(Netlink { handle, strict })
    }

    /// Open a connection in the namespace `ns` from the calling thread's
    /// runtime: only the socket is created inside `ns` (on a helper thread);
    /// the socket stays bound to `ns` for its whole life.
    pub fn connect_in(ns: &crate::NetnsFile) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let ((conn, handle, _), strict) = crate::in_netns(ns, move || {
            // The sockets register with the caller's reactor.
            let _enter = rt.enter();
            Ok::<_, std::io::Error>((
                rtnetlink::new_connection()?,
                rtnetlink::new_connection_with_strict_check()?,
            ))
        })?
        .map_err(|source| KernelError::Io {
            what: "open a netlink socket in the pod namespace".into(),
            source,
        })?;
        tokio::spawn(conn);
        let (conn, strict, _) = strict;
        tokio::spawn(conn);
        Ok(Netlink { handle, strict })
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.map(link_from)),
            Err(e) => {
                let e = nl(format!("get link {name}"))(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(link_from)
            .try_collect()
            .await
            .map_err(nl("dump links"))
    }

    /// Create a veth pair whose peer is born directly in the namespace
    /// `peer_netns_fd` (no separate move), with fixed MACs on both ends.
    pub async fn create_veth(
        &self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        peer_netns_fd: i32,
        mtu: u32,
    ) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(peer_mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(peer_netns_fd)
            .build();
        let msg = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .address(host_mac.to_vec())
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create veth {host} (peer {peer})")))
    }

    /// Delete a link by name. Returns false when it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(l) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(l.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl(format!("delete link {name}"))(e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(format!("set link #{index} up")))
    }

    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(nl(format!("add address {ip}/{prefix} to link #{index}"))(e)),
        }
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("dump addresses of link #{index}")))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let plen = m.header.prefix_len;
                m.attributes.into_iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(ip, plen).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    fn route_message(route: &Route) -> RouteMessage {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .expect("address family is consistent")
            .protocol(RouteProtocol::from(route.protocol))
            .table_id(route.table)
            .kind(match route.kind {
                RouteKind::Unicast => RouteType::Unicast,
                RouteKind::Blackhole => RouteType::BlackHole,
                RouteKind::Unreachable => RouteType::Unreachable,
            });
        if let Some(oif) = route.oif {
            b = b.output_interface(oif);
        }
        if let Some(via) = route.via {
            b = b.gateway(via).expect("address family is consistent");
        }
        if route.onlink {
            b = b.onlink();
        }
        if !route.multipath.is_empty() {
            let hops = route
                .multipath
                .iter()
                .map(|gw| {
                    let mut h = rtnetlink::packet_route::route::RouteNextHop::default();
                    h.attributes.push(RouteAttribute::Gateway(match gw {
                        IpAddr::V4(a) => RouteAddress::Inet(*a),
                        IpAddr::V6(a) => RouteAddress::Inet6(*a),
                    }));
                    h
                })
                .collect();
            b = b.multipath(hops);
        }
        let scope = match (route.kind, route.via) {
            (RouteKind::Unicast, None) if route.multipath.is_empty() => RouteScope::Link,
            _ => RouteScope::Universe,
        };
        b.scope(scope).build()
    }

    /// Add or replace a route in its table (idempotent).
    /// Add a route where the table has none to its destination (same
    /// prefix and metric): fails with EEXIST ([`KernelError::is_exists`])
    /// rather than replace someone else's.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(Self::route_message(route))
            .execute()
            .await
            .map_err(nl(format!("add route {}", route.dst)))
    }

    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(Self::route_message(route))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("replace route {}", route.dst)))
    }

    /// Delete a route (false when there was none): the first one that matches its destination, table,
    /// protocol and, where given, next hops (any scope: a route given
    /// without its next hop, to delete whatever the protocol put there,
    /// must not be taken for a link-scope route).
    pub async fn delete_route(&self, route: &Route) -> Result<bool> {
        let mut msg = Self::route_message(route);
        msg.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl(format!("delete route {}", route.dst))(e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Routes of the main table for one address family.
    pub async fn routes(&self, v4: bool) -> Result<Vec<Route>> {
        self.routes_in(MAIN_TABLE, v4).await
    }

    /// Routes matching `f`, filtered by the kernel (a strict-checking
    /// dump): reading one table, or one protocol's routes, never copies a
    /// 100 000-route BGP table along. A table that does not exist yet is
    /// empty.
    pub async fn routes_where(&self, v4: bool, f: RouteFilter) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        req.header.protocol = RouteProtocol::from(f.protocol.unwrap_or(0));
        // Tables past 255 only fit the attribute.
        req.header.table = u8::try_from(f.table).unwrap_or(0);
        req.attributes.push(RouteAttribute::Table(f.table));
        if let Some(oif) = f.oif {
            req.attributes.push(RouteAttribute::Oif(oif));
        }
        let dumped: std::result::Result<Vec<RouteMessage>, _> =
            self.strict.route().get(req).execute().try_collect().await;
        let msgs = match dumped {
            Ok(m) => m,
            Err(e) => {
                let e = nl("dump routes")(e);
                if e.errno() == Some(libc::ENOENT) {
                    return Ok(vec![]);
                }
                return Err(e);
            }
        };
        // The kernel filtered; this keeps to `f` whatever it sent.
        Ok(msgs
            .into_iter()
            .filter_map(route_from)
            .filter(|r| {
                r.table == f.table
                    && f.protocol.is_none_or(|p| r.protocol == p)
                    && f.oif.is_none_or(|o| r.oif == Some(o))
            })
            .collect())
    }

    /// Routes of one table for one address family.
    pub async fn routes_in(&self, table: u32, v4: bool) -> Result<Vec<Route>> {
        self.routes_where(v4, RouteFilter::table(table)).await
    }

    /// Routes of several tables for one address family.
    pub async fn routes_in_tables(&self, tables: &[u32], v4: bool) -> Result<Vec<Route>> {
        let mut out = vec![];
        for t in tables {
            out.extend(self.routes_in(*t, v4).await?);
        }
        Ok(out)
    }

    /// One protocol's routes in one table.
    pub async fn routes_of(&self, table: u32, v4: bool, protocol: u8) -> Result<Vec<Route>> {
        let f = RouteFilter {
            protocol: Some(protocol),
            ..RouteFilter::table(table)
        };
        self.routes_where(v4, f).await
    }

    /// Add or replace a permanent neighbour entry.
    pub async fn replace_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: &[u8],
    ) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add neighbour {ip} on link #{index}")))
    }

    /// Permanent neighbour entries on a link: (ip, mac).
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<(IpAddr, Vec<u8>)>> {
        let msgs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump neighbours"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(IpAddr::V4(v4))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            ip = Some(IpAddr::V6(v6))
                        }
                        NeighbourAttribute::LinkLayerAddress(m) => mac = Some(m),
                        _ => {}
                    }
                }
                Some((ip?, mac?))
            })
            .collect())
    }
}
