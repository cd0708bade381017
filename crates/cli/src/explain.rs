//! `strait lab explain SRC DST`: the lab's side of `strait explain` (see
//! strait_lab::explain), printed as a table, Graphviz source or SVG.

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
    anyhow::ensure!(
        matches!(output, "text" | "dot" | "svg"),
        "-o {output}: choose text, dot or svg"
    );
    let (e, contradicted, text) = if verify {
        let v = strait_lab::explain::verify(&st, src, dst)?;
        let n = v.contradictions().len();
        (v.explanation.clone(), n, v.table())
    } else {
        let e = strait_lab::explain::explain(&st, src, dst, backend)?;
        let t = e.table();
        (e, 0, t)
    };
    match output {
        "text" => {
            println!(
                "lab {} (datapath {}, cross-node {})",
                st.plan.name, st.plan.mode, st.plan.cross_node
            );
            print!("{text}");
        }
        "dot" => print!("{}", strait_lab::explain::dot(&e)),
        _ => print!("{}", svg(&strait_lab::explain::dot(&e))?),
    }
    let dropped = matches!(e.request.verdict, Verdict::Dropped(_))
        || e.reply
            .as_ref()
            .is_some_and(|r| matches!(r.verdict, Verdict::Dropped(_)));
    Ok(if contradicted > 0 {
        1
    } else if dropped {
        2
    } else {
        0
    })
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
