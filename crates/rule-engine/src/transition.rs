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
}

impl Transition {
    pub fn kind(&self) -> &'static str {
        if self.enter {
            "segment_enter"
        } else {
            "segment_exit"
        }
    }

    /// Deterministic id from user, segment, seq and ts: a redelivered transition has the same id.
    pub fn event_id(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.user_id.as_bytes(), &[0], self.segment.as_bytes(), &[0]] {
            h.update(part);
        }
        h.update(self.seq.to_be_bytes());
        h.update(self.ts.to_be_bytes());
        hex::encode(&h.finalize()[..16])
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
        };
        assert_eq!(t.event_id(), t.clone().event_id());
        assert_eq!(t.event_id().len(), 32);
        let other = Transition {
            seq: 2,
            ..t.clone()
        };
        assert_ne!(t.event_id(), other.event_id());
        let j = t.to_json();
        assert_eq!(j["type"], "segment_enter");
        assert_eq!(j["cause"], "event");
    }
}
