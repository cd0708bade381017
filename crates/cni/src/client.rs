//! Blocking client for the agent's local API (one JSON line each way).

use crate::types::{CniError, ErrorCode};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use strait_model::api::{ApiErrorKind, Request, Response};

const TIMEOUT: Duration = Duration::from_secs(15);

/// A request sent to the agent whose answer has not been read yet, so the
/// caller can do other work while the agent works.
pub struct Pending {
    reader: BufReader<UnixStream>,
    socket: std::path::PathBuf,
}

pub fn call(socket: &Path, req: &Request) -> Result<Response, CniError> {
    send(socket, req)?.wait()
}

/// Ask another node's agent at its explain address (TCP, read-only
/// questions), giving up after `timeout` per step.
pub fn call_at(
    addr: std::net::SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<Response, CniError> {
    let gone = |what: &str, e: std::io::Error| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("the strait agent at {addr} did not answer ({what}: {e}); is it started with --explain-addr, and is the port open between nodes?"),
        )
    };
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| gone("connect", e))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    s.set_nodelay(true).ok();
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    s.write_all(&line).map_err(|e| gone("send", e))?;
    let resp = read_reply(&mut BufReader::new(s)).map_err(|e| gone("receive", e))?;
    decode(&resp)
}

/// One answer line, bytes (not a String: an answer that is not UTF-8 is
/// garbage from something that answered, not an unreachable agent); a
/// connection closed without one is an error.
fn read_reply(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut resp = Vec::new();
    r.take(MAX_REPLY).read_until(b'\n', &mut resp)?;
    if resp.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering",
        ));
    }
    Ok(resp)
}

/// The agent's status (the CLI's `status`, `lb list` and `monitor`).
pub fn status(socket: &Path) -> Result<strait_model::api::NodeStatus, CniError> {
    match call(socket, &Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => Err(CniError::new(
            ErrorCode::IoFailure,
            format!("unexpected answer from the agent: {other:?}"),
        )),
    }
}

fn unreachable(socket: &Path, what: &str, e: std::io::Error) -> CniError {
    CniError::new(
        ErrorCode::TryAgainLater,
        format!(
            "the strait agent is not reachable at {} ({what}: {e}); check that `strait agent` runs on this node and that agentSocket in the network configuration points at its socket",
            socket.display()
        ),
    )
}

pub fn send(socket: &Path, req: &Request) -> Result<Pending, CniError> {
    let mut s = UnixStream::connect(socket).map_err(|e| unreachable(socket, "connect", e))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| unreachable(socket, "send", e))?;
    Ok(Pending {
        reader: BufReader::new(s),
        socket: socket.to_path_buf(),
    })
}

impl Pending {
    /// Send a follow-up request on the same connection and wait for its answer.
    pub fn ask(&mut self, req: &Request) -> Result<Response, CniError> {
        let mut line = serde_json::to_vec(req).expect("requests serialise");
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|e| unreachable(&self.socket, "send", e))?;
        self.wait()
    }

    pub fn wait(&mut self) -> Result<Response, CniError> {
        let resp =
            read_reply(&mut self.reader).map_err(|e| unreachable(&self.socket, "receive", e))?;
        decode(&resp)
    }
}

/// Longer answers than this are not the agent's (a status with thousands of
/// pods is a few MiB at most).
const MAX_REPLY: u64 = 64 << 20;

fn decode(resp: &[u8]) -> Result<Response, CniError> {
    let resp: Response = serde_json::from_slice(resp).map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("the agent's answer could not be decoded: {e}"),
        )
    })?;
    if let Response::Error(e) = resp {
        let code = match e.kind {
            ApiErrorKind::NotReady => ErrorCode::TryAgainLater,
            ApiErrorKind::Exhausted => ErrorCode::PoolExhausted,
            ApiErrorKind::Invalid => ErrorCode::InvalidConfig,
            ApiErrorKind::Internal => ErrorCode::IoFailure,
        };
        return Err(CniError::new(code, e.message));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connection on a throwaway socket, answered with `reply`.
    fn answer_with(reply: &'static [u8]) -> Result<Response, CniError> {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(c.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            c.write_all(reply).unwrap();
        });
        let out = call(&path, &Request::Status);
        t.join().unwrap();
        out
    }

    #[test]
    fn garbage_reply_is_a_decode_error_not_unreachable() {
        for reply in [
            &b"\xff\xfe\x00garbage\n"[..],
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
        ] {
            let e = answer_with(reply).unwrap_err();
            assert_eq!(e.code, ErrorCode::IoFailure, "{}", e.msg);
            assert!(e.msg.contains("could not be decoded"), "{}", e.msg);
        }
    }

    #[test]
    fn closed_without_answer_is_unreachable() {
        let e = answer_with(b"").unwrap_err();
        assert_eq!(e.code, ErrorCode::TryAgainLater, "{}", e.msg);
    }
}
