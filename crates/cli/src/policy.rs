//! `strait policy`: NetworkPolicy as this node compiled it, and what it
//! says of one connection, from the agent that enforces it.

use std::path::PathBuf;
use strait_model::api::{PolicyExplanation, Request, Response};
use strait_model::policy::{PodRules, Proto, Rule};

#[derive(clap::Args)]
pub struct Args {
    /// The agent's socket.
    #[arg(long, default_value = "/run/strait/agent.sock")]
    socket: PathBuf,
    /// Output format: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
pub enum Verb {
    /// The policies that isolate each pod of this node, compiled: the
    /// addresses and ports each rule admits.
    List,
    /// Allowed or denied, and by which policy and rule: SRC and DST are pods
    /// (ns/name, or name in default) or addresses; the port defaults to 80
    /// and the protocol to tcp.
    Explain { src: String, dst: String },
}

/// `DST[:PORT[/PROTO]]`.
pub fn parse_target(s: &str) -> anyhow::Result<(String, u16, Proto)> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if matches!(p, "tcp" | "udp" | "sctp") => (r, p),
        _ => (s, "tcp"),
    };
    let proto = match proto {
        "udp" => Proto::Udp,
        "sctp" => Proto::Sctp,
        _ => Proto::Tcp,
    };
    // An IPv6 address has colons of its own: a port follows only "]:".
    let (host, port) = if let Some(h) = rest.strip_prefix('[') {
        let (h, p) = h
            .split_once("]:")
            .map(|(h, p)| (h, Some(p)))
            .unwrap_or((h.trim_end_matches(']'), None));
        (h.to_string(), p)
    } else if rest.matches(':').count() == 1 {
        let (h, p) = rest.split_once(':').unwrap();
        (h.to_string(), Some(p))
    } else {
        (rest.to_string(), None)
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| anyhow::anyhow!("{s:?}: port {p:?} is not a number from 1 to 65535"))?,
        None => 80,
    };
    Ok((host, port, proto))
}

fn rule_text(r: &Rule) -> String {
    let peers = match &r.peers {
        None => "any peer".to_string(),
        Some(p) if p.is_empty() => "no peer (selectors match no pod)".to_string(),
        Some(p) => p
            .iter()
            .map(|n| {
                if n.except.is_empty() {
                    n.net.to_string()
                } else {
                    let ex: Vec<String> = n.except.iter().map(|e| e.to_string()).collect();
                    format!("{} except {}", n.net, ex.join(","))
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    let ports = match &r.ports {
        None => "any port".to_string(),
        Some(ps) => ps
            .iter()
            .map(|p| {
                let proto = format!("{:?}", p.proto).to_lowercase();
                if p.first == p.last {
                    format!("{proto}/{}", p.first)
                } else {
                    format!("{proto}/{}-{}", p.first, p.last)
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    format!("{} rule {}: {peers}; {ports}", r.policy, r.index)
}

pub fn render_list(pods: &[PodRules]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:<28} {}\n",
        "POD", "DIRECTION", "ISOLATED BY", "ALLOWS"
    );
    for p in pods {
        for (dir, set) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            let by = if set.isolated_by.is_empty() {
                "- (not isolated: all allowed)".to_string()
            } else {
                set.isolated_by
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let rules: Vec<String> = set.rules.iter().map(rule_text).collect();
            let first = match (&rules[..], set.isolated_by.is_empty()) {
                (_, true) => String::new(),
                ([], false) => "nothing (default deny)".to_string(),
                (r, false) => r[0].clone(),
            };
            out.push_str(&format!("{:<24} {:<9} {:<28} {first}\n", p.pod, dir, by));
            for r in rules.iter().skip(1) {
                out.push_str(&format!("{:<24} {:<9} {:<28} {r}\n", "", "", ""));
            }
        }
    }
    out
}

pub fn render_explanation(e: &PolicyExplanation) -> String {
    format!(
        "{} ({}) -> {} ({}) {}/{}\negress of {}:  {}\ningress of {}: {}\nverdict: {}\n",
        e.src,
        e.src_ip,
        e.dst,
        e.dst_ip,
        format!("{:?}", e.proto).to_lowercase(),
        e.port,
        e.src,
        e.verdict.egress,
        e.dst,
        e.verdict.ingress,
        if e.verdict.allows() {
            "ALLOWED"
        } else {
            "DENIED"
        }
    )
}

use crate::call;

pub fn run(a: Args) -> anyhow::Result<i32> {
    let json = a.output == "json";
    match a.verb {
        Verb::List => {
            let Response::Policy { pods } = call(&a.socket, &Request::PolicyList)? else {
                anyhow::bail!("the agent answered something else");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&pods)?);
            } else {
                print!("{}", render_list(&pods));
            }
            Ok(0)
        }
        Verb::Explain { src, dst } => {
            let (dst, port, proto) = parse_target(&dst)?;
            let req = Request::PolicyExplain {
                src,
                dst,
                port,
                proto,
            };
            let Response::PolicyVerdict(e) = call(&a.socket, &req)? else {
                anyhow::bail!("the agent answered something else");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", render_explanation(&e));
            }
            // Exit 0 allowed, 2 denied: scripts can branch on it.
            Ok(if e.verdict.allows() { 0 } else { 2 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_defaults() {
        assert_eq!(parse_target("x/a").unwrap(), ("x/a".into(), 80, Proto::Tcp));
        assert_eq!(
            parse_target("x/a:81/udp").unwrap(),
            ("x/a".into(), 81, Proto::Udp)
        );
        assert_eq!(
            parse_target("10.0.0.1:8080").unwrap(),
            ("10.0.0.1".into(), 8080, Proto::Tcp)
        );
        assert_eq!(
            parse_target("[fd00::1]:53/udp").unwrap(),
            ("fd00::1".into(), 53, Proto::Udp)
        );
        assert_eq!(
            parse_target("fd00::1").unwrap(),
            ("fd00::1".into(), 80, Proto::Tcp)
        );
        assert!(parse_target("x/a:http")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }
}
