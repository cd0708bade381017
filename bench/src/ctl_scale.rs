//! The control plane at scale: N services of 10 endpoints each (10 000 by
//! default) given to the agents through the files source, through a real
//! kube-apiserver (1.20.2 with etcd, the lab's `controlPlane:
//! kube-apiserver`) and through strait's etcd datastore (`controlPlane:
//! etcd`), in one run. For each source:
//!
//! - create -> programmed: from the first object written to the last
//!   service in node-a's eBPF service map;
//! - one endpoint change -> programmed: one EndpointSlice's first address
//!   changed, until the new backend is in the map (median of 5). Through
//!   the apiserver and etcd the change is written by a client that stays
//!   connected, as an endpoints controller's does; the files source gets
//!   its whole file rewritten;
//! - the agent's RSS with everything programmed.
//!
//! "Programmed" is read straight from the pinned strait_lb map, so the
//! figures include the source's delivery, the reconcile pass and the map
//! writes, not the CLI.
//!
//! Usage: ctl-scale [--services 10000] [--only files|kube-apiserver|etcd] [--out FILE]   (root; scripts/kube-bins.sh first)

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strait_bpf::maps::{self, LbKey, LbMap};
use strait_lab::run::{self as labrun, Binaries};

const ENDPOINTS: usize = 10;

fn vip(i: usize) -> Ipv4Addr {
    let n = 129 * 256 + i; // 198.18.129.0 onwards, inside 198.18.128.0/17
    Ipv4Addr::new(198, 18, (n / 256) as u8, (n % 256) as u8)
}

/// Backend j of service i; generation g changes service i's first address.
fn backend(i: usize, j: usize, g: usize) -> Ipv4Addr {
    let base = if j == 0 { 10 + g } else { j + 100 };
    Ipv4Addr::new(198, 19, 250 + (i % 4) as u8, base as u8)
}

fn service(i: usize) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "scale"},
        "spec": {"clusterIP": vip(i).to_string(), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(i: usize, g: usize) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = (0..ENDPOINTS)
        .map(|j| serde_json::json!({"addresses": [backend(i, j, g).to_string()], "conditions": {"ready": true}}))
        .collect();
    serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-1"), "namespace": "scale", "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
}

fn lab_yaml(name: &str, control_plane: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  mode: ebpf\n  controlPlane: {control_plane}\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 24, serviceCIDR: 198.18.128.0/17}}\n  nodes: [{{name: node-a}}, {{name: node-b}}]\n"
    )
}

/// Whether node-a's map sends service i to `want`.
fn programmed(pins: &std::path::Path, i: usize, want: Ipv4Addr) -> bool {
    let Ok(lb) = maps::open::<LbMap>(pins, "strait_lb") else {
        return false;
    };
    (1..=ENDPOINTS as u16).any(|slot| {
        let k = LbKey {
            addr: maps::ip_key(vip(i)),
            port: 80u16.to_be(),
            slot,
            proto: 6,
            _pad: [0; 3],
        };
        lb.get(&k, 0)
            .is_ok_and(|v| v.backend_ip == maps::ip_key(want))
    })
}

fn wait(what: &str, timeout: Duration, f: impl Fn() -> bool) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(t0.elapsed())
}

fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// (write -> programmed, write returned -> programmed, write returned ->
/// the same change seen by another watcher: the store's delivery alone).
type Timings = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// Time one change: `write` it, then wait (without blocking the client's
/// runtime) until service `i`'s first backend is generation `g`'s. Pushes
/// (write -> programmed, write returned -> programmed).
async fn timed_change(
    write: impl std::future::Future<Output = anyhow::Result<()>>,
    seen: Option<tokio::task::JoinHandle<anyhow::Result<Instant>>>,
    pins: &std::path::Path,
    (i, g): (usize, usize),
    out: &mut Timings,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    write.await?;
    let t1 = Instant::now();
    while !programmed(pins, i, backend(i, 0, g)) {
        if t1.elapsed() > Duration::from_secs(60) {
            bail!("the change programmed: not within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    out.0.push(t0.elapsed());
    out.1.push(t1.elapsed());
    if let Some(seen) = seen {
        let at = tokio::time::timeout(Duration::from_secs(10), seen).await???;
        out.2.push(at.saturating_duration_since(t1));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Five endpoint changes written by a client that stays connected, as an
/// endpoints controller's does: (write -> programmed, write returned ->
/// programmed).
fn changes_connected(
    st: &strait_lab::LabState,
    cp: &str,
    n: usize,
    pins: &std::path::Path,
) -> anyhow::Result<Timings> {
    let pins = pins.to_path_buf();
    let each = |i: usize, g: usize| (i, g, format!("s{i}-1"), slice(i, g));
    let todo: Vec<_> = (1..=5).map(|g| each(g * 7 % n, g)).collect();
    let mut out = (vec![], vec![], vec![]);
    if cp == "etcd" {
        return strait_lab::control_plane::with_etcd(st, move |c| async move {
            for (i, g, name, v) in todo {
                let key = strait_model::datastore::key_of(
                    strait_model::datastore::DEFAULT_PREFIX,
                    "EndpointSlice",
                    Some("scale"),
                    &name,
                )
                .context("slice key")?;
                let value = serde_json::to_vec(&v)?;
                let write = async { Ok(c.put(key.as_bytes(), &value).await.map(|_| ())?) };
                timed_change(write, None, &pins, (i, g), &mut out).await?;
            }
            Ok(out)
        });
    }
    strait_lab::publish::admin(st, move |c| async move {
        use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
        let v1 = c
            .list_api_group_resources("discovery.k8s.io/v1")
            .await
            .is_ok_and(|r| r.resources.iter().any(|r| r.name == "endpointslices"));
        let version = if v1 { "v1" } else { "v1beta1" };
        let ar = ApiResource {
            group: "discovery.k8s.io".into(),
            version: version.into(),
            api_version: format!("discovery.k8s.io/{version}"),
            kind: "EndpointSlice".into(),
            plural: "endpointslices".into(),
        };
        let api = Api::<DynamicObject>::namespaced_with(c, "scale", &ar);
        let pp = PatchParams::apply("strait-lab").force();
        for (i, g, name, v) in todo {
            let v = if v1 {
                v
            } else {
                strait_lab::publish::slice_to_v1beta1(v)
            };
            // The bench watches the slice too, as a third client: when its
            // event arrives is the apiserver's part of the latency.
            // From the list's resourceVersion (the object's own may be
            // older than the watch cache keeps: 410).
            let field = format!("metadata.name={name}");
            let rv = api
                .list_metadata(&kube::api::ListParams::default().fields(&field))
                .await?
                .metadata
                .resource_version
                .unwrap_or_default();
            let wp = kube::api::WatchParams::default().fields(&field);
            let stream = api.watch(&wp, &rv).await?;
            let seen = tokio::spawn(async move {
                use futures::TryStreamExt;
                let mut stream = std::pin::pin!(stream);
                let mut last = String::from("nothing");
                while let Some(ev) = stream.try_next().await? {
                    match ev {
                        kube::api::WatchEvent::Modified(_) => return Ok(Instant::now()),
                        kube::api::WatchEvent::Error(e) => bail!("the watch failed: {e:?}"),
                        other => last = format!("{other:?}").chars().take(200).collect(),
                    }
                }
                bail!("the watch ended before the change arrived (last event: {last})")
            });
            let write = async { Ok(api.patch(&name, &pp, &Patch::Apply(&v)).await.map(|_| ())?) };
            timed_change(write, Some(seen), &pins, (i, g), &mut out).await?;
        }
        Ok(out)
    })
}

struct Row {
    source: &'static str,
    create: Duration,
    write: Duration,
    changes: Vec<Duration>,
    /// From the source accepting the change (file renamed, apiserver or
    /// etcd answered) to programmed: the agent's part.
    after_write: Vec<Duration>,
    /// From the store accepting the change to another watcher's event.
    delivered: Vec<Duration>,
    /// The services reconciler's last pass (compile + map writes), µs.
    services_pass: Option<u64>,
    rss: f64,
}

fn run(source: &'static str, cp: &str, n: usize, bins: &Binaries) -> anyhow::Result<Row> {
    let name = format!("ctlscale{}", &cp[..1]);
    let f = PathBuf::from(format!("/run/strait-bench-ctl/{name}.yaml"));
    std::fs::write(&f, lab_yaml(&name, cp))?;
    let _ = labrun::down(&name, bins);
    let st = labrun::up(&f, bins)?;
    let pins = PathBuf::from(strait_model::lab::bpf_dir(&name, "node-a"));
    let result = (|| -> anyhow::Result<Row> {
        let mut objs: Vec<serde_json::Value> = Vec::with_capacity(2 * n);
        for i in 0..n {
            objs.push(service(i));
            objs.push(slice(i, 0));
        }
        eprintln!("{source}: creating {n} services and {n} EndpointSlices");
        let t0 = Instant::now();
        strait_lab::publish::put(&st, "scale", &objs)?;
        let write = t0.elapsed();
        wait("all services programmed", Duration::from_secs(600), || {
            programmed(&pins, n - 1, backend(n - 1, 0, 0)) && programmed(&pins, 0, backend(0, 0, 0))
        })?;
        let create = t0.elapsed();
        eprintln!("{source}: programmed after {create:?} (writing took {write:?})");
        std::thread::sleep(Duration::from_secs(2));
        let (changes, after_write, delivered) = if cp == "files" {
            let (mut changes, mut after_write) = (vec![], vec![]);
            for g in 1..=5 {
                let i = g * 7 % n;
                let t0 = Instant::now();
                // The files source reads whole files: the one slice changes
                // inside the file that holds them all.
                objs[2 * i + 1] = slice(i, g);
                strait_lab::publish::put(&st, "scale", &objs)?;
                after_write.push(wait(
                    "the change programmed",
                    Duration::from_secs(60),
                    || programmed(&pins, i, backend(i, 0, g)),
                )?);
                changes.push(t0.elapsed());
                std::thread::sleep(Duration::from_millis(300));
            }
            (changes, after_write, vec![])
        } else {
            changes_connected(&st, cp, n, &pins)?
        };
        let mut services_pass = None;
        if let Ok(status) =
            strait_lab::run::agent_status(&st.socket(st.plan.node("node-a").unwrap()))
        {
            for r in &status.reconcilers {
                if r.name == "services" {
                    services_pass = Some(r.last_pass_micros);
                }
                eprintln!(
                    "{source}: reconciler {} last pass {} µs ({} passes)",
                    r.name, r.last_pass_micros, r.passes
                );
            }
        }
        let pid = strait_lab::LabState::read_pid(&st.agent_pid(st.plan.node("node-a").unwrap()))
            .context("agent pid")?;
        // Resident memory once the burst is over: the agent hands freed
        // heap back a couple of seconds after the last change.
        std::thread::sleep(Duration::from_secs(4));
        Ok(Row {
            source,
            create,
            write,
            changes,
            after_write,
            delivered,
            services_pass,
            rss: rss_mb(pid),
        })
    })();
    let _ = labrun::down(&name, bins);
    result
}

fn main() -> anyhow::Result<()> {
    let n: usize = strait_bench::flag("--services")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    let only = strait_bench::flag("--only");
    if !nix::unistd::geteuid().is_root() {
        bail!("ctl-scale needs root (it creates network namespaces)");
    }
    if only.as_deref().is_none_or(|o| o == "kube-apiserver") {
        strait_lab::control_plane::apiserver_binary()?;
    }
    let bins = Binaries::locate()?;
    std::fs::create_dir_all("/run/strait-bench-ctl")?;
    let mut rows = vec![];
    for (source, cp) in [
        ("files", "files"),
        ("kube-apiserver 1.20.2", "kube-apiserver"),
        ("etcd 3.4 datastore", "etcd"),
    ] {
        if only.as_deref().is_some_and(|o| o != cp) {
            continue;
        }
        rows.push(run(source, cp, n, &bins)?);
    }
    let mut out = format!(
        "# The control plane at scale\n\nmachine: {}. {n} services × {ENDPOINTS} endpoints, 2 nodes, eBPF datapath. \"Programmed\" = the backend is in node-a's pinned strait_lb map.\nThe files source polls its directory every 0.5 s and rereads whole files; the kube and etcd sources get watch events (coalesced for 3 ms).\n\n| source | services | create → programmed | of which writing the objects | one endpoint change → programmed, median (min–max of 5) | of which after the source accepted it | of which the store delivering the event to a watcher | agent RSS |\n|---|---|---|---|---|---|---|---|\n",
        strait_bench::machine()
    );
    let ms = |v: &[Duration]| {
        if v.is_empty() {
            return "—".to_string();
        }
        let mut c = v.to_vec();
        c.sort();
        format!(
            "{:.0} ms ({:.0}–{:.0})",
            c[c.len() / 2].as_secs_f64() * 1e3,
            c[0].as_secs_f64() * 1e3,
            c[c.len() - 1].as_secs_f64() * 1e3
        )
    };
    for r in &rows {
        out.push_str(&format!(
            "| {} | {n} | {:.1} s | {:.1} s | {} | {} | {} | {:.0} MB |\n",
            r.source,
            r.create.as_secs_f64(),
            r.write.as_secs_f64(),
            ms(&r.changes),
            ms(&r.after_write),
            ms(&r.delivered),
            r.rss,
        ));
    }
    out.push_str("\nThe services reconciler's last pass on node-a (the last change: compile the table, diff, write the map):");
    for r in &rows {
        if let Some(us) = r.services_pass {
            out.push_str(&format!(" {} {:.1} ms;", r.source, us as f64 / 1e3));
        }
    }
    out.push('\n');
    out.push_str("\nTargets (issue 8): one endpoint change programmed in < 50 ms end to end; agent RSS ≤ 100 MiB at 10 000 services.\n");
    print!("{out}");
    if let Some(f) = out_file {
        std::fs::write(&f, &out)?;
        eprintln!("saved to {}", f.display());
    }
    Ok(())
}
