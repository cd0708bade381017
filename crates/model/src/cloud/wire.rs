//! The cloud API as the lab's VPC emulator serves it, and its client: each
//! call is one JSON line over a unix socket, answered by one JSON line.
//! The agent talks to the lab's cloud through [`SocketCloud`] (an
//! [`EniProvider`]); a real cloud would be another provider, not this
//! protocol.

use super::provider::{CloudError, Eni, EniProvider};
use super::{Quota, VSwitchSpec};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// One call, as it crosses the socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "call"
)]
pub enum Call {
    Describe {
        node: String,
    },
    CreateEni {
        node: String,
        vswitch: String,
        security_groups: Vec<String>,
        trunk: bool,
    },
    DeleteEni {
        eni: String,
    },
    AssignIps {
        eni: String,
        count: usize,
    },
    UnassignIps {
        eni: String,
        ips: Vec<IpAddr>,
    },
    CreateMember {
        trunk: String,
        vswitch: String,
        security_groups: Vec<String>,
    },
    Limits {
        node: String,
    },
    VSwitch {
        id: String,
    },
    /// A listener's backends, each a pod's address on its ENI
    /// (SetBackendServers; the cloud controller's call, not the agent's).
    SetSlbBackends {
        slb: String,
        port: u16,
        backends: Vec<(IpAddr, u16)>,
    },
    /// The lab's own: a node is released with everything on it.
    RemoveNode {
        node: String,
    },
    /// The lab's own: every record.
    List,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Answer {
    Enis { enis: Vec<Eni> },
    Eni { eni: Eni },
    Ips { ips: Vec<IpAddr> },
    Limits { quota: Quota },
    VSwitch { vswitch: VSwitchSpec },
    Done,
    Error { error: CloudError },
}

/// A cloud answering [`Call`]s on a unix socket (the lab's emulator).
pub struct SocketCloud {
    pub socket: PathBuf,
}

/// How long one call may take before the cloud counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl SocketCloud {
    pub fn call(&self, call: &Call) -> Result<Answer, CloudError> {
        let down = |e: std::io::Error| CloudError::Unavailable {
            message: format!("cloud at {}: {e}", self.socket.display()),
        };
        let mut s = UnixStream::connect(&self.socket).map_err(down)?;
        s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(down)?;
        s.set_write_timeout(Some(CALL_TIMEOUT)).map_err(down)?;
        let mut line = serde_json::to_vec(call).expect("calls serialise");
        line.push(b'\n');
        s.write_all(&line).map_err(down)?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).map_err(down)?;
        match serde_json::from_str(&answer) {
            Ok(Answer::Error { error }) => Err(error),
            Ok(a) => Ok(a),
            Err(e) => Err(CloudError::Unavailable {
                message: format!("answer {answer:?}: {e}"),
            }),
        }
    }

    fn enis(&self, call: &Call) -> Result<Vec<Eni>, CloudError> {
        match self.call(call)? {
            Answer::Enis { enis } => Ok(enis),
            a => Err(unexpected(a)),
        }
    }

    fn eni(&self, call: &Call) -> Result<Eni, CloudError> {
        match self.call(call)? {
            Answer::Eni { eni } => Ok(eni),
            a => Err(unexpected(a)),
        }
    }

    fn done(&self, call: &Call) -> Result<(), CloudError> {
        match self.call(call)? {
            Answer::Done => Ok(()),
            a => Err(unexpected(a)),
        }
    }

    pub fn set_slb_backends(
        &self,
        slb: &str,
        port: u16,
        backends: &[(IpAddr, u16)],
    ) -> Result<(), CloudError> {
        self.done(&Call::SetSlbBackends {
            slb: slb.into(),
            port,
            backends: backends.to_vec(),
        })
    }

    /// Every record (the lab's view, for `strait lab cloud`).
    pub fn list(&self) -> Result<Vec<Eni>, CloudError> {
        self.enis(&Call::List)
    }

    /// Release a node and everything on it.
    pub fn remove_node(&self, node: &str) -> Result<Vec<Eni>, CloudError> {
        self.enis(&Call::RemoveNode { node: node.into() })
    }
}

fn unexpected(a: Answer) -> CloudError {
    CloudError::Unavailable {
        message: format!("unexpected answer {a:?}"),
    }
}

impl EniProvider for SocketCloud {
    fn describe(&self, node: &str) -> Result<Vec<Eni>, CloudError> {
        self.enis(&Call::Describe { node: node.into() })
    }
    fn create_eni(
        &self,
        node: &str,
        vswitch: &str,
        security_groups: &[String],
        trunk: bool,
    ) -> Result<Eni, CloudError> {
        self.eni(&Call::CreateEni {
            node: node.into(),
            vswitch: vswitch.into(),
            security_groups: security_groups.to_vec(),
            trunk,
        })
    }
    fn delete_eni(&self, eni: &str) -> Result<(), CloudError> {
        self.done(&Call::DeleteEni { eni: eni.into() })
    }
    fn assign_ips(&self, eni: &str, count: usize) -> Result<Vec<IpAddr>, CloudError> {
        match self.call(&Call::AssignIps {
            eni: eni.into(),
            count,
        })? {
            Answer::Ips { ips } => Ok(ips),
            a => Err(unexpected(a)),
        }
    }
    fn unassign_ips(&self, eni: &str, ips: &[IpAddr]) -> Result<(), CloudError> {
        self.done(&Call::UnassignIps {
            eni: eni.into(),
            ips: ips.to_vec(),
        })
    }
    fn create_member(
        &self,
        trunk: &str,
        vswitch: &str,
        security_groups: &[String],
    ) -> Result<Eni, CloudError> {
        self.eni(&Call::CreateMember {
            trunk: trunk.into(),
            vswitch: vswitch.into(),
            security_groups: security_groups.to_vec(),
        })
    }
    fn limits(&self, node: &str) -> Result<Quota, CloudError> {
        match self.call(&Call::Limits { node: node.into() })? {
            Answer::Limits { quota } => Ok(quota),
            a => Err(unexpected(a)),
        }
    }
    fn vswitch(&self, id: &str) -> Result<VSwitchSpec, CloudError> {
        match self.call(&Call::VSwitch { id: id.into() })? {
            Answer::VSwitch { vswitch } => Ok(vswitch),
            a => Err(unexpected(a)),
        }
    }
}
