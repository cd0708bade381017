//! Endpoints: the node's pods as the kernel holds them.
//!
//! The kernel's live state is the truth. A host veth with strait's /32
//! route to a pod address is a live pod, whatever the IPAM file says: if
//! the state was lost (a wiped state dir, a boot-id mismatch) the
//! allocation is rebuilt from it, and the link is never deleted. A pod is
//! released without a CNI DEL only on two signals: its namespace path is
//! definitely gone (ENOENT, or now names a different namespace than the
//! one recorded at ADD) *and* its host veth is gone (a veth dies with its
//! namespace). Any other error reading the path (EACCES, another mount
//! namespace) releases nothing.

use super::{apply_routes, Reconciler, Report};
use crate::daemon::Agent;
use crate::datapath::BpfState;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_model::cluster::Kind;
use strait_model::cluster::{node_pod_cidrs, ClusterSnapshot};
use strait_model::ipam::Allocation;
use strait_model::naming::{is_host_veth, ROUTE_PROTOCOL};
use strait_netlink::{Link, Netlink, Route, RouteKind};

/// How long a host veth may exist without an allocation or a pod route
/// before it is removed (an ADD in flight creates its link while the agent
/// is still allocating).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(5);

pub struct Endpoints {
    nl: Netlink,
    bpf: Option<BpfState>,
    /// Host veths no allocation owns, and when they were first seen so.
    orphans: HashMap<String, Instant>,
    /// Namespace paths we could not read, logged once each.
    unreadable: BTreeSet<String>,
}

impl Endpoints {
    pub fn new(bpf: Option<BpfState>) -> anyhow::Result<Self> {
        Ok(Endpoints {
            nl: Netlink::connect()?,
            bpf,
            orphans: HashMap::new(),
            unreadable: BTreeSet::new(),
        })
    }
}

/// What the namespace path of an allocation says about its pod.
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsState {
    /// The path still names the pod's namespace (or we cannot tell).
    Present,
    /// The path is gone, or names another namespace than the one at ADD.
    Gone,
    /// The path could not be read: not evidence of anything.
    Unknown(String),
}

pub fn netns_state(a: &Allocation) -> NetnsState {
    use std::os::unix::fs::MetadataExt;
    if a.netns.is_empty() {
        return NetnsState::Present;
    }
    match std::fs::metadata(&a.netns) {
        Ok(m) => match a.netns_ino {
            Some(ino) if m.ino() != ino => NetnsState::Gone,
            _ => NetnsState::Present,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NetnsState::Gone,
        Err(e) => NetnsState::Unknown(e.to_string()),
    }
}

impl Reconciler for Endpoints {
    const NAME: &'static str = "endpoints";
    const READS: &'static [Kind] = &[Kind::Nodes];

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let mut rep = Report::default();
        let me = &agent.cfg.node_name;
        if let Some(cidr) = snap
            .node(me)
            .and_then(|n| node_pod_cidrs(n).into_iter().find(|c| c.addr().is_ipv4()))
        {
            match strait_model::routes::pod_cidr_problem(snap, &cidr) {
                Some(p) => rep.problems.push(format!(
                    "this node's {p}; no addresses are handed out until spec.podCIDR is fixed"
                )),
                None => agent.ipam.ensure_cidr(cidr)?,
            }
        }
        let links = self.nl.links().await?;
        // Pod routes live in the mode's pod table; the CNI plugin adds them
        // to main at ADD, and this pass moves them.
        // Both tables are read whatever the mode, so routes left in the
        // other one (the mode changed) are moved back too.
        let pod_table = agent.cfg.pod_table();
        let mut routes = vec![];
        for table in [
            strait_netlink::MAIN_TABLE,
            strait_model::overlay::LOCAL_POD_TABLE,
        ] {
            // strait's routes only: never a BGP table's 100 000.
            routes.extend(self.nl.routes_of(table, true, ROUTE_PROTOCOL).await?);
        }
        let veths: HashMap<&str, &Link> = links
            .iter()
            .filter(|l| is_host_veth(&l.name))
            .map(|l| (l.name.as_str(), l))
            .collect();
        let by_index: HashMap<u32, &Link> = veths.values().map(|l| (l.index, *l)).collect();
        // strait's /32 (/128) routes to pods: a pod route points at a host veth.
        let pod_route = |r: &Route| {
            r.protocol == ROUTE_PROTOCOL
                && r.kind == RouteKind::Unicast
                && r.via.is_none()
                && r.dst.prefix_len() == r.dst.max_prefix_len()
                && r.oif.is_some_and(|i| by_index.contains_key(&i))
        };

        // 1. Recover: live pods the state does not know. An address that
        // was released on purpose (a GC whose links are still to go) is in
        // cool-down and is not evidence of a pod.
        let released = agent.ipam.cooling_ips();
        if agent.ipam.cidr().is_some() {
            let known: BTreeSet<IpAddr> = agent.ipam.allocations().iter().map(|a| a.ip).collect();
            let found: Vec<(IpAddr, String)> = routes
                .iter()
                .filter(|r| pod_route(r))
                .filter(|r| !known.contains(&r.dst.addr()) && !released.contains(&r.dst.addr()))
                .map(|r| (r.dst.addr(), by_index[&r.oif.unwrap()].name.clone()))
                .collect();
            if !found.is_empty() {
                for a in agent.ipam.adopt(&found)? {
                    tracing::warn!(ip = %a.ip, host_veth = %a.host_veth, "recovered a live pod the IPAM state did not know (state lost or from another boot); its address stays reserved");
                }
            }
        }

        // 2. Pods whose namespace and host veth are both gone.
        let mut gone = vec![];
        for a in agent.ipam.allocations() {
            match netns_state(&a) {
                NetnsState::Gone if !veths.contains_key(a.host_veth.as_str()) => gone.push(a.ip),
                NetnsState::Unknown(e) if self.unreadable.insert(a.netns.clone()) => {
                    tracing::warn!(pod = %a.pod, netns = %a.netns, error = %e, "cannot read the pod's namespace path; keeping the pod (only a definite \"does not exist\" releases it)");
                }
                _ => {}
            }
        }
        if !gone.is_empty() {
            for a in agent.ipam.release_ips(&gone)? {
                tracing::info!(ip = %a.ip, pod = %a.pod, netns = %a.netns, "released: the pod's namespace and host veth are gone");
            }
        }
        let allocs = agent.ipam.allocations();

        // 3. Host veths of GC'd pods go now; other unowned ones after the
        // grace period, unless strait routes a pod address to them or an
        // ADD for them is in progress.
        let adding = agent.adding.lock().unwrap().clone();
        let owned: BTreeSet<&str> = allocs
            .iter()
            .map(|a| a.host_veth.as_str())
            .chain(adding.keys().map(String::as_str))
            .collect();
        let routed: BTreeSet<u32> = routes
            .iter()
            .filter(|r| pod_route(r) && !released.contains(&r.dst.addr()))
            .filter_map(|r| r.oif)
            .collect();
        let doomed: Vec<String> = std::mem::take(&mut *agent.doomed_links.lock().unwrap());
        let now = Instant::now();
        let mut orphans = HashMap::new();
        for (name, l) in &veths {
            if owned.contains(name) {
                continue;
            }
            let first = self.orphans.get(*name).copied().unwrap_or(now);
            let is_doomed = doomed.iter().any(|d| d == name);
            if is_doomed
                || (now.duration_since(first) >= ORPHAN_GRACE && !routed.contains(&l.index))
            {
                match self.nl.delete_link(name).await {
                    Ok(true) => {
                        rep.changed += 1;
                        tracing::info!(link = %name, "removed host veth that no pod owns");
                    }
                    Ok(false) => {}
                    Err(e) => rep.problems.push(format!("remove host veth {name}: {e}")),
                }
            } else {
                orphans.insert(name.to_string(), first);
            }
        }
        self.orphans = orphans;

        // 4. Each pod's route.
        let veth_index: HashMap<&str, u32> = allocs
            .iter()
            .filter_map(|a| {
                veths
                    .get(a.host_veth.as_str())
                    .map(|l| (a.host_veth.as_str(), l.index))
            })
            .collect();
        let desired: Vec<Route> = allocs
            .iter()
            .filter(|a| a.ip.is_ipv4())
            .filter_map(|a| {
                veth_index.get(a.host_veth.as_str()).map(|&idx| Route {
                    dst: a.ip.into(),
                    via: None,
                    oif: Some(idx),
                    kind: RouteKind::Unicast,
                    protocol: ROUTE_PROTOCOL,
                    table: pod_table,
                    onlink: false,
                    multipath: vec![],
                })
            })
            .collect();
        apply_routes(&self.nl, &routes, pod_route, &desired, &mut rep).await;

        // 4b. Source check, in every datapath (the kernel datapath has no
        // other): strict reverse-path filtering on each pod's host veth drops
        // any source address whose route does not lead back through it, and
        // only the pod's own /32 does.
        let mut unchecked = BTreeSet::new();
        for name in veth_index.keys() {
            match tokio::task::block_in_place(|| strict_rp_filter(name)) {
                Ok(true) => rep.changed += 1,
                Ok(false) => {}
                Err(e) => {
                    rep.problems
                        .push(format!("host veth {name}: source check: {e}"));
                    unchecked.insert(name.to_string());
                }
            }
        }

        // 5. The eBPF datapath's view of the pods.
        if let Some(bpf) = self.bpf.as_mut() {
            let p = tokio::task::block_in_place(|| bpf.sync_endpoints(&allocs, &veth_index))?;
            rep.changed += p.0;
            rep.problems.extend(p.1);
            // The overlay's device, once the node-routes reconciler made it;
            // the ENIs, once the eni-pool reconciler wired them.
            let mut netdevs: Vec<(String, u32)> = agent
                .cfg
                .tunnel_device()
                .into_iter()
                .filter_map(|dev| links.iter().find(|l| l.name == dev).map(|l| (dev, l.index)))
                .collect();
            if let Some(enis) = &agent.eni {
                netdevs.extend(enis.links());
            }
            for (dev, index) in &netdevs {
                match tokio::task::block_in_place(|| bpf.attach_netdev(dev, *index)) {
                    Ok(true) => rep.changed += 1,
                    Ok(false) => {}
                    Err(e) => rep.problems.push(format!("{e:#}")),
                }
            }
            bpf.netdevs
                .retain(|d, _| netdevs.iter().any(|(n, _)| n == d));
            let mut pb = agent.published.lock().unwrap();
            pb.attached = bpf.attached.iter().cloned().collect();
            pb.endpoints = bpf.endpoints;
        }

        // Publish which pods are programmed, for ADDs waiting on theirs.
        let done: BTreeSet<String> = allocs
            .iter()
            .filter(|a| veth_index.contains_key(a.host_veth.as_str()))
            .filter(|a| !unchecked.contains(&a.host_veth))
            .filter(|a| {
                self.bpf
                    .as_ref()
                    .is_none_or(|b| b.attached.contains(&a.host_veth))
            })
            .map(|a| a.host_veth.clone())
            .collect();
        agent.programmed.send_replace(Some(Arc::new(done)));
        Ok(rep)
    }
}

/// Set `rp_filter` to strict (1) on a link; true when it was not already.
pub fn strict_rp_filter(link: &str) -> std::io::Result<bool> {
    let p = std::path::Path::new("/proc/sys/net/ipv4/conf")
        .join(link)
        .join("rp_filter");
    if std::fs::read_to_string(&p)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(&p, "1")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn alloc(netns: &str, ino: Option<u64>) -> Allocation {
        Allocation {
            ip: "10.0.0.1".parse().unwrap(),
            attachment: Default::default(),
            pod: Default::default(),
            netns: netns.into(),
            host_veth: "strt0".into(),
            allocated_at_ms: 0,
            netns_ino: ino,
            recovered: false,
            host_ports: vec![],
            pool: None,
        }
    }

    #[test]
    fn only_a_definite_absence_or_a_new_namespace_counts_as_gone() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ns");
        std::fs::write(&f, b"").unwrap();
        let ino = std::fs::metadata(&f).unwrap().ino();
        let p = f.to_str().unwrap();
        assert_eq!(netns_state(&alloc(p, Some(ino))), NetnsState::Present);
        assert_eq!(netns_state(&alloc(p, None)), NetnsState::Present);
        assert_eq!(netns_state(&alloc(p, Some(ino + 1))), NetnsState::Gone);
        let missing = d.path().join("gone");
        assert_eq!(
            netns_state(&alloc(missing.to_str().unwrap(), None)),
            NetnsState::Gone
        );
        // A path under a regular file: ENOTDIR, not ENOENT: not evidence.
        let under = f.join("x");
        assert!(matches!(
            netns_state(&alloc(under.to_str().unwrap(), None)),
            NetnsState::Unknown(_)
        ));
    }
}
