//! Proposals a follower forwards travel to the leader in batches. One RPC per
//! proposal cost a member more than the proposal itself: under a put load
//! with clients spread over all members, two thirds of the puts arrive at
//! followers, and each paid a gRPC stream on both ends. etcd's followers
//! likewise send their proposals over the Raft stream. The queue and the
//! batching are `peer_batch`'s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::Code;

use super::forward::{AttemptError, status_error};
use super::peer_batch::{self, BatchLimits, PeerBatcher, Queued, answer_all};
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
type Outcome = peer_batch::Outcome<Applied>;

/// One encoded command waiting to be forwarded.
type Pending = Queued<Bytes, Applied>;

const LIMITS: BatchLimits = BatchLimits {
    queued: FORWARD_QUEUE_COMMANDS_MAX,
    per_batch: FORWARD_BATCH_COMMANDS_MAX,
    bytes_per_batch: FORWARD_BATCH_BYTES_MAX,
    in_flight: FORWARD_BATCHES_IN_FLIGHT_MAX,
};

/// The queue of proposals this member forwards, and the task that sends them.
pub struct ForwardBatcher {
    batcher: PeerBatcher<Bytes, Applied>,
}

impl ForwardBatcher {
    /// Starts the sending task; it ends when the batcher is dropped.
    pub fn start(peers: Arc<PeerClients>, metrics: Arc<Metrics>) -> Self {
        let batcher = PeerBatcher::start(LIMITS, Bytes::len, move |batch: Vec<Pending>| {
            metrics.forward_batch_sent(batch.len());
            let peers = peers.clone();
            async move { send(&peers, batch).await }
        });
        ForwardBatcher { batcher }
    }

    /// Forwards an encoded command to member `leader` and waits at most
    /// `limit` for what applying it produced.
    pub async fn forward(&self, leader: u64, info: &MemberInfo, command: Bytes, limit: Duration) -> Outcome {
        // A timed-out proposal may still commit: the retry carries the same request id.
        self.batcher.submit(leader, info, command, limit).await
    }
}

/// Sends one batch (all for the same leader) and answers each proposal.
async fn send(peers: &PeerClients, batch: Vec<Pending>) {
    let leader = batch[0].leader;
    let limit = peer_batch::batch_limit(&batch);
    let mut client = match peers.client(leader, &batch[0].info) {
        Ok(c) => c,
        Err(e) => return answer_all(batch, || Err(AttemptError::Retry(StoreError::internal(e.to_string())))),
    };
    let commands = batch.iter().map(|p| p.payload.clone()).collect();
    let mut req = tonic::Request::new(pb::ForwardBatchRequest { route: peers.route(leader), commands });
    req.set_timeout(limit);
    let reply = match tokio::time::timeout(limit, client.forward_batch(req)).await {
        Err(_) => return answer_all(batch, || Err(AttemptError::Retry(StoreError::Timeout))),
        Ok(Err(s)) => {
            let s = peers.noted(s);
            return answer_all(batch, || Err(status_error(s.clone())));
        }
        Ok(Ok(reply)) => reply.into_inner(),
    };
    if reply.outcomes.len() != batch.len() {
        let msg = format!("{} outcomes for {} forwarded commands", reply.outcomes.len(), batch.len());
        return answer_all(batch, || Err(AttemptError::Retry(StoreError::internal(msg.clone()))));
    }
    for (pending, outcome) in batch.into_iter().zip(reply.outcomes) {
        let _ = pending.reply.send(outcome_from_pb(outcome));
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
