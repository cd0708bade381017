//! BGP benchmarks, one run, side by side:
//!
//! 1. A pod's creation (its CNI ADD claims a /32 block of an IPPool) to its
//!    route in the other node's kernel, over strait's speakers; beside the
//!    Calico way, a route added to one node's kernel and carried by BIRD
//!    (kernel protocol `learn`, `scan time 2`, as Calico's template).
//! 2. A BIRD peer sending 100 000 prefixes: time until all are in the
//!    node's kernel, and the agent's memory; beside BIRD itself as the
//!    node's speaker (Calico's node BIRD); beside the floor, the same
//!    routes written by `ip -batch` with nothing to learn.
//!
//! Everything runs in namespaces this program makes (198.18.0.0/15) and
//! removes, even on error.

use anyhow::{bail, Context};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use strait_lab::cmd::ip;
use strait_lab::run::{self as labrun, Binaries};

const LAB: &str = "bgpbench";
const DIR: &str = "/run/strait-bench-bgp";
const BIRD_NS: &str = "strait-bgpbench-bird";
const REF_NS: &str = "strait-bgpbench-refnode";
const FLOOR_NS: &str = "strait-bgpbench-floor";
const REF_A: &str = "strait-bgpbench-ref-a";
const REF_B: &str = "strait-bgpbench-ref-b";

struct Cleanup {
    birds: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.birds {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [BIRD_NS, REF_NS, FLOOR_NS, REF_A, REF_B] {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Ok(bins) = Binaries::locate() {
            let _ = labrun::down(LAB, &bins);
        }
        let _ = std::fs::remove_dir_all(DIR);
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Start BIRD in `ns` with `conf`; its control socket is DIR/<name>.ctl.
fn bird(c: &mut Cleanup, ns: &str, name: &str, conf: &str) -> anyhow::Result<u32> {
    let path = Path::new(DIR).join(format!("{name}.conf"));
    std::fs::write(&path, conf)?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "bird", "-f", "-c"])
        .arg(&path)
        .arg("-s")
        .arg(ctl(name))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start bird (apt-get install bird2)")?;
    let pid = child.id();
    c.birds.push(child);
    let t0 = Instant::now();
    while !birdc(name, "show status").contains("Daemon is up") {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "BIRD {name} did not come up (see its config {})",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

/// BIRD prints its version on stderr.
fn bird_version() -> String {
    Command::new("bird")
        .arg("--version")
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

fn ctl(name: &str) -> PathBuf {
    Path::new(DIR).join(format!("{name}.ctl"))
}

fn birdc(name: &str, cmd: &str) -> String {
    Command::new("birdc")
        .arg("-s")
        .arg(ctl(name))
        .args(cmd.split_whitespace())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Poll the peer BIRD until its session `proto` is Established; when.
/// Both speakers are timed from there, so neither's connect timers count.
fn established(proto: &str) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    loop {
        if birdc("peer", &format!("show protocols {proto}")).contains("Established") {
            return Ok(Instant::now());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the peer's session {proto} never came up");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `i`th of the benchmark's /32s: 198.18.64.0 onwards (clear of the
/// lab's fabric, pod CIDR and pool).
fn prefix(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 64, 0)) + i)
}

fn route_count(ns: &str, proto: &str) -> usize {
    sh(&["ip", "-n", ns, "route", "show", "proto", proto])
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Kilobytes of a process's resident memory: now (VmRSS) and peak (VmHWM).
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Poll until `ns` holds `want` routes of `proto`; the time it took.
fn until_routes(ns: &str, proto: &str, want: usize, t0: Instant) -> anyhow::Result<Duration> {
    loop {
        if route_count(ns, proto) >= want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("{ns}: {want} routes of proto {proto} never arrived");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ip monitor route` in `ns`, killed on drop.
struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ip monitor route` in `ns`: each route line, with when it came. Returns
/// once the monitor is listening (it has seen a sentinel route come and
/// go), so no change after this is missed.
fn monitor(ns: &str) -> anyhow::Result<(Monitor, mpsc::Receiver<(Instant, String)>)> {
    // Line-buffered: into a pipe, ip would hold lines back in a block.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "ip", "-n", ns, "monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().unwrap();
    let mon = Monitor(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    let sentinel = "198.18.255.254";
    let t0 = Instant::now();
    loop {
        let _ = ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{sentinel}/32"),
            "dev",
            "lo",
        ]);
        let _ = ip(&[
            "-n",
            ns,
            "route",
            "del",
            &format!("{sentinel}/32"),
            "dev",
            "lo",
        ]);
        if let Ok((_, l)) = rx.recv_timeout(Duration::from_millis(100)) {
            if l.contains(sentinel) {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("ip monitor in {ns} never started");
        }
    }
    // Drain the sentinel's lines.
    std::thread::sleep(Duration::from_millis(50));
    while rx.try_recv().is_ok() {}
    Ok((mon, rx))
}

fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    want: &str,
    t0: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let (t, l) = rx
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("no route {want} within 30 s"))?;
        if l.contains(want) && !l.starts_with("Deleted") {
            return Ok(t.duration_since(t0));
        }
    }
}

#[derive(Default)]
struct Samples(Vec<f64>);
impl Samples {
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

fn main() -> anyhow::Result<()> {
    let n: u32 = strait_bench::flag_or("--prefixes", 100_000);
    let pods: usize = strait_bench::flag_or("--pods", 10);
    let out_file = strait_bench::flag("--out").map(PathBuf::from);
    if !nix::unistd::geteuid().is_root() {
        bail!("bgp-scale needs root (it creates network namespaces)");
    }
    if n > 100_000 {
        bail!("--prefixes: at most 100000 (they must fit in 198.18.64.0-198.19.255.255)");
    }
    let bins = Binaries::locate()
        .context("run from target/*/ next to strait and strait-cni, or set STRAIT_CNI")?;
    let mut c = Cleanup { birds: vec![] };
    let _ = labrun::down(LAB, &bins);
    std::fs::create_dir_all(DIR)?;

    eprintln!("lab: two nodes in BGP mode, an IPPool of /32 blocks");
    let yaml = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {LAB}}}\nspec:\n  crossNode: bgp\n  \
         addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.18.16.0/20, nodeMaskSize: 24}}\n  \
         nodes: [{{name: n1}}, {{name: n2}}]\n---\napiVersion: strait.dev/v1alpha1\nkind: IPPool\n\
         metadata: {{name: solo}}\nspec: {{cidr: 198.18.32.0/24, blockSize: 32}}\n"
    );
    let file = Path::new(DIR).join("lab.yaml");
    std::fs::write(&file, yaml)?;
    let mut st = labrun::up(&file, &bins)?;
    let n1 = st.plan.node("n1").unwrap().clone();
    let n2 = st.plan.node("n2").unwrap().clone();
    until_routes(&n2.netns, "bgp", 1, Instant::now())?;

    // 1. Pod to remote route, strait.
    eprintln!("pod → remote kernel route: {pods} pods");
    let (mon, rx) = monitor(&n2.netns)?;
    let (mon1, rx1) = monitor(&n1.netns)?;
    let (mut apply_s, mut route_s, mut local_s) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..pods {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: default, annotations: {{strait.dev/ippool: solo}}}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: strait/echo}}]}}\n"
        );
        let t0 = Instant::now();
        strait_lab::objects::apply(&mut st, &bins, &pod)?;
        apply_s.0.push(t0.elapsed().as_secs_f64() * 1e3);
        let remote = wait_line(&rx, "proto bgp", t0)?;
        // The pod's own route on its node: the CNI ADD has wired it.
        let local = wait_line(&rx1, "198.18.32.", t0)?;
        route_s.0.push(remote.as_secs_f64() * 1e3);
        local_s
            .0
            .push((remote.as_secs_f64() - local.as_secs_f64()) * 1e3);
    }
    drop((mon, mon1));

    // 1, reference: BIRD learning a kernel route (Calico's node BIRD).
    eprintln!("reference: kernel route → BIRD (learn, scan time 2) → BIRD → kernel");
    for ns in [REF_A, REF_B] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", REF_A, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", REF_B,
    ])?;
    for (ns, a) in [(REF_A, "198.18.1.1/24"), (REF_B, "198.18.1.2/24")] {
        ip(&["-n", ns, "addr", "add", a, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    let conf = |me: &str, peer: &str, kernel: &str| {
        format!(
            "router id {me};\nprotocol device {{}}\nprotocol direct {{ ipv4; interface \"eth0\"; }}\n\
             protocol kernel {{ {kernel} }}\n\
             protocol bgp mesh {{ local {me} as 64512; neighbor {peer} as 64512; connect retry time 1;\n\
             ipv4 {{ import all; export where source = RTS_INHERIT; next hop self; }}; }}\n"
        )
    };
    bird(
        &mut c,
        REF_A,
        "ref-a",
        &conf(
            "198.18.1.1",
            "198.18.1.2",
            "learn; persist; scan time 2; ipv4 { import all; export none; };",
        ),
    )?;
    bird(
        &mut c,
        REF_B,
        "ref-b",
        &conf(
            "198.18.1.2",
            "198.18.1.1",
            "ipv4 { import none; export where source = RTS_BGP; };",
        ),
    )?;
    let t0 = Instant::now();
    while !birdc("ref-b", "show protocols mesh").contains("Established") {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("reference BIRDs never peered");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mon, rx) = monitor(REF_B)?;
    let mut ref_s = Samples::default();
    for i in 0..pods {
        let p = format!("198.18.2.{}/32", i + 1);
        let t0 = Instant::now();
        // As felix programs a pod's route (its own protocol number).
        ip(&[
            "-n", REF_A, "route", "add", &p, "dev", "eth0", "proto", "80",
        ])?;
        let got = wait_line(&rx, &p.replace("/32", ""), t0).with_context(|| {
            format!(
                "reference BIRDs: A has\n{}\nB's kernel:\n{}",
                birdc("ref-a", "show route"),
                sh(&["ip", "-n", REF_B, "route"]).unwrap_or_default()
            )
        })?;
        ref_s.0.push(got.as_secs_f64() * 1e3);
    }
    drop(mon);

    // 2. 100 000 prefixes from a BIRD peer on the fabric.
    eprintln!("{n} prefixes from BIRD: into strait's node, then into a BIRD node");
    let fabric = strait_model::lab::fabric_netns(LAB);
    for (ns, port, addr) in [
        (BIRD_NS, "pbird", "198.18.0.200/24"),
        (REF_NS, "pref", "198.18.0.201/24"),
    ] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &fabric, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", &fabric, "link", "set", port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    let mut statics = String::new();
    for i in 0..n {
        statics.push_str(&format!("  route {}/32 blackhole;\n", prefix(i)));
    }
    let peer_conf = format!(
        "router id 198.18.0.200;\nprotocol device {{}}\nprotocol static {{\n  ipv4;\n{statics}}}\n\
         protocol bgp strait {{ local 198.18.0.200 as 65001; neighbor {} as 64512; disabled; connect retry time 1;\n\
           ipv4 {{ import none; export where source = RTS_STATIC; next hop self; }}; }}\n\
         protocol bgp birdnode {{ local 198.18.0.200 as 65001; neighbor 198.18.0.201 as 64512; disabled; connect retry time 1;\n\
           ipv4 {{ import none; export where source = RTS_STATIC; next hop self; }}; }}\n",
        n1.ip
    );
    bird(&mut c, BIRD_NS, "peer", &peer_conf)?;
    let node_conf = "router id 198.18.0.201;\nprotocol device {}\nprotocol direct { ipv4; interface \"eth0\"; }\n\
        protocol kernel { learn; persist; scan time 2; merge paths on; graceful restart; ipv4 { import all; export where source = RTS_BGP; }; }\n\
        protocol bgp tor { local 198.18.0.201 as 64512; neighbor 198.18.0.200 as 65001; connect retry time 1;\n\
          ipv4 { import all; export none; }; }\n";
    let ref_pid = bird(&mut c, REF_NS, "birdnode", node_conf)?;
    let peer = "apiVersion: strait.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\n\
         spec: {node: n1, peerIP: 198.18.0.200, asNumber: 65001}\n";
    strait_lab::objects::apply(&mut st, &bins, peer)?;
    let agent_pid =
        strait_lab::LabState::read_pid(&st.agent_pid(&n1)).context("n1's agent pid")? as u32;
    let (rss_before, _) = rss_kib(agent_pid);
    let before = route_count(&n1.netns, "bgp");
    // The session waits, disabled, until the clock starts.
    std::thread::sleep(Duration::from_secs(1));
    birdc("peer", "enable strait");
    let t0 = established("strait")?;
    let strait_t = until_routes(&n1.netns, "bgp", before + n as usize, t0)?;
    std::thread::sleep(Duration::from_millis(500));
    let (strait_rss, strait_hwm) = rss_kib(agent_pid);
    let t0 = Instant::now();
    birdc("peer", "disable strait");
    let strait_w = loop {
        if route_count(&n1.netns, "bgp") <= before {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the withdrawal never finished");
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let (ref_rss_before, _) = rss_kib(ref_pid);
    birdc("peer", "enable birdnode");
    let t0 = established("birdnode")?;
    let bird_t = until_routes(REF_NS, "bird", n as usize, t0)?;
    std::thread::sleep(Duration::from_millis(500));
    let (bird_rss, bird_hwm) = rss_kib(ref_pid);
    let t0 = Instant::now();
    birdc("peer", "disable birdnode");
    let bird_w = loop {
        if route_count(REF_NS, "bird") == 0 {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("BIRD's withdrawal never finished");
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // The floor: the same routes written by ip -batch.
    ip(&["netns", "add", FLOOR_NS])?;
    ip(&[
        "-n", FLOOR_NS, "link", "add", "flr0", "type", "veth", "peer", "name", "flr1",
    ])?;
    ip(&[
        "-n",
        FLOOR_NS,
        "addr",
        "add",
        "198.18.0.1/24",
        "dev",
        "flr0",
    ])?;
    ip(&["-n", FLOOR_NS, "link", "set", "flr0", "up"])?;
    ip(&["-n", FLOOR_NS, "link", "set", "flr1", "up"])?;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!(
            "route add {}/32 via 198.18.0.200 proto 186\n",
            prefix(i)
        ));
    }
    let bf = Path::new(DIR).join("floor.batch");
    std::fs::write(&bf, batch)?;
    let t0 = Instant::now();
    sh(&["ip", "-n", FLOOR_NS, "-batch", bf.to_str().unwrap()])?;
    let floor_t = t0.elapsed();

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let mut r = format!(
        "# BGP: route propagation and scale\n\nmachine: {}\nbird: {}\n\n",
        strait_bench::machine(),
        bird_version()
    );
    r.push_str(&format!(
        "## A new pod's route in another node's kernel ({pods} pods)\n\n\
         | path | median | p90 | max |\n|---|---|---|---|\n\
         | strait: the pod's route on its node (CNI ADD done, its /32 block claimed) → /32 in the other node's kernel | {:.1} ms | {:.1} ms | {:.1} ms |\n\
         | strait: pod created (`lab apply`, which publishes it, runs CNI ADD and waits for the pod's server) → /32 in the other node's kernel | {:.1} ms | {:.1} ms | {:.1} ms |\n\
         | (`lab apply` itself) | {:.1} ms | {:.1} ms | {:.1} ms |\n\
         | reference, Calico's node BIRD: route in the kernel → BIRD `learn` (scan time 2) → BIRD → other kernel | {:.1} ms | {:.1} ms | {:.1} ms |\n\n",
        local_s.pct(0.5), local_s.pct(0.9), local_s.pct(1.0),
        route_s.pct(0.5), route_s.pct(0.9), route_s.pct(1.0),
        apply_s.pct(0.5), apply_s.pct(0.9), apply_s.pct(1.0),
        ref_s.pct(0.5), ref_s.pct(0.9), ref_s.pct(1.0),
    ));
    r.push_str(
        "The first row is what BGP adds: the pod's node announcing its /32 and the other node \
         installing it. The second is dominated by the lab's files source, which the agent \
         reads every 500 ms: an ADD waits until the new pod is in the agent's view to read its \
         IPPool annotation (with the kube-apiserver source that is one watch event).\n\n",
    );
    r.push_str(&format!(
        "## {n} prefixes from a BIRD peer (eBGP) into the node's kernel\n\n\
         Timed from the session reaching Established (as the peer BIRD reports it) until the node's kernel holds every route; withdrawn: from the peer disabling the session until none is left.\n\n\
         | node speaker | all in the kernel | all withdrawn | RSS after | peak RSS |\n|---|---|---|---|---|\n\
         | strait agent (embedded speaker) | {} | {} | {} (was {}) | {} |\n\
         | reference: BIRD as the node's speaker | {} | {} | {} (was {}) | {} |\n\
         | floor: `ip -batch` of the same {n} routes (no BGP) | {} | - | - | - |\n",
        ms(strait_t), ms(strait_w), mib(strait_rss), mib(rss_before), mib(strait_hwm),
        ms(bird_t), ms(bird_w), mib(bird_rss), mib(ref_rss_before), mib(bird_hwm),
        ms(floor_t),
    ));
    print!("{r}");
    if let Some(f) = out_file {
        std::fs::write(&f, &r)?;
        eprintln!("written to {}", f.display());
    }
    drop(c);
    Ok(())
}
