//! The peer service: receives Raft messages, streamed snapshots and the
//! requests other members forward to this one. Every request must name this
//! cluster and this member; malformed input is refused, never a panic.

use std::sync::Arc;

use futures::StreamExt;
use openraft::raft::{AppendEntriesResponse, StreamAppendError};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, stream_append};
use crate::error::StoreError;
use crate::node::Node;
use crate::node::forward::AttemptError;
use crate::node::forward_batch::outcome_to_pb;
use crate::proto::peerpb::{self as pb, peer_server::Peer};
use crate::proto::raftlog;
use crate::raft::codec;
use crate::raft::state_machine::SnapshotMeta;
use crate::raft::types::{Applied, Raft};
use crate::snapshot::{SnapshotData, SnapshotFile};

/// The peer service of one member.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// Serves peers on behalf of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        PeerService { node }
    }

    fn raft(&self) -> &Raft {
        &self.node.raft
    }

    fn check_route(&self, route: Option<&pb::Route>) -> Result<u64, Status> {
        let route = route.ok_or_else(|| Status::invalid_argument("request without a route"))?;
        if route.cluster_id != self.node.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: request for cluster {:x}, this member is in cluster {:x}",
                route.cluster_id, self.node.cluster_id
            )));
        }
        if route.to != self.node.member_id {
            return Err(Status::failed_precondition(format!(
                "request for member {:x} reached member {:x}",
                route.to, self.node.member_id
            )));
        }
        if self.node.shared.removed.contains(route.from) {
            return Err(super::removed_member_status());
        }
        Ok(route.from)
    }

    async fn handle_vote(&self, req: pb::VoteRequest, pre: bool) -> Result<Response<pb::VoteReply>, Status> {
        self.check_route(req.route.as_ref())?;
        let vote = convert::vote_request_from_pb(&req).map_err(bad_input)?;
        let reply = if pre { self.raft().pre_vote(vote).await } else { self.raft().vote(vote).await };
        Ok(Response::new(convert::vote_reply_to_pb(&reply.map_err(raft_failed)?)))
    }

    /// Refuses a forwarded command the proposer should not have sent.
    fn check_forwarded(&self, command: &bytes::Bytes) -> Result<(), Status> {
        let cmd = raftlog::Command::decode(command.clone()).map_err(bad_input)?;
        if cmd.request_id == 0 {
            return Err(bad_input("a forwarded command needs a request id"));
        }
        if command.len() > self.node.config.max_request_bytes + crate::limits::GRPC_OVERHEAD_BYTES {
            return Err(StoreError::RequestTooLarge.into());
        }
        Ok(())
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.node.is_leader() { Ok(()) } else { Err(StoreError::NotLeader.into()) }
    }
}

fn bad_input(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn raft_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteReply>, Status> {
        self.handle_vote(req.into_inner(), false).await
    }

    async fn pre_vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteReply>, Status> {
        self.handle_vote(req.into_inner(), true).await
    }

    async fn append_entries(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendReply>, Status> {
        let req = req.into_inner();
        self.check_route(req.route.as_ref())?;
        let append = convert::append_request_from_pb(req).map_err(bad_input)?;
        let reply = self.raft().append_entries(append).await.map_err(raft_failed)?;
        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
            self.node.leader_contact.note();
        }
        Ok(Response::new(convert::append_reply_to_pb(&reply)))
    }

    type StreamAppendStream = futures::stream::BoxStream<'static, Result<pb::StreamAppendReply, Status>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let refused = Arc::new(std::sync::Mutex::new(None::<Status>));
        let svc = self.clone();
        self.node.metrics.append_stream_opened();
        let check = move |msg: pb::AppendRequest| {
            svc.check_route(msg.route.as_ref())?;
            svc.node.metrics.streamed_append_received(msg.entries.len());
            convert::append_request_from_pb(msg).map_err(bad_input)
        };
        // The leader keeps its stream open for as long as it leads: end it when this member stops.
        let input = stream_append::requests(req.into_inner(), check, refused.clone()).take_until(self.node.stopping());
        let node = self.node.clone();
        let replies = self.raft().stream_append(input).map(move |r| match r {
            Ok(result) => {
                if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                    node.leader_contact.note();
                }
                Ok(convert::stream_reply_to_pb(&result))
            }
            Err(fatal) => Err(raft_failed(fatal)),
        });
        // A refused request ended the input: after the replies owed, say why.
        let why = futures::stream::once(async move { refused.lock().unwrap_or_else(|p| p.into_inner()).take() })
            .filter_map(|status| async move { status.map(Err) });
        Ok(Response::new(Box::pin(replies.chain(why))))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Header(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("snapshot stream must start with its header")),
        };
        let from = self.check_route(header.route.as_ref())?;
        let result = self.receive_snapshot(header, stream).await;
        self.node.metrics.snapshot_received(from, result.is_ok());
        result.map(Response::new)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderReply>, Status> {
        let req = req.into_inner();
        self.check_route(req.route.as_ref())?;
        let from = req.from_leader.as_ref().map(codec::vote_from_pb).ok_or_else(|| bad_input("missing vote"))?;
        let last = req.last_log_id.as_ref().map(codec::log_id_from_pb);
        let request = openraft::raft::TransferLeaderRequest::new(from, req.to_node_id, last);
        let refused = match self.raft().handle_transfer_leader(request).await.map_err(raft_failed)? {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        Ok(Response::new(pb::TransferLeaderReply { refused }))
    }

    async fn forward_batch(
        &self,
        req: Request<pb::ForwardBatchRequest>,
    ) -> Result<Response<pb::ForwardBatchReply>, Status> {
        let req = req.into_inner();
        self.check_route(req.route.as_ref())?;
        if req.commands.len() > crate::limits::FORWARD_BATCH_COMMANDS_MAX {
            return Err(bad_input(format!("{} forwarded commands in one batch", req.commands.len())));
        }
        self.leader_only()?;
        // Proposed in one message to Raft, so they share one log append.
        let mut outcomes: Vec<Option<Result<Applied, Status>>> = Vec::with_capacity(req.commands.len());
        let (mut valid, mut slots) = (Vec::new(), Vec::new());
        for command in req.commands {
            match self.check_forwarded(&command) {
                Ok(()) => {
                    slots.push(outcomes.len());
                    valid.push(command);
                    outcomes.push(None);
                }
                Err(s) => outcomes.push(Some(Err(s))),
            }
        }
        let proposed = self.node.propose_many_here(valid, self.node.config.request_timeout()).await;
        for (slot, outcome) in slots.into_iter().zip(proposed) {
            outcomes[slot] = Some(outcome.map_err(|(AttemptError::Retry(e) | AttemptError::Final(e))| Status::from(e)));
        }
        let outcomes = outcomes.into_iter().flatten().map(outcome_to_pb).collect();
        Ok(Response::new(pb::ForwardBatchReply { outcomes }))
    }

    async fn read_index(&self, req: Request<pb::Route>) -> Result<Response<pb::ReadIndexReply>, Status> {
        self.check_route(Some(req.get_ref()))?;
        let index = self.node.read_index_here().await?;
        Ok(Response::new(pb::ReadIndexReply { index }))
    }

    async fn lease_keep_alive(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        self.check_route(req.get_ref().route.as_ref())?;
        self.leader_only()?;
        Ok(Response::new(self.node.lease_here(req.get_ref().id, true).await?))
    }

    async fn lease_time_to_live(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        self.check_route(req.get_ref().route.as_ref())?;
        self.leader_only()?;
        Ok(Response::new(self.node.lease_here(req.get_ref().id, false).await?))
    }

    async fn get_cluster(&self, req: Request<pb::GetClusterRequest>) -> Result<Response<pb::GetClusterReply>, Status> {
        if !self.node.token_matches(&req.get_ref().token) {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: member {:x} belongs to a cluster with another --initial-cluster-token",
                self.node.member_id
            )));
        }
        Ok(Response::new(self.node.cluster_reply()))
    }

    async fn change_members(&self, req: Request<pb::MemberChange>) -> Result<Response<pb::GetClusterReply>, Status> {
        let req = req.into_inner();
        self.check_route(req.route.as_ref())?;
        let change = req.change.ok_or_else(|| bad_input("membership change without a change"))?;
        self.node.change_members_here(change, req.retry).await?;
        Ok(Response::new(self.node.cluster_reply()))
    }
}

impl PeerService {
    /// Writes the streamed file to a temp file (fsynced), then hands it to Raft.
    async fn receive_snapshot(
        &self,
        header: pb::SnapshotHeader,
        mut stream: Streaming<pb::SnapshotChunk>,
    ) -> Result<pb::SnapshotReply, Status> {
        let vote = header.vote.as_ref().map(codec::vote_from_pb).ok_or_else(|| bad_input("missing vote"))?;
        let membership = header.last_membership.ok_or_else(|| bad_input("missing membership"))?;
        let meta = SnapshotMeta {
            last_log_id: header.last_log_id.as_ref().map(codec::log_id_from_pb),
            last_membership: codec::stored_membership_from_pb(membership).map_err(bad_input)?,
        };
        let path = self.node.shared.snapshots.temp_path("recv");
        let result = async {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut received = 0u64;
            while let Some(chunk) = stream.next().await {
                let Some(pb::snapshot_chunk::Part::Data(data)) = chunk?.part else {
                    return Err(bad_input("a second snapshot header"));
                };
                received += data.len() as u64;
                if received > header.size_bytes {
                    return Err(bad_input("snapshot longer than announced"));
                }
                file.write_all(&data).await?;
            }
            if received != header.size_bytes {
                return Err(bad_input(format!("snapshot of {received} bytes, {} announced", header.size_bytes)));
            }
            file.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let data = SnapshotFile::open(&path).map_err(|e| Status::internal(e.to_string()))?;
        let snapshot = openraft::alias::SnapshotOf::<crate::raft::types::TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::File(data),
        };
        let reply = self.raft().install_full_snapshot(vote, snapshot).await.map_err(raft_failed)?;
        let _ = std::fs::remove_file(&path);
        Ok(pb::SnapshotReply { vote: Some(codec::vote_to_pb(&reply.vote)) })
    }
}
