//! The speaker: its peers' sessions, a listener for the peers that connect
//! to us, the RIB, and the routes this node originates. Routes it learns
//! leave as [`FibChange`]s on a channel; the agent puts them in the kernel.

use crate::fsm::{self, State};
use crate::rib::{FibChange, PeerInfo, Rib};
use crate::session::{self, Command, PeerConfig, SessionEvent};
use crate::view::{AdvertisedRoute, RouteView};
use crate::wire::{Family, Message, Origin, PathAttrs, Update};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Where to accept peers' connections (`None`: never).
    pub listen: Option<SocketAddr>,
    pub hold_time: u16,
    /// Graceful restart time offered to peers (`None`: not offered).
    pub restart_time: Option<u16>,
    /// We have just restarted: say so (R bit), so peers keep our routes
    /// until our End-of-RIB.
    pub restarting: bool,
    pub families: Vec<Family>,
    /// Set to make this speaker a route reflector of this cluster id; its
    /// peers with `rr_client` are its clients.
    pub cluster_id: Option<Ipv4Addr>,
}

impl SpeakerConfig {
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> Self {
        SpeakerConfig {
            local_as,
            router_id,
            listen: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                session::BGP_PORT,
            )),
            hold_time: 90,
            restart_time: Some(120),
            restarting: false,
            families: vec![Family::IPV4_UNICAST],
            cluster_id: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
    pub local_address: Option<IpAddr>,
    pub password: Option<String>,
    pub passive: bool,
    /// We reflect routes to it (we are a route reflector).
    pub rr_client: bool,
    /// Keep a restarting peer's routes at most this long, whatever restart
    /// time it asked for.
    pub max_restart_time: Option<Duration>,
}

impl PeerSpec {
    pub fn new(address: IpAddr, asn: u32) -> Self {
        PeerSpec {
            address,
            asn,
            port: session::BGP_PORT,
            local_address: None,
            password: None,
            passive: false,
            rr_client: false,
            max_restart_time: None,
        }
    }
}

/// One peer as `strait status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub state: State,
    pub established_for: Option<Duration>,
    pub received: usize,
    pub stale: usize,
    pub advertised: usize,
    /// The peer's End-of-RIB arrived since the session came up: what it
    /// holds, we have.
    pub synced: bool,
    pub flaps: u64,
    pub last_error: Option<String>,
}

/// Reads the speaker's state from outside it (the agent's API). It does
/// not keep the speaker running.
#[derive(Clone, Debug)]
pub struct StatusHandle {
    status: Arc<Mutex<BTreeMap<IpAddr, PeerStatus>>>,
    queries: mpsc::UnboundedSender<Query>,
}

impl StatusHandle {
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.status.lock().unwrap().values().cloned().collect()
    }

    /// Learned and advertised routes, asked of the running speaker (None
    /// once it has stopped). Blocks: call it off the async runtime.
    pub fn routes_blocking(&self) -> Option<RouteView> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queries.send(Query::Routes(tx)).ok()?;
        rx.blocking_recv().ok()
    }
}

/// A question for the running speaker, answered from its own state.
enum Query {
    Routes(tokio::sync::oneshot::Sender<RouteView>),
    Fib(tokio::sync::oneshot::Sender<BTreeMap<IpNet, Vec<IpAddr>>>),
}

enum Ctl {
    AddPeer(PeerSpec),
    RemovePeer(IpAddr),
    Originate(BTreeSet<IpNet>),
}

/// A handle on the running speaker; dropping it stops the speaker.
pub struct Speaker {
    ctl: mpsc::UnboundedSender<Ctl>,
    queries: mpsc::UnboundedSender<Query>,
    status: Arc<Mutex<BTreeMap<IpAddr, PeerStatus>>>,
}

impl Speaker {
    /// Start the speaker (binding the listener, if any, now so an error is
    /// the caller's). FIB changes go to `fib`.
    pub async fn start(
        cfg: SpeakerConfig,
        fib: mpsc::UnboundedSender<FibChange>,
    ) -> std::io::Result<Speaker> {
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (q_tx, q_rx) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(BTreeMap::new()));
        let listener = match cfg.listen {
            Some(a) => {
                let sock = match a {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                sock.set_reuseaddr(true)?;
                sock.bind(a)?;
                Some(sock.listen(64)?)
            }
            None => None,
        };
        let mut rib = Rib::new(cfg.local_as, cfg.router_id);
        rib.set_cluster_id(cfg.cluster_id);
        let core = Core {
            rib,
            cfg,
            peers: HashMap::new(),
            origin: BTreeSet::new(),
            fib,
            status: status.clone(),
            events: ev_tx,
            stale_until: HashMap::new(),
            listener_fd: listener.as_ref().map(|l| {
                use std::os::fd::AsRawFd;
                l.as_raw_fd()
            }),
        };
        tokio::spawn(core.run(ctl_rx, ev_rx, q_rx, listener));
        Ok(Speaker {
            ctl,
            queries: q_tx,
            status,
        })
    }

    pub fn add_peer(&self, p: PeerSpec) {
        let _ = self.ctl.send(Ctl::AddPeer(p));
    }

    pub fn remove_peer(&self, address: IpAddr) {
        let _ = self.ctl.send(Ctl::RemovePeer(address));
    }

    /// The routes this node originates (the whole set; changes are sent
    /// to the peers as a diff).
    pub fn originate(&self, prefixes: BTreeSet<IpNet>) {
        let _ = self.ctl.send(Ctl::Originate(prefixes));
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.status_handle().peers()
    }

    /// A handle that reads the peers' status without the speaker.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            status: self.status.clone(),
            queries: self.queries.clone(),
        }
    }

    /// The forwarding table the RIB wants, asked of the speaker (it keeps
    /// the one copy; empty once it has stopped).
    pub async fn fib(&self) -> BTreeMap<IpNet, Vec<IpAddr>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.queries.send(Query::Fib(tx)).is_err() {
            return BTreeMap::new();
        }
        rx.await.unwrap_or_default()
    }

    /// [`Speaker::fib`], off the async runtime.
    pub fn fib_blocking(&self) -> BTreeMap<IpNet, Vec<IpAddr>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.queries.send(Query::Fib(tx)).is_err() {
            return BTreeMap::new();
        }
        rx.blocking_recv().unwrap_or_default()
    }
}

struct Peer {
    spec: PeerSpec,
    cmds: mpsc::Sender<Command>,
    /// Our address on the session, when up.
    local: Option<IpAddr>,
    info: Option<PeerInfo>,
    since: Option<Instant>,
    families: Vec<Family>,
    restart_time: Option<Duration>,
    advertised: usize,
    synced: bool,
    /// Prefixes reflected to it (route reflector).
    reflected: HashSet<IpNet>,
}

impl Peer {
    /// Whether the session (up, from `local`) carries `n`'s family: an IPv6
    /// prefix needs an IPv6 next hop, so an IPv6 session.
    fn carries(&self, local: IpAddr, n: &IpNet) -> bool {
        match n {
            IpNet::V4(_) => self.families.contains(&Family::IPV4_UNICAST),
            IpNet::V6(_) => self.families.contains(&Family::IPV6_UNICAST) && local.is_ipv6(),
        }
    }
}

struct Core {
    cfg: SpeakerConfig,
    rib: Rib,
    peers: HashMap<IpAddr, Peer>,
    origin: BTreeSet<IpNet>,
    fib: mpsc::UnboundedSender<FibChange>,
    status: Arc<Mutex<BTreeMap<IpAddr, PeerStatus>>>,
    events: mpsc::UnboundedSender<SessionEvent>,
    /// Peers in graceful restart, and when their stale routes go.
    stale_until: HashMap<IpAddr, Instant>,
    listener_fd: Option<i32>,
}

impl Core {
    async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<Ctl>,
        mut events: mpsc::UnboundedReceiver<SessionEvent>,
        mut queries: mpsc::UnboundedReceiver<Query>,
        listener: Option<TcpListener>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_sweep = self.stale_until.values().min().copied();
            let sweep = async {
                match next_sweep {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let accept = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = ctl.recv() => match c {
                    Some(c) => self.control(c),
                    None => {
                        for p in self.peers.values() {
                            let _ = p.cmds.try_send(Command::Stop(crate::wire::code::ADMIN_SHUTDOWN));
                        }
                        return;
                    }
                },
                Some(e) = events.recv() => self.session_event(e),
                Some(q) = queries.recv() => {
                    match q {
                        Query::Routes(tx) => { let _ = tx.send(self.route_view()); }
                        Query::Fib(tx) => { let _ = tx.send(self.rib.installed().clone()); }
                    }
                    continue;
                }
                // Uptimes move on without events.
                _ = tick.tick() => {}
                r = accept => if let Ok((s, from)) = r {
                    match self.peers.get(&from.ip()) {
                        Some(p) => { let _ = p.cmds.try_send(Command::Inbound(s)); }
                        None => tracing::info!(%from, "BGP connection from an address that is not a peer; closed"),
                    }
                },
                _ = sweep => {
                    let now = Instant::now();
                    let due: Vec<IpAddr> = self.stale_until.iter().filter(|(_, t)| **t <= now).map(|(a, _)| *a).collect();
                    for a in due {
                        self.stale_until.remove(&a);
                        tracing::info!(peer = %a, stale = self.rib.stale(a), "graceful restart time over; stale routes removed");
                        let c = self.rib.sweep_stale(a, None);
                        self.apply(c);
                    }
                }
            }
            self.publish_status();
        }
    }

    fn control(&mut self, c: Ctl) {
        match c {
            Ctl::AddPeer(spec) => {
                if let Some(p) = self.peers.get(&spec.address) {
                    if p.spec == spec {
                        return;
                    }
                    self.remove_peer(spec.address);
                }
                if let (Some(fd), Some(pw)) = (self.listener_fd, &spec.password) {
                    // SAFETY: the fd is the listener's, alive as long as the core.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    if let Err(e) = session::set_md5(&fd, spec.address, pw) {
                        tracing::warn!(peer = %spec.address, error = %e, "cannot set the TCP MD5 key on the listener");
                    }
                }
                let cfg = PeerConfig {
                    address: spec.address,
                    port: spec.port,
                    local_address: spec.local_address,
                    password: spec.password.clone(),
                    fsm: fsm::Config {
                        local_as: self.cfg.local_as,
                        router_id: self.cfg.router_id,
                        peer_as: spec.asn,
                        hold_time: self.cfg.hold_time,
                        families: self.cfg.families.clone(),
                        graceful_restart: self.cfg.restart_time.map(|t| fsm::GracefulRestart {
                            restart_time: t,
                            restarting: self.cfg.restarting,
                        }),
                        passive: spec.passive,
                        connect_retry: Duration::from_secs(1),
                    },
                };
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(session::run(cfg, rx, self.events.clone()));
                self.peers.insert(
                    spec.address,
                    Peer {
                        spec,
                        cmds: tx,
                        local: None,
                        info: None,
                        since: None,
                        families: vec![],
                        restart_time: None,
                        advertised: 0,
                        synced: false,
                        reflected: HashSet::new(),
                    },
                );
            }
            Ctl::RemovePeer(a) => self.remove_peer(a),
            Ctl::Originate(set) => {
                let added: Vec<IpNet> = set.difference(&self.origin).copied().collect();
                let gone: Vec<IpNet> = self.origin.difference(&set).copied().collect();
                self.origin = set;
                let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
                for a in addrs {
                    self.send_routes(a, &added, &gone);
                }
            }
        }
    }

    fn remove_peer(&mut self, a: IpAddr) {
        if let Some(p) = self.peers.remove(&a) {
            let _ = p
                .cmds
                .try_send(Command::Stop(crate::wire::code::PEER_DECONFIGURED));
            if let (Some(fd), Some(_)) = (self.listener_fd, &p.spec.password) {
                // SAFETY: as in AddPeer.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = session::set_md5(&fd, a, "");
            }
        }
        self.stale_until.remove(&a);
        let c = self.rib.peer_down(a, false);
        self.apply(c);
        self.status.lock().unwrap().remove(&a);
    }

    fn session_event(&mut self, e: SessionEvent) {
        match e {
            SessionEvent::Up {
                peer,
                negotiated,
                local,
            } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                p.local = Some(local);
                p.since = Some(Instant::now());
                p.families = negotiated.families.clone();
                let cap = p.spec.max_restart_time;
                p.restart_time = negotiated
                    .peer_restart
                    .as_ref()
                    .map(|(t, _)| cap.map_or(*t, |c| c.min(*t)));
                p.advertised = 0;
                p.synced = false;
                p.reflected.clear();
                p.info = Some(PeerInfo {
                    address: peer,
                    router_id: negotiated.peer_id,
                    ebgp: negotiated.peer_as != self.cfg.local_as,
                });
                let all: Vec<IpNet> = self.origin.iter().copied().collect();
                self.send_routes(peer, &all, &[]);
                self.reflect_all(peer);
                self.end_of_rib(peer);
            }
            SessionEvent::Down {
                peer,
                reason: _,
                graceful,
            } => {
                let restart = self.peers.get_mut(&peer).and_then(|p| {
                    p.local = None;
                    p.since = None;
                    p.advertised = 0;
                    p.synced = false;
                    p.reflected.clear();
                    p.restart_time
                });
                match (graceful, restart) {
                    (true, Some(t)) => {
                        tracing::info!(%peer, stale = self.rib.received(peer), restart_time = ?t, "peer restarting; its routes stay, stale");
                        self.rib.peer_down(peer, true);
                        self.stale_until.insert(peer, Instant::now() + t);
                    }
                    _ => {
                        self.stale_until.remove(&peer);
                        let c = self.rib.peer_down(peer, false);
                        self.apply(c);
                    }
                }
            }
            SessionEvent::Update { peer, update } => {
                let Some(info) = self.peers.get(&peer).and_then(|p| p.info) else {
                    return;
                };
                if let Some(f) = update.is_end_of_rib() {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.synced = true;
                    }
                    let c = self.rib.sweep_stale(peer, Some(f));
                    self.apply(c);
                    if self.rib.stale(peer) == 0 {
                        self.stale_until.remove(&peer);
                    }
                    return;
                }
                let c = self.rib.update(info, &update);
                self.apply(c);
            }
            SessionEvent::RouteRefresh { peer, .. } => {
                let all: Vec<IpNet> = self.origin.iter().copied().collect();
                self.send_routes(peer, &all, &[]);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.reflected.clear();
                }
                self.reflect_all(peer);
            }
            SessionEvent::State {
                peer,
                state,
                last_error,
                flaps,
            } => {
                let Some(p) = self.peers.get(&peer) else {
                    return;
                };
                let mut st = self.status.lock().unwrap();
                let s = st.entry(peer).or_insert_with(|| PeerStatus {
                    address: peer,
                    asn: p.spec.asn,
                    state,
                    established_for: None,
                    received: 0,
                    stale: 0,
                    advertised: 0,
                    synced: false,
                    flaps: 0,
                    last_error: None,
                });
                s.state = state;
                s.flaps = flaps;
                // Cleared once Established: an old error would mislead.
                s.last_error = last_error;
            }
        }
    }

    /// Announce `add` and withdraw `gone` to one peer, if it is up.
    fn send_routes(&mut self, peer: IpAddr, add: &[IpNet], gone: &[IpNet]) {
        let local_as = self.cfg.local_as;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let (Some(local), Some(info)) = (p.local, p.info) else {
            return;
        };
        let add: Vec<IpNet> = add
            .iter()
            .copied()
            .filter(|n| p.carries(local, n))
            .collect();
        let gone: Vec<IpNet> = gone
            .iter()
            .copied()
            .filter(|n| p.carries(local, n))
            .collect();
        let attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: if info.ebgp {
                vec![crate::wire::AsSegment::Sequence(vec![local_as])]
            } else {
                vec![]
            },
            next_hop: match local {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            },
            local_pref: (!info.ebgp).then_some(100),
            ..Default::default()
        };
        let codec = crate::wire::Codec::default();
        let mut msgs: Vec<Message> = Update::withdraw(&gone)
            .into_iter()
            .map(Message::Update)
            .collect();
        msgs.extend(
            Update::announce(&attrs, &add, &[local], codec)
                .into_iter()
                .map(Message::Update),
        );
        p.advertised = (p.advertised + add.len()).saturating_sub(gone.len());
        if !msgs.is_empty() && p.cmds.try_send(Command::Send(msgs)).is_err() {
            tracing::warn!(%peer, "session queue full; routes resent on the next session");
        }
    }

    /// After a session comes up: what we hold is sent.
    fn end_of_rib(&mut self, peer: IpAddr) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let msgs = p
            .families
            .iter()
            .map(|f| Message::Update(Update::end_of_rib(*f)))
            .collect();
        if p.cmds.try_send(Command::Send(msgs)).is_err() {
            tracing::warn!(%peer, "session queue full; End-of-RIB not sent");
        }
    }

    /// As a route reflector: bring `peer` up to date for `prefixes`.
    fn reflect_to(&mut self, peer: IpAddr, prefixes: &[IpNet]) {
        let Some(cid) = self.cfg.cluster_id else {
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        // Only over an iBGP session that is up.
        if p.local.is_none() || p.info.is_none_or(|i| i.ebgp) {
            return;
        }
        let client = p.spec.rr_client;
        // Out while the other peers are read (who is a client).
        let mut sent = std::mem::take(&mut p.reflected);
        let peers = &self.peers;
        let target = crate::reflect::Target {
            address: peer,
            client,
            sent: &mut sent,
        };
        let ups = crate::reflect::reflect(
            &self.rib,
            cid,
            &self.origin,
            |a| peers.get(&a).is_some_and(|q| q.spec.rr_client),
            target,
            prefixes,
        );
        let p = self.peers.get_mut(&peer).expect("looked up above");
        p.reflected = sent;
        if ups.is_empty() {
            return;
        }
        let msgs = ups.into_iter().map(Message::Update).collect();
        if p.cmds.try_send(Command::Send(msgs)).is_err() {
            tracing::warn!(%peer, "session queue full; reflected routes resent on the next session");
        }
    }

    /// As a reflector: everything learned that `peer` should have (a
    /// session that came up, a route refresh). Nothing to do otherwise.
    fn reflect_all(&mut self, peer: IpAddr) {
        if self.cfg.cluster_id.is_none() {
            return;
        }
        let learned: Vec<IpNet> = self.rib.prefixes().copied().collect();
        self.reflect_to(peer, &learned);
    }

    fn apply(&mut self, changes: Vec<FibChange>) {
        // A reflector passes on every changed best path, also one whose
        // next hops (and so the FIB) stayed the same.
        let touched: Vec<IpNet> = self.rib.take_touched().into_iter().collect();
        if !touched.is_empty() {
            let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
            for a in addrs {
                self.reflect_to(a, &touched);
            }
        }
        if changes.is_empty() {
            return;
        }
        for c in changes {
            let _ = self.fib.send(c);
        }
    }

    fn route_view(&self) -> RouteView {
        let mut advertised = vec![];
        for (a, p) in &self.peers {
            let (Some(local), true) = (p.local, p.info.is_some()) else {
                continue;
            };
            for n in self.origin.iter().filter(|n| p.carries(local, n)) {
                advertised.push(AdvertisedRoute {
                    prefix: *n,
                    peer: *a,
                    reflected_from: None,
                });
            }
            for n in &p.reflected {
                advertised.push(AdvertisedRoute {
                    prefix: *n,
                    peer: *a,
                    reflected_from: self.rib.best(n).map(|b| b.peer.address),
                });
            }
        }
        advertised.sort_by_key(|r| (r.prefix, r.peer));
        RouteView {
            learned: crate::view::learned(&self.rib),
            advertised,
        }
    }

    fn publish_status(&self) {
        let mut st = self.status.lock().unwrap();
        for (a, p) in &self.peers {
            if let Some(s) = st.get_mut(a) {
                s.established_for = p.since.map(|t| t.elapsed());
                s.received = self.rib.received(*a);
                s.stale = self.rib.stale(*a);
                s.advertised = p.advertised + p.reflected.len();
                s.synced = p.synced;
            }
        }
    }
}
