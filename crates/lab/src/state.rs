//! Where a lab keeps its files: `/run/strait-lab/<name>/` (override with
//! STRAIT_LAB_DIR) holds the plan, the shared manifests directory, each
//! node's agent state, socket and log, and each pod's CNI result.

use anyhow::{bail, Context};
use std::path::PathBuf;
use strait_model::lab::{LabPlan, NodePlan, PodPlan};

pub fn labs_root() -> PathBuf {
    std::env::var_os("STRAIT_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/strait-lab"))
}

pub struct LabState {
    pub dir: PathBuf,
    pub plan: LabPlan,
}

impl LabState {
    pub fn dir_for(name: &str) -> PathBuf {
        labs_root().join(name)
    }

    pub fn load(name: &str) -> anyhow::Result<LabState> {
        let dir = Self::dir_for(name);
        let text = std::fs::read_to_string(dir.join("plan.json"))
            .with_context(|| format!("lab {name:?} is not up (no {}/plan.json)", dir.display()))?;
        Ok(LabState {
            plan: serde_json::from_str(&text).context("plan.json is corrupt")?,
            dir,
        })
    }

    /// The lab named `name`, or the only lab that is up.
    pub fn find(name: Option<&str>) -> anyhow::Result<LabState> {
        if let Some(n) = name {
            return Self::load(n);
        }
        let labs = list();
        match labs.as_slice() {
            [one] => Self::load(one),
            [] => bail!("no lab is up; start one with `strait lab up FILE`"),
            many => bail!(
                "several labs are up ({}); pick one with --lab NAME",
                many.join(", ")
            ),
        }
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }
    pub fn node_dir(&self, n: &NodePlan) -> PathBuf {
        self.dir.join("nodes").join(&n.name)
    }
    pub fn socket(&self, n: &NodePlan) -> PathBuf {
        self.node_dir(n).join("agent.sock")
    }
    pub fn cni_conf(&self, n: &NodePlan) -> PathBuf {
        self.node_dir(n).join("strait.conf")
    }
    pub fn pod_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }
    pub fn pod_result(&self, p: &PodPlan) -> PathBuf {
        self.pod_dir()
            .join(format!("{}_{}.json", p.namespace, p.name))
    }
    pub fn pod_pid(&self, p: &PodPlan) -> PathBuf {
        self.pod_dir()
            .join(format!("{}_{}.pid", p.namespace, p.name))
    }
    pub fn agent_pid(&self, n: &NodePlan) -> PathBuf {
        self.node_dir(n).join("agent.pid")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The pod's address, from the CNI result the lab stored at ADD.
    pub fn pod_ip(&self, p: &PodPlan) -> Option<std::net::IpAddr> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.pod_result(p)).ok()?).ok()?;
        let addr = v["ips"][0]["address"].as_str()?;
        addr.split('/').next()?.parse().ok()
    }

    pub fn container_id(&self, p: &PodPlan) -> String {
        format!("lab-{}-{}-{}", self.plan.name, p.namespace, p.name)
    }

    pub fn read_pid(path: &std::path::Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

/// Names of labs with state on disk.
pub fn list() -> Vec<String> {
    std::fs::read_dir(labs_root())
        .map(|rd| {
            let mut v: Vec<String> = rd
                .flatten()
                .filter(|e| e.path().join("plan.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default()
}
