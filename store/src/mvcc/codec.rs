//! The on-disk encoding of MVCC records and keys. This is a compatibility
//! contract: the golden tests at the bottom fail on any change of layout.
//!
//! - `kv_changes`: `be(revision) ‖ be(sub)` → [`ChangeView`]: every change,
//!   put or tombstone, keyed by its revision, found through the in-memory key
//!   index (`key_index`). A put appends in the column family's key order.
//! - `lease_keys`: `be(lease) ‖ key` → empty.
//!
//! The first layout, still read to convert a store (`upgrade`):
//! - `kv_latest`: user key → [`Record`] of the live version (only there).
//! - `kv_history`: `escape(key) ‖ 00 01 ‖ be(!mod_revision)` → [`Record`] of
//!   every superseded version and every tombstone (stores written before
//!   live versions left it also hold a copy of the live version: identical).
//! - `kv_revs`: `be(revision) ‖ be(sub)` → user key, the revision-ordered log.

use bytes::Bytes;

use crate::engine::EngineError;

/// Layout version stored in the first byte of every record.
const RECORD_FORMAT_V1: u8 = 1;
const FLAG_TOMBSTONE: u8 = 1;
const RECORD_HEADER_LEN: usize = 2 + 8 * 4;

/// One version of a key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// True for the deletion that ends a generation.
    pub tombstone: bool,
    /// Revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// Revision of this change.
    pub mod_revision: i64,
    /// Puts in this generation (0 for a tombstone).
    pub version: i64,
    /// Attached lease (0 for none).
    pub lease: i64,
    /// The value (empty for a tombstone).
    pub value: Bytes,
}

impl Record {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + self.value.len());
        out.push(RECORD_FORMAT_V1);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        for n in [self.create_revision, self.mod_revision, self.version, self.lease] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a record; `raw` is copied once into shared bytes.
    pub fn decode(raw: &[u8]) -> Result<Self, EngineError> {
        if raw.len() < RECORD_HEADER_LEN || raw[0] != RECORD_FORMAT_V1 {
            return Err(corrupt("mvcc record", format!("{} bytes, format {:?}", raw.len(), raw.first())));
        }
        let n = |i: usize| {
            let at = 2 + 8 * i;
            i64::from_be_bytes(raw[at..at + 8].try_into().expect("8-byte slice"))
        };
        Ok(Record {
            tombstone: raw[1] & FLAG_TOMBSTONE != 0,
            create_revision: n(0),
            mod_revision: n(1),
            version: n(2),
            lease: n(3),
            value: Bytes::copy_from_slice(&raw[RECORD_HEADER_LEN..]),
        })
    }
}

/// The mod revision of an encoded record, without decoding the value.
pub fn record_mod_revision(raw: &[u8]) -> Result<i64, EngineError> {
    match raw.get(10..18) {
        Some(b) if raw[0] == RECORD_FORMAT_V1 && raw.len() >= RECORD_HEADER_LEN => {
            Ok(i64::from_be_bytes(b.try_into().expect("8-byte slice")))
        }
        _ => Err(corrupt("mvcc record", format!("{} bytes, format {:?}", raw.len(), raw.first()))),
    }
}

/// Whether an encoded record is a tombstone, without decoding it (a malformed
/// record reads as live and fails when decoded).
pub fn is_tombstone(raw: &[u8]) -> bool {
    raw.get(1).is_some_and(|flags| flags & FLAG_TOMBSTONE != 0)
}

fn corrupt(what: &'static str, detail: String) -> EngineError {
    EngineError::Corrupt { what, detail }
}

/// The order-preserving encoding of a user key used as the `kv_history` prefix.
pub fn escape_key(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// `kv_history` key of `key` at `revision`.
pub fn history_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    escape_key(key, &mut out);
    out.extend_from_slice(&(!(revision as u64)).to_be_bytes());
    out
}

/// The first `kv_history` key after every version of `key`.
pub fn history_key_after_all(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    escape_key(key, &mut out);
    out.extend_from_slice(&[0xFF; 8]);
    out
}

/// Splits a `kv_history` key into the user key and the revision.
pub fn decode_history_key(raw: &[u8]) -> Result<(Vec<u8>, i64), EngineError> {
    let mut key = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i + 1 < raw.len() {
        match (raw[i], raw[i + 1]) {
            (0, 0xFF) => {
                key.push(0);
                i += 2;
            }
            (0, 1) => {
                let rest = &raw[i + 2..];
                let inv: [u8; 8] =
                    rest.try_into().map_err(|_| corrupt("history key", format!("{} revision bytes", rest.len())))?;
                return Ok((key, !u64::from_be_bytes(inv) as i64));
            }
            (0, b) => return Err(corrupt("history key", format!("bad escape 00 {b:02x}"))),
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    Err(corrupt("history key", "no terminator".into()))
}

/// `kv_revs` key of change number `sub` in revision `revision`.
pub fn revs_key(revision: i64, sub: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

/// Splits a `kv_revs` key into revision and sub.
pub fn decode_revs_key(raw: &[u8]) -> Result<(i64, u32), EngineError> {
    if raw.len() != 12 {
        return Err(corrupt("revision key", format!("{} bytes", raw.len())));
    }
    let rev = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes")) as i64;
    let sub = u32::from_be_bytes(raw[8..].try_into().expect("4 bytes"));
    Ok((rev, sub))
}

/// Layout version in the first byte of every `kv_changes` value.
const CHANGE_FORMAT_V2: u8 = 2;
/// format, flags, create revision, version, lease, key length.
const CHANGE_HEADER_LEN: usize = 2 + 8 * 3 + 4;

/// One `kv_changes` value, borrowed from the stored bytes: a put's or a
/// tombstone's key, metadata and value. Its mod revision is the record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeView<'a> {
    /// The user key.
    pub key: &'a [u8],
    /// True for the deletion that ends a generation.
    pub tombstone: bool,
    /// Revision of the put that created the generation (0 for a tombstone).
    pub create_revision: i64,
    /// Puts in the generation (0 for a tombstone).
    pub version: i64,
    /// Attached lease (0 for none).
    pub lease: i64,
    /// The value (empty for a tombstone).
    pub value: &'a [u8],
}

impl<'a> ChangeView<'a> {
    /// The change of `key` that `record` describes.
    pub fn of(key: &'a [u8], record: &'a Record) -> Self {
        ChangeView {
            key,
            tombstone: record.tombstone,
            create_revision: record.create_revision,
            version: record.version,
            lease: record.lease,
            value: &record.value,
        }
    }

    /// Encodes the change as a `kv_changes` value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHANGE_HEADER_LEN + self.key.len() + self.value.len());
        out.push(CHANGE_FORMAT_V2);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        for n in [self.create_revision, self.version, self.lease] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        let key_len = u32::try_from(self.key.len()).expect("keys are limited far below 4 GiB");
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
        out
    }

    /// Parses a `kv_changes` value without copying it.
    pub fn parse(raw: &'a [u8]) -> Result<Self, EngineError> {
        let bad = || corrupt("mvcc change", format!("{} bytes, format {:?}", raw.len(), raw.first()));
        if raw.len() < CHANGE_HEADER_LEN || raw[0] != CHANGE_FORMAT_V2 {
            return Err(bad());
        }
        let n = |i: usize| {
            let at = 2 + 8 * i;
            i64::from_be_bytes(raw[at..at + 8].try_into().expect("8-byte slice"))
        };
        let key_len = u32::from_be_bytes(raw[26..30].try_into().expect("4-byte slice")) as usize;
        let rest = &raw[CHANGE_HEADER_LEN..];
        if rest.len() < key_len {
            return Err(bad());
        }
        let (key, value) = rest.split_at(key_len);
        Ok(ChangeView {
            key,
            tombstone: raw[1] & FLAG_TOMBSTONE != 0,
            create_revision: n(0),
            version: n(1),
            lease: n(2),
            value,
        })
    }

    /// The change as an owned record with its revision.
    pub fn to_record(&self, mod_revision: i64) -> Record {
        Record {
            tombstone: self.tombstone,
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            lease: self.lease,
            value: Bytes::copy_from_slice(self.value),
        }
    }
}

/// `lease_keys` key attaching `key` to `lease`.
pub fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&(lease as u64).to_be_bytes());
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn record_layout_is_stable() {
        let r = sample_record();
        assert_eq!(hex(&r.encode()), "0100000000000000000200000000000000050000000000000003000000000000000776");
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert_eq!(record_mod_revision(&r.encode()).unwrap(), 5);
        let t = Record { tombstone: true, version: 0, value: Bytes::new(), ..r };
        assert_eq!(Record::decode(&t.encode()).unwrap(), t);
    }

    /// A put of value `v`: created at 2, written at 5, version 3, lease 7.
    fn sample_record() -> Record {
        Record {
            tombstone: false,
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 7,
            value: Bytes::from_static(b"v"),
        }
    }

    #[test]
    fn change_layout_is_stable() {
        let r = sample_record();
        let raw = ChangeView::of(b"k\x00", &r).encode();
        assert_eq!(hex(&raw), "0200000000000000000200000000000000030000000000000007000000026b0076");
        let view = ChangeView::parse(&raw).unwrap();
        assert_eq!((view.key, view.value), (&b"k\x00"[..], &b"v"[..]));
        assert_eq!(view.to_record(5), r);
        let t = Record { tombstone: true, create_revision: 0, version: 0, lease: 0, value: Bytes::new(), ..r };
        let raw = ChangeView::of(b"k", &t).encode();
        assert_eq!(hex(&raw), "0201000000000000000000000000000000000000000000000000000000016b");
        assert_eq!(ChangeView::parse(&raw).unwrap().to_record(5), t);
    }

    #[test]
    fn key_layouts_are_stable() {
        assert_eq!(hex(&history_key(b"a\x00b", 2)), "6100ff620001fffffffffffffffd");
        assert_eq!(hex(&revs_key(2, 1)), "000000000000000200000001");
        assert_eq!(hex(&lease_key(9, b"k")), "00000000000000096b");
    }

    #[test]
    fn history_keys_sort_by_user_key_then_newest_first() {
        let keys: [&[u8]; 5] = [b"", b"a", b"a\x00", b"a\x00\x00", b"ab"];
        let mut enc: Vec<Vec<u8>> = Vec::new();
        for k in keys {
            enc.push(history_key(k, 9));
            enc.push(history_key(k, 3));
        }
        let mut sorted = enc.clone();
        sorted.sort();
        assert_eq!(sorted, enc);
        for k in keys {
            assert!(history_key(k, 1) < history_key_after_all(k));
            assert_eq!(decode_history_key(&history_key(k, 42)).unwrap(), (k.to_vec(), 42));
        }
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        assert!(Record::decode(&[1, 0, 0]).is_err());
        assert!(Record::decode(&[9; 40]).is_err());
        assert!(record_mod_revision(&[1, 0, 0]).is_err());
        assert!(record_mod_revision(&[9; 40]).is_err());
        assert!(decode_history_key(b"abc").is_err());
        assert!(decode_history_key(&[0, 1, 2]).is_err());
        assert!(decode_history_key(&[0, 7]).is_err());
        assert!(decode_revs_key(&[1, 2]).is_err());
        assert!(ChangeView::parse(&[2, 0, 0]).is_err());
        assert!(ChangeView::parse(&[1; 40]).is_err());
        let mut long_key = [0u8; 31];
        long_key[0] = 2;
        long_key[26..30].copy_from_slice(&2u32.to_be_bytes());
        assert!(ChangeView::parse(&long_key).is_err(), "key length past the end");
        long_key[29] = 1;
        assert!(ChangeView::parse(&long_key).is_ok());
    }
}
