//! `strait lb list`: the service table as the datapath holds it (read from
//! the pinned strait_lb map), like `cilium bpf lb list`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use strait_bpf::maps::{self, LbKey, LbMap, LbVal};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Frontends and their backends, with each backend's state.
    List {
        /// The node's pin directory (the agent's --bpf-dir).
        #[arg(long, default_value = "/sys/fs/bpf/strait")]
        bpf_dir: PathBuf,
        /// The agent's socket, to name the services.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
}

/// A frontend's master entry and its backend slots.
type Slots = (Option<LbVal>, Vec<(u16, LbVal)>);

pub fn run(a: Args) -> anyhow::Result<i32> {
    let Verb::List {
        bpf_dir,
        socket,
        output,
    } = a.verb;
    let lb: LbMap = maps::open(&bpf_dir, "strait_lb").map_err(|e| {
        anyhow::anyhow!(
            "open {}/strait_lb: {e} (is the agent running in ebpf mode with this --bpf-dir?)",
            bpf_dir.display()
        )
    })?;
    let names: BTreeMap<u32, String> = match socket {
        Some(s) => strait_cni::client::status(&s)
            .map_err(|e| anyhow::anyhow!(e.msg))?
            .services
            .into_iter()
            .map(|e| (e.id, format!("{}/{}:{}", e.namespace, e.name, e.port_name)))
            .collect(),
        None => Default::default(),
    };
    // Group slots by frontend.
    let mut frontends: BTreeMap<(Ipv4Addr, u16, u8), Slots> = BTreeMap::new();
    for item in lb.iter() {
        let (k, v): (LbKey, LbVal) = item?;
        let f = frontends
            .entry((maps::key_ip(k.addr), u16::from_be(k.port), k.proto))
            .or_default();
        if k.slot == 0 {
            f.0 = Some(v);
        } else {
            f.1.push((k.slot, v));
        }
    }
    let proto = |p: u8| {
        if p == 6 {
            "TCP"
        } else if p == 17 {
            "UDP"
        } else {
            "?"
        }
    };
    let mut rows = vec![];
    for ((ip, port, p), (master, mut backends)) in frontends {
        backends.sort_by_key(|(s, _)| *s);
        let master = master.unwrap_or_default();
        let name = names.get(&master.svc_id).cloned().unwrap_or_default();
        let bs: Vec<(String, &str)> = backends
            .iter()
            .map(|(slot, v)| {
                let state = if *slot <= master.count && v.count == 0 {
                    "active"
                } else {
                    "terminating"
                };
                (
                    format!(
                        "{}:{}",
                        maps::key_ip(v.backend_ip),
                        u16::from_be(v.backend_port)
                    ),
                    state,
                )
            })
            .collect();
        rows.push((format!("{ip}:{port}/{}", proto(p)), name, master, bs));
    }
    if output == "json" {
        let v: Vec<_> = rows
            .iter()
            .map(|(f, n, m, bs)| {
                serde_json::json!({"frontend": f, "service": n, "affinity_secs": m.affinity_secs,
                    "backends": bs.iter().map(|(a, s)| serde_json::json!({"address": a, "state": s})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<26} {:<28} SERVICE",
        "SERVICE ADDRESS", "BACKEND ADDRESS (STATE)"
    );
    for (f, n, m, bs) in rows {
        let affinity = if m.affinity_secs > 0 {
            format!(" (ClientIP affinity {}s)", m.affinity_secs)
        } else {
            String::new()
        };
        if bs.is_empty() {
            println!("{f:<26} {:<28} {n}{affinity}", "(no backend: rejected)");
        }
        for (i, (addr, state)) in bs.iter().enumerate() {
            let label = if i == 0 { f.as_str() } else { "" };
            let svc = if i == 0 {
                format!("{n}{affinity}")
            } else {
                String::new()
            };
            println!("{label:<26} {:<28} {svc}", format!("{addr} ({state})"));
        }
    }
    Ok(0)
}
