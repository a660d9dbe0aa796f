//! Order-preserving key encodings: byte order of the encoding = numeric order.
//!
//! Everything is big-endian; signed integers have their sign bit flipped so that
//! negative values (e.g. epoch millis before 1970) sort before positive ones.

/// `v` as 4 big-endian bytes.
pub fn u32_be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// `v` as 8 big-endian bytes.
pub fn u64_be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// `v` as 8 bytes whose unsigned byte order is `v`'s signed order (`i64::MIN` →
/// `00…00`, `-1` → `7f ff…ff`, `0` → `80 00…00`, `i64::MAX` → `ff…ff`).
pub fn i64_ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// Decodes [`u32_be`]; `None` unless `b` is exactly 4 bytes.
pub fn decode_u32_be(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// Decodes [`u64_be`]; `None` unless `b` is exactly 8 bytes.
pub fn decode_u64_be(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Decodes [`i64_ordered`]; `None` unless `b` is exactly 8 bytes.
pub fn decode_i64_ordered(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// `partition` (4 bytes BE) followed by `rest`: keeps each partition's keys contiguous,
/// so a partition can be scanned or dropped as one range.
pub fn prefixed(partition: u32, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + rest.len());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

/// Splits a [`prefixed`] key into its partition and the rest; `None` if shorter than 4.
pub fn split_prefixed(key: &[u8]) -> Option<(u32, &[u8])> {
    let (p, rest) = key.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*p), rest))
}

/// The smallest key greater than every key starting with `prefix` — the exclusive end
/// of a prefix scan or range delete. `None` when no such key exists (`prefix` empty or
/// all `0xff`): scan to the end of the column family instead.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `[start, end)` of partition `partition`'s [`prefixed`] keys (end `None` only for
/// `u32::MAX`).
pub fn partition_range(partition: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = partition.to_be_bytes().to_vec();
    let end = prefix_end(&start);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_sorted<T: Ord + Copy + std::fmt::Debug, const N: usize>(
        values: &[T],
        enc: impl Fn(T) -> [u8; N],
    ) {
        for w in values.windows(2) {
            assert!(w[0] < w[1], "test values must be increasing");
            assert!(enc(w[0]) < enc(w[1]), "{:?} vs {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn i64_order_and_round_trip() {
        let vals = [
            i64::MIN,
            i64::MIN + 1,
            -1_732_000_000_000,
            -256,
            -255,
            -1,
            0,
            1,
            255,
            256,
            1_732_000_000_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        assert_sorted(&vals, i64_ordered);
        for v in vals {
            assert_eq!(decode_i64_ordered(&i64_ordered(v)), Some(v));
        }
        assert_eq!(i64_ordered(i64::MIN), [0; 8]);
        assert_eq!(i64_ordered(i64::MAX), [0xff; 8]);
        assert_eq!(i64_ordered(0), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn unsigned_order_and_round_trip() {
        let v32 = [0, 1, 255, 256, 65_535, 65_536, u32::MAX - 1, u32::MAX];
        assert_sorted(&v32, u32_be);
        for v in v32 {
            assert_eq!(decode_u32_be(&u32_be(v)), Some(v));
        }
        let v64 = [
            0,
            1,
            255,
            256,
            u64::from(u32::MAX) + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        assert_sorted(&v64, u64_be);
        for v in v64 {
            assert_eq!(decode_u64_be(&u64_be(v)), Some(v));
        }
    }

    #[test]
    fn decoders_reject_wrong_lengths() {
        assert_eq!(decode_u32_be(&[1, 2, 3]), None);
        assert_eq!(decode_u32_be(&[1, 2, 3, 4, 5]), None);
        assert_eq!(decode_u64_be(&[0; 7]), None);
        assert_eq!(decode_i64_ordered(&[0; 9]), None);
    }

    #[test]
    fn prefixed_keys_group_by_partition() {
        // Partition order wins over the rest, whatever its length.
        assert!(prefixed(1, b"\xff\xff\xff") < prefixed(2, b""));
        assert!(prefixed(1, b"a") < prefixed(1, b"ab"));
        assert!(prefixed(255, b"z") < prefixed(256, b"a"));
        assert_eq!(split_prefixed(&prefixed(7, b"u42")), Some((7, &b"u42"[..])));
        assert_eq!(split_prefixed(&[0, 0, 1]), None);
    }

    #[test]
    fn prefix_end_is_the_exclusive_upper_bound() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        let (start, end) = partition_range(1);
        assert_eq!(start, vec![0, 0, 0, 1]);
        assert_eq!(end, Some(vec![0, 0, 0, 2]));
        assert_eq!(partition_range(u32::MAX).1, None);
        assert_eq!(partition_range(0x00ff_ffff).1, Some(vec![1])); // < [1, 0, 0, 0]: same set
    }
}
