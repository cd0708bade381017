//! ENI multi-IP on one node (Terway's ENIIP, the base of DataPath V2),
//! pure: which address a pod gets, what the warm pool asks of the cloud,
//! the policy routing that sends each pod's traffic out of its own ENI,
//! and the consistency check behind `strait mapping` (pod ↔ agent ↔
//! cloud). The agent does the calls and the kernel work.

use super::provider::{Eni, EniKind};
use super::Quota;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The warm pool: idle addresses kept on the node's ENIs so a pod does
/// not wait for the cloud.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolConfig {
    /// New ENIs go into this vSwitch with these groups.
    pub vswitch: String,
    pub security_groups: Vec<String>,
    /// Below this many idle addresses, more are asked for.
    pub min_idle: usize,
    /// Above this many, idle addresses are given back.
    pub max_idle: usize,
    /// ENI-Trunking: the node gets a trunk ENI, and pods a PodNetworking
    /// selects get member ENIs on it.
    #[serde(default)]
    pub trunk: bool,
}

/// What the pool asks of the cloud next (one call each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolAction {
    /// No ENI has room: a new one (its addresses come on the next pass).
    CreateEni,
    Assign {
        eni: String,
        count: usize,
    },
    Unassign {
        eni: String,
        ips: Vec<IpAddr>,
    },
    /// An ENI with no pod and no address left.
    DeleteEni {
        eni: String,
    },
}

/// The node's ENIs that carry pods (secondary ENIs), by device index.
fn pod_enis(enis: &[Eni]) -> Vec<&Eni> {
    let mut v: Vec<&Eni> = enis
        .iter()
        .filter(|e| e.kind == EniKind::Secondary)
        .collect();
    v.sort_by_key(|e| (e.device_index, e.id.clone()));
    v
}

/// The address for a new pod: an idle one on the lowest ENI that has one
/// (pods pack onto ENIs in order), the lowest address there.
pub fn pick(enis: &[Eni], in_use: &BTreeSet<IpAddr>) -> Option<(String, IpAddr)> {
    pod_enis(enis).into_iter().find_map(|e| {
        e.secondary_ips
            .iter()
            .filter(|ip| !in_use.contains(ip))
            .min()
            .map(|ip| (e.id.clone(), *ip))
    })
}

/// The ENI that holds `ip`, if one of the node's does.
pub fn eni_of(enis: &[Eni], ip: IpAddr) -> Option<&Eni> {
    enis.iter().find(|e| {
        e.secondary_ips.contains(&ip)
            || (matches!(e.kind, EniKind::Member { .. }) && e.primary_ip == ip)
    })
}

/// The pool's next calls: keep between min and max idle addresses,
/// filling ENIs in order before creating one, giving back from the last
/// ENIs first and deleting an ENI that is left empty.
pub fn plan(
    cfg: &PoolConfig,
    quota: &Quota,
    enis: &[Eni],
    in_use: &BTreeSet<IpAddr>,
) -> Vec<PoolAction> {
    let ours = pod_enis(enis);
    let idle: BTreeMap<&str, Vec<IpAddr>> = ours
        .iter()
        .map(|e| {
            (
                e.id.as_str(),
                e.secondary_ips
                    .iter()
                    .filter(|ip| !in_use.contains(ip))
                    .copied()
                    .collect(),
            )
        })
        .collect();
    let idle_total: usize = idle.values().map(Vec::len).sum();
    let mut out = vec![];
    if idle_total < cfg.min_idle {
        let mut need = cfg.min_idle - idle_total;
        for e in &ours {
            let room = quota.ips_per_eni.saturating_sub(1 + e.secondary_ips.len());
            let n = room.min(need);
            if n > 0 {
                out.push(PoolAction::Assign {
                    eni: e.id.clone(),
                    count: n,
                });
                need -= n;
            }
            if need == 0 {
                break;
            }
        }
        let attached = enis.iter().filter(|e| e.device_index.is_some()).count();
        if need > 0 && attached < quota.enis {
            out.push(PoolAction::CreateEni);
        }
    } else if idle_total > cfg.max_idle {
        let mut extra = idle_total - cfg.max_idle;
        for e in ours.iter().rev() {
            let free = &idle[e.id.as_str()];
            let n = free.len().min(extra);
            if n == 0 {
                continue;
            }
            // The highest addresses go first.
            let mut ips = free.clone();
            ips.sort();
            let ips: Vec<IpAddr> = ips.into_iter().rev().take(n).collect();
            let empties = ips.len() == e.secondary_ips.len();
            out.push(PoolAction::Unassign {
                eni: e.id.clone(),
                ips,
            });
            if empties {
                out.push(PoolAction::DeleteEni { eni: e.id.clone() });
            }
            extra -= n;
            if extra == 0 {
                break;
            }
        }
    }
    if idle_total >= cfg.min_idle {
        // An ENI left with no address (a crash between creating it and
        // assigning, or addresses given back by hand) is not needed.
        for e in ours.iter().filter(|e| e.secondary_ips.is_empty()) {
            out.push(PoolAction::DeleteEni { eni: e.id.clone() });
        }
    }
    out
}

/// A policy-routing rule of Terway's: `[from F] [to T] lookup table`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyRule {
    pub priority: u32,
    pub from: Option<IpNet>,
    pub to: Option<IpNet>,
    pub table: u32,
}

/// Traffic to a pod finds it in main (its /32 via its host veth).
pub const TO_POD_PRIORITY: u32 = 512;
/// Traffic from a pod leaves by its ENI's table.
pub const FROM_POD_PRIORITY: u32 = 2048;
/// An ENI's table: 1000 + the ENI's ifindex on the node.
pub fn eni_table(ifindex: u32) -> u32 {
    1000 + ifindex
}

/// Terway's rules for the node's pods: (pod address, its ENI's ifindex).
pub fn rules(pods: &[(IpAddr, u32)]) -> Vec<PolicyRule> {
    let mut v: Vec<PolicyRule> = pods
        .iter()
        .flat_map(|(ip, ifindex)| {
            [
                PolicyRule {
                    priority: TO_POD_PRIORITY,
                    from: None,
                    to: Some(IpNet::from(*ip)),
                    table: 254,
                },
                PolicyRule {
                    priority: FROM_POD_PRIORITY,
                    from: Some(IpNet::from(*ip)),
                    to: None,
                    table: eni_table(*ifindex),
                },
            ]
        })
        .collect();
    v.sort();
    v
}

/// One row of `strait mapping`: an ENI, its addresses and the pods on
/// them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRow {
    pub eni: String,
    pub device: String,
    pub mac: String,
    pub ips: Vec<(IpAddr, Option<String>)>,
}

/// `strait mapping`'s answer: the node's pod ENIs and every mismatch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniMapping {
    pub node: String,
    pub rows: Vec<MappingRow>,
    pub problems: Vec<String>,
    /// ENI-Trunking: the agent's PodENI records.
    #[serde(default)]
    pub podenis: Vec<super::trunking::PodEni>,
}

/// Check pods ↔ agent ↔ cloud. `pods`: each pod and its address as the
/// cluster records it; `agent`: each address the agent handed out and the
/// ENI it believes holds it; `cloud`: the node's ENIs as the cloud
/// describes them. Returns the rows and every mismatch, said plainly.
pub fn mapping(
    pods: &[(String, IpAddr)],
    agent: &[(IpAddr, String)],
    cloud: &[Eni],
) -> (Vec<MappingRow>, Vec<String>) {
    let mut problems = vec![];
    let agent_eni: BTreeMap<IpAddr, &str> = agent.iter().map(|(ip, e)| (*ip, e.as_str())).collect();
    let pod_of: BTreeMap<IpAddr, &str> = pods.iter().map(|(p, ip)| (*ip, p.as_str())).collect();
    for (pod, ip) in pods {
        match (agent_eni.get(ip), eni_of(cloud, *ip)) {
            (None, _) => problems.push(format!(
                "pod {pod} has {ip}, which the agent did not hand out"
            )),
            (Some(e), None) => problems.push(format!(
                "pod {pod} has {ip}, which the agent puts on {e} but no ENI of the node holds in the cloud"
            )),
            (Some(e), Some(c)) if *e != c.id => problems.push(format!(
                "pod {pod} has {ip}: the agent says ENI {e}, the cloud says {}",
                c.id
            )),
            _ => {}
        }
    }
    for (ip, e) in agent {
        if !pod_of.contains_key(ip) {
            problems.push(format!(
                "the agent holds {ip} on {e} for a pod the cluster does not know"
            ));
        }
    }
    // A member ENI's one address is its pod's (ENI-Trunking).
    let members = cloud.iter().filter_map(|e| match &e.kind {
        EniKind::Member { vlan, .. } => Some(MappingRow {
            eni: e.id.clone(),
            device: format!("vlan{vlan}"),
            mac: e.mac.clone(),
            ips: vec![(
                e.primary_ip,
                pod_of.get(&e.primary_ip).map(|p| p.to_string()),
            )],
        }),
        _ => None,
    });
    let rows = pod_enis(cloud)
        .into_iter()
        .map(|e| MappingRow {
            eni: e.id.clone(),
            device: e
                .device_index
                .map(|i| format!("eth{i}"))
                .unwrap_or_default(),
            mac: e.mac.clone(),
            ips: e
                .secondary_ips
                .iter()
                .map(|ip| (*ip, pod_of.get(ip).map(|p| p.to_string())))
                .collect(),
        })
        .chain(members)
        .collect();
    (rows, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, index: u32, ips: &[&str]) -> Eni {
        Eni {
            id: id.into(),
            mac: format!("00:16:3e:00:00:0{index}"),
            node: Some("n1".into()),
            vswitch: "vsw-a".into(),
            primary_ip: format!("198.18.32.{}", 100 + index).parse().unwrap(),
            secondary_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            security_groups: vec![],
            kind: EniKind::Secondary,
            device_index: Some(index),
        }
    }

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn cfg(min: usize, max: usize) -> PoolConfig {
        PoolConfig {
            trunk: false,
            vswitch: "vsw-a".into(),
            security_groups: vec![],
            min_idle: min,
            max_idle: max,
        }
    }

    const Q: Quota = Quota {
        enis: 3,
        ips_per_eni: 3,
        members_per_trunk: 2,
    };

    #[test]
    fn pods_pack_onto_enis_in_order() {
        let enis = [
            eni("eni-2", 2, &["198.18.32.9"]),
            eni("eni-1", 1, &["198.18.32.5", "198.18.32.3"]),
        ];
        assert_eq!(
            pick(&enis, &set(&[])),
            Some(("eni-1".into(), "198.18.32.3".parse().unwrap()))
        );
        let used = set(&["198.18.32.5", "198.18.32.3"]);
        assert_eq!(pick(&enis, &used).unwrap().0, "eni-2");
        assert_eq!(
            pick(&enis, &set(&["198.18.32.5", "198.18.32.3", "198.18.32.9"])),
            None
        );
    }

    #[test]
    fn the_pool_fills_enis_before_creating_one_and_gives_back_from_the_last() {
        // No ENI yet: one is created.
        assert_eq!(
            plan(&cfg(2, 4), &Q, &[], &set(&[])),
            [PoolAction::CreateEni]
        );
        // Room on eni-1 (3 per ENI, its primary counts): fill it, then a
        // new ENI for the rest.
        let enis = [eni("eni-1", 1, &["198.18.32.3"])];
        assert_eq!(
            plan(&cfg(3, 4), &Q, &enis, &set(&[])),
            [
                PoolAction::Assign {
                    eni: "eni-1".into(),
                    count: 1
                },
                PoolAction::CreateEni
            ]
        );
        // At the ENI quota (eth0 + 2) no ENI is created.
        let mut full = vec![
            eni("eni-0", 0, &[]),
            eni("eni-1", 1, &["198.18.32.3", "198.18.32.4"]),
            eni("eni-2", 2, &["198.18.32.5", "198.18.32.6"]),
        ];
        full[0].kind = EniKind::Primary;
        assert_eq!(plan(&cfg(9, 9), &Q, &full, &set(&[])), []);
        // Too many idle: the last ENI's highest addresses go, and the ENI
        // with them when it is left empty.
        let enis = [
            eni("eni-1", 1, &["198.18.32.3", "198.18.32.4"]),
            eni("eni-2", 2, &["198.18.32.5", "198.18.32.6"]),
        ];
        assert_eq!(
            plan(&cfg(0, 1), &Q, &enis, &set(&["198.18.32.3"])),
            [
                PoolAction::Unassign {
                    eni: "eni-2".into(),
                    ips: vec![
                        "198.18.32.6".parse().unwrap(),
                        "198.18.32.5".parse().unwrap()
                    ]
                },
                PoolAction::DeleteEni {
                    eni: "eni-2".into()
                },
            ]
        );
        // Within bounds: nothing.
        assert_eq!(plan(&cfg(1, 3), &Q, &enis, &set(&["198.18.32.3"])), []);
        // An ENI with no address at all (a crash after creating it) goes
        // once the pool has what it needs, and is filled while it does not.
        let enis = [
            eni("eni-1", 1, &["198.18.32.3", "198.18.32.4"]),
            eni("eni-2", 2, &[]),
        ];
        assert_eq!(
            plan(&cfg(1, 3), &Q, &enis, &set(&[])),
            [PoolAction::DeleteEni {
                eni: "eni-2".into()
            }]
        );
        assert_eq!(
            plan(&cfg(3, 4), &Q, &enis, &set(&[])),
            [PoolAction::Assign {
                eni: "eni-2".into(),
                count: 1
            }]
        );
    }

    #[test]
    fn terways_rules_send_each_pod_out_of_its_eni() {
        let r = rules(&[("198.18.32.3".parse().unwrap(), 7)]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].priority, r[0].to.unwrap().to_string(), r[0].table),
            (512, "198.18.32.3/32".into(), 254)
        );
        assert_eq!(
            (r[1].priority, r[1].from.unwrap().to_string(), r[1].table),
            (2048, "198.18.32.3/32".into(), 1007)
        );
    }

    #[test]
    fn mapping_names_every_mismatch() {
        let cloud = [
            eni("eni-1", 1, &["198.18.32.3", "198.18.32.4"]),
            eni("eni-2", 2, &["198.18.32.5"]),
        ];
        let pods = vec![
            ("default/a".to_string(), "198.18.32.3".parse().unwrap()),
            ("default/b".to_string(), "198.18.32.5".parse().unwrap()),
        ];
        let agent = vec![
            ("198.18.32.3".parse().unwrap(), "eni-1".to_string()),
            ("198.18.32.5".parse().unwrap(), "eni-2".to_string()),
        ];
        let (rows, problems) = mapping(&pods, &agent, &cloud);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rows[0].device, "eth1");
        assert_eq!(rows[0].ips[0].1.as_deref(), Some("default/a"));
        assert_eq!(rows[0].ips[1].1, None, "idle");
        // The agent and the cloud disagree; an address the agent gave out
        // to nobody; a pod whose address the agent never handed out.
        let agent = vec![
            ("198.18.32.3".parse().unwrap(), "eni-2".to_string()),
            ("198.18.32.5".parse().unwrap(), "eni-2".to_string()),
            ("198.18.32.4".parse().unwrap(), "eni-1".to_string()),
        ];
        let mut pods = pods;
        pods.push(("default/c".into(), "198.18.32.9".parse().unwrap()));
        let (_, problems) = mapping(&pods, &agent, &cloud);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("the agent says ENI eni-2, the cloud says eni-1"));
        assert!(problems[1].contains("default/c") && problems[1].contains("did not hand out"));
        assert!(problems[2].contains("198.18.32.4"));
    }
}
