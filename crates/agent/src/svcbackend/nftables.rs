//! The nftables service backend: `ip strait_svc`, changed incrementally
//! ([`strait_model::nft::plan`]): each change rewrites only the frontends
//! that changed, in one atomic `nft -f` transaction, so affinity sets of
//! unrelated services are never touched. At start the table an earlier
//! agent left is adopted (listed, rewritten in place, affinity kept).

use super::ServiceBackend;
use strait_model::services::ServiceTable;

pub struct NftServices {
    service_cidr: Option<ipnet::Ipv4Net>,
    /// What the table holds; None until read from the kernel (at start,
    /// and after a failed apply).
    programmed: Option<strait_model::nft::Programmed>,
}

impl NftServices {
    pub fn new(service_cidr: Option<ipnet::IpNet>) -> Self {
        NftServices {
            service_cidr: match service_cidr {
                Some(ipnet::IpNet::V4(c)) => Some(c),
                _ => None,
            },
            programmed: None,
        }
    }
}

impl ServiceBackend for NftServices {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, table: &ServiceTable) -> anyhow::Result<usize> {
        let prev = match self.programmed.take() {
            Some(p) => p,
            None => in_kernel()?,
        };
        let (script, next) = strait_model::nft::plan(&prev, table, self.service_cidr);
        if script.is_empty() {
            self.programmed = Some(prev);
            return Ok(0);
        }
        // On failure `programmed` stays None: the next pass starts from
        // what the kernel holds.
        crate::daemon::nft_apply(&script)?;
        let was: Vec<_> = prev.services.values().cloned().collect();
        for (frontend, backend) in removed_udp_backends(&was, &table.entries) {
            flush_udp(frontend, backend);
        }
        self.programmed = Some(next);
        Ok(script.lines().count())
    }
}

/// The table as an earlier agent left it (chains and sets by name), or
/// nothing.
fn in_kernel() -> anyhow::Result<strait_model::nft::Programmed> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "table", "ip", strait_model::nft::TABLE])
        .output()
        .map_err(|e| anyhow::anyhow!("run nft: {e} (install nftables)"))?;
    if !out.status.success() {
        // No such table yet.
        return Ok(Default::default());
    }
    Ok(strait_model::nft::parse_listing(&String::from_utf8_lossy(
        &out.stdout,
    ))?)
}

/// (frontend, backend) pairs of UDP services whose backend is in no state
/// in the new table: their conntrack entries would keep a steady flow on
/// the removed backend's address forever.
pub fn removed_udp_backends<P, N>(
    prev: &[P],
    now: &[N],
) -> Vec<(strait_model::services::Frontend, std::net::Ipv4Addr)>
where
    P: std::borrow::Borrow<strait_model::services::ServiceEntry>,
    N: std::borrow::Borrow<strait_model::services::ServiceEntry>,
{
    use strait_model::services::Proto;
    let mut out = vec![];
    for p in prev
        .iter()
        .map(P::borrow)
        .filter(|e| e.frontend.proto == Proto::Udp)
    {
        let kept = now.iter().map(N::borrow).find(|e| e.frontend == p.frontend);
        for b in &p.backends {
            if !kept.is_some_and(|k| k.backends.iter().any(|nb| nb.ip == b.ip)) {
                out.push((p.frontend, b.ip));
            }
        }
    }
    out
}

/// Delete the node's conntrack entries of UDP flows to `frontend` that were
/// DNATed to `backend` (as kube-proxy does with the same tool). Logged, not
/// fatal: the flow then lingers until its UDP timeout.
fn flush_udp(frontend: strait_model::services::Frontend, backend: std::net::Ipv4Addr) {
    let out = std::process::Command::new("conntrack")
        .args(["-D", "-p", "udp", "--orig-dst"])
        .arg(frontend.ip.to_string())
        .args(["--orig-port-dst", &frontend.port.to_string(), "--dst-nat"])
        .arg(backend.to_string())
        .output();
    match out {
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr);
            if let Some(n) = msg
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            {
                if n > 0 {
                    tracing::info!(%frontend, %backend, flows = n, "flushed UDP flows to a removed backend");
                }
            } else if !o.status.success() {
                tracing::warn!(%frontend, %backend, error = %msg.trim(), "could not flush UDP flows to a removed backend");
            }
        }
        Err(e) => {
            tracing::warn!(%frontend, %backend, error = %e, "could not run conntrack to flush UDP flows of a removed backend (install conntrack)")
        }
    }
}
