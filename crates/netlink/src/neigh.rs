//! Managed neighbour entries (NTF_EXT_MANAGED, Linux 5.16+): the kernel
//! resolves them on its own and keeps them resolved, so a program that
//! sends with bpf_redirect_neigh or takes MACs from bpf_fib_lookup finds its
//! next hop ready (the way Cilium keeps its nodes' next hops). strait marks
//! its entries with its protocol so it removes only its own.

use crate::rt::Netlink;
use crate::Result;
use futures::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::RouteProtocol,
    AddressFamily, RouteNetlinkMessage,
};
use std::net::IpAddr;

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

impl Netlink {
    /// Managed neighbour entries with protocol `protocol` on a link.
    pub async fn managed_neighbours(&self, index: u32, protocol: u8) -> Result<Vec<IpAddr>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(crate::rt::nl("dump neighbours"))?;
        let mut out = vec![];
        for m in msgs.into_iter().filter(|m| m.header.ifindex == index) {
            let (mut ip, mut managed, mut ours) = (None, false, false);
            for a in m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        ip = Some(IpAddr::V4(v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        ip = Some(IpAddr::V6(v6))
                    }
                    NeighbourAttribute::ExtFlags(f) => {
                        managed = f.contains(NeighbourExtFlags::Managed)
                    }
                    NeighbourAttribute::Protocol(p) => ours = u8::from(p) == protocol,
                    _ => {}
                }
            }
            if let (Some(ip), true, true) = (ip, managed, ours) {
                out.push(ip);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Add (or turn an existing entry into) a managed entry for `ip`.
    pub async fn add_managed_neighbour(&self, index: u32, ip: IpAddr, protocol: u8) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::None;
        m.attributes
            .push(NeighbourAttribute::Destination(address(ip)));
        m.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        m.attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(protocol)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.acked(req, format!("add managed neighbour {ip} on link #{index}"))
            .await
    }
}
