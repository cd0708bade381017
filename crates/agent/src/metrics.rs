//! Prometheus metrics (`--metrics-addr`). Two kinds:
//!
//! - kept as things happen: reconcile pass durations and failures per
//!   reconciler, and how long service and policy changes took to program
//!   (histograms and counters in [`Metrics`]);
//! - read at scrape time from the live state: the eBPF datapath's
//!   per-reason packet and byte counters and per-policy drops (its pinned
//!   maps), conntrack fill, IPAM usage per pool, BGP sessions, the cluster
//!   source's health. Nothing is cached between scrapes, so a scrape
//!   never shows a stale kernel counter, and an idle endpoint costs nothing.
//!
//! The exposition is OpenMetrics text (`prometheus-client`), which
//! Prometheus scrapes natively.

use crate::daemon::Agent;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcilerLabel {
    reconciler: String,
}

/// Histograms and counters updated as the agent works.
#[derive(Clone)]
pub struct Metrics {
    reconcile_seconds: Family<ReconcilerLabel, Histogram>,
    reconcile_failures: Family<ReconcilerLabel, Counter>,
    service_programming: Histogram,
    policy_programming: Histogram,
}

/// 100 µs to ~52 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 20)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            reconcile_failures: Family::default(),
            service_programming: Histogram::new(latency_buckets()),
            policy_programming: Histogram::new(latency_buckets()),
        }
    }
}

impl Metrics {
    /// One reconcile pass of `name`; `ok` false when it failed or left
    /// problems.
    pub fn pass(&self, name: &str, took: Duration, ok: bool) {
        let l = ReconcilerLabel {
            reconciler: name.to_string(),
        };
        self.reconcile_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        let failures = self.reconcile_failures.get_or_create(&l);
        if !ok {
            failures.inc();
        }
    }

    /// A service-table change compiled and applied to the datapath.
    pub fn services_programmed(&self, took: Duration) {
        self.service_programming.observe(took.as_secs_f64());
    }

    /// A NetworkPolicy change compiled and applied to the datapath.
    pub fn policy_programmed(&self, took: Duration) {
        self.policy_programming.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
    cidr: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerStateLabel {
    peer: String,
    state: &'static str,
}

/// The BGP session states, each exported as its own 0/1 series.
const BGP_STATES: [&str; 6] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
];

/// A counter family whose values are read fresh each scrape (the registry
/// is built per scrape, so `inc_by` of the total sets it).
fn counters<L>(reg: &mut Registry, name: &str, help: &str, rows: Vec<(L, u64)>)
where
    L: Clone + std::fmt::Debug + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + 'static,
{
    let f = Family::<L, Counter>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

fn gauges<L>(reg: &mut Registry, name: &str, help: &str, rows: Vec<(L, i64)>)
where
    L: Clone + std::fmt::Debug + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + 'static,
{
    let f = Family::<L, Gauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(v);
    }
    reg.register(name, help, f);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The datapath's reason counters, summed over CPUs: (reason, drop?, packets, bytes).
fn datapath_counters(pin_dir: &std::path::Path) -> Vec<(String, bool, u64, u64)> {
    use strait_bpf::{maps, reason};
    let Ok(m) = maps::open::<maps::MetricsMap>(pin_dir, "strait_metrics") else {
        return vec![];
    };
    (0..=255u8)
        .filter_map(|code| {
            let (p, b) = maps::metric(&m, code).ok()?;
            (p > 0).then(|| {
                (
                    reason::describe(code).0.to_string(),
                    reason::is_drop(code),
                    p,
                    b,
                )
            })
        })
        .collect()
}

/// Everything, as OpenMetrics text.
pub fn render(agent: &Agent) -> String {
    let mut reg = Registry::with_prefix("strait");
    let m = &agent.metrics;
    reg.register(
        "reconcile_duration_seconds",
        "How long each reconcile pass took",
        m.reconcile_seconds.clone(),
    );
    reg.register(
        "reconcile_failures",
        "Passes that failed or left objects unprogrammed (each is retried)",
        m.reconcile_failures.clone(),
    );
    reg.register(
        "service_programming_duration_seconds",
        "Service-table changes: compile and apply to the datapath",
        m.service_programming.clone(),
    );
    reg.register(
        "policy_programming_duration_seconds",
        "NetworkPolicy changes: compile and apply to the datapath",
        m.policy_programming.clone(),
    );

    gauge(
        &mut reg,
        "ready",
        "1 when the agent is ready for pods (the CNI config is written)",
        i64::from(agent.not_ready_reason().is_none() && agent.ipam.cidr().is_some()),
    );
    let src = agent.source.health();
    gauge(
        &mut reg,
        "source_ready",
        "1 once every watched kind has been listed",
        i64::from(src.ready),
    );
    counters(
        &mut reg,
        "source_relists",
        "Lists after the first (expired watch, 410 Gone, reconnect)",
        vec![(
            SourceLabel {
                source: src.kind.clone(),
            },
            src.relists,
        )],
    );
    counters(
        &mut reg,
        "source_errors",
        "Watch errors (each retried with backoff)",
        vec![(SourceLabel { source: src.kind }, src.errors)],
    );

    // IPAM: per block the node holds, or the node's pod CIDR.
    let allocs = agent.ipam.allocations();
    let mut pools: Vec<(PoolLabel, i64, i64)> = crate::api::ipam_blocks(agent)
        .into_iter()
        .map(|b| {
            (
                PoolLabel {
                    pool: b.pool,
                    cidr: b.cidr.to_string(),
                },
                b.in_use as i64,
                b.size.min(i64::MAX as u64) as i64,
            )
        })
        .collect();
    if pools.is_empty() {
        if let Some(c) = agent.ipam.cidr() {
            let size = crate::api::cidr_size(c);
            pools.push((
                PoolLabel {
                    pool: "node-pod-cidr".into(),
                    cidr: c.to_string(),
                },
                allocs.iter().filter(|a| c.contains(&a.ip)).count() as i64,
                size.min(i64::MAX as u64) as i64,
            ));
        }
    }
    gauges(
        &mut reg,
        "ipam_addresses_allocated",
        "Pod addresses allocated, per pool block (or the node's pod CIDR)",
        pools.iter().map(|(l, u, _)| (l.clone(), *u)).collect(),
    );
    gauges(
        &mut reg,
        "ipam_addresses_capacity",
        "Addresses per pool block (or the node's pod CIDR)",
        pools.into_iter().map(|(l, _, s)| (l, s)).collect(),
    );

    let (frontends, endpoints, ct) = {
        let pb = agent.published.lock().unwrap();
        (pb.services.len(), pb.endpoints, pb.conntrack.clone())
    };
    gauge(
        &mut reg,
        "service_frontends",
        "Service frontends programmed on this node",
        frontends as i64,
    );

    if let Some((pin_dir, _)) = &agent.datapath {
        let pin_dir = std::path::Path::new(pin_dir);
        let rows = datapath_counters(pin_dir);
        let label = |r: &(String, bool, u64, u64)| ReasonLabel {
            reason: r.0.clone(),
            verdict: if r.1 { "drop" } else { "pass" },
        };
        counters(
            &mut reg,
            "datapath_packets",
            "Packets the eBPF datapath handled, by reason",
            rows.iter().map(|r| (label(r), r.2)).collect(),
        );
        counters(
            &mut reg,
            "datapath_bytes",
            "Bytes the eBPF datapath handled, by reason",
            rows.iter().map(|r| (label(r), r.3)).collect(),
        );
        let full = rows
            .iter()
            .find(|r| r.0 == strait_bpf::reason::describe(strait_bpf::reason::CT_INSERT_FAILED).0)
            .map_or(0, |r| r.2);
        counters(
            &mut reg,
            "bpf_map_full_events",
            "Inserts a full BPF map refused",
            vec![(
                MapLabel {
                    map: "strait_ct".into(),
                },
                full,
            )],
        );
        let names: std::collections::HashMap<u32, String> = agent
            .published
            .lock()
            .unwrap()
            .policy
            .iter()
            .flat_map(|p| p.ingress.isolated_by.iter().chain(&p.egress.isolated_by))
            .map(|id| (strait_model::policy::bpf::policy_id(id), id.to_string()))
            .collect();
        let drops = strait_bpf::maps::policy_drops(pin_dir).unwrap_or_default();
        counters(
            &mut reg,
            "policy_drop_packets",
            "Packets dropped by NetworkPolicy, by the policy that decided",
            drops
                .iter()
                .map(|(id, p, _)| {
                    let name = names.get(id).cloned().unwrap_or(format!("#{id:08x}"));
                    (PolicyLabel { policy: name }, *p)
                })
                .collect(),
        );
        gauges(
            &mut reg,
            "bpf_map_entries",
            "Entries in the datapath's maps",
            [("strait_endpoints", endpoints as i64)]
                .into_iter()
                .chain(ct.iter().flat_map(|c| {
                    [
                        ("strait_ct_forward", c.forward as i64),
                        ("strait_ct_reverse", c.reverse as i64),
                    ]
                }))
                .map(|(n, v)| (MapLabel { map: n.into() }, v))
                .collect(),
        );
        if let Some(c) = &ct {
            gauges(
                &mut reg,
                "bpf_map_capacity",
                "Capacity of the datapath's maps",
                vec![(
                    MapLabel {
                        map: "strait_ct".into(),
                    },
                    c.capacity as i64,
                )],
            );
            gauges(
                &mut reg,
                "conntrack_connections",
                "Service connections in the eBPF conntrack, by state",
                c.by_state
                    .iter()
                    .map(|(s, n)| (StateLabel { state: s.clone() }, *n as i64))
                    .collect(),
            );
        }
    }

    let peers = crate::api::bgp_peers(agent);
    if !peers.is_empty() {
        gauges(
            &mut reg,
            "bgp_session_state",
            "1 for each BGP session's current state",
            peers
                .iter()
                .flat_map(|p| {
                    BGP_STATES.iter().map(move |s| {
                        (
                            PeerStateLabel {
                                peer: p.address.to_string(),
                                state: s,
                            },
                            i64::from(p.state == *s),
                        )
                    })
                })
                .collect(),
        );
        gauges(
            &mut reg,
            "bgp_prefixes_received",
            "Prefixes received from each peer",
            peers
                .iter()
                .map(|p| {
                    (
                        PeerLabel {
                            peer: p.address.to_string(),
                        },
                        p.received as i64,
                    )
                })
                .collect(),
        );
        counters(
            &mut reg,
            "bgp_session_flaps",
            "Times each session went down",
            peers
                .iter()
                .map(|p| {
                    (
                        PeerLabel {
                            peer: p.address.to_string(),
                        },
                        p.flaps,
                    )
                })
                .collect(),
        );
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// Bind the metrics address (before start-up goes on, so a taken port is
/// an error the operator sees at once).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics address {addr}: {e} (change --metrics-addr)"))
}

const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Serve `GET /metrics` (anything else: 404) until the agent stops.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_DEADLINE, answer(&agent, conn)).await;
        });
    }
}

async fn answer(agent: &Arc<Agent>, conn: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut first = String::new();
    conn.read_line(&mut first).await?;
    // Headers are read and ignored.
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).await? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = if first.starts_with("GET ") && path == "/metrics" {
        let agent = agent.clone();
        let body = tokio::task::spawn_blocking(move || render(&agent))
            .await
            .unwrap_or_default();
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "strait serves /metrics only\n".to_string(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let conn = conn.get_mut();
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
