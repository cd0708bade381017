//! [`IncrementalCompiler`]: the service table kept up to date from one
//! snapshot to the next, at a cost in proportion to what changed.

use super::{compile_for_node, HealthCheck, ServiceEntry, ServiceTable, ThisNode};
use crate::cluster::{meta_key, ClusterSnapshot};
use crate::slice::Slice;
use k8s_openapi::api::core::v1::Service;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// (namespace, name) of a Service; a slice's (namespace, service label).
type Key = (String, String);

/// [`compile_for_node`] that recompiles only the Services whose object or
/// EndpointSlices changed since the last call, and touches nothing else.
///
/// Sources share unchanged objects between snapshots and sort every list
/// by namespace/name ([`ClusterSnapshot::normalize`]), so what changed is
/// found by walking the previous and the new lists side by side: a pointer
/// comparison per object, and a name comparison only where they differ.
/// One endpoint change among 10 000 services compiles one service and
/// moves one entry of the sorted table; the other entries come out as the
/// same `Arc`s as before.
#[derive(Default)]
pub struct IncrementalCompiler {
    node: Option<ThisNode>,
    /// The lists of the last snapshot compiled.
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<Slice>>,
    /// Each Service's current object and its slices by name.
    by_service: HashMap<Key, Arc<Service>>,
    slices_of: HashMap<Key, BTreeMap<String, Arc<Slice>>>,
    /// Each Service's compiled part.
    parts: HashMap<Key, ServiceTable>,
    /// Every part's entries, sorted by frontend.
    entries: Vec<Arc<ServiceEntry>>,
    /// The parts that have problems or health checks, in namespace/name
    /// order (the order a full compilation reports them in).
    problems: BTreeMap<Key, Vec<String>>,
    health: BTreeMap<Key, Vec<HealthCheck>>,
    /// Services compiled (cache misses) since creation.
    pub compiled: u64,
}

/// One object that differs between two lists: the old version, the new one,
/// or both.
type Change<'a, T> = (Option<&'a Arc<T>>, Option<&'a Arc<T>>);

/// The objects that differ between two lists sorted by `key`: where the
/// same allocation sits at both cursors nothing is compared but pointers.
fn changes<'a, T>(
    old: &'a [Arc<T>],
    new: &'a [Arc<T>],
    key: impl for<'x> Fn(&'x T) -> (&'x str, &'x str),
) -> Vec<Change<'a, T>> {
    let (mut i, mut j) = (0, 0);
    let mut out = vec![];
    loop {
        match (old.get(i), new.get(j)) {
            (None, None) => return out,
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) => match key(a).cmp(&key(b)) {
                Ordering::Equal => {
                    out.push((Some(a), Some(b)));
                    i += 1;
                    j += 1;
                }
                Ordering::Less => {
                    out.push((Some(a), None));
                    i += 1;
                }
                Ordering::Greater => {
                    out.push((None, Some(b)));
                    j += 1;
                }
            },
            (Some(a), None) => {
                out.push((Some(a), None));
                i += 1;
            }
            (None, Some(b)) => {
                out.push((None, Some(b)));
                j += 1;
            }
        }
    }
}

fn slice_key(s: &Slice) -> (&str, &str) {
    (&s.namespace, &s.name)
}

fn service_key(s: &Service) -> Key {
    super::key(&s.metadata)
}

/// The Service a slice belongs to; `None` without the service-name label.
fn slice_owner(s: &Slice) -> Option<Key> {
    Some((s.namespace.clone(), s.service.clone()?))
}

/// Where `e` goes in `entries` (after any equal frontends).
fn position(entries: &[Arc<ServiceEntry>], e: &ServiceEntry) -> usize {
    entries.partition_point(|x| x.frontend <= e.frontend)
}

impl IncrementalCompiler {
    /// The table for `snap`, whose lists must be sorted as
    /// [`ClusterSnapshot::normalize`] sorts them (every source does).
    pub fn compile(&mut self, snap: &ClusterSnapshot, node: Option<&ThisNode>) -> ServiceTable {
        debug_assert!(snap
            .services
            .is_sorted_by(|a, b| meta_key(&a.metadata) <= meta_key(&b.metadata)));
        debug_assert!(snap
            .endpoint_slices
            .is_sorted_by(|a, b| (&a.namespace, &a.name) <= (&b.namespace, &b.name)));
        if self.node.as_ref() != node {
            // External frontends and Local policy depend on the node: start
            // over.
            *self = IncrementalCompiler {
                node: node.cloned(),
                compiled: self.compiled,
                ..Default::default()
            };
        }
        let dirty = self.take_changes(snap);
        let bulk = dirty.len() * 16 > self.parts.len().max(1);
        for k in &dirty {
            self.recompile(k, !bulk);
        }
        if bulk {
            self.entries = self
                .parts
                .values()
                .flat_map(|p| p.entries.iter().cloned())
                .collect();
            self.entries.sort_by_key(|e| e.frontend);
        }
        self.services = snap.services.clone();
        self.slices = snap.endpoint_slices.clone();
        let mut health: Vec<HealthCheck> = vec![];
        for h in self.health.values().flatten() {
            if !health.iter().any(|x| x.port == h.port) {
                health.push(h.clone());
            }
        }
        ServiceTable {
            entries: self.entries.clone(),
            health_checks: health,
            problems: self.problems.values().flatten().cloned().collect(),
        }
    }

    /// Bring the per-service indexes up to `snap`; the Services to compile
    /// again.
    fn take_changes(&mut self, snap: &ClusterSnapshot) -> BTreeSet<Key> {
        let mut dirty = BTreeSet::new();
        for (old, new) in changes(&self.services, &snap.services, |s| meta_key(&s.metadata)) {
            if let Some(o) = old {
                let k = service_key(o);
                self.by_service.remove(&k);
                dirty.insert(k);
            }
            if let Some(n) = new {
                let k = service_key(n);
                self.by_service.insert(k.clone(), n.clone());
                dirty.insert(k);
            }
        }
        for (old, new) in changes(&self.slices, &snap.endpoint_slices, slice_key) {
            if let Some(o) = old {
                if let Some(k) = slice_owner(o) {
                    if let Some(m) = self.slices_of.get_mut(&k) {
                        m.remove(&o.name);
                        if m.is_empty() {
                            self.slices_of.remove(&k);
                        }
                    }
                    dirty.insert(k);
                }
            }
            if let Some(n) = new {
                if let Some(k) = slice_owner(n) {
                    self.slices_of
                        .entry(k.clone())
                        .or_default()
                        .insert(n.name.clone(), n.clone());
                    dirty.insert(k);
                }
            }
        }
        dirty
    }

    /// Compile one Service again (or forget it, gone); `in_place` keeps the
    /// sorted entries up to date as it goes.
    fn recompile(&mut self, k: &Key, in_place: bool) {
        if let Some(old) = self.parts.remove(k) {
            if in_place {
                for e in &old.entries {
                    let end = position(&self.entries, e);
                    let start = self.entries[..end].partition_point(|x| x.frontend < e.frontend);
                    if let Some(i) = (start..end).find(|&i| Arc::ptr_eq(&self.entries[i], e)) {
                        self.entries.remove(i);
                    }
                }
            }
        }
        self.problems.remove(k);
        self.health.remove(k);
        let Some(svc) = self.by_service.get(k) else {
            return;
        };
        let mini = ClusterSnapshot {
            services: vec![svc.clone()],
            endpoint_slices: self
                .slices_of
                .get(k)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            ..Default::default()
        };
        self.compiled += 1;
        let part = compile_for_node(&mini, self.node.as_ref());
        if in_place {
            for e in &part.entries {
                let at = position(&self.entries, e);
                self.entries.insert(at, e.clone());
            }
        }
        if !part.problems.is_empty() {
            self.problems.insert(k.clone(), part.problems.clone());
        }
        if !part.health_checks.is_empty() {
            self.health.insert(k.clone(), part.health_checks.clone());
        }
        self.parts.insert(k.clone(), part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::compile_for_node;
    use std::net::Ipv4Addr;

    fn service(i: usize, port: u16) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("s{i}"), "namespace": "default"},
                "spec": {"clusterIP": format!("10.96.0.{}", i % 7), "type": "NodePort",
                    "externalTrafficPolicy": if i.is_multiple_of(3) { "Local" } else { "Cluster" },
                    "ports": [{"name": "http", "port": port, "nodePort": 30000 + i}]}
            }))
            .unwrap(),
        )
    }

    fn slice(name: &str, svc: usize, ip: u8) -> Arc<Slice> {
        let s: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default",
                    "labels": {"kubernetes.io/service-name": format!("s{svc}")}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": [format!("10.0.0.{ip}")], "nodeName": "n1"}]
            }))
            .unwrap();
        Arc::new(Slice::from_k8s(&s))
    }

    /// `n` services, each with one slice of one endpoint, normalized.
    fn cluster(n: usize) -> ClusterSnapshot {
        let mut snap = ClusterSnapshot::default();
        for i in 0..n {
            snap.services.push(service(i, 80));
            snap.endpoint_slices
                .push(slice(&format!("s{i}-a"), i, i as u8));
        }
        snap.normalize();
        snap
    }

    /// A small deterministic generator (xorshift), for the edit sequence.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Random adds, removals and edits of services and slices (slices that
    /// move between services, port 0 that makes a service a problem,
    /// shared cluster IPs): after each, the incremental table is the full
    /// compilation's, entry for entry.
    #[test]
    fn random_edits_give_the_full_compilation() {
        let node = ThisNode {
            name: "n1".into(),
            ip: Ipv4Addr::new(198, 18, 0, 1),
        };
        let mut rng = Rng(0x5eed);
        let mut inc = IncrementalCompiler::default();
        let mut snap = cluster(40);
        for step in 0..400 {
            let mut next = snap.clone();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(50);
                match rng.below(5) {
                    0 => {
                        next.services
                            .retain(|s| s.metadata.name.as_deref() != Some(&format!("s{i}")));
                    }
                    1 => {
                        next.services
                            .retain(|s| s.metadata.name.as_deref() != Some(&format!("s{i}")));
                        let port = [80, 81, 0][rng.below(3)];
                        next.services.push(service(i, port));
                    }
                    2 => {
                        let name = format!("s{i}-{}", ["a", "b"][rng.below(2)]);
                        next.endpoint_slices.retain(|s| s.name != name);
                        next.endpoint_slices.push(slice(
                            &name,
                            rng.below(50),
                            rng.below(250) as u8,
                        ));
                    }
                    3 => {
                        let name = format!("s{i}-{}", ["a", "b"][rng.below(2)]);
                        next.endpoint_slices.retain(|s| s.name != name);
                    }
                    _ => {}
                }
            }
            next.normalize();
            let on = (step % 100 < 90).then_some(&node);
            let got = inc.compile(&next, on);
            let want = compile_for_node(&next, on);
            let key = |e: &Arc<ServiceEntry>| (e.frontend, e.id);
            let mut g = got.entries.clone();
            let mut w = want.entries.clone();
            g.sort_by_key(key);
            w.sort_by_key(key);
            assert_eq!(g, w, "step {step}");
            assert!(got.entries.is_sorted_by_key(|e| e.frontend), "step {step}");
            assert_eq!(got.problems, want.problems, "step {step}");
            assert_eq!(got.health_checks, want.health_checks, "step {step}");
            snap = next;
        }
    }

    #[test]
    fn one_change_compiles_one_service_and_shares_the_rest() {
        let snap = cluster(30);
        let mut inc = IncrementalCompiler::default();
        let first = inc.compile(&snap, None);
        assert_eq!(inc.compiled, 30);
        let mut next = snap.clone();
        let at = next
            .endpoint_slices
            .iter()
            .position(|s| s.name == "s3-a")
            .unwrap();
        next.endpoint_slices[at] = slice("s3-a", 3, 99);
        let got = inc.compile(&next, None);
        assert_eq!(inc.compiled, 31, "only s3 was compiled again");
        let fresh = got
            .entries
            .iter()
            .filter(|e| !first.entries.iter().any(|f| Arc::ptr_eq(e, f)))
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>();
        assert_eq!(fresh, ["s3"], "every other entry is the same allocation");
        // Nothing changed: nothing compiled.
        inc.compile(&next, None);
        assert_eq!(inc.compiled, 31);
        // A service removed leaves the indexes.
        next.services
            .retain(|s| s.metadata.name.as_deref() != Some("s0"));
        inc.compile(&next, None);
        assert_eq!(inc.parts.len(), 29);
        assert_eq!(inc.by_service.len(), 29);
    }
}
