//! The `segment` format: the Segment / RudderStack tracking spec (SPEC §2).
//!
//! | `type` | becomes |
//! |---|---|
//! | `track` (default when absent or null) | track `event` with `properties` |
//! | `identify` | profile (set) with the top-level `traits` as properties, or, when `traits` is absent or null, `context.traits` (RudderStack's SDKs send them only there) |
//! | `page` | track named `page` with `properties`, plus the top-level `name` and `category` (each when present and not null) copied into `properties.name` / `properties.category` |
//! | `screen` | track named `screen` with `properties`, plus the top-level `name` (when present and not null) copied into `properties.name` |
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
use super::{Event, EventBody, ProfileOp, Properties, Rejection};

/// The fields read, in the order of the indices below (`context.traits`: only that field of
/// the `context` object is read).
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
    "category",
    "context.traits",
];
pub(super) const TYPE: usize = 0;
const USER_ID: usize = 1;
const ANONYMOUS_ID: usize = 2;
const EVENT: usize = 3;
const TIMESTAMP: usize = 4;
pub(super) const PROPERTIES: usize = 5;
const TRAITS: usize = 6;
const NAME: usize = 7;
const MESSAGE_ID: usize = 8;
const CATEGORY: usize = 9;
const CONTEXT_TRAITS: usize = 10;

const TYPES: &str = "track, identify, page, screen";

enum Kind {
    Track,
    Identify,
    Page,
    Screen,
}

pub(super) fn decode(f: &mut Fields) -> Result<Event, Rejection> {
    let kind = match type_from(f.take(TYPE), "type", TYPES)?.as_deref() {
        None | Some("track") => Kind::Track,
        Some("identify") => Kind::Identify,
        Some("page") => Kind::Page,
        Some("screen") => Kind::Screen,
        Some(other) => return Err(unknown_type("type", other, TYPES)),
    };
    let user_id = take_user(f)?;
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
            properties: match f.take(TRAITS) {
                None | Some(Json::Null) => {
                    properties_from(f.take(CONTEXT_TRAITS), "context.traits")?
                }
                traits => properties_from(traits, "traits")?,
            },
        },
        (Kind::Page, Some(name)) => {
            let mut properties = properties_from(f.take(PROPERTIES), "properties")?;
            copy_into(&mut properties, "name", f.take(NAME));
            copy_into(&mut properties, "category", f.take(CATEGORY));
            EventBody::Track { name, properties }
        }
        (Kind::Screen, Some(name)) => {
            let mut properties = properties_from(f.take(PROPERTIES), "properties")?;
            copy_into(&mut properties, "name", f.take(NAME));
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

/// A top-level field copied into the properties, when present and not null.
fn copy_into(properties: &mut Properties, key: &str, value: Option<Json>) {
    match value {
        None | Some(Json::Null) => {}
        Some(value) => {
            properties.insert(key.to_owned(), value);
        }
    }
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
    fn identify_traits_from_context() {
        // RudderStack: traits only in context.traits
        let ev = dec(
            r#"{"type":"identify","userId":"u1","timestamp":1,"channel":"server",
            "context":{"library":{"name":"analytics-python"},"traits":{"plan":"pro","n":2},"ip":"x"}}"#,
        )
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Profile {
                op: ProfileOp::Set,
                properties: json!({"plan":"pro","n":2}).as_object().unwrap().clone()
            }
        );
        // context before the other fields, and traits null: the same
        let ev = dec(
            r#"{"context":{"traits":{"plan":"pro"}},"traits":null,"type":"identify","userId":"u1","timestamp":1}"#,
        )
        .unwrap();
        assert_eq!(props(&ev)["plan"], json!("pro"));
        // top-level traits win, even when empty
        for (traits, want) in [
            (r#"{"plan":"free"}"#, json!({"plan":"free"})),
            ("{}", json!({})),
        ] {
            let ev = dec(&format!(
                r#"{{"type":"identify","userId":"u1","timestamp":1,"traits":{traits},
                "context":{{"traits":{{"plan":"pro"}}}}}}"#
            ))
            .unwrap();
            assert_eq!(&Json::Object(props(&ev).clone()), &want, "{traits}");
        }
        // no traits anywhere, or a context without them, or a context that is not an object
        for context in [
            "",
            r#","context":{}"#,
            r#","context":null"#,
            r#","context":"x""#,
            r#","context":[{"traits":{"a":1}}]"#,
            r#","context":{"traits":null}"#,
            r#","context":{"traits":{"a":1}},"context":{"ip":"x"}"#,
        ] {
            let ev = dec(&format!(
                r#"{{"type":"identify","userId":"u1","timestamp":1{context}}}"#
            ))
            .unwrap();
            assert!(props(&ev).is_empty(), "{context}");
        }
        // the last context counts
        let ev = dec(
            r#"{"type":"identify","userId":"u1","timestamp":1,"context":{"ip":"x"},"context":{"traits":{"a":1}}}"#,
        )
        .unwrap();
        assert_eq!(props(&ev)["a"], json!(1));
        // context.traits that is not an object is invalid, as traits would be
        let r = dec(r#"{"type":"identify","userId":"u1","timestamp":1,"context":{"traits":"x"}}"#)
            .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidProperties);
        assert!(r.detail.starts_with("context.traits"), "{}", r.detail);
        // a track event does not read context.traits
        let ev = dec(
            r#"{"type":"track","event":"e","userId":"u1","timestamp":1,"context":{"traits":"x"}}"#,
        )
        .unwrap();
        assert!(props(&ev).is_empty());
        // invalid JSON inside context is still invalid JSON
        let r = dec(r#"{"type":"identify","userId":"u1","timestamp":1,"context":{"traits":{,}}}"#)
            .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJson);
    }

    #[test]
    fn page_category() {
        let ev = dec(
            r#"{"type":"page","userId":"u1","timestamp":1,"name":"Lipstick","category":"beauty",
            "properties":{"url":"/l","category":"old"}}"#,
        )
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "page".into(),
                properties: json!({"url":"/l","category":"beauty","name":"Lipstick"})
                    .as_object()
                    .unwrap()
                    .clone()
            }
        );
        // null or absent category: properties.category is left alone
        let ev = dec(
            r#"{"type":"page","userId":"u1","timestamp":1,"category":null,"properties":{"category":"p"}}"#,
        )
        .unwrap();
        assert_eq!(props(&ev)["category"], json!("p"));
        let ev = dec(r#"{"type":"page","userId":"u1","timestamp":1}"#).unwrap();
        assert!(props(&ev).is_empty());
        // SPEC: page only; a screen's category is not copied, nor a track's
        let ev =
            dec(r#"{"type":"screen","userId":"u1","timestamp":1,"name":"Cart","category":"shop"}"#)
                .unwrap();
        assert_eq!(&Json::Object(props(&ev).clone()), &json!({"name":"Cart"}));
        let ev = dec(r#"{"event":"e","userId":"u1","timestamp":1,"category":"shop"}"#).unwrap();
        assert!(props(&ev).is_empty());
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
