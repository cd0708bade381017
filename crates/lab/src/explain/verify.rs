//! `explain --verify`: capture on every hop of the explanation, those
//! predicted seen and those predicted skipped, while one probe crosses;
//! each hop is confirmed or contradicted. A contradiction is a bug in
//! strait (or in the explanation).

use super::{explain, Dir, Explanation, Sight};
use crate::hops::Hop as Point;
use crate::state::LabState;
use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One hop's evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// "request" or "reply".
    pub leg: &'static str,
    /// The hop's index in its leg (usize::MAX: the leg's verdict).
    pub hop: usize,
    /// Packets of the hop's (source, destination) the capture saw.
    pub captured: usize,
    pub confirmed: bool,
}

impl Check {
    /// A leg's verdict contradicted by the probe's outcome.
    fn verdict(leg: &'static str) -> Check {
        Check {
            leg,
            hop: usize::MAX,
            captured: 0,
            confirmed: false,
        }
    }
}

#[derive(Debug)]
pub struct Verified {
    pub explanation: Explanation,
    pub answered_by: String,
    pub checks: Vec<Check>,
}

impl Verified {
    pub fn contradictions(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.confirmed).collect()
    }

    pub fn table(&self) -> String {
        let mut out = self.explanation.table();
        out.push_str(&format!(
            "\nverified by capture (answered by {}):\n",
            self.answered_by
        ));
        for c in &self.checks {
            if c.hop == usize::MAX {
                out.push_str(&format!(
                    "  {:<7} CONTRADICTED: explained as {}, but answered by {}\n",
                    c.leg,
                    match (
                        c.leg,
                        &self.explanation.request.verdict,
                        &self.explanation.reply
                    ) {
                        ("request", super::Verdict::Delivered(to), _) =>
                            format!("delivered to {to}"),
                        ("reply", _, Some(r)) => format!("{:?}", r.verdict),
                        _ => "not delivered".to_string(),
                    },
                    self.answered_by
                ));
                continue;
            }
            let leg = if c.leg == "request" {
                &self.explanation.request
            } else {
                self.explanation
                    .reply
                    .as_ref()
                    .expect("a reply was checked")
            };
            let h = &leg.hops[c.hop];
            let predicted = match h.sight {
                Sight::Seen => "seen",
                Sight::Skipped(_) => "skipped",
            };
            out.push_str(&format!(
                "  {:<7} #{:<2} {:<12} {:<18} predicted {:<7} captured {:<3} {}\n",
                c.leg,
                c.hop + 1,
                h.at,
                format!(
                    "{} {}",
                    h.iface,
                    if h.dir == Dir::In { "in" } else { "out" }
                ),
                predicted,
                c.captured,
                if c.confirmed {
                    "confirmed"
                } else {
                    "CONTRADICTED"
                }
            ));
        }
        let n = self.contradictions().len();
        out.push_str(&format!(
            "{} hops checked, {n} contradicted\n",
            self.checks.len()
        ));
        out
    }
}

/// Explain, then capture along every path the flow could take (each
/// service backend's) while one probe crosses, and check the path of the
/// backend that answered.
pub fn verify(st: &LabState, src: &str, dst: &str) -> anyhow::Result<Verified> {
    // One probe first, unobserved: neighbours along the path get resolved
    // (explain follows frames by the MAC the neighbour table holds).
    let warm = explain(st, src, dst, None)?;
    let src_ns = crate::run::target_netns(&st.plan, src)?;
    let _ = crate::probe::probe(
        &crate::run::netns_path(&src_ns),
        SocketAddr::new(warm.sent.dst, warm.sent.port),
        warm.sent.udp,
        Duration::from_millis(500),
    );
    let first = explain(st, src, dst, None)?;
    let mut all = vec![first.clone()];
    if let Some(n) = &first.nat {
        for c in n.candidates.iter().filter(|c| **c != n.backend) {
            all.push(explain(st, src, dst, Some(*c))?);
        }
    }
    let mut points: Vec<Point> = vec![];
    for e in &all {
        for h in e
            .request
            .hops
            .iter()
            .chain(e.reply.iter().flat_map(|l| &l.hops))
        {
            if !points
                .iter()
                .any(|p| p.netns == h.netns && p.iface == h.iface)
            {
                points.push(Point {
                    label: format!("{} {}", h.at, h.iface),
                    netns: h.netns.clone(),
                    iface: h.iface.clone(),
                });
            }
        }
    }
    let to = SocketAddr::new(first.sent.dst, first.sent.port);
    let udp = first.sent.udp;
    let (captured, probe) = crate::hops::capture::capture_during(&points, || {
        crate::probe::probe(
            &crate::run::netns_path(&src_ns),
            to,
            udp,
            Duration::from_secs(2),
        )
    })?;
    // Explained as dropped: the probe must go unanswered, and the hops up
    // to the drop must see it.
    if matches!(first.request.verdict, super::Verdict::Dropped(_)) {
        let answered = probe.as_ref().ok().map(|p| p.answered_by.clone());
        let mut checks = hop_checks(&first, &points, &captured)?;
        if answered.is_some() {
            checks.push(Check::verdict("request"));
        }
        return Ok(Verified {
            explanation: first,
            answered_by: answered.unwrap_or_else(|| "nobody: dropped, as explained".into()),
            checks,
        });
    }
    // Explained as delivered, but nobody answered: a contradiction, and the
    // captures show where the packet was last seen (on the path of the
    // backend explained; which one the program picked is not known).
    let probe = match probe {
        Ok(p) => p,
        Err(e) => {
            let mut checks = hop_checks(&first, &points, &captured)?;
            checks.push(Check::verdict("request"));
            return Ok(Verified {
                explanation: first,
                answered_by: format!("nobody ({e:#})"),
                checks,
            });
        }
    };
    // The explanation of the backend that answered.
    // The echo server answers with its pod's name (no namespace): the
    // candidate whose backend is a pod of that name.
    let named = |ip: IpAddr| {
        st.plan
            .pods
            .iter()
            .any(|p| p.name == probe.answered_by && st.pod_ip(p) == Some(ip))
    };
    let explanation = match &first.nat {
        Some(_) => all
            .into_iter()
            .find(|e| e.nat.as_ref().is_some_and(|n| named(n.backend)))
            .with_context(|| {
                format!("{} answered but is no candidate backend", probe.answered_by)
            })?,
        None => first,
    };
    // The probe was answered: a leg explained as dropped, or a request
    // explained as delivered elsewhere, is contradicted.
    let mut checks = vec![];
    if let super::Verdict::Delivered(to) = &explanation.request.verdict {
        let answered = st
            .plan
            .pods
            .iter()
            .any(|p| super::live::pod_label(p) == *to && p.name == probe.answered_by);
        if !answered {
            checks.push(Check::verdict("request"));
        }
    }
    for (leg, l) in [
        ("request", Some(&explanation.request)),
        ("reply", explanation.reply.as_ref()),
    ] {
        if l.is_none_or(|l| matches!(l.verdict, super::Verdict::Dropped(_))) {
            checks.push(Check::verdict(leg));
        }
    }
    checks.extend(hop_checks(&explanation, &points, &captured)?);
    Ok(Verified {
        explanation,
        answered_by: probe.answered_by,
        checks,
    })
}

/// Each hop's capture against its prediction.
fn hop_checks(
    explanation: &Explanation,
    points: &[Point],
    captured: &[crate::hops::capture::Captured],
) -> anyhow::Result<Vec<Check>> {
    let mut checks = vec![];
    for (leg, hops) in [
        ("request", Some(&explanation.request)),
        ("reply", explanation.reply.as_ref()),
    ] {
        let Some(hops) = hops else { continue };
        for (i, h) in hops.hops.iter().enumerate() {
            let (IpAddr::V4(s), IpAddr::V4(d)) = (h.packet.src, h.packet.dst) else {
                anyhow::bail!("--verify captures IPv4 only for now")
            };
            let at = points
                .iter()
                .position(|p| p.netns == h.netns && p.iface == h.iface)
                .expect("every hop has a capture point");
            let n = captured[at].pairs.get(&(s, d)).copied().unwrap_or(0);
            // The tags it was seen with (the kernel keeps them out of the
            // frame; the capture reads them from its aux data), against
            // every tag the leg predicts for this packet on this interface
            // (one capture sees both directions: a router's port sees a
            // packet come in untagged and leave tagged).
            let seen_tags = captured[at].vlans.get(&(s, d)).cloned().unwrap_or_default();
            let want_tags: std::collections::BTreeSet<u16> = hops
                .hops
                .iter()
                .filter(|o| {
                    o.netns == h.netns
                        && o.iface == h.iface
                        && o.packet.src == h.packet.src
                        && o.packet.dst == h.packet.dst
                })
                .filter_map(|o| o.packet.vlan)
                .collect();
            let tagged_right = seen_tags == want_tags;
            let confirmed = match h.sight {
                Sight::Seen => n > 0 && tagged_right,
                Sight::Skipped(_) => n == 0,
            };
            checks.push(Check {
                leg,
                hop: i,
                captured: n,
                confirmed,
            });
        }
    }
    Ok(checks)
}
