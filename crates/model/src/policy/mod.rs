//! Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics, with no I/O:
//! which policies isolate a pod in each direction, what their rules allow
//! once selectors, ipBlocks and named ports are resolved against the
//! cluster, and the decision for one connection with the policy and rule
//! that made it. The datapaths load what [`View::compile`] gives (one rule
//! set per local pod and direction): [`nft`] renders it for the kernel
//! datapath, [`bpf`] as the eBPF datapath's LPM entries. `strait policy
//! explain` and the tests ask [`verdict`]. Address-family generic: peers
//! are `IpNet`s.
//!
//! The rules, exactly as upstream defines them:
//! - a pod is isolated for ingress (egress) when some policy in its
//!   namespace selects it and lists Ingress (Egress) in policyTypes; when
//!   policyTypes is absent, Ingress is implied, and Egress when the policy
//!   has egress rules;
//! - an isolated pod accepts what any rule of any policy isolating it
//!   allows (a union); a policy with no rules for that direction allows
//!   nothing (default deny);
//! - a rule allows a connection when a peer matches (no `from`/`to`: every
//!   peer) and a port matches (no `ports`: every port);
//! - a peer is a podSelector (pods in the policy's namespace), a
//!   namespaceSelector (every pod in the selected namespaces), both (pods
//!   selected by both, an AND), or an ipBlock (a CIDR minus its excepts);
//! - a named port is the port of that name on the pod the connection goes
//!   to: the protected pod for ingress, the peer for egress;
//! - replies of an allowed connection are allowed (stateful: the
//!   datapath's conntrack, not this module).

pub mod bpf;
pub mod nft;
pub mod selector;

pub use selector::{selects, SelectorError};

use crate::cluster::ClusterSnapshot;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

/// A policy, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Addresses a rule admits: a network less its exceptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNet {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl PeerNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// The ports a rule admits: a protocol and an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub proto: Proto,
    pub first: u16,
    pub last: u16,
}

/// One compiled rule: from (ingress) or to (egress) these peers, on these
/// ports. `None` means any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub policy: PolicyId,
    /// Index of the rule in the policy's ingress or egress list.
    pub index: usize,
    /// Names the peer set: the same for every pod the rule protects, so a
    /// backend can keep one set per name and share it
    /// (`ns/policy/Ingress/0`, plus `/<pod>` for an egress named port's
    /// destination).
    pub peer_set: String,
    pub peers: Option<Vec<PeerNet>>,
    pub ports: Option<Vec<PortRange>>,
}

impl Rule {
    fn admits(&self, peer: IpAddr, proto: Proto, port: u16) -> bool {
        let peer_ok = self
            .peers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.contains(peer)));
        let port_ok = self.ports.as_ref().is_none_or(|ps| {
            ps.iter()
                .any(|r| r.proto == proto && (r.first..=r.last).contains(&port))
        });
        peer_ok && port_ok
    }
}

/// One pod's rules for one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// The policies that isolate the pod (empty: not isolated, all allowed).
    pub isolated_by: Vec<PolicyId>,
    pub rules: Vec<Rule>,
}

/// What policy says of one connection in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// A pod reaching its own address: the packet never leaves the pod, so
    /// no policy applies (upstream's AllowLoopback).
    Loopback,
    Allowed {
        policy: PolicyId,
        rule: usize,
    },
    /// Isolated and no rule admits it: these policies isolate the pod.
    Denied {
        isolated_by: Vec<PolicyId>,
    },
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

/// In words, as `strait policy explain` and `strait lab explain` say it.
impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::NotIsolated => f.write_str("no policy isolates it: allowed"),
            Decision::Loopback => f.write_str("a pod reaching itself never leaves it: allowed"),
            Decision::Allowed { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Decision::Denied { isolated_by } => {
                let by: Vec<String> = isolated_by.iter().map(|i| i.to_string()).collect();
                write!(
                    f,
                    "denied: isolated by {} and no rule admits it",
                    by.join(", ")
                )
            }
        }
    }
}

impl RuleSet {
    pub fn decide(&self, peer: IpAddr, proto: Proto, port: u16) -> Decision {
        if self.isolated_by.is_empty() {
            return Decision::NotIsolated;
        }
        match self.rules.iter().find(|r| r.admits(peer, proto, port)) {
            Some(r) => Decision::Allowed {
                policy: r.policy.clone(),
                rule: r.index,
            },
            None => Decision::Denied {
                isolated_by: self.isolated_by.clone(),
            },
        }
    }
}

/// A rule's peers and ports, as the API has them (either direction).
type RuleParts<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// One pod's compiled policy, both directions (what a node enforces, and
/// what `strait policy list` shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRules {
    /// namespace/name.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    pub ingress: RuleSet,
    pub egress: RuleSet,
}

/// A problem with a policy that makes part of it match nothing (as the API
/// server would have refused it, or a named port nobody has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub policy: PolicyId,
    pub message: String,
}

/// The cluster as policy sees it: pods with addresses, namespaces, policies.
pub struct View<'a> {
    pods: Vec<&'a Pod>,
    /// The same pods by namespace.
    by_ns: BTreeMap<&'a str, Vec<&'a Pod>>,
    /// Namespaces' labels, with `kubernetes.io/metadata.name` set as
    /// Kubernetes 1.21+ sets it (1.20 does not, and selectors use it).
    namespaces: BTreeMap<&'a str, BTreeMap<String, String>>,
    policies: Vec<&'a NetworkPolicy>,
    /// Each rule's peers, resolved once per view (they do not depend on
    /// the pod the rule protects): keyed by the rule's peer-set name.
    peers: std::cell::RefCell<std::collections::HashMap<String, PeersResult>>,
}

type PeersResult = Result<Option<Vec<PeerNet>>, String>;

fn meta_ns(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    m.namespace.as_deref().unwrap_or("default")
}

/// A pod's addresses (status.podIPs, or status.podIP).
pub fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    let st = p.status.as_ref();
    let mut out: Vec<IpAddr> = st
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    if out.is_empty() {
        out.extend(st.and_then(|s| s.pod_ip.as_ref()?.parse::<IpAddr>().ok()));
    }
    out
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl<'a> View<'a> {
    pub fn new(snap: &'a ClusterSnapshot) -> View<'a> {
        View::from_parts(
            snap.pods.iter().map(|p| &**p),
            snap.namespaces.iter().map(|n| &**n),
            snap.network_policies.iter().map(|p| &**p),
        )
    }

    pub fn from_parts(
        pods: impl IntoIterator<Item = &'a Pod>,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> View<'a> {
        let pods: Vec<&'a Pod> = pods.into_iter().collect();
        let mut by_ns: BTreeMap<&'a str, Vec<&'a Pod>> = BTreeMap::new();
        for p in &pods {
            by_ns.entry(meta_ns(&p.metadata)).or_default().push(*p);
        }
        View {
            pods,
            by_ns,
            namespaces: namespaces
                .into_iter()
                .filter_map(|n| {
                    let name = n.metadata.name.as_deref()?;
                    let mut l = n.metadata.labels.clone().unwrap_or_default();
                    l.insert("kubernetes.io/metadata.name".into(), name.into());
                    Some((name, l))
                })
                .collect(),
            policies: policies.into_iter().collect(),
            peers: Default::default(),
        }
    }

    /// A namespace's labels (one that has no object yet still has its
    /// name label).
    fn ns_labels(&self, ns: &str) -> std::borrow::Cow<'_, BTreeMap<String, String>> {
        match self.namespaces.get(ns) {
            Some(l) => std::borrow::Cow::Borrowed(l),
            None => std::borrow::Cow::Owned(
                [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
            ),
        }
    }

    fn pod_labels(p: &Pod) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        p.metadata.labels.as_ref().unwrap_or(&NONE)
    }

    /// The pod with this address, if any.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&'a Pod> {
        self.pods.iter().copied().find(|p| pod_ips(p).contains(&ip))
    }

    /// Pods a peer selects, seen from a policy in `ns`.
    fn peer_pods(&self, peer: &NetworkPolicyPeer, ns: &str) -> Result<Vec<&'a Pod>, SelectorError> {
        // The namespaces first (each asked once), then only their pods.
        let namespaces: Vec<&str> = match &peer.namespace_selector {
            None => vec![ns],
            Some(sel) => {
                let mut v = vec![];
                for n in self.by_ns.keys() {
                    if selects(sel, &self.ns_labels(n))? {
                        v.push(*n);
                    }
                }
                v
            }
        };
        let mut out = vec![];
        for n in namespaces {
            for p in self.by_ns.get(n).into_iter().flatten() {
                let pod_ok = match &peer.pod_selector {
                    Some(sel) => selects(sel, Self::pod_labels(p))?,
                    None => true,
                };
                if pod_ok {
                    out.push(*p);
                }
            }
        }
        Ok(out)
    }

    /// The policies isolating `pod` for `dir`.
    fn isolating(&self, pod: &Pod, dir: Direction) -> Vec<&'a NetworkPolicy> {
        let ns = meta_ns(&pod.metadata);
        let labels = Self::pod_labels(pod);
        self.policies
            .iter()
            .copied()
            .filter(|np| meta_ns(&np.metadata) == ns)
            .filter(|np| {
                let Some(spec) = np.spec.as_ref() else {
                    return false;
                };
                let types_ok = match &spec.policy_types {
                    Some(t) => t.iter().any(|t| {
                        t == match dir {
                            Direction::Ingress => "Ingress",
                            Direction::Egress => "Egress",
                        }
                    }),
                    None => match dir {
                        Direction::Ingress => true,
                        Direction::Egress => spec.egress.is_some(),
                    },
                };
                types_ok
                    && selects(&spec.pod_selector.clone().unwrap_or_default(), labels)
                        .unwrap_or(false)
            })
            .collect()
    }

    /// `pod`'s rules for `dir`, and the problems met on the way.
    pub fn compile(&self, pod: &Pod, dir: Direction) -> (RuleSet, Vec<Problem>) {
        let mut set = RuleSet::default();
        let mut problems = vec![];
        for np in self.isolating(pod, dir) {
            let id = PolicyId {
                namespace: meta_ns(&np.metadata).to_string(),
                name: np.metadata.name.clone().unwrap_or_default(),
            };
            set.isolated_by.push(id.clone());
            let spec = np.spec.as_ref().expect("isolating policies have a spec");
            let rules: Vec<RuleParts> = match dir {
                Direction::Ingress => spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
                Direction::Egress => spec
                    .egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
            };
            for (index, (peers, ports)) in rules.into_iter().enumerate() {
                let mut note = |m: String| {
                    problems.push(Problem {
                        policy: id.clone(),
                        message: format!("{dir:?} rule {index}: {m}"),
                    })
                };
                match self.rule(pod, dir, &id, index, peers, ports) {
                    Ok(rs) => set.rules.extend(rs),
                    Err(m) => note(m),
                }
            }
        }
        (set, problems)
    }

    /// A rule's peers: pods by selector (their addresses) or ipBlocks;
    /// None for "every peer". Resolved once per view.
    fn peers(&self, key: &str, ns: &str, peers: Option<&Vec<NetworkPolicyPeer>>) -> PeersResult {
        if let Some(hit) = self.peers.borrow().get(key) {
            return hit.clone();
        }
        let resolved = (|| {
            let Some(ps) = peers.filter(|ps| !ps.is_empty()) else {
                return Ok(None);
            };
            let mut n = vec![];
            for p in ps {
                if let Some(b) = &p.ip_block {
                    let net: IpNet = b
                        .cidr
                        .parse()
                        .map_err(|e| format!("ipBlock cidr {:?}: {e}", b.cidr))?;
                    let except = b
                        .except
                        .iter()
                        .flatten()
                        .map(|e| e.parse().map_err(|x| format!("ipBlock except {e:?}: {x}")))
                        .collect::<Result<Vec<IpNet>, String>>()?;
                    n.push(PeerNet { net, except });
                } else {
                    let sel = self.peer_pods(p, ns).map_err(|e| e.to_string())?;
                    for q in sel {
                        n.extend(pod_ips(q).into_iter().map(|ip| PeerNet {
                            net: host_net(ip),
                            except: vec![],
                        }));
                    }
                }
            }
            Ok(Some(n))
        })();
        self.peers
            .borrow_mut()
            .insert(key.to_string(), resolved.clone());
        resolved
    }

    /// One policy rule, compiled. Named ports make a rule per pod they
    /// resolve on: the protected pod for ingress, each peer pod for egress.
    fn rule(
        &self,
        pod: &Pod,
        dir: Direction,
        id: &PolicyId,
        index: usize,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
    ) -> Result<Vec<Rule>, String> {
        let ns = id.namespace.as_str();
        let set_name = format!("{id}/{dir:?}/{index}");
        let nets = self.peers(&set_name, ns, peers)?;
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return Ok(vec![Rule {
                policy: id.clone(),
                index,
                peer_set: set_name,
                peers: nets,
                ports: None,
            }]);
        };
        // Numeric ports (and ranges) apply to every peer.
        let mut numeric = vec![];
        let mut named: Vec<(Proto, &str)> = vec![];
        for p in ports {
            let proto = Proto::parse(p.protocol.as_deref())
                .ok_or_else(|| format!("protocol {:?} is not TCP, UDP or SCTP", p.protocol))?;
            match &p.port {
                None => numeric.push(PortRange {
                    proto,
                    first: 1,
                    last: 65535,
                }),
                Some(IntOrString::Int(n)) => {
                    let first = u16::try_from(*n).map_err(|_| format!("port {n} out of range"))?;
                    let last = match p.end_port {
                        Some(e) => u16::try_from(e)
                            .ok()
                            .filter(|e| *e >= first)
                            .ok_or_else(|| format!("endPort {e} is below port {first}"))?,
                        None => first,
                    };
                    numeric.push(PortRange { proto, first, last });
                }
                Some(IntOrString::String(name)) => named.push((proto, name.as_str())),
            }
        }
        let mut out = vec![];
        if !numeric.is_empty() {
            out.push(Rule {
                policy: id.clone(),
                index,
                peer_set: set_name.clone(),
                peers: nets.clone(),
                ports: Some(numeric),
            });
        }
        if named.is_empty() {
            return Ok(out);
        }
        match dir {
            // The protected pod's own port names.
            Direction::Ingress => {
                let resolved: Vec<PortRange> = named
                    .iter()
                    .filter_map(|(proto, name)| named_port(pod, *proto, name))
                    .map(port_range)
                    .collect();
                if !resolved.is_empty() {
                    out.push(Rule {
                        policy: id.clone(),
                        index,
                        peer_set: set_name,
                        peers: nets,
                        ports: Some(resolved),
                    });
                }
            }
            // Each destination pod's names: every pod the peers cover (all
            // pods when the rule names no peers).
            Direction::Egress => {
                let candidates: Vec<&Pod> = match &nets {
                    None => self.pods.clone(),
                    Some(ns) => self
                        .pods
                        .iter()
                        .copied()
                        .filter(|q| {
                            pod_ips(q)
                                .iter()
                                .any(|ip| ns.iter().any(|n| n.contains(*ip)))
                        })
                        .collect(),
                };
                for q in candidates {
                    let resolved: Vec<PortRange> = named
                        .iter()
                        .filter_map(|(proto, name)| named_port(q, *proto, name))
                        .map(port_range)
                        .collect();
                    let ips = pod_ips(q);
                    if resolved.is_empty() || ips.is_empty() {
                        continue;
                    }
                    out.push(Rule {
                        policy: id.clone(),
                        index,
                        peer_set: format!(
                            "{set_name}/{}/{}",
                            meta_ns(&q.metadata),
                            q.metadata.name.as_deref().unwrap_or_default()
                        ),
                        peers: Some(
                            ips.into_iter()
                                .map(|ip| PeerNet {
                                    net: host_net(ip),
                                    except: vec![],
                                })
                                .collect(),
                        ),
                        ports: Some(resolved),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn port_range(p: (Proto, u16)) -> PortRange {
    PortRange {
        proto: p.0,
        first: p.1,
        last: p.1,
    }
}

/// The container port named `name` with protocol `proto` on `pod`.
fn named_port(pod: &Pod, proto: Proto, name: &str) -> Option<(Proto, u16)> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && Proto::parse(p.protocol.as_deref()) == Some(proto)
        })
        .and_then(|p| Some((proto, u16::try_from(p.container_port).ok()?)))
}

/// Both directions of one connection: the client pod's egress (if the
/// client is a pod) and the server pod's ingress (if the server is a pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub egress: Decision,
    pub ingress: Decision,
}

impl Verdict {
    pub fn allows(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// What policy says of a new connection from `src` to `dst:port/proto`.
pub fn verdict(view: &View, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> Verdict {
    if src == dst {
        return Verdict {
            egress: Decision::Loopback,
            ingress: Decision::Loopback,
        };
    }
    let egress = match view.pod_at(src) {
        Some(p) => view
            .compile(p, Direction::Egress)
            .0
            .decide(dst, proto, port),
        None => Decision::NotIsolated,
    };
    let ingress = match view.pod_at(dst) {
        Some(p) => view
            .compile(p, Direction::Ingress)
            .0
            .decide(src, proto, port),
        None => Decision::NotIsolated,
    };
    Verdict { egress, ingress }
}

#[cfg(test)]
mod tests;
