//! The live version of recently written keys, in memory, so that a put finds the version it
//! replaces (its value and lease, for `prev_kv`, `ignore_value` and the watch event) without a
//! RocksDB read. Once the state machine's column families have been flushed (every snapshot),
//! that read goes to SST files: on an aged store it was 8–12 % of a member's CPU under
//! overwrites. RocksDB's own row cache cannot be used: it refuses range deletes.
//!
//! Apply is the only writer, and every change it makes is an event. The state machine feeds
//! each written batch's events in here ([`LatestCache::apply_events`]), so an entry always
//! equals the key's live version as of the last written batch; a missing entry only means "ask
//! the key index and `kv_changes`". A snapshot install replaces the store and clears the cache.

use std::collections::HashMap;

use bytes::Bytes;

use super::{Event, EventKind, KeyValue};

/// Bytes of keys and values the cache holds at most (plus [`ENTRY_OVERHEAD_BYTES`] each).
/// Past it the cache starts over empty: simple, and a put-heavy working set larger than this
/// gains little from any policy.
pub const LATEST_CACHE_BYTES_MAX: usize = 64 << 20;
/// What one entry costs besides its key and value: the map slot, two `Bytes` and the numbers.
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Key → its live version, for some recently written keys.
pub struct LatestCache {
    entries: HashMap<Bytes, KeyValue>,
    bytes: usize,
    bytes_max: usize,
}

impl Default for LatestCache {
    fn default() -> Self {
        Self::with_limit(LATEST_CACHE_BYTES_MAX)
    }
}

fn cost(kv: &KeyValue) -> usize {
    kv.key.len() + kv.value.len() + ENTRY_OVERHEAD_BYTES
}

impl LatestCache {
    /// An empty cache holding at most `bytes_max` bytes.
    pub fn with_limit(bytes_max: usize) -> Self {
        LatestCache { entries: HashMap::new(), bytes: 0, bytes_max }
    }

    /// The live version of `key` if cached (`None`: unknown here, not "absent").
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.entries.get(key)
    }

    /// Records the changes of a batch that has been written, in order.
    pub fn apply_events(&mut self, events: &[Event]) {
        for event in events {
            match event.kind {
                EventKind::Put => self.insert(&event.kv),
                EventKind::Delete => self.remove(&event.kv.key),
            }
        }
    }

    /// Forgets everything (the store was replaced).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, kv: &KeyValue) {
        if let Some(live) = self.entries.get_mut(&kv.key[..]) {
            let (old, new) = (cost(live), cost(kv));
            if self.bytes - old + new <= self.bytes_max {
                // In place: one probe, and the cached key is kept rather than copied again.
                self.bytes = self.bytes - old + new;
                // Every field named: one added to KeyValue must be decided on here.
                let KeyValue { key: _, create_revision, mod_revision, version, value, lease } = kv;
                let key = std::mem::take(&mut live.key);
                *live = KeyValue {
                    key,
                    create_revision: *create_revision,
                    mod_revision: *mod_revision,
                    version: *version,
                    value: Bytes::copy_from_slice(value),
                    lease: *lease,
                };
                return;
            }
            self.remove(&kv.key);
        }
        // Copied: an event's key and value are slices of the Raft entry (a txn's may be large).
        let kv =
            KeyValue { key: Bytes::copy_from_slice(&kv.key), value: Bytes::copy_from_slice(&kv.value), ..kv.clone() };
        let cost = cost(&kv);
        if self.bytes + cost > self.bytes_max {
            self.clear();
            if cost > self.bytes_max {
                return;
            }
        }
        self.bytes += cost;
        self.entries.insert(kv.key.clone(), kv);
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= cost(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, rev: i64) -> Event {
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: Bytes::copy_from_slice(value.as_bytes()),
            lease: 0,
        };
        Event { kind: EventKind::Put, kv, prev_kv: None }
    }

    fn delete(key: &str, rev: i64) -> Event {
        let kv = KeyValue { key: Bytes::copy_from_slice(key.as_bytes()), mod_revision: rev, ..Default::default() };
        Event { kind: EventKind::Delete, kv, prev_kv: None }
    }

    #[test]
    fn events_apply_in_order_and_deletes_forget() {
        let mut cache = LatestCache::default();
        cache.apply_events(&[put("a", "1", 2), put("b", "1", 3), put("a", "2", 4), delete("b", 5)]);
        assert_eq!(cache.get(b"a").map(|kv| (&kv.value[..], kv.mod_revision)), Some((&b"2"[..], 4)));
        assert!(cache.get(b"b").is_none(), "deleted: unknown here");
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty() && cache.get(b"a").is_none());
    }

    #[test]
    fn cached_values_are_copies_whether_new_or_replaced() {
        // Events' keys and values are slices of a Raft entry, which may hold a large txn.
        let entry = Bytes::from(vec![b'v'; 4096]);
        let from_entry = |rev| {
            let mut event = put("k", "", rev);
            event.kv.value = entry.slice(100..110);
            event
        };
        let mut cache = LatestCache::default();
        for rev in [2, 3] {
            cache.apply_events(&[from_entry(rev)]);
            let cached = cache.get(b"k").expect("cached");
            assert_eq!((&cached.value[..], cached.mod_revision), (&entry[100..110], rev));
            assert!(!entry.as_ptr_range().contains(&cached.value.as_ptr()), "revision {rev} keeps the entry alive");
        }
        assert_eq!(cache.bytes, cost(cache.get(b"k").unwrap()), "a replaced entry is counted once");
    }

    #[test]
    fn the_byte_limit_holds_and_a_full_cache_starts_over() {
        let one = 1 + 10 + ENTRY_OVERHEAD_BYTES;
        let mut cache = LatestCache::with_limit(3 * one);
        cache.apply_events(&[put("a", "0123456789", 2), put("b", "0123456789", 3), put("c", "0123456789", 4)]);
        assert_eq!(cache.len(), 3);
        // Replacing a key does not count it twice.
        cache.apply_events(&[put("a", "9876543210", 5)]);
        assert_eq!(cache.len(), 3);
        cache.apply_events(&[put("d", "0123456789", 6)]);
        assert_eq!(cache.len(), 1, "over the limit: emptied, then the new entry");
        assert!(cache.get(b"d").is_some() && cache.get(b"a").is_none());
        assert!(cache.bytes <= cache.bytes_max);
        // An entry larger than the whole budget is not kept.
        cache.apply_events(&[put("huge", &"x".repeat(4 * one), 7)]);
        assert!(cache.get(b"huge").is_none());
    }
}
