//! The `sensors` format: Sensors Data (神策) tracking records (SPEC §2).
//!
//! ```json
//! {"type":"track","event":"BuyProduct","distinct_id":"u1","time":1732000000000,
//!  "properties":{"price":10},"_track_id":1234567}
//! ```
//!
//! | `type` | becomes |
//! |---|---|
//! | `track` (default when absent or null) | track `event` |
//! | `track_signup` | track `event`, with the top-level `original_id` (when present and not null) as the property `$original_id` |
//! | `profile_set` | profile, set |
//! | `profile_set_once` | profile, set where the attribute has no value yet |
//! | `profile_unset` | profile, the keys of `properties` set to null |
//! | `profile_increment` | profile, each key increased by its value (every value must be a number, else `invalid_properties`) |
//! | `profile_append` | profile, each key's list extended with its values |
//! | `profile_delete` | delete |
//! | `item_set`, `item_delete`, `track_id_bind`, `track_id_unbind` | [skipped](Decoded::Skipped), whatever else the message holds |
//! | anything else | `unknown_type` |
//!
//! The user is `distinct_id`, the time `time` (integer epoch milliseconds, or an RFC 3339
//! string), the event id `_track_id`. The SDKs' control property `$is_login_id` (a flag about
//! the id) is dropped from the properties of every profile type (it is never an attribute);
//! track events keep it like any other property.

use serde_json::Value as Json;

use super::decode::{
    event_id_from, event_name_from, properties_from, ts_from, type_from, type_name, unknown_type,
    user_id_from, Fields,
};
use super::{Decoded, Event, EventBody, ProfileOp, Rejection, SkipKind};
use crate::event::Reason;

/// The top-level fields read, in the order of the indices below.
pub(super) const KEYS: &[&str] = &[
    "type",
    "distinct_id",
    "event",
    "time",
    "properties",
    "_track_id",
    "original_id",
];
pub(super) const TYPE: usize = 0;
const DISTINCT_ID: usize = 1;
const EVENT: usize = 2;
const TIME: usize = 3;
pub(super) const PROPERTIES: usize = 4;
const TRACK_ID: usize = 5;
const ORIGINAL_ID: usize = 6;

const TYPES: &str = "track, track_signup, profile_set, profile_set_once, profile_unset, \
     profile_increment, profile_append, profile_delete (item_set, item_delete, track_id_bind \
     and track_id_unbind are skipped)";

/// The property the Sensors SDKs add to say that `distinct_id` is a login id.
pub const IS_LOGIN_ID: &str = "$is_login_id";

/// The property a `track_signup` keeps its `original_id` in.
pub const ORIGINAL_ID_PROPERTY: &str = "$original_id";

enum Kind {
    Track,
    Signup,
    Profile(ProfileOp),
    Delete,
}

pub(super) fn decode(f: &mut Fields) -> Result<Decoded, Rejection> {
    let kind = match type_from(f.take(TYPE), "type", TYPES)?.as_deref() {
        None | Some("track") => Kind::Track,
        Some("track_signup") => Kind::Signup,
        Some("profile_set") => Kind::Profile(ProfileOp::Set),
        Some("profile_set_once") => Kind::Profile(ProfileOp::SetOnce),
        Some("profile_unset") => Kind::Profile(ProfileOp::Unset),
        Some("profile_increment") => Kind::Profile(ProfileOp::Increment),
        Some("profile_append") => Kind::Profile(ProfileOp::Append),
        Some("profile_delete") => Kind::Delete,
        Some("item_set") => return Ok(Decoded::Skipped(SkipKind::ItemSet)),
        Some("item_delete") => return Ok(Decoded::Skipped(SkipKind::ItemDelete)),
        Some("track_id_bind") => return Ok(Decoded::Skipped(SkipKind::TrackIdBind)),
        Some("track_id_unbind") => return Ok(Decoded::Skipped(SkipKind::TrackIdUnbind)),
        Some(other) => return Err(unknown_type("type", other, TYPES)),
    };
    let user_id = user_id_from(f.take(DISTINCT_ID), "distinct_id")?;
    let name = match kind {
        Kind::Track | Kind::Signup => Some(event_name_from(f.take(EVENT), "event")?),
        _ => None,
    };
    let ts = ts_from(f.take(TIME), "time")?;
    let mut properties = properties_from(f.take(PROPERTIES), "properties")?;
    let body = match (kind, name) {
        (Kind::Track, Some(name)) => EventBody::Track { name, properties },
        (Kind::Signup, Some(name)) => {
            match f.take(ORIGINAL_ID) {
                None | Some(Json::Null) => {}
                Some(original) => {
                    properties.insert(ORIGINAL_ID_PROPERTY.to_owned(), original);
                }
            }
            EventBody::Track { name, properties }
        }
        (Kind::Profile(op), _) => {
            properties.shift_remove(IS_LOGIN_ID);
            if op == ProfileOp::Increment {
                if let Some((key, value)) = properties.iter().find(|(_, v)| !v.is_number()) {
                    return Err(Rejection::new(
                        Reason::InvalidProperties,
                        format!(
                            "profile_increment: properties.{key} is {}, expected a number",
                            type_name(value)
                        ),
                    ));
                }
            }
            EventBody::Profile { op, properties }
        }
        _ => EventBody::Delete,
    };
    let event_id = event_id_from(f.take(TRACK_ID));
    Ok(Decoded::Event(Event {
        user_id,
        ts,
        event_id,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{decode_message, DecodeOptions, Format, Reason};
    use super::*;
    use serde_json::{json, Map, Value as Json};

    fn decoded(s: &str) -> Result<Decoded, Rejection> {
        decode_message(
            s.as_bytes(),
            &DecodeOptions {
                format: Format::Sensors,
                ..DecodeOptions::default()
            },
        )
    }

    fn dec(s: &str) -> Result<Event, Rejection> {
        match decoded(s)? {
            Decoded::Event(ev) => Ok(ev),
            Decoded::Skipped(kind) => panic!("{s}: skipped as {kind:?}"),
        }
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
            "time":"2024-11-19T15:06:40.5+08:00","properties":{"$lib":"python"}}"#,
        )
        .unwrap();
        assert_eq!(ev.ts, 1_732_000_000_500);
        assert_eq!(ev.user_id, "u1");
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "$SignUp".into(),
                properties: obj(json!({"$lib":"python","$original_id":"anon"}))
            }
        );
        // original_id overrides a property of the same name; absent or null adds nothing
        let ev = dec(
            r#"{"type":"track_signup","event":"$SignUp","distinct_id":"u1","original_id":7,
            "time":1,"properties":{"$original_id":"x"}}"#,
        )
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "$SignUp".into(),
                properties: obj(json!({"$original_id":7}))
            }
        );
        for original in ["", r#","original_id":null"#] {
            let ev = dec(&format!(
                r#"{{"type":"track_signup","event":"$SignUp","distinct_id":"u1","time":1{original}}}"#
            ))
            .unwrap();
            assert_eq!(
                ev.body,
                EventBody::Track {
                    name: "$SignUp".into(),
                    properties: Map::new()
                }
            );
        }
        // original_id is read only by track_signup
        let ev = dec(r#"{"event":"e","distinct_id":"u1","time":1,"original_id":"a"}"#).unwrap();
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "e".into(),
                properties: Map::new()
            }
        );
        let r = dec(r#"{"type":"track_signup","distinct_id":"u1","time":1}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingEvent);
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
    fn track_keeps_is_login_id() {
        let ev = dec(r#"{"type":"track","event":"e","distinct_id":"u1","time":1,
            "properties":{"$is_login_id":true,"a":1}}"#)
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Track {
                name: "e".into(),
                properties: obj(json!({"$is_login_id":true,"a":1}))
            }
        );
    }

    #[test]
    fn profiles() {
        let p = r#"{"gender":"F","age":30}"#;
        for (t, op) in [
            ("profile_set", ProfileOp::Set),
            ("profile_set_once", ProfileOp::SetOnce),
            ("profile_unset", ProfileOp::Unset),
            ("profile_increment", ProfileOp::Increment),
            ("profile_append", ProfileOp::Append),
        ] {
            let p = if op == ProfileOp::Increment {
                r#"{"gender":1,"age":30}"#
            } else {
                p
            };
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
                    properties: serde_json::from_str(p).unwrap()
                }
            );
            // $is_login_id is never an attribute, whatever its value
            for flag in ["true", "false", "\"x\"", "null"] {
                let ev = dec(&format!(
                    r#"{{"type":"{t}","distinct_id":"u1","time":5,
                    "properties":{{"$is_login_id":{flag},"b":2}}}}"#
                ))
                .unwrap();
                assert_eq!(
                    ev.body,
                    EventBody::Profile {
                        op,
                        properties: obj(json!({"b":2}))
                    },
                    "{t} {flag}"
                );
            }
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
    fn increment_needs_numbers() {
        let ev = dec(r#"{"type":"profile_increment","distinct_id":"u1","time":5,
            "properties":{"a":1,"b":-2.5,"c":0}}"#)
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::Profile {
                op: ProfileOp::Increment,
                properties: obj(json!({"a":1,"b":-2.5,"c":0}))
            }
        );
        for bad in ["\"1\"", "null", "true", "[1]", "{}"] {
            let r = dec(&format!(
                r#"{{"type":"profile_increment","distinct_id":"u1","time":5,
                "properties":{{"$is_login_id":true,"a":1,"b":{bad}}}}}"#
            ))
            .unwrap_err();
            assert_eq!(r.reason, Reason::InvalidProperties, "{bad}");
            assert!(r.detail.contains("properties.b"), "{}", r.detail);
        }
        // the other checks come first
        let r = dec(r#"{"type":"profile_increment","time":5,"properties":{"a":"x"}}"#).unwrap_err();
        assert_eq!(r.reason, Reason::MissingUserId);
        let r = dec(r#"{"type":"profile_increment","distinct_id":"u","properties":{"a":"x"}}"#)
            .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidTimestamp);
        // a non-number value is fine in the other profile types
        assert!(dec(
            r#"{"type":"profile_append","distinct_id":"u1","time":5,"properties":{"a":"x"}}"#
        )
        .is_ok());
    }

    #[test]
    fn skipped_types() {
        for (t, kind) in [
            ("item_set", SkipKind::ItemSet),
            ("item_delete", SkipKind::ItemDelete),
            ("track_id_bind", SkipKind::TrackIdBind),
            ("track_id_unbind", SkipKind::TrackIdUnbind),
        ] {
            assert_eq!(kind.as_str(), t);
            // as the SDKs send them (an item has no distinct_id) ...
            let sdk = if t.starts_with("item") {
                format!(
                    r#"{{"type":"{t}","time":1732000000000,"lib":{{"$lib":"python"}},
                    "item_type":"book","item_id":"b1","properties":{{"price":3}}}}"#
                )
            } else {
                format!(
                    r#"{{"type":"{t}","event":"$BindID","time":1732000000000,"distinct_id":"u1",
                    "identities":{{"$identity_login_id":"u1","$identity_mobile":"123"}},
                    "properties":{{"$is_login_id":true}}}}"#
                )
            };
            assert_eq!(decoded(&sdk), Ok(Decoded::Skipped(kind)), "{sdk}");
            // ... and whatever else the message holds: skipped is decided by the type alone
            let odd = format!(r#"{{"type":"{t}","time":1.5,"properties":"x","distinct_id":[]}}"#);
            assert_eq!(decoded(&odd), Ok(Decoded::Skipped(kind)), "{odd}");
            // only a well-formed object is skipped
            let broken = format!(r#"{{"type":"{t}""#);
            assert_eq!(decoded(&broken).unwrap_err().reason, Reason::InvalidJson);
            // the event-only entry point cannot return it
            let r = super::super::decode(
                sdk.as_bytes(),
                &DecodeOptions {
                    format: Format::Sensors,
                    ..DecodeOptions::default()
                },
            )
            .unwrap_err();
            assert_eq!(r.reason, Reason::UnknownType);
            assert!(r.detail.contains("skipped"), "{}", r.detail);
        }
        // other formats do not skip these types
        for format in [Format::Native, Format::Segment] {
            let r = decode_message(
                br#"{"type":"item_set","user_id":"u","userId":"u","ts":1,"timestamp":1}"#,
                &DecodeOptions {
                    format,
                    ..DecodeOptions::default()
                },
            )
            .unwrap_err();
            assert_eq!(r.reason, Reason::UnknownType);
        }
    }

    #[test]
    fn delete_and_unknown() {
        let ev = dec(r#"{"type":"profile_delete","distinct_id":"u1","time":5}"#).unwrap();
        assert_eq!(ev.body, EventBody::Delete);
        let ev = dec(
            r#"{"type":"profile_delete","distinct_id":"u1","time":5,"properties":{"$is_login_id":true}}"#,
        )
        .unwrap();
        assert_eq!(ev.body, EventBody::Delete);
        for t in ["delete", "profile", "Track", "item", "profile_remove"] {
            let r = decoded(&format!(
                r#"{{"type":"{t}","distinct_id":"u1","time":5,"event":"e"}}"#
            ))
            .unwrap_err();
            assert_eq!(r.reason, Reason::UnknownType, "{t}");
        }
    }
}
