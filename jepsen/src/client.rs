//! etcd-client plumbing shared by the workloads and the runner: bounded connections, Status,
//! and the classification of errors into definite failures and indeterminate outcomes.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, ConnectOptions, Error as EtcdError};

/// Connect timeout for every client.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Status probes of the runner.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A client bound to one member with a per-request timeout. A request that times out ends
/// `info`: it may still take effect.
pub async fn connect(endpoint: &str, request_timeout: Option<Duration>) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
    if let Some(timeout) = request_timeout {
        options = options.with_timeout(timeout);
    }
    let connect = Client::connect([endpoint], Some(options));
    tokio::time::timeout(CONNECT_TIMEOUT * 2, connect)
        .await
        .map_err(|_| anyhow::anyhow!("connect to {endpoint} timed out"))?
        .with_context(|| format!("connect to {endpoint}"))
}

/// The fields of a Status answer the runner needs.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    pub member_id: u64,
    pub leader: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub raft_term: u64,
}

/// Asks `endpoint` for its Status.
pub async fn status(endpoint: &str) -> Result<Status> {
    let mut client = connect(endpoint, Some(STATUS_TIMEOUT)).await?;
    let resp = tokio::time::timeout(STATUS_TIMEOUT, client.status())
        .await
        .map_err(|_| anyhow::anyhow!("status of {endpoint} timed out"))??;
    let member_id = resp.header().map_or(0, |h| h.member_id());
    Ok(Status {
        member_id,
        leader: resp.leader(),
        raft_index: resp.raft_index(),
        raft_applied_index: resp.raft_applied_index(),
        raft_term: resp.raft_term(),
    })
}

/// What an error says about whether a mutation took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request was refused before it could be proposed: no effect (`fail`).
    Definite,
    /// Timeout, lost connection, leader change in flight...: it may have taken effect (`info`).
    Indeterminate,
}

/// Classifies a mutation's error. Only refusals that etcd (and geobuk) give before proposing
/// anything are definite; everything else may have been committed.
pub fn classify(err: &EtcdError) -> Outcome {
    match err {
        EtcdError::GRpcStatus(status) => match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::OutOfRange
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::ResourceExhausted => Outcome::Definite,
            _ if status.message().contains("lease not found") => Outcome::Definite,
            _ => Outcome::Indeterminate,
        },
        EtcdError::InvalidArgs(_) => Outcome::Definite,
        _ => Outcome::Indeterminate,
    }
}

/// A short text for the history's `error` field.
pub fn describe(err: &EtcdError) -> String {
    match err {
        EtcdError::GRpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}
