//! The Maintenance service: Status, HashKV, Defragment, Alarm and friends.

use openraft::async_runtime::WatchReceiver;
use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::error::StoreError;
use crate::mvcc;
use crate::proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};

/// The etcd version geobuk reports: Kubernetes enables watch progress
/// requests only for etcd ≥ 3.5.13, and geobuk implements 3.6's API.
pub const ETCD_VERSION: &str = "3.6.0";

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for Ctx {
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let header = self.node.header(self.node.shared.hub.current_revision());
        match pb::alarm_request::AlarmAction::try_from(req.into_inner().action) {
            // geobuk raises no alarms: it has no space quota alarm and no corruption checker yet.
            Ok(_) => Ok(Response::new(pb::AlarmResponse { header, alarms: Vec::new() })),
            Err(_) => Err(Status::invalid_argument("unknown alarm action")),
        }
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let db_size = self.node.shared.engine.approximate_size();
        let revision = self.node.shared.hub.current_revision();
        let is_learner = !m.membership_config.membership().voter_ids().any(|id| id == self.node.member_id);
        Ok(Response::new(pb::StatusResponse {
            header: self.node.header(revision),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner,
            storage_version: ETCD_VERSION.to_string(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let engine = self.node.shared.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_all())
            .await
            .map_err(StoreError::internal)?
            .map_err(StoreError::from)?;
        let header = self.node.header(self.node.shared.hub.current_revision());
        Ok(Response::new(pb::DefragmentResponse { header }))
    }

    async fn hash(&self, _req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let view = self.node.read_view(true).await?;
        let hash = mvcc::hash_kv(&view, 0).map_err(StoreError::from)?;
        Ok(Response::new(pb::HashResponse { header: self.node.header(view.current), hash }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let view = self.node.read_view(true).await?;
        let rev = view.resolve_revision(req.into_inner().revision)?;
        let hash = mvcc::hash_kv(&view, rev).map_err(StoreError::from)?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.node.header(view.current),
            hash,
            // etcd reports -1 until the first compaction.
            compact_revision: if view.compacted == 0 { -1 } else { view.compacted },
            hash_revision: rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _req: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("snapshot backup arrives with the multi-member store"))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        if target != self.node.member_id {
            return Err(StoreError::BadLeaderTransferee.into());
        }
        let header = self.node.header(self.node.shared.hub.current_revision());
        Ok(Response::new(pb::MoveLeaderResponse { header }))
    }

    async fn downgrade(&self, _req: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(StoreError::NotCapable.into())
    }
}
