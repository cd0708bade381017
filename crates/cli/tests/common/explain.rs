//! `lab explain --verify` in the mode tests: the explanation computed from
//! live state must agree with captures on every hop, seen and skipped.

use super::Lab;
use strait_lab::explain::{Dir, Leg, Sight, Verdict, Verified};

/// Explain and verify `src` -> `dst`: delivered both ways, no hop
/// contradicted by capture.
pub fn verified(lab: &Lab, src: &str, dst: &str) -> Verified {
    let v = strait_lab::explain::verify(&lab.st, src, dst).unwrap();
    assert!(v.contradictions().is_empty(), "{}", v.table());
    let e = &v.explanation;
    assert!(
        matches!(e.request.verdict, Verdict::Delivered(_))
            && e.reply
                .as_ref()
                .is_some_and(|r| matches!(r.verdict, Verdict::Delivered(_))),
        "{}",
        v.table()
    );
    v
}

/// The hops of a leg a capture does not see, as "AT IFACE".
pub fn skipped(leg: &Leg) -> Vec<String> {
    leg.hops
        .iter()
        .filter(|h| matches!(h.sight, Sight::Skipped(_)))
        .map(|h| format!("{} {}", h.at, h.iface))
        .collect()
}

/// The hops of a leg whose packet carries `ip` (either address, outside
/// any tunnel header), as "AT IFACE in|out".
pub fn carrying(leg: &Leg, ip: std::net::IpAddr) -> Vec<String> {
    leg.hops
        .iter()
        .filter(|h| h.packet.src == ip || h.packet.dst == ip)
        .map(|h| {
            format!(
                "{} {} {}",
                h.at,
                h.iface,
                if h.dir == Dir::In { "in" } else { "out" }
            )
        })
        .collect()
}

/// Seeds 000 and 001: a service's address is seen only on the client's
/// side, its eth0 and host veth, both ways; everything past the
/// translation carries pod addresses.
pub fn vip_only_on_client_side(lab: &Lab, v: &Verified, client: &str, svc: &str) {
    let vip: std::net::IpAddr = lab.st.plan.service(svc).unwrap().cluster_ip.into();
    let p = lab.st.plan.pod(client).unwrap();
    let veth = lab.host_veth(client);
    let e = &v.explanation;
    assert_eq!(
        carrying(&e.request, vip),
        [
            format!("{client} eth0 out"),
            format!("{} {veth} in", p.node)
        ],
        "{}",
        v.table()
    );
    let reply = carrying(e.reply.as_ref().unwrap(), vip);
    assert!(
        reply.contains(&format!("{client} eth0 in"))
            && reply
                .iter()
                .all(|h| h.starts_with(&format!("{client} ")) || h.contains(&veth)),
        "{}",
        v.table()
    );
}

/// Render an SVG in headless Chromium (Debian's) to a PNG, as a person
/// would see it; the PNG's (width, height, pixels that are not white).
pub fn render(svg: &str) -> (u32, u32, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (file, png) = (dir.path().join("flow.svg"), dir.path().join("flow.png"));
    std::fs::write(&file, svg).unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1600,1000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("chromium (scripts/setup.sh installs it)");
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let inked = bytes
        .chunks(step)
        .filter(|px| px.iter().take(3).any(|c| *c < 200))
        .count();
    (info.width, info.height, inked)
}
