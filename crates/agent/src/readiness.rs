//! Telling the node the network is ready, once it is: after the cluster
//! source has listed everything and the endpoints reconciler has finished
//! its first pass (pods recovered, routes in place), the agent
//!
//! - writes the CNI conflist into the runtime's config directory
//!   (`--cni-conf-dir`): kubelet reports the node NotReady and runtimes wire
//!   no pod until a config exists, so no pod ever meets an agent that
//!   cannot serve it;
//! - with the kube source, sets the Node's `NetworkUnavailable` condition
//!   to False, as Calico does.

use crate::daemon::Agent;
use std::sync::Arc;
use std::time::Duration;

pub async fn announce(agent: Arc<Agent>, client: Option<kube::Client>) {
    let mut rx = agent.programmed.subscribe();
    while rx.borrow_and_update().is_none() {
        if rx.changed().await.is_err() {
            return;
        }
    }
    if let Some(dir) = &agent.cfg.cni_conf_dir {
        match write_conf(&agent, dir) {
            Ok(path) => {
                tracing::info!(path = %path.display(), "CNI configuration installed: the node's runtime may wire pods")
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot install the CNI configuration; pods on this node will not start")
            }
        }
    }
    if let Some(c) = client {
        let mut delay = Duration::from_millis(200);
        loop {
            match network_available(&c, &agent.cfg.node_name).await {
                Ok(()) => {
                    tracing::info!("Node condition NetworkUnavailable=False set");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set the Node's NetworkUnavailable condition; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

fn write_conf(agent: &Agent, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let conf = strait_model::cniconf::CniConf {
        cni_version: agent.cfg.cni_version.clone(),
        agent_socket: agent.cfg.socket.display().to_string(),
        mtu: agent.cfg.mtu,
        portmap: true,
    }
    .conflist()
    .map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("10-strait.conflist");
    let tmp = dir.join(".10-strait.conflist.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&conf)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

async fn network_available(c: &kube::Client, node: &str) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Node, NodeCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let cond = NodeCondition {
        type_: "NetworkUnavailable".into(),
        status: "False".into(),
        reason: Some("StraitIsUp".into()),
        message: Some("strait agent is running on this node".into()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    };
    let api: kube::Api<Node> = kube::Api::all(c.clone());
    api.patch_status(
        node,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(serde_json::json!({"status": {"conditions": [cond]}})),
    )
    .await
    .map(|_| ())
}
