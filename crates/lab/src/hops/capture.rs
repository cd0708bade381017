//! The captures behind `lab hops`: raw AF_PACKET sockets on every hop
//! while one request/response crosses, each frame's (inner) addresses,
//! VXLAN and IP-in-IP opened, VLAN tags from the capture's aux data.

use super::{Hop, Outer};
use crate::run::netns_path;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_netlink::{in_netns, NetnsFile};

/// (source, destination).
pub(crate) type Pair = (Ipv4Addr, Ipv4Addr);
pub(crate) type Pairs = std::collections::HashMap<Pair, usize>;

/// One interface's capture: packets by inner (source, destination), and
/// for those that came inside VXLAN, their outer pair.
#[derive(Default)]
pub(crate) struct Captured {
    pub(crate) pairs: Pairs,
    pub(super) outer: std::collections::HashMap<Pair, Outer>,
    /// The VLAN tag a pair was seen with (from the capture's aux data: the
    /// kernel keeps tags out of the frame bytes).
    pub(crate) vlans: std::collections::HashMap<Pair, std::collections::BTreeSet<u16>>,
}

/// The IPv4 (source, destination) of an Ethernet frame, and, when it is
/// a VXLAN frame (UDP to 8472) or IP-in-IP (protocol 4), those of the packet
/// inside it.
fn addresses(f: &[u8]) -> Option<(Pair, Option<Outer>)> {
    let ip = |b: &[u8]| -> Option<Pair> {
        if b.len() < 34 || b[12..14] != [0x08, 0x00] {
            return None;
        }
        Some((
            Ipv4Addr::new(b[26], b[27], b[28], b[29]),
            Ipv4Addr::new(b[30], b[31], b[32], b[33]),
        ))
    };
    let outer = ip(f)?;
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let is_vxlan = f[23] == 17
        && f.len() >= udp + 16
        && u16::from_be_bytes([f[udp + 2], f[udp + 3]]) == strait_model::overlay::VXLAN_PORT;
    let wrap = |encap| Outer {
        encap,
        src: outer.0,
        dst: outer.1,
    };
    if is_vxlan {
        if let Some(inner) = ip(&f[udp + 16..]) {
            return Some((inner, Some(wrap("vxlan"))));
        }
    }
    // IP-in-IP: the inner header follows the outer one (no Ethernet header
    // of its own; give it the outer frame's so `ip` reads it the same way).
    if f[23] == 4 && f.len() >= udp + 20 {
        let mut inner = f[..14].to_vec();
        inner.extend_from_slice(&f[udp..]);
        if let Some(pair) = ip(&inner) {
            return Some((pair, Some(wrap("ipip"))));
        }
    }
    Some((outer, None))
}

/// Count IPv4 packets by (source, destination) seen on one interface
/// until `stop`.
fn capture(
    ns: &NetnsFile,
    iface: &str,
    ready: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Captured> {
    let iface = iface.to_string();
    in_netns(ns, move || -> anyhow::Result<Captured> {
        let cname = std::ffi::CString::new(iface.clone())?;
        // SAFETY: plain libc calls with valid arguments; the fd is closed below.
        unsafe {
            let idx = libc::if_nametoindex(cname.as_ptr());
            anyhow::ensure!(idx != 0, "no interface {iface}");
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
            anyhow::ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = idx as i32;
            let r = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if r != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                anyhow::bail!("bind to {iface}: {e}");
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            // VLAN tags travel beside the frame (skb->vlan_tci), not in it:
            // the aux data of each frame carries them.
            let on: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
            ready.store(true, Ordering::SeqCst);
            let mut seen = Captured::default();
            let mut buf = [0u8; 2048];
            let mut control = [0u64; 16];
            while !stop.load(Ordering::SeqCst) {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = std::mem::size_of_val(&control);
                let n = libc::recvmsg(fd, &mut msg, 0);
                if n < 34 {
                    continue;
                }
                let Some((pair, outer)) = addresses(&buf[..n as usize]) else {
                    continue;
                };
                *seen.pairs.entry(pair).or_default() += 1;
                if let Some(o) = outer {
                    seen.outer.insert(pair, o);
                }
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux = std::ptr::read_unaligned(
                            libc::CMSG_DATA(c) as *const libc::tpacket_auxdata
                        );
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                            seen.vlans
                                .entry(pair)
                                .or_default()
                                .insert(aux.tp_vlan_tci & 0x0fff);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            libc::close(fd);
            Ok(seen)
        }
    })?
}

/// Capture on `hops` while `traffic` runs.
pub(crate) fn capture_during<T>(
    hops: &[Hop],
    traffic: impl FnOnce() -> T,
) -> anyhow::Result<(Vec<Captured>, T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = vec![];
    let mut readies = vec![];
    for h in hops {
        let ns = NetnsFile::open(&netns_path(&h.netns))?;
        let (stop, ready) = (stop.clone(), Arc::new(AtomicBool::new(false)));
        readies.push(ready.clone());
        let iface = h.iface.clone();
        handles.push(std::thread::spawn(move || {
            capture(&ns, &iface, &ready, &stop)
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !readies.iter().all(|r| r.load(Ordering::SeqCst)) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = traffic();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let mut pairs = vec![];
    for t in handles {
        pairs.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("capture thread panicked"))??,
        );
    }
    Ok((pairs, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0]);
        f.extend(src);
        f.extend(dst);
        f.extend(payload);
        f
    }

    #[test]
    fn vxlan_frames_are_opened() {
        let inner = ipv4([198, 19, 0, 1], [198, 19, 1, 1], 6, &[0; 20]);
        let mut udp = vec![0x12, 0x34];
        udp.extend(strait_model::overlay::VXLAN_PORT.to_be_bytes());
        udp.extend([0, 0, 0, 0]);
        udp.extend([0x08, 0, 0, 0, 0, 0, 20, 0]);
        udp.extend(&inner);
        let outer = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &udp);
        let a = |x: [u8; 4]| Ipv4Addr::from(x);
        assert_eq!(
            addresses(&outer),
            Some((
                (a([198, 19, 0, 1]), a([198, 19, 1, 1])),
                Some(Outer {
                    encap: "vxlan",
                    src: a([198, 18, 0, 1]),
                    dst: a([198, 18, 0, 2])
                })
            ))
        );
        assert_eq!(
            addresses(&inner),
            Some(((a([198, 19, 0, 1]), a([198, 19, 1, 1])), None))
        );
        // UDP to another port is not opened; ARP is not IPv4.
        let mut dns = udp.clone();
        dns[2..4].copy_from_slice(&53u16.to_be_bytes());
        let plain = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &dns);
        assert_eq!(addresses(&plain).unwrap().1, None);
        let mut arp = inner.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(addresses(&arp), None);
    }

    #[test]
    fn ipip_packets_are_opened() {
        let inner = ipv4([198, 19, 0, 1], [198, 19, 1, 1], 6, &[0; 20]);
        // The inner IPv4 header follows the outer one directly.
        let outer = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 4, &inner[14..]);
        let a = |x: [u8; 4]| Ipv4Addr::from(x);
        assert_eq!(
            addresses(&outer),
            Some((
                (a([198, 19, 0, 1]), a([198, 19, 1, 1])),
                Some(Outer {
                    encap: "ipip",
                    src: a([198, 18, 0, 1]),
                    dst: a([198, 18, 0, 2])
                })
            ))
        );
        // Protocol 4 with a truncated inner header is left as it is.
        let short = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 4, &inner[14..20]);
        assert_eq!(addresses(&short).unwrap().1, None);
    }
}
