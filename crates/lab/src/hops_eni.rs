//! The capture points of an eni-mode path (Terway's ENI multi-IP, seed
//! 000). A pod's traffic to another node leaves through the ENI that holds
//! its address (`eth<N>` on its node), crosses the VPC (the ENI's end
//! there, then the destination ENI's end) and comes in through the
//! destination pod's ENI. Between pods of one node, the ENIs are listed
//! too: the seed's point is that they see nothing (rule 512 keeps the
//! traffic in the node).

use crate::hops::Hop;
use crate::state::LabState;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr};
use strait_model::cloud::provider::Eni;
use strait_model::lab::PodPlan;

fn addr(st: &LabState, p: &PodPlan) -> anyhow::Result<Ipv4Addr> {
    match st
        .pod_ip(p)
        .with_context(|| format!("{} has no address", p.name))?
    {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => anyhow::bail!("hop captures are IPv4-only for now"),
    }
}

/// The ENI holding `ip`, as the VPC's records say.
pub fn eni_of(enis: &[Eni], ip: Ipv4Addr) -> anyhow::Result<&Eni> {
    enis.iter()
        .find(|e| e.secondary_ips.contains(&IpAddr::V4(ip)))
        .with_context(|| format!("no ENI in the VPC holds {ip}"))
}

/// The node's side of an ENI, then (when `vpc`) its VPC end; reversed
/// when the packet comes in.
fn eni_hops(st: &LabState, e: &Eni, vpc: bool, out: bool) -> Vec<Hop> {
    let node = e.node.as_deref().unwrap_or_default();
    let netns = st
        .plan
        .node(node)
        .map(|n| n.netns.clone())
        .unwrap_or_default();
    let dev = format!("eth{}", e.device_index.unwrap_or_default());
    let mut v = vec![Hop {
        label: format!("{node} {dev} ({})", e.id),
        netns,
        iface: dev,
    }];
    if vpc {
        v.push(Hop {
            label: format!("vpc {}", e.id),
            netns: crate::cloud::netns(&st.plan.name),
            iface: e.id.clone(),
        });
    }
    if !out {
        v.reverse();
    }
    v
}

/// The node side of every pod ENI in the VPC (for a service's trace,
/// whose backend is not known in advance).
pub fn every_eni(st: &LabState) -> anyhow::Result<Vec<Hop>> {
    let enis = crate::cloud::LabCloud {
        socket: crate::cloud::socket(st),
    }
    .list()
    .map_err(|e| anyhow::anyhow!("the lab's cloud: {e}"))?;
    Ok(enis
        .iter()
        .filter(|e| e.kind == strait_model::cloud::provider::EniKind::Secondary && e.node.is_some())
        .flat_map(|e| eni_hops(st, e, false, true))
        .collect())
}

pub fn path(
    st: &LabState,
    src: &str,
    dst: &str,
) -> anyhow::Result<(Vec<Hop>, Ipv4Addr, Ipv4Addr, String)> {
    let plan = &st.plan;
    let enis = crate::cloud::LabCloud {
        socket: crate::cloud::socket(st),
    }
    .list()
    .map_err(|e| anyhow::anyhow!("the lab's cloud: {e}"))?;
    let dpod = plan
        .pod(dst)
        .with_context(|| format!("{dst} is not a pod of lab {}", plan.name))?;
    let dnode = plan.node(&dpod.node).unwrap();
    let dip = addr(st, dpod)?;
    let deni = eni_of(&enis, dip)?;
    let veth = |p: &PodPlan| strait_model::naming::host_veth_name(&st.container_id(p), "eth0");
    let mut hops = vec![];
    let (sip, snode, seni) = if let Some(spod) = plan.pod(src) {
        let snode = plan.node(&spod.node).unwrap();
        hops.push(Hop {
            label: format!("{} eth0", spod.name),
            netns: spod.netns.clone(),
            iface: "eth0".into(),
        });
        hops.push(Hop {
            label: format!("{} host veth", spod.name),
            netns: snode.netns.clone(),
            iface: veth(spod),
        });
        let sip = addr(st, spod)?;
        (sip, snode, Some(eni_of(&enis, sip)?))
    } else if let Some(n) = plan.node(src) {
        (n.ip, n, None)
    } else {
        anyhow::bail!("{src} is neither a pod nor a node of lab {}", plan.name);
    };
    let across = snode.name != dnode.name;
    if let Some(s) = seni {
        if s.id != deni.id {
            hops.extend(eni_hops(st, s, across, true));
        }
    }
    hops.extend(eni_hops(st, deni, across, false));
    hops.push(Hop {
        label: format!("{} host veth", dpod.name),
        netns: dnode.netns.clone(),
        iface: veth(dpod),
    });
    hops.push(Hop {
        label: format!("{} eth0", dpod.name),
        netns: dpod.netns.clone(),
        iface: "eth0".into(),
    });
    Ok((hops, sip, dip, dpod.name.clone()))
}
