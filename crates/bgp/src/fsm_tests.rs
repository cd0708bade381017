use super::*;
use crate::wire::{code, Capability, Family, Message, Notification, Open};

fn cfg() -> Config {
    Config {
        local_as: 64512,
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        peer_as: 64512,
        hold_time: 9,
        families: vec![Family::IPV4_UNICAST],
        graceful_restart: Some(GracefulRestart {
            restart_time: 120,
            restarting: false,
        }),
        passive: false,
        connect_retry: Duration::from_secs(1),
    }
}

fn peer_open(asn: u32, hold: u16, gr: bool) -> Message {
    let mut caps = vec![
        Capability::Multiprotocol(Family::IPV4_UNICAST),
        Capability::Multiprotocol(Family::IPV6_UNICAST),
        Capability::FourOctetAs(asn),
    ];
    if gr {
        caps.push(Capability::GracefulRestart(crate::wire::Restart {
            restarting: false,
            restart_time: 90,
            families: vec![(Family::IPV4_UNICAST, true)],
        }));
    }
    Message::Open(Open {
        asn,
        hold_time: hold,
        router_id: Ipv4Addr::new(198, 18, 0, 2),
        capabilities: caps,
    })
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Drive a session to Established; returns the machine and the time.
fn established(gr: bool) -> (Fsm, Instant) {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    assert_eq!(f.handle(Event::Start, t), vec![Action::Connect]);
    let a = f.handle(Event::Connected, t);
    assert!(matches!(sent(&a)[..], [Message::Open(_)]));
    assert_eq!(f.state(), State::OpenSent);
    let a = f.handle(Event::Message(peer_open(64512, 30, gr)), t);
    assert_eq!(sent(&a), [&Message::Keepalive]);
    assert_eq!(f.state(), State::OpenConfirm);
    let a = f.handle(Event::Message(Message::Keepalive), t);
    let Some(Action::Up(n)) = a.first() else {
        panic!("{a:?}")
    };
    assert_eq!(n.hold_time, Duration::from_secs(9), "the smaller hold time");
    assert_eq!(n.keepalive, Duration::from_secs(3));
    assert_eq!(n.families, [Family::IPV4_UNICAST], "only what both offer");
    assert_eq!(f.state(), State::Established);
    (f, t)
}

#[test]
fn open_handshake_to_established() {
    established(true);
}

#[test]
fn keepalives_are_sent_and_the_hold_timer_tears_down() {
    let (mut f, t) = established(false);
    assert_eq!(f.next_deadline(), Some(t + Duration::from_secs(3)));
    let a = f.on_time(t + Duration::from_secs(3));
    assert_eq!(sent(&a), [&Message::Keepalive]);
    // A message from the peer rearms hold.
    f.handle(
        Event::Message(Message::Keepalive),
        t + Duration::from_secs(5),
    );
    assert!(f
        .on_time(t + Duration::from_secs(13))
        .iter()
        .all(|a| !matches!(a, Action::Close)));
    let a = f.on_time(t + Duration::from_secs(14));
    assert!(
        a.contains(&Action::Send(Message::Notification(Notification::new(
            code::HOLD_TIMER_EXPIRED,
            0
        ))))
    );
    assert!(a.contains(&Action::Close));
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Down {
            graceful: false,
            ..
        }
    )));
    assert_eq!(f.state(), State::Active);
}

#[test]
fn wrong_peer_as_is_refused_with_bad_peer_as() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::Connected, t);
    let a = f.handle(Event::Message(peer_open(65000, 90, false)), t);
    let [Message::Notification(n)] = sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!((n.code, n.subcode), (code::OPEN, code::BAD_PEER_AS));
    assert!(a.contains(&Action::Close));
    assert!(f.last_error.as_ref().unwrap().contains("bad peer AS"));
}

#[test]
fn own_router_id_is_refused() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::Connected, t);
    let Message::Open(mut o) = peer_open(64512, 90, false) else {
        unreachable!()
    };
    o.router_id = cfg().router_id;
    let a = f.handle(Event::Message(Message::Open(o)), t);
    let [Message::Notification(n)] = sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!((n.code, n.subcode), (code::OPEN, code::BAD_BGP_IDENTIFIER));
}

#[test]
fn updates_and_refresh_requests_pass_up() {
    let (mut f, t) = established(false);
    let u = crate::wire::Update::default();
    assert_eq!(
        f.handle(Event::Message(Message::Update(u.clone())), t),
        vec![Action::Update(u)]
    );
    assert_eq!(
        f.handle(
            Event::Message(Message::RouteRefresh(Family::IPV4_UNICAST)),
            t
        ),
        vec![Action::RouteRefresh(Family::IPV4_UNICAST)]
    );
}

#[test]
fn a_second_open_is_an_fsm_error() {
    let (mut f, t) = established(false);
    let a = f.handle(Event::Message(peer_open(64512, 90, false)), t);
    assert!(
        a.contains(&Action::Send(Message::Notification(Notification::new(
            code::FSM,
            0
        ))))
    );
    assert!(a.iter().any(|a| matches!(a, Action::Down { .. })));
}

#[test]
fn update_before_established_is_an_fsm_error() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::Connected, t);
    let a = f.handle(Event::Message(Message::Update(Default::default())), t);
    assert_eq!(
        sent(&a),
        [&Message::Notification(Notification::new(code::FSM, 0))]
    );
    assert!(
        !a.iter().any(|a| matches!(a, Action::Down { .. })),
        "was never up"
    );
}

#[test]
fn malformed_input_gets_its_notification_then_a_reset() {
    let (mut f, t) = established(false);
    let n = Notification::new(code::UPDATE, code::INVALID_ORIGIN);
    let a = f.handle(Event::Malformed(n.clone()), t);
    assert_eq!(a[0], Action::Send(Message::Notification(n)));
    assert_eq!(a[1], Action::Close);
    assert_eq!(f.state(), State::Active);
    assert_eq!(f.flaps, 1);
}

#[test]
fn a_dropped_session_of_a_restart_capable_peer_is_graceful() {
    let (mut f, t) = established(true);
    let a = f.handle(Event::Closed, t);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Down { graceful: true, .. })),
        "{a:?}"
    );
    // A NOTIFICATION from the peer is a deliberate end: not graceful.
    let (mut f, t) = established(true);
    let a = f.handle(
        Event::Message(Message::Notification(Notification::new(code::CEASE, 2))),
        t,
    );
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Down {
            graceful: false,
            ..
        }
    )));
    // A peer without the capability: never graceful.
    let (mut f, t) = established(false);
    let a = f.handle(Event::Closed, t);
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Down {
            graceful: false,
            ..
        }
    )));
}

#[test]
fn a_flapping_peer_waits_longer_each_time() {
    let t0 = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t0);
    let mut t = t0;
    let mut waits = vec![];
    for _ in 0..10 {
        f.handle(Event::Connected, t);
        f.handle(Event::Closed, t);
        let d = f.next_deadline().expect("a retry is scheduled");
        waits.push(d - t);
        t = d;
        assert_eq!(f.on_time(t), vec![Action::Connect]);
    }
    assert_eq!(waits[0], Duration::from_secs(1));
    assert_eq!(waits[1], Duration::from_secs(2));
    assert_eq!(waits[2], Duration::from_secs(4));
    assert_eq!(*waits.last().unwrap(), MAX_RETRY);
}

#[test]
fn failed_connects_back_off_and_passive_never_connects() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    assert!(f.handle(Event::ConnectFailed, t).is_empty());
    assert_eq!(f.state(), State::Active);
    assert_eq!(f.on_time(t + Duration::from_secs(1)), vec![Action::Connect]);

    let mut f = Fsm::new(Config {
        passive: true,
        ..cfg()
    });
    assert!(f.handle(Event::Start, t).is_empty());
    assert_eq!(f.state(), State::Active);
    f.handle(Event::Connected, t);
    f.handle(Event::Closed, t);
    assert!(f.on_time(t + MAX_RETRY).is_empty(), "waits for the peer");
}

#[test]
fn stop_sends_cease_and_stays_idle() {
    let (mut f, t) = established(false);
    let a = f.handle(Event::Stop(code::ADMIN_SHUTDOWN), t);
    assert!(
        a.contains(&Action::Send(Message::Notification(Notification::new(
            code::CEASE,
            code::ADMIN_SHUTDOWN
        ))))
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.next_deadline(), None);
    assert!(f.on_time(t + MAX_RETRY).is_empty());
}

#[test]
fn our_open_offers_what_is_configured() {
    let o = cfg().open();
    assert_eq!(o.families(), [Family::IPV4_UNICAST]);
    assert!(o.four_octet_as() && o.route_refresh());
    assert_eq!(
        o.graceful_restart()
            .map(|r| (r.restarting, r.restart_time, r.families.clone())),
        Some((false, 120, vec![(Family::IPV4_UNICAST, true)]))
    );
}
