//! The serde seeds of the single-pass decode: the top-level object is visited key by key and
//! only the fields a format reads are built ([`TopSeed`]); one field of a nested object can be
//! picked ([`PickSeed`]); the properties of a track event can keep only the keys the rules read
//! ([`KeepSeed`]); everything else is checked as JSON and dropped ([`Skip`], `IgnoredAny`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use super::{Fields, TrackProperties};
use crate::event::Properties;

/// What the top-level value was (the fields of an object are written to [`TopSeed::fields`]).
pub(super) enum Top {
    Object,
    Other(&'static str),
}

pub(super) struct TopSeed<'k> {
    pub(super) keys: &'k [&'k str],
    /// The field whose object keeps only these keys (see [`decode_message_keeping`]).
    pub(super) filter: Option<(usize, &'k TrackProperties)>,
    pub(super) fields: &'k mut Fields,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Top;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Top, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        while let Some(slot) = map.next_key_seed(KeySeed { keys: self.keys })? {
            match slot {
                Slot::Field(i) => {
                    self.fields.values[i] = Some(match self.filter {
                        // Profile properties are all kept: filter only while the type may
                        // still be track.
                        Some((field, keep)) if field == i && !self.fields.known_not_track() => {
                            self.fields.filtered = true;
                            map.next_value_seed(KeepSeed { keep })?
                        }
                        _ => map.next_value::<Json>()?,
                    })
                }
                Slot::Nested(i, inner) => {
                    // a field given twice keeps its last value, also when the last one lacks
                    // the inner field
                    self.fields.values[i] = map.next_value_seed(PickSeed { key: inner })?;
                }
                Slot::Ignored => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Top::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other("an integer"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other("an integer"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other("a float"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other("a string"))
    }
}

/// Where the value of a top-level key goes.
enum Slot<'k> {
    /// The whole value, into field `i`.
    Field(usize),
    /// Key `outer.inner` of the format's key list: the value's field `inner` (when the value
    /// is an object that has it) into field `i`.
    Nested(usize, &'k str),
    /// A field the format does not read.
    Ignored,
}

/// An object key → where its value goes.
struct KeySeed<'k> {
    keys: &'k [&'k str],
}

impl<'de, 'k> DeserializeSeed<'de> for KeySeed<'k> {
    type Value = Slot<'k>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Slot<'k>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de, 'k> Visitor<'de> for KeySeed<'k> {
    type Value = Slot<'k>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Slot<'k>, E> {
        for (i, k) in self.keys.iter().enumerate() {
            // (a key with a dot names a nested field, never a top-level key spelled that way)
            if *k == key && !key.contains('.') {
                return Ok(Slot::Field(i));
            }
            // `outer.inner`, without searching every key for a dot
            if let Some(inner) = k.strip_prefix(key).and_then(|rest| rest.strip_prefix('.')) {
                return Ok(Slot::Nested(i, inner));
            }
        }
        Ok(Slot::Ignored)
    }
}

/// One field of an object value (`None` when the value is not an object or lacks the field);
/// everything else in the value is skipped without allocating.
struct PickSeed<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for PickSeed<'_> {
    type Value = Option<Json>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<Json>, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PickSeed<'_> {
    type Value = Option<Json>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Json>, A::Error> {
        let mut picked = None;
        while let Some(is_it) = map.next_key_seed(IsKey { key: self.key })? {
            if is_it {
                picked = Some(map.next_value::<Json>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(picked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Json>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<Json>, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<Json>, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<Json>, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<Json>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<Json>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<Json>, E> {
        Ok(None)
    }
}

/// A value as [`Json`], except that an object keeps only the keys of a [`TrackProperties`]: the
/// values of the others are checked by [`Skip`] and dropped.
struct KeepSeed<'k> {
    keep: &'k TrackProperties,
}

impl<'de> DeserializeSeed<'de> for KeepSeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Json, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeepSeed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut kept = Properties::new();
        while let Some(key) = map.next_key_seed(KeptKey { keep: self.keep })? {
            match key {
                Some(key) => {
                    kept.insert(key, map.next_value::<Json>()?);
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Json::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::from(n))
    }

    fn visit_f64<E>(self, x: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }
}

/// A property key: `Some(key)` when it is kept.
struct KeptKey<'k> {
    keep: &'k TrackProperties,
}

impl<'de> DeserializeSeed<'de> for KeptKey<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<String>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeptKey<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<String>, E> {
        Ok(self.keep.keeps(key).then(|| key.to_owned()))
    }
}

/// Any JSON value, parsed with the checks [`Json`] applies (numbers in range, valid escapes)
/// and dropped without allocating.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Skip, D::Error> {
        de.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
}

/// Whether an object key is the one wanted.
struct IsKey<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for IsKey<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.key)
    }
}
