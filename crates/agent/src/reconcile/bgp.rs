//! BGP (cross-node mode bgp, Calico's BGP mode): by default an iBGP full
//! mesh of the cluster's nodes; BGPConfiguration and BGPPeer objects turn
//! the mesh off, add route reflectors and outside peers
//! ([`strait_model::bgp::plan_peers`]). Each pass makes the speaker run
//! the planned sessions, originate this node's pod CIDR and IPPool blocks, and
//! puts what it learned in the main table with the kernel's "bgp" route
//! protocol. The speaker wakes the reconciler when its table changes.
//!
//! Routes: the speaker's FIB changes are applied one by one as they come
//! (a peer's 100 000 routes never mean a dump of the kernel table per
//! pass); a full comparison with the kernel runs when the speaker starts,
//! during and after a restart, after a failed change, and every
//! [`FULL_SYNC`] to heal drift.
//!
//! Restarts: if the kernel already holds bgp routes when the agent starts,
//! the agent restarted. It tells its peers so (graceful restart's R bit:
//! they keep its routes), and keeps those kernel routes until every peer
//! has re-sent its table (End-of-RIB) or the restart time is over, so
//! traffic across nodes flows on through the restart.

use super::{apply_routes, Reconciler, Report};
use crate::daemon::Agent;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strait_bgp::speaker::{PeerSpec, Speaker, SpeakerConfig};
use strait_model::bgp::plan_peers;
use strait_model::cluster::{node_internal_ip, ClusterSnapshot, Kind};
use strait_model::naming::BGP_ROUTE_PROTOCOL;
use strait_netlink::{Netlink, Route, RouteKind};
use tokio::sync::watch;

/// How long peers keep our routes while we restart, and how long we keep
/// theirs.
const RESTART_TIME: u16 = 120;

/// How often the kernel's bgp routes are compared in full with the FIB.
const FULL_SYNC: Duration = Duration::from_secs(30);

/// The speaker's FIB changes not applied yet: the latest next hops per
/// prefix (None: withdrawn).
type Pending = Arc<Mutex<HashMap<IpNet, Option<Vec<IpAddr>>>>>;

pub struct BgpRoutes {
    nl: Netlink,
    speaker: Option<Speaker>,
    /// What the running speaker was started as: (AS, cluster id).
    started_as: Option<(u32, Option<std::net::Ipv4Addr>)>,
    peers: BTreeMap<IpAddr, PeerSpec>,
    /// Kernel routes left from before a restart stay until this, or until
    /// every peer has sent End-of-RIB.
    keep_until: Option<Instant>,
    wake_tx: watch::Sender<u64>,
    wake_rx: Option<watch::Receiver<u64>>,
    /// The port peers are reached and listened on (179; tests may move it).
    port: u16,
    pending: Pending,
    /// When the kernel was last compared in full with the FIB; None: it
    /// must be next pass.
    last_full: Option<Instant>,
    /// Kernel route changes since the heap was last trimmed.
    untrimmed: usize,
}

impl BgpRoutes {
    pub fn new() -> anyhow::Result<Self> {
        let (wake_tx, wake_rx) = watch::channel(0);
        Ok(BgpRoutes {
            nl: Netlink::connect()?,
            speaker: None,
            started_as: None,
            peers: BTreeMap::new(),
            keep_until: None,
            wake_tx,
            wake_rx: Some(wake_rx),
            port: strait_bgp::session::BGP_PORT,
            pending: Pending::default(),
            last_full: None,
            untrimmed: 0,
        })
    }

    /// Start the speaker; `actual` is the main table as the pass read it.
    async fn start(
        &mut self,
        agent: &Agent,
        router_id: std::net::Ipv4Addr,
        local_as: u32,
        cluster_id: Option<std::net::Ipv4Addr>,
        actual: &[Route],
    ) -> anyhow::Result<()> {
        let leftover = actual
            .iter()
            .filter(|r| r.protocol == BGP_ROUTE_PROTOCOL)
            .count();
        let restarting = leftover > 0;
        if restarting {
            self.keep_until = Some(Instant::now() + Duration::from_secs(RESTART_TIME as u64));
            tracing::info!(
                routes = leftover,
                "BGP routes from before a restart kept until the peers have re-sent theirs"
            );
        }
        let mut cfg = SpeakerConfig::new(local_as, router_id);
        cfg.cluster_id = cluster_id;
        cfg.listen = Some(SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            self.port,
        ));
        cfg.restart_time = Some(RESTART_TIME);
        cfg.restarting = restarting;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let speaker = Speaker::start(cfg, tx).await.map_err(|e| {
            anyhow::anyhow!(
                "BGP: cannot listen on port {}: {e} (is another BGP daemon running on this node?)",
                self.port
            )
        })?;
        let wake = self.wake_tx.clone();
        // A new speaker starts from a full comparison; what an old one
        // left queued is covered by it.
        self.pending.lock().unwrap().clear();
        self.last_full = None;
        let pending = self.pending.clone();
        tokio::spawn(async move {
            use strait_bgp::rib::FibChange;
            while let Some(first) = rx.recv().await {
                let mut p = pending.lock().unwrap();
                let mut put = |c: FibChange| match c {
                    FibChange::Set { prefix, next_hops } => p.insert(prefix, Some(next_hops)),
                    FibChange::Remove { prefix } => p.insert(prefix, None),
                };
                put(first);
                // Many changes in a row wake one pass.
                while let Ok(c) = rx.try_recv() {
                    put(c);
                }
                drop(p);
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        tracing::info!(asn = local_as, %router_id, route_reflector = ?cluster_id, "BGP speaker started");
        let _ = agent.bgp.set(speaker.status_handle());
        self.speaker = Some(speaker);
        self.started_as = Some((local_as, cluster_id));
        self.peers.clear();
        Ok(())
    }
}

impl Reconciler for BgpRoutes {
    const NAME: &'static str = "bgp";
    const READS: &'static [Kind] = &[
        Kind::Nodes,
        Kind::IpamBlocks,
        Kind::BgpConfigurations,
        Kind::BgpPeers,
        Kind::Secrets,
    ];

    fn wakeups(&mut self) -> Option<watch::Receiver<u64>> {
        self.wake_rx.take()
    }

    async fn pass(&mut self, agent: &Agent, snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        let mut rep = Report::default();
        let me = &agent.cfg.node_name;
        let node = snap
            .node(me)
            .ok_or_else(|| anyhow::anyhow!("BGP: node {me} is not in the cluster yet"))?;
        let Some(IpAddr::V4(router_id)) = node_internal_ip(node, true) else {
            anyhow::bail!("BGP: node {me} has no IPv4 InternalIP (the router id and next hop)");
        };
        // Top-of-rack mode: nodes peer with their rack's router, not with
        // each other (unless a BGPConfiguration asks for the mesh).
        let mesh = agent.cfg.cross_node == "bgp";
        let plan = plan_peers(snap, me, agent.cfg.bgp_as, mesh);
        rep.problems.extend(plan.problems.iter().cloned());
        let identity = (plan.local_as, plan.cluster_id);
        if self.started_as.is_some_and(|s| s != identity) {
            // The AS or the reflector role changed: every session restarts.
            tracing::info!(was = ?self.started_as, now = ?identity, "BGP identity changed; restarting the speaker");
            self.speaker = None;
            self.started_as = None;
        }
        if self.speaker.is_none() {
            // Whether the kernel holds bgp routes says whether this is a
            // restart.
            let actual = self
                .nl
                .routes_of(strait_netlink::MAIN_TABLE, true, BGP_ROUTE_PROTOCOL)
                .await?;
            self.start(agent, router_id, plan.local_as, plan.cluster_id, &actual)
                .await?;
        }
        let speaker = self.speaker.as_ref().expect("started above");
        let want: BTreeMap<IpAddr, PeerSpec> = plan
            .peers
            .iter()
            .map(|d| {
                let mut p = PeerSpec::new(d.address, d.asn);
                p.port = d.port.unwrap_or(self.port);
                p.local_address = d.address.is_ipv4().then_some(IpAddr::V4(router_id));
                p.rr_client = d.rr_client;
                p.max_restart_time = d.max_restart_time;
                p.password = d.password.as_ref().map(|pw| pw.0.clone());
                (d.address, p)
            })
            .collect();
        for gone in self.peers.keys().filter(|a| !want.contains_key(a)) {
            speaker.remove_peer(*gone);
            tracing::info!(peer = %gone, "BGP peer removed (no longer planned)");
        }
        for (a, p) in &want {
            if self.peers.get(a) != Some(p) {
                // A changed spec restarts that one session.
                speaker.add_peer(p.clone());
            }
        }
        self.peers = want;
        // A block of one address (blockSize 32/128: per-pod routes) is
        // announced while its pod holds it, not while the address cools
        // down after the pod went: a removed pod's /32 is withdrawn.
        let live: BTreeSet<IpAddr> = agent.ipam.allocations().iter().map(|a| a.ip).collect();
        let own: BTreeSet<ipnet::IpNet> =
            agent
                .ipam
                .cidr()
                .into_iter()
                .chain(
                    agent.ipam.blocks().into_keys().filter(|b| {
                        b.prefix_len() < b.max_prefix_len() || live.contains(&b.addr())
                    }),
                )
                .collect();
        speaker.originate(own);
        // Sessions not up are this pass's problems (retried, and shown).
        let status = speaker.peers();
        for p in &status {
            if p.state != strait_bgp::fsm::State::Established {
                rep.problems.push(format!(
                    "BGP peer {} (AS {}): {}{}",
                    p.address,
                    p.asn,
                    p.state,
                    p.last_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
        let all_synced = status.len() == self.peers.len() && status.iter().all(|p| p.synced);
        if self
            .keep_until
            .is_some_and(|t| all_synced || Instant::now() >= t)
        {
            self.keep_until = None;
            // The comparison that takes the stale ones away.
            self.last_full = None;
            tracing::info!("BGP resynchronised after the restart; stale kernel routes go");
        }
        let keeping = self.keep_until.is_some();
        if keeping {
            // Shown, and retried until it clears.
            rep.problems.push(format!(
                "BGP: resynchronising after a restart ({} of {} peers have re-sent their routes); routes from before the restart are kept meanwhile",
                status.iter().filter(|p| p.synced).count(),
                self.peers.len()
            ));
        }
        let full = keeping || self.last_full.is_none_or(|t| t.elapsed() >= FULL_SYNC);
        let before = rep.problems.len();
        if full {
            // fib() below holds whatever is queued now.
            self.pending.lock().unwrap().clear();
            let desired: Vec<Route> = speaker
                .fib()
                .await
                .into_iter()
                .filter_map(|(dst, hops)| fib_route(dst, hops))
                .collect();
            let actual = self
                .nl
                .routes_of(strait_netlink::MAIN_TABLE, true, BGP_ROUTE_PROTOCOL)
                .await?;
            apply_routes(
                &self.nl,
                &actual,
                // During a restart, routes not re-learned yet are not stale.
                |r| r.protocol == BGP_ROUTE_PROTOCOL && !keeping,
                &desired,
                &mut rep,
            )
            .await;
            self.last_full = Some(Instant::now());
        } else {
            let changes = std::mem::take(&mut *self.pending.lock().unwrap());
            apply_changes(&self.nl, changes, &mut rep).await;
        }
        if rep.problems.len() > before {
            // A change the kernel refused: compare in full next pass.
            self.last_full = None;
        }
        // A peer's full table came or went (over several passes): once
        // nothing is queued, the parse buffers and queues are free, but
        // glibc keeps them (tens of MiB at 100 000 routes) unless asked.
        self.untrimmed += rep.changed;
        if self.untrimmed >= TRIM_AFTER && self.pending.lock().unwrap().is_empty() {
            self.untrimmed = 0;
            // SAFETY: malloc_trim only releases free memory; any thread may call it.
            tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) });
        }
        Ok(rep)
    }
}

/// Kernel route changes after which the heap is trimmed.
const TRIM_AFTER: usize = 1000;

/// The kernel route for a FIB entry: via its one next hop, or one route
/// with every hop when several peers offer equal paths (ECMP).
fn fib_route(dst: IpNet, hops: Vec<IpAddr>) -> Option<Route> {
    let ecmp = hops.len() > 1;
    Some(Route {
        dst,
        via: if ecmp { None } else { Some(*hops.first()?) },
        oif: None,
        kind: RouteKind::Unicast,
        protocol: BGP_ROUTE_PROTOCOL,
        table: strait_netlink::MAIN_TABLE,
        onlink: false,
        multipath: if ecmp { hops } else { vec![] },
    })
}

/// Apply queued FIB changes one by one: a set replaces the prefix's bgp
/// route, a withdrawal deletes it (only a route of protocol bgp: another
/// protocol's route to the same prefix is never touched).
async fn apply_changes(
    nl: &Netlink,
    changes: HashMap<IpNet, Option<Vec<IpAddr>>>,
    rep: &mut Report,
) {
    const LOGGED: usize = 10;
    let (mut set, mut gone) = (0usize, 0usize);
    for (dst, hops) in changes {
        match hops.and_then(|h| fib_route(dst, h)) {
            Some(r) => match nl.replace_route(&r).await {
                Ok(()) => {
                    set += 1;
                    if set <= LOGGED {
                        tracing::info!(dst = %r.dst, via = ?r.via, "route programmed");
                    }
                }
                Err(e) => rep.problems.push(format!("route {dst}: {e}")),
            },
            None => {
                let r = Route {
                    dst,
                    via: None,
                    oif: None,
                    kind: RouteKind::Unicast,
                    protocol: BGP_ROUTE_PROTOCOL,
                    table: strait_netlink::MAIN_TABLE,
                    onlink: false,
                    multipath: vec![],
                };
                match nl.delete_route(&r).await {
                    Ok(true) => {
                        gone += 1;
                        if gone <= LOGGED {
                            tracing::info!(dst = %dst, "route removed");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => rep.problems.push(format!("route {dst}: {e}")),
                }
            }
        }
    }
    rep.changed += set + gone;
    if set > LOGGED || gone > LOGGED {
        tracing::info!(programmed = set, removed = gone, "BGP routes applied");
    }
}
