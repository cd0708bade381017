//! The VPC's server load balancers (seed 000 scenario 8): in ENI mode the
//! cloud controller makes the pods' ENIs an SLB's backends (Alibaba's
//! SetBackendServers with ENI-type servers), so traffic from outside goes
//! from the SLB straight to the pod's ENI, never through a node port.

use super::provider::{CloudError, Eni, EniKind};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A lab file's SLB: its address and listeners, each for a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlbSpec {
    pub id: String,
    /// The address clients connect to.
    pub address: IpAddr,
    pub listeners: Vec<Listener>,
}

/// A TCP listener: its port, and the Service (`ns/name` or `name`, in
/// default) whose endpoints are its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub port: u16,
    pub service: String,
}

/// One backend as the VPC records it: an ENI and the address and port
/// on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub eni: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// The records' key of a listener.
pub fn key(slb: &str, port: u16) -> String {
    format!("{slb}:{port}")
}

/// Check a set of SLBs: unique ids, one listener per port.
pub fn check(slbs: &[SlbSpec]) -> Result<(), String> {
    let mut ids = std::collections::BTreeSet::new();
    for s in slbs {
        if !ids.insert(s.id.as_str()) {
            return Err(format!("cloud.slbs: id {} appears twice", s.id));
        }
        let mut ports = std::collections::BTreeSet::new();
        for l in &s.listeners {
            if l.port == 0 || !ports.insert(l.port) {
                return Err(format!(
                    "SLB {}: listener port {} is zero or appears twice",
                    s.id, l.port
                ));
            }
        }
    }
    Ok(())
}

/// Backends for a listener: each address must be a pod's on an ENI (a
/// secondary address of an attached ENI, or a member ENI's own).
pub fn backends(
    enis: &[&Eni],
    slb: &str,
    wanted: &[(IpAddr, u16)],
) -> Result<Vec<Backend>, CloudError> {
    wanted
        .iter()
        .map(|(ip, port)| {
            enis.iter()
                .find(|e| {
                    (e.kind == EniKind::Secondary
                        && e.node.is_some()
                        && e.secondary_ips.contains(ip))
                        || (matches!(e.kind, EniKind::Member { .. }) && e.primary_ip == *ip)
                })
                .map(|e| Backend {
                    eni: e.id.clone(),
                    ip: *ip,
                    port: *port,
                })
                .ok_or_else(|| CloudError::Invalid {
                    message: format!(
                        "SLB {slb}: backend {ip} is no ENI's address; ENI-type backends are pods' addresses on their ENIs"
                    ),
                })
        })
        .collect()
}
