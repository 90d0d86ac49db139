//! The Maintenance service: Status, HashKV, Defragment, Alarm and friends.

use openraft::async_runtime::WatchReceiver;
use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::error::StoreError;
use crate::mvcc;
use crate::proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use crate::snapshot;

/// The etcd version geobuk reports: Kubernetes enables watch progress
/// requests only for etcd ≥ 3.5.13, and geobuk implements 3.6's API.
pub const ETCD_VERSION: &str = "3.6.0";

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Backup chunks queued ahead of a slow client.
const SNAPSHOT_STREAM_CHUNKS_BUFFERED_MAX: usize = 4;
/// Bytes per backup chunk (etcd sends 32 KiB; larger chunks cost fewer messages).
const SNAPSHOT_STREAM_CHUNK_BYTES: usize = 1024 * 1024;

/// Sends the backup file in chunks, each with the bytes still to come, then
/// zero padding to 512 bytes and the SHA-256 of all that, as etcd's bbolt
/// backups end (etcdctl checks it).
fn stream_backup(
    mut file: std::fs::File,
    size: u64,
    header: Option<pb::ResponseHeader>,
    tx: tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) {
    use sha2::Digest;
    use std::io::Read;
    let digest_bytes = snapshot::file::BACKUP_DIGEST_BYTES as u64;
    let padding = snapshot::file::backup_padding(size);
    let mut remaining = size + padding + digest_bytes;
    let mut header = header;
    let mut sha = sha2::Sha256::default();
    loop {
        let blob = if remaining == digest_bytes {
            sha.clone().finalize().to_vec()
        } else if remaining == padding + digest_bytes {
            let zeros = vec![0u8; padding as usize];
            sha.update(&zeros);
            zeros
        } else {
            let left = remaining - padding - digest_bytes;
            let mut blob = vec![0u8; SNAPSHOT_STREAM_CHUNK_BYTES.min(left as usize)];
            if let Err(e) = file.read_exact(&mut blob) {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading the backup: {e}"))));
                return;
            }
            sha.update(&blob);
            blob
        };
        remaining -= blob.len() as u64;
        let msg = pb::SnapshotResponse {
            header: header.take(),
            remaining_bytes: remaining,
            blob: blob.into(),
            version: ETCD_VERSION.to_string(),
        };
        if tx.blocking_send(Ok(msg)).is_err() || remaining == 0 {
            return;
        }
    }
}

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
        let hash = mvcc::hash_kv(&view, 0)?;
        Ok(Response::new(pb::HashResponse { header: self.node.header(view.current), hash }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let view = self.node.read_view(true).await?;
        let rev = view.resolve_revision(req.into_inner().revision)?;
        let hash = mvcc::hash_kv(&view, rev)?;
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
        let node = self.node.clone();
        let (file, size) = tokio::task::spawn_blocking(move || -> Result<(std::fs::File, u64), StoreError> {
            let dir = &node.shared.snapshots;
            let path = dir.temp_path("backup");
            let written = snapshot::file::write(&node.shared.engine, &path);
            let opened = written.and_then(|(_, size)| Ok((std::fs::File::open(&path)?, size)));
            // The open file stays readable after the unlink; nothing is left behind on disk.
            let _ = std::fs::remove_file(&path);
            opened.map_err(StoreError::internal)
        })
        .await
        .map_err(StoreError::internal)??;
        let header = self.node.header(self.node.shared.hub.current_revision());
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_STREAM_CHUNKS_BUFFERED_MAX);
        tokio::task::spawn_blocking(move || stream_backup(file, size, header, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.node.move_leader(req.into_inner().target_id).await?;
        let header = self.node.header(self.node.shared.hub.current_revision());
        Ok(Response::new(pb::MoveLeaderResponse { header }))
    }

    async fn downgrade(&self, _req: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(StoreError::NotCapable.into())
    }
}
