//! At-most-once application of forwarded writes. A member that forwards a
//! command to the leader tags it with a request id and may retry it after a
//! lost answer; apply records each id's reply, so a duplicate is answered
//! with the first reply instead of being applied again. Records older than
//! [`DEDUP_WINDOW_ENTRIES`] log entries are pruned at deterministic points, so
//! every member holds the same table.

use prost::Message;
use rocksdb::WriteBatch;

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

/// The recorded reply of `request_id`, if it was applied within the window.
pub fn lookup(engine: &Engine, request_id: u64) -> Result<Option<Applied>, EngineError> {
    let Some(raw) = engine.db().get_cf(engine.cf(cf::DEDUP), id_key(request_id))? else {
        return Ok(None);
    };
    let corrupt = |detail: String| EngineError::Corrupt { what: "dedup record", detail };
    let body = raw.get(8..).ok_or_else(|| corrupt("shorter than its index".into()))?;
    let reply = pb::AppliedReply::decode(body).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(from_reply(reply)))
}

/// Adds the record of `request_id`, applied at `index`, to `batch`.
pub fn record(engine: &Engine, batch: &mut WriteBatch, request_id: u64, index: u64, applied: &Applied) {
    let mut reply = to_reply(applied);
    if reply.encoded_len() > DEDUP_REPLY_BYTES_MAX {
        let msg = "etcdserver: duplicate of an applied request whose reply was too large to keep".to_string();
        reply = pb::AppliedReply { result: Some(Reply::Rejected(msg)) };
    }
    let mut value = index.to_be_bytes().to_vec();
    reply.encode(&mut value).expect("a Vec grows as needed");
    let table = engine.cf(cf::DEDUP);
    batch.put_cf(table, id_key(request_id), value);
    batch.put_cf(table, index_key(index, request_id), []);
}

/// Adds to `batch` the removal of every record applied before `below`.
pub fn prune(engine: &Engine, batch: &mut WriteBatch, below: u64) -> Result<(), EngineError> {
    let table = engine.cf(cf::DEDUP);
    let start = [BY_INDEX];
    let end = index_key(below, 0);
    let mut it = engine.db().raw_iterator_cf(table);
    it.seek(start);
    while let Some(k) = it.key() {
        if k >= &end[..] || k.first() != Some(&BY_INDEX) {
            break;
        }
        if let Some(id) = k.get(9..17) {
            let id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
            batch.delete_cf(table, id_key(id));
        }
        batch.delete_cf(table, k);
        it.next();
    }
    it.status()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as epb;

    #[test]
    fn records_answer_duplicates_until_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let put = Applied::Put(epb::PutResponse { header: None, prev_kv: None });
        let mut batch = WriteBatch::default();
        record(&engine, &mut batch, 7, 10, &put);
        record(&engine, &mut batch, 8, 20, &Applied::Rejected(StoreError::LeaseNotFound));
        engine.db().write(batch).unwrap();
        assert!(matches!(lookup(&engine, 7).unwrap(), Some(Applied::Put(_))));
        assert!(matches!(lookup(&engine, 8).unwrap(), Some(Applied::Rejected(StoreError::LeaseNotFound))));
        assert!(lookup(&engine, 9).unwrap().is_none());
        let mut batch = WriteBatch::default();
        prune(&engine, &mut batch, 15).unwrap();
        engine.db().write(batch).unwrap();
        assert!(lookup(&engine, 7).unwrap().is_none());
        assert!(lookup(&engine, 8).unwrap().is_some());
    }
}
