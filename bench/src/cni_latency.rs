//! CNI ADD and DEL latency: strait beside the reference `bridge` +
//! `host-local` plugins from Debian's containernetworking-plugins, measured in
//! the same run on the same node namespace.
//!
//! Each plugin is spawned from a thread that has entered the node's network
//! namespace (as a runtime in that namespace would), so the figures are the
//! plugin's own wall time: exec, IPAM, netlink, exit. Pod namespaces are made
//! beforehand and are not timed.
//!
//! Usage: cni-latency [--rounds N] [--parallel P] [--out FILE]   (root)

use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strait_lab::run::{self as labrun, netns_path, Binaries};
use strait_netlink::{in_netns, NetnsFile};

const LAB: &str = "cnibench";
const REF: &str = "/usr/lib/cni";

struct Plugin {
    name: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
}

fn run_plugin(p: &Plugin, cmd: &str, cid: &str, netns: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut child = Command::new(&p.bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns_path(netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REF)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(&p.conf)?;
    let out = child.wait_with_output()?;
    let dt = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{} {cmd} {cid}: {}",
            p.name,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(dt)
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn pct(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    }
}

/// Run `f` once per item, `par` at a time, each call on a thread inside
/// the node namespace; collect the durations it reports.
fn in_parallel<T: Sync>(
    node: &NetnsFile,
    items: &[T],
    par: usize,
    f: impl Fn(&T) -> anyhow::Result<Duration> + Sync,
    out: &mut Samples,
) -> anyhow::Result<()> {
    for chunk in items.chunks(par) {
        let res: Vec<anyhow::Result<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|item| {
                    s.spawn(|| {
                        in_netns(node, || f(item))
                            .map_err(anyhow::Error::from)
                            .and_then(|r| r)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in res {
            out.0.push(r?);
        }
    }
    Ok(())
}

/// One batch: ADD (or DEL) `pods` pods, `par` at a time.
fn batch(
    node: &NetnsFile,
    p: &Plugin,
    pods: &[String],
    par: usize,
    cmd: &str,
    out: &mut Samples,
) -> anyhow::Result<()> {
    in_parallel(node, pods, par, |ns| run_plugin(p, cmd, ns, ns), out)
}

/// The floor: spawning the program with nothing to do (VERSION).
fn batch_floor(
    node: &NetnsFile,
    p: &Plugin,
    n: usize,
    par: usize,
    out: &mut Samples,
) -> anyhow::Result<()> {
    let items: Vec<()> = vec![(); n];
    in_parallel(
        node,
        &items,
        par,
        |_| {
            let t0 = Instant::now();
            let mut child = Command::new(&p.bin)
                .env_clear()
                .env("CNI_COMMAND", "VERSION")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?;
            // /bin/true does not read stdin: a broken pipe is expected.
            let _ = child.stdin.take().unwrap().write_all(&p.conf);
            child.wait()?;
            Ok(t0.elapsed())
        },
        out,
    )
}

struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = strait_lab::cmd::ip(&["netns", "del", ns]);
        }
        if let Ok(bins) = Binaries::locate() {
            let _ = labrun::down(LAB, &bins);
        }
        let _ = std::fs::remove_dir_all("/run/strait-bench");
    }
}

fn machine() -> String {
    let bridge_ver = strait_lab::cmd::run(
        "dpkg-query",
        &["-W", "-f", "${Version}", "containernetworking-plugins"],
    )
    .unwrap_or_default();
    format!(
        "{}, containernetworking-plugins {bridge_ver}",
        strait_bench::machine()
    )
}

fn main() -> anyhow::Result<()> {
    let rounds = strait_bench::flag_or("--rounds", 4);
    let par = strait_bench::flag_or("--parallel", 50);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    if !nix::unistd::geteuid().is_root() {
        bail!("cni-latency needs root (it creates network namespaces)");
    }
    if !Path::new(REF).join("bridge").exists() {
        bail!("{REF}/bridge is missing: apt-get install containernetworking-plugins");
    }
    let bins = Binaries::locate()
        .context("run from target/*/ next to strait and strait-cni, or set STRAIT_CNI")?;
    let mut cleanup = Cleanup(vec![]);
    let _ = labrun::down(LAB, &bins);

    // One node, a /20 of pod addresses so cool-downs never exhaust it.
    let yaml = format!("apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {LAB}}}\nspec:\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: 20}}\n  nodes: [{{name: n1}}]\n");
    std::fs::create_dir_all("/run/strait-bench")?;
    std::fs::write("/run/strait-bench/lab.yaml", yaml)?;
    let st = labrun::up(Path::new("/run/strait-bench/lab.yaml"), &bins)?;
    let node = st.plan.node("n1").unwrap().clone();
    let node_ns = NetnsFile::open(&netns_path(&node.netns))?;

    let plugins = [
        Plugin {
            name: "strait",
            bin: bins.cni.clone(),
            conf: labrun::cni_conf(&st, &node),
        },
        Plugin {
            name: "bridge+host-local",
            bin: Path::new(REF).join("bridge"),
            conf: serde_json::to_vec(&serde_json::json!({
                "cniVersion": "1.0.0", "name": "benchbr", "type": "bridge",
                "bridge": "cnibench0", "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "subnet": "198.18.16.0/20", "dataDir": "/run/strait-bench/host-local"}
            }))?,
        },
    ];
    let n = rounds * par;
    eprintln!("creating {} pod namespaces…", n * 2);
    let mut table = vec![];
    for (pi, p) in plugins.iter().enumerate() {
        for (mode, width) in [("sequential", 1usize), ("parallel", par)] {
            let pods: Vec<String> = (0..n)
                .map(|i| format!("strait-{LAB}-pod-b{pi}-{}-{i}", &mode[..3]))
                .collect();
            for ns in &pods {
                strait_lab::cmd::ip(&["netns", "add", ns])?;
                cleanup.0.push(ns.clone());
            }
            let (mut add, mut del) = (Samples::default(), Samples::default());
            eprintln!("{}: {n} ADD + {n} DEL, {mode} ({width} at a time)", p.name);
            // Warm the page cache and the agent; not counted.
            batch(&node_ns, p, &pods[..1], 1, "ADD", &mut Samples::default())?;
            batch(&node_ns, p, &pods[..1], 1, "DEL", &mut Samples::default())?;
            for r in 0..rounds {
                let round = &pods[r * par..(r + 1) * par];
                batch(&node_ns, p, round, width, "ADD", &mut add)?;
                batch(&node_ns, p, round, width, "DEL", &mut del)?;
            }
            table.push((p.name, mode, width, add, del));
        }
    }
    // The floor every exec'd plugin pays: spawning a process that does
    // nothing (/bin/true) and strait-cni answering VERSION.
    let mut floors = vec![];
    for (name, bin) in [
        ("/bin/true", PathBuf::from("/bin/true")),
        ("strait-cni VERSION", bins.cni.clone()),
    ] {
        let p = Plugin {
            name: "floor",
            bin,
            conf: b"{}".to_vec(),
        };
        let mut seq = Samples::default();
        batch_floor(&node_ns, &p, n, 1, &mut seq)?;
        let mut par_s = Samples::default();
        batch_floor(&node_ns, &p, n, par, &mut par_s)?;
        floors.push((name, seq, par_s));
    }
    let mut report = String::new();
    report.push_str(&format!("# CNI ADD/DEL latency\n\nmachine: {}\nsamples: {n} per row; parallel = {par} plugin processes at once\n\n", machine()));
    report.push_str("| plugin | mode | ADD min | ADD median | ADD p99 | DEL min | DEL median | DEL p99 |\n|---|---|---|---|---|---|---|---|\n");
    for (name, mode, _, add, del) in &table {
        report.push_str(&format!(
            "| {name} | {mode} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            add.pct(0.0), add.pct(0.5), add.pct(0.99), del.pct(0.0), del.pct(0.5), del.pct(0.99)
        ));
    }
    report.push_str("\nFloor (process spawn only, same harness):\n\n| program | sequential median | sequential p99 | parallel median | parallel p99 |\n|---|---|---|---|---|\n");
    for (name, seq, p) in &floors {
        report.push_str(&format!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            seq.pct(0.5),
            seq.pct(0.99),
            p.pct(0.5),
            p.pct(0.99)
        ));
    }
    let med = |name: &str, mode: &str, add: bool| {
        table
            .iter()
            .find(|t| t.0 == name && t.1 == mode)
            .map(|t| if add { t.3.pct(0.5) } else { t.4.pct(0.5) })
            .unwrap()
    };
    report.push_str(&format!(
        "\nstrait median ADD is {:.1}x faster than bridge sequential, {:.1}x in parallel; DEL {:.1}x and {:.1}x.\n",
        med("bridge+host-local", "sequential", true) / med("strait", "sequential", true),
        med("bridge+host-local", "parallel", true) / med("strait", "parallel", true),
        med("bridge+host-local", "sequential", false) / med("strait", "sequential", false),
        med("bridge+host-local", "parallel", false) / med("strait", "parallel", false),
    ));
    print!("{report}");
    if let Some(f) = out_file {
        std::fs::write(&f, &report)?;
        eprintln!("saved to {}", f.display());
    }
    // The bridge plugin's bridge lives in the node namespace; it goes with it.
    Ok(())
}
