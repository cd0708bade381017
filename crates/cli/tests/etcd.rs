//! The lab with its cluster state in strait's etcd datastore (no
//! apiserver): the agents list and watch `/strait/v1/` in a real etcd on the
//! lab's fabric. etcd restarts and compactions under running agents lose
//! nothing.

mod common;
use common::svc::*;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strait_lab::control_plane as cp;
use strait_lab::publish;

fn relists(lab: &Lab) -> u64 {
    ["node-a", "node-b"]
        .iter()
        .map(|n| lab.status(n).source.unwrap().relists)
        .sum()
}

#[test]
fn services_through_etcd_survive_restarts_and_compaction() {
    if !require_root("services_through_etcd_survive_restarts_and_compaction") {
        return;
    }
    let lab = svc_lab_spec("t-etcd", "mode: ebpf\n  controlPlane: etcd");
    let src = lab
        .status("node-a")
        .source
        .expect("the source reports itself");
    assert_eq!((src.kind.as_str(), src.ready), ("etcd", true), "{src:?}");
    assert!(src.from.contains(":2379"), "{src:?}");
    assert_example_serves_and_changes(&lab);
    // The objects are where the key layout says.
    let keys = cp::with_etcd(&lab.st, |c| async move {
        let l = c.range_prefix(b"/strait/v1/").await?;
        Ok(l.kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect::<Vec<_>>())
    })
    .unwrap();
    for k in [
        "/strait/v1/nodes/node-a",
        "/strait/v1/pods/default/web-b",
        "/strait/v1/services/default/web",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
    }
    let addr = SocketAddr::new(vip(&lab, "web").into(), 80);
    let b = pod_ip(&lab, "web-b");

    // etcd stops: forwarding carries on; the agents count the broken watch.
    cp::stop_etcd(&lab.st);
    for _ in 0..5 {
        assert!(
            in_client(&lab, move || ask(addr)).is_ok(),
            "service without etcd"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        &lab,
        "the agents notice etcd is gone",
        Duration::from_secs(10),
        |s| s.source.as_ref().is_some_and(|x| x.errors > 0),
    );
    cp::start_etcd(&lab.st).unwrap();
    cp::wait_etcd(&lab.st, Duration::from_secs(30)).unwrap();
    publish::put(
        &lab.st,
        "extra",
        &named_service("extra", "198.18.64.91", &b),
    )
    .unwrap();
    wait_for(
        &lab,
        "a change after the etcd restart",
        Duration::from_secs(15),
        |s| has(s, "extra"),
    );
    let before = relists(&lab);
    assert_eq!(before, 0, "a resumed watch needs no relist");

    // Behind the agents' backs: etcd serves only loopback, the service is
    // deleted, another added, and the history compacted past the agents'
    // revision. When etcd serves them again their watches start from a
    // compacted revision, so they must list again, and see both changes.
    cp::stop_etcd(&lab.st);
    cp::start_etcd_serving(&lab.st, false).unwrap();
    cp::wait_etcd(&lab.st, Duration::from_secs(30)).unwrap();
    publish::put::<serde_json::Value>(&lab.st, "extra", &[]).unwrap();
    publish::put(
        &lab.st,
        "churn",
        &named_service("churn", "198.18.64.92", &b),
    )
    .unwrap();
    let rev = cp::etcd_compact(&lab.st).unwrap();
    assert!(rev > 1);
    cp::stop_etcd(&lab.st);
    cp::start_etcd(&lab.st).unwrap();
    cp::wait_etcd(&lab.st, Duration::from_secs(30)).unwrap();
    wait_for(
        &lab,
        "the agents relist and see what changed while they could not watch",
        Duration::from_secs(20),
        |s| !has(s, "extra") && has(s, "churn"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while relists(&lab) < 2 {
        assert!(Instant::now() < deadline, "each agent relisted once");
        std::thread::sleep(Duration::from_millis(100));
    }
    let churn: SocketAddr = "198.18.64.92:80".parse().unwrap();
    assert_eq!(in_client(&lab, move || ask(churn).unwrap()), "web-b");
    for n in ["node-a", "node-b"] {
        let s = lab.status(n).source.unwrap();
        eprintln!(
            "{n}: etcd source: relists {}, errors {}",
            s.relists, s.errors
        );
        assert!(s.ready);
    }
}
