//! NetworkPolicy for the eBPF datapath, with no I/O: a pod's rule set as
//! the LPM entries of `strait_policy` (bpf/lib/policy.h). Per protocol and
//! port (0 = any), the union of every rule's peers, ipBlock excepts cut
//! out, as the fewest prefixes: so a longest-prefix match is always an
//! allow, and several rules admitting one address cannot mask each other.

use super::nft::ranges;
use super::{Direction, PeerNet, PolicyId, RuleSet};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Port ranges wider than this are refused on the eBPF datapath (each port
/// is its own entry).
pub const MAX_RANGE: u32 = 1024;

/// One LPM entry: from (ingress) or to (egress) `peer`, on `proto` (0:
/// any) and `port` (0: any), allowed by `policy` (its first rule there).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub proto: u8,
    pub port: u16,
    pub peer: IpNet,
    pub policy: PolicyId,
    pub rule: usize,
}

/// A policy's 32-bit id, as drop events carry it.
pub fn policy_id(p: &PolicyId) -> u32 {
    let h = Sha256::digest(p.to_string().as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// An inclusive range of one family as the fewest prefixes.
pub fn prefixes(v6: bool, (mut s, e): (u128, u128)) -> Vec<IpNet> {
    let width: u32 = if v6 { 128 } else { 32 };
    // The last address of the block of 2^k addresses at s (s is aligned).
    let end = |s: u128, k: u32| {
        if k == 128 {
            u128::MAX
        } else {
            s + ((1u128 << k) - 1)
        }
    };
    let mut out = vec![];
    loop {
        let mut k = if s == 0 {
            width
        } else {
            s.trailing_zeros().min(width)
        };
        while k > 0 && end(s, k) > e {
            k -= 1;
        }
        let len = (width - k) as u8;
        out.push(
            if v6 {
                IpNet::new(std::net::Ipv6Addr::from(s).into(), len)
            } else {
                IpNet::new(std::net::Ipv4Addr::from(s as u32).into(), len)
            }
            .expect("prefix length within the family"),
        );
        let last = end(s, k);
        if last >= e {
            break;
        }
        s = last + 1;
    }
    out
}

/// The entries for one pod and direction, or why it cannot have them.
pub fn entries(set: &RuleSet) -> Result<Vec<Entry>, String> {
    let mut groups: BTreeMap<(u8, u16), (Vec<PeerNet>, PolicyId, usize)> = BTreeMap::new();
    let any = || {
        vec![
            PeerNet {
                net: "0.0.0.0/0".parse().unwrap(),
                except: vec![],
            },
            PeerNet {
                net: "::/0".parse().unwrap(),
                except: vec![],
            },
        ]
    };
    for r in &set.rules {
        let peers = r.peers.clone().unwrap_or_else(any);
        let ports: Vec<(u8, u16)> = match &r.ports {
            None => vec![(0, 0)],
            Some(ps) => {
                let mut v = vec![];
                for p in ps {
                    let n = u32::from(p.last) - u32::from(p.first) + 1;
                    if n > MAX_RANGE {
                        return Err(format!(
                            "{} rule {}: port range {}-{} is wider than the eBPF datapath takes ({MAX_RANGE} ports)",
                            r.policy, r.index, p.first, p.last
                        ));
                    }
                    v.extend((p.first..=p.last).map(|port| (p.proto.number(), port)));
                }
                v
            }
        };
        for key in ports {
            let g = groups
                .entry(key)
                .or_insert_with(|| (vec![], r.policy.clone(), r.index));
            g.0.extend(peers.iter().cloned());
        }
    }
    let mut out = vec![];
    for ((proto, port), (peers, policy, rule)) in groups {
        let [v4, v6] = ranges(&peers);
        for (fam_v6, rs) in [(false, v4), (true, v6)] {
            for r in rs {
                for peer in prefixes(fam_v6, r) {
                    out.push(Entry {
                        proto,
                        port,
                        peer,
                        policy: policy.clone(),
                        rule,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Direction as the map has it.
pub fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PortRange, Proto, Rule};

    fn id() -> PolicyId {
        PolicyId {
            namespace: "x".into(),
            name: "p".into(),
        }
    }

    #[test]
    fn ranges_become_the_fewest_prefixes() {
        let v4 = |a: &str| u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()) as u128;
        let show = |v: Vec<IpNet>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            show(prefixes(false, (v4("10.0.1.0"), v4("10.0.1.255")))),
            ["10.0.1.0/24"]
        );
        assert_eq!(
            show(prefixes(false, (v4("10.0.1.3"), v4("10.0.1.127")))),
            [
                "10.0.1.3/32",
                "10.0.1.4/30",
                "10.0.1.8/29",
                "10.0.1.16/28",
                "10.0.1.32/27",
                "10.0.1.64/26"
            ]
        );
        assert_eq!(show(prefixes(false, (0, u32::MAX as u128))), ["0.0.0.0/0"]);
        assert_eq!(show(prefixes(true, (0, u128::MAX))), ["::/0"]);
        assert_eq!(
            show(prefixes(false, (v4("10.0.0.7"), v4("10.0.0.7")))),
            ["10.0.0.7/32"]
        );
    }

    #[test]
    fn rules_union_per_port_and_excepts_are_cut_out() {
        let net = |s: &str, ex: &[&str]| PeerNet {
            net: s.parse().unwrap(),
            except: ex.iter().map(|e| e.parse().unwrap()).collect(),
        };
        let set = RuleSet {
            isolated_by: vec![id()],
            rules: vec![
                Rule {
                    policy: id(),
                    index: 0,
                    peer_set: "a".into(),
                    peers: Some(vec![net("10.0.1.0/24", &["10.0.1.0/25"])]),
                    ports: Some(vec![PortRange {
                        proto: Proto::Tcp,
                        first: 80,
                        last: 81,
                    }]),
                },
                Rule {
                    policy: id(),
                    index: 1,
                    peer_set: "b".into(),
                    peers: Some(vec![net("10.0.1.0/25", &[])]),
                    ports: Some(vec![PortRange {
                        proto: Proto::Tcp,
                        first: 80,
                        last: 80,
                    }]),
                },
            ],
        };
        let e = entries(&set).unwrap();
        let show: Vec<String> = e
            .iter()
            .map(|e| format!("{}/{} {}", e.proto, e.port, e.peer))
            .collect();
        // Port 80: both rules, merged into the whole /24; port 81: the
        // first rule's /24 less its except.
        assert_eq!(show, ["6/80 10.0.1.0/24", "6/81 10.0.1.128/25"]);
        let any = RuleSet {
            isolated_by: vec![id()],
            rules: vec![Rule {
                policy: id(),
                index: 0,
                peer_set: "c".into(),
                peers: None,
                ports: None,
            }],
        };
        let show: Vec<String> = entries(&any)
            .unwrap()
            .iter()
            .map(|e| format!("{}/{} {}", e.proto, e.port, e.peer))
            .collect();
        assert_eq!(show, ["0/0 0.0.0.0/0", "0/0 ::/0"]);
        let wide = RuleSet {
            isolated_by: vec![id()],
            rules: vec![Rule {
                policy: id(),
                index: 0,
                peer_set: "d".into(),
                peers: None,
                ports: Some(vec![PortRange {
                    proto: Proto::Udp,
                    first: 1,
                    last: 65535,
                }]),
            }],
        };
        assert!(entries(&wide).unwrap_err().contains("wider"));
    }
}
