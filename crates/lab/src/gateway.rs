//! The VLAN gateway of a lab with underlay subnets (crossNode vlan): a
//! namespace `strait-<lab>-gw` on the fabric, one port, an address in
//! every underlay subnet (the subnet's gateway), forwarding on. No VLAN
//! devices here either: the router's port runs strait's VLAN programs in
//! the router role (tags what it sends by the destination's subnet, takes
//! in only tags whose subnet the packet belongs to), so it routes between
//! VLANs the way the seed's switch does (5.0.0.1, 10.0.0.1). The fabric's
//! bridge carries the tagged frames untouched; its MAC learning is
//! VLAN-blind, which is harmless while every MAC lives in one VLAN (each
//! node's uplink MAC is shared by its VLANs, and the bridge only learns
//! which port a MAC is behind). In macvlan mode it also has an untagged
//! fabric address, through which the nodes and the external client reach
//! the pods.

use crate::cmd::{ip, run};
use crate::state::LabState;
use anyhow::Context;
use std::collections::BTreeMap;
use strait_model::lab::fabric_netns;
use strait_model::underlay::gateway_netns;

/// The gateway's own fabric address in macvlan mode (third from the top:
/// the external client and the control plane have the two above it).
pub fn fabric_address(plan: &strait_model::lab::LabPlan) -> std::net::Ipv4Addr {
    let hosts: Vec<std::net::Ipv4Addr> = plan.fabric.hosts().collect();
    hosts[hosts.len() - 3]
}

/// Where the gateway's VLAN map is pinned.
pub fn pin_dir(lab: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(strait_model::lab::lab_bpf_dir(lab)).join("_gateway")
}

pub fn up(st: &LabState, step: impl Fn(&str)) -> anyhow::Result<()> {
    let plan = &st.plan;
    if plan.underlay.is_empty() {
        return Ok(());
    }
    let ns = gateway_netns(&plan.name);
    let fabric = fabric_netns(&plan.name);
    let mtu = plan.mtu.to_string();
    step(&format!(
        "VLAN gateway: namespace {ns}, eth0 {}",
        plan.underlay
            .iter()
            .map(|s| format!("{}/{} (vlan {})", s.gateway, s.cidr.prefix_len(), s.vlan))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", &fabric, "link", "add", "gw", "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
        "netns", &ns,
    ])?;
    ip(&["-n", &fabric, "link", "set", "gw", "master", "br0", "up"])?;
    for s in &plan.underlay {
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/{}", s.gateway, s.cidr.prefix_len()),
            "dev",
            "eth0",
        ])?;
    }
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    if plan.cross_node == strait_model::lab::CrossNodeMode::Macvlan {
        // Bifrost's nodes route none of their pods' traffic, but reach
        // pods (a service's backend on another node, the answer to a
        // masqueraded connection) like any host in the datacenter: through
        // the gateway, untagged on the fabric.
        let gw = fabric_address(plan);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{gw}/{}", plan.fabric.prefix_len()),
            "dev",
            "eth0",
        ])?;
        let ext = strait_model::lab::external_netns(&plan.name);
        for netns in plan
            .nodes
            .iter()
            .map(|n| n.netns.as_str())
            .chain([ext.as_str()])
        {
            for s in &plan.underlay {
                ip(&[
                    "-n",
                    netns,
                    "route",
                    "add",
                    &s.cidr.to_string(),
                    "via",
                    &gw.to_string(),
                ])?;
            }
        }
    }
    // A router on a stick: it forwards out of the port a packet came in
    // by, and must not send redirects for that.
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
    ] {
        run(
            "ip",
            &["netns", "exec", &ns, "sysctl", "-qw", &format!("{k}={v}")],
        )?;
    }
    strait_bpf::datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    let pins = pin_dir(&plan.name);
    let subnets: BTreeMap<ipnet::IpNet, u16> = plan
        .underlay
        .iter()
        .map(|s| (ipnet::IpNet::V4(s.cidr), s.vlan))
        .collect();
    let file = strait_netlink::NetnsFile::open(&crate::run::netns_path(&ns))?;
    strait_netlink::in_netns(&file, move || -> anyhow::Result<()> {
        let mut v = strait_bpf::vlan::Vlan::load(&pins, strait_bpf::vlan::Role::Router)?;
        v.attach("eth0")?;
        v.set_subnets(&subnets)?;
        Ok(())
    })?
    .context("VLAN programs on the gateway")?;
    Ok(())
}
