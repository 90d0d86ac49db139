//! Read-index requests a follower sends the leader for its linearizable reads travel in
//! batches. One RPC per read cost the leader and the follower a whole gRPC call each (two thirds
//! of the reads under a range load with clients spread over all members); etcd's followers
//! likewise ask once (`MsgReadIndex`) for all reads pending. A read joins the next request that
//! leaves after it arrived, never one already on its way: only a read index the leader
//! computed after the read began makes the read linearizable. A bounded number of requests is
//! in flight; reads arriving meanwhile queue and share the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::forward::{AttemptError, status_error};
use crate::error::StoreError;
use crate::limits::{READ_INDEX_BATCH_READS_MAX, READ_INDEX_QUEUE_READS_MAX, READ_INDEX_REQUESTS_IN_FLIGHT_MAX};
use crate::metrics::Metrics;
use crate::peer::PeerClients;
use crate::raft::types::MemberInfo;

/// The leader's commit index as of a moment after the read arrived.
type Outcome = Result<u64, AttemptError>;

/// One read waiting for a read index.
struct Waiter {
    leader: u64,
    info: MemberInfo,
    limit: Duration,
    reply: oneshot::Sender<Outcome>,
}

/// The queue of reads this member asks the leader about, and the task that asks.
pub struct ReadIndexBatcher {
    queue: mpsc::Sender<Waiter>,
}

impl ReadIndexBatcher {
    /// Starts the asking task; it ends when the batcher is dropped.
    pub fn start(peers: Arc<PeerClients>, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(READ_INDEX_QUEUE_READS_MAX);
        tokio::spawn(run(rx, peers, metrics));
        ReadIndexBatcher { queue }
    }

    /// Asks member `leader` for its read index, waiting at most `limit`.
    pub async fn read_index(&self, leader: u64, info: &MemberInfo, limit: Duration) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter { leader, info: info.clone(), limit, reply };
        let waited = tokio::time::timeout(limit, async {
            self.queue.send(waiter).await.map_err(|_| AttemptError::Final(StoreError::Stopped))?;
            answer.await.map_err(|_| AttemptError::Final(StoreError::Stopped))?
        });
        waited.await.unwrap_or(Err(AttemptError::Retry(StoreError::Timeout)))
    }
}

/// Takes every queued read into one request whenever fewer than the maximum are in flight.
async fn run(mut rx: mpsc::Receiver<Waiter>, peers: Arc<PeerClients>, metrics: Arc<Metrics>) {
    let in_flight = Arc::new(Semaphore::new(READ_INDEX_REQUESTS_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let leader = first.leader;
        let mut batch = vec![first];
        while batch.len() < READ_INDEX_BATCH_READS_MAX {
            let Ok(next) = rx.try_recv() else { break };
            batch.push(next);
        }
        // Rare (a leader change between enqueues): each leader gets its own request.
        let (batch, others): (Vec<_>, Vec<_>) = batch.into_iter().partition(|w| w.leader == leader);
        metrics.read_index_request_sent(batch.len());
        let peers_for_batch = peers.clone();
        tokio::spawn(async move {
            ask(&peers_for_batch, batch).await;
            drop(permit);
        });
        for waiter in others {
            metrics.read_index_request_sent(1);
            let peers = peers.clone();
            tokio::spawn(async move { ask(&peers, vec![waiter]).await });
        }
    }
}

/// Asks the leader once and gives every read of the batch the answer.
async fn ask(peers: &PeerClients, batch: Vec<Waiter>) {
    let leader = batch[0].leader;
    let limit = batch.iter().map(|w| w.limit).max().unwrap_or_default();
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
        Ok(Err(s)) => answer_all(batch, || Err(status_error(s.clone()))),
        Ok(Ok(reply)) => {
            let index = reply.into_inner().index;
            answer_all(batch, || Ok(index))
        }
    }
}

fn answer_all(batch: Vec<Waiter>, outcome: impl Fn() -> Outcome) {
    for waiter in batch {
        let _ = waiter.reply.send(outcome());
    }
}
