//! The internal event model every input format decodes into, and the dead-letter reasons.
//!
//! Decoding never panics: any input either becomes an [`Event`] or a [`Rejection`] whose
//! [`Reason`] is one of the exact strings of SPEC §2.

use serde_json::{Map, Value as Json};

mod decode;
mod native;
mod segment;
mod sensors;

pub use decode::{decode, DecodeOptions, Format, DEFAULT_MAX_EVENT_BYTES};

/// Epoch milliseconds (UTC).
pub type Millis = i64;

/// Properties of an event: a JSON object (absent and `null` both decode to an empty map).
pub type Properties = Map<String, Json>;

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
