//! Services under faults, in both service backends (eBPF and nftables),
//! with real packets: a pod reaching itself (hairpin), a SYN-ACK lost in a
//! handshake, a steady UDP flow whose backend is removed.

mod common;
use common::svc::*;
use common::*;
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

both_backends!(hairpin, hairpin_ebpf, hairpin_nftables);

/// A service whose only backend is web-a, reached from web-a itself.
fn hairpin(lab: &Lab) {
    let a = pod_ip(lab, "web-a");
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: self, namespace: default}}\nspec: {{clusterIP: 198.18.64.80, ports: [{{name: http, port: 80}}]}}\n{}",
        slice("self-1", "self", &[(&a, READY)])
    );
    apply(lab, "self.yaml", &yaml, |s| {
        s.services
            .iter()
            .any(|e| e.name == "self" && e.backends.len() == 1)
    });
    let addr: SocketAddr = "198.18.64.80:80".parse().unwrap();
    let (answer, peer) = in_pod(lab, "web-a", move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("web-a reaches its own service");
        let peer = s.peer_addr().unwrap();
        drop(s);
        (ask(addr).unwrap(), peer)
    });
    assert_eq!(answer, "web-a");
    assert_eq!(peer, addr, "the connection's peer is the service");
    // The echo server saw the hairpin address, not web-a's own.
    let seen = in_pod(lab, "web-a", move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        std::io::Write::write_all(&mut s, b"hi\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
        line
    });
    assert!(seen.contains("from=169.254.42.1:"), "{seen}");
}

/// Ports (client side) of SYNs that reached a pod, with how many.
fn syns(lab: &Lab, pod: &str) -> BTreeMap<u16, u64> {
    let out = lab.exec(pod, &["nft", "list", "set", "inet", "strait_t", "syns"]);
    let mut m = BTreeMap::new();
    if let Some(elems) = out.split("elements = {").nth(1) {
        for e in elems.split('}').next().unwrap().split(',') {
            let w: Vec<&str> = e.split_whitespace().collect();
            if let (Some(p), Some(i)) = (w.first(), w.iter().position(|x| *x == "packets")) {
                m.insert(p.parse().unwrap(), w[i + 1].parse().unwrap());
            }
        }
    }
    m
}

both_backends!(syn_retransmit, syn_retransmit_ebpf, syn_retransmit_nftables);

/// The client drops the first SYN-ACK of every connection, so each SYN is
/// retransmitted: the retransmission must reach the backend the first SYN
/// reached, or the handshake completes with one backend and data goes to
/// the other.
fn syn_retransmit(lab: &Lab) {
    lab.exec(
        "client",
        &["nft", "add table inet strait_t; add set inet strait_t seen { type inet_service; flags dynamic; }; add chain inet strait_t input { type filter hook input priority -10; policy accept; }; add rule inet strait_t input tcp flags & (syn|ack) == syn|ack tcp dport @seen accept; add rule inet strait_t input tcp flags & (syn|ack) == syn|ack update @seen { tcp dport } drop"],
    );
    for pod in ["web-a", "web-b"] {
        lab.exec(
            pod,
            &["nft", "add table inet strait_t; add set inet strait_t syns { type inet_service; flags dynamic; counter; }; add chain inet strait_t input { type filter hook input priority 0; policy accept; }; add rule inet strait_t input tcp flags & (syn|ack) == syn update @syns { tcp sport }"],
        );
    }
    let addr = SocketAddr::new(vip(lab, "web").into(), 80);
    let n = 10;
    let answers = in_client(lab, move || {
        (0..n)
            .map(|_| ask(addr).expect("connection completes"))
            .collect::<Vec<_>>()
    });
    let (a, b) = (syns(lab, "web-a"), syns(lab, "web-b"));
    assert_eq!(
        a.len() + b.len(),
        n,
        "one entry per connection: {a:?} {b:?}"
    );
    for (port, k) in a.iter().chain(b.iter()) {
        assert!(
            !(a.contains_key(port) && b.contains_key(port)),
            "port {port}: SYNs split between backends: {a:?} {b:?}"
        );
        assert!(*k >= 2, "port {port}: the first SYN-ACK was dropped, so a retransmitted SYN follows: {a:?} {b:?}");
    }
    // And the data went where the handshake was made.
    let to_a = answers.iter().filter(|x| *x == "web-a").count();
    assert_eq!(to_a, a.len(), "{answers:?} vs {a:?} {b:?}");
}

both_backends!(
    removed_udp_backend,
    removed_udp_backend_ebpf,
    removed_udp_backend_nftables
);

/// A steady UDP flow (one client port) moves to a live backend once its
/// backend leaves the service (here the pod stays up and would keep
/// answering if still sent to).
fn removed_udp_backend(lab: &Lab) {
    let (a, b) = (pod_ip(lab, "web-a"), pod_ip(lab, "web-b"));
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: flow, namespace: default}\nspec: {clusterIP: 198.18.64.81, ports: [{name: dns, port: 53, protocol: UDP}]}\n";
    let eps = |ips: &[&str]| {
        let mut s = format!("{svc}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flow-1, namespace: default, labels: {{kubernetes.io/service-name: flow}}}}\naddressType: IPv4\nports: [{{name: dns, port: 8080, protocol: UDP}}]\nendpoints:\n");
        for ip in ips {
            s.push_str(&format!(
                "- {{addresses: [{ip}], conditions: {{ready: true}}}}\n"
            ));
        }
        s
    };
    apply(lab, "flow.yaml", &eps(&[&a, &b]), |s| {
        s.services
            .iter()
            .any(|e| e.name == "flow" && e.backends.len() == 2)
    });
    let sock = in_client(lab, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    let vip: SocketAddr = "198.18.64.81:53".parse().unwrap();
    let ask = |s: &UdpSocket| -> Option<String> {
        s.send_to(b"q", vip).unwrap();
        let mut buf = [0u8; 128];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        assert_eq!(from, vip, "answers come from the service");
        Some(
            String::from_utf8_lossy(&buf[..n])
                .split_whitespace()
                .next()?
                .to_string(),
        )
    };
    let first = ask(&sock).expect("an answer");
    for _ in 0..5 {
        assert_eq!(
            ask(&sock).as_deref(),
            Some(first.as_str()),
            "the flow sticks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (gone, stays) = if first == "web-a" {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    };
    let _ = gone;
    apply(lab, "flow.yaml", &eps(&[&stays]), |s| {
        s.services
            .iter()
            .any(|e| e.name == "flow" && e.backends.len() == 1)
    });
    // The same flow (same client port) keeps sending, every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let moved = loop {
        let got = ask(&sock);
        if got.as_deref().is_some_and(|g| g != first) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        moved,
        "the flow still reaches {first} 5 s after it left the service"
    );
}
