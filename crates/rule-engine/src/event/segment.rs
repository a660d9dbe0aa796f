//! The `segment` format: the Segment / RudderStack tracking spec (SPEC §2).
//!
//! | `type` | becomes |
//! |---|---|
//! | `track` (default when absent or null) | track `event` with `properties` |
//! | `identify` | profile (set) with `traits` as properties |
//! | `page`, `screen` | track named `page` / `screen` with `properties`, plus the top-level `name` (when present and not null) copied into `properties.name` |
//! | anything else (`alias`, `group`, ...) | `unknown_type` |
//!
//! The user is `userId`, falling back to `anonymousId` when `userId` is absent, null or the
//! empty string (RudderStack sends `"userId": ""` for anonymous visitors). The time is
//! `timestamp` (RFC 3339, or integer epoch milliseconds); the event id is `messageId`.

use serde_json::Value as Json;

use super::decode::{
    event_id_from, event_name_from, properties_from, ts_from, type_from, unknown_type,
    user_id_from, Fields,
};
use super::{Event, EventBody, ProfileOp, Rejection};

/// The top-level fields read, in the order of the indices below.
pub(super) const KEYS: &[&str] = &[
    "type",
    "userId",
    "anonymousId",
    "event",
    "timestamp",
    "properties",
    "traits",
    "name",
    "messageId",
];
const TYPE: usize = 0;
const USER_ID: usize = 1;
const ANONYMOUS_ID: usize = 2;
const EVENT: usize = 3;
const TIMESTAMP: usize = 4;
const PROPERTIES: usize = 5;
const TRAITS: usize = 6;
const NAME: usize = 7;
const MESSAGE_ID: usize = 8;

const TYPES: &str = "track, identify, page, screen";

enum Kind {
    Track,
    Identify,
    Page,
    Screen,
}

pub(super) fn decode(mut f: Fields) -> Result<Event, Rejection> {
    let kind = match type_from(f.take(TYPE), "type", TYPES)?.as_deref() {
        None | Some("track") => Kind::Track,
        Some("identify") => Kind::Identify,
        Some("page") => Kind::Page,
        Some("screen") => Kind::Screen,
        Some(other) => return Err(unknown_type("type", other, TYPES)),
    };
    let user_id = take_user(&mut f)?;
    let name = match kind {
        Kind::Track => Some(event_name_from(f.take(EVENT), "event")?),
        Kind::Page => Some("page".to_owned()),
        Kind::Screen => Some("screen".to_owned()),
        Kind::Identify => None,
    };
    let ts = ts_from(f.take(TIMESTAMP), "timestamp")?;
    let body = match (kind, name) {
        (Kind::Identify, _) => EventBody::Profile {
            op: ProfileOp::Set,
            properties: properties_from(f.take(TRAITS), "traits")?,
        },
        (Kind::Page | Kind::Screen, Some(name)) => {
            let mut properties = properties_from(f.take(PROPERTIES), "properties")?;
            match f.take(NAME) {
                None | Some(Json::Null) => {}
                Some(page_name) => {
                    properties.insert("name".to_owned(), page_name);
                }
            }
            EventBody::Track { name, properties }
        }
        (_, name) => EventBody::Track {
            name: name.unwrap_or_default(),
            properties: properties_from(f.take(PROPERTIES), "properties")?,
        },
    };
    let event_id = event_id_from(f.take(MESSAGE_ID));
    Ok(Event {
        user_id,
        ts,
        event_id,
        body,
    })
}

/// `userId`, or `anonymousId` when `userId` is absent, null or "" and `anonymousId` is given.
fn take_user(f: &mut Fields) -> Result<String, Rejection> {
    let user_id = f.take(USER_ID);
    let unset = match &user_id {
        None | Some(Json::Null) => true,
        Some(Json::String(s)) => s.is_empty(),
        _ => false,
    };
    if unset {
        match f.take(ANONYMOUS_ID) {
            None | Some(Json::Null) => {}
            anonymous => return user_id_from(anonymous, "anonymousId"),
        }
    }
    user_id_from(user_id, "userId")
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Format, Reason};
    use super::*;
    use serde_json::{json, Map};

    fn dec(s: &str) -> Result<Event, Rejection> {
        decode(
            s.as_bytes(),
            &DecodeOptions {
                format: Format::Segment,
                ..DecodeOptions::default()
            },
        )
    }

    fn props(ev: &Event) -> &Map<String, Json> {
        match &ev.body {
            EventBody::Track { properties, .. } | EventBody::Profile { properties, .. } => {
                properties
            }
            EventBody::Delete => panic!("delete"),
        }
    }

    #[test]
    fn track() {
        let ev = dec(
            r#"{"type":"track","event":"Order Completed","userId":"u1","anonymousId":"a1",
            "timestamp":"2024-11-19T07:06:40.123456Z","properties":{"revenue":10.5},
            "messageId":"m-1","context":{"ip":"1.2.3.4"},"sentAt":"2024-11-19T07:06:41Z"}"#,
        )
        .unwrap();
        assert_eq!(ev.user_id, "u1");
        assert_eq!(ev.ts, 1_732_000_000_123);
        assert_eq!(ev.event_id.as_deref(), Some("m-1"));
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "Order Completed".into(),
                properties: json!({"revenue":10.5}).as_object().unwrap().clone()
            }
        );
        // integer ms timestamp also accepted, type defaults to track
        let ev = dec(r#"{"event":"e","userId":"u1","timestamp":1732000000000}"#).unwrap();
        assert_eq!(ev.ts, 1_732_000_000_000);
        assert!(matches!(ev.body, EventBody::Track { .. }));
        // `ts` is not the segment time field
        let r = dec(r#"{"event":"e","userId":"u1","ts":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidTimestamp);
        assert_eq!(r.detail, "timestamp is missing");
        let r = dec(r#"{"type":"track","userId":"u1","timestamp":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingEvent);
    }

    #[test]
    fn anonymous_fallback() {
        let ev = dec(r#"{"event":"e","anonymousId":"a1","timestamp":1}"#).unwrap();
        assert_eq!(ev.user_id, "a1");
        let ev = dec(r#"{"event":"e","userId":null,"anonymousId":"a1","timestamp":1}"#).unwrap();
        assert_eq!(ev.user_id, "a1");
        let ev = dec(r#"{"event":"e","userId":"","anonymousId":"a1","timestamp":1}"#).unwrap();
        assert_eq!(ev.user_id, "a1");
        let ev = dec(r#"{"event":"e","userId":7,"anonymousId":"a1","timestamp":1}"#).unwrap();
        assert_eq!(ev.user_id, "7");
        let r = dec(r#"{"event":"e","timestamp":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingUserId);
        let r = dec(r#"{"event":"e","userId":null,"anonymousId":null,"timestamp":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingUserId);
        let r = dec(r#"{"event":"e","userId":"","timestamp":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidUserId);
        let r = dec(r#"{"event":"e","anonymousId":"","timestamp":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidUserId);
        let r = dec(r#"{"event":"e","userId":1.5,"anonymousId":"a","timestamp":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidUserId);
        assert!(r.detail.starts_with("userId is a float"), "{}", r.detail);
    }

    #[test]
    fn identify() {
        let ev = dec(
            r#"{"type":"identify","userId":"u1","timestamp":"2024-11-19T07:06:40Z",
            "traits":{"email":"a@b.c","plan":null},"properties":{"ignored":1},"messageId":42}"#,
        )
        .unwrap();
        assert_eq!(ev.event_id.as_deref(), Some("42"));
        assert_eq!(
            ev.body,
            EventBody::Profile {
                op: ProfileOp::Set,
                properties: json!({"email":"a@b.c","plan":null})
                    .as_object()
                    .unwrap()
                    .clone()
            }
        );
        let ev = dec(r#"{"type":"identify","userId":"u1","timestamp":1,"traits":null}"#).unwrap();
        assert!(props(&ev).is_empty());
        let ev = dec(r#"{"type":"identify","userId":"u1","timestamp":1}"#).unwrap();
        assert!(props(&ev).is_empty());
        let r = dec(r#"{"type":"identify","userId":"u1","timestamp":1,"traits":"x"}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidProperties);
        assert!(r.detail.starts_with("traits"), "{}", r.detail);
    }

    #[test]
    fn page_and_screen() {
        let ev = dec(r#"{"type":"page","userId":"u1","timestamp":1,"name":"Home",
            "properties":{"url":"https://x/","name":"old"}}"#)
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "page".into(),
                properties: json!({"url":"https://x/","name":"Home"})
                    .as_object()
                    .unwrap()
                    .clone()
            }
        );
        let ev =
            dec(r#"{"type":"screen","userId":"u1","timestamp":1,"name":null,"properties":null}"#)
                .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "screen".into(),
                properties: Map::new()
            }
        );
        let ev = dec(r#"{"type":"screen","userId":"u1","timestamp":1,"name":"Cart"}"#).unwrap();
        assert_eq!(props(&ev)["name"], json!("Cart"));
        // a page needs no `event`; one that is there is ignored
        let ev = dec(r#"{"type":"page","userId":"u1","timestamp":1,"event":5}"#).unwrap();
        assert!(matches!(ev.body, EventBody::Track { ref name, .. } if name == "page"));
        let r = dec(r#"{"type":"page","userId":"u1","timestamp":1,"properties":[]}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidProperties);
    }

    #[test]
    fn other_types_unknown() {
        for t in ["alias", "group", "Track", "delete", "profile"] {
            let r = dec(&format!(
                r#"{{"type":"{t}","userId":"u1","timestamp":1,"event":"e"}}"#
            ))
            .unwrap_err();
            assert_eq!(r.reason, Reason::UnknownType, "{t}");
        }
    }
}
