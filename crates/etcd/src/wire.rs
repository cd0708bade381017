//! etcd v3's JSON gateway messages, decoded without I/O. The gateway speaks
//! the gRPC API's JSON mapping: bytes are base64, 64-bit integers are
//! strings, fields at their zero value are left out (a PUT event has no
//! `type`; a first revision of 0 is absent).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

/// One key and its value at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: Vec<u8>, mod_revision: i64 },
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMsg {
    /// The watch exists; events after `revision` follow.
    Created { revision: i64 },
    /// Changes, in revision order; `revision` is the store's revision when
    /// they were sent.
    Events { revision: i64, events: Vec<Event> },
    /// The start revision was compacted away: the watcher must list again.
    Compacted { compact_revision: i64 },
    /// The server ended the watch for another reason.
    Canceled { reason: String },
    /// A progress notification or an empty message.
    Progress { revision: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("etcd answered with an error: {0}")]
    Server(String),
    #[error("unexpected etcd message ({what}): {msg}")]
    Shape { what: &'static str, msg: String },
}

fn shape(what: &'static str, v: &Value) -> DecodeError {
    let mut msg = v.to_string();
    msg.truncate(200);
    DecodeError::Shape { what, msg }
}

/// A 64-bit integer as the gateway writes it (a string), or a number.
pub fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(v: &Value, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    match v {
        Value::Null => Ok(vec![]),
        Value::String(s) => B64.decode(s).map_err(|_| shape(what, v)),
        _ => Err(shape(what, v)),
    }
}

/// The end of the range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

pub fn kv(v: &Value) -> Result<Kv, DecodeError> {
    Ok(Kv {
        key: unb64(&v["key"], "kv key")?,
        value: unb64(&v["value"], "kv value")?,
        mod_revision: int(&v["mod_revision"]),
    })
}

/// The store revision of a response.
pub fn revision(v: &Value) -> i64 {
    int(&v["header"]["revision"])
}

fn server_error(v: &Value) -> Option<DecodeError> {
    let e = v.get("error")?;
    let msg = e["message"]
        .as_str()
        .or_else(|| e["error"].as_str())
        .map(String::from)
        .unwrap_or_else(|| e.to_string());
    Some(DecodeError::Server(msg))
}

/// A range response: its keys, whether more follow, and the revision.
pub fn range(v: &Value) -> Result<(Vec<Kv>, bool, i64), DecodeError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    let kvs = match &v["kvs"] {
        Value::Null => vec![],
        Value::Array(a) => a.iter().map(kv).collect::<Result<_, _>>()?,
        other => return Err(shape("range kvs", other)),
    };
    Ok((kvs, v["more"].as_bool().unwrap_or(false), revision(v)))
}

/// One watch stream message (`{"result": ...}` or `{"error": ...}`).
pub fn watch_msg(v: &Value) -> Result<WatchMsg, DecodeError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    let r = v.get("result").ok_or_else(|| shape("watch message", v))?;
    let rev = revision(r);
    let compact = int(&r["compact_revision"]);
    if compact > 0 {
        return Ok(WatchMsg::Compacted {
            compact_revision: compact,
        });
    }
    if r["canceled"].as_bool() == Some(true) {
        return Ok(WatchMsg::Canceled {
            reason: r["cancel_reason"].as_str().unwrap_or_default().into(),
        });
    }
    if r["created"].as_bool() == Some(true) {
        return Ok(WatchMsg::Created { revision: rev });
    }
    let events = match &r["events"] {
        Value::Null => return Ok(WatchMsg::Progress { revision: rev }),
        Value::Array(a) => a,
        other => return Err(shape("watch events", other)),
    };
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let kv = kv(&e["kv"])?;
        out.push(match e["type"].as_str() {
            None | Some("PUT") => Event::Put(kv),
            Some("DELETE") => Event::Delete {
                key: kv.key,
                mod_revision: kv.mod_revision,
            },
            Some(_) => return Err(shape("watch event type", e)),
        });
    }
    Ok(WatchMsg::Events {
        revision: rev,
        events: out,
    })
}

/// Split complete JSON messages off the front of a stream buffer; a
/// trailing partial message stays for the next read.
pub fn split_messages(buf: &mut Vec<u8>) -> Result<Vec<Value>, serde_json::Error> {
    let mut out = vec![];
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    let mut used = 0;
    loop {
        match it.next() {
            Some(Ok(v)) => {
                used = it.byte_offset();
                out.push(v);
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(e),
            None => {
                used = buf.len();
                break;
            }
        }
    }
    // Whitespace between messages goes with the message before it.
    while buf.get(used).is_some_and(|b| b.is_ascii_whitespace()) {
        used += 1;
    }
    buf.drain(..used);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/strait/"), b"/strait0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    // Messages as etcd 3.4.23's gateway sent them (captured with curl).
    #[test]
    fn range_response() {
        let v: Value = serde_json::from_str(r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"3","raft_term":"2"},"kvs":[{"key":"L3N0cmFpdC92MS9ub2Rlcy9h","create_revision":"2","mod_revision":"2","version":"1","value":"e30="}],"more":true,"count":"2"}"#).unwrap();
        let (kvs, more, rev) = range(&v).unwrap();
        assert_eq!(rev, 3);
        assert!(more);
        assert_eq!(kvs[0].key, b"/strait/v1/nodes/a");
        assert_eq!(kvs[0].value, b"{}");
        assert_eq!(kvs[0].mod_revision, 2);
        let empty: Value = serde_json::from_str(r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"3","raft_term":"2"}}"#).unwrap();
        assert_eq!(range(&empty).unwrap(), (vec![], false, 3));
    }

    #[test]
    fn watch_messages() {
        let created: Value = serde_json::from_str(
            r#"{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"3","raft_term":"2"},"created":true}}"#,
        )
        .unwrap();
        assert_eq!(
            watch_msg(&created).unwrap(),
            WatchMsg::Created { revision: 3 }
        );
        let put: Value = serde_json::from_str(r#"{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"4","raft_term":"2"},"events":[{"kv":{"key":"L3N0cmFpdC92MS9ub2Rlcy9j","create_revision":"4","mod_revision":"4","version":"1","value":"e30="}}]}}"#).unwrap();
        assert_eq!(
            watch_msg(&put).unwrap(),
            WatchMsg::Events {
                revision: 4,
                events: vec![Event::Put(Kv {
                    key: b"/strait/v1/nodes/c".to_vec(),
                    value: b"{}".to_vec(),
                    mod_revision: 4
                })]
            }
        );
        let del: Value = serde_json::from_str(r#"{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"5","raft_term":"2"},"events":[{"type":"DELETE","kv":{"key":"L3N0cmFpdC92MS9ub2Rlcy9h","mod_revision":"5"}}]}}"#).unwrap();
        assert_eq!(
            watch_msg(&del).unwrap(),
            WatchMsg::Events {
                revision: 5,
                events: vec![Event::Delete {
                    key: b"/strait/v1/nodes/a".to_vec(),
                    mod_revision: 5
                }]
            }
        );
        // A watch from a compacted revision: created, then at once this.
        let compacted: Value = serde_json::from_str(
            r#"{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#,
        )
        .unwrap();
        assert_eq!(
            watch_msg(&compacted).unwrap(),
            WatchMsg::Compacted {
                compact_revision: 4
            }
        );
        let err: Value = serde_json::from_str(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
        )
        .unwrap();
        assert!(matches!(watch_msg(&err), Err(DecodeError::Server(m)) if m.contains("no leader")));
        let bad: Value =
            serde_json::from_str(r#"{"result":{"events":[{"kv":{"key":"not base64!"}}]}}"#)
                .unwrap();
        assert!(watch_msg(&bad).is_err());
    }

    #[test]
    fn a_stream_is_split_into_messages_across_reads() {
        let mut buf = br#"{"result":{"created":true}}
{"result":{"ev"#
            .to_vec();
        let got = split_messages(&mut buf).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(buf, br#"{"result":{"ev"#.to_vec());
        buf.extend_from_slice(br#"ents":[]}}{"result":{}}"#);
        assert_eq!(split_messages(&mut buf).unwrap().len(), 2);
        assert!(buf.is_empty());
        let mut junk = b"{]".to_vec();
        assert!(split_messages(&mut junk).is_err());
    }
}
