//! Read-index requests a follower sends the leader for its linearizable reads travel in
//! batches. One RPC per read cost the leader and the follower a whole gRPC call each (two thirds
//! of the reads under a range load with clients spread over all members); etcd's followers
//! likewise ask once (`MsgReadIndex`) for all reads pending. A read joins the next request that
//! leaves after it arrived, never one already on its way, because only a read index the leader
//! computed after the read began makes the read linearizable. `peer_batch` guarantees that: a
//! batch holds only requests that were queued when it was taken.

use std::sync::Arc;
use std::time::Duration;

use super::forward::{AttemptError, status_error};
use super::peer_batch::{self, BatchLimits, PeerBatcher, Queued, answer_all};
use crate::error::StoreError;
use crate::limits::{READ_INDEX_BATCH_READS_MAX, READ_INDEX_QUEUE_READS_MAX, READ_INDEX_REQUESTS_IN_FLIGHT_MAX};
use crate::metrics::Metrics;
use crate::peer::PeerClients;
use crate::raft::types::MemberInfo;

/// The leader's commit index as of a moment after the read arrived.
type Outcome = peer_batch::Outcome<u64>;

/// One read waiting for a read index.
type Waiter = Queued<(), u64>;

const LIMITS: BatchLimits = BatchLimits {
    queued: READ_INDEX_QUEUE_READS_MAX,
    per_batch: READ_INDEX_BATCH_READS_MAX,
    bytes_per_batch: usize::MAX,
    in_flight: READ_INDEX_REQUESTS_IN_FLIGHT_MAX,
};

/// The queue of reads this member asks the leader about, and the task that asks.
pub struct ReadIndexBatcher {
    batcher: PeerBatcher<(), u64>,
}

impl ReadIndexBatcher {
    /// Starts the asking task; it ends when the batcher is dropped.
    pub fn start(peers: Arc<PeerClients>, metrics: Arc<Metrics>) -> Self {
        let batcher = PeerBatcher::start(
            LIMITS,
            |_| 0,
            move |batch: Vec<Waiter>| {
                metrics.read_index_request_sent(batch.len());
                let peers = peers.clone();
                async move { ask(&peers, batch).await }
            },
        );
        ReadIndexBatcher { batcher }
    }

    /// Asks member `leader` for its read index, waiting at most `limit`.
    pub async fn read_index(&self, leader: u64, info: &MemberInfo, limit: Duration) -> Outcome {
        self.batcher.submit(leader, info, (), limit).await
    }
}

/// Asks the leader once and gives every read of the batch the answer.
async fn ask(peers: &PeerClients, batch: Vec<Waiter>) {
    let leader = batch[0].leader;
    let limit = peer_batch::batch_limit(&batch);
    let mut client = match peers.client(leader, &batch[0].info) {
        Ok(c) => c,
        Err(e) => return answer_all(batch, || Err(AttemptError::Retry(StoreError::internal(e.to_string())))),
    };
    let Some(route) = peers.route(leader) else {
        return answer_all(batch, || Err(AttemptError::Retry(StoreError::internal("no route to the leader"))));
    };
    let mut req = tonic::Request::new(route);
    req.set_timeout(limit);
    match tokio::time::timeout(limit, client.read_index(req)).await {
        Err(_) => answer_all(batch, || Err(AttemptError::Retry(StoreError::Timeout))),
        Ok(Err(s)) => {
            let s = peers.noted(s);
            answer_all(batch, || Err(status_error(s.clone())))
        }
        Ok(Ok(reply)) => {
            let index = reply.into_inner().index;
            answer_all(batch, || Ok(index))
        }
    }
}
