//! Compaction. Apply makes it logical at once (reads below the revision fail,
//! the key index forgets what they would see); the [`Compactor`] then removes
//! superseded records in bounded batches off the apply path. Physical removal never changes what a read at or above the
//! compaction revision returns, so it may lag without breaking determinism.

use rocksdb::{ReadOptions, WriteBatch};

use super::codec;
use super::key_index::Revision;
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

    /// Removes every record at or below `target` that a read at `target` or later cannot see:
    /// superseded versions and tombstones. Which one of a key stays is the key index's answer
    /// at the index's compaction revision (≥ `target`): a record is kept only when it is the
    /// version a read there sees. Safe to rerun after a crash.
    pub fn run(&self, target: i64) -> Result<(), EngineError> {
        if self.finished()? >= target {
            return Ok(());
        }
        let changes_cf = self.engine.cf(cf::KV_CHANGES);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(codec::revs_key(target + 1, 0).to_vec());
        let mut it = self.engine.db().raw_iterator_cf_opt(changes_cf, opts);
        it.seek_to_first();
        let mut batch = WriteBatch::default();
        while let (Some(raw_key), Some(raw)) = (it.key(), it.value()) {
            let (revision, sub) = codec::decode_revs_key(raw_key)?;
            let key = codec::ChangeView::parse(raw)?.key;
            let seen = {
                let index = self.engine.index();
                index.get(key, index.compacted().max(target)).map(|found| found.modified)
            };
            if seen != Some(Revision::new(revision, sub)) {
                batch.delete_cf(changes_cf, raw_key);
            }
            if batch.len() >= COMPACTION_BATCH_REVISIONS {
                self.engine.write_unlogged(std::mem::take(&mut batch))?;
            }
            it.next();
        }
        it.status()?;
        batch.put_cf(self.engine.cf(cf::SM_META), META_FINISHED_COMPACT_REVISION, target.to_be_bytes());
        self.engine.write_unlogged(batch)?;
        Ok(())
    }
}
