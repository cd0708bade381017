//! The node's IPAM: the pure allocator from strait-model, a lock so parallel
//! ADDs get distinct addresses, and atomic persistence after every change.
//! An allocation is on disk before the plugin hears of it, so a crash of the
//! agent loses nothing; if saving fails, the change is undone in memory too.

use crate::store::{self, StoreError};
use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use strait_model::api::{ApiError, ApiErrorKind};
use strait_model::ipam::{Allocation, AllocationRequest, Attachment, IpamError, IpamState};

pub struct NodeIpam {
    path: PathBuf,
    boot_id: String,
    cooldown: Duration,
    state: Mutex<Option<IpamState>>,
    /// Held while an ADD claims an IPPool block (one claim at a time).
    pub claims: Mutex<()>,
}

fn internal(e: StoreError) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Internal,
        message: format!("saving IPAM state failed, nothing was changed: {e}"),
    }
}

/// The file on disk: the state and the boot it belongs to.
#[derive(serde::Serialize)]
struct IpamFileRef<'a> {
    boot_id: &'a str,
    ipam: &'a IpamState,
}

#[derive(serde::Deserialize)]
struct IpamFile {
    boot_id: String,
    ipam: IpamState,
}

impl NodeIpam {
    pub fn load(path: PathBuf, cooldown: Duration) -> Result<Self, StoreError> {
        Self::load_for_boot(path, cooldown, store::boot_id())
    }

    pub fn load_for_boot(
        path: PathBuf,
        cooldown: Duration,
        boot_id: String,
    ) -> Result<Self, StoreError> {
        let state = match store::load::<IpamFile>(&path)? {
            Some(f) if f.boot_id == boot_id => Some(f.ipam),
            Some(f) => {
                tracing::warn!(
                    allocations = f.ipam.allocations.len(),
                    "IPAM state is from an earlier boot; its pods did not survive the reboot, starting empty"
                );
                None
            }
            None => None,
        };
        Ok(NodeIpam {
            path,
            boot_id,
            cooldown,
            state: Mutex::new(state),
            claims: Mutex::new(()),
        })
    }

    fn save(&self, state: &IpamState) -> Result<(), StoreError> {
        store::save(
            &self.path,
            &IpamFileRef {
                boot_id: &self.boot_id,
                ipam: state,
            },
        )
    }

    fn cooldown_ms(&self) -> u64 {
        self.cooldown.as_millis() as u64
    }

    /// Apply `f` to the state and persist; undo on failure.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut IpamState) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            return Err(not_ready());
        };
        let before = state.clone();
        let out = f(state)?;
        if *state != before {
            if let Err(e) = self.save(state) {
                *state = before;
                return Err(internal(e));
            }
        }
        Ok(out)
    }

    /// Set (or change) the pod CIDR once the Node object says what it is.
    pub fn ensure_cidr(&self, cidr: IpNet) -> Result<(), StoreError> {
        let mut guard = self.state.lock().unwrap();
        let before = guard.clone();
        match guard.as_mut() {
            Some(s) if s.cidr == cidr => return Ok(()),
            Some(s) => {
                tracing::warn!(old = %s.cidr, new = %cidr, "pod CIDR changed; existing pods keep their addresses");
                s.set_cidr(cidr)
            }
            None => *guard = Some(IpamState::new(cidr)),
        }
        if let Err(e) = self.save(guard.as_ref().unwrap()) {
            *guard = before;
            return Err(e);
        }
        Ok(())
    }

    pub fn cidr(&self) -> Option<IpNet> {
        self.state.lock().unwrap().as_ref().map(|s| s.cidr)
    }

    pub fn allocate(&self, req: AllocationRequest) -> Result<Allocation, AllocError> {
        self.allocate_with(req, None)
    }

    /// Add `block` (just claimed for `pool`) and allocate from the pool in
    /// one change: no pass can find the block idle in between.
    pub fn allocate_in_new_block(
        &self,
        req: AllocationRequest,
        block: IpNet,
        pool: &str,
    ) -> Result<Allocation, AllocError> {
        self.allocate_with(req, Some((block, pool)))
    }

    fn allocate_with(
        &self,
        req: AllocationRequest,
        block: Option<(IpNet, &str)>,
    ) -> Result<Allocation, AllocError> {
        let now = crate::now_ms();
        let cd = self.cooldown_ms();
        let mut need = None;
        let r = self.mutate(|s| {
            if let Some((b, pool)) = block {
                s.blocks.insert(b, pool.to_string());
            }
            s.expire_cooling(now, cd);
            s.allocate(req, now, cd).map_err(|e| {
                if let IpamError::PoolNeedsBlock { pool } = &e {
                    need = Some(pool.clone());
                }
                ApiError {
                    kind: match e {
                        IpamError::Exhausted { .. }
                        | IpamError::TooSmall { .. }
                        | IpamError::PoolNeedsBlock { .. } => ApiErrorKind::Exhausted,
                        IpamError::OutsidePool { .. }
                        | IpamError::InUse { .. }
                        | IpamError::AlreadyHolds { .. } => ApiErrorKind::Invalid,
                    },
                    message: e.to_string(),
                }
            })
        });
        match (r, need) {
            (Err(_), Some(pool)) => Err(AllocError::NeedBlock(pool)),
            (r, _) => r.map_err(AllocError::Api),
        }
    }

    /// Addresses of `pool` never to hand out (see `Pool::reserved`).
    pub fn set_reserved(&self, pool: &str, addrs: std::collections::BTreeSet<std::net::IpAddr>) {
        if let Some(s) = self.state.lock().unwrap().as_mut() {
            s.reserved.insert(pool.to_string(), addrs);
        }
    }

    /// The cloud's addresses of this node, by ENI (see
    /// `IpamState::external`).
    pub fn set_external(&self, addrs: std::collections::BTreeMap<std::net::IpAddr, String>) {
        if let Some(s) = self.state.lock().unwrap().as_mut() {
            s.external = addrs;
        }
    }

    /// The IPPool blocks this node holds (block -> pool).
    pub fn blocks(&self) -> std::collections::BTreeMap<IpNet, String> {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.blocks.clone())
            .unwrap_or_default()
    }

    /// Record blocks the control plane says this node holds (IPAM state
    /// lost, or a claim whose ADD failed after it).
    pub fn adopt_blocks(&self, held: &[(IpNet, String)]) -> Result<usize, ApiError> {
        self.mutate(|s| {
            let before = s.blocks.len();
            for (b, p) in held {
                s.blocks.entry(*b).or_insert_with(|| p.clone());
            }
            Ok(s.blocks.len() - before)
        })
    }

    /// Take out of the state every block with nothing in use or cooling
    /// down, so no allocation lands in them; the caller deletes their
    /// objects.
    pub fn take_idle_blocks(&self) -> Result<Vec<(IpNet, String)>, ApiError> {
        let now = crate::now_ms();
        let cd = self.cooldown_ms();
        let r = self.mutate(|s| {
            let idle = s.idle_blocks(now, cd);
            Ok(idle
                .into_iter()
                .filter_map(|b| s.blocks.remove(&b).map(|p| (b, p)))
                .collect())
        });
        match r {
            Err(e) if e.kind == ApiErrorKind::NotReady => Ok(vec![]),
            other => other,
        }
    }

    pub fn release(&self, att: &Attachment) -> Result<Option<Allocation>, ApiError> {
        let now = crate::now_ms();
        match self.mutate(|s| Ok(s.release(att, now))) {
            // Without a pod CIDR there is nothing to release: DEL succeeds.
            Err(e) if e.kind == ApiErrorKind::NotReady => Ok(None),
            other => other,
        }
    }

    pub fn retain(&self, valid: &[Attachment]) -> Result<Vec<Allocation>, ApiError> {
        let now = crate::now_ms();
        self.mutate(|s| Ok(s.retain_attachments(valid, now)))
    }

    /// Release the given addresses (the reconciler found their pods gone).
    pub fn release_ips(&self, ips: &[std::net::IpAddr]) -> Result<Vec<Allocation>, ApiError> {
        let now = crate::now_ms();
        self.mutate(|s| Ok(ips.iter().filter_map(|ip| s.release_ip(*ip, now)).collect()))
    }

    /// Record addresses found live in the kernel that the state lacks.
    pub fn adopt(&self, found: &[(std::net::IpAddr, String)]) -> Result<Vec<Allocation>, ApiError> {
        let now = crate::now_ms();
        self.mutate(|s| {
            Ok(found
                .iter()
                .filter_map(|(ip, veth)| s.adopt(*ip, veth, now))
                .collect())
        })
    }

    pub fn get(&self, att: &Attachment) -> Option<Allocation> {
        self.state.lock().unwrap().as_ref()?.find(att).cloned()
    }

    pub fn allocations(&self) -> Vec<Allocation> {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.allocations.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Addresses released and still in cool-down.
    pub fn cooling_ips(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        let now = crate::now_ms();
        let cd = self.cooldown_ms();
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| {
                s.cooling
                    .iter()
                    .filter(|(_, &t)| now.saturating_sub(t) < cd)
                    .map(|(ip, _)| *ip)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn cooling(&self) -> usize {
        self.cooling_ips().len()
    }
}

/// Why an allocation did not happen.
#[derive(Debug)]
pub enum AllocError {
    /// The node holds no block of this IPPool with a free address: claim
    /// one and ask again.
    NeedBlock(String),
    Api(ApiError),
}

pub fn not_ready() -> ApiError {
    ApiError {
        kind: ApiErrorKind::NotReady,
        message: "the node has no pod CIDR yet (its Node object lacks spec.podCIDR, or the agent has not read it yet); retry shortly".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_model::ipam::PodRef;

    fn req(id: &str) -> AllocationRequest {
        AllocationRequest {
            attachment: Attachment {
                container_id: id.into(),
                ifname: "eth0".into(),
            },
            pod: PodRef::default(),
            netns: String::new(),
            host_veth: String::new(),
            netns_ino: None,
            requested: None,
            host_ports: vec![],
            pool: None,
        }
    }

    #[test]
    fn persists_every_change_and_reloads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ipam.json");
        let ipam = NodeIpam::load(p.clone(), Duration::from_secs(30)).unwrap();
        assert!(matches!(
            ipam.allocate(req("a")),
            Err(AllocError::Api(ApiError {
                kind: ApiErrorKind::NotReady,
                ..
            }))
        ));
        ipam.ensure_cidr("10.0.0.0/24".parse().unwrap()).unwrap();
        let a = ipam.allocate(req("a")).unwrap();
        let again = NodeIpam::load(p, Duration::from_secs(30)).unwrap();
        assert_eq!(again.get(&req("a").attachment), Some(a));
    }

    #[test]
    fn state_from_an_earlier_boot_is_discarded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ipam.json");
        let ipam = NodeIpam::load_for_boot(p.clone(), Duration::ZERO, "boot-1".into()).unwrap();
        ipam.ensure_cidr("10.0.0.0/24".parse().unwrap()).unwrap();
        ipam.allocate(req("a")).unwrap();
        let same = NodeIpam::load_for_boot(p.clone(), Duration::ZERO, "boot-1".into()).unwrap();
        assert_eq!(same.allocations().len(), 1);
        let next = NodeIpam::load_for_boot(p, Duration::ZERO, "boot-2".into()).unwrap();
        assert!(next.allocations().is_empty());
        assert_eq!(next.cidr(), None);
    }

    #[test]
    fn failed_save_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub").join("ipam.json");
        let ipam = NodeIpam::load(p, Duration::from_secs(30)).unwrap();
        // The directory does not exist, so saving fails.
        assert!(ipam.ensure_cidr("10.0.0.0/24".parse().unwrap()).is_err());
        assert_eq!(ipam.cidr(), None);
    }

    #[test]
    fn parallel_allocations_are_distinct() {
        let d = tempfile::tempdir().unwrap();
        let ipam = std::sync::Arc::new(
            NodeIpam::load(d.path().join("ipam.json"), Duration::from_secs(30)).unwrap(),
        );
        ipam.ensure_cidr("10.0.0.0/24".parse().unwrap()).unwrap();
        let hs: Vec<_> = (0..50)
            .map(|i| {
                let ipam = ipam.clone();
                std::thread::spawn(move || ipam.allocate(req(&format!("c{i}"))).unwrap().ip)
            })
            .collect();
        let mut ips: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 50);
    }
}
