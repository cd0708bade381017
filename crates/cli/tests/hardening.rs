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
    received(&rx)
}

/// What a listener got until it went quiet: "payload from address".
fn received(rx: &UdpSocket) -> Vec<String> {
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

/// Send one UDP datagram with any source address through a raw socket (no
/// address configuration, so nothing delays it).
fn send_raw_udp(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, dport: u16, payload: &[u8]) {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(40000u16.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.extend(((8 + payload.len()) as u16).to_be_bytes());
    p.extend([0, 0]); // no UDP checksum
    p.extend(payload);
    let total = (p.len() as u16).to_be_bytes();
    p[2..4].copy_from_slice(&total);
    // SAFETY: plain socket calls on buffers that outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            p.as_ptr() as *const libc::c_void,
            p.len(),
            0,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(
            n,
            p.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// CNI ADD returns only once the agent has programmed the pod: the first
/// packets the pod sends, right after ADD, already meet its source check
/// (a forged source is dropped) and are forwarded (its own source works).
#[test]
fn a_pod_is_programmed_when_add_returns() {
    if !require_root("a_pod_is_programmed_when_add_returns") {
        return;
    }
    let lab = Lab::up(&two_nodes("t-addprog", "ebpf"));
    let ns = lab.pod_netns("fresh");
    let a2 = match lab.st.pod_ip(lab.st.plan.pod("a2").unwrap()).unwrap() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("{other}"),
    };
    let rx = in_pod(&lab, "a2", || {
        let s = UdpSocket::bind("0.0.0.0:9999").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    });
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "strait", "type": "strait-cni",
        "agentSocket": lab.st.socket(lab.node("node-a")), "mtu": 1500});
    let env = cni_env("ADD", "fresh1", &ns, "fresh");
    let add = cni_raw(
        &lab.bins.cni,
        &lab.node("node-a").netns,
        &as_refs(&env),
        conf.to_string().as_bytes(),
    );
    assert!(add.ok, "{} {}", add.json, add.stderr);
    let std::net::IpAddr::V4(own) = add.ip() else {
        panic!("an IPv4 pod address")
    };
    let nsf =
        strait_netlink::NetnsFile::open(std::path::Path::new(&format!("/run/netns/{ns}"))).unwrap();
    strait_netlink::in_netns(&nsf, || {
        send_raw_udp("198.19.0.99".parse().unwrap(), a2, 9999, b"spoofed");
        send_raw_udp(own, a2, 9999, b"own");
    })
    .unwrap();
    let got = received(&rx);
    assert_eq!(got, vec![format!("own from {own}")]);
    let del = cni_raw(
        &lab.bins.cni,
        &lab.node("node-a").netns,
        &as_refs(&cni_env("DEL", "fresh1", &ns, "fresh")),
        conf.to_string().as_bytes(),
    );
    assert!(del.ok, "{}", del.json);
}

/// Removes the locked directory (and its bind mount) on drop.
struct Locked(std::path::PathBuf);

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.join("ns"))
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent that cannot read a pod's namespace path (EACCES: it runs
/// without CAP_DAC_OVERRIDE, as a restricted DaemonSet would, and the path
/// is under a directory it may not search) keeps the pod: its address,
/// its host veth, its traffic. Only a definite "does not exist" releases.
#[test]
fn an_unreadable_netns_path_releases_nothing() {
    if !require_root("an_unreadable_netns_path_releases_nothing") {
        return;
    }
    let lab = Lab::up(&two_nodes("t-eacces", "routed"));
    let ns = lab.pod_netns("locked");
    // The pod's namespace, bind-mounted under a directory only uid 65534
    // may search.
    let dir = std::path::PathBuf::from(format!("/run/strait-t-eacces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let guard = Locked(dir.clone());
    let path = dir.join("ns");
    std::fs::write(&path, b"").unwrap();
    let sh = |c: &str| {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", c])
                .status()
                .unwrap()
                .success(),
            "{c}"
        )
    };
    sh(&format!("mount --bind /run/netns/{ns} {}", path.display()));
    sh(&format!("chown 65534 {0} && chmod 700 {0}", dir.display()));
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "strait", "type": "strait-cni",
        "agentSocket": lab.st.socket(lab.node("node-a")), "mtu": 1500});
    let mut env = cni_env("ADD", "locked1", &ns, "locked");
    env[2].1 = path.display().to_string();
    let add = cni_raw(
        &lab.bins.cni,
        &lab.node("node-a").netns,
        &as_refs(&env),
        conf.to_string().as_bytes(),
    );
    assert!(add.ok, "{} {}", add.json, add.stderr);
    // node-a's agent restarts without the capabilities that bypass
    // directory permissions.
    let wrapper_dir = tempfile::tempdir().unwrap();
    let wrapper = wrapper_dir.path().join("strait");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -dac_override,-dac_read_search {} \"$@\"\n",
            lab.bins.strait.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", wrapper.display()));
    let n = lab.node("node-a").clone();
    let pid = strait_lab::LabState::read_pid(&lab.st.agent_pid(&n)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restricted = strait_lab::run::Binaries {
        strait: wrapper.clone(),
        cni: lab.bins.cni.clone(),
    };
    strait_lab::run::start_agent(&lab.st, &restricted, &n, &[]).unwrap();
    strait_lab::run::wait_agent_ready(&lab.st, &n, Duration::from_secs(10)).unwrap();
    // Several passes later (the lab resyncs every 2 s) the pod is kept,
    // and the reason is logged.
    let log = lab.st.log_dir().join("agent-node-a.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("cannot read the pod's namespace path")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent says why it keeps the pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let st = lab.status("node-a");
    assert!(
        st.allocations
            .iter()
            .any(|a| a.attachment.container_id == "locked1"),
        "the pod keeps its address: {:?}",
        st.allocations
    );
    let veth = strait_model::naming::host_veth_name("locked1", "eth0");
    assert!(
        lab.host_veths("node-a").contains(&veth),
        "its host veth stays"
    );
    let mut env = cni_env("DEL", "locked1", &ns, "locked");
    env[2].1 = path.display().to_string();
    let del = cni_raw(
        &lab.bins.cni,
        &lab.node("node-a").netns,
        &as_refs(&env),
        conf.to_string().as_bytes(),
    );
    assert!(del.ok, "{}", del.json);
    drop(guard);
}
