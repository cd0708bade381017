//! Services and policy on a walk: a frontend's translation (and its
//! reverse, where the translating node puts it back), hairpins, and
//! NetworkPolicy as the node's agent compiles it.

use super::walk::Walker;
use super::{Nat, Packet, Verdict};
use std::net::IpAddr;

impl Walker<'_> {
    /// A service frontend at `pkt`'s destination: pick a backend (the
    /// forced one, else the first active) and rewrite the destination.
    /// Returns what happened ("" when `pkt` is not for a service).
    pub(super) fn translate(
        &self,
        node: &str,
        pkt: &mut Packet,
        nat: &mut Option<Nat>,
        pick: Option<IpAddr>,
        by: &str,
    ) -> Result<String, Verdict> {
        if !self.status.contains_key(node) {
            return Ok(String::new());
        }
        let found = super::walk::lookup(self.scope.site, node, pkt.dst, pkt.port, pkt.udp)
            .map_err(|e| Verdict::Dropped(format!("{node}'s agent: {e:#}")))?;
        let Some(e) = found.entry else {
            return Ok(String::new());
        };
        let candidates: Vec<IpAddr> = e.active().map(|b| IpAddr::from(b.ip)).collect();
        let chosen = pick
            .and_then(|p| e.active().find(|b| IpAddr::from(b.ip) == p))
            .or_else(|| e.active().next());
        let Some(b) = chosen else {
            return Err(Verdict::Dropped(format!(
                "service {}/{} {} has no ready backend on {node}",
                e.namespace, e.name, e.frontend
            )));
        };
        let name = format!("{}/{}", e.namespace, e.name);
        *nat = Some(Nat {
            service: name.clone(),
            vip: pkt.dst,
            vport: pkt.port,
            backend: b.ip.into(),
            bport: b.port,
            node: node.to_string(),
            candidates: candidates.clone(),
            client: pkt.src,
            external: e.external,
            local_only: e.local_only,
            masquerade: None,
        });
        let why = format!(
            "{by}: service {name} {} -> {}:{} ({} of {} backends{})",
            e.frontend,
            b.ip,
            b.port,
            b.pod.as_deref().unwrap_or("a pod"),
            candidates.len(),
            if candidates.len() > 1 {
                ", picked per connection"
            } else {
                ""
            }
        );
        pkt.dst = b.ip.into();
        pkt.port = b.port;
        // A pod reaching itself: it would drop a packet from its own
        // address, so the source becomes the hairpin address (both
        // service backends do this) and the reply comes back to it.
        if pkt.dst == pkt.src {
            let hp = IpAddr::from(strait_model::services::HAIRPIN_IP4);
            pkt.src = hp;
            if let Some(n) = nat.as_mut() {
                n.masquerade = Some(hp);
            }
            return Ok(format!(
                "{why}; hairpin: the pod is its own backend, the source becomes {hp}"
            ));
        }
        Ok(why)
    }

    /// A reply from the backend of a translated connection, at the node
    /// that translated: the source goes back to the service address.
    pub(super) fn untranslate(
        &self,
        node: &str,
        pkt: &mut Packet,
        nat: &Option<Nat>,
        reply: bool,
        by: &str,
    ) -> String {
        match nat {
            Some(n) if reply && n.node == node && pkt.src == n.backend => {
                pkt.src = n.vip;
                format!(
                    "{by}: reply source {} -> service address {}",
                    n.backend, n.vip
                )
            }
            _ => String::new(),
        }
    }

    /// The lab pod of `node` holding `ip`.
    pub(super) fn local_pod(&self, node: &str, ip: IpAddr) -> Option<String> {
        self.scope
            .pods
            .iter()
            .find(|p| p.node == node && p.ip == Some(ip))
            .map(|p| p.label.clone())
    }

    /// NetworkPolicy where `ns` (a node) enforces it on a new connection:
    /// the sender's egress if it is a pod of this node, the receiver's
    /// ingress if it is, as the node's agent compiles them (the compiler
    /// its policy reconciler programs from). Replies belong to an allowed
    /// connection. The note, or the drop.
    pub(super) fn policy(
        &self,
        ns: &str,
        pkt: &Packet,
        reply: bool,
    ) -> Result<Vec<String>, Verdict> {
        let node = self.node_of(ns);
        let (out, inn) = (
            self.local_pod(&node, pkt.src),
            self.local_pod(&node, pkt.dst),
        );
        if reply || (out.is_none() && inn.is_none()) {
            return Ok(vec![]);
        }
        let req = strait_model::api::Request::PolicyExplain {
            src: pkt.src.to_string(),
            dst: pkt.dst.to_string(),
            port: pkt.port,
            proto: if pkt.udp {
                strait_model::policy::Proto::Udp
            } else {
                strait_model::policy::Proto::Tcp
            },
        };
        let v = match self.scope.site.agent(&node, &req) {
            Ok(strait_model::api::Response::PolicyVerdict(e)) => e.verdict,
            Ok(_) | Err(_) => {
                return Ok(vec![format!("NetworkPolicy: {node}'s agent did not say")])
            }
        };
        let mut notes = vec![];
        for (who, dir, d) in [(out, "egress", &v.egress), (inn, "ingress", &v.ingress)] {
            let Some(who) = who else { continue };
            if matches!(
                d,
                strait_model::policy::Decision::NotIsolated
                    | strait_model::policy::Decision::Loopback
            ) {
                continue;
            }
            if !d.allows() {
                return Err(Verdict::Dropped(format!(
                    "NetworkPolicy on {node}: {dir} of {who} {d}"
                )));
            }
            notes.push(format!("NetworkPolicy: {dir} of {who} {d}"));
        }
        Ok(notes)
    }
}
