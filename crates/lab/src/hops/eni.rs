//! The capture points of an eni-mode path (Terway's ENI multi-IP, seed
//! 000). A pod's traffic to another node leaves through the ENI that holds
//! its address (`eth<N>` on its node), crosses the VPC (the ENI's end
//! there, then the destination ENI's end) and comes in through the
//! destination pod's ENI. Between pods of one node, the ENIs are listed
//! too: the seed's point is that they see nothing (rule 512 keeps the
//! traffic in the node).

use super::Hop;
use crate::state::LabState;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr};
use strait_model::cloud::provider::{Eni, EniKind};
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

/// The ENI link carrying `ip`, as the VPC's records say: the ENI holding
/// it, or for a member ENI's address (ENI-Trunking) its trunk.
pub fn eni_of(enis: &[Eni], ip: Ipv4Addr) -> anyhow::Result<&Eni> {
    let e = strait_model::cloud::eniip::eni_of(enis, IpAddr::V4(ip))
        .with_context(|| format!("no ENI in the VPC holds {ip}"))?;
    match &e.kind {
        EniKind::Member { trunk, .. } => enis
            .iter()
            .find(|t| &t.id == trunk)
            .with_context(|| format!("member ENI {} rides trunk {trunk}, which is gone", e.id)),
        _ => Ok(e),
    }
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
    let what = if e.kind == EniKind::Trunk {
        "trunk "
    } else {
        ""
    };
    let mut v = vec![Hop {
        label: format!("{node} {dev} ({what}{})", e.id),
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
        .filter(|e| matches!(e.kind, EniKind::Secondary | EniKind::Trunk) && e.node.is_some())
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

/// Seed 000 scenario 8: the external client connects to an SLB listener.
/// Captures on the client, the VPC's fabric port, every backend's ENI (its
/// VPC end and the node's side), host veth and eth0. The SLB's address is
/// translated in the VPC: after the fabric port only pod addresses are
/// seen. With the eBPF datapath the ENI's from-netdev sends the request
/// straight into the pod, past its host veth.
pub fn trace_slb(st: &LabState, slb: &str, port: u16) -> anyhow::Result<super::ServiceHopReport> {
    let plan = &st.plan;
    let spec = plan
        .cloud
        .as_ref()
        .and_then(|c| c.slbs.iter().find(|s| s.id == slb))
        .with_context(|| format!("lab {} has no SLB {slb}", plan.name))?;
    let IpAddr::V4(vip) = spec.address else {
        anyhow::bail!("hop captures are IPv4-only for now");
    };
    let vpc = crate::cloud::LabCloud {
        socket: crate::cloud::socket(st),
    };
    let records = vpc
        .list()
        .map_err(|e| anyhow::anyhow!("the lab's cloud: {e}"))?;
    // The backends as the VPC has them now.
    let listed = {
        let path = crate::cloud::records(st);
        let v: strait_model::cloud::vpc::Vpc =
            serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        v.slb_backends
            .get(&strait_model::cloud::slb::key(slb, port))
            .cloned()
            .unwrap_or_default()
    };
    anyhow::ensure!(
        !listed.is_empty(),
        "SLB {slb} listener {port} has no backends (its Service has no ready endpoint)"
    );
    let ext = strait_model::lab::external_netns(&plan.name);
    let client = crate::run::external_ip(plan);
    let mut hops = vec![
        Hop {
            label: "external eth0".into(),
            netns: ext.clone(),
            iface: "eth0".into(),
        },
        Hop {
            label: "vpc eth0 (fabric)".into(),
            netns: crate::cloud::netns(&plan.name),
            iface: "eth0".into(),
        },
    ];
    let mut backend_ips = vec![];
    for b in &listed {
        let IpAddr::V4(bip) = b.ip else { continue };
        backend_ips.push(bip);
        let e = eni_of(&records, bip)?;
        hops.extend(eni_hops(st, e, true, false));
        let pod = plan
            .pods
            .iter()
            .find(|p| st.pod_ip(p) == Some(b.ip))
            .with_context(|| format!("backend {bip} is no pod of the lab"))?;
        let node = plan.node(&pod.node).unwrap();
        hops.push(Hop {
            label: format!("{} host veth", pod.name),
            netns: node.netns.clone(),
            iface: strait_model::naming::host_veth_name(&st.container_id(pod), "eth0"),
        });
        hops.push(Hop {
            label: format!("{} eth0", pod.name),
            netns: pod.netns.clone(),
            iface: "eth0".into(),
        });
    }
    let (pairs, probe) = super::capture_during(&hops, || {
        crate::probe::probe(
            &crate::run::netns_path(&ext),
            std::net::SocketAddr::new(vip.into(), port),
            false,
            std::time::Duration::from_secs(2),
        )
    })?;
    let probe = probe?;
    let hops = super::tally(hops, pairs, vip, client, &backend_ips);
    Ok(super::ServiceHopReport {
        client,
        vip,
        port,
        answered_by: probe.answered_by,
        hops,
    })
}
