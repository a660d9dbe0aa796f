//! Outbox entries: transitions and dead letters written in the same atomic batch as the state
//! that produced them, then delivered to their sink and deleted once acknowledged.

use serde::{Deserialize, Serialize};
use tagstream_state::keys::u64_be;

/// Where a rejected message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// A line of a file source (1-based line number); `source` is the path as given.
    Line { source: String, line: u64 },
    /// A Kafka message.
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
    },
}

/// A message that could not be accepted, with its original bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    pub detail: String,
    pub raw: Vec<u8>,
    pub origin: Origin,
}

/// One entry awaiting delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutboxEntry {
    /// A transition as its JSON text, keyed by user id; `ingested_ms` is the wall-clock time the
    /// event that caused it was read (for the latency histogram; 0 for timers).
    Transition {
        user_id: String,
        json: String,
        ingested_ms: i64,
    },
    DeadLetter(DeadLetter),
}

impl OutboxEntry {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<OutboxEntry, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("corrupt outbox entry: {e}"))
    }
}

/// Outbox key: sequence number, so delivery follows commit order.
pub fn key(seq: u64) -> [u8; 8] {
    u64_be(seq)
}

impl DeadLetter {
    /// The dead-letter file line of SPEC §2.
    pub fn to_file_line(&self) -> String {
        let (source, line) = match &self.origin {
            Origin::Line { source, line } => (source.clone(), *line as i64),
            Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            } => (format!("kafka:{topic}/{partition}"), *offset),
        };
        let mut obj = serde_json::Map::new();
        obj.insert("reason".into(), self.reason.clone().into());
        obj.insert("detail".into(), self.detail.clone().into());
        obj.insert("source".into(), source.into());
        obj.insert("line".into(), line.into());
        match std::str::from_utf8(&self.raw) {
            Ok(text) => obj.insert("raw".into(), text.into()),
            Err(_) => obj.insert("raw_base64".into(), base64(&self.raw).into()),
        };
        serde_json::Value::Object(obj).to_string()
    }
}

/// Standard base64 with padding (small enough not to warrant a dependency).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn dead_letter_lines_use_raw_base64_for_binary() {
        let dl = DeadLetter {
            reason: "invalid_json".into(),
            detail: "not utf-8".into(),
            raw: vec![0xff, 0xfe],
            origin: Origin::Line {
                source: "in.ndjson".into(),
                line: 3,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&dl.to_file_line()).unwrap();
        assert_eq!(v["raw_base64"], "//4=");
        assert_eq!(v["line"], 3);
        assert!(v.get("raw").is_none());
        let round = OutboxEntry::decode(&OutboxEntry::DeadLetter(dl.clone()).encode()).unwrap();
        assert_eq!(round, OutboxEntry::DeadLetter(dl));
    }
}
