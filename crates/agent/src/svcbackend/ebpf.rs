//! The eBPF service backend: frontends and backend slots in the pinned
//! `strait_lb` map, read by from-container, from-netdev and the socket
//! programs. Updates touch only the frontends that changed.

use super::ServiceBackend;
use std::collections::HashMap;
use strait_model::services::ServiceTable;

/// What strait_lb holds, per frontend: the service as programmed (the
/// compiler's shared entry) and its map entries. A change touches only the
/// frontends that differ; an entry that is the same allocation as last time
/// is skipped without comparing it.
pub type LbProgrammed = HashMap<
    strait_model::services::Frontend,
    (
        std::sync::Arc<strait_model::services::ServiceEntry>,
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

/// A frontend's map identity: (address, port, protocol), network order.
type FrontKey = (u32, u16, u8);

fn front_key(k: &strait_bpf::maps::LbKey) -> FrontKey {
    (k.addr, k.port, k.proto)
}

/// Make strait_lb hold exactly the table's frontends and backends, each
/// frontend rewritten in an order the datapath can read at any moment
/// ([`strait_bpf::maps::lb_ops`]). UDP flows to a backend that left a
/// frontend entirely are flushed from conntrack; TCP connections, and
/// those to a terminating backend, live on until they end.
fn sync_services(
    pin_dir: &std::path::Path,
    programmed: &mut Option<LbProgrammed>,
    table: &strait_model::services::ServiceTable,
) -> anyhow::Result<usize> {
    use strait_bpf::maps::{self, LbKey, LbMap, LbVal};
    let mut lb: LbMap = maps::open(pin_dir, "strait_lb")?;
    let mut changed = 0;
    let Some(prog) = programmed else {
        // The first sync after a start: what the map holds is the truth.
        let mut have: HashMap<FrontKey, Vec<(LbKey, LbVal)>> = HashMap::new();
        for kv in lb.iter() {
            let (k, v) = kv?;
            have.entry(front_key(&k)).or_default().push((k, v));
        }
        let mut now: LbProgrammed = HashMap::with_capacity(table.entries.len());
        for e in &table.entries {
            let kv = maps::lb_entries(std::slice::from_ref(&**e));
            let old = have.remove(&front_key(&kv[0].0)).unwrap_or_default();
            changed += apply_ops(&mut lb, &maps::lb_ops(&old, &kv))?;
            flush_removed(pin_dir, &old, &kv)?;
            now.insert(e.frontend, (e.clone(), kv));
        }
        for (_, old) in have {
            changed += apply_ops(&mut lb, &maps::lb_ops(&old, &[]))?;
            flush_removed(pin_dir, &old, &[])?;
        }
        *programmed = Some(now);
        return Ok(changed);
    };
    // Later syncs: only frontends whose entry is another allocation that
    // compares different are rewritten.
    for e in &table.entries {
        let old = match prog.get(&e.frontend) {
            Some((prev, _)) if std::sync::Arc::ptr_eq(prev, e) => continue,
            Some((prev, kv)) if **prev == **e => {
                let kv = kv.clone();
                prog.insert(e.frontend, (e.clone(), kv));
                continue;
            }
            Some((_, kv)) => kv.clone(),
            None => vec![],
        };
        let kv = maps::lb_entries(std::slice::from_ref(&**e));
        changed += apply_ops(&mut lb, &maps::lb_ops(&old, &kv))?;
        flush_removed(pin_dir, &old, &kv)?;
        prog.insert(e.frontend, (e.clone(), kv));
    }
    // Frontends that went away: every entry of the table is in `prog` now,
    // so it holds more only when some did.
    if prog.len() != table.entries.len() {
        let want: std::collections::HashSet<_> = table.entries.iter().map(|e| e.frontend).collect();
        let gone: Vec<_> = prog.keys().filter(|f| !want.contains(f)).copied().collect();
        for f in gone {
            if let Some((_, old)) = prog.remove(&f) {
                changed += apply_ops(&mut lb, &maps::lb_ops(&old, &[]))?;
                flush_removed(pin_dir, &old, &[])?;
            }
        }
    }
    Ok(changed)
}

fn apply_ops(
    lb: &mut strait_bpf::maps::LbMap,
    ops: &[strait_bpf::maps::LbOp],
) -> anyhow::Result<usize> {
    use strait_bpf::maps::LbOp;
    for op in ops {
        match op {
            LbOp::Put(k, v) => lb.insert(k, v, 0)?,
            LbOp::Delete(k) => match lb.remove(k) {
                Ok(()) => {}
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(ops.len())
}

/// Flush UDP conntrack for backends in `old` that are in no slot of `new`,
/// as kube-proxy does: a UDP flow never ends by itself, and would follow a
/// removed backend's address to whichever pod gets it next. TCP
/// connections are left to finish (a removed pod's connections end with
/// it; a pod still draining keeps serving them); the GC removes them.
fn flush_removed(
    pin_dir: &std::path::Path,
    old: &[(strait_bpf::maps::LbKey, strait_bpf::maps::LbVal)],
    new: &[(strait_bpf::maps::LbKey, strait_bpf::maps::LbVal)],
) -> anyhow::Result<()> {
    use strait_bpf::ct::Addr;
    let Some((k0, _)) = old.iter().find(|(k, _)| k.slot == 0) else {
        return Ok(());
    };
    if k0.proto != 17 {
        return Ok(());
    }
    let backends = |kv: &[(strait_bpf::maps::LbKey, strait_bpf::maps::LbVal)]| -> Vec<Addr> {
        kv.iter()
            .filter(|(k, _)| k.slot > 0)
            .map(|(_, v)| Addr {
                ip: v.backend_ip,
                port: v.backend_port,
            })
            .collect()
    };
    let keep = backends(new);
    let removed: Vec<Addr> = backends(old)
        .into_iter()
        .filter(|b| !keep.contains(b))
        .collect();
    let n = strait_bpf::ct::flush_backends(
        pin_dir,
        k0.proto,
        Addr {
            ip: k0.addr,
            port: k0.port,
        },
        &removed,
    )?;
    if n > 0 {
        tracing::info!(
            frontend = %format!("{}:{}", strait_bpf::maps::key_ip(k0.addr), u16::from_be(k0.port)),
            connections = n,
            "flushed connections to removed backends"
        );
    }
    Ok(())
}
