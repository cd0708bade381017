//! strait's speaker as a route reflector between two real BIRD 2 clients
//! that do not peer with each other: each learns the other's route through
//! us, with the originator id and our cluster id that RFC 4456 asks for,
//! the next hop untouched, and loses it when the other withdraws. A prefix
//! both announce is ECMP over both in our table.
//! Needs root and bird; skipped loudly otherwise, a failure under CI=true.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use strait_bgp::fsm::State;
use strait_bgp::speaker::{PeerSpec, Speaker, SpeakerConfig};

mod common;
use common::{ready, sh, wait_for, with_speaker_in};

/// Namespace r (the speaker, 198.18.201.1 on a bridge) and two clients,
/// c2 and c3 (.2, .3), on that bridge. Removed on drop, BIRDs killed.
struct Lab {
    ns: Vec<String>,
    dir: std::path::PathBuf,
    birds: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.birds {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id();
        let ns: Vec<String> = ["r", "c2", "c3"]
            .iter()
            .map(|n| format!("strait-bgprr-{id}-{n}"))
            .collect();
        let dir = std::env::temp_dir().join(format!("strait-bgprr-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            ns: ns.clone(),
            dir,
            birds: vec![],
        };
        for n in &ns {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let r = &ns[0];
        sh(&["ip", "-n", r, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            "198.18.201.1/24",
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", r, "link", "set", "br0", "up"]);
        for (i, c) in ns[1..].iter().enumerate() {
            let port = format!("p{}", i + 2);
            sh(&[
                "ip", "-n", r, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", c,
            ]);
            sh(&["ip", "-n", r, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("198.18.201.{}/24", i + 2);
            sh(&["ip", "-n", c, "addr", "add", &addr, "dev", "eth0"]);
            sh(&["ip", "-n", c, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// BIRD in client `n` (2 or 3): AS 64512, peer of the reflector only,
    /// announcing 198.19.<n>0.0/24, its kernel fed with what it learns.
    fn bird(&mut self, n: u8) {
        let conf = format!(
            r#"
router id 198.18.201.{n};
protocol device {{}}
protocol direct {{ ipv4; interface "eth0"; }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol static {{ ipv4; route 198.19.{n}0.0/24 blackhole; route 198.19.99.0/24 blackhole; }}
protocol bgp reflector {{
  local 198.18.201.{n} as 64512;
  neighbor 198.18.201.1 as 64512;
  hold time 9;
  connect retry time 1;
  ipv4 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
"#
        );
        let path = self.dir.join(format!("bird{n}.conf"));
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns[usize::from(n) - 1],
                "bird",
                "-f",
                "-c",
            ])
            .arg(&path)
            .arg("-s")
            .arg(self.ctl(n))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.birds.push(child);
    }

    fn ctl(&self, n: u8) -> std::path::PathBuf {
        self.dir.join(format!("bird{n}.ctl"))
    }

    fn birdc(&self, n: u8, cmd: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.ctl(n))
            .args(cmd.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kernel(&self, n: u8) -> String {
        sh(&["ip", "-n", &self.ns[usize::from(n) - 1], "route", "show"])
    }
}

#[test]
fn strait_reflects_between_two_bird_clients() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    lab.bird(2);
    lab.bird(3);
    let mut cfg = SpeakerConfig::new(64512, Ipv4Addr::new(198, 18, 201, 1));
    cfg.hold_time = 9;
    cfg.cluster_id = Some(Ipv4Addr::new(244, 0, 0, 1));
    with_speaker_in(&lab.ns[0], cfg, |sp, _fib| {
        for n in [2, 3] {
            let mut p = PeerSpec::new(IpAddr::V4(Ipv4Addr::new(198, 18, 201, n)), 64512);
            p.rr_client = true;
            sp.add_peer(p);
        }
        sp.originate(BTreeSet::from(["198.19.1.0/26".parse().unwrap()]));
        check(&lab, sp);
    });
}

fn check(lab: &Lab, sp: &Speaker) {
    wait_for("both clients Established", Duration::from_secs(20), || {
        let p = sp.peers();
        p.len() == 2 && p.iter().all(|p| p.state == State::Established)
    });
    // Each client has the other's route, next hop the other client (not
    // us), in BIRD and in its kernel; and ours.
    for (me, other) in [(2u8, 3u8), (3, 2)] {
        let want = format!("198.19.{other}0.0/24 via 198.18.201.{other} dev eth0 proto bird");
        wait_for(
            &format!("client {other}'s route in client {me}'s kernel"),
            Duration::from_secs(10),
            || lab.kernel(me).contains(&want),
        );
        assert!(
            lab.kernel(me).contains("198.19.1.0/26 via 198.18.201.1"),
            "{}",
            lab.kernel(me)
        );
        let shown = lab.birdc(me, &format!("show route 198.19.{other}0.0/24 all"));
        assert!(
            shown.contains(&format!("BGP.originator_id: 198.18.201.{other}")),
            "{shown}"
        );
        assert!(shown.contains("BGP.cluster_list: 244.0.0.1"), "{shown}");
    }
    let st = sp.peers();
    // Each sent two; each got ours and the other's own route, and client 3
    // the anycast prefix too (the best path is client 2's: lower id).
    let counts: Vec<(usize, usize)> = st.iter().map(|p| (p.received, p.advertised)).collect();
    assert_eq!(counts, [(2, 2), (2, 3)], "{st:?}");
    // The anycast prefix, equal from both clients: ECMP over both in our
    // forwarding table.
    let anycast: ipnet::IpNet = "198.19.99.0/24".parse().unwrap();
    let two: Vec<IpAddr> = vec![
        "198.18.201.2".parse().unwrap(),
        "198.18.201.3".parse().unwrap(),
    ];
    assert_eq!(
        sp.fib_blocking().get(&anycast),
        Some(&two),
        "{:?}",
        sp.fib_blocking()
    );
    // Client 2 withdraws (its session ends with a Cease): client 3 loses
    // the route, and keeps ours.
    lab.birdc(2, "disable reflector");
    wait_for(
        "the withdrawal reflected to client 3",
        Duration::from_secs(10),
        || !lab.kernel(3).contains("198.19.20.0/24"),
    );
    assert!(lab.kernel(3).contains("198.19.1.0/26"));
    wait_for(
        "the anycast prefix down to one next hop",
        Duration::from_secs(10),
        || sp.fib_blocking().get(&anycast) == Some(&vec![two[1]]),
    );
    // Back: reflected again.
    lab.birdc(2, "enable reflector");
    wait_for(
        "client 2's route reflected again",
        Duration::from_secs(20),
        || lab.kernel(3).contains("198.19.20.0/24 via 198.18.201.2"),
    );
}
