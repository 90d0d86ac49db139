//! The key index against a model that scans a plain list of changes, through
//! puts, deletes, compactions and a rebuild from the records that survive.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::mvcc::codec::Record;

#[derive(Debug, Clone)]
struct Change {
    key: u8,
    rev: Revision,
    tombstone: bool,
    lease: i64,
    created: i64,
    version: i64,
}

/// The index's contract stated as scans over every change ever made.
#[derive(Default)]
struct Model {
    changes: Vec<Change>,
}

impl Model {
    fn newest(&self, key: u8, at: i64) -> Option<&Change> {
        self.changes.iter().rev().find(|c| c.key == key && c.rev.main <= at)
    }

    fn get(&self, key: u8, at: i64) -> Option<Found> {
        let c = self.newest(key, at).filter(|c| !c.tombstone)?;
        Some(Found { modified: c.rev, created: c.created, version: c.version })
    }

    fn live(&self, key: u8) -> Option<Live> {
        let c = self.newest(key, i64::MAX).filter(|c| !c.tombstone)?;
        Some(Live { found: Found { modified: c.rev, created: c.created, version: c.version }, lease: c.lease })
    }

    fn put(&mut self, key: u8, rev: Revision, lease: i64) -> PutOutcome {
        let replaced = self.live(key);
        let (created, version) = match replaced {
            Some(l) => (l.found.created, l.found.version + 1),
            None => (rev.main, 1),
        };
        self.changes.push(Change { key, rev, tombstone: false, lease, created, version });
        PutOutcome { create_revision: created, version, replaced }
    }

    fn delete(&mut self, key: u8, rev: Revision) -> Option<Live> {
        let live = self.live(key)?;
        self.changes.push(Change { key, rev, tombstone: true, lease: 0, created: 0, version: 0 });
        Some(live)
    }

    fn keep(&self, at: i64) -> HashSet<Revision> {
        KEYS.iter().filter_map(|&k| self.newest(k, at).filter(|c| !c.tombstone).map(|c| c.rev)).collect()
    }

    /// The records a compaction at `at` leaves on disk, in revision order.
    fn surviving(&self, at: i64) -> Vec<Change> {
        let kept = self.keep(at);
        self.changes.iter().filter(|c| c.rev.main > at || kept.contains(&c.rev)).cloned().collect()
    }
}

const KEYS: [u8; 5] = [b'a', b'b', b'c', b'd', b'e'];

fn key(k: u8) -> Bytes {
    Bytes::copy_from_slice(&[k])
}

fn record(c: &Change) -> Record {
    Record {
        tombstone: c.tombstone,
        create_revision: c.created,
        mod_revision: c.rev.main,
        version: c.version,
        lease: c.lease,
        value: Bytes::new(),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, i64),
    Delete(u8),
    /// Ends the current revision.
    Next,
    /// Compacts `back` revisions behind the current one.
    Compact(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS.len(), 0i64..3).prop_map(|(k, l)| Op::Put(KEYS[k], l)),
        2 => (0..KEYS.len()).prop_map(|k| Op::Delete(KEYS[k])),
        3 => Just(Op::Next),
        1 => (0i64..4).prop_map(Op::Compact),
    ]
}

/// Every read the index answers for revisions `≥ from`, checked against the model.
fn assert_reads(index: &KeyIndex, model: &Model, from: i64, to: i64) -> Result<(), TestCaseError> {
    for at in from..=to {
        for k in KEYS {
            prop_assert_eq!(index.get(&[k], at), model.get(k, at), "get {} at {}", k as char, at);
        }
        let got: Vec<(Bytes, Found)> =
            index.range(Bound::Included(b"b"), Bound::Excluded(b"e"), at).map(|(k, f)| (k.clone(), f)).collect();
        let want: Vec<(Bytes, Found)> =
            [b'b', b'c', b'd'].iter().filter_map(|&k| Some((key(k), model.get(k, at)?))).collect();
        prop_assert_eq!(got, want, "range [b, e) at {}", at);
    }
    for k in KEYS {
        prop_assert_eq!(index.live(&[k]), model.live(k));
    }
    Ok(())
}

struct Run {
    index: KeyIndex,
    model: Model,
    main: i64,
    sub: u32,
    touched: BTreeSet<u8>,
}

impl Run {
    fn rev(&mut self, k: u8) -> Revision {
        if !self.touched.insert(k) {
            self.next();
            self.touched.insert(k);
        }
        self.sub += 1;
        Revision::new(self.main, self.sub - 1)
    }

    fn next(&mut self) {
        self.main += 1;
        self.sub = 0;
        self.touched.clear();
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Put(k, lease) => {
                let rev = self.rev(k);
                prop_assert_eq!(self.index.put(&key(k), rev, lease), self.model.put(k, rev, lease));
            }
            Op::Delete(k) => {
                let rev = self.rev(k);
                prop_assert_eq!(self.index.tombstone(&[k], rev), self.model.delete(k, rev));
            }
            Op::Next => self.next(),
            Op::Compact(back) => {
                let at = (self.main - back).max(self.index.compacted());
                prop_assert_eq!(self.index.keep(at), self.model.keep(at), "keep at {} before compacting", at);
                let kept = self.index.compact(at);
                prop_assert_eq!(&kept, &self.model.keep(at), "kept at {}", at);
                prop_assert_eq!(self.index.keep(at), kept);
                prop_assert_eq!(self.index.compacted(), at);
                assert_reads(&self.index, &self.model, at, self.main)?;
                self.next();
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_matches_a_scan_of_every_change(ops in proptest::collection::vec(op(), 1..80)) {
        let mut run = Run { index: KeyIndex::new(), model: Model::default(), main: 1, sub: 0, touched: BTreeSet::new() };
        for op in ops {
            run.step(op)?;
        }
        let (compacted, last) = (run.index.compacted(), run.main);
        assert_reads(&run.index, &run.model, compacted.max(1), last)?;

        // A member restarting rebuilds the index from the records compaction left.
        let mut rebuilt = KeyIndex::new();
        for c in run.model.surviving(compacted) {
            let record = record(&c);
            rebuilt.restore(c.rev, &ChangeView::of(&[c.key], &record));
        }
        rebuilt.compact(compacted);
        assert_reads(&rebuilt, &run.model, compacted.max(1), last)?;
        prop_assert_eq!(rebuilt.len(), run.index.len());
    }
}

#[test]
fn a_deleted_key_leaves_the_index_once_compacted_past_its_tombstone() {
    let mut index = KeyIndex::new();
    index.put(&key(b'a'), Revision::new(2, 0), 0);
    index.tombstone(b"a", Revision::new(3, 0));
    assert_eq!(index.compact(2), HashSet::from([Revision::new(2, 0)]));
    assert_eq!(index.len(), 1);
    assert!(index.compact(3).is_empty());
    assert!(index.is_empty());
}

#[test]
fn versions_survive_compaction_of_the_generation_start() {
    let mut index = KeyIndex::new();
    for main in 2..6 {
        index.put(&key(b'a'), Revision::new(main, 0), 0);
    }
    index.compact(4);
    assert_eq!(index.get(b"a", 5), Some(Found { modified: Revision::new(5, 0), created: 2, version: 4 }));
    assert_eq!(index.get(b"a", 4), Some(Found { modified: Revision::new(4, 0), created: 2, version: 3 }));
}

#[test]
fn empty_and_inverted_ranges_yield_nothing() {
    let mut index = KeyIndex::new();
    index.put(&key(b'b'), Revision::new(2, 0), 0);
    let none = |s: Bound<&[u8]>, e: Bound<&[u8]>| index.range(s, e, 2).count() == 0;
    assert!(none(Bound::Included(b"c"), Bound::Excluded(b"a")));
    assert!(none(Bound::Included(b"b"), Bound::Excluded(b"b")));
    assert!(none(Bound::Excluded(b"b"), Bound::Excluded(b"b")));
    assert_eq!(index.range(Bound::Included(b"b"), Bound::Included(b"b"), 2).count(), 1);
    assert_eq!(index.range(Bound::Unbounded, Bound::Unbounded, 1).count(), 0);
}

#[test]
fn a_new_key_is_copied_out_of_the_buffer_it_arrived_in() {
    // Apply's keys are slices of the Raft entry: kept as they are, every key would keep its
    // whole entry (the value with it) alive for as long as the key exists.
    let entry = Bytes::from(vec![b'k'; 4096]);
    let mut index = KeyIndex::new();
    index.put(&entry.slice(10..20), Revision::new(2, 0), 0);
    let (stored, _) = index.keys.iter().next().expect("the key is indexed");
    assert_eq!(&stored[..], &entry[10..20]);
    assert!(!entry.as_ptr_range().contains(&stored.as_ptr()), "the index holds a slice of the entry");
}
