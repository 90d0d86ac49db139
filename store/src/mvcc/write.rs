//! The write side of one revision: puts and deletes of one etcd txn staged in
//! a RocksDB batch plus an overlay that later ops of the same txn read (and
//! later txns of the same batch: the key index only learns of a batch's
//! changes when it is written).

use std::collections::BTreeMap;

use bytes::Bytes;
use rocksdb::WriteBatch;

use super::codec::{self, Record};
use super::latest_cache::LatestCache;
use super::read::{RangeQuery, RangeResult, ReadView};
use super::{Event, EventKind, KeyValue, META_REVISION, range};
use crate::engine::{Engine, EngineError, cf};
use crate::error::StoreError;

/// Live keys changed by writes not yet in the database (`None`: deleted), which reads of later
/// changes must see.
pub type Overlay = BTreeMap<Bytes, Option<KeyValue>>;

/// The changes of one write txn, all at revision `current + 1`.
pub struct WriteTxn<'a> {
    engine: &'a Engine,
    view: ReadView<'a>,
    revision: i64,
    batch: WriteBatch,
    overlay: Overlay,
    events: Vec<Event>,
    /// Live versions as of the last written batch, consulted before the key index.
    cache: Option<&'a LatestCache>,
}

impl<'a> WriteTxn<'a> {
    /// Starts a txn on top of revision `current`.
    pub fn new(engine: &'a Engine, current: i64, compacted: i64) -> Self {
        Self::resume(engine, current, compacted, WriteBatch::default(), Overlay::new())
    }

    /// Starts a txn on top of revision `current` whose earlier revisions are staged in `batch`
    /// (not yet written) with their live keys in `overlay`: apply writes consecutive entries in
    /// one batch. Reads at the current revision see them; reads at older revisions must not be
    /// made (the database does not hold those revisions yet).
    pub fn resume(engine: &'a Engine, current: i64, compacted: i64, batch: WriteBatch, overlay: Overlay) -> Self {
        WriteTxn {
            engine,
            view: ReadView::live(engine, current, compacted),
            revision: current + 1,
            batch,
            overlay,
            events: Vec::new(),
            cache: None,
        }
    }

    /// Looks keys up in `cache` before the key index; it must hold the state the database has
    /// (what apply wrote up to the batch this txn builds on).
    pub fn with_cache(self, cache: &'a LatestCache) -> Self {
        WriteTxn { cache: Some(cache), ..self }
    }

    /// The revision this txn writes at (if it writes anything).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compaction revision.
    pub fn compacted(&self) -> i64 {
        self.view.compacted
    }

    /// The revision a reader sees after this txn so far.
    pub fn visible_revision(&self) -> i64 {
        if self.events.is_empty() { self.view.current } else { self.revision }
    }

    /// The live value of `key` as of this txn's changes so far.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EngineError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        if let Some(kv) = self.cache.and_then(|c| c.get(key)) {
            return Ok(Some(kv.clone()));
        }
        self.view.get_latest(key)
    }

    /// A range that sees this txn's earlier changes.
    pub fn range(&self, q: &RangeQuery) -> Result<RangeResult, StoreError> {
        self.view.range_with_overlay(q, &self.overlay)
    }

    /// Live keys in `[key, end)` as of this txn's changes so far.
    pub fn live_keys(&self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let q = RangeQuery {
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::copy_from_slice(end),
            ..Default::default()
        };
        Ok(self.range(&q)?.kvs)
    }

    /// Puts `key`. `value`/`lease` of `None` keep the previous ones (etcd's
    /// ignore_value / ignore_lease; the caller checked the key exists).
    pub fn put(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        lease: Option<i64>,
    ) -> Result<Option<KeyValue>, EngineError> {
        let prev = self.get(&key)?;
        let kv = KeyValue {
            key: key.clone(),
            create_revision: prev.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: value.unwrap_or_else(|| prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()),
            lease: lease.unwrap_or_else(|| prev.as_ref().map_or(0, |p| p.lease)),
        };
        self.write_change(&key, &kv.to_record());
        let lease_cf = self.engine.cf(cf::LEASE_KEYS);
        if let Some(p) = prev.as_ref().filter(|p| p.lease != 0 && p.lease != kv.lease) {
            self.batch.delete_cf(lease_cf, codec::lease_key(p.lease, &key));
        }
        if kv.lease != 0 {
            self.batch.put_cf(lease_cf, codec::lease_key(kv.lease, &key), []);
        }
        self.overlay.insert(key, Some(kv.clone()));
        self.events.push(Event { kind: EventKind::Put, kv, prev_kv: prev.clone() });
        Ok(prev)
    }

    /// Deletes every live key in `[key, end)`, returning what was deleted.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let doomed = self.live_keys(key, end)?;
        for prev in &doomed {
            self.delete_one(prev);
        }
        Ok(doomed)
    }

    fn delete_one(&mut self, prev: &KeyValue) {
        let tomb = Record {
            tombstone: true,
            create_revision: 0,
            mod_revision: self.revision,
            version: 0,
            lease: 0,
            value: Bytes::new(),
        };
        self.write_change(&prev.key, &tomb);
        if prev.lease != 0 {
            self.batch.delete_cf(self.engine.cf(cf::LEASE_KEYS), codec::lease_key(prev.lease, &prev.key));
        }
        self.overlay.insert(prev.key.clone(), None);
        let kv = KeyValue { key: prev.key.clone(), mod_revision: self.revision, ..Default::default() };
        self.events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(prev.clone()) });
    }

    /// Stages the `kv_changes` record of this txn's next change: an append in the column
    /// family's key order. The key index learns of it when the batch is written
    /// ([`super::index_changes`]), from the events, whose order gives the same `sub`.
    fn write_change(&mut self, key: &[u8], record: &Record) {
        let sub = u32::try_from(self.events.len()).expect("txn changes are bounded by the request size");
        let raw = codec::ChangeView::of(key, record).encode();
        self.batch.put_cf(self.engine.cf(cf::KV_CHANGES), codec::revs_key(self.revision, sub), raw);
    }

    /// Adds a raw state-machine write to the same atomic batch.
    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// Ends the txn: the batch to write atomically (with the new store revision), the store
    /// revision after it, and the events (empty when nothing changed: no new revision).
    pub fn finish(self) -> (WriteBatch, i64, Vec<Event>) {
        let engine = self.engine;
        let (mut batch, _, revision, events) = self.finish_with_overlay();
        if !events.is_empty() {
            stage_revision(engine, &mut batch, revision);
        }
        (batch, revision, events)
    }

    /// [`WriteTxn::finish`] that also hands back the overlay, for [`WriteTxn::resume`], and leaves
    /// the store revision to the caller ([`stage_revision`] once the last txn of the batch is
    /// staged): each txn writing it cost one more insert into `sm_meta`'s skiplist per put, a
    /// full search of a memtable holding every earlier version of that key.
    pub fn finish_with_overlay(self) -> (WriteBatch, Overlay, i64, Vec<Event>) {
        let revision = if self.events.is_empty() { self.view.current } else { self.revision };
        (self.batch, self.overlay, revision, self.events)
    }
}

/// Adds the store revision `revision` to `batch`, which must hold every change up to it.
pub fn stage_revision(engine: &Engine, batch: &mut WriteBatch, revision: i64) {
    batch.put_cf(engine.cf(cf::SM_META), META_REVISION, revision.to_be_bytes());
}

/// Keys attached to `lease`, in key order.
pub(crate) fn lease_keys(engine: &Engine, lease: i64) -> Result<Vec<Bytes>, EngineError> {
    let prefix = (lease as u64).to_be_bytes();
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(range::prefix_end(&prefix));
    let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
    let mut keys = Vec::new();
    for item in engine.db().iterator_cf_opt(engine.cf(cf::LEASE_KEYS), opts, mode) {
        let (k, _) = item?;
        keys.push(Bytes::copy_from_slice(&k[8..]));
    }
    Ok(keys)
}
