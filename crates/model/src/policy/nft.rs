//! NetworkPolicy for the kernel datapath, as an nftables table (`inet
//! strait_policy`), with no I/O: what the table should hold for this
//! node's pods ([`desired`]) and the one atomic `nft -f` script that takes
//! it from what it holds ([`plan`]), touching only the pods that changed.
//!
//! ```text
//! chain forward (hook forward):
//!   ct state established,related accept     replies and known flows
//!   ip saddr vmap @out4                     the sender's egress chain, if isolated
//!   ip daddr vmap @in4                      the receiver's ingress chain, if isolated
//! chain out_<pod>: one rule per allowed peer x protocol: return; else drop
//! chain in_<pod>:  one rule per allowed peer x protocol: accept; else drop
//! ```
//!
//! Traffic the node itself sends to its pods (kubelet probes) is output,
//! not forward, so policy never stops it. Services are translated before
//! forward, so rules see the backend. Every family has its own maps
//! (`in4`/`in6`, `out4`/`out6`); chains are shared.

use super::{Direction, PeerNet, PortRange, Proto, RuleSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const TABLE: &str = "strait_policy";

/// One local pod's compiled policy.
pub struct PodPolicy<'a> {
    /// namespace/name.
    pub key: &'a str,
    pub ips: &'a [IpAddr],
    pub ingress: &'a RuleSet,
    pub egress: &'a RuleSet,
}

/// What the table holds: chains by name (their rules, in order) and the
/// dispatch maps' entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub chains: BTreeMap<String, Vec<String>>,
    /// (map, address) -> chain.
    pub dispatch: BTreeMap<(&'static str, IpAddr), String>,
}

/// A chain name from the pod (pod names may hold characters nft would
/// need quoted): `in_` or `out_` and 12 hex digits of its key's hash.
pub fn chain_name(dir: Direction, key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    match dir {
        Direction::Ingress => format!("in_{hex}"),
        Direction::Egress => format!("out_{hex}"),
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn peer_match(dir: Direction, p: &PeerNet) -> String {
    let (fam, field) = (
        family(&p.net.addr()),
        match dir {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        },
    );
    let mut s = format!("{fam} {field} {}", p.net);
    let except: Vec<String> = p
        .except
        .iter()
        .filter(|e| e.addr().is_ipv4() == p.net.addr().is_ipv4())
        .map(|e| e.to_string())
        .collect();
    if !except.is_empty() {
        s.push_str(&format!(" {fam} {field} != {{ {} }}", except.join(", ")));
    }
    s
}

fn port_matches(ports: &[PortRange]) -> Vec<String> {
    let mut by_proto: BTreeMap<Proto, Vec<String>> = BTreeMap::new();
    for r in ports {
        let v = if r.first == r.last {
            r.first.to_string()
        } else {
            format!("{}-{}", r.first, r.last)
        };
        by_proto.entry(r.proto).or_default().push(v);
    }
    by_proto
        .into_iter()
        .map(|(p, mut v)| {
            v.sort();
            v.dedup();
            format!(
                "meta l4proto {} th dport {{ {} }}",
                proto_name(p),
                v.join(", ")
            )
        })
        .collect()
}

fn comment(s: &str) -> String {
    let s: String = s.chars().filter(|c| *c != '"').take(120).collect();
    format!("comment \"{s}\"")
}

/// One pod's chain for one direction: a rule per allowed peer and
/// protocol, then the drop that names the isolating policies.
pub fn chain_rules(dir: Direction, set: &RuleSet) -> Vec<String> {
    let verdict = match dir {
        Direction::Ingress => "accept",
        Direction::Egress => "return",
    };
    let mut out = vec![];
    for r in &set.rules {
        let peers: Vec<Option<String>> = match &r.peers {
            None => vec![None],
            Some(ps) => ps.iter().map(|p| Some(peer_match(dir, p))).collect(),
        };
        let ports: Vec<Option<String>> = match &r.ports {
            None => vec![None],
            Some(ps) => port_matches(ps).into_iter().map(Some).collect(),
        };
        for peer in &peers {
            for port in &ports {
                let m: Vec<&str> = [peer.as_deref(), port.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                let why = comment(&format!("{} rule {}", r.policy, r.index));
                out.push(
                    format!("{} {verdict} {why}", m.join(" "))
                        .trim_start()
                        .to_string(),
                );
            }
        }
    }
    let by: Vec<String> = set.isolated_by.iter().map(|p| p.to_string()).collect();
    out.push(format!(
        "counter drop {}",
        comment(&format!("denied: isolated by {}", by.join(", ")))
    ));
    out
}

/// The table for these pods.
pub fn desired(pods: &[PodPolicy]) -> Programmed {
    let mut p = Programmed::default();
    for pod in pods {
        for (dir, set) in [
            (Direction::Ingress, pod.ingress),
            (Direction::Egress, pod.egress),
        ] {
            if set.isolated_by.is_empty() {
                continue;
            }
            let name = chain_name(dir, pod.key);
            p.chains.insert(name.clone(), chain_rules(dir, set));
            for ip in pod.ips {
                let map = match (dir, ip.is_ipv4()) {
                    (Direction::Ingress, true) => "in4",
                    (Direction::Ingress, false) => "in6",
                    (Direction::Egress, true) => "out4",
                    (Direction::Egress, false) => "out6",
                };
                p.dispatch.insert((map, *ip), name.clone());
            }
        }
    }
    p
}

const SKELETON: &str = "table inet strait_policy {
  map in4 { type ipv4_addr : verdict; }
  map in6 { type ipv6_addr : verdict; }
  map out4 { type ipv4_addr : verdict; }
  map out6 { type ipv6_addr : verdict; }
  chain forward {
    type filter hook forward priority filter + 10; policy accept;
    ct state established,related accept
    ip saddr vmap @out4
    ip6 saddr vmap @out6
    ip daddr vmap @in4
    ip6 daddr vmap @in6
  }
}
";

fn add_chain(out: &mut String, name: &str, rules: &[String]) {
    for r in rules {
        out.push_str(&format!("add rule inet {TABLE} {name} {r}\n"));
    }
}

/// The script from `prev` (None: unknown, so the table is made afresh, in
/// the same transaction that removes an earlier one) to `next`. Empty
/// when nothing changes.
pub fn plan(prev: Option<&Programmed>, next: &Programmed) -> String {
    let mut out = String::new();
    let empty = Programmed::default();
    let prev = match prev {
        Some(p) => p,
        None => {
            // `add table` first so the delete never fails on a fresh node.
            out.push_str(&format!(
                "add table inet {TABLE}\ndelete table inet {TABLE}\n"
            ));
            out.push_str(SKELETON);
            &empty
        }
    };
    for (name, rules) in &next.chains {
        match prev.chains.get(name) {
            Some(old) if old == rules => {}
            Some(_) => {
                out.push_str(&format!("flush chain inet {TABLE} {name}\n"));
                add_chain(&mut out, name, rules);
            }
            None => {
                out.push_str(&format!("add chain inet {TABLE} {name}\n"));
                add_chain(&mut out, name, rules);
            }
        }
    }
    for ((map, ip), chain) in &prev.dispatch {
        if next.dispatch.get(&(*map, *ip)) != Some(chain) {
            out.push_str(&format!("delete element inet {TABLE} {map} {{ {ip} }}\n"));
        }
    }
    for ((map, ip), chain) in &next.dispatch {
        if prev.dispatch.get(&(*map, *ip)) != Some(chain) {
            out.push_str(&format!(
                "add element inet {TABLE} {map} {{ {ip} : jump {chain} }}\n"
            ));
        }
    }
    for name in prev.chains.keys() {
        if !next.chains.contains_key(name) {
            out.push_str(&format!("delete chain inet {TABLE} {name}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyId, Rule};

    fn id(n: &str) -> PolicyId {
        PolicyId {
            namespace: "x".into(),
            name: n.into(),
        }
    }

    fn set(rules: Vec<Rule>) -> RuleSet {
        RuleSet {
            isolated_by: vec![id("p")],
            rules,
        }
    }

    #[test]
    fn a_chain_is_the_rules_then_the_drop() {
        let s = set(vec![Rule {
            policy: id("p"),
            index: 1,
            peers: Some(vec![PeerNet {
                net: "10.0.1.0/24".parse().unwrap(),
                except: vec!["10.0.1.2/32".parse().unwrap()],
            }]),
            ports: Some(vec![
                PortRange {
                    proto: Proto::Tcp,
                    first: 80,
                    last: 81,
                },
                PortRange {
                    proto: Proto::Udp,
                    first: 53,
                    last: 53,
                },
            ]),
        }]);
        assert_eq!(
            chain_rules(Direction::Ingress, &s),
            vec![
                "ip saddr 10.0.1.0/24 ip saddr != { 10.0.1.2/32 } meta l4proto tcp th dport { 80-81 } accept comment \"x/p rule 1\"",
                "ip saddr 10.0.1.0/24 ip saddr != { 10.0.1.2/32 } meta l4proto udp th dport { 53 } accept comment \"x/p rule 1\"",
                "counter drop comment \"denied: isolated by x/p\"",
            ]
        );
        // Egress: destination addresses, and `return` so ingress is asked too.
        let any = set(vec![Rule {
            policy: id("p"),
            index: 0,
            peers: None,
            ports: None,
        }]);
        assert_eq!(
            chain_rules(Direction::Egress, &any)[0],
            "return comment \"x/p rule 0\""
        );
        // A rule whose selectors match no pod allows nothing.
        let none = set(vec![Rule {
            policy: id("p"),
            index: 0,
            peers: Some(vec![]),
            ports: None,
        }]);
        assert_eq!(chain_rules(Direction::Ingress, &none).len(), 1);
    }

    #[test]
    fn plans_touch_only_what_changed() {
        let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let deny = set(vec![]);
        let open = RuleSet::default();
        let a = PodPolicy {
            key: "x/a",
            ips: &ips,
            ingress: &deny,
            egress: &open,
        };
        let one = desired(&[a]);
        let first = plan(None, &one);
        assert!(
            first.starts_with("add table inet strait_policy\ndelete table"),
            "{first}"
        );
        let chain = chain_name(Direction::Ingress, "x/a");
        assert!(first.contains(&format!(
            "add element inet strait_policy in4 {{ 10.0.0.1 : jump {chain} }}"
        )));
        assert_eq!(plan(Some(&one), &one), "", "nothing changed, nothing sent");
        // A rule added: that chain is flushed and refilled, nothing else.
        let allow = set(vec![Rule {
            policy: id("p"),
            index: 0,
            peers: None,
            ports: None,
        }]);
        let two = desired(&[PodPolicy {
            key: "x/a",
            ips: &ips,
            ingress: &allow,
            egress: &open,
        }]);
        let step = plan(Some(&one), &two);
        assert!(
            step.starts_with(&format!("flush chain inet strait_policy {chain}\n")),
            "{step}"
        );
        assert!(!step.contains("element"), "{step}");
        // No longer isolated: the map entry goes before the chain does.
        let gone = plan(Some(&two), &Programmed::default());
        let (e, c) = (
            gone.find("delete element").unwrap(),
            gone.find("delete chain").unwrap(),
        );
        assert!(e < c, "{gone}");
    }
}
