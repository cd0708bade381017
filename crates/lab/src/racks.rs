//! Racks in the lab (crossNode bgp-tor, Hybridnet's BGP mode): a router
//! namespace per rack, `strait-<lab>-tor-<rack>`, holding a bridge `br0`
//! that the rack's nodes plug into (the router's address on it is the
//! nodes' gateway) and an `uplink` to the fabric, which is the spine.
//! Each router runs a real BIRD 2 or FRR (bgpd + zebra) with the config
//! from [`strait_model::racks`]: eBGP with its nodes, eBGP with the other
//! racks' routers, learned routes in its kernel. The external client and
//! the control plane on the fabric reach the racks' subnets through the
//! routers.

use crate::cmd::{ip, run};
use crate::state::LabState;
use anyhow::Context;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strait_model::lab::{fabric_netns, LabPlan};
use strait_model::racks::{bird_config, frr_config, RackNode, RackPlan, Router};

/// Where a rack's router keeps its config, control socket, pid and log.
pub fn dir(st: &LabState, rack: &RackPlan) -> PathBuf {
    st.dir.join("racks").join(&rack.name)
}

/// Create every rack's router namespace, bridge and uplink (before the
/// nodes, which plug into the bridges).
pub fn plumb(st: &LabState, step: impl Fn(&str)) -> anyhow::Result<()> {
    let plan = &st.plan;
    let fabric = fabric_netns(&plan.name);
    let mtu = plan.mtu.to_string();
    for r in &plan.racks {
        step(&format!(
            "rack {}: router namespace {} ({}, AS {}), br0 {}/{}, uplink {}/{} on the fabric",
            r.name,
            r.netns,
            r.router,
            r.asn,
            r.gateway,
            r.subnet.prefix_len(),
            r.fabric_ip,
            plan.fabric.prefix_len()
        ));
        let ns = r.netns.as_str();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", ns, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{}", r.gateway, r.subnet.prefix_len()),
            "dev",
            "br0",
        ])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        let port = format!("tor-{}", r.name);
        ip(&[
            "-n", &fabric, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name",
            "uplink", "netns", ns,
        ])?;
        ip(&["-n", &fabric, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{}", r.fabric_ip, plan.fabric.prefix_len()),
            "dev",
            "uplink",
        ])?;
        ip(&["-n", ns, "link", "set", "uplink", "up"])?;
        // A router forwards; it sends no redirects (a node's packet to
        // another node of the rack goes out the port it came in on, and
        // the seed's walk has the switch forward it, not redirect).
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.br0.send_redirects", "0"),
        ] {
            run(
                "ip",
                &["netns", "exec", ns, "sysctl", "-qw", &format!("{k}={v}")],
            )?;
        }
    }
    Ok(())
}

/// Routes from a namespace on the fabric (the external client, the control
/// plane) to every rack's subnet, via its router.
pub fn route_from_fabric(plan: &LabPlan, ns: &str) -> anyhow::Result<()> {
    for r in &plan.racks {
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            &r.subnet.to_string(),
            "via",
            &r.fabric_ip.to_string(),
        ])?;
    }
    Ok(())
}

/// Write each router's config and start it; wait until each answers on its
/// control socket.
pub fn start_routers(st: &LabState, step: impl Fn(&str)) -> anyhow::Result<()> {
    let plan = &st.plan;
    for r in &plan.racks {
        let d = dir(st, r);
        std::fs::create_dir_all(&d)?;
        let nodes: Vec<RackNode> = plan
            .nodes
            .iter()
            .filter(|n| n.rack.as_deref() == Some(r.name.as_str()))
            .map(|n| RackNode {
                name: &n.name,
                ip: n.ip,
            })
            .collect();
        match r.router {
            Router::Bird => start_bird(r, &d, &bird_config(r, &nodes, &plan.racks))?,
            Router::Frr => start_frr(r, &d, &frr_config(r, &nodes, &plan.racks))?,
        }
        step(&format!(
            "rack {}: {} started, peering with {} node(s) and {} other rack(s); config {}",
            r.name,
            r.router,
            nodes.len(),
            plan.racks.len() - 1,
            d.display()
        ));
    }
    for r in &plan.racks {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = match r.router {
                Router::Bird => "show protocols",
                Router::Frr => "show bgp summary",
            };
            match router_cli(st, r, probe) {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "rack {}: {} does not answer (log in {})",
                        r.name,
                        r.router,
                        dir(st, r).display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(())
}

fn start_bird(r: &RackPlan, d: &std::path::Path, conf: &str) -> anyhow::Result<()> {
    let path = d.join("bird.conf");
    std::fs::write(&path, conf)?;
    // bird forks into the background itself; `down` stops whatever runs
    // in the lab's namespaces.
    let p = |f: &str| d.join(f).display().to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &r.netns,
            "bird",
            "-c",
            &p("bird.conf"),
            "-s",
            &p("bird.ctl"),
            "-P",
            &p("bird.pid"),
        ],
    )
    .context("start bird (is bird2 installed? scripts/setup.sh installs it)")?;
    Ok(())
}

fn start_frr(r: &RackPlan, d: &std::path::Path, conf: &str) -> anyhow::Result<()> {
    let bin = |n: &str| format!("/usr/lib/frr/{n}");
    anyhow::ensure!(
        std::path::Path::new(&bin("bgpd")).exists(),
        "FRR is not installed (/usr/lib/frr/bgpd); scripts/setup.sh installs it"
    );
    std::fs::write(d.join("bgpd.conf"), conf)?;
    std::fs::write(d.join("zebra.conf"), format!("hostname tor-{}\n", r.name))?;
    // zebra insists that its user be in FRR's vty group: run both as the
    // package's `frr` user, in a directory it owns.
    run("chown", &["-R", "frr:frr", &d.display().to_string()])
        .context("FRR's user `frr` is missing (install frr)")?;
    let p = |f: &str| d.join(f).display().to_string();
    let zserv = p("zserv.api");
    for daemon in ["zebra", "bgpd"] {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &r.netns,
                &bin(daemon),
                "-d",
                "-f",
                &p(&format!("{daemon}.conf")),
                "-i",
                &p(&format!("{daemon}.pid")),
                "-z",
                &zserv,
                "--vty_socket",
                &p(""),
                "-u",
                "frr",
                "-g",
                "frr",
                "--log",
                &format!("file:{}", p(&format!("{daemon}.log"))),
            ],
        )
        .with_context(|| format!("start FRR {daemon}"))?;
        if daemon == "zebra" {
            // bgpd connects to zebra's socket as it starts.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !d.join("zserv.api").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// Run a command in a rack router's own CLI (`birdc` or `vtysh -c`).
pub fn router_cli(st: &LabState, r: &RackPlan, cmd: &str) -> anyhow::Result<String> {
    let d = dir(st, r);
    let out = match r.router {
        Router::Bird => Command::new("birdc")
            .arg("-s")
            .arg(d.join("bird.ctl"))
            .args(cmd.split_whitespace())
            .stdin(Stdio::null())
            .output(),
        Router::Frr => Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&d)
            .args(["-c", cmd])
            .stdin(Stdio::null())
            .output(),
    }
    .with_context(|| format!("run the {} CLI", r.router))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Unable to connect") {
        anyhow::bail!(
            "{} of rack {} did not answer {cmd:?}: {}{}",
            r.router,
            r.name,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

/// Wait until every rack's router forwards to every node's pod block (its
/// kernel has a route for each): BGP has converged and pods can talk.
pub fn wait_converged(st: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let plan = &st.plan;
    let deadline = Instant::now() + timeout;
    for r in &plan.racks {
        loop {
            let table = ip(&["-n", &r.netns, "route", "show"])?;
            let missing: Vec<String> = plan
                .nodes
                .iter()
                .map(|n| n.pod_cidr.to_string())
                .filter(|c| !table.lines().any(|l| l.starts_with(&format!("{c} "))))
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "rack {}: its router has no route to {} after {:?}; see `strait lab router {}` and the agents' logs",
                    r.name,
                    missing.join(", "),
                    timeout,
                    r.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
