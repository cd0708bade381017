//! ENI multi-IP on this node (Terway's ENIIP, the base of DataPath V2):
//! pods take secondary addresses of the node's ENIs, which the agent gets
//! from the cloud through an [`EniProvider`] and keeps in a warm pool.
//!
//! - **Addresses.** The cloud's description of the node's ENIs is the
//!   truth: every secondary address of a pod ENI is a one-address pool in
//!   IPAM named after its ENI ([`strait_model::ipam::IpamState::external`]).
//!   ADD picks the lowest idle address of the lowest ENI that has one
//!   ([`eniip::pick`]); with none idle it asks the cloud there and then
//!   (more addresses, or a new ENI) and says exactly what the cloud
//!   refused when it cannot.
//! - **The pool.** [`Enis::maintain`] (the eni-pool reconciler) keeps
//!   between min and max idle addresses ([`eniip::plan`]); addresses of
//!   deleted pods come back into it, and what is above max goes back to the
//!   cloud, so nothing leaks when pods churn or the agent dies midway
//!   (the next description shows whatever the cloud holds).
//! - **The kernel.** Each pod ENI's link (found by its MAC, as a cloud NIC
//!   appears) is brought up with its primary address and proxy ARP, and
//!   its table (1000 + ifindex) holds the default route via its vSwitch's
//!   gateway. Terway's rules send traffic to a pod by main (priority 512)
//!   and traffic from a pod out of its own ENI (priority 2048).
//!
//! One cloud conversation at a time (`calls`): ADD's pick and the pool's
//! trimming cannot hand out and give back the same address.

mod trunk;
pub use trunk::{networking_for, TrunkSetup};

use crate::ipam::{AllocError, NodeIpam};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use strait_model::api::{ApiError, ApiErrorKind};
use strait_model::cloud::eniip::{self, PoolAction, PoolConfig};
use strait_model::cloud::provider::{CloudError, Eni, EniKind, EniProvider};
use strait_model::cloud::Quota;
use strait_model::ipam::{Allocation, AllocationRequest};
use strait_model::naming::ROUTE_PROTOCOL;
use strait_netlink::{Netlink, Route, RouteKind, Rule};

/// What the node last heard from the cloud.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub enis: Vec<Eni>,
    pub quota: Option<Quota>,
    /// vSwitch id → CIDR (its gateway is the first host).
    pub vswitches: BTreeMap<String, IpNet>,
    /// When it was described (unix ms); 0: never.
    pub at_ms: u64,
}

impl View {
    /// The node's pod ENIs (secondary, attached).
    pub fn pod_enis(&self) -> impl Iterator<Item = &Eni> {
        self.enis
            .iter()
            .filter(|e| e.kind == EniKind::Secondary && e.device_index.is_some())
    }
}

pub struct Enis {
    node: String,
    provider: Box<dyn EniProvider>,
    pub pool: PoolConfig,
    view: Mutex<View>,
    calls: Mutex<()>,
    /// Pod ENI links as the last kernel pass found them: (name, ifindex).
    links: Mutex<Vec<(String, u32)>>,
    /// Held while rules are made to match the pods: an ADD's allocation
    /// and its rules happen under it, so a pass never reads the pods
    /// without the new one and then removes its rules.
    pub kernel: tokio::sync::Mutex<()>,
    /// ENI-Trunking's records and tagger ([`trunk`]).
    trunk: Mutex<trunk::TrunkState>,
}

fn cloud_refused(e: &CloudError) -> ApiError {
    ApiError {
        kind: match e {
            CloudError::Unavailable { .. } => ApiErrorKind::Internal,
            _ => ApiErrorKind::Exhausted,
        },
        message: format!("the cloud refused: {e}"),
    }
}

/// Rounds of calls one ADD or pass may make (create an ENI, then fill it).
const ROUNDS: usize = 4;

impl Enis {
    pub fn new(node: String, provider: Box<dyn EniProvider>, pool: PoolConfig) -> Self {
        Enis {
            node,
            provider,
            pool,
            view: Mutex::new(View::default()),
            calls: Mutex::new(()),
            links: Mutex::new(vec![]),
            kernel: tokio::sync::Mutex::new(()),
            trunk: Mutex::new(Default::default()),
        }
    }

    pub fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// The node's ENIs as the cloud describes them now.
    pub fn describe(&self) -> Result<Vec<Eni>, CloudError> {
        self.provider.describe(&self.node)
    }

    /// `strait mapping`: pods (as the cluster records them; a pod without
    /// a recorded address counts with the one the agent gave it) ↔ the
    /// agent's allocations ↔ the cloud's ENIs now.
    pub fn mapping(
        &self,
        ipam: &NodeIpam,
        snap: &strait_model::cluster::ClusterSnapshot,
    ) -> Result<eniip::EniMapping, CloudError> {
        let cloud = self.describe()?;
        let allocs = ipam.allocations();
        let agent: Vec<(IpAddr, String)> = allocs
            .iter()
            .map(|a| (a.ip, a.pool.clone().unwrap_or_else(|| "-".into())))
            .collect();
        let mut pods = vec![];
        for p in snap
            .pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node))
        {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            let name = p.metadata.name.as_deref().unwrap_or_default();
            let recorded = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let held = allocs
                .iter()
                .find(|a| a.pod.namespace == ns && a.pod.name == name)
                .map(|a| a.ip);
            if let Some(ip) = recorded.or(held) {
                pods.push((format!("{ns}/{name}"), ip));
            }
        }
        let (rows, mut problems) = eniip::mapping(&pods, &agent, &cloud);
        let podenis = self.podenis();
        for r in podenis.iter().filter(|r| r.released_at_ms.is_none()) {
            if !cloud.iter().any(|e| e.id == r.member) {
                problems.push(format!(
                    "PodENI of {} names member ENI {}, which the cloud does not have",
                    r.pod, r.member
                ));
            }
        }
        Ok(eniip::EniMapping {
            node: self.node.clone(),
            rows,
            problems,
            podenis,
        })
    }

    pub fn links(&self) -> Vec<(String, u32)> {
        self.links.lock().unwrap().clone()
    }

    /// Describe the node's ENIs again and hand their addresses to IPAM.
    fn refresh(&self, ipam: &NodeIpam) -> Result<View, CloudError> {
        let enis = self.provider.describe(&self.node)?;
        let mut v = self.view();
        if v.quota.is_none() {
            v.quota = Some(self.provider.limits(&self.node)?);
        }
        for e in &enis {
            if !e.vswitch.is_empty() && !v.vswitches.contains_key(&e.vswitch) {
                let s = self.provider.vswitch(&e.vswitch)?;
                v.vswitches.insert(s.id, s.cidr);
            }
        }
        v.enis = enis;
        v.at_ms = crate::now_ms();
        // A member ENI's address is its pod's (ENI-Trunking).
        let members = v.enis.iter().filter_map(|e| match e.kind {
            EniKind::Member { .. } => Some((e.primary_ip, e.id.clone())),
            _ => None,
        });
        ipam.set_external(
            v.pod_enis()
                .flat_map(|e| e.secondary_ips.iter().map(|ip| (*ip, e.id.clone())))
                .chain(members)
                .collect(),
        );
        *self.view.lock().unwrap() = v.clone();
        Ok(v)
    }

    /// Addresses a pod holds or that rest after release.
    fn in_use(ipam: &NodeIpam) -> BTreeSet<IpAddr> {
        ipam.allocations()
            .iter()
            .map(|a| a.ip)
            .chain(ipam.cooling_ips())
            .collect()
    }

    fn apply(&self, actions: &[PoolAction]) -> Result<Vec<String>, CloudError> {
        let mut done = vec![];
        for a in actions {
            match a {
                PoolAction::CreateEni => {
                    let e = self.provider.create_eni(
                        &self.node,
                        &self.pool.vswitch,
                        &self.pool.security_groups,
                        false,
                    )?;
                    tracing::info!(eni = %e.id, mac = %e.mac, vswitch = %e.vswitch, "ENI created and attached");
                    done.push(format!("created ENI {}", e.id));
                }
                PoolAction::Assign { eni, count } => {
                    let ips = self.provider.assign_ips(eni, *count)?;
                    tracing::info!(%eni, ?ips, "secondary addresses assigned");
                    done.push(format!("assigned {} addresses on {eni}", ips.len()));
                }
                PoolAction::Unassign { eni, ips } => {
                    self.provider.unassign_ips(eni, ips)?;
                    tracing::info!(%eni, ?ips, "idle addresses given back");
                    done.push(format!("gave back {} addresses of {eni}", ips.len()));
                }
                PoolAction::DeleteEni { eni } => {
                    self.provider.delete_eni(eni)?;
                    tracing::info!(%eni, "empty ENI deleted");
                    done.push(format!("deleted ENI {eni}"));
                }
            }
        }
        Ok(done)
    }

    /// Calls toward `cfg` until the pool needs none (bounded). Caller
    /// holds `calls`.
    fn converge(&self, ipam: &NodeIpam, cfg: &PoolConfig) -> Result<Vec<String>, CloudError> {
        let mut done = vec![];
        for _ in 0..ROUNDS {
            let v = self.refresh(ipam)?;
            let quota = v.quota.unwrap_or_default();
            let actions = eniip::plan(cfg, &quota, &v.enis, &Self::in_use(ipam));
            if actions.is_empty() {
                break;
            }
            done.extend(self.apply(&actions)?);
        }
        Ok(done)
    }

    /// The warm pool's pass: between min and max idle addresses.
    pub fn maintain(&self, ipam: &NodeIpam) -> Result<Vec<String>, CloudError> {
        let _one = self.calls.lock().unwrap();
        let mut done = self.maintain_trunk(ipam)?;
        done.extend(self.converge(ipam, &self.pool)?);
        self.refresh(ipam)?;
        Ok(done)
    }

    /// ADD: an address for the pod on one of the node's ENIs; the ENI's id
    /// comes back with it.
    pub fn allocate(
        &self,
        ipam: &NodeIpam,
        mut req: AllocationRequest,
    ) -> Result<(Allocation, String), ApiError> {
        if let Some(a) = ipam.get(&req.attachment) {
            // A runtime retrying ADD: the same address.
            let eni = a.pool.clone().unwrap_or_default();
            return Ok((a, eni));
        }
        let _one = self.calls.lock().unwrap();
        if self.view().at_ms == 0 {
            self.refresh(ipam).map_err(|e| cloud_refused(&e))?;
        }
        let mut cfg = self.pool.clone();
        cfg.min_idle = cfg.min_idle.max(1);
        cfg.max_idle = cfg.max_idle.max(cfg.min_idle);
        for _ in 0..ROUNDS {
            let v = self.view();
            let picked = match req.requested {
                Some(ip) => match eniip::eni_of(&v.enis, ip) {
                    Some(e) => Some((e.id.clone(), ip)),
                    None => {
                        return Err(ApiError {
                            kind: ApiErrorKind::Invalid,
                            message: format!(
                                "{ip} was asked for, but no ENI of node {} holds it; ENI mode hands out the ENIs' secondary addresses",
                                self.node
                            ),
                        })
                    }
                },
                None => eniip::pick(&v.enis, &Self::in_use(ipam)),
            };
            if let Some((eni, ip)) = picked {
                req.requested = Some(ip);
                req.pool = Some(eni.clone());
                return match ipam.allocate(req) {
                    Ok(a) => Ok((a, eni)),
                    Err(AllocError::Api(e)) => Err(e),
                    Err(AllocError::NeedBlock(p)) => Err(ApiError {
                        kind: ApiErrorKind::Internal,
                        message: format!("ENI {p}: {ip} is not among its addresses in IPAM"),
                    }),
                };
            }
            // The warm pool is empty: ask the cloud now.
            let quota = v.quota.unwrap_or_default();
            let actions = eniip::plan(&cfg, &quota, &v.enis, &Self::in_use(ipam));
            if actions.is_empty() {
                let enis = v.pod_enis().count();
                return Err(ApiError {
                    kind: ApiErrorKind::Exhausted,
                    message: format!(
                        "node {} has no pod address left: {enis} pod ENIs (the node may have {} ENIs, eth0 included) with {} addresses each (the primary included), all in use; delete pods, or raise the instance type's ENI quota",
                        self.node,
                        quota.enis,
                        quota.ips_per_eni
                    ),
                });
            }
            self.apply(&actions).map_err(|e| cloud_refused(&e))?;
            self.refresh(ipam).map_err(|e| cloud_refused(&e))?;
        }
        Err(ApiError {
            kind: ApiErrorKind::Exhausted,
            message: format!(
                "node {}: the cloud gave no usable address after {ROUNDS} rounds of calls; see the agent's log",
                self.node
            ),
        })
    }
}

/// The MAC as the cloud writes it ("02:ab:…").
fn mac_bytes(mac: &str) -> Option<Vec<u8>> {
    mac.split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// The default route of an ENI's table: via its vSwitch's gateway, out of
/// the ENI (on-link: the ENI's own address is a /32).
pub fn eni_default_route(ifindex: u32, gateway: IpAddr) -> Route {
    Route {
        dst: if gateway.is_ipv4() {
            "0.0.0.0/0".parse().unwrap()
        } else {
            "::/0".parse().unwrap()
        },
        via: Some(gateway),
        oif: Some(ifindex),
        kind: RouteKind::Unicast,
        protocol: ROUTE_PROTOCOL,
        table: eniip::eni_table(ifindex),
        onlink: true,
        multipath: vec![],
    }
}

/// Terway's two rules for a pod on the ENI whose link is `ifindex`.
pub fn pod_rules(ip: IpAddr, ifindex: u32) -> Vec<Rule> {
    eniip::rules(&[(ip, ifindex)])
        .into_iter()
        .map(|r| Rule {
            priority: r.priority,
            src: r.from,
            dst: r.to,
            iif: None,
            table: r.table,
            protocol: ROUTE_PROTOCOL,
        })
        .collect()
}

/// One of strait's Terway rules for `ip` (to it at 512, from it at 2048).
fn is_pod_rule(r: &Rule, ip: IpAddr) -> bool {
    let host = Some(IpNet::from(ip));
    r.protocol == ROUTE_PROTOCOL
        && ((r.priority == eniip::TO_POD_PRIORITY && r.dst == host)
            || (r.priority == eniip::FROM_POD_PRIORITY && r.src == host))
}

fn write_conf(link: &str, key: &str, value: &str) -> std::io::Result<bool> {
    let p = std::path::Path::new("/proc/sys/net/ipv4/conf")
        .join(link)
        .join(key);
    if std::fs::read_to_string(&p)?.trim() == value {
        return Ok(false);
    }
    std::fs::write(&p, value)?;
    Ok(true)
}

/// What one kernel pass did.
#[derive(Default)]
pub struct KernelReport {
    pub changed: usize,
    pub problems: Vec<String>,
}

impl Enis {
    /// Bring one pod ENI's link into shape: up, its primary address, proxy
    /// ARP (the VPC asks the node for its pods' addresses), its table.
    /// Returns the link's (name, ifindex), or why not.
    async fn wire_eni(
        &self,
        nl: &Netlink,
        links: &[strait_netlink::Link],
        v: &View,
        e: &Eni,
        rep: &mut KernelReport,
    ) -> anyhow::Result<Option<(String, u32)>> {
        let Some(mac) = mac_bytes(&e.mac) else {
            rep.problems
                .push(format!("ENI {}: MAC {:?} is not one", e.id, e.mac));
            return Ok(None);
        };
        let Some(l) = links.iter().find(|l| l.mac == mac) else {
            rep.problems.push(format!(
                "ENI {} ({}) is attached in the cloud, but no link here has its MAC yet",
                e.id, e.mac
            ));
            return Ok(None);
        };
        let Some(cidr) = v.vswitches.get(&e.vswitch) else {
            rep.problems.push(format!(
                "ENI {}: vSwitch {} is unknown to the cloud",
                e.id, e.vswitch
            ));
            return Ok(None);
        };
        if !l.up {
            nl.set_up(l.index).await?;
            rep.changed += 1;
        }
        let have = nl.addresses(l.index).await?;
        let own = IpNet::from(e.primary_ip);
        if !have.contains(&own) {
            nl.add_address(l.index, e.primary_ip, own.prefix_len())
                .await?;
            rep.changed += 1;
        }
        if write_conf(&l.name, "proxy_arp", "1")? {
            rep.changed += 1;
        }
        let gw = strait_model::cloud::gateway(*cidr);
        let table = eniip::eni_table(l.index);
        let problems = crate::crossnode::sync_table(
            nl,
            table,
            gw.is_ipv4(),
            &[eni_default_route(l.index, gw)],
        )
        .await?;
        rep.problems.extend(problems);
        Ok(Some((l.name.clone(), l.index)))
    }

    /// Make the kernel match the cloud's view and the node's pods: every
    /// pod ENI wired, and exactly Terway's rules for the pods on them.
    pub async fn sync_kernel(
        &self,
        nl: &Netlink,
        allocs: impl FnOnce() -> Vec<Allocation>,
    ) -> anyhow::Result<KernelReport> {
        let _one = self.kernel.lock().await;
        let allocs = allocs();
        let mut rep = KernelReport::default();
        let v = self.view();
        let links = nl.links().await?;
        let mut by_eni: BTreeMap<String, u32> = BTreeMap::new();
        let mut wired = vec![];
        for e in v.pod_enis() {
            if let Some((name, idx)) = self.wire_eni(nl, &links, &v, e, &mut rep).await? {
                by_eni.insert(e.id.clone(), idx);
                wired.push((name, idx));
            }
        }
        let trunk = if self.trunking() {
            self.sync_trunk(nl, &links, &v, &mut rep).await?
        } else {
            None
        };
        if let Some(t) = &trunk {
            wired.push(t.clone());
        }
        *self.links.lock().unwrap() = wired;
        let mut want: Vec<Rule> = vec![];
        for a in &allocs {
            if let Some(idx) = trunk::member_ifindex(&v, &trunk, a.ip) {
                want.extend(pod_rules(a.ip, idx));
                continue;
            }
            match eniip::eni_of(&v.enis, a.ip).and_then(|e| by_eni.get(&e.id)) {
                Some(idx) => want.extend(pod_rules(a.ip, *idx)),
                None => rep.problems.push(format!(
                    "pod {} has {}, which no wired ENI of this node holds (see strait mapping)",
                    a.pod, a.ip
                )),
            }
        }
        for v4 in [true, false] {
            let fam: Vec<Rule> = want
                .iter()
                .filter(|r| r.src.or(r.dst).is_some_and(|n| n.addr().is_ipv4() == v4))
                .cloned()
                .collect();
            crate::crossnode::sync_rules(nl, v4, &fam).await?;
        }
        Ok(rep)
    }

    /// ADD: the pod's ENI wired and its two rules in place before the
    /// runtime hears of the address.
    pub async fn wire_pod(&self, nl: &Netlink, ip: IpAddr, eni: &str) -> anyhow::Result<()> {
        let v = self.view();
        let e = v
            .pod_enis()
            .find(|e| e.id == eni)
            .ok_or_else(|| anyhow::anyhow!("ENI {eni} is not among the node's"))?;
        let links = nl.links().await?;
        let mut rep = KernelReport::default();
        let Some((_, idx)) = self.wire_eni(nl, &links, &v, e, &mut rep).await? else {
            anyhow::bail!("{}", rep.problems.join("; "));
        };
        set_pod_rules(nl, ip, idx).await
    }
}

/// Terway's two rules for `ip` out of the link `idx`, and no other rule of
/// strait's for it.
async fn set_pod_rules(nl: &Netlink, ip: IpAddr, idx: u32) -> anyhow::Result<()> {
    let want = pod_rules(ip, idx);
    let have = nl.rules(ip.is_ipv4()).await?;
    // A rule left for the address by an earlier holder on another ENI
    // would send this pod out of the wrong one.
    for r in have
        .iter()
        .filter(|r| is_pod_rule(r, ip) && !want.contains(r))
    {
        nl.delete_rule(r).await?;
    }
    for r in want.iter().filter(|r| !have.contains(r)) {
        match nl.add_rule(r).await {
            // The eni-pool reconciler got there first.
            Err(e) if e.is_exists() => {}
            other => other?,
        }
    }
    Ok(())
}

impl Enis {
    /// DEL: the pod's rules go with its address.
    pub async fn unwire_pod(nl: &Netlink, ip: IpAddr) -> anyhow::Result<()> {
        for r in nl.rules(ip.is_ipv4()).await? {
            if is_pod_rule(&r, ip) {
                nl.delete_rule(&r).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_tables_follow_the_ifindex() {
        assert_eq!(
            mac_bytes("02:16:3e:00:00:0a"),
            Some(vec![2, 0x16, 0x3e, 0, 0, 10])
        );
        assert_eq!(mac_bytes("zz:00"), None);
        let r = eni_default_route(7, "198.18.32.1".parse().unwrap());
        assert_eq!((r.table, r.onlink, r.oif), (1007, true, Some(7)));
        let rules = pod_rules("198.18.32.3".parse().unwrap(), 7);
        assert_eq!(
            rules
                .iter()
                .map(|r| (r.priority, r.table))
                .collect::<Vec<_>>(),
            [(512, 254), (2048, 1007)]
        );
    }
}
