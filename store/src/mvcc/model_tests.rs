//! Property tests: the MVCC engine against a plain in-memory model of etcd's
//! data model, over random put/delete/txn/compact sequences, reading at
//! random revisions (before and after physical compaction).

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::{Compactor, KeyValue, LatestCache, RangeQuery, ReadView, WriteTxn, check_compact, load_revisions};
use crate::engine::{Engine, cf};
use crate::error::StoreError;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, u8),
    Txn(Vec<(u8, Option<u8>)>),
    Compact(u8),
    PhysicalCompact,
}

fn key(k: u8) -> Bytes {
    Bytes::from(format!("k{k}"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..6, 0u8..4).prop_map(|(k, w)| Op::Delete(k, w)),
        2 => prop::collection::vec((0u8..6, prop::option::of(any::<u8>())), 1..4).prop_map(Op::Txn),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => Just(Op::PhysicalCompact),
    ]
}

/// The model: the full key space after every revision.
struct Model {
    states: Vec<BTreeMap<Bytes, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.states.len() as i64
    }

    fn apply(&mut self, changes: &[(Bytes, Option<Bytes>)]) {
        let rev = self.current() + 1;
        let mut next = self.states.last().expect("initial state").clone();
        let mut changed = false;
        for (k, v) in changes {
            match v {
                Some(v) => {
                    let kv = match next.get(k) {
                        Some(p) => {
                            KeyValue { mod_revision: rev, version: p.version + 1, value: v.clone(), ..p.clone() }
                        }
                        None => KeyValue {
                            key: k.clone(),
                            create_revision: rev,
                            mod_revision: rev,
                            version: 1,
                            value: v.clone(),
                            lease: 0,
                        },
                    };
                    next.insert(k.clone(), kv);
                    changed = true;
                }
                None => changed |= next.remove(k).is_some(),
            }
        }
        if changed {
            self.states.push(next);
        }
    }
}

/// Writes `changes` as one txn, reading previous versions through `cache` first, as apply does
/// (and keeping it as apply does): a cache that disagreed with the store would show up as a
/// wrong version or create revision in the reads. The key index learns of the changes before
/// the batch is written, as in apply.
fn write(engine: &Engine, cache: &mut LatestCache, changes: &[(Bytes, Option<Bytes>)]) {
    let (current, compacted) = load_revisions(engine).unwrap();
    let mut txn = WriteTxn::new(engine, current, compacted).with_cache(cache);
    for (k, v) in changes {
        match v {
            Some(v) => {
                txn.put(k.clone(), Some(v.clone()), Some(0)).unwrap();
            }
            None => {
                txn.delete_range(k, &[]).unwrap();
            }
        }
    }
    let (batch, _, events) = txn.finish();
    super::index_changes(engine, &events);
    engine.db().write(batch).unwrap();
    cache.apply_events(&events);
}

fn compact(engine: &Engine, model: &mut Model, rev: i64) {
    let (current, compacted) = load_revisions(engine).unwrap();
    let expected = check_compact(model.current(), model.compacted, rev);
    assert_eq!(check_compact(current, compacted, rev), expected);
    if expected.is_ok() {
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(engine.cf(cf::SM_META), super::META_COMPACT_REVISION, rev.to_be_bytes());
        engine.index_mut().compact(rev);
        engine.db().write(b).unwrap();
        model.compacted = rev;
    }
}

fn check_reads(engine: &Engine, model: &Model, revs: &[u8]) {
    let view = ReadView::snapshot(engine).unwrap();
    assert_eq!(view.current, model.current());
    let all = RangeQuery { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() };
    for r in revs.iter().map(|r| i64::from(*r) % (model.current() + 2)).chain([0, model.current()]) {
        let got = view.range(&RangeQuery { revision: r, ..all.clone() });
        if r > model.current() {
            assert_eq!(got, Err(StoreError::FutureRev));
            continue;
        }
        if r > 0 && r < model.compacted {
            assert_eq!(got, Err(StoreError::Compacted));
            continue;
        }
        let at = if r <= 0 { model.current() } else { r };
        let want: Vec<KeyValue> = model.states[(at - 1) as usize].values().cloned().collect();
        let got = got.unwrap();
        assert_eq!(got.kvs, want, "range at {at}");
        assert_eq!(got.count, want.len() as i64);
        for kv in &want {
            assert_eq!(view.get_at(&kv.key, at).unwrap().map(|kv| kv.value), Some(kv.value.clone()));
        }
        let limited = view.range(&RangeQuery { revision: r, limit: 2, ..all.clone() }).unwrap();
        assert_eq!(limited.kvs, want.iter().take(2).cloned().collect::<Vec<_>>());
        assert_eq!(limited.more, want.len() > 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..40), revs in prop::collection::vec(any::<u8>(), 3)) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut model = Model { states: vec![BTreeMap::new()], compacted: 0 };
        // Room for about three of the six keys: entries are evicted and looked up in RocksDB.
        let mut cache = LatestCache::with_limit(400);
        let mut hash_before = None;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let c = [(key(k), Some(Bytes::from(vec![v])))];
                    write(&engine, &mut cache, &c);
                    model.apply(&c);
                }
                Op::Delete(k, w) => {
                    let c: Vec<_> = (k..k.saturating_add(w).min(6)).map(|k| (key(k), None)).collect();
                    write(&engine, &mut cache, &c);
                    model.apply(&c);
                }
                Op::Txn(ch) => {
                    let mut seen = std::collections::HashSet::new();
                    let c: Vec<_> = ch.into_iter().filter(|(k, _)| seen.insert(*k))
                        .map(|(k, v)| (key(k), v.map(|v| Bytes::from(vec![v])))).collect();
                    write(&engine, &mut cache, &c);
                    model.apply(&c);
                }
                Op::Compact(r) => {
                    let rev = i64::from(r) % (model.current() + 2);
                    compact(&engine, &mut model, rev);
                }
                Op::PhysicalCompact => {
                    let view = ReadView::snapshot(&engine).unwrap();
                    hash_before = Some((view.hash_kv(view.current).unwrap(), view.current));
                    drop(view);
                    Compactor::new(engine.clone()).run(model.compacted.max(1)).unwrap();
                    let view = ReadView::snapshot(&engine).unwrap();
                    prop_assert_eq!(Some((view.hash_kv(view.current).unwrap(), view.current)), hash_before);
                }
            }
            check_reads(&engine, &model, &revs);
        }
        let _ = hash_before;
        let view = ReadView::snapshot(&engine).unwrap();
        let hash = view.hash_kv(view.current).unwrap();
        drop(view);
        // A restart rebuilds the index from the records (compacted or not yet physically).
        super::load_index(&engine).unwrap();
        check_reads(&engine, &model, &revs);
        let view = ReadView::snapshot(&engine).unwrap();
        prop_assert_eq!(view.hash_kv(view.current).unwrap(), hash, "a rebuilt index hashes the same");
    }
}
