//! How the lab puts cluster objects where the agents read them: files in the
//! manifests directory, the lab's kube-apiserver, or strait's etcd
//! datastore (one JSON value per object, `strait_model::datastore`'s key
//! layout; status written with the object). Objects are published
//! in named sets ("nodes", "pods", …); publishing a set again makes the
//! source hold exactly that set (objects that left it are deleted).
//!
//! Through the API the lab plays the parts a cluster has: kubelet (Node
//! status, Pod status with its IPs), the endpoints controller (the
//! EndpointSlices of selector Services, as `discovery.k8s.io/v1beta1` where
//! the apiserver has no v1), and the cloud (LoadBalancer status).

use crate::LabState;
use anyhow::{bail, Context};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;
use std::path::Path;
use strait_model::lab::ControlPlane;

/// Run `f` with an admin client, on a thread inside the control-plane
/// namespace (the apiserver is reachable only on the lab's fabric).
pub fn admin<F, Fut, T>(st: &LabState, f: F) -> anyhow::Result<T>
where
    F: FnOnce(kube::Client) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send,
{
    client_as(st, &crate::control_plane::admin_kubeconfig(st), f)
}

/// The same with another kubeconfig (the agents', say).
pub fn client_as<F, Fut, T>(st: &LabState, kubeconfig: &Path, f: F) -> anyhow::Result<T>
where
    F: FnOnce(kube::Client) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send,
{
    let ns = strait_netlink::NetnsFile::open(&crate::control_plane::netns(st))?;
    let kc = kubeconfig.to_path_buf();
    strait_netlink::in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let cfg = kube::config::Kubeconfig::read_from(&kc)
                .with_context(|| format!("read {}", kc.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(cfg, &Default::default()).await?;
            f(strait_kubeclient::client(cfg)?).await
        })
    })?
}

/// The API resource of an object, and whether it is namespaced.
fn resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let (plural, namespaced) = match kind {
        "Node" => ("nodes", false),
        "Namespace" => ("namespaces", false),
        "Pod" => ("pods", true),
        "Service" => ("services", true),
        "EndpointSlice" => ("endpointslices", true),
        "NetworkPolicy" => ("networkpolicies", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "DaemonSet" => ("daemonsets", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "Secret" => ("secrets", true),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "IPPool" => ("ippools", false),
        "IPAMBlock" => ("ipamblocks", false),
        "BGPConfiguration" => ("bgpconfigurations", false),
        "BGPPeer" => ("bgppeers", false),
        "PodNetworking" => ("podnetworkings", false),
        other => bail!("the lab cannot publish {api_version} {other} through the API"),
    };
    Ok((
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        },
        namespaced,
    ))
}

/// A v1 EndpointSlice for an apiserver that serves only v1beta1.
pub fn slice_to_v1beta1(mut v: Value) -> Value {
    v["apiVersion"] = "discovery.k8s.io/v1beta1".into();
    if let Some(eps) = v.get_mut("endpoints").and_then(|e| e.as_array_mut()) {
        for ep in eps {
            let mut topo = serde_json::Map::new();
            if let Some(m) = ep.as_object_mut() {
                if let Some(n) = m.remove("nodeName") {
                    topo.insert("kubernetes.io/hostname".into(), n);
                }
                if let Some(z) = m.remove("zone") {
                    topo.insert("topology.kubernetes.io/zone".into(), z);
                }
                m.remove("hints");
                if !topo.is_empty() {
                    m.insert("topology".into(), Value::Object(topo));
                }
            }
        }
    }
    v
}

/// What a real cluster would add before accepting the object: an image
/// for the lab's echo containers, and the port protocols server-side apply
/// needs as list keys (Kubernetes before 1.22 does not default them there).
fn fill_in(v: &mut Value) {
    fn protocols(ports: &mut Value) {
        for p in ports.as_array_mut().into_iter().flatten() {
            if p.get("protocol").is_none_or(|x| x.is_null()) {
                p["protocol"] = "TCP".into();
            }
        }
    }
    match v["kind"].as_str() {
        Some("Pod") => {
            for c in v["spec"]["containers"].as_array_mut().into_iter().flatten() {
                if c.get("image").is_none() {
                    c["image"] = "strait/echo".into();
                }
                protocols(&mut c["ports"]);
            }
        }
        Some("Service") => protocols(&mut v["spec"]["ports"]),
        Some("EndpointSlice") => protocols(&mut v["ports"]),
        _ => {}
    }
}

/// (apiVersion, kind, namespace, name) of a published object.
type Key = (String, String, String, String);

fn key_of(v: &Value, namespaced: bool) -> Key {
    (
        v["apiVersion"].as_str().unwrap_or_default().to_string(),
        v["kind"].as_str().unwrap_or_default().to_string(),
        if namespaced {
            v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        },
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn api_for(c: &kube::Client, ar: &ApiResource, namespaced: bool, ns: &str) -> Api<DynamicObject> {
    if namespaced {
        Api::namespaced_with(c.clone(), ns, ar)
    } else {
        Api::all_with(c.clone(), ar)
    }
}

/// Apply `objects` (server-side apply, then their status), delete what the
/// set held before and no longer does. Returns the set's keys.
async fn apply_set(
    c: kube::Client,
    objects: Vec<Value>,
    before: Vec<Key>,
) -> anyhow::Result<Vec<Key>> {
    let v1_slices = c
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .is_ok_and(|r| r.resources.iter().any(|r| r.name == "endpointslices"));
    let pp = PatchParams::apply("strait-lab").force();
    // Namespaces the objects live in, as kubectl would need them first.
    let mut namespaces: Vec<String> = objects
        .iter()
        .filter_map(|v| v["metadata"]["namespace"].as_str())
        .filter(|n| !matches!(*n, "default" | "kube-system" | "kube-public"))
        .map(String::from)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    // Created when missing, never applied: an apply by the same field
    // manager would take away the labels a published Namespace gave it.
    for n in namespaces {
        let obj: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": n}}))?;
        match ns_api.create(&Default::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("create namespace {n}")),
        }
    }
    // Checked and keyed first (cheap), then sent 16 at a time.
    let mut prepared = vec![];
    for mut v in objects {
        if v["kind"] == "EndpointSlice" && !v1_slices {
            v = slice_to_v1beta1(v);
        }
        fill_in(&mut v);
        let (ar, namespaced) = resource(
            v["apiVersion"].as_str().unwrap_or_default(),
            v["kind"].as_str().unwrap_or_default(),
        )?;
        if namespaced && v["metadata"]["namespace"].is_null() {
            v["metadata"]["namespace"] = "default".into();
        }
        let key = key_of(&v, namespaced);
        let status = v.as_object_mut().and_then(|m| m.remove("status"));
        prepared.push((key, ar, namespaced, v, status));
    }
    let keys: Vec<Key> = prepared.iter().map(|p| p.0.clone()).collect();
    use futures::StreamExt;
    let applied: Vec<anyhow::Result<()>> = futures::stream::iter(prepared.into_iter().map(
        |(key, ar, namespaced, v, status)| {
            let (c, pp) = (c.clone(), pp.clone());
            async move {
                let api = api_for(&c, &ar, namespaced, &key.2);
                api.patch(&key.3, &pp, &Patch::Apply(&v))
                    .await
                    .with_context(|| format!("apply {} {}/{}", key.1, key.2, key.3))?;
                if let Some(status) = status.filter(|s| !s.is_null()) {
                    api.patch_status(
                        &key.3,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"status": status})),
                    )
                    .await
                    .with_context(|| format!("status of {} {}/{}", key.1, key.2, key.3))?;
                }
                Ok(())
            }
        },
    ))
    .buffer_unordered(16)
    .collect()
    .await;
    applied.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let keep: std::collections::HashSet<&Key> = keys.iter().collect();
    let gone: Vec<Key> = before.into_iter().filter(|k| !keep.contains(k)).collect();
    let deleted: Vec<anyhow::Result<()>> = futures::stream::iter(gone.into_iter().map(|k| {
        let c = c.clone();
        async move {
            let (ar, namespaced) = resource(&k.0, &k.1)?;
            match api_for(&c, &ar, namespaced, &k.2)
                .delete(&k.3, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e).with_context(|| format!("delete {} {}/{}", k.1, k.2, k.3)),
            }
        }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    deleted.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(keys)
}

/// Where the lab's published objects can be read back as manifests: the
/// files source's directory, or a mirror of what went to the apiserver.
pub fn objects_dir(st: &LabState) -> std::path::PathBuf {
    match st.plan.control_plane {
        ControlPlane::Files => st.manifests_dir(),
        ControlPlane::KubeApiserver | ControlPlane::Etcd => st.dir.join("published"),
    }
}

/// Write `objects` to the etcd datastore, delete the keys the set held
/// before and no longer does. Returns the set's keys.
async fn etcd_set(
    c: strait_etcd::Client,
    objects: Vec<Value>,
    before: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt;
    let prefix = strait_model::datastore::DEFAULT_PREFIX;
    let mut prepared = vec![];
    for mut v in objects {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = v["metadata"]["namespace"].as_str().map(String::from);
        let key = strait_model::datastore::key_of(prefix, &kind, ns.as_deref(), &name)
            .with_context(|| format!("the etcd datastore holds no {kind} ({name})"))?;
        if strait_model::datastore::namespaced(&kind) == Some(true) && ns.is_none() {
            v["metadata"]["namespace"] = "default".into();
        }
        prepared.push((key, serde_json::to_vec(&v)?));
    }
    let keys: Vec<String> = prepared.iter().map(|p| p.0.clone()).collect();
    let put: Vec<anyhow::Result<i64>> =
        futures::stream::iter(prepared.into_iter().map(|(k, v)| {
            let c = c.clone();
            async move {
                c.put(k.as_bytes(), &v)
                    .await
                    .with_context(|| format!("put {k}"))
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    put.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let keep: std::collections::HashSet<&String> = keys.iter().collect();
    for k in before.iter().filter(|k| !keep.contains(k)) {
        c.delete(k.as_bytes())
            .await
            .with_context(|| format!("delete {k}"))?;
    }
    Ok(keys)
}

fn record(st: &LabState, set: &str) -> std::path::PathBuf {
    st.dir.join("published").join(format!("{set}.json"))
}

/// Make the cluster source hold exactly `objects` under `set`.
pub fn put<T: serde::Serialize>(st: &LabState, set: &str, objects: &[T]) -> anyhow::Result<()> {
    let values: Vec<Value> = objects
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    match st.plan.control_plane {
        ControlPlane::Files => write_yaml(&st.manifests_dir().join(format!("{set}.yaml")), &values),
        ControlPlane::KubeApiserver => {
            let rec = record(st, set);
            let before: Vec<Key> = std::fs::read(&rec)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let mirror = values.clone();
            let keys = admin(st, move |c| apply_set(c, values, before))?;
            std::fs::create_dir_all(rec.parent().unwrap())?;
            std::fs::write(&rec, serde_json::to_vec(&keys)?)?;
            // A copy of what was published, as the files source would hold it.
            write_yaml(&objects_dir(st).join(format!("{set}.yaml")), &mirror)
        }
        ControlPlane::Etcd => {
            let rec = record(st, set);
            let before: Vec<String> = std::fs::read(&rec)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let mirror = values.clone();
            let keys = crate::control_plane::with_etcd(st, move |c| etcd_set(c, values, before))?;
            std::fs::create_dir_all(rec.parent().unwrap())?;
            std::fs::write(&rec, serde_json::to_vec(&keys)?)?;
            write_yaml(&objects_dir(st).join(format!("{set}.yaml")), &mirror)
        }
    }
}

pub fn write_yaml<T: serde::Serialize>(path: &Path, objs: &[T]) -> anyhow::Result<()> {
    let mut text = String::new();
    for o in objs {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(o)?);
    }
    // Write then rename, so an agent never reads half a file.
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The manifests an operator applies (deploy/strait.yaml).
pub const DEPLOY: &str = include_str!("../../../deploy/strait.yaml");

/// Every object of deploy/strait.yaml, in order.
pub fn deploy_objects() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(DEPLOY)
        .filter_map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).ok()?).ok())
        .filter(|v| !v.is_null())
        .collect()
}

/// The agent's ClusterRole exactly as deploy/ ships it, bound to the lab
/// agents' token user (a real cluster binds the ServiceAccount).
pub fn agent_rbac() -> Vec<Value> {
    let deploy = deploy_objects();
    let find = |kind: &str| {
        deploy
            .iter()
            .find(|v| v["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("deploy/strait.yaml has the agent's {kind}"))
    };
    let secrets_ns = strait_model::bgp::SECRETS_NAMESPACE;
    vec![
        // The one Role in the secrets namespace (BGP passwords); the
        // namespace is created with it.
        find("Role"),
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "strait-agent-lab", "namespace": secrets_ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "strait-agent-secrets"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "strait-agent"}]
        }),
        find("ClusterRole"),
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "strait-agent-lab"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "strait-agent"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "strait-agent"}]
        }),
    ]
}

/// Server-side dry run of every object (validation and admission, nothing
/// stored). Returns one line per object that the apiserver refused.
pub fn dry_run(st: &LabState, objects: Vec<Value>) -> anyhow::Result<Vec<String>> {
    admin(st, |c| async move {
        let mut pp = PatchParams::apply("strait-lab").force();
        pp.dry_run = true;
        let mut refused = vec![];
        for v in objects {
            let (ar, namespaced) = resource(
                v["apiVersion"].as_str().unwrap_or_default(),
                v["kind"].as_str().unwrap_or_default(),
            )?;
            let key = key_of(&v, namespaced);
            if let Err(e) = api_for(&c, &ar, namespaced, &key.2)
                .patch(&key.3, &pp, &Patch::Apply(&v))
                .await
            {
                refused.push(format!("{} {}/{}: {e}", key.1, key.2, key.3));
            }
        }
        Ok(refused)
    })
}

pub fn bootstrap_rbac(st: &LabState) -> anyhow::Result<()> {
    put(st, "rbac", &agent_rbac())
}

/// strait's CRDs (deploy/crds.yaml), applied and waited for until served.
pub fn install_crds(st: &LabState) -> anyhow::Result<()> {
    put(st, "crds", &strait_model::ippool::crds())?;
    admin(st, |c| async move {
        for _ in 0..100 {
            let served = c
                .list_api_group_resources(strait_model::ippool::API_VERSION)
                .await
                .is_ok_and(|r| {
                    [
                        "ipamblocks",
                        "ippools",
                        "bgpconfigurations",
                        "bgppeers",
                        "podnetworkings",
                    ]
                    .iter()
                    .all(|k| r.resources.iter().any(|x| x.name == *k))
                });
            if served {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bail!("strait's CRDs were applied but are not served after 10 s")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn v1_slices_go_to_v1beta1_with_topology() {
        let v = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1", "zone": "z"}]});
        let b = super::slice_to_v1beta1(v);
        assert_eq!(b["apiVersion"], "discovery.k8s.io/v1beta1");
        assert_eq!(
            b["endpoints"][0]["topology"]["kubernetes.io/hostname"],
            "n1"
        );
        assert_eq!(
            b["endpoints"][0]["topology"]["topology.kubernetes.io/zone"],
            "z"
        );
        assert!(b["endpoints"][0].get("nodeName").is_none());
    }
}
