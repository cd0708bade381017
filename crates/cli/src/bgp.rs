//! `strait bgp peers` and `strait bgp routes`: the node's BGP sessions and
//! routes, from its agent.

use std::path::PathBuf;
use strait_model::api::{BgpPeerStatus, BgpRoutes, Request, Response};

#[derive(clap::Args)]
pub struct Args {
    /// The agent's socket.
    #[arg(long, global = true, default_value = "/run/strait/agent.sock")]
    socket: PathBuf,
    /// Output format: table or json.
    #[arg(short = 'o', long, global = true, default_value = "table", value_parser = ["table", "json"])]
    output: String,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
pub enum Verb {
    /// Each session: peer, AS, state, uptime, prefixes received and
    /// advertised, flaps, last error.
    Peers,
    /// Routes learned (next hop, AS path, whether forwarding uses them,
    /// stale) and advertised (to whom, originated or reflected); with
    /// PREFIX, only routes inside it (e.g. 198.19.2.0/24, or one address).
    Routes { prefix: Option<String> },
}

/// Keep only the routes inside `within`.
fn filter(r: &mut BgpRoutes, within: ipnet::IpNet) {
    let inside = |p: &ipnet::IpNet| within.contains(p);
    r.learned.retain(|l| inside(&l.prefix));
    r.advertised.retain(|a| inside(&a.prefix));
}

fn parse_prefix(s: &str) -> anyhow::Result<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| anyhow::anyhow!("{s:?} is not a prefix or an address (e.g. 198.19.2.0/24)"))
}

use crate::call;

pub fn run(a: Args) -> anyhow::Result<i32> {
    let json = a.output == "json";
    match a.verb {
        Verb::Peers => {
            let Response::Status(s) = call(&a.socket, &Request::Status)? else {
                anyhow::bail!("the agent answered something else");
            };
            if !matches!(s.cross_node.as_str(), "bgp" | "bgp-tor") {
                anyhow::bail!(
                    "this node runs no BGP speaker (cross-node mode {}; BGP is --cross-node bgp or bgp-tor)",
                    s.cross_node
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&s.bgp_peers)?);
            } else {
                print!("{}", render_peers(&s.bgp_peers));
            }
        }
        Verb::Routes { prefix } => {
            // Checked before asking the agent.
            let within = prefix.as_deref().map(parse_prefix).transpose()?;
            let Response::BgpRoutes(mut r) = call(&a.socket, &Request::BgpRoutes)? else {
                anyhow::bail!("the agent answered something else");
            };
            if let Some(w) = within {
                filter(&mut r, w);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", render_routes(&r));
            }
        }
    }
    Ok(0)
}

/// 59s, 4m05s, 3h12m, 2d04h.
fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

pub fn render_peers(peers: &[BgpPeerStatus]) -> String {
    let mut out = format!(
        "{:<18} {:>10} {:<12} {:>8} {:>9} {:>6} {:>11} {:>6}  {}\n",
        "BGP PEER", "AS", "STATE", "UP", "RECEIVED", "STALE", "ADVERTISED", "FLAPS", "LAST ERROR"
    );
    for p in peers {
        out.push_str(&format!(
            "{:<18} {:>10} {:<12} {:>8} {:>9} {:>6} {:>11} {:>6}  {}\n",
            p.address.to_string(),
            p.asn,
            p.state,
            p.up_secs.map(uptime).unwrap_or_else(|| "-".into()),
            p.received,
            p.stale,
            p.advertised,
            p.flaps,
            p.last_error.as_deref().unwrap_or("-")
        ));
    }
    if peers.is_empty() {
        out.push_str("(no peers: no other node, and no BGPPeer selects this node)\n");
    }
    out
}

pub fn render_routes(r: &BgpRoutes) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:<16} {:<12} {:>5}  {}\n",
        "LEARNED", "NEXT HOP", "FROM PEER", "AS PATH", "PREF", "FLAGS"
    );
    for l in &r.learned {
        let mut flags = vec![];
        if l.installed {
            flags.push("installed".to_string());
        }
        if l.stale {
            flags.push("stale".to_string());
        }
        if let Some(o) = l.originator {
            flags.push(format!("reflected (originator {o})"));
        }
        out.push_str(&format!(
            "{:<20} {:<16} {:<16} {:<12} {:>5}  {}\n",
            l.prefix.to_string(),
            l.next_hop.to_string(),
            l.peer.to_string(),
            if l.as_path.is_empty() {
                "(iBGP)"
            } else {
                &l.as_path
            },
            l.local_pref
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(", ")
            }
        ));
    }
    out.push_str(&format!(
        "\n{:<20} {:<16} {}\n",
        "ADVERTISED", "TO PEER", "SOURCE"
    ));
    for a in &r.advertised {
        out.push_str(&format!(
            "{:<20} {:<16} {}\n",
            a.prefix.to_string(),
            a.peer.to_string(),
            a.reflected_from
                .map(|f| format!("reflected from {f}"))
                .unwrap_or_else(|| "this node".into())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_like_durations() {
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(245), "4m05s");
        assert_eq!(uptime(3 * 3600 + 12 * 60 + 5), "3h12m");
        assert_eq!(uptime(2 * 86400 + 4 * 3600), "2d04h");
    }

    #[test]
    fn route_tables_show_flags_and_sources() {
        let r = BgpRoutes {
            learned: vec![strait_model::api::BgpLearnedRoute {
                prefix: "198.19.2.0/24".parse().unwrap(),
                peer: "198.18.0.1".parse().unwrap(),
                next_hop: "198.18.0.3".parse().unwrap(),
                as_path: String::new(),
                local_pref: Some(100),
                med: None,
                installed: true,
                stale: true,
                originator: Some("198.18.0.3".parse().unwrap()),
            }],
            advertised: vec![strait_model::api::BgpAdvertisedRoute {
                prefix: "198.19.1.0/24".parse().unwrap(),
                peer: "198.18.0.1".parse().unwrap(),
                reflected_from: None,
            }],
        };
        let t = render_routes(&r);
        assert!(
            t.contains("198.19.2.0/24        198.18.0.3       198.18.0.1       (iBGP)         100  installed, stale, reflected (originator 198.18.0.3)"),
            "{t}"
        );
        assert!(
            t.contains("198.19.1.0/24        198.18.0.1       this node"),
            "{t}"
        );
    }
}
