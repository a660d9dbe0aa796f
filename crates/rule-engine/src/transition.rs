//! Segment membership changes (SPEC §5 "Transitions").

use std::sync::Arc;

use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::event::Millis;
use crate::value::Value;

/// What caused a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    Event,
    Timer,
    Rules,
    Delete,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Event => "event",
            Cause::Timer => "timer",
            Cause::Rules => "rules",
            Cause::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub user_id: Arc<str>,
    pub segment: Arc<str>,
    /// true = `segment_enter`, false = `segment_exit`.
    pub enter: bool,
    /// Per user and segment: 1, 2, 3, … (odd = enter, even = exit).
    pub seq: u32,
    /// Engine time of the change.
    pub ts: Millis,
    pub cause: Cause,
    /// The tags the segment's expression names directly, with their values at `ts`.
    pub tags: Vec<(Arc<str>, Value)>,
    /// The user's incarnation stamp ([`crate::state::UserState::incarnation`]).
    pub incarnation: u64,
}

impl Transition {
    pub fn kind(&self) -> &'static str {
        if self.enter {
            "segment_enter"
        } else {
            "segment_exit"
        }
    }

    /// Deterministic id from user, segment, seq, ts and the user's incarnation: a redelivered
    /// transition has the same id, and a user re-created within the same millisecond gets new
    /// ones. Stamp 0 (a user created before its partition applied any delete) adds nothing, so
    /// those ids are the ones earlier versions gave.
    pub fn event_id(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.user_id.as_bytes(), &[0], self.segment.as_bytes(), &[0]] {
            h.update(part);
        }
        h.update(self.seq.to_be_bytes());
        h.update(self.ts.to_be_bytes());
        if self.incarnation != 0 {
            h.update(self.incarnation.to_be_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }

    /// The sink's JSON text, written directly (the same object as [`Transition::to_json`],
    /// keys in the same order) without building a JSON tree first.
    pub fn to_json_string(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(256);
        let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#"{{"event_id":"{}","type":"{}","segment":{},"user_id":{},"seq":{},"ts":{},"cause":"{}","tags":{{"#,
            self.event_id(),
            self.kind(),
            quoted(&self.segment),
            quoted(&self.user_id),
            self.seq,
            self.ts,
            self.cause.as_str(),
        );
        for (i, (name, value)) in self.tags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&quoted(name));
            out.push(':');
            out.push_str(&value.to_json().to_string());
        }
        out.push_str("}}");
        out
    }

    pub fn to_json(&self) -> Json {
        let tags: Map<String, Json> = self
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect();
        json!({
            "event_id": self.event_id(),
            "type": self.kind(),
            "segment": &*self.segment,
            "user_id": &*self.user_id,
            "seq": self.seq,
            "ts": self.ts,
            "cause": self.cause.as_str(),
            "tags": tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_deterministic_and_distinguishes_fields() {
        let t = Transition {
            user_id: "u1".into(),
            segment: "vip".into(),
            enter: true,
            seq: 1,
            ts: 5,
            cause: Cause::Event,
            tags: vec![],
            incarnation: 0,
        };
        assert_eq!(t.event_id(), t.clone().event_id());
        assert_eq!(t.event_id().len(), 32);
        let other = Transition {
            seq: 2,
            ..t.clone()
        };
        assert_ne!(t.event_id(), other.event_id());
        // Two incarnations of one user: same user, segment, seq and ts, different ids.
        let reborn = Transition {
            incarnation: 3,
            ..t.clone()
        };
        assert_ne!(t.event_id(), reborn.event_id());
        assert_eq!(reborn.event_id(), reborn.clone().event_id());
        let j = t.to_json();
        assert_eq!(j.to_string(), t.to_json_string());
        let tagged = Transition {
            tags: vec![
                ("a \"quoted\" tag".into(), Value::str("x\ny")),
                ("n".into(), Value::Num(2.5)),
                ("none".into(), Value::Null),
            ],
            ..t.clone()
        };
        assert_eq!(tagged.to_json().to_string(), tagged.to_json_string());
        assert_eq!(j["type"], "segment_enter");
        assert_eq!(j["cause"], "event");
    }
}
