//! Conntrack maintenance from user space: garbage collection of expired
//! connections, flushing connections to removed backends, and how full the
//! maps are. Entries are handled as pairs (forward and reverse), as the
//! datapath keeps them.

use crate::maps::{self, ct_twin, CtKey, CtMap, CtVal};
use std::collections::BTreeMap;
use std::path::Path;

/// A service frontend or a backend, as conntrack holds them (network order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub ip: u32,
    pub port: u16,
}

/// How many connections each state holds, and how full the maps are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Forward entries by state name.
    pub by_state: BTreeMap<&'static str, usize>,
    pub forward: usize,
    pub reverse: usize,
    pub capacity: usize,
    /// Pairs deleted by this pass.
    pub expired: usize,
    /// Twins rebuilt by this pass (one entry of a pair had been evicted).
    pub repaired: usize,
}

impl CtStats {
    /// The fuller of the two maps, 0.0 to 1.0.
    pub fn pressure(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        self.forward.max(self.reverse) as f64 / self.capacity as f64
    }
}

/// The monotonic clock the datapath stamps entries with (bpf_ktime_get_ns).
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn entries(map: &CtMap) -> Vec<(CtKey, CtVal)> {
    map.iter().filter_map(Result::ok).collect()
}

fn expired(v: &CtVal, now: u64) -> bool {
    now.saturating_sub(v.last_seen) > v.idle().as_nanos() as u64
}

/// One GC pass: delete pairs whose both entries expired, rebuild a missing
/// twin of a live entry, count by state.
pub fn gc(pin_dir: &Path, now: u64) -> Result<CtStats, aya::maps::MapError> {
    let mut fwd: CtMap = maps::open(pin_dir, "strait_ct")?;
    let mut rev: CtMap = maps::open(pin_dir, "strait_ct_rev")?;
    let mut st = CtStats {
        capacity: aya::maps::MapInfo::from_pin(crate::upgrade::maps_dir(pin_dir).join("strait_ct"))?
            .max_entries() as usize,
        ..Default::default()
    };
    // One walk of each map; everything after works on what it read.
    let f = entries(&fwd);
    let r = entries(&rev);
    let rev_by_key: std::collections::HashMap<CtKey, CtVal> = r.iter().copied().collect();
    let fwd_keys: std::collections::HashSet<CtKey> = f.iter().map(|(k, _)| *k).collect();
    let (mut nf, mut nr) = (f.len(), r.len());
    for (k, v) in &f {
        let (tk, tv) = ct_twin(k, v);
        let twin = rev_by_key.get(&tk);
        let live = !expired(v, now) || twin.is_some_and(|t| !expired(t, now));
        if !live {
            let _ = fwd.remove(k);
            nf -= 1;
            if twin.is_some() {
                let _ = rev.remove(&tk);
                nr -= 1;
            }
            st.expired += 1;
            continue;
        }
        if twin.is_none() {
            rev.insert(tk, tv, 0)?;
            nr += 1;
            st.repaired += 1;
        }
        *st.by_state.entry(v.state_name()).or_default() += 1;
    }
    // Reverse entries whose forward twin was missing from the start.
    for (k, v) in &r {
        let (tk, tv) = ct_twin(k, v);
        if fwd_keys.contains(&tk) {
            continue;
        }
        if expired(v, now) {
            let _ = rev.remove(k);
            nr -= 1;
            st.expired += 1;
        } else {
            fwd.insert(tk, tv, 0)?;
            nf += 1;
            st.repaired += 1;
            *st.by_state.entry(v.state_name()).or_default() += 1;
        }
    }
    st.forward = nf;
    st.reverse = nr;
    Ok(st)
}

/// Delete every connection from `frontend` (protocol `proto`) to a backend
/// in `removed`, both entries: a removed backend gets no more packets, and
/// the client's next packet picks a live one (as kube-proxy flushes UDP
/// conntrack). Returns the connections flushed.
pub fn flush_backends(
    pin_dir: &Path,
    proto: u8,
    frontend: Addr,
    removed: &[Addr],
) -> Result<usize, aya::maps::MapError> {
    if removed.is_empty() {
        return Ok(0);
    }
    let mut fwd: CtMap = maps::open(pin_dir, "strait_ct")?;
    let mut rev: CtMap = maps::open(pin_dir, "strait_ct_rev")?;
    let mut n = 0;
    for (k, v) in entries(&fwd) {
        if k.proto != proto || k.daddr != frontend.ip || k.dport != frontend.port {
            continue;
        }
        if !removed.contains(&Addr {
            ip: v.addr,
            port: v.port,
        }) {
            continue;
        }
        let (tk, _) = ct_twin(&k, &v);
        let _ = fwd.remove(&k);
        let _ = rev.remove(&tk);
        n += 1;
    }
    // Reverse entries whose forward twin was already gone.
    for (k, v) in entries(&rev) {
        if k.proto == proto
            && v.addr == frontend.ip
            && v.port == frontend.port
            && removed.contains(&Addr {
                ip: k.saddr,
                port: k.sport,
            })
        {
            let _ = rev.remove(&k);
        }
    }
    Ok(n)
}
