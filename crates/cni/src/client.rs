//! Blocking client for the agent's local API (one JSON line each way).

use crate::types::{CniError, ErrorCode};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use strait_model::api::{ApiErrorKind, Request, Response};

const TIMEOUT: Duration = Duration::from_secs(15);

pub fn call(socket: &Path, req: &Request) -> Result<Response, CniError> {
    let unreachable = |what: &str, e: std::io::Error| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the strait agent is not reachable at {} ({what}: {e}); check that `strait agent` runs on this node and that agentSocket in the network configuration points at its socket",
                socket.display()
            ),
        )
    };
    let mut s = UnixStream::connect(socket).map_err(|e| unreachable("connect", e))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    s.write_all(&line).map_err(|e| unreachable("send", e))?;
    let mut reader = BufReader::new(s);
    let mut resp = String::new();
    reader
        .read_line(&mut resp)
        .map_err(|e| unreachable("receive", e))?;
    if resp.is_empty() {
        return Err(unreachable(
            "receive",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without answering",
            ),
        ));
    }
    let resp: Response = serde_json::from_str(&resp).map_err(|e| {
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
