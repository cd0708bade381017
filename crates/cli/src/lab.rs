//! `strait lab …`

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use strait_lab::run::{self as labrun, netns_path, Binaries};
use strait_lab::LabState;

#[derive(clap::Args)]
pub struct Args {
    /// Which lab, when several are up.
    #[arg(long, global = true)]
    lab: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Build the lab described in FILE (cleaning up leftovers of an earlier run).
    Up { file: PathBuf },
    /// Remove every namespace, link, process and file the lab made.
    Down,
    /// Add or change objects (Pods, Services, EndpointSlices,
    /// NetworkPolicies, Namespaces) in the running lab: new pods are wired
    /// as kubelet would, everything goes to the lab's cluster source (its
    /// files or its kube-apiserver).
    Apply { file: PathBuf },
    /// Remove the objects in FILE from the running lab (pods are unwired).
    Delete { file: PathBuf },
    /// Nodes, agents and pods of the lab.
    Status,
    /// Run a command in a node's or pod's network namespace.
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Connect from SRC (pod or node) to DST (pod name or IP:PORT); exit 0 if it answers.
    Probe {
        src: String,
        dst: String,
        /// Use UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Capture on every interface from SRC (pod or node) to the pod DST while
    /// one request/response crosses: which interface saw the request, which
    /// the reply.
    Hops { src: String, dst: String },
    /// Every hop of a flow from live state, request then reply: what
    /// decided each (route and table, BPF program and map, NAT, tunnel),
    /// the packet there, whether a capture sees it; skipped hops with the
    /// reason. SRC: a pod or node; DST: a pod, node, address or
    /// svc/NAME:PORT[/udp]. Exit 2 if the flow is dropped.
    Explain {
        src: String,
        dst: String,
        /// Probe the flow and capture on every hop, seen or skipped: each
        /// is confirmed or contradicted (exit 1 on a contradiction).
        #[arg(long)]
        verify: bool,
        /// text, dot (Graphviz source) or svg.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
        /// For a service: follow this backend (an address) rather than
        /// the first; the program picks one per connection.
        #[arg(long, conflicts_with = "verify")]
        backend: Option<std::net::IpAddr>,
    },
    /// The lab cloud's records (a lab with a `cloud:` section): every ENI,
    /// its node and device, MAC, vSwitch and addresses.
    Cloud,
    /// Run the lab's VPC emulator (lab up starts it in the VPC namespace).
    #[command(hide = true)]
    CloudServe,
    /// `strait monitor` for a node (ebpf mode), run in the node's namespace.
    Monitor {
        node: String,
        /// Arguments for `strait monitor` (--trace, --pod, --count, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `strait lb list` for a node (ebpf mode).
    Lb {
        node: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `strait metrics` for a node (ebpf mode).
    Metrics {
        node: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `strait policy` against a node's agent: `lab policy NODE list`, or
    /// `lab policy NODE explain SRC DST[:PORT[/PROTO]]`.
    Policy {
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `strait bgp` against a node's agent: `lab bgp NODE` (peers and
    /// routes), `lab bgp NODE peers|routes [-o json]`.
    Bgp {
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A rack's router CLI (bgp-tor labs): `lab router r1` shows its BGP
    /// sessions and routes; `lab router r1 -- CMD` runs one command in its
    /// own CLI (birdc for BIRD, vtysh -c for FRR).
    Router {
        rack: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// The pod echo server (run inside a pod's namespace by the lab).
    #[command(hide = true)]
    ServeEcho {
        #[arg(long)]
        name: String,
        /// Repeat for more ports.
        #[arg(long, default_values_t = [strait_lab::echo::ECHO_PORT])]
        port: Vec<u16>,
    },
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    match a.verb {
        Verb::Up { file } => {
            let bins = Binaries::locate()?;
            let st = labrun::up(&file, &bins)?;
            print!("{}", labrun::status(&st));
            Ok(0)
        }
        Verb::Down => {
            let bins = Binaries::locate()?;
            let name = match a.lab {
                Some(n) => n,
                None => LabState::find(None)?.plan.name,
            };
            labrun::down(&name, &bins)?;
            eprintln!("lab {name} is down");
            Ok(0)
        }
        Verb::Apply { ref file } | Verb::Delete { ref file } => {
            let bins = Binaries::locate()?;
            let mut st = LabState::find(a.lab.as_deref())?;
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
            let msg = if matches!(a.verb, Verb::Apply { .. }) {
                strait_lab::objects::apply(&mut st, &bins, &text)?
            } else {
                strait_lab::objects::delete(&mut st, &bins, &text)?
            };
            println!("lab {}: {msg}", st.plan.name);
            Ok(0)
        }
        Verb::Status => {
            let st = LabState::find(a.lab.as_deref())?;
            print!("{}", labrun::status(&st));
            Ok(0)
        }
        Verb::Exec { target, cmd } => {
            let st = LabState::find(a.lab.as_deref())?;
            let ns = labrun::target_netns(&st.plan, &target)?;
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &ns]).args(&cmd);
            // A node's processes live in the node's cgroup (socket LB).
            if let Some(cg) = st
                .plan
                .node(&target)
                .and_then(|n| strait_lab::cgroup::node_cgroup(&st.plan.name, &n.name))
                .filter(|c| c.exists())
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: only async-signal-safe work (a write) after fork.
                unsafe {
                    c.pre_exec(move || strait_lab::cgroup::join(&cg, std::process::id()));
                }
            }
            let status = c.status().context("run ip netns exec")?;
            Ok(status.code().unwrap_or(1))
        }
        Verb::Probe {
            src,
            dst,
            udp,
            timeout_ms,
        } => {
            let st = LabState::find(a.lab.as_deref())?;
            let src_ns = labrun::target_netns(&st.plan, &src)?;
            // Probing from a node: be one of the node's processes.
            if let Some(cg) = st
                .plan
                .node(&src)
                .and_then(|n| strait_lab::cgroup::node_cgroup(&st.plan.name, &n.name))
                .filter(|c| c.exists())
            {
                strait_lab::cgroup::join(&cg, std::process::id())
                    .with_context(|| format!("join the node's cgroup {}", cg.display()))?;
            }
            let (addr, want): (SocketAddr, Option<String>) = match dst.parse::<SocketAddr>() {
                Ok(sa) => (sa, None),
                Err(_) if dst.starts_with("svc/") => {
                    let rest = &dst[4..];
                    let (name, port) = rest
                        .rsplit_once(':')
                        .with_context(|| format!("{dst}: write svc/NAME:PORT"))?;
                    let port: u16 = port
                        .parse()
                        .with_context(|| format!("{dst}: {port:?} is not a port"))?;
                    let svc = st.plan.service(name).with_context(|| {
                        format!(
                            "no service {name} in lab {} (services: {})",
                            st.plan.name,
                            st.plan
                                .services
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                    (SocketAddr::new(svc.cluster_ip.into(), port), None)
                }
                Err(_) => {
                    let p = st.plan.pod(&dst).with_context(|| {
                        format!(
                            "{dst:?} is neither IP:PORT nor a pod of lab {}",
                            st.plan.name
                        )
                    })?;
                    let ip = st.pod_ip(p).with_context(|| {
                        format!("pod {dst} has no address (was its CNI ADD successful?)")
                    })?;
                    (
                        SocketAddr::new(ip, strait_lab::echo::ECHO_PORT),
                        Some(p.name.clone()),
                    )
                }
            };
            let proto = if udp { "udp" } else { "tcp" };
            match strait_lab::probe::probe(
                &netns_path(&src_ns),
                addr,
                udp,
                Duration::from_millis(timeout_ms),
            ) {
                Ok(r) => {
                    let connect = r
                        .connect
                        .map(|c| format!(", connect {:.3} ms", c.as_secs_f64() * 1e3))
                        .unwrap_or_default();
                    let from = r
                        .seen_from
                        .as_deref()
                        .map(|f| format!(", it saw the client as {f}"))
                        .unwrap_or_default();
                    println!(
                        "{src} -> {dst} ({proto} {addr}): answered by {} in {:.3} ms{connect}{from}",
                        r.answered_by,
                        r.rtt.as_secs_f64() * 1e3
                    );
                    if let Some(w) = want {
                        if w != r.answered_by {
                            bail!("expected pod {w} to answer, but {} did", r.answered_by);
                        }
                    }
                    Ok(0)
                }
                Err(e) => {
                    println!("{src} -> {dst} ({proto} {addr}): FAILED: {e:#}");
                    Ok(1)
                }
            }
        }
        Verb::Cloud => {
            let st = LabState::find(a.lab.as_deref())?;
            anyhow::ensure!(
                st.plan.cloud.is_some(),
                "lab {} has no cloud (add a cloud: section to its file)",
                st.plan.name
            );
            let c = strait_lab::cloud::LabCloud {
                socket: strait_lab::cloud::socket(&st),
            };
            print!("{}", strait_lab::cloud::table(&c.list()?));
            Ok(0)
        }
        Verb::CloudServe => {
            let st = LabState::find(a.lab.as_deref())?;
            strait_lab::cloud::server::serve(&st)?;
            Ok(0)
        }
        Verb::Hops { src, dst } if dst.starts_with("slb/") => {
            let st = LabState::find(a.lab.as_deref())?;
            anyhow::ensure!(
                src == "external",
                "an SLB is reached from outside: write `hops external {dst}`"
            );
            let (id, port) = dst[4..]
                .rsplit_once(':')
                .with_context(|| format!("{dst}: write slb/ID:PORT"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("{dst}: {port:?} is not a port"))?;
            let r = strait_lab::hops::eni::trace_slb(&st, id, port)?;
            println!(
                "lab {} (datapath {}, cross-node {})",
                st.plan.name, st.plan.mode, st.plan.cross_node
            );
            print!("{}", r.table());
            Ok(0)
        }
        Verb::Hops { src, dst } if dst.starts_with("svc/") => {
            let st = LabState::find(a.lab.as_deref())?;
            let (name, port) = dst[4..]
                .rsplit_once(':')
                .with_context(|| format!("{dst}: write svc/NAME:PORT"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("{dst}: {port:?} is not a port"))?;
            let r = strait_lab::hops::trace_service(&st, &src, name, port)?;
            println!(
                "lab {} (datapath {}, cross-node {})",
                st.plan.name, st.plan.mode, st.plan.cross_node
            );
            print!("{}", r.table());
            Ok(0)
        }
        Verb::Hops { src, dst } => {
            let st = LabState::find(a.lab.as_deref())?;
            let r = strait_lab::hops::trace(&st, &src, &dst)?;
            println!(
                "lab {} (datapath {}, cross-node {})",
                st.plan.name, st.plan.mode, st.plan.cross_node
            );
            print!("{}", r.table());
            Ok(0)
        }
        Verb::Explain {
            src,
            dst,
            verify,
            output,
            backend,
        } => crate::explain::run(a.lab.as_deref(), &src, &dst, verify, &output, backend),
        Verb::Monitor { node, args } => node_tool(a.lab.as_deref(), &node, "monitor", &args, true),
        Verb::Metrics { node, args } => node_tool(a.lab.as_deref(), &node, "metrics", &args, true),
        Verb::Policy { node, args } => agent_verb(a.lab.as_deref(), &node, "policy", &args),
        Verb::Bgp { node, args } => {
            if args.is_empty() {
                let rc = agent_verb(a.lab.as_deref(), &node, "bgp", &["peers".into()])?;
                if rc != 0 {
                    return Ok(rc);
                }
                println!();
                return agent_verb(a.lab.as_deref(), &node, "bgp", &["routes".into()]);
            }
            agent_verb(a.lab.as_deref(), &node, "bgp", &args)
        }
        Verb::Router { rack, cmd } => {
            let st = LabState::find(a.lab.as_deref())?;
            let r = st
                .plan
                .racks
                .iter()
                .find(|r| r.name == rack || rack.strip_prefix("tor-") == Some(&r.name))
                .with_context(|| {
                    format!(
                        "lab {} has no rack {rack:?} (racks: {})",
                        st.plan.name,
                        st.plan
                            .racks
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let cmds: Vec<String> = if !cmd.is_empty() {
                vec![cmd.join(" ")]
            } else if r.router == strait_model::racks::Router::Bird {
                vec!["show protocols".into(), "show route".into()]
            } else {
                vec!["show bgp summary".into(), "show ip route bgp".into()]
            };
            for c in cmds {
                println!("# {} of rack {}: {c}", r.router, r.name);
                print!("{}", strait_lab::racks::router_cli(&st, r, &c)?);
            }
            Ok(0)
        }
        Verb::Lb { node, args } => {
            let mut full = vec!["list".to_string()];
            full.extend(args);
            node_tool_sub(a.lab.as_deref(), &node, "lb", &full)
        }
        Verb::ServeEcho { name, port } => {
            strait_lab::echo::serve_all(&name, &port)?;
            Ok(0)
        }
    }
}

/// Run a `strait` node tool inside a lab node's network namespace, pointed
/// at that node's pin directory (and socket, for pod names).
fn node_tool(
    lab: Option<&str>,
    node: &str,
    tool: &str,
    extra: &[String],
    socket: bool,
) -> anyhow::Result<i32> {
    let st = LabState::find(lab)?;
    let n = st
        .plan
        .node(node)
        .with_context(|| format!("{node} is not a node of lab {}", st.plan.name))?;
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(&n.netns).display()))
        .arg("--")
        .arg(std::env::current_exe()?)
        .arg(tool)
        .arg("--bpf-dir")
        .arg(strait_model::lab::bpf_dir(&st.plan.name, &n.name));
    if socket {
        cmd.arg("--socket").arg(st.socket(n));
    }
    let status = cmd.args(extra).status().context("run nsenter")?;
    Ok(status.code().unwrap_or(1))
}

/// `strait TOOL SUB --bpf-dir … --socket …` in a lab node's namespace.
fn node_tool_sub(
    lab: Option<&str>,
    node: &str,
    tool: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    let st = LabState::find(lab)?;
    let n = st
        .plan
        .node(node)
        .with_context(|| format!("{node} is not a node of lab {}", st.plan.name))?;
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns_path(&n.netns).display()))
        .arg("--")
        .arg(std::env::current_exe()?)
        .arg(tool)
        .args(&args[..1])
        .arg("--bpf-dir")
        .arg(strait_model::lab::bpf_dir(&st.plan.name, &n.name))
        .arg("--socket")
        .arg(st.socket(n))
        .args(&args[1..])
        .status()
        .context("run nsenter")?;
    Ok(status.code().unwrap_or(1))
}

/// Run `strait VERB --socket <node's socket> ARGS...` for a lab node.
fn agent_verb(lab: Option<&str>, node: &str, verb: &str, args: &[String]) -> anyhow::Result<i32> {
    let st = LabState::find(lab)?;
    let n = st
        .plan
        .node(node)
        .with_context(|| format!("{node} is not a node of lab {}", st.plan.name))?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg(verb)
        .arg("--socket")
        .arg(st.socket(n))
        .args(args)
        .status()
        .with_context(|| format!("run strait {verb}"))?;
    Ok(status.code().unwrap_or(1))
}
