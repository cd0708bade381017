//! macvlan mode (Bifrost, seed 001 "MACVLAN模式"): the pod's eth0 is a
//! macvlan (bridge mode) on its VLAN's port, which the agent made before it
//! answered; the address is one of the VLAN's subnet and the default route
//! goes to the VLAN's gateway, so the switch and the gateway carry the
//! pod's traffic and the node's stack never sees it. A second pair, the
//! service veth (host `bifrXXX`, pod `veth0`, as Bifrost names them), routes
//! the service CIDR and the node's own address through the host, where
//! strait's service backend translates (macvlan traffic never touches the
//! host's netfilter or tc); the host reaches the pod through it too.

use crate::types::*;
use futures::TryFutureExt;
use ipnet::IpNet;
use std::net::IpAddr;
use strait_model::api::MacvlanWiring;
use strait_model::ipam::Allocation;
use strait_model::naming::{
    host_veth_mac, pod_veth_mac, svc_veth_name, POD_GATEWAY_V4, POD_SVC_VETH, ROUTE_PROTOCOL,
};
use strait_netlink::{KernelError, Netlink, NetnsFile, Route, RouteKind};

fn kernel(what: &str) -> impl FnOnce(KernelError) -> CniError + '_ {
    move |e| CniError::new(ErrorCode::Kernel, format!("{what}: {e}"))
}

/// The pod end of the service veth: its MAC, derived like the others.
pub fn svc_pod_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    pod_veth_mac(container_id, &format!("{ifname}/{POD_SVC_VETH}"))
}

fn route(dst: IpNet, via: Option<IpAddr>, oif: u32) -> Route {
    Route {
        dst,
        via,
        oif: Some(oif),
        kind: RouteKind::Unicast,
        protocol: ROUTE_PROTOCOL,
        table: strait_netlink::MAIN_TABLE,
        onlink: false,
        multipath: vec![],
    }
}

/// Wire the pod: its macvlan eth0 and its service veth. Returns the
/// interfaces of the CNI result (host end, eth0, veth0) and its IP config
/// and routes. On error the caller removes the service veth; the macvlan
/// is removed here.
pub async fn wire(
    env: &crate::env::CniEnv,
    conf: &NetConf,
    ns: &NetnsFile,
    host: &Netlink,
    alloc: &Allocation,
    w: &MacvlanWiring,
) -> Result<(Vec<Interface>, IpConfig, Vec<RouteConfig>), CniError> {
    let (cid, ifname) = (&env.container_id, &env.ifname);
    let parent = host
        .link(&w.parent)
        .await
        .map_err(kernel("read the VLAN port"))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Kernel,
                format!(
                    "VLAN {}'s port {} is missing (the agent makes it; see its log)",
                    w.vlan, w.parent
                ),
            )
        })?;
    let pod = Netlink::connect_in(ns).map_err(kernel("netlink in pod namespace"))?;
    let mac = pod_veth_mac(cid, ifname);
    let mtu = conf.mtu.min(parent.mtu);
    let create = || host.create_macvlan_in(ifname, parent.index, mac, mtu, ns.raw_fd());
    match create().await {
        Ok(()) => {}
        // A crashed ADD of this container left its eth0: replace it.
        Err(e) if e.is_exists() && stale_macvlan(&pod, ifname).await? => {
            create().await.map_err(kernel("create macvlan"))?
        }
        Err(e) if e.is_exists() => {
            return Err(CniError::new(
                ErrorCode::Kernel,
                format!(
                "cannot create the pod interface: an interface named {ifname} already exists in {}",
                env.netns
            ),
            ))
        }
        Err(e) => return Err(kernel("create macvlan")(e)),
    }
    let out = configure(env, conf, ns, host, &pod, alloc, w).await;
    if out.is_err() {
        let _ = pod.delete_link(ifname).await;
    }
    let svc_mac = out?;
    let host_mac = host_veth_mac(cid, ifname);
    let svc_veth = svc_veth_name(cid, ifname);
    let interfaces = vec![
        Interface {
            name: svc_veth,
            mac: strait_model::naming::format_mac(&host_mac),
            mtu: Some(conf.mtu),
            sandbox: None,
        },
        Interface {
            name: ifname.clone(),
            mac: strait_model::naming::format_mac(&mac),
            mtu: Some(mtu),
            sandbox: Some(env.netns.clone()),
        },
        Interface {
            name: POD_SVC_VETH.into(),
            mac: strait_model::naming::format_mac(&svc_mac),
            mtu: Some(conf.mtu),
            sandbox: Some(env.netns.clone()),
        },
    ];
    let ip = IpConfig {
        version: (!version_at_least(&conf.cni_version, "1.0.0"))
            .then(|| if alloc.ip.is_ipv4() { "4" } else { "6" }.to_string()),
        address: IpNet::new(alloc.ip, w.prefix_len)
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, e.to_string()))?
            .to_string(),
        gateway: Some(w.gateway),
        interface: Some(1),
    };
    let mut routes = vec![RouteConfig {
        dst: "0.0.0.0/0".into(),
        gw: Some(w.gateway),
    }];
    routes.extend(w.via_host.iter().map(|n| RouteConfig {
        dst: n.to_string(),
        gw: Some(POD_GATEWAY_V4.into()),
    }));
    Ok((interfaces, ip, routes))
}

/// A leftover eth0 of ours (a macvlan) in the pod namespace was removed.
async fn stale_macvlan(pod: &Netlink, ifname: &str) -> Result<bool, CniError> {
    match pod
        .link(ifname)
        .await
        .map_err(kernel("read pod interface"))?
    {
        Some(l) if l.kind.as_deref() == Some("macvlan") => pod
            .delete_link(ifname)
            .await
            .map_err(kernel("remove stale macvlan")),
        _ => Ok(false),
    }
}

/// The service veth, addresses and routes. Returns veth0's MAC.
async fn configure(
    env: &crate::env::CniEnv,
    conf: &NetConf,
    ns: &NetnsFile,
    host: &Netlink,
    pod: &Netlink,
    alloc: &Allocation,
    w: &MacvlanWiring,
) -> Result<[u8; 6], CniError> {
    let (cid, ifname) = (&env.container_id, &env.ifname);
    let svc_veth = svc_veth_name(cid, ifname);
    let host_mac = host_veth_mac(cid, ifname);
    let svc_mac = svc_pod_mac(cid, ifname);
    let create = || {
        host.create_veth(
            &svc_veth,
            host_mac,
            POD_SVC_VETH,
            svc_mac,
            ns.raw_fd(),
            conf.mtu,
        )
    };
    match create().await {
        Ok(()) => {}
        Err(e)
            if e.is_exists()
                && host
                    .delete_link(&svc_veth)
                    .await
                    .map_err(kernel("remove stale service veth"))? =>
        {
            create().await.map_err(kernel("create service veth"))?
        }
        Err(e) => return Err(kernel("create service veth")(e)),
    }
    let eth = find_named(pod, ifname).await?;
    let veth0 = find_named(pod, POD_SVC_VETH).await?;
    let gw: IpAddr = POD_GATEWAY_V4.into();
    let mut via_host: Vec<Route> = vec![route(IpNet::from(gw), None, veth0.index)];
    via_host.extend(w.via_host.iter().map(|n| route(*n, Some(gw), veth0.index)));
    let default = route(
        match w.gateway {
            IpAddr::V4(_) => "0.0.0.0/0".parse().unwrap(),
            IpAddr::V6(_) => "::/0".parse().unwrap(),
        },
        Some(w.gateway),
        eth.index,
    );
    futures::try_join!(
        pod.set_up(1).map_err(kernel("set lo up")),
        pod.set_up(eth.index)
            .map_err(kernel("set pod interface up")),
        pod.set_up(veth0.index).map_err(kernel("set veth0 up")),
        pod.add_address(eth.index, alloc.ip, w.prefix_len)
            .map_err(kernel("add pod address")),
        pod.replace_permanent_neighbour(veth0.index, gw, &host_mac)
            .map_err(kernel("add the service veth's gateway neighbour")),
    )?;
    pod.replace_route(&default)
        .await
        .map_err(kernel("add default route via the VLAN gateway"))?;
    for r in &via_host {
        pod.replace_route(r)
            .await
            .map_err(kernel("add route through the service veth"))?;
    }
    let host_end = host
        .link(&svc_veth)
        .await
        .map_err(kernel("read service veth"))?
        .ok_or_else(|| CniError::new(ErrorCode::Kernel, format!("{svc_veth} vanished")))?;
    host.replace_route(&route(IpNet::from(alloc.ip), None, host_end.index))
        .await
        .map_err(kernel("add host route to the pod"))?;
    Ok(svc_mac)
}

async fn find_named(pod: &Netlink, name: &str) -> Result<strait_netlink::Link, CniError> {
    pod.link(name)
        .await
        .map_err(kernel("read pod interface"))?
        .ok_or_else(|| CniError::new(ErrorCode::Kernel, format!("{name} vanished")))
}

/// DEL's part: the service veth (its pair goes along) and, if the pod's
/// namespace is still there, its macvlan eth0. Returns whether there was
/// a service veth (the pod was a macvlan pod).
pub async fn del(host: &Netlink, env: &crate::env::CniEnv) -> Result<bool, CniError> {
    let svc = svc_veth_name(&env.container_id, &env.ifname);
    let had = host
        .delete_link(&svc)
        .await
        .map_err(kernel("delete service veth"))?;
    if env.netns.is_empty() {
        return Ok(had);
    }
    // No namespace (already gone): its macvlan went with it.
    if let Ok(ns) = NetnsFile::open(env.netns.as_ref()) {
        if !ns.is_current().unwrap_or(true) {
            let pod = Netlink::connect_in(&ns).map_err(kernel("netlink in pod namespace"))?;
            if let Some(l) = pod
                .link(&env.ifname)
                .await
                .map_err(kernel("read pod interface"))?
            {
                if l.kind.as_deref() == Some("macvlan") {
                    pod.delete_link(&env.ifname)
                        .await
                        .map_err(kernel("delete the pod's macvlan"))?;
                }
            }
        }
    }
    Ok(had)
}

/// CHECK for a macvlan pod: what ADD made is still there. Returns the
/// problems found.
pub async fn check(
    host: &Netlink,
    ns: &NetnsFile,
    env: &crate::env::CniEnv,
    want: IpAddr,
    gateway: Option<IpAddr>,
) -> Result<Vec<String>, CniError> {
    let mut p = vec![];
    let svc = svc_veth_name(&env.container_id, &env.ifname);
    match host.link(&svc).await.map_err(kernel("read service veth"))? {
        None => p.push(format!("service veth {svc} is missing")),
        Some(l) => {
            let routes = host
                .routes_of(strait_netlink::MAIN_TABLE, want.is_ipv4(), ROUTE_PROTOCOL)
                .await
                .map_err(kernel("dump routes"))?;
            if !routes
                .iter()
                .any(|r| r.dst == IpNet::from(want) && r.oif == Some(l.index))
            {
                p.push(format!("host route {want} dev {svc} is missing"));
            }
        }
    }
    let pod = Netlink::connect_in(ns).map_err(kernel("netlink in pod namespace"))?;
    match pod
        .link(&env.ifname)
        .await
        .map_err(kernel("read pod interface"))?
    {
        Some(eth) if eth.kind.as_deref() == Some("macvlan") => {
            if !eth.up {
                p.push(format!("{} is down", env.ifname));
            }
            let addrs = pod
                .addresses(eth.index)
                .await
                .map_err(kernel("dump addresses"))?;
            if !addrs.iter().any(|a| a.addr() == want) {
                p.push(format!("{} lacks address {want}", env.ifname));
            }
            let routes = pod
                .routes(want.is_ipv4())
                .await
                .map_err(kernel("dump routes"))?;
            if !routes.iter().any(|r| {
                r.dst.prefix_len() == 0
                    && r.oif == Some(eth.index)
                    && (gateway.is_none() || r.via == gateway)
            }) {
                p.push(format!(
                    "default route via the VLAN gateway on {} is missing",
                    env.ifname
                ));
            }
        }
        Some(_) => p.push(format!("{} is not a macvlan", env.ifname)),
        None => p.push(format!("{} is missing in the pod namespace", env.ifname)),
    }
    if pod
        .link(POD_SVC_VETH)
        .await
        .map_err(kernel("read veth0"))?
        .is_none()
    {
        p.push(format!("{POD_SVC_VETH} (the service veth) is missing"));
    }
    Ok(p)
}
