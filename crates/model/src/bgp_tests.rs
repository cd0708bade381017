use super::*;
use crate::cluster::{parse_manifests, test_node};
use std::sync::Arc;

/// Four nodes n1..n4 at 198.18.0.1..4; n1 (and `rr` more) labelled and
/// annotated as reflectors.
fn cluster(rrs: &[&str], objects: &str) -> ClusterSnapshot {
    let mut s = ClusterSnapshot::default();
    for i in 1..=4 {
        let name = format!("n{i}");
        let mut n = test_node(&name, None, Some(&format!("198.18.0.{i}")));
        if rrs.contains(&name.as_str()) {
            n.metadata.labels = Some([("route-reflector".into(), "true".into())].into());
            n.metadata.annotations =
                Some([(RR_CLUSTER_ID_ANNOTATION.into(), "244.0.0.1".into())].into());
        }
        s.nodes.push(Arc::new(n));
    }
    for o in parse_manifests(objects).unwrap() {
        s.add(o);
    }
    s.normalize();
    s
}

fn addrs(p: &PeerPlan) -> Vec<String> {
    p.peers
        .iter()
        .map(|p| format!("{}{}", p.address, if p.rr_client { " client" } else { "" }))
        .collect()
}

const NO_MESH: &str = "
apiVersion: strait.dev/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 65010}
";

const TO_RRS: &str = "
---
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: to-rrs}
spec:
  peerSelector: {matchLabels: {route-reflector: 'true'}}
";

#[test]
fn full_mesh_by_default() {
    let s = cluster(&[], "");
    let p = plan_peers(&s, "n2", 64512, true);
    assert_eq!(p.local_as, 64512);
    assert_eq!(p.cluster_id, None);
    assert_eq!(addrs(&p), ["198.18.0.1", "198.18.0.3", "198.18.0.4"]);
    assert!(p.peers.iter().all(|p| p.why == "mesh" && p.asn == 64512));
    assert!(p.problems.is_empty());
}

#[test]
fn route_reflectors_replace_the_mesh() {
    let s = cluster(&["n1"], &format!("{NO_MESH}{TO_RRS}"));
    // A client peers with the reflector only, in the configured AS.
    let c = plan_peers(&s, "n3", 64512, true);
    assert_eq!(c.local_as, 65010);
    assert_eq!(addrs(&c), ["198.18.0.1"]);
    assert_eq!(c.peers[0].why, "BGPPeer to-rrs");
    // The reflector peers back with every node, all its clients.
    let r = plan_peers(&s, "n1", 64512, true);
    assert_eq!(r.cluster_id, Some("244.0.0.1".parse().unwrap()));
    assert_eq!(
        addrs(&r),
        [
            "198.18.0.2 client",
            "198.18.0.3 client",
            "198.18.0.4 client"
        ]
    );
}

#[test]
fn reflectors_of_one_cluster_are_not_each_others_clients() {
    let s = cluster(&["n1", "n2"], &format!("{NO_MESH}{TO_RRS}"));
    let r = plan_peers(&s, "n1", 64512, true);
    assert_eq!(
        addrs(&r),
        ["198.18.0.2", "198.18.0.3 client", "198.18.0.4 client"]
    );
    let c = plan_peers(&s, "n4", 64512, true);
    assert_eq!(addrs(&c), ["198.18.0.1", "198.18.0.2"]);
}

#[test]
fn external_peers_by_node_and_selector() {
    let objs = "
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {node: n2, peerIP: '198.18.9.1:1179', asNumber: 65001, maxRestartTime: 2m}
---
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: v6-tor}
spec: {peerIP: 'fd00::1', asNumber: 65002}
";
    let s = cluster(&[], &format!("{NO_MESH}---\n{objs}"));
    let p = plan_peers(&s, "n2", 64512, true);
    assert_eq!(addrs(&p), ["198.18.9.1", "fd00::1"]);
    let tor = &p.peers[0];
    assert_eq!(
        (tor.port, tor.asn, tor.max_restart_time),
        (Some(1179), 65001, Some(Duration::from_secs(120)))
    );
    assert_eq!(p.peers[1].asn, 65002);
    // Only the one node named runs the session.
    assert_eq!(addrs(&plan_peers(&s, "n3", 64512, true)), ["fd00::1"]);
}

#[test]
fn bad_objects_are_reported_not_fatal() {
    let objs = "
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: both}
spec: {peerIP: 198.18.9.1, peerSelector: {}}
---
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: neither}
spec: {}
---
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: badip}
spec: {peerIP: 'router-1', maxRestartTime: 5 minutes}
";
    let mut s = cluster(&[], objs);
    Arc::make_mut(&mut s.nodes[0])
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RR_CLUSTER_ID_ANNOTATION.into(), "rr-one".into());
    let p = plan_peers(&s, "n2", 64512, true);
    // The mesh still stands.
    assert_eq!(p.peers.len(), 3);
    let text = p.problems.join("\n");
    for want in [
        "BGPPeer both: set peerIP or peerSelector, not both",
        "BGPPeer neither: names no peer",
        "BGPPeer badip: peerIP \"router-1\" is not an address",
        "BGPPeer badip: maxRestartTime \"5 minutes\"",
        "node n1: strait.dev/route-reflector-cluster-id \"rr-one\" is not an IPv4 address",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
    assert!(parse_duration("2d").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn top_of_rack_mode_has_no_mesh_unless_asked() {
    let tor = "
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 198.18.9.1, asNumber: 65101}
";
    let s = cluster(&[], tor);
    assert_eq!(addrs(&plan_peers(&s, "n1", 64512, false)), ["198.18.9.1"]);
    // An explicit BGPConfiguration still turns the mesh on.
    let on = format!(
        "{tor}---\napiVersion: strait.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {{nodeToNodeMeshEnabled: true}}\n"
    );
    let s = cluster(&[], &on);
    assert_eq!(plan_peers(&s, "n1", 64512, false).peers.len(), 4);
}

#[test]
fn a_peer_password_comes_from_the_secrets_namespace_or_the_peer_does_not_run() {
    let peer = "
apiVersion: strait.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec:
  peerIP: 198.18.9.1
  asNumber: 65101
  password: {secretKeyRef: {name: bgp, key: tor}}
";
    // Missing: a problem, and no session without the password.
    let p = plan_peers(&cluster(&[], peer), "n1", 64512, false);
    assert!(p.peers.is_empty());
    assert!(
        p.problems[0].contains("Secret strait-secrets/bgp not found"),
        "{:?}",
        p.problems
    );
    // In another namespace: not read.
    let elsewhere = format!(
        "{peer}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bgp, namespace: default}}\nstringData: {{tor: s3cret}}\n"
    );
    assert!(plan_peers(&cluster(&[], &elsewhere), "n1", 64512, false)
        .peers
        .is_empty());
    // data (base64, as the API stores it) and stringData both work.
    for secret in ["data: {tor: czNjcmV0}", "stringData: {tor: s3cret}"] {
        let objs = format!(
            "{peer}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bgp, namespace: strait-secrets}}\n{secret}\n"
        );
        let p = plan_peers(&cluster(&[], &objs), "n1", 64512, false);
        assert_eq!(p.peers.len(), 1, "{:?}", p.problems);
        assert_eq!(p.peers[0].password, Some(Password("s3cret".into())));
        assert!(!format!("{p:?}").contains("s3cret"), "never in Debug");
    }
    let wrong_key = format!(
        "{peer}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bgp, namespace: strait-secrets}}\nstringData: {{other: x}}\n"
    );
    let p = plan_peers(&cluster(&[], &wrong_key), "n1", 64512, false);
    assert!(
        p.problems[0].contains("has no key \"tor\""),
        "{:?}",
        p.problems
    );
}
