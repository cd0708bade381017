//! Node routes: how this node reaches other nodes' pods (the cross-node
//! backend), a blackhole for its own pod CIDR and IPPool blocks so
//! unassigned pod addresses never leave by the default route, and the
//! service CIDR's route.
//!
//! It owns strait's main-table routes that are not pod routes (those belong
//! to the endpoints reconciler), and never touches a route strait did not
//! make.

use super::{apply_routes, Reconciler, Report};
use crate::crossnode::CrossNode;
use crate::daemon::Agent;
use strait_model::cluster::ClusterSnapshot;
use strait_model::cluster::Kind;
use strait_model::naming::{is_host_veth, ROUTE_PROTOCOL};
use strait_model::routes::plan_node_routes_checked;
use strait_netlink::{Netlink, Route, RouteKind};

pub struct NodeRoutes {
    nl: Netlink,
    mode: Box<dyn CrossNode>,
}

impl NodeRoutes {
    pub fn new(mode: Box<dyn CrossNode>) -> anyhow::Result<Self> {
        Ok(NodeRoutes {
            nl: Netlink::connect()?,
            mode,
        })
    }
}

impl Reconciler for NodeRoutes {
    const NAME: &'static str = "node-routes";
    const READS: &'static [Kind] = &[Kind::Nodes, Kind::IpamBlocks, Kind::IpPools];

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        crate::daemon::pause_point_async("node-routes-pass").await;
        let mut rep = Report::default();
        let (peers, rejected) = plan_node_routes_checked(snap, &agent.cfg.node_name);
        rep.problems.extend(rejected);
        // This node's blocks: the pod CIDR and its IPPool blocks.
        let local: Vec<ipnet::IpNet> = agent
            .ipam
            .cidr()
            .into_iter()
            .chain(agent.ipam.blocks().into_keys())
            .collect();
        let (underlay, bad) = strait_model::underlay::underlay_subnets(snap);
        rep.problems.extend(bad);
        let plan = crate::crossnode::Plan {
            peers: &peers,
            local: &local,
            underlay: &underlay,
        };
        rep.problems
            .extend(self.mode.prepare(&self.nl, &plan).await?);
        let mut desired = self.mode.routes(&peers);
        let links = self.nl.links().await?;
        if let Some(cidr) = agent.cfg.service_cidr {
            if agent.cfg.mode == strait_model::lab::Mode::Ebpf {
                // eBPF translates before routing; what is left has no backend.
                desired.push(Route {
                    dst: cidr,
                    via: None,
                    oif: None,
                    kind: RouteKind::Unreachable,
                    protocol: ROUTE_PROTOCOL,
                    table: strait_netlink::MAIN_TABLE,
                    onlink: false,
                    multipath: vec![],
                });
            } else if let Some(up) = links.iter().find(|l| l.name == agent.cfg.uplink) {
                // nftables translates in the nat hooks, after the route lookup
                // of local sockets: the CIDR must be routable; its refuse
                // chains answer what has no backend.
                desired.push(Route {
                    dst: cidr,
                    via: None,
                    oif: Some(up.index),
                    kind: RouteKind::Unicast,
                    protocol: ROUTE_PROTOCOL,
                    table: strait_netlink::MAIN_TABLE,
                    onlink: false,
                    multipath: vec![],
                });
            }
        }
        // The pod CIDR and this node's IPPool blocks: what is not a pod's
        // /32 goes nowhere. A block of one address (blockSize 32 or 128:
        // per-pod routes) is its pod's own route; a blackhole of the same
        // prefix would replace it.
        let own = agent.ipam.cidr().into_iter().chain(
            agent
                .ipam
                .blocks()
                .into_keys()
                .filter(|b| b.prefix_len() < b.max_prefix_len()),
        );
        for cidr in own {
            desired.push(Route {
                dst: cidr,
                via: None,
                oif: None,
                kind: RouteKind::Blackhole,
                protocol: ROUTE_PROTOCOL,
                table: strait_netlink::MAIN_TABLE,
                onlink: false,
                multipath: vec![],
            });
        }
        let veth_index: std::collections::BTreeSet<u32> = links
            .iter()
            .filter(|l| is_host_veth(&l.name))
            .map(|l| l.index)
            .collect();
        // Everything of strait's except routes to pods through host veths.
        let owned = |r: &Route| {
            r.protocol == ROUTE_PROTOCOL && !r.oif.is_some_and(|i| veth_index.contains(&i))
        };
        // strait's routes only (a BGP table of 100 000 routes is not read).
        let actual = self
            .nl
            .routes_of(strait_netlink::MAIN_TABLE, true, ROUTE_PROTOCOL)
            .await?;
        apply_routes(&self.nl, &actual, owned, &desired, &mut rep).await;
        agent.published.lock().unwrap().node_routes = peers;
        Ok(rep)
    }
}
