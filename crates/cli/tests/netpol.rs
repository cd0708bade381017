//! NetworkPolicy in the lab, on the upstream conformance model (Kubernetes'
//! test/e2e/network/netpol): namespaces x, y, z with pods a, b, c each,
//! spread over three nodes so every case has same-node and cross-node
//! pairs; every pod serves 80 and 81 (TCP and UDP). For each case the
//! policies are published, the whole matrix is probed with real
//! connections, and what arrives is compared with the expected matrix,
//! printed as a grid on a mismatch, as the upstream suite does. The
//! expected matrix comes from `strait_model::policy::verdict`, whose
//! semantics have hand-written truth tables in its unit tests; one case
//! here is also checked against a hand-written count.

mod common;
use common::*;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use strait_model::policy::{verdict, Proto, View};

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// Every agent serves /metrics here.
const METRICS_PORT: u16 = 9476;

fn labels(ns: &str, trusted: &str) -> String {
    format!(
        "{{ns: {ns}, role: {}}}",
        if ns == trusted { "trusted" } else { "plain" }
    )
}

fn lab_yaml(name: &str, datapath: &str, control_plane: &str) -> String {
    let mut y = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  datapath: {datapath}\n  controlPlane: {control_plane}\n  metricsPort: {METRICS_PORT}\n  nodes: [{{name: node-1}}, {{name: node-2}}, {{name: node-3}}]\n"
    );
    for (i, ns) in NS.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {}}}\n",
            labels(ns, "y")
        ));
        for (j, p) in PODS.iter().enumerate() {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: {ns}, labels: {{pod: {p}}}}}\nspec:\n  nodeName: {}\n  containers:\n  - name: c\n    ports: [{{name: serve-80-tcp, containerPort: 80}}, {{name: serve-81-tcp, containerPort: 81}}, {{name: serve-80-udp, containerPort: 80, protocol: UDP}}, {{name: serve-81-udp, containerPort: 81, protocol: UDP}}]\n",
                NODES[(i + j) % 3]
            ));
        }
    }
    // A service whose backend is x/a: policy applies after translation.
    y.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {selector: {pod: a}, ports: [{port: 80, targetPort: 80}]}\n");
    y
}

/// The lab's pods as the model sees them (labels, ports, addresses).
fn model_pods(lab: &Lab) -> Vec<Pod> {
    let mut out = vec![];
    for ns in NS {
        for p in PODS {
            let plan = lab.st.plan.pod(&format!("{ns}/{p}")).unwrap();
            let ports = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]
                .map(|(n, proto)| ContainerPort {
                    name: Some(format!("serve-{n}-{}", proto.to_lowercase())),
                    container_port: n,
                    protocol: Some(proto.into()),
                    ..Default::default()
                })
                .to_vec();
            out.push(Pod {
                metadata: ObjectMeta {
                    name: Some(p.into()),
                    namespace: Some(ns.into()),
                    labels: Some([("pod".to_string(), p.to_string())].into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(plan.node.clone()),
                    containers: vec![Container {
                        name: "c".into(),
                        ports: Some(ports),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    pod_ip: Some(lab.st.pod_ip(plan).unwrap().to_string()),
                    pod_ips: Some(vec![k8s_openapi::api::core::v1::PodIP {
                        ip: lab.st.pod_ip(plan).unwrap().to_string(),
                    }]),
                    phase: Some("Running".into()),
                    ..Default::default()
                }),
            });
        }
    }
    out
}

fn namespaces(trusted: &str) -> Vec<Namespace> {
    NS.iter()
        .map(|ns| {
            serde_yaml::from_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {}}}\n",
                labels(ns, trusted)
            ))
            .unwrap()
        })
        .collect()
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            (!v.is_null()).then(|| serde_json::from_value(v).unwrap())
        })
        .collect()
}

type Cell = (String, String, u16, Proto);
type Matrix = BTreeMap<Cell, bool>;

fn cells(protos: &[Proto]) -> Vec<Cell> {
    let pods: Vec<String> = NS
        .iter()
        .flat_map(|n| PODS.map(|p| format!("{n}/{p}")))
        .collect();
    let mut out = vec![];
    for s in &pods {
        for d in &pods {
            for port in [80, 81] {
                for proto in protos {
                    out.push((s.clone(), d.clone(), port, *proto));
                }
            }
        }
    }
    out
}

fn expected(lab: &Lab, pols: &[NetworkPolicy], trusted: &str, protos: &[Proto]) -> Matrix {
    expected_for(lab, &model_pods(lab), pols, trusted, protos)
}

fn expected_for(
    lab: &Lab,
    pods: &[Pod],
    pols: &[NetworkPolicy],
    trusted: &str,
    protos: &[Proto],
) -> Matrix {
    let nss = namespaces(trusted);
    let view = View::from_parts(pods, &nss, pols);
    let ip = |k: &str| lab.st.pod_ip(lab.st.plan.pod(k).unwrap()).unwrap();
    cells(protos)
        .into_iter()
        .map(|c| {
            let ok = verdict(&view, ip(&c.0), ip(&c.1), c.3, c.2).allows();
            (c, ok)
        })
        .collect()
}

/// Every cell probed at once with a real connection (TCP), a datagram
/// (UDP) or, as this kernel has no SCTP sockets, a raw SCTP INIT whose
/// arrival a raw socket in the destination pod watches for.
fn observed(lab: &Lab, protos: &[Proto]) -> Matrix {
    let mut out = Matrix::new();
    let (sctp, other): (Vec<Cell>, Vec<Cell>) =
        cells(protos).into_iter().partition(|c| c.3 == Proto::Sctp);
    if !sctp.is_empty() {
        out.extend(observed_sctp(lab, sctp));
    }
    let handles: Vec<_> = other
        .into_iter()
        .map(|c| {
            let src = strait_lab::run::netns_path(&lab.st.plan.pod(&c.0).unwrap().netns);
            let dst: IpAddr = lab.st.pod_ip(lab.st.plan.pod(&c.1).unwrap()).unwrap();
            std::thread::spawn(move || {
                let r = strait_lab::probe::probe(
                    &src,
                    SocketAddr::new(dst, c.2),
                    c.3 == Proto::Udp,
                    Duration::from_millis(800),
                );
                (c, r.is_ok())
            })
        })
        .collect();
    out.extend(handles.into_iter().map(|h| h.join().unwrap()));
    out
}

/// CRC32c, as SCTP's checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP INIT from `sport` to `dport`.
fn sctp_init(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = vec![];
    p.extend(sport.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.extend([0u8; 8]); // verification tag 0 (INIT), checksum
    p.extend([1u8, 0, 0, 20]); // INIT, flags, length
    p.extend(tag.to_be_bytes()); // initiate tag
    p.extend(65535u32.to_be_bytes()); // a_rwnd
    p.extend([0, 1, 0, 1]); // streams out, in
    p.extend(tag.to_be_bytes()); // initial TSN
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

fn raw_sctp(ns: &std::path::Path) -> i32 {
    let ns = strait_netlink::NetnsFile::open(ns).unwrap();
    strait_netlink::in_netns(&ns, || {
        // SAFETY: a plain socket call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 132) };
        assert!(
            fd >= 0,
            "raw SCTP socket: {}",
            std::io::Error::last_os_error()
        );
        fd
    })
    .unwrap()
}

fn observed_sctp(lab: &Lab, cells: Vec<Cell>) -> Matrix {
    let ip = |k: &str| match lab.st.pod_ip(lab.st.plan.pod(k).unwrap()).unwrap() {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => panic!("IPv4 lab"),
    };
    // A watcher per destination: every SCTP packet's (source, port).
    let dsts: std::collections::BTreeSet<String> = cells.iter().map(|c| c.1.clone()).collect();
    let watchers: Vec<_> = dsts
        .into_iter()
        .map(|d| {
            let fd = raw_sctp(&strait_lab::run::netns_path(
                &lab.st.plan.pod(&d).unwrap().netns,
            ));
            let h = std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                // SAFETY: valid fd, buffer and option value.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        &tv as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::timeval>() as u32,
                    );
                }
                let t0 = Instant::now();
                let mut buf = [0u8; 2048];
                while t0.elapsed() < Duration::from_millis(1200) {
                    // SAFETY: buf is valid for its length.
                    let n = unsafe {
                        libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
                    };
                    if n < 24 {
                        continue;
                    }
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    if (n as usize) < ihl + 4 {
                        continue;
                    }
                    let src = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                    let dport = u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]);
                    seen.insert((src, dport));
                }
                // SAFETY: closing the fd opened above.
                unsafe { libc::close(fd) };
                seen
            });
            (d, h)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    for (i, c) in cells.iter().enumerate() {
        let fd = raw_sctp(&strait_lab::run::netns_path(
            &lab.st.plan.pod(&c.0).unwrap().netns,
        ));
        let pkt = sctp_init(40000 + i as u16, c.2, 0x5000_0000 + i as u32);
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from(ip(&c.1)).to_be();
        // SAFETY: valid fd, buffer and address; the fd is closed.
        unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            libc::close(fd);
        }
    }
    let seen: BTreeMap<String, std::collections::BTreeSet<(std::net::Ipv4Addr, u16)>> = watchers
        .into_iter()
        .map(|(d, h)| (d, h.join().unwrap()))
        .collect();
    cells
        .into_iter()
        .map(|c| {
            // A pod reaching itself: loopback, never on the wire.
            let ok = c.0 == c.1 || seen[&c.1].contains(&(ip(&c.0), c.2));
            (c, ok)
        })
        .collect()
}

/// Upstream's grid: rows are clients, columns servers; `.` as expected,
/// `X` allowed but should be denied, `-` denied but should be allowed.
fn grid(want: &Matrix, got: &Matrix, port: u16, proto: Proto) -> String {
    let pods: Vec<String> = NS
        .iter()
        .flat_map(|n| PODS.map(|p| format!("{n}/{p}")))
        .collect();
    let mut s = format!("{proto:?}/{port}\t{}\n", pods.join("\t"));
    for from in &pods {
        s.push_str(from);
        for to in &pods {
            let k = (from.clone(), to.clone(), port, proto);
            s.push_str(match (want[&k], got[&k]) {
                (a, b) if a == b => "\t.",
                (false, true) => "\tX",
                _ => "\t-",
            });
        }
        s.push('\n');
    }
    s
}

/// Publish `yaml` as the lab's policies, then probe until the datapath
/// shows the expected matrix (10 s at most). Returns the time it took.
fn case(lab: &Lab, name: &str, yaml: &str, trusted: &str, protos: &[Proto]) -> Duration {
    let pols = policies(yaml);
    let want = expected(lab, &pols, trusted, protos);
    let t0 = Instant::now();
    strait_lab::publish::put(&lab.st, "networkpolicies", &pols).unwrap();
    until_matrix(lab, name, &want, t0, protos)
}

/// A pod's labels change under a policy (the upstream "updated pod" cases):
/// the model's pods with `extra` labels on `pod`, published as the pods.
fn relabel_case(lab: &Lab, name: &str, pod: &str, extra: &[(&str, &str)], yaml: &str) -> Duration {
    let tcp = [Proto::Tcp];
    let mut pods = model_pods(lab);
    let (ns, n) = pod.split_once('/').unwrap();
    for p in pods.iter_mut().filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(n)
    }) {
        let l = p.metadata.labels.get_or_insert_with(Default::default);
        for (k, v) in extra {
            l.insert(k.to_string(), v.to_string());
        }
    }
    let pols = policies(yaml);
    let want = expected_for(lab, &pods, &pols, "y", &tcp);
    assert_ne!(
        want,
        expected(lab, &pols, "y", &tcp),
        "{name}: the relabel must change the matrix"
    );
    // The policy first, as the lab's pods have it; then the relabel.
    case(lab, &format!("{name} (before)"), yaml, "y", &tcp);
    let t0 = Instant::now();
    strait_lab::publish::put(&lab.st, "pods", &pods).unwrap();
    let took = until_matrix(lab, name, &want, t0, &tcp);
    // The lab's own pods back, for the cases after this one.
    strait_lab::objects::publish_all(&lab.st).unwrap();
    took
}

fn until_matrix(lab: &Lab, name: &str, want: &Matrix, t0: Instant, protos: &[Proto]) -> Duration {
    loop {
        let got = observed(lab, protos);
        if got == *want {
            let took = t0.elapsed();
            let denied = want.values().filter(|v| !**v).count();
            eprintln!(
                "case {name}: {denied} of {} cells denied, matched after {took:?}",
                want.len()
            );
            return took;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let mut report = String::new();
            for proto in protos {
                for port in [80, 81] {
                    report.push_str(&grid(want, &got, port, *proto));
                }
            }
            panic!("case {name}: the datapath disagrees with the model\n{report}");
        }
    }
}

/// The upstream cases that change something under a policy: the policy
/// itself, a pod's labels, the policy's deletion; and two more by its
/// names.
fn changing_cases(lab: &Lab, times: &mut Vec<Duration>) {
    let tcp = [Proto::Tcp];
    let mut run = |name: &str, yaml: &str| times.push(case(lab, name, yaml, "y", &tcp));
    run(
        "allow ingress traffic for a target",
        &format!("{DENY_X}---\n{}", allow_xa("  ingress: [{}]\n")),
    );
    run(
        "multiple, stacked policies with overlapping podSelectors",
        &format!(
            "{}---\n{}",
            np("a-from-y-80", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]}"),
            np("all-from-z-81", "x", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]}")
        ),
    );
    run(
        "deny egress from all pods in a namespace",
        &np(
            "deny-egress",
            "x",
            "{podSelector: {}, policyTypes: [Egress]}",
        ),
    );
    // The same policy, updated: port 81 only, then port 80 only.
    run(
        "updated policy (before: port 81)",
        &allow_xa("  ingress: [{ports: [{port: 81}]}]\n"),
    );
    run(
        "updated policy (after: port 80)",
        &allow_xa("  ingress: [{ports: [{port: 80}]}]\n"),
    );
    run("stop enforcing policies after they are deleted", "");
    times.push(relabel_case(
        lab,
        "allow ingress access from updated pod",
        "y/c",
        &[("client", "yes")],
        &allow_xa("  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {client: \"yes\"}}}]}]\n"),
    ));
    times.push(relabel_case(
        lab,
        "deny ingress access to updated pod",
        "x/b",
        &[("target", "yes")],
        &np(
            "deny-target",
            "x",
            "{podSelector: {matchLabels: {target: \"yes\"}}, policyTypes: [Ingress]}",
        ),
    ));
}

const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

/// A policy `name` in namespace `ns` whose spec is `spec` (YAML flow).
fn np(name: &str, ns: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

/// More of the upstream suite's cases, by its names (TCP unless said).
fn more_upstream_cases() -> Vec<(&'static str, String, Proto)> {
    let t = Proto::Tcp;
    vec![
        ("default-deny-all (ingress and egress)", np("deny", "x", "{podSelector: {}, policyTypes: [Ingress, Egress]}"), t),
        ("allow ingress from pods in all namespaces", np("all-ns", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}}]}]}"), t),
        ("PodSelector with MatchExpressions", np("expr", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]}"), t),
        ("multiple PodSelectors and NamespaceSelectors", np("multi", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]}"), t),
        ("any PodSelectors", np("any-pod", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {}}]}]}"), t),
        ("allow-all", np("allow-all", "x", "{podSelector: {}, ingress: [{}]}"), t),
        ("ingress from namespace on one named port", np("ns-port", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: serve-80-tcp}]}]}"), t),
        ("egress on one named port", np("eg-port", "x", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]}"), t),
        ("deny ingress from pods on other namespaces", np("same-ns", "x", "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}"), t),
        ("deny egress from pods based on PodSelector", np("eg-pod", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}"), t),
        ("Ingress and Egress specified together", np("both", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]}"), t),
        ("deny egress on the client even if the server allows it", format!("{}---\n{}", np("client-deny", "y", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}"), np("server-allow", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}")), t),
        ("egress to a server in another namespace by pod and namespace", np("eg-other", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}"), t),
        ("ingress any port on a specific protocol (UDP only: TCP denied)", np("udp-only", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP}]}]}"), t),
        ("multiple ingress policies, allow-all takes precedence", format!("{}---\n{}", np("narrow", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80}]}]}"), np("wide", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}")), t),
        ("multiple egress policies, allow-all takes precedence", format!("{}---\n{}", np("narrow", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}"), np("wide", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}")), t),
        ("egress to a server in a CIDR block, with except", np("cidr", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.19.1.0/24, except: [198.19.1.2/32]}}]}]}"), t),
        ("an IP in both IPBlock.CIDR and another rule is allowed", np("overlap", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.19.1.0/24, except: [198.19.1.2/32]}}]}, {to: [{ipBlock: {cidr: 198.19.1.2/32}}]}]}"), t),
        ("ingress and egress controlled independently", format!("{}---\n{}", np("in", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}"), np("out", "x", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]}")), t),
        ("protocol SCTP is not TCP", np("sctp", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80, protocol: SCTP}]}]}"), t),
        ("TCP denied when only UDP is allowed", np("udp80", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80, protocol: UDP}]}]}"), t),
        ("NamespaceSelector with the default ns label", np("default-label", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]}"), t),
        ("NamespaceSelector MatchExpressions with the default ns label", np("default-expr", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}}]}]}"), t),
        ("UDP: deny ingress to x/a except from y", np("udp-y", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"), Proto::Udp),
        ("SCTP: default deny ingress in x", DENY_X.to_string(), Proto::Sctp),
        ("SCTP: allowed on port 80 only", np("sctp80", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80, protocol: SCTP}]}]}"), Proto::Sctp),
        ("SCTP: a TCP-only policy isolates SCTP", np("tcp80", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80, protocol: TCP}]}]}"), Proto::Sctp),
        ("UDP: named port serve-81-udp", np("udp-named", "x", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]}"), Proto::Udp),
    ]
}

fn allow_xa(spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-a, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n{spec}")
}

#[test]
fn upstream_model_on_the_kernel_datapath() {
    if require_root("upstream_model_on_the_kernel_datapath") {
        upstream_model(&Lab::up(&lab_yaml("t-netpol", "kernel", "files")), false);
    }
}

/// The same cases on the eBPF datapath: judged at from-container and
/// before bpf_redirect_peer, with strait_policy's LPM entries.
#[test]
fn upstream_model_on_the_ebpf_datapath() {
    if require_root("upstream_model_on_the_ebpf_datapath") {
        upstream_model(&Lab::up(&lab_yaml("t-netpole", "ebpf", "files")), true);
    }
}

fn upstream_model(lab: &Lab, ebpf: bool) {
    let backend = lab.status("node-1").policy_backend;
    assert_eq!(backend, if ebpf { "ebpf" } else { "nftables" });
    let tcp = [Proto::Tcp];
    case(lab, "no policy", "", "y", &tcp);

    // Hand-written: default deny in x closes the 3 servers in x to the 8
    // other pods each (a pod reaching itself never leaves it), on both
    // ports, and nothing else.
    let deny = case(lab, "default deny ingress in x", DENY_X, "y", &tcp);
    let want = expected(lab, &policies(DENY_X), "y", &tcp);
    let closed: Vec<_> = want
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(c, _)| c)
        .collect();
    assert_eq!(closed.len(), 8 * 3 * 2, "every other pod to x, both ports");
    assert!(closed.iter().all(|c| c.1.starts_with("x/")));
    if ebpf {
        drops_name_the_policy(lab);
    }

    let cases = [
        ("from pod=b in x", allow_xa("  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n")),
        (
            "from ns=y AND pod=b",
            allow_xa("  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n"),
        ),
        (
            "from ns NotIn [y], or pod=c",
            allow_xa("  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}}, {podSelector: {matchLabels: {pod: c}}}]}]\n"),
        ),
        ("named port serve-81-tcp only", allow_xa("  ingress: [{ports: [{port: serve-81-tcp}]}]\n")),
        ("port range 80-81 from x only", allow_xa("  ingress: [{from: [{podSelector: {}}], ports: [{port: 80, endPort: 81}]}]\n")),
        (
            "egress of x/a to ns=y on serve-80-tcp",
            allow_xa("  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: serve-80-tcp}]}]\n"),
        ),
        (
            "two policies add up",
            format!(
                "{DENY_X}---\n{}",
                allow_xa("  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n")
            ),
        ),
    ];
    let mut times = vec![deny];
    for (name, yaml) in &cases {
        times.push(case(lab, name, yaml, "y", &tcp));
    }
    // ipBlock: node-2's pod CIDR, less one of its pods.
    let cidr = lab.node("node-2").pod_cidr;
    let one = lab.st.pod_ip(lab.st.plan.pod("y/a").unwrap()).unwrap();
    times.push(case(
        lab,
        "ipBlock with except",
        &allow_xa(&format!(
            "  ingress: [{{from: [{{ipBlock: {{cidr: {cidr}, except: [{one}/32]}}}}]}}]\n"
        )),
        "y",
        &tcp,
    ));
    explain_agrees_with_the_datapath(lab, &tcp);
    for (name, yaml, proto) in more_upstream_cases() {
        times.push(case(lab, name, &yaml, "y", &[proto]));
    }
    changing_cases(lab, &mut times);
    // UDP: default deny egress from x.
    let udp = [Proto::Udp];
    times.push(case(
        lab,
        "default deny egress in x (UDP)",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
        "y",
        &udp,
    ));

    // A namespace label change flips reachability: x/a admits the trusted
    // namespace; y loses the label, z gets it.
    let trusted =
        allow_xa("  ingress: [{from: [{namespaceSelector: {matchLabels: {role: trusted}}}]}]\n");
    times.push(case(lab, "trusted namespace (y)", &trusted, "y", &tcp));
    let want = expected(lab, &policies(&trusted), "z", &tcp);
    let t0 = Instant::now();
    strait_lab::publish::put(&lab.st, "namespaces", &namespaces("z")).unwrap();
    while observed(lab, &tcp) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "label change not enforced"
        );
    }
    eprintln!("namespace relabel enforced after {:?}", t0.elapsed());

    times.sort();
    eprintln!(
        "policy change to enforcement (upper bound, includes a probe round): median {:?}, max {:?}",
        times[times.len() / 2],
        times.last().unwrap()
    );
    policy_applies_to_a_service_backend(lab);
    established_connections_survive_a_policy_change(lab);
}

/// Through the service's virtual IP the backend's policy decides: x/b may
/// reach x/a, so it reaches the service; y/a may not, so it does not.
fn policy_applies_to_a_service_backend(lab: &Lab) {
    let pols = policies(&allow_xa(
        "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
    ));
    strait_lab::publish::put(&lab.st, "networkpolicies", &pols).unwrap();
    let vip = SocketAddr::new(lab.st.plan.service("x/web").unwrap().cluster_ip.into(), 80);
    let try_from = |pod: &str| {
        let ns = strait_lab::run::netns_path(&lab.st.plan.pod(pod).unwrap().netns);
        strait_lab::probe::probe(&ns, vip, false, Duration::from_millis(600))
            .map(|r| r.answered_by)
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (xb, ya) = (try_from("x/b"), try_from("y/a"));
        if xb.as_deref() == Some("a") && ya.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "via the service: x/b got {xb:?}, y/a got {ya:?}"
        );
    }
}

/// On the eBPF datapath a policy drop is an event naming the policy
/// (`strait monitor`) and a counter (`strait metrics`).
fn drops_name_the_policy(lab: &Lab) {
    let st = &lab.st;
    let node = lab.node(&st.plan.pod("x/a").unwrap().node.clone()).clone();
    let mon = std::process::Command::new(&lab.bins.strait)
        .args([
            "monitor",
            "--count",
            "1",
            "--seconds",
            "10",
            "-o",
            "json",
            "--bpf-dir",
        ])
        .arg(strait_model::lab::bpf_dir(&st.plan.name, &node.name))
        .arg("--socket")
        .arg(st.socket(&node))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let xa: IpAddr = st.pod_ip(st.plan.pod("x/a").unwrap()).unwrap();
    let src = strait_lab::run::netns_path(&st.plan.pod("z/b").unwrap().netns);
    assert!(strait_lab::probe::probe(
        &src,
        SocketAddr::new(xa, 80),
        false,
        Duration::from_millis(500)
    )
    .is_err());
    let out = mon.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let ev: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(ev["reason"], "drop-policy-ingress", "{ev}");
    assert_eq!(ev["policy"], "x/deny-all", "{ev}");
    let pins = std::path::PathBuf::from(strait_model::lab::bpf_dir(&st.plan.name, &node.name));
    let m: strait_bpf::maps::MetricsMap = strait_bpf::maps::open(&pins, "strait_metrics").unwrap();
    let (packets, _) =
        strait_bpf::maps::metric(&m, strait_bpf::reason::DROP_POLICY_INGRESS).unwrap();
    assert!(packets > 0);
    // And per deciding policy, named.
    let out = std::process::Command::new(&lab.bins.strait)
        .args(["metrics", "-o", "json", "--bpf-dir"])
        .arg(&pins)
        .arg("--socket")
        .arg(st.socket(&node))
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policy"] == "x/deny-all")
        .unwrap_or_else(|| panic!("no per-policy row: {rows}"));
    assert!(row["packets"].as_u64().unwrap() > 0, "{row}");
    scraped_metrics_agree(lab, &node.name, packets);
}

/// /metrics, scraped over the fabric as Prometheus would: the policy's
/// drops by name, the datapath's reason counters (at least the `packets`
/// read from the map a moment ago: counters never go back), the
/// reconcilers' pass durations, policy programming latency, IPAM use, and
/// conntrack fill.
fn scraped_metrics_agree(lab: &Lab, node: &str, packets: u64) {
    let m = common::scrape::scrape(lab, node, METRICS_PORT);
    assert_eq!(m.types["strait_datapath_packets"], "counter");
    assert!(
        m.value(
            "strait_policy_drop_packets_total",
            &[("policy", "x/deny-all")]
        ) > 0.0,
        "{m:?}"
    );
    let drops = m.value(
        "strait_datapath_packets_total",
        &[("reason", "drop-policy-ingress"), ("verdict", "drop")],
    );
    assert!(drops >= packets as f64, "{drops} < {packets}");
    // Forwarding verdicts are counted too (pods talk on this node).
    assert!(!m
        .find("strait_datapath_packets_total", &[("verdict", "pass")])
        .is_empty());
    for r in ["endpoints", "services", "policy", "node-routes"] {
        let count = m.value(
            "strait_reconcile_duration_seconds_count",
            &[("reconciler", r)],
        );
        assert!(count >= 1.0, "{r}: {count}");
    }
    assert!(m.value("strait_policy_programming_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(m.value("strait_ready", &[]), 1.0);
    // Three pods per node in this lab (one of each namespace).
    assert_eq!(m.value("strait_ipam_addresses_allocated", &[]), 3.0);
    assert!(m.value("strait_ipam_addresses_capacity", &[]) >= 3.0);
    assert!(m.value("strait_bpf_map_capacity", &[("map", "strait_ct")]) > 0.0);
    // Anything but /metrics is refused.
    let (status, _, _) = common::scrape::get(
        &strait_model::lab::external_netns(lab.name()),
        std::net::SocketAddr::new(lab.node(node).ip.into(), METRICS_PORT),
        "/",
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// `strait policy explain`, asked of the agents, gives what the datapath
/// does on every cell; `strait policy list` shows x/a's compiled rules.
fn explain_agrees_with_the_datapath(lab: &Lab, protos: &[Proto]) {
    use strait_model::api::{Request, Response};
    let got = observed(lab, protos);
    for ((src, dst, port, proto), allowed) in &got {
        // Ask the agent of the destination's node.
        let node = lab
            .node(&lab.st.plan.pod(dst).unwrap().node.clone())
            .clone();
        let req = Request::PolicyExplain {
            src: src.clone(),
            dst: dst.clone(),
            port: *port,
            proto: *proto,
        };
        let Response::PolicyVerdict(e) =
            strait_lab::run::agent_call(&lab.st.socket(&node), &req).unwrap()
        else {
            panic!("no verdict for {src} -> {dst}");
        };
        assert_eq!(e.verdict.allows(), *allowed, "{src} -> {dst}:{port}: {e:?}");
    }
    let node1 = lab.node("node-1").clone();
    let Response::Policy { pods } =
        strait_lab::run::agent_call(&lab.st.socket(&node1), &Request::PolicyList).unwrap()
    else {
        panic!("no policy list");
    };
    let xa = pods
        .iter()
        .find(|p| p.pod == "x/a")
        .expect("x/a is on node-1");
    assert_eq!(xa.ingress.isolated_by[0].to_string(), "x/allow-a");
    assert!(xa.egress.isolated_by.is_empty());
    // `lab explain --verify` on one admitted and one refused connection to
    // x/a: the refused one is explained as dropped where the datapath
    // drops it, naming the policy, and the probe goes unanswered.
    let allowed = got
        .iter()
        .find(|((s, d, port, p), ok)| {
            d == "x/a" && s != d && *port == 80 && *p == Proto::Tcp && **ok
        })
        .map(|((s, ..), _)| s.clone())
        .expect("someone may reach x/a:80");
    let refused = got
        .iter()
        .find(|((s, d, port, p), ok)| {
            d == "x/a" && *port == 80 && *p == Proto::Tcp && !**ok && s.starts_with("y/")
        })
        .map(|((s, ..), _)| s.clone())
        .expect("someone in y is refused x/a:80");
    common::explain::verified(lab, &allowed, "x/a:80");
    let v = strait_lab::explain::verify(&lab.st, &refused, "x/a:80").unwrap();
    assert!(v.contradictions().is_empty(), "{}", v.table());
    let strait_lab::explain::Verdict::Dropped(why) = &v.explanation.request.verdict else {
        panic!("{}", v.table());
    };
    assert!(
        why.contains("NetworkPolicy on node-1: ingress of x/a denied") && why.contains("x/allow-a"),
        "{}",
        v.table()
    );
    assert!(v.answered_by.starts_with("nobody"), "{}", v.table());
}

/// Through a real kube-apiserver: policies, namespaces and every node's
/// pods come from watches (selectors must see pods on other nodes).
#[test]
fn policies_from_the_kube_apiserver() {
    if !require_root("policies_from_the_kube_apiserver") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-netpolk", "kernel", "kube-apiserver"));
    let tcp = [Proto::Tcp];
    case(&lab, "default deny ingress in x", DENY_X, "y", &tcp);
    case(
        &lab,
        "from ns=y AND pod=b (another node's pod)",
        &allow_xa("  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n"),
        "y",
        &tcp,
    );
}

/// Established connections keep flowing when a policy starts to deny them
/// (conntrack's established state is accepted first, as Calico and Cilium
/// do); new connections are refused.
fn established_connections_survive_a_policy_change(lab: &Lab) {
    use std::io::{BufRead, BufReader, Write};
    strait_lab::publish::put::<NetworkPolicy>(&lab.st, "networkpolicies", &[]).unwrap();
    let xa: IpAddr = lab.st.pod_ip(lab.st.plan.pod("x/a").unwrap()).unwrap();
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
        &lab.st.plan.pod("y/b").unwrap().netns,
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        let r = strait_netlink::in_netns(&ns, || {
            std::net::TcpStream::connect_timeout(
                &SocketAddr::new(xa, 80),
                Duration::from_millis(500),
            )
        })
        .unwrap();
        match r {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "connect: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut round = |s: &mut std::net::TcpStream| {
        s.write_all(b"x\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line
    };
    assert!(round(&mut s).starts_with("a "));
    case(
        lab,
        "deny while a connection is open",
        DENY_X,
        "y",
        &[Proto::Tcp],
    );
    assert!(
        round(&mut s).starts_with("a "),
        "the established connection carries on"
    );
}
