//! MVCC micro-benchmarks: the on-disk key/record codec and the read path
//! (`ReadView::range` and `ReadView::get_latest`) over a temp-dir RocksDB.
//!
//! Run: `cargo bench -p geobuk-store --bench mvcc`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use store::engine::{Engine, cf};
use store::mvcc::codec::{decode_history_key, escape_key, history_key, revs_key};
use store::mvcc::{RangeQuery, ReadView, Record, WriteTxn, range};

/// Keys in the range benchmarks.
const KEYS: usize = 10_000;
/// Value size of every key.
const VALUE_BYTES: usize = 256;
/// Puts per write txn (one revision each) while loading.
const PUTS_PER_TXN: usize = 500;
/// The prefix every loaded key shares (a Kubernetes-style registry path).
const PREFIX: &[u8] = b"/registry/pods/default/";

fn key(i: usize) -> Vec<u8> {
    format!("/registry/pods/default/pod-{i:06}").into_bytes()
}

fn value(i: usize) -> Bytes {
    let mut v = vec![b'v'; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Bytes::from(v)
}

fn record() -> Record {
    Record { tombstone: false, create_revision: 1_000, mod_revision: 123_456, version: 7, lease: 0, value: value(42) }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_codec");
    g.sample_size(50).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let k = key(1234);
    let rev = 123_456;

    let hk = history_key(&k, rev);
    assert_eq!(decode_history_key(&hk).expect("decodes"), (k.clone(), rev));
    g.bench_function("history_key", |b| b.iter(|| history_key(black_box(&k), black_box(rev))));
    g.bench_function("decode_history_key", |b| b.iter(|| decode_history_key(black_box(&hk))));

    let mut out = Vec::with_capacity(k.len() + 16);
    g.bench_function("escape_key", |b| {
        b.iter(|| {
            out.clear();
            escape_key(black_box(&k), &mut out);
            out.len()
        })
    });
    g.bench_function("revs_key", |b| b.iter(|| revs_key(black_box(rev), black_box(3))));

    let r = record();
    let encoded = r.encode();
    assert_eq!(Record::decode(&encoded).expect("decodes"), r);
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("record_encode_256B", |b| b.iter(|| black_box(&r).encode()));
    g.bench_function("record_decode_256B", |b| b.iter(|| Record::decode(black_box(&encoded))));
    g.finish();
}

/// An engine in a temp dir holding `KEYS` keys under `PREFIX` written as apply
/// writes them (kv_changes and the key index), plus one later put outside
/// the prefix, so that revision `current - 1` is a historical read of all keys.
/// With `flush`, every column family is flushed to SST files first.
fn loaded_engine(flush: bool) -> (tempfile::TempDir, Engine, i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("open engine");
    let mut current = store::mvcc::INITIAL_REVISION;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(PUTS_PER_TXN) {
        let mut txn = WriteTxn::new(&engine, current, 0);
        for &i in chunk {
            txn.put(Bytes::from(key(i)), Some(value(i)), Some(0)).expect("put");
        }
        let (batch, rev, events) = txn.finish();
        store::mvcc::index_changes(&engine, &events);
        engine.db().write(batch).expect("write");
        current = rev;
    }
    let mut txn = WriteTxn::new(&engine, current, 0);
    txn.put(Bytes::from_static(b"/registry/zzz"), Some(value(0)), Some(0)).expect("put");
    let (batch, rev, events) = txn.finish();
    store::mvcc::index_changes(&engine, &events);
    engine.db().write(batch).expect("write");
    current = rev;
    if flush {
        for name in cf::ALL {
            engine.db().flush_cf(engine.cf(name)).expect("flush");
        }
    }
    (dir, engine, current)
}

fn prefix_query(revision: i64, limit: i64) -> RangeQuery {
    RangeQuery {
        key: Bytes::from_static(PREFIX),
        range_end: Bytes::from(range::prefix_end(PREFIX)),
        revision,
        limit,
        ..Default::default()
    }
}

fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc_read");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (label, flush) in [("memtable", false), ("sst", true)] {
        let (_dir, engine, current) = loaded_engine(flush);
        let view = ReadView::snapshot(&engine).expect("snapshot");
        assert_eq!(view.current, current);

        // The whole prefix at the current revision: the key index, then batched multi_gets.
        let q = prefix_query(0, 0);
        let res = view.range(&q).expect("range");
        assert_eq!((res.kvs.len(), res.count), (KEYS, KEYS as i64));
        assert_eq!(res.kvs[7].value, value(7));
        g.throughput(Throughput::Elements(KEYS as u64));
        g.bench_with_input(BenchmarkId::new("range_latest_10k", label), &q, |b, q| b.iter(|| view.range(q)));

        // The same keys one revision back: the same path at another revision.
        let q = prefix_query(current - 1, 0);
        let res = view.range(&q).expect("range");
        assert_eq!(res.kvs.len(), KEYS);
        g.bench_with_input(BenchmarkId::new("range_history_10k", label), &q, |b, q| b.iter(|| view.range(q)));

        // A paginated list (Kubernetes' default page is 500): fetches limit + 1 records and
        // counts the rest of the range in the key index alone; the throughput is in keys
        // counted, comparable with range_latest_10k.
        let q = prefix_query(0, 500);
        let res = view.range(&q).expect("range");
        assert_eq!((res.kvs.len(), res.more, res.count), (500, true, KEYS as i64));
        g.throughput(Throughput::Elements(KEYS as u64));
        g.bench_with_input(BenchmarkId::new("range_latest_limit500", label), &q, |b, q| b.iter(|| view.range(q)));

        // One key, as a Get: on a taken view, and with the snapshot a request takes.
        let k = key(KEYS / 2);
        let got = view.get_latest(&k).expect("get").expect("present");
        assert_eq!(got.value, value(KEYS / 2));
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("get_latest", label), &k, |b, k| b.iter(|| view.get_latest(k)));
        g.bench_with_input(BenchmarkId::new("snapshot_get_latest", label), &k, |b, k| {
            b.iter(|| ReadView::snapshot(&engine).expect("snapshot").get_latest(k))
        });
    }
    g.finish();
}

criterion_group!(benches, codec, reads);
criterion_main!(benches);
