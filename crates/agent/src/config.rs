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
    /// Directory of manifests watched by the files source.
    pub manifests_dir: PathBuf,
    /// How long a released address rests before reuse.
    pub ip_cooldown: Duration,
    /// Full resync period, on top of reacting to source changes.
    pub resync: Duration,
}
