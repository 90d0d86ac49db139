//! The newest Raft log entries kept in memory, so replication to each follower
//! and the state machine's apply read them without a RocksDB iterator and a
//! decode per entry (etcd keeps its unstable and recent entries in memory the
//! same way). The cache mirrors a suffix of the stored log exactly: append
//! extends it, truncation and purge shrink it, and a read it cannot answer
//! whole goes to RocksDB.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::EntryPayload;

use crate::raft::types::{CommandBytes, Entry};

/// Bytes of entries (encoded size plus [`ENTRY_OVERHEAD_BYTES`] each) the cache holds at
/// most: small next to the memtables.
pub const LOG_CACHE_BYTES_MAX: usize = 16 << 20;
/// Entries the cache holds at most, whatever their size: a follower or the apply loop
/// more than this far behind reads RocksDB instead (a second or two of writes here).
pub const LOG_CACHE_ENTRIES_MAX: usize = 10_000;
/// What a cached entry costs beyond its encoded bytes (the entry, its payload's
/// allocation, the queue slot), counted against [`LOG_CACHE_BYTES_MAX`].
const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Default)]
struct Tail {
    /// Consecutive entries, each with its encoded size; the last is the log's last.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }
}

/// The entry with a payload of its own: a follower's entries are slices of the whole
/// AppendEntries message they arrived in, and a cached slice would keep that message's
/// buffer alive (seen as +200 MiB of RSS per member under a put load).
fn own_payload(entry: Entry) -> Entry {
    match entry.payload {
        EntryPayload::Normal(CommandBytes(b)) => {
            Entry { log_id: entry.log_id, payload: EntryPayload::Normal(CommandBytes(Bytes::copy_from_slice(&b))) }
        }
        _ => entry,
    }
}

/// A shared handle: the log store writes it, every log reader reads it.
#[derive(Clone, Default)]
pub struct LogCache {
    tail: Arc<Mutex<Tail>>,
}

impl LogCache {
    fn lock(&self) -> MutexGuard<'_, Tail> {
        // The tail is consistent after every statement that mutates it, so a panic
        // elsewhere while the lock was held leaves nothing half-done.
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records entries just written to the log (consecutive, with their encoded sizes).
    /// Entries not directly following the cached ones replace them: the cache only ever
    /// holds one run ending at the log's last entry.
    pub fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut tail = self.lock();
        for (entry, encoded) in entries {
            if tail.last_index().and_then(|l| l.checked_add(1)) != Some(entry.log_id.index) {
                *tail = Tail::default();
            }
            let (entry, size) = (own_payload(entry), encoded + ENTRY_OVERHEAD_BYTES);
            tail.bytes += size;
            tail.entries.push_back((entry, size));
        }
        while tail.entries.len() > 1 && (tail.bytes > LOG_CACHE_BYTES_MAX || tail.entries.len() > LOG_CACHE_ENTRIES_MAX)
        {
            tail.pop_front();
        }
    }

    /// Forgets entries after `index` (all of them for `None`): they are being truncated.
    pub fn truncated_after(&self, index: Option<u64>) {
        let mut tail = self.lock();
        while tail.last_index().is_some_and(|l| Some(l) > index) {
            tail.pop_back();
        }
    }

    /// Forgets entries up to and including `index`: they are being purged.
    pub fn purged_upto(&self, index: u64) {
        let mut tail = self.lock();
        while tail.first_index().is_some_and(|f| f <= index) {
            tail.pop_front();
        }
    }

    /// The entries in `[start, end)` if the cache holds that whole range (stopping once
    /// `bytes_max` encoded bytes are taken, always taking at least one entry); `None`
    /// when the caller must read the log itself.
    pub fn read(&self, start: u64, end: u64, bytes_max: usize) -> Option<Vec<Entry>> {
        let tail = self.lock();
        let (first, last) = (tail.first_index()?, tail.last_index()?);
        if start < first || end > last.saturating_add(1) {
            return None;
        }
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let skip = usize::try_from(start - first).ok()?;
        for (entry, size) in tail.entries.iter().skip(skip).take_while(|(e, _)| e.log_id.index < end) {
            out.push(entry.clone());
            bytes += size;
            if bytes >= bytes_max {
                break;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::codec::tests::log_id;

    fn entries(from: u64, to: u64, size: usize) -> Vec<(Entry, usize)> {
        (from..=to).map(|i| (Entry { log_id: log_id(1, 1, i), payload: EntryPayload::Blank }, size)).collect()
    }

    fn indexes(got: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        got.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let cache = LogCache::default();
        assert_eq!(indexes(cache.read(1, 2, usize::MAX)), None, "empty cache answers nothing");
        cache.appended(entries(5, 9, 10));
        assert_eq!(indexes(cache.read(5, 10, usize::MAX)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(cache.read(7, 9, usize::MAX)), Some(vec![7, 8]));
        assert_eq!(indexes(cache.read(4, 6, usize::MAX)), None, "starts before the cache");
        assert_eq!(indexes(cache.read(8, 11, usize::MAX)), None, "ends after the log");
        let two = 2 * (10 + ENTRY_OVERHEAD_BYTES);
        assert_eq!(indexes(cache.read(6, 10, two - 5)), Some(vec![6, 7]), "byte limit, passed by the last taken");
        assert_eq!(indexes(cache.read(6, 10, 1)), Some(vec![6]), "at least one entry");
    }

    #[test]
    fn follows_truncation_purge_and_gaps() {
        let cache = LogCache::default();
        cache.appended(entries(1, 10, 1));
        cache.truncated_after(Some(6));
        assert_eq!(indexes(cache.read(1, 8, usize::MAX)), None, "7 is gone");
        cache.appended(entries(7, 8, 1));
        assert_eq!(indexes(cache.read(5, 9, usize::MAX)), Some(vec![5, 6, 7, 8]));
        cache.purged_upto(4);
        assert_eq!(indexes(cache.read(4, 6, usize::MAX)), None, "4 is purged");
        cache.appended(entries(20, 21, 1));
        assert_eq!(indexes(cache.read(8, 9, usize::MAX)), None, "a gap restarts the cache");
        assert_eq!(indexes(cache.read(20, 22, usize::MAX)), Some(vec![20, 21]));
        cache.truncated_after(None);
        assert_eq!(indexes(cache.read(20, 21, usize::MAX)), None, "truncating everything empties it");
    }

    #[test]
    fn cached_payloads_do_not_pin_the_message_they_came_in() {
        let message = Bytes::from(vec![7u8; 1 << 20]);
        let payload = EntryPayload::Normal(CommandBytes(message.slice(100..400)));
        let cache = LogCache::default();
        cache.appended([(Entry { log_id: log_id(1, 1, 1), payload }, 300)]);
        let got = cache.read(1, 2, usize::MAX).expect("cached");
        let EntryPayload::Normal(CommandBytes(b)) = &got[0].payload else { panic!("normal entry") };
        assert_eq!(&b[..], &message[100..400]);
        let inside = message.as_ptr_range().contains(&b.as_ptr());
        assert!(!inside, "the cached payload is a slice of the 1 MiB message");
    }

    #[test]
    fn stays_within_its_limits() {
        let cache = LogCache::default();
        let big = LOG_CACHE_BYTES_MAX / 4 + 1 - ENTRY_OVERHEAD_BYTES;
        cache.appended(entries(1, 5, big));
        assert_eq!(indexes(cache.read(1, 2, usize::MAX)), None, "oldest evicted");
        assert_eq!(indexes(cache.read(3, 6, usize::MAX)), Some(vec![3, 4, 5]));
        assert!(cache.lock().bytes <= LOG_CACHE_BYTES_MAX);
        cache.appended(entries(6, 6 + LOG_CACHE_ENTRIES_MAX as u64, 0));
        assert_eq!(cache.lock().entries.len(), LOG_CACHE_ENTRIES_MAX);
    }
}
