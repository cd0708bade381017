//! NetworkPolicy in the programs, with BPF_PROG_TEST_RUN: isolation drops
//! a new connection with the policy's reason and id, an LPM entry admits
//! it, replies and connections from before the isolation pass through
//! strait_policy_ct, and a gone pod's flows are forgotten. Needs root.

mod common;
use aya::maps::lpm_trie::Key;
use common::*;
use strait_bpf::datapath::Prog;
use strait_bpf::maps::{
    self, AddrKey, PolicyCtMap, PolicyEp, PolicyEpMap, PolicyKey, PolicyMap, PolicyVal,
};
use strait_bpf::reason::*;

fn isolate(l: &Loaded, pod: std::net::Ipv4Addr, flags: u32) {
    let mut eps: PolicyEpMap = maps::open(&l.dir, "strait_policy_ep").unwrap();
    let ep = PolicyEp {
        flags,
        ingress_by: 42,
        egress_by: 43,
        _pad: 0,
    };
    eps.insert(AddrKey::from(std::net::IpAddr::V4(pod)), ep, 0)
        .unwrap();
}

fn ct_len(l: &Loaded) -> usize {
    let ct: PolicyCtMap = maps::open(&l.dir, "strait_policy_ct").unwrap();
    ct.keys().count()
}

/// One TCP packet through from-container on `ifindex`: its verdict.
fn send(
    l: &mut Loaded,
    from: (std::net::Ipv4Addr, u16),
    to: (std::net::Ipv4Addr, u16),
    ifindex: u32,
) -> u32 {
    run(
        l,
        Prog::FromContainer,
        &tcp(from.0, from.1, to.0, to.1),
        ifindex,
    )
    .0
}

#[test]
fn isolation_admission_established_flows_and_forgetting() {
    if !root() {
        return;
    }
    let mut l = load("policy", true);
    // Not isolated: both pass and are remembered; B answers only one.
    assert_ne!(send(&mut l, (POD_A, 40000), (POD_B, 80), IF_A), TC_ACT_SHOT);
    assert_ne!(send(&mut l, (POD_A, 40009), (POD_B, 80), IF_A), TC_ACT_SHOT);
    assert_ne!(send(&mut l, (POD_B, 80), (POD_A, 40000), IF_B), TC_ACT_SHOT);
    assert_eq!(ct_len(&l), 2);

    // B isolated for ingress, nothing admitted: a new connection is dropped
    // with the ingress reason; the answered one still passes; the one B
    // never answered is judged again, and dropped.
    isolate(&l, POD_B, maps::POLICY_F_INGRESS);
    assert_eq!(send(&mut l, (POD_A, 40001), (POD_B, 80), IF_A), TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_POLICY_INGRESS), 1);
    assert_ne!(
        send(&mut l, (POD_A, 40000), (POD_B, 80), IF_A),
        TC_ACT_SHOT,
        "established before the isolation"
    );
    assert_eq!(
        send(&mut l, (POD_A, 40009), (POD_B, 80), IF_A),
        TC_ACT_SHOT,
        "never answered: not established"
    );

    // An entry for A on TCP 80 admits it; not on 81.
    let mut lpm: PolicyMap = maps::open(&l.dir, "strait_policy").unwrap();
    let k = PolicyKey {
        ep: AddrKey::from(std::net::IpAddr::V4(POD_B)).addr,
        dir: 0,
        proto: 6,
        dport: 80u16.to_be(),
        peer: AddrKey::from(std::net::IpAddr::V4(POD_A)).addr,
    };
    let v = PolicyVal {
        policy: 7,
        rule: 0,
        _pad: 0,
    };
    lpm.insert(&Key::new(maps::POLICY_FIXED_BITS + 128, k), v, 0)
        .unwrap();
    assert_ne!(
        send(&mut l, (POD_A, 40002), (POD_B, 80), IF_A),
        TC_ACT_SHOT,
        "admitted"
    );
    assert_eq!(
        send(&mut l, (POD_A, 40003), (POD_B, 81), IF_A),
        TC_ACT_SHOT,
        "another port"
    );

    // A isolated both ways with nothing admitted: B's reply on the admitted
    // connection still reaches it; a new connection from B does not.
    isolate(&l, POD_A, maps::POLICY_F_INGRESS | maps::POLICY_F_EGRESS);
    assert_ne!(
        send(&mut l, (POD_B, 80), (POD_A, 40002), IF_B),
        TC_ACT_SHOT,
        "a reply"
    );
    assert_eq!(send(&mut l, (POD_B, 5000), (POD_A, 22), IF_B), TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_POLICY_INGRESS), 4);
    // A's own new connection: its egress.
    assert_eq!(send(&mut l, (POD_A, 40004), (POD_B, 80), IF_A), TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_POLICY_EGRESS), 1);

    // B goes: every flow it took part in is forgotten.
    let before = ct_len(&l);
    assert!(before >= 2);
    let gone = maps::forget_policy_flows(&l.dir, &[maps::ip_key(POD_B)]).unwrap();
    assert_eq!(gone, before);
    assert_eq!(ct_len(&l), 0);
}
