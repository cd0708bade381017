//! `-o dot`: the flow drawn as the seeds draw their forwarding diagrams.
//! Each node is a box holding its namespaces (the node's own and its
//! pods'), each namespace a box holding the interfaces the flow touches;
//! request arrows in one colour, reply arrows in another, numbered in
//! order; an arrow into a skipped interface is dashed; where the packet's
//! addresses change (service translation, encapsulation) the arrow says so.

use super::{Explanation, Hop, Leg, Sight};
use std::collections::BTreeMap;
use std::fmt::Write;

const REQUEST: &str = "#c0392b";
const REPLY: &str = "#2471a3";

fn id(h: &Hop) -> String {
    format!("\"{}/{}\"", h.netns, h.iface)
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A node's namespaces ((label, netns)) and their interfaces: graph id ->
/// (name, skipped by every leg).
type Spaces<'a> = BTreeMap<(&'a str, &'a str), BTreeMap<String, (String, bool)>>;

/// Graphviz source for `e`.
pub fn dot(e: &Explanation) -> String {
    let legs: Vec<(&str, &Leg)> = [("request", Some(&e.request)), ("reply", e.reply.as_ref())]
        .into_iter()
        .filter_map(|(n, l)| Some((n, l?)))
        .collect();
    let mut boxes: BTreeMap<&str, Spaces> = BTreeMap::new();
    for (_, leg) in &legs {
        for h in &leg.hops {
            let skipped = matches!(h.sight, Sight::Skipped(_));
            let e = boxes
                .entry(h.node.as_str())
                .or_default()
                .entry((h.at.as_str(), h.netns.as_str()))
                .or_default()
                .entry(id(h))
                .or_insert((h.iface.clone(), skipped));
            e.1 &= skipped;
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "digraph flow {{\n  rankdir=TB; newrank=true; compound=true; nodesep=0.4; ranksep=0.5; fontname=\"Helvetica\";\n  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"Helvetica\", fontsize=11];\n  edge [fontname=\"Helvetica\", fontsize=9];\n  label=\"{} -> {}\"; labelloc=t;",
        esc(&e.src),
        esc(&e.dst)
    );
    for (i, (node, spaces)) in boxes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label=\"{}\"; style=filled; fillcolor=\"#f4f6f7\";",
            esc(node)
        );
        for (j, ((at, _), ifaces)) in spaces.iter().enumerate() {
            let _ = writeln!(
                out,
                "    subgraph cluster_{i}_{j} {{\n      label=\"{}\"; style=\"rounded,filled\"; fillcolor=\"#fdfefe\";",
                if at == node {
                    "host namespace".to_string()
                } else {
                    esc(at)
                }
            );
            for (nid, (name, skipped)) in ifaces {
                let style = if *skipped {
                    ", style=\"rounded,dashed\", fontcolor=gray40"
                } else {
                    ""
                };
                let _ = writeln!(out, "      {nid} [label=\"{}\"{style}];", esc(name));
            }
            let _ = writeln!(out, "    }}");
        }
        let _ = writeln!(out, "  }}");
    }
    for (name, leg) in &legs {
        let colour = if *name == "request" { REQUEST } else { REPLY };
        for (k, pair) in leg.hops.windows(2).enumerate() {
            let (a, b) = (&pair[0], &pair[1]);
            if id(a) == id(b) {
                continue;
            }
            let mut label = format!("{} {}", &name[..3], k + 1);
            if k == 0 || a.packet != b.packet {
                let _ = write!(label, "\\n{}", esc(&b.packet.to_string()));
            }
            let dashed =
                if matches!(b.sight, Sight::Skipped(_)) || matches!(a.sight, Sight::Skipped(_)) {
                    ", style=dashed"
                } else {
                    ""
                };
            let _ = writeln!(
                out,
                "  {} -> {} [color=\"{colour}\", fontcolor=\"{colour}\", label=\"{label}\"{dashed}];",
                id(a),
                id(b)
            );
        }
    }
    let _ = writeln!(
        out,
        "  legend [shape=plaintext, label=\"red: request   blue: reply   dashed: skipped by the fast path\"];\n}}"
    );
    out
}
