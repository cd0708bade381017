//! The nftables service backend: the whole `ip strait_svc` table rendered
//! from the service table, applied as one atomic transaction when it changes.

use super::ServiceBackend;
use strait_model::services::ServiceTable;

pub struct NftServices {
    service_cidr: Option<ipnet::Ipv4Net>,
    /// The script last applied (nothing is done while it is unchanged).
    applied: String,
}

impl NftServices {
    pub fn new(service_cidr: Option<ipnet::IpNet>) -> Self {
        NftServices {
            service_cidr: match service_cidr {
                Some(ipnet::IpNet::V4(c)) => Some(c),
                _ => None,
            },
            applied: String::new(),
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
        Ok(table.entries.len().max(1))
    }
}
