//! BPF_PROG_TEST_RUN: run a loaded program on a crafted packet and get its
//! verdict, without any device or traffic.

use std::os::fd::{AsFd, AsRawFd};

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Size of `struct __sk_buff`, and the offsets of the fields a test may set.
const SKB_CTX_SIZE: usize = 192;
const SKB_INGRESS_IFINDEX: usize = 36;

/// Run `prog` once on `packet` as if it had arrived on `ingress_ifindex`.
/// Returns the program's return code and the packet as it left the program.
pub fn run_skb(
    prog: &impl AsFd,
    packet: &[u8],
    ingress_ifindex: u32,
) -> std::io::Result<(u32, Vec<u8>)> {
    run_skb_repeat(prog, packet, ingress_ifindex, 1).map(|(rc, out, _)| (rc, out))
}

/// Run `prog` `repeat` times in the kernel; also returns the mean time per
/// run in nanoseconds, as the kernel measured it (the program's own cost).
pub fn run_skb_repeat(
    prog: &impl AsFd,
    packet: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> std::io::Result<(u32, Vec<u8>, u32)> {
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4]
        .copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: SKB_CTX_SIZE as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr points at valid buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out, attr.duration))
}
