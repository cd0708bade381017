//! macvlan mode's VLAN ports (Bifrost, seed 001 "MACVLAN模式"). The seed's
//! node has a VLAN sub-interface per VLAN (`eth0-5`, `eth0-10`) and each
//! pod's eth0 is a macvlan of it. This kernel has no 8021q, so a port is a
//! veth pair: the near end `<uplink>-<vid>` is the macvlan parent, the far
//! end `trunk<vid>` is joined to the uplink in eBPF (bpf/lib/vlan.h):
//! what the pods send out of the parent arrives on the far end, gets the
//! tag and leaves by the uplink; a frame of the VLAN arriving on the uplink
//! is untagged into the far end, and the parent's macvlan hands it to the
//! pod whose MAC it is. Pods of one VLAN on one node talk inside macvlan
//! (bridge mode) and never reach the port.
//!
//! A port exists while a pod of its VLAN does: CNI ADD asks the agent,
//! which makes the port before it answers ([`Ports::ensure`]); the
//! macvlan-ports reconciler removes ports whose VLAN has no pod left (after
//! DEL, GC, or a crash) and re-programs the ones it finds. Which VLAN a pod
//! is on is read from its address (the underlay subnet holding it), so
//! pods recovered from the kernel count too.

use crate::daemon::Agent;
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use strait_bpf::vlan::{Role, Vlan, VlanPort};
use strait_model::api::{ApiError, ApiErrorKind, MacvlanWiring};
use strait_model::ipam::{Allocation, AllocationRequest, PodRef};
use strait_model::ippool::{pool_for_pod, Pool, POOL_ANNOTATION};
use strait_model::naming::svc_veth_name;
use strait_model::naming::{trunk_vid, vlan_port_names};
use strait_model::underlay::Underlay;
use strait_netlink::{write_sysctl, Netlink};

pub struct Ports {
    uplink: String,
    bpf_dir: PathBuf,
    /// The VLAN programs, once loaded; the lock also orders ADD's
    /// "make the port, then allocate" against the sweep.
    inner: tokio::sync::Mutex<Option<Vlan>>,
}

/// The VLANs with a pod on this node, by the underlay subnet that holds
/// each address.
pub fn vlans_in_use(
    addrs: impl IntoIterator<Item = IpAddr>,
    underlay: &[Underlay],
) -> BTreeSet<u16> {
    addrs
        .into_iter()
        .filter_map(|ip| underlay.iter().find(|u| u.cidr.contains(&ip)))
        .map(|u| u.vlan)
        .collect()
}

fn random_mac() -> [u8; 6] {
    use std::io::Read;
    let mut m = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut m);
    }
    m[0] = (m[0] & 0xfc) | 0x02; // locally administered unicast
    m
}

impl Ports {
    pub fn new(uplink: String, bpf_dir: PathBuf) -> Self {
        Ports {
            uplink,
            bpf_dir,
            inner: tokio::sync::Mutex::new(None),
        }
    }

    fn loaded<'a>(&self, inner: &'a mut Option<Vlan>) -> anyhow::Result<&'a mut Vlan> {
        if inner.is_none() {
            *inner = Some(Vlan::load(&self.bpf_dir, Role::Node)?);
        }
        Ok(inner.as_mut().unwrap())
    }

    /// Kernel datapath: vlan_ingress on the uplink (the eBPF datapath's
    /// from-netdev does the same itself).
    pub async fn attach_uplink(&self) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        self.loaded(&mut inner)?.attach_ingress(&self.uplink)?;
        Ok(())
    }

    /// Run `f` (the allocation) with the port of `vid` in place; the port
    /// cannot be swept meanwhile. Returns the parent's name and f's result.
    pub fn with_port<T>(&self, vid: u16, f: impl FnOnce() -> T) -> anyhow::Result<(String, T)> {
        let mut inner = self.inner.blocking_lock();
        let rt = tokio::runtime::Handle::current();
        let parent = rt.block_on(async {
            let nl = Netlink::connect()?;
            self.ensure(&nl, &mut inner, vid).await
        })?;
        Ok((parent, f()))
    }

    /// The port of `vid`: made if missing, programmed either way.
    async fn ensure(
        &self,
        nl: &Netlink,
        inner: &mut Option<Vlan>,
        vid: u16,
    ) -> anyhow::Result<String> {
        let (parent, trunk) = vlan_port_names(&self.uplink, vid);
        let uplink = nl
            .link(&self.uplink)
            .await?
            .with_context(|| format!("uplink {} not found (--uplink)", self.uplink))?;
        let (p, t) = (nl.link(&parent).await?, nl.link(&trunk).await?);
        // The usual ADD: the port is whole (its map entry is written last,
        // after the program is on the far end), nothing to redo.
        if let (Some(p), Some(t)) = (&p, &t) {
            let done = strait_bpf::vlan::ports(&self.bpf_dir)?
                .iter()
                .any(|e| e.vid == vid && e.ifindex == t.index && e.uplink == uplink.index);
            if done && p.up && t.up {
                return Ok(parent);
            }
        }
        if p.as_ref().and_then(|l| l.kind.as_deref()) != Some("veth") || t.is_none() {
            // A half-made port (a crash midway) goes first.
            for n in [&trunk, &parent] {
                nl.delete_link(n).await?;
            }
            let me = strait_netlink::NetnsFile::open("/proc/thread-self/ns/net".as_ref())?;
            nl.create_veth(
                &trunk,
                random_mac(),
                &parent,
                random_mac(),
                me.raw_fd(),
                uplink.mtu,
            )
            .await
            .with_context(|| format!("create VLAN {vid}'s port {parent} <-> {trunk}"))?;
            tracing::info!(vlan = vid, %parent, %trunk, "VLAN port created");
        }
        // Neither end has an address or speaks IPv6: only the pods' frames
        // cross the port.
        for n in [&parent, &trunk] {
            write_sysctl(&["net", "ipv6", "conf", n, "disable_ipv6"], "1")?;
        }
        self.loaded(inner)?.attach_port(&trunk)?;
        let far = nl.link(&trunk).await?.context("port far end vanished")?;
        let near = nl.link(&parent).await?.context("port parent vanished")?;
        let mut ports = strait_bpf::vlan::ports(&self.bpf_dir)?;
        ports.retain(|p| p.vid != vid);
        ports.push(VlanPort {
            ifindex: far.index,
            uplink: uplink.index,
            vid,
            ..Default::default()
        });
        strait_bpf::vlan::set_ports(&self.bpf_dir, &ports)?;
        for l in [&far, &near] {
            if !l.up {
                nl.set_up(l.index).await?;
            }
        }
        Ok(parent)
    }

    /// The sweep from a blocking thread (CNI DEL's release), against the
    /// agent's allocations now.
    pub fn sweep_blocking(&self, agent: &Agent) -> anyhow::Result<()> {
        let snap = agent.snapshot.borrow().clone();
        let (underlay, _) = strait_model::underlay::underlay_subnets(&snap);
        tokio::runtime::Handle::current().block_on(async {
            let nl = Netlink::connect()?;
            self.sync(&nl, || {
                vlans_in_use(agent.ipam.allocations().iter().map(|a| a.ip), &underlay)
            })
            .await
            .map(|_| ())
        })
    }

    /// The sweep: ports whose VLAN no pod uses go (their parent takes any
    /// macvlan left on it along), the others are made and programmed.
    /// `in_use` is read under the lock, after any ADD in flight allocated.
    pub async fn sync(
        &self,
        nl: &Netlink,
        in_use: impl FnOnce() -> BTreeSet<u16>,
    ) -> anyhow::Result<(usize, Vec<String>)> {
        let mut inner = self.inner.lock().await;
        let want = in_use();
        let mut changed = 0;
        let mut problems = vec![];
        let present: BTreeMap<u16, String> = nl
            .links()
            .await?
            .into_iter()
            .filter_map(|l| trunk_vid(&l.name).map(|v| (v, l.name)))
            .collect();
        for (vid, trunk) in present.iter().filter(|(v, _)| !want.contains(v)) {
            nl.delete_link(trunk).await?;
            changed += 1;
            tracing::info!(vlan = vid, "VLAN port removed: no pod of the VLAN is left");
        }
        let mut ports = strait_bpf::vlan::ports(&self.bpf_dir)?;
        let before = ports.len();
        ports.retain(|p| want.contains(&p.vid));
        if ports.len() != before {
            strait_bpf::vlan::set_ports(&self.bpf_dir, &ports)?;
        }
        for vid in &want {
            // Programs and map entries survive an agent restart; a missing
            // port (deleted by hand) is made again for the pods to come,
            // though those already wired lost their eth0 with it.
            if present.contains_key(vid) && ports.iter().any(|p| p.vid == *vid) {
                continue;
            }
            if !present.contains_key(vid) {
                problems.push(format!(
                    "VLAN {vid}'s port was missing (made again); its pods' macvlan interfaces went with it and need re-creating"
                ));
            }
            match self.ensure(nl, &mut inner, *vid).await {
                Ok(_) => changed += 1,
                Err(e) => problems.push(format!("VLAN {vid}'s port: {e:#}")),
            }
        }
        Ok((changed, problems))
    }
}

fn invalid(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Invalid,
        message,
    }
}

/// The underlay subnet a macvlan pod's address comes from: the IPPool its
/// annotation names, which must be one with a vlanID and gateway; without
/// an annotation, the only underlay pool there is.
pub fn subnet_for(
    agent: &Agent,
    pod: &PodRef,
    requested: Option<Pool>,
) -> Result<(Pool, Underlay), ApiError> {
    let snap = agent.snapshot.borrow().clone();
    let (underlay, _) = strait_model::underlay::underlay_subnets(&snap);
    let names = || {
        underlay
            .iter()
            .map(|u| u.pool.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pool = match requested {
        Some(p) => p,
        None => match underlay.as_slice() {
            [only] => pool_for_pod(&pod.to_string(), &only.pool, &snap, &agent.cfg.node_name)
                .map_err(|e| invalid(e.to_string()))?,
            [] => {
                return Err(invalid(
                    "macvlan mode: no IPPool has a vlanID and gateway, so there is no VLAN subnet to give pod addresses from; create one".into(),
                ))
            }
            _ => {
                return Err(invalid(format!(
                    "macvlan mode: pod {pod} names no VLAN subnet; annotate it {POOL_ANNOTATION}: <one of {}>",
                    names()
                )))
            }
        },
    };
    let Some(u) = underlay.iter().find(|u| u.pool == pool.name) else {
        return Err(invalid(format!(
            "macvlan mode: IPPool {} has no vlanID and gateway, so its pods would have no VLAN; pod {pod} must name one of: {}",
            pool.name,
            names()
        )));
    };
    Ok((pool, u.clone()))
}

/// ADD in macvlan mode: the port of the pod's VLAN in place, then the
/// address (from the VLAN's subnet). The host end of the pod's veth is its
/// service veth.
pub fn allocate(
    agent: &Agent,
    ports: &Ports,
    mut req: AllocationRequest,
    pool: Option<Pool>,
) -> Result<(Allocation, MacvlanWiring), ApiError> {
    let (pool, u) = subnet_for(agent, &req.pod, pool)?;
    req.host_veth = svc_veth_name(&req.attachment.container_id, &req.attachment.ifname);
    req.pool = Some(pool.name.clone());
    let (parent, allocation) = ports
        .with_port(u.vlan, || crate::pools::allocate(agent, req, Some(&pool)))
        .map_err(|e| ApiError {
            kind: ApiErrorKind::Internal,
            message: format!("VLAN {}'s port: {e:#}", u.vlan),
        })?;
    let allocation = allocation?;
    let snap = agent.snapshot.borrow().clone();
    let node_ip = snap
        .node(&agent.cfg.node_name)
        .and_then(|n| strait_model::cluster::node_internal_ip(n, u.cidr.addr().is_ipv4()));
    // The service CIDR, the node, and the hairpin address: a pod reaching
    // itself through a service sees the connection come from
    // HAIRPIN_IP4, and its answer must go back by the service veth (by
    // the default route it would leave for the VLAN's gateway and die).
    let hairpin = u
        .cidr
        .addr()
        .is_ipv4()
        .then_some(ipnet::IpNet::from(std::net::IpAddr::from(
            strait_model::services::HAIRPIN_IP4,
        )));
    let via_host = agent
        .cfg
        .service_cidr
        .into_iter()
        .chain(node_ip.map(ipnet::IpNet::from))
        .chain(hairpin)
        .collect();
    Ok((
        allocation,
        MacvlanWiring {
            vlan: u.vlan,
            parent,
            gateway: u.gateway,
            prefix_len: u.cidr.prefix_len(),
            via_host,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_vlan_is_the_underlay_subnet_holding_its_address() {
        let u = |cidr: &str, vlan| Underlay {
            pool: format!("v{vlan}"),
            cidr: cidr.parse().unwrap(),
            vlan,
            gateway: cidr
                .parse::<ipnet::IpNet>()
                .unwrap()
                .hosts()
                .next()
                .unwrap(),
        };
        let subnets = [u("198.18.5.0/24", 5), u("198.18.10.0/24", 10)];
        let ips = ["198.18.10.7", "198.19.0.4", "198.18.10.9"]
            .iter()
            .map(|s| s.parse().unwrap());
        assert_eq!(vlans_in_use(ips, &subnets), BTreeSet::from([10]));
    }
}
