//! The upstream network-policy conformance model (Kubernetes'
//! test/e2e/network/netpol): namespaces x, y, z, each with pods a, b, c
//! labelled `pod=<name>`, namespaces labelled `ns=<name>`, every pod
//! serving 80 and 81 on TCP and UDP under the names `serve-80-tcp` and so
//! on. Each case states the reachability matrix the way upstream does:
//! everything allowed or denied, and the exceptions.

use super::*;
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn ip(ns: &str, pod: &str) -> IpAddr {
    let n = NS.iter().position(|x| *x == ns).unwrap() as u8;
    let p = PODS.iter().position(|x| *x == pod).unwrap() as u8;
    IpAddr::from([10, 0, n, p + 1])
}

fn port(name: &str, n: i32, proto: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: n,
        protocol: Some(proto.into()),
        ..Default::default()
    }
}

struct Cluster {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
}

fn cluster() -> Cluster {
    let mut pods = vec![];
    for ns in NS {
        for p in PODS {
            let mut ports = vec![];
            for n in [80, 81] {
                ports.push(port(&format!("serve-{n}-tcp"), n, "TCP"));
                ports.push(port(&format!("serve-{n}-udp"), n, "UDP"));
            }
            // One pod names a different number: named ports resolve per pod.
            if (ns, p) == ("y", "c") {
                ports[0].container_port = 8080;
            }
            pods.push(Pod {
                metadata: ObjectMeta {
                    name: Some(p.into()),
                    namespace: Some(ns.into()),
                    labels: Some([("pod".to_string(), p.to_string())].into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        ports: Some(ports),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    pod_ip: Some(ip(ns, p).to_string()),
                    ..Default::default()
                }),
            });
        }
    }
    let namespaces = NS
        .iter()
        .map(|ns| Namespace {
            metadata: ObjectMeta {
                name: Some(ns.to_string()),
                labels: Some([("ns".to_string(), ns.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    Cluster { pods, namespaces }
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Every pod to every pod on one port: the pairs whose outcome is not
/// `default`, as "x/b->x/a".
fn exceptions(yaml: &str, proto: Proto, port: u16, default: bool) -> Vec<String> {
    let c = cluster();
    let ps = policies(yaml);
    let view = View::from_parts(&c.pods, &c.namespaces, &ps);
    let mut out = vec![];
    for (fns, fp) in NS.iter().flat_map(|n| PODS.map(|p| (*n, p))) {
        for (tns, tp) in NS.iter().flat_map(|n| PODS.map(|p| (*n, p))) {
            let v = verdict(&view, ip(fns, fp), ip(tns, tp), proto, port);
            if v.allows() != default {
                out.push(format!("{fns}/{fp}->{tns}/{tp}"));
            }
        }
    }
    out
}

fn to(pod: &str, from: &[&str]) -> Vec<String> {
    from.iter().map(|f| format!("{f}->{pod}")).collect()
}

fn all_pods() -> Vec<String> {
    NS.iter()
        .flat_map(|n| PODS.map(|p| format!("{n}/{p}")))
        .collect()
}

fn all_but(keep: &[&str]) -> Vec<String> {
    all_pods()
        .into_iter()
        .filter(|p| !keep.contains(&p.as_str()))
        .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

const DENY_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

#[test]
fn default_deny_ingress_isolates_the_namespace_only() {
    let mut want = vec![];
    for t in ["x/a", "x/b", "x/c"] {
        // A pod reaching itself never leaves it (upstream's AllowLoopback).
        want.extend(to(t, &refs(&all_but(&[t]))));
    }
    let mut got = exceptions(DENY_X, Proto::Tcp, 80, true);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The decision names the policy.
    let c = cluster();
    let ps = policies(DENY_X);
    let v = verdict(
        &View::from_parts(&c.pods, &c.namespaces, &ps),
        ip("y", "a"),
        ip("x", "a"),
        Proto::Tcp,
        80,
    );
    assert_eq!(
        v.ingress,
        Decision::Denied {
            isolated_by: vec![PolicyId {
                namespace: "x".into(),
                name: "deny-all".into()
            }]
        }
    );
    assert_eq!(v.egress, Decision::NotIsolated);
}

fn allow_to_a(from: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: {from}}}]\n"
    )
}

/// Only `allowed` reach x/a (on port 80 TCP); everything else is open.
fn only_these_reach_xa(yaml: &str, allowed: &[&str]) {
    let mut got = exceptions(yaml, Proto::Tcp, 80, true);
    got.sort();
    let mut keep = allowed.to_vec();
    keep.push("x/a");
    let mut want = to("x/a", &refs(&all_but(&keep)));
    want.sort();
    assert_eq!(got, want, "{yaml}");
}

#[test]
fn pod_selector_within_the_policy_namespace() {
    only_these_reach_xa(
        &allow_to_a("[{podSelector: {matchLabels: {pod: b}}}]"),
        &["x/b"],
    );
}

#[test]
fn namespace_selector_and_match_expressions() {
    only_these_reach_xa(
        &allow_to_a("[{namespaceSelector: {matchLabels: {ns: y}}}]"),
        &["y/a", "y/b", "y/c"],
    );
    only_these_reach_xa(
        &allow_to_a(
            "[{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}}]",
        ),
        &["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"],
    );
    // Namespaces carry kubernetes.io/metadata.name even where 1.20 does not.
    only_these_reach_xa(
        &allow_to_a("[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]"),
        &["z/a", "z/b", "z/c"],
    );
}

#[test]
fn both_selectors_in_one_peer_is_an_and_two_peers_an_or() {
    only_these_reach_xa(
        &allow_to_a(
            "[{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]",
        ),
        &["y/b"],
    );
    only_these_reach_xa(
        &allow_to_a(
            "[{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]",
        ),
        &["y/a", "y/b", "y/c", "x/b"],
    );
}

#[test]
fn ip_block_with_except() {
    only_these_reach_xa(
        &allow_to_a("[{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.2/32]}}]"),
        &["y/a", "y/c"],
    );
}

#[test]
fn several_policies_add_up_and_an_empty_rule_allows_all() {
    let two = format!(
        "{}---\n{}",
        allow_to_a("[{podSelector: {matchLabels: {pod: b}}}]"),
        allow_to_a("[{podSelector: {matchLabels: {pod: c}}}]")
            .replace("name: allow", "name: allow-c")
    );
    only_these_reach_xa(&two, &["x/b", "x/c"]);
    let open = format!(
        "{DENY_X}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    );
    assert!(exceptions(&open, Proto::Tcp, 80, true).is_empty());
}

fn ports_policy(ports: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: ports, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{ports: {ports}}}]\n"
    )
}

#[test]
fn numeric_named_and_ranged_ports() {
    let all = all_but(&["x/a"]);
    let everyone = refs(&all);
    for ports in ["[{port: 81}]", "[{port: serve-81-tcp}]"] {
        let y = ports_policy(ports);
        let mut got = exceptions(&y, Proto::Tcp, 80, true);
        got.sort();
        let mut want = to("x/a", &everyone);
        want.sort();
        assert_eq!(got, want, "{ports}: 80 closed");
        assert!(
            exceptions(&y, Proto::Tcp, 81, true).is_empty(),
            "{ports}: 81 open"
        );
        assert_eq!(
            exceptions(&y, Proto::Udp, 81, true).len(),
            8,
            "{ports}: TCP only"
        );
    }
    let udp = ports_policy("[{port: serve-81-udp, protocol: UDP}]");
    assert!(exceptions(&udp, Proto::Udp, 81, true).is_empty());
    assert_eq!(exceptions(&udp, Proto::Tcp, 81, true).len(), 8);
    let range = ports_policy("[{port: 80, endPort: 81, protocol: SCTP}]");
    for (p, closed) in [(79, 8), (80, 0), (81, 0), (82, 8)] {
        assert_eq!(
            exceptions(&range, Proto::Sctp, p, true).len(),
            closed,
            "SCTP {p}"
        );
    }
    // A name the pod does not have matches nothing.
    assert_eq!(
        exceptions(
            &ports_policy("[{port: no-such-port}]"),
            Proto::Tcp,
            80,
            true
        )
        .len(),
        8
    );
}

const EGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: serve-80-tcp}]}]
";

#[test]
fn egress_is_implied_by_egress_rules_and_named_ports_resolve_at_the_destination() {
    let c = cluster();
    let ps = policies(EGRESS_X);
    let view = View::from_parts(&c.pods, &c.namespaces, &ps);
    let from_xa = |ns: &str, pod: &str, port: u16| {
        verdict(&view, ip("x", "a"), ip(ns, pod), Proto::Tcp, port).allows()
    };
    assert!(from_xa("y", "a", 80) && from_xa("y", "b", 80));
    // y/c names 8080 serve-80-tcp: that is the port it may be reached on.
    assert!(from_xa("y", "c", 8080) && !from_xa("y", "c", 80));
    assert!(!from_xa("z", "a", 80) && !from_xa("x", "b", 80));
    // Without policyTypes, Ingress is implied too (and this policy has no
    // ingress rules): x/a accepts nobody, a classic surprise upstream keeps.
    assert!(!verdict(&view, ip("z", "a"), ip("x", "a"), Proto::Tcp, 80).allows());
    assert!(verdict(&view, ip("x", "b"), ip("z", "a"), Proto::Tcp, 80).allows());
    // With policyTypes [Egress] only egress is isolated.
    let ps = policies(&EGRESS_X.replace("  egress:", "  policyTypes: [Egress]\n  egress:"));
    let view = View::from_parts(&c.pods, &c.namespaces, &ps);
    assert!(verdict(&view, ip("z", "a"), ip("x", "a"), Proto::Tcp, 80).allows());
    assert!(!verdict(&view, ip("x", "a"), ip("z", "a"), Proto::Tcp, 80).allows());
    // Without egress rules and policyTypes, a policy does not isolate egress.
    let ingress_only = policies(&allow_to_a("[]"));
    let view = View::from_parts(&c.pods, &c.namespaces, &ingress_only);
    assert_eq!(
        view.compile(&c.pods[0], Direction::Egress).0,
        RuleSet::default()
    );
}

#[test]
fn default_deny_egress() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
    let got = exceptions(y, Proto::Udp, 80, true);
    assert_eq!(got.len(), 24, "every x pod to every other pod: {got:?}");
    assert!(got.iter().all(|e| e.starts_with("x/")));
}

#[test]
fn a_rule_the_api_would_refuse_matches_nothing_and_is_reported() {
    let c = cluster();
    let ps = policies(&ports_policy("[{port: 80, protocol: ICMP}]"));
    let view = View::from_parts(&c.pods, &c.namespaces, &ps);
    let (set, problems) = view.compile(&c.pods[0], Direction::Ingress);
    assert!(set.rules.is_empty());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("ICMP"), "{problems:?}");
    assert!(!set.decide(ip("x", "b"), Proto::Tcp, 80).allows());
}
