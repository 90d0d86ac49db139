//! Raft snapshots on disk: the directory that holds the current snapshot,
//! how a new one is published (temp → fsync → rename → fsync dir, older ones
//! removed), and the handle openraft passes around as snapshot data.
//!
//! A snapshot this member builds is a RocksDB checkpoint (hard links, a
//! flush), not a dump: building one every `--snapshot-count` entries costs
//! next to nothing, as etcd's does. It is dumped to a snapshot file only when
//! a follower needs it. A snapshot received from a leader stays a file.

pub mod file;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use file::{SnapshotError, SnapshotInfo};

use crate::engine::Engine;

/// An open snapshot file. It stays readable while open even if a newer
/// snapshot replaces it on disk.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Where the file was when opened.
    pub path: PathBuf,
    /// The open file, positioned at its start.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
}

impl SnapshotFile {
    /// Opens the file at `path`.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(SnapshotFile { path: path.to_path_buf(), file, size })
    }
}

/// Snapshot data as openraft passes it around.
#[derive(Debug)]
pub enum SnapshotData {
    /// A snapshot file (received from a leader, or a dumped checkpoint).
    File(SnapshotFile),
    /// A checkpoint this member built, not necessarily dumped yet.
    Checkpoint {
        /// The directory it lives in.
        dir: Arc<SnapshotDir>,
        /// The checkpoint directory.
        path: PathBuf,
    },
}

impl SnapshotData {
    /// The snapshot as a file, dumping a checkpoint first if it was not yet
    /// (blocking: a dump reads the whole state).
    pub fn into_file(self) -> Result<SnapshotFile, SnapshotError> {
        match self {
            SnapshotData::File(f) => Ok(f),
            SnapshotData::Checkpoint { dir, path } => dir.dump_checkpoint(&path),
        }
    }
}

/// The snapshot directory of one member.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    /// Serializes publishing, so a slow build cannot replace a newer install, and dumps,
    /// so a checkpoint is not removed mid-read. Taken before `entries`.
    publish: Mutex<()>,
    /// Held while the published entries change (renamed in, older ones removed) and while a
    /// reader lists them and opens the newest: without it a reader can list an entry that
    /// is gone when it opens it. Never held for long, unlike `publish`, which a dump holds
    /// for a pass over the whole state (openraft's state machine worker waits on readers).
    entries: Mutex<()>,
}

/// Suffix of snapshot files.
const SUFFIX: &str = ".snap";
/// Suffix of checkpoint directories.
const CHECKPOINT_SUFFIX: &str = ".ckpt";
/// Prefix of files and directories not yet published.
const TEMP_PREFIX: &str = "tmp-";
/// In a checkpoint directory: a snapshot file without records saying what it covers.
const CHECKPOINT_INFO: &str = "geobuk-snapshot-info";
/// In a checkpoint directory: its dump, once a follower needed it.
const CHECKPOINT_DUMP: &str = "geobuk-snapshot.snap";

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The name of a snapshot, sortable by log index.
fn snapshot_name(info: &SnapshotInfo, suffix: &str) -> String {
    match &info.last_log_id {
        Some(l) => format!("{:020}-{:020}-{:016x}{suffix}", l.index, l.leader_id.term, l.leader_id.node_id),
        None => format!("{:020}-none{suffix}", 0),
    }
}

fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)?
    } else {
        std::fs::remove_file(path)?
    }
    Ok(())
}

/// A published snapshot in the directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// A snapshot file.
    File(PathBuf),
    /// A checkpoint directory.
    Checkpoint(PathBuf),
}

/// Whether `path` is named as a published snapshot file or checkpoint.
fn is_published_name(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    !name.starts_with(TEMP_PREFIX) && (name.ends_with(SUFFIX) || name.ends_with(CHECKPOINT_SUFFIX))
}

/// What a published entry covers; `None` for names that are not snapshots.
fn read_published(path: &Path) -> Result<Option<(SnapshotInfo, Published)>, SnapshotError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.starts_with(TEMP_PREFIX) {
        return Ok(None);
    }
    if name.ends_with(SUFFIX) {
        let info = file::Reader::open(File::open(path)?)?.info;
        return Ok(Some((info, Published::File(path.to_path_buf()))));
    }
    if name.ends_with(CHECKPOINT_SUFFIX) {
        let info = file::Reader::open(File::open(path.join(CHECKPOINT_INFO))?)?.info;
        return Ok(Some((info, Published::Checkpoint(path.to_path_buf()))));
    }
    Ok(None)
}

impl SnapshotDir {
    /// Opens (creating) `dir` and removes temp files left by a crash.
    pub fn open(dir: PathBuf) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                remove_any(&entry.path())?;
            }
        }
        Ok(SnapshotDir { dir, publish: Mutex::new(()), entries: Mutex::new(()) })
    }

    /// A fresh temp path in the directory (removed at the next open if left behind).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.temp_path_with(what, SUFFIX)
    }

    /// Whether `path` is a temp path of this directory (received or being built, not published).
    pub fn is_temp(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
    }

    fn temp_path_with(&self, what: &str, suffix: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!("{TEMP_PREFIX}{what}-{}-{n}{suffix}", std::process::id()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.publish.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, ()> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest published snapshot, if any.
    pub fn current(&self) -> Result<Option<(SnapshotInfo, Published)>, SnapshotError> {
        let _entries = self.lock_entries();
        self.scan()
    }

    /// The newest published snapshot; the caller holds `entries` or `publish`.
    fn scan(&self) -> Result<Option<(SnapshotInfo, Published)>, SnapshotError> {
        let mut best: Option<(SnapshotInfo, Published)> = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let Some((info, published)) = read_published(&entry?.path())? else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| info.last_log_id > b.last_log_id) {
                best = Some((info, published));
            }
        }
        Ok(best)
    }

    /// The newest published snapshot as openraft's snapshot data.
    pub fn current_data(self: &Arc<Self>) -> Result<Option<(SnapshotInfo, SnapshotData)>, SnapshotError> {
        // Opened under the lock: once open, a file stays readable whatever replaces it.
        let _entries = self.lock_entries();
        let Some((info, published)) = self.scan()? else {
            return Ok(None);
        };
        Ok(Some((info, self.data(published)?)))
    }

    fn data(self: &Arc<Self>, published: Published) -> Result<SnapshotData, SnapshotError> {
        Ok(match published {
            Published::File(path) => SnapshotData::File(SnapshotFile::open(&path)?),
            Published::Checkpoint(path) => SnapshotData::Checkpoint { dir: self.clone(), path },
        })
    }

    /// Moves a complete, fsynced file at `temp` into place as the newest
    /// snapshot and removes the older ones. Never goes backwards: if a newer
    /// snapshot was published meanwhile, `temp` is dropped and that one is
    /// returned instead.
    pub fn publish(&self, temp: &Path, info: &SnapshotInfo) -> Result<(SnapshotInfo, Published), SnapshotError> {
        let _publish = self.lock();
        // A received snapshot replaces a built one of the same entry: the install loads it.
        self.publish_locked(temp, info, SUFFIX, true)
    }

    /// [`Self::publish`] as a file or a checkpoint; the caller holds `publish`, so the
    /// entries change only here. `replace_equal`: whether it replaces a snapshot of the same
    /// entry (else that one stays and is returned).
    fn publish_locked(
        &self,
        temp: &Path,
        info: &SnapshotInfo,
        suffix: &str,
        replace_equal: bool,
    ) -> Result<(SnapshotInfo, Published), SnapshotError> {
        if let Some((cur, published)) = self.scan()?
            && (cur.last_log_id > info.last_log_id || (!replace_equal && cur.last_log_id == info.last_log_id))
        {
            remove_any(temp)?;
            return Ok((cur, published));
        }
        let path = self.dir.join(snapshot_name(info, suffix));
        let mut replaced = Vec::new();
        {
            let _entries = self.lock_entries();
            // Older entries are renamed out of the way, which is quick, and removed after the
            // lock is released: removing a checkpoint with a large dump takes a while, and a
            // crash midway leaves a temp name, which the next open removes, rather than a
            // half-removed snapshot that every later scan would fail on.
            for entry in std::fs::read_dir(&self.dir)? {
                let other = entry?.path();
                if is_published_name(&other) {
                    let out_of_the_way = self.temp_path_with("replaced", "");
                    std::fs::rename(&other, &out_of_the_way)?;
                    replaced.push(out_of_the_way);
                }
            }
            std::fs::rename(temp, &path)?;
            sync_dir(&self.dir)?;
        }
        for old in replaced {
            remove_any(&old)?;
        }
        let published = if suffix == SUFFIX { Published::File(path) } else { Published::Checkpoint(path) };
        Ok((info.clone(), published))
    }

    /// Publishes a checkpoint of `engine`'s current state as the newest snapshot.
    pub fn build(self: &Arc<Self>, engine: &Engine) -> Result<(SnapshotInfo, SnapshotData), SnapshotError> {
        let temp = self.temp_path_with("build", CHECKPOINT_SUFFIX);
        let info = match write_checkpoint(engine, &temp) {
            Ok(info) => info,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&temp);
                return Err(e);
            }
        };
        // Under `publish`, so that a file it returns is opened before anything replaces it
        // (a checkpoint is opened later, by its dump, which fails if it was replaced).
        // Never replacing a snapshot of the same entry: a build that ran while an install
        // loaded that entry's snapshot may hold a part of it under the same last_log_id.
        let _publish = self.lock();
        let (info, published) = self.publish_locked(&temp, &info, CHECKPOINT_SUFFIX, false)?;
        Ok((info, self.data(published)?))
    }

    /// The dump of the checkpoint at `path` as a snapshot file, written the
    /// first time it is asked for. Fails if a newer snapshot replaced it.
    fn dump_checkpoint(&self, path: &Path) -> Result<SnapshotFile, SnapshotError> {
        // Under the publish lock: a newer snapshot would remove the checkpoint mid-read.
        let _guard = self.lock();
        let dump = path.join(CHECKPOINT_DUMP);
        if !dump.exists() {
            if !path.exists() {
                return Err(SnapshotError::Invalid(format!("{} was replaced by a newer snapshot", path.display())));
            }
            let temp = path.join(format!("{TEMP_PREFIX}{CHECKPOINT_DUMP}"));
            let started = std::time::Instant::now();
            let (info, size) = file::write(&Engine::open_checkpoint(path)?, &temp)?;
            std::fs::rename(&temp, &dump)?;
            sync_dir(path)?;
            tracing::info!(last_log_id = ?info.last_log_id, bytes = size, took = ?started.elapsed(), "dumped a snapshot checkpoint for a follower");
        }
        SnapshotFile::open(&dump)
    }
}

/// Writes a checkpoint of `engine` into `dir` and records what it covers.
fn write_checkpoint(engine: &Engine, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    engine.checkpoint(dir)?;
    // The checkpoint, not the live database, says which entry it covers: apply goes on meanwhile.
    let info = file::current_info(&Engine::open_checkpoint(dir)?)?;
    file::write_info(&dir.join(CHECKPOINT_INFO), &info)?;
    sync_dir(dir)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cf;
    use crate::raft::codec;
    use crate::raft::state_machine::META_LAST_APPLIED;
    use crate::raft::types::{LogId, TypeConfig};

    fn applied(engine: &Engine, index: u64) {
        let leader_id = openraft::alias::CommittedLeaderIdOf::<TypeConfig> { term: 2, node_id: 1 };
        let raw = codec::encode_log_id(&LogId { leader_id, index });
        engine.db().put_cf(engine.cf(cf::SM_META), META_LAST_APPLIED, raw).unwrap();
    }

    fn put(engine: &Engine, k: &[u8], v: &[u8]) {
        engine.db().put_cf(engine.cf(cf::KV_LATEST), k, v).unwrap();
    }

    fn get(engine: &Engine, k: &[u8]) -> Option<Vec<u8>> {
        engine.db().get_cf(engine.cf(cf::KV_LATEST), k).unwrap()
    }

    fn index(info: &SnapshotInfo) -> Option<u64> {
        info.last_log_id.as_ref().map(|l| l.index)
    }

    #[test]
    fn checkpoint_is_frozen_at_build_and_dumped_once_on_demand() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("db")).unwrap();
        put(&engine, b"k1", b"v1");
        applied(&engine, 10);
        let dir = Arc::new(SnapshotDir::open(tmp.path().join("snap")).unwrap());
        let (info, data) = dir.build(&engine).unwrap();
        assert_eq!(index(&info), Some(10));
        assert!(matches!(data, SnapshotData::Checkpoint { .. }));

        // Writes after the build are not in it.
        put(&engine, b"k2", b"v2");
        applied(&engine, 11);
        let (cur, published) = dir.current().unwrap().unwrap();
        assert_eq!(index(&cur), Some(10));
        assert!(matches!(published, Published::Checkpoint(_)));

        let file = data.into_file().unwrap();
        assert_eq!(index(&file::verify(&file.path).unwrap()), Some(10));
        let fresh = Engine::open(&tmp.path().join("fresh")).unwrap();
        file::load(&fresh, &file.path).unwrap();
        assert_eq!(get(&fresh, b"k1").as_deref(), Some(&b"v1"[..]));
        assert_eq!(get(&fresh, b"k2"), None);

        // The dump is written once and handed out again.
        let modified = std::fs::metadata(&file.path).unwrap().modified().unwrap();
        let (_, again) = dir.current_data().unwrap().unwrap();
        let again = again.into_file().unwrap();
        assert_eq!(again.path, file.path);
        assert_eq!(std::fs::metadata(&again.path).unwrap().modified().unwrap(), modified);
        assert_eq!(again.size, file.size);
    }

    /// openraft asks for the current snapshot (to send it to a follower) while apply goes on
    /// building newer ones; an error there stops the member, so a reader must never see an
    /// entry vanish between listing the directory and opening it (seen in CI as "Read
    /// Snapshot(None): No such file or directory", which stopped the leader).
    #[test]
    fn the_current_snapshot_is_readable_while_newer_ones_are_published() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("db")).unwrap();
        let dir = Arc::new(SnapshotDir::open(tmp.path().join("snap")).unwrap());
        applied(&engine, 1);
        dir.build(&engine).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (dir, stop) = (dir.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (info, _) = dir.current_data().expect("the current snapshot").expect("one is published");
                        assert!(index(&info).is_some());
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        // Checkpoints and received files in turn, as on a member that leads, then follows.
        for i in 2..60u64 {
            applied(&engine, i);
            if i % 3 == 0 {
                let temp = dir.temp_path("recv");
                let (info, _) = file::write(&engine, &temp).unwrap();
                dir.publish(&temp, &info).unwrap();
            } else {
                dir.build(&engine).unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().expect("no reader failed")).sum();
        assert!(reads > 0);
    }

    #[test]
    fn newer_snapshots_replace_older_ones_of_either_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("db")).unwrap();
        applied(&engine, 5);
        let dir = Arc::new(SnapshotDir::open(tmp.path().join("snap")).unwrap());
        let (_, first) = dir.build(&engine).unwrap();
        let SnapshotData::Checkpoint { path: first_path, .. } = first else { panic!("built a file") };

        applied(&engine, 6);
        dir.build(&engine).unwrap();
        assert!(!first_path.exists(), "the older checkpoint is removed");
        // Its handle now fails instead of reading a half-removed checkpoint.
        let stale = SnapshotData::Checkpoint { dir: dir.clone(), path: first_path };
        assert!(matches!(stale.into_file(), Err(SnapshotError::Invalid(_))));

        // A received file covering a later entry replaces the checkpoint.
        applied(&engine, 7);
        let temp = dir.temp_path("recv");
        let (info, _) = file::write(&engine, &temp).unwrap();
        let (published_info, published) = dir.publish(&temp, &info).unwrap();
        assert_eq!(index(&published_info), Some(7));
        assert!(matches!(published, Published::File(_)));
        let names: Vec<String> = std::fs::read_dir(tmp.path().join("snap"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // Nor does a build of the same entry: it may have run while an install loaded it.
        let (info, data) = dir.build(&engine).unwrap();
        assert_eq!(index(&info), Some(7));
        assert!(matches!(data, SnapshotData::File(_)), "the received file stays");

        // An older build never replaces a newer snapshot.
        applied(&engine, 3);
        let (info, data) = dir.build(&engine).unwrap();
        assert_eq!(index(&info), Some(7));
        assert!(matches!(data, SnapshotData::File(_)));

        // Unpublished leftovers of a crash are removed at open.
        std::fs::create_dir(tmp.path().join("snap").join("tmp-build-1-0.ckpt")).unwrap();
        drop(dir);
        let reopened = SnapshotDir::open(tmp.path().join("snap")).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path().join("snap")).unwrap().count(), 1);
        assert_eq!(index(&reopened.current().unwrap().unwrap().0), Some(7));
    }
}
