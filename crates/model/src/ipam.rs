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
    /// The IPPool the address is from; None: the node's pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
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
    #[error("this node's blocks of IPPool {pool} have no free address")]
    PoolNeedsBlock { pool: String },
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
    /// Blocks of IPPools this node holds (block -> pool), beside the pod
    /// CIDR.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocks: BTreeMap<IpNet, String>,
    /// Per pool, addresses never handed out (an underlay subnet's network,
    /// broadcast and gateway): set from the pool before each allocation,
    /// so not stored.
    #[serde(skip)]
    pub reserved: BTreeMap<String, std::collections::BTreeSet<IpAddr>>,
    /// Addresses the cloud assigned to this node, each under the name of
    /// the pool it counts as (its ENI's id): a pool of single addresses.
    /// Set from the cloud's description before allocating, so not stored.
    #[serde(skip)]
    pub external: BTreeMap<IpAddr, String>,
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
    /// The IPPool the pod asked for; None: the node's pod CIDR.
    pub pool: Option<String>,
}

impl IpamState {
    pub fn new(cidr: IpNet) -> Self {
        IpamState {
            cidr: cidr.trunc(),
            allocations: BTreeMap::new(),
            cooling: BTreeMap::new(),
            last: None,
            blocks: BTreeMap::new(),
            reserved: BTreeMap::new(),
            external: BTreeMap::new(),
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
            pool: self.pool_of(ip),
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

    /// The ranges `pool` allocates from, with their assignable addresses:
    /// the pod CIDR (without network and broadcast addresses), or the
    /// node's blocks of an IPPool (every address: blocks are routed, never
    /// a link's subnet, as Calico's).
    fn ranges(&self, pool: Option<&str>) -> Vec<(IpNet, u128, u128)> {
        match pool {
            None => self
                .usable_range()
                .map(|(lo, hi)| (self.cidr, lo, hi))
                .into_iter()
                .collect(),
            Some(p) => self
                .blocks
                .iter()
                .filter(|(_, bp)| bp.as_str() == p)
                .map(|(b, _)| *b)
                .chain(
                    self.external
                        .iter()
                        .filter(|(_, bp)| bp.as_str() == p)
                        .map(|(ip, _)| IpNet::from(*ip)),
                )
                .map(|b| (b, to_u128(b.network()), to_u128(b.broadcast())))
                .collect(),
        }
    }

    /// Allocate an address for `req`. Idempotent: an attachment that already
    /// holds an address gets the same one back (a runtime retrying ADD).
    /// A pool whose blocks are full answers [`IpamError::PoolNeedsBlock`]:
    /// the caller claims a block and asks again.
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
                let pool = self.pool_of(a.ip);
                let mut claimed = self.insert(a.ip, req, now_ms);
                claimed.allocated_at_ms = a.allocated_at_ms;
                claimed.pool = pool;
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
        let ranges = self.ranges(req.pool.as_deref());
        let reserved = req
            .pool
            .as_ref()
            .and_then(|p| self.reserved.get(p))
            .cloned()
            .unwrap_or_default();
        if ranges.is_empty() {
            return Err(match &req.pool {
                Some(pool) => IpamError::PoolNeedsBlock { pool: pool.clone() },
                None => IpamError::TooSmall { cidr: self.cidr },
            });
        }
        if let Some(ip) = req.requested {
            // An explicit request may take an address in cool-down: the
            // runtime re-adding a container with its old address (podman
            // network reload) is the usual reason to ask for one.
            let v = to_u128(ip);
            let inside = !reserved.contains(&ip)
                && ranges.iter().any(|(n, lo, hi)| {
                    n.contains(&ip) && ip.is_ipv4() == n.addr().is_ipv4() && v >= *lo && v <= *hi
                });
            if !inside {
                return Err(IpamError::OutsidePool {
                    ip,
                    cidr: ranges[0].0,
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
        for (net, lo, hi) in &ranges {
            if let Some(ip) = self.scan(*net, *lo, *hi, now_ms, cooldown_ms, &reserved) {
                self.cooling.remove(&ip);
                let alloc = self.insert(ip, req, now_ms);
                self.last = Some(ip);
                return Ok(alloc);
            }
        }
        if let Some(pool) = req.pool {
            return Err(IpamError::PoolNeedsBlock { pool });
        }
        let cooling = self
            .cooling
            .keys()
            .filter(|ip| self.cidr.contains(*ip) && self.is_cooling(ip, now_ms, cooldown_ms))
            .count();
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            in_use: self
                .allocations
                .keys()
                .filter(|ip| self.cidr.contains(*ip))
                .count(),
            cooling,
        })
    }

    /// The next free address of one range, round-robin from the last one
    /// handed out when it is in this range.
    fn scan(
        &self,
        net: IpNet,
        lo: u128,
        hi: u128,
        now_ms: u64,
        cooldown_ms: u64,
        reserved: &std::collections::BTreeSet<IpAddr>,
    ) -> Option<IpAddr> {
        let span = hi - lo + 1;
        let start = match self.last {
            Some(l) if net.contains(&l) => {
                let o = to_u128(l);
                if o >= hi || o < lo {
                    0
                } else {
                    o - lo + 1
                }
            }
            _ => 0,
        };
        let like = net.network();
        // Bounded scan: at most one pass over the range. Pod CIDRs are small
        // (a /24 or so per node), so this is cheap; an IPv6 /64 is capped at
        // 2^20 probes, far beyond any node's pod count.
        let probes = span.min(1 << 20);
        (0..probes)
            .map(|i| from_u128(like, lo + (start + i) % span))
            .find(|ip| {
                !self.allocations.contains_key(ip)
                    && !self.is_cooling(ip, now_ms, cooldown_ms)
                    && !reserved.contains(ip)
            })
    }

    /// The pool whose block holds `ip`, if one does.
    pub fn pool_of(&self, ip: IpAddr) -> Option<String> {
        self.blocks
            .iter()
            .find(|(b, _)| b.contains(&ip))
            .map(|(_, p)| p.clone())
            .or_else(|| self.external.get(&ip).cloned())
    }

    /// Blocks with no address in use or cooling down: the node may give
    /// them back.
    pub fn idle_blocks(&self, now_ms: u64, cooldown_ms: u64) -> Vec<IpNet> {
        self.blocks
            .keys()
            .filter(|b| {
                !self.allocations.keys().any(|ip| b.contains(ip))
                    && !self
                        .cooling
                        .keys()
                        .any(|ip| b.contains(ip) && self.is_cooling(ip, now_ms, cooldown_ms))
            })
            .copied()
            .collect()
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
            pool: req.pool,
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
        let blocks = &self.blocks;
        self.cooling
            .retain(|ip, _| cidr.contains(ip) || blocks.keys().any(|b| b.contains(ip)));
        if self.last.is_some_and(|l| !cidr.contains(&l)) {
            self.last = None;
        }
    }
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
