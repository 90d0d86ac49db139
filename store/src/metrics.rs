//! Prometheus metrics with etcd's names, so dashboards and alerts written for
//! etcd work unchanged. (Stub: the helper that builds /metrics fills it in.)

use std::time::Duration;

/// Every metric a member exports.
#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        Metrics {}
    }

    /// One fsync of the Raft log (etcd_disk_wal_fsync_duration_seconds).
    pub fn observe_wal_fsync(&self, _took: Duration) {}

    /// One state-machine batch written (etcd_disk_backend_commit_duration_seconds).
    pub fn observe_backend_commit(&self, _took: Duration) {}

    /// A proposal entered Raft (etcd_server_proposals_pending goes up).
    pub fn proposal_started(&self) {}

    /// A proposal finished; `failed` counts toward etcd_server_proposals_failed_total.
    pub fn proposal_finished(&self, _failed: bool) {}

    /// This member sent a full snapshot to member `to` (etcd_network_snapshot_send_success).
    pub fn snapshot_sent(&self, _to: u64, _ok: bool) {}

    /// This member received and installed a full snapshot from `from`
    /// (etcd_network_snapshot_receive_success).
    pub fn snapshot_received(&self, _from: u64, _ok: bool) {}
}
