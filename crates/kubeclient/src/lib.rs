//! The kube-apiserver client every part of strait uses (the agent's source,
//! the lab's publisher and kubelet, the CLI).
//!
//! kube-rs builds its HTTP connector with Nagle's algorithm on. After the
//! TLS handshake the client's last handshake record is still unacknowledged
//! when the request is written, so the request waits for the server's
//! delayed ACK: 40 ms on Linux, on every new connection. A watch holds its
//! connection, so a write next to a watch often takes a new one: the lab
//! measured one EndpointSlice PATCH at 46 ms, of which 44 ms waiting for
//! that ACK (tcpdump, `bench/results/ctl-scale.md`). This is kube-rs's own
//! stack (TLS, timeouts, base URI, auth, extra headers) over a connector
//! with TCP_NODELAY, as Go's net/http (client-go) has by default.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;

/// A client for `cfg`, with TCP_NODELAY. Proxies are not supported (the
/// agent talks to the apiserver directly): a configured proxy is an error
/// rather than a silent bypass.
pub fn client(cfg: kube::Config) -> anyhow::Result<kube::Client> {
    if let Some(p) = &cfg.proxy_url {
        anyhow::bail!("the kubeconfig names a proxy ({p}); strait connects to the apiserver directly: remove proxy-url");
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = cfg.rustls_https_connector_with_connector(http)?;
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_connect_timeout(cfg.connect_timeout);
    timed.set_read_timeout(cfg.read_timeout);
    timed.set_write_timeout(cfg.write_timeout);
    timed.set_reset_reader_on_write(cfg.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timed);
    let service = tower::ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(cfg.auth_layer()?)
        .layer(cfg.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, cfg.default_namespace))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, BorrowedFd};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The socket the client opened to `server` has TCP_NODELAY set
    /// (kube-rs's own builder leaves it off: the request after a TLS
    /// handshake waits 40 ms for a delayed ACK).
    #[tokio::test]
    async fn requests_go_out_without_waiting_for_an_ack() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let cfg = kube::Config::new(format!("http://{server}").parse().unwrap());
        let client = super::client(cfg).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            // Keep the connection open until the client's socket is checked.
            rx.await.ok();
            let body = r#"{"major":"1","minor":"20","gitVersion":"v1.20.2","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let call = tokio::spawn(async move { client.apiserver_version().await });
        // The client's socket: the one of this process connected to `server`.
        let mut nodelay = None;
        for _ in 0..200 {
            for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
                let Ok(n) = fd.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                // SAFETY: only borrowed for two getsockopt calls while the
                // client holds it open (the server waits for `tx`).
                let fd = unsafe { BorrowedFd::borrow_raw(n) };
                let peer =
                    nix::sys::socket::getpeername::<nix::sys::socket::SockaddrIn>(fd.as_raw_fd());
                if peer.is_ok_and(|p| p.port() == server.port()) {
                    nodelay = Some(
                        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::TcpNoDelay)
                            .unwrap(),
                    );
                }
            }
            if nodelay.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tx.send(()).unwrap();
        assert_eq!(nodelay, Some(true), "the client's socket to {server}");
        let v = call.await.unwrap().unwrap();
        assert_eq!(v.git_version, "v1.20.2");
        serve.await.unwrap();
    }
}
