//! Fail-closed behaviour in the lab, in both datapaths: sources a pod does
//! not own never reach another pod.

mod common;
use common::*;
use std::net::UdpSocket;
use std::time::Duration;

fn two_nodes(name: &str, mode: &str) -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/two-nodes.yaml"
    ))
    .unwrap()
    .replace("name: demo", &format!("name: {name}"))
    .replace("mode: routed", &format!("mode: {mode}"))
}

/// a1 sends one datagram from its own address and one from an address it
/// added but does not own, to `dst` port 9999; what `dst` received.
fn spoof_to(lab: &Lab, dst: &str) -> Vec<String> {
    let ip = lab.st.pod_ip(lab.st.plan.pod(dst).unwrap()).unwrap();
    let own = lab.st.pod_ip(lab.st.plan.pod("a1").unwrap()).unwrap();
    let rx = in_pod(lab, dst, || {
        let s = UdpSocket::bind("0.0.0.0:9999").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    });
    in_pod(lab, "a1", || {
        for (src, msg) in [
            ("198.19.0.99", "spoofed"),
            (own.to_string().as_str(), "own"),
        ] {
            let s = UdpSocket::bind((src, 0)).unwrap();
            s.send_to(msg.as_bytes(), (ip, 9999)).unwrap();
        }
    });
    let mut got = vec![];
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = rx.recv_from(&mut buf) {
        got.push(format!(
            "{} from {}",
            String::from_utf8_lossy(&buf[..n]),
            from.ip()
        ));
    }
    got
}

fn spoofing(mode: &str, name: &str) {
    let lab = Lab::up(&two_nodes(name, mode));
    lab.exec(
        "a1",
        &["ip", "addr", "add", "198.19.0.99/32", "dev", "eth0"],
    );
    let own = lab.st.pod_ip(lab.st.plan.pod("a1").unwrap()).unwrap();
    for dst in ["a2", "b1"] {
        let got = spoof_to(&lab, dst);
        assert_eq!(
            got,
            vec![format!("own from {own}")],
            "{mode}: {dst} must get only a1's datagram from its own address"
        );
    }
}

#[test]
fn spoofed_sources_are_dropped_in_the_kernel_datapath() {
    if require_root("spoofed_sources_are_dropped_in_the_kernel_datapath") {
        spoofing("routed", "t-spoof-k");
    }
}

#[test]
fn spoofed_sources_are_dropped_in_the_ebpf_datapath() {
    if require_root("spoofed_sources_are_dropped_in_the_ebpf_datapath") {
        spoofing("ebpf", "t-spoof-e");
    }
}
