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
    if a.output == "json" {
        let v: Vec<_> = rows
            .iter()
            .map(|(c, p, b)| serde_json::json!({"code": c, "reason": reason::describe(*c).0, "drop": reason::is_drop(*c), "packets": p, "bytes": b}))
            .collect();
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
    Ok(0)
}
