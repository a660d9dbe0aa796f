//! Runtime values of the expression language and the storable scalar used inside state.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::event::Millis;

/// A value produced by evaluating a tag or an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(Arc<str>),
    /// Epoch milliseconds.
    Ts(Millis),
    /// Milliseconds.
    Dur(i64),
    List(Arc<Vec<Value>>),
    /// A JSON array or object taken from an event property.
    Json(Arc<Json>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    /// A property value as seen by expressions: JSON numbers are numbers, strings are strings,
    /// nothing is converted.
    pub fn from_json(json: &Json) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => n.as_f64().map_or(Value::Null, Value::Num),
            Json::String(s) => Value::str(s),
            other => Value::Json(Arc::new(other.clone())),
        }
    }

    /// The dump representation (SPEC §5): timestamps and durations as integer milliseconds,
    /// integral numbers as integers.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Num(n) => number_to_json(*n),
            Value::Str(s) => Json::String(s.to_string()),
            Value::Ts(t) | Value::Dur(t) => Json::from(*t),
            Value::List(items) => Json::Array(items.iter().map(Value::to_json).collect()),
            Value::Json(j) => (**j).clone(),
        }
    }

    /// SQL comparison: `None` when either side is NULL or the types differ.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => a.partial_cmp(b),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Ts(a), Value::Ts(b)) | (Value::Dur(a), Value::Dur(b)) => Some(a.cmp(b)),
            (Value::Json(a), Value::Json(b)) => Some(compact(a).cmp(&compact(b))),
            (Value::List(a), Value::List(b)) => {
                if a.len() != b.len() {
                    return None;
                }
                for (x, y) in a.iter().zip(b.iter()) {
                    match x.compare(y)? {
                        Ordering::Equal => continue,
                        other => return Some(other),
                    }
                }
                Some(Ordering::Equal)
            }
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Num(_) => "number",
            Value::Str(_) => "string",
            Value::Ts(_) => "timestamp",
            Value::Dur(_) => "duration",
            Value::List(_) => "list",
            Value::Json(_) => "json",
        }
    }
}

/// JSON for a number: integral values print as integers so counts are JSON integers.
pub fn number_to_json(n: f64) -> Json {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

fn compact(json: &Json) -> String {
    serde_json::to_string(json).unwrap_or_default()
}

/// A storable, totally ordered property value (SPEC §4 "Value order"): booleans < numbers <
/// strings < arrays/objects (by compact JSON text). Used as the key of `distinct` and `top`
/// and for `first`/`last`/`profile` values. `Null` sorts first and is only stored where an
/// explicit null is meaningful (profile attributes, `first`/`last` of an event lacking the
/// property).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Scalar {
    Null,
    Bool(bool),
    Num(f64),
    /// Shared, so that evaluating a stored string (a `top`, `profile`, `first`/`last` value)
    /// is a reference-count increment, not a copy.
    Str(Arc<str>),
    /// Compact JSON text of an array or object.
    Composite(String),
}

impl Scalar {
    pub fn from_json(json: &Json) -> Scalar {
        match json {
            Json::Null => Scalar::Null,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::Number(n) => n.as_f64().map_or(Scalar::Null, |f| {
                Scalar::Num(if f == 0.0 { 0.0 } else { f })
            }),
            Json::String(s) => Scalar::Str(Arc::from(s.as_str())),
            other => Scalar::Composite(compact(other)),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Scalar::Null)
    }

    pub fn to_value(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Num(n) => Value::Num(*n),
            Scalar::Str(s) => Value::Str(s.clone()),
            Scalar::Composite(text) => {
                serde_json::from_str(text).map_or(Value::Null, |j: Json| Value::Json(Arc::new(j)))
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Scalar::Null => 0,
            Scalar::Bool(_) => 1,
            Scalar::Num(_) => 2,
            Scalar::Str(_) => 3,
            Scalar::Composite(_) => 4,
        }
    }
}

impl PartialEq for Scalar {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scalar {}

impl PartialOrd for Scalar {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scalar {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Scalar::Bool(a), Scalar::Bool(b)) => a.cmp(b),
            (Scalar::Num(a), Scalar::Num(b)) => a.total_cmp(b),
            (Scalar::Str(a), Scalar::Str(b)) => a.cmp(b),
            (Scalar::Composite(a), Scalar::Composite(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalar_order_follows_the_spec() {
        let mut v: Vec<Scalar> = [
            json!("b"),
            json!(2),
            json!(true),
            json!([1]),
            json!("a"),
            json!(1.0),
            json!(false),
        ]
        .iter()
        .map(Scalar::from_json)
        .collect();
        v.sort();
        let back: Vec<Json> = v.iter().map(|s| s.to_value().to_json()).collect();
        assert_eq!(
            back,
            vec![
                json!(false),
                json!(true),
                json!(1),
                json!(2),
                json!("a"),
                json!("b"),
                json!([1])
            ]
        );
        assert_eq!(Scalar::from_json(&json!(1)), Scalar::from_json(&json!(1.0)));
        assert_eq!(
            Scalar::from_json(&json!(-0.0)),
            Scalar::from_json(&json!(0))
        );
    }

    #[test]
    fn comparisons_across_types_are_null() {
        assert_eq!(Value::Num(1.0).compare(&Value::str("1")), None);
        assert_eq!(Value::Ts(5).compare(&Value::Num(5.0)), None);
        assert_eq!(
            Value::str("a").compare(&Value::str("b")),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn integral_numbers_print_as_integers() {
        assert_eq!(Value::Num(12.0).to_json(), json!(12));
        assert_eq!(Value::Num(12.5).to_json(), json!(12.5));
        assert_eq!(
            Value::Ts(1_732_000_000_000).to_json(),
            json!(1_732_000_000_000i64)
        );
    }
}
