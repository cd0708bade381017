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
    svc_lab_spec(name, &format!("mode: {mode}"))
}

/// The services example lab with `spec` (lines of the Lab's spec, indented
/// as the first) in place of its `mode: ebpf`.
pub fn svc_lab_spec(name: &str, spec: &str) -> Lab {
    let y = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/services-ebpf.yaml"
    ))
    .unwrap()
    .replace("name: svc", &format!("name: {name}"))
    .replace("mode: ebpf", spec);
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

/// Until `f` holds on both nodes of a two-node lab.
pub fn wait_for(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    f: impl Fn(&strait_model::api::NodeStatus) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let ok = ["node-a", "node-b"].iter().all(|n| f(&lab.status(n)));
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn named_service(name: &str, ip: &str, backend: &str) -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}),
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [backend], "conditions": {"ready": true}}]}),
    ]
}

/// The service is programmed with its backends (the Service and its slice
/// arrive as separate events).
pub fn has(s: &strait_model::api::NodeStatus, svc: &str) -> bool {
    s.services
        .iter()
        .any(|e| e.name == svc && !e.backends.is_empty())
}

/// The services example serves: pods answer across nodes, and `web`
/// spreads over both backends. Then a service published while the lab runs
/// is programmed and answers, and goes when it is unpublished.
pub fn assert_example_serves_and_changes(lab: &Lab) {
    assert_eq!(lab.probe("client", "web-b").unwrap(), "web-b");
    let addr = SocketAddr::new(vip(lab, "web").into(), 80);
    let answers = in_client(lab, move || {
        (0..40)
            .map(|_| ask(addr).unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    });
    assert_eq!(answers.len(), 2, "{answers:?}");
    let b = pod_ip(lab, "web-b");
    strait_lab::publish::put(
        &lab.st,
        "extra",
        &named_service("extra", "198.18.64.90", &b),
    )
    .unwrap();
    wait_for(
        lab,
        "the new service programmed",
        Duration::from_secs(5),
        |s| has(s, "extra"),
    );
    let extra: SocketAddr = "198.18.64.90:80".parse().unwrap();
    assert_eq!(in_client(lab, move || ask(extra).unwrap()), "web-b");
    strait_lab::publish::put::<serde_json::Value>(&lab.st, "extra", &[]).unwrap();
    wait_for(
        lab,
        "the deleted service gone",
        Duration::from_secs(5),
        |s| !has(s, "extra"),
    );
}

/// Send `len` bytes of a pseudo-random pattern over one TCP connection from
/// pod `from` to pod `to` (a listener the test runs there) and return
/// (bytes received, whether their FNV-1a hash matches what was sent). Large
/// segments that a wrong MTU would drop make this hang and fail.
pub fn bulk_transfer(lab: &Lab, from: &str, to: &str, len: usize) -> (usize, bool) {
    fn fnv(h: &mut u64, b: &[u8]) {
        for x in b {
            *h ^= u64::from(*x);
            *h = h.wrapping_mul(0x100000001b3);
        }
    }
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut want = 0xcbf29ce484222325u64;
    fnv(&mut want, &data);
    let dst: std::net::IpAddr = pod_ip(lab, to).parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let to_ns = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(
        &lab.st.plan.pod(to).unwrap().netns,
    ))
    .unwrap();
    let server = std::thread::spawn(move || {
        strait_netlink::in_netns(&to_ns, move || {
            use std::io::Read;
            let l = std::net::TcpListener::bind("0.0.0.0:9100").unwrap();
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let (mut got, mut h, mut buf) = (0usize, 0xcbf29ce484222325u64, vec![0u8; 65536]);
            loop {
                let n = s
                    .read(&mut buf)
                    .expect("bulk read (a stall means lost segments)");
                if n == 0 {
                    break;
                }
                got += n;
                fnv(&mut h, &buf[..n]);
            }
            (got, h)
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    in_pod(lab, from, move || {
        use std::io::Write;
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(dst, 9100), Duration::from_secs(3))
            .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let (got, h) = server.join().unwrap();
    (got, h == want)
}

/// One TCP probe from the lab's external client.
pub fn external_probe(lab: &Lab, addr: SocketAddr) -> strait_lab::probe::ProbeResult {
    let ns = strait_lab::run::netns_path(&strait_model::lab::external_netns(lab.name()));
    strait_lab::probe::probe(&ns, addr, false, Duration::from_secs(2)).unwrap()
}

/// NodePort with externalTrafficPolicy Cluster: from outside, node-a's
/// port 30080 reaches both backends; the local one sees the client, the
/// remote one sees node-a (masqueraded, so replies come back through it).
pub fn nodeport_cluster(lab: &Lab) {
    let np = SocketAddr::new(lab.node("node-a").ip.into(), 30080);
    let ext_ip = strait_lab::run::external_ip(&lab.st.plan).to_string();
    let node_a = lab.node("node-a").ip.to_string();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let r = external_probe(lab, np);
        let from = r.seen_from.unwrap();
        seen.insert(
            r.answered_by.clone(),
            from.split(':').next().unwrap().to_string(),
        );
    }
    assert_eq!(
        seen.get("web-a"),
        Some(&ext_ip),
        "the local backend sees the client ({seen:?})"
    );
    assert_eq!(
        seen.get("web-b"),
        Some(&node_a),
        "the remote backend sees node-a: masqueraded so replies come back ({seen:?})"
    );
    // `lab explain` says the same for each backend, and the reply leaves
    // node-a from the NodePort's address; the one the probe reaches is
    // confirmed by capture.
    let np_text = np.to_string();
    for (backend, seen_from) in [("web-a", &ext_ip), ("web-b", &node_a)] {
        let ip = lab.st.pod_ip(lab.st.plan.pod(backend).unwrap());
        let e = strait_lab::explain::explain(&lab.st, "external", &np_text, ip).unwrap();
        let last = e.request.hops.last().unwrap();
        assert_eq!(
            (last.at.as_str(), last.packet.src.to_string()),
            (backend, seen_from.clone()),
            "{}",
            e.table()
        );
        let back = e.reply.as_ref().unwrap().hops.last().unwrap();
        assert_eq!(
            (back.at.as_str(), back.packet.src),
            ("external", np.ip()),
            "{}",
            e.table()
        );
    }
    super::explain::verified(lab, "external", &np_text);
}

/// Path-MTU discovery across an overlay: with the client's and web-b's
/// links (and their host veths) allowing 1500, as if configured too large,
/// full-size DF segments meet the overlay device's smaller MTU; the node
/// answers "fragmentation needed", the client learns `mtu`, and a bulk
/// transfer carries on intact. Both ends, or the peer's MSS keeps segments
/// small.
pub fn path_mtu_is_learned(lab: &Lab, mtu: u32) {
    for node in ["node-a", "node-b"] {
        for v in lab.host_veths(node) {
            lab.exec(node, &["ip", "link", "set", &v, "mtu", "1500"]);
        }
    }
    for pod in ["client", "web-b"] {
        lab.exec(pod, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    }
    let (got, intact) = bulk_transfer(lab, "client", "web-b", 4 << 20);
    assert_eq!((got, intact), (4 << 20, true));
    let pmtu = lab.exec("client", &["ip", "route", "get", &pod_ip(lab, "web-b")]);
    assert!(
        pmtu.contains(&format!("mtu {mtu}")),
        "the client learned the path MTU: {pmtu}"
    );
}
