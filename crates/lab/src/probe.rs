//! `strait lab probe`: connect from one namespace to a pod and report which
//! pod answered and the round-trip time.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};
use strait_netlink::{in_netns, NetnsFile};

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub answered_by: String,
    /// The client address the answering pod saw.
    pub seen_from: Option<String>,
    pub connect: Option<Duration>,
    pub rtt: Duration,
}

/// Send one request from the namespace at `netns` to `dst` and wait for the
/// echo server's answer (its pod name).
pub fn probe(
    netns: &Path,
    dst: SocketAddr,
    udp: bool,
    timeout: Duration,
) -> anyhow::Result<ProbeResult> {
    let ns = NetnsFile::open(netns)?;
    in_netns(&ns, move || -> anyhow::Result<ProbeResult> {
        if udp {
            let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            s.set_read_timeout(Some(timeout))?;
            let t0 = Instant::now();
            s.send_to(b"probe\n", dst)?;
            let mut buf = [0u8; 512];
            let (n, from) = s
                .recv_from(&mut buf)
                .with_context(|| format!("no UDP answer from {dst} within {timeout:?}"))?;
            let rtt = t0.elapsed();
            if from != dst {
                bail!("answer came from {from}, not {dst}");
            }
            Ok(ProbeResult {
                answered_by: crate::echo::parse_answer(&String::from_utf8_lossy(&buf[..n])).0,
                seen_from: crate::echo::parse_answer(&String::from_utf8_lossy(&buf[..n])).1,
                connect: None,
                rtt,
            })
        } else {
            let t0 = Instant::now();
            let mut s = TcpStream::connect_timeout(&dst, timeout)
                .with_context(|| format!("TCP connect to {dst}"))?;
            let connect = t0.elapsed();
            s.set_read_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
            let mut r = BufReader::new(s.try_clone()?);
            // Warm-up exchange, then the measured one: the first request pays
            // for slow-start and page faults, not the network.
            let mut line = String::new();
            s.write_all(b"probe\n")?;
            r.read_line(&mut line)
                .with_context(|| format!("no answer from {dst} within {timeout:?}"))?;
            line.clear();
            let t1 = Instant::now();
            s.write_all(b"probe\n")?;
            r.read_line(&mut line)
                .with_context(|| format!("no answer from {dst} within {timeout:?}"))?;
            let rtt = t1.elapsed();
            if line.is_empty() {
                bail!("{dst} closed the connection without answering");
            }
            Ok(ProbeResult {
                answered_by: crate::echo::parse_answer(&line).0,
                seen_from: crate::echo::parse_answer(&line).1,
                connect: Some(connect),
                rtt,
            })
        }
    })?
}
