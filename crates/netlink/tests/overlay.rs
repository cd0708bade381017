//! The overlay primitives against the real kernel, in a namespace the test
//! creates (and removes, even on panic): a VXLAN device read back, FDB
//! entries appended beside each other and deleted, rules and routes in a
//! table of their own. Needs root; under CI=true a skip is a failure.

use std::net::IpAddr;
use std::process::Command;
use strait_netlink::{
    block_on, in_netns, FdbEntry, Netlink, NetnsFile, Route, RouteKind, Rule, Vxlan,
};

struct Ns(String);

impl Ns {
    fn new(name: &str) -> Ns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(ok.success());
        Ns(name.into())
    }

    fn ip(&self, args: &str) {
        let mut a = vec!["-n", &self.0];
        a.extend(args.split_whitespace());
        let out = Command::new("ip").args(&a).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root under CI"
    );
    eprintln!("\n!!! SKIPPED {test}: needs root !!!\n");
    false
}

#[test]
fn vxlan_fdb_rules_and_tables() {
    if !root("vxlan_fdb_rules_and_tables") {
        return;
    }
    let ns = Ns::new("strait-t-nl-overlay");
    ns.ip("link add up0 type veth peer name up1");
    ns.ip("addr add 198.18.5.1/24 dev up0");
    ns.ip("link set up0 up");
    let f = NetnsFile::open(std::path::Path::new("/run/netns/strait-t-nl-overlay")).unwrap();
    in_netns(&f, || {
        block_on(async {
            let nl = Netlink::connect().unwrap();
            let up0 = nl.link("up0").await.unwrap().unwrap();
            let want = Vxlan {
                vni: 4,
                port: 8472,
                local: Some("198.18.5.1".parse().unwrap()),
                dev: Some(up0.index),
                learning: false,
            };
            nl.create_vxlan(
                "eth0.vxlan4",
                &want,
                Some([0x0a, 0x58, 198, 18, 5, 1]),
                1450,
            )
            .await
            .unwrap();
            let (dev, got) = nl.vxlan("eth0.vxlan4").await.unwrap().unwrap();
            let index = dev.index;
            assert_eq!(got.as_ref(), Some(&want));
            let dev = nl.link("eth0.vxlan4").await.unwrap().unwrap();
            assert_eq!(
                (dev.mtu, dev.mac.as_slice()),
                (1450, &[0x0a, 0x58, 198, 18, 5, 1][..])
            );
            assert!(
                nl.vxlan("up0").await.unwrap().unwrap().1.is_none(),
                "a veth is no VXLAN device"
            );
            assert!(nl.vxlan("nothing").await.unwrap().is_none());
            // A second device on the same VNI and port is refused by the kernel.
            assert!(nl
                .create_vxlan("eth0.vxlan4b", &want, None, 1450)
                .await
                .is_err());

            // One all-zeros entry per remote VTEP (BUM), and a unicast one.
            let vtep = |s: &str| -> IpAddr { s.parse().unwrap() };
            let zero = |d: &str| FdbEntry {
                mac: [0; 6],
                dst: vtep(d),
            };
            let peer = FdbEntry {
                mac: [0x0a, 0x58, 198, 18, 5, 2],
                dst: vtep("198.18.5.2"),
            };
            for e in [zero("198.18.5.2"), zero("198.18.5.3"), peer.clone()] {
                nl.append_fdb(index, &e).await.unwrap();
            }
            let fdb = nl.fdb(index).await.unwrap();
            assert_eq!(
                fdb,
                vec![zero("198.18.5.2"), zero("198.18.5.3"), peer.clone()]
            );
            nl.delete_fdb(index, &zero("198.18.5.3")).await.unwrap();
            nl.delete_fdb(index, &zero("198.18.5.3")).await.unwrap();
            assert_eq!(nl.fdb(index).await.unwrap(), vec![zero("198.18.5.2"), peer]);

            // A rule to a table of its own, and a route in it (not in main).
            nl.set_up(index).await.unwrap();
            let rule = Rule {
                priority: 1000,
                src: None,
                dst: Some("198.19.0.0/16".parse().unwrap()),
                iif: None,
                table: 40000,
                protocol: 200,
            };
            nl.add_rule(&rule).await.unwrap();
            assert!(nl.rules(true).await.unwrap().contains(&rule));
            let route = Route {
                dst: "198.19.1.0/24".parse().unwrap(),
                via: None,
                oif: Some(index),
                kind: RouteKind::Unicast,
                protocol: 200,
                table: 40000,
                onlink: false,
                multipath: vec![],
            };
            nl.replace_route(&route).await.unwrap();
            assert_eq!(
                nl.routes_in(40000, true).await.unwrap(),
                vec![route.clone()]
            );
            assert!(
                !nl.routes(true).await.unwrap().contains(&route),
                "not in main"
            );
            assert!(nl.delete_route(&route).await.unwrap());
            assert!(nl.delete_rule(&rule).await.unwrap());
            assert!(!nl.delete_rule(&rule).await.unwrap());
            assert!(!nl.rules(true).await.unwrap().contains(&rule));
        })
    })
    .unwrap();
}

/// ECMP: one route with two gateways goes in, and reads back as the same
/// route (what the BGP reconciler installs when peers offer equal paths).
#[test]
fn multipath_routes_round_trip() {
    if !root("multipath_routes_round_trip") {
        return;
    }
    let ns = Ns::new("strait-t-nl-ecmp");
    ns.ip("link add v0 type veth peer name v1");
    ns.ip("addr add 198.18.9.1/24 dev v0");
    ns.ip("link set v0 up");
    ns.ip("link set v1 up");
    let file = NetnsFile::open(&std::path::PathBuf::from("/run/netns/strait-t-nl-ecmp")).unwrap();
    in_netns(&file, || {
        block_on(async {
            let nl = Netlink::connect().unwrap();
            let route = Route {
                dst: "198.19.7.0/24".parse().unwrap(),
                via: None,
                oif: None,
                kind: RouteKind::Unicast,
                protocol: 186,
                table: strait_netlink::MAIN_TABLE,
                onlink: false,
                multipath: vec!["198.18.9.2".parse().unwrap(), "198.18.9.3".parse().unwrap()],
            };
            nl.replace_route(&route).await.unwrap();
            let got: Vec<Route> = nl
                .routes(true)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.protocol == 186)
                .collect();
            assert_eq!(got, vec![route.clone()]);
            assert!(nl.delete_route(&route).await.unwrap());
            // A route given by destination and protocol only deletes the
            // protocol's route whatever its next hop (how BGP withdraws);
            // another protocol's route to the same place stays.
            let one_hop = Route {
                via: Some("198.18.9.2".parse().unwrap()),
                multipath: vec![],
                ..route.clone()
            };
            nl.replace_route(&one_hop).await.unwrap();
            let bare = Route {
                via: None,
                multipath: vec![],
                protocol: 99,
                ..route.clone()
            };
            assert!(!nl.delete_route(&bare).await.unwrap(), "not protocol 99's");
            let bare = Route {
                protocol: 186,
                ..bare
            };
            assert!(nl.delete_route(&bare).await.unwrap());
            assert!(!nl.delete_route(&bare).await.unwrap());
        })
    })
    .unwrap();
    let shown = Command::new("ip")
        .args(["-n", "strait-t-nl-ecmp", "route"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&shown.stdout).contains("198.19.7.0"));
}

/// Filtered dumps: the kernel returns one table, one protocol's routes or
/// those out of one interface (a node with 100 000 BGP routes reads its
/// own few without copying the rest); a table not made yet is empty. And
/// an exclusive add refuses a destination that has another's route.
#[test]
fn route_dumps_are_filtered_by_the_kernel() {
    if !root("route_dumps_are_filtered_by_the_kernel") {
        return;
    }
    let ns = Ns::new("strait-t-nl-filter");
    ns.ip("link add v0 type veth peer name v1");
    ns.ip("addr add 198.18.9.1/24 dev v0");
    ns.ip("link set v0 up");
    ns.ip("link set v1 up");
    for i in 0..50 {
        ns.ip(&format!(
            "route add 198.19.{i}.0/24 via 198.18.9.2 proto 186"
        ));
    }
    ns.ip("route add 198.19.200.0/24 via 198.18.9.3 proto 90");
    ns.ip("route add 198.19.201.0/24 dev v1 proto 90");
    ns.ip("route add default via 198.18.9.2 table 40000 proto 90");
    let file = NetnsFile::open(&std::path::PathBuf::from("/run/netns/strait-t-nl-filter")).unwrap();
    in_netns(&file, || {
        block_on(async {
            let nl = Netlink::connect().unwrap();
            let main = strait_netlink::MAIN_TABLE;
            let ours = nl.routes_of(main, true, 90).await.unwrap();
            let dsts: Vec<String> = ours.iter().map(|r| r.dst.to_string()).collect();
            assert_eq!(dsts, ["198.19.200.0/24", "198.19.201.0/24"]);
            assert_eq!(nl.routes_of(main, true, 186).await.unwrap().len(), 50);
            // Every protocol of main: the connected route too, no table 40000.
            assert_eq!(nl.routes_in(main, true).await.unwrap().len(), 53);
            let t = nl.routes_in(40000, true).await.unwrap();
            assert_eq!(t.len(), 1);
            assert!(nl.routes_in(10001, true).await.unwrap().is_empty());
            let v1 = nl.link("v1").await.unwrap().unwrap().index;
            let out_v1 = strait_netlink::RouteFilter {
                oif: Some(v1),
                ..strait_netlink::RouteFilter::table(main)
            };
            let r = nl.routes_where(true, out_v1).await.unwrap();
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].dst.to_string(), "198.19.201.0/24");
            // Exclusive add: refused where protocol 186 has the prefix.
            let clash = Route {
                protocol: 90,
                kind: RouteKind::Blackhole,
                via: None,
                oif: None,
                ..ours[0].clone()
            };
            let clash = Route {
                dst: "198.19.7.0/24".parse().unwrap(),
                ..clash
            };
            let e = nl.add_route(&clash).await.unwrap_err();
            assert!(e.is_exists(), "{e}");
        })
    })
    .unwrap();
}
