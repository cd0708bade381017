//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`, served on the
//! client port by etcd 3.4 and later), with no protobuf toolchain needed:
//!
//! - [`Client::range_prefix`]: every key under a prefix, paged, all pages at
//!   one revision (a consistent list however large);
//! - [`Client::put`], [`Client::delete`], [`Client::compact`];
//! - [`Client::watch_prefix`]: a watch from a given revision, so a watcher
//!   that lost its connection resumes exactly where it stopped; a compacted
//!   start revision is reported as [`WatchMsg::Compacted`] and the caller
//!   lists again.
//!
//! Plain HTTP only: etcd's client TLS is not supported yet.

pub mod wire;

pub use wire::{Event, Kv, WatchMsg};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as Hyper};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    #[error("etcd at {endpoint} unreachable: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("etcd at {endpoint}: no answer within {0:?}", REQUEST_TIMEOUT)]
    Timeout { endpoint: String },
    #[error("etcd at {endpoint}: {path} answered HTTP {status}: {body}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("etcd at {endpoint}: {path}: {source}")]
    Decode {
        endpoint: String,
        path: String,
        #[source]
        source: wire::DecodeError,
    },
    #[error("etcd: the revision asked for is compacted")]
    Compacted,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per page of a list.
const PAGE: usize = 1000;

#[derive(Clone)]
pub struct Client {
    endpoint: String,
    http: Hyper<HttpConnector, Full<Bytes>>,
}

/// A consistent list: every key under the prefix at `revision`.
#[derive(Debug, Default)]
pub struct Listing {
    pub kvs: Vec<Kv>,
    pub revision: i64,
}

impl Client {
    /// `endpoint` is `http://HOST:PORT` (etcd's client URL).
    pub fn new(endpoint: &str) -> Result<Self, Error> {
        let e = endpoint.trim_end_matches('/').to_string();
        if e.starts_with("https://") {
            return Err(Error::Endpoint(
                e,
                "TLS to etcd is not supported yet; use an http:// client URL",
            ));
        }
        let rest = e
            .strip_prefix("http://")
            .ok_or(Error::Endpoint(e.clone(), "expected http://HOST:PORT"))?;
        if rest.is_empty() || rest.contains('/') {
            return Err(Error::Endpoint(e, "expected http://HOST:PORT"));
        }
        let mut conn = HttpConnector::new();
        conn.set_keepalive(Some(Duration::from_secs(15)));
        conn.set_connect_timeout(Some(Duration::from_secs(3)));
        conn.set_nodelay(true);
        let http = Hyper::builder(hyper_util::rt::TokioExecutor::new()).build(conn);
        Ok(Client { endpoint: e, http })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn send(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let req = hyper::Request::post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request");
        self.http.request(req).await.map_err(|e| Error::Connect {
            endpoint: self.endpoint.clone(),
            source: Box::new(e),
        })
    }

    fn decode_err(&self, path: &str, source: wire::DecodeError) -> Error {
        if let wire::DecodeError::Server(m) = &source {
            if m.contains("required revision has been compacted") {
                return Error::Compacted;
            }
        }
        Error::Decode {
            endpoint: self.endpoint.clone(),
            path: path.into(),
            source,
        }
    }

    /// One unary call.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let fut = async {
            let resp = self.send(path, body).await?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Connect {
                    endpoint: self.endpoint.clone(),
                    source: Box::new(e),
                })?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != 200 {
                if let Some(m) = v["message"].as_str().or(v["error"].as_str()) {
                    if m.contains("required revision has been compacted") {
                        return Err(Error::Compacted);
                    }
                }
                return Err(Error::Status {
                    endpoint: self.endpoint.clone(),
                    path: path.into(),
                    status,
                    body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                });
            }
            Ok(v)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| Error::Timeout {
                endpoint: self.endpoint.clone(),
            })?
    }

    /// Every key under `prefix`, in pages, all at the revision of the
    /// first page.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<Listing, Error> {
        let end = wire::prefix_end(prefix);
        let mut out = Listing::default();
        let mut from = prefix.to_vec();
        loop {
            let mut req = json!({
                "key": wire::b64(&from),
                "range_end": wire::b64(&end),
                "limit": PAGE,
            });
            if out.revision > 0 {
                req["revision"] = out.revision.into();
            }
            let v = self.call("/v3/kv/range", &req).await?;
            let (kvs, more, rev) =
                wire::range(&v).map_err(|e| self.decode_err("/v3/kv/range", e))?;
            if out.revision == 0 {
                out.revision = rev;
            }
            let last = kvs.last().map(|kv| kv.key.clone());
            out.kvs.extend(kvs);
            match (more, last) {
                (true, Some(mut k)) => {
                    // The next page starts just after the last key.
                    k.push(0);
                    from = k;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Write `value` at `key`; returns the new revision.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, Error> {
        let v = self
            .call(
                "/v3/kv/put",
                &json!({"key": wire::b64(key), "value": wire::b64(value)}),
            )
            .await?;
        Ok(wire::revision(&v))
    }

    /// Write `value` at `key` only if the key does not exist (a
    /// transaction comparing its create_revision with 0). True when written.
    pub async fn put_if_absent(&self, key: &[u8], value: &[u8]) -> Result<bool, Error> {
        let v = self
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{"target": "CREATE", "result": "EQUAL", "key": wire::b64(key), "create_revision": "0"}],
                    "success": [{"request_put": {"key": wire::b64(key), "value": wire::b64(value)}}],
                }),
            )
            .await?;
        // The JSON gateway leaves false booleans out.
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Delete `key`; returns how many keys went (0 or 1).
    pub async fn delete(&self, key: &[u8]) -> Result<i64, Error> {
        let v = self
            .call("/v3/kv/deleterange", &json!({"key": wire::b64(key)}))
            .await?;
        Ok(wire::int(&v["deleted"]))
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, Error> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({"key": wire::b64(b"\0"), "count_only": true}),
            )
            .await?;
        Ok(wire::revision(&v))
    }

    /// Compact the history up to `revision` (watches from before it get
    /// [`WatchMsg::Compacted`]).
    pub async fn compact(&self, revision: i64) -> Result<(), Error> {
        self.call(
            "/v3/kv/compaction",
            &json!({"revision": revision, "physical": true}),
        )
        .await?;
        Ok(())
    }

    /// Watch every key under `prefix` from `start_revision` on (inclusive).
    pub async fn watch_prefix(&self, prefix: &[u8], start_revision: i64) -> Result<Watch, Error> {
        let req = json!({"create_request": {
            "key": wire::b64(prefix),
            "range_end": wire::b64(&wire::prefix_end(prefix)),
            "start_revision": start_revision,
        }});
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send("/v3/watch", &req))
            .await
            .map_err(|_| Error::Timeout {
                endpoint: self.endpoint.clone(),
            })??;
        if resp.status() != 200 {
            return Err(Error::Status {
                endpoint: self.endpoint.clone(),
                path: "/v3/watch".into(),
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(Watch {
            client: self.clone(),
            body: resp.into_body(),
            buf: vec![],
            pending: Default::default(),
        })
    }
}

/// An open watch stream.
pub struct Watch {
    client: Client,
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Value>,
}

impl Watch {
    /// The next message; `Ok(None)` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchMsg>, Error> {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return wire::watch_msg(&v)
                    .map(Some)
                    .map_err(|e| self.client.decode_err("/v3/watch", e));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::Connect {
                        endpoint: self.client.endpoint.clone(),
                        source: Box::new(e),
                    })
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                        let msgs =
                            wire::split_messages(&mut self.buf).map_err(|e| Error::Decode {
                                endpoint: self.client.endpoint.clone(),
                                path: "/v3/watch".into(),
                                source: wire::DecodeError::Shape {
                                    what: "watch stream",
                                    msg: e.to_string(),
                                },
                            })?;
                        self.pending.extend(msgs);
                    }
                }
            }
        }
    }
}
