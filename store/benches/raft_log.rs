//! Raft log micro-benchmarks: `LogStore::append` through openraft's
//! `RaftLogStorage` trait up to its flush callback (so including the fsync of
//! the group commit), and reading recent entries back through the `LogReader`.
//!
//! Run: `cargo bench -p geobuk-store --bench raft_log`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openraft::EntryPayload;
use openraft::alias::CommittedLeaderIdOf;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use store::engine::Engine;
use store::metrics::Metrics;
use store::raft::log_store::LogStore;
use store::raft::types::{CommandBytes, Entry, LogId, TypeConfig};
use tokio::runtime::Runtime;

/// Payload bytes of every entry.
const PAYLOAD_BYTES: usize = 256;
/// Entries in the log before the read benchmarks.
const PRELOADED: u64 = 10_000;

fn entry(index: u64) -> Entry {
    let log_id = LogId { leader_id: CommittedLeaderIdOf::<TypeConfig> { term: 1, node_id: 1 }, index };
    let mut payload = vec![b'p'; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&index.to_be_bytes());
    Entry { log_id, payload: EntryPayload::Normal(CommandBytes(Bytes::from(payload))) }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn open_store() -> (tempfile::TempDir, LogStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("open engine");
    let store = LogStore::open(engine, Arc::new(Metrics::new())).expect("open log store");
    (dir, store)
}

/// Issues `calls` back-to-back `append` calls of `per_call` entries each (the next
/// indexes from `next`), then waits for every flush callback: the entries are durable.
async fn append_durably(store: &mut LogStore, next: &mut u64, calls: u64, per_call: u64) {
    let mut pending = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let (tx, rx) = TypeConfig::oneshot();
        let entries: Vec<Entry> = (*next..*next + per_call).map(entry).collect();
        *next += per_call;
        store.append(entries, IOFlushed::signal(tx)).await.expect("append");
        pending.push(rx);
    }
    for done in pending {
        done.await.expect("callback completed").expect("flushed");
    }
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("raft_log_append");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    // (name, append calls per iteration, entries per call). `batch_durable`: one call,
    // awaited before the next, so one fsync each. `pipelined_durable`: 64 one-entry calls
    // issued back to back, then awaited, as openraft pipelines appends: the fsync
    // thread's group commit shares fsyncs among them.
    for (name, calls, per_call) in
        [("batch_durable", 1u64, 1u64), ("batch_durable", 1, 64), ("pipelined_durable", 64, 1)]
    {
        let (_dir, mut store) = open_store();
        let mut next = 1;
        rt.block_on(async {
            append_durably(&mut store, &mut next, calls, per_call).await;
            let back = store.get_log_reader().await.try_get_log_entries(..).await.expect("read");
            assert_eq!(back, (1..next).map(entry).collect::<Vec<_>>());
        });
        let entries = calls * per_call;
        g.throughput(Throughput::Elements(entries));
        g.bench_function(BenchmarkId::new(name, entries), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        append_durably(&mut store, &mut next, calls, per_call).await;
                    }
                    start.elapsed()
                })
            })
        });
        let state = rt.block_on(store.get_log_state()).expect("log state");
        assert_eq!(state.last_log_id.map(|id| id.index), Some(next - 1));
    }
    g.finish();
}

fn reads(c: &mut Criterion) {
    let rt = runtime();
    let (_dir, mut store) = open_store();
    let mut next = 1;
    let mut reader = rt.block_on(async {
        while next <= PRELOADED {
            append_durably(&mut store, &mut next, 1, 500).await;
        }
        store.get_log_reader().await
    });
    let last = next - 1;

    let mut g = c.benchmark_group("raft_log_read");
    g.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    for n in [64u64, 1024] {
        // The newest `n` entries, as replication to a slightly lagging follower reads them.
        let range = last - n + 1..=last;
        let got = rt.block_on(reader.try_get_log_entries(range.clone())).expect("read");
        assert_eq!(got.len() as u64, n);
        assert_eq!(got.last(), Some(&entry(last)));
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("try_get_log_entries", n), &range, |b, range| {
            b.iter(|| rt.block_on(reader.try_get_log_entries(range.clone())).expect("read"))
        });
    }
    g.finish();
}

criterion_group!(benches, appends, reads);
criterion_main!(benches);
