use super::*;
use serde_json::json;

const P: &str = DEFAULT_PREFIX;

fn val(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn node(name: &str, cidr: &str) -> Vec<u8> {
    val(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"podCIDR": cidr}}),
    )
}

fn pod(name: &str, on: &str) -> Vec<u8> {
    val(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": on, "containers": []}}))
}

fn svc(name: &str, ip: &str) -> Vec<u8> {
    val(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}))
}

fn put<'a>(key: &'a str, value: &'a [u8], rev: i64) -> Change<'a> {
    Change::Put {
        key: key.as_bytes(),
        value,
        mod_revision: rev,
    }
}

fn del(key: &str, rev: i64) -> Change<'_> {
    Change::Delete {
        key: key.as_bytes(),
        mod_revision: rev,
    }
}

fn names(s: &ClusterSnapshot) -> Vec<String> {
    let mut out = vec![];
    for n in &s.nodes {
        out.push(format!("node/{}", n.metadata.name.as_deref().unwrap()));
    }
    for p in &s.pods {
        out.push(format!("pod/{}", p.metadata.name.as_deref().unwrap()));
    }
    for v in &s.services {
        out.push(format!("svc/{}", v.metadata.name.as_deref().unwrap()));
    }
    out
}

#[test]
fn keys_round_trip_and_bad_keys_say_what_is_wrong() {
    let objs = crate::cluster::parse_manifests(
        "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
    )
    .unwrap();
    let keys: Vec<String> = objs.iter().map(|o| key(P, o).unwrap()).collect();
    assert_eq!(
        keys,
        [
            "/strait/v1/nodes/a",
            "/strait/v1/services/shop/web",
            "/strait/v1/pods/default/p"
        ]
    );
    assert_eq!(
        parse_key(P, keys[1].as_bytes()).unwrap(),
        KeyRef {
            kind: Kind::Services,
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    assert!(matches!(
        parse_key(P, b"/other/nodes/a"),
        Err(KeyError::Prefix(..))
    ));
    assert!(matches!(
        parse_key(P, b"/strait/v1/gadgets/a"),
        Err(KeyError::Resource(..))
    ));
    // A namespaced kind without its namespace, a cluster-scoped one with one.
    assert!(matches!(
        parse_key(P, b"/strait/v1/pods/p"),
        Err(KeyError::Shape(..))
    ));
    assert!(matches!(
        parse_key(P, b"/strait/v1/nodes/x/a"),
        Err(KeyError::Shape(..))
    ));
    assert!(matches!(
        parse_key(P, b"/strait/v1/pods/default/"),
        Err(KeyError::Shape(..))
    ));
}

#[test]
fn list_then_events_in_order() {
    let mut st = Store::new(P);
    let (a, s1) = (node("n1", "10.0.0.0/24"), svc("web", "10.96.0.10"));
    st.replace(
        [
            ("/strait/v1/nodes/n1".as_bytes(), a.as_slice()),
            ("/strait/v1/services/default/web".as_bytes(), s1.as_slice()),
        ],
        7,
    );
    assert_eq!(st.revision(), 7);
    assert_eq!(names(&st.snapshot()), ["node/n1", "svc/web"]);
    let (b, p, s2) = (
        node("n2", "10.0.1.0/24"),
        pod("p", "n1"),
        svc("web", "10.96.0.11"),
    );
    let r = st.apply(&[
        put("/strait/v1/nodes/n2", &b, 8),
        put("/strait/v1/pods/default/p", &p, 9),
        put("/strait/v1/services/default/web", &s2, 10),
        del("/strait/v1/nodes/n1", 11),
    ]);
    assert!(r.changed && r.refused.is_empty() && r.stale == 0);
    let snap = st.snapshot();
    assert_eq!(names(&snap), ["node/n2", "pod/p", "svc/web"]);
    assert_eq!(
        snap.services[0]
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("10.96.0.11")
    );
    assert_eq!(st.revision(), 11);
    // Deleting what is not there changes nothing.
    let r = st.apply(&[del("/strait/v1/nodes/ghost", 12)]);
    assert!(!r.changed);
    assert_eq!(st.revision(), 12);
}

#[test]
fn a_resumed_watch_that_repeats_events_does_not_resurrect_objects() {
    let mut st = Store::new(P);
    st.replace([], 4);
    let a = node("a", "10.0.0.0/24");
    st.apply(&[
        put("/strait/v1/nodes/a", &a, 5),
        del("/strait/v1/nodes/a", 6),
    ]);
    assert!(st.snapshot().nodes.is_empty());
    // The connection broke; the watch is resumed from an older revision
    // and replays the put: it is skipped, the node stays deleted.
    let r = st.apply(&[put("/strait/v1/nodes/a", &a, 5)]);
    assert_eq!((r.changed, r.stale), (false, 1));
    assert!(st.snapshot().nodes.is_empty());
    // Events from before the list are stale too.
    let r = st.apply(&[put("/strait/v1/nodes/a", &a, 3)]);
    assert_eq!(r.stale, 1);
}

#[test]
fn every_nodes_pods_are_kept_for_policy_selectors() {
    let mut st = Store::new(P);
    let (mine, theirs) = (pod("mine", "n1"), pod("theirs", "n2"));
    st.replace(
        [
            ("/strait/v1/pods/default/mine".as_bytes(), mine.as_slice()),
            (
                "/strait/v1/pods/default/theirs".as_bytes(),
                theirs.as_slice(),
            ),
        ],
        2,
    );
    assert_eq!(names(&st.snapshot()), ["pod/mine", "pod/theirs"]);
    // A pod rewritten onto another node is still seen, on its new node.
    let moved = pod("mine", "n2");
    let r = st.apply(&[put("/strait/v1/pods/default/mine", &moved, 3)]);
    assert!(r.changed);
    let snap = st.snapshot();
    let on = |p: &k8s_openapi::api::core::v1::Pod| p.spec.as_ref().unwrap().node_name.clone();
    assert!(snap.pods.iter().all(|p| on(p).as_deref() == Some("n2")));
}

#[test]
fn unreadable_or_misfiled_values_are_refused_and_drop_the_old_object() {
    let mut st = Store::new(P);
    let good = svc("web", "10.96.0.10");
    st.apply(&[put("/strait/v1/services/default/web", &good, 2)]);
    assert_eq!(st.snapshot().services.len(), 1);
    // Not JSON: the service is gone rather than stale, and the key is named.
    let r = st.apply(&[put("/strait/v1/services/default/web", b"{not json", 3)]);
    assert!(r.changed);
    assert!(r.refused[0].contains("/strait/v1/services/default/web"));
    assert!(st.snapshot().services.is_empty());
    // A Service filed under another name, and a Node under services/.
    let other = svc("api", "10.96.0.12");
    let n = node("a", "10.0.0.0/24");
    let r = st.apply(&[
        put("/strait/v1/services/default/web", &other, 4),
        put("/strait/v1/services/default/a", &n, 5),
        put("/strait/v1/widgets/x", b"{}", 6),
    ]);
    assert_eq!(r.refused.len(), 3, "{:?}", r.refused);
    assert!(
        r.refused[0].contains("named default/api"),
        "{}",
        r.refused[0]
    );
    assert!(
        r.refused[1].contains("expected v1 Service"),
        "{}",
        r.refused[1]
    );
    assert!(
        r.refused[2].contains("unknown resource"),
        "{}",
        r.refused[2]
    );
    assert!(st.is_empty());
    assert_eq!(st.revision(), 6);
}

#[test]
fn a_relist_after_compaction_keeps_unchanged_objects_and_drops_deleted_ones() {
    let mut st = Store::new(P);
    let (a, b, s1) = (
        node("a", "10.0.0.0/24"),
        node("b", "10.0.1.0/24"),
        svc("web", "10.96.0.10"),
    );
    st.replace(
        [
            ("/strait/v1/nodes/a".as_bytes(), a.as_slice()),
            ("/strait/v1/nodes/b".as_bytes(), b.as_slice()),
            ("/strait/v1/services/default/web".as_bytes(), s1.as_slice()),
        ],
        10,
    );
    let before = st.snapshot();
    // While the watch was down, b was deleted and web changed, and the
    // history was compacted: the watcher lists again.
    let s2 = svc("web", "10.96.0.20");
    st.replace(
        [
            ("/strait/v1/nodes/a".as_bytes(), a.as_slice()),
            ("/strait/v1/services/default/web".as_bytes(), s2.as_slice()),
        ],
        20,
    );
    let after = st.snapshot();
    assert_eq!(names(&after), ["node/a", "svc/web"]);
    assert!(Arc::ptr_eq(&before.nodes[0], &after.nodes[0]));
    assert!(!Arc::ptr_eq(&before.services[0], &after.services[0]));
    assert!(after.kind_changed(&before, Kind::Nodes));
    assert!(after.kind_changed(&before, Kind::Services));
    assert!(!after.kind_changed(&before, Kind::Pods));
    assert_eq!(st.revision(), 20);
}

#[test]
fn namespaces_get_the_metadata_name_label_once() {
    let mut st = Store::new(P);
    let ns = val(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    st.apply(&[put("/strait/v1/namespaces/shop", &ns, 2)]);
    let (s1, s2) = (st.snapshot(), st.snapshot());
    let labels = s1.namespaces[0].metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/metadata.name"], "shop");
    // normalize() did not have to copy it: snapshots share the object.
    assert!(Arc::ptr_eq(&s1.namespaces[0], &s2.namespaces[0]));
}
