//! Shared harness for strait's root integration tests. Every test builds its
//! own lab (its own namespaces, agents and files, under a unique name) and a
//! guard removes all of it on drop, even when the test panics.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use strait_lab::run::{self as labrun, Binaries};
use strait_lab::LabState;

pub mod capture;
pub mod explain;
pub mod hops;
pub mod scrape;
pub mod svc;

/// Root tests need root. Outside CI they skip loudly; under CI=true a skip is
/// a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root, and CI=true forbids skipping root tests");
    }
    eprintln!("\n!!! SKIPPED {test}: needs root (run the tests as root, as CI does) !!!\n");
    false
}

pub fn bins() -> Binaries {
    let strait = PathBuf::from(env!("CARGO_BIN_EXE_strait"));
    let cni = strait.with_file_name("strait-cni");
    assert!(
        cni.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        cni.display()
    );
    Binaries { strait, cni }
}

/// A lab for one test; `down` on drop.
pub struct Lab {
    pub st: LabState,
    pub bins: Binaries,
    _file: tempfile::NamedTempFile,
    /// False once the test has abandoned the lab (to simulate a crash).
    armed: bool,
}

impl Lab {
    /// Bring up a lab from `yaml` (whose metadata.name must be unique to the test).
    pub fn up(yaml: &str) -> Lab {
        Lab::up_with(yaml, bins())
    }

    /// Bring up a lab with other binaries (an older build, say).
    pub fn up_with(yaml: &str, bins: Binaries) -> Lab {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        let st = labrun::up(f.path(), &bins).expect("lab up");
        Lab {
            st,
            bins,
            _file: f,
            armed: true,
        }
    }

    /// Drop the guard without taking the lab down, as a crash would.
    pub fn abandon(mut self) {
        self.armed = false;
    }

    pub fn name(&self) -> &str {
        &self.st.plan.name
    }

    pub fn node(&self, name: &str) -> &strait_model::lab::NodePlan {
        self.st.plan.node(name).unwrap()
    }

    pub fn probe(&self, src: &str, dst_pod: &str) -> anyhow::Result<String> {
        let ns = labrun::target_netns(&self.st.plan, src)?;
        let p = self.st.plan.pod(dst_pod).unwrap();
        let ip = self.st.pod_ip(p).unwrap();
        let r = strait_lab::probe::probe(
            &labrun::netns_path(&ns),
            std::net::SocketAddr::new(ip, 8080),
            false,
            Duration::from_secs(2),
        )?;
        Ok(r.answered_by)
    }

    /// Run a command in a lab namespace; returns stdout, panics on failure.
    pub fn exec(&self, target: &str, args: &[&str]) -> String {
        let ns = labrun::target_netns(&self.st.plan, target).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Until `f` holds for `target`'s `cmd` output (level-triggered state,
    /// 10 s at most). A failing command counts as empty output (a table not
    /// made yet). Returns the output that satisfied `f`.
    pub fn until(
        &self,
        target: &str,
        cmd: &[&str],
        what: &str,
        f: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ns = labrun::target_netns(&self.st.plan, target).unwrap();
        loop {
            let o = Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(cmd)
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            if f(&out) {
                return out;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restart every node's agent with another cross-node mode, as an
    /// operator changing --cross-node would; waits until they are ready.
    pub fn restart_agents_with(&self, cross_node: strait_model::lab::CrossNodeMode) {
        let mut plan = self.st.plan.clone();
        plan.cross_node = cross_node;
        let st = strait_lab::LabState {
            dir: self.st.dir.clone(),
            plan,
        };
        for n in self.st.plan.nodes.clone() {
            let pid = strait_lab::LabState::read_pid(&self.st.agent_pid(&n)).unwrap();
            strait_lab::cmd::stop(&[pid], Duration::from_secs(3));
            labrun::start_agent(&st, &self.bins, &n, &[]).unwrap();
            labrun::wait_agent_ready(&st, &n, Duration::from_secs(10)).unwrap();
        }
    }

    /// Run the strait binary with `args`; its stdout, or a panic with its
    /// stderr.
    pub fn strait<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let out = Command::new(&self.bins.strait).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "strait {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self, node: &str) -> strait_model::api::NodeStatus {
        labrun::agent_status(&self.st.socket(self.node(node))).unwrap()
    }

    /// A lab pod's host veth name.
    pub fn host_veth(&self, pod: &str) -> String {
        let p = self.st.plan.pod(pod).unwrap();
        strait_model::naming::host_veth_name(&self.st.container_id(p), "eth0")
    }

    /// Names of strait host veths in a node's namespace.
    pub fn host_veths(&self, node: &str) -> Vec<String> {
        self.exec(node, &["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| strait_model::naming::is_host_veth(n))
            .collect()
    }

    /// A fresh pod namespace owned by the test (removed with the lab).
    pub fn pod_netns(&self, pod: &str) -> String {
        let name = format!("strait-{}-pod-t-{pod}", self.name());
        strait_lab::cmd::ip(&["netns", "add", &name]).unwrap();
        name
    }
}

/// Run `f` on a thread inside a pod's network namespace.
pub fn in_pod<T: Send>(lab: &Lab, pod: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns =
        strait_netlink::NetnsFile::open(&labrun::netns_path(&lab.st.plan.pod(pod).unwrap().netns))
            .unwrap();
    strait_netlink::in_netns(&ns, f).unwrap()
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let name = self.st.plan.name.clone();
        if let Err(e) = labrun::down(&name, &self.bins) {
            eprintln!("lab {name} down failed: {e:#}");
        }
        let left = strait_lab::cmd::lab_netns(&name);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("lab {name} left namespaces behind: {left:?}");
        }
    }
}

/// A lab file with `nodes` nodes, no pods, and pod blocks of `/mask`.
pub fn lab_yaml(name: &str, nodes: &[&str], mask: u8, pods: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  mode: routed\n  addressPlan: {{fabric: 198.18.0.0/24, podCIDR: 198.19.0.0/16, nodeMaskSize: {mask}}}\n  nodes:\n"
    );
    for n in nodes {
        s.push_str(&format!("  - name: {n}\n"));
    }
    for (pod, node) in pods {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default}}\nspec: {{nodeName: {node}, containers: [{{name: echo}}]}}\n"
        ));
    }
    s
}

/// What a CNI plugin run returned.
#[derive(Debug)]
pub struct CniOut {
    pub ok: bool,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl CniOut {
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got success: {}", self.json);
        self.json["code"].as_u64().expect("error JSON has a code")
    }
    /// The pod address in an ADD result.
    pub fn ip(&self) -> std::net::IpAddr {
        let a = self.json["ips"][0]["address"].as_str().expect("an address");
        a.split('/').next().unwrap().parse().unwrap()
    }
    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// Run a CNI plugin binary in `node_netns` with explicit env and stdin.
pub fn cni_raw(plugin: &Path, node_netns: &str, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", node_netns])
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    CniOut {
        ok: out.status.success(),
        json: if stdout.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {stdout}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The standard environment for an attachment.
pub fn cni_env<'a>(
    command: &'a str,
    cid: &'a str,
    netns: &'a str,
    pod: &'a str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", if netns.is_empty() { String::new() } else { format!("/run/netns/{netns}") }),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
        ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}")),
    ]
}

pub fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Long-lived TCP streams from pod `from` to each pod in `to` (round trips
/// on the echo server) keep flowing, intact, while every node's agent is
/// killed (SIGKILL) and started again; `after_restart` waits for whatever
/// the restarted agents must redo.
pub fn streams_survive_agent_restarts(
    lab: &Lab,
    from: &str,
    to: &[&str],
    after_restart: impl Fn(),
) {
    use std::io::{BufRead, BufReader, Write};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = to
        .iter()
        .map(|name| {
            let name = name.to_string();
            let ip = lab.st.pod_ip(lab.st.plan.pod(&name).unwrap()).unwrap();
            let ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
                &lab.st.plan.pod(from).unwrap().netns,
            ))
            .unwrap();
            let stop = stop.clone();
            let down = down.clone();
            std::thread::spawn(move || {
                strait_netlink::in_netns(&ns, move || -> std::io::Result<(u64, u64)> {
                    let mut s = std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::new(ip, 8080),
                        Duration::from_secs(2),
                    )?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut r = BufReader::new(s.try_clone()?);
                    // Round trips in all, and those completed while an
                    // agent was down (forwarding must not need it).
                    let (mut got, mut while_down) = (0u64, 0u64);
                    let mut line = String::new();
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        s.write_all(b"x\n")?;
                        line.clear();
                        r.read_line(&mut line)?;
                        assert_eq!(
                            line.split_whitespace().next(),
                            Some(name.as_str()),
                            "every reply intact"
                        );
                        got += 1;
                        if down.load(std::sync::atomic::Ordering::SeqCst) {
                            while_down += 1;
                        }
                    }
                    Ok((got, while_down))
                })
                .unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for node in ["node-a", "node-b"] {
        let n = lab.node(node).clone();
        let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n)).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        down.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300)); // forwarding without an agent
        down.store(false, std::sync::atomic::Ordering::SeqCst);
        strait_lab::run::start_agent(&lab.st, &lab.bins, &n, &[]).unwrap();
        strait_lab::run::wait_agent_ready(&lab.st, &n, Duration::from_secs(10)).unwrap();
    }
    after_restart(); // e.g. the restarted agents re-attached (replaced) every program
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in streams {
        let (got, while_down) = s
            .join()
            .unwrap()
            .expect("no reset, no timeout: the stream kept flowing");
        assert!(
            while_down > 0,
            "round trips completed while the agents were down ({got} in all)"
        );
        assert!(
            got > 100,
            "the stream carried traffic throughout ({got} round trips)"
        );
    }
}
