//! HashKV: a CRC-32 over the logical MVCC state at a revision, the same on
//! every member that applied the same log whatever its physical compaction
//! progress, so members can be compared for divergence.

use super::codec;
use super::key_index::Revision;
use super::read::ReadView;
use crate::engine::cf;
use crate::error::StoreError;

impl ReadView<'_> {
    /// The hash of every record a read at or after the compaction revision can see with mod
    /// revision ≤ `rev`, in revision order: each record's `kv_changes` key and value. Records
    /// at or below the compaction count only if the compaction keeps them (etcd's `keep`), so
    /// records a member has not physically removed yet do not change its hash.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, StoreError> {
        let kept = {
            let index = self.engine().index();
            if index.compacted() > self.compacted {
                return Err(StoreError::Compacted);
            }
            index.keep(self.compacted)
        };
        let mut hasher = crc32fast::Hasher::new();
        let mut it = self.raw_iter(cf::KV_CHANGES);
        it.seek_to_first();
        let upper = codec::revs_key(rev.saturating_add(1), 0);
        while let (Some(raw_key), Some(raw)) = (it.key(), it.value()) {
            if raw_key >= &upper[..] {
                break;
            }
            let (revision, sub) = codec::decode_revs_key(raw_key)?;
            if revision > self.compacted || kept.contains(&Revision::new(revision, sub)) {
                hasher.update(raw_key);
                hasher.update(raw);
            }
            it.next();
        }
        it.status().map_err(crate::engine::EngineError::from)?;
        Ok(hasher.finalize())
    }
}

/// HashKV of the store at `rev` (current when ≤ 0).
pub fn hash_kv(view: &ReadView<'_>, rev: i64) -> Result<u32, StoreError> {
    view.hash_kv(if rev <= 0 { view.current } else { rev })
}
