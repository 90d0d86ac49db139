//! A running member: opens storage, starts openraft and the background loops
//! (watch catch-up, physical compaction, lease expiry), and offers the
//! propose/read primitives the gRPC services are built on.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::watch;

use crate::config::StoreConfig;
use crate::engine::{Engine, cf};
use crate::error::StoreError;
use crate::limits::LEASE_REVOKES_PER_ROUND_MAX;
use crate::mvcc::{Compactor, ReadView};
use crate::proto::etcdserverpb as pb;
use crate::proto::raftlog::{self, command::Op};
use crate::raft::log_store::LogStore;
use crate::raft::network::NoPeers;
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::types::{Applied, CommandBytes, MemberInfo, Raft};

/// How often the leader looks for expired leases (etcd: 500 ms).
const LEASE_EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Errors starting a member.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Storage failed to open.
    #[error("storage: {0}")]
    Storage(#[from] crate::engine::EngineError),
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// A running store member.
pub struct Node {
    /// Configuration.
    pub config: StoreConfig,
    /// The Raft handle.
    pub raft: Raft,
    /// State shared with the state machine.
    pub shared: Arc<Shared>,
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Sender<bool>,
    compaction_done: watch::Sender<i64>,
}

/// 64-bit FNV-1a: a stable hash for member and cluster ids.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xFFu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Reads this member's ids, or derives and persists them on first start.
fn member_ids(engine: &Engine, config: &StoreConfig) -> Result<(u64, u64), StartError> {
    let meta = engine.cf(cf::RAFT_META);
    let get = |k: &[u8]| -> Result<Option<u64>, StartError> {
        Ok(engine.db().get_cf(meta, k)?.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes))
    };
    if let (Some(m), Some(c)) = (get(b"member_id")?, get(b"cluster_id")?) {
        return Ok((m, c));
    }
    let urls = config.advertise_client_urls.join(",");
    let member_id = fnv1a(&[config.name.as_bytes(), urls.as_bytes(), config.initial_cluster_token.as_bytes()]).max(1);
    let cluster_id = fnv1a(&[&member_id.to_be_bytes(), config.initial_cluster_token.as_bytes()]).max(1);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(meta, b"member_id", member_id.to_be_bytes());
    batch.put_cf(meta, b"cluster_id", cluster_id.to_be_bytes());
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    engine.db().write_opt(batch, &opts)?;
    Ok((member_id, cluster_id))
}

impl Node {
    /// Opens the data dir and starts the member.
    pub async fn start(config: StoreConfig) -> Result<Arc<Node>, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let engine = Engine::open(&config.data_dir.join("db"))?;
        let (member_id, cluster_id) = member_ids(&engine, &config)?;
        let shared = Shared::open(engine.clone())?;
        let sm = StateMachine::open(shared.clone()).map_err(|e| StartError::Raft(e.to_string()))?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let log_store = LogStore::open(engine.clone(), metrics.clone())?;
        let raft_config = openraft::Config {
            cluster_name: "geobuk".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            install_snapshot_timeout: 4000,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| StartError::Raft(e.to_string()))?);
        let raft = Raft::new(member_id, raft_config, NoPeers, log_store, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let me = MemberInfo {
            name: config.name.clone(),
            peer_urls: Vec::new(),
            client_urls: config.advertise_client_urls.clone(),
        };
        if !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            let members = BTreeMap::from([(member_id, me)]);
            raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }
        let node = Arc::new(Node {
            config,
            raft,
            shared,
            member_id,
            cluster_id,
            metrics,
            shutdown: watch::channel(false).0,
            compaction_done: watch::channel(0).0,
        });
        node.spawn_background();
        Ok(node)
    }

    fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(self.shared.hub.clone().run_catchup());
        let target = self.shared.compaction_target.subscribe();
        tokio::spawn(run_compactor(self.shared.engine.clone(), target, self.compaction_done.clone()));
        tokio::spawn(run_lease_expiry(self.clone(), self.shutdown.subscribe()));
    }

    /// Stops background work and Raft.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// The current Raft term.
    pub fn raft_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term(),
        })
    }

    /// Replicates `op` and returns what applying it produced.
    pub async fn propose(&self, op: Op) -> Result<Applied, StoreError> {
        let cmd = raftlog::Command { request_id: 0, op: Some(op) };
        if cmd.encoded_len() > self.config.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        let data = CommandBytes(cmd.encode_to_vec().into());
        let write = self.raft.client_write(data);
        match tokio::time::timeout(self.config.request_timeout(), write).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(e)) => {
                Err(map_raft_error(&e.to_string(), self.raft.metrics().borrow_watched().current_leader.is_some()))
            }
            Ok(Ok(resp)) => match resp.data {
                Applied::Rejected(e) => Err(e),
                other => Ok(other),
            },
        }
    }

    /// Waits until history up to `revision` is physically compacted.
    pub async fn wait_compacted(&self, revision: i64) -> Result<(), StoreError> {
        let mut done = self.compaction_done.subscribe();
        let wait = done.wait_for(|r| *r >= revision);
        match tokio::time::timeout(self.config.request_timeout() * 10, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// A read view; linearizable unless `serializable`.
    pub async fn read_view(&self, serializable: bool) -> Result<ReadView<'_>, StoreError> {
        if !serializable {
            let ensure = self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex);
            match tokio::time::timeout(self.config.request_timeout(), ensure).await {
                Err(_) => return Err(StoreError::Timeout),
                Ok(Err(e)) => {
                    let has_leader = self.raft.metrics().borrow_watched().current_leader.is_some();
                    return Err(map_raft_error(&e.to_string(), has_leader));
                }
                Ok(Ok(_)) => {}
            }
        }
        ReadView::snapshot(&self.shared.engine).map_err(StoreError::from)
    }
}

fn map_raft_error(msg: &str, has_leader: bool) -> StoreError {
    if msg.contains("forward") || msg.contains("Forward") {
        if has_leader { StoreError::NotLeader } else { StoreError::NoLeader }
    } else if msg.contains("Fatal") || msg.contains("shut") {
        StoreError::Stopped
    } else {
        StoreError::Internal(msg.to_string())
    }
}

async fn run_compactor(engine: Engine, mut target: watch::Receiver<i64>, done: watch::Sender<i64>) {
    let compactor = Arc::new(Compactor::new(engine));
    loop {
        let goal = *target.borrow_and_update();
        if goal > 0 {
            let c = compactor.clone();
            match tokio::task::spawn_blocking(move || c.run(goal)).await {
                Ok(Ok(())) => {
                    tracing::info!(revision = goal, "finished compaction");
                    done.send_replace(goal);
                }
                Ok(Err(e)) => tracing::error!(error = %e, revision = goal, "compaction failed"),
                Err(e) => tracing::error!(error = %e, "compaction panicked"),
            }
        }
        if target.changed().await.is_err() {
            return;
        }
    }
}

/// The leader's expiry loop: proposes a revoke for each expired lease, and
/// restarts every lease's clock when this member becomes leader.
async fn run_lease_expiry(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    let mut tick = tokio::time::interval(LEASE_EXPIRY_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let is_leader = node.raft.metrics().borrow_watched().current_leader == Some(node.member_id);
        if is_leader && !was_leader {
            node.shared.lessor.refresh_all();
        }
        was_leader = is_leader;
        if !is_leader {
            continue;
        }
        for id in node.shared.lessor.expired(Instant::now(), LEASE_REVOKES_PER_ROUND_MAX) {
            let op = Op::LeaseRevoke(raftlog::LeaseRevoke { ids: vec![id], expired: true });
            if let Err(e) = node.propose(op).await {
                tracing::warn!(lease = id, error = %e, "lease expiry revoke failed; will retry");
            }
        }
    }
}
