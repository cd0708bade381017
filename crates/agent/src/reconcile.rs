//! The node reconciler: level-triggered and idempotent. Each pass reads the
//! newest cluster snapshot and the kernel, computes what should be, and
//! applies only the difference. It runs on every source change, on request,
//! and every `resync` period, so anything changed behind strait's back (or
//! while the agent was down) heals.

use crate::daemon::Agent;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use strait_model::cluster::node_pod_cidrs;
use strait_model::ipam::{Allocation, Attachment};
use strait_model::naming::{is_host_veth, ROUTE_PROTOCOL};
use strait_model::routes::plan_node_routes;
use strait_netlink::{Netlink, Route, RouteKind};

/// How long a host veth may exist without an allocation before it is removed.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let nl = Netlink::connect()?;
    let mut rx = agent.snapshot.clone();
    loop {
        if let Err(e) = pass(&agent, &nl).await {
            tracing::warn!(error = %e, "reconcile pass failed; retrying on the next pass");
        }
        tokio::select! {
            r = rx.changed() => { if r.is_err() { return Ok(()); } }
            _ = agent.nudge.notified() => {}
            _ = tokio::time::sleep(agent.cfg.resync) => {}
        }
    }
}

/// A desired route is satisfied by an actual one with the same destination,
/// kind and gateway, and the same device when the desired one names one.
fn satisfies(actual: &Route, desired: &Route) -> bool {
    actual.dst == desired.dst
        && actual.kind == desired.kind
        && actual.via == desired.via
        && (desired.oif.is_none() || actual.oif == desired.oif)
}

/// Allocations whose container is gone: its network namespace no longer exists.
fn gone(allocs: &[Allocation]) -> Vec<Attachment> {
    allocs
        .iter()
        .filter(|a| !a.netns.is_empty() && !std::path::Path::new(&a.netns).exists())
        .map(|a| a.attachment.clone())
        .collect()
}

pub async fn pass(agent: &Agent, nl: &Netlink) -> anyhow::Result<()> {
    let snap = agent.snapshot.borrow().clone();
    let me = &agent.cfg.node_name;
    if let Some(cidr) = snap
        .node(me)
        .and_then(|n| node_pod_cidrs(n).into_iter().find(|c| c.addr().is_ipv4()))
    {
        agent.ipam.ensure_cidr(cidr)?;
    }

    // Containers that vanished without a DEL give their addresses back.
    let stale = gone(&agent.ipam.allocations());
    if !stale.is_empty() {
        for a in agent.ipam.release_many(&stale)? {
            tracing::info!(ip = %a.ip, pod = %a.pod, netns = %a.netns, "released: the pod's network namespace is gone");
            agent.doomed_links.lock().unwrap().push(a.host_veth);
        }
    }
    let allocs = agent.ipam.allocations();

    // Host veths of released pods go now. Other host veths that no
    // allocation owns are leftovers (a DEL that never came, a plugin killed
    // mid-ADD) and go once they have stayed unowned for ORPHAN_GRACE: an ADD
    // in flight creates its link while the agent is still allocating.
    let links = nl.links().await?;
    let by_veth: HashMap<&str, &Allocation> =
        allocs.iter().map(|a| (a.host_veth.as_str(), a)).collect();
    let doomed: Vec<String> = std::mem::take(&mut *agent.doomed_links.lock().unwrap());
    let mut veth_index: HashMap<&str, u32> = HashMap::new();
    let now = std::time::Instant::now();
    let mut seen_orphans = HashMap::new();
    for l in &links {
        if !is_host_veth(&l.name) {
            continue;
        }
        if let Some(a) = by_veth.get(l.name.as_str()) {
            veth_index.insert(a.host_veth.as_str(), l.index);
            continue;
        }
        let first = agent
            .orphan_links
            .lock()
            .unwrap()
            .get(&l.name)
            .copied()
            .unwrap_or(now);
        if doomed.contains(&l.name) || now.duration_since(first) >= ORPHAN_GRACE {
            if nl.delete_link(&l.name).await? {
                tracing::info!(link = %l.name, "removed host veth that no pod owns");
            }
        } else {
            seen_orphans.insert(l.name.clone(), first);
        }
    }
    *agent.orphan_links.lock().unwrap() = seen_orphans;

    // Desired routes: other nodes' pod CIDRs, our blackhole, our pods.
    let node_routes = plan_node_routes(&snap, me);
    let mut desired: Vec<Route> = node_routes
        .iter()
        .filter(|r| r.pod_cidr.addr().is_ipv4())
        .map(|r| Route {
            dst: r.pod_cidr,
            via: Some(r.via),
            oif: None,
            kind: RouteKind::Unicast,
            protocol: ROUTE_PROTOCOL,
        })
        .collect();
    if let Some(cidr) = agent.cfg.service_cidr {
        if agent.bpf.is_some() {
            // eBPF translates before routing; what is left has no backend.
            desired.push(Route {
                dst: cidr,
                via: None,
                oif: None,
                kind: RouteKind::Unreachable,
                protocol: ROUTE_PROTOCOL,
            });
        } else if let Some(up) = links.iter().find(|l| l.name == agent.cfg.uplink) {
            // nftables translates in the nat hooks, after the route lookup
            // of local sockets: the CIDR must be routable; its refuse chains
            // answer what has no backend.
            desired.push(Route {
                dst: cidr,
                via: None,
                oif: Some(up.index),
                kind: RouteKind::Unicast,
                protocol: ROUTE_PROTOCOL,
            });
        }
    }
    if let Some(cidr) = agent.ipam.cidr() {
        desired.push(Route {
            dst: cidr,
            via: None,
            oif: None,
            kind: RouteKind::Blackhole,
            protocol: ROUTE_PROTOCOL,
        });
    }
    for a in &allocs {
        if let (IpAddr::V4(_), Some(&idx)) = (a.ip, veth_index.get(a.host_veth.as_str())) {
            desired.push(Route {
                dst: a.ip.into(),
                via: None,
                oif: Some(idx),
                kind: RouteKind::Unicast,
                protocol: ROUTE_PROTOCOL,
            });
        }
    }

    let actual: Vec<Route> = nl
        .routes(true)
        .await?
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .collect();
    for d in &desired {
        if !actual.iter().any(|a| satisfies(a, d)) {
            nl.replace_route(d).await?;
            tracing::info!(dst = %d.dst, via = ?d.via, kind = ?d.kind, "route programmed");
        }
    }
    // A route with the same destination and kind as a desired one was just
    // replaced in place; anything else of ours is stale.
    for a in &actual {
        let wanted = desired.iter().any(|d| d.dst == a.dst && d.kind == a.kind);
        if !wanted && nl.delete_route(a).await? {
            tracing::info!(dst = %a.dst, "stale route removed");
        }
    }
    *agent.programmed.lock().unwrap() = node_routes;
    let this = snap
        .node(me)
        .and_then(|n| strait_model::cluster::node_internal_ip(n, true))
        .and_then(|ip| match ip {
            IpAddr::V4(ip) => Some(strait_model::services::ThisNode {
                name: me.clone(),
                ip,
            }),
            IpAddr::V6(_) => None,
        });
    let table = strait_model::services::compile_for_node(&snap, this.as_ref());
    sync_health_checks(agent, &table.health_checks);
    {
        let mut seen = agent.service_problems.lock().unwrap();
        for p in &table.problems {
            if !seen.contains(p) {
                tracing::warn!(problem = %p, "service object rejected; fix the object");
            }
        }
        *seen = table.problems.clone();
    }
    match &agent.bpf {
        Some(bpf) => {
            let mut b = bpf.lock().unwrap();
            sync_datapath(&mut b, &allocs, &veth_index)?;
            let t0 = std::time::Instant::now();
            let changed = sync_services(&mut b, &table)?;
            if changed > 0 {
                let micros = t0.elapsed().as_micros() as u64;
                tracing::info!(changed, micros, "eBPF service table updated");
                *agent.service_sync.lock().unwrap() = Some(strait_model::api::ServiceSync {
                    frontends: table.entries.len(),
                    changed,
                    micros,
                });
            }
        }
        // Routed mode: the nftables backend, replaced whole when it changes.
        None => {
            let cidr = match agent.cfg.service_cidr {
                Some(ipnet::IpNet::V4(c)) => Some(c),
                _ => None,
            };
            let script = strait_model::nft::render(&table, cidr);
            let mut last = agent.nft_applied.lock().unwrap();
            if *last != script {
                let t0 = std::time::Instant::now();
                crate::daemon::nft_apply(&script)?;
                let micros = t0.elapsed().as_micros() as u64;
                tracing::info!(
                    frontends = table.entries.len(),
                    micros,
                    "nftables service table applied"
                );
                *agent.service_sync.lock().unwrap() = Some(strait_model::api::ServiceSync {
                    frontends: table.entries.len(),
                    changed: table.entries.len(),
                    micros,
                });
                *last = script;
            }
        }
    }
    *agent.services.lock().unwrap() = table.entries;
    Ok(())
}

/// Make the endpoint and source maps match the node's pods, then make sure
/// every pod's host veth carries from-container. Maps first, so a freshly
/// attached program finds its pod.
fn sync_datapath(
    bpf: &mut crate::daemon::BpfState,
    allocs: &[Allocation],
    veth_index: &HashMap<&str, u32>,
) -> anyhow::Result<()> {
    use strait_bpf::datapath::Prog;
    use strait_bpf::maps::{self, Endpoint, EndpointMap, Lxc, LxcMap};
    use strait_model::naming::{host_veth_mac, pod_veth_mac};
    let mut want_ep: HashMap<u32, Endpoint> = HashMap::new();
    let mut want_lxc: HashMap<u32, Lxc> = HashMap::new();
    for a in allocs {
        let (IpAddr::V4(ip), Some(&idx)) = (a.ip, veth_index.get(a.host_veth.as_str())) else {
            continue;
        };
        let (cid, ifn) = (&a.attachment.container_id, &a.attachment.ifname);
        want_ep.insert(
            maps::ip_key(ip),
            Endpoint {
                ifindex: idx,
                pod_mac: pod_veth_mac(cid, ifn),
                host_mac: host_veth_mac(cid, ifn),
                flags: 0,
            },
        );
        want_lxc.insert(
            idx,
            Lxc {
                ip: maps::ip_key(ip),
                flags: 0,
            },
        );
    }
    let dir = bpf.dp.pin_dir.clone();
    let mut eps: EndpointMap = maps::open(&dir, "strait_endpoints")?;
    let mut lxc: LxcMap = maps::open(&dir, "strait_lxc")?;
    sync_map(&mut eps, &want_ep)?;
    sync_map(&mut lxc, &want_lxc)?;
    bpf.endpoints = want_ep.len();
    for a in allocs {
        if veth_index.contains_key(a.host_veth.as_str()) && !bpf.attached.contains(&a.host_veth) {
            bpf.dp.attach(Prog::FromContainer, &a.host_veth)?;
            tracing::info!(link = %a.host_veth, pod = %a.pod, "from-container attached");
            bpf.attached.insert(a.host_veth.clone());
        }
    }
    // Links that went away took their filters with them.
    bpf.attached.retain(|l| veth_index.contains_key(l.as_str()));
    Ok(())
}

/// Make strait_lb hold exactly the table's frontends and backends.
/// Conntrack is left alone: connections to removed or terminating backends
/// keep their backend until they end.
fn sync_services(
    bpf: &mut crate::daemon::BpfState,
    table: &strait_model::services::ServiceTable,
) -> anyhow::Result<usize> {
    use strait_bpf::maps::{self, LbMap};
    let mut lb: LbMap = maps::open(&bpf.dp.pin_dir, "strait_lb")?;
    let mut changed = 0;
    let mut old = match bpf.lb_programmed.take() {
        Some(p) => p,
        None => {
            // First sync since start: whatever the map holds is unknown;
            // clear what the table does not want.
            let want: std::collections::HashSet<maps::LbKey> = maps::lb_entries(&table.entries)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let have: Vec<maps::LbKey> = lb.keys().collect::<Result<_, _>>()?;
            for k in have.iter().filter(|k| !want.contains(k)) {
                lb.remove(k)?;
                changed += 1;
            }
            Default::default()
        }
    };
    let mut now: crate::daemon::LbProgrammed = HashMap::with_capacity(table.entries.len());
    for e in &table.entries {
        match old.remove(&e.frontend) {
            // Unchanged service: nothing to do (the common case).
            Some((prev, kv)) if prev == *e => {
                now.insert(e.frontend, (prev, kv));
            }
            prev => {
                let kv = maps::lb_entries(std::slice::from_ref(e));
                let prev_kv = prev.map(|(_, kv)| kv).unwrap_or_default();
                for (k, _) in &prev_kv {
                    if !kv.iter().any(|(nk, _)| nk == k) {
                        lb.remove(k)?;
                        changed += 1;
                    }
                }
                for (k, v) in &kv {
                    if !prev_kv.iter().any(|(pk, pv)| pk == k && pv == v) {
                        lb.insert(k, v, 0)?;
                        changed += 1;
                    }
                }
                now.insert(e.frontend, (e.clone(), kv));
            }
        }
    }
    // Frontends that went away.
    for (_, (_, kv)) in old {
        for (k, _) in kv {
            lb.remove(&k)?;
            changed += 1;
        }
    }
    bpf.lb_programmed = Some(now);
    Ok(changed)
}

fn sync_map<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod + PartialEq>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    want: &HashMap<K, V>,
) -> anyhow::Result<()> {
    let have: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for k in have {
        if !want.contains_key(&k) {
            map.remove(&k)?;
        }
    }
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0)?;
        }
    }
    Ok(())
}

/// One HTTP server per healthCheckNodePort: 200 while this node has a local
/// backend for the service, 503 otherwise (what cloud load balancers probe
/// for externalTrafficPolicy Local).
fn sync_health_checks(agent: &Agent, checks: &[strait_model::services::HealthCheck]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut servers = agent.health.lock().unwrap();
    servers.retain(|port, (task, _)| {
        let keep = checks.iter().any(|c| c.port == *port);
        if !keep {
            task.abort();
        }
        keep
    });
    for c in checks {
        if let Some((_, n)) = servers.get(&c.port) {
            n.store(c.local_endpoints, Ordering::SeqCst);
            continue;
        }
        let n = std::sync::Arc::new(AtomicUsize::new(c.local_endpoints));
        let (port, service, count) = (c.port, c.service.clone(), n.clone());
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot serve healthCheckNodePort");
                    return;
                }
            };
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let n = count.load(Ordering::SeqCst);
                let (status, code) = if n > 0 {
                    ("200 OK", 200)
                } else {
                    ("503 Service Unavailable", 503)
                };
                let body = format!(
                    "{{\"service\":\"{service}\",\"localEndpoints\":{n},\"code\":{code}}}\n"
                );
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        tracing::info!(port = c.port, service = %c.service, "serving healthCheckNodePort");
        servers.insert(c.port, (task, n));
    }
}
