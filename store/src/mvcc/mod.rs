//! etcd's data model on RocksDB: revisions, key versions and generations,
//! reads at any retained revision, and compaction.
//!
//! Apply is the only writer ([`WriteTxn`]); readers take a RocksDB snapshot
//! ([`ReadView`]) so a read sees exactly one revision, never half a txn. The
//! in-memory [`key_index::KeyIndex`] says which revision of a key a read at a
//! revision sees; the records live in `kv_changes`, keyed by revision.

pub mod codec;
mod compact;
mod hash;
pub mod key_index;
mod latest_cache;
mod read;
mod upgrade;
mod write;

pub use codec::Record;
pub use compact::{Compactor, check_compact};
pub use hash::hash_kv;
pub use latest_cache::LatestCache;
pub use read::{RangeQuery, RangeResult, ReadView, SortOrder, SortTarget};
pub use upgrade::upgrade_if_needed;
pub(crate) use write::lease_keys;
pub use write::{Overlay, WriteTxn, stage_revision};

use bytes::Bytes;

use crate::engine::{Engine, EngineError, cf};

/// `sm_meta` key of the current store revision (big-endian i64).
pub const META_REVISION: &[u8] = b"revision";
/// `sm_meta` key of the compaction revision: reads below it fail.
pub const META_COMPACT_REVISION: &[u8] = b"compact_revision";
/// `sm_meta` key of the revision up to which history has been physically removed.
pub const META_FINISHED_COMPACT_REVISION: &[u8] = b"finished_compact_revision";

/// A key's value at some revision (etcd's mvccpb.KeyValue).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Revision that created the key's current generation.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Puts since creation.
    pub version: i64,
    /// The value.
    pub value: Bytes,
    /// Attached lease, 0 for none.
    pub lease: i64,
}

impl KeyValue {
    pub(crate) fn from_record(key: Bytes, r: Record) -> Self {
        KeyValue {
            key,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            version: r.version,
            value: r.value,
            lease: r.lease,
        }
    }

    pub(crate) fn to_record(&self) -> Record {
        Record {
            tombstone: false,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            value: self.value.clone(),
        }
    }
}

/// Whether a change wrote or deleted a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete; the event's kv carries only key and mod_revision.
    Delete,
}

/// One change to one key, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: key and mod_revision only).
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Reads a big-endian i64 from `sm_meta` (0 when absent).
pub(crate) fn read_meta_i64(engine: &Engine, key: &[u8]) -> Result<i64, EngineError> {
    match engine.db().get_cf(engine.cf(cf::SM_META), key)? {
        None => Ok(0),
        Some(v) => decode_i64(&v),
    }
}

pub fn decode_i64(v: &[u8]) -> Result<i64, EngineError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| EngineError::Corrupt { what: "meta integer", detail: format!("{} bytes", v.len()) })?;
    Ok(i64::from_be_bytes(arr))
}

/// The revision an empty store reports, as etcd: the first write gets 2.
pub const INITIAL_REVISION: i64 = 1;

/// The store's current and compacted revisions, read from `sm_meta`.
pub fn load_revisions(engine: &Engine) -> Result<(i64, i64), EngineError> {
    let current = read_meta_i64(engine, META_REVISION)?.max(INITIAL_REVISION);
    let compacted = read_meta_i64(engine, META_COMPACT_REVISION)?;
    Ok((current, compacted))
}

/// Records the changes of a batch about to be written in the key index. Called before the
/// write: a reader takes its snapshot first and reads the index second, so the index may be
/// ahead of a snapshot (reads at the snapshot's revision ignore newer revisions) but never
/// behind it. `events` are in order; a change's `sub` is its place within its revision, as
/// [`WriteTxn`] numbered its record.
pub fn index_changes(engine: &Engine, events: &[Event]) {
    if !events.is_empty() {
        record_changes(&mut engine.index_mut(), events);
    }
}

/// [`index_changes`] for the txns of one apply group, under one hold of the index's write lock
/// (its release was a fifth of the index update's cost at put-1000, bench/BOUNDS.md).
pub fn index_group_changes(engine: &Engine, txns: &[Vec<Event>]) {
    if txns.iter().any(|events| !events.is_empty()) {
        let mut index = engine.index_mut();
        for events in txns {
            record_changes(&mut index, events);
        }
    }
}

fn record_changes(index: &mut key_index::KeyIndex, events: &[Event]) {
    let (mut revision, mut sub) = (0, 0u32);
    for event in events {
        if event.kv.mod_revision != revision {
            (revision, sub) = (event.kv.mod_revision, 0);
        }
        let at = key_index::Revision::new(revision, sub);
        match event.kind {
            EventKind::Put => {
                let outcome = index.put(&event.kv.key, at, event.kv.lease);
                debug_assert_eq!(outcome.version, event.kv.version, "the index and the txn agree on versions");
            }
            EventKind::Delete => {
                index.tombstone(&event.kv.key, at);
            }
        }
        sub += 1;
    }
}

/// Rebuilds the key index from `kv_changes` (at start and after a snapshot install), then
/// applies the stored compaction to it: records a crash left before the physical compaction
/// finished are dropped from it again.
pub fn load_index(engine: &Engine) -> Result<(), EngineError> {
    let mut index = key_index::KeyIndex::new();
    let mut it = engine.db().raw_iterator_cf(engine.cf(cf::KV_CHANGES));
    it.seek_to_first();
    while let (Some(raw_key), Some(raw)) = (it.key(), it.value()) {
        let (revision, sub) = codec::decode_revs_key(raw_key)?;
        index.restore(key_index::Revision::new(revision, sub), &codec::ChangeView::parse(raw)?);
        it.next();
    }
    it.status()?;
    index.compact(read_meta_i64(engine, META_COMPACT_REVISION)?);
    *engine.index_mut() = index;
    Ok(())
}

/// Key-range helpers with etcd's conventions for `range_end`.
pub mod range {
    /// Whether `key` lies in `[start, end)` where an empty `end` means the
    /// single key `start` and `end == "\0"` means every key ≥ `start`.
    pub fn contains(start: &[u8], end: &[u8], key: &[u8]) -> bool {
        if end.is_empty() {
            return key == start;
        }
        key >= start && (end == [0] || key < end)
    }

    /// The exclusive upper bound of a range for iteration, `None` when unbounded.
    pub fn upper_bound(start: &[u8], end: &[u8]) -> Option<Vec<u8>> {
        if end.is_empty() {
            let mut k = start.to_vec();
            k.push(0);
            Some(k)
        } else if end == [0] {
            None
        } else {
            Some(end.to_vec())
        }
    }

    /// The range end that selects every key with `prefix`.
    pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xFF {
                end.push(last + 1);
                return end;
            }
        }
        vec![0]
    }
}

#[cfg(test)]
mod model_tests;
