//! ENI-Trunking on this node (seed 002). The node has a trunk ENI; a pod a
//! `PodNetworking` selects gets a member ENI of it (its own vSwitch and
//! security groups) and the member's address. The pod keeps its veth and
//! host route: same-node traffic never touches the trunk, so security
//! groups do not apply to it. Traffic to other nodes is routed out of the
//! trunk (Terway's rules, with the trunk's table), where tc egress pushes
//! the member's VLAN id, chosen by the pod's source address (the job
//! Terway's u32 filters do); tagged frames arriving on the trunk are
//! popped at tc ingress and delivered to the pod. The kernel datapath
//! attaches strait's VLAN programs to the trunk; the eBPF datapath's
//! from-netdev/to-netdev do the same with the same map.
//!
//! Each member is recorded in a [`PodEni`] (persisted in the agent's state
//! directory before the ADD answers). The records and the cloud's
//! description are reconciled on every pool pass: a member no record
//! names (an agent killed between the cloud call and the record) is
//! deleted; an Elastic member goes once its pod is gone; a Fixed one
//! waits its TTL for a pod of the same name.

use super::{cloud_refused, Enis, KernelReport, View};
use crate::ipam::{AllocError, NodeIpam};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use strait_model::api::{ApiError, ApiErrorKind};
use strait_model::cloud::provider::{CloudError, Eni, EniKind};
use strait_model::cloud::trunking::{self, AllocationKind, PodEni, PodNetworking};
use strait_model::ipam::{Allocation, AllocationRequest};
use strait_netlink::Netlink;

/// Where the records live, and how the trunk is tagged.
pub struct TrunkSetup {
    pub state_dir: std::path::PathBuf,
    pub bpf_dir: std::path::PathBuf,
    /// The eBPF datapath tags in its from-netdev/to-netdev; the kernel
    /// datapath needs strait's VLAN programs on the trunk.
    pub ebpf: bool,
}

#[derive(Default)]
pub(super) struct TrunkState {
    pub setup: Option<TrunkSetup>,
    pub records: BTreeMap<String, PodEni>,
    /// The kernel datapath's tagger, once loaded.
    pub tagger: Option<strait_bpf::vlan::Vlan>,
    /// The trunk's link as the last kernel pass found it.
    pub link: Option<(String, u32)>,
}

fn records_path(s: &TrunkSetup) -> std::path::PathBuf {
    s.state_dir.join("podenis.json")
}

/// The PodNetworking that selects `pod`, if any. Waits briefly for the pod
/// to reach the cluster source (its labels decide) when any exist.
pub fn networking_for(
    agent: &crate::daemon::Agent,
    pod: &strait_model::ipam::PodRef,
) -> Option<Arc<PodNetworking>> {
    if pod.name.is_empty() {
        return None;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let snap = agent.snapshot.borrow().clone();
        if snap.pod_networkings.is_empty() {
            return None;
        }
        let found = snap.pods.iter().find(|p| {
            p.metadata.name.as_deref() == Some(pod.name.as_str())
                && p.metadata.namespace.as_deref().unwrap_or("default") == pod.namespace
        });
        if let Some(p) = found {
            let ns_labels = snap
                .namespaces
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(pod.namespace.as_str()))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_else(|| {
                    // Kubernetes before 1.21 sets no name label.
                    [("kubernetes.io/metadata.name".into(), pod.namespace.clone())].into()
                });
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let (hit, problems) = trunking::select(&snap.pod_networkings, &labels, &ns_labels);
            for p in problems {
                tracing::warn!(problem = %p, "PodNetworking skipped");
            }
            return hit.and_then(|h| {
                snap.pod_networkings
                    .iter()
                    .find(|n| n.metadata.name == h.metadata.name)
                    .cloned()
            });
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(%pod, "pod not in the cluster source yet; no PodNetworking can select it, so it takes a shared ENI's address");
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Enis {
    /// Turn ENI-Trunking on: records are read back from the state
    /// directory (what an earlier run of the agent made).
    pub fn enable_trunk(&self, setup: TrunkSetup) -> anyhow::Result<()> {
        let path = records_path(&setup);
        let records: BTreeMap<String, PodEni> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        let mut t = self.trunk.lock().unwrap();
        t.records = records;
        t.setup = Some(setup);
        Ok(())
    }

    pub fn trunking(&self) -> bool {
        self.trunk.lock().unwrap().setup.is_some()
    }

    /// The records (`strait podeni`).
    pub fn podenis(&self) -> Vec<PodEni> {
        self.trunk
            .lock()
            .unwrap()
            .records
            .values()
            .cloned()
            .collect()
    }

    fn save(t: &TrunkState) -> std::io::Result<()> {
        let Some(s) = &t.setup else { return Ok(()) };
        let path = records_path(s);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&t.records)?)?;
        std::fs::rename(tmp, path)
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<String, PodEni>)) -> std::io::Result<()> {
        let mut t = self.trunk.lock().unwrap();
        f(&mut t.records);
        Self::save(&t)
    }

    /// The node's trunk ENI in the view.
    pub fn trunk_eni(v: &View) -> Option<&Eni> {
        v.enis
            .iter()
            .find(|e| e.kind == EniKind::Trunk && e.device_index.is_some())
    }

    /// Pool pass, part one (caller holds `calls`): the node has a trunk
    /// ENI; members no record names are deleted; records whose pod is
    /// gone are released, and released ones past their time go.
    pub(super) fn maintain_trunk(&self, ipam: &NodeIpam) -> Result<Vec<String>, CloudError> {
        let mut done = vec![];
        if !self.trunking() {
            return Ok(done);
        }
        let v = self.ensure_trunk(ipam, &mut done)?;
        let held: std::collections::BTreeSet<IpAddr> =
            ipam.allocations().iter().map(|a| a.ip).collect();
        let now = crate::now_ms();
        let mut drop_records = vec![];
        {
            let mut t = self.trunk.lock().unwrap();
            for r in t.records.values_mut() {
                if r.released_at_ms.is_none() && !held.contains(&r.ip) {
                    tracing::info!(pod = %r.pod, member = %r.member, "pod gone: its member ENI is released");
                    r.released_at_ms = Some(now);
                }
            }
            for (k, r) in &t.records {
                if !v.enis.iter().any(|e| e.id == r.member) {
                    tracing::warn!(pod = %r.pod, member = %r.member, "the cloud no longer has this member ENI; record dropped");
                    drop_records.push(k.clone());
                }
            }
            for k in &drop_records {
                t.records.remove(k);
            }
            Self::save(&t).map_err(|e| CloudError::Unavailable {
                message: format!("PodENI records: {e}"),
            })?;
        }
        let records = self.podenis();
        for e in v
            .enis
            .iter()
            .filter(|e| matches!(e.kind, EniKind::Member { .. }))
        {
            let rec = records.iter().find(|r| r.member == e.id);
            let why = match rec {
                None => "no PodENI names it",
                Some(r) if r.expired(now) => match r.allocation {
                    AllocationKind::Elastic => "its pod is gone",
                    AllocationKind::Fixed => "its TTL ran out",
                },
                Some(_) => continue,
            };
            self.provider.delete_eni(&e.id)?;
            tracing::info!(member = %e.id, ip = %e.primary_ip, why, "member ENI deleted");
            done.push(format!("deleted member ENI {} ({why})", e.id));
            if let Some(r) = rec {
                let pod = r.pod.clone();
                self.update(|m| {
                    m.remove(&pod);
                })
                .map_err(|e| CloudError::Unavailable {
                    message: format!("PodENI records: {e}"),
                })?;
            }
        }
        if !done.is_empty() {
            self.refresh(ipam)?;
        }
        Ok(done)
    }

    /// The cloud's view, with a trunk ENI on the node (created when there
    /// is none). Caller holds `calls`.
    fn ensure_trunk(&self, ipam: &NodeIpam, done: &mut Vec<String>) -> Result<View, CloudError> {
        let v = self.refresh(ipam)?;
        if Self::trunk_eni(&v).is_some() {
            return Ok(v);
        }
        let e = self.provider.create_eni(
            &self.node,
            &self.pool.vswitch,
            &self.pool.security_groups,
            true,
        )?;
        tracing::info!(eni = %e.id, mac = %e.mac, "trunk ENI created and attached");
        done.push(format!("created trunk ENI {}", e.id));
        self.refresh(ipam)
    }

    /// ADD for a pod `pn` selects: its member ENI (a Fixed pod's earlier
    /// one within the TTL, else a new one) and the member's address.
    pub fn allocate_member(
        &self,
        ipam: &NodeIpam,
        mut req: AllocationRequest,
        pn: &PodNetworking,
    ) -> Result<(Allocation, PodEni), ApiError> {
        let pn_name = pn.metadata.name.clone().unwrap_or_default();
        let key = req.pod.to_string();
        if let Some(a) = ipam.get(&req.attachment) {
            if let Some(r) = self.podenis().into_iter().find(|r| r.ip == a.ip) {
                return Ok((a, r));
            }
        }
        if !self.trunking() {
            return Err(ApiError {
                kind: ApiErrorKind::Invalid,
                message: format!(
                    "PodNetworking {pn_name} selects pod {key}, but node {} runs without ENI-Trunking (start the agent with --eni-trunk)",
                    self.node
                ),
            });
        }
        let _one = self.calls.lock().unwrap();
        let v = self
            .ensure_trunk(ipam, &mut vec![])
            .map_err(|e| cloud_refused(&e))?;
        let trunk = Self::trunk_eni(&v).cloned().expect("ensured");
        let now = crate::now_ms();
        let kept = self
            .trunk
            .lock()
            .unwrap()
            .records
            .get(&key)
            .filter(|r| r.released_at_ms.is_some() && !r.expired(now))
            .filter(|r| v.enis.iter().any(|e| e.id == r.member))
            .cloned();
        let rec = match kept {
            Some(mut r) => {
                tracing::info!(pod = %key, member = %r.member, ip = %r.ip, "Fixed: the pod gets its member ENI back");
                r.released_at_ms = None;
                r
            }
            None => {
                let member = self.create_member(&trunk, pn)?;
                let EniKind::Member { vlan, .. } = member.kind else {
                    unreachable!("create_member returns a member")
                };
                self.refresh(ipam).map_err(|e| cloud_refused(&e))?;
                PodEni {
                    pod: key.clone(),
                    networking: pn_name.clone(),
                    member: member.id.clone(),
                    mac: member.mac.clone(),
                    ip: member.primary_ip,
                    vlan,
                    trunk: trunk.id.clone(),
                    vswitch: member.vswitch.clone(),
                    security_groups: member.security_groups.clone(),
                    allocation: pn.spec.allocation_type.kind,
                    ttl_secs: pn.spec.ttl_secs().unwrap_or(300),
                    released_at_ms: None,
                }
            }
        };
        let r = rec.clone();
        self.update(move |m| {
            m.insert(r.pod.clone(), r);
        })
        .map_err(|e| ApiError {
            kind: ApiErrorKind::Internal,
            message: format!("PodENI record for {key} not written: {e}"),
        })?;
        req.requested = Some(rec.ip);
        req.pool = Some(rec.member.clone());
        match ipam.allocate(req) {
            Ok(a) => Ok((a, rec)),
            Err(e) => {
                // Released again: the pool pass deletes an Elastic member.
                let _ = self.release_member(rec.ip);
                Err(match e {
                    AllocError::Api(e) => e,
                    AllocError::NeedBlock(p) => ApiError {
                        kind: ApiErrorKind::Internal,
                        message: format!("member ENI {p}: {} is not in IPAM", rec.ip),
                    },
                })
            }
        }
    }

    /// A member on `trunk` in the first of the PodNetworking's vSwitches
    /// that has a free address.
    fn create_member(&self, trunk: &Eni, pn: &PodNetworking) -> Result<Eni, ApiError> {
        let mut last = None;
        for vsw in &pn.spec.vswitch_options {
            match self
                .provider
                .create_member(&trunk.id, vsw, &pn.spec.security_group_ids)
            {
                Ok(m) => {
                    tracing::info!(member = %m.id, ip = %m.primary_ip, trunk = %trunk.id, kind = ?m.kind, "member ENI created");
                    return Ok(m);
                }
                Err(e @ CloudError::IpNotEnough { .. }) => last = Some(e),
                Err(e) => return Err(cloud_refused(&e)),
            }
        }
        Err(cloud_refused(&last.unwrap_or(CloudError::Invalid {
            message: "the PodNetworking names no vSwitch".into(),
        })))
    }

    /// DEL: the pod's record is released (an Elastic member goes on the
    /// next pool pass, a Fixed one after its TTL). Whether `ip` was a
    /// member's.
    pub fn release_member(&self, ip: IpAddr) -> std::io::Result<bool> {
        let now = crate::now_ms();
        let mut hit = false;
        self.update(|m| {
            for r in m.values_mut().filter(|r| r.ip == ip) {
                r.released_at_ms.get_or_insert(now);
                hit = true;
            }
        })?;
        Ok(hit)
    }

    /// Kernel pass: the trunk's link wired like a pod ENI, its VLAN
    /// programs (kernel datapath) and the members' VLANs by address.
    /// Returns the trunk's (name, ifindex).
    pub(super) async fn sync_trunk(
        &self,
        nl: &Netlink,
        links: &[strait_netlink::Link],
        v: &View,
        rep: &mut KernelReport,
    ) -> anyhow::Result<Option<(String, u32)>> {
        let Some(trunk) = Self::trunk_eni(v) else {
            return Ok(None);
        };
        let Some((name, idx)) = self.wire_eni(nl, links, v, trunk, rep).await? else {
            return Ok(None);
        };
        let vlans: BTreeMap<ipnet::IpNet, u16> = self
            .podenis()
            .iter()
            .filter(|r| r.released_at_ms.is_none())
            .map(|r| (ipnet::IpNet::from(r.ip), r.vlan))
            .collect();
        let mut t = self.trunk.lock().unwrap();
        let setup = t.setup.as_ref().expect("trunk ENIs only with trunking");
        let bpf_dir = setup.bpf_dir.clone();
        let ebpf = setup.ebpf;
        if !ebpf && (t.tagger.is_none() || t.link.as_ref().map(|l| l.1) != Some(idx)) {
            let mut tagger = match t.tagger.take() {
                Some(x) => x,
                None => strait_bpf::vlan::Vlan::load(&bpf_dir, strait_bpf::vlan::Role::Node)?,
            };
            tagger.attach(&name)?;
            tracing::info!(trunk = %name, "VLAN programs attached to the trunk ENI");
            t.tagger = Some(tagger);
            rep.changed += 1;
        }
        t.link = Some((name.clone(), idx));
        drop(t);
        rep.changed += strait_bpf::vlan::set_subnets(&bpf_dir, &vlans)?;
        Ok(Some((name, idx)))
    }

    /// ADD: the member pod's rules (to it by main, from it out of the
    /// trunk) and its VLAN before the runtime hears of the address.
    pub async fn wire_member_pod(&self, nl: &Netlink, rec: &PodEni) -> anyhow::Result<()> {
        let v = self.view();
        let links = nl.links().await?;
        let mut rep = KernelReport::default();
        let Some((_, idx)) = self.sync_trunk(nl, &links, &v, &mut rep).await? else {
            anyhow::bail!(
                "the trunk ENI is not wired: {}",
                if rep.problems.is_empty() {
                    "the cloud describes none".to_string()
                } else {
                    rep.problems.join("; ")
                }
            );
        };
        super::set_pod_rules(nl, rec.ip, idx).await
    }
}

/// The kernel's view for `strait mapping`: member pods' rules go to the
/// trunk's table.
pub fn member_ifindex(v: &View, links: &Option<(String, u32)>, ip: IpAddr) -> Option<u32> {
    v.enis
        .iter()
        .any(|e| matches!(e.kind, EniKind::Member { .. }) && e.primary_ip == ip)
        .then_some(())
        .and(links.as_ref().map(|l| l.1))
}
