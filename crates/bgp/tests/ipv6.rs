//! An IPv6 session (MP-BGP, AFI 2) between strait's speaker and a real
//! BIRD 2 over a ULA link: routes flow both ways and a withdrawal reaches
//! BIRD's kernel. Needs root and bird; skipped loudly otherwise, a failure
//! under CI=true.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use strait_bgp::fsm::State;
use strait_bgp::rib::FibChange;
use strait_bgp::speaker::{PeerSpec, SpeakerConfig};
use strait_bgp::wire::Family;

mod common;
use common::{ready, sh, wait_for, with_speaker_in};

struct Lab {
    a: String,
    b: String,
    dir: std::path::PathBuf,
    bird: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.bird.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const A: &str = "fd00:18:200::1";
const B: &str = "fd00:18:200::2";

#[test]
fn ipv6_routes_both_ways_with_bird() {
    if !ready() {
        return;
    }
    let id = std::process::id();
    let mut lab = Lab {
        a: format!("strait-bgp6-{id}-a"),
        b: format!("strait-bgp6-{id}-b"),
        dir: std::env::temp_dir().join(format!("strait-bgp6-{id}")),
        bird: None,
    };
    std::fs::create_dir_all(&lab.dir).unwrap();
    for ns in [&lab.a, &lab.b] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip", "-n", &lab.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
        &lab.b,
    ]);
    for (ns, addr) in [(&lab.a, A), (&lab.b, B)] {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }
    let conf = format!(
        r#"
router id 198.18.200.2;
protocol device {{}}
protocol direct {{ ipv6; interface "eth0"; }}
protocol kernel {{ ipv6 {{ import none; export where source = RTS_BGP; }}; }}
protocol static {{ ipv6; route fd00:19:77::/64 blackhole; }}
protocol bgp strait {{
  local {B} as 64512;
  neighbor {A} as 64512;
  hold time 9;
  connect retry time 1;
  ipv6 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
"#
    );
    let path = lab.dir.join("bird.conf");
    std::fs::write(&path, conf).unwrap();
    let ctl = lab.dir.join("bird.ctl");
    lab.bird = Some(
        Command::new("ip")
            .args(["netns", "exec", &lab.b, "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(&ctl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let b_routes = || sh(&["ip", "-6", "-n", &lab.b, "route", "show"]);
    let mut cfg = SpeakerConfig::new(64512, "198.18.200.1".parse().unwrap());
    cfg.hold_time = 9;
    cfg.families = vec![Family::IPV6_UNICAST];
    cfg.listen = Some("[::]:179".parse().unwrap());
    with_speaker_in(&lab.a, cfg, |sp, fib| {
        let mut p = PeerSpec::new(B.parse().unwrap(), 64512);
        p.local_address = Some(A.parse().unwrap());
        sp.add_peer(p);
        sp.originate(BTreeSet::from(["fd00:19:10::/64".parse().unwrap()]));
        wait_for("Established over IPv6", Duration::from_secs(20), || {
            sp.peers().iter().any(|p| p.state == State::Established)
        });
        // BIRD's route reaches us, via BIRD's address.
        let want: IpAddr = B.parse().unwrap();
        let mut got = None;
        wait_for("BIRD's IPv6 route", Duration::from_secs(10), || {
            while let Ok(c) = fib.try_recv() {
                if let FibChange::Set { prefix, next_hops } = c {
                    got = Some((prefix.to_string(), next_hops));
                }
            }
            got.is_some()
        });
        assert_eq!(got, Some(("fd00:19:77::/64".to_string(), vec![want])));
        // Ours reaches BIRD's kernel, and so does its withdrawal.
        wait_for(
            "our route in BIRD's kernel",
            Duration::from_secs(10),
            || b_routes().contains(&format!("fd00:19:10::/64 via {A} dev eth0 proto bird")),
        );
        sp.originate(BTreeSet::new());
        wait_for(
            "the withdrawal in BIRD's kernel",
            Duration::from_secs(10),
            || !b_routes().contains("fd00:19:10::/64"),
        );
    });
}
