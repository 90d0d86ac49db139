//! Connections: `--conns` etcd-client `Client`s, each its own gRPC channel (one HTTP/2
//! connection), dialed round-robin over the endpoints (or all to the leader with
//! `--target-leader`), each proven to answer within `--dial-timeout` before any op is timed.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Client, ConnectOptions, StatusResponse};
use futures::future::try_join_all;

use crate::opts::GlobalOpts;

/// The connections of a run.
pub struct Pool {
    clients: Vec<Client>,
    /// The endpoint each connection went to.
    endpoints: Vec<String>,
    /// What the first connection's Status reported.
    pub server_version: String,
}

impl Pool {
    /// Connection `i mod conns`. A clone shares the connection (etcd-client's `Client` is a
    /// handle on its channel), so workers and streams spread round-robin over the conns.
    pub fn client(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The distinct endpoints in use, in dial order.
    pub fn endpoints(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.endpoints {
            if !out.contains(e) {
                out.push(e.clone());
            }
        }
        out
    }
}

/// Dials `--conns` connections and waits until each answers a Status.
pub async fn connect(global: &GlobalOpts) -> Result<Pool> {
    global.validate()?;
    let endpoints: Vec<String> =
        global.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    let targets =
        if global.target_leader { vec![find_leader(&endpoints, global.dial_timeout).await?] } else { endpoints };
    // etcd's benchmark: connection i goes to endpoints[i mod n].
    let plan: Vec<String> = (0..global.conns).map(|i| targets[i % targets.len()].clone()).collect();
    let dialed = try_join_all(plan.iter().map(|e| dial(e, global.dial_timeout))).await?;
    let server_version = dialed.first().map(|(_, status)| status.version().to_string()).unwrap_or_default();
    Ok(Pool { clients: dialed.into_iter().map(|(c, _)| c).collect(), endpoints: plan, server_version })
}

/// One connection, with the Status it answered.
pub async fn dial(endpoint: &str, timeout: Duration) -> Result<(Client, StatusResponse)> {
    let options = ConnectOptions::new().with_connect_timeout(timeout);
    let attempt = async {
        // etcd-client connects lazily and a request waits for a ready connection: the first
        // Status is what proves the endpoint is up, so the whole of it is bounded.
        let mut client = Client::connect([endpoint], Some(options)).await?;
        let status = client.status().await?;
        Ok::<_, etcd_client::Error>((client, status))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| anyhow!("{endpoint}: no answer within --dial-timeout {timeout:?}"))?
        .with_context(|| format!("{endpoint}: cannot connect"))
}

/// The endpoint of the member that is its own leader (etcd's `--target-leader`).
async fn find_leader(endpoints: &[String], timeout: Duration) -> Result<String> {
    let mut problems = Vec::new();
    for endpoint in endpoints {
        match dial(endpoint, timeout).await {
            Ok((_, status)) => {
                let member = status.header().map_or(0, |h| h.member_id());
                if member != 0 && member == status.leader() {
                    return Ok(endpoint.clone());
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if problems.is_empty() {
        bail!("--target-leader: none of {endpoints:?} is the leader");
    }
    bail!("--target-leader: no leader among {endpoints:?} ({})", problems.join("; "))
}

/// An error as the report's error distribution shows it: the gRPC code and message, without
/// etcd-client's wrapping.
pub fn describe(err: &etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}
