//! openraft's own storage test suite (`openraft::testing::log::Suite`) against the log store
//! and state machine as a member opens them: one engine shared by both, on a fresh directory
//! per case. It checks openraft's API contract (votes, appends, truncation, purge, committed
//! id, snapshots, apply); durability under crashes is what `tests/restart.rs` and the jepsen
//! kill nemesis check.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::{Shared, StateMachine};
use super::types::TypeConfig;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::snapshot::SnapshotDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db")).expect("open engine");
        let metrics = Arc::new(Metrics::new());
        let log = LogStore::open(engine.clone(), metrics.clone()).expect("open log store");
        let snapshots = Arc::new(SnapshotDir::open(dir.path().join("snap")).expect("open snapshot dir"));
        let shared = Shared::open(engine, snapshots, metrics).expect("open state machine");
        let sm = StateMachine::open(shared).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}
