//! The lab with its cluster state in a real etcd and kube-apiserver
//! (1.20.2: EndpointSlices only as discovery.k8s.io/v1beta1), created
//! through the API; the agents watch it. Needs scripts/kube-bins.sh (run by
//! scripts/test.sh); under CI=true a missing apiserver is a failure.

mod common;
use common::svc::*;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strait_lab::publish;

fn have_apiserver(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    match strait_lab::control_plane::apiserver_binary() {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("{e:#}"),
        Err(e) => {
            eprintln!("\n!!! SKIPPED {test}: {e:#} !!!\n");
            false
        }
    }
}

/// The services example with its cluster in a kube-apiserver.
fn kube_lab(name: &str, mode: &str) -> Lab {
    svc_lab_spec(
        name,
        &format!("mode: {mode}\n  controlPlane: kube-apiserver"),
    )
}

fn extra_service(ip: &str, backend: &str) -> Vec<serde_json::Value> {
    named_service("extra", ip, backend)
}

#[test]
fn pods_and_services_through_the_apiserver() {
    if !have_apiserver("pods_and_services_through_the_apiserver") {
        return;
    }
    let lab = kube_lab("t-kube", "ebpf");
    let st = lab.status("node-a");
    let src = st.source.clone().expect("the source reports itself");
    assert_eq!(
        (src.kind.as_str(), src.ready),
        ("kube-apiserver", true),
        "{src:?}"
    );
    assert!(
        src.kinds.iter().any(|k| k.contains("v1beta1")),
        "1.20 serves EndpointSlice v1beta1: {src:?}"
    );
    assert_example_serves_and_changes(&lab);
    // The agents' credentials read what they need and change nothing else.
    let kc = strait_lab::control_plane::agent_kubeconfig(&lab.st);
    let (pods, forbidden) = publish::client_as(&lab.st, &kc, |c| async move {
        use k8s_openapi::api::core::v1::{ConfigMap, Pod};
        let pods = kube::Api::<Pod>::all(c.clone())
            .list(&Default::default())
            .await?
            .items
            .len();
        let cm =
            serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": "x"}}))?;
        let created = kube::Api::<ConfigMap>::namespaced(c.clone(), "default")
            .create(&Default::default(), &cm)
            .await;
        let deleted = kube::Api::<Pod>::namespaced(c, "default")
            .delete("client", &Default::default())
            .await;
        let forbidden =
            |r: &Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
        Ok((
            pods,
            forbidden(&created.map(|_| ())) && forbidden(&deleted.map(|_| ())),
        ))
    })
    .unwrap();
    assert!(pods >= 4, "the agent lists pods ({pods})");
    assert!(
        forbidden,
        "the agent may not create ConfigMaps or delete Pods"
    );
}

#[test]
fn agents_forward_through_apiserver_and_etcd_restarts_and_resync() {
    if !have_apiserver("agents_forward_through_apiserver_and_etcd_restarts_and_resync") {
        return;
    }
    let lab = kube_lab("t-kuberst", "routed");
    let addr = SocketAddr::new(vip(&lab, "web").into(), 80);
    let b = pod_ip(&lab, "web-b");
    // The apiserver goes away: forwarding and services carry on.
    strait_lab::control_plane::stop_apiserver(&lab.st);
    for _ in 0..5 {
        assert!(
            in_client(&lab, move || ask(addr)).is_ok(),
            "the service answers without an apiserver"
        );
        assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        &lab,
        "the agents notice the broken watches",
        Duration::from_secs(10),
        |s| s.source.as_ref().is_some_and(|x| x.errors > 0),
    );
    strait_lab::control_plane::start_apiserver(&lab.st).unwrap();
    strait_lab::control_plane::wait_ready(&lab.st, Duration::from_secs(60)).unwrap();
    // A change after the restart reaches every agent.
    publish::put(&lab.st, "extra", &extra_service("198.18.64.91", &b)).unwrap();
    wait_for(
        &lab,
        "a change after the apiserver restart",
        Duration::from_secs(30),
        |s| has(s, "extra"),
    );
    // etcd under the apiserver restarts too.
    strait_lab::control_plane::stop_etcd(&lab.st);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        in_client(&lab, move || ask(addr)).is_ok(),
        "forwarding needs no etcd"
    );
    strait_lab::control_plane::start_etcd(&lab.st).unwrap();
    strait_lab::control_plane::wait_ready(&lab.st, Duration::from_secs(60)).unwrap();
    // History compacted under the agents, then the apiserver restarted (its
    // watch cache too): the agents' watches resume from a compacted
    // revision, get "410 Gone", and relist.
    let relists = |lab: &Lab| -> u64 {
        ["node-a", "node-b"]
            .iter()
            .map(|n| lab.status(n).source.unwrap().relists)
            .sum()
    };
    let before = relists(&lab);
    publish::put(
        &lab.st,
        "churn",
        &named_service("churn", "198.18.64.92", &b),
    )
    .unwrap();
    wait_for(&lab, "churn programmed", Duration::from_secs(10), |s| {
        has(s, "churn")
    });
    let rev = strait_lab::control_plane::etcd_compact(&lab.st).unwrap();
    assert!(rev > 1);
    strait_lab::control_plane::stop_apiserver(&lab.st);
    // Changed while nobody watches.
    strait_lab::control_plane::start_apiserver(&lab.st).unwrap();
    strait_lab::control_plane::wait_ready(&lab.st, Duration::from_secs(60)).unwrap();
    publish::put::<serde_json::Value>(&lab.st, "churn", &[]).unwrap();
    wait_for(
        &lab,
        "a change after the compaction",
        Duration::from_secs(30),
        |s| !has(s, "churn"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while relists(&lab) <= before {
        assert!(
            Instant::now() < deadline,
            "the agents relist after a compaction"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    publish::put::<serde_json::Value>(&lab.st, "extra", &[]).unwrap();
    wait_for(
        &lab,
        "a change after the etcd restart",
        Duration::from_secs(30),
        |s| !has(s, "extra"),
    );
    for n in ["node-a", "node-b"] {
        let s = lab.status(n).source.unwrap();
        eprintln!(
            "{n}: source after the restarts: relists {}, errors {}",
            s.relists, s.errors
        );
        assert!(s.ready);
    }
}

/// deploy/strait.yaml, every object, passes the apiserver's validation and
/// admission (a server-side dry run), and the RBAC the lab's agents run
/// with is the ClusterRole it ships.
#[test]
fn deploy_manifests_validate_against_the_apiserver() {
    if !have_apiserver("deploy_manifests_validate_against_the_apiserver") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-kubedeploy", &["n1"], 24, &[]).replace(
        "  mode: routed",
        "  mode: routed\n  controlPlane: kube-apiserver",
    ));
    let objects = publish::deploy_objects();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Namespace",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let refused = publish::dry_run(&lab.st, objects.clone()).unwrap();
    assert!(refused.is_empty(), "{refused:#?}");
    // A broken one is refused: the dry run does validate.
    let mut bad = objects.last().unwrap().clone();
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = serde_json::Value::Null;
    assert_eq!(publish::dry_run(&lab.st, vec![bad]).unwrap().len(), 1);
    let shipped = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let rbac = publish::agent_rbac();
    let lab_role = |kind: &str| rbac.iter().find(|o| o["kind"] == kind).unwrap().clone();
    assert_eq!(lab_role("ClusterRole")["rules"], shipped["rules"]);
    let secrets = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(lab_role("Role")["rules"], secrets["rules"]);
    assert_eq!(secrets["metadata"]["namespace"], "strait-secrets");
}

/// `strait lab apply` / `strait lab delete` change a running lab through
/// the API while a client keeps using a service: a new backend pod is wired
/// and joins it, a new service appears, the pod is drained and unwired. No
/// request fails.
#[test]
fn pods_and_services_come_and_go_while_traffic_flows() {
    if !have_apiserver("pods_and_services_come_and_go_while_traffic_flows") {
        return;
    }
    let lab = kube_lab("t-kubeapply", "ebpf");
    let addr = SocketAddr::new(vip(&lab, "web").into(), 80);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
        &lab.st.plan.pod("client").unwrap().netns,
    ))
    .unwrap();
    let flag = stop.clone();
    let client = std::thread::spawn(move || {
        strait_netlink::in_netns(&ns, move || {
            let (mut ok, mut failed) = (0u32, vec![]);
            let mut seen = std::collections::BTreeSet::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match ask(addr) {
                    Ok(who) => {
                        ok += 1;
                        seen.insert(who);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed, seen)
        })
        .unwrap()
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-c, labels: {app: web}}\nspec: {nodeName: node-b, containers: [{name: echo, ports: [{name: http, containerPort: 8080}]}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: more}\nspec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}\n",
    )
    .unwrap();
    let lab_cmd = |verb: &str| {
        let out = std::process::Command::new(&lab.bins.strait)
            .args(["lab", "--lab", "t-kubeapply", verb])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = lab_cmd("apply");
    assert!(
        said.contains("1 new pods (default/web-c)") && said.contains("1 new services"),
        "{said}"
    );
    let backends = |s: &strait_model::api::NodeStatus, svc: &str| {
        s.services
            .iter()
            .find(|e| e.name == svc && e.frontend.port == 80)
            .map(|e| e.backends.len())
            .unwrap_or(0)
    };
    wait_for(
        &lab,
        "web-c joins web, and `more` appears",
        Duration::from_secs(10),
        |s| backends(s, "web") == 3 && backends(s, "more") == 3,
    );
    // The plan on disk now has web-c (the test's copy is from `up`).
    let now = strait_lab::LabState::load("t-kubeapply").unwrap();
    let c_ip = now.pod_ip(now.plan.pod("web-c").unwrap()).unwrap();
    let r = strait_lab::probe::probe(
        &strait_lab::run::netns_path(&now.plan.pod("client").unwrap().netns),
        SocketAddr::new(c_ip, 8080),
        false,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.answered_by, "web-c");
    std::thread::sleep(Duration::from_millis(500));
    let said = lab_cmd("delete");
    assert!(said.contains("pod default/web-c"), "{said}");
    wait_for(&lab, "web-c drained", Duration::from_secs(10), |s| {
        backends(s, "web") == 2 && backends(s, "more") == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, seen) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(
        seen.contains("web-c"),
        "the new pod served requests: {seen:?}"
    );
    assert!(
        !strait_lab::cmd::netns_with_prefix("strait-t-kubeapply-pod-default-web-c")
            .iter()
            .any(|_| true),
        "web-c's namespace is gone"
    );
}
