//! What `strait explain` on another node asks this one: read-only
//! questions (its status, a service frontend, a policy verdict, one
//! iproute2 query, one map lookup), served on the socket and, with
//! `--explain-addr`, on a TCP address other nodes reach. Nothing asked
//! there changes the node.

use crate::api::Access;
use crate::daemon::Agent;
use std::sync::Arc;
use strait_model::api::{kernel_query_allowed, ApiError, ApiErrorKind, Request, Response};
use strait_netlink::query::{self, QueryNs};

/// Whether the network listener answers `req`.
pub fn read_only(req: &Request) -> bool {
    matches!(
        req,
        Request::Status
            | Request::ServiceLookup { .. }
            | Request::PolicyExplain { .. }
            | Request::Kernel { .. }
            | Request::Map { .. }
    )
}

fn invalid(message: String) -> Response {
    Response::Error(ApiError {
        kind: ApiErrorKind::Invalid,
        message,
    })
}

/// One iproute2 query, in the node's namespace or one of its pods'.
pub fn kernel(agent: &Agent, netns: Option<&str>, tool: &str, args: &[String]) -> Response {
    if !kernel_query_allowed(tool, args) {
        return invalid(format!(
            "{tool} {} is not one of the queries explain may ask",
            args.join(" ")
        ));
    }
    let ns = match netns {
        None => QueryNs::Here,
        // Only a namespace this node's pods live in.
        Some(p) if agent.ipam.allocations().iter().any(|a| a.netns == p) => QueryNs::of_path(p),
        Some(p) => return invalid(format!("{p} is not the namespace of a pod of this node")),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match query::json(ns, tool, &args) {
        Ok(answer) => Response::Kernel { answer },
        Err(e) => Response::Error(ApiError {
            kind: ApiErrorKind::Internal,
            message: e,
        }),
    }
}

/// Bind the explain listener: a taken port stops start-up, as the metrics
/// port does.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("explain address {addr}: {e} (change --explain-addr)"))
}

pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let listener = Arc::new(listener);
    crate::api::serve_on(agent, Access::ReadOnly, move || {
        let l = listener.clone();
        async move {
            let (c, _) = l.accept().await?;
            c.set_nodelay(true)?;
            Ok(c)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use strait_model::api::{kernel_query_allowed, MapQuestion, Request};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_reads_are_answered() {
        assert!(kernel_query_allowed(
            "ip",
            &args(&[
                "route",
                "get",
                "198.19.1.2",
                "from",
                "198.19.0.2",
                "iif",
                "eth0"
            ])
        ));
        assert!(kernel_query_allowed(
            "tc",
            &args(&["filter", "show", "dev", "eth0", "ingress"])
        ));
        assert!(kernel_query_allowed("ip", &args(&["-d", "addr", "show"])));
        // Writes, other tools, options that switch namespace or batch.
        assert!(!kernel_query_allowed(
            "ip",
            &args(&["route", "add", "1.2.3.0/24"])
        ));
        assert!(!kernel_query_allowed("ip", &args(&["link", "del", "eth0"])));
        assert!(!kernel_query_allowed("sh", &args(&["-c", "true"])));
        assert!(!kernel_query_allowed(
            "ip",
            &args(&["route", "get", "-n", "x"])
        ));
        assert!(!kernel_query_allowed("ip", &args(&["-batch", "f"])));
        assert!(!kernel_query_allowed("ip", &args(&["route"])));
        // The network listener: reads only.
        assert!(super::read_only(&Request::Map {
            question: MapQuestion::Tunnel
        }));
        assert!(super::read_only(&Request::Status));
        assert!(!super::read_only(&Request::Gc { valid: vec![] }));
        assert!(!super::read_only(&Request::Release {
            attachment: Default::default()
        }));
    }
}
