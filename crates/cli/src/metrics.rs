//! `strait metrics`: the datapath's per-reason packet and byte counters.

use std::path::PathBuf;
use strait_bpf::maps::{self, MetricsMap};
use strait_bpf::reason;

#[derive(clap::Args)]
pub struct Args {
    /// The node's pin directory (the agent's --bpf-dir).
    #[arg(long, default_value = "/sys/fs/bpf/strait")]
    bpf_dir: PathBuf,
    /// Output: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
    /// The agent's socket, to name the policies drops are counted under.
    #[arg(long)]
    socket: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let m: MetricsMap = maps::open(&a.bpf_dir, "strait_metrics").map_err(|e| {
        anyhow::anyhow!(
            "open {}/strait_metrics: {e} (is the agent running in ebpf mode with this --bpf-dir?)",
            a.bpf_dir.display()
        )
    })?;
    let mut rows = vec![];
    for code in 0..=255u8 {
        let (packets, bytes) = maps::metric(&m, code)?;
        if packets > 0 {
            rows.push((code, packets, bytes));
        }
    }
    // Per deciding policy (the eBPF datapath's NetworkPolicy drops).
    let names = a
        .socket
        .as_deref()
        .map(crate::monitor::policy_names)
        .unwrap_or_default();
    let by_policy: Vec<(String, u64, u64)> = maps::policy_drops(&a.bpf_dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, p, b)| {
            let name = names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("#{id:08x}"));
            (name, p, b)
        })
        .collect();
    if a.output == "json" {
        // One array: reason rows as before, then a row per deciding policy.
        let mut v: Vec<_> = rows
            .iter()
            .map(|(c, p, b)| serde_json::json!({"code": c, "reason": reason::describe(*c).0, "drop": reason::is_drop(*c), "packets": p, "bytes": b}))
            .collect();
        v.extend(by_policy.iter().map(
            |(n, p, b)| serde_json::json!({"policy": n, "drop": true, "packets": p, "bytes": b}),
        ));
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<22} {:>10} {:>12}  MEANING",
        "REASON", "PACKETS", "BYTES"
    );
    for (c, p, b) in rows {
        let (name, meaning) = reason::describe(c);
        println!("{name:<22} {p:>10} {b:>12}  {meaning}");
    }
    if !by_policy.is_empty() {
        println!(
            "\n{:<40} {:>10} {:>12}",
            "DROPPED BY POLICY", "PACKETS", "BYTES"
        );
        for (n, p, b) in by_policy {
            println!("{n:<40} {p:>10} {b:>12}");
        }
    }
    Ok(0)
}
