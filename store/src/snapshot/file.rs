//! The snapshot file: a consistent dump of the state machine's column
//! families, written from a RocksDB snapshot and read back record by record,
//! so neither side ever holds the whole state in memory. The layout is an
//! on-disk and on-wire contract (see `SnapshotFileHeader` in raftlog.proto).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use prost::Message;

use crate::engine::{Engine, cf};
use crate::mvcc;
use crate::proto::raftlog as pb;
use crate::raft::codec;
use crate::raft::types::{LogId, StoredMembership};

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"GBKSNAP1";
/// The only format version written so far.
const FORMAT: u32 = 1;
/// Marks the end of the records.
const END_TAG: u8 = 0xFF;
/// Largest header accepted (it holds the membership only).
const HEADER_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Largest key or value accepted from a file (far above etcd's 1.5 MiB request limit).
const FIELD_BYTES_MAX: u32 = 256 * 1024 * 1024;
/// Buffer of the file writer and reader.
const IO_BUFFER_BYTES: usize = 1024 * 1024;
/// Records are loaded in write batches of about this size.
const LOAD_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Errors reading or writing a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File I/O failed.
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    /// RocksDB failed.
    #[error("snapshot storage: {0}")]
    Engine(#[from] crate::engine::EngineError),
    /// The file is not a valid snapshot.
    #[error("invalid snapshot file: {0}")]
    Invalid(String),
}

impl From<rocksdb::Error> for SnapshotError {
    fn from(e: rocksdb::Error) -> Self {
        SnapshotError::Engine(e.into())
    }
}

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    /// The last log entry applied to the dumped state.
    pub last_log_id: Option<LogId>,
    /// The membership at that point.
    pub last_membership: StoredMembership,
    /// The store revision of the dumped state.
    pub revision: i64,
}

/// A writer that keeps the running CRC-32 of everything written.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn invalid(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(msg.into())
}

/// What the state of `engine` covers, as of `snap`.
fn read_info(engine: &Engine, snap: &rocksdb::Snapshot<'_>) -> Result<SnapshotInfo, SnapshotError> {
    let meta_cf = engine.cf(cf::SM_META);
    let last_log_id = match snap.get_cf(meta_cf, crate::raft::state_machine::META_LAST_APPLIED)? {
        Some(raw) => Some(codec::decode_log_id(&raw).map_err(|e| invalid(e.to_string()))?),
        None => None,
    };
    let last_membership = match snap.get_cf(meta_cf, crate::raft::state_machine::META_MEMBERSHIP)? {
        Some(raw) => codec::decode_stored_membership(&raw).map_err(|e| invalid(e.to_string()))?,
        None => StoredMembership::default(),
    };
    let revision = match snap.get_cf(meta_cf, mvcc::META_REVISION)? {
        Some(raw) => mvcc::decode_i64(&raw)?,
        None => 0,
    };
    Ok(SnapshotInfo { last_log_id, last_membership, revision })
}

/// Creates `path` and writes the magic and header describing `info`.
fn create_with_header(path: &Path, info: &SnapshotInfo) -> Result<CrcWriter<BufWriter<File>>, SnapshotError> {
    let header = pb::SnapshotFileHeader {
        format: FORMAT,
        last_log_id: info.last_log_id.as_ref().map(codec::log_id_to_pb),
        last_membership: Some(codec::stored_membership_to_pb(&info.last_membership)),
        column_families: cf::STATE_MACHINE.iter().map(|s| s.to_string()).collect(),
        revision: info.revision,
    };
    let file = File::create(path)?;
    let mut out = CrcWriter { inner: BufWriter::with_capacity(IO_BUFFER_BYTES, file), crc: crc32fast::Hasher::new() };
    out.write_all(MAGIC)?;
    let header = header.encode_to_vec();
    out.write_all(&(header.len() as u32).to_be_bytes())?;
    out.write_all(&header)?;
    Ok(out)
}

/// Ends the records with the end tag and checksum, and fsyncs. Returns the file's size.
fn finish(mut out: CrcWriter<BufWriter<File>>) -> Result<u64, SnapshotError> {
    out.write_all(&[END_TAG])?;
    let crc = out.crc.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&crc.to_be_bytes())?;
    let file = inner.into_inner().map_err(|e| SnapshotError::Io(e.into_error()))?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Writes a snapshot file with `info`'s header and no records, fsynced: how a
/// checkpoint records what it covers, readable with [`Reader`].
pub fn write_info(path: &Path, info: &SnapshotInfo) -> Result<(), SnapshotError> {
    finish(create_with_header(path, info)?)?;
    Ok(())
}

/// What the state of `engine` covers now.
pub fn current_info(engine: &Engine) -> Result<SnapshotInfo, SnapshotError> {
    read_info(engine, &engine.db().snapshot())
}

/// Dumps the state machine of `engine`, as of one RocksDB snapshot, into a
/// new file at `path`, fsynced. Returns what it covers and its size.
pub fn write(engine: &Engine, path: &Path) -> Result<(SnapshotInfo, u64), SnapshotError> {
    let db = engine.db();
    let snap = db.snapshot();
    let info = read_info(engine, &snap)?;
    let mut out = create_with_header(path, &info)?;
    for (index, name) in cf::STATE_MACHINE.iter().enumerate() {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&snap);
        opts.fill_cache(false);
        for item in db.iterator_cf_opt(engine.cf(name), opts, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            out.write_all(&[index as u8])?;
            out.write_all(&(k.len() as u32).to_be_bytes())?;
            out.write_all(&k)?;
            out.write_all(&(v.len() as u32).to_be_bytes())?;
            out.write_all(&v)?;
        }
    }
    let size = finish(out)?;
    Ok((info, size))
}

/// A reader that keeps the running CRC-32 and SHA-256 of everything read.
struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    sha: sha2::Sha256,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        sha2::Digest::update(&mut self.sha, &buf[..n]);
        Ok(n)
    }
}

/// Bytes of the SHA-256 a backup stream ends with (etcd appends one, and
/// etcdctl refuses a backup without it).
pub const BACKUP_DIGEST_BYTES: usize = 32;
/// etcdctl finds the digest only after a multiple of this many bytes (bbolt's
/// page size), so a backup is zero-padded to it before the digest.
pub const BACKUP_ALIGN_BYTES: u64 = 512;

/// Zero bytes that pad a file of `size` bytes to [`BACKUP_ALIGN_BYTES`].
pub fn backup_padding(size: u64) -> u64 {
    (BACKUP_ALIGN_BYTES - size % BACKUP_ALIGN_BYTES) % BACKUP_ALIGN_BYTES
}

/// One record: (column family, key, value).
pub type Record<'a> = (&'a str, Vec<u8>, Vec<u8>);

/// Sequential access to a snapshot file's header and records.
pub struct Reader {
    input: CrcReader<BufReader<File>>,
    /// What the snapshot covers.
    pub info: SnapshotInfo,
    column_families: Vec<String>,
    done: bool,
}

fn read_u32(r: &mut impl Read) -> Result<u32, SnapshotError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(u32::from_be_bytes(b))
}

fn truncated(e: io::Error) -> SnapshotError {
    if e.kind() == io::ErrorKind::UnexpectedEof { invalid("file is truncated") } else { SnapshotError::Io(e) }
}

fn read_field(r: &mut impl Read, what: &str) -> Result<Vec<u8>, SnapshotError> {
    let len = read_u32(r)?;
    if len > FIELD_BYTES_MAX {
        return Err(invalid(format!("{what} of {len} bytes exceeds the limit")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(truncated)?;
    Ok(buf)
}

impl Reader {
    /// Opens `file` and reads its header.
    pub fn open(file: File) -> Result<Self, SnapshotError> {
        let inner = BufReader::with_capacity(IO_BUFFER_BYTES, file);
        let mut input = CrcReader { inner, crc: crc32fast::Hasher::new(), sha: sha2::Sha256::default() };
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(truncated)?;
        if &magic != MAGIC {
            return Err(invalid("not a geobuk snapshot (bad magic)"));
        }
        let len = read_u32(&mut input)?;
        if len > HEADER_BYTES_MAX {
            return Err(invalid(format!("header of {len} bytes exceeds the limit")));
        }
        let mut raw = vec![0u8; len as usize];
        input.read_exact(&mut raw).map_err(truncated)?;
        let header = pb::SnapshotFileHeader::decode(raw.as_slice()).map_err(|e| invalid(e.to_string()))?;
        if header.format != FORMAT {
            return Err(invalid(format!("unsupported snapshot format {}", header.format)));
        }
        for name in &header.column_families {
            if !cf::STATE_MACHINE.contains(&name.as_str()) {
                return Err(invalid(format!("unknown column family {name:?}")));
            }
        }
        let last_membership = match header.last_membership {
            Some(m) => codec::stored_membership_from_pb(m).map_err(|e| invalid(e.to_string()))?,
            None => StoredMembership::default(),
        };
        let info = SnapshotInfo {
            last_log_id: header.last_log_id.as_ref().map(codec::log_id_from_pb),
            last_membership,
            revision: header.revision,
        };
        Ok(Reader { input, info, column_families: header.column_families, done: false })
    }

    /// The next record as (column family, key, value); `None` after the last
    /// one, once the checksum has been verified.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag).map_err(truncated)?;
        if tag[0] == END_TAG {
            let expected = self.input.crc.clone().finalize();
            let mut b = [0u8; 4];
            self.input.read_exact(&mut b).map_err(truncated)?;
            if u32::from_be_bytes(b) != expected {
                return Err(invalid("checksum mismatch"));
            }
            self.check_backup_trailer()?;
            self.done = true;
            return Ok(None);
        }
        let name = self
            .column_families
            .get(usize::from(tag[0]))
            .ok_or_else(|| invalid(format!("record tag {} names no column family", tag[0])))?;
        let key = read_field(&mut self.input, "key")?;
        let value = read_field(&mut self.input, "value")?;
        Ok(Some((name.as_str(), key, value)))
    }
}

impl Reader {
    /// A backup continues with zero padding and the SHA-256 of all bytes
    /// before it; a Raft snapshot ends at the checksum.
    fn check_backup_trailer(&mut self) -> Result<(), SnapshotError> {
        let mut rest = Vec::new();
        let most = BACKUP_ALIGN_BYTES + BACKUP_DIGEST_BYTES as u64;
        (&mut self.input.inner).take(most + 1).read_to_end(&mut rest)?;
        if rest.is_empty() {
            return Ok(());
        }
        let bad = || invalid("trailing bytes after the checksum are not a backup's padding and SHA-256");
        let split = rest.len().checked_sub(BACKUP_DIGEST_BYTES).ok_or_else(bad)?;
        let (padding, digest) = rest.split_at(split);
        if padding.len() as u64 >= BACKUP_ALIGN_BYTES || padding.iter().any(|b| *b != 0) {
            return Err(bad());
        }
        let mut sha = self.input.sha.clone();
        sha2::Digest::update(&mut sha, padding);
        if sha2::Digest::finalize(sha).as_slice() != digest {
            return Err(invalid("backup SHA-256 mismatch"));
        }
        Ok(())
    }
}

/// Reads a whole file once to check its structure and checksum.
pub fn verify(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let mut reader = Reader::open(File::open(path)?)?;
    while reader.next_record()?.is_some() {}
    Ok(reader.info)
}

/// Replaces the state machine column families of `engine` with the records
/// of the snapshot at `path` (verified first), then flushes them (they are written
/// unlogged, as apply's writes). Not atomic: the caller records the install in progress
/// so a crash redoes it.
pub fn load(engine: &Engine, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    verify(path)?;
    for name in cf::STATE_MACHINE {
        engine.clear_cf(name)?;
    }
    let mut reader = Reader::open(File::open(path)?)?;
    let mut batch = rocksdb::WriteBatch::default();
    while let Some((name, key, value)) = reader.next_record()? {
        batch.put_cf(engine.cf(name), key, value);
        if batch.size_in_bytes() >= LOAD_BATCH_BYTES {
            engine.write_unlogged(std::mem::take(&mut batch))?;
        }
    }
    engine.write_unlogged(batch)?;
    engine.flush_all()?;
    Ok(reader.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(engine: &Engine, name: &str, k: &[u8], v: &[u8]) {
        engine.db().put_cf(engine.cf(name), k, v).unwrap();
    }

    #[test]
    fn round_trip_replaces_state_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let a = Engine::open(&dir.path().join("a")).unwrap();
        put(&a, cf::KV_LATEST, b"k1", b"v1");
        put(&a, cf::KV_HISTORY, b"h", &[0u8; 3000]);
        put(&a, cf::LEASE, b"l", b"t");
        put(&a, cf::RAFT_LOG, b"not-in-snapshot", b"x");
        let path = dir.path().join("s.snap");
        let (info, size) = write(&a, &path).unwrap();
        assert_eq!(info.last_log_id, None);
        assert!(size > 3000);

        let b = Engine::open(&dir.path().join("b")).unwrap();
        put(&b, cf::KV_LATEST, b"stale", b"gone");
        put(&b, cf::RAFT_LOG, b"kept", b"y");
        load(&b, &path).unwrap();
        let get = |e: &Engine, name: &str, k: &[u8]| e.db().get_cf(e.cf(name), k).unwrap();
        assert_eq!(get(&b, cf::KV_LATEST, b"k1").as_deref(), Some(&b"v1"[..]));
        assert_eq!(get(&b, cf::KV_LATEST, b"stale"), None);
        assert_eq!(get(&b, cf::LEASE, b"l").as_deref(), Some(&b"t"[..]));
        assert_eq!(get(&b, cf::RAFT_LOG, b"kept").as_deref(), Some(&b"y"[..]));
        assert_eq!(get(&b, cf::RAFT_LOG, b"not-in-snapshot"), None);

        let mut bytes = std::fs::read(&path).unwrap();
        // A backup's trailing SHA-256 is accepted; any other trailer is not.
        let mut backup = bytes.clone();
        backup.resize(backup.len() + backup_padding(backup.len() as u64) as usize, 0);
        assert_eq!(backup.len() % 512, 0);
        backup.extend_from_slice(&sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&backup)));
        let with_digest = dir.path().join("backup.snap");
        std::fs::write(&with_digest, &backup).unwrap();
        verify(&with_digest).unwrap();
        let last = backup.len() - 1;
        backup[last] ^= 1;
        std::fs::write(&with_digest, &backup).unwrap();
        assert!(matches!(verify(&with_digest), Err(SnapshotError::Invalid(_))));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        let bad = dir.path().join("bad.snap");
        std::fs::write(&bad, &bytes).unwrap();
        assert!(matches!(verify(&bad), Err(SnapshotError::Invalid(_))));
        std::fs::write(&bad, &bytes[..mid]).unwrap();
        assert!(matches!(verify(&bad), Err(SnapshotError::Invalid(_))));
        std::fs::write(&bad, b"GBKSNAP1\xff\xff\xff\xff").unwrap();
        assert!(matches!(verify(&bad), Err(SnapshotError::Invalid(_))));
        // A failed verify leaves the target untouched.
        assert!(load(&b, &bad).is_err());
        assert_eq!(get(&b, cf::KV_LATEST, b"k1").as_deref(), Some(&b"v1"[..]));
    }
}
