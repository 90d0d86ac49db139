//! Reads: a consistent view of one revision, ranges at the current revision
//! from `kv_latest` and at older revisions from `kv_history`, one seek per key.

use std::collections::BTreeMap;

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, ReadOptions, Snapshot};

use super::codec::{self, Record};
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

/// A scan callback: gets each live key with its encoded record, returns
/// whether to go on.
pub(crate) type Visit<'v> = dyn FnMut(Bytes, &[u8]) -> Result<bool, EngineError> + 'v;

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

    /// The live version of `key`.
    pub fn get_latest(&self, key: &[u8]) -> Result<Option<Record>, EngineError> {
        self.raw_latest(key)?.map(|raw| Record::decode(&raw)).transpose()
    }

    fn raw_latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.engine.db().get_cf_opt(self.engine.cf(cf::KV_LATEST), key, &self.read_opts())?)
    }

    /// The newest version of `key` at or below `rev`, tombstones included.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<Record>, EngineError> {
        self.raw_at(key, rev)?.map(|raw| Record::decode(&raw)).transpose()
    }

    fn raw_at(&self, key: &[u8], rev: i64) -> Result<Option<Box<[u8]>>, EngineError> {
        // The live version is only in kv_latest and is newer than all of the key's history.
        if let Some(raw) = self.raw_latest(key)?
            && codec::record_mod_revision(&raw)? <= rev
        {
            return Ok(Some(raw.into_boxed_slice()));
        }
        let start = codec::history_key(key, rev);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut it = self.engine.db().iterator_cf_opt(self.engine.cf(cf::KV_HISTORY), self.read_opts(), mode);
        match it.next().transpose()? {
            Some((k, v)) if codec::decode_history_key(&k)?.0 == key => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// Calls `visit` with each live key in `[key, end)` at `rev` in key order
    /// until it returns false.
    pub(crate) fn scan(&self, key: &[u8], end: &[u8], rev: i64, visit: &mut Visit<'_>) -> Result<(), EngineError> {
        if end.is_empty() {
            let raw = if rev == self.current {
                self.raw_latest(key)?.map(Vec::into_boxed_slice)
            } else {
                self.raw_at(key, rev)?
            };
            if let Some(raw) = raw.filter(|raw| !codec::is_tombstone(raw)) {
                visit(Bytes::copy_from_slice(key), &raw)?;
            }
            return Ok(());
        }
        if rev == self.current { self.scan_latest(key, end, visit) } else { self.scan_history(key, end, rev, visit) }
    }

    fn scan_latest(&self, key: &[u8], end: &[u8], visit: &mut Visit<'_>) -> Result<(), EngineError> {
        let mut opts = self.read_opts();
        if let Some(upper) = range::upper_bound(key, end) {
            opts.set_iterate_upper_bound(upper);
        }
        let mode = IteratorMode::From(key, Direction::Forward);
        for item in self.engine.db().iterator_cf_opt(self.engine.cf(cf::KV_LATEST), opts, mode) {
            let (k, v) = item?;
            if !visit(Bytes::copy_from_slice(&k), &v)? {
                break;
            }
        }
        Ok(())
    }

    /// A scan at an older revision: the union of `kv_latest` (live versions, used when they are
    /// old enough) and `kv_history` (superseded versions and tombstones), merged in key order.
    fn scan_history(&self, key: &[u8], end: &[u8], rev: i64, visit: &mut Visit<'_>) -> Result<(), EngineError> {
        let mut latest_opts = self.read_opts();
        if let Some(upper) = range::upper_bound(key, end) {
            latest_opts.set_iterate_upper_bound(upper);
        }
        let mut latest = self.engine.db().raw_iterator_cf_opt(self.engine.cf(cf::KV_LATEST), latest_opts);
        latest.seek(key);
        let mut hist = self.raw_iter(cf::KV_HISTORY);
        hist.seek(codec::history_key(key, rev));
        loop {
            let live_key = latest.key().map(<[u8]>::to_vec);
            let hist_key = history_user_key(&hist)?.filter(|k| range::contains(key, end, k));
            let user_key = match (live_key.as_deref(), hist_key.as_deref()) {
                (None, None) => break,
                (Some(l), Some(h)) => l.min(h).to_vec(),
                (Some(k), None) | (None, Some(k)) => k.to_vec(),
            };
            let live = live_key.as_deref() == Some(&user_key[..]);
            let go_on = if live && codec::record_mod_revision(latest.value().expect("valid iterator"))? <= rev {
                visit(Bytes::from(user_key.clone()), latest.value().expect("valid iterator"))?
            } else {
                hist.seek(codec::history_key(&user_key, rev));
                match history_user_key(&hist)? {
                    Some(k) if k == user_key && !codec::is_tombstone(hist.value().expect("valid iterator")) => {
                        visit(Bytes::from(user_key.clone()), hist.value().expect("valid iterator"))?
                    }
                    _ => true,
                }
            };
            if !go_on {
                return Ok(());
            }
            if live {
                latest.next();
            }
            if history_user_key(&hist)?.as_deref() == Some(&user_key[..]) {
                hist.seek(codec::history_key_after_all(&user_key));
            }
        }
        latest.status()?;
        hist.status()?;
        Ok(())
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
        let want = if q.count_only {
            0
        } else if q.limit > 0 && !collect_all {
            q.limit as usize + 1
        } else {
            usize::MAX
        };
        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut count: i64 = 0;
        self.scan(&q.key, &q.range_end, rev, &mut |k, raw| {
            count += 1;
            if kvs.len() < want || collect_all {
                kvs.push(KeyValue::from_record(k, Record::decode(raw)?));
            }
            Ok(true)
        })?;
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

/// The user key at a `kv_history` iterator's position, `None` past the end.
fn history_user_key(it: &rocksdb::DBRawIterator<'_>) -> Result<Option<Vec<u8>>, EngineError> {
    match it.key() {
        Some(raw) => Ok(Some(codec::decode_history_key(raw)?.0)),
        None => {
            it.status()?;
            Ok(None)
        }
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
