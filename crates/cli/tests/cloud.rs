//! The lab's cloud (issue 13's VPC emulator): ENIs created through the
//! provider interface appear as NICs in their node (eth1, eth2, with the
//! ENI's MAC) and as routed ports in the VPC namespace; quotas and unknown
//! objects are errors of their own kind and change nothing; the records
//! survive the emulator being killed, and the kernel is brought back to
//! them; deleting an ENI or releasing a node leaves nothing behind.

mod common;
use common::*;
use strait_model::cloud::provider::{CloudError, EniProvider};

const YAML: &str = "apiVersion: strait.dev/v1alpha1
kind: Lab
metadata:
  name: t-cloud
spec:
  datapath: kernel
  cloud:
    vswitches:
    - {id: vsw-a, cidr: 198.18.32.0/28, zone: a}
    - {id: vsw-b, cidr: 198.18.33.0/24, zone: b}
    securityGroups:
    - {id: sg-web}
    quota: {enis: 3, ipsPerEni: 4, membersPerTrunk: 4}
  nodes:
  - name: node-a
  - name: node-b
";

fn links(lab: &Lab, target: &str) -> String {
    lab.exec(target, &["ip", "-o", "link"])
}

fn vpc(lab: &Lab, args: &[&str]) -> String {
    let ns = strait_lab::cloud::netns(lab.name());
    let out = std::process::Command::new("ip")
        .args(["-n", &ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn enis_become_nics_quotas_hold_and_records_survive_the_emulator() {
    if !require_root("enis_become_nics_quotas_hold_and_records_survive_the_emulator") {
        return;
    }
    let lab = Lab::up(YAML);
    let cloud = strait_lab::cloud::client::LabCloud {
        socket: strait_lab::cloud::socket(&lab.st),
    };
    let web = vec!["sg-web".to_string()];
    let e1 = cloud.create_eni("node-a", "vsw-a", &web, false).unwrap();
    assert_eq!(e1.device_index, Some(1), "eth0 is the primary ENI");
    let eth1 = lab.exec("node-a", &["ip", "-o", "link", "show", "eth1"]);
    assert!(eth1.contains(&e1.mac), "{eth1}");
    let ips = cloud.assign_ips(&e1.id, 3).unwrap();
    let routes = vpc(&lab, &["route", "show", "proto", "91"]);
    for ip in ips.iter().chain([&e1.primary_ip]) {
        assert!(routes.contains(&format!("{ip} dev {}", e1.id)), "{routes}");
    }
    // Quotas: four addresses per ENI, three ENIs per node (eth0 counts).
    assert!(matches!(
        cloud.assign_ips(&e1.id, 1).unwrap_err(),
        CloudError::IpQuota { limit: 4, .. }
    ));
    let e2 = cloud.create_eni("node-a", "vsw-b", &[], false).unwrap();
    assert!(links(&lab, "node-a").contains("eth2@"));
    let before = links(&lab, "node-a");
    let err = cloud.create_eni("node-a", "vsw-b", &[], false).unwrap_err();
    assert!(
        matches!(err, CloudError::EniQuota { limit: 3, .. }),
        "{err}"
    );
    let err = cloud
        .create_eni("node-b", "vsw-b", &["sg-none".into()], false)
        .unwrap_err();
    assert!(err.to_string().contains("sg-none"), "{err}");
    assert_eq!(links(&lab, "node-a"), before, "a refused call made nothing");
    assert!(!links(&lab, "node-b").contains("eth1@"));
    // vsw-a is a /28: 13 addresses after its gateway; e1 holds 4.
    let e3 = cloud.create_eni("node-b", "vsw-a", &[], false).unwrap();
    cloud.assign_ips(&e3.id, 3).unwrap();
    let e4 = cloud.create_eni("node-b", "vsw-a", &[], false).unwrap();
    cloud.assign_ips(&e4.id, 3).unwrap();
    let err = cloud.assign_ips(&e1.id, 1).unwrap_err();
    assert!(matches!(err, CloudError::IpQuota { .. }), "{err}");
    let err = cloud.create_eni("node-b", "vsw-a", &[], false).unwrap_err();
    assert!(matches!(err, CloudError::EniQuota { .. }), "{err}");

    // The table an operator reads.
    let table = lab.strait(&["lab", "--lab", lab.name(), "cloud"]);
    assert!(
        table.contains(&e1.id) && table.contains("eth1") && table.contains("vsw-a"),
        "{table}"
    );

    // Kill the emulator and remove an ENI's VPC end by hand: the records
    // survive, and the restarted emulator puts the kernel back.
    let pid = strait_lab::LabState::read_pid(&strait_lab::cloud::pid_file(&lab.st)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    vpc(&lab, &["link", "del", &e2.id]);
    assert!(!links(&lab, "node-a").contains("eth2@"));
    strait_lab::cloud::restart(&lab.st, &lab.bins).unwrap();
    assert!(
        links(&lab, "node-a").contains("eth2@"),
        "the ENI's NIC is back"
    );
    assert_eq!(cloud.describe("node-a").unwrap().len(), 3);

    // Deleting an ENI takes its NIC, its VPC end and its routes.
    cloud.delete_eni(&e1.id).unwrap();
    assert!(!links(&lab, "node-a").contains("eth1@"));
    assert!(!vpc(&lab, &["route", "show", "proto", "91"]).contains(&e1.id));
    // Releasing a node takes everything of it.
    let gone = cloud.remove_node("node-b").unwrap();
    assert_eq!(gone.len(), 3, "{gone:?}");
    assert!(!links(&lab, "node-b").contains("eth1@"));
    let left = cloud.list().unwrap();
    assert!(
        left.iter().all(|e| e.node.as_deref() == Some("node-a")),
        "{left:?}"
    );
}
