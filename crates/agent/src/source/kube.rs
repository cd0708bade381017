//! The kube-apiserver source: one reflector per kind (Nodes, Pods,
//! Services, EndpointSlices, Namespaces, NetworkPolicies, and strait's
//! IPPools, IPAMBlocks, BGPConfigurations and BGPPeers), each a
//! watch that relists by itself after "410 Gone" or a broken connection and
//! retries errors with backoff. A snapshot is published only once every kind
//! has been listed, and then after each burst of events (coalesced).
//!
//! EndpointSlices are read as `discovery.k8s.io/v1` where the apiserver
//! serves it and as `v1beta1` where it does not (Kubernetes 1.20), converted
//! to v1 (`topology` hostname/zone become `nodeName`/`zone`).

use super::{now_ms, ClusterSource, SharedHealth};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_model::api::SourceStatus;
use strait_model::bgp::{BGPConfiguration, BGPPeer};
use strait_model::cloud::trunking::PodNetworking;
use strait_model::cluster::{ClusterSnapshot, Kind};
use strait_model::ippool::{IPAMBlock, IPPool};
use strait_model::slice::Slice;
use tokio::sync::{watch, Notify};

/// Events closer together than this are published as one snapshot. Short:
/// the reconcilers coalesce too (each reads the newest snapshot when its
/// pass ends), so this only gathers the events of one write (a Service and
/// its EndpointSlice arrive a few milliseconds apart).
const COALESCE: Duration = Duration::from_millis(3);

pub struct KubeSource {
    rx: watch::Receiver<Arc<ClusterSnapshot>>,
    health: SharedHealth,
    client: kube::Client,
}

struct Stores {
    nodes: Store<Node>,
    pods: Store<Pod>,
    services: Store<Service>,
    /// v1, or v1beta1 converted on arrival; compact.
    slices: SliceStore,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    pools: Store<IPPool>,
    blocks: Store<IPAMBlock>,
    bgp_configs: Store<BGPConfiguration>,
    bgp_peers: Store<BGPPeer>,
    pod_networkings: Store<PodNetworking>,
    /// Of strait's secrets namespace only.
    secrets: Store<Secret>,
}

/// The kinds whose stores changed since the last snapshot, and a wakeup.
/// A snapshot rebuilds (and sorts) only those: at 10 000 services an
/// endpoint change re-reads the EndpointSlices, not the Services.
#[derive(Default)]
struct Changed {
    kinds: Mutex<Vec<Kind>>,
    notify: Notify,
}

impl Changed {
    fn mark(&self, kind: Kind) {
        let mut k = self.kinds.lock().unwrap();
        if !k.contains(&kind) {
            k.push(kind);
        }
        drop(k);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<Kind> {
        std::mem::take(&mut *self.kinds.lock().unwrap())
    }
}

/// Drive one kind's reflector stream on its own task.
fn spawn_watch<K, S>(
    kind: Kind,
    stream: S,
    health: SharedHealth,
    listed: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    dirty: Arc<Changed>,
) where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(drive_watch(kind, stream, health, listed, dirty));
}

/// Count one kind's lists, events and errors, and mark the snapshot dirty
/// on every change. Events of a list in progress do not: the store is
/// swapped at its end (`InitDone`), and that is the change.
async fn drive_watch<K, S>(
    kind: Kind,
    stream: S,
    health: SharedHealth,
    listed: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    dirty: Arc<Changed>,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let name = kind.resource();
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                let mut h = health.lock().unwrap();
                h.last_event_ms = Some(now_ms());
                if let watcher::Event::InitDone = ev {
                    let mut l = listed.lock().unwrap();
                    let n = l.entry(name).or_default();
                    *n += 1;
                    if *n > 1 {
                        h.relists += 1;
                        tracing::info!(kind = name, "relisted");
                    }
                }
                drop(h);
                if !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    dirty.mark(kind);
                }
            }
            Err(e) => {
                let mut h = health.lock().unwrap();
                h.errors += 1;
                h.last_error = Some(format!("{name}: {e}"));
                tracing::warn!(kind = name, error = %e, "watch error; retrying with backoff");
            }
        }
    }
}

/// The kinds not listed yet: no snapshot until this is empty.
fn unlisted(listed: &BTreeMap<&'static str, u64>) -> Vec<&'static str> {
    Kind::ALL
        .iter()
        .map(|k| k.resource())
        .filter(|k| !listed.contains_key(k))
        .collect()
}

/// Keep in memory only what the agent reads: server-side apply's managed
/// fields and kubectl's last-applied copy can be most of an object.
fn slim<K: kube::Resource>(o: &mut K) {
    use kube::ResourceExt;
    o.managed_fields_mut().clear();
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// A namespace as it is stored: slim, and labelled with its name once
/// here (Kubernetes before 1.21 does not), so snapshots share it.
fn slim_namespace(n: &mut Namespace) {
    slim(n);
    strait_model::cluster::label_namespace(n);
}

/// A v1beta1 EndpointSlice as v1: `topology` becomes `nodeName`/`zone`.
pub fn slice_from_v1beta1(o: &DynamicObject) -> Result<EndpointSlice, serde_json::Error> {
    let mut v = serde_json::to_value(o)?;
    v["apiVersion"] = "discovery.k8s.io/v1".into();
    if let Some(eps) = v.get_mut("endpoints").and_then(|e| e.as_array_mut()) {
        for ep in eps {
            if let Some(topo) = ep.get("topology").cloned() {
                if let Some(h) = topo.get("kubernetes.io/hostname") {
                    ep["nodeName"] = h.clone();
                }
                if let Some(z) = topo.get("topology.kubernetes.io/zone") {
                    ep["zone"] = z.clone();
                }
            }
            if let Some(m) = ep.as_object_mut() {
                m.remove("topology");
            }
        }
    }
    serde_json::from_value(v)
}

/// A v1beta1 watch event as a v1 one. A slice that does not convert keeps
/// its name with no endpoints (and is logged): its service then has none,
/// rather than stale ones.
fn v1_event(ev: watcher::Event<DynamicObject>) -> watcher::Event<EndpointSlice> {
    let conv = |o: DynamicObject| match slice_from_v1beta1(&o) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(slice = ?o.metadata.name, error = %e, "EndpointSlice v1beta1 not understood; taken as empty");
            EndpointSlice {
                metadata: o.metadata,
                address_type: "IPv4".into(),
                endpoints: vec![],
                ports: None,
            }
        }
    };
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(conv(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(conv(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(conv(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// EndpointSlices as [`Slice`]s, kept from the watch events by hand: a
/// reflector's store would hold the full objects (most of the agent's
/// memory at 10 000 services). Same semantics: a (re)list is buffered and
/// swapped in whole at its end.
#[derive(Clone, Default)]
struct SliceStore(Arc<Mutex<SliceState>>);

#[derive(Default)]
struct SliceState {
    /// Sorted as snapshots are: reading it needs no sort.
    live: BTreeMap<(String, String), Arc<Slice>>,
    listing: Option<BTreeMap<(String, String), Arc<Slice>>>,
}

impl SliceStore {
    fn apply(&self, ev: &watcher::Event<EndpointSlice>) {
        let compact = |o: &EndpointSlice| {
            let s = Slice::from_k8s(o);
            ((s.namespace.clone(), s.name.clone()), Arc::new(s))
        };
        let mut st = self.0.lock().unwrap();
        match ev {
            watcher::Event::Apply(o) => {
                let (k, v) = compact(o);
                st.live.insert(k, v);
            }
            watcher::Event::Delete(o) => {
                // Keyed as Slice::from_k8s names it, without converting.
                let ns = o.metadata.namespace.as_deref().unwrap_or("default");
                let name = o.metadata.name.as_deref().unwrap_or_default();
                st.live.remove(&(ns.to_string(), name.to_string()));
            }
            watcher::Event::Init => st.listing = Some(Default::default()),
            watcher::Event::InitApply(o) => {
                let (k, v) = compact(o);
                st.listing.get_or_insert_default().insert(k, v);
            }
            watcher::Event::InitDone => {
                if let Some(l) = st.listing.take() {
                    st.live = l;
                }
            }
        }
    }

    fn state(&self) -> Vec<Arc<Slice>> {
        self.0.lock().unwrap().live.values().cloned().collect()
    }
}

impl Stores {
    /// The stores' objects, shared (no object is copied): the `changed`
    /// kinds read from the stores and sorted, the others `prev`'s lists
    /// (all of them read when there is no `prev`).
    fn snapshot(&self, prev: Option<&ClusterSnapshot>, changed: &[Kind]) -> ClusterSnapshot {
        let mut s = prev.cloned().unwrap_or_default();
        let redo = |k: Kind| prev.is_none() || changed.contains(&k);
        macro_rules! read {
            ($kind:expr, $field:ident, $store:expr) => {
                if redo($kind) {
                    s.$field = $store.state();
                    s.sort_kind($kind);
                }
            };
        }
        read!(Kind::Nodes, nodes, self.nodes);
        read!(Kind::Pods, pods, self.pods);
        read!(Kind::Services, services, self.services);
        read!(Kind::EndpointSlices, endpoint_slices, self.slices);
        read!(Kind::NetworkPolicies, network_policies, self.policies);
        read!(Kind::Namespaces, namespaces, self.namespaces);
        read!(Kind::IpPools, ip_pools, self.pools);
        read!(Kind::IpamBlocks, ipam_blocks, self.blocks);
        read!(
            Kind::BgpConfigurations,
            bgp_configurations,
            self.bgp_configs
        );
        read!(Kind::BgpPeers, bgp_peers, self.bgp_peers);
        read!(Kind::PodNetworkings, pod_networkings, self.pod_networkings);
        read!(Kind::Secrets, secrets, self.secrets);
        s
    }
}

/// Which EndpointSlice version the apiserver serves.
async fn slice_version(client: &kube::Client) -> anyhow::Result<&'static str> {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(r) if r.resources.iter().any(|r| r.name == "endpointslices") => Ok("v1"),
        _ => match client
            .list_api_group_resources("discovery.k8s.io/v1beta1")
            .await
        {
            Ok(_) => Ok("v1beta1"),
            Err(e) => anyhow::bail!(
                "the apiserver serves EndpointSlices neither as discovery.k8s.io/v1 nor v1beta1: {e}"
            ),
        },
    }
}

/// Whether the agent may list Secrets of strait's secrets namespace (the
/// Role deploy/strait.yaml grants). Without it BGP passwords cannot be
/// read, which is no reason to stay unready.
async fn secrets_readable(client: &kube::Client) -> bool {
    let api: Api<Secret> = Api::namespaced(client.clone(), strait_model::bgp::SECRETS_NAMESPACE);
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(namespace = strait_model::bgp::SECRETS_NAMESPACE, error = %e, "cannot list Secrets there: BGPPeer passwords will not be found (apply deploy/strait.yaml's Role strait-agent-secrets)");
            false
        }
    }
}

/// The kinds strait's CRDs serve.
const CRD_KINDS: [Kind; 5] = [
    Kind::IpPools,
    Kind::IpamBlocks,
    Kind::BgpConfigurations,
    Kind::BgpPeers,
    Kind::PodNetworkings,
];

/// Whether the apiserver serves strait's CRDs (deploy/crds.yaml).
async fn crds_installed(client: &kube::Client) -> bool {
    client
        .list_api_group_resources(strait_model::ippool::API_VERSION)
        .await
        .is_ok_and(|r| {
            CRD_KINDS
                .iter()
                .all(|k| r.resources.iter().any(|x| x.name == k.resource()))
        })
}

impl KubeSource {
    /// Connect, start every watch and return once each kind has been listed
    /// (logging which are still missing while it waits).
    pub async fn start(client: kube::Client, from: String) -> anyhow::Result<Self> {
        let version = loop {
            match slice_version(&client).await {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), apiserver = %from, "cannot reach the apiserver yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let health: SharedHealth = Arc::new(Mutex::new(SourceStatus {
            kind: "kube-apiserver".into(),
            from,
            kinds: Kind::ALL
                .iter()
                .map(|k| k.resource())
                .map(|k| {
                    if k == "endpointslices" {
                        format!("endpointslices (discovery.k8s.io/{version})")
                    } else {
                        k.to_string()
                    }
                })
                .collect(),
            ..Default::default()
        }));
        let listed = Arc::new(Mutex::new(BTreeMap::new()));
        let dirty = Arc::new(Changed::default());
        let c = &client;
        macro_rules! watch_kind {
            ($name:expr, $api:expr, $cfg:expr) => {
                watch_kind!($name, $api, $cfg, slim)
            };
            ($name:expr, $api:expr, $cfg:expr, $modify:expr) => {{
                let (r, w) = reflector::store();
                let stream = watcher($api, $cfg)
                    .default_backoff()
                    .modify($modify)
                    .reflect(w);
                spawn_watch($name, stream, health.clone(), listed.clone(), dirty.clone());
                r
            }};
        }
        let all = watcher::Config::default;
        let nodes = watch_kind!(Kind::Nodes, Api::<Node>::all(c.clone()), all());
        // Every node's pods: NetworkPolicy selectors resolve to pods
        // anywhere (the endpoints and policy reconcilers pick this node's).
        let pods = watch_kind!(Kind::Pods, Api::<Pod>::all(c.clone()), all());
        let services = watch_kind!(Kind::Services, Api::<Service>::all(c.clone()), all());
        let namespaces = watch_kind!(
            Kind::Namespaces,
            Api::<Namespace>::all(c.clone()),
            all(),
            slim_namespace
        );
        let policies = watch_kind!(
            Kind::NetworkPolicies,
            Api::<NetworkPolicy>::all(c.clone()),
            all()
        );
        let slices = SliceStore::default();
        if version == "v1" {
            let store = slices.clone();
            let stream = watcher(Api::<EndpointSlice>::all(c.clone()), all())
                .default_backoff()
                .inspect_ok(move |ev| store.apply(ev));
            spawn_watch(
                Kind::EndpointSlices,
                stream,
                health.clone(),
                listed.clone(),
                dirty.clone(),
            );
        } else {
            let ar = ApiResource {
                group: "discovery.k8s.io".into(),
                version: "v1beta1".into(),
                api_version: "discovery.k8s.io/v1beta1".into(),
                kind: "EndpointSlice".into(),
                plural: "endpointslices".into(),
            };
            let store = slices.clone();
            let stream = watcher(Api::<DynamicObject>::all_with(c.clone(), &ar), all())
                .default_backoff()
                .map_ok(v1_event)
                .inspect_ok(move |ev| store.apply(ev));
            spawn_watch(
                Kind::EndpointSlices,
                stream,
                health.clone(),
                listed.clone(),
                dirty.clone(),
            );
        }
        if !crds_installed(c).await {
            // Not a reason to stay unready: without them there are no
            // IPPools, and the watches pick them up once they are applied.
            tracing::warn!("strait's CRDs (IPPool, IPAMBlock, BGPConfiguration, BGPPeer, PodNetworking) are not installed: kubectl apply -f deploy/crds.yaml; pods asking for an IPPool get an error until then");
            let mut l = listed.lock().unwrap();
            for k in CRD_KINDS {
                l.insert(k.resource(), 0);
            }
        }
        let pools = watch_kind!(Kind::IpPools, Api::<IPPool>::all(c.clone()), all());
        let blocks = watch_kind!(Kind::IpamBlocks, Api::<IPAMBlock>::all(c.clone()), all());
        let bgp_configs = watch_kind!(
            Kind::BgpConfigurations,
            Api::<BGPConfiguration>::all(c.clone()),
            all()
        );
        let bgp_peers = watch_kind!(Kind::BgpPeers, Api::<BGPPeer>::all(c.clone()), all());
        let pod_networkings = watch_kind!(
            Kind::PodNetworkings,
            Api::<PodNetworking>::all(c.clone()),
            all()
        );
        if !secrets_readable(c).await {
            listed.lock().unwrap().insert(Kind::Secrets.resource(), 0);
        }
        let secrets = watch_kind!(
            Kind::Secrets,
            Api::<Secret>::namespaced(c.clone(), strait_model::bgp::SECRETS_NAMESPACE),
            all()
        );
        let stores = Stores {
            nodes,
            pods,
            services,
            slices,
            namespaces,
            policies,
            pools,
            blocks,
            bgp_configs,
            bgp_peers,
            pod_networkings,
            secrets,
        };
        // Every kind listed once, or no snapshot: a partial view would make
        // the agent release pods or drop services that exist.
        let mut waited = 0u64;
        loop {
            let missing = unlisted(&listed.lock().unwrap());
            if missing.is_empty() {
                break;
            }
            if waited > 0 && waited.is_multiple_of(50) {
                tracing::info!(?missing, "waiting for the first list of every kind");
            }
            waited += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        health.lock().unwrap().ready = true;
        dirty.take();
        let (tx, rx) = watch::channel(Arc::new(stores.snapshot(None, &[])));
        tokio::spawn(async move {
            loop {
                dirty.notify.notified().await;
                if tx.is_closed() {
                    break;
                }
                tokio::time::sleep(COALESCE).await;
                // Something changed (only events mark the snapshot dirty):
                // no deep comparison of 20 000 objects to find out, and the
                // kinds that did not change are the last snapshot's lists.
                let changed = dirty.take();
                let prev = tx.borrow().clone();
                tx.send_replace(Arc::new(stores.snapshot(Some(&prev), &changed)));
            }
        });
        Ok(KubeSource { rx, health, client })
    }
}

impl ClusterSource for KubeSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterSnapshot>> {
        self.rx.clone()
    }

    fn health(&self) -> SourceStatus {
        self.health.lock().unwrap().clone()
    }

    fn claim_block<'a>(
        &'a self,
        block: &'a strait_model::ippool::Block,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let api = Api::<IPAMBlock>::all(self.client.clone());
            match api.create(&Default::default(), &block.to_crd()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(anyhow::anyhow!(
                    "create IPAMBlock {}: {e}",
                    strait_model::ippool::block_name(&block.cidr)
                )),
            }
        })
    }

    fn release_block<'a>(
        &'a self,
        block: &'a strait_model::ippool::Block,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let name = strait_model::ippool::block_name(&block.cidr);
            let api = Api::<IPAMBlock>::all(self.client.clone());
            match api.delete(&name, &Default::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(anyhow::anyhow!("delete IPAMBlock {name}: {e}")),
            }
        })
    }
}

/// A client from a kubeconfig file, or from the in-cluster service account
/// (or $KUBECONFIG) when none is given.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<(kube::Client, String)> {
    let cfg = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| anyhow::anyhow!("read kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", p.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("no kubeconfig given and none found (in-cluster or $KUBECONFIG): {e}")
        })?,
    };
    let url = cfg.cluster_url.to_string();
    Ok((strait_kubeclient::client(cfg)?, url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use kube::runtime::watcher::Event;

    /// Kubernetes 1.20 sends namespaces without the metadata.name label.
    /// Labelled as they arrive, two snapshots share the object: a copy per
    /// snapshot made every snapshot a namespaces change, and the policy
    /// reconciler ran a pass for every endpoint change (7 071 passes while
    /// ctl-scale created services).
    #[test]
    fn namespaces_are_labelled_on_arrival_and_shared_by_snapshots() {
        let mut n: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "managedFields": [{"manager": "x"}]}
        }))
        .unwrap();
        slim_namespace(&mut n);
        assert!(n
            .metadata
            .managed_fields
            .as_ref()
            .is_none_or(|m| m.is_empty()));
        let stored = Arc::new(n);
        let snap = |ns: &Arc<Namespace>| {
            let mut s = ClusterSnapshot {
                namespaces: vec![ns.clone()],
                ..Default::default()
            };
            s.normalize();
            s
        };
        let (a, b) = (snap(&stored), snap(&stored));
        assert_eq!(
            a.namespaces[0].metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "shop"
        );
        assert!(Arc::ptr_eq(&a.namespaces[0], &stored));
        assert!(!a.kind_changed(&b, strait_model::cluster::Kind::Namespaces));
    }

    fn node(name: &str) -> Node {
        strait_model::cluster::test_node(name, Some("10.0.0.0/24"), Some("192.0.2.1"))
    }

    /// A watcher's events in the orders the apiserver produces them: a
    /// list, changes, an error, a relist (after "410 Gone") that drops an
    /// object deleted meanwhile. The store ends as the last list says; the
    /// list in progress never publishes half a view; the relist and the
    /// error are counted.
    #[tokio::test]
    async fn lists_changes_errors_and_relists_in_order() {
        let health: SharedHealth = Arc::new(Mutex::new(SourceStatus::default()));
        let listed = Arc::new(Mutex::new(BTreeMap::new()));
        let dirty = Arc::new(Changed::default());
        let notified = |d: &Changed| d.notify.notified().now_or_never().is_some();
        // A list in progress: nothing is marked dirty until it is done.
        let list = || {
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(node("a"))),
                Ok(Event::InitApply(node("b"))),
            ]
        };
        let (_, writer) = reflector::store::<Node>();
        drive_watch(
            Kind::Nodes,
            futures::stream::iter(list()).reflect(writer),
            health.clone(),
            listed.clone(),
            dirty.clone(),
        )
        .await;
        assert!(!notified(&dirty), "no snapshot of a list in progress");
        assert_eq!(unlisted(&listed.lock().unwrap()).len(), Kind::ALL.len());
        let gone = watcher::Error::WatchError(Box::new(
            kube::core::Status::failure("too old resource version", "Expired").with_code(410),
        ));
        let (reader, writer) = reflector::store::<Node>();
        let mut all = list();
        all.extend([
            Ok(Event::InitDone),
            Ok(Event::Apply(node("c"))),
            Ok(Event::Delete(node("a"))),
            Err(gone),
            Ok(Event::Init),
            Ok(Event::InitApply(node("c"))),
            Ok(Event::InitDone),
        ]);
        drive_watch(
            Kind::Nodes,
            futures::stream::iter(all).reflect(writer),
            health.clone(),
            listed.clone(),
            dirty.clone(),
        )
        .await;
        assert!(notified(&dirty));
        assert_eq!(dirty.take(), [Kind::Nodes]);
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["c"], "b was deleted while the watch was down");
        let h = health.lock().unwrap().clone();
        assert_eq!((h.relists, h.errors), (1, 1), "{h:?}");
        assert!(h.last_error.unwrap().contains("nodes"));
        let missing = unlisted(&listed.lock().unwrap());
        assert!(!missing.contains(&"nodes") && missing.contains(&"pods"));
    }

    /// A snapshot after an EndpointSlice event re-reads the slices only
    /// (sorted, as the compilers need), and hands on the last snapshot's
    /// other lists: the same allocations, not 10 000 services read and
    /// sorted again.
    #[test]
    fn a_snapshot_rereads_only_the_kinds_that_changed() {
        use kube::runtime::watcher::Event;
        macro_rules! stores {
            ($($f:ident),*) => {
                Stores { $($f: reflector::store().0,)* slices: SliceStore::default() }
            };
        }
        let (services, mut svc_writer) = reflector::store::<Service>();
        let mut st = stores!(
            nodes,
            pods,
            namespaces,
            policies,
            pools,
            blocks,
            bgp_configs,
            bgp_peers,
            pod_networkings,
            secrets,
            services
        );
        st.services = services;
        let svc = |name: &str| -> Service {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "namespace": "d"}}),
            )
            .unwrap()
        };
        let slice = |name: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "d",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "endpoints": []}))
            .unwrap()
        };
        for n in ["b", "a", "c"] {
            svc_writer.apply_watcher_event(&Event::Apply(svc(n)));
        }
        for n in ["z", "x", "y"] {
            st.slices.apply(&Event::Apply(slice(n)));
        }
        let first = st.snapshot(None, &[]);
        let names = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(
            names(
                first
                    .services
                    .iter()
                    .map(|s| s.metadata.name.clone())
                    .collect()
            ),
            ["a", "b", "c"]
        );
        // A slice event, and a service event the watch has not marked yet.
        st.slices.apply(&Event::Apply(slice("w")));
        svc_writer.apply_watcher_event(&Event::Apply(svc("d")));
        let next = st.snapshot(Some(&first), &[Kind::EndpointSlices]);
        assert_eq!(
            next.endpoint_slices
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["w", "x", "y", "z"]
        );
        assert!(!next.kind_changed(&first, Kind::Services));
        assert!(next.kind_changed(&first, Kind::EndpointSlices));
        let third = st.snapshot(Some(&next), &[Kind::Services]);
        assert_eq!(third.services.len(), 4, "services re-read once marked");
        assert!(!third.kind_changed(&next, Kind::EndpointSlices));
    }

    #[test]
    fn slice_store_swaps_a_relist_in_whole() {
        use kube::runtime::watcher::Event;
        let slice = |name: &str, ip: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip]}]}))
            .unwrap()
        };
        let names = |st: &SliceStore| {
            let mut v: Vec<String> = st.state().iter().map(|s| s.name.clone()).collect();
            v.sort();
            v
        };
        let st = SliceStore::default();
        st.apply(&Event::Init);
        st.apply(&Event::InitApply(slice("a", "198.19.0.2")));
        assert!(names(&st).is_empty(), "nothing until the list ends");
        st.apply(&Event::InitDone);
        st.apply(&Event::Apply(slice("b", "198.19.0.3")));
        assert_eq!(names(&st), ["a", "b"]);
        st.apply(&Event::Apply(slice("b", "198.19.0.4")));
        let b = st.state().into_iter().find(|s| s.name == "b").unwrap();
        assert_eq!(
            b.endpoints[0].ip.to_string(),
            "198.19.0.4",
            "an update replaces"
        );
        st.apply(&Event::Delete(slice("a", "198.19.0.2")));
        assert_eq!(names(&st), ["b"]);
        // A relist (after 410 Gone): b was deleted meanwhile, c created.
        st.apply(&Event::Init);
        st.apply(&Event::InitApply(slice("c", "198.19.0.5")));
        assert_eq!(names(&st), ["b"], "the old view stands during the list");
        st.apply(&Event::InitDone);
        assert_eq!(names(&st), ["c"]);
    }

    #[test]
    fn v1beta1_slices_become_v1() {
        let o: kube::api::DynamicObject = serde_json::from_str(
            r#"{"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
                "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["198.19.0.2"], "conditions": {"ready": true},
                               "topology": {"kubernetes.io/hostname": "node-a", "topology.kubernetes.io/zone": "z1"}}]}"#,
        )
        .unwrap();
        let s = super::slice_from_v1beta1(&o).unwrap();
        assert_eq!(s.address_type, "IPv4");
        let ep = &s.endpoints[0];
        assert_eq!(ep.addresses, vec!["198.19.0.2".to_string()]);
        assert_eq!(ep.node_name.as_deref(), Some("node-a"));
        assert_eq!(ep.zone.as_deref(), Some("z1"));
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    }
}
