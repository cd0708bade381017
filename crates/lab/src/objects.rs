//! The lab's cluster objects: the lab file's, plus what `strait lab apply`
//! added and minus what `strait lab delete` removed, kept in the lab's
//! directory. From them and the plan the lab publishes what a cluster's
//! components would write: Services with their cluster IPs and load
//! balancer status, Pods with their node and IP (kubelet), the
//! EndpointSlices of selector Services (the endpoints controller).

use crate::run::{add_pod, assign_external, netns_path, run_cni, wait_listening};
use crate::LabState;
use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Service};
use std::time::Duration;
use strait_model::cluster::{parse_manifests, ClusterObject};

fn path(st: &LabState) -> std::path::PathBuf {
    st.dir.join("objects.yaml")
}

fn value(o: &ClusterObject) -> Option<serde_json::Value> {
    match o {
        ClusterObject::Node(x) => serde_json::to_value(x).ok(),
        ClusterObject::Pod(x) => serde_json::to_value(x).ok(),
        ClusterObject::Service(x) => serde_json::to_value(x).ok(),
        ClusterObject::EndpointSlice(x) => serde_json::to_value(x).ok(),
        ClusterObject::NetworkPolicy(x) => serde_json::to_value(x).ok(),
        ClusterObject::Namespace(x) => serde_json::to_value(x).ok(),
        ClusterObject::IpPool(x) => serde_json::to_value(x).ok(),
        ClusterObject::BgpConfiguration(x) => serde_json::to_value(x).ok(),
        ClusterObject::BgpPeer(x) => serde_json::to_value(x).ok(),
        ClusterObject::PodNetworking(x) => serde_json::to_value(x).ok(),
        ClusterObject::Secret(x) => serde_json::to_value(x).ok(),
        // Blocks are the agents' to claim, not the lab file's.
        ClusterObject::IpamBlock(_) | ClusterObject::Other { .. } => None,
    }
}

/// (kind, namespace, name): what makes two objects the same one.
fn identity(v: &serde_json::Value) -> (String, String, String) {
    (
        v["kind"].as_str().unwrap_or_default().into(),
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .into(),
        v["metadata"]["name"].as_str().unwrap_or_default().into(),
    )
}

/// The lab file's objects plus, for each underlay subnet, its IPPool and,
/// for each rack, the BGPPeer that makes its
/// nodes peer with its router (`tor-<rack>`, and the Secret with its
/// password; a BGPPeer of that name in the file wins, so a test or a user
/// can shape the session).
pub fn with_generated(
    plan: &strait_model::lab::LabPlan,
    objects: &[ClusterObject],
) -> Vec<ClusterObject> {
    let mut out = objects.to_vec();
    // The underlay subnets' IPPools (an IPPool of that name in the file wins).
    for s in &plan.underlay {
        let given = objects.iter().any(
            |o| matches!(o, ClusterObject::IpPool(p) if p.metadata.name.as_deref() == Some(&s.name)),
        );
        if !given {
            out.push(strait_model::underlay::lab_pool(s));
        }
    }
    for r in &plan.racks {
        let name = format!("tor-{}", r.name);
        let given = objects.iter().any(
            |o| matches!(o, ClusterObject::BgpPeer(p) if p.metadata.name.as_deref() == Some(&name)),
        );
        if !given {
            out.extend(strait_model::racks::rack_objects(r));
        }
    }
    out
}

pub fn store(st: &LabState, objects: &[ClusterObject]) -> anyhow::Result<()> {
    let values: Vec<serde_json::Value> = objects.iter().filter_map(value).collect();
    crate::publish::write_yaml(&path(st), &values)
}

pub fn load(st: &LabState) -> anyhow::Result<Vec<ClusterObject>> {
    let text = std::fs::read_to_string(path(st)).unwrap_or_default();
    Ok(parse_manifests(&text)?)
}

fn key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Publish every set from the stored objects and the plan. Returns the
/// Services as published.
pub fn publish_all(st: &LabState) -> anyhow::Result<Vec<Service>> {
    let objects = load(st)?;
    let (mut pods, mut services, mut slices, mut policies, mut namespaces) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut pools, mut bgp_configs, mut bgp_peers, mut secrets) = (vec![], vec![], vec![], vec![]);
    let mut networkings = vec![];
    for o in &objects {
        match o {
            ClusterObject::Pod(p) => {
                let mut p: Pod = (**p).clone();
                if let Some(pp) = st.plan.pod(&key(&p.metadata)) {
                    p.spec.get_or_insert_with(Default::default).node_name = Some(pp.node.clone());
                    if let Some(ip) = st.pod_ip(pp) {
                        let status = p.status.get_or_insert_with(Default::default);
                        status.pod_ip = Some(ip.to_string());
                        status.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
                            ip: ip.to_string(),
                        }]);
                        status.phase = Some("Running".into());
                    }
                }
                pods.push(p);
            }
            ClusterObject::Service(s) => {
                let mut s: Service = (**s).clone();
                if let Some(sp) = st.plan.service(&key(&s.metadata)) {
                    s.spec.get_or_insert_with(Default::default).cluster_ip =
                        Some(sp.cluster_ip.to_string());
                }
                assign_external(&mut s, services.len());
                services.push(s);
            }
            ClusterObject::EndpointSlice(e) => slices.push((**e).clone()),
            ClusterObject::NetworkPolicy(n) => policies.push((**n).clone()),
            ClusterObject::Namespace(n) => namespaces.push((**n).clone()),
            ClusterObject::IpPool(p) => pools.push((**p).clone()),
            ClusterObject::BgpConfiguration(c) => bgp_configs.push((**c).clone()),
            ClusterObject::BgpPeer(p) => bgp_peers.push((**p).clone()),
            ClusterObject::PodNetworking(p) => networkings.push((**p).clone()),
            ClusterObject::Secret(s) => secrets.push((**s).clone()),
            ClusterObject::Node(_) | ClusterObject::IpamBlock(_) | ClusterObject::Other { .. } => {}
        }
    }
    use crate::publish::put;
    // Pools before pods: a pod's annotation may name one.
    put(st, "ippools", &pools)?;
    // Secrets before the peers whose passwords they hold.
    put(st, "secrets", &secrets)?;
    put(st, "bgpconfigurations", &bgp_configs)?;
    put(st, "bgppeers", &bgp_peers)?;
    // Network planes before the pods they select.
    put(st, "podnetworkings", &networkings)?;
    put(st, "namespaces", &namespaces)?;
    put(st, "services", &services)?;
    put(st, "user-endpointslices", &slices)?;
    put(st, "networkpolicies", &policies)?;
    put(st, "pods", &pods)?;
    let derived = strait_model::services::endpoint_slices_for(&services, &pods);
    put(st, "endpointslices", &derived)?;
    crate::cloud::publish_slbs(st, &derived)?;
    Ok(services)
}

fn save_plan(st: &LabState) -> anyhow::Result<()> {
    std::fs::write(
        st.dir.join("plan.json"),
        serde_json::to_vec_pretty(&st.plan)?,
    )?;
    Ok(())
}

/// `strait lab apply`: add or change objects in a running lab. New pods are
/// wired (CNI ADD, as kubelet would) and get their status; new services a
/// cluster IP; then everything is published.
pub fn apply(st: &mut LabState, bins: &crate::run::Binaries, text: &str) -> anyhow::Result<String> {
    let new = parse_manifests(text)?;
    // Validate (and plan) before any change.
    let (pods, svcs) = st.plan.add(&new)?;
    save_plan(st)?;
    let mut stored: Vec<serde_json::Value> = load(st)?.iter().filter_map(value).collect();
    for o in &new {
        if let Some(v) = value(o) {
            let id = identity(&v);
            stored.retain(|s| identity(s) != id);
            stored.push(v);
        }
    }
    crate::publish::write_yaml(&path(st), &stored)?;
    // The new pods exist before they are wired, as in a cluster (their
    // annotations may pick an IPPool).
    publish_all(st)?;
    for p in &pods {
        add_pod(st, bins, p).with_context(|| format!("wire pod {}/{}", p.namespace, p.name))?;
    }
    for p in &pods {
        wait_listening(&p.netns, Duration::from_secs(5));
    }
    publish_all(st)?;
    Ok(format!(
        "applied {} objects: {} new pods ({}), {} new services ({})",
        new.len(),
        pods.len(),
        pods.iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect::<Vec<_>>()
            .join(", "),
        svcs.len(),
        svcs.iter()
            .map(|s| format!("{}/{} {}", s.namespace, s.name, s.cluster_ip))
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// `strait lab delete`: remove objects from a running lab. A removed pod is
/// unwired (CNI DEL, as kubelet would) and its namespace deleted.
pub fn delete(
    st: &mut LabState,
    bins: &crate::run::Binaries,
    text: &str,
) -> anyhow::Result<String> {
    let gone = parse_manifests(text)?;
    let ids: Vec<_> = gone
        .iter()
        .filter_map(value)
        .map(|v| identity(&v))
        .collect();
    let mut stored: Vec<serde_json::Value> = load(st)?.iter().filter_map(value).collect();
    stored.retain(|s| !ids.contains(&identity(s)));
    crate::publish::write_yaml(&path(st), &stored)?;
    // As a cluster drains a pod: out of every service first, then stopped.
    publish_all(st)?;
    crate::run::wait_services_programmed(st, Duration::from_secs(10))?;
    let mut removed = vec![];
    for (kind, ns, name) in &ids {
        let k = format!("{ns}/{name}");
        match kind.as_str() {
            "Pod" => {
                let Some(p) = st.plan.pod(&k).cloned() else {
                    continue;
                };
                if let Some(pid) = LabState::read_pid(&st.pod_pid(&p)) {
                    crate::cmd::stop(&[pid], Duration::from_secs(1));
                }
                let node = st.plan.node(&p.node).context("pod's node")?.clone();
                let conf = crate::run::cni_conf(st, &node);
                run_cni(
                    bins,
                    &node.netns,
                    &conf,
                    "DEL",
                    &st.container_id(&p),
                    netns_path(&p.netns).to_str().unwrap(),
                    &p,
                )?;
                crate::cmd::ip(&["netns", "del", &p.netns])?;
                let _ = std::fs::remove_file(st.pod_result(&p));
                st.plan
                    .pods
                    .retain(|x| !(x.namespace == p.namespace && x.name == p.name));
                removed.push(format!("pod {k}"));
            }
            "Service" => {
                st.plan
                    .services
                    .retain(|s| !(&s.namespace == ns && &s.name == name));
                removed.push(format!("service {k}"));
            }
            other => removed.push(format!("{other} {k}")),
        }
    }
    save_plan(st)?;
    publish_all(st)?;
    Ok(format!("deleted {}", removed.join(", ")))
}
