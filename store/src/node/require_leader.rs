//! etcd's require-leader rule for client streams. A client that sets the `hasleader: true`
//! metadata (etcd's `WithRequireLeader`, which Kubernetes' API server uses for every watch) wants
//! its stream to fail over to another member when this one is cut off from the leader: such a
//! stream is refused at open while this member knows no leader, and cancelled with
//! `etcdserver: no leader` once it has known none for [`NO_LEADER_CHECKS_MAX`] checks in a row,
//! one per election timeout (etcd `v3rpc/interceptor.go`, `monitorLeader`). Streams opened
//! without the metadata stay open, as in etcd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use super::Node;
use crate::error::StoreError;

/// Consecutive checks without a leader after which require-leader streams are cancelled
/// (etcd's `maxNoLeaderCnt`).
pub const NO_LEADER_CHECKS_MAX: u32 = 3;

/// The gRPC metadata key and value a client sets to require a leader.
const REQUIRE_LEADER_KEY: &str = "hasleader";
const REQUIRE_LEADER_VALUE: &str = "true";

/// Whether a request's metadata asks for etcd's require-leader behaviour.
fn requires_leader(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.get(REQUIRE_LEADER_KEY).is_some_and(|v| v.as_bytes() == REQUIRE_LEADER_VALUE.as_bytes())
}

/// What a client stream holds to follow the rule: resolves [`LeaderGuard::lost`] when the
/// stream must end.
pub struct LeaderGuard(Option<watch::Receiver<u64>>);

impl LeaderGuard {
    /// Admits a new stream: refused with NoLeader when its metadata requires a leader and this
    /// member knows none.
    pub fn open(node: &Node, metadata: &tonic::metadata::MetadataMap) -> Result<Self, StoreError> {
        if !requires_leader(metadata) {
            return Ok(LeaderGuard(None));
        }
        // Subscribed before the check: a loss signalled right after it is still seen.
        let lost = node.leader_lost();
        if !node.has_leader() {
            return Err(StoreError::NoLeader);
        }
        Ok(LeaderGuard(Some(lost)))
    }

    /// Resolves when the stream must end with NoLeader; never for a stream that does not
    /// require a leader.
    pub async fn lost(&mut self) {
        let signalled = match &mut self.0 {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !signalled {
            std::future::pending::<()>().await;
        }
    }
}

/// When this member last took an append from a leader. A follower cut off from its leader
/// must learn it has none: openraft goes on reporting the old leader while this member's
/// pre-votes fail, where etcd's raft forgets its leader on becoming a pre-candidate.
pub struct LeaderContact {
    base: Instant,
    /// Milliseconds after `base`, [`NEVER`] before the first append.
    last_ms: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact { base: Instant::now(), last_ms: AtomicU64::new(NEVER) }
    }
}

impl LeaderContact {
    /// Records an append the local Raft accepted as coming from its leader.
    pub fn note(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn within(&self, limit: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last != NEVER && self.now_ms().saturating_sub(last) <= limit.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

impl Node {
    /// The leader this member knows to be live: for a follower, one it heard from within an
    /// election timeout; for a leader, itself while a quorum acknowledged it within one (etcd's
    /// check-quorum steps down a leader that was not; a sole voter is its own quorum).
    pub fn live_leader(&self) -> Option<u64> {
        let timeout = Duration::from_millis(self.config.election_timeout_ms);
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        let live = if leader == self.member_id {
            m.membership_config.membership().voter_ids().count() <= 1
                || m.last_quorum_acked.as_ref().is_some_and(|at| openraft::Instant::elapsed(&**at) <= timeout)
        } else {
            self.leader_contact.within(timeout)
        };
        live.then_some(leader)
    }

    /// Whether this member knows a live leader ([`Node::live_leader`]).
    pub fn has_leader(&self) -> bool {
        self.live_leader().is_some()
    }

    /// Changes each time this member has been without a leader for [`NO_LEADER_CHECKS_MAX`]
    /// checks: require-leader streams end when it does.
    pub fn leader_lost(&self) -> watch::Receiver<u64> {
        self.leader_lost.subscribe()
    }
}

/// Checks once per election timeout whether this member knows a leader and signals
/// [`Node::leader_lost`] after [`NO_LEADER_CHECKS_MAX`] checks in a row without one.
pub(super) async fn run_leader_monitor(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.election_timeout_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut without_leader = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if node.has_leader() {
            without_leader = 0;
            continue;
        }
        without_leader += 1;
        if without_leader >= NO_LEADER_CHECKS_MAX {
            tracing::warn!(checks = without_leader, "no leader: cancelling require-leader streams");
            node.leader_lost.send_modify(|n| *n += 1);
            without_leader = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::requires_leader;

    #[test]
    fn only_hasleader_true_requires_a_leader() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(!requires_leader(&md));
        md.insert("hasleader", "false".parse().unwrap());
        assert!(!requires_leader(&md));
        md.insert("hasleader", "true".parse().unwrap());
        assert!(requires_leader(&md));
    }
}
