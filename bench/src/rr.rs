//! Request/response latency and single-stream throughput between two
//! namespaces, client and server pinned to one CPU; and new connections
//! per second.

use anyhow::Context;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use strait_lab::run::netns_path;
use strait_netlink::{in_netns, NetnsFile};

pub const PORT: u16 = 9090;
pub const MSG: usize = 64;

pub struct Rr {
    pub p50_us: f64,
    pub p99_us: f64,
    pub tps: f64,
}

/// Pin the calling thread to one CPU: client and server then hand off on
/// the same CPU, so the figures measure the path, not cross-CPU wakeups.
pub fn pin_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub fn ns(name: &str) -> anyhow::Result<NetnsFile> {
    Ok(NetnsFile::open(&netns_path(name))?)
}

/// A server in `server_ns` that echoes MSG-byte messages (rr) or sinks a
/// stream; a client in `client_ns`.
fn serve(server_ns: &str, bind: SocketAddr) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let sns = ns(server_ns)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = in_netns(&sns, move || {
            pin_cpu(0);
            let l = TcpListener::bind(bind).expect("bind bench server");
            tx.send(()).unwrap();
            // Two connections: request/response, then the stream.
            for _ in 0..2 {
                let Ok((mut c, _)) = l.accept() else { return };
                c.set_nodelay(true).ok();
                let mut buf = vec![0u8; 1 << 16];
                let mut kind = [0u8; 1];
                if c.read_exact(&mut kind).is_err() {
                    return;
                }
                if kind[0] == b'r' {
                    let mut m = [0u8; MSG];
                    while c.read_exact(&mut m).is_ok() {
                        if c.write_all(&m).is_err() {
                            break;
                        }
                    }
                } else {
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("bench server did not start")?;
    Ok(h)
}

pub fn measure(
    client_ns: &str,
    server_ns: &str,
    dst: SocketAddr,
    secs: f64,
) -> anyhow::Result<(Rr, f64)> {
    let server = serve(server_ns, SocketAddr::new(dst.ip(), PORT))?;
    let cns = ns(client_ns)?;
    let dst = SocketAddr::new(dst.ip(), PORT);
    let res = in_netns(&cns, move || -> anyhow::Result<(Rr, f64)> {
        pin_cpu(0);
        // Request/response.
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        c.set_nodelay(true)?;
        c.write_all(b"r")?;
        let mut m = [7u8; MSG];
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(200) {
            c.write_all(&m)?;
            c.read_exact(&mut m)?;
        }
        let mut lat = Vec::with_capacity(200_000);
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            let t = Instant::now();
            c.write_all(&m)?;
            c.read_exact(&mut m)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let total = t0.elapsed().as_secs_f64();
        drop(c);
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        let rr = Rr {
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            tps: lat.len() as f64 / total,
        };
        // Single stream.
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        s.write_all(b"s")?;
        let buf = vec![0u8; 1 << 16];
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            s.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        let gbps = sent as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9;
        Ok((rr, gbps))
    })??;
    server.join().ok();
    Ok(res)
}

/// New TCP connections per second from `client_ns` to `dst` (connect,
/// one byte each way, close), for `secs`.
pub fn connect_rate(
    client_ns: &str,
    server_ns: &str,
    dst: SocketAddr,
    secs: f64,
) -> anyhow::Result<f64> {
    let sns = ns(server_ns)?;
    let bind = SocketAddr::new(dst.ip(), PORT + 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let _ = in_netns(&sns, move || {
            let l = TcpListener::bind(bind).expect("bind connect-rate server");
            l.set_nonblocking(true).ok();
            tx.send(()).unwrap();
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).ok();
                        let mut b = [0u8; 1];
                        if c.read_exact(&mut b).is_ok() {
                            let _ = c.write_all(&b);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("connect-rate server did not start")?;
    let cns = ns(client_ns)?;
    let rate = in_netns(&cns, move || -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            let mut c = TcpStream::connect_timeout(&bind, Duration::from_secs(2))?;
            c.write_all(b"x")?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b)?;
            n += 1;
        }
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    })??;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().ok();
    Ok(rate)
}
