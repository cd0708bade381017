//! Labs and namespaces a benchmark makes, and removes on drop (even when
//! it fails midway).

use std::path::PathBuf;
use std::time::Duration;
use strait_lab::cmd::ip;
use strait_lab::run::{self as labrun, Binaries};

pub struct Cleanup {
    /// Where the benchmark writes its lab files.
    pub dir: PathBuf,
    pub labs: Vec<String>,
    pub netns: Vec<String>,
    pub bins: Binaries,
}

impl Cleanup {
    pub fn new(dir: &str, bins: &Binaries) -> Self {
        Cleanup {
            dir: dir.into(),
            labs: vec![],
            netns: vec![],
            bins: Binaries {
                strait: bins.strait.clone(),
                cni: bins.cni.clone(),
            },
        }
    }

    /// Bring up the lab `name` from `yaml` (after removing a leftover of
    /// that name); it goes down with the cleanup.
    pub fn lab(&mut self, name: &str, yaml: &str) -> anyhow::Result<strait_lab::LabState> {
        let _ = labrun::down(name, &self.bins);
        std::fs::create_dir_all(&self.dir)?;
        let f = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml)?;
        self.labs.push(name.to_string());
        let st = labrun::up(&f, &self.bins)?;
        // Let the agents program the datapath (ebpf) before measuring.
        std::thread::sleep(Duration::from_millis(500));
        Ok(st)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = ip(&["netns", "del", n]);
        }
        for l in &self.labs {
            let _ = labrun::down(l, &self.bins);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// ADD through a reference CNI plugin (`/usr/lib/cni/<plugin>`), run in
/// the node namespace `node_netns`, for the pod namespace `pod_netns`.
/// Returns the plugin's result.
pub fn reference_add(
    plugin: &str,
    node_netns: &str,
    container_id: &str,
    pod_netns: &str,
    conf: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use strait_lab::run::netns_path;
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(node_netns).display()))
        .arg("--")
        .arg(format!("/usr/lib/cni/{plugin}"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns_path(pod_netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        anyhow::bail!("{plugin} plugin: {}", String::from_utf8_lossy(&o.stdout));
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}
