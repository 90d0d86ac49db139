//! Raft snapshots on disk: the directory that holds the current snapshot
//! file, how a new one is published (temp file → fsync → rename → fsync dir,
//! older ones removed), and the handle openraft passes around as snapshot data.

pub mod file;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use file::{SnapshotError, SnapshotInfo};

use crate::engine::Engine;

/// Snapshot data as openraft sees it: an open snapshot file. The file stays
/// readable while open even if a newer snapshot replaces it on disk.
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

/// The snapshot directory of one member.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    /// Serializes publishing, so a slow build cannot replace a newer install.
    publish: Mutex<()>,
}

const SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = "tmp-";

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The file name of a snapshot: sortable by log index.
fn file_name(info: &SnapshotInfo) -> String {
    match &info.last_log_id {
        Some(l) => format!("{:020}-{:020}-{:016x}{SUFFIX}", l.index, l.leader_id.term, l.leader_id.node_id),
        None => format!("{:020}-none{SUFFIX}", 0),
    }
}

impl SnapshotDir {
    /// Opens (creating) `dir` and removes temp files left by a crash.
    pub fn open(dir: PathBuf) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(SnapshotDir { dir, publish: Mutex::new(()) })
    }

    /// A fresh temp path in the directory (removed at the next open if left behind).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!("{TEMP_PREFIX}{what}-{}-{n}{SUFFIX}", std::process::id()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.publish.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest published snapshot, if any.
    pub fn current(&self) -> Result<Option<(SnapshotInfo, PathBuf)>, SnapshotError> {
        let mut best: Option<(SnapshotInfo, PathBuf)> = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !name.ends_with(SUFFIX) || name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let info = file::Reader::open(File::open(&path)?)?.info;
            if best.as_ref().is_none_or(|(b, _)| info.last_log_id > b.last_log_id) {
                best = Some((info, path));
            }
        }
        Ok(best)
    }

    /// Moves a complete, fsynced file at `temp` into place as the newest
    /// snapshot and removes the older ones. Never goes backwards: if a newer
    /// snapshot was published meanwhile, `temp` is dropped and that one is
    /// returned instead.
    pub fn publish(&self, temp: &Path, info: &SnapshotInfo) -> Result<(SnapshotInfo, PathBuf), SnapshotError> {
        let _guard = self.lock();
        if let Some((cur, cur_path)) = self.current()?
            && cur.last_log_id > info.last_log_id
        {
            std::fs::remove_file(temp)?;
            return Ok((cur, cur_path));
        }
        let path = self.dir.join(file_name(info));
        std::fs::rename(temp, &path)?;
        sync_dir(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let other = entry?.path();
            let name = other.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if other != path && name.ends_with(SUFFIX) && !name.starts_with(TEMP_PREFIX) {
                std::fs::remove_file(&other)?;
            }
        }
        Ok((info.clone(), path))
    }

    /// Dumps the state machine into a new published snapshot.
    pub fn build(&self, engine: &Engine) -> Result<(SnapshotInfo, SnapshotFile), SnapshotError> {
        let temp = self.temp_path("build");
        let (info, _) = match file::write(engine, &temp) {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let (info, path) = self.publish(&temp, &info)?;
        Ok((info, SnapshotFile::open(&path)?))
    }
}
