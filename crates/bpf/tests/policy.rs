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

#[test]
fn isolation_admission_established_flows_and_forgetting() {
    if !root() {
        return;
    }
    let mut l = load("policy", true);
    // Not isolated: passes, and the flow is remembered.
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40000, POD_B, 80),
        IF_A,
    );
    assert_ne!(rc, TC_ACT_SHOT);
    assert_eq!(ct_len(&l), 1);

    // B isolated for ingress, nothing admitted: a new connection is dropped
    // with the ingress reason; the earlier one still passes.
    isolate(&l, POD_B, maps::POLICY_F_INGRESS);
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40001, POD_B, 80),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_POLICY_INGRESS), 1);
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40000, POD_B, 80),
        IF_A,
    );
    assert_ne!(rc, TC_ACT_SHOT, "established before the isolation");

    // An entry for A on TCP 80 admits it; not on 81.
    let mut lpm: PolicyMap = maps::open(&l.dir, "strait_policy").unwrap();
    let k = PolicyKey {
        ep: AddrKey::from(std::net::IpAddr::V4(POD_B)).addr,
        dir: 0,
        proto: 6,
        dport: 80u16.to_be(),
        peer: AddrKey::from(std::net::IpAddr::V4(POD_A)).addr,
    };
    lpm.insert(
        &Key::new(maps::POLICY_FIXED_BITS + 128, k),
        PolicyVal {
            policy: 7,
            rule: 0,
            _pad: 0,
        },
        0,
    )
    .unwrap();
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40002, POD_B, 80),
        IF_A,
    );
    assert_ne!(rc, TC_ACT_SHOT, "admitted");
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40003, POD_B, 81),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_SHOT, "another port is not");

    // A isolated for both directions with nothing admitted: B's reply on
    // the admitted connection still reaches it; a new connection from B
    // does not (egress of B is open, ingress of A is not).
    isolate(&l, POD_A, maps::POLICY_F_INGRESS | maps::POLICY_F_EGRESS);
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_B, 80, POD_A, 40002),
        IF_B,
    );
    assert_ne!(rc, TC_ACT_SHOT, "a reply");
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_B, 5000, POD_A, 22),
        IF_B,
    );
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_POLICY_INGRESS), 3);
    // A's own new connection: its egress.
    let (rc, _) = run(
        &mut l,
        Prog::FromContainer,
        &tcp(POD_A, 40004, POD_B, 80),
        IF_A,
    );
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(count(&l, DROP_POLICY_EGRESS), 1);

    // B goes: every flow it took part in is forgotten.
    let before = ct_len(&l);
    assert!(before >= 2);
    let gone = maps::forget_policy_flows(&l.dir, &[maps::ip_key(POD_B)]).unwrap();
    assert_eq!(gone, before);
    assert_eq!(ct_len(&l), 0);
}
