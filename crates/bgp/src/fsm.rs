//! The BGP session state machine (RFC 4271 §8), with no sockets and no
//! clocks: the driver feeds it events and the time, and carries out the
//! actions it returns. So every transition is testable in a unit test.
//!
//! Beyond RFC 4271: a session that keeps failing waits longer before each
//! retry (doubling up to [`MAX_RETRY`]); graceful restart (RFC 4724) is
//! negotiated and reported, so the RIB can keep a restarting peer's routes.

use crate::wire::{code, Capability, Codec, Family, Message, Notification, Open, Update};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The longest wait between connection attempts of a flapping peer.
pub const MAX_RETRY: Duration = Duration::from_secs(120);
/// How long an OPEN may take to arrive (RFC 4271's suggested large hold).
const OPEN_HOLD: Duration = Duration::from_secs(240);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub peer_as: u32,
    /// Proposed hold time in seconds (0: no keepalives; else ≥ 3).
    pub hold_time: u16,
    pub families: Vec<Family>,
    /// Graceful restart: the restart time we ask peers to wait, and
    /// whether we are restarting now (the R bit after our own restart).
    pub graceful_restart: Option<GracefulRestart>,
    /// Never connect; wait for the peer to.
    pub passive: bool,
    /// First wait before reconnecting.
    pub connect_retry: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    pub restart_time: u16,
    pub restarting: bool,
}

impl Config {
    pub fn open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        caps.push(Capability::RouteRefresh);
        if let Some(gr) = self.graceful_restart {
            caps.push(Capability::GracefulRestart(crate::wire::Restart {
                restarting: gr.restarting,
                restart_time: gr.restart_time,
                // Forwarding state is kept: the kernel's routes stay while
                // the agent restarts.
                families: self.families.iter().map(|f| (*f, true)).collect(),
            }));
        }
        caps.push(Capability::FourOctetAs(self.local_as));
        Open {
            asn: self.local_as,
            hold_time: self.hold_time,
            router_id: self.router_id,
            capabilities: caps,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What both OPENs agreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    pub hold_time: Duration,
    pub keepalive: Duration,
    pub codec: Codec,
    pub families: Vec<Family>,
    pub route_refresh: bool,
    /// The peer's graceful-restart capability: its restart time, and the
    /// families whose forwarding it keeps.
    pub peer_restart: Option<(Duration, Vec<Family>)>,
    /// The peer said it is restarting (R bit): it will send End-of-RIB.
    pub peer_restarting: bool,
}

#[allow(clippy::large_enum_variant)] // as Message
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Begin (or resume after Stop): connect unless passive.
    Start,
    /// Administrative stop: NOTIFICATION cease with this subcode, then Idle.
    Stop(u8),
    /// A TCP connection is up (ours or the peer's).
    Connected,
    /// Our connection attempt failed.
    ConnectFailed,
    /// The peer closed the connection, or it broke.
    Closed,
    Message(Message),
    /// The bytes did not decode: send this and close.
    Malformed(Notification),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    Send(Message),
    /// Close the TCP connection.
    Close,
    /// The session reached Established.
    Up(Negotiated),
    /// The session left Established. `graceful`: the peer negotiated
    /// graceful restart and the session failed without a NOTIFICATION,
    /// so its routes stay (stale) for its restart time.
    Down {
        reason: String,
        graceful: bool,
    },
    /// Routes from the peer.
    Update(Update),
    /// The peer asks for our routes of a family again.
    RouteRefresh(Family),
}

#[derive(Debug)]
pub struct Fsm {
    cfg: Config,
    state: State,
    negotiated: Option<Negotiated>,
    hold_deadline: Option<Instant>,
    keepalive_deadline: Option<Instant>,
    retry_deadline: Option<Instant>,
    retry: Duration,
    /// When the session last reached Established (back-off resets after
    /// one that lasted).
    up_since: Option<Instant>,
    pub last_error: Option<String>,
    /// Times the session went down.
    pub flaps: u64,
}

impl Fsm {
    pub fn new(cfg: Config) -> Fsm {
        let retry = cfg.connect_retry;
        Fsm {
            cfg,
            state: State::Idle,
            negotiated: None,
            hold_deadline: None,
            keepalive_deadline: None,
            retry_deadline: None,
            retry,
            up_since: None,
            last_error: None,
            flaps: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn codec(&self) -> Codec {
        self.negotiated
            .as_ref()
            .map(|n| n.codec)
            .unwrap_or_default()
    }

    /// When [`Fsm::on_time`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.hold_deadline,
            self.keepalive_deadline,
            self.retry_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The wait before the next connection attempt (grows while the peer
    /// flaps).
    pub fn retry_interval(&self) -> Duration {
        self.retry
    }

    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        let mut out = vec![];
        match (self.state, ev) {
            (State::Idle, Event::Start) => {
                if self.cfg.passive {
                    self.state = State::Active;
                } else {
                    self.state = State::Connect;
                    out.push(Action::Connect);
                }
            }
            (_, Event::Start) => {}
            (State::Idle, _) => {}
            (_, Event::Stop(sub)) => {
                self.fail(
                    &mut out,
                    now,
                    Some(Notification::new(code::CEASE, sub)),
                    "stopped".into(),
                );
                self.retry_deadline = None;
                self.state = State::Idle;
            }
            (State::Connect | State::Active, Event::Connected) => {
                self.state = State::OpenSent;
                out.push(Action::Send(Message::Open(self.cfg.open())));
                self.retry_deadline = None;
                self.hold_deadline = Some(now + OPEN_HOLD);
            }
            (State::Connect, Event::ConnectFailed) => {
                self.state = State::Active;
                self.schedule_retry(now, false);
            }
            (_, Event::Connected | Event::ConnectFailed) => {}
            (_, Event::Closed) => {
                self.fail_as(
                    &mut out,
                    now,
                    None,
                    "connection closed by the peer".into(),
                    true,
                );
            }
            (_, Event::Malformed(n)) => {
                let why = format!("peer sent a bad message: {n}");
                self.fail(&mut out, now, Some(n), why);
            }
            (_, Event::Message(Message::Notification(n))) => {
                self.fail(&mut out, now, None, format!("peer sent NOTIFICATION: {n}"));
            }
            (State::OpenSent, Event::Message(Message::Open(o))) => match self.check_open(&o) {
                Ok(neg) => {
                    out.push(Action::Send(Message::Keepalive));
                    self.state = State::OpenConfirm;
                    self.arm(now, &neg);
                    self.negotiated = Some(neg);
                }
                Err(n) => {
                    let why = format!("refused the peer's OPEN: {n}");
                    self.fail(&mut out, now, Some(n), why);
                }
            },
            (State::OpenConfirm, Event::Message(Message::Keepalive)) => {
                self.state = State::Established;
                self.up_since = Some(now);
                self.last_error = None;
                let neg = self.negotiated.clone().expect("negotiated in OpenSent");
                self.arm_hold(now, &neg);
                out.push(Action::Up(neg));
            }
            (State::Established, Event::Message(m)) => {
                if let Some(neg) = self.negotiated.clone() {
                    self.arm_hold(now, &neg);
                }
                match m {
                    Message::Keepalive => {}
                    Message::Update(u) => out.push(Action::Update(u)),
                    Message::RouteRefresh(f) => out.push(Action::RouteRefresh(f)),
                    Message::Open(_) | Message::Notification(_) => {
                        self.fsm_error(&mut out, now);
                    }
                }
            }
            (_, Event::Message(_)) => self.fsm_error(&mut out, now),
        }
        out
    }

    /// Timers that are due.
    pub fn on_time(&mut self, now: Instant) -> Vec<Action> {
        let mut out = vec![];
        if self.hold_deadline.is_some_and(|d| d <= now) {
            self.fail(
                &mut out,
                now,
                Some(Notification::new(code::HOLD_TIMER_EXPIRED, 0)),
                "hold timer expired".into(),
            );
        }
        if self.keepalive_deadline.is_some_and(|d| d <= now) {
            out.push(Action::Send(Message::Keepalive));
            let k = self.negotiated.as_ref().map(|n| n.keepalive);
            self.keepalive_deadline = k.map(|k| now + k);
        }
        if self.retry_deadline.is_some_and(|d| d <= now) {
            self.retry_deadline = None;
            if matches!(self.state, State::Active | State::Connect) && !self.cfg.passive {
                self.state = State::Connect;
                out.push(Action::Connect);
            }
        }
        out
    }

    fn check_open(&self, o: &Open) -> Result<Negotiated, Notification> {
        if o.asn != self.cfg.peer_as {
            return Err(Notification::with_data(
                code::OPEN,
                code::BAD_PEER_AS,
                u16::try_from(o.asn)
                    .unwrap_or(crate::wire::AS_TRANS)
                    .to_be_bytes(),
            ));
        }
        if o.router_id == self.cfg.router_id {
            return Err(Notification::new(code::OPEN, code::BAD_BGP_IDENTIFIER));
        }
        let hold = self.cfg.hold_time.min(o.hold_time);
        let theirs = o.families();
        // No multiprotocol capability at all means IPv4 unicast (RFC 4760).
        let theirs = if theirs.is_empty() {
            vec![Family::IPV4_UNICAST]
        } else {
            theirs
        };
        let families: Vec<Family> = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        let gr = o.graceful_restart();
        Ok(Negotiated {
            peer_as: o.asn,
            peer_id: o.router_id,
            hold_time: Duration::from_secs(hold as u64),
            keepalive: Duration::from_secs(hold as u64 / 3),
            codec: Codec {
                four_octet_as: o.four_octet_as(),
            },
            families,
            route_refresh: o.route_refresh(),
            peer_restart: gr.map(|r| {
                (
                    Duration::from_secs(r.restart_time as u64),
                    r.families.iter().map(|(f, _)| *f).collect(),
                )
            }),
            peer_restarting: gr.is_some_and(|r| r.restarting),
        })
    }

    fn arm(&mut self, now: Instant, n: &Negotiated) {
        self.arm_hold(now, n);
        self.keepalive_deadline = (!n.keepalive.is_zero()).then(|| now + n.keepalive);
    }

    fn arm_hold(&mut self, now: Instant, n: &Negotiated) {
        self.hold_deadline = (!n.hold_time.is_zero()).then(|| now + n.hold_time);
    }

    fn fsm_error(&mut self, out: &mut Vec<Action>, now: Instant) {
        let state = self.state;
        self.fail(
            out,
            now,
            Some(Notification::new(code::FSM, 0)),
            format!("unexpected message in {state}"),
        );
    }

    /// Tear down: send `notify` if the connection can carry it, close, and
    /// wait before reconnecting.
    fn fail(
        &mut self,
        out: &mut Vec<Action>,
        now: Instant,
        notify: Option<Notification>,
        reason: String,
    ) {
        self.fail_as(out, now, notify, reason, false)
    }

    /// [`Fsm::fail`] for a connection that broke (`broke`: no NOTIFICATION
    /// came or went), which graceful restart survives.
    fn fail_as(
        &mut self,
        out: &mut Vec<Action>,
        now: Instant,
        notify: Option<Notification>,
        reason: String,
        broke: bool,
    ) {
        let had_tcp = matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        );
        if had_tcp {
            if let Some(n) = &notify {
                out.push(Action::Send(Message::Notification(n.clone())));
            }
            out.push(Action::Close);
        }
        if self.state == State::Established {
            self.flaps += 1;
            // RFC 4724: the connection broke or went silent. Any
            // NOTIFICATION, sent or received, ends the session for good.
            let silent = matches!(&notify, Some(n) if n.code == code::HOLD_TIMER_EXPIRED);
            let graceful = (broke || silent)
                && self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.peer_restart.is_some());
            out.push(Action::Down {
                reason: reason.clone(),
                graceful,
            });
        }
        self.last_error = Some(reason);
        let lasted = self
            .up_since
            .is_some_and(|t| now.duration_since(t) >= Duration::from_secs(60));
        self.state = State::Active;
        self.negotiated = None;
        self.hold_deadline = None;
        self.keepalive_deadline = None;
        self.up_since = None;
        self.schedule_retry(now, lasted);
    }

    fn schedule_retry(&mut self, now: Instant, reset: bool) {
        if reset {
            self.retry = self.cfg.connect_retry;
        }
        self.retry_deadline = Some(now + self.retry);
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
