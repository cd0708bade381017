//! The nftables service backend (kernel datapath): the service table as one
//! nftables table, `ip strait_svc`, changed incrementally.
//!
//! Frontends are found through a verdict map keyed on (address, protocol,
//! port), so a lookup costs the same at 10 or 10 000 services. Each
//! frontend has its own chain, named after the frontend, that picks a
//! backend with `numgen random` (or its ClientIP affinity sets, one per
//! backend, named after the backend) and DNATs; conntrack translates
//! replies. A change rewrites only the chains of the frontends that changed,
//! in one atomic `nft -f` transaction, so an unrelated change costs little
//! and leaves every affinity set (and its clients' stickiness) alone.
//!
//! [`plan`] is pure: from what the table holds ([`Programmed`]) and the new
//! service table it returns the script and what the table will hold.

use crate::services::{Proto, ServiceEntry, ServiceTable, HAIRPIN_IP4};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

pub const TABLE: &str = "strait_svc";

/// The mark that asks the masquerade rule to SNAT (shared with the eBPF
/// datapath's MARK_MASQUERADE).
pub const MARK_MASQUERADE: u32 = 0x5a00;

/// Chains and sets every version of the table has.
const SKELETON: &[&str] = &[
    "prerouting",
    "output",
    "refuse_local",
    "refuse_forward",
    "hairpin_snat",
    "frontends",
    "hairpin",
];

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// A frontend's chain: `svc_<address hex>_<proto>_<port>`.
fn chain(e: &ServiceEntry) -> String {
    let f = &e.frontend;
    format!("svc_{:08x}_{}_{}", u32::from(f.ip), proto(f.proto), f.port)
}

/// A backend's affinity chain and set, under its frontend's chain name.
fn backend_names(svc_chain: &str, ip: Ipv4Addr, port: u16) -> (String, String) {
    let b = format!("{:08x}_{port}", u32::from(ip));
    (
        format!("{svc_chain}_b_{b}"),
        format!("aff{}_b_{b}", &svc_chain[3..]),
    )
}

/// What `ip strait_svc` holds, as far as strait knows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Programmed {
    /// The hooks, the frontend map and the hairpin set are in place.
    pub skeleton: bool,
    /// Frontends with a chain and a map element, by chain name.
    pub services: BTreeMap<String, ServiceEntry>,
    /// Elements of the hairpin set.
    pub hairpin: BTreeSet<Ipv4Addr>,
    /// Chains and sets found in the kernel whose content is unknown (a
    /// table an earlier agent left): rewritten if wanted, deleted if not.
    pub stray_chains: BTreeSet<String>,
    pub stray_sets: BTreeSet<String>,
}

impl Programmed {
    /// A table found in the kernel with these chains and sets.
    pub fn found(
        chains: impl IntoIterator<Item = String>,
        sets: impl IntoIterator<Item = String>,
    ) -> Self {
        let keep = |n: &String| !SKELETON.contains(&n.as_str());
        Programmed {
            stray_chains: chains.into_iter().filter(keep).collect(),
            stray_sets: sets.into_iter().filter(keep).collect(),
            ..Default::default()
        }
    }
}

/// What `nft -j list table ip strait_svc` shows: the chains and sets in it
/// (their content is not read: it is rewritten if wanted).
pub fn parse_listing(json: &str) -> Result<Programmed, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let (mut chains, mut sets) = (vec![], vec![]);
    for obj in v["nftables"].as_array().into_iter().flatten() {
        for (kind, out) in [("chain", &mut chains), ("set", &mut sets)] {
            if let Some(name) = obj[kind]["name"].as_str() {
                out.push(name.to_string());
            }
        }
    }
    Ok(Programmed::found(chains, sets))
}

/// Named sets with their definitions.
type Sets = Vec<(String, String)>;
/// Named chains with their rules.
type Chains = Vec<(String, Vec<String>)>;

/// The sets and chains one frontend needs. The frontend's own chain comes
/// last.
fn service_objects(e: &ServiceEntry) -> (Sets, Chains) {
    let name = chain(e);
    let l4 = proto(e.frontend.proto);
    let backends: Vec<_> = e.active().collect();
    let mut sets = vec![];
    let mut chains = vec![];
    let mut rules = vec![];
    if e.external && !e.local_only {
        rules.push(format!("meta mark set meta mark | {MARK_MASQUERADE:#x}"));
    }
    let comment = format!("comment \"{}/{}:{}\"", e.namespace, e.name, e.port_name);
    match e.affinity_secs {
        Some(secs) => {
            let mut picks = vec![];
            for (j, b) in backends.iter().enumerate() {
                let (sub, set) = backend_names(&name, b.ip, b.port);
                sets.push((
                    set.clone(),
                    format!("{{ type ipv4_addr; flags dynamic,timeout; timeout {secs}s; }}"),
                ));
                // A client in the set goes back to its backend.
                rules.push(format!(
                    "meta l4proto {l4} ip saddr @{set} update @{set} {{ ip saddr }} dnat to {}:{}",
                    b.ip, b.port
                ));
                chains.push((
                    sub.clone(),
                    vec![format!(
                        "meta l4proto {l4} update @{set} {{ ip saddr }} dnat to {}:{}",
                        b.ip, b.port
                    )],
                ));
                picks.push(format!("{j} : goto {sub}"));
            }
            rules.push(format!(
                "numgen random mod {} vmap {{ {} }} {comment}",
                backends.len(),
                picks.join(", ")
            ));
        }
        None => {
            let map: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(j, b)| format!("{j} : {} . {}", b.ip, b.port))
                .collect();
            // A port mapping needs a transport protocol match in the rule.
            rules.push(format!(
                "meta l4proto {l4} dnat ip to numgen random mod {} map {{ {} }} {comment}",
                backends.len(),
                map.join(", ")
            ));
        }
    }
    chains.push((name, rules));
    (sets, chains)
}

fn element(e: &ServiceEntry) -> String {
    format!(
        "{} . {} . {}",
        e.frontend.ip,
        proto(e.frontend.proto),
        e.frontend.port
    )
}

/// The script that turns the table `prev` describes into `table`, and what
/// the table holds afterwards. Apply it in one `nft -f` (one transaction).
pub fn plan(
    prev: &Programmed,
    table: &ServiceTable,
    service_cidr: Option<ipnet::Ipv4Net>,
) -> (String, Programmed) {
    let t = format!("ip {TABLE}");
    let mut s = String::new();
    let want: BTreeMap<String, &ServiceEntry> = table
        .entries
        .iter()
        .filter(|e| e.active().count() > 0)
        .map(|e| (chain(e), &**e))
        .collect();
    let cold = !prev.skeleton;
    let known = |name: &str| !cold && prev.services.contains_key(name);
    if cold {
        skeleton(&mut s, &t, service_cidr);
    }
    // 1. Frontends that go: out of the map first.
    for (name, e) in &prev.services {
        if !cold && !want.contains_key(name) {
            writeln!(s, "delete element {t} frontends {{ {} }}", element(e)).unwrap();
        }
    }
    // 2. New and changed frontends: their chains emptied (or made), their
    // affinity sets made, their rules written, then their map element.
    let mut kept_sets = BTreeSet::new();
    let mut kept_chains = BTreeSet::new();
    for (name, e) in &want {
        let (sets, chains) = service_objects(e);
        kept_sets.extend(sets.iter().map(|(n, _)| n.clone()));
        kept_chains.extend(chains.iter().map(|(n, _)| n.clone()));
        if !cold && prev.services.get(name) == Some(*e) {
            continue;
        }
        // Emptied first, so nothing refers to a set about to be remade.
        for (c, _) in &chains {
            writeln!(s, "add chain {t} {c}\nflush chain {t} {c}").unwrap();
        }
        let had: Vec<(String, String)> = match prev.services.get(name) {
            Some(o) if !cold => service_objects(o).0,
            _ => vec![],
        };
        for (set, def) in &sets {
            // An existing set keeps its members: clients stay on their
            // backend. One whose timeout changed is made anew.
            if had.iter().any(|(n, d)| n == set && d == def) || prev.stray_sets.contains(set) {
                continue;
            }
            if had.iter().any(|(n, _)| n == set) {
                writeln!(s, "delete set {t} {set}").unwrap();
            }
            writeln!(s, "add set {t} {set} {def}").unwrap();
        }
        for (c, rules) in &chains {
            for r in rules {
                writeln!(s, "add rule {t} {c} {r}").unwrap();
            }
        }
        if !known(name) {
            writeln!(
                s,
                "add element {t} frontends {{ {} : goto {name} }}",
                element(e)
            )
            .unwrap();
        }
    }
    // 3. What no frontend uses any more: chains emptied, then deleted, then
    // sets (nothing refers to them by then).
    let mut old_chains: BTreeSet<String> = prev.stray_chains.clone();
    let mut old_sets: BTreeSet<String> = prev.stray_sets.clone();
    for e in prev.services.values() {
        let (sets, chains) = service_objects(e);
        old_chains.extend(chains.into_iter().map(|(n, _)| n));
        old_sets.extend(sets.into_iter().map(|(n, _)| n));
    }
    let gone_chains: Vec<&String> = old_chains.difference(&kept_chains).collect();
    for c in &gone_chains {
        writeln!(s, "flush chain {t} {c}").unwrap();
    }
    for c in &gone_chains {
        writeln!(s, "delete chain {t} {c}").unwrap();
    }
    for set in old_sets.difference(&kept_sets) {
        writeln!(s, "delete set {t} {set}").unwrap();
    }
    // 4. Hairpin: a pod picked as the backend of its own connection would
    // drop a packet from its own address; it comes from 169.254.42.1
    // instead (as in the eBPF backend), and conntrack restores both ends.
    let hairpin: BTreeSet<Ipv4Addr> = want
        .values()
        .flat_map(|e| e.active().map(|b| b.ip))
        .collect();
    let had = if cold {
        BTreeSet::new()
    } else {
        prev.hairpin.clone()
    };
    let gone: Vec<String> = had
        .difference(&hairpin)
        .map(|ip| format!("{ip} . {ip}"))
        .collect();
    let new: Vec<String> = hairpin
        .difference(&had)
        .map(|ip| format!("{ip} . {ip}"))
        .collect();
    if !gone.is_empty() {
        writeln!(s, "delete element {t} hairpin {{ {} }}", gone.join(", ")).unwrap();
    }
    if !new.is_empty() {
        writeln!(s, "add element {t} hairpin {{ {} }}", new.join(", ")).unwrap();
    }
    let next = Programmed {
        skeleton: true,
        services: want.into_iter().map(|(k, e)| (k, e.clone())).collect(),
        hairpin,
        stray_chains: BTreeSet::new(),
        stray_sets: BTreeSet::new(),
    };
    (s, next)
}

/// The hooks, the frontend map, the refusal of service addresses nothing
/// answers, and the hairpin SNAT. Idempotent: `add` keeps what exists, the
/// map and the hairpin set are flushed (their elements follow).
fn skeleton(s: &mut String, t: &str, service_cidr: Option<ipnet::Ipv4Net>) {
    writeln!(s, "add table {t}").unwrap();
    writeln!(
        s,
        "add map {t} frontends {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\nflush map {t} frontends"
    )
    .unwrap();
    writeln!(
        s,
        "add set {t} hairpin {{ type ipv4_addr . ipv4_addr; }}\nflush set {t} hairpin"
    )
    .unwrap();
    // -100 is dstnat (nft 1.0.6 accepts the name only in prerouting).
    for hook in ["prerouting", "output"] {
        writeln!(
            s,
            "add chain {t} {hook} {{ type nat hook {hook} priority -100; policy accept; }}\nflush chain {t} {hook}\nadd rule {t} {hook} ip daddr . meta l4proto . th dport vmap @frontends"
        )
        .unwrap();
    }
    writeln!(
        s,
        "add chain {t} hairpin_snat {{ type nat hook postrouting priority 100; policy accept; }}\nflush chain {t} hairpin_snat\nadd rule {t} hairpin_snat ct status dnat ip saddr . ip daddr @hairpin snat ip to {HAIRPIN_IP4}"
    )
    .unwrap();
    // Anything still addressed to the service CIDR after DNAT has no
    // backend (or no frontend at all): refuse it at once, as the eBPF
    // backend's unreachable route does.
    for (name, hook) in [("refuse_local", "output"), ("refuse_forward", "forward")] {
        writeln!(
            s,
            "add chain {t} {name} {{ type filter hook {hook} priority 0; policy accept; }}\nflush chain {t} {name}"
        )
        .unwrap();
        if let Some(cidr) = service_cidr {
            writeln!(
                s,
                "add rule {t} {name} ip daddr {cidr} reject with icmp type host-unreachable"
            )
            .unwrap();
        }
    }
}

/// The whole table from nothing (for tests and benchmarks).
pub fn render(table: &ServiceTable, service_cidr: Option<ipnet::Ipv4Net>) -> String {
    plan(&Programmed::default(), table, service_cidr).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::*;

    fn entry(
        port: u16,
        backends: &[(&str, BackendState)],
        affinity: Option<u32>,
        external: bool,
    ) -> ServiceEntry {
        ServiceEntry {
            id: 1,
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            frontend: Frontend {
                ip: "198.18.64.10".parse().unwrap(),
                port,
                proto: Proto::Tcp,
            },
            backends: backends
                .iter()
                .map(|(ip, st)| Backend {
                    ip: ip.parse().unwrap(),
                    port: 8080,
                    state: *st,
                    pod: None,
                    node: None,
                })
                .collect(),
            affinity_secs: affinity,
            external,
            local_only: false,
        }
    }

    const A: BackendState = BackendState::Active;

    fn table(entries: Vec<ServiceEntry>) -> ServiceTable {
        ServiceTable {
            entries: entries.into_iter().map(std::sync::Arc::new).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_a_verdict_map_and_a_random_pick() {
        let t = table(vec![entry(
            80,
            &[
                ("10.0.0.1", A),
                ("10.0.0.2", BackendState::Terminating),
                ("10.0.0.3", A),
            ],
            None,
            false,
        )]);
        let r = render(&t, None);
        assert!(r.starts_with("add table ip strait_svc\n"), "{r}");
        assert!(
            r.contains("add element ip strait_svc frontends { 198.18.64.10 . tcp . 80 : goto svc_c612400a_tcp_80 }"),
            "{r}"
        );
        assert!(r.contains("meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.0.0.1 . 8080, 1 : 10.0.0.3 . 8080 } comment \"default/web:http\""), "terminating backends get no new connections: {r}");
        assert!(
            r.contains("type nat hook output"),
            "node processes are served too"
        );
        assert!(
            !r.contains("meta mark"),
            "internal frontends are not masqueraded"
        );
        assert!(
            r.contains(
                "add element ip strait_svc hairpin { 10.0.0.1 . 10.0.0.1, 10.0.0.3 . 10.0.0.3 }"
            ),
            "{r}"
        );
    }

    #[test]
    fn affinity_external_and_empty_services() {
        let t = table(vec![
            entry(80, &[("10.0.0.1", A), ("10.0.0.2", A)], Some(30), true),
            entry(81, &[], None, false),
        ]);
        let r = render(&t, None);
        assert!(
            r.contains("add set ip strait_svc aff_c612400a_tcp_80_b_0a000002_8080 { type ipv4_addr; flags dynamic,timeout; timeout 30s; }"),
            "{r}"
        );
        assert!(r.contains("meta l4proto tcp ip saddr @aff_c612400a_tcp_80_b_0a000001_8080 update @aff_c612400a_tcp_80_b_0a000001_8080 { ip saddr } dnat to 10.0.0.1:8080"), "{r}");
        assert!(
            r.contains("meta mark set meta mark | 0x5a00"),
            "external Cluster traffic is masqueraded: {r}"
        );
        assert!(
            !r.contains(". 81 :"),
            "a frontend without backends is left to the unreachable route: {r}"
        );
    }

    #[test]
    fn a_change_rewrites_only_the_frontends_that_changed() {
        let web = entry(80, &[("10.0.0.1", A), ("10.0.0.2", A)], Some(30), false);
        let other = entry(90, &[("10.0.0.5", A)], None, false);
        let (_, p1) = plan(
            &Programmed::default(),
            &table(vec![web.clone(), other.clone()]),
            None,
        );
        // Nothing changed: nothing to do.
        let (s, p2) = plan(&p1, &table(vec![web.clone(), other.clone()]), None);
        assert_eq!(s, "");
        assert_eq!(p2, p1);
        // `other` gains a backend: web's chain and affinity sets are not
        // in the script at all, so its clients keep their backends.
        let other2 = entry(90, &[("10.0.0.5", A), ("10.0.0.6", A)], None, false);
        let (s, p3) = plan(&p2, &table(vec![web.clone(), other2.clone()]), None);
        assert!(!s.contains("tcp_80"), "{s}");
        assert!(
            s.contains("flush chain ip strait_svc svc_c612400a_tcp_90"),
            "{s}"
        );
        assert!(
            !s.contains("add element ip strait_svc frontends"),
            "its map element stays: {s}"
        );
        assert!(
            s.contains("add element ip strait_svc hairpin { 10.0.0.6 . 10.0.0.6 }"),
            "{s}"
        );
        // web loses a backend: only that backend's set and chain go; the
        // other backend's set (its clients) stays.
        let web2 = entry(80, &[("10.0.0.1", A)], Some(30), false);
        let (s, p4) = plan(&p3, &table(vec![web2, other2.clone()]), None);
        assert!(
            s.contains("delete set ip strait_svc aff_c612400a_tcp_80_b_0a000002_8080"),
            "{s}"
        );
        assert!(
            s.contains("delete chain ip strait_svc svc_c612400a_tcp_80_b_0a000002_8080"),
            "{s}"
        );
        assert!(
            !s.contains("add set ip strait_svc aff_c612400a_tcp_80_b_0a000001_8080"),
            "kept: {s}"
        );
        assert!(
            !s.contains("delete set ip strait_svc aff_c612400a_tcp_80_b_0a000001_8080"),
            "{s}"
        );
        // web goes: its element, chains and sets are removed, in that order.
        let (s, _) = plan(&p4, &table(vec![other2]), None);
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in {s}"));
        assert!(
            pos("delete element ip strait_svc frontends { 198.18.64.10 . tcp . 80 }")
                < pos("delete chain ip strait_svc svc_c612400a_tcp_80\n")
        );
        assert!(
            pos("delete chain ip strait_svc svc_c612400a_tcp_80\n")
                < pos("delete set ip strait_svc aff_c612400a_tcp_80_b_0a000001_8080")
        );
        assert!(
            s.contains("delete element ip strait_svc hairpin { 10.0.0.1 . 10.0.0.1 }"),
            "{s}"
        );
    }

    #[test]
    fn a_listing_names_chains_and_sets() {
        let j = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "strait_svc"}}, {"map": {"name": "frontends"}}, {"set": {"name": "aff_x"}}, {"set": {"name": "hairpin"}}, {"chain": {"name": "svc_x"}}, {"chain": {"name": "output"}}]}"#;
        let p = parse_listing(j).unwrap();
        assert_eq!(p.stray_chains, ["svc_x".to_string()].into());
        assert_eq!(p.stray_sets, ["aff_x".to_string()].into());
        assert!(!p.skeleton);
    }

    #[test]
    fn a_table_left_by_an_earlier_agent_is_adopted() {
        let web = entry(80, &[("10.0.0.1", A)], Some(30), false);
        let found = Programmed::found(
            [
                "prerouting",
                "svc_c612400a_tcp_80",
                "svc_c612400a_tcp_80_b_0a000001_8080",
                "svc_0",
            ]
            .map(String::from),
            ["hairpin", "aff_c612400a_tcp_80_b_0a000001_8080", "aff_0_0"].map(String::from),
        );
        let (s, next) = plan(&found, &table(vec![web]), None);
        assert!(s.contains("flush map ip strait_svc frontends"), "{s}");
        assert!(
            s.contains("flush chain ip strait_svc svc_c612400a_tcp_80\n"),
            "rewritten: {s}"
        );
        assert!(
            !s.contains("add set ip strait_svc aff_c612400a_tcp_80_b_0a000001_8080"),
            "its clients stay: {s}"
        );
        assert!(
            s.contains("delete chain ip strait_svc svc_0"),
            "older names go: {s}"
        );
        assert!(s.contains("delete set ip strait_svc aff_0_0"), "{s}");
        assert!(!s.contains("delete chain ip strait_svc prerouting"), "{s}");
        assert!(next.stray_chains.is_empty() && next.skeleton);
    }
}
