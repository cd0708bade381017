//! healthCheckNodePort servers: one HTTP server per port, answering 200
//! while this node has a local backend for the service and 503 otherwise
//! (what cloud load balancers probe for externalTrafficPolicy Local).
//! Each connection gets its own task and a read deadline, so a client that
//! never sends its request holds nothing up.

use super::{Reconciler, Report};
use crate::daemon::Agent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_model::cluster::ClusterSnapshot;

const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Probes served at once per port; more are closed unanswered.
const MAX_CONNS: usize = 64;

#[derive(Default)]
pub struct Health {
    /// port -> (server task, local endpoints).
    servers: HashMap<u16, (tokio::task::JoinHandle<()>, Arc<AtomicUsize>)>,
}

impl Drop for Health {
    fn drop(&mut self) {
        for (task, _) in self.servers.values() {
            task.abort();
        }
    }
}

impl Reconciler for Health {
    const NAME: &'static str = "health";
    const READS: &'static [strait_model::cluster::Kind] = &[];

    async fn pass(&mut self, agent: &Agent, _snap: &ClusterSnapshot) -> anyhow::Result<Report> {
        // Compiled once, by the services reconciler, which nudges on change.
        let checks = agent.published.lock().unwrap().health_checks.clone();
        let mut rep = Report::default();
        self.servers.retain(|port, (task, _)| {
            let keep = checks.iter().any(|c| c.port == *port);
            if !keep {
                task.abort();
            }
            keep
        });
        for c in &checks {
            if let Some((_, n)) = self.servers.get(&c.port) {
                n.store(c.local_endpoints, Ordering::SeqCst);
                continue;
            }
            let l = match tokio::net::TcpListener::bind(("0.0.0.0", c.port)).await {
                Ok(l) => l,
                Err(e) => {
                    rep.problems.push(format!(
                        "healthCheckNodePort {} of {}: {e}",
                        c.port, c.service
                    ));
                    continue;
                }
            };
            let n = Arc::new(AtomicUsize::new(c.local_endpoints));
            let task = tokio::spawn(serve(l, c.service.clone(), n.clone()));
            tracing::info!(port = c.port, service = %c.service, "serving healthCheckNodePort");
            rep.changed += 1;
            self.servers.insert(c.port, (task, n));
        }
        Ok(rep)
    }
}

async fn serve(l: tokio::net::TcpListener, service: String, count: Arc<AtomicUsize>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let mut s = match l.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (service, count) = (service.clone(), count.clone());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            if tokio::time::timeout(READ_DEADLINE, s.read(&mut buf))
                .await
                .is_err()
            {
                return;
            }
            let n = count.load(Ordering::SeqCst);
            let (status, code) = if n > 0 {
                ("200 OK", 200)
            } else {
                ("503 Service Unavailable", 503)
            };
            let body =
                format!("{{\"service\":\"{service}\",\"localEndpoints\":{n},\"code\":{code}}}\n");
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = tokio::time::timeout(READ_DEADLINE, s.write_all(resp.as_bytes())).await;
            drop(permit);
        });
    }
}
