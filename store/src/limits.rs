//! Every queue, buffer and request size in the store has a named limit here,
//! with the reason for its value. Units are in the name.

/// etcd's `--max-request-bytes` default (1.5 MiB).
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 1536 * 1024;
/// gRPC's receive limit is the request limit plus this overhead, as in etcd
/// (`grpcOverheadBytes`), so an over-limit request reaches our handler and is
/// answered with etcd's "request is too large" rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's `--max-txn-ops` default.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;
/// etcd's `MaxLeaseTTL`.
pub const LEASE_TTL_MAX_SECS: i64 = 9_000_000_000;
/// Leases the leader revokes per expiry round (etcd: 1,000/s, checked every 500 ms).
pub const LEASE_REVOKES_PER_ROUND_MAX: usize = 500;
/// Responses queued on one watch stream before its watchers fall back to
/// catching up from storage (etcd 3.5: 128 per stream).
pub const WATCH_STREAM_RESPONSES_BUFFERED_MAX: usize = 256;
/// Events packed into one catch-up response read from storage; a revision is
/// never split, so a response may exceed it by one revision's events.
pub const WATCH_CATCHUP_EVENTS_PER_RESPONSE_MAX: usize = 1000;
/// Watchers one stream may hold, so one client cannot exhaust the server.
pub const WATCHERS_PER_STREAM_MAX: usize = 100_000;
/// Lease keep-alive responses queued per stream.
pub const LEASE_KEEPALIVE_RESPONSES_BUFFERED_MAX: usize = 128;
/// Keys read from storage per Range batch while serving one request.
pub const RANGE_SCAN_BATCH_KEYS: usize = 10_000;
/// History revisions deleted per write batch during physical compaction, so
/// compaction never holds up apply for long.
pub const COMPACTION_BATCH_REVISIONS: usize = 10_000;
/// Client requests being served at once, over all connections.
pub const CONCURRENT_REQUESTS_MAX: usize = 10_000;
/// The transport's own cap on one decoded message. Unary KV requests between
/// `--max-request-bytes` + [`GRPC_OVERHEAD_BYTES`] and this cap are refused by
/// the handler with grpc-go's ResourceExhausted answer, as etcd clients expect.
pub const GRPC_MESSAGE_BYTES_HARD_MAX: usize = 64 * 1024 * 1024;
/// How long a stopping server lets requests and streams in flight finish
/// before it closes their connections.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest message on the peer protocol: an append-entries batch (see
/// `RAFT_PAYLOAD_BYTES_MAX`), a forwarded batch, a snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// HTTP/2 flow-control windows of peer connections, both ends: a whole append-entries message
/// (up to `RAFT_PAYLOAD_BYTES_MAX` and one entry) goes out without waiting a round trip for a
/// window update, which a replication reply's deadline would not allow on a slow link.
pub const PEER_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// See `PEER_STREAM_WINDOW_BYTES`: the replication stream, forwarded batches and snapshot
/// chunks share one connection per peer.
pub const PEER_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Log entries per append-entries message (openraft's max_payload_entries). What bounds a
/// message is `RAFT_PAYLOAD_BYTES_MAX`, as etcd's `MaxSizePerMsg` (1 MiB, no entry count)
/// does; this only caps the count of tiny entries. At 64, a follower under a put load of
/// 25,000 puts/s took 400 messages a second, each its own append, fsync and reply, and
/// put-1000 ran 17 % slower (bench/BOUNDS.md).
pub const RAFT_PAYLOAD_ENTRIES_MAX: u64 = 4096;
/// Encoded entries in one append-entries message: entries are taken until their bytes reach
/// this, so a message holds at least one entry and at most this plus one entry (which may be a
/// max-size request). etcd's `MaxSizePerMsg`.
pub const RAFT_PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// How long one forwarding attempt to the leader may take before it is
/// retried (with the same request id) until the request timeout.
pub const FORWARD_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Forwarded proposals queued on a follower for the leader; callers wait when it is full.
pub const FORWARD_QUEUE_COMMANDS_MAX: usize = 10_000;
/// Proposals in one forwarded batch.
pub const FORWARD_BATCH_COMMANDS_MAX: usize = 256;
/// Bytes of the proposals in one forwarded batch (one larger proposal travels alone), well
/// under the peer protocol's message limit.
pub const FORWARD_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Forwarded batches in flight from one member. While they are, proposals queue, so the next
/// batch carries all of them: batches grow with the load instead of one RPC per proposal.
pub const FORWARD_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Linearizable reads queued on a follower for a read index from the leader; callers wait
/// when it is full.
pub const READ_INDEX_QUEUE_READS_MAX: usize = 10_000;
/// Reads answered by one read-index request to the leader.
pub const READ_INDEX_BATCH_READS_MAX: usize = 1024;
/// Read-index requests in flight from one member. While they are, reads queue and share the
/// next request.
pub const READ_INDEX_REQUESTS_IN_FLIGHT_MAX: usize = 2;
/// Pause before retrying a forward when the leader is unknown or just changed.
pub const FORWARD_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
/// How long one HTTP request (`/metrics`, `/health`, `/readyz`, ...) may take
/// before it is answered 503: every check inside is bounded more tightly, so
/// this only catches the unforeseen. Connections idle in their headers are
/// closed by hyper's own 30 s header timeout.
pub const HTTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a health check's read may take. etcd allows its full request
/// timeout (7 s by default); a probe wants a quicker answer, and a healthy
/// member's linearizable read takes one heartbeat round trip.
pub const HEALTH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
