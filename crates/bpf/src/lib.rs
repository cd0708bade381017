//! strait's eBPF datapath (Terway DataPath V2 / Cilium host routing).
//!
//! The programs are C under `bpf/` (one file per attach point, shared
//! headers by topic), compiled by clang in `build.rs` and embedded here.
//! [`Datapath`] loads them with aya, pins their maps by name under the
//! node's bpffs directory (so forwarding outlives the agent), and attaches
//! them through netlink cls_bpf at a fixed priority and handle, replacing
//! an earlier attachment atomically on restart or upgrade.
//!
//! [`tunnel`] loads the IP-in-IP programs on their own (the kernel
//! datapath has no other eBPF); [`vlan`] the 802.1Q tagging programs. [`maps`] has a typed wrapper for every map; [`reason`] names every
//! verdict code; [`testrun`] runs a program on a crafted packet with
//! BPF_PROG_TEST_RUN.

pub mod ct;
pub mod datapath;
pub mod lookup;
pub mod maps;
pub mod reason;
pub mod testrun;
pub mod tunnel;
pub mod upgrade;
pub mod vlan;

pub use datapath::{Datapath, DatapathError, Features};

/// An ELF object embedded with the alignment the ELF parser wants.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static LXC: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bpf_lxc.o")));
static NETDEV: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bpf_netdev.o")));
static SOCK: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bpf_sock.o")));
static TUNNEL: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bpf_tunnel.o")));

static VLAN: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bpf_vlan.o")));

pub fn vlan_object() -> &'static [u8] {
    &VLAN.0
}

pub fn tunnel_object() -> &'static [u8] {
    &TUNNEL.0
}

pub fn sock_object() -> &'static [u8] {
    &SOCK.0
}

pub fn lxc_object() -> &'static [u8] {
    &LXC.0
}

pub fn netdev_object() -> &'static [u8] {
    &NETDEV.0
}
