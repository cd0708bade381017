use super::*;
use std::sync::Arc;

fn pool(name: &str, cidr: &str, block: Option<u8>) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            cidr: cidr.into(),
            block_size: block,
            node_selector: None,
            disabled: false,
            vlan_id: None,
            gateway: None,
        },
    )
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn pools_default_their_block_size_per_family_and_refuse_bad_ones() {
    let p = Pool::from_crd(&pool("a", "198.19.128.7/20", None)).unwrap();
    assert_eq!((p.cidr, p.block_prefix), (net("198.19.128.0/20"), 26));
    let p = Pool::from_crd(&pool("b", "fd00:198:19::/112", None)).unwrap();
    assert_eq!(p.block_prefix, 122);
    // Smaller than a default block: one block.
    let p = Pool::from_crd(&pool("c", "198.19.200.0/28", None)).unwrap();
    assert_eq!(p.block_prefix, 28);
    let e = Pool::from_crd(&pool("d", "198.19.0.0/24", Some(20))).unwrap_err();
    assert!(
        e.to_string()
            .contains("between the pool's prefix length 24 and 32"),
        "{e}"
    );
    let e = Pool::from_crd(&pool("e", "198.19.0.0/24", Some(33))).unwrap_err();
    assert!(matches!(e, PoolError::BlockSize { .. }));
    let e = Pool::from_crd(&pool("f", "nonsense", None)).unwrap_err();
    assert!(e.to_string().contains("not an address range"), "{e}");
}

#[test]
fn free_blocks_skip_any_overlapping_held_block() {
    let p = Pool::from_crd(&pool("a", "198.19.128.0/24", Some(26))).unwrap();
    let none: Vec<IpNet> = vec![];
    assert_eq!(p.free_block(none.iter()), Some(net("198.19.128.0/26")));
    // Held blocks of other sizes (the pool's blockSize changed) overlap too.
    let taken = [net("198.19.128.0/26"), net("198.19.128.64/27")];
    assert_eq!(p.free_block(taken.iter()), Some(net("198.19.128.128/26")));
    let all = [net("198.19.128.0/24")];
    assert_eq!(p.free_block(all.iter()), None);
}

#[test]
fn block_names_are_kubernetes_names_for_both_families() {
    assert_eq!(block_name(&net("198.19.128.64/26")), "198-19-128-64-26");
    assert_eq!(
        block_name(&net("fd00:198:19::40/122")),
        "fd00-198-19-0-0-0-0-40-122"
    );
    let b = Block {
        cidr: net("198.19.128.64/26"),
        pool: "blue".into(),
        node: "node-a".into(),
    };
    assert_eq!(Block::from_crd(&b.to_crd()), Some(b.clone()));
    // A block whose name is not its range's was not written by an agent.
    let mut forged = b.to_crd();
    forged.metadata.name = Some("198-19-128-0-26".into());
    assert_eq!(Block::from_crd(&forged), None);
}

#[test]
fn a_pod_gets_its_pool_only_where_the_pool_allows() {
    use crate::cluster::{test_node, ClusterSnapshot};
    let mut sel = pool("edge", "198.19.128.0/24", None);
    sel.spec.node_selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([("zone".into(), "edge".into())])),
        ..Default::default()
    });
    let mut off = pool("off", "198.19.129.0/24", None);
    off.spec.disabled = true;
    let clash = pool("clash", "198.19.1.0/25", None);
    let mut a = test_node("a", Some("198.19.0.0/24"), Some("198.18.0.2"));
    a.metadata.labels = Some(BTreeMap::from([("zone".to_string(), "edge".to_string())]));
    let b = test_node("b", Some("198.19.1.0/24"), Some("198.18.0.3"));
    let snap = ClusterSnapshot {
        nodes: vec![Arc::new(a), Arc::new(b)],
        ip_pools: vec![Arc::new(sel), Arc::new(off), Arc::new(clash)],
        ..Default::default()
    };
    assert_eq!(
        pool_for_pod("ns/p", "edge", &snap, "a").unwrap().name,
        "edge"
    );
    let e = pool_for_pod("ns/p", "edge", &snap, "b").unwrap_err();
    assert!(matches!(e, PoolError::NodeNotSelected { .. }), "{e}");
    let e = pool_for_pod("ns/p", "off", &snap, "a").unwrap_err();
    assert!(matches!(e, PoolError::Disabled { .. }), "{e}");
    let e = pool_for_pod("ns/p", "nope", &snap, "a").unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = pool_for_pod("ns/p", "clash", &snap, "a").unwrap_err();
    assert!(
        e.to_string()
            .contains("overlaps node b's pod CIDR 198.19.1.0/24"),
        "{e}"
    );
}

#[test]
fn pods_name_their_pool_by_annotation() {
    let mut pod = k8s_openapi::api::core::v1::Pod::default();
    assert_eq!(requested_pool(&pod), None);
    pod.metadata.annotations = Some(BTreeMap::from([(
        POOL_ANNOTATION.to_string(),
        " blue ".to_string(),
    )]));
    assert_eq!(requested_pool(&pod), Some("blue"));
}

/// deploy/crds.yaml is what the types generate: change the types, then
/// `cargo run -p strait -- crds > deploy/crds.yaml`.
#[test]
fn the_shipped_crds_are_the_generated_ones() {
    let shipped = include_str!("../../../../deploy/crds.yaml");
    assert!(
        shipped == crds_yaml(),
        "deploy/crds.yaml is stale: run `cargo run -p strait -- crds > deploy/crds.yaml`"
    );
    let crds = crds();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ippools.strait.dev",
            "ipamblocks.strait.dev",
            "bgpconfigurations.strait.dev",
            "bgppeers.strait.dev",
            "podnetworkings.strait.dev"
        ]
    );
    assert!(crds.iter().all(|c| c.spec.scope == "Cluster"));
}
