//! The eBPF service backend: frontends and backend slots in the pinned
//! `strait_lb` map, read by from-container, from-netdev and the socket
//! programs. Updates touch only the frontends that changed.

use super::ServiceBackend;
use std::collections::HashMap;
use strait_model::services::ServiceTable;

/// What strait_lb holds, per frontend: the service as programmed and its
/// map entries. A change touches only the frontends that differ.
pub type LbProgrammed = HashMap<
    strait_model::services::Frontend,
    (
        strait_model::services::ServiceEntry,
        Vec<(strait_bpf::maps::LbKey, strait_bpf::maps::LbVal)>,
    ),
>;

pub struct EbpfServices {
    pin_dir: std::path::PathBuf,
    /// strait_lb as last programmed (read from the pinned map once, at the
    /// first sync after start).
    programmed: Option<LbProgrammed>,
}

impl EbpfServices {
    pub fn new(pin_dir: std::path::PathBuf) -> Self {
        EbpfServices {
            pin_dir,
            programmed: None,
        }
    }
}

impl ServiceBackend for EbpfServices {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn apply(&mut self, table: &ServiceTable) -> anyhow::Result<usize> {
        sync_services(&self.pin_dir, &mut self.programmed, table)
    }
}

/// Make strait_lb hold exactly the table's frontends and backends.
/// Conntrack is left alone: connections to removed or terminating backends
/// keep their backend until they end.
fn sync_services(
    pin_dir: &std::path::Path,
    programmed: &mut Option<LbProgrammed>,
    table: &strait_model::services::ServiceTable,
) -> anyhow::Result<usize> {
    use strait_bpf::maps::{self, LbMap};
    let mut lb: LbMap = maps::open(pin_dir, "strait_lb")?;
    let mut changed = 0;
    let mut old = match programmed.take() {
        Some(p) => p,
        None => {
            // First sync since start: whatever the map holds is unknown;
            // clear what the table does not want.
            let want: std::collections::HashSet<maps::LbKey> = maps::lb_entries(&table.entries)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let have: Vec<maps::LbKey> = lb.keys().collect::<Result<_, _>>()?;
            for k in have.iter().filter(|k| !want.contains(k)) {
                lb.remove(k)?;
                changed += 1;
            }
            Default::default()
        }
    };
    let mut now: LbProgrammed = HashMap::with_capacity(table.entries.len());
    for e in &table.entries {
        match old.remove(&e.frontend) {
            // Unchanged service: nothing to do (the common case).
            Some((prev, kv)) if prev == *e => {
                now.insert(e.frontend, (prev, kv));
            }
            prev => {
                let kv = maps::lb_entries(std::slice::from_ref(e));
                let prev_kv = prev.map(|(_, kv)| kv).unwrap_or_default();
                for (k, _) in &prev_kv {
                    if !kv.iter().any(|(nk, _)| nk == k) {
                        lb.remove(k)?;
                        changed += 1;
                    }
                }
                for (k, v) in &kv {
                    if !prev_kv.iter().any(|(pk, pv)| pk == k && pv == v) {
                        lb.insert(k, v, 0)?;
                        changed += 1;
                    }
                }
                now.insert(e.frontend, (e.clone(), kv));
            }
        }
    }
    // Frontends that went away.
    for (_, (_, kv)) in old {
        for (k, _) in kv {
            lb.remove(&k)?;
            changed += 1;
        }
    }
    *programmed = Some(now);
    Ok(changed)
}
