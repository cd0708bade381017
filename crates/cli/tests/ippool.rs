//! IPPools (strait's CRD, Calico's ipv4pools): pods that ask for a pool by
//! annotation get its addresses; nodes claim blocks of it through the
//! control plane (an IPAMBlock create in the kube-apiserver, a
//! create-if-absent transaction in etcd), other nodes route each block to
//! its holder, and a block with nothing left in it is given back. One lab
//! per control plane, run side by side.

mod common;
use common::*;
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const POOL: &str = "198.19.200.0/28";

fn lab_file(name: &str, control_plane: &str) -> String {
    let mut s = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  mode: ebpf\n  controlPlane: {control_plane}\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/17, nodeMaskSize: 24}}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n---\napiVersion: strait.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: blue}}\nspec: {{cidr: {POOL}, blockSize: 30}}\n"
    );
    let pods = [
        ("plain-a", "node-a", None),
        ("blue-a1", "node-a", Some("blue")),
        ("blue-a2", "node-a", Some("blue")),
        ("blue-a3", "node-a", Some("blue")),
        ("blue-a4", "node-a", Some("blue")),
        ("blue-a5", "node-a", Some("blue")),
        ("blue-b1", "node-b", Some("blue")),
    ];
    for (pod, node, pool) in pods {
        s.push_str(&pod_yaml(pod, node, pool));
    }
    s
}

fn pod_yaml(pod: &str, node: &str, pool: Option<&str>) -> String {
    let ann = pool
        .map(|p| format!(", annotations: {{strait.dev/ippool: {p}}}"))
        .unwrap_or_default();
    format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default{ann}}}\nspec: {{nodeName: {node}, containers: [{{name: echo}}]}}\n")
}

fn ip_of(lab: &Lab, pod: &str) -> IpAddr {
    lab.st.pod_ip(lab.st.plan.pod(pod).unwrap()).unwrap()
}

fn blocks(lab: &Lab, node: &str) -> Vec<(IpNet, usize)> {
    lab.status(node)
        .ipam_blocks
        .iter()
        .map(|b| (b.cidr, b.in_use))
        .collect()
}

/// The IPAMBlock objects in the control plane: (name, node).
fn block_objects(lab: &Lab) -> Vec<(String, String)> {
    use strait_model::ippool::IPAMBlock;
    let mut out: Vec<(String, String)> = match lab.st.plan.control_plane {
        strait_model::lab::ControlPlane::KubeApiserver => {
            strait_lab::publish::admin(&lab.st, |c| async move {
                Ok(kube::Api::<IPAMBlock>::all(c)
                    .list(&Default::default())
                    .await?
                    .items)
            })
            .unwrap()
        }
        _ => strait_lab::control_plane::with_etcd(&lab.st, |c| async move {
            let l = c.range_prefix(b"/strait/v1/ipamblocks/").await?;
            Ok(l.kvs
                .iter()
                .map(|kv| serde_json::from_slice::<IPAMBlock>(&kv.value).unwrap())
                .collect())
        })
        .unwrap(),
    }
    .into_iter()
    .map(|b| (b.metadata.name.unwrap(), b.spec.node))
    .collect();
    out.sort();
    out
}

fn pools_through(name: &str, control_plane: &str) {
    let lab = Lab::up(&lab_file(name, control_plane));
    let pool: IpNet = POOL.parse().unwrap();
    // Pool pods take the pool's addresses; the others the node's pod CIDR.
    let a_cidr = lab.node("node-a").pod_cidr;
    assert!(a_cidr.contains(&ip_of(&lab, "plain-a")));
    let blue: Vec<IpAddr> = [
        "blue-a1", "blue-a2", "blue-a3", "blue-a4", "blue-a5", "blue-b1",
    ]
    .iter()
    .map(|p| ip_of(&lab, p))
    .collect();
    assert!(blue.iter().all(|ip| pool.contains(ip)), "{blue:?}");
    let mut distinct = blue.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "{blue:?}");
    // Five pods in /30 blocks: node-a claimed two, node-b one of its own.
    let a = blocks(&lab, "node-a");
    let b = blocks(&lab, "node-b");
    assert_eq!(a.iter().map(|x| x.1).sum::<usize>(), 5, "{a:?}");
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(a.iter().all(|x| !b.iter().any(|y| y.0 == x.0)));
    assert!(b[0].0.contains(&ip_of(&lab, "blue-b1")));
    // The claims are objects in the control plane, named by their range.
    let objs = block_objects(&lab);
    assert_eq!(objs.len(), 3, "{objs:?}");
    for (cidr, _) in &a {
        let n = strait_model::ippool::block_name(cidr);
        assert!(objs.contains(&(n, "node-a".into())), "{objs:?}");
    }
    // Each block is routed to its holder, and pods reach each other.
    let a_ip = lab.node("node-a").ip.to_string();
    for (cidr, _) in &a {
        let want = format!("{cidr} via {a_ip}");
        lab.until("node-b", &["ip", "route"], &want, |o| o.contains(&want));
    }
    let answered = |src: &str, dst: &str| {
        lab.probe(src, dst)
            .unwrap_or_else(|e| panic!("{src} -> {dst}: {e:#}"))
    };
    assert_eq!(answered("blue-b1", "blue-a5"), "blue-a5");
    assert_eq!(answered("blue-a1", "blue-b1"), "blue-b1");
    assert_eq!(answered("plain-a", "blue-b1"), "blue-b1");
    assert_eq!(answered("blue-b1", "plain-a"), "plain-a");

    // A pod asking for a pool that does not exist gets a clear error, and
    // nothing is allocated or wired for it.
    let (pods_before, veths_before) = (
        lab.status("node-a").allocations.len(),
        lab.host_veths("node-a").len(),
    );
    let e = strait_lab::objects::apply(
        &mut lab_state(&lab),
        &lab.bins,
        &pod_yaml("lost", "node-a", Some("nope")),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("IPPool") && msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );
    assert_eq!(lab.status("node-a").allocations.len(), pods_before);
    assert_eq!(lab.host_veths("node-a").len(), veths_before);

    // The block holding only blue-a5 goes back once it is deleted and its
    // address has cooled down (1 s here).
    let last = a
        .iter()
        .find(|x| x.1 == 1)
        .map(|x| x.0)
        .expect("one block holds one pod");
    restart_agent(&lab, "node-a", &[("STRAIT_IP_COOLDOWN_SECS", "1")]);
    strait_lab::objects::delete(
        &mut lab_state(&lab),
        &lab.bins,
        &pod_yaml("blue-a5", "node-a", Some("blue")),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while blocks(&lab, "node-a").len() != 1 {
        assert!(Instant::now() < deadline, "block {last} was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let want = format!("{last} via");
    lab.until(
        "node-b",
        &["ip", "route"],
        "the route to the block gone",
        |o| !o.contains(&want),
    );
    assert_eq!(block_objects(&lab).len(), 2);
    assert_eq!(answered("blue-b1", "blue-a1"), "blue-a1");

    // A block held by a node that is no longer in the cluster is freed.
    let ghost = strait_model::ippool::Block {
        cidr: "198.19.200.12/30".parse().unwrap(),
        pool: "blue".into(),
        node: "ghost".into(),
    };
    put_block(&lab, &ghost);
    let deadline = Instant::now() + Duration::from_secs(15);
    while block_objects(&lab).iter().any(|(_, n)| n == "ghost") {
        assert!(Instant::now() < deadline, "the gone node's block stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Write a block object straight into the control plane.
fn put_block(lab: &Lab, b: &strait_model::ippool::Block) {
    let obj = b.to_crd();
    match lab.st.plan.control_plane {
        strait_model::lab::ControlPlane::KubeApiserver => {
            strait_lab::publish::admin(&lab.st, |c| async move {
                kube::Api::<strait_model::ippool::IPAMBlock>::all(c)
                    .create(&Default::default(), &obj)
                    .await?;
                Ok(())
            })
            .unwrap()
        }
        _ => strait_lab::control_plane::with_etcd(&lab.st, |c| async move {
            let key = format!(
                "/strait/v1/ipamblocks/{}",
                obj.metadata.name.as_deref().unwrap()
            );
            c.put(key.as_bytes(), &serde_json::to_vec(&obj)?).await?;
            Ok(())
        })
        .unwrap(),
    }
}

/// The lab's state as the CLI would load it (apply and delete save it).
fn lab_state(lab: &Lab) -> strait_lab::LabState {
    strait_lab::LabState::load(lab.name()).unwrap()
}

fn restart_agent(lab: &Lab, node: &str, env: &[(&str, &str)]) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let n = lab.node(node).clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n)).unwrap();
    strait_lab::cmd::stop(&[pid], Duration::from_secs(3));
    strait_lab::run::start_agent(&lab.st, &lab.bins, &n, &env).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &n, Duration::from_secs(20)).unwrap();
}

#[test]
fn ippools_through_the_apiserver() {
    if !require_root("ippools_through_the_apiserver") {
        return;
    }
    if let Err(e) = strait_lab::control_plane::apiserver_binary() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{e:#}");
        }
        eprintln!("\n!!! SKIPPED ippools_through_the_apiserver: {e:#} !!!\n");
        return;
    }
    pools_through("t-pool-kube", "kube-apiserver");
}

#[test]
fn ippools_through_etcd() {
    if !require_root("ippools_through_etcd") {
        return;
    }
    pools_through("t-pool-etcd", "etcd");
}
