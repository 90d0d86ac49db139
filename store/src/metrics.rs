//! Prometheus metrics with etcd's names, types, help texts and buckets, so
//! dashboards and alerts written for etcd work unchanged.
//!
//! The crate is TiKV's `prometheus` (without default features): it is widely
//! used and maintained, and its `TextEncoder` writes the Prometheus text format
//! 0.0.4 that etcd's `/metrics` serves (`prometheus-client` writes OpenMetrics,
//! which appends `# EOF` and renames counters). Its `process` feature is left
//! off: procfs would turn on libc features and rebuild RocksDB's C++.
//!
//! Counters and histograms are updated where things happen (the fsync thread,
//! proposals, the gRPC layer in [`crate::http`]). Gauges that mirror state the
//! member already holds (leader, applied index, sizes, watchers) are set from a
//! [`Scrape`] taken when `/metrics` is read, so they are never stale and cost
//! nothing between scrapes.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The shape of a gRPC method, as grpc-go's Prometheus interceptors label it (`grpc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStream,
    /// A stream of requests, one response.
    ClientStream,
    /// Streams both ways.
    BidiStream,
}

impl GrpcType {
    /// grpc-go's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ServerStream => "server_stream",
            GrpcType::ClientStream => "client_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// One gRPC method the client port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMethod {
    /// Fully qualified service, e.g. `etcdserverpb.KV`.
    pub service: &'static str,
    /// Method, e.g. `Range`.
    pub method: &'static str,
    /// Its shape.
    pub kind: GrpcType,
}

const fn rpc(service: &'static str, method: &'static str, kind: GrpcType) -> GrpcMethod {
    GrpcMethod { service, method, kind }
}

/// Every method served on the client port. Only these are counted: like grpc-go's
/// interceptors, which never see unknown methods, and so that a client sending
/// made-up paths cannot grow the label set without bound.
pub const GRPC_METHODS: &[GrpcMethod] = {
    use GrpcType::*;
    &[
        rpc("etcdserverpb.KV", "Range", Unary),
        rpc("etcdserverpb.KV", "Put", Unary),
        rpc("etcdserverpb.KV", "DeleteRange", Unary),
        rpc("etcdserverpb.KV", "Txn", Unary),
        rpc("etcdserverpb.KV", "Compact", Unary),
        rpc("etcdserverpb.Watch", "Watch", BidiStream),
        rpc("etcdserverpb.Lease", "LeaseGrant", Unary),
        rpc("etcdserverpb.Lease", "LeaseRevoke", Unary),
        rpc("etcdserverpb.Lease", "LeaseKeepAlive", BidiStream),
        rpc("etcdserverpb.Lease", "LeaseTimeToLive", Unary),
        rpc("etcdserverpb.Lease", "LeaseLeases", Unary),
        rpc("etcdserverpb.Cluster", "MemberAdd", Unary),
        rpc("etcdserverpb.Cluster", "MemberRemove", Unary),
        rpc("etcdserverpb.Cluster", "MemberUpdate", Unary),
        rpc("etcdserverpb.Cluster", "MemberList", Unary),
        rpc("etcdserverpb.Cluster", "MemberPromote", Unary),
        rpc("etcdserverpb.Maintenance", "Alarm", Unary),
        rpc("etcdserverpb.Maintenance", "Status", Unary),
        rpc("etcdserverpb.Maintenance", "Defragment", Unary),
        rpc("etcdserverpb.Maintenance", "Hash", Unary),
        rpc("etcdserverpb.Maintenance", "HashKV", Unary),
        rpc("etcdserverpb.Maintenance", "Snapshot", ServerStream),
        rpc("etcdserverpb.Maintenance", "MoveLeader", Unary),
        rpc("etcdserverpb.Maintenance", "Downgrade", Unary),
        rpc("grpc.health.v1.Health", "Check", Unary),
        rpc("grpc.health.v1.Health", "Watch", ServerStream),
    ]
};

impl GrpcMethod {
    /// The method a request path (`/etcdserverpb.KV/Range`) names, if it is served here.
    pub fn from_path(path: &str) -> Option<&'static GrpcMethod> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        GRPC_METHODS.iter().find(|m| m.service == service && m.method == method)
    }
}

/// gRPC status codes as grpc-go's `codes.Code.String()` spells them (note
/// "Canceled"), indexed by code number: the `grpc_code` label values.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// grpc-go's name of `code`.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    GRPC_CODE_NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// etcd's latency buckets for WAL fsync and backend commit: 1 ms × 2^i, 14 buckets (1 ms … 8.192 s).
pub fn etcd_disk_buckets() -> Vec<f64> {
    (0..14).map(|i| 0.001 * f64::from(1u32 << i)).collect()
}

/// Buckets of `geobuk_streamed_append_request_entries`: powers of 4 up to the most entries a message
/// may carry.
fn append_entries_buckets() -> Vec<f64> {
    (0..7).map(|i| f64::from(1u32 << (2 * i))).collect()
}

/// State read from the member when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scrape {
    /// This member knows a leader.
    pub has_leader: bool,
    /// This member is the leader.
    pub is_leader: bool,
    /// Raft index known committed (etcd_server_proposals_committed_total).
    pub committed_index: u64,
    /// Raft index applied to the state machine (etcd_server_proposals_applied_total).
    pub applied_index: u64,
    /// Bytes the database occupies (etcd_mvcc_db_total_size_in_bytes).
    pub db_size_bytes: i64,
    /// Live keys, RocksDB's estimate (etcd_debugging_mvcc_keys_total).
    pub keys: u64,
    /// Open watchers (etcd_debugging_mvcc_watcher_total).
    pub watchers: usize,
}

/// Errors producing the exposition text.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The encoder refused a metric family (a malformed metric: a bug).
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// Every metric a member exports, in its own registry (not the process-global
/// default one, so several members in one test process stay apart).
pub struct Metrics {
    registry: Registry,
    has_leader: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    proposals_pending: IntGauge,
    proposals_failed: IntCounter,
    wal_fsync: Histogram,
    backend_commit: Histogram,
    db_total_size: IntGauge,
    keys_total: IntGauge,
    watcher_total: IntGauge,
    snapshot_send_success: IntCounterVec,
    snapshot_send_failures: IntCounterVec,
    snapshot_receive_success: IntCounterVec,
    snapshot_receive_failures: IntCounterVec,
    server_id: IntGaugeVec,
    grpc_started: IntCounterVec,
    grpc_handled: IntCounterVec,
    health_success: IntCounter,
    health_failures: IntCounter,
    healthcheck: IntGaugeVec,
    healthchecks_total: IntCounterVec,
    forward_batches: IntCounter,
    read_index_requests: IntCounter,
    read_index_reads: IntCounter,
    forwarded_proposals: IntCounter,
    append_streams: IntCounter,
    streamed_appends: IntCounter,
    streamed_append_entries: Histogram,
    /// The leader last seen by [`Metrics::observe_leader`].
    last_leader: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` and hands it back. The definitions below are constants,
/// so a failure here is a bug (a duplicate or malformed name), which the unit
/// tests catch; it is not reachable from any input.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: Result<M, prometheus::Error>) -> M {
    let metric = metric.unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("static metric definition registered twice: {e}"));
    metric
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help));
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help));
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| register(&r, IntCounterVec::new(Opts::new(name, help), labels));
        let histogram = |name: &str, help: &str| {
            register(&r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(etcd_disk_buckets())))
        };
        let m = Metrics {
            has_leader: gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            leader_changes: counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            forward_batches: counter(
                "geobuk_forward_batches_total",
                "Batches of proposals this member forwarded to the leader.",
            ),
            read_index_requests: counter(
                "geobuk_read_index_requests_total",
                "Read-index requests this member sent the leader for its linearizable reads.",
            ),
            read_index_reads: counter(
                "geobuk_read_index_reads_total",
                "Linearizable reads this member asked the leader's read index for (in requests).",
            ),
            forwarded_proposals: counter(
                "geobuk_forwarded_proposals_total",
                "Proposals this member forwarded to the leader (attempts, in batches).",
            ),
            append_streams: counter(
                "geobuk_append_streams_total",
                "Pipelined AppendEntries streams a leader opened to this member.",
            ),
            streamed_appends: counter(
                "geobuk_streamed_appends_total",
                "AppendEntries requests this member received on pipelined streams.",
            ),
            streamed_append_entries: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "geobuk_streamed_append_request_entries",
                        "Log entries per AppendEntries request with any, received on pipelined streams (resent requests included).",
                    )
                    .buckets(append_entries_buckets()),
                ),
            ),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            wal_fsync: histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            ),
            backend_commit: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            ),
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            keys_total: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            watcher_total: gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers."),
            snapshot_send_success: counter_vec(
                "etcd_network_snapshot_send_success",
                "Total number of successful snapshot sends",
                &["To"],
            ),
            snapshot_send_failures: counter_vec(
                "etcd_network_snapshot_send_failures",
                "Total number of snapshot send failures",
                &["To"],
            ),
            snapshot_receive_success: counter_vec(
                "etcd_network_snapshot_receive_success",
                "Total number of successful snapshot receives",
                &["From"],
            ),
            snapshot_receive_failures: counter_vec(
                "etcd_network_snapshot_receive_failures",
                "Total number of snapshot receive failures",
                &["From"],
            ),
            server_id: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "etcd_server_id",
                        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                    ),
                    &["server_id"],
                ),
            ),
            grpc_started: counter_vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
            ),
            grpc_handled: counter_vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            health_success: counter("etcd_server_health_success", "The total number of successful health checks"),
            health_failures: counter("etcd_server_health_failures", "The total number of failed health checks"),
            healthcheck: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("etcd_server_healthcheck", "The result of each kind of healthcheck."),
                    &["type", "name"],
                ),
            ),
            healthchecks_total: counter_vec(
                "etcd_server_healthchecks_total",
                "The total number of each kind of healthcheck.",
                &["type", "name", "status"],
            ),
            last_leader: Mutex::new(None),
            registry: r,
        };
        let version = register(
            &m.registry,
            IntGaugeVec::new(
                Opts::new(
                    "etcd_server_version",
                    "Which version is running. 1 for 'server_version' label with current version.",
                ),
                &["server_version"],
            ),
        );
        set(&version, &[crate::service::maintenance::ETCD_VERSION], 1);
        // grpc-go's interceptors pre-register every served method with every code
        // (at zero), so rate() and absent() work before the first call.
        for rpc in GRPC_METHODS {
            let kind = rpc.kind.as_str();
            inc_by(&m.grpc_started, &[kind, rpc.service, rpc.method], 0);
            for code in GRPC_CODE_NAMES {
                inc_by(&m.grpc_handled, &[kind, rpc.service, rpc.method, code], 0);
            }
        }
        m
    }

    /// One fsync of the Raft log (etcd_disk_wal_fsync_duration_seconds).
    pub fn observe_wal_fsync(&self, took: Duration) {
        self.wal_fsync.observe(took.as_secs_f64());
    }

    /// One state-machine batch written (etcd_disk_backend_commit_duration_seconds).
    pub fn observe_backend_commit(&self, took: Duration) {
        self.backend_commit.observe(took.as_secs_f64());
    }

    /// How many state-machine writes were committed to the backend.
    pub fn backend_commits(&self) -> u64 {
        self.backend_commit.get_sample_count()
    }

    /// A leader opened a pipelined AppendEntries stream to this member.
    pub fn append_stream_opened(&self) {
        self.append_streams.inc();
    }

    /// An AppendEntries request with `entries` log entries arrived on a pipelined stream.
    pub fn streamed_append_received(&self, entries: usize) {
        self.streamed_appends.inc();
        if entries > 0 {
            self.streamed_append_entries.observe(entries as f64);
        }
    }

    /// A batch of `proposals` left for the leader.
    pub fn forward_batch_sent(&self, proposals: usize) {
        self.forward_batches.inc();
        self.forwarded_proposals.inc_by(proposals as u64);
    }

    /// A read-index request for `reads` linearizable reads left for the leader.
    pub fn read_index_request_sent(&self, reads: usize) {
        self.read_index_requests.inc();
        self.read_index_reads.inc_by(reads as u64);
    }

    /// A proposal entered Raft (etcd_server_proposals_pending goes up).
    pub fn proposal_started(&self) {
        self.proposals_pending.inc();
    }

    /// A proposal finished; `failed` counts toward etcd_server_proposals_failed_total.
    pub fn proposal_finished(&self, failed: bool) {
        self.proposals_pending.dec();
        if failed {
            self.proposals_failed.inc();
        }
    }

    /// This member sent a full snapshot to member `to` (etcd_network_snapshot_send_success).
    pub fn snapshot_sent(&self, to: u64, ok: bool) {
        let counter = if ok { &self.snapshot_send_success } else { &self.snapshot_send_failures };
        inc_by(counter, &[&member_label(to)], 1);
    }

    /// This member received and installed a full snapshot from `from`
    /// (etcd_network_snapshot_receive_success).
    pub fn snapshot_received(&self, from: u64, ok: bool) {
        let counter = if ok { &self.snapshot_receive_success } else { &self.snapshot_receive_failures };
        inc_by(counter, &[&member_label(from)], 1);
    }

    /// Records this member's id (etcd_server_id{server_id="<hex>"} 1).
    pub fn set_member_id(&self, id: u64) {
        self.server_id.reset();
        set(&self.server_id, &[&member_label(id)], 1);
    }

    /// The leader this member currently knows. As etcd, every switch to a new
    /// leader counts toward etcd_server_leader_changes_seen_total, the first
    /// election included; losing the leader does not count by itself.
    pub fn observe_leader(&self, leader: Option<u64>) {
        // A poisoned lock still holds a valid Option: the update below is one store.
        let mut last = self.last_leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.is_some() && leader != *last {
            self.leader_changes.inc();
        }
        *last = leader;
    }

    /// An RPC arrived (grpc_server_started_total).
    pub fn grpc_started(&self, rpc: &GrpcMethod) {
        inc_by(&self.grpc_started, &[rpc.kind.as_str(), rpc.service, rpc.method], 1);
    }

    /// An RPC ended with `code` (grpc_server_handled_total).
    pub fn grpc_handled(&self, rpc: &GrpcMethod, code: tonic::Code) {
        let labels = [rpc.kind.as_str(), rpc.service, rpc.method, grpc_code_name(code)];
        inc_by(&self.grpc_handled, &labels, 1);
    }

    /// A `/health` answer (etcd_server_health_success / _failures).
    pub fn health_checked(&self, healthy: bool) {
        if healthy { self.health_success.inc() } else { self.health_failures.inc() }
    }

    /// One `/livez` or `/readyz` check ran (`kind` "livez"/"readyz", `name` e.g.
    /// "serializable_read"): etcd_server_healthcheck and etcd_server_healthchecks_total.
    pub fn healthcheck_ran(&self, kind: &str, name: &str, ok: bool) {
        set(&self.healthcheck, &[kind, name], i64::from(ok));
        inc_by(&self.healthchecks_total, &[kind, name, if ok { "success" } else { "error" }], 1);
    }

    /// The exposition text of every metric, with the state gauges set from `scrape`.
    pub fn render(&self, scrape: &Scrape) -> Result<String, MetricsError> {
        self.has_leader.set(i64::from(scrape.has_leader));
        self.is_leader.set(i64::from(scrape.is_leader));
        self.proposals_committed.set(saturating_i64(scrape.committed_index));
        self.proposals_applied.set(saturating_i64(scrape.applied_index));
        self.db_total_size.set(scrape.db_size_bytes);
        self.keys_total.set(saturating_i64(scrape.keys));
        self.watcher_total.set(i64::try_from(scrape.watchers).unwrap_or(i64::MAX));
        let mut out = String::new();
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// A member id as etcd's `types.ID.String()` writes it: lowercase hex, no padding.
fn member_label(id: u64) -> String {
    format!("{id:x}")
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds `by` to one labelled counter. The label counts are fixed by the
/// definitions above; a mismatch is a bug, logged rather than panicking a request.
fn inc_by(vec: &IntCounterVec, labels: &[&str], by: u64) {
    match vec.get_metric_with_label_values(labels) {
        Ok(c) => c.inc_by(by),
        Err(e) => tracing::error!(error = %e, ?labels, "metric labels do not match their definition"),
    }
}

fn set(vec: &IntGaugeVec, labels: &[&str], value: i64) {
    match vec.get_metric_with_label_values(labels) {
        Ok(g) => g.set(value),
        Err(e) => tracing::error!(error = %e, ?labels, "metric labels do not match their definition"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series` (name plus labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn histograms_use_etcds_buckets_in_text_format() {
        let m = Metrics::new();
        m.observe_wal_fsync(Duration::from_micros(1500));
        m.observe_wal_fsync(Duration::from_millis(20));
        m.observe_wal_fsync(Duration::from_secs(30));
        let text = m.render(&Scrape::default()).expect("render");

        assert!(text.contains(
            "# HELP etcd_disk_wal_fsync_duration_seconds The latency distributions of fsync called by WAL.\n"
        ));
        assert!(text.contains("# TYPE etcd_disk_wal_fsync_duration_seconds histogram\n"));
        let les: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("etcd_disk_wal_fsync_duration_seconds_bucket{le=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        let want = [
            "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512", "1.024", "2.048",
            "4.096", "8.192", "+Inf",
        ];
        assert_eq!(les, want);
        let bucket = |le: &str| sample(&text, &format!("etcd_disk_wal_fsync_duration_seconds_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("0.001"), Some(0.0));
        assert_eq!(bucket("0.002"), Some(1.0));
        assert_eq!(bucket("0.016"), Some(1.0));
        assert_eq!(bucket("0.032"), Some(2.0));
        assert_eq!(bucket("8.192"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(sample(&text, "etcd_disk_wal_fsync_duration_seconds_count"), Some(3.0));
        let sum = sample(&text, "etcd_disk_wal_fsync_duration_seconds_sum").expect("sum");
        assert!((sum - 30.0215).abs() < 1e-9, "sum {sum}");
        // The backend histogram exists (all zero) with the same buckets.
        assert_eq!(sample(&text, "etcd_disk_backend_commit_duration_seconds_bucket{le=\"8.192\"}"), Some(0.0));
        assert_eq!(sample(&text, "etcd_disk_backend_commit_duration_seconds_count"), Some(0.0));
    }

    #[test]
    fn streamed_appends_count_every_request_and_size_those_with_entries() {
        let m = Metrics::new();
        for entries in [0, 0, 1, 64, 65, 4096] {
            m.streamed_append_received(entries);
        }
        let text = m.render(&Scrape::default()).expect("render");
        assert_eq!(sample(&text, "geobuk_streamed_appends_total"), Some(6.0));
        let bucket = |le: &str| sample(&text, &format!("geobuk_streamed_append_request_entries_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("1"), Some(1.0));
        assert_eq!(bucket("64"), Some(2.0));
        assert_eq!(bucket("256"), Some(3.0));
        assert_eq!(bucket("4096"), Some(4.0));
        assert_eq!(sample(&text, "geobuk_streamed_append_request_entries_count"), Some(4.0));
        assert_eq!(sample(&text, "geobuk_streamed_append_request_entries_sum"), Some(4226.0));
    }

    #[test]
    fn scrape_sets_the_state_gauges() {
        let m = Metrics::new();
        m.set_member_id(0x8e9e_05c5_2164_694d);
        let scrape = Scrape {
            has_leader: true,
            is_leader: false,
            committed_index: 12,
            applied_index: 11,
            db_size_bytes: 4096,
            keys: 7,
            watchers: 3,
        };
        let text = m.render(&scrape).expect("render");
        assert!(text.contains("# TYPE etcd_server_proposals_committed_total gauge\n"));
        assert_eq!(sample(&text, "etcd_server_has_leader"), Some(1.0));
        assert_eq!(sample(&text, "etcd_server_is_leader"), Some(0.0));
        assert_eq!(sample(&text, "etcd_server_proposals_committed_total"), Some(12.0));
        assert_eq!(sample(&text, "etcd_server_proposals_applied_total"), Some(11.0));
        assert_eq!(sample(&text, "etcd_mvcc_db_total_size_in_bytes"), Some(4096.0));
        assert_eq!(sample(&text, "etcd_debugging_mvcc_keys_total"), Some(7.0));
        assert_eq!(sample(&text, "etcd_debugging_mvcc_watcher_total"), Some(3.0));
        assert_eq!(sample(&text, "etcd_server_id{server_id=\"8e9e05c52164694d\"}"), Some(1.0));
        assert_eq!(sample(&text, "etcd_server_version{server_version=\"3.6.0\"}"), Some(1.0));
    }

    #[test]
    fn counters_proposals_snapshots_and_leader_changes() {
        let m = Metrics::new();
        m.proposal_started();
        m.proposal_started();
        m.proposal_finished(false);
        m.proposal_started();
        m.proposal_finished(true);
        m.snapshot_sent(0xab, true);
        m.snapshot_sent(0xab, false);
        m.snapshot_received(0x1, true);
        m.snapshot_received(0x1, false);
        for leader in [None, Some(1), Some(1), None, Some(1), Some(2)] {
            m.observe_leader(leader);
        }
        let text = m.render(&Scrape::default()).expect("render");
        assert_eq!(sample(&text, "etcd_server_proposals_pending"), Some(1.0));
        assert_eq!(sample(&text, "etcd_server_proposals_failed_total"), Some(1.0));
        assert_eq!(sample(&text, "etcd_network_snapshot_send_success{To=\"ab\"}"), Some(1.0));
        assert_eq!(sample(&text, "etcd_network_snapshot_send_failures{To=\"ab\"}"), Some(1.0));
        assert_eq!(sample(&text, "etcd_network_snapshot_receive_success{From=\"1\"}"), Some(1.0));
        assert_eq!(sample(&text, "etcd_network_snapshot_receive_failures{From=\"1\"}"), Some(1.0));
        // None→1, None→1 again, 1→2: three changes; a repeat or a loss is none.
        assert_eq!(sample(&text, "etcd_server_leader_changes_seen_total"), Some(3.0));
        assert!(text.contains("# TYPE etcd_server_leader_changes_seen_total counter\n"));
    }

    #[test]
    fn grpc_counters_use_grpc_go_names_and_are_preregistered() {
        let m = Metrics::new();
        let put = GrpcMethod::from_path("/etcdserverpb.KV/Put").expect("known");
        assert_eq!(put.kind, GrpcType::Unary);
        assert_eq!(GrpcMethod::from_path("/etcdserverpb.Watch/Watch").map(|m| m.kind), Some(GrpcType::BidiStream));
        assert_eq!(GrpcMethod::from_path("/etcdserverpb.KV/Nope"), None);
        assert_eq!(GrpcMethod::from_path("/metrics"), None);
        m.grpc_started(put);
        m.grpc_handled(put, tonic::Code::Ok);
        m.grpc_handled(put, tonic::Code::Cancelled);
        let text = m.render(&Scrape::default()).expect("render");
        let labels = "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
        assert_eq!(sample(&text, &format!("grpc_server_started_total{{{labels}}}")), Some(1.0));
        assert_eq!(sample(&text, &format!("grpc_server_handled_total{{grpc_code=\"OK\",{labels}}}")), Some(1.0));
        assert_eq!(sample(&text, &format!("grpc_server_handled_total{{grpc_code=\"Canceled\",{labels}}}")), Some(1.0));
        let range =
            "grpc_code=\"OutOfRange\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
        assert_eq!(sample(&text, &format!("grpc_server_handled_total{{{range}}}")), Some(0.0), "pre-registered");
        assert_eq!(grpc_code_name(tonic::Code::Unauthenticated), "Unauthenticated");
        assert_eq!(GRPC_CODE_NAMES[tonic::Code::OutOfRange as usize], "OutOfRange");
    }

    #[test]
    fn health_counters() {
        let m = Metrics::new();
        m.health_checked(true);
        m.health_checked(false);
        m.healthcheck_ran("readyz", "linearizable_read", false);
        let text = m.render(&Scrape::default()).expect("render");
        assert_eq!(sample(&text, "etcd_server_health_success"), Some(1.0));
        assert_eq!(sample(&text, "etcd_server_health_failures"), Some(1.0));
        assert_eq!(sample(&text, "etcd_server_healthcheck{name=\"linearizable_read\",type=\"readyz\"}"), Some(0.0));
        let total = "etcd_server_healthchecks_total{name=\"linearizable_read\",status=\"error\",type=\"readyz\"}";
        assert_eq!(sample(&text, total), Some(1.0));
    }
}
