//! HashKV: a CRC-32 over the logical MVCC state at a revision, the same on
//! every member that applied the same log whatever its physical compaction
//! progress, so members can be compared for divergence.

use super::codec;
use super::read::ReadView;
use crate::engine::{EngineError, cf};

/// Hashes one key's versions, fed newest first.
struct KeyHasher<'h> {
    hasher: &'h mut crc32fast::Hasher,
    rev: i64,
    compacted: i64,
    done: bool,
}

impl KeyHasher<'_> {
    /// Feeds the version at `n`: `history_key` is its `kv_history` key (also for a live
    /// version, so the hash does not depend on where a version is stored).
    fn feed(&mut self, history_key: &[u8], n: i64, raw: &[u8]) -> Result<(), EngineError> {
        if n > self.rev || self.done {
            return Ok(());
        }
        if n > self.compacted {
            self.hasher.update(history_key);
            self.hasher.update(raw);
            return Ok(());
        }
        // The newest version at or below the compaction revision survives compaction unless it
        // is a tombstone.
        if !codec::Record::decode(raw)?.tombstone {
            self.hasher.update(history_key);
            self.hasher.update(raw);
        }
        self.done = true;
        Ok(())
    }
}

impl ReadView<'_> {
    /// The hash of every version visible at or after the compaction revision
    /// with mod revision ≤ `rev`: per key in key order, its versions newest
    /// first. The live version comes from `kv_latest`, older ones and
    /// tombstones from `kv_history`.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, EngineError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut latest = self.raw_iter(cf::KV_LATEST);
        latest.seek_to_first();
        let mut hist = self.raw_iter(cf::KV_HISTORY);
        hist.seek_to_first();
        loop {
            let hist_key = match hist.key() {
                Some(raw) => Some(codec::decode_history_key(raw)?.0),
                None => None,
            };
            let live_key = latest.key().map(<[u8]>::to_vec);
            let user_key = match (live_key, hist_key) {
                (None, None) => break,
                (Some(l), Some(h)) => l.min(h),
                (Some(k), None) | (None, Some(k)) => k,
            };
            let mut key = KeyHasher { hasher: &mut hasher, rev, compacted: self.compacted, done: false };
            let mut live_rev = None;
            if latest.key() == Some(&user_key[..]) {
                let raw = latest.value().expect("valid iterator");
                let n = codec::record_mod_revision(raw)?;
                key.feed(&codec::history_key(&user_key, n), n, raw)?;
                live_rev = Some(n);
                latest.next();
            }
            while let Some(raw_key) = hist.key() {
                let (k, n) = codec::decode_history_key(raw_key)?;
                if k != user_key {
                    break;
                }
                // A store written before live versions left history holds a copy of the live one.
                if live_rev != Some(n) {
                    key.feed(raw_key, n, hist.value().expect("valid iterator"))?;
                }
                hist.next();
            }
        }
        latest.status()?;
        hist.status()?;
        Ok(hasher.finalize())
    }
}

/// HashKV of the store at `rev` (current when ≤ 0).
pub fn hash_kv(view: &ReadView<'_>, rev: i64) -> Result<u32, EngineError> {
    view.hash_kv(if rev <= 0 { view.current } else { rev })
}
