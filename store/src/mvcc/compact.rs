//! Compaction. Apply makes it logical at once (reads below the revision fail);
//! the [`Compactor`] then removes superseded history in bounded batches off
//! the apply path. Physical removal never changes what a read at or above the
//! compaction revision returns, so it may lag without breaking determinism.

use rocksdb::{ReadOptions, WriteBatch};

use super::codec::{self, Record};
use super::{META_FINISHED_COMPACT_REVISION, read_meta_i64};
use crate::engine::{Engine, EngineError, cf};
use crate::error::StoreError;
use crate::limits::COMPACTION_BATCH_REVISIONS;

/// etcd's rules for a Compact request.
pub fn check_compact(current: i64, compacted: i64, rev: i64) -> Result<(), StoreError> {
    if rev <= compacted {
        return Err(StoreError::Compacted);
    }
    if rev > current {
        return Err(StoreError::FutureRev);
    }
    Ok(())
}

/// Removes history superseded at a compaction revision.
pub struct Compactor {
    engine: Engine,
}

impl Compactor {
    /// A compactor on `engine`.
    pub fn new(engine: Engine) -> Self {
        Compactor { engine }
    }

    /// The revision up to which history is physically gone.
    pub fn finished(&self) -> Result<i64, EngineError> {
        read_meta_i64(&self.engine, META_FINISHED_COMPACT_REVISION)
    }

    /// Removes every version at or below `target` that a read at `target`
    /// or later cannot see: superseded versions and tombstones. The latest
    /// live version of each key at `target` stays. Safe to rerun after a crash.
    pub fn run(&self, target: i64) -> Result<(), EngineError> {
        if self.finished()? >= target {
            return Ok(());
        }
        let db = self.engine.db();
        let revs_cf = self.engine.cf(cf::KV_REVS);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(codec::revs_key(target + 1, 0).to_vec());
        let mut it = db.raw_iterator_cf_opt(revs_cf, opts);
        it.seek_to_first();
        let mut batch = WriteBatch::default();
        let mut in_batch = 0usize;
        while it.valid() {
            let (rev, _) = codec::decode_revs_key(it.key().expect("valid iterator"))?;
            let key = it.value().expect("valid iterator").to_vec();
            if self.is_garbage(&key, rev, target)? {
                batch.delete_cf(self.engine.cf(cf::KV_HISTORY), codec::history_key(&key, rev));
                batch.delete_cf(revs_cf, it.key().expect("valid iterator"));
                in_batch += 1;
            }
            if in_batch >= COMPACTION_BATCH_REVISIONS {
                self.engine.write_unlogged(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
            it.next();
        }
        it.status()?;
        batch.put_cf(self.engine.cf(cf::SM_META), META_FINISHED_COMPACT_REVISION, target.to_be_bytes());
        self.engine.write_unlogged(batch)?;
        Ok(())
    }

    /// Whether the version of `key` at `rev` (≤ target) is invisible at `target`.
    fn is_garbage(&self, key: &[u8], rev: i64, target: i64) -> Result<bool, EngineError> {
        Ok(match self.newest_at(key, target)? {
            // The version is already gone (an earlier, interrupted run).
            None => false,
            Some((newest, _)) if newest < rev => false,
            Some((newest, _)) if newest > rev => true,
            Some((_, tombstone)) => tombstone,
        })
    }

    /// The revision of `key`'s newest version at or below `target` and whether it is a
    /// tombstone. `kv_latest` is read first: apply moves a live version into history in the same
    /// batch that replaces it, so reading history second never misses it.
    fn newest_at(&self, key: &[u8], target: i64) -> Result<Option<(i64, bool)>, EngineError> {
        let db = self.engine.db();
        if let Some(raw) = db.get_cf(self.engine.cf(cf::KV_LATEST), key)? {
            let live = codec::record_mod_revision(&raw)?;
            if live <= target {
                return Ok(Some((live, false)));
            }
        }
        let mut it = db.raw_iterator_cf(self.engine.cf(cf::KV_HISTORY));
        it.seek(codec::history_key(key, target));
        let Some(raw_key) = it.key() else {
            it.status()?;
            return Ok(None);
        };
        let (found_key, newest) = codec::decode_history_key(raw_key)?;
        if found_key != key {
            return Ok(None);
        }
        Ok(Some((newest, Record::decode(it.value().expect("valid iterator"))?.tombstone)))
    }
}
