//! Proposals a follower forwards travel to the leader in batches. One RPC per
//! proposal cost a member more than the proposal itself: under a put load
//! with clients spread over all members, two thirds of the puts arrive at
//! followers, and each paid a gRPC stream on both ends. etcd's followers
//! likewise send their proposals over the Raft stream. A bounded number of
//! batches is in flight; proposals arriving meanwhile queue and go together
//! in the next one, so batches grow with the load and a lone proposal still
//! leaves at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Code;

use super::forward::{AttemptError, status_error};
use crate::error::StoreError;
use crate::limits::{
    FORWARD_BATCH_BYTES_MAX, FORWARD_BATCH_COMMANDS_MAX, FORWARD_BATCHES_IN_FLIGHT_MAX, FORWARD_QUEUE_COMMANDS_MAX,
};
use crate::metrics::Metrics;
use crate::peer::PeerClients;
use crate::proto::peerpb as pb;
use crate::raft::dedup;
use crate::raft::types::{Applied, MemberInfo};

/// What one forwarded proposal came to.
type Outcome = Result<Applied, AttemptError>;

/// One proposal waiting to be forwarded.
struct Pending {
    leader: u64,
    info: MemberInfo,
    command: Bytes,
    limit: Duration,
    reply: oneshot::Sender<Outcome>,
}

/// The queue of proposals this member forwards, and the task that sends them.
pub struct ForwardBatcher {
    queue: mpsc::Sender<Pending>,
}

impl ForwardBatcher {
    /// Starts the sending task; it ends when the batcher is dropped.
    pub fn start(peers: Arc<PeerClients>, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(FORWARD_QUEUE_COMMANDS_MAX);
        tokio::spawn(run(rx, peers, metrics));
        ForwardBatcher { queue }
    }

    /// Forwards an encoded command to member `leader` and waits at most
    /// `limit` for what applying it produced.
    pub async fn forward(&self, leader: u64, info: &MemberInfo, command: Bytes, limit: Duration) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { leader, info: info.clone(), command, limit, reply };
        let waited = tokio::time::timeout(limit, async {
            self.queue.send(pending).await.map_err(|_| AttemptError::Final(StoreError::Stopped))?;
            answer.await.map_err(|_| AttemptError::Final(StoreError::Stopped))?
        });
        // A timed-out proposal may still commit: the retry carries the same request id.
        waited.await.unwrap_or(Err(AttemptError::Retry(StoreError::Timeout)))
    }
}

/// Takes a batch from the queue whenever fewer than the maximum are in flight.
async fn run(mut rx: mpsc::Receiver<Pending>, peers: Arc<PeerClients>, metrics: Arc<Metrics>) {
    let in_flight = Arc::new(Semaphore::new(FORWARD_BATCHES_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.command.len();
        let leader = first.leader;
        let mut batch = vec![first];
        while batch.len() < FORWARD_BATCH_COMMANDS_MAX && bytes < FORWARD_BATCH_BYTES_MAX {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.command.len();
            batch.push(next);
        }
        // Rare (a leader change between enqueues): each leader gets its own batch.
        let (batch, others): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.leader == leader);
        metrics.forward_batch_sent(batch.len());
        let peers_for_batch = peers.clone();
        tokio::spawn(async move {
            send(&peers_for_batch, batch).await;
            drop(permit);
        });
        for pending in others {
            metrics.forward_batch_sent(1);
            let peers = peers.clone();
            tokio::spawn(async move { send(&peers, vec![pending]).await });
        }
    }
}

/// Sends one batch (all for the same leader) and answers each proposal.
async fn send(peers: &PeerClients, batch: Vec<Pending>) {
    let leader = batch[0].leader;
    let limit = batch.iter().map(|p| p.limit).max().unwrap_or_default();
    let mut client = match peers.client(leader, &batch[0].info) {
        Ok(c) => c,
        Err(e) => return answer_all(batch, || AttemptError::Retry(StoreError::internal(e.to_string()))),
    };
    let commands = batch.iter().map(|p| p.command.clone()).collect();
    let mut req = tonic::Request::new(pb::ForwardBatchRequest { route: peers.route(leader), commands });
    req.set_timeout(limit);
    let reply = match tokio::time::timeout(limit, client.forward_batch(req)).await {
        Err(_) => return answer_all(batch, || AttemptError::Retry(StoreError::Timeout)),
        Ok(Err(s)) => return answer_all(batch, || status_error(s.clone())),
        Ok(Ok(reply)) => reply.into_inner(),
    };
    if reply.outcomes.len() != batch.len() {
        let msg = format!("{} outcomes for {} forwarded commands", reply.outcomes.len(), batch.len());
        return answer_all(batch, || AttemptError::Retry(StoreError::internal(msg.clone())));
    }
    for (pending, outcome) in batch.into_iter().zip(reply.outcomes) {
        let _ = pending.reply.send(outcome_from_pb(outcome));
    }
}

fn answer_all(batch: Vec<Pending>, error: impl Fn() -> AttemptError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error()));
    }
}

fn outcome_from_pb(outcome: pb::ForwardOutcome) -> Outcome {
    match outcome.outcome {
        Some(pb::forward_outcome::Outcome::Applied(reply)) => Ok(dedup::from_reply(reply)),
        Some(pb::forward_outcome::Outcome::Failed(f)) => {
            Err(status_error(tonic::Status::new(Code::from(f.code), f.message)))
        }
        None => Err(AttemptError::Retry(StoreError::internal("a forwarded command's outcome is empty"))),
    }
}

/// The wire form of what proposing one forwarded command came to.
pub fn outcome_to_pb(result: Result<Applied, tonic::Status>) -> pb::ForwardOutcome {
    let outcome = match result {
        Ok(applied) => pb::forward_outcome::Outcome::Applied(dedup::to_reply(&applied)),
        Err(s) => pb::forward_outcome::Outcome::Failed(pb::ForwardFailure {
            code: s.code() as i32,
            message: s.message().to_string(),
        }),
    };
    pb::ForwardOutcome { outcome: Some(outcome) }
}
