//! The on-disk schema: every key this crate writes to a column family, its value, and the keys
//! of the changelog topic's records. Byte formats are stable: a state dir written by an earlier
//! version must keep reading, so a change here is a migration.
//!
//! Integers are big-endian (`u32 BE`, `u64 BE`), so keys sort numerically; a time (`i64`) in a
//! key is *ordered* (sign bit flipped, see [`tagstream_state::keys::i64_ordered`]) so that
//! negative instants sort first. "Partition" is the engine partition (the Kafka partition
//! number; 0 for files, stdin and `replay`).
//!
//! | column family | key | value |
//! |---|---|---|
//! | `Cf::Users` | [`user_key`]: partition (`u32` BE) + user id | the user's state, encoded by [`tagstream_rules::state::UserState`] |
//! | `Cf::Timers` | [`timer_key`]: partition (`u32` BE) + due (ordered `i64`) + user id | empty |
//! | `Cf::Outbox` | [`outbox_key`]: sequence number (`u64` BE), commit order | an [`OutboxEntry`](crate::outbox::OutboxEntry) (postcard) |
//! | `Cf::Offsets` | [`offsets_key`]: `kafka/<topic>/<partition>` | [`encode_offset`]: the next offset to apply (`i64` BE) |
//! | `Cf::Offsets` | [`position_key`]: `file:<canonical path>` | [`encode_position`]: fingerprint (16 bytes), last line (`u64` BE), bytes fingerprinted (`u64` BE) |
//! | `Cf::Meta` | [`META_RULES`] | the rules' TOML source |
//! | `Cf::Meta` | [`META_RULES_HASH`] | the compiled rules' fingerprint |
//! | `Cf::Meta` | [`META_OUTBOX_SEQ`] | the next outbox sequence number (`u64` BE) |
//! | `Cf::Meta` | [`partition_meta_key`]`(`[`META_CLOCK`]`, p)` | the partition's engine time (ordered `i64`) |
//! | `Cf::Meta` | [`partition_meta_key`]`(`[`META_DELETES`]`, p)` | users the partition's deletes erased (`u64` BE) |
//! | `Cf::Meta` | [`META_WARMING`] | aggregates that started empty at a reload (JSON) |
//! | `Cf::Meta` | [`META_RELOADING`] | an unfinished rules reload: new rules, first user not migrated (JSON) |
//! | `Cf::Meta` | [`partition_meta_key`]`(`[`META_RELEASED`]`, p)` | empty: a rebalance took the partition away |
//! | `Cf::Meta` | [`META_CHANGELOG_SEQ`] | the next `Cf::Changelog` sequence number (`u64` BE) |
//! | `Cf::Meta` | [`partition_meta_key`]`(`[`META_CHANGELOG_SERIAL`]`, p)` | serial of the partition's last staged checkpoint (`u64` BE) |
//! | `Cf::Meta` | [`partition_meta_key`]`(`[`META_CHANGELOG_ACKED`]`, p)` | changelog offset (`i64` BE) and serial (`u64` BE) of its last acknowledged checkpoint |
//! | `Cf::Meta` | [`transition_meta_key`]: [`META_CHANGELOG_TRANSITION`] + partition (`u32` BE) + outbox sequence number (`u64` BE) | the changelog key of a transition carried as undelivered |
//! | `Cf::Meta` | [`sample_key`]: [`HISTORY_PREFIX`] + segment + `0x00` + partition (`u32` BE) + minute (ordered `i64`) | the segment's size (`u64` BE) |
//! | `Cf::Changelog` | [`changelog_seq_key`]: sequence number (`u64` BE), commit order | a [`Pending`](crate::changelog::Pending) record (partition, key, value or tombstone) |
//!
//! `Cf::Ids` (the user-id dictionary) and `Cf::Segments` (segment bitmaps) belong to
//! `tagstream-state`, which owns their codecs.
//!
//! **Changelog topic records** (see [`crate::changelog`]), partition `p` holding engine partition
//! `p`: a user's record is keyed by its user id (value: its encoded state, or a tombstone);
//! a checkpoint under [`CHECKPOINT_KEY`] (value: an encoded
//! [`Checkpoint`](crate::changelog::Checkpoint)); an undelivered transition under
//! [`transition_key`] (value: an encoded [`Undelivered`](crate::changelog::Undelivered), or a
//! tombstone once the sink has it). `0xFF` and `0xFE` never start a UTF-8 string, so neither
//! collides with a user id.

use std::sync::Arc;

use tagstream_rules::event::Millis;
use tagstream_state::keys::{i64_ordered, prefixed, split_prefixed, u32_be, u64_be};

use crate::error::{ConsumerError, Result};

// ---- Cf::Users and Cf::Timers -------------------------------------------------------------

/// `Cf::Users` key of a user: partition (`u32` BE) + user id.
pub fn user_key(partition: u32, user: &str) -> Vec<u8> {
    prefixed(partition, user.as_bytes())
}

/// The partition and user id of a `Cf::Users` key.
pub fn user_of_key(key: &[u8]) -> Result<(u32, Arc<str>)> {
    let (partition, user) =
        split_prefixed(key).ok_or_else(|| ConsumerError::Corrupt("user key".into()))?;
    let user = std::str::from_utf8(user).map_err(|_| ConsumerError::Corrupt("user key".into()))?;
    Ok((partition, Arc::from(user)))
}

/// `Cf::Timers` key: partition (`u32` BE) + due time (ordered `i64`) + user id; the value is
/// empty.
pub fn timer_key(partition: u32, due: Millis, user: &str) -> Vec<u8> {
    let mut rest = i64_ordered(due).to_vec();
    rest.extend_from_slice(user.as_bytes());
    prefixed(partition, &rest)
}

// ---- Cf::Outbox and Cf::Changelog ---------------------------------------------------------

/// `Cf::Outbox` key: sequence number, so delivery follows commit order.
pub fn outbox_key(seq: u64) -> [u8; 8] {
    u64_be(seq)
}

/// `Cf::Changelog` key of a staged record: sequence number, so publication follows commit
/// order.
pub fn changelog_seq_key(seq: u64) -> [u8; 8] {
    u64_be(seq)
}

// ---- Cf::Offsets --------------------------------------------------------------------------

/// The first key of the Kafka offsets in `Cf::Offsets` (every [`offsets_key`] starts with it).
pub const KAFKA_OFFSETS_START: &[u8] = b"kafka/";
/// The end (exclusive) of the Kafka offsets in `Cf::Offsets`.
pub const KAFKA_OFFSETS_END: &[u8] = b"kafka0";

/// `Cf::Offsets` key of a Kafka partition: `kafka/<topic>/<partition>`.
pub fn offsets_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("kafka/{topic}/{partition}").into_bytes()
}

/// The (topic, partition) of an [`offsets_key`]; None for any other key.
pub fn parse_offsets_key(key: &[u8]) -> Option<(String, i32)> {
    let rest = std::str::from_utf8(key.strip_prefix(b"kafka/")?).ok()?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

/// `Cf::Offsets` value: the next offset to apply, 8 bytes big-endian.
pub fn encode_offset(next: i64) -> Vec<u8> {
    next.to_be_bytes().to_vec()
}

pub fn decode_offset(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// Offsets key of a file input.
pub fn position_key(path: &str) -> Vec<u8> {
    let canonical = std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string());
    format!("file:{canonical}").into_bytes()
}

/// Offsets value: fingerprint (16 bytes), the last consumed line (u64 BE), and how many bytes
/// the fingerprint covers (u64 BE).
pub fn encode_position(fp: &[u8; 16], line: u64, covered: u64) -> Vec<u8> {
    let mut v = fp.to_vec();
    v.extend_from_slice(&line.to_be_bytes());
    v.extend_from_slice(&covered.to_be_bytes());
    v
}

/// (fingerprint, last consumed line, bytes covered) of a position value.
pub fn decode_position(v: &[u8]) -> Option<([u8; 16], u64, u64)> {
    if v.len() != 32 {
        return None;
    }
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&v[..16]);
    Some((
        fp,
        u64::from_be_bytes(v[16..24].try_into().ok()?),
        u64::from_be_bytes(v[24..].try_into().ok()?),
    ))
}

// ---- Cf::Meta -----------------------------------------------------------------------------

/// The rules' TOML source.
pub const META_RULES: &[u8] = b"rules";
/// The compiled rules' fingerprint: a store opened with other rules reloads or is refused.
pub const META_RULES_HASH: &[u8] = b"rules_hash";
/// The next outbox sequence number.
pub const META_OUTBOX_SEQ: &[u8] = b"outbox_seq";
/// Per partition, its engine time.
pub const META_CLOCK: &[u8] = b"clock/";
/// Per partition, how many users its deletes have erased (see
/// [`UserState::incarnation`](tagstream_rules::state::UserState)).
pub const META_DELETES: &[u8] = b"deletes/";
/// Aggregates that started empty at a reload.
pub const META_WARMING: &[u8] = b"warming";
/// A rules reload not finished yet (see [`crate::engine`]'s reload).
pub const META_RELOADING: &[u8] = b"reloading";
/// Per partition: released by a rebalance, not assigned here since (see the engine's
/// ownership).
pub const META_RELEASED: &[u8] = b"released/";
/// Next `Cf::Changelog` sequence number.
pub const META_CHANGELOG_SEQ: &[u8] = b"changelog_seq";
/// Per partition, the serial of its last staged checkpoint.
pub const META_CHANGELOG_SERIAL: &[u8] = b"changelog_serial/";
/// Per partition, the changelog offset and serial of its last checkpoint the broker
/// acknowledged from here.
pub const META_CHANGELOG_ACKED: &[u8] = b"changelog_acked/";
/// Per partition and outbox sequence number, the changelog key of a transition that the
/// changelog carries as undelivered: a tombstone is staged once the sink has it.
pub const META_CHANGELOG_TRANSITION: &[u8] = b"changelog_transition/";
/// Segment size history samples.
pub const HISTORY_PREFIX: &[u8] = b"history/";

/// A per-partition `Cf::Meta` key: `prefix` + partition (`u32` BE).
pub fn partition_meta_key(prefix: &[u8], partition: u32) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&u32_be(partition));
    k
}

/// [`META_CHANGELOG_TRANSITION`] key: prefix + partition (`u32` BE) + outbox sequence number
/// (`u64` BE).
pub fn transition_meta_key(partition: u32, outbox_seq: u64) -> Vec<u8> {
    let mut k = partition_meta_key(META_CHANGELOG_TRANSITION, partition);
    k.extend_from_slice(&u64_be(outbox_seq));
    k
}

/// The common prefix of a segment's samples in a partition: [`HISTORY_PREFIX`] + segment name +
/// `0x00` + partition (`u32` BE).
pub fn history_series_prefix(segment: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(HISTORY_PREFIX.len() + segment.len() + 5 + 8);
    k.extend_from_slice(HISTORY_PREFIX);
    k.extend_from_slice(segment.as_bytes());
    k.push(0);
    k.extend_from_slice(&u32_be(partition));
    k
}

/// The key of a segment's size sample in a partition at a minute of engine time: the
/// [`history_series_prefix`] + minute (ordered `i64`); the value is the size (`u64` BE).
pub fn sample_key(segment: &str, partition: u32, minute: Millis) -> Vec<u8> {
    let mut k = history_series_prefix(segment, partition);
    k.extend_from_slice(&i64_ordered(minute));
    k
}

// ---- The changelog topic ------------------------------------------------------------------

/// The key of a checkpoint record: 0xFF never starts a UTF-8 string, so no user id collides.
pub const CHECKPOINT_KEY: &[u8] = b"\xffcheckpoint";

/// The key prefix of an undelivered transition's record: `\xfe` (never the start of a UTF-8
/// user id) followed by the transition's `event_id`. Its value is an encoded
/// [`Undelivered`](crate::changelog::Undelivered); a tombstone says the transition reached the
/// sink.
pub const TRANSITION_KEY_PREFIX: &[u8] = b"\xfetransition/";

/// The changelog key of the transition with this `event_id`.
pub fn transition_key(event_id: &str) -> Vec<u8> {
    let mut key = TRANSITION_KEY_PREFIX.to_vec();
    key.extend_from_slice(event_id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use tagstream_state::keys::{decode_i64_ordered, decode_u32_be, decode_u64_be};

    use super::*;

    #[test]
    fn offsets_round_trip() {
        assert_eq!(offsets_key("events", 3), b"kafka/events/3".to_vec());
        assert_eq!(decode_offset(&encode_offset(42)), Some(42));
        assert_eq!(decode_offset(b"xx"), None);
        assert_eq!(
            parse_offsets_key(&offsets_key("a/b", 7)),
            Some(("a/b".to_string(), 7))
        );
        assert_eq!(parse_offsets_key(b"file/x"), None);
    }

    #[test]
    fn kafka_offsets_sit_between_their_bounds() {
        let key = offsets_key("events", 3);
        assert!(KAFKA_OFFSETS_START <= &key[..] && &key[..] < KAFKA_OFFSETS_END);
        assert!(position_key("/no/such/file").as_slice() < KAFKA_OFFSETS_START);
    }

    #[test]
    fn user_keys_round_trip_and_sort_by_partition() {
        let key = user_key(3, "u-1");
        assert_eq!(key, [&[0, 0, 0, 3][..], b"u-1"].concat());
        let (p, user) = user_of_key(&key).unwrap();
        assert_eq!((p, &*user), (3, "u-1"));
        assert!(user_key(2, "zzz") < user_key(3, ""));
        assert!(matches!(user_of_key(b"ab"), Err(ConsumerError::Corrupt(_))));
    }

    #[test]
    fn timer_keys_sort_by_partition_then_due_time() {
        let key = timer_key(1, -5, "u");
        assert_eq!(&key[..4], &[0, 0, 0, 1]);
        assert_eq!(decode_i64_ordered(&key[4..12]), Some(-5));
        assert_eq!(&key[12..], b"u");
        assert!(timer_key(1, -5, "z") < timer_key(1, 7, "a"));
        assert!(timer_key(1, i64::MAX, "z") < timer_key(2, i64::MIN, "a"));
    }

    #[test]
    fn sequence_keys_are_big_endian() {
        assert_eq!(outbox_key(258), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(decode_u64_be(&outbox_key(u64::MAX)), Some(u64::MAX));
        assert_eq!(changelog_seq_key(258), outbox_key(258));
        assert!(outbox_key(255) < outbox_key(256));
    }

    #[test]
    fn positions_round_trip() {
        let fp = [7u8; 16];
        let v = encode_position(&fp, 12, 345);
        assert_eq!(v.len(), 32);
        assert_eq!(decode_position(&v), Some((fp, 12, 345)));
        assert_eq!(decode_position(&v[..24]), None);
        assert!(position_key("/no/such/file").starts_with(b"file:"));
    }

    #[test]
    fn meta_keys_round_trip() {
        let key = partition_meta_key(META_CLOCK, 9);
        assert_eq!(key, b"clock/\0\0\0\x09".to_vec());
        assert_eq!(decode_u32_be(&key[META_CLOCK.len()..]), Some(9));
        let key = transition_meta_key(2, 77);
        let rest = key.strip_prefix(META_CHANGELOG_TRANSITION).unwrap();
        assert_eq!(decode_u32_be(&rest[..4]), Some(2));
        assert_eq!(decode_u64_be(&rest[4..]), Some(77));
    }

    #[test]
    fn history_samples_sort_by_minute_within_a_series() {
        let series = history_series_prefix("vip", 1);
        assert_eq!(series, b"history/vip\0\0\0\0\x01".to_vec());
        let key = sample_key("vip", 1, -60_000);
        assert_eq!(
            decode_i64_ordered(key.strip_prefix(&series[..]).unwrap()),
            Some(-60_000)
        );
        assert!(sample_key("vip", 1, -60_000) < sample_key("vip", 1, 0));
        // A segment whose name extends another's is another series.
        assert!(!sample_key("vip2", 1, 0).starts_with(&series));
    }

    #[test]
    fn changelog_record_keys_never_collide_with_user_ids() {
        let key = transition_key("abc");
        assert_eq!(key.strip_prefix(TRANSITION_KEY_PREFIX), Some(&b"abc"[..]));
        // 0xFE and 0xFF never occur in UTF-8.
        assert!(String::from_utf8(key).is_err());
        assert!(String::from_utf8(CHECKPOINT_KEY.to_vec()).is_err());
    }
}
