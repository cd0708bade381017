//! Assertions on `lab hops` reports shared by the mode tests.

use strait_lab::hops::HopReport;

/// Nothing crossed `hop` either way.
pub fn silent(h: &HopReport, hop: &str) {
    let s = h.seen(hop);
    assert_eq!((s.request, s.reply), (0, 0), "{hop}: {}", h.table());
}

/// The request and the reply both crossed `hop`.
pub fn both_ways(h: &HopReport, hop: &str) {
    let s = h.seen(hop);
    assert!(s.request > 0 && s.reply > 0, "{hop}: {}", h.table());
}

/// The pods' host veths: both directions through the host stack; with
/// bpf_redirect_peer the request enters the pod past its host veth
/// (`dst`) and the reply past the client's (`src`).
pub fn host_veths(h: &HopReport, src: &str, dst: &str, ebpf: bool) {
    let (s, d) = (
        h.seen(&format!("{src} host veth")),
        h.seen(&format!("{dst} host veth")),
    );
    assert!(s.request > 0 && d.reply > 0, "{}", h.table());
    if ebpf {
        assert_eq!((s.reply, d.request), (0, 0), "skipped: {}", h.table());
    } else {
        assert!(s.reply > 0 && d.request > 0, "{}", h.table());
    }
}
