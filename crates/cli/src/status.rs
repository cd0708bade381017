use std::path::PathBuf;
use strait_model::api::NodeStatus;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's socket.
    #[arg(long, default_value = "/run/strait/agent.sock")]
    socket: PathBuf,
    /// Output format: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
    /// Print nothing; exit 0 when the agent is ready, 1 when not (for
    /// readiness probes).
    #[arg(long)]
    ready: bool,
}

pub fn render(s: &NodeStatus) -> String {
    let mut out = format!(
        "node {}  datapath {}  cross-node {}  services {}  policy {}  ready {}{}\npod CIDR {}  node IP {}  pods {}  addresses cooling down {}\n",
        s.node,
        s.mode,
        if s.cross_node.is_empty() { "-" } else { &s.cross_node },
        if s.service_backend.is_empty() { "-" } else { &s.service_backend },
        if s.policy_backend.is_empty() { "-" } else { &s.policy_backend },
        if s.ready { "yes" } else { "no" },
        s.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        s.pod_cidr.as_deref().unwrap_or("-"),
        s.node_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        s.allocations.len(),
        s.cooling,
    );
    if !s.ipam_blocks.is_empty() {
        let blocks: Vec<String> = s
            .ipam_blocks
            .iter()
            .map(|b| format!("{} ({}, {}/{} in use)", b.cidr, b.pool, b.in_use, b.size))
            .collect();
        out.push_str(&format!("IPPool blocks {}\n", blocks.join(", ")));
    }
    if !s.vlan_ports.is_empty() {
        let ports: Vec<String> = s
            .vlan_ports
            .iter()
            .map(|p| {
                format!(
                    "{} (vlan {}, {} in eBPF, {} pod{})",
                    p.parent,
                    p.vlan,
                    p.trunk,
                    p.pods,
                    if p.pods == 1 { "" } else { "s" }
                )
            })
            .collect();
        out.push_str(&format!("VLAN ports {}\n", ports.join(", ")));
    }
    if let Some(src) = &s.source {
        let ago = src.last_event_ms.map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(t);
            format!(
                ", last event {:.1}s ago",
                now.saturating_sub(t) as f64 / 1e3
            )
        });
        out.push_str(&format!(
            "cluster source {} ({}): {}{}, relists {}, errors {}{}\n",
            src.kind,
            src.from,
            if src.ready { "synced" } else { "listing" },
            ago.unwrap_or_default(),
            src.relists,
            src.errors,
            src.last_error
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
        ));
    }
    out.push_str(&format!(
        "\n{:<16} {:<28} {:<16} {}\n",
        "POD IP", "POD", "HOST VETH", "CONTAINER"
    ));
    for a in &s.allocations {
        out.push_str(&format!(
            "{:<16} {:<28} {:<16} {}\n",
            a.ip,
            a.pod.to_string(),
            a.host_veth,
            a.attachment.container_id
        ));
    }
    if let Some(d) = &s.datapath {
        out.push_str(&format!(
            "\neBPF datapath: {}\n  why: {}\n  maps pinned in {}; from-netdev on {}; from-container on {} host veths; {} endpoints\n",
            if d.redirect_peer {
                "bpf_redirect_peer (pod traffic skips the destination's host veth)"
            } else {
                "host-veth path (no bpf_redirect_peer)"
            },
            d.reason,
            d.pin_dir,
            d.uplink,
            d.attached.len(),
            d.endpoints,
        ));
    }
    if let Some(c) = &s.conntrack {
        let states: Vec<String> = c.by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!(
            "  service conntrack: {} connections ({}), {:.1}% of {} entries; expired {}, halves rebuilt {}\n",
            c.forward,
            if states.is_empty() { "none".to_string() } else { states.join(", ") },
            c.forward.max(c.reverse) as f64 * 100.0 / c.capacity.max(1) as f64,
            c.capacity,
            c.expired_total,
            c.repaired_total,
        ));
    }
    out.push_str(&format!(
        "\n{:<20} {:<16} {}\n",
        "NODE ROUTE", "VIA", "NODE"
    ));
    for r in &s.node_routes {
        out.push_str(&format!(
            "{:<20} {:<16} {}\n",
            r.pod_cidr.to_string(),
            r.via,
            r.node
        ));
    }
    if !s.bgp_peers.is_empty() {
        out.push('\n');
        out.push_str(&crate::bgp::render_peers(&s.bgp_peers));
    }
    if !s.reconcilers.is_empty() {
        out.push_str(&format!(
            "\n{:<12} {:>7} {:>9} {:>10}  {}\n",
            "RECONCILER", "PASSES", "LAST (ms)", "FAILING", "PROBLEMS"
        ));
        for r in &s.reconcilers {
            let problems: Vec<&str> = r
                .error
                .iter()
                .map(String::as_str)
                .chain(r.problems.iter().map(String::as_str))
                .collect();
            out.push_str(&format!(
                "{:<12} {:>7} {:>9.1} {:>10}  {}\n",
                r.name,
                r.passes,
                r.last_pass_micros as f64 / 1e3,
                if r.consecutive_failures == 0 {
                    "-".to_string()
                } else {
                    format!("{} passes", r.consecutive_failures)
                },
                if problems.is_empty() {
                    "-".to_string()
                } else {
                    problems.join("\n                                            ")
                }
            ));
        }
    }
    out
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let s = strait_cni::client::status(&a.socket).map_err(|e| anyhow::anyhow!(e.msg))?;
    if a.ready {
        if !s.ready {
            eprintln!(
                "not ready: {}",
                s.reason.as_deref().unwrap_or("no pod CIDR yet")
            );
        }
        return Ok(if s.ready { 0 } else { 1 });
    }
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(0)
}
