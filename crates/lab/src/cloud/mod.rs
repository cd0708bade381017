//! The lab's cloud (issue 13): a VPC emulator for Terway's ENI modes,
//! kept apart from strait's node code. A lab file's `cloud:` section makes
//! a namespace `strait-<lab>-vpc` on the fabric and runs `strait lab
//! cloud-serve` there: it keeps the VPC's records
//! ([`strait_model::cloud::vpc::Vpc`], persisted in `cloud.json`), answers
//! the [`EniProvider`](strait_model::cloud::provider::EniProvider) calls on
//! a unix socket, and mirrors the records into kernel objects
//! ([`kernel`]): every attached ENI is a veth pair, `eth<N>` in its node
//! (with the ENI's MAC, left for the node to configure, as a cloud NIC
//! is) and `eni-…` in the VPC, which routes the ENI's addresses to it and
//! is every vSwitch's gateway. The records are the truth: the emulator
//! re-applies them at start, so a crash between a kernel change and the
//! write of the records heals.

pub mod kernel;
pub mod server;
pub mod sgnft;

use crate::state::LabState;
use std::path::PathBuf;
use strait_model::cloud::provider::Eni;
pub use strait_model::cloud::wire::{Answer, Call, SocketCloud as LabCloud};

/// The VPC's namespace.
pub fn netns(lab: &str) -> String {
    format!("strait-{lab}-vpc")
}

pub fn socket(st: &LabState) -> PathBuf {
    st.dir.join("cloud.sock")
}

pub fn records(st: &LabState) -> PathBuf {
    st.dir.join("cloud.json")
}

pub fn pid_file(st: &LabState) -> PathBuf {
    st.dir.join("cloud.pid")
}

/// The VPC's address on the fabric: fourth from the top (the external
/// client, the control plane and the VLAN gateway have the three above).
pub fn fabric_address(plan: &strait_model::lab::LabPlan) -> std::net::Ipv4Addr {
    let hosts: Vec<std::net::Ipv4Addr> = plan.fabric.hosts().collect();
    hosts[hosts.len() - 4]
}

/// Make the VPC namespace and start its emulator (`strait lab
/// cloud-serve`); returns once it answers.
pub fn up(st: &LabState, bins: &crate::run::Binaries, step: impl Fn(&str)) -> anyhow::Result<()> {
    let Some(cloud) = &st.plan.cloud else {
        return Ok(());
    };
    kernel::up(st)?;
    let ns = netns(&st.plan.name);
    let pid = up_emulator(st, bins)?;
    // Clients outside reach the SLBs through the VPC.
    let ext = strait_model::lab::external_netns(&st.plan.name);
    let via = fabric_address(&st.plan).to_string();
    for s in &cloud.slbs {
        crate::cmd::ip(&[
            "-n",
            &ext,
            "route",
            "replace",
            &s.address.to_string(),
            "via",
            &via,
        ])?;
        step(&format!(
            "cloud: SLB {} at {} (listeners {})",
            s.id,
            s.address,
            s.listeners
                .iter()
                .map(|l| format!("{} -> svc/{}", l.port, l.service))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    step(&format!(
        "cloud: VPC namespace {ns} (fabric {}), vSwitches {}, emulator pid {pid}",
        fabric_address(&st.plan),
        cloud
            .vswitches
            .iter()
            .map(|v| format!("{} {}", v.id, v.cidr))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

/// Start the emulator again (after a crash): it re-applies its records.
pub fn restart(st: &LabState, bins: &crate::run::Binaries) -> anyhow::Result<()> {
    if let Some(pid) = LabState::read_pid(&pid_file(st)) {
        crate::cmd::stop(&[pid], std::time::Duration::from_secs(2));
    }
    up_emulator(st, bins).map(|_| ())
}

fn up_emulator(st: &LabState, bins: &crate::run::Binaries) -> anyhow::Result<i32> {
    let ns = netns(&st.plan.name);
    let pid = crate::run::spawn_daemon(
        &ns,
        &bins.strait,
        &["lab", "--lab", &st.plan.name, "cloud-serve"],
        &st.log_dir().join("cloud.log"),
        &pid_file(st),
        &[],
    )?;
    let c = LabCloud { socket: socket(st) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.list().is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the lab cloud did not answer within 10 s (see {})",
            st.log_dir().join("cloud.log").display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(pid)
}

/// The cloud controller's part in ENI mode: each SLB listener's backends
/// are its Service's ready endpoints, the pods' addresses on their ENIs
/// (called whenever the lab publishes endpoints).
pub fn publish_slbs(
    st: &LabState,
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
) -> anyhow::Result<()> {
    let Some(cloud) = &st.plan.cloud else {
        return Ok(());
    };
    let c = LabCloud { socket: socket(st) };
    for s in &cloud.slbs {
        for l in &s.listeners {
            let (ns, name) = l.service.split_once('/').unwrap_or(("default", &l.service));
            let backends: Vec<(std::net::IpAddr, u16)> = slices
                .iter()
                .filter(|sl| {
                    sl.metadata.namespace.as_deref().unwrap_or("default") == ns
                        && sl
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("kubernetes.io/service-name"))
                            .map(String::as_str)
                            == Some(name)
                })
                .flat_map(|sl| {
                    let port = sl
                        .ports
                        .iter()
                        .flatten()
                        .find_map(|p| p.port)
                        .unwrap_or(l.port as i32) as u16;
                    sl.endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                        .flat_map(|e| e.addresses.iter())
                        .filter_map(|a| a.parse().ok())
                        .map(move |ip| (ip, port))
                })
                .collect();
            c.set_slb_backends(&s.id, l.port, &backends)
                .map_err(|e| anyhow::anyhow!("SLB {} listener {}: {e}", s.id, l.port))?;
        }
    }
    Ok(())
}

/// The records as a table, for `strait lab cloud`.
pub fn table(enis: &[Eni]) -> String {
    let mut out = format!(
        "{:<14} {:<10} {:<5} {:<18} {:<9} {:<10} {:<16} {}\n",
        "ENI", "NODE", "DEV", "MAC", "KIND", "VSWITCH", "PRIMARY IP", "SECONDARY IPS"
    );
    for e in enis {
        let kind = match &e.kind {
            strait_model::cloud::provider::EniKind::Member { trunk, vlan } => {
                format!("member of {trunk} vlan {vlan}")
            }
            k => format!("{k:?}").to_lowercase(),
        };
        out.push_str(&format!(
            "{:<14} {:<10} {:<5} {:<18} {:<9} {:<10} {:<16} {}\n",
            e.id,
            e.node.as_deref().unwrap_or("-"),
            e.device_index
                .map(|i| format!("eth{i}"))
                .unwrap_or("-".into()),
            if e.mac.is_empty() { "-" } else { &e.mac },
            kind,
            if e.vswitch.is_empty() {
                "(fabric)"
            } else {
                &e.vswitch
            },
            e.primary_ip,
            e.secondary_ips
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    out
}
