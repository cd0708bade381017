//! The VPC's records as kernel objects. The VPC namespace holds every
//! vSwitch's gateway (a /32 on its `lo`: it answers ARP for it on every
//! ENI), a port on the fabric (the nodes' primary network) and, per
//! attached ENI, the VPC end `eni-…` of a veth pair whose other end is
//! `eth<device index>` in the node, with the ENI's MAC. The VPC routes
//! each of the ENI's addresses to its end and answers ARP for what it
//! routes elsewhere (proxy ARP), so addresses of one vSwitch on different
//! ENIs reach each other through it, as in a VPC.

use crate::cmd::ip;
use crate::state::LabState;
use std::collections::BTreeSet;
use strait_model::cloud::provider::{Eni, EniKind};
use strait_model::cloud::vpc::Vpc;

/// Route protocol of the VPC's per-address routes.
pub const PROTO: &str = "91";

/// Make the VPC namespace (before the emulator starts).
pub fn up(st: &LabState) -> anyhow::Result<()> {
    let plan = &st.plan;
    let Some(cloud) = &plan.cloud else {
        return Ok(());
    };
    let ns = super::netns(&plan.name);
    let fabric = strait_model::lab::fabric_netns(&plan.name);
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    for v in &cloud.vswitches {
        let gw = strait_model::cloud::gateway(v.cidr);
        ip(&["-n", &ns, "addr", "add", &format!("{gw}/32"), "dev", "lo"])?;
    }
    let mtu = plan.mtu.to_string();
    ip(&[
        "-n", &fabric, "link", "add", "vpc", "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
        "netns", &ns,
    ])?;
    ip(&["-n", &fabric, "link", "set", "vpc", "master", "br0", "up"])?;
    let addr = format!(
        "{}/{}",
        super::fabric_address(plan),
        plan.fabric.prefix_len()
    );
    ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    crate::cmd::run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    Ok(())
}

/// The VPC end of an ENI: its id (12 characters, within IFNAMSIZ).
pub fn vpc_end(e: &Eni) -> &str {
    &e.id
}

/// ENIs that are links: attached secondary and trunk ENIs (the primary
/// ENI is the node's eth0 on the fabric; members ride their trunk).
fn linked(vpc: &Vpc) -> Vec<&Eni> {
    vpc.enis
        .values()
        .filter(|e| e.node.is_some() && matches!(e.kind, EniKind::Secondary | EniKind::Trunk))
        .collect()
}

/// Make the VPC namespace's links and routes match the records. Runs in
/// the VPC namespace (the emulator's own). Returns what it changed.
pub fn sync(st: &LabState, vpc: &Vpc) -> anyhow::Result<Vec<String>> {
    let mut changed = vec![];
    let have: BTreeSet<String> = links()?;
    let want = linked(vpc);
    let want_names: BTreeSet<&str> = want.iter().map(|e| vpc_end(e)).collect();
    for name in have.iter().filter(|n| !want_names.contains(n.as_str())) {
        ip(&["link", "del", name])?;
        changed.push(format!("removed {name}"));
    }
    for e in &want {
        let name = vpc_end(e);
        if !have.contains(name) {
            let node = e.node.as_deref().unwrap();
            let n = st
                .plan
                .node(node)
                .ok_or_else(|| anyhow::anyhow!("ENI {} is on node {node}, not in the lab", e.id))?;
            let dev = format!("eth{}", e.device_index.unwrap_or(1));
            let mtu = st.plan.mtu.to_string();
            ip(&[
                "link", "add", name, "mtu", &mtu, "type", "veth", "peer", "name", &dev, "address",
                &e.mac, "mtu", &mtu, "netns", &n.netns,
            ])?;
            crate::cmd::run(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{name}.proxy_arp=1")],
            )?;
            ip(&["link", "set", name, "up"])?;
            changed.push(format!("{name} <-> {node} {dev}"));
        }
    }
    // Every address of a linked ENI is routed to its end.
    let mut want_routes: BTreeSet<(String, String)> = want
        .iter()
        .flat_map(|e| {
            std::iter::once(e.primary_ip)
                .chain(e.secondary_ips.iter().copied())
                .map(move |ip| (ip.to_string(), vpc_end(e).to_string()))
        })
        .collect();
    // A member's address goes to its trunk's end (see `members`).
    for e in vpc.enis.values() {
        if let EniKind::Member { trunk, .. } = &e.kind {
            if want.iter().any(|t| t.id == *trunk) {
                want_routes.insert((e.primary_ip.to_string(), trunk.clone()));
            }
        }
    }
    let have_routes = routes()?;
    for (dst, dev) in have_routes.difference(&want_routes) {
        ip(&["route", "del", dst, "dev", dev, "proto", PROTO])?;
    }
    for (dst, dev) in want_routes.difference(&have_routes) {
        ip(&["route", "replace", dst, "dev", dev, "proto", PROTO])?;
        changed.push(format!("route {dst} dev {dev}"));
    }
    changed.extend(members(st, vpc)?);
    // The security groups follow the ENIs and their addresses.
    super::sgnft::apply(vpc)?;
    slbs(vpc)?;
    Ok(changed)
}

/// The SLBs: each listener DNATs its address and port to its backends
/// (one picked at random per connection), in the VPC, before the
/// security groups judge the packet on its way to the backend's ENI. A
/// backend whose address no ENI holds any more is left out.
fn slbs(vpc: &Vpc) -> anyhow::Result<()> {
    let held: BTreeSet<std::net::IpAddr> = vpc
        .enis
        .values()
        .flat_map(|e| e.secondary_ips.iter().copied().chain([e.primary_ip]))
        .collect();
    let mut rules = String::new();
    for s in &vpc.spec.slbs {
        for l in &s.listeners {
            let key = strait_model::cloud::slb::key(&s.id, l.port);
            let b: Vec<_> = vpc
                .slb_backends
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|b| held.contains(&b.ip) && b.ip.is_ipv4())
                .collect();
            if b.is_empty() {
                continue;
            }
            let map: Vec<String> = b
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {} . {}", b.ip, b.port))
                .collect();
            rules.push_str(&format!(
                "    ip daddr {} tcp dport {} dnat ip to numgen random mod {} map {{ {} }} comment \"{key}\"\n",
                s.address,
                l.port,
                b.len(),
                map.join(", ")
            ));
        }
    }
    let script = format!(
        "add table ip strait_slb\ndelete table ip strait_slb\ntable ip strait_slb {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n}}\n"
    );
    super::sgnft::nft("SLBs", &script)
}

/// Where the VPC's trunk programs pin their map.
pub fn pin_dir(lab: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(strait_model::lab::lab_bpf_dir(lab)).join("_vpc")
}

/// Member ENIs ride their trunk: the VPC routes a member's address to the
/// trunk's end and tags it there with the member's VLAN id (strait's VLAN
/// programs in the router role: by destination on egress; on ingress a tag
/// is taken off only when the packet's address is that VLAN's member's).
fn members(st: &LabState, vpc: &Vpc) -> anyhow::Result<Vec<String>> {
    let mut changed = vec![];
    let mut by_trunk: std::collections::BTreeMap<
        &str,
        std::collections::BTreeMap<ipnet::IpNet, u16>,
    > = Default::default();
    for e in vpc.enis.values() {
        if let EniKind::Member { trunk, vlan } = &e.kind {
            by_trunk
                .entry(trunk.as_str())
                .or_default()
                .insert(ipnet::IpNet::from(e.primary_ip), *vlan);
        }
    }
    let trunks: Vec<&Eni> = linked(vpc)
        .into_iter()
        .filter(|e| e.kind == EniKind::Trunk)
        .collect();
    if trunks.is_empty() {
        return Ok(changed);
    }
    let pins = pin_dir(&st.plan.name);
    strait_bpf::datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    std::fs::create_dir_all(&pins)?;
    // One map for the VPC: every trunk's members (their addresses differ).
    let all: std::collections::BTreeMap<ipnet::IpNet, u16> =
        by_trunk.values().flat_map(|m| m.clone()).collect();
    let mut v = strait_bpf::vlan::Vlan::load(&pins, strait_bpf::vlan::Role::Router)?;
    for t in &trunks {
        v.attach(vpc_end(t))?;
    }
    if v.set_subnets(&all)? > 0 {
        changed.push(format!("member VLANs {all:?}"));
    }
    Ok(changed)
}

/// The VPC ends present.
fn links() -> anyhow::Result<BTreeSet<String>> {
    let out = ip(&["-j", "link", "show"])?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(v.iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("eni-"))
        .map(str::to_string)
        .collect())
}

/// The VPC's per-address routes: (destination, device).
fn routes() -> anyhow::Result<BTreeSet<(String, String)>> {
    let out = ip(&["-j", "route", "show", "proto", PROTO])?;
    let v: Vec<serde_json::Value> =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })?;
    Ok(v.iter()
        .filter_map(|r| {
            Some((
                r["dst"].as_str()?.to_string(),
                r["dev"].as_str()?.to_string(),
            ))
        })
        .collect())
}
