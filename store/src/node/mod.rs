//! A running member: opens storage, establishes its identity, starts openraft
//! and the background loops (watch catch-up, physical compaction, lease
//! expiry, publishing its attributes), and offers the propose/read
//! primitives the gRPC services are built on (`forward` routes them to the
//! leader when this member is not it).

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::StoreConfig;
use crate::engine::Engine;
use crate::error::StoreError;
use crate::limits::LEASE_REVOKES_PER_ROUND_MAX;
use crate::limits::RAFT_PAYLOAD_ENTRIES_MAX;
use crate::mvcc::{Compactor, ReadView};
use crate::peer::PeerClients;
use crate::peer::network::Network;
use crate::proto::etcdserverpb as pb;
use crate::proto::raftlog::{self, command::Op};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::types::Raft;
use crate::snapshot::SnapshotDir;

pub mod bootstrap;
pub mod forward;
pub mod forward_batch;
pub mod membership;
mod peer_batch;
pub mod read_batch;
pub mod reconfig_check;
pub mod require_leader;

use bootstrap::{Bootstrap, Identity};

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
    /// The member's identity could not be established.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// A snapshot could not be read or recovered.
    #[error("snapshot: {0}")]
    Snapshot(std::io::Error),
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
    /// Connections to the other members.
    pub peers: Arc<PeerClients>,
    /// Proposals on their way to the leader.
    forwarder: forward_batch::ForwardBatcher,
    /// Linearizable reads waiting for the leader's read index.
    read_indexes: read_batch::ReadIndexBatcher,
    request_ids: RequestIds,
    /// Membership changes run one at a time.
    membership_lock: tokio::sync::Mutex<()>,
    /// The --initial-cluster-token this member's cluster was bootstrapped with.
    token: String,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Sender<bool>,
    compaction_done: watch::Sender<i64>,
    /// True once this member's name and client URLs are applied (etcd's ReadyNotify): client
    /// requests are served only from then on.
    published: watch::Sender<bool>,
    /// Bumped when require-leader streams must end (see [`require_leader`]).
    leader_lost: watch::Sender<u64>,
    /// When this member last took an append from a leader.
    pub(crate) leader_contact: require_leader::LeaderContact,
}

impl Node {
    /// Opens the data dir and starts the member.
    pub async fn start(config: StoreConfig) -> Result<Arc<Node>, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let engine = Engine::open(&config.data_dir.join("db"))?;
        crate::raft::state_machine::recover_interrupted_install(&engine).map_err(StartError::Snapshot)?;
        let (identity, boot) = bootstrap::resolve(&engine, &config).await?;
        let Identity { member_id, cluster_id } = identity;
        let token = bootstrap::stored_token(&engine)?.unwrap_or_else(|| config.initial_cluster_token.clone());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let snapshots =
            Arc::new(SnapshotDir::open(config.data_dir.join("snap")).map_err(|e| StartError::Snapshot(e.into()))?);
        let shared = Shared::open(engine.clone(), snapshots, metrics.clone())?;
        let sm = StateMachine::open(shared.clone()).map_err(|e| StartError::Raft(e.to_string()))?;
        let log_store = LogStore::open(engine.clone(), metrics.clone())?;
        let raft_config = raft_config(&config)?;
        let peers = Arc::new(PeerClients::new(member_id, cluster_id, config.peer_dial_overrides.clone()));
        let network = Network {
            clients: peers.clone(),
            metrics: metrics.clone(),
            append_reply_deadline_min: Duration::from_millis(config.election_timeout_ms),
        };
        let raft = Raft::new(member_id, raft_config, network, log_store, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if let Bootstrap::New(members) = boot
            && !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?
        {
            tracing::info!(
                member_id = format!("{member_id:x}"),
                members = members.len(),
                "bootstrapping a new cluster"
            );
            raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }
        let node = Arc::new(Node {
            config,
            raft,
            shared,
            member_id,
            cluster_id,
            forwarder: forward_batch::ForwardBatcher::start(peers.clone(), metrics.clone()),
            read_indexes: read_batch::ReadIndexBatcher::start(peers.clone(), metrics.clone()),
            metrics,
            peers,
            request_ids: RequestIds::new(member_id),
            membership_lock: tokio::sync::Mutex::new(()),
            token,
            shutdown: watch::channel(false).0,
            compaction_done: watch::channel(0).0,
            published: watch::channel(false).0,
            leader_lost: watch::channel(0).0,
            leader_contact: Default::default(),
        });
        node.spawn_background();
        Ok(node)
    }

    fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(self.shared.hub.clone().run_catchup());
        let target = self.shared.compaction_target.subscribe();
        tokio::spawn(run_compactor(self.shared.engine.clone(), target, self.compaction_done.clone()));
        tokio::spawn(run_lease_expiry(self.clone(), self.shutdown.subscribe()));
        tokio::spawn(forward::run_publish(self.clone(), self.shutdown.subscribe()));
        tokio::spawn(require_leader::run_leader_monitor(self.clone(), self.shutdown.subscribe()));
    }

    /// Stops background work and Raft.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Resolves once `stop` has begun: long-lived streams (a leader's append stream) end on it,
    /// so that they do not hold the server's graceful shutdown open.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Waits until this member's attributes are published (etcd serves clients only then, so a
    /// member that answers a client is always in the member list with its client URLs).
    pub async fn wait_published(&self) {
        let mut published = self.published.subscribe();
        let _ = published.wait_for(|p| *p).await;
    }

    pub(crate) fn mark_published(&self) {
        self.published.send_replace(true);
    }

    /// Whether this member currently leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.member_id)
    }

    /// The term this member leads, from one snapshot of the Raft metrics: a candidate or a
    /// follower of a newer term has no term to lead, so its lessor clocks stay untouched.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        (m.state == openraft::ServerState::Leader && m.current_leader == Some(self.member_id)).then_some(m.current_term)
    }

    /// Whether `token` is this cluster's token.
    pub fn token_matches(&self, token: &str) -> bool {
        token == self.token
    }

    /// This member's view of the cluster, for peers.
    pub fn cluster_reply(&self) -> crate::proto::peerpb::GetClusterReply {
        crate::proto::peerpb::GetClusterReply {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            leader_id: self.raft.metrics().borrow_watched().current_leader.unwrap_or(0),
            members: self.members_pb(),
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
            self.linearize().await?;
        }
        ReadView::snapshot(&self.shared.engine).map_err(StoreError::from)
    }
}

/// openraft's configuration from etcd's flags.
fn raft_config(config: &StoreConfig) -> Result<Arc<openraft::Config>, StartError> {
    let raft_config = openraft::Config {
        cluster_name: "geobuk".into(),
        heartbeat_interval: config.heartbeat_interval_ms,
        // openraft's voters refuse a candidate until `election_timeout_max`
        // after their leader's last heartbeat (its leader lease), and a
        // follower's timer fires within [min, max]: the first campaign after a
        // leader dies is refused, the second succeeds. With [T/2, 3T/4] a new
        // leader is elected between T and 1.5 T after the last heartbeat —
        // never before T (etcd's guarantee: no election within T) and within
        // etcd's own [T, 2T) window.
        election_timeout_min: (config.election_timeout_ms / 2).max(1),
        election_timeout_max: (config.election_timeout_ms * 3 / 4).max(2),
        install_snapshot_timeout: 4000.max(config.election_timeout_ms * 4),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count.max(1)),
        max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
        max_payload_entries: RAFT_PAYLOAD_ENTRIES_MAX,
        // etcd 3.5+ default: a member back from a pause or partition does not
        // depose a healthy leader by campaigning with a higher term.
        enable_pre_vote: Some(true),
        // A follower whose data dir was wiped and which bootstrapped anew (its refusal needs a
        // peer that saw it publish) answers the leader with a log shorter than it had acked.
        // openraft's default treats that as a bug and panics the leader's RaftCore, which takes
        // the whole cluster's leader down; etcd's leader just walks the follower's next index
        // back. Allowed, the leader re-replicates to it.
        allow_log_reversion: Some(true),
        // A restarted leader campaigns again, as etcd's does, instead of resuming its old term
        // at once. Resumed, its read index is the larger of its old term's no-op and the saved
        // committed id, which lags what it had acknowledged: the state machine's writes are not
        // flushed when apply returns and the committed id rides with the next log write
        // (raft/log_store.rs), and with a power loss even a written id can be lost. A new
        // term's no-op covers every acknowledged write. `full_cluster_kill_and_restart` read
        // acknowledged keys as missing with it on.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(Arc::new(raft_config.validate().map_err(|e| StartError::Raft(e.to_string()))?))
}

/// Unique ids for proposals, so a retried forward is applied at most once: a
/// per-start nonce (a hash of the member id and the boot time) in the high 32
/// bits and a counter in the low 32. One member's ids ascend, so apply appends
/// its dedup records in order instead of inserting them at random points of a
/// large table (a scattered id cost a cache-missing skiplist insert per write).
/// The counter wraps after 2³² proposals of one start, long after the dedup
/// window has forgotten the first ones.
struct RequestIds {
    nonce: u64,
    next: std::sync::atomic::AtomicU32,
}

impl RequestIds {
    fn new(member_id: u64) -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let hash = bootstrap::fnv1a(&[&member_id.to_be_bytes(), &now.to_be_bytes()]);
        RequestIds { nonce: (hash >> 32) ^ (hash & 0xFFFF_FFFF), next: std::sync::atomic::AtomicU32::new(1) }
    }

    fn next(&self) -> u64 {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ((self.nonce << 32) | u64::from(n)).max(1)
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
    let mut tick = tokio::time::interval(LEASE_EXPIRY_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(term) = node.leader_term() else { continue };
        if !node.shared.lessor.promote(term) {
            continue;
        }
        for id in node.shared.lessor.expired(Instant::now(), LEASE_REVOKES_PER_ROUND_MAX) {
            let op = Op::LeaseRevoke(raftlog::LeaseRevoke { ids: vec![id], expired: true });
            if let Err(e) = node.propose_as_leader(op).await {
                tracing::warn!(lease = id, error = %e, "lease expiry revoke failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RequestIds;

    #[test]
    fn request_ids_ascend_within_a_start_and_differ_between_members() {
        let a = RequestIds::new(1);
        let ids: Vec<u64> = (0..1000).map(|_| a.next()).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "one start's ids are consecutive");
        let b = RequestIds::new(2);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(b.next() >> 32, ids[0] >> 32);
    }
}
