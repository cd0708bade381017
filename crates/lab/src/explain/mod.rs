//! `strait lab explain SRC DST`: every hop of a flow, for the request and
//! then the reply, computed from live state: each namespace's FIB (rules
//! included) asked with `ip route get`, the tc programs attached to each
//! interface, the agents' BPF endpoint maps and service tables, VXLAN FDBs.
//! For each hop it says what decided the next step, the packet's addresses
//! there (after NAT, inside a tunnel), and whether a capture on that
//! interface sees it; hops the fast path skips are listed as skipped, with
//! the reason. `--verify` captures on every hop, predicted seen or skipped,
//! while a probe crosses, and marks each confirmed or contradicted.
//!
//! What decides a hop is read, not modelled: the kernel's route lookup
//! answers for the host stack and for bpf_fib_lookup; which program runs
//! is what tc shows; whether from-container or from-netdev redirects into
//! a pod is whether the pod is in that node's strait_endpoints map. The
//! one choice that can only be known by running the program (a service's
//! backend, picked per connection) shows its candidates, and `--verify`
//! follows the backend that answered.

mod arrive;
mod bpf;
mod dot;
mod links;
pub mod live;
mod nat;
mod node;
pub mod site;
mod verify;
mod vlan;
mod vpc;
mod walk;

pub use dot::dot;
pub use node::explain_on_node;
pub use verify::{verify, Check, Verified};
pub use walk::{explain, explain_in};

use std::net::IpAddr;

/// A tunnel header around the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encap {
    /// "ipip" or "vxlan".
    pub kind: &'static str,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// The packet as it is at one hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The destination port (0: the client's ephemeral port, for replies).
    pub port: u16,
    pub udp: bool,
    pub outer: Option<Encap>,
    /// The 802.1Q tag it carries here.
    pub vlan: Option<u16>,
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} > {}", self.src, self.dst)?;
        if self.port != 0 {
            write!(f, ":{}", self.port)?;
        }
        if let Some(o) = self.outer {
            write!(f, " in {} {} > {}", o.kind, o.src, o.dst)?;
        }
        if let Some(v) = self.vlan {
            write!(f, " vlan {v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

/// Whether a capture on the hop's interface sees the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sight {
    Seen,
    Skipped(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The node, pod or other lab namespace ("node-a", "client", "fabric").
    pub at: String,
    /// The node the namespace belongs to (a pod's node), for grouping.
    pub node: String,
    pub netns: String,
    pub iface: String,
    pub dir: Dir,
    pub packet: Packet,
    pub sight: Sight,
    /// What decided this hop, and why.
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered to this namespace (its label).
    Delivered(String),
    Dropped(String),
    /// It leaves what this explanation can read (a node explaining its own
    /// hops, whose next node's agent does not answer): where, and why it
    /// is not followed.
    Left(String),
}

/// One direction of the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
}

/// A service translation on the way: where and to what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub service: String,
    pub vip: IpAddr,
    pub vport: u16,
    pub backend: IpAddr,
    pub bport: u16,
    /// The node that translated (and translates the reply back).
    pub node: String,
    /// Every backend the service could have picked.
    pub candidates: Vec<IpAddr>,
    /// The client, as it sent the request.
    pub client: IpAddr,
    /// From outside the cluster (NodePort, ExternalIP, LoadBalancer), and
    /// externalTrafficPolicy Local.
    pub external: bool,
    pub local_only: bool,
    /// The node address the client was masqueraded to (an external
    /// connection sent on to another node's backend).
    pub masquerade: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub src: String,
    pub dst: String,
    /// The packet as the source sends it.
    pub sent: Packet,
    pub request: Leg,
    /// None when the request is not delivered.
    pub reply: Option<Leg>,
    pub nat: Option<Nat>,
}

impl Explanation {
    /// The table people read: per leg, each hop with its interface, the
    /// packet there, whether a capture sees it, and why.
    pub fn table(&self) -> String {
        let mut out = format!("{} -> {}\n", self.src, self.dst);
        if let Some(n) = &self.nat {
            let others: Vec<String> = n
                .candidates
                .iter()
                .filter(|c| **c != n.backend)
                .map(IpAddr::to_string)
                .collect();
            out.push_str(&format!(
                "service {} {}:{} -> backend {}:{}, translated on {}{}\n",
                n.service,
                n.vip,
                n.vport,
                n.backend,
                n.bport,
                n.node,
                if others.is_empty() {
                    String::new()
                } else {
                    format!(" (picked per connection; also {})", others.join(", "))
                }
            ));
        }
        for (name, leg) in [
            ("request", Some(&self.request)),
            ("reply", self.reply.as_ref()),
        ] {
            let Some(leg) = leg else { continue };
            out.push_str(&format!("\n{name}\n"));
            out.push_str(&leg_table(leg));
        }
        out
    }
}

fn leg_table(leg: &Leg) -> String {
    let w_at = leg
        .hops
        .iter()
        .map(|h| h.at.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let w_if = leg
        .hops
        .iter()
        .map(|h| h.iface.len() + 3)
        .max()
        .unwrap_or(0)
        .max(9);
    let w_pk = leg
        .hops
        .iter()
        .map(|h| h.packet.to_string().len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!(
        "  {:<3} {:<w_at$} {:<w_if$} {:<w_pk$} {:<8} WHY\n",
        "#", "AT", "INTERFACE", "PACKET", "CAPTURE"
    );
    for (i, h) in leg.hops.iter().enumerate() {
        let arrow = match h.dir {
            Dir::In => "in",
            Dir::Out => "out",
        };
        let (cap, why) = match &h.sight {
            Sight::Seen => ("seen", h.why.clone()),
            Sight::Skipped(r) => ("skipped", format!("{}; {r}", h.why)),
        };
        out.push_str(&format!(
            "  {:<3} {:<w_at$} {:<w_if$} {:<w_pk$} {:<8} {}\n",
            i + 1,
            h.at,
            format!("{} {arrow}", h.iface),
            h.packet.to_string(),
            cap,
            why
        ));
    }
    out.push_str(&match &leg.verdict {
        Verdict::Delivered(to) => format!("  verdict: delivered to {to}\n"),
        Verdict::Dropped(why) => format!("  verdict: dropped: {why}\n"),
        Verdict::Left(why) => format!("  verdict: not followed further: {why}\n"),
    });
    out
}
