//! The RocksDB instance shared by the Raft log and the state machine: one
//! database, one WAL, so a synced log write also makes every earlier
//! state-machine write durable, in order.

use std::path::Path;
use std::sync::Arc;

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options};

use crate::mvcc::key_index::KeyIndex;

/// Column family names. The layout is documented in ARCHITECTURE.md.
pub mod cf {
    /// Raft log: big-endian u64 index → encoded `raftlog::LogEntry`.
    pub const RAFT_LOG: &str = "raft_log";
    /// Raft metadata: vote, last purged log id, committed log id.
    pub const RAFT_META: &str = "raft_meta";
    /// State-machine metadata: last applied, membership, revision, compaction.
    pub const SM_META: &str = "sm_meta";
    /// Live keys: user key → latest record (the current-revision read path).
    pub const KV_LATEST: &str = "kv_latest";
    /// Key history: escaped user key ‖ inverted revision → record (historical reads).
    pub const KV_HISTORY: &str = "kv_history";
    /// Revision log: revision ‖ sub → user key (watch replay, compaction).
    pub const KV_REVS: &str = "kv_revs";
    /// Every change (layout v2): revision ‖ sub → key, metadata and value.
    pub const KV_CHANGES: &str = "kv_changes";
    /// Leases: big-endian lease id → encoded lease.
    pub const LEASE: &str = "lease";
    /// Lease attachments: lease id ‖ user key → empty.
    pub const LEASE_KEYS: &str = "lease_keys";

    /// Applied request ids: `i` ‖ request id → log index ‖ encoded reply, and
    /// `o` ‖ log index ‖ request id → empty (oldest first, for pruning).
    pub const DEDUP: &str = "dedup";
    /// Published member attributes: big-endian member id → `raftlog.MemberAttributes`.
    pub const MEMBERS: &str = "members";

    /// Every column family, in creation order.
    pub const ALL: [&str; 11] =
        [RAFT_LOG, RAFT_META, SM_META, KV_LATEST, KV_HISTORY, KV_REVS, LEASE, LEASE_KEYS, DEDUP, MEMBERS, KV_CHANGES];

    /// The state machine's column families: what a snapshot holds and an install replaces.
    pub const STATE_MACHINE: [&str; 9] =
        [SM_META, KV_LATEST, KV_HISTORY, KV_REVS, LEASE, LEASE_KEYS, DEDUP, MEMBERS, KV_CHANGES];
}

/// The errors opening or using the engine can produce.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored bytes could not be decoded.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl From<EngineError> for std::io::Error {
    fn from(e: EngineError) -> Self {
        std::io::Error::other(e)
    }
}

/// Block cache shared by every column family (RocksDB's default is a separate 32 MiB cache per
/// table factory, i.e. per column family).
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Block cache of a checkpoint opened to be dumped (its reads do not fill it; index and filter
/// blocks go through it).
const CHECKPOINT_BLOCK_CACHE_BYTES: usize = 8 << 20;
/// Memtables of all column families together; past it, the largest is flushed.
const WRITE_BUFFERS_TOTAL_BYTES: usize = 128 << 20;
/// Bloom filter bits per key in the SST files of point-lookup column families (~1 % false
/// positives).
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Column families read by exact key whose lookups may miss: leases, metadata. A bloom filter
/// answers a miss without reading an SST's index and data blocks. (`kv_changes` is only read
/// for a revision the key index names, `dedup` for an id known to be there.) The first layout's
/// `kv_latest`, probed by every write, also had a memtable bloom filter; nothing probes one now.
const POINT_LOOKUP: [&str; 4] = [cf::LEASE, cf::SM_META, cf::RAFT_META, cf::MEMBERS];

fn cf_options(name: &str, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    if POINT_LOOKUP.contains(&name) {
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        table.set_whole_key_filtering(true);
    }
    o.set_block_based_table_factory(&table);
    if [cf::KV_HISTORY, cf::KV_REVS, cf::KV_CHANGES, cf::RAFT_LOG].contains(&name) {
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    }
    o
}

/// A shared handle to the database and the key index of its MVCC records.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    /// Which revisions of which keys `kv_changes` holds; empty until the state machine loads it
    /// (`mvcc::load_index`), and in a checkpoint opened to be dumped.
    index: Arc<RwLock<KeyIndex>>,
}

impl Engine {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Two cores: one background job for flushes, one for compactions.
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_db_write_buffer_size(WRITE_BUFFERS_TOTAL_BYTES);
        // State-machine writes skip the WAL (`write_unlogged`): after a crash those column
        // families must come back as one state they really had, so every flush is atomic.
        opts.set_atomic_flush(true);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = cf::ALL.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Self { db: Arc::new(db), index: Arc::default() })
    }

    /// Opens the state-machine column families of a checkpoint (see [`Engine::checkpoint`])
    /// read-only. The log column families are left closed: nothing reads them there.
    pub fn open_checkpoint(dir: &Path) -> Result<Self, EngineError> {
        let opts = Options::default();
        let cache = rocksdb::Cache::new_lru_cache(CHECKPOINT_BLOCK_CACHE_BYTES);
        let cfs = cf::STATE_MACHINE.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors_read_only(&opts, dir, cfs, false)?;
        Ok(Self { db: Arc::new(db), index: Arc::default() })
    }

    /// Writes a consistent copy of the whole database into `dir` (which must not exist): the
    /// memtables are flushed, SST files hard-linked, the rest copied. It costs a flush, not a
    /// pass over the data.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), EngineError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// The raw database.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// The key index, for reading. A panic while it was written leaves the member stopping
    /// anyway (apply failed), so a poisoned lock is not an error of its own.
    pub fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key index, for apply (its only writer) and reloads.
    pub fn index_mut(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A column family handle; the names are fixed at open, so a miss is a bug.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} was created at open"))
    }

    /// Writes `batch` to the memtables only, not the WAL: for state-machine writes, which the
    /// Raft log recreates after a crash (openraft re-applies the committed entries after
    /// `last_applied` at start). Flushes are atomic across column families, so a crash leaves
    /// the state machine at the last flush, never half of one batch; snapshots and backups
    /// flush first (`checkpoint`).
    pub fn write_unlogged(&self, batch: rocksdb::WriteBatch) -> Result<(), EngineError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Makes every write so far durable, unlogged ones included: one atomic flush of every
    /// column family's memtable to SST files, waited for.
    pub fn flush_all(&self) -> Result<(), EngineError> {
        let cfs: Vec<&ColumnFamily> = cf::ALL.iter().map(|name| self.cf(name)).collect();
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &opts)?;
        Ok(())
    }

    /// Makes every logged write so far durable (fsync of the WAL).
    pub fn sync_wal(&self) -> Result<(), EngineError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Approximate bytes on disk (SST files plus memtables), for Status.dbSize.
    pub fn approximate_size(&self) -> i64 {
        let mut total = 0u64;
        for name in cf::ALL {
            let cf = self.cf(name);
            for prop in ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"] {
                if let Ok(Some(v)) = self.db.property_int_value_cf(cf, prop) {
                    total += v;
                }
            }
        }
        i64::try_from(total).unwrap_or(i64::MAX)
    }
}

impl Engine {
    /// Deletes every key of column family `name` (one range delete plus the last key),
    /// unlogged: like every state-machine write, it is durable after `flush_all`. Logged, a
    /// replay after a crash would apply the range computed from the live keys to the older
    /// flushed state, which may hold keys outside it.
    pub fn clear_cf(&self, name: &str) -> Result<(), EngineError> {
        let mut batch = rocksdb::WriteBatch::default();
        self.stage_clear_cf(name, &mut batch)?;
        if !batch.is_empty() {
            self.write_unlogged(batch)?;
        }
        Ok(())
    }

    /// Stages in `batch` the deletion of every key column family `name` holds now, so that
    /// several families can be emptied in one atomic write.
    pub fn stage_clear_cf(&self, name: &str, batch: &mut rocksdb::WriteBatch) -> Result<(), EngineError> {
        let cf = self.cf(name);
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        let Some(first) = it.key().map(<[u8]>::to_vec) else {
            it.status()?;
            return Ok(());
        };
        it.seek_to_last();
        let last = it.key().map(<[u8]>::to_vec).unwrap_or_else(|| first.clone());
        it.status()?;
        batch.delete_range_cf(cf, &first, &last);
        batch.delete_cf(cf, &last);
        Ok(())
    }

    /// Compacts every column family fully, reclaiming space (etcd's Defragment).
    pub fn compact_all(&self) -> Result<(), EngineError> {
        for name in cf::ALL {
            self.db.compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_wal_records(engine: &Engine) -> usize {
        engine.db().get_updates_since(0).expect("wal iterator").map(|r| r.expect("wal record").1.len()).sum()
    }

    #[test]
    fn unlogged_writes_skip_the_wal_and_logged_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut logged = rocksdb::WriteBatch::default();
        logged.put_cf(engine.cf(cf::RAFT_LOG), b"entry", b"1");
        engine.db().write(logged).unwrap();
        let mut unlogged = rocksdb::WriteBatch::default();
        unlogged.put_cf(engine.cf(cf::KV_LATEST), b"k", b"v");
        unlogged.put_cf(engine.cf(cf::SM_META), b"m", b"1");
        engine.write_unlogged(unlogged).unwrap();
        assert_eq!(count_wal_records(&engine), 1, "only the logged put is in the WAL");
        assert_eq!(engine.db().get_cf(engine.cf(cf::KV_LATEST), b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_checkpoint_holds_the_unlogged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut unlogged = rocksdb::WriteBatch::default();
        unlogged.put_cf(engine.cf(cf::KV_LATEST), b"k", b"v");
        unlogged.put_cf(engine.cf(cf::SM_META), b"m", b"1");
        engine.write_unlogged(unlogged).unwrap();
        let copy = dir.path().join("checkpoint");
        engine.checkpoint(&copy).unwrap();
        let opened = Engine::open_checkpoint(&copy).unwrap();
        assert_eq!(opened.db().get_cf(opened.cf(cf::KV_LATEST), b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(opened.db().get_cf(opened.cf(cf::SM_META), b"m").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
