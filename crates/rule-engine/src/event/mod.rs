//! The internal event model every input format decodes into, and the dead-letter reasons.
//!
//! Decoding never panics: any input either becomes a [`Decoded`] (an [`Event`], or a message
//! that is [skipped](Decoded::Skipped)) or a [`Rejection`] whose [`Reason`] is one of the exact
//! strings of SPEC §2.

use serde_json::{Map, Value as Json};

use crate::value::Scalar;

mod decode;
mod native;
mod segment;
mod sensors;

pub use decode::{
    decode, decode_message, decode_message_keeping, DecodeOptions, Format, TrackProperties,
    DEFAULT_MAX_EVENT_BYTES,
};

/// Epoch milliseconds (UTC).
pub type Millis = i64;

/// Properties of an event: a JSON object (absent and `null` both decode to an empty map).
pub type Properties = Map<String, Json>;

/// What one accepted message decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// An event to apply.
    Event(Event),
    /// A well-formed message of a kind tagstream does not apply (SPEC §2 rev 2: Sensors item
    /// records and identity bindings). It is neither applied nor dead-lettered, does not move
    /// engine time, and is counted as `tagstream_events_total{outcome="skipped"}`.
    Skipped(SkipKind),
}

/// The kinds of message that are [skipped](Decoded::Skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipKind {
    /// Sensors `item_set` (an item table, not a user).
    ItemSet,
    /// Sensors `item_delete`.
    ItemDelete,
    /// Sensors `track_id_bind` (identity binding; identities are not merged yet).
    TrackIdBind,
    /// Sensors `track_id_unbind`.
    TrackIdUnbind,
}

impl SkipKind {
    /// The message's `type`, as the format spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::ItemSet => "item_set",
            SkipKind::ItemDelete => "item_delete",
            SkipKind::TrackIdBind => "track_id_bind",
            SkipKind::TrackIdUnbind => "track_id_unbind",
        }
    }
}

/// One accepted input event, format-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub user_id: String,
    /// Event time, epoch milliseconds (sub-millisecond precision truncated).
    pub ts: Millis,
    /// Producer-assigned id used for deduplication (`event_id`, `messageId`, `_track_id`).
    pub event_id: Option<String>,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    /// A tracked action (`purchase`, `page`, ...).
    Track {
        name: String,
        properties: Properties,
    },
    /// Set user attributes.
    Profile {
        op: ProfileOp,
        properties: Properties,
    },
    /// Erase the user.
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileOp {
    /// Every key in `properties` is set to its value (an explicit null is a value).
    Set,
    /// Keys are set only where the attribute has no value yet.
    SetOnce,
    /// Every key in `properties` is set to null (the values are ignored).
    Unset,
    /// Every key in `properties` (all of them JSON numbers: the decoders check) is set to its
    /// current value plus the given number; a current value that is absent, null or not a
    /// number counts as 0 (Sensors `profile_increment`).
    Increment,
    /// Every key in `properties` is set to its current list with the given values appended,
    /// each value only if the list does not hold it yet; a current value that is not a list
    /// counts as an empty list (Sensors `profile_append`). A given array contributes its
    /// elements; any other given value (null included) is one value to append.
    Append,
}

impl ProfileOp {
    /// The value an attribute takes when this operation writes `given` over `current` (the
    /// attribute's current value, `None` when it has none). Whether it is written at all is
    /// decided by event time, as for any profile value (see the engine's `apply`).
    pub fn value(self, current: Option<&Scalar>, given: &Json) -> Scalar {
        match self {
            ProfileOp::Set | ProfileOp::SetOnce => Scalar::from_json(given),
            ProfileOp::Unset => Scalar::Null,
            ProfileOp::Increment => {
                let base = match current {
                    Some(Scalar::Num(x)) => *x,
                    _ => 0.0,
                };
                let sum = base + given.as_f64().unwrap_or(0.0);
                // -0.0 is stored as 0.0, as `Scalar::from_json` does
                Scalar::Num(if sum == 0.0 { 0.0 } else { sum })
            }
            ProfileOp::Append => {
                let mut list = match current {
                    Some(Scalar::Composite(text)) => match serde_json::from_str(text) {
                        Ok(Json::Array(items)) => items,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                let mut push = |v: &Json| {
                    if !list.iter().any(|x| json_equal(x, v)) {
                        list.push(v.clone());
                    }
                };
                match given {
                    Json::Array(items) => items.iter().for_each(&mut push),
                    other => push(other),
                }
                Scalar::from_json(&Json::Array(list))
            }
        }
    }
}

/// Structural JSON equality with numbers compared by value (`1` equals `1.0`) and objects
/// compared as sets of keys (key order does not matter).
pub fn json_equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Why an input message could not be accepted (exact strings of SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidJson,
    NotAnObject,
    MissingUserId,
    InvalidUserId,
    MissingEvent,
    InvalidTimestamp,
    FutureTimestamp,
    TooLarge,
    InvalidProperties,
    UnknownType,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingUserId,
        Reason::InvalidUserId,
        Reason::MissingEvent,
        Reason::InvalidTimestamp,
        Reason::FutureTimestamp,
        Reason::TooLarge,
        Reason::InvalidProperties,
        Reason::UnknownType,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingUserId => "missing_user_id",
            Reason::InvalidUserId => "invalid_user_id",
            Reason::MissingEvent => "missing_event",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::TooLarge => "too_large",
            Reason::InvalidProperties => "invalid_properties",
            Reason::UnknownType => "unknown_type",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that was not accepted: the reason plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::engine;
    use crate::rules::RuleSet;
    use crate::state::UserState;

    #[test]
    fn increment_values() {
        let inc =
            |current: Option<Scalar>, by: Json| ProfileOp::Increment.value(current.as_ref(), &by);
        assert_eq!(inc(Some(Scalar::Num(5.0)), json!(3)), Scalar::Num(8.0));
        assert_eq!(inc(Some(Scalar::Num(5.0)), json!(-2.5)), Scalar::Num(2.5));
        assert_eq!(inc(Some(Scalar::Num(-3.0)), json!(3)), Scalar::Num(0.0));
        // absent, null or not a number: counts as 0
        for current in [
            None,
            Some(Scalar::Null),
            Some(Scalar::Str("5".into())),
            Some(Scalar::Bool(true)),
            Some(Scalar::Composite("[1]".into())),
        ] {
            assert_eq!(
                inc(current.clone(), json!(2)),
                Scalar::Num(2.0),
                "{current:?}"
            );
        }
        // -0.0 is stored as 0.0
        let z = inc(Some(Scalar::Num(-0.0)), json!(-0.0));
        assert!(matches!(z, Scalar::Num(x) if x == 0.0 && x.is_sign_positive()));
    }

    #[test]
    fn append_values() {
        let app = |current: Option<Scalar>, given: Json| {
            ProfileOp::Append.value(current.as_ref(), &given)
        };
        let list = |j: Json| Scalar::from_json(&j);
        assert_eq!(app(None, json!(["a", "b"])), list(json!(["a", "b"])));
        // already present values are kept once, also within one append
        assert_eq!(
            app(Some(list(json!(["a", "b"]))), json!(["b", "c", "c", "a"])),
            list(json!(["a", "b", "c"]))
        );
        // numbers compare by value, objects whatever their key order
        assert_eq!(
            app(
                Some(list(json!([1, {"x":1,"y":2}]))),
                json!([1.0, {"y":2,"x":1}, 2])
            ),
            list(json!([1, {"x":1,"y":2}, 2]))
        );
        // a current value that is not a list counts as an empty list
        for current in [
            Scalar::Null,
            Scalar::Str("a".into()),
            Scalar::Num(1.0),
            Scalar::Bool(false),
            Scalar::Composite(r#"{"a":1}"#.into()),
        ] {
            assert_eq!(
                app(Some(current.clone()), json!(["a"])),
                list(json!(["a"])),
                "{current:?}"
            );
        }
        // a given value that is not an array is one value
        assert_eq!(
            app(Some(list(json!(["a"]))), json!("b")),
            list(json!(["a", "b"]))
        );
        assert_eq!(
            app(Some(list(json!(["a"]))), json!("a")),
            list(json!(["a"]))
        );
        assert_eq!(app(None, json!(null)), list(json!([null])));
        assert_eq!(app(None, json!([])), list(json!([])));
        // existing duplicates are left as they are
        assert_eq!(
            app(Some(list(json!(["a", "a"]))), json!(["a"])),
            list(json!(["a", "a"]))
        );
    }

    #[test]
    fn other_ops_values() {
        let cur = Scalar::Num(1.0);
        assert_eq!(
            ProfileOp::Set.value(Some(&cur), &json!("x")),
            Scalar::Str("x".into())
        );
        assert_eq!(ProfileOp::SetOnce.value(None, &json!(2)), Scalar::Num(2.0));
        assert_eq!(
            ProfileOp::Unset.value(Some(&cur), &json!(true)),
            Scalar::Null
        );
    }

    #[test]
    fn json_equality() {
        assert!(json_equal(&json!(1), &json!(1.0)));
        assert!(json_equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_equal(&json!(1), &json!(true)));
        assert!(!json_equal(&json!(1), &json!("1")));
        assert!(!json_equal(&json!(-1), &json!(u64::MAX)));
        assert!(json_equal(
            &json!({"a":[1,{"b":null}]}),
            &json!({"a":[1.0,{"b":null}]})
        ));
        assert!(!json_equal(&json!({"a":1}), &json!({"a":1,"b":2})));
        assert!(!json_equal(&json!({"a":1,"c":2}), &json!({"a":1,"b":2})));
        assert!(!json_equal(&json!([1, 2]), &json!([2, 1])));
        assert!(json_equal(&json!(null), &json!(null)));
    }

    const RULES: &str = r#"
[[tag]]
name = "score"
kind = "profile"
property = "score"

[[tag]]
name = "likes"
kind = "profile"
property = "likes"

[[tag]]
name = "login"
kind = "profile"
property = "$is_login_id"

[[segment]]
name = "high"
when = "score >= 10"
"#;

    /// Applies sensors lines to one user as the driver does (event clock) and dumps the tags.
    fn replay(lines: &[&str]) -> serde_json::Value {
        let rules = RuleSet::compile(RULES, "t").unwrap();
        let user: Arc<str> = Arc::from("u1");
        let mut state = UserState::new(&rules.aggregates, rules.segments.len());
        let mut now = i64::MIN;
        let opts = DecodeOptions {
            format: Format::Sensors,
            ..DecodeOptions::default()
        };
        let mut out = Vec::new();
        for line in lines {
            let Decoded::Event(ev) = decode_message(line.as_bytes(), &opts).unwrap() else {
                continue;
            };
            now = now.max(ev.ts);
            engine::catch_up(&rules, &user, &mut state, now, &mut out);
            engine::apply(&rules, &user, &mut state, &ev, now, &mut out);
        }
        engine::dump_line(&rules, "u1", &state, now)["tags"].clone()
    }

    fn line(ty: &str, time: i64, props: &str) -> String {
        format!(r#"{{"type":"{ty}","distinct_id":"u1","time":{time},"properties":{props}}}"#)
    }

    #[test]
    fn increments_compete_by_event_time() {
        let l = [
            line(
                "profile_increment",
                100,
                r#"{"score":3,"$is_login_id":true}"#,
            ),
            line("profile_increment", 200, r#"{"score":4.5}"#),
            // late: older than the current value (7.5 at 200), so it loses and changes nothing
            line("profile_increment", 150, r#"{"score":100}"#),
            // a tie with the current value's time: the later arrival wins
            line("profile_increment", 200, r#"{"score":1}"#),
        ];
        let lines: Vec<&str> = l.iter().map(String::as_str).collect();
        let tags = replay(&lines);
        assert_eq!(tags["score"], json!(8.5));
        assert_eq!(tags["login"], json!(null));
        // a set later in event time replaces the sum; an increment after it adds to it
        let l = [
            line("profile_increment", 100, r#"{"score":3}"#),
            line("profile_set", 300, r#"{"score":"ten"}"#),
            line("profile_increment", 400, r#"{"score":2}"#),
            line("profile_set", 350, r#"{"score":50}"#),
        ];
        let lines: Vec<&str> = l.iter().map(String::as_str).collect();
        assert_eq!(replay(&lines)["score"], json!(2));
        // an unset makes it null, which counts as 0
        let l = [
            line("profile_set", 100, r#"{"score":7}"#),
            line("profile_unset", 200, r#"{"score":true}"#),
            line("profile_increment", 300, r#"{"score":-1}"#),
        ];
        let lines: Vec<&str> = l.iter().map(String::as_str).collect();
        assert_eq!(replay(&lines)["score"], json!(-1));
    }

    #[test]
    fn appends_build_lists() {
        let l = [
            line("profile_set", 100, r#"{"likes":"not a list"}"#),
            line(
                "profile_append",
                200,
                r#"{"likes":["a","b"],"$is_login_id":true}"#,
            ),
            line("profile_append", 300, r#"{"likes":["b","c"]}"#),
            // late: loses to the list recorded at 300
            line("profile_append", 250, r#"{"likes":["z"]}"#),
            r#"{"type":"item_set","item_type":"x","item_id":"1","time":999999}"#.to_string(),
        ];
        let lines: Vec<&str> = l.iter().map(String::as_str).collect();
        let tags = replay(&lines);
        assert_eq!(tags["likes"], json!(["a", "b", "c"]));
        assert_eq!(tags["login"], json!(null));
    }
}
