use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// This node's name (its Node object's metadata.name).
    #[arg(long, env = "STRAIT_NODE_NAME")]
    node: String,
    /// IPAM state directory. /run by default: pods do not survive a reboot.
    #[arg(long, default_value = "/run/strait/state")]
    state_dir: PathBuf,
    /// Local API socket (created with mode 0600).
    #[arg(long, default_value = "/run/strait/agent.sock")]
    socket: PathBuf,
    /// The cluster source: `files` (a directory of manifests, --manifests),
    /// `kube` (a kube-apiserver, --kubeconfig or in-cluster) or `etcd`
    /// (strait's etcd datastore, --etcd-endpoint).
    #[arg(long, default_value = "files", value_parser = ["files", "kube", "etcd"])]
    source: String,
    /// etcd: the client URL (http://HOST:PORT).
    #[arg(long, required_if_eq("source", "etcd"))]
    etcd_endpoint: Option<String>,
    /// etcd: the key prefix strait's objects live under.
    #[arg(long, default_value = strait_model::datastore::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// files: the directory of Kubernetes manifests.
    #[arg(long, required_if_eq("source", "files"))]
    manifests: Option<PathBuf>,
    /// kube: the kubeconfig to use (default: in-cluster service account, or $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Seconds a released pod IP rests before it is handed out again.
    #[arg(long, env = "STRAIT_IP_COOLDOWN_SECS", default_value_t = 30)]
    ip_cooldown_secs: u64,
    /// Seconds between full reconcile passes.
    #[arg(long, default_value_t = 10)]
    resync_secs: u64,
    /// Node-local datapath: kernel (host routes; also called routed) or ebpf
    /// (the eBPF fast path on top of them).
    #[arg(long, default_value = "routed", value_parser = ["routed", "kernel", "ebpf"])]
    datapath: String,
    /// ebpf, ipip: the bpffs directory for this node's pinned maps.
    #[arg(long, default_value = "/sys/fs/bpf/strait")]
    bpf_dir: PathBuf,
    /// ebpf: the node's uplink (from-netdev is attached to its tc ingress).
    #[arg(long, default_value = "eth0")]
    uplink: String,
    /// ebpf: use the older host-veth path even where bpf_redirect_peer exists.
    #[arg(long)]
    no_redirect_peer: bool,
    /// The cluster's service CIDR (virtual IPs without a ready backend are
    /// answered with ICMP unreachable at once).
    #[arg(long)]
    service_cidr: Option<String>,
    /// ebpf: the node's cgroup v2 directory; its processes reach services
    /// through socket-level load balancing.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// How pod traffic crosses between nodes: routed (a route per node's pod
    /// CIDR via its node IP), vxlan (an overlay on --uplink: device
    /// <uplink>.vxlan<VNI>, table 40000) or ipip (IP-in-IP done in eBPF:
    /// routes via each node on <uplink>.ipip; pinned maps in --bpf-dir) or
    /// bgp (Calico's BGP mode: a BGP full mesh between nodes, AS --bgp-as,
    /// learned pod routes installed with protocol bgp) or bgp-tor
    /// (Hybridnet's BGP mode: each node peers with its top-of-rack router,
    /// per BGPPeer objects; pod traffic leaves through table 10001, a
    /// default route via the node's gateway) or vlan (Hybridnet's VLAN
    /// mode: pods of IPPools with vlanID and gateway sit on that VLAN,
    /// tagged in eBPF on --uplink; tables 39999 and 10001+) or macvlan
    /// (Bifrost: each pod's eth0 is a macvlan on its VLAN's port
    /// <uplink>-<vid>, tagged in eBPF; a service veth bifrXXX carries
    /// service traffic through the host) or eni (Terway's ENI multi-IP:
    /// pods take secondary addresses of the node's ENIs from the cloud at
    /// --cloud-socket; rules 512/2048 and a table per ENI).
    #[arg(long, default_value = "routed", value_parser = ["routed", "vxlan", "ipip", "bgp", "bgp-tor", "vlan", "macvlan", "eni"])]
    cross_node: String,
    /// eni: the cloud API's socket (the lab's VPC emulator).
    #[arg(long, required_if_eq("cross_node", "eni"))]
    cloud_socket: Option<PathBuf>,
    /// eni: the vSwitch new ENIs go into.
    #[arg(long, required_if_eq("cross_node", "eni"))]
    eni_vswitch: Option<String>,
    /// eni: security groups of new ENIs (repeat for several).
    #[arg(long)]
    eni_security_group: Vec<String>,
    /// eni: below this many idle pod addresses, more are asked of the cloud.
    #[arg(long, default_value_t = 2)]
    eni_min_idle: usize,
    /// eni: above this many, idle addresses are given back to the cloud.
    #[arg(long, default_value_t = 5)]
    eni_max_idle: usize,
    /// eni: ENI-Trunking: a trunk ENI on the node, and a member ENI for
    /// every pod a PodNetworking selects.
    #[arg(long)]
    eni_trunk: bool,
    /// bgp: the cluster's AS number (every node in it: iBGP full mesh).
    #[arg(long, default_value_t = 64512)]
    bgp_as: u32,
    /// vxlan: the VNI (the device is named <uplink>.vxlan<VNI>).
    #[arg(long, default_value_t = strait_model::overlay::VXLAN_VNI)]
    vxlan_vni: u32,
    /// vxlan: the UDP port (8472, as Hybridnet and flannel use).
    #[arg(long, default_value_t = strait_model::overlay::VXLAN_PORT)]
    vxlan_port: u16,
    /// Install the CNI conflist (10-strait.conflist) into this directory once
    /// the agent is ready, e.g. /etc/cni/net.d.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// cniVersion of the installed conflist: 1.0.0 suits containerd 1.6 and
    /// podman 4 (they reject 1.1.0 results).
    #[arg(long, default_value = "1.0.0", value_parser = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])]
    cni_version: String,
    /// MTU of pod interfaces in the installed conflist.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
    /// 0.0.0.0:9476. Off when not given.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Answer `strait explain` on other nodes at ADDR (TCP), e.g.
    /// 0.0.0.0:9477: read-only questions (status, service and policy
    /// lookups, iproute2 queries, map lookups). Off when not given.
    #[arg(long, value_name = "ADDR")]
    explain_addr: Option<std::net::SocketAddr>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = strait_agent::AgentConfig {
        node_name: a.node,
        state_dir: a.state_dir,
        socket: a.socket,
        source: match a.source.as_str() {
            "kube" => strait_agent::SourceConfig::Kube {
                kubeconfig: a.kubeconfig,
            },
            "etcd" => strait_agent::SourceConfig::Etcd {
                endpoint: a
                    .etcd_endpoint
                    .ok_or_else(|| anyhow::anyhow!("--source etcd needs --etcd-endpoint URL"))?,
                prefix: a.etcd_prefix,
            },
            _ => strait_agent::SourceConfig::Files {
                dir: a
                    .manifests
                    .ok_or_else(|| anyhow::anyhow!("--source files needs --manifests DIR"))?,
            },
        },
        ip_cooldown: Duration::from_secs(a.ip_cooldown_secs),
        resync: Duration::from_secs(a.resync_secs.max(1)),
        mode: if a.datapath == "ebpf" {
            strait_model::lab::Mode::Ebpf
        } else {
            strait_model::lab::Mode::Routed
        },
        bpf_dir: a.bpf_dir,
        uplink: a.uplink,
        no_redirect_peer: a.no_redirect_peer,
        service_cidr: a
            .service_cidr
            .map(|s| {
                s.parse()
                    .map_err(|e| anyhow::anyhow!("--service-cidr {s:?}: {e}"))
            })
            .transpose()?,
        cgroup: a.cgroup,
        cross_node: a.cross_node,
        vxlan_vni: a.vxlan_vni,
        bgp_as: a.bgp_as,
        vxlan_port: a.vxlan_port,
        cni_conf_dir: a.cni_conf_dir,
        cni_version: a.cni_version,
        mtu: a.mtu,
        metrics_addr: a.metrics_addr,
        explain_addr: a.explain_addr,
        eni: match (a.cloud_socket, a.eni_vswitch) {
            (Some(cloud_socket), Some(vswitch)) => {
                anyhow::ensure!(
                    a.eni_min_idle <= a.eni_max_idle,
                    "--eni-min-idle {} is above --eni-max-idle {}",
                    a.eni_min_idle,
                    a.eni_max_idle
                );
                Some(strait_agent::config::EniConfig {
                    cloud_socket,
                    pool: strait_model::cloud::eniip::PoolConfig {
                        vswitch,
                        security_groups: a.eni_security_group,
                        min_idle: a.eni_min_idle,
                        max_idle: a.eni_max_idle,
                        trunk: a.eni_trunk,
                    },
                })
            }
            _ => None,
        },
    };
    // glibc gives every thread that allocates its own heap arena, and a
    // large service table then leaves most of them fragmented: two arenas
    // keep the agent's memory close to what it holds.
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(strait_agent::run(cfg))?;
    Ok(0)
}
