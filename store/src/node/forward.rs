//! Any member serves any request: proposals, linearizable reads and lease
//! renewals run on the leader, locally when this member leads and through
//! the peer protocol otherwise. Attempts are retried against the current
//! leader until the request timeout; proposals carry a request id, so a
//! retried write whose first attempt did apply is answered, not re-applied.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tokio::sync::watch;
use tonic::Code;

use super::Node;
use crate::error::StoreError;
use crate::limits::{FORWARD_ATTEMPT_TIMEOUT, FORWARD_RETRY_BACKOFF};
use crate::proto::peerpb as pb;
use crate::proto::raftlog::{self, command::Op};
use crate::raft::types::{Applied, CommandBytes, MemberInfo, TypeConfig};

/// How often a member retries publishing its attributes until it succeeds.
const PUBLISH_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Where the leader is, from this member's point of view.
pub enum Target {
    /// This member leads.
    Me,
    /// Another member leads.
    Peer(u64, MemberInfo),
}

/// How one attempt ended, if it did not succeed.
pub enum AttemptError {
    /// Worth another attempt against the (possibly new) leader.
    Retry(StoreError),
    /// The answer; retrying cannot change it.
    Final(StoreError),
}

/// A peer's gRPC status as an attempt error: transport trouble and "not
/// leader" are retried, anything else is the request's answer.
pub(super) fn status_error(s: tonic::Status) -> AttemptError {
    let not_leader = StoreError::NotLeader.to_string();
    match s.code() {
        _ if s.message() == not_leader => AttemptError::Retry(StoreError::NotLeader),
        // The leader's answer (a strict reconfiguration check), though its code is Unavailable:
        // retried, the change would go ahead as the retry of one begun.
        _ if s.message() == StoreError::Unhealthy.to_string() => AttemptError::Final(StoreError::Unhealthy),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            AttemptError::Retry(StoreError::Timeout)
        }
        _ => AttemptError::Final(StoreError::from_message(s.message())),
    }
}

impl Node {
    /// The leader this member knows of.
    pub fn leader(&self) -> Option<Target> {
        // Called per request: borrow the metrics, copy only the leader's entry.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        if leader == self.member_id {
            return Some(Target::Me);
        }
        let info = m.membership_config.membership().get_node(&leader)?.clone();
        Some(Target::Peer(leader, info))
    }

    /// Runs `attempt` against the leader until it succeeds, fails for good,
    /// or the request timeout passes.
    pub async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(Target, Duration) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let deadline = Instant::now() + self.config.request_timeout();
        let mut last = StoreError::Timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if matches!(last, StoreError::NoLeader) {
                    StoreError::NoLeader
                } else {
                    StoreError::Timeout
                });
            }
            match self.leader() {
                None => last = StoreError::NoLeader,
                Some(target) => match attempt(target, remaining.min(FORWARD_ATTEMPT_TIMEOUT)).await {
                    Ok(v) => return Ok(v),
                    Err(AttemptError::Final(e)) => return Err(e),
                    Err(AttemptError::Retry(e)) => last = e,
                },
            }
            if *self.shutdown.borrow() {
                return Err(StoreError::Stopped);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(FORWARD_RETRY_BACKOFF.min(remaining)).await;
        }
    }

    /// Replicates `op` through the leader and returns what applying it produced.
    pub async fn propose(&self, op: Op) -> Result<Applied, StoreError> {
        let cmd = raftlog::Command { request_id: self.request_ids.next(), op: Some(op) };
        if cmd.encoded_len() > self.config.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        let bytes: Bytes = cmd.encode_to_vec().into();
        self.metrics.proposal_started();
        let result = self
            .with_leader(|target, limit| {
                let bytes = bytes.clone();
                async move {
                    match target {
                        Target::Me => self.propose_here(bytes, limit).await,
                        Target::Peer(id, info) => self.forward_to(id, &info, bytes, limit).await,
                    }
                }
            })
            .await;
        self.metrics.proposal_finished(result.is_err());
        match result? {
            Applied::Rejected(e) => Err(e),
            other => Ok(other),
        }
    }

    /// Proposes `op` on this member only: no forwarding and no retry. For decisions that only
    /// the current leader may take from its own state, like lease expiry: forwarded to a new
    /// leader, a deposed leader's "expired" would override the new leader's renewed clocks.
    pub async fn propose_as_leader(&self, op: Op) -> Result<Applied, StoreError> {
        let cmd = raftlog::Command { request_id: self.request_ids.next(), op: Some(op) };
        let bytes: Bytes = cmd.encode_to_vec().into();
        match self.propose_here(bytes, self.config.request_timeout()).await {
            Ok(Applied::Rejected(e)) => Err(e),
            Ok(applied) => Ok(applied),
            Err(AttemptError::Retry(e) | AttemptError::Final(e)) => Err(e),
        }
    }

    /// Proposes an encoded command on this member, which must lead.
    pub(crate) async fn propose_here(&self, bytes: Bytes, limit: Duration) -> Result<Applied, AttemptError> {
        let write = self.raft.client_write(CommandBytes(bytes));
        match tokio::time::timeout(limit, write).await {
            // The entry may still commit: the retry carries the same request id.
            Err(_) => Err(AttemptError::Retry(StoreError::Timeout)),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(e))) => Err(write_error(e)),
            Ok(Err(RaftError::Fatal(_))) => Err(AttemptError::Final(StoreError::Stopped)),
        }
    }

    /// Proposes encoded commands on this member, which must lead, in one message to Raft: one
    /// log append for all, where a call per command costs RaftCore a message, a responder and
    /// an append each. Each command's outcome, in order.
    pub(crate) async fn propose_many_here(
        &self,
        commands: Vec<Bytes>,
        limit: Duration,
    ) -> Vec<Result<Applied, AttemptError>> {
        let count = commands.len();
        let deadline = tokio::time::Instant::now() + limit;
        let mut outcomes = Vec::with_capacity(count);
        let mut stopped = false;
        match tokio::time::timeout_at(deadline, self.raft.client_write_many(commands.into_iter().map(CommandBytes)))
            .await
        {
            Err(_) => {}
            Ok(Err(_)) => stopped = true,
            Ok(Ok(mut results)) => {
                while let Ok(Some(result)) = tokio::time::timeout_at(deadline, results.next()).await {
                    match result {
                        Ok(written) => outcomes.push(written.map(|w| w.response).map_err(write_error)),
                        Err(_) => {
                            stopped = true;
                            break;
                        }
                    }
                }
            }
        }
        // The commands without an outcome timed out (each may still commit: a retry carries the
        // same request id), unless Raft stopped.
        outcomes.resize_with(count, || {
            Err(if stopped {
                AttemptError::Final(StoreError::Stopped)
            } else {
                AttemptError::Retry(StoreError::Timeout)
            })
        });
        outcomes
    }

    async fn forward_to(
        &self,
        id: u64,
        info: &MemberInfo,
        bytes: Bytes,
        limit: Duration,
    ) -> Result<Applied, AttemptError> {
        self.forwarder.forward(id, info, bytes, limit).await
    }

    /// Waits until this member has applied everything committed before the
    /// call (etcd's ReadIndex), asking the leader when it is not the leader.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        self.with_leader(|target, limit| async move {
            match target {
                Target::Me => self.linearize_here(limit).await.map(|_| ()).map_err(|e| match e {
                    StoreError::Stopped => AttemptError::Final(e),
                    e => AttemptError::Retry(e),
                }),
                Target::Peer(id, info) => {
                    let index = self.read_indexes.read_index(id, &info, limit).await?;
                    // Usually applied already: openraft's wait clones its whole metrics even then.
                    if self.applied_index() >= index {
                        return Ok(());
                    }
                    let waiter = self.raft.wait(Some(limit));
                    let applied = waiter.applied_index_at_least(Some(index), "read index").await;
                    applied.map(|_| ()).map_err(|_| AttemptError::Retry(StoreError::Timeout))
                }
            }
        })
        .await
    }

    /// The index of the last log entry this member has applied (0 before any).
    fn applied_index(&self) -> u64 {
        let metrics = self.raft.metrics();
        metrics.borrow_watched().last_applied.as_ref().map_or(0, |id| id.index)
    }

    /// Confirms leadership with a read-index round and waits until everything committed before
    /// it is applied here (a new leader's previous-term entries included); the term whose
    /// leadership it confirmed.
    pub(crate) async fn linearize_here(&self, limit: Duration) -> Result<u64, StoreError> {
        let ensure = self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(limit, ensure).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(read)) => Ok(read.committed_leader_id().term),
            Ok(Err(RaftError::Fatal(_))) => Err(StoreError::Stopped),
            Ok(Err(RaftError::APIError(_))) => Err(StoreError::NotLeader),
        }
    }

    /// The leader's read index, answered by the leader for a follower's read.
    pub(crate) async fn read_index_here(&self) -> Result<u64, StoreError> {
        let read = self.raft.get_read_log_id(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(self.config.request_timeout(), read).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.log_id().index),
            Ok(Err(RaftError::Fatal(_))) => Err(StoreError::Stopped),
            Ok(Err(RaftError::APIError(_))) => Err(StoreError::NotLeader),
        }
    }

    /// Renews a lease on the leader; its TTL, or `None` if it does not exist.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let reply = self.lease_call(id, true).await?;
        Ok(reply.found.then_some(reply.ttl))
    }

    /// A lease's remaining and granted TTL, as the leader's clock has them.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let reply = self.lease_call(id, false).await?;
        Ok(reply.found.then_some((reply.ttl, reply.granted_ttl)))
    }

    /// Answers a lease call from this member's lessor (the leader's).
    ///
    /// A keep-alive is linearized first: it confirms leadership with a read-index round (etcd
    /// 3.4's `ensureLeadership`), so a deposed leader that has not noticed yet (paused,
    /// partitioned) cannot renew in its own lessor while the real leader's clock runs out; and it
    /// waits until the read index is applied, so a new leader does not renew a lease whose
    /// expiry revoke from the previous term is already committed but not yet applied.
    ///
    /// The clocks are promoted with the term that was confirmed, never with whatever term the
    /// member is in by then: a leader that stepped down during the round (a paused majority
    /// resumed and elected someone else) would otherwise restart every lease as if it led the
    /// new term, and renew a lease whose expiry revoke it had itself proposed.
    pub(crate) async fn lease_here(&self, id: i64, keep_alive: bool) -> Result<pb::LeaseReply, StoreError> {
        let term = if keep_alive {
            self.linearize_here(self.config.request_timeout()).await?
        } else {
            self.leader_term().ok_or(StoreError::NotLeader)?
        };
        let lessor = &self.shared.lessor;
        if self.leader_term() != Some(term) || !lessor.promote(term) {
            return Err(StoreError::NotLeader);
        }
        Ok(if keep_alive {
            let ttl = lessor.keep_alive(id);
            pb::LeaseReply { found: ttl.is_some(), ttl: ttl.unwrap_or(0), granted_ttl: ttl.unwrap_or(0) }
        } else {
            let t = lessor.time_to_live(id);
            pb::LeaseReply { found: t.is_some(), ttl: t.map_or(0, |t| t.0), granted_ttl: t.map_or(0, |t| t.1) }
        })
    }

    async fn lease_call(&self, id: i64, keep_alive: bool) -> Result<pb::LeaseReply, StoreError> {
        self.with_leader(|target, limit| async move {
            let Target::Peer(peer, info) = target else {
                return self.lease_here(id, keep_alive).await.map_err(AttemptError::Retry);
            };
            let mut client =
                self.peers.client(peer, &info).map_err(|e| AttemptError::Retry(StoreError::internal(e)))?;
            let mut req = tonic::Request::new(pb::LeaseRequest { route: self.peers.route(peer), id });
            req.set_timeout(limit);
            let call = async {
                if keep_alive { client.lease_keep_alive(req).await } else { client.lease_time_to_live(req).await }
            };
            match tokio::time::timeout(limit, call).await {
                Err(_) => Err(AttemptError::Retry(StoreError::Timeout)),
                Ok(Err(s)) => Err(status_error(self.peers.noted(s))),
                Ok(Ok(r)) => Ok(r.into_inner()),
            }
        })
        .await
    }
}

/// A proposal openraft refused: a deposed leader's refusal is worth retrying against the new one.
fn write_error(e: ClientWriteError<TypeConfig>) -> AttemptError {
    match write_refusal(e) {
        StoreError::NotLeader => AttemptError::Retry(StoreError::NotLeader),
        e => AttemptError::Final(e),
    }
}

/// Why openraft refused a write (a proposal or a membership change): "not leader" when this
/// member is no longer the leader, or was deposed and its uncommitted entry truncated
/// (discarded: it never commits).
pub(super) fn write_refusal(e: ClientWriteError<TypeConfig>) -> StoreError {
    match e {
        ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_) => StoreError::NotLeader,
        e => StoreError::internal(e),
    }
}

/// Publishes this member's name and client URLs through Raft (etcd's
/// publish), retrying until they are applied.
pub(crate) async fn run_publish(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let attrs = raftlog::MemberAttributes {
        id: node.member_id,
        name: node.config.name.clone(),
        client_urls: node.config.advertise_client_urls.clone(),
    };
    loop {
        if node.published_attributes(node.member_id).as_ref() == Some(&attrs) {
            tracing::info!(name = %attrs.name, client_urls = ?attrs.client_urls, "published member attributes");
            node.mark_published();
            return;
        }
        if let Err(e) = node.propose(Op::Publish(attrs.clone())).await {
            tracing::debug!(error = %e, "publishing member attributes; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(PUBLISH_RETRY_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}
