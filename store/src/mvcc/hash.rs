//! HashKV: a CRC-32 over the logical MVCC state at a revision, the same on
//! every member that applied the same log whatever its physical compaction
//! progress, so members can be compared for divergence.

use super::codec;
use super::read::ReadView;
use crate::engine::{EngineError, cf};

impl ReadView<'_> {
    /// The hash of every version visible at or after the compaction revision
    /// with mod revision ≤ `rev`.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, EngineError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut it = self.raw_iter(cf::KV_HISTORY);
        it.seek_to_first();
        let mut last_key: Option<Vec<u8>> = None;
        let mut key_done = false;
        while it.valid() {
            let raw_key = it.key().expect("valid iterator");
            let (key, n) = codec::decode_history_key(raw_key)?;
            if last_key.as_deref() != Some(key.as_slice()) {
                last_key = Some(key.clone());
                key_done = false;
            }
            if n <= rev && !key_done {
                let raw = it.value().expect("valid iterator");
                if n > self.compacted {
                    hasher.update(raw_key);
                    hasher.update(raw);
                } else {
                    // The newest version at or below the compaction revision
                    // survives compaction unless it is a tombstone.
                    if !codec::Record::decode(raw)?.tombstone {
                        hasher.update(raw_key);
                        hasher.update(raw);
                    }
                    key_done = true;
                }
            }
            it.next();
        }
        it.status()?;
        Ok(hasher.finalize())
    }
}

/// HashKV of the store at `rev` (current when ≤ 0).
pub fn hash_kv(view: &ReadView<'_>, rev: i64) -> Result<u32, EngineError> {
    view.hash_kv(if rev <= 0 { view.current } else { rev })
}
