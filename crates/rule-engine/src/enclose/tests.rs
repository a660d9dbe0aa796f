//! Soundness: an enclosure holds every pointwise value.

use std::cmp::Ordering;

use super::*;
use crate::event::Millis;
use crate::rules::RuleSet;
use crate::time::{DAY_MS, HOUR_MS};
use proptest::prelude::*;

/// Whether `v` is one of the values `e` allows.
fn contains(e: &Enc, v: &Value) -> bool {
    match (e, v) {
        (Enc::Any, _) => true,
        (Enc::Exact(x), v) => x == v || x.compare(v) == Some(Ordering::Equal),
        (Enc::Num { null, .. } | Enc::Int { null, .. }, Value::Null) => *null,
        (Enc::Num { lo, hi, .. }, Value::Num(x)) => lo <= x && x <= hi,
        (Enc::Int { kind, lo, hi, .. }, Value::Ts(x) | Value::Dur(x)) => {
            let k = if matches!(v, Value::Ts(_)) {
                IntKind::Ts
            } else {
                IntKind::Dur
            };
            *kind == k && lo <= x && x <= hi
        }
        (Enc::Bool(s), Value::Bool(b)) => {
            if *b {
                s.t
            } else {
                s.f
            }
        }
        (Enc::Bool(s), Value::Null) => s.null,
        _ => false,
    }
}

const EXPRS: &[&str] = &[
    "abs((now() - t0) / 1h - 20)",
    "(now() - t0) % 1d",
    "((now() - t0) / 1h) % 7.5",
    "((now() - t0) / 1h) * ((now() - t0) / 1h - 30)",
    "least(now() - t0, 36h - (now() - t0))",
    "greatest(days_since(t0), 10 - days_since(t0))",
    "ln((now() - t0) / 1h - 10)",
    "exp(((now() - t0) / 1d) - 3)",
    "sigmoid((now() - t0) / 1d - 2)",
    "round((now() - t0) / 1h / 7, 1)",
    "hour_of_day(t0 + (now() - t0) * 2)",
    "day_of_week(now() - (now() - t0) * 3)",
    "100 / ((now() - t0) / 1h - 12)",
    "(now() - t0) * -0.5 + 3d",
    "coalesce(ln((now() - t0) / 1h - 5), -1)",
    "abs((now() - t0) / 1h - 20) < 5",
    "(now() - t0) % 1d BETWEEN 2h AND 9h",
    "days_since(t0) IN (1, 3, 5)",
    "mood",
    "band",
];

const RULES: &str = r#"
time_zone = "America/New_York"
[[tag]]
name = "t0"
kind = "last_time"
event = "e"
[[tag]]
name = "n"
kind = "count"
event = "e"
[[tag]]
name = "hours"
kind = "expr"
expr = "(now() - t0) / 1h"
[[tag]]
name = "mood"
kind = "nearest"
features = ["hours", "n"]
centroids = { a = [5, 1], b = [30, 2], c = [80, 0] }
[[tag]]
name = "band"
kind = "tier"
of = "abs(hours - 30)"
tiers = [{ label = "near", min = 0 }, { label = "far", min = 12 }]
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The enclosure over a span holds the pointwise value at every sampled instant.
    #[test]
    fn enclosures_hold_every_pointwise_value(
        which in 0..EXPRS.len(),
        offset_h in -200i64..200,
        width in prop_oneof![0i64..10, 0i64..100_000, 0i64..(30 * DAY_MS)],
        count in 0.0f64..3.0,
        samples in prop::collection::vec(0.0f64..=1.0, 1..8),
    ) {
        let src = format!("{RULES}[[tag]]\nname = \"x\"\nkind = \"expr\"\nexpr = {:?}\n", EXPRS[which]);
        let rules = RuleSet::compile(&src, "t").unwrap();
        let t0: Millis = 1_730_000_000_000;
        let lo = t0 + offset_h * HOUR_MS;
        let hi = lo + width;
        let x = rules.node_by_name("x").unwrap();
        let mut values = vec![Value::Null; rules.nodes.len()];
        values[rules.node_by_name("t0").unwrap()] = Value::Ts(t0);
        values[rules.node_by_name("n").unwrap()] = Value::Num(count.floor());
        let moving: Vec<usize> = (0..rules.nodes.len())
            .filter(|&i| !rules.nodes[i].shape.is_const() || i == x)
            .filter(|&i| i >= 2)
            .collect();
        let span = Span::new(&rules, &values, &moving, lo, hi);
        let enc = span.read(x);
        let state = crate::state::UserState::new(&rules.aggregates, rules.segments.len());
        for s in samples {
            let t = lo + (width as f64 * s) as i64;
            let mut at = values.clone();
            let buckets = crate::time::BucketsAt::new(&rules.zone, t);
            for &id in &moving {
                at[id] = crate::engine::evaluate_node(&rules, &state, id, &at, t, &buckets);
            }
            prop_assert!(contains(&enc, &at[x]), "{}: {:?} at {} not in {:?} over [{}, {}]", EXPRS[which], at[x], t, enc, lo, hi);
        }
    }
}
