//! Watch micro-benchmarks: the synced-path fan-out of `Hub::publish`, i.e. what
//! apply pays per revision to hand one event batch to every synced watcher.
//!
//! Run: `cargo bench -p geobuk-store --bench watch`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use store::engine::Engine;
use store::mvcc::{Event, EventKind, KeyValue};
use store::watch::{Hub, StreamItem, WatchSpec};
use tokio::sync::mpsc;

/// The watched key.
const KEY: &[u8] = b"/registry/configmaps/default/cm";
/// Value size in the published event.
const VALUE_BYTES: usize = 256;

fn spec(watch_id: i64, key: &[u8]) -> WatchSpec {
    WatchSpec { watch_id, key: key.to_vec(), range_end: Vec::new(), prev_kv: true, no_put: false, no_delete: false }
}

/// One put of `KEY` at `revision`, with its previous version, as apply publishes it.
fn put_event(revision: i64) -> Vec<Event> {
    let kv = |mod_revision: i64, version: i64| KeyValue {
        key: Bytes::from_static(KEY),
        create_revision: 2,
        mod_revision,
        version,
        value: Bytes::from(vec![b'v'; VALUE_BYTES]),
        lease: 0,
    };
    vec![Event { kind: EventKind::Put, kv: kv(revision, revision - 1), prev_kv: Some(kv(revision - 1, revision - 2)) }]
}

/// A hub with `watchers` synced watchers, each on its own stream buffer, watching
/// `KEY` (or, with `matching` false, each some other key, so the event matches none).
fn hub_with_watchers(
    engine: &Engine,
    watchers: usize,
    matching: bool,
) -> (std::sync::Arc<Hub>, Vec<mpsc::Receiver<StreamItem>>) {
    let hub = Hub::new(engine.clone(), 2, 0);
    let mut receivers = Vec::with_capacity(watchers);
    for id in 0..watchers {
        let (tx, rx) = mpsc::channel(4);
        let key = if matching { KEY.to_vec() } else { format!("/registry/other/{id}").into_bytes() };
        hub.add(spec(id as i64, &key), 0, tx).expect("add watcher");
        receivers.push(rx);
    }
    (hub, receivers)
}

/// Empties every stream buffer, returning how many items were queued.
fn drain(receivers: &mut [mpsc::Receiver<StreamItem>]) -> usize {
    let mut n = 0;
    for rx in receivers {
        while rx.try_recv().is_ok() {
            n += 1;
        }
    }
    n
}

fn fanout(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("open engine");
    let mut g = c.benchmark_group("watch_publish");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (name, watchers, matching) in [("fanout", 100, true), ("fanout", 10_000, true), ("no_match", 10_000, false)] {
        let (hub, mut receivers) = hub_with_watchers(&engine, watchers, matching);
        let mut revision = 2;

        // Once: every matching watcher gets exactly one item with the event; none is demoted.
        revision += 1;
        hub.publish(revision, &put_event(revision));
        let mut delivered = 0;
        for rx in &mut receivers {
            while let Ok(item) = rx.try_recv() {
                let StreamItem::Events { events, revision: r, .. } = item else { panic!("unexpected item {item:?}") };
                assert_eq!((events.len(), r), (1, revision));
                assert!(events[0].prev_kv.is_some());
                delivered += 1;
            }
        }
        assert_eq!(delivered, if matching { watchers } else { 0 });
        assert_eq!(hub.current_revision(), revision);
        assert_eq!(hub.all_synced_revision(&(0..watchers as u64).collect::<Vec<_>>()), Some(revision));

        g.throughput(Throughput::Elements(watchers as u64));
        g.bench_function(BenchmarkId::new(name, watchers), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    revision += 1;
                    let events = put_event(revision);
                    let start = Instant::now();
                    hub.publish(revision, &events);
                    spent += start.elapsed();
                    // Untimed: the streams' side, so no buffer ever fills.
                    drain(&mut receivers);
                }
                spent
            })
        });
        assert_eq!(hub.watcher_count(), watchers);
        assert_eq!(hub.all_synced_revision(&(0..watchers as u64).collect::<Vec<_>>()), Some(revision));
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
