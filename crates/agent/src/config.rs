use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name, as in its Node object.
    pub node_name: String,
    /// Where IPAM state lives. Default /run/strait: pods do not survive a
    /// reboot, so neither should their addresses.
    pub state_dir: PathBuf,
    /// The local API socket (mode 0600).
    pub socket: PathBuf,
    /// Where the cluster comes from.
    pub source: SourceConfig,
    /// How long a released address rests before reuse.
    pub ip_cooldown: Duration,
    /// Full resync period, on top of reacting to source changes.
    pub resync: Duration,
    /// Datapath mode: routed, or routed plus the eBPF fast path.
    pub mode: strait_model::lab::Mode,
    /// ebpf mode: where this node's maps are pinned (a bpffs directory).
    pub bpf_dir: PathBuf,
    /// ebpf mode: the uplink that carries from-netdev.
    pub uplink: String,
    /// ebpf mode: take the older host-veth path even if the kernel has
    /// bpf_redirect_peer.
    pub no_redirect_peer: bool,
    /// The cluster's service CIDR: an unreachable route makes the node
    /// answer at once for virtual IPs that have no ready backend.
    pub service_cidr: Option<ipnet::IpNet>,
    /// ebpf mode: the node's cgroup (v2) for socket-level load balancing of
    /// the node's own processes.
    pub cgroup: Option<PathBuf>,
    /// How pod traffic crosses between nodes (see `crossnode::MODES`).
    pub cross_node: String,
    /// vxlan: the VNI and UDP port of the overlay.
    pub vxlan_vni: u32,
    /// bgp: the cluster's AS (one AS, iBGP full mesh).
    pub bgp_as: u32,
    pub vxlan_port: u16,
    /// Where to install the CNI conflist once the agent is ready (the
    /// runtime's config directory, /etc/cni/net.d); None: not at all.
    pub cni_conf_dir: Option<PathBuf>,
    /// cniVersion of that conflist.
    pub cni_version: String,
    /// MTU of pod interfaces, in that conflist.
    pub mtu: u32,
    /// eni: the cloud and the warm pool.
    pub eni: Option<EniConfig>,
    /// Where to serve Prometheus metrics (`/metrics`); None: not at all.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where other nodes' `strait explain` may ask this node read-only
    /// questions (TCP); None: not at all.
    pub explain_addr: Option<std::net::SocketAddr>,
}

/// ENI multi-IP: where the cloud's API is and what the pool asks of it.
#[derive(Clone, Debug)]
pub struct EniConfig {
    /// The cloud API socket (the lab's VPC emulator).
    pub cloud_socket: PathBuf,
    pub pool: strait_model::cloud::eniip::PoolConfig,
}

/// The cluster source.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A directory of manifests.
    Files { dir: PathBuf },
    /// A kube-apiserver: this kubeconfig, or in-cluster / $KUBECONFIG.
    Kube { kubeconfig: Option<PathBuf> },
    /// strait's etcd datastore: this client URL, keys under this prefix.
    Etcd { endpoint: String, prefix: String },
}

impl AgentConfig {
    /// The table the pods' host routes live in: Hybridnet's 39999 in overlay
    /// modes (as the seed shows), main otherwise.
    pub fn pod_table(&self) -> u32 {
        match self.cross_node.as_str() {
            "vxlan" | "bgp-tor" | "vlan" => strait_model::overlay::LOCAL_POD_TABLE,
            _ => strait_netlink::MAIN_TABLE,
        }
    }

    /// The cross-node mode's tunnel device, where decapsulated traffic
    /// enters (the eBPF datapath attaches from-netdev there too). IP-in-IP
    /// has none: it is opened at the uplink's own tc ingress.
    pub fn tunnel_device(&self) -> Option<String> {
        match self.cross_node.as_str() {
            "vxlan" => strait_model::overlay::vxlan_device(&self.uplink, self.vxlan_vni).ok(),
            _ => None,
        }
    }
}
