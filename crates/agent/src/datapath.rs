//! The eBPF datapath as the agent holds it: the loaded programs, which
//! host veths carry from-container, and the endpoint maps. Owned by the
//! endpoints reconciler.

use anyhow::Context;
use std::collections::HashMap;
use std::net::IpAddr;
use strait_model::ipam::Allocation;

pub struct BpfState {
    pub dp: strait_bpf::Datapath,
    /// Host veths this agent attached from-container to since it started
    /// (an agent restart re-attaches all, atomically replacing the old).
    pub attached: std::collections::BTreeSet<String>,
    pub endpoints: usize,
    /// An older map layout is still pinned until every host veth carries
    /// this build's program.
    pub retire_pending: bool,
    /// Devices besides the uplink that carry from-netdev/to-netdev (the
    /// overlay's tunnel device, eni mode's ENIs), by name, with the index
    /// they had when attached (a recreated device is attached again).
    pub netdevs: std::collections::BTreeMap<String, u32>,
}

/// A pin directory under /sys/fs/bpf needs a bpffs there (mounted if not).
pub fn ensure_pin_root(dir: &std::path::Path) -> anyhow::Result<()> {
    let default_root = std::path::Path::new("/sys/fs/bpf");
    if dir.starts_with(default_root) {
        strait_bpf::datapath::ensure_bpffs(default_root).context("mount bpffs at /sys/fs/bpf")?;
    }
    Ok(())
}

/// Load the programs, attach them to the uplink and the node's cgroup.
pub fn load(cfg: &crate::AgentConfig) -> anyhow::Result<BpfState> {
    use strait_bpf::datapath::Prog;
    ensure_pin_root(&cfg.bpf_dir)?;
    let features = strait_bpf::Features::probe(cfg.no_redirect_peer);
    tracing::info!(redirect_peer = features.redirect_peer, reason = %features.reason, pin_dir = %cfg.bpf_dir.display(), "eBPF datapath");
    let mut dp =
        strait_bpf::Datapath::load(&cfg.bpf_dir, features).context("load the eBPF datapath")?;
    dp.attach(Prog::FromNetdev, &cfg.uplink)
        .with_context(|| format!("attach from-netdev to the uplink {}", cfg.uplink))?;
    dp.attach(Prog::ToNetdev, &cfg.uplink)
        .with_context(|| format!("attach to-netdev to the uplink {}", cfg.uplink))?;
    if let Some(cg) = &cfg.cgroup {
        dp.attach_cgroup(cg)
            .with_context(|| format!("attach socket load balancing to cgroup {}", cg.display()))?;
        tracing::info!(cgroup = %cg.display(), "socket-level load balancing for node processes");
    }
    for note in &dp.upgrade_notes {
        tracing::warn!(%note, "eBPF maps from an earlier build");
    }
    Ok(BpfState {
        retire_pending: !dp.upgrade_notes.is_empty(),
        dp,
        attached: Default::default(),
        endpoints: 0,
        netdevs: Default::default(),
    })
}

/// Make the endpoint and source maps match the node's pods, then make sure
/// every pod's host veth carries from-container. Maps first, so a freshly
/// attached program finds its pod.
impl BpfState {
    /// from-netdev and to-netdev on another device, as on the uplink (the
    /// overlay's tunnel device, an ENI): traffic for a local pod goes in
    /// with bpf_redirect_peer, and replies of services with a backend on
    /// another node are restored to the service address there.
    pub fn attach_netdev(&mut self, dev: &str, index: u32) -> anyhow::Result<bool> {
        use strait_bpf::datapath::Prog;
        if self.netdevs.get(dev) == Some(&index) {
            return Ok(false);
        }
        self.dp
            .attach(Prog::FromNetdev, dev)
            .with_context(|| format!("attach from-netdev to {dev}"))?;
        self.dp
            .attach(Prog::ToNetdev, dev)
            .with_context(|| format!("attach to-netdev to {dev}"))?;
        tracing::info!(device = dev, "from-netdev/to-netdev attached");
        self.netdevs.insert(dev.to_string(), index);
        Ok(true)
    }

    /// Returns entries changed and per-pod problems (a program that would not
    /// attach to one pod's veth does not stop the others).
    pub fn sync_endpoints(
        &mut self,
        allocs: &[Allocation],
        veth_index: &HashMap<&str, u32>,
    ) -> anyhow::Result<(usize, Vec<String>)> {
        let bpf = self;
        use strait_bpf::datapath::Prog;
        use strait_bpf::maps::{self, Endpoint, EndpointMap, Lxc, LxcMap};
        use strait_model::naming::{host_veth_mac, is_svc_veth, pod_veth_mac};
        let mut want_ep: HashMap<u32, Endpoint> = HashMap::new();
        let mut want_lxc: HashMap<u32, Lxc> = HashMap::new();
        let mut want_hp: HashMap<maps::HostportKey, u32> = HashMap::new();
        for a in allocs {
            let (IpAddr::V4(ip), Some(&idx)) = (a.ip, veth_index.get(a.host_veth.as_str())) else {
                continue;
            };
            let (cid, ifn) = (&a.attachment.container_id, &a.attachment.ifname);
            want_ep.insert(
                maps::ip_key(ip),
                Endpoint {
                    ifindex: idx,
                    pod_mac: pod_veth_mac(cid, ifn),
                    host_mac: host_veth_mac(cid, ifn),
                    flags: 0,
                },
            );
            for hp in &a.host_ports {
                if let Some(proto) = hp.proto_number() {
                    want_hp.insert(
                        maps::HostportKey {
                            addr: maps::ip_key(ip),
                            port: hp.container_port.to_be(),
                            proto,
                            _pad: 0,
                        },
                        hp.host_port as u32,
                    );
                }
            }
            let mut flags = 0;
            if !a.host_ports.is_empty() {
                flags |= maps::LXC_F_HOSTPORTS;
            }
            if is_svc_veth(&a.host_veth) {
                flags |= maps::LXC_F_SVC_VETH;
            }
            want_lxc.insert(
                idx,
                Lxc {
                    ip4: maps::ip_key(ip),
                    flags,
                    ip6: [0; 16],
                },
            );
        }
        let dir = bpf.dp.pin_dir.clone();
        let mut eps: EndpointMap = maps::open(&dir, "strait_endpoints")?;
        let mut lxc: LxcMap = maps::open(&dir, "strait_lxc")?;
        let mut hps: maps::HostportMap = maps::open(&dir, "strait_hostport")?;
        let mut changed = sync_map(&mut eps, &want_ep)?
            + sync_map(&mut lxc, &want_lxc)?
            + sync_map(&mut hps, &want_hp)?;
        bpf.endpoints = want_ep.len();
        let mut problems = vec![];
        for a in allocs {
            if veth_index.contains_key(a.host_veth.as_str()) && !bpf.attached.contains(&a.host_veth)
            {
                // A service veth also translates replies back on egress.
                let mut progs = vec![Prog::FromContainer];
                if is_svc_veth(&a.host_veth) {
                    progs.push(Prog::ToContainer);
                }
                match progs
                    .into_iter()
                    .try_for_each(|p| bpf.dp.attach(p, &a.host_veth))
                {
                    Ok(()) => {
                        tracing::info!(link = %a.host_veth, pod = %a.pod, "from-container attached");
                        bpf.attached.insert(a.host_veth.clone());
                        changed += 1;
                    }
                    Err(e) => problems.push(format!(
                        "pod {} ({}): attach from-container: {e:#}",
                        a.pod, a.host_veth
                    )),
                }
            }
        }
        // Links that went away took their filters with them.
        bpf.attached.retain(|l| veth_index.contains_key(l.as_str()));
        if bpf.retire_pending && problems.is_empty() {
            match bpf.dp.retire_old_layouts() {
                Ok(notes) => {
                    for note in notes {
                        tracing::info!(%note, "eBPF upgrade finished");
                    }
                    bpf.retire_pending = false;
                }
                Err(e) => problems.push(format!("retire the older map layout: {e}")),
            }
        }
        Ok((changed, problems))
    }
}

fn sync_map<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod + PartialEq>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    want: &HashMap<K, V>,
) -> anyhow::Result<usize> {
    let mut changed = 0;
    let have: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for k in have {
        if !want.contains_key(&k) {
            map.remove(&k)?;
            changed += 1;
        }
    }
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0)?;
            changed += 1;
        }
    }
    Ok(changed)
}
