//! The queue that a follower's requests to the leader wait in, and the loop that sends them in
//! batches: forwarded proposals (`forward_batch`) and read-index requests (`read_batch`). A
//! bounded number of batches is in flight. Requests arriving meanwhile queue and go together in
//! the next batch, so batches grow with the load and a lone request still leaves at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::forward::AttemptError;
use crate::error::StoreError;
use crate::raft::types::MemberInfo;

/// What one request came to.
pub(super) type Outcome<O> = Result<O, AttemptError>;

/// One request waiting for its batch.
pub(super) struct Queued<T, O> {
    /// The member the request goes to.
    pub leader: u64,
    /// How to reach it.
    pub info: MemberInfo,
    /// How long the request may take.
    pub limit: Duration,
    /// The request itself.
    pub payload: T,
    /// Where its outcome goes.
    pub reply: oneshot::Sender<Outcome<O>>,
}

/// How large the queue and a batch may grow, and how many batches may be in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchLimits {
    /// Requests waiting, beyond which callers wait to enqueue.
    pub queued: usize,
    /// Requests in one batch.
    pub per_batch: usize,
    /// Bytes in one batch (by the weight function).
    pub bytes_per_batch: usize,
    /// Batches sent and not yet answered.
    pub in_flight: usize,
}

/// The queue; the sending task ends when it is dropped.
pub(super) struct PeerBatcher<T, O> {
    queue: mpsc::Sender<Queued<T, O>>,
}

impl<T: Send + 'static, O: Send + 'static> PeerBatcher<T, O> {
    /// Starts the sending task. `weight` is a request's size against `bytes_per_batch`; `send`
    /// sends one batch, all for the same leader, and answers every request in it.
    pub fn start<S, F>(limits: BatchLimits, weight: fn(&T) -> usize, send: S) -> Self
    where
        S: Fn(Vec<Queued<T, O>>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (queue, rx) = mpsc::channel(limits.queued);
        tokio::spawn(run(rx, limits, weight, Arc::new(send)));
        PeerBatcher { queue }
    }

    /// Queues `payload` for member `leader` and waits at most `limit` for its outcome.
    pub async fn submit(&self, leader: u64, info: &MemberInfo, payload: T, limit: Duration) -> Outcome<O> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued { leader, info: info.clone(), limit, payload, reply };
        let waited = tokio::time::timeout(limit, async {
            self.queue.send(queued).await.map_err(|_| AttemptError::Final(StoreError::Stopped))?;
            answer.await.map_err(|_| AttemptError::Final(StoreError::Stopped))?
        });
        waited.await.unwrap_or(Err(AttemptError::Retry(StoreError::Timeout)))
    }
}

/// Takes a batch from the queue whenever fewer than the maximum are in flight.
async fn run<T, O, S, F>(
    mut rx: mpsc::Receiver<Queued<T, O>>,
    limits: BatchLimits,
    weight: fn(&T) -> usize,
    send: Arc<S>,
) where
    T: Send + 'static,
    O: Send + 'static,
    S: Fn(Vec<Queued<T, O>>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(limits.in_flight));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = weight(&first.payload);
        let leader = first.leader;
        let mut batch = vec![first];
        while batch.len() < limits.per_batch && bytes < limits.bytes_per_batch {
            let Ok(next) = rx.try_recv() else { break };
            bytes += weight(&next.payload);
            batch.push(next);
        }
        // Rare (a leader change between enqueues): each leader gets its own batch.
        let (batch, others): (Vec<_>, Vec<_>) = batch.into_iter().partition(|q| q.leader == leader);
        let sending = send(batch);
        tokio::spawn(async move {
            sending.await;
            drop(permit);
        });
        for queued in others {
            tokio::spawn(send(vec![queued]));
        }
    }
}

/// Answers every request of `batch` alike.
pub(super) fn answer_all<T, O>(batch: Vec<Queued<T, O>>, outcome: impl Fn() -> Outcome<O>) {
    for queued in batch {
        let _ = queued.reply.send(outcome());
    }
}

/// The longest time limit in `batch`, for the one request that carries them all.
pub(super) fn batch_limit<T, O>(batch: &[Queued<T, O>]) -> Duration {
    batch.iter().map(|q| q.limit).max().unwrap_or_default()
}
