//! The lab VPC's security groups on a walk through it: what crosses from
//! one ENI to another is judged by the sending ENI's groups (egress) and
//! the receiving ENI's (ingress), with `strait_model::cloud::sg::judge`,
//! the function the VPC's own nftables table is generated from, over the
//! cloud's records. A trunk's link carries its members: the member whose
//! address is the pod's is the ENI that counts (seed 002).

use std::net::IpAddr;
use strait_model::cloud::provider::{Eni, EniKind};
use strait_model::cloud::sg::{judge, Direction, Packet as SgPacket};
use strait_model::cloud::vpc::Vpc;

pub struct Groups {
    vpc: Vpc,
}

fn holds(e: &Eni, ip: IpAddr) -> bool {
    e.primary_ip == ip || e.secondary_ips.contains(&ip)
}

impl Groups {
    /// The VPC's records, if the lab has a cloud.
    pub fn load(st: &crate::state::LabState) -> Option<Groups> {
        st.plan.cloud.as_ref()?;
        crate::cloud::server::load(st)
            .ok()
            .map(|vpc| Groups { vpc })
    }

    /// The ENI behind VPC link `link` (named by its id) for the pod side's
    /// address `ip`: the trunk's member holding it, else the linked ENI.
    fn eni(&self, link: &str, ip: IpAddr) -> Option<&Eni> {
        let linked = self.vpc.enis.get(link)?;
        if linked.kind == EniKind::Trunk {
            let member = self.vpc.enis.values().find(|e| {
                matches!(&e.kind, EniKind::Member { trunk, .. } if trunk == link) && holds(e, ip)
            });
            if let Some(m) = member {
                return Some(m);
            }
        }
        Some(linked)
    }

    fn peer_groups(&self, ip: IpAddr) -> Vec<String> {
        self.vpc
            .enis
            .values()
            .find(|e| holds(e, ip))
            .map(|e| e.security_groups.clone())
            .unwrap_or_default()
    }

    fn describe(e: &Eni) -> String {
        match &e.kind {
            EniKind::Member { trunk, vlan } => {
                format!("member ENI {} (VLAN {vlan} on trunk {trunk})", e.id)
            }
            _ => format!("ENI {}", e.id),
        }
    }

    /// A new connection from link `from` to link `to`: the notes, or why
    /// a group drops it.
    pub fn cross(
        &self,
        from: &str,
        to: &str,
        src: IpAddr,
        dst: IpAddr,
        udp: bool,
        port: u16,
    ) -> Result<Vec<String>, String> {
        let p = SgPacket {
            src,
            dst,
            proto: if udp { 17 } else { 6 },
            dport: port,
        };
        let mut notes = vec![];
        for (dir, link, ip, peer) in [
            (Direction::Egress, from, src, dst),
            (Direction::Ingress, to, dst, src),
        ] {
            let Some(e) = self.eni(link, ip) else {
                continue;
            };
            let groups: Vec<_> = e
                .security_groups
                .iter()
                .filter_map(|g| self.vpc.spec.security_groups.iter().find(|s| &s.id == g))
                .collect();
            let d = judge(dir, &p, &groups, &self.peer_groups(peer));
            let what = match dir {
                Direction::Egress => "leaving",
                Direction::Ingress => "entering",
            };
            let line = format!("security group, {what} {}: {}", Self::describe(e), d.by);
            if !d.accept {
                return Err(if d.by.contains("dropped") {
                    line
                } else {
                    format!("{line} drops it")
                });
            }
            notes.push(line);
        }
        Ok(notes)
    }
}
