//! Service-lab helpers: the services example lab in either datapath,
//! manifests applied to its source, one-shot TCP exchanges.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn svc_lab(name: &str) -> Lab {
    svc_lab_mode(name, "ebpf")
}

/// The services example lab in a datapath mode: "ebpf" (services in eBPF)
/// or "routed" (the nftables backend).
pub fn svc_lab_mode(name: &str, mode: &str) -> Lab {
    let y = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/services-ebpf.yaml"
    ))
    .unwrap()
    .replace("name: svc", &format!("name: {name}"))
    .replace("mode: ebpf", &format!("mode: {mode}"));
    Lab::up(&y)
}

/// Run a behaviour test against both service backends.
#[macro_export]
macro_rules! both_backends {
    ($body:ident, $ebpf:ident, $nft:ident) => {
        #[test]
        fn $ebpf() {
            if $crate::common::require_root(stringify!($ebpf)) {
                $body(&$crate::common::svc::svc_lab_mode(
                    &$crate::common::svc::short(stringify!($ebpf), "e"),
                    "ebpf",
                ));
            }
        }
        #[test]
        fn $nft() {
            if $crate::common::require_root(stringify!($nft)) {
                $body(&$crate::common::svc::svc_lab_mode(
                    &$crate::common::svc::short(stringify!($nft), "n"),
                    "routed",
                ));
            }
        }
    };
}

/// A lab name (at most 16 characters) from a test name.
pub fn short(test: &str, suffix: &str) -> String {
    let h = test
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    format!("t-{:08x}{suffix}", h)
}

pub fn vip(lab: &Lab, svc: &str) -> Ipv4Addr {
    lab.st.plan.service(svc).unwrap().cluster_ip
}

pub fn pod_ip(lab: &Lab, pod: &str) -> String {
    lab.st
        .pod_ip(lab.st.plan.pod(pod).unwrap())
        .unwrap()
        .to_string()
}

/// Run `f` in the client pod's namespace.
pub fn in_client<T: Send>(lab: &Lab, f: impl FnOnce() -> T + Send) -> T {
    in_pod(lab, "client", f)
}

/// One short TCP exchange; the answering pod's name.
pub fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.split_whitespace().next().unwrap_or("").to_string())
}

/// Add manifests to the lab's cluster source and wait until node-a's agent
/// has programmed what `done` looks for.
pub fn apply(
    lab: &Lab,
    file: &str,
    yaml: &str,
    done: impl Fn(&strait_model::api::NodeStatus) -> bool,
) {
    let p = lab.st.manifests_dir().join(file);
    std::fs::write(p.with_extension("tmp"), yaml).unwrap();
    std::fs::rename(p.with_extension("tmp"), &p).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&lab.status("node-a")) {
        assert!(Instant::now() < deadline, "agent did not program {file}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn libc_ehostunreach() -> i32 {
    113
}

pub fn slice(name: &str, svc: &str, eps: &[(&str, &str)]) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for (ip, cond) in eps {
        s.push_str(&format!("- {{addresses: [{ip}], conditions: {cond}}}\n"));
    }
    s
}

pub const READY: &str = "{ready: true}";
pub const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";
