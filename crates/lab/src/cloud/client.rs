//! The lab cloud's [`EniProvider`]: each call one JSON line over the
//! emulator's socket.

use super::{Answer, Call};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use strait_model::cloud::provider::{CloudError, Eni, EniProvider};

pub struct LabCloud {
    pub socket: PathBuf,
}

impl LabCloud {
    pub fn call(&self, call: &Call) -> Result<Answer, CloudError> {
        let down = |e: std::io::Error| CloudError::Unavailable {
            message: format!("lab cloud at {}: {e}", self.socket.display()),
        };
        let mut s = UnixStream::connect(&self.socket).map_err(down)?;
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

impl EniProvider for LabCloud {
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
}
