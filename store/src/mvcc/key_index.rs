//! etcd's in-memory key index (`mvcc/key_index.go`, `index.go`): every key's
//! generations of revisions, so that reads, puts and compaction find which
//! revision of a key to use without touching RocksDB.
//!
//! Apply updates it from each batch's events just before writing the batch
//! (`mvcc::index_changes`); a reader takes its RocksDB snapshot first and
//! reads the index second, so the records the index names are in the
//! snapshot. With it a put is one in-order memtable insert into `kv_changes`
//! instead of two random-order inserts into the key-ordered layout it
//! replaced (bench/BOUNDS.md measured those at 23 % of the members' CPU at
//! put-1000).
//!
//! A key's history is a list of generations. A generation starts with the put
//! that creates the key and ends with the tombstone that deletes it; the last
//! generation is open (possibly empty, when the key is deleted). Compaction at
//! `C` drops every revision of a key older than its newest revision `≤ C`,
//! and that one too when it is a tombstone; a key left with nothing leaves the
//! index.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;

use super::codec::ChangeView;

/// A change's position: the store revision and its index within the revision's txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The store revision.
    pub main: i64,
    /// The change's index within that revision.
    pub sub: u32,
}

impl Revision {
    /// The change `sub` of revision `main`.
    pub fn new(main: i64, sub: u32) -> Self {
        Revision { main, sub }
    }
}

/// What the index knows about a live version of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Revision of the version (its record's key in `kv_changes`).
    pub modified: Revision,
    /// Revision of the put that created the key's generation.
    pub created: i64,
    /// Puts in the generation up to and including this one.
    pub version: i64,
}

/// The live version of a key with its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// The version.
    pub found: Found,
    /// Its lease, 0 for none.
    pub lease: i64,
}

/// What a put did to the key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The new version's create revision.
    pub create_revision: i64,
    /// The new version's version.
    pub version: i64,
    /// The live version it replaced, if the key existed.
    pub replaced: Option<Live>,
}

#[derive(Debug, Clone, Default)]
struct Generation {
    /// Changes in the generation, the tombstone included (etcd's `ver`); it
    /// survives compaction trimming `revs`, so versions stay right.
    changes: i64,
    created: i64,
    revs: Vec<Revision>,
}

impl Generation {
    fn version_of(&self, i: usize) -> i64 {
        self.changes - (self.revs.len() - 1 - i) as i64
    }

    /// Index of the newest revision `≤ at`.
    fn newest_at(&self, at: i64) -> Option<usize> {
        self.revs.partition_point(|r| r.main <= at).checked_sub(1)
    }
}

#[derive(Debug, Clone)]
struct KeyHistory {
    /// Never empty; every generation but the last ends with a tombstone.
    generations: Vec<Generation>,
    /// Lease of the live version (0 when none or deleted).
    lease: i64,
}

impl KeyHistory {
    fn open(&self) -> &Generation {
        self.generations.last().expect("a key history has a generation")
    }

    fn open_mut(&mut self) -> &mut Generation {
        self.generations.last_mut().expect("a key history has a generation")
    }

    fn live(&self) -> Option<Live> {
        let g = self.open();
        let i = g.revs.len().checked_sub(1)?;
        Some(Live {
            found: Found { modified: g.revs[i], created: g.created, version: g.version_of(i) },
            lease: self.lease,
        })
    }

    fn put(&mut self, rev: Revision, lease: i64) -> PutOutcome {
        let replaced = self.live();
        let g = self.open_mut();
        debug_assert!(g.revs.last().is_none_or(|last| *last < rev), "revisions of a key only grow");
        if g.revs.is_empty() {
            g.created = rev.main;
        }
        g.revs.push(rev);
        g.changes += 1;
        let outcome = PutOutcome { create_revision: g.created, version: g.changes, replaced };
        self.lease = lease;
        outcome
    }

    fn tombstone(&mut self, rev: Revision) -> Option<Live> {
        let live = self.live()?;
        let g = self.open_mut();
        g.revs.push(rev);
        g.changes += 1;
        self.generations.push(Generation::default());
        self.lease = 0;
        Some(live)
    }

    /// The generation that holds the newest change `≤ at`, with its index,
    /// or None when that change is a tombstone or the key did not exist.
    fn get(&self, at: i64) -> Option<Found> {
        let last = self.generations.len() - 1;
        for (gi, g) in self.generations.iter().enumerate().rev() {
            let Some(i) = g.newest_at(at) else { continue };
            if gi != last && i == g.revs.len() - 1 {
                return None; // deleted at `at`
            }
            return Some(Found { modified: g.revs[i], created: g.created, version: g.version_of(i) });
        }
        None
    }

    /// Generation index and revision index of the newest change `≤ at`.
    fn newest_change_at(&self, at: i64) -> Option<(usize, usize)> {
        self.generations.iter().enumerate().rev().find_map(|(gi, g)| g.newest_at(at).map(|i| (gi, i)))
    }

    fn is_tombstone(&self, gi: usize, i: usize) -> bool {
        gi != self.generations.len() - 1 && i == self.generations[gi].revs.len() - 1
    }

    /// etcd's `keep`: the revision a compaction at `at` keeps for this key.
    fn kept_at(&self, at: i64) -> Option<Revision> {
        let (gi, i) = self.newest_change_at(at)?;
        (!self.is_tombstone(gi, i)).then(|| self.generations[gi].revs[i])
    }

    /// etcd's `compact`; returns whether the key has nothing left.
    fn compact(&mut self, at: i64, kept: &mut HashSet<Revision>) -> bool {
        let Some((gi, i)) = self.newest_change_at(at) else { return false };
        let drop_generations = if self.is_tombstone(gi, i) { gi + 1 } else { gi };
        if !self.is_tombstone(gi, i) {
            kept.insert(self.generations[gi].revs[i]);
            self.generations[gi].revs.drain(..i);
        }
        self.generations.drain(..drop_generations);
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }
}

/// The key index of one store: every key's revisions since the compaction.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Bytes, KeyHistory>,
    compacted: i64,
}

impl KeyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys with any revision in the index (live or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key has a revision in the index.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The revision of the last compaction (0 before any).
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Records a put of `key` at `rev`; `rev` is newer than the key's revisions.
    pub fn put(&mut self, key: &Bytes, rev: Revision, lease: i64) -> PutOutcome {
        if let Some(history) = self.keys.get_mut(key.as_ref()) {
            return history.put(rev, lease);
        }
        let mut history = KeyHistory { generations: vec![Generation::default()], lease: 0 };
        let outcome = history.put(rev, lease);
        // Copied: apply's keys are slices of the Raft entry, which the index must not keep alive.
        self.keys.insert(Bytes::copy_from_slice(key), history);
        outcome
    }

    /// Records a delete of `key` at `rev`; returns the live version it ends,
    /// or None (and changes nothing) when the key is not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> Option<Live> {
        self.keys.get_mut(key)?.tombstone(rev)
    }

    /// The live version of `key` at revision `at`, if any.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Found> {
        self.keys.get(key)?.get(at)
    }

    /// The current live version of `key`, with its lease.
    pub fn live(&self, key: &[u8]) -> Option<Live> {
        self.keys.get(key)?.live()
    }

    /// Keys in `(start, end)` live at `at`, in key order. An empty or
    /// inverted range yields nothing.
    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
        at: i64,
    ) -> impl Iterator<Item = (&'a Bytes, Found)> + 'a {
        let nonempty = match (start, end) {
            (Bound::Included(s), Bound::Included(e)) => s <= e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => s < e,
            _ => true,
        };
        let entries = nonempty.then(|| self.keys.range::<[u8], _>((start, end)));
        entries.into_iter().flatten().filter_map(move |(k, h)| Some((k, h.get(at)?)))
    }

    /// etcd's `keep`: the revisions a compaction at `at` would keep (each
    /// key's newest revision `≤ at` that is not a tombstone).
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        self.keys.values().filter_map(|h| h.kept_at(at)).collect()
    }

    /// Compacts the index at `at` and returns the revisions `≤ at` still
    /// needed; every other record `≤ at` may be deleted. A revision at or
    /// below the last compaction changes nothing.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut kept = HashSet::new();
        if at <= self.compacted {
            return self.keep(self.compacted);
        }
        self.keys.retain(|_, h| !h.compact(at, &mut kept));
        self.compacted = at;
        kept
    }

    /// Rebuilds the index from stored changes, fed in revision order: a
    /// change's create revision and version are taken as stored, since the
    /// changes before it may have been compacted away.
    pub fn restore(&mut self, rev: Revision, change: &ChangeView<'_>) {
        if change.tombstone {
            self.tombstone(change.key, rev);
            return;
        }
        if !self.keys.contains_key(change.key) {
            let fresh = KeyHistory { generations: vec![Generation::default()], lease: 0 };
            self.keys.insert(Bytes::copy_from_slice(change.key), fresh);
        }
        let history = self.keys.get_mut(change.key).expect("inserted above");
        let g = history.open_mut();
        if g.revs.is_empty() {
            g.created = change.create_revision;
        }
        g.revs.push(rev);
        g.changes = change.version;
        history.lease = change.lease;
    }
}

#[cfg(test)]
mod tests;
