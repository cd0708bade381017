//! The pod's built-in echo server: TCP and UDP on one port, answering every
//! line (TCP) or datagram (UDP) with the pod's name, so probes can tell which
//! pod answered without container images.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};

pub const ECHO_PORT: u16 = 8080;

pub fn serve(name: &str, port: u16) -> anyhow::Result<()> {
    let tcp = TcpListener::bind(("0.0.0.0", port))?;
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    let reply = format!("{name}\n");
    let r = reply.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(r.as_bytes(), peer);
        }
    });
    for conn in tcp.incoming() {
        let Ok(mut conn) = conn else { continue };
        let reply = reply.clone();
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
