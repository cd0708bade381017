//! `strait lab cloud-serve`: the VPC emulator's process, in the VPC
//! namespace. One call at a time (the cloud's API is the serialisation
//! point): the call is tried on a copy of the records, the kernel is made
//! to match the copy, the copy is written (atomically, synced) and only
//! then answered. A failure leaves the records as they were, and the next
//! call (or a restart) brings the kernel back to them.

use super::{Answer, Call};
use crate::state::LabState;
use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use strait_model::cloud::provider::CloudError;
use strait_model::cloud::vpc::Vpc;

pub(crate) fn load(st: &LabState) -> anyhow::Result<Vpc> {
    let path = super::records(st);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).with_context(|| format!("read {}", path.display()));
    }
    let spec = st
        .plan
        .cloud
        .clone()
        .context("the lab has no cloud section")?;
    let mut vpc = Vpc::new(spec).map_err(anyhow::Error::msg)?;
    for n in &st.plan.nodes {
        vpc.adopt_node(&n.name, n.ip.into());
    }
    Ok(vpc)
}

fn save(st: &LabState, vpc: &Vpc) -> anyhow::Result<()> {
    let path = super::records(st);
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(vpc)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Apply `call` to the records; kernel and disk follow before the answer.
fn handle(st: &LabState, vpc: &mut Vpc, call: Call) -> Answer {
    let mut next = vpc.clone();
    let answer = match call {
        Call::Describe { node } => {
            return Answer::Enis {
                enis: vpc.describe(&node),
            }
        }
        Call::List => {
            return Answer::Enis {
                enis: vpc.enis.values().cloned().collect(),
            }
        }
        Call::CreateEni {
            node,
            vswitch,
            security_groups,
            trunk,
        } => next
            .create_eni(&node, &vswitch, &security_groups, trunk)
            .map(|eni| Answer::Eni { eni }),
        Call::DeleteEni { eni } => next.delete_eni(&eni).map(|_| Answer::Done),
        Call::AssignIps { eni, count } => {
            next.assign_ips(&eni, count).map(|ips| Answer::Ips { ips })
        }
        Call::UnassignIps { eni, ips } => next.unassign_ips(&eni, &ips).map(|_| Answer::Done),
        Call::CreateMember {
            trunk,
            vswitch,
            security_groups,
        } => next
            .create_member(&trunk, &vswitch, &security_groups)
            .map(|eni| Answer::Eni { eni }),
        Call::Limits { .. } => {
            return Answer::Limits {
                quota: vpc.spec.quota,
            }
        }
        Call::VSwitch { id } => {
            return match vpc.spec.vswitch(&id) {
                Some(v) => Answer::VSwitch { vswitch: v.clone() },
                None => Answer::Error {
                    error: CloudError::NotFound {
                        what: "vSwitch".into(),
                        id,
                    },
                },
            }
        }
        Call::SetSlbBackends {
            slb,
            port,
            backends,
        } => next
            .set_slb_backends(&slb, port, &backends)
            .map(|_| Answer::Done),
        Call::RemoveNode { node } => Ok(Answer::Enis {
            enis: next.remove_node(&node),
        }),
    };
    let answer = match answer {
        Ok(a) => a,
        Err(error) => return Answer::Error { error },
    };
    let applied = super::kernel::sync(st, &next).and_then(|_| save(st, &next));
    match applied {
        Ok(()) => {
            *vpc = next;
            answer
        }
        Err(e) => Answer::Error {
            error: CloudError::Unavailable {
                message: format!("{e:#}"),
            },
        },
    }
}

pub fn serve(st: &LabState) -> anyhow::Result<()> {
    let mut vpc = load(st)?;
    // The records are the truth: the kernel follows them from the start.
    for c in super::kernel::sync(st, &vpc)? {
        eprintln!("cloud: {c}");
    }
    save(st, &vpc)?;
    let path = super::socket(st);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    eprintln!("cloud: serving {}", path.display());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut w = conn.try_clone()?;
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            let answer = match serde_json::from_str::<Call>(&line) {
                Ok(call) => {
                    eprintln!("cloud: {call:?}");
                    handle(st, &mut vpc, call)
                }
                Err(e) => Answer::Error {
                    error: CloudError::Invalid {
                        message: format!("not a call: {e}"),
                    },
                },
            };
            // An answer always goes back; a bad one never stops the cloud.
            let mut out = serde_json::to_vec(&answer).unwrap_or_else(|e| {
                format!("{{\"result\":\"error\",\"error\":{{\"kind\":\"unavailable\",\"message\":\"answer: {e}\"}}}}")
                    .into_bytes()
            });
            out.push(b'\n');
            if w.write_all(&out).is_err() {
                break;
            }
        }
    }
    Ok(())
}
