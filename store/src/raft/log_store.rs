//! The Raft log on RocksDB: `LogStore` (openraft's `RaftLogStorage`) and its
//! cheap-clone `LogReader`, with group-committed fsyncs on one dedicated thread.
//!
//! Layout: `raft_log` maps a big-endian u64 index to an encoded entry (so key
//! order is index order); `raft_meta` holds `vote`, `last_purged` and
//! `committed` (kept in memory until the next write carries it, so it costs no
//! WAL write of its own). Durability follows openraft's contract (see the notes, §2.1):
//! a vote, a truncation and a purge are fsynced before the call returns; an
//! append is written (readable) at return and fsynced before its callback.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::engine::{Engine, EngineError, cf};
use crate::limits::RAFT_PAYLOAD_BYTES_MAX;
use crate::metrics::Metrics;
use crate::raft::codec::{self, CodecError};
use crate::raft::log_cache::LogCache;
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};

/// Jobs queued for the fsync thread before `append` and friends wait (asynchronously)
/// for room. openraft already bounds in-flight appends, so this only caps memory if
/// the disk stalls; 1024 callbacks are a few tens of KiB, and one fsync drains them all.
const FSYNC_QUEUE_MAX: usize = 1024;

/// `raft_meta` keys.
const META_VOTE: &[u8] = b"vote";
pub(crate) const META_LAST_PURGED: &[u8] = b"last_purged";
const META_COMMITTED: &[u8] = b"committed";

/// A key greater than every 8-byte index key: the exclusive end of "the whole log".
const KEY_END: [u8; 9] = [0xff; 9];

/// The `raft_log` key of `index`: big-endian, so RocksDB's byte order is index order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The smallest key strictly after `index_key(index)` (the key plus a zero byte).
/// Using it as an exclusive bound means "up to and including `index`" with no
/// overflow at `u64::MAX`.
fn key_after(index: u64) -> Vec<u8> {
    let mut k = index.to_be_bytes().to_vec();
    k.push(0);
    k
}

fn parse_index(key: &[u8]) -> Result<u64, EngineError> {
    let bytes: [u8; 8] =
        key.try_into().map_err(|_| EngineError::Corrupt { what: "raft log key", detail: format!("{key:02x?}") })?;
    Ok(u64::from_be_bytes(bytes))
}

fn corrupt(what: &'static str) -> impl FnOnce(CodecError) -> EngineError {
    move |e| EngineError::Corrupt { what, detail: e.to_string() }
}

// ---- reader ----------------------------------------------------------------

/// Reads the log and the vote; a clone shares the database handle, so replication
/// tasks each get their own.
#[derive(Clone)]
pub struct LogReader {
    engine: Engine,
    /// The newest entries, which is what replication and apply read.
    cache: LogCache,
}

impl LogReader {
    fn read_meta<T>(
        &self,
        key: &[u8],
        decode: fn(&[u8]) -> Result<T, CodecError>,
        what: &'static str,
    ) -> Result<Option<T>, EngineError> {
        let Some(bytes) = self.engine.db().get_pinned_cf(self.engine.cf(cf::RAFT_META), key)? else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(corrupt(what))
    }

    fn vote(&self) -> Result<Option<Vote>, EngineError> {
        self.read_meta(META_VOTE, codec::decode_vote, "vote")
    }

    fn last_purged(&self) -> Result<Option<LogId>, EngineError> {
        self.read_meta(META_LAST_PURGED, codec::decode_log_id, "last purged log id")
    }

    fn committed(&self) -> Result<Option<LogId>, EngineError> {
        self.read_meta(META_COMMITTED, codec::decode_log_id, "committed log id")
    }

    /// The log id of the first (`IteratorMode::Start`) or last (`End`) present entry.
    fn edge_log_id(&self, mode: IteratorMode<'_>) -> Result<Option<LogId>, EngineError> {
        let db = self.engine.db();
        let Some(item) = db.iterator_cf(self.engine.cf(cf::RAFT_LOG), mode).next() else {
            return Ok(None);
        };
        let (key, value) = item?;
        Ok(Some(decode_at(parse_index(&key)?, &value)?.log_id))
    }

    /// Entries with index in `[start, end)`, stopping once `bytes_max` encoded bytes are
    /// read (always returning at least one entry present): from the cache when it holds
    /// the whole range, else from RocksDB.
    fn read_entries(&self, start: u64, end: Option<u64>, bytes_max: usize) -> Result<Vec<Entry>, EngineError> {
        if let Some(end) = end
            && let Some(entries) = self.cache.read(start, end, bytes_max)
        {
            return Ok(entries);
        }
        let upper = end.map(|e| index_key(e).to_vec());
        self.read_range(index_key(start).to_vec(), upper, bytes_max)
    }

    /// Entries with index in `[lower, upper)` (bounds as keys), stopping once
    /// `bytes_max` bytes are read (always returning at least one entry present).
    fn read_range(&self, lower: Vec<u8>, upper: Option<Vec<u8>>, bytes_max: usize) -> Result<Vec<Entry>, EngineError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            opts.set_iterate_upper_bound(upper);
        }
        // The iterator reads one implicit snapshot: the result is atomic, as the trait requires.
        let iter = self.engine.db().iterator_cf_opt(self.engine.cf(cf::RAFT_LOG), opts, IteratorMode::Start);
        let (mut entries, mut bytes) = (Vec::new(), 0usize);
        for item in iter {
            let (key, value) = item?;
            let index = parse_index(&key)?;
            if let Some(prev) = entries.last().map(|e: &Entry| e.log_id.index)
                && prev.checked_add(1) != Some(index)
            {
                // Purge trims the front and truncate the back; a gap inside is corruption.
                return Err(EngineError::Corrupt { what: "raft log", detail: format!("hole after index {prev}") });
            }
            entries.push(decode_at(index, &value)?);
            bytes += value.len();
            if bytes >= bytes_max {
                break;
            }
        }
        Ok(entries)
    }
}

/// Decodes the entry stored under `index`, checking it is the entry for that index.
fn decode_at(index: u64, value: &[u8]) -> Result<Entry, EngineError> {
    let entry = codec::decode_entry(value).map_err(corrupt("raft log entry"))?;
    if entry.log_id.index != index {
        let detail = format!("key {index} holds entry {}", entry.log_id);
        return Err(EngineError::Corrupt { what: "raft log entry", detail });
    }
    Ok(entry)
}

/// Converts a `RangeBounds` over indexes to `[start, end)` (`end` `None`: to the log's end).
/// An end past `u64::MAX` is no end at all; a start past it is an empty range's.
fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let span = tracing::debug_span!("raft_log_read", range = ?range, entries = tracing::field::Empty);
        let _guard = span.enter();
        let (start, end) = index_bounds(&range);
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let entries = self.read_entries(start, end, usize::MAX)?;
        span.record("entries", entries.len());
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.vote()?)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let span = tracing::debug_span!("raft_log_read_limited", start, end, entries = tracing::field::Empty);
        let _guard = span.enter();
        if end <= start {
            return Ok(Vec::new());
        }
        let entries = self.read_entries(start, Some(end), RAFT_PAYLOAD_BYTES_MAX)?;
        span.record("entries", entries.len());
        Ok(entries)
    }
}

// ---- fsync thread ------------------------------------------------------------

/// Work for the fsync thread, completed strictly in queue order.
enum Job {
    /// Entries already written (not yet synced): report the callback once durable.
    Flush(IOFlushed<TypeConfig>),
    /// Write this batch, make it durable, then reply (vote, truncate, purge).
    SyncWrite { batch: WriteBatch, reply: oneshot::Sender<io::Result<()>> },
}

/// A job whose write (if any) is done and which waits for the group's fsync.
enum Pending {
    Flush(IOFlushed<TypeConfig>),
    Reply(oneshot::Sender<io::Result<()>>, Result<(), String>),
}

/// The single thread that fsyncs the WAL: one `sync_wal()` per group of queued jobs.
struct FsyncWorker {
    engine: Engine,
    rx: mpsc::Receiver<Job>,
    /// Set after a failed fsync. The kernel may have dropped the dirty pages, so a
    /// later "successful" fsync proves nothing (fsyncgate): fail everything after.
    poisoned: Option<String>,
    /// Where each fsync's duration goes (etcd_disk_wal_fsync_duration_seconds).
    metrics: Arc<Metrics>,
    #[cfg(test)]
    probe: std::sync::Arc<test_probe::FsyncProbe>,
}

impl FsyncWorker {
    fn run(mut self) {
        let mut group = Vec::new();
        // blocking_recv: this is a plain OS thread, never a tokio worker.
        while let Some(job) = self.rx.blocking_recv() {
            group.push(job);
            // Group commit: everything queued meanwhile shares this fsync.
            while let Ok(job) = self.rx.try_recv() {
                group.push(job);
            }
            self.commit_group(&mut group);
        }
        tracing::debug!("raft log fsync thread exiting: store dropped");
    }

    fn commit_group(&mut self, group: &mut Vec<Job>) {
        let span = tracing::debug_span!("raft_log_group_commit", jobs = group.len());
        let _guard = span.enter();
        // Writes in queue order: the WAL order then matches the order openraft issued them.
        let pending: Vec<Pending> = group.drain(..).map(|job| self.write(job)).collect();
        let synced = self.sync();
        for p in pending {
            match p {
                Pending::Flush(cb) => cb.io_completed(synced.clone().map_err(io::Error::other)),
                Pending::Reply(tx, written) => {
                    // The receiver may be gone (caller cancelled); nothing to tell then.
                    let _ = tx.send(written.and(synced.clone()).map_err(io::Error::other));
                }
            }
        }
    }

    fn write(&self, job: Job) -> Pending {
        match job {
            Job::Flush(cb) => Pending::Flush(cb),
            Job::SyncWrite { batch, reply } => {
                let written = match &self.poisoned {
                    Some(e) => Err(e.clone()),
                    None => self.engine.db().write(batch).map_err(|e| format!("raft log write: {e}")),
                };
                Pending::Reply(reply, written)
            }
        }
    }

    /// One WAL fsync, timed as etcd times its WAL's (failures included).
    fn timed_sync(&self) -> Result<(), EngineError> {
        let start = Instant::now();
        let result = self.engine.sync_wal();
        self.metrics.observe_wal_fsync(start.elapsed());
        result
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        #[cfg(test)]
        let result = self.probe.before_sync().and_then(|()| self.timed_sync());
        #[cfg(not(test))]
        let result = self.timed_sync();
        #[cfg(test)]
        self.probe.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        result.map_err(|e| {
            tracing::error!(error = %e, "raft log fsync failed; the log store refuses all further writes");
            let msg = format!("raft log fsync failed: {e}");
            self.poisoned = Some(msg.clone());
            msg
        })
    }
}

// ---- the store ---------------------------------------------------------------

/// The Raft log storage. Not `Clone`: openraft owns it and serializes its calls.
pub struct LogStore {
    reader: LogReader,
    /// The committed log id openraft last saved, until a write carries it to disk.
    /// `None`: nothing unsaved. It rides with the next append (or synced write)
    /// instead of costing a WAL write of its own per commit advance; see
    /// `save_committed`.
    unsaved_committed: Option<Option<LogId>>,
    /// `None` only while dropping, to close the channel before joining the thread.
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    #[cfg(test)]
    probe: std::sync::Arc<test_probe::FsyncProbe>,
}

impl LogStore {
    /// Opens the log on `engine`, validating the persisted metadata and log bounds,
    /// and starts the fsync thread, which reports each fsync's duration to `metrics`.
    pub fn open(engine: Engine, metrics: Arc<Metrics>) -> Result<LogStore, EngineError> {
        let reader = LogReader { engine: engine.clone(), cache: LogCache::default() };
        let (vote, last_purged, committed) = (reader.vote()?, reader.last_purged()?, reader.committed()?);
        let first = reader.edge_log_id(IteratorMode::Start)?;
        let last = reader.edge_log_id(IteratorMode::End)?;
        tracing::debug!(?vote, ?last_purged, ?committed, ?first, ?last, "raft log opened");

        let (tx, rx) = mpsc::channel(FSYNC_QUEUE_MAX);
        #[cfg(test)]
        let probe = std::sync::Arc::new(test_probe::FsyncProbe::default());
        let worker = FsyncWorker {
            engine,
            rx,
            poisoned: None,
            metrics,
            #[cfg(test)]
            probe: probe.clone(),
        };
        // EngineError has no I/O variant, and failing to start a thread means the
        // process is out of resources; std::thread::spawn would panic here too.
        let handle = std::thread::Builder::new()
            .name("raft-log-fsync".to_owned())
            .spawn(move || worker.run())
            .expect("spawn the raft log fsync thread");
        Ok(LogStore {
            reader,
            unsaved_committed: None,
            jobs: Some(tx),
            worker: Some(handle),
            #[cfg(test)]
            probe,
        })
    }

    fn engine(&self) -> &Engine {
        &self.reader.engine
    }

    /// Queues a job; waits asynchronously (never blocking a tokio worker) when full.
    async fn submit(&self, job: Job) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("raft log store is closing"))?;
        jobs.send(job).await.map_err(|_| io::Error::other("raft log fsync thread has stopped"))
    }

    /// Writes `batch` (with the unsaved committed log id) and makes it durable on the
    /// fsync thread, returning once it is.
    async fn write_synced(&mut self, mut batch: WriteBatch) -> io::Result<()> {
        self.carry_committed(&mut batch);
        let (reply, done) = oneshot::channel();
        self.submit(Job::SyncWrite { batch, reply }).await?;
        done.await.map_err(|_| io::Error::other("raft log fsync thread has stopped"))?
    }

    /// Adds the committed log id openraft saved since the last write to `batch`.
    fn carry_committed(&mut self, batch: &mut WriteBatch) {
        let Some(committed) = self.unsaved_committed.take() else { return };
        let meta = self.engine().cf(cf::RAFT_META);
        match committed {
            Some(id) => batch.put_cf(meta, META_COMMITTED, codec::encode_log_id(&id)),
            None => batch.delete_cf(meta, META_COMMITTED),
        }
    }

    /// Writes `entries` in one batch, without sync: a memtable insert plus a buffered
    /// WAL append, cheap enough for the caller's task, and the entries are readable
    /// once it returns (openraft reads them back before the fsync completes).
    fn write_entries(&mut self, entries: impl IntoIterator<Item = Entry>, span: &tracing::Span) -> io::Result<()> {
        let (mut batch, mut first, mut last) = (WriteBatch::default(), None, None);
        self.carry_committed(&mut batch);
        let log_cf = self.engine().cf(cf::RAFT_LOG);
        let mut written = Vec::new();
        for entry in entries {
            first.get_or_insert(entry.log_id.index);
            last = Some(entry.log_id.index);
            let encoded = codec::encode_entry(&entry);
            batch.put_cf(log_cf, index_key(entry.log_id.index), &encoded);
            written.push((entry, encoded.len()));
        }
        span.record("first", first).record("last", last);
        self.engine().db().write_opt(batch, &WriteOptions::default()).map_err(EngineError::from)?;
        // Only once stored: the cache never holds what the log does not.
        self.reader.cache.appended(written);
        Ok(())
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish the queued jobs and exit; joining
        // releases its database handle, so the directory can be reopened at once.
        self.jobs = None;
        if let Some(handle) = self.worker.take()
            && handle.join().is_err()
        {
            tracing::error!("raft log fsync thread panicked");
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.reader.last_purged()?;
        let last = self.reader.edge_log_id(IteratorMode::End)?;
        // With every entry purged, the last log id is the last purged one.
        let last_log_id = last.or(last_purged_log_id);
        tracing::debug!(?last_purged_log_id, ?last_log_id, "raft log state");
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.engine().cf(cf::RAFT_META), META_VOTE, codec::encode_vote(vote));
        // Durable before Ok: otherwise a restarted node could vote twice in one term.
        self.write_synced(batch).instrument(tracing::debug_span!("raft_save_vote", %vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        tracing::trace!(?committed, "raft committed log id saved (written with the next log write)");
        // Kept in memory until the next append, vote, truncation or purge writes it: a WAL
        // write of its own per commit advance cost every member one RocksDB write group per
        // apply group, on openraft's core task. What the saved id is for: at start, openraft
        // re-applies the entries between the state machine's flushed `last_applied` and it.
        // A stale (or lost) one only means re-applying less at start, and the leader's next
        // commit index applies the rest (openraft takes `last_applied` when that is ahead).
        // This relies on `enable_leader_restore` being off (node/mod.rs): a leader restored
        // in its old term would take this id as its read index and miss writes it had
        // acknowledged.
        self.unsaved_committed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        match self.unsaved_committed {
            Some(committed) => Ok(committed),
            None => Ok(self.reader.committed()?),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let span = tracing::debug_span!("raft_log_append", first = tracing::field::Empty, last = tracing::field::Empty);
        span.in_scope(|| self.write_entries(entries, &span))?;
        // The fsync is the slow part: the fsync thread does it, then completes `callback`.
        self.submit(Job::Flush(callback)).instrument(span).await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.as_ref().map_or_else(Vec::new, |id| key_after(id.index));
        // Forgotten first: the cache never holds what the log does not.
        self.reader.cache.truncated_after(last_log_id.map(|id| id.index));
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.engine().cf(cf::RAFT_LOG), &from[..], &KEY_END[..]);
        // One atomic batch leaves no hole; synced so that a durable vote written later
        // can never sit beside a resurrected, un-truncated tail after a crash.
        let span = tracing::debug_span!("raft_log_truncate_after", ?last_log_id);
        self.write_synced(batch).instrument(span).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.reader.cache.purged_upto(log_id.index);
        let mut batch = WriteBatch::default();
        // last_purged and the deletion in one batch: a restart never sees entries
        // gone without knowing where the log now starts.
        batch.put_cf(self.engine().cf(cf::RAFT_META), META_LAST_PURGED, codec::encode_log_id(&log_id));
        batch.delete_range_cf(self.engine().cf(cf::RAFT_LOG), &index_key(0)[..], &key_after(log_id.index)[..]);
        self.write_synced(batch).instrument(tracing::debug_span!("raft_log_purge", %log_id)).await
    }
}

// ---- test support --------------------------------------------------------------

#[cfg(test)]
pub(crate) mod test_probe {
    //! Makes the fsync thread observable: count syncs, hold it before syncing, fail a sync.

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex};

    use crate::engine::EngineError;

    #[derive(Default)]
    pub(crate) struct FsyncProbe {
        /// fsyncs attempted so far.
        pub(crate) syncs: AtomicU64,
        /// Makes the next fsync fail.
        pub(crate) fail_next: AtomicBool,
        paused: Mutex<bool>,
        resumed: Condvar,
    }

    impl FsyncProbe {
        /// Holds the fsync thread before its next fsync until `resume`.
        pub(crate) fn pause(&self) {
            *self.paused.lock().expect("probe lock") = true;
        }

        pub(crate) fn resume(&self) {
            *self.paused.lock().expect("probe lock") = false;
            self.resumed.notify_all();
        }

        pub(super) fn before_sync(&self) -> Result<(), EngineError> {
            let paused = self.paused.lock().expect("probe lock");
            drop(self.resumed.wait_while(paused, |p| *p).expect("probe lock"));
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err(EngineError::Corrupt { what: "test", detail: "injected fsync failure".to_owned() });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
impl LogStore {
    /// A store on a fresh temporary directory (dropped with the `TempDir`).
    pub(crate) fn open_for_test() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path()).expect("open engine");
        (dir, LogStore::open(engine, Arc::new(Metrics::new())).expect("open log store"))
    }

    /// The fsync thread's probe (shared, so a test can hold it across `&mut self` calls).
    pub(crate) fn probe(&self) -> std::sync::Arc<test_probe::FsyncProbe> {
        self.probe.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bytes::Bytes;
    use openraft::EntryPayload;
    use openraft::alias::LeaderIdOf;
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::raft::codec::tests::log_id;
    use crate::raft::types::CommandBytes;

    type Done = tokio::sync::oneshot::Receiver<Result<(), io::Error>>;

    fn blank(term: u64, index: u64) -> Entry {
        Entry { log_id: log_id(term, 1, index), payload: EntryPayload::Blank }
    }

    fn normal(term: u64, index: u64) -> Entry {
        let cmd = CommandBytes(Bytes::from(format!("cmd-{index}")));
        Entry { log_id: log_id(term, 1, index), payload: EntryPayload::Normal(cmd) }
    }

    fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
        Vote { leader_id: LeaderIdOf::<TypeConfig> { term, node_id }, committed }
    }

    fn callback() -> (IOFlushed<TypeConfig>, Done) {
        let (tx, rx) = TypeConfig::oneshot();
        (IOFlushed::signal(tx), rx)
    }

    /// Appends and waits until the entries are durable.
    async fn append_durably(store: &mut LogStore, entries: Vec<Entry>) {
        let (cb, done) = callback();
        store.append(entries, cb).await.expect("append");
        done.await.expect("callback completed").expect("flushed");
    }

    async fn indexes(reader: &mut LogReader, range: impl RangeBounds<u64> + Clone + Debug + Send) -> Vec<u64> {
        let entries = reader.try_get_log_entries(range).await.expect("read");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    fn put_raw(store: &LogStore, index: u64, value: &[u8]) {
        let engine = store.engine();
        engine.db().put_cf(engine.cf(cf::RAFT_LOG), index_key(index), value).expect("put");
    }

    #[tokio::test]
    async fn append_then_read_back() {
        let (_dir, mut store) = LogStore::open_for_test();
        let entries: Vec<Entry> = (1..=10).map(|i| if i % 2 == 0 { normal(1, i) } else { blank(1, i) }).collect();
        append_durably(&mut store, entries.clone()).await;

        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(..).await.expect("read"), entries);
        assert_eq!(indexes(&mut reader, 3..6).await, vec![3, 4, 5]);
        assert_eq!(indexes(&mut reader, 3..=6).await, vec![3, 4, 5, 6]);
        assert_eq!(indexes(&mut reader, ..3).await, vec![1, 2]);
        assert_eq!(indexes(&mut reader, (Bound::Excluded(8), Bound::Unbounded)).await, vec![9, 10]);
        assert_eq!(indexes(&mut reader, 11..).await, Vec::<u64>::new());
        assert_eq!(indexes(&mut reader, 5..5).await, Vec::<u64>::new());
        assert_eq!(indexes(&mut reader, 0..=u64::MAX).await.len(), 10);
        let limited = reader.limited_get_log_entries(4, 8).await.expect("read");
        assert_eq!(limited, entries[3..7].to_vec());

        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 10)));
    }

    #[tokio::test]
    async fn empty_store_state() {
        let (_dir, mut store) = LogStore::open_for_test();
        let state = store.get_log_state().await.expect("state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
        assert_eq!(store.get_log_reader().await.read_vote().await.expect("vote"), None);
        assert_eq!(store.read_committed().await.expect("committed"), None);
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let mut store = LogStore::open(Engine::open(dir.path()).expect("engine"), Arc::default()).expect("store");
            append_durably(&mut store, (1..=10).map(|i| normal(2, i)).collect()).await;
            store.save_vote(&vote(2, 1, true)).await.expect("vote");
            store.save_committed(Some(log_id(2, 1, 8))).await.expect("committed");
            store.purge(log_id(2, 1, 3)).await.expect("purge");
        } // dropping the store joins the fsync thread and closes the database

        let mut store = LogStore::open(Engine::open(dir.path()).expect("engine"), Arc::default()).expect("reopen");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 10)));
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.read_vote().await.expect("vote"), Some(vote(2, 1, true)));
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(2, 1, 8)));
        assert_eq!(indexes(&mut reader, ..).await, (4..=10).collect::<Vec<_>>());
        assert_eq!(reader.try_get_log_entries(4..5).await.expect("read"), vec![normal(2, 4)]);

        store.save_committed(None).await.expect("clear committed");
        assert_eq!(store.read_committed().await.expect("committed"), None);
    }

    /// The committed log id costs no write of its own: it is on disk only once the
    /// next write carries it, and until then reads come from memory.
    #[tokio::test]
    async fn the_committed_log_id_rides_with_the_next_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reopen = || LogStore::open(Engine::open(dir.path()).expect("engine"), Arc::default()).expect("store");
        {
            let mut store = reopen();
            append_durably(&mut store, (1..=5).map(|i| normal(2, i)).collect()).await;
            store.save_committed(Some(log_id(2, 1, 3))).await.expect("committed");
            assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(2, 1, 3)));
        }
        let mut store = reopen();
        assert_eq!(store.read_committed().await.expect("committed"), None, "no write carried it");

        store.save_committed(Some(log_id(2, 1, 4))).await.expect("committed");
        append_durably(&mut store, vec![normal(2, 6)]).await;
        drop(store);
        let mut store = reopen();
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(2, 1, 4)), "the append carried it");

        store.save_committed(Some(log_id(2, 1, 6))).await.expect("committed");
        store.save_vote(&vote(3, 1, false)).await.expect("vote");
        drop(store);
        let mut store = reopen();
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(2, 1, 6)), "the vote carried it");
    }

    #[tokio::test]
    async fn truncate_after_removes_the_tail() {
        let (_dir, mut store) = LogStore::open_for_test();
        append_durably(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        let mut reader = store.get_log_reader().await;

        assert_eq!(indexes(&mut reader, 3..8).await, vec![3, 4, 5, 6, 7], "served by the tail cache");
        store.truncate_after(Some(log_id(1, 1, 5))).await.expect("truncate");
        assert_eq!(indexes(&mut reader, ..).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(indexes(&mut reader, 3..8).await, vec![3, 4, 5], "the cache forgot the tail too");
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(log_id(1, 1, 5)));

        // Truncating past the end is a no-op; the log can be appended to again.
        store.truncate_after(Some(log_id(1, 1, 20))).await.expect("truncate");
        append_durably(&mut store, vec![blank(2, 6)]).await;
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(log_id(2, 1, 6)));
        let read = reader.try_get_log_entries(4..7).await.expect("read");
        assert_eq!(
            read.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            vec![log_id(1, 1, 4), log_id(1, 1, 5), log_id(2, 1, 6)]
        );

        store.truncate_after(None).await.expect("truncate all");
        assert_eq!(indexes(&mut reader, ..).await, Vec::<u64>::new());
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, None);
    }

    #[tokio::test]
    async fn purge_removes_the_head_and_records_it() {
        let (_dir, mut store) = LogStore::open_for_test();
        append_durably(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        let mut reader = store.get_log_reader().await;

        assert_eq!(indexes(&mut reader, 3..7).await, vec![3, 4, 5, 6], "served by the tail cache");
        store.purge(log_id(1, 1, 4)).await.expect("purge");
        assert_eq!(indexes(&mut reader, 3..7).await, vec![5, 6], "the cache forgot the head too");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 10)));
        assert_eq!(indexes(&mut reader, 0..5).await, Vec::<u64>::new());
        assert_eq!(indexes(&mut reader, 0..100).await, (5..=10).collect::<Vec<_>>());

        // Purging beyond the last entry: the log is empty, last_log_id = last purged.
        store.purge(log_id(1, 1, 20)).await.expect("purge");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 20)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 20)));
        assert_eq!(indexes(&mut reader, ..).await, Vec::<u64>::new());
    }

    #[tokio::test]
    async fn callback_completes_only_after_fsync() {
        let (_dir, mut store) = LogStore::open_for_test();
        store.probe().pause();
        let (cb, mut done) = callback();
        store.append(vec![blank(1, 1)], cb).await.expect("append");

        // Readable at return, but not durable yet: the fsync thread is held.
        let mut reader = store.get_log_reader().await;
        assert_eq!(indexes(&mut reader, ..).await, vec![1]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(done.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)));
        assert_eq!(store.probe().syncs.load(Ordering::SeqCst), 0);

        store.probe().resume();
        done.await.expect("callback completed").expect("flushed");
        assert_eq!(store.probe().syncs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn save_vote_returns_only_after_fsync() {
        let (_dir, mut store) = LogStore::open_for_test();
        let probe = store.probe();
        probe.pause();
        let v = vote(3, 2, false);
        {
            let save = store.save_vote(&v);
            tokio::pin!(save);
            let waited = tokio::time::timeout(Duration::from_millis(50), &mut save).await;
            assert!(waited.is_err(), "save_vote returned before its fsync");
            probe.resume();
            save.await.expect("vote saved");
        }
        assert_eq!(probe.syncs.load(Ordering::SeqCst), 1);
        assert_eq!(store.get_log_reader().await.read_vote().await.expect("vote"), Some(v));
    }

    #[tokio::test]
    async fn group_commit_shares_fsyncs() {
        const APPENDS: u64 = 200;
        let (_dir, mut store) = LogStore::open_for_test();
        // Hold the thread so the appends queue up behind the first fsync.
        store.probe().pause();
        let mut pending = Vec::new();
        for i in 1..=APPENDS {
            let (cb, done) = callback();
            store.append(vec![normal(1, i)], cb).await.expect("append");
            pending.push(done);
        }
        store.probe().resume();
        for done in pending {
            done.await.expect("callback completed").expect("flushed");
        }
        let syncs = store.probe().syncs.load(Ordering::SeqCst);
        assert!(syncs < APPENDS, "{syncs} fsyncs for {APPENDS} appends");
        assert!(syncs <= 2, "all queued appends should share one fsync, got {syncs}");

        // And without holding the thread: every callback still completes.
        let mut pending = Vec::new();
        for i in APPENDS + 1..=2 * APPENDS {
            let (cb, done) = callback();
            store.append(vec![normal(1, i)], cb).await.expect("append");
            pending.push(done);
        }
        for done in pending {
            done.await.expect("callback completed").expect("flushed");
        }
        let mut reader = store.get_log_reader().await;
        assert_eq!(indexes(&mut reader, ..).await, (1..=2 * APPENDS).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn failed_fsync_fails_callbacks_and_later_writes() {
        let (_dir, mut store) = LogStore::open_for_test();
        store.probe().fail_next.store(true, Ordering::SeqCst);
        let (cb, done) = callback();
        store.append(vec![blank(1, 1)], cb).await.expect("append is written");
        assert!(done.await.expect("callback completed").is_err());

        // After a failed fsync nothing is trusted again (fsyncgate).
        assert!(store.save_vote(&vote(1, 1, false)).await.is_err());
        assert!(store.purge(log_id(1, 1, 1)).await.is_err());
        let (cb, done) = callback();
        store.append(vec![blank(1, 2)], cb).await.expect("append is written");
        assert!(done.await.expect("callback completed").is_err());
    }

    #[tokio::test]
    async fn corrupt_entries_are_errors_not_panics() {
        let (_dir, mut store) = LogStore::open_for_test();
        append_durably(&mut store, (1..=3).map(|i| blank(1, i)).collect()).await;
        let mut reader = store.get_log_reader().await;

        put_raw(&store, 5, &codec::encode_entry(&blank(1, 5)));
        let hole = reader.try_get_log_entries(..).await.expect_err("hole after 3");
        assert!(hole.to_string().contains("hole"), "{hole}");

        put_raw(&store, 4, &[0xff, 0x01]);
        assert!(reader.try_get_log_entries(..).await.is_err());

        put_raw(&store, 4, &codec::encode_entry(&blank(1, 9)));
        assert!(reader.try_get_log_entries(4..5).await.is_err(), "entry under the wrong key");

        let engine = store.engine();
        engine.db().put_cf(engine.cf(cf::RAFT_META), META_VOTE, [0xff]).expect("put");
        assert!(reader.read_vote().await.is_err());
    }

    #[tokio::test]
    async fn fsyncs_are_timed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = Arc::new(Metrics::new());
        let mut store = LogStore::open(Engine::open(dir.path()).expect("engine"), metrics.clone()).expect("store");
        append_durably(&mut store, vec![blank(1, 1)]).await;
        let text = metrics.render(&crate::metrics::Scrape::default()).expect("render");
        let count = text.lines().find_map(|l| l.strip_prefix("etcd_disk_wal_fsync_duration_seconds_count "));
        assert!(count.and_then(|c| c.parse::<u64>().ok()).is_some_and(|c| c >= 1), "{text}");
    }

    #[tokio::test]
    async fn open_rejects_corrupt_metadata() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path()).expect("engine");
        engine.db().put_cf(engine.cf(cf::RAFT_META), META_LAST_PURGED, [0xff]).expect("put");
        assert!(matches!(LogStore::open(engine, Arc::default()), Err(EngineError::Corrupt { .. })));
    }
}
