//! Blocking client for the agent's local API (one JSON line each way).

use crate::types::{CniError, ErrorCode};
use std::io::{BufRead, BufReader, Write};
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
    /// Send a follow-up request on the same connection without waiting for
    /// its answer (best effort).
    pub fn notify(&mut self, req: &Request) {
        let mut line = serde_json::to_vec(req).expect("requests serialise");
        line.push(b'\n');
        let _ = self.reader.get_mut().write_all(&line);
    }

    pub fn wait(&mut self) -> Result<Response, CniError> {
        let socket = self.socket.as_path();
        let mut resp = String::new();
        self.reader
            .read_line(&mut resp)
            .map_err(|e| unreachable(socket, "receive", e))?;
        if resp.is_empty() {
            return Err(unreachable(
                socket,
                "receive",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection without answering",
                ),
            ));
        }
        decode(&resp)
    }
}

fn decode(resp: &str) -> Result<Response, CniError> {
    let resp: Response = serde_json::from_str(resp).map_err(|e| {
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
