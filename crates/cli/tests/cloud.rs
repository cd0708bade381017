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
    let cloud = strait_lab::cloud::LabCloud {
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

    // A malformed call is answered with an error, and the cloud serves on
    // (an error answer once could not be written and stopped it).
    {
        use std::io::{BufRead, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(strait_lab::cloud::socket(&lab.st)).unwrap();
        s.write_all(b"{\"call\":\"bogus\"}\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        assert!(
            line.contains("\"kind\":\"invalid\"") && line.contains("bogus"),
            "{line}"
        );
    }
    assert_eq!(cloud.describe("node-b").unwrap().len(), 3);

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

/// Configure an ENI's NIC the way the agent will: its primary address on
/// eth<N>, up, and `extra` routes.
fn configure(
    lab: &Lab,
    node: &str,
    eni: &strait_model::cloud::provider::Eni,
    prefix: u8,
    extra: &[&str],
) {
    let dev = format!("eth{}", eni.device_index.unwrap());
    lab.exec(
        node,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/{prefix}", eni.primary_ip),
            "dev",
            &dev,
        ],
    );
    lab.exec(node, &["ip", "link", "set", &dev, "up"]);
    if !extra.is_empty() {
        let mut args = vec!["ip", "route", "add"];
        args.extend(extra);
        args.extend(["dev", dev.as_str()]);
        lab.exec(node, &args);
    }
}

/// Whether a TCP connection from `node` to `to` is accepted.
fn connects(lab: &Lab, node: &str, to: std::net::SocketAddr) -> bool {
    let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(&lab.node(node).netns))
        .unwrap();
    strait_netlink::in_netns(&ns, || {
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(1500)).is_ok()
    })
    .unwrap()
}

/// Security groups decide what crosses the VPC, by their rules in order:
/// a server ENI whose group admits TCP 8080 from one vSwitch only accepts
/// a client ENI there and refuses one in the other vSwitch; replies pass
/// (the groups are stateful).
#[test]
fn security_groups_decide_what_crosses_the_vpc() {
    if !require_root("security_groups_decide_what_crosses_the_vpc") {
        return;
    }
    let yaml = YAML
        .replace("name: t-cloud", "name: t-cloud-sg")
        .replace(
            "    - {id: sg-web}\n",
            "    - {id: sg-web, rules: [{direction: ingress, protocol: tcp, ports: 8080/8080, cidr: 198.18.32.0/28, action: accept}]}\n    - {id: sg-client}\n",
        )
        .replace("  - name: node-b\n", "  - name: node-b\n  - name: node-c\n");
    let lab = Lab::up(&yaml);
    let cloud = strait_lab::cloud::LabCloud {
        socket: strait_lab::cloud::socket(&lab.st),
    };
    let g = |s: &str| vec![s.to_string()];
    let server = cloud
        .create_eni("node-b", "vsw-a", &g("sg-web"), false)
        .unwrap();
    let near = cloud
        .create_eni("node-a", "vsw-a", &g("sg-client"), false)
        .unwrap();
    let far = cloud
        .create_eni("node-c", "vsw-b", &g("sg-client"), false)
        .unwrap();
    configure(
        &lab,
        "node-b",
        &server,
        28,
        &["198.18.33.0/24", "via", "198.18.32.1"],
    );
    configure(&lab, "node-a", &near, 28, &[]);
    configure(
        &lab,
        "node-c",
        &far,
        24,
        &["198.18.32.0/28", "via", "198.18.33.1"],
    );
    let listen =
        strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(&lab.node("node-b").netns))
            .unwrap();
    let l = strait_netlink::in_netns(&listen, || {
        std::net::TcpListener::bind("0.0.0.0:8080").unwrap()
    })
    .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c)
        }
    });
    let to = std::net::SocketAddr::new(server.primary_ip, 8080);
    assert!(connects(&lab, "node-a", to), "sg-web rule 1 admits vsw-a");
    assert!(
        !connects(&lab, "node-c", to),
        "nothing admits vsw-b: inbound dropped by default"
    );
    let rules = strait_lab::cloud::sgnft::script(
        &serde_json::from_str(
            &std::fs::read_to_string(strait_lab::cloud::records(&lab.st)).unwrap(),
        )
        .unwrap(),
    );
    assert!(rules.contains("sg-web rule 1"), "{rules}");
}

/// ENI-Trunking's cloud side (seed 002): member ENIs ride their node's
/// trunk ENI, told apart by VLAN id. The VPC routes a member's address to
/// the trunk and tags it with the member's VLAN; the member's own groups,
/// not the trunk's, decide what reaches it. The node side's tagging is
/// what strait's agent will do; here the test attaches strait's VLAN
/// programs to the trunk NIC itself.
#[test]
fn member_enis_ride_their_trunk_tagged_and_answer_to_their_own_groups() {
    if !require_root("member_enis_ride_their_trunk_tagged_and_answer_to_their_own_groups") {
        return;
    }
    let yaml = YAML.replace("name: t-cloud", "name: t-cloud-trunk").replace(
        "    - {id: sg-web}\n",
        "    - {id: sg-open, rules: [{direction: ingress, protocol: tcp, ports: 8080/8080, cidr: 0.0.0.0/0, action: accept}]}\n    - {id: sg-closed, kind: enterprise}\n    - {id: sg-client}\n",
    );
    let lab = Lab::up(&yaml);
    let cloud = strait_lab::cloud::LabCloud {
        socket: strait_lab::cloud::socket(&lab.st),
    };
    let g = |s: &str| vec![s.to_string()];
    let client = cloud
        .create_eni("node-a", "vsw-a", &g("sg-client"), false)
        .unwrap();
    let trunk = cloud
        .create_eni("node-b", "vsw-b", &g("sg-open"), true)
        .unwrap();
    let open = cloud
        .create_member(&trunk.id, "vsw-b", &g("sg-open"))
        .unwrap();
    let closed = cloud
        .create_member(&trunk.id, "vsw-b", &g("sg-closed"))
        .unwrap();
    let vlan = |e: &strait_model::cloud::provider::Eni| match &e.kind {
        strait_model::cloud::provider::EniKind::Member { vlan, .. } => *vlan,
        k => panic!("{k:?}"),
    };
    assert_ne!(vlan(&open), vlan(&closed));
    configure(
        &lab,
        "node-a",
        &client,
        28,
        &["198.18.33.0/24", "via", "198.18.32.1"],
    );
    // The node's side of the trunk: the members' addresses on eth1 and
    // their tags pushed and popped by address.
    let eth1 = format!("eth{}", trunk.device_index.unwrap());
    for m in [&open, &closed] {
        lab.exec(
            "node-b",
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/32", m.primary_ip),
                "dev",
                &eth1,
            ],
        );
    }
    lab.exec("node-b", &["ip", "link", "set", &eth1, "up"]);
    lab.exec(
        "node-b",
        &[
            "ip",
            "route",
            "add",
            "198.18.32.0/28",
            "via",
            "198.18.33.1",
            "dev",
            &eth1,
            "onlink",
        ],
    );
    let pins =
        std::path::PathBuf::from(strait_model::lab::lab_bpf_dir(lab.name())).join("_test-node-b");
    let subnets: std::collections::BTreeMap<ipnet::IpNet, u16> = [&open, &closed]
        .iter()
        .map(|m| (ipnet::IpNet::from(m.primary_ip), vlan(m)))
        .collect();
    let nb =
        strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(&lab.node("node-b").netns))
            .unwrap();
    let dev = eth1.clone();
    strait_netlink::in_netns(&nb, move || {
        let mut v = strait_bpf::vlan::Vlan::load(&pins, strait_bpf::vlan::Role::Node).unwrap();
        v.attach(&dev).unwrap();
        v.set_subnets(&subnets).unwrap();
    })
    .unwrap();
    let l = strait_netlink::in_netns(&nb, || std::net::TcpListener::bind("0.0.0.0:8080").unwrap())
        .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c)
        }
    });

    // To the open member: tagged with its VLAN on the trunk, both ways.
    let vpc_ns = strait_lab::cloud::netns(lab.name());
    let to_open = std::net::SocketAddr::new(open.primary_ip, 8080);
    let seen = common::capture::tagged(&vpc_ns, &trunk.id, || {
        assert!(connects(&lab, "node-a", to_open), "sg-open admits 8080");
    });
    let (c, o) = (client.primary_ip.to_string(), open.primary_ip.to_string());
    assert!(
        seen.contains(&(vlan(&open), format!("{c} > {o}"))),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(vlan(&open), format!("{o} > {c}"))),
        "{seen:?}"
    );
    // The closed member's enterprise group refuses, though the trunk's
    // own group would admit it.
    let to_closed = std::net::SocketAddr::new(closed.primary_ip, 8080);
    assert!(
        !connects(&lab, "node-a", to_closed),
        "the member's group decides"
    );
}
