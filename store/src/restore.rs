//! `geobuk snapshot restore`: builds a fresh data dir for a new cluster from
//! a Maintenance.Snapshot backup, keeping every key, revision and lease, and
//! giving the cluster a new membership (etcdctl snapshot restore's contract).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use openraft::alias::CommittedLeaderIdOf;

use crate::config::StoreConfig;
use crate::engine::{Engine, cf};
use crate::node::bootstrap::{self, BootstrapError, Identity};
use crate::raft::codec;
use crate::raft::state_machine::{META_LAST_APPLIED, META_MEMBERSHIP};
use crate::raft::types::{LogId, Membership, StoredMembership, TypeConfig};
use crate::snapshot::{SnapshotDir, SnapshotError, file};

/// Errors restoring a backup.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target data dir already holds something.
    #[error("data-dir {0:?} exists")]
    DataDirExists(PathBuf),
    /// The backup is unreadable or corrupt.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The flags do not describe a valid member.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// Storage failed.
    #[error("storage: {0}")]
    Engine(#[from] crate::engine::EngineError),
    /// The membership is invalid.
    #[error("membership: {0}")]
    Membership(String),
}

impl From<rocksdb::Error> for RestoreError {
    fn from(e: rocksdb::Error) -> Self {
        RestoreError::Engine(e.into())
    }
}

/// Restores `backup` into `config.data_dir` for member `config.name` of the
/// cluster `config.initial_cluster` with `config.initial_cluster_token`.
/// Returns the new member's identity.
pub fn restore(backup: &Path, config: &StoreConfig) -> Result<Identity, RestoreError> {
    let info = file::verify(backup)?;
    let dir = &config.data_dir;
    if dir.exists() && std::fs::read_dir(dir).map_err(SnapshotError::from)?.next().is_some() {
        return Err(RestoreError::DataDirExists(dir.clone()));
    }
    let members = bootstrap::initial_members(config);
    let Some(my_urls) = config.initial_cluster.get(&config.name) else {
        return Err(BootstrapError::UnknownName(config.name.clone()).into());
    };
    let token = &config.initial_cluster_token;
    let ids: BTreeSet<u64> = members.keys().copied().collect();
    let identity = Identity {
        member_id: bootstrap::member_id_for(my_urls, token),
        cluster_id: bootstrap::cluster_id_for(&ids, token),
    };
    std::fs::create_dir_all(dir).map_err(SnapshotError::from)?;
    let engine = Engine::open(&dir.join("db"))?;
    file::load(&engine, backup)?;
    // The old cluster's request ids, member attributes and removed members mean nothing here:
    // member ids are recomputed from the URLs and token, and may be ids the old cluster removed.
    engine.clear_cf(cf::DEDUP)?;
    engine.clear_cf(cf::MEMBERS)?;
    crate::raft::removed::clear(&engine)?;
    // The state a fresh cluster has right after bootstrap: the membership at
    // log index 0, applied; the log starts after it.
    let log_id = LogId { leader_id: CommittedLeaderIdOf::<TypeConfig> { term: 0, node_id: 0 }, index: 0 };
    let membership =
        Membership::new(vec![ids.clone()], members).map_err(|e| RestoreError::Membership(e.to_string()))?;
    let stored = StoredMembership::new(Some(log_id), membership);
    let mut batch = rocksdb::WriteBatch::default();
    let sm_meta = engine.cf(cf::SM_META);
    batch.put_cf(sm_meta, META_LAST_APPLIED, codec::encode_log_id(&log_id));
    batch.put_cf(sm_meta, META_MEMBERSHIP, codec::encode_stored_membership(&stored));
    batch.put_cf(engine.cf(cf::RAFT_META), crate::raft::log_store::META_LAST_PURGED, codec::encode_log_id(&log_id));
    engine.db().write(batch)?;
    engine.sync_wal()?;
    bootstrap::persist_restored(&engine, &identity, token)?;
    // A snapshot covering the purged start of the log, for members that need one.
    std::sync::Arc::new(SnapshotDir::open(dir.join("snap"))?).build(&engine)?;
    tracing::info!(revision = info.revision, member_id = format!("{:x}", identity.member_id), "restored backup");
    Ok(identity)
}
