//! The `native` format (SPEC §2):
//!
//! ```json
//! {"user_id":"u42","event":"purchase","ts":1732000000000,"properties":{"amount":99.5},"event_id":"x"}
//! {"type":"profile","user_id":"u42","ts":"2024-11-19T07:06:40Z","properties":{"city":"Shanghai"}}
//! {"type":"delete","user_id":"u42","ts":1732000000000}
//! ```
//!
//! `type` is `track` (the default when absent or null), `profile` or `delete`.

use super::decode::{
    event_id_from, event_name_from, properties_from, ts_from, type_from, unknown_type,
    user_id_from, Fields,
};
use super::{Event, EventBody, ProfileOp, Rejection};

/// The top-level fields read, in the order of the indices below.
pub(super) const KEYS: &[&str] = &["type", "user_id", "event", "ts", "properties", "event_id"];
pub(super) const TYPE: usize = 0;
const USER_ID: usize = 1;
const EVENT: usize = 2;
const TS: usize = 3;
pub(super) const PROPERTIES: usize = 4;
const EVENT_ID: usize = 5;

const TYPES: &str = "track, profile, delete";

enum Kind {
    Track,
    Profile,
    Delete,
}

pub(super) fn decode(f: &mut Fields) -> Result<Event, Rejection> {
    let kind = match type_from(f.take(TYPE), "type", TYPES)?.as_deref() {
        None | Some("track") => Kind::Track,
        Some("profile") => Kind::Profile,
        Some("delete") => Kind::Delete,
        Some(other) => return Err(unknown_type("type", other, TYPES)),
    };
    let user_id = user_id_from(f.take(USER_ID), "user_id")?;
    let name = match kind {
        Kind::Track => Some(event_name_from(f.take(EVENT), "event")?),
        _ => None,
    };
    let ts = ts_from(f.take(TS), "ts")?;
    let properties = properties_from(f.take(PROPERTIES), "properties")?;
    let event_id = event_id_from(f.take(EVENT_ID));
    let body = match (kind, name) {
        (Kind::Track, Some(name)) => EventBody::Track { name, properties },
        (Kind::Profile, _) => EventBody::Profile {
            op: ProfileOp::Set,
            properties,
        },
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
                format: Format::Native,
                ..DecodeOptions::default()
            },
        )
    }

    fn props(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn spec_examples() {
        let ev = dec(r#"{"user_id":"u42","event":"purchase","ts":1732000000000,
             "properties":{"amount":99.5,"category":"skincare"},"event_id":"optional-unique-id"}"#)
        .unwrap();
        assert_eq!(
            ev,
            Event {
                user_id: "u42".into(),
                ts: 1_732_000_000_000,
                event_id: Some("optional-unique-id".into()),
                body: EventBody::Track {
                    name: "purchase".into(),
                    properties: props(json!({"amount":99.5,"category":"skincare"})),
                },
            }
        );
        let ev = dec(r#"{"type":"profile","user_id":"u42","ts":"2024-11-19T07:06:40Z","properties":{"gender":"F","city":"Shanghai"}}"#).unwrap();
        assert_eq!(ev.ts, 1_732_000_000_000);
        assert_eq!(ev.event_id, None);
        assert_eq!(
            ev.body,
            EventBody::Profile {
                op: ProfileOp::Set,
                properties: props(json!({"gender":"F","city":"Shanghai"}))
            }
        );
        let ev = dec(r#"{"type":"delete","user_id":"u42","ts":1732000000000}"#).unwrap();
        assert_eq!(ev.body, EventBody::Delete);
        assert_eq!(ev.user_id, "u42");
    }

    #[test]
    fn type_default_and_unknown() {
        let ev = dec(r#"{"type":null,"user_id":"u","event":"e","ts":1}"#).unwrap();
        assert!(matches!(ev.body, EventBody::Track { .. }));
        let ev = dec(r#"{"type":"track","user_id":"u","event":"e","ts":1}"#).unwrap();
        assert!(matches!(ev.body, EventBody::Track { .. }));
        for t in [r#""identify""#, r#""Track""#, r#""""#, "1", "true", "[]"] {
            let r = dec(&format!(
                r#"{{"type":{t},"user_id":"u","event":"e","ts":1}}"#
            ))
            .unwrap_err();
            assert_eq!(r.reason, Reason::UnknownType, "{t}");
        }
        let r = dec(r#"{"type":"alias","user_id":"u","ts":1}"#).unwrap_err();
        assert!(r.detail.contains("\"alias\""), "{}", r.detail);
    }

    #[test]
    fn missing_event() {
        for e in [
            "",
            r#","event":null"#,
            r#","event":"""#,
            r#","event":5"#,
            r#","event":["a"]"#,
        ] {
            let r = dec(&format!(r#"{{"user_id":"u","ts":1{e}}}"#)).unwrap_err();
            assert_eq!(r.reason, Reason::MissingEvent, "{e}");
        }
        // profile and delete need no event name
        assert!(dec(r#"{"type":"profile","user_id":"u","ts":1}"#).is_ok());
        assert!(dec(r#"{"type":"delete","user_id":"u","ts":1,"event":7}"#).is_ok());
    }

    #[test]
    fn properties_forms() {
        let p = |s: &str| dec(&format!(r#"{{"user_id":"u","event":"e","ts":1{s}}}"#));
        for s in ["", r#","properties":null"#, r#","properties":{}"#] {
            match p(s).unwrap().body {
                EventBody::Track { properties, .. } => assert!(properties.is_empty(), "{s}"),
                other => panic!("{other:?}"),
            }
        }
        for s in [
            r#","properties":[]"#,
            r#","properties":"x""#,
            r#","properties":1"#,
            r#","properties":false"#,
        ] {
            let r = p(s).unwrap_err();
            assert_eq!(r.reason, Reason::InvalidProperties, "{s}");
            assert!(r.detail.starts_with("properties is"), "{}", r.detail);
        }
        // property order and nested values are kept as sent
        let ev = p(r#","properties":{"z":1,"a":{"b":[1,null]},"m":null}"#).unwrap();
        match ev.body {
            EventBody::Track { properties, .. } => {
                let keys: Vec<&str> = properties.keys().map(String::as_str).collect();
                assert_eq!(keys, ["z", "a", "m"]);
                assert_eq!(properties["a"], json!({"b":[1,null]}));
            }
            other => panic!("{other:?}"),
        }
        // a profile with invalid properties is rejected too
        let r = dec(r#"{"type":"profile","user_id":"u","ts":1,"properties":[1]}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidProperties);
    }

    #[test]
    fn integer_user_id_and_extra_fields() {
        let ev =
            dec(r#"{"user_id":12345,"event":"e","ts":1,"extra":{"x":1},"event_id":99}"#).unwrap();
        assert_eq!(ev.user_id, "12345");
        assert_eq!(ev.event_id.as_deref(), Some("99"));
    }

    #[test]
    fn delete_needs_user_and_time() {
        assert_eq!(
            dec(r#"{"type":"delete","ts":1}"#).unwrap_err().reason,
            Reason::MissingUserId
        );
        assert_eq!(
            dec(r#"{"type":"delete","user_id":"u"}"#)
                .unwrap_err()
                .reason,
            Reason::InvalidTimestamp
        );
    }
}
