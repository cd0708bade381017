//! `strait mapping`, as `terway-cli mapping`: the node's pod ENIs with
//! their MACs, addresses and the pods on them, and a consistency check
//! across the pods, the agent and the cloud. Exits 1 on a mismatch.

use std::path::PathBuf;
use strait_model::api::{Request, Response};

#[derive(clap::Args)]
pub struct Args {
    /// The agent's socket.
    #[arg(long, default_value = "/run/strait/agent.sock")]
    socket: PathBuf,
    /// Output format: table or json.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let Response::EniMapping(m) = crate::call(&a.socket, &Request::EniMapping)? else {
        anyhow::bail!("the agent answered something else");
    };
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{}", table(&m));
    }
    Ok(if m.problems.is_empty() { 0 } else { 1 })
}

fn table(m: &strait_model::cloud::eniip::EniMapping) -> String {
    let mut out = format!(
        "node {}\n{:<14} {:<6} {:<18} {:<16} {}\n",
        m.node, "ENI", "DEV", "MAC", "ADDRESS", "POD"
    );
    for r in &m.rows {
        if r.ips.is_empty() {
            out.push_str(&format!(
                "{:<14} {:<6} {:<18} {:<16} {}\n",
                r.eni, r.device, r.mac, "-", "-"
            ));
        }
        for (i, (ip, pod)) in r.ips.iter().enumerate() {
            let (eni, dev, mac) = if i == 0 {
                (r.eni.as_str(), r.device.as_str(), r.mac.as_str())
            } else {
                ("", "", "")
            };
            out.push_str(&format!(
                "{eni:<14} {dev:<6} {mac:<18} {:<16} {}\n",
                ip.to_string(),
                pod.as_deref().unwrap_or("(idle)")
            ));
        }
    }
    if !m.podenis.is_empty() {
        out.push_str(&format!(
            "\nPodENIs (ENI-Trunking)\n{:<24} {:<14} {:<16} {:<5} {:<14} {:<10} {:<18} {}\n",
            "POD", "MEMBER", "ADDRESS", "VLAN", "TRUNK", "VSWITCH", "GROUPS", "ALLOCATION"
        ));
        for r in &m.podenis {
            let alloc = match (r.allocation, r.released_at_ms) {
                (a, None) => format!("{a:?}"),
                (a, Some(_)) => format!("{a:?}, pod gone (kept {}s)", r.ttl_secs),
            };
            out.push_str(&format!(
                "{:<24} {:<14} {:<16} {:<5} {:<14} {:<10} {:<18} {}\n",
                r.pod,
                r.member,
                r.ip.to_string(),
                r.vlan,
                r.trunk,
                r.vswitch,
                r.security_groups.join(","),
                alloc
            ));
        }
    }
    if m.problems.is_empty() {
        out.push_str(
            "consistent: every pod's address is the agent's and on the ENI the cloud says\n",
        );
    } else {
        for p in &m.problems {
            out.push_str(&format!("MISMATCH: {p}\n"));
        }
    }
    out
}
