//! `strait explain` on a node: this node's namespaces and its pods' are
//! read here; every other node through its agent's explain address
//! (`--explain-addr`), when it answers. A flow that leaves for a node whose
//! agent does not answer (or for a router strait does not run on) ends
//! there, saying so.
//!
//! Namespace ids: `NODE:` is a node's own namespace, `NODE:PATH` the pod
//! namespace its allocation records.

use super::site::{PodAt, Scope, Site, SvcAt};
use super::Explanation;
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use strait_model::api::{MapEntry, MapQuestion, NodeStatus, Request, Response};
use strait_netlink::query::{self, QueryNs};

/// How long another node's agent has to answer one question.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

pub struct NodeSite {
    local: String,
    socket: PathBuf,
    /// The other nodes whose agents answered, at their explain address.
    peers: BTreeMap<String, SocketAddr>,
    /// Every pod namespace read: (node, netns path).
    pods: Vec<(String, String)>,
}

fn split(ns: &str) -> (&str, &str) {
    ns.split_once(':').unwrap_or((ns, ""))
}

fn expect_status(r: Response) -> anyhow::Result<NodeStatus> {
    match r {
        Response::Status(s) => Ok(*s),
        Response::Error(e) => anyhow::bail!("{}", e.message),
        other => anyhow::bail!("the agent answered {other:?}"),
    }
}

impl Site for NodeSite {
    fn ask(&self, ns: &str, tool: &str, args: &[&str]) -> anyhow::Result<Value> {
        let (node, path) = split(ns);
        if node == self.local {
            let where_ = if path.is_empty() {
                QueryNs::Here
            } else {
                QueryNs::of_path(path)
            };
            return query::json(where_, tool, args).map_err(|e| anyhow::anyhow!("{e}"));
        }
        let req = Request::Kernel {
            netns: (!path.is_empty()).then(|| path.to_string()),
            tool: tool.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        match self.agent(node, &req)? {
            Response::Kernel { answer } => Ok(answer),
            other => anyhow::bail!("{node}'s agent answered {other:?}"),
        }
    }

    fn agent(&self, node: &str, req: &Request) -> anyhow::Result<Response> {
        let r = if node == self.local {
            strait_cni::client::call(&self.socket, req)
        } else {
            let addr = self
                .peers
                .get(node)
                .with_context(|| format!("node {node}'s agent is not reachable from here"))?;
            strait_cni::client::call_at(*addr, req, PEER_TIMEOUT)
        };
        r.map_err(|e| anyhow::anyhow!("{}", e.msg))
    }

    fn map(&self, at: &str, q: &MapQuestion) -> Option<MapEntry> {
        let req = Request::Map {
            question: q.clone(),
        };
        match self.agent(at, &req).ok()? {
            Response::Map { entry } => entry,
            _ => None,
        }
    }

    fn netns_named(&self, from: &str, name: Option<&str>) -> Option<String> {
        let (node, path) = split(from);
        let pod = name.and_then(|n| {
            self.pods
                .iter()
                .find(|(pn, p)| pn == node && QueryNs::of_path(p) == QueryNs::Named(n))
        });
        match pod {
            Some((_, p)) => Some(format!("{node}:{p}")),
            // From a pod, anything else is its node's own namespace (the
            // far end of its veth, its macvlan's parent).
            None if !path.is_empty() => Some(format!("{node}:")),
            None => None,
        }
    }
}

/// Explain a flow from this node: `socket` is its agent; other nodes'
/// agents are asked at their node address and `peer_port`.
pub fn explain_on_node(
    socket: &std::path::Path,
    peer_port: u16,
    src: &str,
    dst: &str,
    backend: Option<IpAddr>,
) -> anyhow::Result<Explanation> {
    let me = strait_cni::client::status(socket).map_err(|e| anyhow::anyhow!("{}", e.msg))?;
    let mut statuses = vec![me.clone()];
    let mut peers = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    let mut node_ips: BTreeMap<String, IpAddr> = me
        .node_ip
        .map(|ip| (me.node.clone(), ip))
        .into_iter()
        .collect();
    // Every other node, at once: one that does not answer costs a timeout.
    let asked: Vec<(String, IpAddr, anyhow::Result<NodeStatus>)> = std::thread::scope(|s| {
        let hs: Vec<_> = me
            .node_routes
            .iter()
            .map(|r| {
                let (node, ip) = (r.node.clone(), r.via);
                s.spawn(move || {
                    let got = strait_cni::client::call_at(
                        SocketAddr::new(ip, peer_port),
                        &Request::Status,
                        PEER_TIMEOUT,
                    )
                    .map_err(|e| anyhow::anyhow!("{}", e.msg))
                    .and_then(expect_status);
                    (node, ip, got)
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (node, ip, got) in asked {
        node_ips.insert(node.clone(), ip);
        match got {
            Ok(st) if st.node == node => {
                peers.insert(node, SocketAddr::new(ip, peer_port));
                statuses.push(st);
            }
            Ok(st) => {
                unreachable.insert(
                    node.clone(),
                    format!("{ip}:{peer_port} answers as node {}, not {node}", st.node),
                );
            }
            Err(e) => {
                unreachable.insert(node, format!("{e:#}"));
            }
        }
    }
    let mut labels = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    let mut pods = vec![];
    for st in &statuses {
        let root = format!("{}:", st.node);
        labels.insert(root.clone(), st.node.clone());
        nodes.insert(root, st.node.clone());
        for a in &st.allocations {
            let ns = format!("{}:{}", st.node, a.netns);
            let label = super::live::label_of(&a.pod.namespace, &a.pod.name);
            labels.insert(ns.clone(), label.clone());
            pods.push(PodAt {
                label,
                node: st.node.clone(),
                netns: ns,
                ip: Some(a.ip),
            });
        }
    }
    let services = me
        .services
        .iter()
        .filter(|e| !e.external)
        .map(|e| SvcAt {
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            ip: e.frontend.ip.into(),
        })
        .collect();
    let site = NodeSite {
        local: me.node.clone(),
        socket: socket.to_path_buf(),
        peers,
        pods: pods
            .iter()
            .map(|p| {
                let (node, path) = split(&p.netns);
                (node.to_string(), path.to_string())
            })
            .collect(),
    };
    let scope = Scope {
        site: &site,
        what: format!("{} and the nodes whose agents answer it", me.node),
        labels,
        nodes,
        node_ips,
        pods,
        services,
        external: None,
        whole: false,
        unreachable,
        groups: None,
    };
    super::explain_in(scope, src, dst, backend)
}
