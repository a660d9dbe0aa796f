//! Format dispatch and the checks shared by every input format (SPEC §2).
//!
//! [`decode_message`] turns the raw bytes of one message (a Kafka value or one NDJSON line)
//! into a [`Decoded`] (an [`Event`], or a message to skip) or a [`Rejection`]. The checks run
//! in a fixed order, so a message with several problems always gets the same reason:
//!
//! 1. `too_large`: more than [`DecodeOptions::max_event_bytes`] bytes;
//! 2. `invalid_json`: not UTF-8, empty or whitespace only (a Kafka tombstone, a message with no
//!    value, reaches the decoder as an empty message), nesting deeper than [`MAX_DEPTH`] levels
//!    (checked by a byte scan *before* parsing, so no input can exhaust the stack), or a JSON
//!    syntax error;
//! 3. `not_an_object`: any other top-level JSON value, the literal `null` included;
//! 4. the format's own mapping (see `native.rs`, `segment.rs`, `sensors.rs`), which checks, in
//!    this order, the type (`unknown_type`, or a type that is skipped), the user id
//!    (`missing_user_id`, `invalid_user_id`), the event name of a track event
//!    (`missing_event`), the time (`invalid_timestamp`) and the properties
//!    (`invalid_properties`).
//!
//! The message is parsed once, in a single pass: the top-level object is never built as a map;
//! only the fields the format reads are kept (as [`serde_json::Value`]s, the properties object
//! moved into the event, never cloned) and every other field is skipped without allocating. A
//! format may also read one field of a top-level object (`context.traits` of a Segment
//! message): the rest of that object is skipped the same way.

use chrono::DateTime;
use serde::de::DeserializeSeed;
use serde_json::Value as Json;

use super::{Decoded, Event, Millis, Properties, Reason, Rejection};

mod seeds;
use seeds::{Top, TopSeed};

/// Default `max_event_bytes`: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Deepest accepted nesting of arrays and objects (the top-level object counts as level 1).
pub const MAX_DEPTH: usize = 64;

/// Longest accepted user id, in UTF-8 bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Smallest accepted event time: 0000-01-01T00:00:00.000Z.
pub const MIN_TS: Millis = -62_167_219_200_000;
/// Largest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_TS: Millis = 253_402_300_799_999;

/// The input format of a source (`format = "native" | "segment" | "sensors"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Native,
    Segment,
    Sensors,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Native, Format::Segment, Format::Sensors];

    /// Parses the configuration / command-line name of a format (exact, lower case).
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "native" => Some(Format::Native),
            "segment" => Some(Format::Segment),
            "sensors" => Some(Format::Sensors),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Segment => "segment",
            Format::Sensors => "sensors",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::parse(s)
            .ok_or_else(|| format!("unknown format {s:?}: expected native, segment or sensors"))
    }
}

/// How to decode the messages of one source.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub format: Format,
    /// Messages longer than this many bytes are rejected as `too_large`.
    pub max_event_bytes: usize,
}

impl Default for DecodeOptions {
    /// `native`, 1 MiB.
    fn default() -> Self {
        DecodeOptions {
            format: Format::Native,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// Decodes one message. Never panics: every input gives an event, a message to skip or a
/// rejection. This is what a consumer of a source calls.
pub fn decode_message(raw: &[u8], opts: &DecodeOptions) -> Result<Decoded, Rejection> {
    if raw.len() > opts.max_event_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "message is {} bytes, at most {} allowed",
                raw.len(),
                opts.max_event_bytes
            ),
        ));
    }
    decode_with(raw, opts, None, &mut false)
}

/// Property keys of track events that a rule set reads (`RuleSet::track_properties`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackProperties {
    keys: Vec<Box<str>>,
}

impl TrackProperties {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> TrackProperties {
        let mut keys: Vec<Box<str>> = keys.into_iter().map(|k| k.as_ref().into()).collect();
        keys.sort();
        keys.dedup();
        TrackProperties { keys }
    }

    fn keeps(&self, key: &str) -> bool {
        self.keys.iter().any(|k| &**k == key)
    }
}

/// [`decode_message`] for a consumer that reads only the properties `keep` names of track
/// events (the engine: the rules read nothing else of them). The other properties of a track
/// event are parsed and checked as JSON exactly as [`decode_message`] does, but not built into
/// values, which is most of the cost of decoding. Profile properties are all kept (they are
/// stored), so a message that does not decode to a track event is decoded again in full: the
/// result, rejections included, is always what [`decode_message`] gives, up to the dropped keys.
pub fn decode_message_keeping(
    raw: &[u8],
    opts: &DecodeOptions,
    keep: &TrackProperties,
) -> Result<Decoded, Rejection> {
    if raw.len() > opts.max_event_bytes {
        return decode_message(raw, opts);
    }
    let mut filtered = false;
    match decode_with(raw, opts, Some(keep), &mut filtered) {
        decoded @ Ok(Decoded::Event(Event {
            body: super::EventBody::Track { .. },
            ..
        })) => decoded,
        // The type came before the properties, so nothing was dropped: this is the full decode.
        decoded @ Ok(_) if !filtered => decoded,
        _ => decode_message(raw, opts),
    }
}

/// `filtered` is set when properties were dropped (only with `keep`).
fn decode_with(
    raw: &[u8],
    opts: &DecodeOptions,
    keep: Option<&TrackProperties>,
    filtered: &mut bool,
) -> Result<Decoded, Rejection> {
    // The fields stay in this frame and are lent out: moving them (a dozen JSON values) through
    // each return showed in profiles.
    let (keys, properties) = match opts.format {
        Format::Native => (super::native::KEYS, super::native::PROPERTIES),
        Format::Segment => (super::segment::KEYS, super::segment::PROPERTIES),
        Format::Sensors => (super::sensors::KEYS, super::sensors::PROPERTIES),
    };
    let mut fields = Fields::default();
    parse_object(raw, keys, keep.map(|k| (properties, k)), &mut fields)?;
    *filtered = fields.filtered;
    match opts.format {
        Format::Native => super::native::decode(&mut fields).map(Decoded::Event),
        Format::Segment => super::segment::decode(&mut fields).map(Decoded::Event),
        Format::Sensors => super::sensors::decode(&mut fields),
    }
}

/// Decodes one message that must be an event: [`decode_message`] for callers that only read
/// events (tools, tests, generated `native` input, where nothing is ever skipped). A message
/// that [`decode_message`] would skip is returned as a rejection `unknown_type` whose detail
/// says so: such a caller has no way to apply it. A consumer of a source must call
/// [`decode_message`] instead, so that skipped messages are counted, not dead-lettered.
pub fn decode(raw: &[u8], opts: &DecodeOptions) -> Result<Event, Rejection> {
    match decode_message(raw, opts)? {
        Decoded::Event(event) => Ok(event),
        Decoded::Skipped(kind) => Err(Rejection::new(
            Reason::UnknownType,
            format!(
                "type {:?} is skipped by the {} format, not an event",
                kind.as_str(),
                opts.format
            ),
        )),
    }
}

/// Most fields a format reads.
pub(super) const MAX_FIELDS: usize = 12;

const _: () = assert!(
    super::native::KEYS.len() <= MAX_FIELDS
        && super::segment::KEYS.len() <= MAX_FIELDS
        && super::sensors::KEYS.len() <= MAX_FIELDS
);

/// The top-level fields a format reads, by their index in the format's key list (`KEYS`).
/// A field given twice keeps its last value, as in a JSON object.
#[derive(Debug, Default)]
pub(super) struct Fields {
    values: [Option<Json>; MAX_FIELDS],
    /// Whether some properties were dropped (see [`decode_message_keeping`]).
    filtered: bool,
}

impl Fields {
    /// Takes field `i` out (`None` when absent).
    pub(super) fn take(&mut self, i: usize) -> Option<Json> {
        self.values.get_mut(i).and_then(Option::take)
    }

    /// Whether the event type was read already and names something other than a track event
    /// (every format has its type at [`TYPE_FIELD`]; absent, null and `"track"` mean track).
    fn known_not_track(&self) -> bool {
        matches!(&self.values[TYPE_FIELD], Some(Json::String(t)) if t != "track")
    }
}

/// Index of the event type in every format's key list.
pub(super) const TYPE_FIELD: usize = 0;

const _: () = assert!(
    super::native::TYPE == TYPE_FIELD
        && super::segment::TYPE == TYPE_FIELD
        && super::sensors::TYPE == TYPE_FIELD
);

/// Steps 2 and 3 of the check order: bytes → the fields named by `keys` of a top-level object,
/// written into `fields` (empty on entry).
fn parse_object(
    raw: &[u8],
    keys: &[&str],
    filter: Option<(usize, &TrackProperties)>,
    fields: &mut Fields,
) -> Result<(), Rejection> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        Rejection::new(
            Reason::InvalidJson,
            format!(
                "message is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let trimmed = text.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r'));
    if trimmed.is_empty() {
        return Err(Rejection::new(
            Reason::InvalidJson,
            if raw.is_empty() {
                "message is empty (a Kafka tombstone has no value)"
            } else {
                "message is only white space"
            },
        ));
    }
    check_depth(trimmed.as_bytes())?;
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let top = TopSeed {
        keys,
        filter,
        fields,
    }
    .deserialize(&mut de)
    .and_then(|top| de.end().map(|()| top))
    .map_err(|e| Rejection::new(Reason::InvalidJson, format!("JSON syntax error: {e}")))?;
    match top {
        Top::Object => Ok(()),
        Top::Other(what) => Err(Rejection::new(
            Reason::NotAnObject,
            format!("top-level JSON value is {what}, expected an object"),
        )),
    }
}

/// Rejects nesting deeper than [`MAX_DEPTH`] with a byte scan that skips string contents.
///
/// Brackets are counted without checking that they match: syntax errors are left to the
/// parser, which then never recurses deeper than the depth counted here.
fn check_depth(bytes: &[u8]) -> Result<(), Rejection> {
    // Nesting needs an opening bracket per level: most messages have too few to go deep, and
    // counting them is much cheaper than the scan below.
    if opening_brackets(bytes) <= MAX_DEPTH {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1, // skip the escaped byte (`\"` must not end the string)
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(Rejection::new(
                            Reason::InvalidJson,
                            format!("JSON nesting is deeper than {MAX_DEPTH} levels (at byte {i})"),
                        ));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

/// How many `[` and `{` bytes `bytes` holds. `[` (0x5b) and `{` (0x7b) are the only bytes that
/// become `{` with bit 0x20 set, and per-chunk byte counters let the loop run on SIMD lanes:
/// this runs on every message, and a byte-at-a-time count cost as much as a tenth of decoding.
fn opening_brackets(bytes: &[u8]) -> usize {
    const CHUNK: usize = 128; // at most 128 per chunk: fits the u8 counters
    bytes
        .chunks(CHUNK)
        .map(|chunk| {
            let in_chunk: u8 = chunk
                .iter()
                .map(|&b| u8::from(b | 0x20 == b'{'))
                .fold(0u8, u8::wrapping_add);
            usize::from(in_chunk)
        })
        .sum()
}

/// A JSON type name with its article, for rejection details.
pub(super) fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_f64() => "a float",
        Json::Number(_) => "an integer",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// A short rendering of a JSON value for details (long strings are cut).
fn show(v: &Json) -> String {
    let s = v.to_string();
    if s.len() <= 64 {
        return s;
    }
    let mut end = 60;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The type field; absent or null gives `None` (the format's default type).
/// A present type that is not a string is `unknown_type`.
pub(super) fn type_from(
    value: Option<Json>,
    key: &str,
    known: &str,
) -> Result<Option<String>, Rejection> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(Rejection::new(
            Reason::UnknownType,
            format!("{key} is {}, expected one of {known}", type_name(&other)),
        )),
    }
}

/// The rejection for a type string the format does not know.
pub(super) fn unknown_type(key: &str, ty: &str, known: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownType,
        format!("unknown {key} {ty:?}, expected one of {known}"),
    )
}

/// Validates a user id (`None` = absent): a non-empty string of at most 256 bytes, or a JSON
/// integer (used as its decimal string).
pub(super) fn user_id_from(value: Option<Json>, key: &str) -> Result<String, Rejection> {
    match value {
        None => Err(Rejection::new(
            Reason::MissingUserId,
            format!("{key} is missing"),
        )),
        Some(Json::Null) => Err(Rejection::new(
            Reason::MissingUserId,
            format!("{key} is null"),
        )),
        Some(Json::String(s)) => {
            if s.is_empty() {
                Err(Rejection::new(
                    Reason::InvalidUserId,
                    format!("{key} is an empty string"),
                ))
            } else if s.len() > MAX_USER_ID_BYTES {
                Err(Rejection::new(
                    Reason::InvalidUserId,
                    format!(
                        "{key} is {} bytes, at most {MAX_USER_ID_BYTES} allowed",
                        s.len()
                    ),
                ))
            } else {
                Ok(s)
            }
        }
        Some(Json::Number(n)) if !n.is_f64() => Ok(n.to_string()),
        Some(other) => Err(Rejection::new(
            Reason::InvalidUserId,
            format!(
                "{key} is {} ({}), expected a non-empty string or an integer",
                type_name(&other),
                show(&other)
            ),
        )),
    }
}

/// Validates the event name of a track event: a non-empty string.
pub(super) fn event_name_from(value: Option<Json>, key: &str) -> Result<String, Rejection> {
    match value {
        None => Err(Rejection::new(
            Reason::MissingEvent,
            format!("{key} is missing"),
        )),
        Some(Json::String(s)) if !s.is_empty() => Ok(s),
        Some(Json::String(_)) => Err(Rejection::new(
            Reason::MissingEvent,
            format!("{key} is an empty string"),
        )),
        Some(other) => Err(Rejection::new(
            Reason::MissingEvent,
            format!(
                "{key} is {}, expected a non-empty string",
                type_name(&other)
            ),
        )),
    }
}

/// Parses the event time: an integer of epoch milliseconds or an RFC 3339 string with an
/// offset (sub-millisecond digits are truncated). Years 0 to 9999 only.
pub(super) fn ts_from(value: Option<Json>, key: &str) -> Result<Millis, Rejection> {
    let bad = |detail: String| Rejection::new(Reason::InvalidTimestamp, detail);
    let ms = match value {
        None => return Err(bad(format!("{key} is missing"))),
        Some(Json::Null) => return Err(bad(format!("{key} is null"))),
        Some(Json::Number(n)) => match n.as_i64() {
            Some(ms) => ms,
            None if n.is_f64() => {
                return Err(bad(format!(
                "{key} is a float ({n}), expected integer epoch milliseconds or an RFC 3339 string"
            )))
            }
            None => return Err(bad(format!("{key} {n} is out of range (years 0 to 9999)"))),
        },
        Some(Json::String(s)) => parse_rfc3339_ms(&s).map_err(|why| {
            bad(format!(
                "{key} {} is not an RFC 3339 time with an offset ({why})",
                show_str(&s)
            ))
        })?,
        Some(other) => {
            return Err(bad(format!(
                "{key} is {}, expected integer epoch milliseconds or an RFC 3339 string",
                type_name(&other)
            )))
        }
    };
    if !(MIN_TS..=MAX_TS).contains(&ms) {
        return Err(bad(format!("{key} {ms} is out of range (years 0 to 9999)")));
    }
    Ok(ms)
}

fn show_str(s: &str) -> String {
    show(&Json::String(s.to_owned()))
}

/// Parses an RFC 3339 time (with an offset) to epoch milliseconds, truncating finer digits.
pub(super) fn parse_rfc3339_ms(s: &str) -> Result<Millis, String> {
    // chrono accepts any number of fraction digits and keeps nanoseconds; floor division to
    // milliseconds (timestamp_millis) truncates toward the past, also before 1970.
    let dt = DateTime::parse_from_rfc3339(s).map_err(|e| e.to_string())?;
    Ok(dt.timestamp_millis())
}

/// The properties object: absent or null is an empty map; anything else but an object is
/// `invalid_properties`. The object is moved, not copied.
pub(super) fn properties_from(value: Option<Json>, key: &str) -> Result<Properties, Rejection> {
    match value {
        None | Some(Json::Null) => Ok(Properties::new()),
        Some(Json::Object(map)) => Ok(map),
        Some(other) => Err(Rejection::new(
            Reason::InvalidProperties,
            format!("{key} is {}, expected an object or null", type_name(&other)),
        )),
    }
}

/// The event id: a non-empty string, or an integer as its decimal string. Anything else
/// (absent, null, empty string, float, boolean, ...) means the event has no id.
pub(super) fn event_id_from(value: Option<Json>) -> Option<String> {
    match value {
        Some(Json::String(s)) if !s.is_empty() => Some(s),
        Some(Json::Number(n)) if !n.is_f64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, EventBody, ProfileOp};
    use super::*;
    use proptest::prelude::*;

    fn native(s: &str) -> Result<Event, Rejection> {
        decode(s.as_bytes(), &DecodeOptions::default())
    }

    fn reason(s: &str) -> Reason {
        native(s).expect_err(s).reason
    }

    fn nested(depth: usize) -> String {
        // depth levels in total: the top-level object plus depth - 1 arrays.
        format!(
            r#"{{"user_id":"u1","event":"e","ts":1,"properties":{{"x":{}{}}}}}"#,
            "[".repeat(depth - 2),
            "]".repeat(depth - 2)
        )
    }

    #[test]
    fn format_parse_and_default_options() {
        assert_eq!(Format::parse("native"), Some(Format::Native));
        assert_eq!(Format::parse("segment"), Some(Format::Segment));
        assert_eq!(Format::parse("sensors"), Some(Format::Sensors));
        assert_eq!(Format::parse("Native"), None);
        assert_eq!(Format::parse(""), None);
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()), Some(f));
            assert_eq!(f.to_string().parse::<Format>(), Ok(f));
        }
        let o = DecodeOptions::default();
        assert_eq!(o.format, Format::Native);
        assert_eq!(o.max_event_bytes, 1024 * 1024);
    }

    #[test]
    fn too_large_comes_first() {
        let opts = DecodeOptions {
            format: Format::Native,
            max_event_bytes: 10,
        };
        let r = decode(b"\xff\xfe not json at all", &opts).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);
        assert!(r.detail.contains("at most 10"), "{}", r.detail);
        // exactly at the limit is fine
        let ok = r#"{"user_id":"u","event":"e","ts":1}"#;
        let opts = DecodeOptions {
            format: Format::Native,
            max_event_bytes: ok.len(),
        };
        assert!(decode(ok.as_bytes(), &opts).is_ok());
        let opts = DecodeOptions {
            format: Format::Native,
            max_event_bytes: ok.len() - 1,
        };
        assert_eq!(
            decode(ok.as_bytes(), &opts).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn invalid_json_cases() {
        let opts = DecodeOptions::default();
        for raw in [
            &b""[..],
            b"   \t\r\n",
            b"{",
            b"{\"user_id\":\"u\",}",
            b"{\"a\":1} x",
            b"nul",
            b"\xff{}",
            b"{\"user_id\":\"\xc3\x28\"}",
        ] {
            let r = decode(raw, &opts).unwrap_err();
            assert_eq!(r.reason, Reason::InvalidJson, "{raw:?}");
            assert!(!r.detail.is_empty());
        }
        assert!(decode(b"\xff", &opts).unwrap_err().detail.contains("UTF-8"));
        // a Kafka tombstone reaches the decoder as a message with no bytes
        assert!(decode(b"", &opts).unwrap_err().detail.contains("tombstone"));
    }

    #[test]
    fn single_pass_object_reading() {
        // a field given twice keeps its last value, like a JSON object
        let ev = native(r#"{"user_id":"a","user_id":"b","event":"e","ts":1,"ts":2}"#).unwrap();
        assert_eq!((ev.user_id.as_str(), ev.ts), ("b", 2));
        // ignored fields may hold anything valid, however big, but must be valid JSON
        let ev = native(
            r#"{"context":{"a":[1,2,{"b":null}],"c":"\"}"},"user_id":"u","event":"e","ts":1,"x":-1.5e3}"#,
        )
        .unwrap();
        assert_eq!(ev.user_id, "u");
        assert_eq!(
            reason(r#"{"context":[1,,2],"user_id":"u","event":"e","ts":1}"#),
            Reason::InvalidJson
        );
        assert_eq!(
            reason(r#"{"user_id":"u","event":"e","ts":1,"x":tru}"#),
            Reason::InvalidJson
        );
        // escaped keys are matched after unescaping
        let ev = native(r#"{"user\u005fid":"u","event":"e","ts":1}"#).unwrap();
        assert_eq!(ev.user_id, "u");
        // trailing data and a second object are syntax errors; trailing whitespace is not
        assert_eq!(
            reason(r#"{"user_id":"u","event":"e","ts":1}{}"#),
            Reason::InvalidJson
        );
        assert!(native("{\"user_id\":\"u\",\"event\":\"e\",\"ts\":1}\r\n").is_ok());
        // a broken non-object is invalid JSON, a well-formed one is not an object
        assert_eq!(reason("[1,"), Reason::InvalidJson);
        assert_eq!(reason("[1,{\"a\":[]}]"), Reason::NotAnObject);
        assert_eq!(reason("{\"a\":1"), Reason::InvalidJson);
    }

    #[test]
    fn not_an_object() {
        for s in [
            "[]",
            "1",
            "\"x\"",
            "true",
            "[{\"user_id\":\"u\"}]",
            "1.5",
            "null",
            " null\n",
            "\tnull\r\n",
        ] {
            for format in Format::ALL {
                let opts = DecodeOptions {
                    format,
                    ..DecodeOptions::default()
                };
                let r = decode_message(s.as_bytes(), &opts).unwrap_err();
                assert_eq!(r.reason, Reason::NotAnObject, "{s} {format}");
            }
        }
        assert!(native("[1]").unwrap_err().detail.contains("an array"));
        assert_eq!(
            native("null").unwrap_err().detail,
            "top-level JSON value is null, expected an object"
        );
        // but a broken literal is not JSON at all
        assert_eq!(reason("nul"), Reason::InvalidJson);
        assert_eq!(reason("null null"), Reason::InvalidJson);
    }

    #[test]
    fn nested_field_reading() {
        // `context.traits` of the segment format: only that field is read, and the rest of
        // `context` may hold anything valid
        let opts = DecodeOptions {
            format: Format::Segment,
            ..DecodeOptions::default()
        };
        let ev = |s: &str| match decode_message(s.as_bytes(), &opts) {
            Ok(Decoded::Event(ev)) => Ok(ev),
            Ok(other) => panic!("{other:?}"),
            Err(r) => Err(r),
        };
        let got = ev(r#"{"type":"identify","userId":"u","timestamp":1,"context":{"a":[1,{"traits":2}],"traits":{"x":{"y":[1]}},"z":"\"}"}}"#).unwrap();
        match got.body {
            EventBody::Profile { properties, .. } => {
                assert_eq!(properties["x"], serde_json::json!({"y":[1]}));
            }
            other => panic!("{other:?}"),
        }
        // a key merely starting like the outer key is another field
        let got =
            ev(r#"{"type":"identify","userId":"u","timestamp":1,"contexts":{"traits":{"x":1}},"context.traits":{"x":1}}"#)
                .unwrap();
        assert!(
            matches!(got.body, EventBody::Profile { ref properties, .. } if properties.is_empty())
        );
        assert_eq!(
            ev(r#"{"type":"identify","userId":"u","timestamp":1,"context":{"traits":{"x":1},}}"#)
                .unwrap_err()
                .reason,
            Reason::InvalidJson
        );
        assert_eq!(
            ev(r#"{"type":"identify","userId":"u","timestamp":1,"context":{"a":tru}}"#)
                .unwrap_err()
                .reason,
            Reason::InvalidJson
        );
    }

    #[test]
    fn nesting_64_accepted_65_rejected() {
        let ok = nested(64);
        assert!(native(&ok).is_ok(), "{ok}");
        let bad = nested(65);
        let r = native(&bad).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJson);
        assert!(r.detail.contains("64"), "{}", r.detail);
        // brackets inside strings (also after escaped quotes) do not count
        let s = format!(
            r#"{{"user_id":"u1","event":"e","ts":1,"properties":{{"x":"\"{}"}}}}"#,
            "[{".repeat(100)
        );
        assert!(native(&s).is_ok());
        // very deep input never reaches the parser, whatever the bracket kind
        let deep = "[".repeat(1_000_000);
        assert_eq!(reason(&deep), Reason::InvalidJson);
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(reason(&deep), Reason::InvalidJson);
    }

    #[test]
    fn timestamp_checks() {
        let ev = |ts: &str| native(&format!(r#"{{"user_id":"u","event":"e","ts":{ts}}}"#));
        assert_eq!(ev("1732000000000").unwrap().ts, 1_732_000_000_000);
        assert_eq!(ev("-1").unwrap().ts, -1);
        assert_eq!(ev("0").unwrap().ts, 0);
        assert_eq!(
            ev(r#""2024-11-19T07:06:40Z""#).unwrap().ts,
            1_732_000_000_000
        );
        assert_eq!(
            ev(r#""2024-11-19T15:06:40+08:00""#).unwrap().ts,
            1_732_000_000_000
        );
        // sub-millisecond precision is truncated, not rounded
        assert_eq!(
            ev(r#""2024-11-19T07:06:40.123999999Z""#).unwrap().ts,
            1_732_000_000_123
        );
        assert_eq!(
            ev(r#""2024-11-19T07:06:40.1239Z""#).unwrap().ts,
            1_732_000_000_123
        );
        assert_eq!(ev(r#""1969-12-31T23:59:59.9995Z""#).unwrap().ts, -1);
        assert_eq!(ev(&MIN_TS.to_string()).unwrap().ts, MIN_TS);
        assert_eq!(ev(&MAX_TS.to_string()).unwrap().ts, MAX_TS);
        assert_eq!(ev(r#""9999-12-31T23:59:59.999Z""#).unwrap().ts, MAX_TS);
        assert_eq!(ev(r#""0000-01-01T00:00:00Z""#).unwrap().ts, MIN_TS);
        for bad in [
            "1.5",
            "1732000000000.0",
            "1e12",
            "null",
            r#""2024-11-19T07:06:40""#,
            r#""2024-11-19""#,
            r#""yesterday""#,
            r#""""#,
            r#""1732000000000""#,
            "true",
            "[1]",
            "{}",
            "18446744073709551615",
            "-9223372036854775808",
            &(MAX_TS + 1).to_string(),
            &(MIN_TS - 1).to_string(),
        ] {
            let r = ev(bad).unwrap_err();
            assert_eq!(r.reason, Reason::InvalidTimestamp, "{bad}");
        }
        let r = native(r#"{"user_id":"u","event":"e"}"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidTimestamp);
        assert_eq!(r.detail, "ts is missing");
        assert!(ev("1.5").unwrap_err().detail.contains("float"));
        assert!(ev(r#""2024-11-19T07:06:40""#)
            .unwrap_err()
            .detail
            .contains("offset"));
    }

    #[test]
    fn user_id_checks() {
        let ev = |uid: &str| native(&format!(r#"{{"user_id":{uid},"event":"e","ts":1}}"#));
        assert_eq!(ev("42").unwrap().user_id, "42");
        assert_eq!(ev("-7").unwrap().user_id, "-7");
        assert_eq!(
            ev("18446744073709551615").unwrap().user_id,
            "18446744073709551615"
        );
        assert_eq!(ev(r#""u42""#).unwrap().user_id, "u42");
        let max = format!("\"{}\"", "é".repeat(128)); // 256 bytes
        assert_eq!(ev(&max).unwrap().user_id.len(), 256);
        let over = format!("\"{}\"", "é".repeat(150)); // 300 bytes
        let r = ev(&over).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidUserId);
        assert_eq!(r.detail, "user_id is 300 bytes, at most 256 allowed");
        for bad in [r#""""#, "1.5", "1.0", "1e3", "true", "[]", "{}"] {
            assert_eq!(ev(bad).unwrap_err().reason, Reason::InvalidUserId, "{bad}");
        }
        assert_eq!(ev("null").unwrap_err().reason, Reason::MissingUserId);
        assert_eq!(reason(r#"{"event":"e","ts":1}"#), Reason::MissingUserId);
    }

    #[test]
    fn check_order_between_fields() {
        // type before user id before event before ts before properties
        assert_eq!(
            reason(r#"{"type":"x","event":"","ts":1.5,"properties":1}"#),
            Reason::UnknownType
        );
        assert_eq!(
            reason(r#"{"event":"","ts":1.5,"properties":1}"#),
            Reason::MissingUserId
        );
        assert_eq!(
            reason(r#"{"user_id":"u","event":"","ts":1.5,"properties":1}"#),
            Reason::MissingEvent
        );
        assert_eq!(
            reason(r#"{"user_id":"u","event":"e","ts":1.5,"properties":1}"#),
            Reason::InvalidTimestamp
        );
        assert_eq!(
            reason(r#"{"user_id":"u","event":"e","ts":1,"properties":1}"#),
            Reason::InvalidProperties
        );
    }

    #[test]
    fn event_id_forms() {
        let ev = |id: &str| {
            native(&format!(
                r#"{{"user_id":"u","event":"e","ts":1,"event_id":{id}}}"#
            ))
        };
        assert_eq!(ev(r#""abc""#).unwrap().event_id.as_deref(), Some("abc"));
        assert_eq!(ev("123").unwrap().event_id.as_deref(), Some("123"));
        for none in ["null", "1.5", "true", "[]", "{}", r#""""#] {
            assert_eq!(ev(none).unwrap().event_id, None, "{none}");
        }
        assert_eq!(
            native(r#"{"user_id":"u","event":"e","ts":1}"#)
                .unwrap()
                .event_id,
            None
        );
    }

    #[test]
    fn rfc3339_helper() {
        assert_eq!(
            parse_rfc3339_ms("2024-11-20T00:00:00Z"),
            Ok(1_732_060_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-11-20t00:00:00z"),
            Ok(1_732_060_800_000)
        );
        assert!(parse_rfc3339_ms("2024-11-20T00:00:00").is_err());
        assert!(parse_rfc3339_ms("2024-13-20T00:00:00Z").is_err());
    }

    // ---- never panic ----------------------------------------------------------------

    fn all_formats(raw: &[u8]) {
        for format in Format::ALL {
            for max in [DEFAULT_MAX_EVENT_BYTES, 16] {
                let opts = DecodeOptions {
                    format,
                    max_event_bytes: max,
                };
                match decode_message(raw, &opts) {
                    Ok(Decoded::Skipped(kind)) => {
                        assert_eq!(format, Format::Sensors, "{kind:?}");
                    }
                    Ok(Decoded::Event(ev)) => {
                        assert!(!ev.user_id.is_empty() && ev.user_id.len() <= MAX_USER_ID_BYTES);
                        assert!((MIN_TS..=MAX_TS).contains(&ev.ts));
                        if let EventBody::Track { name, .. } = &ev.body {
                            assert!(!name.is_empty());
                        }
                    }
                    Err(r) => {
                        assert!(Reason::ALL.contains(&r.reason));
                        assert_ne!(r.reason, Reason::FutureTimestamp);
                        assert!(!r.detail.is_empty());
                    }
                }
            }
        }
    }

    /// JSON-ish text built from the keys and values the decoders look at.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![
            Just("type"),
            Just("user_id"),
            Just("userId"),
            Just("anonymousId"),
            Just("distinct_id"),
            Just("event"),
            Just("ts"),
            Just("timestamp"),
            Just("time"),
            Just("properties"),
            Just("traits"),
            Just("name"),
            Just("event_id"),
            Just("messageId"),
            Just("_track_id"),
            Just("original_id"),
            Just("category"),
            Just("context"),
            Just("x"),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("1.5".to_string()),
            Just("\"\"".to_string()),
            Just("\"track\"".to_string()),
            Just("\"profile\"".to_string()),
            Just("\"delete\"".to_string()),
            Just("\"identify\"".to_string()),
            Just("\"page\"".to_string()),
            Just("\"screen\"".to_string()),
            Just("\"profile_set\"".to_string()),
            Just("\"profile_unset\"".to_string()),
            Just("\"profile_set_once\"".to_string()),
            Just("\"profile_delete\"".to_string()),
            Just("\"profile_increment\"".to_string()),
            Just("\"profile_append\"".to_string()),
            Just("\"track_signup\"".to_string()),
            Just("\"item_set\"".to_string()),
            Just("\"track_id_bind\"".to_string()),
            Just("\"2024-11-19T07:06:40.123456Z\"".to_string()),
            Just("\"2024-11-19T07:06:40\"".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            "[a-z\\\\\"\\[\\]{}]{0,8}".prop_map(|s| format!("\"{s}\"")),
            "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let value = leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|kv| {
                    let body: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        });
        let obj = prop::collection::vec((key, value), 0..8).prop_map(|kv| {
            let body: Vec<String> = kv
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        });
        // whole objects, and objects with random damage (cut anywhere, or a stray byte)
        (obj, any::<u8>(), any::<usize>(), 0u8..4).prop_map(|(s, b, at, how)| {
            let mut v = s.into_bytes();
            let at = at % (v.len() + 1);
            match how {
                0 | 1 => {}
                2 => v.truncate(at),
                _ => v.insert(at, b),
            }
            v
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            all_formats(&raw);
        }

        #[test]
        fn opening_brackets_counts_every_bracket(
            raw in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'['), Just(b'{')], 0..1200)
        ) {
            let naive = raw.iter().filter(|&&b| b == b'[' || b == b'{').count();
            prop_assert_eq!(opening_brackets(&raw), naive);
        }

        #[test]
        fn arbitrary_brackets_never_panic(raw in "[\\[\\]{}\":,\\\\ a1]{0,300}") {
            all_formats(raw.as_bytes());
        }

        #[test]
        fn jsonish_never_panics(raw in jsonish()) {
            all_formats(&raw);
        }
    }

    #[test]
    fn profile_op_is_set_for_native_profile() {
        let ev = native(r#"{"type":"profile","user_id":"u","ts":1,"properties":{"a":1}}"#).unwrap();
        assert!(matches!(
            ev.body,
            EventBody::Profile {
                op: ProfileOp::Set,
                ..
            }
        ));
    }

    #[test]
    fn properties_after_a_non_track_type_are_kept_whole_in_one_pass() {
        let keep = TrackProperties::new(["amount"]);
        let parse = |raw: &str| {
            let mut fields = Fields::default();
            parse_object(
                raw.as_bytes(),
                super::super::native::KEYS,
                Some((super::super::native::PROPERTIES, &keep)),
                &mut fields,
            )
            .unwrap();
            fields.filtered
        };
        assert!(!parse(
            r#"{"type":"profile","user_id":"u","ts":1,"properties":{"city":"X"}}"#
        ));
        assert!(parse(
            r#"{"properties":{"city":"X"},"type":"profile","user_id":"u","ts":1}"#
        ));
        assert!(parse(
            r#"{"type":"track","user_id":"u","event":"e","ts":1,"properties":{}}"#
        ));
        assert!(parse(
            r#"{"user_id":"u","event":"e","ts":1,"properties":{}}"#
        ));
    }

    #[test]
    fn keeping_only_read_properties_gives_the_full_decode_up_to_the_dropped_keys() {
        let keep = TrackProperties::new(["amount", "$os"]);
        let cases = [
            // track: other properties dropped, read ones kept as they are
            (
                Format::Native,
                r#"{"user_id":"u","event":"buy","ts":1,"properties":{"amount":9.5,"sku":{"a":[1,"x"]},"$os":"iOS"}}"#,
            ),
            (
                Format::Native,
                r#"{"properties":{"note":"\u00e9\"","amount":1},"user_id":"u","event":"buy","ts":1}"#,
            ),
            // profile (properties after the type or before it): everything is kept
            (
                Format::Native,
                r#"{"user_id":"u","type":"profile","ts":1,"properties":{"city":"X","amount":2}}"#,
            ),
            (
                Format::Native,
                r#"{"properties":{"city":"X"},"user_id":"u","ts":1,"type":"profile"}"#,
            ),
            (
                Format::Sensors,
                r#"{"type":"profile_set","distinct_id":"u","time":1,"properties":{"city":"X","$is_login_id":true}}"#,
            ),
            (
                Format::Sensors,
                r#"{"type":"track","event":"buy","distinct_id":"u","time":1,"properties":{"$os":"iOS","x":1}}"#,
            ),
            (
                Format::Segment,
                r#"{"type":"page","userId":"u","timestamp":1,"name":"Home","properties":{"url":"/","amount":3}}"#,
            ),
            // rejections are the full decode's, also for problems inside a dropped value
            (
                Format::Native,
                r#"{"user_id":"u","event":"buy","ts":1,"properties":{"big":1e400}}"#,
            ),
            (
                Format::Native,
                r#"{"user_id":"u","event":"buy","ts":1,"properties":{"s":"\ud800"}}"#,
            ),
            (
                Format::Native,
                r#"{"user_id":"u","event":"buy","ts":1,"properties":{"x":[1,}}"#,
            ),
            (
                Format::Native,
                r#"{"user_id":"u","event":"buy","ts":1,"properties":[1]}"#,
            ),
            (
                Format::Native,
                r#"{"user_id":"u","event":"buy","ts":1,"properties":"x"}"#,
            ),
            (
                Format::Native,
                r#"{"user_id":"u","type":"profile_increment","ts":1,"properties":{"n":"x"}}"#,
            ),
            // the type is read before the properties and is not track: one full decode, whose
            // rejection is the full decode's
            (
                Format::Sensors,
                r#"{"type":"profile_increment","distinct_id":"u","time":1,"properties":{"n":"x"}}"#,
            ),
            // a type given twice: the last one counts, the properties were kept whole
            (
                Format::Native,
                r#"{"type":"profile","user_id":"u","ts":1,"event":"buy","properties":{"amount":1,"sku":"a"},"type":"track"}"#,
            ),
            (
                Format::Native,
                r#"{"event":"buy","ts":1,"properties":{"amount":1}}"#,
            ),
        ];
        for (format, raw) in cases {
            let opts = DecodeOptions {
                format,
                ..DecodeOptions::default()
            };
            let full = decode_message(raw.as_bytes(), &opts);
            let kept = decode_message_keeping(raw.as_bytes(), &opts, &keep);
            match (&full, &kept) {
                (
                    Ok(Decoded::Event(Event {
                        body: EventBody::Track { properties, .. },
                        ..
                    })),
                    Ok(Decoded::Event(Event {
                        body:
                            EventBody::Track {
                                properties: got, ..
                            },
                        ..
                    })),
                ) => {
                    // every key the rules read is there with its value (a format may add
                    // others, like a Segment page's `name`)
                    let read = |p: &Properties| {
                        let mut p = p.clone();
                        p.retain(|k, _| keep.keeps(k));
                        p
                    };
                    assert_eq!(read(got), read(properties), "{raw}");
                    assert!(got.len() <= properties.len(), "{raw}");
                    let strip = |d: &Result<Decoded, Rejection>| match d {
                        Ok(Decoded::Event(e)) => Event {
                            body: EventBody::Delete,
                            ..e.clone()
                        },
                        _ => unreachable!(),
                    };
                    assert_eq!(strip(&full), strip(&kept), "{raw}");
                }
                _ => assert_eq!(full, kept, "{raw}"),
            }
        }
    }
}
