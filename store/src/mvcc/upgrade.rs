//! Converts a store of the first MVCC layout (`kv_latest`, `kv_history`,
//! `kv_revs`) into `kv_changes` at open, so that a member upgraded in place
//! (or one installing a snapshot from a member not yet upgraded) keeps its data.

use rocksdb::WriteBatch;

use super::codec::{self, ChangeView, Record};
use crate::engine::{Engine, EngineError, cf};

/// The column families of the first layout, emptied by the conversion.
const V1_FAMILIES: [&str; 3] = [cf::KV_LATEST, cf::KV_HISTORY, cf::KV_REVS];
/// Bytes of converted records staged before they are written.
const UPGRADE_BATCH_BYTES: usize = 16 << 20;

/// Rewrites every record of the first layout into `kv_changes`, then empties the old column
/// families. Safe to rerun after a crash at any point: until the old families are emptied
/// (one batch, then an atomic flush) they are the source, and the conversion starts over.
pub fn upgrade_if_needed(engine: &Engine) -> Result<(), EngineError> {
    if V1_FAMILIES.iter().all(|name| first_key(engine, name).is_ok_and(|k| k.is_none())) {
        return Ok(());
    }
    tracing::info!("converting the store to the kv_changes layout");
    engine.clear_cf(cf::KV_CHANGES)?;
    let mut converted = 0u64;
    let mut batch = WriteBatch::default();
    let mut it = engine.db().raw_iterator_cf(engine.cf(cf::KV_REVS));
    it.seek_to_first();
    while let (Some(raw_key), Some(key)) = (it.key(), it.value()) {
        let (revision, _) = codec::decode_revs_key(raw_key)?;
        let record = v1_record(engine, key, revision)?;
        batch.put_cf(engine.cf(cf::KV_CHANGES), raw_key, ChangeView::of(key, &record).encode());
        if batch.size_in_bytes() >= UPGRADE_BATCH_BYTES {
            engine.write_unlogged(std::mem::take(&mut batch))?;
        }
        converted += 1;
        it.next();
    }
    it.status()?;
    engine.write_unlogged(batch)?;
    engine.flush_all()?;
    let mut clear = WriteBatch::default();
    for name in V1_FAMILIES {
        engine.stage_clear_cf(name, &mut clear)?;
    }
    engine.write_unlogged(clear)?;
    engine.flush_all()?;
    tracing::info!(records = converted, "converted the store to the kv_changes layout");
    Ok(())
}

/// The record of `key` at `revision` in the first layout: the live one in `kv_latest` if it is
/// that revision, else the one in `kv_history`.
fn v1_record(engine: &Engine, key: &[u8], revision: i64) -> Result<Record, EngineError> {
    let db = engine.db();
    if let Some(raw) = db.get_cf(engine.cf(cf::KV_LATEST), key)?
        && codec::record_mod_revision(&raw)? == revision
    {
        return Record::decode(&raw);
    }
    match db.get_cf(engine.cf(cf::KV_HISTORY), codec::history_key(key, revision))? {
        Some(raw) => Record::decode(&raw),
        None => Err(EngineError::Corrupt {
            what: "kv_revs",
            detail: format!("revision {revision} lists key {key:?}, which has no version there"),
        }),
    }
}

fn first_key(engine: &Engine, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
    let mut it = engine.db().raw_iterator_cf(engine.cf(name));
    it.seek_to_first();
    let key = it.key().map(<[u8]>::to_vec);
    it.status()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::mvcc::{ReadView, load_index};

    fn record(tombstone: bool, create: i64, rev: i64, version: i64, value: &'static [u8]) -> Record {
        Record {
            tombstone,
            create_revision: create,
            mod_revision: rev,
            version,
            lease: 0,
            value: Bytes::from_static(value),
        }
    }

    /// `a`: put at 2, put at 3 (live); `b`: put at 4, deleted at 5; `c`: put at 5 (live),
    /// written the way the first layout writes them.
    fn v1_store(engine: &Engine) {
        let mut b = WriteBatch::default();
        let (latest, history, revs) = (engine.cf(cf::KV_LATEST), engine.cf(cf::KV_HISTORY), engine.cf(cf::KV_REVS));
        b.put_cf(history, codec::history_key(b"a", 2), record(false, 2, 2, 1, b"a1").encode());
        b.put_cf(latest, b"a", record(false, 2, 3, 2, b"a2").encode());
        b.put_cf(history, codec::history_key(b"b", 4), record(false, 4, 4, 1, b"b1").encode());
        b.put_cf(history, codec::history_key(b"b", 5), record(true, 0, 5, 0, b"").encode());
        b.put_cf(latest, b"c", record(false, 5, 5, 1, b"c1").encode());
        for (rev, sub, key) in [(2, 0, "a"), (3, 0, "a"), (4, 0, "b"), (5, 0, "b"), (5, 1, "c")] {
            b.put_cf(revs, codec::revs_key(rev, sub), key);
        }
        b.put_cf(engine.cf(cf::SM_META), super::super::META_REVISION, 5i64.to_be_bytes());
        engine.write_unlogged(b).unwrap();
    }

    fn value_at(view: &ReadView<'_>, key: &[u8], rev: i64) -> Option<(Bytes, i64)> {
        view.get_at(key, rev).unwrap().map(|kv| (kv.value, kv.version))
    }

    #[test]
    fn a_store_of_the_first_layout_reads_the_same_after_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        v1_store(&engine);
        upgrade_if_needed(&engine).unwrap();
        load_index(&engine).unwrap();
        let view = ReadView::snapshot(&engine).unwrap();
        assert_eq!(value_at(&view, b"a", 2), Some((Bytes::from_static(b"a1"), 1)));
        assert_eq!(value_at(&view, b"a", 5), Some((Bytes::from_static(b"a2"), 2)));
        assert_eq!(value_at(&view, b"b", 4), Some((Bytes::from_static(b"b1"), 1)));
        assert_eq!(value_at(&view, b"b", 5), None);
        assert_eq!(value_at(&view, b"c", 5), Some((Bytes::from_static(b"c1"), 1)));
        for name in V1_FAMILIES {
            assert_eq!(first_key(&engine, name).unwrap(), None, "{name} emptied");
        }
        let changes = engine.db().iterator_cf(engine.cf(cf::KV_CHANGES), rocksdb::IteratorMode::Start).count();
        assert_eq!(changes, 5);
        // Converted once: a second open changes nothing.
        upgrade_if_needed(&engine).unwrap();
        let again = engine.db().iterator_cf(engine.cf(cf::KV_CHANGES), rocksdb::IteratorMode::Start).count();
        assert_eq!(again, 5);
    }

    #[test]
    fn a_revision_naming_a_missing_version_is_corruption_and_keeps_the_old_layout() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        v1_store(&engine);
        engine.db().put_cf(engine.cf(cf::KV_REVS), codec::revs_key(6, 0), b"a").unwrap();
        let err = upgrade_if_needed(&engine).unwrap_err();
        assert!(matches!(err, EngineError::Corrupt { what: "kv_revs", .. }), "{err}");
        assert!(first_key(&engine, cf::KV_LATEST).unwrap().is_some(), "the old layout is kept");
    }
}
