//! Underlay subnets (Hybridnet's VLAN mode, seed 001): IPPools that are
//! subnets of the datacenter's VLANs, with a VLAN id and a gateway. Pure:
//! which of the cluster's pools are underlay subnets, checked.

use crate::cluster::ClusterSnapshot;
use ipnet::IpNet;
use std::net::IpAddr;

/// One underlay subnet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Underlay {
    /// The IPPool's name.
    pub pool: String,
    pub cidr: IpNet,
    pub vlan: u16,
    pub gateway: IpAddr,
}

/// The cluster's underlay subnets, sorted by pool name (the i-th has
/// policy-routing table 10001 + i), and the problems of pools that cannot
/// be one (reported, not used).
pub fn underlay_subnets(snap: &ClusterSnapshot) -> (Vec<Underlay>, Vec<String>) {
    let mut out = vec![];
    let mut problems = vec![];
    for p in &snap.ip_pools {
        let name = p.metadata.name.clone().unwrap_or_default();
        let s = &p.spec;
        let (vlan, gateway) = match (s.vlan_id, &s.gateway) {
            (None, None) => continue,
            (Some(v), Some(g)) => (v, g),
            (Some(_), None) => {
                problems.push(format!(
                    "IPPool {name}: vlanID needs a gateway (the VLAN's router)"
                ));
                continue;
            }
            (None, Some(_)) => {
                problems.push(format!(
                    "IPPool {name}: gateway is for underlay pools; set vlanID too"
                ));
                continue;
            }
        };
        if !(1..=4094).contains(&vlan) {
            problems.push(format!("IPPool {name}: vlanID {vlan} is not 1-4094"));
            continue;
        }
        let Ok(cidr) = s.cidr.parse::<IpNet>() else {
            problems.push(format!("IPPool {name}: cidr {:?} is not a CIDR", s.cidr));
            continue;
        };
        let gateway: IpAddr = match gateway.parse() {
            Ok(g) if cidr.contains(&g) => g,
            _ => {
                problems.push(format!(
                    "IPPool {name}: gateway {gateway:?} is not an address inside {cidr}"
                ));
                continue;
            }
        };
        out.push(Underlay {
            pool: name,
            cidr: cidr.trunc(),
            vlan,
            gateway,
        });
    }
    out.sort();
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::parse_manifests;

    fn snap(yaml: &str) -> ClusterSnapshot {
        let mut s = ClusterSnapshot::default();
        for o in parse_manifests(yaml).unwrap() {
            s.add(o);
        }
        s
    }

    #[test]
    fn vlan_pools_are_underlay_subnets_and_bad_ones_are_reported() {
        let s = snap(
            "apiVersion: strait.dev/v1alpha1\nkind: IPPool\nmetadata: {name: vlan30}\nspec: {cidr: 198.18.30.0/24, vlanID: 30, gateway: 198.18.30.1}\n---\n\
             apiVersion: strait.dev/v1alpha1\nkind: IPPool\nmetadata: {name: vlan20}\nspec: {cidr: 198.18.20.0/24, vlanID: 20, gateway: 198.18.20.1}\n---\n\
             apiVersion: strait.dev/v1alpha1\nkind: IPPool\nmetadata: {name: plain}\nspec: {cidr: 198.19.128.0/20}\n---\n\
             apiVersion: strait.dev/v1alpha1\nkind: IPPool\nmetadata: {name: nogw}\nspec: {cidr: 198.18.40.0/24, vlanID: 40}\n---\n\
             apiVersion: strait.dev/v1alpha1\nkind: IPPool\nmetadata: {name: outside}\nspec: {cidr: 198.18.50.0/24, vlanID: 50, gateway: 198.18.51.1}\n",
        );
        let (u, problems) = underlay_subnets(&s);
        let got: Vec<(&str, u16)> = u.iter().map(|x| (x.pool.as_str(), x.vlan)).collect();
        assert_eq!(got, [("vlan20", 20), ("vlan30", 30)]);
        assert_eq!(u[0].gateway.to_string(), "198.18.20.1");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("nogw") && problems[0].contains("needs a gateway"));
        assert!(problems[1].contains("not an address inside 198.18.50.0/24"));
    }
}

/// An underlay subnet as a lab file declares it (`spec.underlay`): the lab
/// makes the VLAN's gateway and an IPPool of the subnet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSubnet {
    /// Also the IPPool's name (pods choose it by `strait.dev/ippool`).
    pub name: String,
    pub vlan: u16,
    pub cidr: ipnet::Ipv4Net,
    /// The gateway's address in the subnet (the seed's 10.0.0.1 / 5.0.0.1).
    pub gateway: std::net::Ipv4Addr,
}

/// The VLAN gateway's namespace of a lab.
pub fn gateway_netns(lab: &str) -> String {
    format!("strait-{lab}-gw")
}

/// Check a lab's underlay subnets against each other and the lab's other
/// ranges.
pub fn check_lab_subnets(subnets: &[LabSubnet], others: &[(&str, IpNet)]) -> Result<(), String> {
    let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    for (i, s) in subnets.iter().enumerate() {
        let ok_name = !s.name.is_empty()
            && s.name.len() <= 30
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_name {
            return Err(format!(
                "underlay subnet name {:?} must be 1-30 characters of a-z, 0-9 and '-'",
                s.name
            ));
        }
        if !(1..=4094).contains(&s.vlan) {
            return Err(format!(
                "underlay subnet {}: vlan {} is not 1-4094",
                s.name, s.vlan
            ));
        }
        if !s.cidr.contains(&s.gateway) || s.gateway == s.cidr.network() {
            return Err(format!(
                "underlay subnet {}: gateway {} is not a host address of {}",
                s.name, s.gateway, s.cidr
            ));
        }
        if s.cidr.prefix_len() > 28 {
            return Err(format!(
                "underlay subnet {}: {} is too small (at most /28: nodes claim /28 blocks of it)",
                s.name, s.cidr
            ));
        }
        let me = IpNet::V4(s.cidr);
        for (what, c) in others {
            if overlaps(c, &me) {
                return Err(format!(
                    "underlay subnet {}: {} overlaps the {what} {c}",
                    s.name, s.cidr
                ));
            }
        }
        for o in &subnets[..i] {
            if o.name == s.name || o.vlan == s.vlan || overlaps(&IpNet::V4(o.cidr), &me) {
                return Err(format!(
                    "underlay subnets {} and {} share a name, a VLAN or addresses",
                    o.name, s.name
                ));
            }
        }
    }
    Ok(())
}

/// The IPPool of a lab's underlay subnet: /28 blocks per node, the VLAN
/// and the gateway.
pub fn lab_pool(s: &LabSubnet) -> crate::cluster::ClusterObject {
    let spec = crate::ippool::IPPoolSpec {
        cidr: s.cidr.to_string(),
        block_size: Some(28),
        node_selector: None,
        disabled: false,
        vlan_id: Some(s.vlan),
        gateway: Some(s.gateway.to_string()),
    };
    crate::cluster::ClusterObject::IpPool(Box::new(crate::ippool::IPPool::new(&s.name, spec)))
}

#[cfg(test)]
mod lab_tests {
    use super::*;

    fn subnet(name: &str, vlan: u16, cidr: &str, gw: &str) -> LabSubnet {
        LabSubnet {
            name: name.into(),
            vlan,
            cidr: cidr.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    #[test]
    fn lab_subnets_are_checked_and_become_underlay_pools() {
        let a = subnet("vlan20", 20, "198.18.20.0/24", "198.18.20.1");
        let b = subnet("vlan30", 30, "198.18.30.0/24", "198.18.30.1");
        let fabric: IpNet = "198.18.0.0/24".parse().unwrap();
        assert!(check_lab_subnets(&[a.clone(), b.clone()], &[("fabric", fabric)]).is_ok());
        let clash = subnet("vlan31", 20, "198.18.31.0/24", "198.18.31.1");
        assert!(check_lab_subnets(&[a.clone(), clash], &[])
            .unwrap_err()
            .contains("share"));
        let outside = subnet("x", 40, "198.18.40.0/24", "198.18.41.1");
        assert!(check_lab_subnets(&[outside], &[])
            .unwrap_err()
            .contains("not a host address"));
        let on_fabric = subnet("y", 50, "198.18.0.0/25", "198.18.0.1");
        assert!(check_lab_subnets(&[on_fabric], &[("fabric", fabric)])
            .unwrap_err()
            .contains("overlaps the fabric"));
        let mut s = ClusterSnapshot::default();
        s.add(lab_pool(&a));
        let (u, problems) = underlay_subnets(&s);
        assert!(problems.is_empty());
        assert_eq!(
            (u[0].vlan, u[0].gateway.to_string()),
            (20, "198.18.20.1".into())
        );
    }
}
