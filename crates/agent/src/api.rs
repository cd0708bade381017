//! The local API on a unix socket (mode 0600): one JSON request per line.

use crate::daemon::{pause_point, Agent};
use anyhow::Context;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use strait_model::api::{ApiError, ApiErrorKind, NodeStatus, Request, Response};
use strait_model::ipam::AllocationRequest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

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

pub async fn serve(agent: Arc<Agent>, listener: UnixListener) -> anyhow::Result<()> {
    loop {
        let (conn, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(agent, conn).await {
                tracing::debug!(error = %e, "api connection ended");
            }
        });
    }
}

async fn handle_conn(agent: Arc<Agent>, conn: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
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
    Ok(())
}

pub fn handle(agent: &Agent, req: Request) -> Response {
    match req {
        Request::Allocate {
            attachment,
            pod,
            netns,
            host_veth,
        } => {
            if let Some(reason) = agent.not_ready_reason() {
                return Response::Error(ApiError {
                    kind: ApiErrorKind::NotReady,
                    message: format!("node not ready: {reason}"),
                });
            }
            let req = AllocationRequest {
                attachment,
                pod,
                netns,
                host_veth,
            };
            match agent.ipam.allocate(req) {
                Ok(allocation) => {
                    tracing::info!(ip = %allocation.ip, pod = %allocation.pod, container = %allocation.attachment.container_id, "allocated");
                    pause_point("after-allocate");
                    Response::Allocated {
                        cidr_prefix: agent.ipam.cidr().map(|c| c.prefix_len()).unwrap_or(32),
                        allocation,
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
                Response::Released { allocation }
            }
            Err(e) => Response::Error(e),
        },
        Request::Wired { .. } => {
            agent.nudge.notify_one();
            Response::Found { allocation: None }
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
                agent.nudge.notify_one();
                Response::Collected { released }
            }
            Err(e) if e.kind == ApiErrorKind::NotReady => Response::Collected { released: vec![] },
            Err(e) => Response::Error(e),
        },
        Request::Status => {
            let snap = agent.snapshot.borrow().clone();
            let node = snap.node(&agent.cfg.node_name);
            let reason = agent.not_ready_reason();
            Response::Status(NodeStatus {
                node: agent.cfg.node_name.clone(),
                mode: agent.cfg.mode.to_string(),
                pod_cidr: agent.ipam.cidr().map(|c| c.to_string()),
                node_ip: node.and_then(|n| strait_model::cluster::node_internal_ip(n, true)),
                ready: reason.is_none() && agent.ipam.cidr().is_some(),
                reason,
                allocations: agent.ipam.allocations(),
                cooling: agent.ipam.cooling(),
                node_routes: agent.programmed.lock().unwrap().clone(),
                datapath: agent.datapath_status(),
                services: agent.services.lock().unwrap().clone(),
                service_problems: agent.service_problems.lock().unwrap().clone(),
                service_sync: agent.service_sync.lock().unwrap().clone(),
            })
        }
    }
}
