//! Racks: the lab's top-of-rack topology for Hybridnet's BGP mode (seed
//! 001). Each rack is an L3 subnet behind a router namespace that runs a
//! real BIRD 2 or FRR: the nodes of the rack peer with it (eBGP, the
//! cluster's AS against the rack's), and the routers peer with each other
//! across the lab's fabric, which becomes the spine segment. Pure: the
//! plan, the BGPPeer objects the lab publishes and the routers' configs.

use crate::bgp::{BGPPeer, BGPPeerSpec};
use crate::cluster::ClusterObject;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The label a lab node carries with its rack's name (the BGPPeer of a
/// rack selects its nodes by it).
pub const RACK_LABEL: &str = "strait.dev/rack";

/// The nodes' AS when no BGPConfiguration sets one (Calico's default too).
pub const CLUSTER_AS: u32 = 64512;

/// Which routing daemon plays a rack's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Router {
    #[default]
    Bird,
    Frr,
}

impl std::fmt::Display for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Router::Bird => "BIRD 2",
            Router::Frr => "FRR",
        })
    }
}

/// A rack as the lab file writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RackSpec {
    pub name: String,
    /// The rack's L3 subnet: its router takes the first address, nodes the
    /// next ones.
    pub subnet: Ipv4Net,
    /// The router's AS (eBGP with the nodes and with the other racks).
    pub asn: u32,
    #[serde(default)]
    pub router: Router,
    /// TCP MD5 password of the sessions between the rack's router and its
    /// nodes (the lab keeps it in a Secret the rack's BGPPeer names).
    #[serde(default)]
    pub password: Option<String>,
}

/// A rack with its addresses resolved.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RackPlan {
    pub name: String,
    pub subnet: Ipv4Net,
    pub asn: u32,
    pub router: Router,
    /// The router's address in the rack: the nodes' gateway (the seed's
    /// 10.0.0.1 switch).
    pub gateway: Ipv4Addr,
    /// The router's address on the fabric (the spine).
    pub fabric_ip: Ipv4Addr,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

pub fn tor_netns(lab: &str, rack: &str) -> String {
    format!("strait-{lab}-tor-{rack}")
}

/// Check the racks against each other and the lab's other ranges, and give
/// each its router's addresses (fabric host i for rack i).
pub fn plan_racks(
    lab: &str,
    specs: &[RackSpec],
    fabric: Ipv4Net,
    others: &[(&str, IpNet)],
) -> Result<Vec<RackPlan>, String> {
    let mut out: Vec<RackPlan> = vec![];
    for (i, r) in specs.iter().enumerate() {
        let ok_name = !r.name.is_empty()
            && r.name.len() <= 12
            && r.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_name {
            return Err(format!(
                "rack name {:?} must be 1-12 characters of a-z, 0-9 and '-'",
                r.name
            ));
        }
        if out.iter().any(|x| x.name == r.name) {
            return Err(format!("rack {:?} is listed twice", r.name));
        }
        if r.subnet.prefix_len() > 29 {
            return Err(format!(
                "rack {}: subnet {} is too small (at most /29: a router and nodes)",
                r.name, r.subnet
            ));
        }
        if let Some(pw) = &r.password {
            if pw.is_empty()
                || pw.len() > 80
                || pw
                    .chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\\')
            {
                return Err(format!(
                    "rack {}: password must be 1-80 characters without spaces, quotes or backslashes",
                    r.name
                ));
            }
        }
        if r.asn == 0 || r.asn == CLUSTER_AS {
            return Err(format!(
                "rack {}: asn {} must be set and differ from the nodes' AS {CLUSTER_AS} (the rack's router speaks eBGP)",
                r.name, r.asn
            ));
        }
        let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let mine = IpNet::V4(r.subnet);
        let mut taken: Vec<(String, IpNet)> = others
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .chain([("fabric".to_string(), IpNet::V4(fabric))])
            .collect();
        taken.extend(
            out.iter()
                .map(|x| (format!("rack {}", x.name), IpNet::V4(x.subnet))),
        );
        if let Some((what, c)) = taken.iter().find(|(_, c)| overlaps(c, &mine)) {
            return Err(format!(
                "rack {}: subnet {} overlaps the {what} {c}",
                r.name, r.subnet
            ));
        }
        let fabric_ip = fabric
            .hosts()
            .nth(i)
            .filter(|_| i + 8 < fabric.hosts().count())
            .ok_or_else(|| format!("fabric {fabric} has no room for {} racks", specs.len()))?;
        out.push(RackPlan {
            name: r.name.clone(),
            subnet: r.subnet,
            asn: r.asn,
            router: r.router,
            gateway: r.subnet.hosts().next().expect("at most /29"),
            fabric_ip,
            netns: tor_netns(lab, &r.name),
            password: r.password.clone(),
        });
    }
    Ok(out)
}

/// The address of the `index`th node of a rack (after the router).
pub fn node_address(rack: &RackPlan, index: usize) -> Option<Ipv4Addr> {
    rack.subnet.hosts().nth(index + 1)
}

/// The BGPPeer that makes a rack's nodes peer with its router, and the
/// Secret holding its password when it has one.
pub fn rack_objects(rack: &RackPlan) -> Vec<ClusterObject> {
    let name = format!("tor-{}", rack.name);
    let mut out = vec![];
    let mut peer = rack_peer(rack);
    if let (Some(pw), ClusterObject::BgpPeer(p)) = (&rack.password, &mut peer) {
        p.spec.password = Some(crate::bgp::BgpPassword {
            secret_key_ref: crate::bgp::SecretKeyRef {
                name: name.clone(),
                key: "password".into(),
            },
        });
        let secret = k8s_openapi::api::core::v1::Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(crate::bgp::SECRETS_NAMESPACE.into()),
                ..Default::default()
            },
            string_data: Some([("password".to_string(), pw.clone())].into()),
            ..Default::default()
        };
        out.push(ClusterObject::Secret(Box::new(secret)));
    }
    out.push(peer);
    out
}

/// The BGPPeer that makes a rack's nodes peer with its router.
fn rack_peer(rack: &RackPlan) -> ClusterObject {
    let spec = BGPPeerSpec {
        node_selector: Some(LabelSelector {
            match_labels: Some([(RACK_LABEL.to_string(), rack.name.clone())].into()),
            match_expressions: None,
        }),
        peer_ip: Some(rack.gateway.to_string()),
        as_number: Some(rack.asn),
        ..Default::default()
    };
    ClusterObject::BgpPeer(Box::new(BGPPeer::new(&format!("tor-{}", rack.name), spec)))
}

/// A node of a rack as its router sees it.
pub struct RackNode<'a> {
    pub name: &'a str,
    pub ip: Ipv4Addr,
}

/// BIRD's protocol names are identifiers.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// BIRD 2's config for a rack's router: eBGP with each node of the rack
/// (routes in, nothing out: the nodes send pod traffic to their gateway,
/// table 10001, and need no routes back) and with every other rack's
/// router over the fabric (everything, next hop self); learned routes go
/// into the router's kernel, where it forwards.
pub fn bird_config(rack: &RackPlan, nodes: &[RackNode], racks: &[RackPlan]) -> String {
    let password = rack
        .password
        .as_ref()
        .map(|p| format!("  password \"{p}\";\n"))
        .unwrap_or_default();
    let mut c = format!(
        "# {} for rack {}, written by strait lab\nrouter id {};\n\
         protocol device {{}}\n\
         protocol direct {{ ipv4; interface \"br0\", \"uplink\"; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}\n\
         template bgp rack_node {{\n  local {} as {};\n  hold time 9;\n  connect retry time 1;\n  \
         graceful restart on;\n{password}  ipv4 {{ import all; export none; }};\n}}\n\
         template bgp spine {{\n  local {} as {};\n  hold time 9;\n  connect retry time 1;\n  \
         ipv4 {{ import all; export all; next hop self; }};\n}}\n",
        Router::Bird,
        rack.name,
        rack.fabric_ip,
        rack.gateway,
        rack.asn,
        rack.fabric_ip,
        rack.asn
    );
    for n in nodes {
        c.push_str(&format!(
            "protocol bgp node_{} from rack_node {{ neighbor {} as {CLUSTER_AS}; }}\n",
            ident(n.name),
            n.ip
        ));
    }
    for r in racks.iter().filter(|r| r.name != rack.name) {
        c.push_str(&format!(
            "protocol bgp tor_{} from spine {{ neighbor {} as {}; }}\n",
            ident(&r.name),
            r.fabric_ip,
            r.asn
        ));
    }
    c
}

/// FRR's config (bgpd, with zebra installing the routes) for the same
/// router.
pub fn frr_config(rack: &RackPlan, nodes: &[RackNode], racks: &[RackPlan]) -> String {
    let mut c = format!(
        "! {} for rack {}, written by strait lab\nfrr defaults traditional\nhostname tor-{}\n\
         route-map NOTHING deny 10\n!\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n \
         no bgp network import-check\n bgp graceful-restart\n",
        Router::Frr,
        rack.name,
        rack.name,
        rack.asn,
        rack.fabric_ip
    );
    for n in nodes {
        c.push_str(&format!(
            " neighbor {ip} remote-as {CLUSTER_AS}\n neighbor {ip} timers 3 9\n neighbor {ip} timers connect 1\n",
            ip = n.ip
        ));
        if let Some(pw) = &rack.password {
            c.push_str(&format!(" neighbor {} password {pw}\n", n.ip));
        }
    }
    let spine: Vec<&RackPlan> = racks.iter().filter(|r| r.name != rack.name).collect();
    for r in &spine {
        c.push_str(&format!(
            " neighbor {ip} remote-as {asn}\n neighbor {ip} timers 3 9\n neighbor {ip} timers connect 1\n",
            ip = r.fabric_ip,
            asn = r.asn
        ));
    }
    c.push_str(" address-family ipv4 unicast\n  redistribute connected\n");
    for n in nodes {
        c.push_str(&format!("  neighbor {} route-map NOTHING out\n", n.ip));
    }
    for r in &spine {
        c.push_str(&format!("  neighbor {} next-hop-self\n", r.fabric_ip));
    }
    c.push_str(" exit-address-family\n!\n");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<RackSpec> {
        vec![
            RackSpec {
                name: "r1".into(),
                subnet: "198.18.1.0/24".parse().unwrap(),
                asn: 65101,
                router: Router::Bird,
                password: None,
            },
            RackSpec {
                name: "r2".into(),
                subnet: "198.18.2.0/24".parse().unwrap(),
                asn: 65102,
                router: Router::Frr,
                password: None,
            },
        ]
    }

    #[test]
    fn routers_take_the_first_rack_address_and_a_fabric_address() {
        let fabric = "198.18.0.0/24".parse().unwrap();
        let r = plan_racks("t", &specs(), fabric, &[]).unwrap();
        assert_eq!(r[0].gateway, Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(r[1].fabric_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(node_address(&r[1], 0), Some(Ipv4Addr::new(198, 18, 2, 2)));
        assert_eq!(r[0].netns, "strait-t-tor-r1");
    }

    #[test]
    fn overlapping_or_unusable_racks_are_refused_with_the_reason() {
        let fabric: Ipv4Net = "198.18.0.0/24".parse().unwrap();
        let pods: IpNet = "198.19.0.0/16".parse().unwrap();
        let mut s = specs();
        s[1].subnet = "198.18.1.128/25".parse().unwrap();
        let e = plan_racks("t", &s, fabric, &[]).unwrap_err();
        assert!(e.contains("overlaps the rack r1"), "{e}");
        let mut s = specs();
        s[0].subnet = "198.19.4.0/24".parse().unwrap();
        let e = plan_racks("t", &s, fabric, &[("pod CIDR", pods)]).unwrap_err();
        assert!(e.contains("overlaps the pod CIDR"), "{e}");
        let mut s = specs();
        s[0].asn = CLUSTER_AS;
        assert!(plan_racks("t", &s, fabric, &[])
            .unwrap_err()
            .contains("eBGP"));
        let mut s = specs();
        s[1].name = "r1".into();
        assert!(plan_racks("t", &s, fabric, &[])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn router_configs_peer_with_the_rack_nodes_and_the_other_routers() {
        let fabric = "198.18.0.0/24".parse().unwrap();
        let r = plan_racks("t", &specs(), fabric, &[]).unwrap();
        let nodes = [RackNode {
            name: "node-a",
            ip: Ipv4Addr::new(198, 18, 1, 2),
        }];
        let b = bird_config(&r[0], &nodes, &r);
        assert!(
            b.contains("protocol bgp node_node_a from rack_node { neighbor 198.18.1.2 as 64512; }")
        );
        assert!(b.contains("protocol bgp tor_r2 from spine { neighbor 198.18.0.2 as 65102; }"));
        assert!(b.contains("local 198.18.1.1 as 65101;"));
        assert!(!b.contains("tor_r1"));
        let f = frr_config(&r[1], &nodes, &r);
        assert!(f.contains("router bgp 65102\n"));
        assert!(f.contains(" neighbor 198.18.0.1 remote-as 65101\n"));
        assert!(f.contains("  neighbor 198.18.1.2 route-map NOTHING out\n"));
        match &rack_objects(&r[0])[..] {
            [ClusterObject::BgpPeer(p)] => assert!(p.spec.password.is_none()),
            _ => panic!("one BGPPeer, no Secret, without a password"),
        }
        match rack_peer(&r[0]) {
            ClusterObject::BgpPeer(p) => {
                assert_eq!(p.spec.peer_ip.as_deref(), Some("198.18.1.1"));
                assert_eq!(p.spec.as_number, Some(65101));
                assert_eq!(p.metadata.name.as_deref(), Some("tor-r1"));
            }
            _ => panic!("not a BGPPeer"),
        }
    }

    #[test]
    fn a_rack_password_goes_to_both_routers_configs_and_into_a_secret() {
        let fabric = "198.18.0.0/24".parse().unwrap();
        let mut s = specs();
        s[0].password = Some("s3cret".into());
        s[1].password = Some("s3cret".into());
        let r = plan_racks("t", &s, fabric, &[]).unwrap();
        let nodes = [RackNode {
            name: "node-a",
            ip: Ipv4Addr::new(198, 18, 1, 2),
        }];
        assert!(bird_config(&r[0], &nodes, &r).contains("  password \"s3cret\";\n"));
        assert!(frr_config(&r[1], &nodes, &r).contains(" neighbor 198.18.1.2 password s3cret\n"));
        let objs = rack_objects(&r[0]);
        let (ClusterObject::Secret(sec), ClusterObject::BgpPeer(p)) = (&objs[0], &objs[1]) else {
            panic!("a Secret, then the BGPPeer");
        };
        assert_eq!(
            sec.metadata.namespace.as_deref(),
            Some(crate::bgp::SECRETS_NAMESPACE)
        );
        let r#ref = &p.spec.password.as_ref().unwrap().secret_key_ref;
        assert_eq!(
            (r#ref.name.as_str(), r#ref.key.as_str()),
            ("tor-r1", "password")
        );
        assert_eq!(sec.string_data.as_ref().unwrap()["password"], "s3cret");
        s[0].password = Some("two words".into());
        assert!(plan_racks("t", &s, fabric, &[])
            .unwrap_err()
            .contains("without spaces"));
    }
}
