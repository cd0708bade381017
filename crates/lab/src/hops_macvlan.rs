//! The capture points of a macvlan-mode path (Bifrost, seed 001
//! "MACVLAN模式"), where pods have no host veth on their data path: a
//! pod's eth0 is a macvlan on its VLAN's port. Between pods of one VLAN on
//! one node the path is eth0 to eth0, inside macvlan; otherwise it leaves
//! through the source VLAN's port (`eth0-<vid>`, then `trunk<vid>`, where
//! it is tagged) and the node's eth0, crosses the gateway when the VLANs
//! differ, and comes in through the destination node's eth0 and its VLAN's
//! port.

use crate::hops::Hop;
use crate::state::LabState;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr};
use strait_model::lab::{NodePlan, PodPlan};

fn vlan_of(st: &LabState, ip: Ipv4Addr) -> anyhow::Result<u16> {
    st.plan
        .underlay
        .iter()
        .find(|s| s.cidr.contains(&ip))
        .map(|s| s.vlan)
        .with_context(|| format!("{ip} is in no underlay subnet of lab {}", st.plan.name))
}

fn addr(st: &LabState, p: &PodPlan) -> anyhow::Result<Ipv4Addr> {
    match st
        .pod_ip(p)
        .with_context(|| format!("{} has no address", p.name))?
    {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => anyhow::bail!("hop captures are IPv4-only for now"),
    }
}

/// The port's two ends on `node` for `vid`, in the order `out` (leaving)
/// or coming in.
fn port(node: &NodePlan, vid: u16, out: bool) -> Vec<Hop> {
    let (parent, trunk) = strait_model::naming::vlan_port_names("eth0", vid);
    let mut v = vec![
        Hop {
            label: format!("{} {parent}", node.name),
            netns: node.netns.clone(),
            iface: parent,
        },
        Hop {
            label: format!("{} {trunk}", node.name),
            netns: node.netns.clone(),
            iface: trunk,
        },
    ];
    if !out {
        v.reverse();
    }
    v
}

pub fn path(
    st: &LabState,
    src: &str,
    dst: &str,
) -> anyhow::Result<(Vec<Hop>, Ipv4Addr, Ipv4Addr, String)> {
    let plan = &st.plan;
    let spod = plan.pod(src).with_context(|| {
        format!("{src}: in macvlan mode `lab hops` goes from a pod to a pod (a node reaches its pods through their service veths)")
    })?;
    let dpod = plan
        .pod(dst)
        .with_context(|| format!("{dst} is not a pod of lab {}", plan.name))?;
    let (snode, dnode) = (
        plan.node(&spod.node).unwrap(),
        plan.node(&dpod.node).unwrap(),
    );
    let (sip, dip) = (addr(st, spod)?, addr(st, dpod)?);
    let (svid, dvid) = (vlan_of(st, sip)?, vlan_of(st, dip)?);
    let eth0 = |label: String, netns: &str| Hop {
        label,
        netns: netns.to_string(),
        iface: "eth0".into(),
    };
    let mut hops = vec![eth0(format!("{} eth0", spod.name), &spod.netns)];
    // Inside one node and one VLAN the far end and eth0 are listed too:
    // their captures show that the frames never leave macvlan (the
    // parent's capture sees them, as a VLAN sub-interface's would: macvlan
    // hands a bridged frame to its parent's taps).
    hops.extend(port(snode, svid, true));
    hops.push(eth0(format!("{} eth0", snode.name), &snode.netns));
    let direct = snode.name == dnode.name && svid == dvid;
    if !direct {
        if svid != dvid {
            hops.push(eth0(
                "gateway eth0".into(),
                &strait_model::underlay::gateway_netns(&plan.name),
            ));
        }
        if dnode.name != snode.name {
            hops.push(eth0(format!("{} eth0", dnode.name), &dnode.netns));
        }
        if (dnode.name.as_str(), dvid) != (snode.name.as_str(), svid) {
            hops.extend(port(dnode, dvid, false));
        }
    }
    hops.push(eth0(format!("{} eth0", dpod.name), &dpod.netns));
    Ok((hops, sip, dip, dpod.name.clone()))
}
