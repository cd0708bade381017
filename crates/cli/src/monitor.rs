//! `strait monitor`: the datapath's events, live (like `cilium monitor`).
//! Drops are always reported; `--trace` also reports every forwarding
//! decision while the monitor runs.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strait_bpf::maps::{self, ConfigMap, Event, EventRing};
use strait_bpf::reason;

#[derive(clap::Args)]
pub struct Args {
    /// The node's pin directory (the agent's --bpf-dir).
    #[arg(long, default_value = "/sys/fs/bpf/strait")]
    bpf_dir: PathBuf,
    /// The agent's socket, to name pods instead of showing bare addresses.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Only events to or from this pod (name, namespace/name or IP).
    #[arg(long)]
    pod: Option<String>,
    /// Also show forwarding decisions, not only drops.
    #[arg(long)]
    trace: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Exit after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Output: text or json (one object per line).
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
}

/// Restores the trace flag when the monitor ends.
struct TraceGuard(Option<ConfigMap>);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(m) = &mut self.0 {
            let _ = m.set(0, maps::Config::default(), 0);
        }
    }
}

fn ifname(idx: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{idx}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let names: std::collections::HashMap<Ipv4Addr, String> = match &a.socket {
        Some(s) => strait_cni::client::status(s)
            .map_err(|e| anyhow::anyhow!(e.msg))?
            .allocations
            .into_iter()
            .filter_map(|al| match al.ip {
                std::net::IpAddr::V4(v) => Some((v, al.pod.to_string())),
                _ => None,
            })
            .collect(),
        None => Default::default(),
    };
    let want: Option<Ipv4Addr> = match &a.pod {
        None => None,
        Some(p) => Some(match p.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => *names
                .iter()
                .find(|(_, n)| *n == p || n.rsplit('/').next() == Some(p.as_str()))
                .map(|(ip, _)| ip)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "pod {p} is not on this node (give --socket so names resolve, or an IP)"
                    )
                })?,
        }),
    };
    let mut ring: EventRing = maps::open(&a.bpf_dir, "strait_events").map_err(|e| {
        anyhow::anyhow!(
            "open {}/strait_events: {e} (is the agent running in ebpf mode with this --bpf-dir?)",
            a.bpf_dir.display()
        )
    })?;
    let _guard = if a.trace {
        let mut cfg: ConfigMap = maps::open(&a.bpf_dir, "strait_config")?;
        cfg.set(
            0,
            maps::Config {
                flags: maps::CFG_TRACE,
                _pad: 0,
            },
            0,
        )?;
        TraceGuard(Some(cfg))
    } else {
        TraceGuard(None)
    };
    if a.output != "json" {
        eprintln!(
            "listening for {} on {} (Ctrl-C to stop)",
            if a.trace {
                "drops and trace events"
            } else {
                "drops"
            },
            a.bpf_dir.display()
        );
    }
    // Policy drops carry the deciding policy's id: name it (ids of
    // policies the agent has not compiled yet are asked for again).
    let socket = a.socket.clone();
    let mut policies: std::collections::HashMap<u32, String> = Default::default();
    let mut policy_name = move |id: u32| -> String {
        if !policies.contains_key(&id) {
            if let Some(s) = &socket {
                policies = policy_names(s);
            }
        }
        policies
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id:08x}"))
    };
    let label = |ip: Ipv4Addr| {
        names
            .get(&ip)
            .map(|n| format!("{n} ({ip})"))
            .unwrap_or_else(|| ip.to_string())
    };
    let deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut n = 0usize;
    loop {
        while let Some(item) = ring.next() {
            let Some(e) = Event::parse(&item) else {
                continue;
            };
            drop(item);
            if want.is_some_and(|w| e.src() != w && e.dst() != w) {
                continue;
            }
            let policy = is_policy_drop(e.reason).then(|| policy_name(e.out_ifindex));
            print_event(&e, &a.output, &label, policy.as_deref());
            n += 1;
            if a.count.is_some_and(|c| n >= c) {
                return Ok(0);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_policy_drop(code: u8) -> bool {
    matches!(
        code,
        reason::DROP_POLICY_INGRESS | reason::DROP_POLICY_EGRESS
    )
}

/// Policy ids (as drop events carry them) to names, from the agent.
pub fn policy_names(socket: &std::path::Path) -> std::collections::HashMap<u32, String> {
    use strait_model::api::{Request, Response};
    let Ok(Response::Policy { pods }) = strait_cni::client::call(socket, &Request::PolicyList)
    else {
        return Default::default();
    };
    pods.iter()
        .flat_map(|p| p.ingress.isolated_by.iter().chain(&p.egress.isolated_by))
        .map(|id| (strait_model::policy::bpf::policy_id(id), id.to_string()))
        .collect()
}

fn print_event(e: &Event, output: &str, label: &dyn Fn(Ipv4Addr) -> String, policy: Option<&str>) {
    let (name, meaning) = reason::describe(e.reason);
    let proto = match e.proto {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "ip",
    };
    let prog = reason::program(e.prog);
    if output == "json" {
        println!(
            "{}",
            serde_json::json!({
                "kind": match e.kind { maps::EVENT_DROP => "drop", maps::EVENT_WARN => "warn", _ => "trace" },
                "reason": name, "code": e.reason, "program": prog,
                "src": e.src().to_string(), "dst": e.dst().to_string(),
                "sport": e.sport, "dport": e.dport, "proto": proto, "len": e.len,
                "ifindex": e.ifindex, "iface": ifname(e.ifindex),
                "out_ifindex": if policy.is_some() { 0 } else { e.out_ifindex },
                "policy": policy,
            })
        );
        return;
    }
    let arrow = match e.kind {
        maps::EVENT_DROP => "xx drop",
        maps::EVENT_WARN => "!! warn",
        _ => "-> ",
    };
    if e.saddr == 0 && e.daddr == 0 && e.proto == 0 {
        println!(
            "{arrow} {name:<22} {prog} on {}: non-IPv4 frame, len {}",
            ifname(e.ifindex),
            e.len
        );
        return;
    }
    let out = if let Some(p) = policy {
        format!(" by policy {p}")
    } else if e.out_ifindex != 0 {
        format!(" to {}", ifname(e.out_ifindex))
    } else {
        String::new()
    };
    println!(
        "{arrow} {name:<22} {prog} on {}{out}: {}:{} -> {}:{} {proto} len {}  ({meaning})",
        ifname(e.ifindex),
        label(e.src()),
        e.sport,
        label(e.dst()),
        e.dport,
        e.len
    );
}
