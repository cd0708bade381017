//! The speaker against a real BIRD 2 and FRR in a network namespace: the session
//! reaches Established, routes flow both ways (BIRD's table and kernel on
//! its side, the speaker's FIB changes on ours), a withdrawal reaches
//! BIRD, TCP MD5 works and a wrong password never gets a session.
//! Needs root and bird; skipped loudly otherwise, a failure under CI=true.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use strait_bgp::fsm::State;
use strait_bgp::rib::FibChange;
use strait_bgp::speaker::{PeerSpec, Speaker, SpeakerConfig};

mod common;
use common::{ready, sh, wait_for, with_speaker_in};

/// Two namespaces joined by a veth: the speaker's (198.18.200.1) and
/// BIRD's (198.18.200.2). Removed on drop, BIRD killed.
struct Lab {
    a: String,
    b: String,
    dir: std::path::PathBuf,
    bird: Option<Child>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id();
        let a = format!("strait-bgpt-{id}-{tag}-a");
        let b = format!("strait-bgpt-{id}-{tag}-b");
        let dir = std::env::temp_dir().join(format!("strait-bgpt-{id}-{tag}"));
        let _ = std::fs::create_dir_all(&dir);
        let lab = Lab {
            a: a.clone(),
            b: b.clone(),
            dir,
            bird: None,
        };
        sh(&["ip", "netns", "add", &a]);
        sh(&["ip", "netns", "add", &b]);
        sh(&[
            "ip", "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &b,
        ]);
        for (ns, ip) in [(&a, "198.18.200.1/24"), (&b, "198.18.200.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Start BIRD in b as AS 64512 peering with the speaker, announcing
    /// two static routes, and exporting what it learns to b's kernel.
    fn bird(&mut self, password: Option<&str>) {
        let pw = password
            .map(|p| format!("password \"{p}\";"))
            .unwrap_or_default();
        let conf = format!(
            r#"
router id 198.18.200.2;
protocol device {{}}
protocol direct {{ ipv4; interface "eth0"; }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol static {{
  ipv4;
  route 198.19.77.0/24 blackhole;
  route 198.19.78.0/24 blackhole;
}}
protocol bgp strait {{
  local 198.18.200.2 as 64512;
  neighbor 198.18.200.1 as 64512;
  {pw}
  hold time 9;
  connect retry time 1;
  graceful restart on;
  ipv4 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
"#
        );
        let path = self.dir.join("bird.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.b, "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(self.dir.join("bird.ctl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.bird = Some(child);
    }

    /// Start FRR's bgpd (without zebra) in b instead, announcing
    /// 198.19.88.0/24.
    fn frr(&mut self, password: Option<&str>) {
        let pw = password
            .map(|p| format!(" neighbor 198.18.200.1 password {p}\n"))
            .unwrap_or_default();
        let conf = format!(
            "hostname frr-b\nrouter bgp 64512\n bgp router-id 198.18.200.2\n no bgp network import-check\n \
             neighbor 198.18.200.1 remote-as 64512\n{pw} neighbor 198.18.200.1 timers 3 9\n \
             neighbor 198.18.200.1 timers connect 1\n address-family ipv4 unicast\n  network 198.19.88.0/24\n \
             exit-address-family\n"
        );
        let path = self.dir.join("bgpd.conf");
        std::fs::write(&path, conf).unwrap();
        let dir = self.dir.to_str().unwrap().to_string();
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.b,
            "/usr/lib/frr/bgpd",
            "-d",
            "-S",
            "-Z",
            "-f",
            path.to_str().unwrap(),
            "-i",
            &format!("{dir}/bgpd.pid"),
            "--vty_socket",
            &dir,
            "-u",
            "root",
            "-g",
            "root",
            "--log",
            &format!("file:{dir}/bgpd.log"),
        ]);
    }

    fn vtysh(&self, cmd: &str) -> String {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn birdc(&self, cmd: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.join("bird.ctl"))
            .args(cmd.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn b_routes(&self) -> String {
        sh(&["ip", "-n", &self.b, "route", "show"])
    }

    /// Run the speaker in namespace a on a thread of its own, until `f`
    /// returns.
    fn with_speaker<T: Send>(
        &self,
        password: Option<&str>,
        f: impl FnOnce(&Speaker, &mut tokio::sync::mpsc::UnboundedReceiver<FibChange>) -> T + Send,
    ) -> T {
        let mut cfg = SpeakerConfig::new(64512, Ipv4Addr::new(198, 18, 200, 1));
        cfg.hold_time = 9;
        let password = password.map(String::from);
        with_speaker_in(&self.a, cfg, |speaker, rx| {
            let mut peer = PeerSpec::new(IpAddr::V4(Ipv4Addr::new(198, 18, 200, 2)), 64512);
            peer.password = password;
            speaker.add_peer(peer);
            speaker.originate(BTreeSet::from(["198.19.10.0/26".parse().unwrap()]));
            f(speaker, rx)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.bird.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("bgpd.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bird_interop_routes_both_ways_with_md5() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new("md5");
    lab.bird(Some("s3cret"));
    lab.with_speaker(Some("s3cret"), |sp, fib| {
        wait_for("Established with BIRD", Duration::from_secs(20), || {
            sp.peers().iter().any(|p| p.state == State::Established)
        });
        // BIRD's routes reach us.
        let mut got = BTreeSet::new();
        wait_for("BIRD's two routes", Duration::from_secs(10), || {
            while let Ok(c) = fib.try_recv() {
                if let FibChange::Set { prefix, next_hops } = c {
                    assert_eq!(next_hops, vec!["198.18.200.2".parse::<IpAddr>().unwrap()]);
                    got.insert(prefix.to_string());
                }
            }
            got.len() == 2
        });
        assert_eq!(
            got,
            BTreeSet::from(["198.19.77.0/24".to_string(), "198.19.78.0/24".to_string()])
        );
        // Ours reach BIRD and its kernel.
        wait_for(
            "our route in BIRD's kernel",
            Duration::from_secs(10),
            || {
                lab.b_routes()
                    .contains("198.19.10.0/26 via 198.18.200.1 dev eth0 proto bird")
            },
        );
        let shown = lab.birdc("show route 198.19.10.0/26 all");
        assert!(shown.contains("BGP.origin: IGP"), "{shown}");
        assert!(shown.contains("BGP.local_pref: 100"), "{shown}");
        // A withdrawal reaches BIRD.
        sp.originate(BTreeSet::new());
        wait_for(
            "the withdrawal in BIRD's kernel",
            Duration::from_secs(10),
            || !lab.b_routes().contains("198.19.10.0/26"),
        );
        let p = &sp.peers()[0];
        assert_eq!((p.received, p.flaps), (2, 0), "{p:?}");
    });
}

#[test]
fn a_wrong_md5_password_gets_no_session() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new("badpw");
    lab.bird(Some("s3cret"));
    lab.with_speaker(Some("wrong"), |sp, _| {
        std::thread::sleep(Duration::from_secs(6));
        let p = sp.peers();
        assert!(
            p.iter().all(|p| p.state != State::Established),
            "a session despite the wrong password: {p:?}"
        );
        let bird = lab.birdc("show protocols strait");
        assert!(!bird.contains("Established"), "{bird}");
    });
}

/// A hostile peer at 198.18.200.3 (in BIRD's namespace): connect from
/// there, send `bytes`, and return the NOTIFICATION the speaker answers.
fn hostile(lab: &Lab, bytes: &[u8]) -> (u8, u8) {
    use std::io::{Read, Write};
    let ns = std::fs::File::open(format!("/run/netns/{}", lab.b)).unwrap();
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(
            &"198.18.200.3:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.connect(
            &"198.18.200.1:179"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&bytes).unwrap();
        // Read until the NOTIFICATION (type 3); our OPEN and KEEPALIVE may
        // come first.
        let mut buf = vec![];
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                panic!("connection closed without a NOTIFICATION; got {buf:02x?}");
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while buf.len() >= at + 19 {
                let len = u16::from_be_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if buf.len() < at + len {
                    break;
                }
                if buf[at + 18] == 3 {
                    return (buf[at + 19], buf[at + 20]);
                }
                at += len;
            }
        }
    })
    .join()
    .unwrap()
}

#[test]
fn hostile_messages_get_notifications_and_other_peers_stay_up() {
    use strait_bgp::wire::{self, Capability, Codec, Message, Open};
    if !ready() {
        return;
    }
    let mut lab = Lab::new("fuzz");
    sh(&[
        "ip",
        "-n",
        &lab.b,
        "addr",
        "add",
        "198.18.200.3/24",
        "dev",
        "eth0",
    ]);
    lab.bird(None);
    lab.with_speaker(None, |sp, _| {
        let mut p = PeerSpec::new("198.18.200.3".parse().unwrap(), 64513);
        p.passive = true;
        sp.add_peer(p);
        wait_for("Established with BIRD", Duration::from_secs(20), || {
            sp.peers().iter().any(|p| p.state == State::Established)
        });
        let open = |asn: u32| {
            wire::encode(
                &Message::Open(Open {
                    asn,
                    hold_time: 90,
                    router_id: Ipv4Addr::new(198, 18, 200, 3),
                    capabilities: vec![Capability::FourOctetAs(asn)],
                }),
                Codec::default(),
            )
            .unwrap()
        };
        let keepalive = wire::encode(&Message::Keepalive, Codec::default()).unwrap();
        let ff = [0xffu8; 16];
        let mut cases: Vec<(&str, Vec<u8>, (u8, u8))> = vec![];
        let mut bad_marker = keepalive.clone();
        bad_marker[0] = 0;
        cases.push(("bad marker", bad_marker, (1, 1)));
        let mut short = ff.to_vec();
        short.extend_from_slice(&[0, 5, 4]);
        cases.push(("length 5", short, (1, 2)));
        let mut kind = ff.to_vec();
        kind.extend_from_slice(&[0, 19, 42]);
        cases.push(("type 42", kind, (1, 3)));
        cases.push(("OPEN from the wrong AS", open(65000), (2, 2)));
        let mut trunc = open(64513);
        trunc[28] = 40; // optional parameters past the end
        cases.push(("OPEN parameters past the end", trunc, (2, 0)));
        // A session, then an UPDATE with ORIGIN 7.
        let mut upd = open(64513);
        upd.extend_from_slice(&keepalive);
        let mut u = ff.to_vec();
        u.extend_from_slice(&[0, 0, 2, 0, 0, 0, 4, 0x40, 1, 1, 7]);
        let n = u.len() as u16;
        u[16..18].copy_from_slice(&n.to_be_bytes());
        upd.extend_from_slice(&u);
        cases.push(("UPDATE with ORIGIN 7", upd, (3, 6)));
        // A KEEPALIVE before any OPEN.
        cases.push(("KEEPALIVE before OPEN", keepalive.clone(), (5, 0)));
        for (what, bytes, want) in cases {
            assert_eq!(hostile(&lab, &bytes), want, "{what}");
            // The well-behaved peer never noticed.
            let bird = sp
                .peers()
                .into_iter()
                .find(|p| p.address.to_string() == "198.18.200.2")
                .unwrap();
            assert_eq!((bird.state, bird.flaps), (State::Established, 0), "{what}");
        }
        let birds = lab.birdc("show protocols strait");
        assert!(birds.contains("Established"), "{birds}");
    });
}

#[test]
fn frr_interop_routes_both_ways_with_md5() {
    if !ready() || !std::path::Path::new("/usr/lib/frr/bgpd").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: needs FRR"
        );
        return;
    }
    let mut lab = Lab::new("frr");
    lab.frr(Some("s3cret"));
    lab.with_speaker(Some("s3cret"), |sp, fib| {
        wait_for("Established with FRR", Duration::from_secs(20), || {
            sp.peers().iter().any(|p| p.state == State::Established)
        });
        wait_for("FRR's route", Duration::from_secs(10), || {
            matches!(fib.try_recv(), Ok(FibChange::Set { prefix, next_hops })
                if prefix.to_string() == "198.19.88.0/24"
                    && next_hops == vec!["198.18.200.2".parse::<IpAddr>().unwrap()])
        });
        wait_for("our route in FRR", Duration::from_secs(10), || {
            let t = lab.vtysh("show ip bgp 198.19.10.0/26");
            t.contains("198.18.200.1 from 198.18.200.1") && t.contains("best")
        });
        let n = lab.vtysh("show ip bgp neighbors 198.18.200.1");
        assert!(n.contains("BGP state = Established"), "{n}");
        assert!(n.contains("4 Byte AS: advertised and received"), "{n}");
        assert!(
            n.contains("Graceful Restart Capability: advertised and received"),
            "{n}"
        );
        sp.originate(BTreeSet::new());
        wait_for("the withdrawal in FRR", Duration::from_secs(10), || {
            lab.vtysh("show ip bgp 198.19.10.0/26")
                .contains("Network not in table")
        });
    });
}
