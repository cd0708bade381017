//! The service table: Services and EndpointSlices compiled into frontends
//! (VIP, port, protocol) and their backends, with each backend's state.
//! Bad objects are reported and left out rather than half-applied. Also the
//! endpoints controller the lab needs in place of kube-controller-manager:
//! EndpointSlices from a Service's selector and the pods' addresses, with
//! named target ports resolved against the pods' container ports.

use crate::cluster::ClusterSnapshot;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub use crate::slice::SERVICE_NAME_LABEL;
use crate::slice::{AddressType, Slice};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
    fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// The source address of a hairpinned service connection (a pod reaching
/// itself through a service), in both service backends: a pod would drop a
/// packet from its own address. Link-local, never a real peer; matches
/// HAIRPIN_IP4 in bpf/lib/common.h.
pub const HAIRPIN_IP4: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Ready: gets new connections.
    Active,
    /// Serving but terminating: keeps its connections, gets no new ones.
    Terminating,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub state: BackendState,
    /// The pod behind it, when the slice names one.
    pub pod: Option<String>,
    /// The node it runs on, when the slice says.
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Stable id of (namespace, name, port name): session affinity keys on it.
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub frontend: Frontend,
    pub backends: Vec<Backend>,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_secs: Option<u32>,
    /// Reached from outside the cluster (NodePort, ExternalIP, LoadBalancer).
    #[serde(default)]
    pub external: bool,
    /// externalTrafficPolicy Local: only this node's backends, and the
    /// client's source address is preserved.
    #[serde(default)]
    pub local_only: bool,
}

impl ServiceEntry {
    pub fn active(&self) -> impl Iterator<Item = &Backend> {
        self.backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
    }
}

/// A healthCheckNodePort to answer on this node (externalTrafficPolicy
/// Local LoadBalancer services): healthy while the node has a local backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub port: u16,
    pub service: String,
    pub local_endpoints: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// Shared: an unchanged service's entries are the same allocations from
    /// one compilation to the next, so consumers can skip them by pointer.
    pub entries: Vec<std::sync::Arc<ServiceEntry>>,
    pub health_checks: Vec<HealthCheck>,
    /// Objects left out, and why (for the log).
    pub problems: Vec<String>,
}

fn service_id(ns: &str, name: &str, port: &str) -> u32 {
    // FNV-1a: stable across runs and agents.
    let mut h: u32 = 0x811c9dc5;
    for b in ns
        .bytes()
        .chain([b'/'])
        .chain(name.bytes())
        .chain([b'/'])
        .chain(port.bytes())
    {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h.max(1)
}

fn valid_port(p: i32) -> Option<u16> {
    (1..=65535).contains(&p).then_some(p as u16)
}

fn key(m: &ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_else(|| "default".into()),
        m.name.clone().unwrap_or_default(),
    )
}

/// Backends per (namespace, service name, slice port name), from the
/// EndpointSlices. Malformed slices are left out whole.
fn slice_backends(
    slices: &[std::sync::Arc<Slice>],
    problems: &mut Vec<String>,
) -> BTreeMap<(String, String, String), Vec<Backend>> {
    let mut out: BTreeMap<(String, String, String), Vec<Backend>> = BTreeMap::new();
    'slices: for s in slices {
        let (ns, sname) = (&s.namespace, &s.name);
        let Some(svc) = &s.service else {
            continue;
        };
        if let Some(p) = &s.problem {
            problems.push(format!("EndpointSlice {ns}/{sname}: {p}"));
            continue;
        }
        // Services are IPv4 only for now.
        if s.address_type != AddressType::V4 {
            continue;
        }
        let mut ports = vec![];
        for p in &s.ports {
            let Some(port) = p.port.and_then(valid_port) else {
                problems.push(format!(
                    "EndpointSlice {ns}/{sname}: port {:?} is not 1-65535; slice ignored",
                    p.port
                ));
                continue 'slices;
            };
            ports.push((&p.name, port));
        }
        let mut eps = vec![];
        for e in &s.endpoints {
            // Unset ready means ready (API semantics); unset serving follows ready.
            let ready = e.ready.unwrap_or(true);
            let serving = e.serving.unwrap_or(ready);
            let terminating = e.terminating.unwrap_or(false);
            let state = if ready && !terminating {
                BackendState::Active
            } else if serving {
                BackendState::Terminating
            } else {
                continue;
            };
            let IpAddr::V4(ip) = e.ip else {
                continue;
            };
            eps.push((ip, state, e.pod.as_deref(), e.node.as_deref()));
        }
        for (pname, port) in ports {
            let v = out
                .entry((ns.clone(), svc.clone(), pname.clone()))
                .or_default();
            for &(ip, state, pod, node) in &eps {
                v.push(Backend {
                    node: node.map(String::from),
                    ip,
                    port,
                    state,
                    pod: pod.map(String::from),
                });
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
    }
    out
}

/// The node a table is compiled for: its external frontends (NodePorts on
/// its IP) and externalTrafficPolicy Local depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Compile the cluster's Services and EndpointSlices into the table of
/// cluster-internal frontends (cluster IPs).
pub fn compile(snap: &ClusterSnapshot) -> ServiceTable {
    compile_for_node(snap, None)
}

/// Cluster IPs, plus, for `node`, the frontends reached from outside:
/// externalIPs, LoadBalancer ingress IPs and NodePorts on the node's IP.
pub fn compile_for_node(snap: &ClusterSnapshot, node: Option<&ThisNode>) -> ServiceTable {
    let mut t = ServiceTable::default();
    let backends = slice_backends(&snap.endpoint_slices, &mut t.problems);
    'svcs: for svc in &snap.services {
        let (ns, name) = key(&svc.metadata);
        let Some(spec) = &svc.spec else { continue };
        let Some(cip) = spec.cluster_ip.as_deref() else {
            t.problems
                .push(format!("Service {ns}/{name}: no spec.clusterIP; left out"));
            continue;
        };
        if cip == "None" || cip.is_empty() {
            continue; // headless: no virtual IP to program
        }
        let Ok(vip) = cip.parse::<Ipv4Addr>() else {
            t.problems.push(format!(
                "Service {ns}/{name}: clusterIP {cip:?} is not IPv4; left out"
            ));
            continue;
        };
        let affinity_secs = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800)
                .clamp(1, 86400) as u32
        });
        let mut entries = vec![];
        for p in spec.ports.iter().flatten() {
            let Some(port) = valid_port(p.port) else {
                t.problems.push(format!("Service {ns}/{name}: port {} is not 1-65535; the service is left out unchanged", p.port));
                continue 'svcs;
            };
            let Some(proto) = Proto::parse(p.protocol.as_deref()) else {
                t.problems.push(format!("Service {ns}/{name}: protocol {:?} is not supported (TCP, UDP); the service is left out", p.protocol));
                continue 'svcs;
            };
            let pname = p.name.clone().unwrap_or_default();
            let all = backends
                .get(&(ns.clone(), name.clone(), pname.clone()))
                .cloned()
                .unwrap_or_default();
            let base = ServiceEntry {
                id: service_id(&ns, &name, &pname),
                namespace: ns.clone(),
                name: name.clone(),
                backends: all.clone(),
                port_name: pname,
                frontend: Frontend {
                    ip: vip,
                    port,
                    proto,
                },
                affinity_secs,
                external: false,
                local_only: false,
            };
            if let Some(me) = node {
                let local_only = spec.external_traffic_policy.as_deref() == Some("Local");
                let ext_backends: Vec<Backend> = if local_only {
                    all.iter()
                        .filter(|b| b.node.as_deref() == Some(me.name.as_str()))
                        .cloned()
                        .collect()
                } else {
                    all.clone()
                };
                let mut ext_ips: Vec<Ipv4Addr> = spec
                    .external_ips
                    .iter()
                    .flatten()
                    .filter_map(|s| s.parse().ok())
                    .collect();
                if spec.type_.as_deref() == Some("LoadBalancer") {
                    let ingress = svc
                        .status
                        .as_ref()
                        .and_then(|s| s.load_balancer.as_ref())
                        .and_then(|l| l.ingress.as_ref());
                    ext_ips.extend(
                        ingress
                            .iter()
                            .copied()
                            .flatten()
                            .filter_map(|i| i.ip.as_ref()?.parse::<Ipv4Addr>().ok()),
                    );
                }
                let mut fronts: Vec<Frontend> = ext_ips
                    .into_iter()
                    .map(|ip| Frontend { ip, port, proto })
                    .collect();
                if matches!(
                    spec.type_.as_deref(),
                    Some("NodePort") | Some("LoadBalancer")
                ) {
                    if let Some(np) = p.node_port.and_then(valid_port) {
                        fronts.push(Frontend {
                            ip: me.ip,
                            port: np,
                            proto,
                        });
                    }
                }
                for f in fronts {
                    entries.push(ServiceEntry {
                        frontend: f,
                        backends: ext_backends.clone(),
                        external: true,
                        local_only,
                        ..base.clone()
                    });
                }
                if local_only && spec.type_.as_deref() == Some("LoadBalancer") {
                    if let Some(hc) = spec.health_check_node_port.and_then(valid_port) {
                        if !t.health_checks.iter().any(|h| h.port == hc) {
                            t.health_checks.push(HealthCheck {
                                port: hc,
                                service: format!("{ns}/{name}"),
                                local_endpoints: ext_backends
                                    .iter()
                                    .filter(|b| b.state == BackendState::Active)
                                    .count(),
                            });
                        }
                    }
                }
            }
            entries.push(base);
        }
        t.entries
            .extend(entries.into_iter().map(std::sync::Arc::new));
    }
    t.entries.sort_by_key(|e| e.frontend);
    t
}

mod incremental;
pub use incremental::IncrementalCompiler;

/// The endpoints controller: an EndpointSlice per selector Service, from the
/// pods that match it and have an address. A pod with a deletionTimestamp is
/// terminating (serving, not ready).
pub fn endpoint_slices_for(services: &[Service], pods: &[Pod]) -> Vec<EndpointSlice> {
    let mut out = vec![];
    for svc in services {
        let (ns, name) = key(&svc.metadata);
        let Some(spec) = &svc.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let members: Vec<&Pod> = pods
            .iter()
            .filter(|p| key(&p.metadata).0 == ns)
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            .collect();
        // One slice per service port, so named target ports can resolve
        // differently per pod without mixing.
        for sp in spec.ports.iter().flatten() {
            let pname = sp.name.clone().unwrap_or_default();
            let mut by_port: BTreeMap<i32, Vec<Endpoint>> = BTreeMap::new();
            for p in &members {
                let target = match &sp.target_port {
                    None => Some(sp.port),
                    Some(IntOrString::Int(n)) => Some(*n),
                    Some(IntOrString::String(s)) => p
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter())
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                        .map(|cp| cp.container_port),
                };
                let Some(target) = target else { continue };
                let terminating = p.metadata.deletion_timestamp.is_some();
                by_port.entry(target).or_default().push(Endpoint {
                    addresses: vec![p.status.as_ref().unwrap().pod_ip.clone().unwrap()],
                    conditions: Some(EndpointConditions {
                        ready: Some(!terminating),
                        serving: Some(true),
                        terminating: Some(terminating),
                    }),
                    node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Pod".into()),
                        name: p.metadata.name.clone(),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            for (i, (port, endpoints)) in by_port.into_iter().enumerate() {
                let slice_name = format!(
                    "{name}-{}{}",
                    if pname.is_empty() { "port" } else { &pname },
                    if i > 0 {
                        format!("-{i}")
                    } else {
                        String::new()
                    }
                );
                out.push(EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(slice_name),
                        namespace: Some(ns.clone()),
                        labels: Some([(SERVICE_NAME_LABEL.to_string(), name.clone())].into()),
                        ..Default::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints,
                    ports: Some(vec![EndpointPort {
                        name: Some(pname.clone()),
                        port: Some(port),
                        protocol: sp.protocol.clone().or(Some("TCP".into())),
                        ..Default::default()
                    }]),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{parse_manifests, ClusterObject};

    fn snap(y: &str) -> ClusterSnapshot {
        let mut s = ClusterSnapshot::default();
        for o in parse_manifests(y).unwrap() {
            s.add(o);
        }
        s
    }

    const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.18.64.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
"#;

    fn pod(name: &str, ip: &str, deleting: bool) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}{}}}\nspec: {{containers: [{{name: c, ports: [{{name: web, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n",
            if deleting { ", deletionTimestamp: '2026-01-01T00:00:00Z'" } else { "" }
        )
    }

    #[test]
    fn endpoints_controller_resolves_named_ports_and_terminating_pods() {
        let s = snap(&format!("{SVC}{}{}{}", pod("a", "10.0.0.1", false), pod("b", "10.0.0.2", true), "---\napiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: default, labels: {app: db}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.9}\n"));
        fn owned<T: Clone>(v: &[std::sync::Arc<T>]) -> Vec<T> {
            v.iter().map(|x| (**x).clone()).collect()
        }
        let slices = endpoint_slices_for(&owned(&s.services), &owned(&s.pods));
        assert_eq!(slices.len(), 2);
        let mut s2 = s.clone();
        s2.endpoint_slices = slices
            .into_iter()
            .map(|s| std::sync::Arc::new(crate::slice::Slice::from_k8s(&s)))
            .collect();
        let t = compile(&s2);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.entries.len(), 2);
        let http = t.entries.iter().find(|e| e.port_name == "http").unwrap();
        assert_eq!(
            http.frontend,
            Frontend {
                ip: "198.18.64.10".parse().unwrap(),
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(
            http.backends,
            vec![
                Backend {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 8080,
                    state: BackendState::Active,
                    pod: Some("a".into()),
                    node: None,
                },
                Backend {
                    ip: "10.0.0.2".parse().unwrap(),
                    port: 8080,
                    state: BackendState::Terminating,
                    pod: Some("b".into()),
                    node: None,
                },
            ]
        );
        assert_eq!(http.active().count(), 1);
        let dns = t.entries.iter().find(|e| e.port_name == "dns").unwrap();
        assert_eq!(
            (dns.frontend.proto, dns.backends[0].port),
            (Proto::Udp, 5353)
        );
        assert_ne!(http.id, dns.id);
    }

    #[test]
    fn conditions_follow_the_api_defaults() {
        let s = snap(
            r#"
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 198.18.64.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false, serving: false}}
"#,
        );
        let t = compile(&s);
        let b = &t.entries[0].backends;
        assert_eq!(b.len(), 2, "not-serving endpoints are left out");
        assert_eq!(
            (b[0].state, b[1].state),
            (BackendState::Active, BackendState::Terminating)
        );
    }

    #[test]
    fn bad_objects_are_left_out_with_a_reason() {
        let s = snap(
            r#"
apiVersion: v1
kind: Service
metadata: {name: badport}
spec: {clusterIP: 198.18.64.2, ports: [{port: 80}, {port: 70000}]}
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec: {clusterIP: 198.18.64.3, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-bad, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [not-an-ip]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-good, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{port: 9090}]
endpoints: [{addresses: [10.0.0.5]}]
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
"#,
        );
        let t = compile(&s);
        assert!(
            t.entries.iter().all(|e| e.name != "badport"),
            "a service with an invalid port is left out whole"
        );
        assert!(t
            .problems
            .iter()
            .any(|p| p.contains("badport") && p.contains("70000")));
        let manual = t.entries.iter().find(|e| e.name == "manual").unwrap();
        assert_eq!(manual.backends.len(), 1, "only the good slice counts");
        assert_eq!(manual.backends[0].port, 9090);
        assert!(t
            .problems
            .iter()
            .any(|p| p.contains("manual-bad") && p.contains("not-an-ip")));
        assert!(t.entries.iter().all(|e| e.name != "headless"));
    }

    #[test]
    fn affinity_timeout_and_stable_ids() {
        let s = snap("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 198.18.64.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}, ports: [{port: 80}]}\n");
        let t = compile(&s);
        assert_eq!(t.entries[0].affinity_secs, Some(30));
        // Ids live in pinned maps and must not change across versions or
        // agents: FNV-1a of "default/s/" (namespace/name/port name).
        assert_eq!(t.entries[0].id, 946186189);
        let other = snap("apiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec: {clusterIP: 198.18.64.2, ports: [{port: 80}]}\n");
        assert_ne!(compile(&other).entries[0].id, t.entries[0].id);
        let _ = ClusterObject::Other {
            api_version: String::new(),
            kind: String::new(),
        };
    }
}

#[cfg(test)]
mod external_tests {
    use super::*;
    use crate::cluster::parse_manifests;

    #[test]
    fn external_frontends_per_node_and_local_policy() {
        let mut s = ClusterSnapshot::default();
        for o in parse_manifests(
            r#"
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: 198.18.64.5
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  externalIPs: [198.18.97.1]
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.18.96.1}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], nodeName: a}
- {addresses: [10.0.1.1], nodeName: b}
"#,
        )
        .unwrap()
        {
            s.add(o);
        }
        let a = ThisNode {
            name: "a".into(),
            ip: "192.0.2.1".parse().unwrap(),
        };
        let t = compile_for_node(&s, Some(&a));
        let fronts: Vec<String> = t.entries.iter().map(|e| e.frontend.to_string()).collect();
        assert_eq!(
            fronts,
            [
                "192.0.2.1:30080/TCP",
                "198.18.64.5:80/TCP",
                "198.18.96.1:80/TCP",
                "198.18.97.1:80/TCP"
            ]
        );
        let ext = t.entries.iter().find(|e| e.frontend.port == 30080).unwrap();
        assert!(ext.external && ext.local_only);
        assert_eq!(ext.backends.len(), 1, "Local: this node's backends only");
        let cip = t
            .entries
            .iter()
            .find(|e| e.frontend.ip.to_string() == "198.18.64.5")
            .unwrap();
        assert_eq!(cip.backends.len(), 2, "the cluster IP keeps every backend");
        assert_eq!(
            t.health_checks,
            vec![HealthCheck {
                port: 32000,
                service: "default/lb".into(),
                local_endpoints: 1
            }]
        );
        assert!(compile(&s).entries.iter().all(|e| !e.external));
    }
}
