//! Security groups, as the VPC enforces them on each ENI a packet leaves
//! or enters (seed 002: same-node pod traffic never reaches the member
//! ENIs, so groups decide only what crosses the VPC).
//!
//! Semantics, modelled on Alibaba Cloud's: an ENI's groups are consulted
//! in the order they are attached, each group's rules in order; the first
//! rule whose direction, protocol, port range and peer CIDR match decides.
//! No rule matching: a *normal* group lets its own members talk (the peer
//! ENI is in the same group); an *enterprise* group does not. Then the
//! defaults: inbound dropped, outbound accepted.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(default)]
    pub kind: GroupKind,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// Members talk to each other freely.
    #[default]
    Normal,
    /// Members are isolated from each other unless a rule says otherwise.
    Enterprise,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

impl Protocol {
    fn matches(self, proto: u8) -> bool {
        match self {
            Protocol::All => true,
            Protocol::Tcp => proto == 6,
            Protocol::Udp => proto == 17,
            Protocol::Icmp => proto == 1 || proto == 58,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// "80/80", "1/65535" (Alibaba's form); absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// The peer: the source of inbound traffic, the destination of
    /// outbound.
    pub cidr: IpNet,
    pub action: Action,
}

impl Rule {
    /// The port range, checked.
    pub fn port_range(&self) -> Result<Option<(u16, u16)>, String> {
        let Some(p) = &self.ports else {
            return Ok(None);
        };
        let bad = || format!("ports {p:?}: write FROM/TO, e.g. 80/80 or 1/65535");
        let (a, b) = p.split_once('/').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok(Some((a, b)))
    }

    fn matches(&self, dir: Direction, p: &Packet, peer: IpAddr) -> bool {
        self.direction == dir
            && self.protocol.matches(p.proto)
            && self.cidr.contains(&peer)
            && match self.port_range() {
                Ok(None) => true,
                Ok(Some((a, b))) => (a..=b).contains(&p.dport),
                Err(_) => false,
            }
    }
}

impl SecurityGroup {
    pub fn check(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            r.port_range()
                .map_err(|e| format!("security group {} rule {}: {e}", self.id, i + 1))?;
            if r.ports.is_some() && matches!(r.protocol, Protocol::Icmp | Protocol::All) {
                return Err(format!(
                    "security group {} rule {}: ports need protocol tcp or udp",
                    self.id,
                    i + 1
                ));
            }
        }
        Ok(())
    }
}

/// What a packet looks like to the VPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port (0 for ICMP).
    pub dport: u16,
}

/// A verdict and what gave it, for `strait explain` and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub accept: bool,
    /// "sg-web rule 2", "sg-web: members talk freely", "default: inbound
    /// dropped", ...
    pub by: String,
}

/// Judge `p` entering (Ingress) or leaving (Egress) an ENI that is in
/// `groups`; `peer_groups` are the groups of the ENI at the other end, if
/// it is one of the VPC's.
pub fn judge(
    dir: Direction,
    p: &Packet,
    groups: &[&SecurityGroup],
    peer_groups: &[String],
) -> Decision {
    let peer = match dir {
        Direction::Ingress => p.src,
        Direction::Egress => p.dst,
    };
    for g in groups {
        if let Some((i, r)) = g
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(dir, p, peer))
        {
            return Decision {
                accept: r.action == Action::Accept,
                by: format!("{} rule {}", g.id, i + 1),
            };
        }
    }
    if let Some(g) = groups
        .iter()
        .find(|g| g.kind == GroupKind::Normal && peer_groups.contains(&g.id))
    {
        return Decision {
            accept: true,
            by: format!("{}: members of a normal group talk freely", g.id),
        };
    }
    match dir {
        Direction::Ingress => Decision {
            accept: false,
            by: "default: inbound dropped".into(),
        },
        Direction::Egress => Decision {
            accept: true,
            by: "default: outbound accepted".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(yaml: &str) -> SecurityGroup {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn tcp(src: &str, dst: &str, port: u16) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            dport: port,
        }
    }

    #[test]
    fn first_matching_rule_decides_then_membership_then_defaults() {
        let web = group(
            "{id: sg-web, rules: [
               {direction: ingress, protocol: tcp, ports: 22/22, cidr: 0.0.0.0/0, action: drop},
               {direction: ingress, protocol: tcp, ports: 80/80, cidr: 198.18.0.0/16, action: accept}]}",
        );
        let db = group("{id: sg-db, kind: enterprise}");
        let inbound = |p: &Packet, g: &SecurityGroup, peers: &[&str]| {
            let peers: Vec<String> = peers.iter().map(|s| s.to_string()).collect();
            judge(Direction::Ingress, p, &[g], &peers)
        };
        let d = inbound(&tcp("198.18.1.2", "198.18.2.3", 80), &web, &[]);
        assert_eq!((d.accept, d.by.as_str()), (true, "sg-web rule 2"));
        // A drop before an accept wins, even for a member.
        let d = inbound(&tcp("198.18.1.2", "198.18.2.3", 22), &web, &["sg-web"]);
        assert_eq!((d.accept, d.by.as_str()), (false, "sg-web rule 1"));
        // No rule: members of a normal group talk, strangers do not.
        let d = inbound(&tcp("198.18.1.2", "198.18.2.3", 8080), &web, &["sg-web"]);
        assert!(d.accept && d.by.contains("normal group"), "{d:?}");
        let d = inbound(&tcp("198.18.1.2", "198.18.2.3", 8080), &web, &["sg-db"]);
        assert_eq!(
            (d.accept, d.by.as_str()),
            (false, "default: inbound dropped")
        );
        // An enterprise group isolates its own members.
        let d = inbound(&tcp("198.18.1.2", "198.18.2.3", 5432), &db, &["sg-db"]);
        assert!(!d.accept, "{d:?}");
        // Outbound is accepted unless a rule drops it.
        let d = judge(
            Direction::Egress,
            &tcp("198.18.1.2", "8.8.8.8", 53),
            &[&db],
            &[],
        );
        assert_eq!(
            (d.accept, d.by.as_str()),
            (true, "default: outbound accepted")
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_fix() {
        let g = group("{id: sg, rules: [{direction: ingress, protocol: tcp, ports: '90/80', cidr: 0.0.0.0/0, action: accept}]}");
        assert!(g.check().unwrap_err().contains("FROM/TO"));
        let g = group("{id: sg, rules: [{direction: ingress, protocol: icmp, ports: '1/2', cidr: 0.0.0.0/0, action: accept}]}");
        assert!(g.check().unwrap_err().contains("tcp or udp"));
        let v6 = group("{id: sg6, rules: [{direction: ingress, protocol: all, cidr: 'fd00::/8', action: accept}]}");
        assert_eq!(v6.check(), Ok(()));
        let d = judge(
            Direction::Ingress,
            &tcp("fd00::1", "fd00::2", 1),
            &[&v6],
            &[],
        );
        assert!(d.accept);
    }
}
