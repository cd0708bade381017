//! The agent's reconcilers, one per concern. Each owns its state, runs its
//! own level-triggered loop (on a source change, on a nudge, and every
//! resync period), and reports in `strait status`:
//!
//! - [`endpoints`]: IPAM's pod CIDR, pods recovered from the kernel, pods
//!   whose namespace is gone, leftover host veths, each pod's /32 route and,
//!   in ebpf mode, its endpoint-map entries and from-container program;
//! - [`node_routes`]: the cross-node mode (a [`crate::crossnode::CrossNode`]
//!   backend chosen by name), the node's own pod CIDR blackhole and the
//!   service CIDR route;
//! - [`services`]: the service table, applied by a
//!   [`crate::svcbackend::ServiceBackend`] chosen by name;
//! - [`policy`]: NetworkPolicy compiled per local pod, applied by a
//!   [`crate::policybackend::PolicyBackend`] for the datapath;
//! - [`ipam_blocks`]: IPPool blocks held in the control plane and in IPAM
//!   kept in step; idle blocks and those of gone nodes given back;
//! - [`bgp`] (cross-node mode bgp): the BGP speaker's peers and
//!   originated blocks, and the routes it learns in the kernel;
//! - [`macvlan_ports`] (cross-node mode macvlan): one VLAN port per VLAN
//!   with a pod here, none for the others;
//! - [`eni_pool`] (cross-node mode eni): the ENI warm pool through the
//!   cloud, the ENIs' links and tables, Terway's per-pod rules;
//! - [`health`]: healthCheckNodePort servers;
//! - [`conntrack`] (eBPF datapath): GC of service connections, map
//!   pressure.
//!
//! A pass that fails as a whole is retried with exponential backoff; a pass
//! that programs most objects but not all reports the others as problems,
//! by object, and retries them the same way. One reconciler's failure never
//! stops another.

pub mod bgp;
pub mod conntrack;
pub mod endpoints;
pub mod eni_pool;
pub mod health;
pub mod ipam_blocks;
pub mod macvlan_ports;
pub mod node_routes;
pub mod policy;
pub mod services;

use crate::daemon::Agent;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_model::api::ReconcilerStatus;
use strait_model::cluster::{ClusterSnapshot, Kind};
use strait_netlink::{Netlink, Route, RouteKind};

/// What one pass did.
#[derive(Debug, Default)]
pub struct Report {
    /// Kernel objects changed.
    pub changed: usize,
    /// Objects left unprogrammed, each with the reason (a retry follows).
    pub problems: Vec<String>,
}

pub trait Reconciler: Send + 'static {
    const NAME: &'static str;
    /// The snapshot kinds a pass reads. A new snapshot that changes none of
    /// them does not wake the reconciler (nudges and the resync period
    /// still do): 10 000 services changing must not cost the pod wiring a
    /// pass each time.
    const READS: &'static [Kind];
    /// A wake-up of the reconciler's own besides the snapshot, nudges and
    /// resync (the BGP speaker learning routes). Taken once, at start.
    fn wakeups(&mut self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// One level-triggered pass against the newest snapshot.
    fn pass(
        &mut self,
        agent: &Agent,
        snap: &ClusterSnapshot,
    ) -> impl Future<Output = anyhow::Result<Report>> + Send;
}

/// Retry delays after failures: 200 ms doubling to 30 s.
struct Backoff(u32);

impl Backoff {
    fn delay(&self) -> Duration {
        Duration::from_millis(200u64.saturating_mul(1 << self.0.min(8)))
            .min(Duration::from_secs(30))
    }
}

/// Run `r` until the cluster source ends. The reconciler is registered
/// before this returns (not when the task first runs), so the agent is not
/// ready until its first pass is done: a node that says it is ready has
/// its routes, services and policies programmed.
pub fn run<R: Reconciler>(r: R, agent: Arc<Agent>) -> impl Future<Output = ()> + Send {
    agent
        .reconcilers
        .lock()
        .unwrap()
        .entry(R::NAME)
        .or_insert_with(|| ReconcilerStatus {
            name: R::NAME.into(),
            ..Default::default()
        });
    run_passes(r, agent)
}

async fn run_passes<R: Reconciler>(mut r: R, agent: Arc<Agent>) {
    let mut snap_rx = agent.snapshot.clone();
    let mut nudge_rx = agent.nudges();
    let mut own_rx = r.wakeups();
    let mut failures = Backoff(0);
    loop {
        let snap = snap_rx.borrow_and_update().clone();
        nudge_rx.borrow_and_update();
        let t0 = Instant::now();
        let res = r.pass(&agent, &snap).await;
        let took = t0.elapsed();
        let ok = agent.record_pass(R::NAME, res, took);
        agent.metrics.pass(R::NAME, took, ok);
        let wait = if ok {
            failures.0 = 0;
            agent.cfg.resync
        } else {
            failures.0 += 1;
            failures.delay()
        };
        let resync = tokio::time::sleep(wait);
        tokio::pin!(resync);
        loop {
            tokio::select! {
                c = snap_rx.changed() => {
                    if c.is_err() {
                        return;
                    }
                    let new = snap_rx.borrow().clone();
                    if !ok || R::READS.iter().any(|k| new.kind_changed(&snap, *k)) {
                        break;
                    }
                }
                _ = nudge_rx.changed() => break,
                Ok(()) = async {
                    match own_rx.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => break,
                _ = &mut resync => break,
            }
        }
        if !ok {
            // A change may fix it, but a flapping source must not turn a
            // failing pass into a busy loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Agent {
    /// Record a pass in the reconciler's status; log a problem once, when
    /// it first appears. Returns whether the pass fully succeeded.
    pub fn record_pass(
        &self,
        name: &'static str,
        res: anyhow::Result<Report>,
        took: Duration,
    ) -> bool {
        let mut all = self.reconcilers.lock().unwrap();
        let st = all.entry(name).or_insert_with(|| ReconcilerStatus {
            name: name.into(),
            ..Default::default()
        });
        st.passes += 1;
        st.last_pass_ms = crate::now_ms();
        st.last_pass_micros = took.as_micros() as u64;
        match res {
            Ok(rep) => {
                for p in rep.problems.iter().filter(|p| !st.problems.contains(p)) {
                    tracing::warn!(reconciler = name, problem = %p, "not programmed; will retry");
                }
                if st.error.take().is_some() {
                    tracing::info!(reconciler = name, "pass succeeded again");
                }
                let ok = rep.problems.is_empty();
                st.consecutive_failures = if ok { 0 } else { st.consecutive_failures + 1 };
                st.problems = rep.problems;
                ok
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if st.error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(reconciler = name, error = %msg, "pass failed; retrying with backoff");
                }
                st.error = Some(msg);
                st.consecutive_failures += 1;
                false
            }
        }
    }
}

/// A desired route is satisfied by an actual one with the same destination,
/// kind and gateway, and the same device when the desired one names one.
pub fn satisfies(actual: &Route, desired: &Route) -> bool {
    actual.dst == desired.dst
        && actual.table == desired.table
        && actual.kind == desired.kind
        && actual.via == desired.via
        && actual.onlink == desired.onlink
        && actual.multipath == desired.multipath
        && (desired.oif.is_none() || actual.oif == desired.oif)
}

/// Make the routes a reconciler owns (`owned` picks them out of `actual`:
/// the table, or only the reconciler's protocol's routes in it) equal
/// `desired`. A destination that already has a route strait did not make
/// is left alone and reported: replacing it would adopt it, and a later
/// pass would delete it. Where `actual` has none of ours, the route is
/// added exclusively, so the kernel itself refuses (EEXIST) when another
/// route, one `actual` did not show, is there.
pub async fn apply_routes(
    nl: &Netlink,
    actual: &[Route],
    owned: impl Fn(&Route) -> bool,
    desired: &[Route],
    rep: &mut Report,
) {
    use std::collections::{HashMap, HashSet};
    // Each change is logged at info up to this many per pass, then counted:
    // a BGP peer's 100 000 routes are one line, not 100 000.
    const LOGGED: usize = 10;
    let (mut added, mut removed) = (0usize, 0usize);
    // Indexed: the BGP reconciler's tables hold 100 000 routes.
    let mut by_dst: HashMap<(ipnet::IpNet, u32), Vec<&Route>> =
        HashMap::with_capacity(actual.len());
    for a in actual {
        by_dst.entry((a.dst, a.table)).or_default().push(a);
    }
    for d in desired {
        let here = by_dst
            .get(&(d.dst, d.table))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if here.iter().any(|a| owned(a) && satisfies(a, d)) {
            continue;
        }
        // Another protocol's route (another tool's, or another strait
        // reconciler's) to the same place is not ours to replace.
        if let Some(f) = here.iter().find(|a| a.protocol != d.protocol) {
            rep.problems.push(format!(
                "route {}: table {} already has a route to it that this reconciler did not make (protocol {}); strait leaves it alone — remove it or change the pod CIDR",
                d.dst, d.table, f.protocol
            ));
            continue;
        }
        let ours_here = here.iter().any(|a| owned(a));
        let done = if ours_here {
            nl.replace_route(d).await
        } else {
            nl.add_route(d).await
        };
        match done {
            Err(e) if e.is_exists() => rep.problems.push(format!(
                "route {}: table {} already has a route to it that this reconciler did not make; strait leaves it alone — remove it or change the pod CIDR",
                d.dst, d.table
            )),
            Ok(()) => {
                rep.changed += 1;
                added += 1;
                if added <= LOGGED {
                    tracing::info!(dst = %d.dst, via = ?d.via, kind = ?d.kind, "route programmed");
                } else {
                    tracing::debug!(dst = %d.dst, via = ?d.via, kind = ?d.kind, "route programmed");
                }
            }
            Err(e) => rep.problems.push(format!("route {}: {e}", d.dst)),
        }
    }
    // A route with the same destination, kind and table as a desired one
    // was just replaced in place; anything else of ours is stale.
    let wanted: HashSet<(ipnet::IpNet, RouteKind, u32)> =
        desired.iter().map(|d| (d.dst, d.kind, d.table)).collect();
    for a in actual.iter().filter(|a| owned(a)) {
        if wanted.contains(&(a.dst, a.kind, a.table)) {
            continue;
        }
        match nl.delete_route(a).await {
            Ok(true) => {
                rep.changed += 1;
                removed += 1;
                if removed <= LOGGED {
                    tracing::info!(dst = %a.dst, "stale route removed");
                } else {
                    tracing::debug!(dst = %a.dst, "stale route removed");
                }
            }
            Ok(false) => {}
            Err(e) => rep
                .problems
                .push(format!("remove stale route {}: {e}", a.dst)),
        }
    }
    if added > LOGGED || removed > LOGGED {
        tracing::info!(
            programmed = added,
            removed,
            "routes changed (the first {LOGGED} of each logged one by one)"
        );
    }
}
