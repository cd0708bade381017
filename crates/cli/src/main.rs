//! `strait`: the node agent, the operator's CLI, and the namespace lab.

mod agent;
mod bgp;
mod explain;
mod lab;
mod lb;
mod mapping;
mod metrics;
mod monitor;
mod policy;
mod status;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "strait: a Kubernetes container network you can see into"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent (IPAM, cluster source, routed datapath, local API).
    Agent(Box<agent::Args>),
    /// Show this node's agent: readiness, pod CIDR, pods, node routes.
    Status(status::Args),
    /// Build and use a multi-node cluster made of network namespaces.
    Lab(lab::Args),
    /// Live datapath events: drops with their reason, and with --trace every
    /// forwarding decision.
    Monitor(monitor::Args),
    /// Per-reason packet and byte counters of the eBPF datapath.
    Metrics(metrics::Args),
    /// The service load balancer as programmed in the datapath.
    Lb(lb::Args),
    /// NetworkPolicy as this node enforces it, and why a connection is
    /// allowed or denied.
    Policy(policy::Args),
    /// This node's BGP sessions and routes (cross-node mode bgp).
    Bgp(bgp::Args),
    /// eni mode: each ENI's MAC, addresses and pods, checked pod ↔ agent ↔
    /// cloud (as terway-cli mapping); exits 1 on a mismatch.
    Mapping(mapping::Args),
    /// Every hop of a flow from this node's live state, continued on the
    /// next node through its agent (`--explain-addr`) when it answers.
    Explain(explain::NodeArgs),
    /// Print strait's CustomResourceDefinitions (IPPool, IPAMBlock,
    /// BGPConfiguration, BGPPeer) as
    /// deploy/crds.yaml ships them.
    Crds,
}

/// One request to the agent at `socket`; its error answer as an error.
fn call(
    socket: &std::path::Path,
    req: &strait_model::api::Request,
) -> anyhow::Result<strait_model::api::Response> {
    match strait_lab::run::agent_call(socket, req)? {
        strait_model::api::Response::Error(e) => anyhow::bail!("{}", e.message),
        r => Ok(r),
    }
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Agent(a) => agent::run(*a),
        Cmd::Status(a) => status::run(a),
        Cmd::Lab(a) => lab::run(a),
        Cmd::Monitor(a) => monitor::run(a),
        Cmd::Metrics(a) => metrics::run(a),
        Cmd::Lb(a) => lb::run(a),
        Cmd::Policy(a) => policy::run(a),
        Cmd::Bgp(a) => bgp::run(a),
        Cmd::Mapping(a) => mapping::run(a),
        Cmd::Explain(a) => explain::run_node(a),
        Cmd::Crds => {
            print!("{}", strait_model::ippool::crds_yaml());
            Ok(0)
        }
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
