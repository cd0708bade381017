//! The nftables service backend: the whole `ip strait_svc` table rendered
//! from the service table, applied as one atomic transaction when it changes.

use super::ServiceBackend;
use strait_model::services::ServiceTable;

pub struct NftServices {
    service_cidr: Option<ipnet::Ipv4Net>,
    /// The script last applied (nothing is done while it is unchanged).
    applied: String,
    /// The table it was rendered from.
    prev: Vec<strait_model::services::ServiceEntry>,
}

impl NftServices {
    pub fn new(service_cidr: Option<ipnet::IpNet>) -> Self {
        NftServices {
            service_cidr: match service_cidr {
                Some(ipnet::IpNet::V4(c)) => Some(c),
                _ => None,
            },
            applied: String::new(),
            prev: vec![],
        }
    }
}

impl ServiceBackend for NftServices {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, table: &ServiceTable) -> anyhow::Result<usize> {
        let script = strait_model::nft::render(table, self.service_cidr);
        if script == self.applied {
            return Ok(0);
        }
        crate::daemon::nft_apply(&script)?;
        self.applied = script;
        for (frontend, backend) in removed_udp_backends(&self.prev, &table.entries) {
            flush_udp(frontend, backend);
        }
        self.prev = table.entries.clone();
        Ok(table.entries.len().max(1))
    }
}

/// (frontend, backend) pairs of UDP services whose backend is in no state
/// in the new table: their conntrack entries would keep a steady flow on
/// the removed backend's address forever.
pub fn removed_udp_backends(
    prev: &[strait_model::services::ServiceEntry],
    now: &[strait_model::services::ServiceEntry],
) -> Vec<(strait_model::services::Frontend, std::net::Ipv4Addr)> {
    use strait_model::services::Proto;
    let mut out = vec![];
    for p in prev.iter().filter(|e| e.frontend.proto == Proto::Udp) {
        let kept = now.iter().find(|e| e.frontend == p.frontend);
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
