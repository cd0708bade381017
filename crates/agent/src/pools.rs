//! IPPool allocation at CNI ADD: which pool the pod asks for (its
//! `strait.dev/ippool` annotation), and claiming a block of that pool
//! through the cluster source when the node's blocks are full. Giving
//! blocks back, and adopting the ones the control plane says are ours, is
//! the ipam-blocks reconciler's part.

use crate::daemon::Agent;
use crate::ipam::AllocError;
use ipnet::IpNet;
use std::time::{Duration, Instant};
use strait_model::api::{ApiError, ApiErrorKind};
use strait_model::ipam::{Allocation, AllocationRequest, PodRef};
use strait_model::ippool::{held_blocks, pool_for_pod, requested_pool, Block, Pool};

/// How long ADD waits for a pod the source has not delivered yet, when
/// IPPools exist (its annotation may name one). Kubelet calls CNI only
/// after the pod exists, so this is the source's lag: a watch event, or a
/// files poll.
const POD_WAIT: Duration = Duration::from_secs(2);

/// Claims one ADD may try before giving up (other nodes winning races).
const MAX_CLAIMS: usize = 64;

fn invalid(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Invalid,
        message,
    }
}

/// The pool the pod asks for; None for the node's pod CIDR (no
/// annotation, or a runtime that names no Kubernetes pod).
pub fn pool_for(agent: &Agent, pod: &PodRef) -> Result<Option<Pool>, ApiError> {
    if pod.name.is_empty() {
        return Ok(None);
    }
    let deadline = Instant::now() + POD_WAIT;
    let (snap, found) = loop {
        let snap = agent.snapshot.borrow().clone();
        let found = snap
            .pods
            .iter()
            .find(|p| {
                p.metadata.name.as_deref() == Some(pod.name.as_str())
                    && p.metadata.namespace.as_deref().unwrap_or("default") == pod.namespace
            })
            .cloned();
        if found.is_some() || snap.ip_pools.is_empty() || Instant::now() >= deadline {
            break (snap, found);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(found) = found else {
        if !snap.ip_pools.is_empty() {
            tracing::warn!(%pod, "pod not in the cluster source yet; its address comes from the node's pod CIDR");
        }
        return Ok(None);
    };
    let Some(wanted) = requested_pool(&found) else {
        return Ok(None);
    };
    pool_for_pod(&pod.to_string(), wanted, &snap, &agent.cfg.node_name)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Allocate for `req`, claiming blocks of `pool` while the node's are full.
pub fn allocate(
    agent: &Agent,
    req: AllocationRequest,
    pool: Option<&Pool>,
) -> Result<Allocation, ApiError> {
    if let Some(p) = pool {
        agent.ipam.set_reserved(&p.name, p.reserved());
    }
    let wanted = match agent.ipam.allocate(req.clone()) {
        Err(AllocError::NeedBlock(p)) => p,
        Err(AllocError::Api(e)) => return Err(e),
        Ok(a) => return Ok(a),
    };
    let Some(pool) = pool else {
        // A pool request always comes with its pool.
        return Err(invalid(format!("IPPool {wanted}: not resolved")));
    };
    // One claim at a time on this node: a second ADD waiting here finds the
    // first one's block.
    let _claiming = agent.ipam.claims.lock().unwrap();
    let rt = tokio::runtime::Handle::current();
    let mut lost: Vec<IpNet> = vec![];
    for _ in 0..MAX_CLAIMS {
        match agent.ipam.allocate(req.clone()) {
            Err(AllocError::NeedBlock(_)) => {}
            Err(AllocError::Api(e)) => return Err(e),
            Ok(a) => return Ok(a),
        }
        let snap = agent.snapshot.borrow().clone();
        let held = held_blocks(&snap);
        let mine = agent.ipam.blocks();
        let taken: Vec<IpNet> = held
            .iter()
            .map(|b| b.cidr)
            .chain(mine.keys().copied())
            .chain(lost.iter().copied())
            .collect();
        let Some(cidr) = pool.free_block(taken.iter()) else {
            let ours = mine.values().filter(|p| **p == pool.name).count();
            return Err(ApiError {
                kind: ApiErrorKind::Exhausted,
                message: format!(
                    "IPPool {} ({}) has no free /{} block: {} are held, {ours} by this node and those are full; widen the pool, use a smaller blockSize, or delete pods",
                    pool.name,
                    pool.cidr,
                    pool.block_prefix,
                    held.iter().filter(|b| b.pool == pool.name).count().max(ours),
                ),
            });
        };
        let block = Block {
            cidr,
            pool: pool.name.clone(),
            node: agent.cfg.node_name.clone(),
        };
        match rt.block_on(agent.source.claim_block(&block)) {
            Ok(true) => {
                tracing::info!(block = %cidr, pool = %pool.name, "claimed a block of the IPPool");
                match agent
                    .ipam
                    .allocate_in_new_block(req.clone(), cidr, &pool.name)
                {
                    Err(AllocError::NeedBlock(_)) => {}
                    Err(AllocError::Api(e)) => return Err(e),
                    Ok(a) => return Ok(a),
                }
            }
            Ok(false) => {
                tracing::debug!(block = %cidr, "block already held; trying the next");
                lost.push(cidr);
            }
            Err(e) => {
                return Err(ApiError {
                    kind: ApiErrorKind::Internal,
                    message: format!(
                        "claiming block {cidr} of IPPool {} failed, nothing was allocated: {e:#}",
                        pool.name
                    ),
                })
            }
        }
    }
    Err(ApiError {
        kind: ApiErrorKind::Exhausted,
        message: format!(
            "IPPool {}: {MAX_CLAIMS} blocks were claimed by other nodes first; retry",
            pool.name
        ),
    })
}
