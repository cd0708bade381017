//! `strait lab hops`: which interface sees which packet. Raw AF_PACKET
//! captures run on every interface along a path (pod eth0s, host veths,
//! node uplinks) while one TCP request/response crosses it; the table says,
//! for the request and the reply separately, where each was seen. This is
//! how the seeds' observations ("the destination's host veth sees only the
//! reply") are reproduced.

use crate::run::netns_path;
use crate::state::LabState;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_model::lab::LabPlan;
use strait_netlink::{in_netns, NetnsFile};

/// One capture point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Human label: "a1 eth0", "a1 host veth", "node-a eth0".
    pub label: String,
    pub netns: String,
    pub iface: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub request: usize,
    pub reply: usize,
}

#[derive(Debug)]
pub struct HopReport {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub answered_by: String,
    pub hops: Vec<(Hop, Seen)>,
}

impl HopReport {
    pub fn seen(&self, label: &str) -> &Seen {
        &self
            .hops
            .iter()
            .find(|(h, _)| h.label == label)
            .unwrap_or_else(|| panic!("no hop {label}"))
            .1
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{} -> {} (answered by {})\n\n",
            self.src, self.dst, self.answered_by
        );
        out.push_str(&format!(
            "{:<22} {:<18} {:<10} {}\n",
            "HOP", "INTERFACE", "REQUEST", "REPLY"
        ));
        let mark = |n: usize| {
            if n > 0 {
                format!("seen ({n})")
            } else {
                "-".into()
            }
        };
        for (h, s) in &self.hops {
            out.push_str(&format!(
                "{:<22} {:<18} {:<10} {}\n",
                h.label,
                h.iface,
                mark(s.request),
                mark(s.reply)
            ));
        }
        let path = |f: &dyn Fn(&Seen) -> bool| {
            self.hops
                .iter()
                .filter(|(_, s)| f(s))
                .map(|(h, _)| h.label.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        out.push_str(&format!("\nrequest: {}\n", path(&|s| s.request > 0)));
        let mut reply: Vec<&str> = self
            .hops
            .iter()
            .filter(|(_, s)| s.reply > 0)
            .map(|(h, _)| h.label.as_str())
            .collect();
        reply.reverse();
        out.push_str(&format!("reply:   {}\n", reply.join(" -> ")));
        out
    }
}

/// The capture points from `src` (a pod or node) to the pod `dst`, in path
/// order.
pub fn path(
    st: &LabState,
    src: &str,
    dst: &str,
) -> anyhow::Result<(Vec<Hop>, Ipv4Addr, Ipv4Addr, String)> {
    let plan: &LabPlan = &st.plan;
    let dpod = plan
        .pod(dst)
        .with_context(|| format!("{dst} is not a pod of lab {}", plan.name))?;
    let dnode = plan.node(&dpod.node).unwrap();
    let dip = v4(st.pod_ip(dpod).context("destination has no address")?)?;
    let host_veth = |p: &strait_model::lab::PodPlan| {
        strait_model::naming::host_veth_name(&st.container_id(p), "eth0")
    };
    let mut hops = vec![];
    let (sip, snode) = if let Some(spod) = plan.pod(src) {
        let snode = plan.node(&spod.node).unwrap();
        hops.push(Hop {
            label: format!("{} eth0", spod.name),
            netns: spod.netns.clone(),
            iface: "eth0".into(),
        });
        hops.push(Hop {
            label: format!("{} host veth", spod.name),
            netns: snode.netns.clone(),
            iface: host_veth(spod),
        });
        (
            v4(st.pod_ip(spod).context("source has no address")?)?,
            snode,
        )
    } else if let Some(n) = plan.node(src) {
        (n.ip, n)
    } else {
        anyhow::bail!("{src} is neither a pod nor a node of lab {}", plan.name);
    };
    hops.push(Hop {
        label: format!("{} eth0", snode.name),
        netns: snode.netns.clone(),
        iface: "eth0".into(),
    });
    if dnode.name != snode.name {
        hops.push(Hop {
            label: format!("{} eth0", dnode.name),
            netns: dnode.netns.clone(),
            iface: "eth0".into(),
        });
    }
    hops.push(Hop {
        label: format!("{} host veth", dpod.name),
        netns: dnode.netns.clone(),
        iface: host_veth(dpod),
    });
    hops.push(Hop {
        label: format!("{} eth0", dpod.name),
        netns: dpod.netns.clone(),
        iface: "eth0".into(),
    });
    Ok((hops, sip, dip, dpod.name.clone()))
}

fn v4(ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => anyhow::bail!("hop captures are IPv4-only for now"),
    }
}

/// Count request (src->dst) and reply (dst->src) IPv4 packets seen on one
/// interface until `stop`.
fn capture(
    ns: &NetnsFile,
    iface: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ready: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Seen> {
    let iface = iface.to_string();
    in_netns(ns, move || -> anyhow::Result<Seen> {
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
            ready.store(true, Ordering::SeqCst);
            let mut seen = Seen::default();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                if n < 34 || buf[12..14] != [0x08, 0x00] {
                    continue;
                }
                let s = Ipv4Addr::new(buf[26], buf[27], buf[28], buf[29]);
                let d = Ipv4Addr::new(buf[30], buf[31], buf[32], buf[33]);
                if (s, d) == (src, dst) {
                    seen.request += 1;
                } else if (s, d) == (dst, src) {
                    seen.reply += 1;
                }
            }
            libc::close(fd);
            Ok(seen)
        }
    })?
}

/// Capture along the path while one TCP request/response crosses it.
pub fn trace(st: &LabState, src: &str, dst: &str) -> anyhow::Result<HopReport> {
    let (hops, sip, dip, _) = path(st, src, dst)?;
    let src_ns = crate::run::target_netns(&st.plan, src)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = vec![];
    let mut readies = vec![];
    for h in &hops {
        let ns = NetnsFile::open(&netns_path(&h.netns))?;
        let (stop, ready) = (stop.clone(), Arc::new(AtomicBool::new(false)));
        readies.push(ready.clone());
        let iface = h.iface.clone();
        handles.push(std::thread::spawn(move || {
            capture(&ns, &iface, sip, dip, &ready, &stop)
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !readies.iter().all(|r| r.load(Ordering::SeqCst)) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let probe = crate::probe::probe(
        &netns_path(&src_ns),
        SocketAddr::new(dip.into(), crate::echo::ECHO_PORT),
        false,
        Duration::from_secs(2),
    );
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let mut out = vec![];
    for (h, t) in hops.into_iter().zip(handles) {
        let seen = t
            .join()
            .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
        out.push((h, seen));
    }
    let probe = probe?;
    Ok(HopReport {
        src: sip,
        dst: dip,
        answered_by: probe.answered_by,
        hops: out,
    })
}
