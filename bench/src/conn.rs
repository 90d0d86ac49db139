//! Connections: `--conns` etcd-client `Client`s, each its own gRPC channel (one HTTP/2
//! connection), dialed round-robin over the endpoints (or all to the leader with
//! `--target-leader`), each proven to answer within `--dial-timeout` before any op is timed.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{BalancedChannelBuilder, Channel, Client, ConnectOptions, StatusResponse};
use futures::future::try_join_all;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;

use crate::opts::GlobalOpts;

/// HTTP/2 stream window of every connection: bounds the bytes a watch stream can have
/// buffered unread in this process (streams × this), while letting a busy stream run without
/// waiting on window updates.
pub const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2 connection window: the largest allowed. h2 (≥ 0.4.20) closes a connection with
/// ENHANCE_YOUR_CALM once the framing overhead of unread small DATA frames exceeds half the
/// connection window; a watch stream is thousands of ~100-byte frames, so with hyper's 5 MiB
/// window 10,000 watchers on one connection killed it. Memory stays bounded by the stream
/// windows, not by this.
pub const CONNECTION_WINDOW_BYTES: u32 = (1 << 31) - 1;
/// Endpoint changes etcd-client may queue for the channel, which drains and ignores them: each
/// channel has its one endpoint (etcd-client asks for 64).
const ENDPOINT_CHANGES_BUFFERED_MAX: usize = 64;

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
        let mut client = Client::connect_with_balanced_channel(
            [endpoint],
            Some(options),
            TunedChannel { endpoint: endpoint.to_string(), connect_timeout: timeout },
        )
        .await?;
        let status = client.status().await?;
        Ok::<_, etcd_client::Error>((client, status))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| anyhow!("{endpoint}: no answer within --dial-timeout {timeout:?}"))?
        .with_context(|| format!("{endpoint}: cannot connect"))
}

/// etcd-client's channel to one endpoint, built here because etcd-client's options have no knob
/// for either of the two things it needs: the flow-control windows above, and a connection
/// that coalesces writes ([`coalesce::dial`]). h2's client writes a request of 256 bytes or
/// more (a put of a 256-byte value) as two `writev`s: 1.9 calls per put, each also running the
/// member's TCP input on loopback, where etcd's own benchmark tool (grpc-go) sends one. The
/// endpoints etcd-client would add later through the returned sender are ignored: this
/// channel has its one endpoint.
struct TunedChannel {
    endpoint: String,
    connect_timeout: Duration,
}

impl BalancedChannelBuilder for TunedChannel {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<http::Uri, Endpoint>>), Self::Error> {
        // etcd-client's own default scheme for an endpoint without one.
        let url = if self.endpoint.contains("://") { self.endpoint } else { format!("http://{}", self.endpoint) };
        let endpoint = tune(Endpoint::from_shared(url)?).connect_timeout(self.connect_timeout);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(coalesce::dial));
        let (changes, mut ignored) = mpsc::channel(ENDPOINT_CHANGES_BUFFERED_MAX.max(buffer_size));
        tokio::spawn(async move { while ignored.recv().await.is_some() {} });
        Ok((Channel::Tonic(channel), changes))
    }
}

fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint.initial_stream_window_size(STREAM_WINDOW_BYTES).initial_connection_window_size(CONNECTION_WINDOW_BYTES)
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
