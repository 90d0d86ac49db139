//! Reads: a consistent view of one revision. The key index says which
//! revision of each key a read at a revision sees; its records are then
//! fetched from `kv_changes` by revision, in batches.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use rocksdb::{ReadOptions, Snapshot};

use super::codec;
use super::key_index::Found;
use super::{KeyValue, META_COMPACT_REVISION, META_REVISION, decode_i64, range};
use crate::engine::{Engine, EngineError, cf};
use crate::error::StoreError;
use crate::proto::etcdserverpb as pb;

/// etcd's sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Key order (as stored).
    #[default]
    None,
    /// Ascending by the target.
    Ascend,
    /// Descending by the target.
    Descend,
}

/// etcd's sort target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    /// By key.
    #[default]
    Key,
    /// By version.
    Version,
    /// By create revision.
    Create,
    /// By mod revision.
    Mod,
    /// By value bytes.
    Value,
}

/// A Range request in domain terms.
#[derive(Debug, Clone, Default)]
pub struct RangeQuery {
    /// Start key.
    pub key: Bytes,
    /// End key (etcd conventions, see [`range::contains`]).
    pub range_end: Bytes,
    /// Revision to read at, ≤ 0 for the current one.
    pub revision: i64,
    /// Maximum keys returned, 0 for no limit.
    pub limit: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Omit values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Filters on mod/create revision, 0 for none.
    pub min_mod_revision: i64,
    /// See `min_mod_revision`.
    pub max_mod_revision: i64,
    /// See `min_mod_revision`.
    pub min_create_revision: i64,
    /// See `min_mod_revision`.
    pub max_create_revision: i64,
}

impl From<&pb::RangeRequest> for RangeQuery {
    fn from(r: &pb::RangeRequest) -> Self {
        use pb::range_request::{SortOrder as O, SortTarget as T};
        RangeQuery {
            key: r.key.clone(),
            range_end: r.range_end.clone(),
            revision: r.revision,
            limit: r.limit,
            sort_order: match O::try_from(r.sort_order).unwrap_or(O::None) {
                O::None => SortOrder::None,
                O::Ascend => SortOrder::Ascend,
                O::Descend => SortOrder::Descend,
            },
            sort_target: match T::try_from(r.sort_target).unwrap_or(T::Key) {
                T::Key => SortTarget::Key,
                T::Version => SortTarget::Version,
                T::Create => SortTarget::Create,
                T::Mod => SortTarget::Mod,
                T::Value => SortTarget::Value,
            },
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        }
    }
}

impl RangeQuery {
    fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    fn keeps(&self, kv: &KeyValue) -> bool {
        (self.min_mod_revision == 0 || kv.mod_revision >= self.min_mod_revision)
            && (self.max_mod_revision == 0 || kv.mod_revision <= self.max_mod_revision)
            && (self.min_create_revision == 0 || kv.create_revision >= self.min_create_revision)
            && (self.max_create_revision == 0 || kv.create_revision <= self.max_create_revision)
    }

    /// etcd sorts only when asked for something other than ascending keys.
    fn effective_order(&self) -> SortOrder {
        match (self.sort_target, self.sort_order) {
            (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
            (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
            (_, o) => o,
        }
    }
}

/// What a range found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// Matching keys after filters, sort and limit.
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the revision, before filters and limit.
    pub count: i64,
    /// The limit cut the result.
    pub more: bool,
}

/// Records fetched from RocksDB in one `multi_get`.
const FETCH_BATCH_RECORDS: usize = 256;

/// The keys a read sees with what the index knows of them, and how many keys there are in all.
type Located = (Vec<(Bytes, Found)>, i64);

/// The index was compacted past the revision asked for.
struct BelowCompaction;

/// A consistent read view at one revision.
pub struct ReadView<'a> {
    engine: &'a Engine,
    snapshot: Option<Snapshot<'a>>,
    /// The view's current revision.
    pub current: i64,
    /// The compaction revision: reads below it fail.
    pub compacted: i64,
}

impl<'a> ReadView<'a> {
    /// A snapshot of the store as of now.
    pub fn snapshot(engine: &'a Engine) -> Result<Self, EngineError> {
        let snapshot = engine.db().snapshot();
        let meta = engine.cf(cf::SM_META);
        let get = |k: &[u8]| -> Result<i64, EngineError> {
            match snapshot.get_cf(meta, k)? {
                Some(v) => decode_i64(&v),
                None => Ok(0),
            }
        };
        let current = get(META_REVISION)?.max(super::INITIAL_REVISION);
        let compacted = get(META_COMPACT_REVISION)?;
        Ok(ReadView { engine, snapshot: Some(snapshot), current, compacted })
    }

    /// A view on the live database, for the single writer (apply), which
    /// knows nothing changes underneath it.
    pub(crate) fn live(engine: &'a Engine, current: i64, compacted: i64) -> Self {
        ReadView { engine, snapshot: None, current, compacted }
    }

    /// The engine the view reads.
    pub(crate) fn engine(&self) -> &'a Engine {
        self.engine
    }

    fn read_opts(&self) -> ReadOptions {
        let mut o = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            o.set_snapshot(s);
        }
        o
    }

    /// A raw iterator over `cf_name` in this view.
    pub(crate) fn raw_iter(&self, cf_name: &str) -> rocksdb::DBRawIterator<'_> {
        self.engine.db().raw_iterator_cf_opt(self.engine.cf(cf_name), self.read_opts())
    }

    /// Resolves a requested revision (≤ 0: current) or fails as etcd does.
    pub fn resolve_revision(&self, rev: i64) -> Result<i64, StoreError> {
        if rev <= 0 {
            return Ok(self.current);
        }
        if rev > self.current {
            return Err(StoreError::FutureRev);
        }
        if rev < self.compacted {
            return Err(StoreError::Compacted);
        }
        Ok(rev)
    }

    /// The live version of `key` at the view's revision.
    pub fn get_latest(&self, key: &[u8]) -> Result<Option<KeyValue>, EngineError> {
        let Ok((located, _)) = self.locate(key, &[], self.current, 1) else {
            let detail = format!("compacted past the current revision {}", self.current);
            return Err(EngineError::Corrupt { what: "key index", detail });
        };
        Ok(self.fetch(&located)?.pop())
    }

    /// The live version of `key` at revision `rev` (None when it did not exist or was deleted).
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StoreError> {
        let (located, _) = self.locate(key, &[], rev, 1).map_err(|BelowCompaction| StoreError::Compacted)?;
        Ok(self.fetch(&located)?.pop())
    }

    /// The live version of `key` just before revision `rev`, or None when it did not exist,
    /// was deleted, or that revision is compacted (etcd then sends a watch event without
    /// `prev_kv`).
    pub fn live_before(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, EngineError> {
        match self.locate(key, &[], rev - 1, 1) {
            Ok((located, _)) => Ok(self.fetch(&located)?.pop()),
            Err(BelowCompaction) => Ok(None),
        }
    }

    /// The first `want` keys of `[key, end)` live at `rev`, with what the index knows of them,
    /// and how many there are in all. The index is read under one lock hold after the
    /// view's snapshot was taken, so every record it names is in the snapshot unless the
    /// compaction passed `rev`.
    fn locate(&self, key: &[u8], end: &[u8], rev: i64, want: usize) -> Result<Located, BelowCompaction> {
        let index = self.engine.index();
        if rev < index.compacted() {
            return Err(BelowCompaction);
        }
        if end.is_empty() {
            let found = index.get(key, rev).map(|f| (Bytes::copy_from_slice(key), f));
            let count = i64::from(found.is_some());
            return Ok((found.into_iter().take(want).collect(), count));
        }
        let upper = if end == [0] { Bound::Unbounded } else { Bound::Excluded(end) };
        let mut located = Vec::new();
        let mut count = 0i64;
        for (k, found) in index.range(Bound::Included(key), upper, rev) {
            if located.len() < want {
                located.push((k.clone(), found));
            }
            count += 1;
        }
        Ok((located, count))
    }

    /// Reads the records the index named, in its order.
    fn fetch(&self, located: &[(Bytes, Found)]) -> Result<Vec<KeyValue>, EngineError> {
        let changes = self.engine.cf(cf::KV_CHANGES);
        let opts = self.read_opts();
        let mut kvs = Vec::with_capacity(located.len());
        for chunk in located.chunks(FETCH_BATCH_RECORDS) {
            let keys: Vec<[u8; 12]> =
                chunk.iter().map(|(_, f)| codec::revs_key(f.modified.main, f.modified.sub)).collect();
            let raws = self.engine.db().batched_multi_get_cf_opt(changes, &keys, false, &opts);
            for ((key, found), raw) in chunk.iter().zip(raws) {
                let missing = || EngineError::Corrupt {
                    what: "key index",
                    detail: format!("no live record of {key:?} at revision {:?}", found.modified),
                };
                let raw = raw?.ok_or_else(missing)?;
                let change = codec::ChangeView::parse(&raw)?;
                if change.key != &key[..] || change.tombstone {
                    return Err(missing());
                }
                kvs.push(KeyValue::from_record(key.clone(), change.to_record(found.modified.main)));
            }
        }
        Ok(kvs)
    }

    /// An etcd Range: revision checks, filters, sort, limit and count.
    pub fn range(&self, q: &RangeQuery) -> Result<RangeResult, StoreError> {
        self.range_with_overlay(q, &BTreeMap::new())
    }

    /// A Range that also sees a txn's uncommitted changes (`None`: deleted).
    pub(crate) fn range_with_overlay(
        &self,
        q: &RangeQuery,
        overlay: &BTreeMap<Bytes, Option<KeyValue>>,
    ) -> Result<RangeResult, StoreError> {
        let rev = self.resolve_revision(q.revision)?;
        let touched = rev == self.current && overlay.keys().any(|k| range::contains(&q.key, &q.range_end, k));
        let collect_all = touched || q.has_filters() || q.effective_order() != SortOrder::None;
        let want = if q.count_only && !touched {
            0
        } else if q.limit > 0 && !collect_all {
            q.limit as usize + 1
        } else {
            usize::MAX
        };
        let (located, mut count) =
            self.locate(&q.key, &q.range_end, rev, want).map_err(|BelowCompaction| StoreError::Compacted)?;
        let mut kvs = self.fetch(&located)?;
        if touched {
            let mut merged: BTreeMap<Bytes, KeyValue> = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            for (k, v) in overlay.iter().filter(|(k, _)| range::contains(&q.key, &q.range_end, k)) {
                match v {
                    Some(kv) => merged.insert(k.clone(), kv.clone()),
                    None => merged.remove(k),
                };
            }
            count = merged.len() as i64;
            kvs = merged.into_values().collect();
        }
        Ok(finish(kvs, count, q))
    }
}

fn finish(mut kvs: Vec<KeyValue>, count: i64, q: &RangeQuery) -> RangeResult {
    if q.count_only {
        return RangeResult { kvs: Vec::new(), count, more: false };
    }
    kvs.retain(|kv| q.keeps(kv));
    let order = q.effective_order();
    if order != SortOrder::None {
        match q.sort_target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if q.limit > 0 && kvs.len() > q.limit as usize {
        kvs.truncate(q.limit as usize);
        more = true;
    }
    if q.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    RangeResult { kvs, count, more }
}
