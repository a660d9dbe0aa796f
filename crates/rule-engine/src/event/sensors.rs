//! The `sensors` format: Sensors Data (神策) tracking records (SPEC §2).
//!
//! ```json
//! {"type":"track","event":"BuyProduct","distinct_id":"u1","time":1732000000000,
//!  "properties":{"price":10},"_track_id":1234567}
//! ```
//!
//! | `type` | becomes |
//! |---|---|
//! | `track` (default when absent or null), `track_signup` | track `event` |
//! | `profile_set` | profile, set |
//! | `profile_set_once` | profile, set where the attribute has no value yet |
//! | `profile_unset` | profile, the keys of `properties` set to null |
//! | `profile_delete` | delete |
//! | anything else (`profile_append`, `item_set`, ...) | `unknown_type` |
//!
//! The user is `distinct_id`, the time `time` (integer epoch milliseconds, or an RFC 3339
//! string), the event id `_track_id`.

use super::decode::{
    event_id_from, event_name_from, properties_from, ts_from, type_from, unknown_type,
    user_id_from, Fields,
};
use super::{Event, EventBody, ProfileOp, Rejection};

/// The top-level fields read, in the order of the indices below.
pub(super) const KEYS: &[&str] = &[
    "type",
    "distinct_id",
    "event",
    "time",
    "properties",
    "_track_id",
];
const TYPE: usize = 0;
const DISTINCT_ID: usize = 1;
const EVENT: usize = 2;
const TIME: usize = 3;
const PROPERTIES: usize = 4;
const TRACK_ID: usize = 5;

const TYPES: &str =
    "track, track_signup, profile_set, profile_set_once, profile_unset, profile_delete";

enum Kind {
    Track,
    Profile(ProfileOp),
    Delete,
}

pub(super) fn decode(mut f: Fields) -> Result<Event, Rejection> {
    let kind = match type_from(f.take(TYPE), "type", TYPES)?.as_deref() {
        None | Some("track" | "track_signup") => Kind::Track,
        Some("profile_set") => Kind::Profile(ProfileOp::Set),
        Some("profile_set_once") => Kind::Profile(ProfileOp::SetOnce),
        Some("profile_unset") => Kind::Profile(ProfileOp::Unset),
        Some("profile_delete") => Kind::Delete,
        Some(other) => return Err(unknown_type("type", other, TYPES)),
    };
    let user_id = user_id_from(f.take(DISTINCT_ID), "distinct_id")?;
    let name = match kind {
        Kind::Track => Some(event_name_from(f.take(EVENT), "event")?),
        _ => None,
    };
    let ts = ts_from(f.take(TIME), "time")?;
    let properties = properties_from(f.take(PROPERTIES), "properties")?;
    let event_id = event_id_from(f.take(TRACK_ID));
    let body = match (kind, name) {
        (Kind::Track, Some(name)) => EventBody::Track { name, properties },
        (Kind::Profile(op), _) => EventBody::Profile { op, properties },
        _ => EventBody::Delete,
    };
    Ok(Event {
        user_id,
        ts,
        event_id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Format, Reason};
    use super::*;
    use serde_json::{json, Map, Value as Json};

    fn dec(s: &str) -> Result<Event, Rejection> {
        decode(
            s.as_bytes(),
            &DecodeOptions {
                format: Format::Sensors,
                ..DecodeOptions::default()
            },
        )
    }

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn track_and_signup() {
        let ev = dec(
            r#"{"type":"track","event":"BuyProduct","distinct_id":"u1","time":1732000000000,
            "properties":{"price":10,"$os":"iOS"},"_track_id":1234567,"lib":{"$lib":"js"}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            Event {
                user_id: "u1".into(),
                ts: 1_732_000_000_000,
                event_id: Some("1234567".into()),
                body: EventBody::Track {
                    name: "BuyProduct".into(),
                    properties: obj(json!({"price":10,"$os":"iOS"}))
                },
            }
        );
        let ev = dec(
            r#"{"type":"track_signup","event":"$SignUp","distinct_id":"u1","original_id":"anon",
            "time":"2024-11-19T15:06:40.5+08:00"}"#,
        )
        .unwrap();
        assert_eq!(ev.ts, 1_732_000_000_500);
        assert!(matches!(ev.body, EventBody::Track { ref name, .. } if name == "$SignUp"));
        let ev = dec(r#"{"event":"e","distinct_id":123,"time":1}"#).unwrap();
        assert_eq!(ev.user_id, "123");
        let r = dec(r#"{"type":"track","distinct_id":"u1","time":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingEvent);
        let r = dec(r#"{"type":"track","event":"e","user_id":"u1","time":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingUserId);
        assert_eq!(r.detail, "distinct_id is missing");
        let r = dec(r#"{"type":"track","event":"e","distinct_id":"u1","time":1.0}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidTimestamp);
    }

    #[test]
    fn profiles() {
        let p = r#"{"gender":"F","age":30}"#;
        for (t, op) in [
            ("profile_set", ProfileOp::Set),
            ("profile_set_once", ProfileOp::SetOnce),
            ("profile_unset", ProfileOp::Unset),
        ] {
            let ev = dec(&format!(
                r#"{{"type":"{t}","distinct_id":"u1","time":5,"properties":{p},"_track_id":"t"}}"#
            ))
            .unwrap();
            assert_eq!(ev.ts, 5);
            assert_eq!(ev.event_id.as_deref(), Some("t"));
            assert_eq!(
                ev.body,
                EventBody::Profile {
                    op,
                    properties: obj(json!({"gender":"F","age":30}))
                }
            );
        }
        // profile_unset: the keys name the attributes (values are ignored, often true)
        let ev = dec(
            r#"{"type":"profile_unset","distinct_id":"u1","time":5,"properties":{"city":true}}"#,
        )
        .unwrap();
        match ev.body {
            EventBody::Profile {
                op: ProfileOp::Unset,
                properties,
            } => {
                assert_eq!(properties.keys().collect::<Vec<_>>(), ["city"]);
            }
            other => panic!("{other:?}"),
        }
        let r = dec(r#"{"type":"profile_set","distinct_id":"u1","time":5,"properties":"x"}"#)
            .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidProperties);
        let ev =
            dec(r#"{"type":"profile_set","distinct_id":"u1","time":5,"properties":null}"#).unwrap();
        assert_eq!(
            ev.body,
            EventBody::Profile {
                op: ProfileOp::Set,
                properties: Map::new()
            }
        );
    }

    #[test]
    fn delete_and_unknown() {
        let ev = dec(r#"{"type":"profile_delete","distinct_id":"u1","time":5}"#).unwrap();
        assert_eq!(ev.body, EventBody::Delete);
        for t in [
            "profile_append",
            "profile_increment",
            "item_set",
            "delete",
            "profile",
        ] {
            let r = dec(&format!(
                r#"{{"type":"{t}","distinct_id":"u1","time":5,"event":"e"}}"#
            ))
            .unwrap_err();
            assert_eq!(r.reason, Reason::UnknownType, "{t}");
        }
    }
}
