//! The cloud side of Terway's ENI modes (seeds 000 and 002), kept apart
//! from strait's node code: a VPC's vSwitches, security groups and elastic
//! network interfaces (ENIs), the provider interface strait's agent uses
//! to get ENIs and addresses ([`provider::EniProvider`]), and the VPC's own
//! bookkeeping with its quotas ([`vpc::Vpc`]), which the lab's cloud
//! emulator serves. Pure: no I/O, deterministic, unit-tested.
//!
//! Address-family generic: vSwitch CIDRs, ENI addresses and security-group
//! peers are `IpNet`/`IpAddr`.

pub mod eniip;
pub mod provider;
pub mod sg;
pub mod slb;
pub mod trunking;
pub mod vpc;
pub mod wire;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A lab file's `cloud: vpc` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcSpec {
    pub vswitches: Vec<VSwitchSpec>,
    #[serde(default)]
    pub security_groups: Vec<sg::SecurityGroup>,
    /// Per-node ENI quotas (an instance type's limits).
    #[serde(default)]
    pub quota: Quota,
    /// Server load balancers whose backends are pods' ENIs.
    #[serde(default)]
    pub slbs: Vec<slb::SlbSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VSwitchSpec {
    pub id: String,
    pub cidr: IpNet,
    pub zone: String,
}

/// An instance type's ENI limits. The defaults are a small instance's
/// (ecs.g6.large: 3 ENIs, 6 addresses each, counting the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// ENIs a node may have attached, its primary ENI included.
    pub enis: usize,
    /// Private addresses per ENI, its primary address included.
    pub ips_per_eni: usize,
    /// Member ENIs a trunk ENI may carry.
    pub members_per_trunk: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            enis: 3,
            ips_per_eni: 6,
            members_per_trunk: 10,
        }
    }
}

impl VpcSpec {
    /// Check the spec: unique ids, vSwitch CIDRs that do not overlap,
    /// security-group rules that make sense, quotas above zero.
    pub fn check(&self) -> Result<(), String> {
        if self.vswitches.is_empty() {
            return Err("cloud.vswitches: a VPC needs at least one vSwitch".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, v) in self.vswitches.iter().enumerate() {
            if !ids.insert(v.id.as_str()) {
                return Err(format!("cloud.vswitches: id {} appears twice", v.id));
            }
            if v.cidr.hosts().nth(3).is_none() {
                return Err(format!(
                    "vSwitch {}: {} is too small (the gateway and reserved addresses need room)",
                    v.id, v.cidr
                ));
            }
            for w in &self.vswitches[..i] {
                if w.cidr.contains(&v.cidr.network()) || v.cidr.contains(&w.cidr.network()) {
                    return Err(format!(
                        "vSwitches {} ({}) and {} ({}) overlap",
                        w.id, w.cidr, v.id, v.cidr
                    ));
                }
            }
        }
        let mut gids = std::collections::BTreeSet::new();
        for g in &self.security_groups {
            if !gids.insert(g.id.as_str()) {
                return Err(format!("cloud.securityGroups: id {} appears twice", g.id));
            }
            g.check()?;
        }
        slb::check(&self.slbs)?;
        let q = self.quota;
        if q.enis < 1 || q.ips_per_eni < 1 {
            return Err("cloud.quota: enis and ipsPerEni must be at least 1".into());
        }
        Ok(())
    }

    pub fn vswitch(&self, id: &str) -> Option<&VSwitchSpec> {
        self.vswitches.iter().find(|v| v.id == id)
    }
}

/// The vSwitch's gateway: its first host address, as in a VPC.
pub fn gateway(cidr: IpNet) -> std::net::IpAddr {
    cidr.hosts().next().expect("checked: the vSwitch has hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> VpcSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn specs_are_checked_with_errors_that_name_the_fix() {
        let ok = spec(
            "vswitches: [{id: vsw-a, cidr: 198.18.32.0/24, zone: a}, {id: vsw-b, cidr: 198.18.33.0/24, zone: b}]",
        );
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.quota, Quota::default());
        let overlap = spec(
            "vswitches: [{id: vsw-a, cidr: 198.18.32.0/23, zone: a}, {id: vsw-b, cidr: 198.18.33.0/24, zone: b}]",
        );
        assert!(overlap.check().unwrap_err().contains("overlap"));
        let dup = spec(
            "vswitches: [{id: vsw-a, cidr: 198.18.32.0/24, zone: a}, {id: vsw-a, cidr: 198.18.33.0/24, zone: b}]",
        );
        assert!(dup.check().unwrap_err().contains("twice"));
        let tiny = spec("vswitches: [{id: vsw-a, cidr: 198.18.32.0/30, zone: a}]");
        assert!(tiny.check().unwrap_err().contains("too small"));
        assert!(spec("vswitches: []").check().is_err());
        assert_eq!(
            gateway("198.18.32.0/24".parse().unwrap()).to_string(),
            "198.18.32.1"
        );
    }
}
