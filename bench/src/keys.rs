//! Keys and values as etcd's benchmark makes them, so the same flags write the same data:
//! a key is its index as a Go `binary.PutVarint` in a zeroed `key_size`-byte buffer.

use rand::Rng;

/// The bytes of Go's `binary.PutVarint(index)`: zigzag, then base-128 little-endian.
fn varint(index: u64) -> Vec<u8> {
    // Zigzag of a non-negative int64 is a left shift; indexes stay below 2^63.
    let mut rest = index << 1;
    let mut out = Vec::with_capacity(10);
    while rest >= 0x80 {
        out.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
    out
}

/// How many bytes index `index`'s varint takes: the smallest `--key-size` that keeps keys apart.
pub fn varint_len(index: u64) -> usize {
    varint(index).len()
}

/// The key of `index` in a key space of `key_size`-byte keys. `key_size` must be at least
/// `varint_len(index)` (options validation checks it for the largest index).
pub fn key(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = vec![0u8; key_size];
    let v = varint(index);
    let n = v.len().min(key_size);
    key[..n].copy_from_slice(&v[..n]);
    key
}

/// `n` random bytes (etcd's `mustRandBytes`).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill(&mut bytes[..]);
    bytes
}

/// `n` random ASCII letters and digits: readable keys for the watch runs.
pub fn random_alphanumeric(n: usize) -> String {
    rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(n).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_gos_putvarint() {
        // Go: b := make([]byte, 8); binary.PutVarint(b, 0 / 1 / 64 / 300)
        assert_eq!(key(0, 8), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(key(1, 8), [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(key(63, 4), [126, 0, 0, 0]);
        assert_eq!(key(64, 4), [0x80, 0x01, 0, 0]);
        assert_eq!(key(300, 4), [0xd8, 0x04, 0, 0]);
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
    }

    #[test]
    fn distinct_indexes_give_distinct_keys() {
        let keys: std::collections::HashSet<Vec<u8>> = (0..10_000).map(|i| key(i, 3)).collect();
        assert_eq!(keys.len(), 10_000);
    }

    #[test]
    fn random_data_has_the_asked_length() {
        assert_eq!(random_bytes(256).len(), 256);
        let s = random_alphanumeric(32);
        assert_eq!(s.len(), 32);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
