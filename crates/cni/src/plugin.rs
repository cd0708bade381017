//! The CNI verbs.

use crate::client;
use crate::env::{CniEnv, Command};
use crate::types::*;
use futures::TryFutureExt;
use ipnet::IpNet;
use std::net::IpAddr;
use strait_model::api::{Request, Response};
use strait_model::ipam::{Allocation, Attachment, PodRef};
use strait_model::naming::{
    format_mac, host_veth_mac, host_veth_name, pod_veth_mac, POD_GATEWAY_V4, ROUTE_PROTOCOL,
};
use strait_netlink::{block_on, in_netns, KernelError, Netlink, NetnsFile, Route, RouteKind};

fn kernel(what: &str) -> impl FnOnce(KernelError) -> CniError + '_ {
    move |e| CniError::new(ErrorCode::Kernel, format!("{what}: {e}"))
}

/// Opt-in phase timing on stderr (`STRAIT_CNI_TIMING=1`), for operators
/// asking "why is pod start slow?" and for the benchmark.
pub struct PhaseTimer {
    start: std::time::Instant,
    last: std::time::Instant,
    on: bool,
}

impl PhaseTimer {
    pub fn new() -> Self {
        let now = std::time::Instant::now();
        PhaseTimer {
            start: now,
            last: now,
            on: std::env::var_os("STRAIT_CNI_TIMING").is_some(),
        }
    }
    pub fn mark(&mut self, phase: &str) {
        if self.on {
            let now = std::time::Instant::now();
            eprintln!(
                "strait-cni timing: {phase:<24} {:>8.3} ms (total {:.3} ms)",
                (now - self.last).as_secs_f64() * 1e3,
                (now - self.start).as_secs_f64() * 1e3
            );
            self.last = now;
        }
    }
}

impl Default for PhaseTimer {
    fn default() -> Self {
        Self::new()
    }
}

/// Test hook: stop forever at a named step so crash tests can kill -9 the
/// plugin mid-ADD. Unset in production.
fn pause_point(step: &str) {
    if std::env::var("STRAIT_CNI_PAUSE_AT").as_deref() == Ok(step) {
        eprintln!("strait-cni: paused at {step} (STRAIT_CNI_PAUSE_AT)");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Run one verb. Returns the JSON to print on success.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    if env.command == Command::Version {
        // VERSION must answer whatever the config says (it may be absent).
        let v = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(serde_json::json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS}));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(env, &conf),
        Command::Del => del(env, &conf).map(|_| serde_json::Value::Null),
        Command::Check => check(env, &conf).map(|_| serde_json::Value::Null),
        Command::Status => status(&conf).map(|_| serde_json::Value::Null),
        Command::Gc => gc(&conf).map(|_| serde_json::Value::Null),
        Command::Version => unreachable!(),
    }
}

fn attachment(env: &CniEnv) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

fn require_1_1(conf: &NetConf, verb: &str) -> Result<(), CniError> {
    if version_at_least(&conf.cni_version, "1.1.0") {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "{verb} needs cniVersion 1.1.0 or later; the configuration says {}",
                conf.cni_version
            ),
        ))
    }
}

/// The one address the runtime asked for, if it asked: CNI_ARGS `IP=`,
/// `runtimeConfig.ips` or `args.cni.ips`, all of which must agree.
fn requested_ip(env: &CniEnv, conf: &NetConf) -> Result<Option<IpAddr>, CniError> {
    let mut all = env.requested_ips()?;
    all.extend(conf.requested_ips()?);
    all.sort();
    all.dedup();
    match all.as_slice() {
        [] => Ok(None),
        [ip @ IpAddr::V4(_)] => Ok(Some(*ip)),
        [IpAddr::V6(ip)] => Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("requested address {ip}: IPv6 pod addresses are not supported yet"),
        )),
        many => Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "more than one address requested ({}); strait gives a pod one address per interface",
                many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Open CNI_NETNS and make sure it is a pod's namespace, not the node's.
fn pod_netns(env: &CniEnv) -> Result<(NetnsFile, u64), CniError> {
    let bad = |m: String| CniError::new(ErrorCode::InvalidEnvironment, m);
    let ns = NetnsFile::open(env.netns.as_ref()).map_err(|e| bad(format!("CNI_NETNS: {e}")))?;
    if ns
        .is_current()
        .map_err(|e| bad(format!("CNI_NETNS: {e}")))?
    {
        return Err(bad(format!(
            "CNI_NETNS {} is the node's own network namespace, not a pod's; refusing to rename and re-address the node's interfaces",
            env.netns
        )));
    }
    let ino = ns.id().map_err(|e| bad(format!("CNI_NETNS: {e}")))?.ino;
    Ok((ns, ino))
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<serde_json::Value, CniError> {
    let mut t = PhaseTimer::new();
    // Every input is checked before the first side effect: a bad request
    // changes nothing.
    let prev = conf.prev()?;
    let requested = requested_ip(env, conf)?;
    let host_ports = conf.host_ports()?;
    let (ns, netns_ino) = pod_netns(env)?;
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let host_mac = host_veth_mac(&env.container_id, &env.ifname);
    // Ask for the address first and build the veth pair while the agent
    // works: the pair does not depend on the address.
    let pending = client::send(
        &conf.agent_socket,
        &Request::Allocate {
            attachment: attachment(env),
            pod: PodRef {
                namespace: env.pod_namespace(),
                name: env.pod_name(),
                uid: env.pod_uid(),
            },
            netns: env.netns.clone(),
            host_veth: host_veth.clone(),
            netns_ino: Some(netns_ino),
            requested,
            host_ports,
        },
    )?;
    t.mark("agent request sent");
    let wired = block_on(async {
        let host = Netlink::connect().map_err(kernel("netlink"))?;
        let out = wire(env, conf, &ns, &host, pending, &host_veth, host_mac, &mut t).await;
        if out.is_err() {
            // Leave no half-made pod: remove the link (and with it the pod
            // end and its routes); the address is given back below.
            let _ = host.delete_link(&host_veth).await;
        }
        out
    });
    let (allocation, wired) = match wired {
        Ok(v) => v,
        Err(e) => {
            let _ = client::call(
                &conf.agent_socket,
                &Request::Release {
                    attachment: attachment(env),
                },
            );
            return Err(e);
        }
    };
    let ip = allocation.ip;
    let (interfaces, ip_config, routes) = match wired {
        Wired::Macvlan(i, c, r) => (i, c, r),
        Wired::Veth(pod_mac) => (
            vec![
                Interface {
                    name: host_veth,
                    mac: format_mac(&host_mac),
                    mtu: Some(conf.mtu),
                    sandbox: None,
                },
                Interface {
                    name: env.ifname.clone(),
                    mac: format_mac(&pod_mac),
                    mtu: Some(conf.mtu),
                    sandbox: Some(env.netns.clone()),
                },
            ],
            IpConfig {
                version: (!version_at_least(&conf.cni_version, "1.0.0"))
                    .then(|| if ip.is_ipv4() { "4" } else { "6" }.to_string()),
                address: IpNet::from(ip).to_string(),
                gateway: Some(POD_GATEWAY_V4.into()),
                interface: Some(1),
            },
            vec![RouteConfig {
                dst: "0.0.0.0/0".into(),
                gw: Some(POD_GATEWAY_V4.into()),
            }],
        ),
    };
    let res = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces,
        ips: vec![ip_config],
        routes,
        dns: serde_json::json!({}),
    };
    let merged = res.merged_onto(prev);
    Ok(serde_json::to_value(merged).expect("results serialise"))
}

/// How ADD wired the pod.
enum Wired {
    /// A veth pair: the pod end's MAC.
    Veth(Vec<u8>),
    /// macvlan mode: the result's interfaces, address and routes.
    Macvlan(Vec<Interface>, IpConfig, Vec<RouteConfig>),
}

/// Create and configure both ends. Returns the allocation and how the pod
/// was wired.
#[allow(clippy::too_many_arguments)]
async fn wire(
    env: &CniEnv,
    conf: &NetConf,
    ns: &NetnsFile,
    host: &Netlink,
    mut pending: client::Pending,
    host_veth: &str,
    host_mac: [u8; 6],
    t: &mut PhaseTimer,
) -> Result<(Allocation, Wired), CniError> {
    let pod_mac = pod_veth_mac(&env.container_id, &env.ifname);
    // One lookup after creation gives both the host end's index and, from
    // IFLA_LINK, the pod end's index inside the pod namespace.
    let host_link = match create_host_end(env, conf, ns, host, host_veth, host_mac, pod_mac).await {
        Ok(()) => host
            .link(host_veth)
            .await
            .map_err(kernel("read host veth"))
            .and_then(|l| {
                l.ok_or_else(|| {
                    CniError::new(ErrorCode::Kernel, format!("host veth {host_veth} vanished"))
                })
            }),
        Err(e) => Err(e),
    };
    t.mark("create veth");
    pause_point("after-veth");
    // Always collect the agent's answer before returning, even when the link
    // failed: a Release sent while the Allocate is still in flight could
    // overtake it and leak the address.
    let resp = pending.wait();
    let host_link = host_link?;
    let resp = resp?;
    let Response::Allocated {
        allocation,
        macvlan,
        ..
    } = resp
    else {
        return Err(CniError::new(
            ErrorCode::IoFailure,
            format!("unexpected answer from the agent: {resp:?}"),
        ));
    };
    t.mark("agent reply");
    if let Some(w) = macvlan {
        // macvlan mode: the veth pair made while the agent worked is not
        // this pod's shape.
        host.delete_link(host_veth)
            .await
            .map_err(kernel("remove the veth pair"))?;
        let out = crate::macvlan::wire(env, conf, ns, host, &allocation, &w).await;
        if out.is_err() {
            let _ = crate::macvlan::del(host, env).await;
        }
        let (i, c, r) = out?;
        t.mark("macvlan wired");
        programmed(&mut pending, &allocation)?;
        t.mark("agent programmed");
        return Ok((allocation, Wired::Macvlan(i, c, r)));
    }
    pause_point("after-allocate");
    let IpAddr::V4(_) = allocation.ip else {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "IPv6 pod addresses are not supported yet",
        ));
    };
    let ip = allocation.ip;
    let eth = host_link.peer_index.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!("host veth {host_veth} reports no peer"),
        )
    })?;
    let gw: IpAddr = POD_GATEWAY_V4.into();
    let pod_route = |dst: IpNet, via: Option<IpAddr>| Route {
        dst,
        via,
        oif: Some(eth),
        kind: RouteKind::Unicast,
        protocol: ROUTE_PROTOCOL,
        table: strait_netlink::MAIN_TABLE,
        onlink: false,
        multipath: vec![],
    };
    let (to_gw, default) = (
        pod_route(IpNet::from(gw), None),
        pod_route("0.0.0.0/0".parse().unwrap(), Some(gw)),
    );
    let pod = Netlink::connect_in(ns).map_err(kernel("netlink in pod namespace"))?;
    // Pipelined on one socket: each request is sent when first polled, in
    // this order, and the kernel applies them in the order they arrive.
    futures::try_join!(
        pod.set_up(LOOPBACK_IFINDEX).map_err(kernel("set lo up")),
        pod.set_up(eth).map_err(kernel("set pod interface up")),
        pod.add_address(eth, ip, 32)
            .map_err(kernel("add pod address")),
        pod.replace_permanent_neighbour(eth, gw, &host_mac)
            .map_err(kernel("add gateway neighbour")),
        pod.replace_route(&to_gw)
            .map_err(kernel("add route to the gateway")),
        pod.replace_route(&default)
            .map_err(kernel("add default route")),
    )?;
    t.mark("configure pod side");
    host.replace_route(&host_route(ip, host_link.index))
        .await
        .map_err(kernel("add host route to pod"))?;
    t.mark("host route");
    programmed(&mut pending, &allocation)?;
    t.mark("agent programmed");
    Ok((allocation, Wired::Veth(pod_mac.to_vec())))
}

/// Return only once the agent has programmed the pod (its spoof check,
/// service translation): before that, its first packets would be treated
/// as a stranger's.
fn programmed(pending: &mut client::Pending, allocation: &Allocation) -> Result<(), CniError> {
    pending
        .ask(&Request::Wired {
            attachment: allocation.attachment.clone(),
        })
        .map_err(|e| CniError::new(e.code, format!("pod wired, but not programmed: {}", e.msg)))?;
    Ok(())
}

/// `lo` is always the first device of a network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

async fn create_host_end(
    env: &CniEnv,
    conf: &NetConf,
    ns: &NetnsFile,
    host: &Netlink,
    host_veth: &str,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
) -> Result<(), CniError> {
    let create = || {
        host.create_veth(
            host_veth,
            host_mac,
            &env.ifname,
            pod_mac,
            ns.raw_fd(),
            conf.mtu,
        )
    };
    match create().await {
        Ok(()) => Ok(()),
        // A leftover from an earlier ADD of this container that crashed
        // midway has the same deterministic name: remove it, try again.
        Err(e)
            if e.is_exists()
                && host
                    .delete_link(host_veth)
                    .await
                    .map_err(kernel("remove stale host veth"))? =>
        {
            create().await.map_err(kernel("create veth pair"))
        }
        Err(e) if e.is_exists() => Err(CniError::new(
            ErrorCode::Kernel,
            format!(
                "cannot create the pod interface: an interface named {} already exists in {}",
                env.ifname, env.netns
            ),
        )),
        Err(e) => Err(kernel("create veth pair")(e)),
    }
}

pub fn host_route(ip: IpAddr, host_index: u32) -> Route {
    Route {
        dst: IpNet::from(ip),
        via: None,
        oif: Some(host_index),
        kind: RouteKind::Unicast,
        protocol: ROUTE_PROTOCOL,
        table: strait_netlink::MAIN_TABLE,
        onlink: false,
        multipath: vec![],
    }
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    // Interface first, address second: the address must not be handed out
    // while a link still routes to it.
    block_on(async {
        let nl = Netlink::connect().map_err(kernel("netlink"))?;
        if !nl
            .delete_link(&host_veth)
            .await
            .map_err(kernel("delete host veth"))?
        {
            // No veth pair: a macvlan pod's, or already deleted.
            crate::macvlan::del(&nl, env).await?;
        }
        Ok::<(), CniError>(())
    })?;
    client::call(
        &conf.agent_socket,
        &Request::Release {
            attachment: attachment(env),
        },
    )?;
    Ok(())
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev: CniResult = match conf.prev()? {
        Some(p) => p,
        None => {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "CHECK needs prevResult in the network configuration",
            ))
        }
    };
    let Response::Found { allocation } = client::call(
        &conf.agent_socket,
        &Request::Get {
            attachment: attachment(env),
        },
    )?
    else {
        return Err(CniError::new(
            ErrorCode::IoFailure,
            "unexpected answer from the agent",
        ));
    };
    let mut problems: Vec<String> = vec![];
    let Some(alloc) = allocation else {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "the agent has no address for container {} interface {}",
                env.container_id, env.ifname
            ),
        ));
    };
    let want = IpNet::from(alloc.ip);
    if !prev
        .ips
        .iter()
        .any(|i| i.address.parse::<IpNet>().ok().map(|n| n.addr()) == Some(alloc.ip))
    {
        problems.push(format!(
            "prevResult does not list the agent's address {want}"
        ));
    }
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let host_mac = host_veth_mac(&env.container_id, &env.ifname);
    let ns = NetnsFile::open(env.netns.as_ref())
        .map_err(|e| CniError::new(ErrorCode::UnknownContainer, format!("CNI_NETNS: {e}")))?;
    if strait_model::naming::is_svc_veth(&alloc.host_veth) {
        let gw = prev.ips.first().and_then(|i| i.gateway);
        problems.extend(block_on(async {
            let nl = Netlink::connect().map_err(kernel("netlink"))?;
            crate::macvlan::check(&nl, &ns, env, alloc.ip, gw).await
        })?);
        return check_verdict(problems);
    }
    block_on(async {
        let nl = Netlink::connect().map_err(kernel("netlink"))?;
        match nl
            .link(&host_veth)
            .await
            .map_err(kernel("read host veth"))?
        {
            None => problems.push(format!("host veth {host_veth} is missing")),
            Some(l) => {
                if !l.up {
                    problems.push(format!("host veth {host_veth} is down"));
                }
                // In main, or in the overlay modes' pod table (the agent
                // moves it there).
                let mut routes = vec![];
                for table in [
                    strait_netlink::MAIN_TABLE,
                    strait_model::overlay::LOCAL_POD_TABLE,
                ] {
                    routes.extend(
                        nl.routes_of(table, true, strait_model::naming::ROUTE_PROTOCOL)
                            .await
                            .map_err(kernel("dump routes"))?,
                    );
                }
                if !routes
                    .iter()
                    .any(|r| r.dst == want && r.oif == Some(l.index))
                {
                    problems.push(format!("host route {want} dev {host_veth} is missing"));
                }
            }
        }
        Ok::<(), CniError>(())
    })?;
    let ifname = env.ifname.clone();
    let pod_problems = in_netns(&ns, move || {
        block_on(async move {
            let mut p = vec![];
            let nl = Netlink::connect().map_err(kernel("netlink in pod namespace"))?;
            let Some(eth) = nl
                .link(&ifname)
                .await
                .map_err(kernel("read pod interface"))?
            else {
                p.push(format!("{ifname} is missing in the pod namespace"));
                return Ok::<_, CniError>(p);
            };
            if !eth.up {
                p.push(format!("{ifname} is down"));
            }
            let addrs = nl
                .addresses(eth.index)
                .await
                .map_err(kernel("dump addresses"))?;
            if !addrs.contains(&want) {
                p.push(format!("{ifname} lacks address {want} (has {addrs:?})"));
            }
            let gw: IpAddr = POD_GATEWAY_V4.into();
            let routes = nl.routes(true).await.map_err(kernel("dump routes"))?;
            if !routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.via == Some(gw) && r.oif == Some(eth.index))
            {
                p.push(format!("default route via {gw} dev {ifname} is missing"));
            }
            let neigh = nl
                .permanent_neighbours(eth.index)
                .await
                .map_err(kernel("dump neighbours"))?;
            if !neigh
                .iter()
                .any(|(ip, mac)| *ip == gw && mac.as_slice() == host_mac)
            {
                p.push(format!(
                    "permanent neighbour {gw} lladdr {} is missing",
                    format_mac(&host_mac)
                ));
            }
            Ok(p)
        })
    })
    .map_err(kernel("enter pod namespace"))??;
    problems.extend(pod_problems);
    check_verdict(problems)
}

fn check_verdict(problems: Vec<String>) -> Result<(), CniError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::CheckFailed,
            format!("pod network is not as ADD left it: {}", problems.join("; ")),
        ))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    require_1_1(conf, "STATUS")?;
    match client::call(&conf.agent_socket, &Request::Status) {
        Ok(Response::Status(s)) if s.ready => Ok(()),
        Ok(Response::Status(s)) => Err(CniError::new(
            ErrorCode::PluginNotAvailable,
            format!(
                "strait agent on node {} is not ready: {}",
                s.node,
                s.reason.unwrap_or_default()
            ),
        )),
        Ok(other) => Err(CniError::new(
            ErrorCode::IoFailure,
            format!("unexpected answer from the agent: {other:?}"),
        )),
        Err(e) => Err(CniError::new(ErrorCode::PluginNotAvailable, e.msg)),
    }
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    require_1_1(conf, "GC")?;
    // Without the list, "everything else is stale" would be every pod on
    // the node. Only an explicit (possibly empty) list means that.
    let Some(valid) = conf.valid_attachments.clone() else {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "GC needs cni.dev/valid-attachments (the attachments the runtime still knows); without it nothing is collected",
        ));
    };
    let valid = valid
        .into_iter()
        .map(|a| Attachment {
            container_id: a.container_id,
            ifname: a.ifname,
        })
        .collect();
    client::call(&conf.agent_socket, &Request::Gc { valid })?;
    Ok(())
}
