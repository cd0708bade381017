//! The pod's built-in echo server: TCP and UDP on one port, answering every
//! line (TCP) or datagram (UDP) with the pod's name and the client address
//! it sees ("web-a from=198.18.0.254:41234"), so probes can tell which pod
//! answered, and whether the client's source address was preserved, without
//! container images.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};

pub const ECHO_PORT: u16 = strait_model::lab::LAB_ECHO_PORT;

/// Serve on every port of `ports` (each on its own threads); returns when
/// the first listener fails.
pub fn serve_all(name: &str, ports: &[u16]) -> anyhow::Result<()> {
    let mut handles = vec![];
    for &port in ports {
        let name = name.to_string();
        handles.push(std::thread::spawn(move || serve(&name, port)));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("echo server thread panicked"))??;
    }
    Ok(())
}

pub fn serve(name: &str, port: u16) -> anyhow::Result<()> {
    let tcp = TcpListener::bind(("0.0.0.0", port))?;
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    let n = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{n} from={peer}\n").as_bytes(), peer);
        }
    });
    for conn in tcp.incoming() {
        let Ok(mut conn) = conn else { continue };
        let Ok(peer) = conn.peer_addr() else { continue };
        let reply = format!("{name} from={peer}\n");
        std::thread::spawn(move || {
            let Ok(read) = conn.try_clone() else { return };
            for line in BufReader::new(read).lines() {
                if line.is_err() || conn.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Split an echo answer into the pod's name and the client address it saw.
pub fn parse_answer(line: &str) -> (String, Option<String>) {
    let mut it = line.split_whitespace();
    let name = it.next().unwrap_or_default().to_string();
    let from = it.find_map(|w| w.strip_prefix("from=")).map(str::to_string);
    (name, from)
}
