//! The local API on a unix socket (mode 0600): one JSON request per line.

use crate::daemon::{pause_point, Agent};
use anyhow::Context;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use strait_model::api::{ApiError, ApiErrorKind, NodeStatus, Request, Response};
use strait_model::ipam::AllocationRequest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// Bind the socket without a window in which it is reachable with looser
/// permissions: bind a temporary name, chmod 0600, then rename into place.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path.parent().context("socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).with_context(|| format!("bind {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("move socket to {}", path.display()))?;
    Ok(l)
}

/// Bounds that keep a misbehaving or flooding client from taking the agent
/// down: the socket is root-only, but a buggy root process is enough.
pub struct ApiLimits {
    /// Connections served at once; more are answered "busy" and closed.
    pub max_conns: usize,
    /// The longest request line.
    pub max_request: usize,
    /// How long a connection may take to finish a request line, or stay idle.
    pub read_timeout: std::time::Duration,
}

/// How long an ADD waits for its pod to be programmed.
pub const WIRED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub const LIMITS: ApiLimits = ApiLimits {
    max_conns: 256,
    max_request: 1 << 20,
    read_timeout: std::time::Duration::from_secs(10),
};

/// Serve until the process ends. An accept error (EMFILE under a flood, say)
/// is logged and waited out, never fatal.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener) -> anyhow::Result<()> {
    let listener = Arc::new(listener);
    serve_on(agent, Access::Full, move || {
        let l = listener.clone();
        async move { l.accept().await.map(|(c, _)| c) }
    })
    .await
}

/// Who may ask what: the root-only socket anything, the network listener
/// ([`crate::explain_api`]) read-only questions alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
}

pub(crate) async fn serve_on<C, F, Fut>(
    agent: Arc<Agent>,
    access: Access,
    accept: F,
) -> anyhow::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<C>>,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(LIMITS.max_conns));
    let mut accept_errors = 0u64;
    loop {
        let mut conn = match accept().await {
            Ok(c) => c,
            Err(e) => {
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "api: accept failed; still serving");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let busy = error_line(
                ApiErrorKind::NotReady,
                "the agent is serving too many connections; retry",
            );
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(100), conn.write_all(&busy))
                    .await;
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(agent, conn, access).await {
                tracing::debug!(error = %e, "api connection ended");
            }
            drop(permit);
        });
    }
}

fn error_line(kind: ApiErrorKind, message: &str) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Response::Error(ApiError {
        kind,
        message: message.into(),
    }))
    .expect("responses serialise");
    out.push(b'\n');
    out
}

/// Read one request line within the limits: Ok(None) at a clean end of the
/// connection, an error for a timeout or an oversized line.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<()>> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let limit = LIMITS.max_request as u64 + 1;
    let n = tokio::time::timeout(LIMITS.read_timeout, r.take(limit).read_until(b'\n', buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request not finished in time")
        })??;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if buf.len() as u64 >= limit {
                "request longer than the limit"
            } else {
                "connection closed mid-request"
            },
        ));
    }
    Ok(Some(()))
}

async fn handle_conn<C>(agent: Arc<Agent>, conn: C, access: Access) -> std::io::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (r, mut w) = tokio::io::split(conn);
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        match read_request(&mut r, &mut buf).await {
            Ok(Some(())) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::TimedOut {
                    let _ = w
                        .write_all(&error_line(
                            ApiErrorKind::Invalid,
                            &format!("request refused: {e} ({} bytes max)", LIMITS.max_request),
                        ))
                        .await;
                }
                return Err(e);
            }
        }
        let resp = match serde_json::from_slice::<Request>(&buf) {
            Ok(req) if access == Access::ReadOnly && !crate::explain_api::read_only(&req) => {
                Response::Error(ApiError {
                    kind: ApiErrorKind::Invalid,
                    message: "the network listener answers strait explain's read-only questions only; use the node's socket".into(),
                })
            }
            // ADD waits here until its pod is programmed (bounded).
            Ok(Request::Wired { attachment }) => {
                let veth = match agent.ipam.get(&attachment) {
                    Some(a) => a.host_veth,
                    None => strait_model::naming::host_veth_name(
                        &attachment.container_id,
                        &attachment.ifname,
                    ),
                };
                match agent.wait_programmed(&veth, WIRED_WAIT).await {
                    Ok(()) => Response::Programmed {},
                    Err(message) => Response::Error(ApiError {
                        kind: ApiErrorKind::Internal,
                        message,
                    }),
                }
            }
            Ok(req) => {
                let agent = agent.clone();
                // IPAM persists synchronously (fsync); keep it off the reactor.
                tokio::task::spawn_blocking(move || handle(&agent, req))
                    .await
                    .unwrap_or_else(|e| {
                        Response::Error(ApiError {
                            kind: ApiErrorKind::Internal,
                            message: e.to_string(),
                        })
                    })
            }
            Err(e) => Response::Error(ApiError {
                kind: ApiErrorKind::Invalid,
                message: format!("request is not valid: {e}"),
            }),
        };
        let mut out = serde_json::to_vec(&resp).expect("responses serialise");
        out.push(b'\n');
        w.write_all(&out).await?;
    }
}

/// An ADD in progress: its host veth is not an orphan until it is over.
struct Adding<'a> {
    agent: &'a Agent,
    veth: String,
}

impl<'a> Adding<'a> {
    fn new(agent: &'a Agent, veth: &str) -> Self {
        *agent
            .adding
            .lock()
            .unwrap()
            .entry(veth.to_string())
            .or_default() += 1;
        Adding {
            agent,
            veth: veth.to_string(),
        }
    }
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        let mut a = self.agent.adding.lock().unwrap();
        if let Some(n) = a.get_mut(&self.veth) {
            *n -= 1;
            if *n == 0 {
                a.remove(&self.veth);
            }
        }
    }
}

/// ADD in eni mode: an ENI's secondary address, the ENI wired and the
/// pod's rules in place before the runtime hears of it. A failure after the
/// address was taken gives it back.
fn eni_allocate(
    enis: &crate::eni::Enis,
    agent: &Agent,
    req: AllocationRequest,
) -> Result<strait_model::ipam::Allocation, ApiError> {
    let attachment = req.attachment.clone();
    // ENI-Trunking: a pod a PodNetworking selects gets a member ENI.
    let networking = crate::eni::networking_for(agent, &req.pod);
    let _kernel = enis.kernel.blocking_lock();
    let (a, member, eni) = match &networking {
        Some(pn) => {
            let (a, rec) = enis.allocate_member(&agent.ipam, req, pn)?;
            let id = rec.member.clone();
            (a, Some(rec), id)
        }
        None => {
            let (a, eni) = enis.allocate(&agent.ipam, req)?;
            (a, None, eni)
        }
    };
    let wired = tokio::runtime::Handle::current().block_on(async {
        let nl = strait_netlink::Netlink::connect()?;
        match &member {
            Some(rec) => enis.wire_member_pod(&nl, rec).await,
            None => enis.wire_pod(&nl, a.ip, &eni).await,
        }
    });
    match wired {
        Ok(()) => Ok(a),
        Err(e) => {
            let _ = agent.ipam.release(&attachment);
            if member.is_some() {
                let _ = enis.release_member(a.ip);
            }
            Err(ApiError {
                kind: ApiErrorKind::Internal,
                message: format!(
                    "address {} of ENI {eni} could not be wired, nothing was kept: {e:#}",
                    a.ip
                ),
            })
        }
    }
}

pub fn handle(agent: &Agent, req: Request) -> Response {
    match req {
        Request::Allocate {
            attachment,
            pod,
            netns,
            host_veth,
            netns_ino,
            requested,
            host_ports,
        } => {
            if let Some(reason) = agent.not_ready_reason() {
                return Response::Error(ApiError {
                    kind: ApiErrorKind::NotReady,
                    message: format!("node not ready: {reason}"),
                });
            }
            let _adding = Adding::new(agent, &host_veth);
            let pool = match crate::pools::pool_for(agent, &pod) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e.message, "allocation refused");
                    return Response::Error(e);
                }
            };
            let req = AllocationRequest {
                attachment,
                pod,
                netns,
                host_veth,
                netns_ino,
                requested,
                host_ports,
                pool: pool.as_ref().map(|p| p.name.clone()),
            };
            let allocated = match (&agent.macvlan, &agent.eni) {
                (Some(ports), _) => crate::macvlan::allocate(agent, ports, req, pool.clone())
                    .map(|(a, w)| (a, Some(w))),
                (None, Some(enis)) => eni_allocate(enis, agent, req).map(|a| (a, None)),
                (None, None) => {
                    crate::pools::allocate(agent, req, pool.as_ref()).map(|a| (a, None))
                }
            };
            match allocated {
                Ok((allocation, macvlan)) => {
                    tracing::info!(ip = %allocation.ip, pod = %allocation.pod, container = %allocation.attachment.container_id, pool = allocation.pool.as_deref().unwrap_or("-"), "allocated");
                    pause_point("after-allocate");
                    let prefix = match &pool {
                        Some(p) => p.block_prefix,
                        None => agent.ipam.cidr().map(|c| c.prefix_len()).unwrap_or(32),
                    };
                    Response::Allocated {
                        cidr_prefix: prefix,
                        allocation,
                        macvlan,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "allocation refused");
                    Response::Error(e)
                }
            }
        }
        Request::Release { attachment } => match agent.ipam.release(&attachment) {
            Ok(allocation) => {
                if let Some(a) = &allocation {
                    tracing::info!(ip = %a.ip, pod = %a.pod, "released");
                }
                if let (Some(enis), Some(a)) = (&agent.eni, &allocation) {
                    if let Err(e) = enis.release_member(a.ip) {
                        tracing::warn!(error = %e, "PodENI record not released; the eni-pool reconciler finds the pod gone");
                    }
                    // Terway's rules for the address go before DEL returns
                    // (the pool takes the address back on its next pass).
                    let done = tokio::runtime::Handle::current().block_on(async {
                        crate::eni::Enis::unwire_pod(&strait_netlink::Netlink::connect()?, a.ip)
                            .await
                    });
                    if let Err(e) = done {
                        tracing::warn!(error = %format!("{e:#}"), "pod rules not removed; the eni-pool reconciler retries");
                    }
                    agent.nudge();
                }
                if let (Some(ports), Some(_)) = (&agent.macvlan, &allocation) {
                    // The VLAN's port goes with its last pod, before DEL
                    // returns.
                    if let Err(e) = ports.sweep_blocking(agent) {
                        tracing::warn!(error = %format!("{e:#}"), "VLAN ports not swept; the reconciler retries");
                        agent.nudge();
                    }
                }
                Response::Released { allocation }
            }
            Err(e) => Response::Error(e),
        },
        Request::Wired { .. } => unreachable!("answered in handle_conn"),
        Request::BgpRoutes => match agent.bgp.get().map(|h| h.routes_blocking()) {
            None => Response::Error(ApiError {
                kind: ApiErrorKind::Invalid,
                message: format!(
                    "this node runs no BGP speaker (cross-node mode {}; BGP is --cross-node bgp)",
                    agent.cross_node
                ),
            }),
            Some(None) => Response::Error(ApiError {
                kind: ApiErrorKind::Internal,
                message: "the BGP speaker has stopped (see the agent's log)".into(),
            }),
            Some(Some(v)) => Response::BgpRoutes(Box::new(bgp_routes(v))),
        },
        Request::EniMapping => match &agent.eni {
            None => Response::Error(ApiError {
                kind: ApiErrorKind::Invalid,
                message: format!(
                    "this node does not run ENI multi-IP (cross-node mode {}; it is --cross-node eni)",
                    agent.cross_node
                ),
            }),
            Some(enis) => {
                let snap = agent.snapshot.borrow().clone();
                match enis.mapping(&agent.ipam, &snap) {
                    Ok(m) => Response::EniMapping(Box::new(m)),
                    Err(e) => Response::Error(ApiError {
                        kind: ApiErrorKind::Internal,
                        message: format!("the cloud could not describe the node's ENIs: {e}"),
                    }),
                }
            }
        },
        Request::ServiceLookup { ip, port, udp } => {
            let pb = agent.published.lock().unwrap();
            let proto = if udp {
                strait_model::services::Proto::Udp
            } else {
                strait_model::services::Proto::Tcp
            };
            let entry = pb
                .services
                .iter()
                .find(|e| {
                    std::net::IpAddr::from(e.frontend.ip) == ip
                        && e.frontend.port == port
                        && e.frontend.proto == proto
                })
                .map(|e| (**e).clone());
            Response::ServiceLookup(Box::new(strait_model::api::ServiceLookup {
                mode: agent.cfg.mode.to_string(),
                redirect_peer: agent
                    .datapath
                    .as_ref()
                    .is_some_and(|(_, f)| f.redirect_peer),
                entry,
            }))
        }
        Request::Kernel { netns, tool, args } => {
            crate::explain_api::kernel(agent, netns.as_deref(), &tool, &args)
        }
        Request::Map { question } => Response::Map {
            entry: strait_bpf::lookup::answer(&agent.cfg.bpf_dir, &question),
        },
        Request::PolicyList => Response::Policy {
            pods: agent.published.lock().unwrap().policy.clone(),
        },
        Request::PolicyExplain {
            src,
            dst,
            port,
            proto,
        } => {
            let snap = agent.snapshot.borrow().clone();
            match explain_policy(&snap, &src, &dst, port, proto) {
                Ok(e) => Response::PolicyVerdict(Box::new(e)),
                Err(message) => Response::Error(ApiError {
                    kind: ApiErrorKind::Invalid,
                    message,
                }),
            }
        }
        Request::Get { attachment } => Response::Found {
            allocation: agent.ipam.get(&attachment),
        },
        Request::Gc { valid } => match agent.ipam.retain(&valid) {
            Ok(released) => {
                for a in &released {
                    tracing::info!(ip = %a.ip, pod = %a.pod, "GC released");
                }
                // Links of released pods go in the reconciler's next pass.
                agent
                    .doomed_links
                    .lock()
                    .unwrap()
                    .extend(released.iter().map(|a| a.host_veth.clone()));
                agent.nudge();
                Response::Collected { released }
            }
            Err(e) if e.kind == ApiErrorKind::NotReady => Response::Collected { released: vec![] },
            Err(e) => Response::Error(e),
        },
        Request::Status => {
            let snap = agent.snapshot.borrow().clone();
            let node = snap.node(&agent.cfg.node_name);
            let reason = agent.not_ready_reason();
            let datapath = agent.datapath_status();
            let pb = agent.published.lock().unwrap();
            Response::Status(Box::new(NodeStatus {
                node: agent.cfg.node_name.clone(),
                mode: agent.cfg.mode.to_string(),
                pod_cidr: agent.ipam.cidr().map(|c| c.to_string()),
                node_ip: node.and_then(|n| strait_model::cluster::node_internal_ip(n, true)),
                ready: reason.is_none() && agent.ipam.cidr().is_some(),
                reason,
                allocations: agent.ipam.allocations(),
                cooling: agent.ipam.cooling(),
                datapath,
                node_routes: pb.node_routes.clone(),
                services: pb.services.iter().map(|e| (**e).clone()).collect(),
                service_problems: pb.service_problems.clone(),
                service_sync: pb.service_sync.clone(),
                reconcilers: agent
                    .reconcilers
                    .lock()
                    .unwrap()
                    .values()
                    .cloned()
                    .collect(),
                cross_node: agent.cross_node.into(),
                service_backend: agent.service_backend.into(),
                policy_backend: agent.policy_backend.into(),
                conntrack: pb.conntrack.clone(),
                source: Some(agent.source.health()),
                ipam_blocks: ipam_blocks(agent),
                vlan_ports: vlan_ports(agent, &snap),
                bgp_peers: bgp_peers(agent),
            }))
        }
    }
}

/// The IPPool blocks this node holds, with their use.
pub(crate) fn ipam_blocks(agent: &Agent) -> Vec<strait_model::api::BlockStatus> {
    let allocs = agent.ipam.allocations();
    agent
        .ipam
        .blocks()
        .into_iter()
        .map(|(cidr, pool)| strait_model::api::BlockStatus {
            cidr,
            pool,
            in_use: allocs.iter().filter(|a| cidr.contains(&a.ip)).count(),
            size: cidr_size(cidr),
        })
        .collect()
}

/// Addresses in `cidr` (saturating for wide IPv6 prefixes).
pub(crate) fn cidr_size(cidr: ipnet::IpNet) -> u64 {
    1u64.checked_shl(u32::from(cidr.max_prefix_len() - cidr.prefix_len()))
        .unwrap_or(u64::MAX)
}

/// The BGP sessions (bgp modes; none otherwise).
pub(crate) fn bgp_peers(agent: &Agent) -> Vec<strait_model::api::BgpPeerStatus> {
    agent
        .bgp
        .get()
        .map(|h| h.peers())
        .unwrap_or_default()
        .into_iter()
        .map(|p| strait_model::api::BgpPeerStatus {
            address: p.address,
            asn: p.asn,
            state: p.state.to_string(),
            up_secs: p.established_for.map(|d| d.as_secs()),
            received: p.received,
            stale: p.stale,
            advertised: p.advertised,
            flaps: p.flaps,
            last_error: p.last_error,
        })
        .collect()
}

/// `strait policy explain`: resolve both ends (a pod as ns/name or name, or
/// an address) and ask the same compiler the policy reconciler uses.
fn explain_policy(
    snap: &strait_model::cluster::ClusterSnapshot,
    src: &str,
    dst: &str,
    port: u16,
    proto: strait_model::policy::Proto,
) -> Result<strait_model::api::PolicyExplanation, String> {
    use strait_model::policy::{pod_ips, verdict, View};
    let resolve = |what: &str| -> Result<(String, std::net::IpAddr), String> {
        if let Ok(ip) = what.parse::<std::net::IpAddr>() {
            let name = snap
                .pods
                .iter()
                .find(|p| pod_ips(p).contains(&ip))
                .map(|p| pod_key(p))
                .unwrap_or_else(|| what.to_string());
            return Ok((name, ip));
        }
        let (ns, name) = what.split_once('/').unwrap_or(("default", what));
        let pod = snap
            .pods
            .iter()
            .find(|p| {
                p.metadata.name.as_deref() == Some(name)
                    && p.metadata.namespace.as_deref().unwrap_or("default") == ns
            })
            .ok_or_else(|| format!("no pod {ns}/{name} in the cluster (give ns/name or an IP)"))?;
        let ip = pod_ips(pod)
            .into_iter()
            .next()
            .ok_or_else(|| format!("pod {ns}/{name} has no address yet"))?;
        Ok((format!("{ns}/{name}"), ip))
    };
    let (s, sip) = resolve(src)?;
    let (d, dip) = resolve(dst)?;
    let view = View::new(snap);
    Ok(strait_model::api::PolicyExplanation {
        src: s,
        src_ip: sip,
        dst: d,
        dst_ip: dip,
        port,
        proto,
        verdict: verdict(&view, sip, dip, proto, port),
    })
}

fn pod_key(p: &k8s_openapi::api::core::v1::Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn bgp_routes(v: strait_bgp::view::RouteView) -> strait_model::api::BgpRoutes {
    use strait_model::api::{BgpAdvertisedRoute, BgpLearnedRoute};
    strait_model::api::BgpRoutes {
        learned: v
            .learned
            .into_iter()
            .map(|r| BgpLearnedRoute {
                prefix: r.prefix,
                peer: r.peer,
                next_hop: r.next_hop,
                as_path: r.as_path,
                local_pref: r.local_pref,
                med: r.med,
                installed: r.installed,
                stale: r.stale,
                originator: r.originator,
            })
            .collect(),
        advertised: v
            .advertised
            .into_iter()
            .map(|r| BgpAdvertisedRoute {
                prefix: r.prefix,
                peer: r.peer,
                reflected_from: r.reflected_from,
            })
            .collect(),
    }
}

/// macvlan mode's ports, from the pinned map (what the datapath uses),
/// with the pods of each VLAN.
fn vlan_ports(
    agent: &Agent,
    snap: &strait_model::cluster::ClusterSnapshot,
) -> Vec<strait_model::api::VlanPortStatus> {
    if agent.macvlan.is_none() {
        return vec![];
    }
    let (underlay, _) = strait_model::underlay::underlay_subnets(snap);
    let allocs = agent.ipam.allocations();
    let mut out: Vec<_> = strait_bpf::vlan::ports(&agent.cfg.bpf_dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let (parent, trunk) = strait_model::naming::vlan_port_names(&agent.cfg.uplink, p.vid);
            let pods = allocs
                .iter()
                .filter(|a| {
                    underlay
                        .iter()
                        .any(|u| u.vlan == p.vid && u.cidr.contains(&a.ip))
                })
                .count();
            strait_model::api::VlanPortStatus {
                vlan: p.vid,
                parent,
                trunk,
                pods,
            }
        })
        .collect();
    out.sort_by_key(|p| p.vlan);
    out
}
