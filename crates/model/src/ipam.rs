//! The node's IP allocator over its pod CIDR.
//!
//! Allocation is round-robin from the last address handed out (like
//! host-local), and a released address "cools down" for a configurable time
//! before it can be handed out again, so late packets of an old connection
//! never reach a new pod. The whole state is one serialisable value that the
//! agent persists atomically after every change.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Who holds an address: CNI identifies an attachment by container id and
/// interface name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: IpAddr,
    pub attachment: Attachment,
    pub pod: PodRef,
    /// Network namespace path the runtime gave; when it is gone the container
    /// is gone and the agent may reclaim the address.
    pub netns: String,
    pub host_veth: String,
    pub allocated_at_ms: u64,
    /// Inode of the pod's network namespace at ADD (absent in state written
    /// by older agents, and for allocations recovered from the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_ino: Option<u64>,
    /// Rebuilt from the kernel (a host veth with strait's route to this
    /// address) after IPAM state was lost: the container id is unknown, so
    /// the attachment is matched by its host veth name until a CNI verb
    /// names it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// The pod's hostPorts (CNI `portMappings`), when the runtime passed
    /// them: their replies must go through the host's NAT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<HostPort>,
}

/// A container port published on the node (`hostPort`) by the portmap
/// plugin, as the runtime's `portMappings` capability names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPort {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
}

impl HostPort {
    /// The IP protocol number of `protocol`.
    pub fn proto_number(&self) -> Option<u8> {
        match self.protocol.to_ascii_lowercase().as_str() {
            "tcp" | "" => Some(6),
            "udp" => Some(17),
            "sctp" => Some(132),
            _ => None,
        }
    }
}

impl Allocation {
    /// Whether this allocation belongs to `att`: by identity, or for a
    /// recovered one by the host veth name the attachment would have.
    pub fn is_for(&self, att: &Attachment) -> bool {
        self.attachment == *att
            || (self.recovered
                && self.host_veth == crate::naming::host_veth_name(&att.container_id, &att.ifname))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("pod CIDR {cidr} is exhausted: {in_use} addresses in use and {cooling} cooling down after release; delete unused pods, wait for the cool-down, or give the node a larger podCIDR")]
    Exhausted {
        cidr: IpNet,
        in_use: usize,
        cooling: usize,
    },
    #[error("pod CIDR {cidr} has no usable host addresses")]
    TooSmall { cidr: IpNet },
    #[error("requested address {ip} is not a usable address of this node's pod CIDR {cidr}")]
    OutsidePool { ip: IpAddr, cidr: IpNet },
    #[error("requested address {ip} is in use by pod {holder} (container {container}); delete that pod first or request another address")]
    InUse {
        ip: IpAddr,
        holder: PodRef,
        container: String,
    },
    #[error("container {container} interface {ifname} already holds {held}, not the requested {ip}; DEL it first")]
    AlreadyHolds {
        container: String,
        ifname: String,
        held: IpAddr,
        ip: IpAddr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    pub cidr: IpNet,
    pub allocations: BTreeMap<IpAddr, Allocation>,
    /// Released addresses and when they were released (unix ms).
    pub cooling: BTreeMap<IpAddr, u64>,
    pub last: Option<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

/// The request to allocate, everything but the address.
#[derive(Clone, Debug)]
pub struct AllocationRequest {
    pub attachment: Attachment,
    pub pod: PodRef,
    pub netns: String,
    pub host_veth: String,
    pub netns_ino: Option<u64>,
    /// A specific address the runtime asked for.
    pub requested: Option<IpAddr>,
    pub host_ports: Vec<HostPort>,
}

impl IpamState {
    pub fn new(cidr: IpNet) -> Self {
        IpamState {
            cidr: cidr.trunc(),
            allocations: BTreeMap::new(),
            cooling: BTreeMap::new(),
            last: None,
        }
    }

    /// First and last assignable addresses (as integers). IPv4 skips the
    /// network and broadcast addresses; IPv6 skips the subnet-router anycast.
    fn usable_range(&self) -> Option<(u128, u128)> {
        let net = to_u128(self.cidr.network());
        let bcast = to_u128(self.cidr.broadcast());
        let (lo, hi) = match self.cidr {
            IpNet::V4(n) if n.prefix_len() >= 31 => (net, bcast),
            IpNet::V4(_) => (net + 1, bcast - 1),
            IpNet::V6(n) if n.prefix_len() == 128 => (net, bcast),
            IpNet::V6(_) => (net + 1, bcast),
        };
        (lo <= hi).then_some((lo, hi))
    }

    pub fn capacity(&self) -> u128 {
        self.usable_range().map(|(lo, hi)| hi - lo + 1).unwrap_or(0)
    }

    pub fn find(&self, att: &Attachment) -> Option<&Allocation> {
        self.allocations
            .values()
            .find(|a| &a.attachment == att)
            .or_else(|| self.allocations.values().find(|a| a.is_for(att)))
    }

    /// Record an address found live in the kernel (routed by strait to
    /// `host_veth`) that the state does not know. Returns the new record, or
    /// None when the address is already held (then the state wins).
    pub fn adopt(&mut self, ip: IpAddr, host_veth: &str, now_ms: u64) -> Option<Allocation> {
        if self.allocations.contains_key(&ip) {
            return None;
        }
        let a = Allocation {
            ip,
            attachment: Attachment {
                container_id: String::new(),
                ifname: String::new(),
            },
            pod: PodRef {
                namespace: String::new(),
                name: format!("(recovered from {host_veth})"),
                uid: String::new(),
            },
            netns: String::new(),
            host_veth: host_veth.to_string(),
            allocated_at_ms: now_ms,
            netns_ino: None,
            recovered: true,
            host_ports: vec![],
        };
        self.cooling.remove(&ip);
        self.allocations.insert(ip, a.clone());
        Some(a)
    }

    fn is_cooling(&self, ip: &IpAddr, now_ms: u64, cooldown_ms: u64) -> bool {
        self.cooling
            .get(ip)
            .is_some_and(|&t| now_ms.saturating_sub(t) < cooldown_ms)
    }

    /// Allocate an address for `req`. Idempotent: an attachment that already
    /// holds an address gets the same one back (a runtime retrying ADD).
    pub fn allocate(
        &mut self,
        req: AllocationRequest,
        now_ms: u64,
        cooldown_ms: u64,
    ) -> Result<Allocation, IpamError> {
        if let Some(a) = self.find(&req.attachment).cloned() {
            if a.recovered {
                // A runtime retrying ADD for a pod recovered from the
                // kernel: it names the attachment again, keep its address.
                let mut claimed = self.insert(a.ip, req, now_ms);
                claimed.allocated_at_ms = a.allocated_at_ms;
                self.allocations.insert(a.ip, claimed.clone());
                return Ok(claimed);
            }
            return match req.requested {
                Some(ip) if ip != a.ip => Err(IpamError::AlreadyHolds {
                    container: a.attachment.container_id.clone(),
                    ifname: a.attachment.ifname.clone(),
                    held: a.ip,
                    ip,
                }),
                _ => Ok(a.clone()),
            };
        }
        let (lo, hi) = self
            .usable_range()
            .ok_or(IpamError::TooSmall { cidr: self.cidr })?;
        if let Some(ip) = req.requested {
            // An explicit request may take an address in cool-down: the
            // runtime re-adding a container with its old address (podman
            // network reload) is the usual reason to ask for one.
            let v = to_u128(ip);
            if !self.cidr.contains(&ip)
                || ip.is_ipv4() != self.cidr.addr().is_ipv4()
                || v < lo
                || v > hi
            {
                return Err(IpamError::OutsidePool {
                    ip,
                    cidr: self.cidr,
                });
            }
            if let Some(h) = self.allocations.get(&ip) {
                return Err(IpamError::InUse {
                    ip,
                    holder: h.pod.clone(),
                    container: h.attachment.container_id.clone(),
                });
            }
            self.cooling.remove(&ip);
            return Ok(self.insert(ip, req, now_ms));
        }
        let span = hi - lo + 1;
        let start = match self.last {
            Some(l) if self.cidr.contains(&l) => {
                let o = to_u128(l);
                if o >= hi || o < lo {
                    0
                } else {
                    o - lo + 1
                }
            }
            _ => 0,
        };
        let like = self.cidr.network();
        // Bounded scan: at most one pass over the range. Pod CIDRs are small
        // (a /24 or so per node), so this is cheap; an IPv6 /64 is capped at
        // 2^20 probes, far beyond any node's pod count.
        let probes = span.min(1 << 20);
        for i in 0..probes {
            let ip = from_u128(like, lo + (start + i) % span);
            if self.allocations.contains_key(&ip) || self.is_cooling(&ip, now_ms, cooldown_ms) {
                continue;
            }
            self.cooling.remove(&ip);
            let alloc = self.insert(ip, req, now_ms);
            self.last = Some(ip);
            return Ok(alloc);
        }
        let cooling = self
            .cooling
            .keys()
            .filter(|ip| self.is_cooling(ip, now_ms, cooldown_ms))
            .count();
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            in_use: self.allocations.len(),
            cooling,
        })
    }

    fn insert(&mut self, ip: IpAddr, req: AllocationRequest, now_ms: u64) -> Allocation {
        let alloc = Allocation {
            ip,
            attachment: req.attachment,
            pod: req.pod,
            netns: req.netns,
            host_veth: req.host_veth,
            allocated_at_ms: now_ms,
            netns_ino: req.netns_ino,
            recovered: false,
            host_ports: req.host_ports,
        };
        self.allocations.insert(ip, alloc.clone());
        alloc
    }

    /// Release the attachment's address, if any. Releasing an unknown
    /// attachment is not an error (CNI DEL is idempotent).
    pub fn release(&mut self, att: &Attachment, now_ms: u64) -> Option<Allocation> {
        let ip = self.find(att)?.ip;
        self.release_ip(ip, now_ms)
    }

    /// Release the allocation of `ip` (the reconciler found its pod gone).
    pub fn release_ip(&mut self, ip: IpAddr, now_ms: u64) -> Option<Allocation> {
        let a = self.allocations.remove(&ip)?;
        self.cooling.insert(ip, now_ms);
        Some(a)
    }

    /// Release every allocation whose attachment is not in `valid`.
    pub fn retain_attachments(&mut self, valid: &[Attachment], now_ms: u64) -> Vec<Allocation> {
        let ips: Vec<IpAddr> = self
            .allocations
            .values()
            .filter(|a| !valid.iter().any(|v| a.is_for(v)))
            .map(|a| a.ip)
            .collect();
        ips.into_iter()
            .filter_map(|ip| self.release_ip(ip, now_ms))
            .collect()
    }

    /// Forget cool-down records that have expired, so the state stays small.
    pub fn expire_cooling(&mut self, now_ms: u64, cooldown_ms: u64) {
        self.cooling
            .retain(|_, t| now_ms.saturating_sub(*t) < cooldown_ms);
    }

    /// The pod CIDR changed (the Node object was edited). Allocations outside
    /// the new CIDR are kept so their pods stay known until deleted; new
    /// allocations come from the new CIDR.
    pub fn set_cidr(&mut self, cidr: IpNet) {
        self.cidr = cidr.trunc();
        self.cooling.retain(|ip, _| cidr.contains(ip));
        if self.last.is_some_and(|l| !cidr.contains(&l)) {
            self.last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str) -> AllocationRequest {
        AllocationRequest {
            attachment: Attachment {
                container_id: id.into(),
                ifname: "eth0".into(),
            },
            pod: PodRef {
                namespace: "default".into(),
                name: id.into(),
                uid: String::new(),
            },
            netns: format!("/run/netns/{id}"),
            host_veth: crate::naming::host_veth_name(id, "eth0"),
            netns_ino: None,
            requested: None,
            host_ports: vec![],
        }
    }

    fn att(id: &str) -> Attachment {
        req(id).attachment
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_distinct_addresses_skipping_network_and_broadcast() {
        let mut s = IpamState::new("10.0.0.0/30".parse().unwrap());
        assert_eq!(s.capacity(), 2);
        let a = s.allocate(req("a"), 0, 0).unwrap();
        let b = s.allocate(req("b"), 0, 0).unwrap();
        assert_eq!(a.ip, ip("10.0.0.1"));
        assert_eq!(b.ip, ip("10.0.0.2"));
        let err = s.allocate(req("c"), 0, 0).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { in_use: 2, .. }));
        assert!(err.to_string().contains("10.0.0.0/30"));
    }

    #[test]
    fn requested_address_is_honoured_or_refused_clearly() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        let want = |id: &str, a: &str| AllocationRequest {
            requested: Some(ip(a)),
            ..req(id)
        };
        assert_eq!(
            s.allocate(want("a", "10.0.0.77"), 0, 0).unwrap().ip,
            ip("10.0.0.77")
        );
        // Idempotent retry with the same request; a different one is refused.
        assert_eq!(
            s.allocate(want("a", "10.0.0.77"), 0, 0).unwrap().ip,
            ip("10.0.0.77")
        );
        assert!(matches!(
            s.allocate(want("a", "10.0.0.78"), 0, 0),
            Err(IpamError::AlreadyHolds { .. })
        ));
        let before = s.clone();
        let e = s.allocate(want("b", "10.0.0.77"), 0, 0).unwrap_err();
        assert!(e.to_string().contains("in use by pod default/a"), "{e}");
        for bad in ["10.0.1.5", "10.0.0.0", "10.0.0.255", "fd00::1"] {
            let e = s.allocate(want("b", bad), 0, 0).unwrap_err();
            assert!(matches!(e, IpamError::OutsidePool { .. }), "{bad}: {e}");
        }
        assert_eq!(s, before, "refused requests change nothing");
        // A released address may be requested back during its cool-down.
        s.release(&att("a"), 10);
        assert_eq!(
            s.allocate(want("a2", "10.0.0.77"), 20, 1000).unwrap().ip,
            ip("10.0.0.77")
        );
        assert!(s.cooling.is_empty());
    }

    #[test]
    fn recovered_allocations_are_matched_by_host_veth() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        let veth = crate::naming::host_veth_name("lost", "eth0");
        let a = s.adopt(ip("10.0.0.9"), &veth, 0).unwrap();
        assert!(a.recovered);
        assert!(s.adopt(ip("10.0.0.9"), "other", 0).is_none(), "state wins");
        // Never handed to anyone else.
        for i in 0..20 {
            assert_ne!(s.allocate(req(&format!("n{i}")), 0, 0).unwrap().ip, a.ip);
        }
        // GC keeps it while the runtime lists it, DEL by container id finds it.
        assert!(s
            .retain_attachments(&[att("lost")], 0)
            .iter()
            .all(|r| r.ip != a.ip));
        assert_eq!(s.find(&att("lost")).unwrap().ip, a.ip);
        // An ADD retry claims it under its real identity.
        let claimed = s.allocate(req("lost"), 5, 0).unwrap();
        assert_eq!(claimed.ip, a.ip);
        assert!(!claimed.recovered);
        assert_eq!(claimed.attachment, att("lost"));
        assert_eq!(s.release(&att("lost"), 6).unwrap().ip, a.ip);
    }

    #[test]
    fn allocate_is_idempotent_per_attachment() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        let a1 = s.allocate(req("a"), 0, 0).unwrap();
        let a2 = s.allocate(req("a"), 5, 0).unwrap();
        assert_eq!(a1, a2);
        assert_eq!(s.allocations.len(), 1);
    }

    #[test]
    fn released_address_cools_down_before_reuse() {
        let mut s = IpamState::new("10.0.0.0/30".parse().unwrap());
        let a = s.allocate(req("a"), 0, 1000).unwrap();
        s.allocate(req("b"), 0, 1000).unwrap();
        assert_eq!(s.release(&att("a"), 100).unwrap().ip, a.ip);
        // Only a.ip is free, and it is cooling.
        let err = s.allocate(req("c"), 500, 1000).unwrap_err();
        assert_eq!(
            err,
            IpamError::Exhausted {
                cidr: "10.0.0.0/30".parse().unwrap(),
                in_use: 1,
                cooling: 1
            }
        );
        // After the cool-down it is handed out again.
        let c = s.allocate(req("c"), 1100, 1000).unwrap();
        assert_eq!(c.ip, a.ip);
        assert!(s.cooling.is_empty());
    }

    #[test]
    fn round_robin_prefers_never_used_addresses() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        let a = s.allocate(req("a"), 0, 0).unwrap();
        s.release(&att("a"), 0);
        // Even with no cool-down the next pod gets the next address.
        let b = s.allocate(req("b"), 0, 0).unwrap();
        assert_ne!(a.ip, b.ip);
        assert_eq!(b.ip, ip("10.0.0.2"));
    }

    #[test]
    fn release_unknown_is_none_and_changes_nothing() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        s.allocate(req("a"), 0, 0).unwrap();
        let before = s.clone();
        assert!(s.release(&att("zzz"), 0).is_none());
        assert_eq!(s, before);
    }

    #[test]
    fn retain_attachments_releases_the_rest() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        for id in ["a", "b", "c"] {
            s.allocate(req(id), 0, 0).unwrap();
        }
        let released = s.retain_attachments(&[att("b")], 10);
        let mut names: Vec<_> = released
            .iter()
            .map(|a| a.attachment.container_id.as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(s.allocations.len(), 1);
        assert_eq!(s.cooling.len(), 2);
    }

    #[test]
    fn expire_cooling_forgets_old_records() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        s.allocate(req("a"), 0, 0).unwrap();
        s.release(&att("a"), 0);
        s.expire_cooling(10, 100);
        assert_eq!(s.cooling.len(), 1);
        s.expire_cooling(200, 100);
        assert!(s.cooling.is_empty());
    }

    #[test]
    fn ipv6_and_tiny_cidrs() {
        let mut s = IpamState::new("fd00:5::/126".parse().unwrap());
        assert_eq!(s.capacity(), 3);
        assert_eq!(s.allocate(req("a"), 0, 0).unwrap().ip, ip("fd00:5::1"));
        let mut t = IpamState::new("10.9.9.9/32".parse().unwrap());
        assert_eq!(t.allocate(req("a"), 0, 0).unwrap().ip, ip("10.9.9.9"));
    }

    #[test]
    fn wraps_around_after_the_last_address() {
        let mut s = IpamState::new("10.0.0.0/29".parse().unwrap());
        let mut ids = vec![];
        for i in 0..6 {
            ids.push(s.allocate(req(&format!("p{i}")), 0, 0).unwrap().ip);
        }
        assert_eq!(ids.last(), Some(&ip("10.0.0.6")));
        s.release(&att("p1"), 0);
        assert_eq!(s.allocate(req("x"), 0, 0).unwrap().ip, ip("10.0.0.2"));
    }

    #[test]
    fn cidr_change_keeps_existing_allocations() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        s.allocate(req("a"), 0, 0).unwrap();
        s.set_cidr("10.0.1.0/24".parse().unwrap());
        assert_eq!(s.allocations.len(), 1);
        assert_eq!(s.allocate(req("b"), 0, 0).unwrap().ip, ip("10.0.1.1"));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = IpamState::new("10.0.0.0/24".parse().unwrap());
        s.allocate(req("a"), 7, 0).unwrap();
        s.release(&att("a"), 9);
        s.allocate(req("b"), 11, 0).unwrap();
        let j = serde_json::to_string(&s).unwrap();
        let back: IpamState = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
    }
}
