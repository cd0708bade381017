//! The lab file and plan, unit-tested.

use super::*;

const LAB: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: Lab
metadata: {name: demo}
spec:
  mode: routed
  nodes: [{name: node-a}, {name: node-b}]
---
apiVersion: v1
kind: Pod
metadata: {name: a1}
spec: {nodeName: node-a, containers: [{name: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: web}
spec: {containers: [{name: echo}]}
"#;

#[test]
fn assigns_cluster_ips_and_checks_given_ones() {
    let with = |svcs: &str| parse_lab_file(&format!("{LAB}{svcs}")).unwrap().plan();
    let p = with("---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: 198.18.64.10, ports: [{port: 5432}]}\n").unwrap();
    assert_eq!(
        p.service("db").unwrap().cluster_ip,
        Ipv4Addr::new(198, 18, 64, 10)
    );
    assert_eq!(
        p.service("web").unwrap().cluster_ip,
        Ipv4Addr::new(198, 18, 64, 11),
        "the next free address"
    );
    let e = with("---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n").unwrap_err();
    assert!(e.to_string().contains("outside the service CIDR"), "{e}");
}

#[test]
fn plans_addresses_and_namespaces() {
    let plan = parse_lab_file(LAB).unwrap().plan().unwrap();
    assert_eq!(plan.nodes.len(), 2);
    assert_eq!(plan.nodes[0].ip, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(plan.nodes[1].ip, Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(plan.nodes[1].pod_cidr.to_string(), "198.19.1.0/24");
    assert_eq!(plan.nodes[0].netns, "strait-demo-node-node-a");
    assert_eq!(plan.pods.len(), 2);
    assert_eq!(plan.pod("a1").unwrap().node, "node-a");
    assert_eq!(plan.pod("web/x").unwrap().netns, "strait-demo-pod-web-x");
    assert!(plan.pod("nope").is_none());
}

#[test]
fn objects_added_to_a_running_lab_are_planned_like_the_first() {
    let mut plan = parse_lab_file(&format!("{LAB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n")).unwrap().plan().unwrap();
    let more = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: a2}\nspec: {nodeName: node-b, containers: [{name: echo}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a1}\nspec: {nodeName: node-a, containers: [{name: echo}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432}]}\n").unwrap();
    let (pods, svcs) = plan.add(&more).unwrap();
    assert_eq!(pods.len(), 1, "a1 is already planned");
    assert_eq!(
        (pods[0].name.as_str(), pods[0].node.as_str()),
        ("a2", "node-b")
    );
    assert_eq!(pods[0].netns, "strait-demo-pod-default-a2");
    assert_eq!(svcs.len(), 1);
    assert_ne!(
        svcs[0].cluster_ip,
        plan.service("web").unwrap().cluster_ip,
        "a free address"
    );
    assert!(plan.pod("a2").is_some() && plan.service("db").is_some());
    let bad = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: z}\nspec: {nodeName: node-q, containers: [{name: echo}]}\n").unwrap();
    assert!(plan
        .add(&bad)
        .unwrap_err()
        .to_string()
        .contains("not a lab node"));
}

fn plan_err(text: &str) -> String {
    match parse_lab_file(text) {
        Err(e) => e.to_string(),
        Ok(f) => f
            .plan()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string()),
    }
}

#[test]
fn rejects_bad_lab_files_with_a_reason() {
    assert!(plan_err("apiVersion: v1\nkind: Pod\n").contains("kind: Lab"));
    assert!(
        plan_err(&LAB.replace("node-a, containers", "node-z, containers"))
            .contains("not a lab node")
    );
    assert!(plan_err(&LAB.replace("mode: routed", "mode: warp")).contains("unknown variant"));
    assert!(plan_err(&LAB.replace("name: demo", "name: Demo_Lab")).contains("lab name"));
    assert!(plan_err(&LAB.replace("{name: node-b}", "{name: node-a}")).contains("listed twice"));
    let small = LAB.replace(
        "mode: routed",
        "mode: routed\n  addressPlan: {fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/24, nodeMaskSize: 24}",
    );
    assert!(
        plan_err(&small).contains("only 1 /24 blocks"),
        "{}",
        plan_err(&small)
    );
    let overlap = LAB.replace(
        "mode: routed",
        "mode: routed\n  addressPlan: {fabric: 198.19.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 24}",
    );
    assert!(plan_err(&overlap).contains("overlap"));
    assert!(plan_err(&LAB.replace("mode: routed", "mode: routed\n  mtu: 100")).contains("mtu"));
    assert!(
        plan_err(&LAB.replace("mode: routed", "mode: routed\n  colour: blue"))
            .contains("unknown field")
    );
    let both = LAB.replace("mode: routed", "mode: routed\n  datapath: ebpf");
    assert!(plan_err(&both).contains("disagree"), "{}", plan_err(&both));
    assert!(plan_err(&LAB.replace("mode: routed", "crossNode: gre")).contains("unknown variant"));
}

#[test]
fn datapath_and_cross_node_are_two_choices_and_old_files_still_work() {
    let plan = |text: &str| parse_lab_file(text).unwrap().plan().unwrap();
    let old = plan(LAB);
    assert_eq!(
        (old.mode, old.cross_node),
        (Mode::Routed, CrossNodeMode::Routed)
    );
    let new = plan(&LAB.replace("mode: routed", "datapath: kernel\n  crossNode: vxlan"));
    assert_eq!(
        (new.mode, new.cross_node),
        (Mode::Routed, CrossNodeMode::Vxlan)
    );
    assert_eq!((new.mtu, new.pod_mtu()), (1500, 1450));
    let ebpf = plan(&LAB.replace("mode: routed", "datapath: ebpf\n  crossNode: vxlan"));
    assert_eq!(ebpf.mode, Mode::Ebpf);
    let ipip = plan(&LAB.replace("mode: routed", "datapath: ebpf\n  crossNode: ipip"));
    assert_eq!(
        (ipip.mode, ipip.cross_node, ipip.pod_mtu()),
        (Mode::Ebpf, CrossNodeMode::Ipip, 1480)
    );
    let same = plan(&LAB.replace("mode: routed", "mode: ebpf\n  datapath: ebpf"));
    assert_eq!(same.mode, Mode::Ebpf);
}

#[test]
fn racks_give_nodes_their_subnet_label_and_gateway() {
    let racked = LAB
        .replace(
            "mode: routed\n  nodes: [{name: node-a}, {name: node-b}]",
            "crossNode: bgp-tor\n  racks:\n  - {name: r1, subnet: 198.18.1.0/24, asn: 65101}\n  - {name: r2, subnet: 198.18.2.0/24, asn: 65102, router: frr}\n  nodes: [{name: node-a, rack: r1}, {name: node-b, rack: r2}, {name: node-c, rack: r1}]",
        );
    let plan = parse_lab_file(&racked).unwrap().plan().unwrap();
    let ip = |n: &str| plan.node(n).unwrap().ip.to_string();
    assert_eq!(
        (ip("node-a"), ip("node-b"), ip("node-c")),
        (
            "198.18.1.2".into(),
            "198.18.2.2".into(),
            "198.18.1.3".into()
        )
    );
    let b = plan.node("node-b").unwrap();
    assert_eq!(
        b.labels.get(crate::racks::RACK_LABEL).map(String::as_str),
        Some("r2")
    );
    assert_eq!(plan.node_subnet(b).to_string(), "198.18.2.0/24");
    assert_eq!(plan.rack_of(b).unwrap().router, crate::racks::Router::Frr);
    let err = |text: &str| {
        parse_lab_file(text)
            .unwrap()
            .plan()
            .unwrap_err()
            .to_string()
    };
    assert!(err(&racked.replace("crossNode: bgp-tor", "crossNode: bgp"))
        .contains("needs crossNode bgp-tor"));
    assert!(err(&racked.replace("rack: r2}", "rack: r9}"))
        .contains("rack \"r9\" is not in spec.racks (r1, r2)"));
    assert!(
        err(&racked.replace("{name: node-c, rack: r1}", "{name: node-c}")).contains("give it one")
    );
    assert!(err(&LAB.replace("mode: routed", "crossNode: bgp-tor")).contains("needs spec.racks"));
}
