//! One peer's session over TCP: the [`Fsm`] driven by a socket, a timer
//! and commands from the speaker. Connections are made with TCP MD5
//! (RFC 2385) when the peer has a password; inbound ones are handed over
//! by the speaker's listener.

use crate::fsm::{Action, Event, Fsm, Negotiated, State};
use crate::wire::{self, code, Message, Notification, Update};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

pub const BGP_PORT: u16 = 179;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub port: u16,
    /// Source address of our connections (and the next hop we announce).
    pub local_address: Option<IpAddr>,
    pub password: Option<String>,
    pub fsm: crate::fsm::Config,
}

/// What a session reports to the speaker.
#[derive(Debug)]
pub enum SessionEvent {
    Up {
        peer: IpAddr,
        negotiated: Negotiated,
        /// Our end of the connection: the next hop to announce.
        local: IpAddr,
    },
    Down {
        peer: IpAddr,
        reason: String,
        graceful: bool,
    },
    Update {
        peer: IpAddr,
        update: Update,
    },
    RouteRefresh {
        peer: IpAddr,
        family: wire::Family,
    },
    State {
        peer: IpAddr,
        state: State,
        last_error: Option<String>,
        flaps: u64,
    },
}

#[derive(Debug)]
pub enum Command {
    /// Send these when Established (dropped otherwise: the speaker sends
    /// the whole table on Up).
    Send(Vec<Message>),
    /// A connection the peer opened to us.
    Inbound(TcpStream),
    /// Cease and end the task.
    Stop(u8),
}

/// Set (or with an empty key clear) the TCP MD5 key for `peer` on `fd`.
pub fn set_md5(fd: &impl AsRawFd, peer: IpAddr, key: &str) -> std::io::Result<()> {
    #[repr(C)]
    struct TcpMd5Sig {
        addr: libc::sockaddr_storage,
        flags: u8,
        prefixlen: u8,
        keylen: u16,
        ifindex: libc::c_int,
        key: [u8; 80],
    }
    if key.len() > 80 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a TCP MD5 password is at most 80 bytes",
        ));
    }
    // SAFETY: all-zero is a valid sockaddr_storage and key buffer.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr.
            let sin = unsafe { &mut *(&mut sig.addr as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        IpAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut sig.addr as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key.as_bytes());
    // SAFETY: a valid pointer to a struct of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const _ as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

async fn connect(cfg: &PeerConfig) -> std::io::Result<TcpStream> {
    let sock = match cfg.address {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(p) = &cfg.password {
        set_md5(&sock, cfg.address, p)?;
    }
    if let Some(l) = cfg.local_address {
        sock.bind(SocketAddr::new(l, 0))?;
    }
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        sock.connect(SocketAddr::new(cfg.address, cfg.port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Run one peer until [`Command::Stop`] (or the speaker goes away).
pub async fn run(
    cfg: PeerConfig,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
) {
    let peer = cfg.address;
    let mut fsm = Fsm::new(cfg.fsm.clone());
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut connecting: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>,
    > = None;
    let mut pending = fsm.handle(Event::Start, Instant::now());
    let mut last_state = None;
    // Whether the connection in `stream` is one we opened.
    let mut outbound = false;
    loop {
        // Carry out what the machine asked for.
        while !pending.is_empty() {
            let mut more = vec![];
            for a in std::mem::take(&mut pending) {
                match a {
                    Action::Connect => {
                        let c = cfg.clone();
                        connecting = Some(Box::pin(async move { connect(&c).await }));
                    }
                    Action::Send(m) => {
                        if let Some(s) = stream.as_mut() {
                            if let Err(e) = write(s, &m, fsm.codec()).await {
                                tracing::debug!(%peer, error = %e, "write failed");
                                more.extend(fsm.handle(Event::Closed, Instant::now()));
                            }
                        }
                    }
                    Action::Close => {
                        if let Some(mut s) = stream.take() {
                            let _ = s.shutdown().await;
                        }
                        buf.clear();
                    }
                    Action::Up(n) => {
                        let local = stream
                            .as_ref()
                            .and_then(|s| s.local_addr().ok())
                            .map(|a| a.ip())
                            .or(cfg.local_address)
                            .unwrap_or(IpAddr::V4(cfg.fsm.router_id));
                        tracing::info!(%peer, peer_as = n.peer_as, hold = ?n.hold_time, "BGP session established");
                        let _ = events.send(SessionEvent::Up {
                            peer,
                            negotiated: n,
                            local,
                        });
                    }
                    Action::Down { reason, graceful } => {
                        tracing::warn!(%peer, %reason, graceful, "BGP session down");
                        let _ = events.send(SessionEvent::Down {
                            peer,
                            reason,
                            graceful,
                        });
                    }
                    Action::Update(u) => {
                        let _ = events.send(SessionEvent::Update { peer, update: u });
                    }
                    Action::RouteRefresh(family) => {
                        let _ = events.send(SessionEvent::RouteRefresh { peer, family });
                    }
                }
            }
            pending = more;
        }
        let now_state = (fsm.state(), fsm.last_error.clone(), fsm.flaps);
        if last_state.as_ref() != Some(&now_state) {
            let _ = events.send(SessionEvent::State {
                peer,
                state: now_state.0,
                last_error: now_state.1.clone(),
                flaps: now_state.2,
            });
            last_state = Some(now_state);
        }
        let deadline = fsm.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let read = async {
            match stream.as_mut() {
                Some(s) => s.read_buf(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        let connect_done = async {
            match connecting.as_mut() {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(Command::Stop(_)) => {
                    let sub = match cmd { Some(Command::Stop(s)) => s, _ => code::PEER_DECONFIGURED };
                    pending = fsm.handle(Event::Stop(sub), Instant::now());
                    // Send the cease, close, and end.
                    for a in pending.drain(..) {
                        match a {
                            Action::Send(m) => if let Some(s) = stream.as_mut() { let _ = write(s, &m, fsm.codec()).await; },
                            Action::Down { reason, graceful } => { let _ = events.send(SessionEvent::Down { peer, reason, graceful }); }
                            _ => {}
                        }
                    }
                    if let Some(mut s) = stream.take() { let _ = s.shutdown().await; }
                    let _ = events.send(SessionEvent::State { peer, state: State::Idle, last_error: None, flaps: fsm.flaps });
                    return;
                }
                Some(Command::Send(msgs)) => {
                    if fsm.state() == State::Established {
                        if let Some(s) = stream.as_mut() {
                            for m in msgs {
                                if let Err(e) = write(s, &m, fsm.codec()).await {
                                    tracing::debug!(%peer, error = %e, "write failed");
                                    pending = fsm.handle(Event::Closed, Instant::now());
                                    break;
                                }
                            }
                        }
                    }
                }
                Some(Command::Inbound(s)) => {
                    let now = Instant::now();
                    if !replace_with_inbound(&fsm, stream.is_some(), outbound, peer) {
                        reject(s, fsm.codec()).await;
                    } else {
                        connecting = None;
                        if let Some(mut old) = stream.take() {
                            // The old connection ends (and with it, for a
                            // restarted peer, the old session: RFC 4724 §4).
                            let n = Message::Notification(Notification::new(code::CEASE, code::CONNECTION_COLLISION));
                            let _ = write(&mut old, &n, fsm.codec()).await;
                            let _ = old.shutdown().await;
                            buf.clear();
                            pending.extend(
                                fsm.handle(Event::Closed, now)
                                    .into_iter()
                                    .filter(|a| !matches!(a, Action::Send(_) | Action::Close)),
                            );
                        }
                        let _ = s.set_nodelay(true);
                        stream = Some(s);
                        outbound = false;
                        pending.extend(fsm.handle(Event::Connected, now));
                    }
                }
            },
            r = connect_done => {
                connecting = None;
                match r {
                    Ok(s) if stream.is_none() => {
                        stream = Some(s);
                        outbound = true;
                        pending = fsm.handle(Event::Connected, Instant::now());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connect failed");
                        fsm.last_error = Some(format!("connect: {e}"));
                        pending = fsm.handle(Event::ConnectFailed, Instant::now());
                    }
                }
            }
            r = read => {
                match r {
                    Ok(0) | Err(_) => pending = fsm.handle(Event::Closed, Instant::now()),
                    Ok(_) => {
                        let mut used = 0;
                        loop {
                            match wire::decode(&buf[used..], fsm.codec()) {
                                Ok(Some((m, n))) => {
                                    used += n;
                                    pending.extend(fsm.handle(Event::Message(m), Instant::now()));
                                    if stream.is_none() || fsm.state() < State::OpenSent { break; }
                                }
                                Ok(None) => break,
                                Err(n) => {
                                    tracing::warn!(%peer, error = %n, "malformed message from peer");
                                    pending.extend(fsm.handle(Event::Malformed(n), Instant::now()));
                                    used = buf.len();
                                    break;
                                }
                            }
                        }
                        buf.drain(..used.min(buf.len()));
                    }
                }
            }
            _ = sleep => {
                pending = fsm.on_time(Instant::now());
            }
        }
    }
}

/// A connection from the peer arrived: take it instead of what we have?
/// Idle: no. No connection yet: yes. Established: yes, the peer restarted
/// (its old connection is dead even if we have not noticed). While OPENs
/// are exchanged, RFC 4271 §6.8: the connection opened by the speaker with
/// the higher BGP identifier stays (the peer's identifier is its OPEN's if
/// we have it, else its address, which it is in a strait mesh); a newer
/// connection from the peer replaces an older one from it.
fn replace_with_inbound(fsm: &Fsm, connected: bool, outbound: bool, peer: IpAddr) -> bool {
    match fsm.state() {
        State::Idle => false,
        _ if !connected => true,
        State::Connect | State::Active | State::Established => true,
        State::OpenSent | State::OpenConfirm => {
            if !outbound {
                return true;
            }
            let remote = fsm.negotiated().map(|n| n.peer_id).or(match peer {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            });
            remote.is_some_and(|r| u32::from(r) > u32::from(fsm.config().router_id))
        }
    }
}

async fn write(s: &mut TcpStream, m: &Message, codec: wire::Codec) -> std::io::Result<()> {
    let b = wire::encode(m, codec).map_err(std::io::Error::other)?;
    s.write_all(&b).await
}

/// Refuse a colliding connection: cease, connection collision resolution.
async fn reject(mut s: TcpStream, codec: wire::Codec) {
    let n = Message::Notification(Notification::new(code::CEASE, code::CONNECTION_COLLISION));
    let _ = write(&mut s, &n, codec).await;
    let _ = s.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::{Config, Fsm};
    use crate::wire::Family;
    use std::net::Ipv4Addr;

    fn fsm(router_id: [u8; 4]) -> Fsm {
        Fsm::new(Config {
            local_as: 64512,
            router_id: Ipv4Addr::from(router_id),
            peer_as: 64512,
            hold_time: 90,
            families: vec![Family::IPV4_UNICAST],
            graceful_restart: None,
            passive: false,
            connect_retry: Duration::from_secs(1),
        })
    }

    #[test]
    fn collisions_keep_the_connection_of_the_higher_router_id() {
        let t = Instant::now();
        let peer: IpAddr = "198.18.0.5".parse().unwrap();
        let mut f = fsm([198, 18, 0, 1]);
        assert!(
            !replace_with_inbound(&f, false, false, peer),
            "Idle takes nothing"
        );
        f.handle(Event::Start, t);
        assert!(
            replace_with_inbound(&f, false, false, peer),
            "nothing yet: take it"
        );
        f.handle(Event::Connected, t);
        assert_eq!(f.state(), State::OpenSent);
        assert!(
            replace_with_inbound(&f, true, true, peer),
            "the peer's id is higher: its connection stays"
        );
        let mut g = fsm([198, 18, 0, 9]);
        g.handle(Event::Start, t);
        g.handle(Event::Connected, t);
        assert!(
            !replace_with_inbound(&g, true, true, peer),
            "ours is higher: ours stays"
        );
        assert!(
            replace_with_inbound(&g, true, false, peer),
            "a newer connection from the peer replaces its older one"
        );
    }
}
