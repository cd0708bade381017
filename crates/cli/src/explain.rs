//! `strait explain SRC DST` on a node and `strait lab explain SRC DST`
//! across a lab (see strait_lab::explain), printed as a table, Graphviz
//! source or SVG.

use anyhow::Context;
use std::io::Write;
use std::process::{Command, Stdio};
use strait_lab::explain::Verdict;
use strait_lab::LabState;

/// Run it. Exit codes: 0 delivered (and, with --verify, every hop
/// confirmed), 1 a hop contradicted by capture, 2 the flow is dropped.
pub fn run(
    lab: Option<&str>,
    src: &str,
    dst: &str,
    verify: bool,
    output: &str,
    backend: Option<std::net::IpAddr>,
) -> anyhow::Result<i32> {
    let st = LabState::find(lab)?;
    check_output(output)?;
    let (e, contradicted, text) = if verify {
        let v = strait_lab::explain::verify(&st, src, dst)?;
        let n = v.contradictions().len();
        (v.explanation.clone(), n, v.table())
    } else {
        let e = strait_lab::explain::explain(&st, src, dst, backend)?;
        let t = e.table();
        (e, 0, t)
    };
    let head = format!(
        "lab {} (datapath {}, cross-node {})",
        st.plan.name, st.plan.mode, st.plan.cross_node
    );
    print_out(&e, &head, &text, output)?;
    Ok(if contradicted > 0 { 1 } else { code(&e) })
}

fn check_output(output: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(output, "text" | "dot" | "svg"),
        "-o {output}: choose text, dot or svg"
    );
    Ok(())
}

fn print_out(
    e: &strait_lab::explain::Explanation,
    head: &str,
    text: &str,
    output: &str,
) -> anyhow::Result<()> {
    match output {
        "text" => {
            if !head.is_empty() {
                println!("{head}");
            }
            print!("{text}");
        }
        "dot" => print!("{}", strait_lab::explain::dot(e)),
        _ => print!("{}", svg(&strait_lab::explain::dot(e))?),
    }
    Ok(())
}

/// 2 dropped, 3 not followed to its end, else 0.
fn code(e: &strait_lab::explain::Explanation) -> i32 {
    let legs = std::iter::once(&e.request).chain(e.reply.as_ref());
    let verdicts: Vec<&Verdict> = legs.map(|l| &l.verdict).collect();
    if verdicts.iter().any(|v| matches!(v, Verdict::Dropped(_))) {
        2
    } else if verdicts.iter().any(|v| matches!(v, Verdict::Left(_))) {
        3
    } else {
        0
    }
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// A pod of this node (name or ns/name), or this node.
    src: String,
    /// A pod, node or address, IP:PORT, POD:PORT or svc/NAME:PORT[/udp].
    dst: String,
    /// This node's agent.
    #[arg(long, default_value = "/run/strait/agent.sock")]
    socket: std::path::PathBuf,
    /// The port other nodes' agents answer explain on (their
    /// --explain-addr).
    #[arg(long, default_value_t = 9477)]
    peer_port: u16,
    /// text, dot (Graphviz source) or svg.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    /// For a service: follow this backend (an address) rather than the
    /// first; the program picks one per connection.
    #[arg(long)]
    backend: Option<std::net::IpAddr>,
}

/// `strait explain` on a node. Exit codes: 0 delivered, 2 dropped, 3 it
/// leaves what this node can read (the next node's agent does not answer).
pub fn run_node(a: NodeArgs) -> anyhow::Result<i32> {
    check_output(&a.output)?;
    let e =
        strait_lab::explain::explain_on_node(&a.socket, a.peer_port, &a.src, &a.dst, a.backend)?;
    print_out(&e, "", &e.table(), &a.output)?;
    Ok(code(&e))
}

/// Graphviz's `dot` lays it out (Debian's graphviz; no service involved).
pub fn svg(dot: &str) -> anyhow::Result<String> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run Graphviz's dot (apt-get install graphviz; scripts/setup.sh installs it)")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(dot.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "dot -Tsvg: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}
