//! NetworkPolicy on the eBPF datapath: every local pod's isolation in
//! strait_policy_ep and what it admits as LPM entries in strait_policy
//! ([`strait_model::policy::bpf`]), made to match by difference: entries
//! of pods and rules that did not change are not touched. The programs
//! judge only new connections (bpf/lib/policy.h).

use super::{PodRules, PolicyBackend};
use aya::maps::lpm_trie::Key;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use strait_bpf::maps::{self, AddrKey, PolicyEp, PolicyEpMap, PolicyKey, PolicyMap, PolicyVal};
use strait_model::policy::bpf::{dir_code, entries, policy_id};
use strait_model::policy::Direction;

pub struct EbpfPolicy {
    pub pin_dir: PathBuf,
    /// What the maps hold, once read or written by this agent (None at
    /// start and after a failed apply: the next pass reads the maps).
    programmed: Option<Programmed>,
    /// This node's pods' addresses at the last pass: when one goes, the
    /// flows it took part in leave strait_policy_ct (a new pod given the
    /// address must not inherit them).
    local: std::collections::BTreeSet<std::net::IpAddr>,
}

type Programmed = (
    HashMap<AddrKey, PolicyEp>,
    BTreeMap<(u32, PolicyKey), PolicyVal>,
);

impl EbpfPolicy {
    pub fn new(pin_dir: PathBuf) -> Self {
        EbpfPolicy {
            pin_dir,
            programmed: None,
            local: Default::default(),
        }
    }

    fn read(&self, lpm: &PolicyMap, eps: &PolicyEpMap) -> anyhow::Result<Programmed> {
        let mut have_lpm = BTreeMap::new();
        for k in lpm.keys() {
            let k = k?;
            have_lpm.insert((k.prefix_len(), k.data()), lpm.get(&k, 0)?);
        }
        let mut have_ep = HashMap::new();
        for k in eps.keys() {
            let k = k?;
            have_ep.insert(k, eps.get(&k, 0)?);
        }
        Ok((have_ep, have_lpm))
    }
}

fn key_addr(ip: std::net::IpAddr) -> [u8; 16] {
    AddrKey::from(ip).addr
}

/// The maps' wanted content, and per-pod problems (a pod whose rules the
/// eBPF datapath cannot hold stays isolated with what it can).
type Wanted = (
    HashMap<AddrKey, PolicyEp>,
    BTreeMap<(u32, PolicyKey), PolicyVal>,
    Vec<String>,
);

pub fn wanted(pods: &[PodRules]) -> Wanted {
    let (mut eps, mut lpm, mut problems) = (HashMap::new(), BTreeMap::new(), vec![]);
    for p in pods {
        let mut ep = PolicyEp::default();
        for (dir, set, flag) in [
            (Direction::Ingress, &p.ingress, maps::POLICY_F_INGRESS),
            (Direction::Egress, &p.egress, maps::POLICY_F_EGRESS),
        ] {
            let Some(first) = set.isolated_by.first() else {
                continue;
            };
            ep.flags |= flag;
            match dir {
                Direction::Ingress => ep.ingress_by = policy_id(first),
                Direction::Egress => ep.egress_by = policy_id(first),
            }
            let es = match entries(set) {
                Ok(es) => es,
                Err(e) => {
                    problems.push(format!("pod {}: {e}", p.pod));
                    continue;
                }
            };
            // One id per policy, not one hash per entry.
            let ids: HashMap<&strait_model::policy::PolicyId, u32> = es
                .iter()
                .map(|e| (&e.policy, policy_id(&e.policy)))
                .collect();
            for ip in &p.ips {
                for e in &es {
                    // An IPv4 pod only ever meets IPv4 peers: its entries
                    // for IPv6 peers are pointless, and the other way round.
                    if e.peer.addr().is_ipv4() != ip.is_ipv4() {
                        continue;
                    }
                    let k = PolicyKey {
                        ep: key_addr(*ip),
                        dir: dir_code(dir),
                        proto: e.proto,
                        dport: e.port.to_be(),
                        peer: key_addr(e.peer.network()),
                    };
                    let bits = match e.peer {
                        ipnet::IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
                        ipnet::IpNet::V6(n) => u32::from(n.prefix_len()),
                    };
                    lpm.insert(
                        (maps::POLICY_FIXED_BITS + bits, k),
                        PolicyVal {
                            policy: ids[&e.policy],
                            rule: e.rule as u16,
                            _pad: 0,
                        },
                    );
                }
            }
        }
        if ep.flags != 0 {
            for ip in &p.ips {
                eps.insert(AddrKey::from(*ip), ep);
            }
        }
    }
    (eps, lpm, problems)
}

impl PolicyBackend for EbpfPolicy {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn apply(&mut self, pods: &[PodRules]) -> anyhow::Result<usize> {
        let (want_ep, want_lpm, problems) = wanted(pods);
        let mut lpm: PolicyMap = maps::open(&self.pin_dir, "strait_policy")?;
        let mut eps: PolicyEpMap = maps::open(&self.pin_dir, "strait_policy_ep")?;
        let (have_ep, have_lpm) = match self.programmed.take() {
            Some(p) => p,
            None => self.read(&lpm, &eps)?,
        };
        let mut changed = 0;
        // Admit first, isolate after; on the way out, release first. On an
        // error `programmed` stays None: the next pass reads the maps.
        for ((bits, k), v) in &want_lpm {
            if have_lpm.get(&(*bits, *k)) != Some(v) {
                lpm.insert(&Key::new(*bits, *k), v, 0)?;
                changed += 1;
            }
        }
        for (k, v) in &want_ep {
            if have_ep.get(k) != Some(v) {
                eps.insert(k, v, 0)?;
                changed += 1;
            }
        }
        for k in have_ep.keys() {
            if !want_ep.contains_key(k) {
                eps.remove(k)?;
                changed += 1;
            }
        }
        for (bits, k) in have_lpm.keys() {
            if !want_lpm.contains_key(&(*bits, *k)) {
                lpm.remove(&Key::new(*bits, *k))?;
                changed += 1;
            }
        }
        self.programmed = Some((want_ep, want_lpm));
        let local: std::collections::BTreeSet<std::net::IpAddr> =
            pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        let gone: Vec<u32> = self
            .local
            .difference(&local)
            .filter_map(|ip| match ip {
                std::net::IpAddr::V4(v) => Some(maps::ip_key(*v)),
                _ => None,
            })
            .collect();
        if !gone.is_empty() {
            changed += maps::forget_policy_flows(&self.pin_dir, &gone)?;
        }
        self.local = local;
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(changed)
    }
}
