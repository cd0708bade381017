//! Where a walk reads live state from. A [`Site`] answers the three kinds
//! of question the walk asks (an iproute2 query in a namespace, a node's
//! agent, a node's BPF map); a [`Scope`] names what is there: namespaces,
//! nodes, pods, services. The lab sees every namespace of its cluster
//! ([`Scope::lab`]); a node sees its own and reaches the others through
//! their agents ([`super::node`]).

use crate::state::LabState;
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use strait_model::api::{MapEntry, MapQuestion, Request, Response};
use strait_netlink::query::{self, QueryNs};

pub trait Site: Sync {
    /// `tool -j args` in the namespace `ns` (a namespace id of the scope).
    fn ask(&self, ns: &str, tool: &str, args: &[&str]) -> anyhow::Result<Value>;
    /// A question to `node`'s agent.
    fn agent(&self, node: &str, req: &Request) -> anyhow::Result<Response>;
    /// A lookup in the maps of `at`: a node, or (in the lab) a router that
    /// runs VLAN programs ("gateway", "vpc").
    fn map(&self, at: &str, q: &MapQuestion) -> Option<MapEntry>;
    /// The namespace id of what `from`'s nsid table calls `name` (None:
    /// the table gives it no name).
    fn netns_named(&self, from: &str, name: Option<&str>) -> Option<String>;
}

/// A pod the walk knows.
#[derive(Clone, Debug)]
pub struct PodAt {
    /// As people name it: `name`, or `namespace/name` outside default.
    pub label: String,
    pub node: String,
    pub netns: String,
    pub ip: Option<IpAddr>,
}

/// A service's name and cluster address.
#[derive(Clone, Debug)]
pub struct SvcAt {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
}

pub struct Scope<'a> {
    pub site: &'a dyn Site,
    /// "lab NAME", or "node NAME": for messages.
    pub what: String,
    /// Every namespace id to read -> its display name.
    pub labels: BTreeMap<String, String>,
    /// Node namespace id -> node name.
    pub nodes: BTreeMap<String, String>,
    pub node_ips: BTreeMap<String, IpAddr>,
    pub pods: Vec<PodAt>,
    pub services: Vec<SvcAt>,
    /// The lab's external client; a source named `external`.
    pub external: Option<(String, IpAddr)>,
    /// Every namespace the flow can cross is read (the lab); else what is
    /// not read is left, not dropped.
    pub whole: bool,
    /// Nodes whose state could not be read, and why.
    pub unreachable: BTreeMap<String, String>,
    /// The lab VPC's security groups.
    pub groups: Option<super::vpc::Groups>,
}

impl Scope<'_> {
    pub fn pod(&self, target: &str) -> Option<&PodAt> {
        let label = target.strip_prefix("default/").unwrap_or(target);
        self.pods.iter().find(|p| p.label == label)
    }

    pub fn node_netns(&self, node: &str) -> Option<&String> {
        self.nodes
            .iter()
            .find(|(_, n)| n.as_str() == node)
            .map(|(ns, _)| ns)
    }

    /// A pod's or node's (or the lab's external client's) namespace and
    /// address.
    pub fn target(&self, target: &str) -> anyhow::Result<(String, IpAddr)> {
        if let Some(p) = self.pod(target) {
            let ip =
                p.ip.with_context(|| format!("pod {target} has no address"))?;
            return Ok((p.netns.clone(), ip));
        }
        if let (Some(ns), Some(ip)) = (self.node_netns(target), self.node_ips.get(target)) {
            return Ok((ns.clone(), *ip));
        }
        if let Some((ns, ip)) = self.external.as_ref().filter(|_| target == "external") {
            return Ok((ns.clone(), *ip));
        }
        let mut msg = format!(
            "{target:?} is neither a pod nor a node of {} (nodes: {}; pods: {})",
            self.what,
            self.nodes.values().cloned().collect::<Vec<_>>().join(", "),
            self.pods
                .iter()
                .map(|p| p.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (node, why) in &self.unreachable {
            msg.push_str(&format!(
                "; node {node} was not read ({why}): name its pods by address"
            ));
        }
        anyhow::bail!(msg)
    }

    pub fn service(&self, key: &str) -> Option<&SvcAt> {
        match key.split_once('/') {
            Some((ns, n)) => self
                .services
                .iter()
                .find(|s| s.namespace == ns && s.name == n),
            None => self.services.iter().find(|s| s.name == key),
        }
    }

    /// The node that holds `ip` as its address.
    pub fn node_at(&self, ip: IpAddr) -> Option<&String> {
        self.node_ips
            .iter()
            .find(|(_, a)| **a == ip)
            .map(|(n, _)| n)
    }
}

/// The lab: every namespace is on this machine, by name; agents on their
/// sockets; maps in their pin directories.
pub struct LabSite<'a> {
    pub st: &'a LabState,
}

impl Site for LabSite<'_> {
    fn ask(&self, ns: &str, tool: &str, args: &[&str]) -> anyhow::Result<Value> {
        query::json(QueryNs::Named(ns), tool, args).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn agent(&self, node: &str, req: &Request) -> anyhow::Result<Response> {
        let n = self
            .st
            .plan
            .node(node)
            .with_context(|| format!("no node {node}"))?;
        crate::run::agent_call(&self.st.socket(n), req)
    }

    fn map(&self, at: &str, q: &MapQuestion) -> Option<MapEntry> {
        let lab = &self.st.plan.name;
        let pins = match at {
            "gateway" => crate::gateway::pin_dir(lab),
            "vpc" => crate::cloud::kernel::pin_dir(lab),
            node => std::path::PathBuf::from(strait_model::lab::bpf_dir(lab, node)),
        };
        strait_bpf::lookup::answer(&pins, q)
    }

    fn netns_named(&self, _from: &str, name: Option<&str>) -> Option<String> {
        name.map(str::to_string)
    }
}

impl<'a> Scope<'a> {
    pub fn lab(site: &'a LabSite<'a>) -> Scope<'a> {
        let st = site.st;
        let plan = &st.plan;
        let external_ns = strait_model::lab::external_netns(&plan.name);
        Scope {
            site,
            what: format!("lab {}", plan.name),
            labels: existing(super::live::labels(plan)),
            nodes: plan
                .nodes
                .iter()
                .map(|n| (n.netns.clone(), n.name.clone()))
                .collect(),
            node_ips: plan
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.ip.into()))
                .collect(),
            pods: plan
                .pods
                .iter()
                .map(|p| PodAt {
                    label: super::live::pod_label(p),
                    node: p.node.clone(),
                    netns: p.netns.clone(),
                    ip: st.pod_ip(p),
                })
                .collect(),
            services: plan
                .services
                .iter()
                .map(|s| SvcAt {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    ip: s.cluster_ip.into(),
                })
                .collect(),
            external: Some((external_ns, crate::run::external_ip(plan).into())),
            whole: true,
            unreachable: BTreeMap::new(),
            groups: super::vpc::Groups::load(st),
        }
    }
}

/// The namespaces of `labels` that exist (a lab without a gateway has no
/// gateway namespace).
fn existing(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let names: std::collections::BTreeSet<String> = std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    labels.retain(|ns, _| names.contains(ns));
    labels
}
