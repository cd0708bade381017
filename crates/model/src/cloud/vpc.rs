//! The VPC's own records: which ENIs exist, where they are attached, which
//! addresses they hold, and the quotas. The lab's cloud emulator keeps one
//! of these (persisted, and mirrored into kernel objects); its counts are
//! the ground truth the leak tests compare strait against.

use super::provider::{CloudError, Eni, EniKind, EniProvider};
use super::VpcSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vpc {
    pub spec: VpcSpec,
    pub enis: BTreeMap<String, Eni>,
    /// The next ENI number (ids and MACs are derived from it).
    next: u64,
    /// Each SLB listener's backends (key `slb::key`).
    #[serde(default)]
    pub slb_backends: BTreeMap<String, Vec<super::slb::Backend>>,
}

fn not_found(what: &str, id: &str) -> CloudError {
    CloudError::NotFound {
        what: what.into(),
        id: id.into(),
    }
}

impl Vpc {
    pub fn new(spec: VpcSpec) -> Result<Self, String> {
        spec.check()?;
        Ok(Vpc {
            spec,
            enis: BTreeMap::new(),
            next: 1,
            slb_backends: BTreeMap::new(),
        })
    }

    /// Every address of a vSwitch in use (primary and secondary).
    pub fn used(&self, vswitch: &str) -> BTreeSet<IpAddr> {
        self.enis
            .values()
            .filter(|e| e.vswitch == vswitch)
            .flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied()))
            .collect()
    }

    /// The lowest free address of a vSwitch: not the network, not the
    /// gateway (first host), not the broadcast, not in use.
    fn free_ip(&self, vswitch: &str) -> Result<IpAddr, CloudError> {
        let v = self
            .spec
            .vswitch(vswitch)
            .ok_or_else(|| not_found("vSwitch", vswitch))?;
        let used = self.used(vswitch);
        v.cidr
            .hosts()
            .skip(1)
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| CloudError::IpNotEnough {
                vswitch: v.id.clone(),
                cidr: v.cidr.to_string(),
            })
    }

    fn new_eni(
        &mut self,
        node: Option<&str>,
        vswitch: &str,
        groups: &[String],
        kind: EniKind,
        device_index: Option<u32>,
    ) -> Result<Eni, CloudError> {
        if let Some(g) = groups
            .iter()
            .find(|g| !self.spec.security_groups.iter().any(|s| &s.id == *g))
        {
            return Err(not_found("security group", g));
        }
        let ip = self.free_ip(vswitch)?;
        let n = self.next;
        self.next += 1;
        let eni = Eni {
            id: format!("eni-{n:08x}"),
            // Alibaba Cloud's OUI, then the ENI's number.
            mac: format!(
                "00:16:3e:{:02x}:{:02x}:{:02x}",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff
            ),
            node: node.map(str::to_string),
            vswitch: vswitch.to_string(),
            primary_ip: ip,
            secondary_ips: vec![],
            security_groups: groups.to_vec(),
            kind,
            device_index,
        };
        self.enis.insert(eni.id.clone(), eni.clone());
        Ok(eni)
    }

    /// A node is launched: its primary ENI (eth0) in `vswitch`.
    pub fn add_node(
        &mut self,
        node: &str,
        vswitch: &str,
        groups: &[String],
    ) -> Result<Eni, CloudError> {
        if let Some(e) = self
            .enis
            .values()
            .find(|e| e.node.as_deref() == Some(node) && e.kind == EniKind::Primary)
        {
            return Ok(e.clone());
        }
        self.new_eni(Some(node), vswitch, groups, EniKind::Primary, Some(0))
    }

    /// A node whose primary ENI the VPC did not allocate (the lab's
    /// nodes sit on the fabric): recorded with its address, so it counts
    /// against the node's ENI quota as eth0 does.
    pub fn adopt_node(&mut self, node: &str, ip: IpAddr) -> Eni {
        if let Some(e) = self
            .enis
            .values()
            .find(|e| e.node.as_deref() == Some(node) && e.kind == EniKind::Primary)
        {
            return e.clone();
        }
        let n = self.next;
        self.next += 1;
        let eni = Eni {
            id: format!("eni-{n:08x}"),
            mac: String::new(),
            node: Some(node.into()),
            vswitch: String::new(),
            primary_ip: ip,
            secondary_ips: vec![],
            security_groups: vec![],
            kind: EniKind::Primary,
            device_index: Some(0),
        };
        self.enis.insert(eni.id.clone(), eni.clone());
        eni
    }

    /// A node is released: every ENI attached to it is deleted with its
    /// addresses (and a trunk's members with it).
    pub fn remove_node(&mut self, node: &str) -> Vec<Eni> {
        let trunks: BTreeSet<String> = self
            .enis
            .values()
            .filter(|e| e.node.as_deref() == Some(node) && e.kind == EniKind::Trunk)
            .map(|e| e.id.clone())
            .collect();
        let gone: Vec<String> = self
            .enis
            .values()
            .filter(|e| {
                e.node.as_deref() == Some(node)
                    || matches!(&e.kind, EniKind::Member { trunk, .. } if trunks.contains(trunk))
            })
            .map(|e| e.id.clone())
            .collect();
        gone.iter().filter_map(|id| self.enis.remove(id)).collect()
    }

    fn eni_mut(&mut self, id: &str) -> Result<&mut Eni, CloudError> {
        self.enis.get_mut(id).ok_or_else(|| not_found("ENI", id))
    }

    /// Make `backends` a listener's backends (the cloud controller's
    /// SetBackendServers). Every address must be on an ENI.
    pub fn set_slb_backends(
        &mut self,
        slb: &str,
        port: u16,
        backends: &[(IpAddr, u16)],
    ) -> Result<(), CloudError> {
        let s = self
            .spec
            .slbs
            .iter()
            .find(|s| s.id == slb)
            .ok_or_else(|| not_found("SLB", slb))?;
        if !s.listeners.iter().any(|l| l.port == port) {
            return Err(not_found("listener", &super::slb::key(slb, port)));
        }
        let enis: Vec<&Eni> = self.enis.values().collect();
        let b = super::slb::backends(&enis, slb, backends)?;
        self.slb_backends.insert(super::slb::key(slb, port), b);
        Ok(())
    }

    /// The node's ENIs, and the member ENIs its trunks carry
    /// (DescribeNetworkInterfaces by InstanceId, then by
    /// TrunkNetworkInstanceId).
    pub fn describe(&self, node: &str) -> Vec<Eni> {
        let mine = |e: &Eni| e.node.as_deref() == Some(node);
        let trunks: BTreeSet<&str> = self
            .enis
            .values()
            .filter(|e| mine(e) && e.kind == EniKind::Trunk)
            .map(|e| e.id.as_str())
            .collect();
        self.enis
            .values()
            .filter(|e| {
                mine(e)
                    || matches!(&e.kind, EniKind::Member { trunk, .. } if trunks.contains(trunk.as_str()))
            })
            .cloned()
            .collect()
    }

    pub fn create_eni(
        &mut self,
        node: &str,
        vswitch: &str,
        groups: &[String],
        trunk: bool,
    ) -> Result<Eni, CloudError> {
        let on_node: Vec<u32> = self
            .enis
            .values()
            .filter(|e| e.node.as_deref() == Some(node))
            .filter_map(|e| e.device_index)
            .collect();
        if on_node.len() >= self.spec.quota.enis {
            return Err(CloudError::EniQuota {
                node: node.into(),
                limit: self.spec.quota.enis,
            });
        }
        let index = (1..).find(|i| !on_node.contains(i)).unwrap();
        let kind = if trunk {
            EniKind::Trunk
        } else {
            EniKind::Secondary
        };
        self.new_eni(Some(node), vswitch, groups, kind, Some(index))
    }

    pub fn delete_eni(&mut self, id: &str) -> Result<(), CloudError> {
        let e = self.enis.get(id).ok_or_else(|| not_found("ENI", id))?;
        match &e.kind {
            EniKind::Primary => {
                return Err(CloudError::Invalid {
                    message: format!("ENI {id} is its node's primary ENI; it goes with the node"),
                })
            }
            EniKind::Trunk => {
                if let Some(m) = self
                    .enis
                    .values()
                    .find(|m| matches!(&m.kind, EniKind::Member { trunk, .. } if trunk == id))
                {
                    return Err(CloudError::Invalid {
                        message: format!(
                            "trunk ENI {id} still carries member ENI {}; delete the members first",
                            m.id
                        ),
                    });
                }
            }
            _ => {}
        }
        self.enis.remove(id);
        Ok(())
    }

    pub fn assign_ips(&mut self, id: &str, count: usize) -> Result<Vec<IpAddr>, CloudError> {
        let limit = self.spec.quota.ips_per_eni;
        let e = self.enis.get(id).ok_or_else(|| not_found("ENI", id))?;
        if e.kind == EniKind::Trunk || matches!(e.kind, EniKind::Member { .. }) {
            return Err(CloudError::Invalid {
                message: format!(
                    "ENI {id} is a trunk or member ENI; secondary addresses are for secondary ENIs"
                ),
            });
        }
        if 1 + e.secondary_ips.len() + count > limit {
            return Err(CloudError::IpQuota {
                eni: id.into(),
                limit,
            });
        }
        let vswitch = e.vswitch.clone();
        // All or nothing: every address is found before any is taken.
        let mut got = vec![];
        let mut used = self.used(&vswitch);
        let cidr = self.spec.vswitch(&vswitch).unwrap().cidr;
        for ip in cidr.hosts().skip(1) {
            if got.len() == count {
                break;
            }
            if used.insert(ip) {
                got.push(ip);
            }
        }
        if got.len() < count {
            return Err(CloudError::IpNotEnough {
                vswitch,
                cidr: cidr.to_string(),
            });
        }
        self.eni_mut(id)?.secondary_ips.extend(got.iter().copied());
        Ok(got)
    }

    pub fn unassign_ips(&mut self, id: &str, ips: &[IpAddr]) -> Result<(), CloudError> {
        let e = self.eni_mut(id)?;
        if let Some(ip) = ips.iter().find(|ip| !e.secondary_ips.contains(ip)) {
            return Err(CloudError::Invalid {
                message: format!("{ip} is not a secondary address of ENI {id}"),
            });
        }
        e.secondary_ips.retain(|ip| !ips.contains(ip));
        Ok(())
    }

    pub fn create_member(
        &mut self,
        trunk: &str,
        vswitch: &str,
        groups: &[String],
    ) -> Result<Eni, CloudError> {
        let t = self
            .enis
            .get(trunk)
            .ok_or_else(|| not_found("ENI", trunk))?;
        if t.kind != EniKind::Trunk {
            return Err(CloudError::Invalid {
                message: format!("ENI {trunk} is not a trunk ENI"),
            });
        }
        let vlans: BTreeSet<u16> = self
            .enis
            .values()
            .filter_map(|e| match &e.kind {
                EniKind::Member { trunk: t, vlan } if t == trunk => Some(*vlan),
                _ => None,
            })
            .collect();
        let limit = self.spec.quota.members_per_trunk;
        if vlans.len() >= limit {
            return Err(CloudError::MemberQuota {
                trunk: trunk.into(),
                limit,
            });
        }
        let vlan = (1..=4094).find(|v| !vlans.contains(v)).unwrap();
        let kind = EniKind::Member {
            trunk: trunk.into(),
            vlan,
        };
        self.new_eni(None, vswitch, groups, kind, None)
    }
}

/// An in-process provider over the VPC's records (the lab's emulator
/// serves one of these; tests use it directly).
impl EniProvider for std::sync::Mutex<Vpc> {
    fn describe(&self, node: &str) -> Result<Vec<Eni>, CloudError> {
        Ok(self.lock().unwrap().describe(node))
    }
    fn create_eni(
        &self,
        node: &str,
        vswitch: &str,
        groups: &[String],
        trunk: bool,
    ) -> Result<Eni, CloudError> {
        self.lock()
            .unwrap()
            .create_eni(node, vswitch, groups, trunk)
    }
    fn delete_eni(&self, eni: &str) -> Result<(), CloudError> {
        self.lock().unwrap().delete_eni(eni)
    }
    fn assign_ips(&self, eni: &str, count: usize) -> Result<Vec<IpAddr>, CloudError> {
        self.lock().unwrap().assign_ips(eni, count)
    }
    fn unassign_ips(&self, eni: &str, ips: &[IpAddr]) -> Result<(), CloudError> {
        self.lock().unwrap().unassign_ips(eni, ips)
    }
    fn create_member(
        &self,
        trunk: &str,
        vswitch: &str,
        groups: &[String],
    ) -> Result<Eni, CloudError> {
        self.lock().unwrap().create_member(trunk, vswitch, groups)
    }
    fn limits(&self, _node: &str) -> Result<super::Quota, CloudError> {
        Ok(self.lock().unwrap().spec.quota)
    }
    fn vswitch(&self, id: &str) -> Result<super::VSwitchSpec, CloudError> {
        self.lock()
            .unwrap()
            .spec
            .vswitch(id)
            .cloned()
            .ok_or_else(|| not_found("vSwitch", id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc(quota: &str) -> Vpc {
        let spec: VpcSpec = serde_yaml::from_str(&format!(
            "vswitches: [{{id: vsw-a, cidr: 198.18.32.0/28, zone: a}}, {{id: vsw-b, cidr: 198.18.33.0/24, zone: b}}]
securityGroups: [{{id: sg-1}}, {{id: sg-2, kind: enterprise}}]
{quota}"
        ))
        .unwrap();
        Vpc::new(spec).unwrap()
    }

    #[test]
    fn enis_take_the_lowest_free_addresses_and_respect_the_node_quota() {
        let mut v = vpc("quota: {enis: 3, ipsPerEni: 4, membersPerTrunk: 2}");
        let p = v.add_node("n1", "vsw-a", &["sg-1".into()]).unwrap();
        assert_eq!(p.primary_ip.to_string(), "198.18.32.2", "after the gateway");
        assert_eq!(p.device_index, Some(0));
        assert_eq!(
            v.add_node("n1", "vsw-a", &[]).unwrap().id,
            p.id,
            "idempotent"
        );
        let e1 = v
            .create_eni("n1", "vsw-a", &["sg-1".into()], false)
            .unwrap();
        let e2 = v.create_eni("n1", "vsw-b", &[], false).unwrap();
        assert_eq!((e1.device_index, e2.device_index), (Some(1), Some(2)));
        assert_ne!(e1.mac, e2.mac);
        assert!(e1.mac.starts_with("00:16:3e:"));
        let err = v.create_eni("n1", "vsw-a", &[], false).unwrap_err();
        assert!(
            matches!(err, CloudError::EniQuota { limit: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("limit"));
        // Nothing was taken by the refused call.
        assert_eq!(v.describe("n1").len(), 3);
        let err = v
            .create_eni("n2", "vsw-a", &["sg-9".into()], false)
            .unwrap_err();
        assert!(err.to_string().contains("sg-9"), "{err}");
    }

    #[test]
    fn slb_backends_must_be_addresses_on_enis() {
        let mut v = Vpc::new(
            serde_yaml::from_str(
                "vswitches: [{id: vsw-a, cidr: 198.18.32.0/24, zone: a}]
slbs: [{id: lb-1, address: 198.18.48.10, listeners: [{port: 80, service: web}]}]",
            )
            .unwrap(),
        )
        .unwrap();
        v.add_node("n1", "vsw-a", &[]).unwrap();
        let e = v.create_eni("n1", "vsw-a", &[], false).unwrap();
        let ips = v.assign_ips(&e.id, 1).unwrap();
        v.set_slb_backends("lb-1", 80, &[(ips[0], 8080)]).unwrap();
        assert_eq!(v.slb_backends["lb-1:80"][0].eni, e.id);
        // The ENI's own primary address is the node's, not a pod's.
        let err = v
            .set_slb_backends("lb-1", 80, &[(e.primary_ip, 8080)])
            .unwrap_err();
        assert!(err.to_string().contains("no ENI's address"), "{err}");
        assert_eq!(v.slb_backends["lb-1:80"].len(), 1, "unchanged");
        assert!(v.set_slb_backends("lb-1", 81, &[]).is_err());
        assert!(v.set_slb_backends("lb-9", 80, &[]).is_err());
    }

    #[test]
    fn secondary_addresses_are_all_or_nothing_within_quota_and_vswitch() {
        let mut v = vpc("quota: {enis: 3, ipsPerEni: 4, membersPerTrunk: 2}");
        v.add_node("n1", "vsw-a", &[]).unwrap();
        let e = v.create_eni("n1", "vsw-a", &[], false).unwrap();
        let got = v.assign_ips(&e.id, 3).unwrap();
        assert_eq!(got.len(), 3);
        let err = v.assign_ips(&e.id, 1).unwrap_err();
        assert!(matches!(err, CloudError::IpQuota { limit: 4, .. }), "{err}");
        v.unassign_ips(&e.id, &got[..1]).unwrap();
        assert!(v.unassign_ips(&e.id, &got[..1]).is_err(), "not twice");
        assert_eq!(v.assign_ips(&e.id, 1).unwrap(), got[..1].to_vec());
        // vsw-a is a /28: 14 hosts, the gateway, 2 primaries, 3
        // secondaries used; 8 left. A second ENI can take 3; then the
        // vSwitch runs dry and says so (IpNotEnough), taking nothing.
        let e2 = v.create_eni("n1", "vsw-a", &[], false).unwrap();
        v.assign_ips(&e2.id, 3).unwrap();
        let used = v.used("vsw-a").len();
        assert_eq!(used, 9);
        v.add_node("n2", "vsw-a", &[]).unwrap();
        let e3 = v.create_eni("n2", "vsw-a", &[], false).unwrap();
        let e4 = v.create_eni("n2", "vsw-a", &[], false).unwrap();
        v.assign_ips(&e3.id, 1).unwrap();
        let err = v.assign_ips(&e4.id, 3).unwrap_err();
        assert!(matches!(err, CloudError::IpNotEnough { .. }), "{err}");
        assert!(err.to_string().contains("IpNotEnough"));
        assert_eq!(v.enis[&e4.id].secondary_ips.len(), 0, "all or nothing");
    }

    #[test]
    fn members_get_vlans_on_their_trunk_and_go_with_the_node() {
        let mut v = vpc("quota: {enis: 3, ipsPerEni: 4, membersPerTrunk: 2}");
        v.add_node("n1", "vsw-b", &[]).unwrap();
        let t = v.create_eni("n1", "vsw-b", &[], true).unwrap();
        assert!(
            v.assign_ips(&t.id, 1).is_err(),
            "a trunk has no pod addresses"
        );
        let m1 = v.create_member(&t.id, "vsw-a", &["sg-2".into()]).unwrap();
        let m2 = v.create_member(&t.id, "vsw-b", &["sg-1".into()]).unwrap();
        let vlan = |e: &Eni| match &e.kind {
            EniKind::Member { vlan, .. } => *vlan,
            k => panic!("{k:?}"),
        };
        assert_eq!((vlan(&m1), vlan(&m2)), (1, 2));
        // The node's description carries its trunk's members.
        let ids: Vec<String> = v.describe("n1").into_iter().map(|e| e.id).collect();
        assert!(ids.contains(&m1.id) && ids.contains(&m2.id), "{ids:?}");
        assert!(v.describe("n2").is_empty());
        assert!(matches!(
            v.create_member(&t.id, "vsw-a", &[]).unwrap_err(),
            CloudError::MemberQuota { limit: 2, .. }
        ));
        assert!(v
            .delete_eni(&t.id)
            .unwrap_err()
            .to_string()
            .contains("member"));
        v.delete_eni(&m1.id).unwrap();
        let m3 = v.create_member(&t.id, "vsw-a", &[]).unwrap();
        assert_eq!(vlan(&m3), 1, "the freed VLAN id is reused");
        let primary = v
            .describe("n1")
            .into_iter()
            .find(|e| e.kind == EniKind::Primary)
            .unwrap();
        assert!(v.delete_eni(&primary.id).is_err());
        // The node goes: its ENIs, the trunk's members and every address.
        let gone = v.remove_node("n1");
        assert_eq!(gone.len(), 4);
        assert!(v.enis.is_empty());
        assert!(v.used("vsw-a").is_empty() && v.used("vsw-b").is_empty());
    }

    #[test]
    fn an_adopted_node_counts_its_eth0_against_the_quota() {
        let mut v = vpc("quota: {enis: 2, ipsPerEni: 4, membersPerTrunk: 2}");
        let p = v.adopt_node("n1", "198.18.0.1".parse().unwrap());
        assert_eq!(v.adopt_node("n1", "198.18.0.9".parse().unwrap()).id, p.id);
        assert!(v.used("vsw-a").is_empty(), "the fabric is no vSwitch");
        v.create_eni("n1", "vsw-a", &[], false).unwrap();
        assert!(matches!(
            v.create_eni("n1", "vsw-a", &[], false).unwrap_err(),
            CloudError::EniQuota { limit: 2, .. }
        ));
    }

    #[test]
    fn the_mutex_is_a_provider() {
        let p = std::sync::Mutex::new(vpc(""));
        p.lock().unwrap().add_node("n1", "vsw-b", &[]).unwrap();
        let e = EniProvider::create_eni(&p, "n1", "vsw-b", &[], false).unwrap();
        assert_eq!(EniProvider::assign_ips(&p, &e.id, 2).unwrap().len(), 2);
        assert_eq!(EniProvider::describe(&p, "n1").unwrap().len(), 2);
    }
}
