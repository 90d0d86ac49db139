//! At-most-once application of forwarded writes. A member that forwards a
//! command to the leader tags it with a request id and may retry it after a
//! lost answer; apply records each id's reply, so a duplicate is answered
//! with the first reply instead of being applied again. Records older than
//! [`DEDUP_WINDOW_ENTRIES`] log entries are pruned at deterministic points, so
//! every member holds the same table.
//!
//! Layout (`dedup` column family): `o` ‖ log index ‖ request id → `raftlog.AppliedReply`, in
//! apply order, so recording is an append and pruning a scan from the start. Which ids are in
//! the table is held in memory ([`DedupIndex`]). Tables written before that layout also hold
//! `i` ‖ request id → log index ‖ reply, with an empty `o` record; both are still read and pruned.

use prost::Message;
use rocksdb::WriteBatch;
use rustc_hash::FxHashMap;

use super::types::Applied;
use crate::engine::{Engine, EngineError, cf};
use crate::error::StoreError;
use crate::proto::raftlog::{self as pb, applied_reply::Result as Reply};

/// How many log entries a request id is remembered for. A retry happens
/// within one request timeout (seconds), far fewer entries than this.
pub const DEDUP_WINDOW_ENTRIES: u64 = 1_000_000;
/// Pruning runs when the applied index is a multiple of this.
pub const DEDUP_PRUNE_EVERY: u64 = 4096;
/// Replies above this size are not kept whole (a duplicate gets an error instead).
pub const DEDUP_REPLY_BYTES_MAX: usize = 64 * 1024;

const BY_ID: u8 = b'i';
const BY_INDEX: u8 = b'o';

fn id_key(request_id: u64) -> [u8; 9] {
    let mut k = [BY_ID; 9];
    k[1..].copy_from_slice(&request_id.to_be_bytes());
    k
}

fn index_key(index: u64, request_id: u64) -> [u8; 17] {
    let mut k = [BY_INDEX; 17];
    k[1..9].copy_from_slice(&index.to_be_bytes());
    k[9..].copy_from_slice(&request_id.to_be_bytes());
    k
}

/// Converts an apply result to its wire/stored form.
pub fn to_reply(applied: &Applied) -> pb::AppliedReply {
    let result = match applied {
        Applied::Nothing => Reply::Nothing(pb::Blank {}),
        Applied::Put(r) => Reply::Put(r.clone()),
        Applied::DeleteRange(r) => Reply::DeleteRange(r.clone()),
        Applied::Txn(r) => Reply::Txn(r.clone()),
        Applied::Compact(r) => Reply::Compact(*r),
        Applied::LeaseGrant(r) => Reply::LeaseGrant(r.clone()),
        Applied::LeaseRevoke(r) => Reply::LeaseRevoke(*r),
        Applied::Rejected(e) => Reply::Rejected(e.to_string()),
    };
    pb::AppliedReply { result: Some(result) }
}

/// Converts a wire/stored reply back to an apply result.
pub fn from_reply(reply: pb::AppliedReply) -> Applied {
    match reply.result {
        None | Some(Reply::Nothing(_)) => Applied::Nothing,
        Some(Reply::Put(r)) => Applied::Put(r),
        Some(Reply::DeleteRange(r)) => Applied::DeleteRange(r),
        Some(Reply::Txn(r)) => Applied::Txn(r),
        Some(Reply::Compact(r)) => Applied::Compact(r),
        Some(Reply::LeaseGrant(r)) => Applied::LeaseGrant(r),
        Some(Reply::LeaseRevoke(r)) => Applied::LeaseRevoke(r),
        Some(Reply::Rejected(msg)) => Applied::Rejected(StoreError::from_message(&msg)),
    }
}

/// The dedup table's request ids and the log index each was applied at, held in memory so that
/// apply finds out whether a command is a duplicate without reading the database, and so that a
/// record is one in-order insert (keyed by index) instead of a second one at a random point of
/// the id order. Derived from the table: loaded at open and after a snapshot is installed, and
/// changed only by [`DedupIndex::record`] and [`DedupIndex::prune`], which stage the same change
/// in the batch. At most [`DEDUP_WINDOW_ENTRIES`] ids (about 32 MiB).
/// (FxHash: ids are not attacker-chosen, and SipHash was most of a lookup's cost.)
#[derive(Default)]
pub struct DedupIndex {
    applied_at: FxHashMap<u64, u64>,
}

fn corrupt(detail: String) -> EngineError {
    EngineError::Corrupt { what: "dedup record", detail }
}

fn parse_index_key(k: &[u8]) -> Result<(u64, u64), EngineError> {
    match (k.first(), k.get(1..9), k.get(9..17)) {
        (Some(&BY_INDEX), Some(index), Some(id)) if k.len() == 17 => Ok((
            u64::from_be_bytes(index.try_into().expect("8 bytes")),
            u64::from_be_bytes(id.try_into().expect("8 bytes")),
        )),
        _ => Err(corrupt(format!("index key of {} bytes", k.len()))),
    }
}

impl DedupIndex {
    /// Reads the ids of every record in `engine`'s table.
    pub fn load(engine: &Engine) -> Result<Self, EngineError> {
        let mut applied_at = FxHashMap::default();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound([BY_INDEX + 1]);
        let mut it = engine.db().raw_iterator_cf_opt(engine.cf(cf::DEDUP), opts);
        it.seek([BY_INDEX]);
        while let Some(k) = it.key() {
            let (index, id) = parse_index_key(k)?;
            applied_at.insert(id, index);
            it.next();
        }
        it.status()?;
        Ok(DedupIndex { applied_at })
    }

    /// The recorded reply of `request_id`, if it was applied within the window.
    pub fn lookup(&self, engine: &Engine, request_id: u64) -> Result<Option<Applied>, EngineError> {
        let Some(&index) = self.applied_at.get(&request_id) else {
            return Ok(None);
        };
        let table = engine.cf(cf::DEDUP);
        let value = engine.db().get_pinned_cf(table, index_key(index, request_id))?;
        let Some(value) = value else {
            return Err(corrupt(format!("request id {request_id:#x} has no record at index {index}")));
        };
        let reply = if value.is_empty() {
            // Written before replies moved into the index record: the reply is in the id record.
            let raw = engine.db().get_pinned_cf(table, id_key(request_id))?;
            let raw = raw.ok_or_else(|| corrupt(format!("request id {request_id:#x} has no id record")))?;
            let body = raw.get(8..).ok_or_else(|| corrupt("id record shorter than its index".into()))?;
            pb::AppliedReply::decode(body)
        } else {
            pb::AppliedReply::decode(&value[..])
        };
        Ok(Some(from_reply(reply.map_err(|e| corrupt(e.to_string()))?)))
    }

    /// Adds the record of `request_id`, applied at `index`, to `batch`.
    pub fn record(&mut self, engine: &Engine, batch: &mut WriteBatch, request_id: u64, index: u64, applied: &Applied) {
        let mut reply = to_reply(applied);
        if reply.encoded_len() > DEDUP_REPLY_BYTES_MAX {
            let msg = "etcdserver: duplicate of an applied request whose reply was too large to keep".to_string();
            reply = pb::AppliedReply { result: Some(Reply::Rejected(msg)) };
        }
        // Never empty (`result` is always set), which tells it from a record of the old layout.
        batch.put_cf(engine.cf(cf::DEDUP), index_key(index, request_id), reply.encode_to_vec());
        self.applied_at.insert(request_id, index);
    }

    /// Prunes the records that fell out of the window, when applying `index` is one of the
    /// deterministic points to do it (every [`DEDUP_PRUNE_EVERY`] entries).
    pub fn prune_due(&mut self, engine: &Engine, batch: &mut WriteBatch, index: u64) -> Result<(), EngineError> {
        if index.is_multiple_of(DEDUP_PRUNE_EVERY) && index > DEDUP_WINDOW_ENTRIES {
            self.prune(engine, batch, index - DEDUP_WINDOW_ENTRIES)?;
        }
        Ok(())
    }

    /// Adds to `batch` the removal of every record applied before `below`.
    fn prune(&mut self, engine: &Engine, batch: &mut WriteBatch, below: u64) -> Result<(), EngineError> {
        let table = engine.cf(cf::DEDUP);
        let end = index_key(below, 0);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let mut it = engine.db().raw_iterator_cf_opt(table, opts);
        it.seek([BY_INDEX]);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (index, id) = parse_index_key(k)?;
            if self.applied_at.get(&id) == Some(&index) {
                self.applied_at.remove(&id);
            }
            if v.is_empty() {
                batch.delete_cf(table, id_key(id));
            }
            batch.delete_cf(table, k);
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// How many request ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.applied_at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as epb;

    fn put_reply() -> Applied {
        Applied::Put(epb::PutResponse { header: None, prev_kv: None })
    }

    #[test]
    fn records_answer_duplicates_until_pruned_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut table = DedupIndex::load(&engine).unwrap();
        let mut batch = WriteBatch::default();
        table.record(&engine, &mut batch, 7, 10, &put_reply());
        table.record(&engine, &mut batch, 8, 20, &Applied::Rejected(StoreError::LeaseNotFound));
        engine.db().write(batch).unwrap();
        for table in [table, DedupIndex::load(&engine).unwrap()] {
            assert_eq!(table.len(), 2);
            assert!(matches!(table.lookup(&engine, 7).unwrap(), Some(Applied::Put(_))));
            assert!(matches!(table.lookup(&engine, 8).unwrap(), Some(Applied::Rejected(StoreError::LeaseNotFound))));
            assert!(table.lookup(&engine, 9).unwrap().is_none());
        }
        let mut table = DedupIndex::load(&engine).unwrap();
        let mut batch = WriteBatch::default();
        table.prune(&engine, &mut batch, 15).unwrap();
        engine.db().write(batch).unwrap();
        for table in [table, DedupIndex::load(&engine).unwrap()] {
            assert!(table.lookup(&engine, 7).unwrap().is_none());
            assert!(table.lookup(&engine, 8).unwrap().is_some());
        }
    }

    /// Tables written before replies moved into the index record: an id record with
    /// `index ‖ reply` and an empty index record. They must still answer and be pruned whole.
    #[test]
    fn reads_and_prunes_records_of_the_old_layout() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let cf = engine.cf(cf::DEDUP);
        let mut old = 10u64.to_be_bytes().to_vec();
        to_reply(&put_reply()).encode(&mut old).unwrap();
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, [b'i', 0, 0, 0, 0, 0, 0, 0, 7], old);
        batch.put_cf(cf, [b'o', 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 7], []);
        engine.db().write(batch).unwrap();

        let mut table = DedupIndex::load(&engine).unwrap();
        assert!(matches!(table.lookup(&engine, 7).unwrap(), Some(Applied::Put(_))));
        let mut batch = WriteBatch::default();
        table.prune(&engine, &mut batch, 11).unwrap();
        engine.db().write(batch).unwrap();
        assert!(table.lookup(&engine, 7).unwrap().is_none());
        let left = engine.db().iterator_cf(cf, rocksdb::IteratorMode::Start).count();
        assert_eq!(left, 0, "both records of the old layout are deleted");
    }
}
