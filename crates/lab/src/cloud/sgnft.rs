//! Security groups as the VPC enforces them: one nftables table in the VPC
//! namespace, rewritten whole (one atomic transaction) with the records.
//! Stateful, as a cloud's groups are: replies of an accepted connection
//! pass. Each linked ENI has a chain for what it sends (`iifname`: its
//! egress) and one for what it receives (`oifname`: its ingress); a packet
//! between two ENIs passes both. Rules are `strait_model::cloud::sg`'s,
//! in the same order: the groups as attached, each group's rules, then
//! "members of a normal group talk freely" (the peer's address is one of
//! the group's ENIs'), then the defaults.

use strait_model::cloud::provider::{Eni, EniKind};
use strait_model::cloud::sg::{Action, Direction, GroupKind, Protocol};
use strait_model::cloud::vpc::Vpc;

pub const TABLE: &str = "strait_vpc";

fn chain_name(dir: Direction, eni: &Eni) -> String {
    let d = match dir {
        Direction::Egress => "out",
        Direction::Ingress => "in",
    };
    format!("{d}_{}", eni.id.replace('-', "_"))
}

/// Every address of the ENIs in group `g`.
fn members(vpc: &Vpc, g: &str) -> Vec<String> {
    vpc.enis
        .values()
        .filter(|e| e.security_groups.iter().any(|x| x == g))
        .flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied()))
        .map(|ip| ip.to_string())
        .collect()
}

fn chain(vpc: &Vpc, dir: Direction, e: &Eni) -> String {
    let (peer, verb) = match dir {
        Direction::Ingress => ("saddr", "dropped"),
        Direction::Egress => ("daddr", "accepted"),
    };
    // An accept in a jumped-to chain would end the whole hook: what the
    // sender's egress accepts returns, so the receiver's ingress still
    // judges it.
    let pass = match dir {
        Direction::Ingress => "accept",
        Direction::Egress => "return",
    };
    let mut body = String::new();
    for gid in &e.security_groups {
        let Some(g) = vpc.spec.security_groups.iter().find(|g| &g.id == gid) else {
            continue;
        };
        for (i, r) in g
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction == dir)
        {
            let fam = if r.cidr.addr().is_ipv4() { "ip" } else { "ip6" };
            let proto = match r.protocol {
                Protocol::Tcp => " meta l4proto tcp".to_string(),
                Protocol::Udp => " meta l4proto udp".to_string(),
                Protocol::Icmp => " meta l4proto { icmp, ipv6-icmp }".to_string(),
                Protocol::All => String::new(),
            };
            let ports = match r.port_range() {
                Ok(Some((a, b))) => format!(" th dport {a}-{b}"),
                _ => String::new(),
            };
            let action = match r.action {
                Action::Accept => pass,
                Action::Drop => "drop",
            };
            body.push_str(&format!(
                "    {fam} {peer} {}{proto}{ports} {action} comment \"{} rule {}\"\n",
                r.cidr,
                g.id,
                i + 1
            ));
        }
    }
    for gid in &e.security_groups {
        let normal = vpc
            .spec
            .security_groups
            .iter()
            .any(|g| &g.id == gid && g.kind == GroupKind::Normal);
        let m: Vec<String> = members(vpc, gid)
            .into_iter()
            .filter(|ip| !ip.contains(':'))
            .collect();
        if normal && !m.is_empty() {
            body.push_str(&format!(
                "    ip {peer} {{ {} }} {pass} comment \"{gid}: members talk freely\"\n",
                m.join(", ")
            ));
        }
    }
    let default = match dir {
        Direction::Ingress => "drop",
        Direction::Egress => "return",
    };
    body.push_str(&format!(
        "    {default} comment \"default: {} {verb}\"\n",
        match dir {
            Direction::Ingress => "inbound",
            Direction::Egress => "outbound",
        }
    ));
    format!("  chain {} {{\n{body}  }}\n", chain_name(dir, e))
}

/// The whole table for the records (a script for `nft -f -`).
pub fn script(vpc: &Vpc) -> String {
    let linked: Vec<&Eni> = vpc
        .enis
        .values()
        .filter(|e| e.node.is_some() && matches!(e.kind, EniKind::Secondary | EniKind::Trunk))
        .collect();
    // Member ENIs are judged by their own groups, told apart on their
    // trunk's link by their address (seed 002: the member's groups, not
    // the trunk's, decide a pod's traffic).
    let members: Vec<(&Eni, &str)> = vpc
        .enis
        .values()
        .filter_map(|e| match &e.kind {
            EniKind::Member { trunk, .. } if linked.iter().any(|t| &t.id == trunk) => {
                Some((e, trunk.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut s =
        format!("add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for e in linked
        .iter()
        .copied()
        .chain(members.iter().map(|(e, _)| *e))
    {
        s.push_str(&chain(vpc, Direction::Egress, e));
        s.push_str(&chain(vpc, Direction::Ingress, e));
    }
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n");
    for (m, trunk) in &members {
        let fam = if m.primary_ip.is_ipv4() { "ip" } else { "ip6" };
        s.push_str(&format!(
            "    iifname \"{trunk}\" {fam} saddr {} jump {}\n    oifname \"{trunk}\" {fam} daddr {} jump {}\n",
            m.primary_ip,
            chain_name(Direction::Egress, m),
            m.primary_ip,
            chain_name(Direction::Ingress, m),
        ));
    }
    // A trunk's own groups judge its own traffic, not its members'.
    let not_members = |e: &Eni, dir: &str| {
        let m: Vec<String> = members
            .iter()
            .filter(|(m, t)| *t == e.id && m.primary_ip.is_ipv4())
            .map(|(m, _)| m.primary_ip.to_string())
            .collect();
        if m.is_empty() {
            String::new()
        } else {
            format!(" ip {dir} != {{ {} }}", m.join(", "))
        }
    };
    for e in &linked {
        s.push_str(&format!(
            "    iifname \"{}\"{} jump {}\n",
            e.id,
            not_members(e, "saddr"),
            chain_name(Direction::Egress, e)
        ));
    }
    for e in &linked {
        s.push_str(&format!(
            "    oifname \"{}\"{} jump {}\n",
            e.id,
            not_members(e, "daddr"),
            chain_name(Direction::Ingress, e)
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// Apply the table (in the VPC namespace: the emulator's own).
pub fn apply(vpc: &Vpc) -> anyhow::Result<()> {
    nft("security groups", &script(vpc))
}

/// Run an nftables script (`nft -f -`); `what` names it in the error.
pub fn nft(what: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft ({what}): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_eni_gets_its_groups_in_order_then_membership_then_defaults() {
        let spec: strait_model::cloud::VpcSpec = serde_yaml::from_str(
            "vswitches: [{id: vsw-a, cidr: 198.18.32.0/24, zone: a}]
securityGroups:
- {id: sg-web, rules: [{direction: ingress, protocol: tcp, ports: 80/80, cidr: 0.0.0.0/0, action: accept},
                       {direction: ingress, protocol: all, cidr: 198.18.33.0/24, action: drop}]}
- {id: sg-db, kind: enterprise}",
        )
        .unwrap();
        let mut vpc = Vpc::new(spec).unwrap();
        vpc.adopt_node("n1", "198.18.0.1".parse().unwrap());
        let web = vpc
            .create_eni("n1", "vsw-a", &["sg-web".into()], false)
            .unwrap();
        let db = vpc
            .create_eni("n1", "vsw-a", &["sg-db".into()], false)
            .unwrap();
        let s = script(&vpc);
        let in_web = s
            .split(&format!("chain in_{}", web.id.replace('-', "_")))
            .nth(1)
            .unwrap();
        let in_web = in_web.split("  }").next().unwrap();
        let lines: Vec<&str> = in_web
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "{")
            .collect();
        assert!(
            lines[0].starts_with("ip saddr 0.0.0.0/0 meta l4proto tcp th dport 80-80 accept"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with("ip saddr 198.18.33.0/24 drop"),
            "{lines:#?}"
        );
        assert!(
            lines[2].contains("members talk freely")
                && lines[2].contains(&web.primary_ip.to_string()),
            "{lines:#?}"
        );
        assert!(
            lines[3].starts_with("drop comment \"default: inbound dropped\""),
            "{lines:#?}"
        );
        // An enterprise group has no membership rule.
        let in_db = s
            .split(&format!("chain in_{}", db.id.replace('-', "_")))
            .nth(1)
            .unwrap();
        let in_db = in_db.split("  }").next().unwrap();
        assert!(!in_db.contains("members"), "{in_db}");
        assert!(s.contains("ct state established,related accept"));
        // The sender's egress never ends the hook with accept: the
        // receiver's ingress must still judge.
        let out_web = s
            .split(&format!("chain out_{}", web.id.replace('-', "_")))
            .nth(1)
            .unwrap();
        let out_web = out_web.split("  }").next().unwrap();
        assert!(
            !out_web.lines().any(|l| l
                .split(" comment")
                .next()
                .unwrap()
                .trim_end()
                .ends_with("accept")),
            "{out_web}"
        );
        assert!(
            out_web.contains("return comment \"default: outbound accepted\""),
            "{out_web}"
        );
        assert!(s.contains(&format!("iifname \"{}\" jump out_", web.id)));
    }
}
