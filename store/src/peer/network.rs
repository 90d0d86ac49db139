//! openraft's network: vote, append-entries, transfer-leader and streamed
//! snapshots sent to a peer over the peer protocol.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use tokio::io::AsyncReadExt;
use tonic::Code;

use super::{PeerClients, convert, stream_append};
use crate::metrics::Metrics;
use crate::proto::peerpb as pb;
use crate::raft::codec;
use crate::raft::types::{MemberInfo, TypeConfig, Vote};
use crate::snapshot::SnapshotData;

/// Bytes of snapshot file per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The least time between a failed attempt to open an append stream or snapshot to a follower
/// and the next attempt (etcd's peer streams redial at the same rate). openraft's own backoff
/// runs only between the requests of an open stream, so without this a follower that is down or
/// not started yet (just added) was redialed in a loop: a core at 100 % and two warnings per
/// attempt, thousands a second. Only the rest of the interval is waited: openraft's heartbeat
/// worker opens a stream per heartbeat under a timeout of one heartbeat interval, and a full
/// wait before each would never get to send one.
pub const REDIAL_BACKOFF: Duration = Duration::from_millis(100);

/// How long to wait before opening a stream at `now`, the last failure to open having been at
/// `failed_at`: what is left of [`REDIAL_BACKOFF`] since then.
fn redial_wait(failed_at: Option<Instant>, now: Instant) -> Duration {
    failed_at.map_or(Duration::ZERO, |failed| (failed + REDIAL_BACKOFF).saturating_duration_since(now))
}

/// How long a follower has to answer an append-entries request on a stream: openraft's RPC
/// deadline, or `min` if that is longer (see [`Network::append_reply_deadline_min`]).
fn append_reply_deadline(option: &RPCOption, min: Duration) -> Duration {
    option.hard_ttl().max(min)
}

/// Creates a client per replication target.
pub struct Network {
    /// The shared connection pool.
    pub clients: Arc<PeerClients>,
    /// Metrics (snapshot sends).
    pub metrics: Arc<Metrics>,
    /// The least time a follower has to answer an append-entries request on a stream (the
    /// election timeout). openraft allows one heartbeat interval (100 ms by default, and etcd's
    /// tuning sets it near the round trip), in which a message of a megabyte, sent and fsynced
    /// on a slow link, would never be answered: the stream would be reset and the same message
    /// sent again, and a follower behind would not catch up.
    pub append_reply_deadline_min: Duration,
}

/// The client for one target member.
pub struct PeerNetwork {
    clients: Arc<PeerClients>,
    metrics: Arc<Metrics>,
    append_reply_deadline_min: Duration,
    target: u64,
    info: MemberInfo,
    /// When the last stream or snapshot to the target failed to open, if it did.
    failed_at: Option<Instant>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &MemberInfo) -> PeerNetwork {
        PeerNetwork {
            clients: self.clients.clone(),
            metrics: self.metrics.clone(),
            append_reply_deadline_min: self.append_reply_deadline_min,
            target,
            info: node.clone(),
            failed_at: None,
        }
    }
}

/// Maps a transport or peer error: a peer we cannot talk to is Unreachable
/// (openraft backs off), anything else is a network error.
pub(super) fn rpc_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(status.to_string())))
        }
        _ => RPCError::Network(NetworkError::new(&std::io::Error::other(status.to_string()))),
    }
}

pub(super) fn net_error(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

impl PeerNetwork {
    fn client(&self) -> Result<pb::peer_client::PeerClient<tonic::transport::Channel>, RPCError<TypeConfig>> {
        self.clients
            .client(self.target, &self.info)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string()))))
    }

    /// Waits until [`REDIAL_BACKOFF`] has passed since the last failure to open, if any.
    async fn redial_backoff(&self) {
        let wait = redial_wait(self.failed_at, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn note_open(&mut self, failed: bool) {
        self.failed_at = failed.then(Instant::now);
    }

    fn request<T>(&self, msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(option.hard_ttl());
        req
    }

    /// A vote or pre-vote request: the same message, two RPCs.
    async fn send_vote(
        &self,
        rpc: &VoteRequest<TypeConfig>,
        option: &RPCOption,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let msg = convert::vote_request_to_pb(self.clients.route(self.target), rpc);
        let req = self.request(msg, option);
        let mut client = self.client()?;
        let reply = if pre { client.pre_vote(req).await } else { client.vote(req).await };
        let reply = reply.map_err(|s| rpc_error(self.clients.noted(s)))?;
        convert::vote_reply_from_pb(&reply.into_inner()).map_err(net_error)
    }

    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = snapshot.snapshot;
        // A checkpoint is dumped to a file the first time a follower needs it.
        let file = tokio::task::spawn_blocking(move || data.into_file())
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .map_err(|e| StreamingError::Network(NetworkError::new(&std::io::Error::from(e))))?;
        let header = pb::SnapshotHeader {
            route: self.clients.route(self.target),
            vote: Some(codec::vote_to_pb(&vote)),
            last_log_id: snapshot.meta.last_log_id.as_ref().map(codec::log_id_to_pb),
            last_membership: Some(codec::stored_membership_to_pb(&snapshot.meta.last_membership)),
            size_bytes: file.size,
        };
        let file = tokio::fs::File::from_std(file.file);
        let first = pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Header(header)) };
        // Read errors end the stream early; the receiver then sees a short file and refuses it.
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let chunk = pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Data(buf.into())) };
                    Some((chunk, Some(file)))
                }
            }
        });
        let stream = futures::stream::iter([first]).chain(chunks);
        let reply = client.install_snapshot(stream).await.map_err(|s| match rpc_error(s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        let vote = reply.into_inner().vote.as_ref().map(codec::vote_from_pb).ok_or_else(|| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other("snapshot reply without a vote")))
        })?;
        Ok(SnapshotResponse { vote })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let msg = convert::append_request_to_pb(self.clients.route(self.target), &rpc);
        let req = self.request(msg, &option);
        let reply = self.client()?.append_entries(req).await.map_err(|s| rpc_error(self.clients.noted(s)))?;
        convert::append_reply_from_pb(&reply.into_inner()).map_err(net_error)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            self.redial_backoff().await;
            let route = self.clients.route(self.target);
            let opened = match self.client() {
                Ok(client) => {
                    let deadline = append_reply_deadline(&option, self.append_reply_deadline_min);
                    stream_append::open(client, route, input, deadline, self.clients.clone()).await
                }
                Err(e) => Err(e),
            };
            self.note_open(opened.is_err());
            Ok(opened? as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(&rpc, &option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(&rpc, &option, true).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        let metrics = self.metrics.clone();
        let result = tokio::select! {
            r = async {
                self.redial_backoff().await;
                let sent = self.send_snapshot(vote, snapshot).await;
                self.note_open(matches!(sent, Err(StreamingError::Unreachable(_))));
                sent
            } => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        };
        metrics.snapshot_sent(target, result.is_ok());
        result
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let msg = pb::TransferLeaderRequest {
            route: self.clients.route(self.target),
            from_leader: Some(codec::vote_to_pb(req.from_leader())),
            last_log_id: req.last_log_id().map(codec::log_id_to_pb),
            to_node_id: *req.to_node_id(),
        };
        let req = self.request(msg, &option);
        let reply = self.client()?.transfer_leader(req).await.map_err(rpc_error)?.into_inner();
        if reply.refused.is_empty() { Ok(Ok(())) } else { Err(net_error(reply.refused)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_has_at_least_the_floor_to_answer_an_append() {
        let floor = Duration::from_secs(1);
        // openraft's deadline for a stream is one heartbeat interval.
        assert_eq!(append_reply_deadline(&RPCOption::new(Duration::from_millis(100)), floor), floor);
        let long = Duration::from_secs(3);
        assert_eq!(append_reply_deadline(&RPCOption::new(long), floor), long);
    }

    /// openraft's heartbeat worker opens a stream per heartbeat, one heartbeat interval (100 ms
    /// by default, as `REDIAL_BACKOFF`) apart and each under a timeout of one interval. A wait of
    /// the full backoff before every open after a failure outlasted that timeout, so the failure
    /// was never cleared and the target got no heartbeat again that term (seen by hand: both
    /// followers killed and restarted, the leader warned "failed to send a heartbeat: Elapsed"
    /// on and on, and the followers elected a new leader).
    #[test]
    fn the_redial_wait_is_what_is_left_of_the_backoff() {
        let now = Instant::now();
        assert_eq!(redial_wait(None, now), Duration::ZERO);
        assert_eq!(redial_wait(Some(now), now), REDIAL_BACKOFF);
        assert_eq!(redial_wait(Some(now), now + Duration::from_millis(60)), REDIAL_BACKOFF - Duration::from_millis(60));
        // The next heartbeat, an interval after a failed one, goes out at once.
        assert_eq!(redial_wait(Some(now), now + REDIAL_BACKOFF), Duration::ZERO);
        assert_eq!(redial_wait(Some(now), now + 3 * REDIAL_BACKOFF), Duration::ZERO);
    }
}
