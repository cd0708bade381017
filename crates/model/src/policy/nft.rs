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
//! chain out_<pod>: per rule and protocol, `ip daddr @<peer set> ... return`; else drop
//! chain in_<pod>:  per rule and protocol, `ip saddr @<peer set> ... accept`; else drop
//! set p4_<rule> / p6_<rule>: the rule's peers as disjoint address ranges
//! ```
//!
//! A rule's peer set is shared by every pod the rule protects, and changes
//! in place (flushed and refilled) when its selectors match other pods, so
//! a pod coming or going touches sets, not chains.
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
    /// Peer sets by name: (family "ip"/"ip6", elements).
    pub sets: BTreeMap<String, (&'static str, Vec<String>)>,
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

/// A rule's peers as disjoint, merged, inclusive address ranges per
/// family (IPv4 in the low 32 bits): each net less its exceptions.
pub fn ranges(peers: &[PeerNet]) -> [Vec<(u128, u128)>; 2] {
    fn span(n: &ipnet::IpNet) -> (u128, u128) {
        match n {
            ipnet::IpNet::V4(n) => (
                u32::from(n.network()) as u128,
                u32::from(n.broadcast()) as u128,
            ),
            ipnet::IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        }
    }
    let mut out: [Vec<(u128, u128)>; 2] = [vec![], vec![]];
    for p in peers {
        let fam = usize::from(!p.net.addr().is_ipv4());
        let mut pieces = vec![span(&p.net)];
        for e in p
            .except
            .iter()
            .filter(|e| e.addr().is_ipv4() == p.net.addr().is_ipv4())
        {
            let (es, ee) = span(e);
            pieces = pieces
                .into_iter()
                .flat_map(|(s, t)| {
                    if ee < s || es > t {
                        return vec![(s, t)];
                    }
                    let mut keep = vec![];
                    if es > s {
                        keep.push((s, es - 1));
                    }
                    if ee < t {
                        keep.push((ee + 1, t));
                    }
                    keep
                })
                .collect();
        }
        out[fam].extend(pieces);
    }
    for v in &mut out {
        v.sort();
        let mut merged: Vec<(u128, u128)> = vec![];
        for (s, t) in v.drain(..) {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(t),
                _ => merged.push((s, t)),
            }
        }
        *v = merged;
    }
    out
}

fn element(fam: usize, (s, t): (u128, u128)) -> String {
    let show = |v: u128| -> String {
        if fam == 0 {
            std::net::Ipv4Addr::from(v as u32).to_string()
        } else {
            std::net::Ipv6Addr::from(v).to_string()
        }
    };
    if s == t {
        show(s)
    } else {
        format!("{}-{}", show(s), show(t))
    }
}

/// A peer set's name from its rule's identity (`p4_`/`p6_` and 12 hex
/// digits of a hash).
pub fn set_name(family: usize, peer_set: &str) -> String {
    let h = Sha256::digest(peer_set.as_bytes());
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("p{}_{hex}", if family == 0 { 4 } else { 6 })
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

/// One pod's chain for one direction: per rule, protocol and family a
/// match on the rule's peer set, then the drop that names the isolating
/// policies. The sets the chain needs are added to `sets`.
pub fn chain_rules(
    dir: Direction,
    set: &RuleSet,
    sets: &mut BTreeMap<String, (&'static str, Vec<String>)>,
) -> Vec<String> {
    let verdict = match dir {
        Direction::Ingress => "accept",
        Direction::Egress => "return",
    };
    let field = match dir {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let mut out = vec![];
    for r in &set.rules {
        let peers: Vec<Option<String>> = match &r.peers {
            None => vec![None],
            Some(ps) => {
                let mut m = vec![];
                for (fam, rs) in ranges(ps).into_iter().enumerate() {
                    if rs.is_empty() {
                        continue;
                    }
                    let name = set_name(fam, &r.peer_set);
                    let family = if fam == 0 { "ip" } else { "ip6" };
                    let elements = rs.into_iter().map(|x| element(fam, x)).collect();
                    sets.insert(name.clone(), (family, elements));
                    m.push(Some(format!("{family} {field} @{name}")));
                }
                m
            }
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
            let rules = chain_rules(dir, set, &mut p.sets);
            p.chains.insert(name.clone(), rules);
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
    // Sets before the chains that name them; removed after them.
    for (name, (family, elements)) in &next.sets {
        let fill = |out: &mut String| {
            if !elements.is_empty() {
                out.push_str(&format!(
                    "add element inet {TABLE} {name} {{ {} }}\n",
                    elements.join(", ")
                ));
            }
        };
        match prev.sets.get(name) {
            Some(old) if old.1 == *elements => {}
            Some(_) => {
                out.push_str(&format!("flush set inet {TABLE} {name}\n"));
                fill(&mut out);
            }
            None => {
                let ty = if *family == "ip" {
                    "ipv4_addr"
                } else {
                    "ipv6_addr"
                };
                out.push_str(&format!(
                    "add set inet {TABLE} {name} {{ type {ty}; flags interval; }}\n"
                ));
                fill(&mut out);
            }
        }
    }
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
    for name in prev.sets.keys() {
        if !next.sets.contains_key(name) {
            out.push_str(&format!("delete set inet {TABLE} {name}\n"));
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

    fn rule(peers: Option<Vec<PeerNet>>, ports: Option<Vec<PortRange>>) -> Rule {
        Rule {
            policy: id("p"),
            index: 1,
            peer_set: "x/p/Ingress/1".into(),
            peers,
            ports,
        }
    }

    fn net(s: &str, except: &[&str]) -> PeerNet {
        PeerNet {
            net: s.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn peers_become_disjoint_ranges_with_exceptions_cut_out() {
        let r = ranges(&[
            net("10.0.1.0/24", &["10.0.1.2/32", "10.0.1.128/25"]),
            net("10.0.1.200/32", &[]),
            net("10.0.2.0/24", &[]),
            net("10.0.3.0/24", &[]),
            net("fd00::/64", &["fd00::/65"]),
        ]);
        let show: Vec<String> = r[0].iter().map(|x| element(0, *x)).collect();
        assert_eq!(
            show,
            [
                "10.0.1.0-10.0.1.1",
                "10.0.1.3-10.0.1.127",
                "10.0.1.200",
                "10.0.2.0-10.0.3.255"
            ]
        );
        let six: Vec<String> = r[1].iter().map(|x| element(1, *x)).collect();
        assert_eq!(six, ["fd00::8000:0:0:0-fd00::ffff:ffff:ffff:ffff"]);
        assert_eq!(ranges(&[net("10.0.0.0/24", &["10.0.0.0/16"])])[0], vec![]);
    }

    #[test]
    fn a_chain_is_the_rules_then_the_drop() {
        let mut sets = BTreeMap::new();
        let s = set(vec![rule(
            Some(vec![net("10.0.1.0/24", &["10.0.1.2/32"])]),
            Some(vec![
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
        )]);
        let name = set_name(0, "x/p/Ingress/1");
        assert_eq!(
            chain_rules(Direction::Ingress, &s, &mut sets),
            vec![
                format!("ip saddr @{name} meta l4proto tcp th dport {{ 80-81 }} accept comment \"x/p rule 1\""),
                format!("ip saddr @{name} meta l4proto udp th dport {{ 53 }} accept comment \"x/p rule 1\""),
                "counter drop comment \"denied: isolated by x/p\"".to_string(),
            ]
        );
        assert_eq!(
            sets[&name],
            (
                "ip",
                vec![
                    "10.0.1.0-10.0.1.1".to_string(),
                    "10.0.1.3-10.0.1.255".to_string()
                ]
            )
        );
        // Egress: `return`, so ingress is asked too.
        let any = set(vec![rule(None, None)]);
        assert_eq!(
            chain_rules(Direction::Egress, &any, &mut sets)[0],
            "return comment \"x/p rule 1\""
        );
        // A rule whose selectors match no pod allows nothing.
        let none = set(vec![rule(Some(vec![]), None)]);
        assert_eq!(chain_rules(Direction::Ingress, &none, &mut sets).len(), 1);
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
        // A rule added: that chain is flushed and refilled, and its set made.
        let allow = set(vec![rule(Some(vec![net("10.0.0.2/32", &[])]), None)]);
        let two = desired(&[PodPolicy {
            key: "x/a",
            ips: &ips,
            ingress: &allow,
            egress: &open,
        }]);
        let step = plan(Some(&one), &two);
        let (mk, fl) = (
            step.find("add set").unwrap(),
            step.find("flush chain").unwrap(),
        );
        assert!(mk < fl, "the set exists before a rule names it: {step}");
        assert!(!step.contains("in4"), "{step}");
        // The peers change (a pod came): only the set is refilled.
        let more = set(vec![rule(
            Some(vec![net("10.0.0.2/32", &[]), net("10.0.0.3/32", &[])]),
            None,
        )]);
        let three = desired(&[PodPolicy {
            key: "x/a",
            ips: &ips,
            ingress: &more,
            egress: &open,
        }]);
        let step = plan(Some(&two), &three);
        assert!(step.starts_with("flush set"), "{step}");
        assert!(
            step.contains("10.0.0.2-10.0.0.3") && !step.contains("chain"),
            "{step}"
        );
        // No longer isolated: map entry, then chain, then set go.
        let gone = plan(Some(&three), &Programmed::default());
        let (e, c, st) = (
            gone.find("delete element").unwrap(),
            gone.find("delete chain").unwrap(),
            gone.find("delete set").unwrap(),
        );
        assert!(e < c && c < st, "{gone}");
    }
}
