//! Property tests: the incremental engine equals a from-scratch computation.
//!
//! 1. After any random event sequence (late, out-of-order, same-timestamp events, deletes,
//!    non-numeric amounts), the incremental state evaluated at engine time equals the state
//!    rebuilt from scratch from the same applied events.
//! 2. Time-driven changes are exact: at random instants between events, membership implied by
//!    the emitted transitions equals a from-scratch evaluation at that instant.
//!
//! Both over fixed rule sets that cover every shape, and over random rule sets (random tag
//! kinds, windows, filters and segment conditions), so that every shortcut of the fast path
//! (dirty propagation, quiet bounds, closed-form flips, window-drop candidates, decoding only
//! the properties the rules read) is checked against the naive model on rules nobody chose.

mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use sim::Sim;
use tagstream_rules::engine;
use tagstream_rules::event::{decode, DecodeOptions, EventBody, Millis};
use tagstream_rules::state::UserState;

const RULES: &str = r#"
time_zone = "America/New_York"
dedup_window = "0d"
[[tag]]
name = "spend_3d"
kind = "sum"
event = "purchase"
property = "amount"
window = "3d"
[[tag]]
name = "views_5h"
kind = "count"
event = "view"
window = "5h"
[[tag]]
name = "cats_2d"
kind = "distinct"
event = "*"
property = "cat"
window = "2d"
[[tag]]
name = "fav"
kind = "top"
event = "*"
property = "cat"
window = "1d"
[[tag]]
name = "hi"
kind = "max"
event = "purchase"
property = "amount"
window = "90m"
[[tag]]
name = "last_buy"
kind = "last_time"
event = "purchase"
[[tag]]
name = "stage"
kind = "case"
cases = [
  { when = "first_seen > now() - 1d", value = "new" },
  { when = "last_seen > now() - 2d", value = "active" },
]
else = "idle"
[[tag]]
name = "score"
kind = "tier"
of = "days_since(last_buy) * -1 + coalesce(spend_3d, 0) / 10"
tiers = [{ label = "cold", min = -100 }, { label = "warm", min = -2 }, { label = "hot", min = 3 }]
[[segment]]
name = "spender"
when = "spend_3d >= 50"
[[segment]]
name = "browsing"
when = "views_5h >= 2 AND fav = 'a'"
[[segment]]
name = "returning"
when = "stage = 'active' AND last_buy < now() - 36h"
[[segment]]
name = "warm_or_hot"
when = "score IN ('warm', 'hot') AND NOT spender"
[[segment]]
name = "explorer"
when = "cats_2d >= 2 OR (hi BETWEEN 30 AND 60)"
"#;

/// SPEC §4 rev 2: decisions whose outcome moves back and forth with time alone (`abs`, `%`,
/// products, mixed `least`/`greatest`, `nearest` over moving features, NULL-ness of a moving
/// value, a tier of a non-monotone value).
const CHANGING_RULES: &str = r#"
time_zone = "America/New_York"
dedup_window = "0d"
[[tag]]
name = "orders"
kind = "count"
event = "purchase"
[[tag]]
name = "spend_3d"
kind = "sum"
event = "purchase"
property = "amount"
window = "3d"
[[tag]]
name = "last_buy"
kind = "last_time"
event = "purchase"
[[tag]]
name = "last_view"
kind = "last_time"
event = "view"
[[tag]]
name = "hours_idle"
kind = "expr"
expr = "(now() - last_seen) / 1h"
[[tag]]
name = "rfm"
kind = "nearest"
features = ["orders", "days_since_buy", "spend_3d"]
centroids = { loyal = [4, 1, 120], lapsing = [2, 4, 40], gone = [0, 8, 0] }
[[tag]]
name = "days_since_buy"
kind = "expr"
expr = "coalesce(days_since(last_buy), 30)"
[[tag]]
name = "mood"
kind = "nearest"
features = ["hours_idle", "spend_3d"]
centroids = { hot = [2, 60], warm = [20, 30], cold = [60, 0] }
[[tag]]
name = "band"
kind = "tier"
of = "abs(hours_idle - 30)"
tiers = [{ label = "near", min = 0 }, { label = "mid", min = 8 }, { label = "far", min = 20 }]
[[segment]]
name = "around_a_day"
when = "abs((now() - last_buy) / 1h - 20) < 5"
[[segment]]
name = "first_hours_of_each_day"
when = "(now() - last_seen) % 1d < 6h"
[[segment]]
name = "product"
when = "((now() - first_seen) / 1h) * (hours_idle - 10) BETWEEN 100 AND 900"
[[segment]]
name = "mixed_extremum"
when = "greatest(now() - last_buy, 36h - (now() - last_buy)) < 30h"
[[segment]]
name = "lapsing_not_big"
when = "rfm = 'lapsing' AND NOT spend_3d >= 100"
[[segment]]
name = "warm"
when = "mood IN ('warm', 'hot') AND band <> 'far'"
[[segment]]
name = "viewed_long_ago"
when = "ln((now() - last_view) / 1h - 10) IS NOT NULL"
[[segment]]
name = "double_speed_clock"
when = "hour_of_day(last_seen + (now() - last_seen) * 2) < 6"
"#;

const HOUR: i64 = 3_600_000;
const START: i64 = 1_730_000_000_000; // 2024-10-27, a week before the US DST change

#[derive(Debug, Clone)]
struct Step {
    user: u8,
    kind: u8,
    /// Offset from the running maximum (negative = late).
    dt: i64,
    amount: u8,
    cat: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..3,
        0u8..20,
        prop_oneof![4 => 0i64..(30 * HOUR), 1 => -(60 * HOUR)..0i64, 1 => Just(0i64)],
        0u8..80,
        0u8..4,
    )
        .prop_map(|(user, kind, dt, amount, cat)| Step {
            user,
            kind,
            dt,
            amount,
            cat,
        })
}

fn to_json(s: &Step, ts: i64) -> String {
    let user = format!("u{}", s.user);
    let cat = ["a", "b", "c", "a"][s.cat as usize];
    match s.kind {
        0 => json!({"type": "delete", "user_id": user, "ts": ts}).to_string(),
        1..=7 => {
            // Some amounts are not numbers, some are refunds: a `sum` may fall or rise as its
            // buckets leave the window.
            let amount = match s.amount {
                a if a.is_multiple_of(9) => json!("12.5"),
                a if a % 13 == 5 => json!(-i64::from(a)),
                a => json!(a),
            };
            json!({"user_id": user, "event": "purchase", "ts": ts, "properties": {"amount": amount, "cat": cat}}).to_string()
        }
        _ => json!({"user_id": user, "event": "view", "ts": ts, "properties": {"cat": cat}})
            .to_string(),
    }
}

/// From scratch: apply the given events to fresh states, then evaluate at `now`.
fn batch(rules: &str, lines: &[String], now: Millis) -> BTreeMap<String, serde_json::Value> {
    let rules = tagstream_rules::rules::RuleSet::compile(rules, "t").unwrap();
    let mut users: BTreeMap<String, UserState> = BTreeMap::new();
    for line in lines {
        let ev = decode(line.as_bytes(), &DecodeOptions::default()).unwrap();
        if matches!(ev.body, EventBody::Delete) {
            users.remove(&ev.user_id);
            continue;
        }
        let st = users
            .entry(ev.user_id.clone())
            .or_insert_with(|| UserState::new(&rules.aggregates, rules.segments.len()));
        let mut sink = Vec::new();
        // Apply at the final instant: no pruning history, no intermediate timers.
        engine::apply(
            &rules,
            &Arc::from(ev.user_id.as_str()),
            st,
            &ev,
            now,
            &mut sink,
        );
    }
    users
        .iter()
        .map(|(u, s)| (u.clone(), engine::dump_line(&rules, u, s, now)))
        .collect()
}

fn incremental_dump(sim: &Sim) -> BTreeMap<String, serde_json::Value> {
    sim.users
        .iter()
        .map(|(u, s)| (u.clone(), engine::dump_line(&sim.rules, u, s, sim.now)))
        .collect()
}

/// Both properties for one rule set.
fn check(rules: &str, steps: &[Step], extra_hours: i64) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(rules);
    let mut lines = Vec::new();
    let mut clock = START;
    let mut engine_times = Vec::new();
    for s in steps {
        let ts = (clock + s.dt).max(START - 100 * HOUR);
        clock = clock.max(ts);
        let line = to_json(s, ts);
        sim.event(&line);
        lines.push(line);
        engine_times.push(sim.now);
    }
    prop_assert_eq!(incremental_dump(&sim), batch(rules, &lines, sim.now));
    let later = sim.now + extra_hours * HOUR;
    sim.advance(later);
    prop_assert_eq!(incremental_dump(&sim), batch(rules, &lines, later));

    // Timer exactness: membership from transitions at instants between events.
    let mut probe_times = Vec::new();
    for i in 0..lines.len() {
        let from = engine_times[i];
        let to = engine_times.get(i + 1).copied().unwrap_or(later + 1);
        if to > from + 1 {
            for k in 1..=6 {
                probe_times.push((i, from + (to - from) * k / 7));
            }
            probe_times.push((i, to - 1));
        }
    }
    for (i, t) in probe_times {
        let want: BTreeMap<String, BTreeSet<String>> = batch(rules, &lines[..=i], t)
            .into_iter()
            .map(|(u, row)| {
                (
                    u,
                    row["segments"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        // Transitions up to instant t, among those emitted before event i+1 arrived.
        for tr in sim.out.iter().filter(|tr| tr.ts <= t) {
            let set = got.entry(tr.user_id.to_string()).or_default();
            if tr.enter {
                set.insert(tr.segment.to_string());
            } else {
                set.remove(&*tr.segment);
            }
        }
        got.retain(|_, s| !s.is_empty());
        let want: BTreeMap<_, _> = want.into_iter().filter(|(_, s)| !s.is_empty()).collect();
        prop_assert_eq!(got, want, "membership at {} after event {}", t, i);
    }
    Ok(())
}

/// A random aggregate tag `name` (TOML) and how segments may compare it.
fn aggregate_tag() -> impl Strategy<Value = (String, Operand)> {
    let windows = prop_oneof![
        Just(None),
        Just(Some("90m")),
        Just(Some("5h")),
        Just(Some("1d")),
        Just(Some("2d")),
        Just(Some("3d")),
    ];
    let events = prop_oneof![
        Just("\"purchase\""),
        Just("\"view\""),
        Just("\"*\""),
        Just("[\"view\", \"purchase\"]")
    ];
    let filters = prop_oneof![
        3 => Just(None),
        1 => Just(Some("properties.cat = 'a'")),
        1 => Just(Some("properties.cat <> 'c' AND properties.amount > 20")),
    ];
    (0u8..9, events, windows, filters).prop_map(|(kind, event, window, filter)| {
        let (kind, property, operand) = match kind {
            0 => ("count", None, Operand::Number(0.0, 4.0)),
            1 => ("sum", Some("amount"), Operand::Number(0.0, 150.0)),
            2 => ("max", Some("amount"), Operand::Number(0.0, 80.0)),
            3 => ("min", Some("amount"), Operand::Number(0.0, 80.0)),
            4 => ("avg", Some("amount"), Operand::Number(0.0, 80.0)),
            5 => ("distinct", Some("cat"), Operand::Number(0.0, 3.0)),
            6 => ("top", Some("cat"), Operand::Text),
            7 => ("last_time", None, Operand::Time),
            _ => ("first_time", None, Operand::Time),
        };
        let mut toml = format!("kind = \"{kind}\"\nevent = {event}\n");
        if let Some(p) = property {
            toml += &format!("property = \"{p}\"\n");
        }
        // first/last times take no window
        if let (Some(w), Operand::Number(..) | Operand::Text) = (window, &operand) {
            toml += &format!("window = \"{w}\"\n");
        }
        if let Some(f) = filter {
            toml += &format!("where = \"{f}\"\n");
        }
        (toml, operand)
    })
}

/// What a tag's value can be compared with.
#[derive(Debug, Clone)]
enum Operand {
    /// A number, compared with thresholds in this range.
    Number(f64, f64),
    /// A category (`top`).
    Text,
    /// An instant (first/last times): compared with `now()` minus a duration.
    Time,
}

/// One comparison over tag `t{i}`, picked by `pick` among the tags.
fn comparison(tags: &[Operand], pick: usize, knob: u32) -> String {
    let i = pick % tags.len();
    match &tags[i] {
        Operand::Number(lo, hi) => {
            let c = lo + (hi - lo) * f64::from(knob % 7) / 6.0;
            let op = [">=", "<", ">", "<=", "="][(knob / 7 % 5) as usize];
            match knob % 11 {
                0 => format!("t{i} IS NULL"),
                1 => format!("coalesce(t{i}, 0) {op} {c}"),
                _ => format!("t{i} {op} {c}"),
            }
        }
        Operand::Text => {
            let v = ["a", "b", "c"][(knob % 3) as usize];
            if knob.is_multiple_of(5) {
                format!("t{i} <> '{v}'")
            } else {
                format!("t{i} = '{v}'")
            }
        }
        Operand::Time => {
            let hours = 1 + knob % 60;
            // another timestamp tag, for days counted from two instants
            let j = (0..tags.len())
                .map(|k| (i + 1 + k) % tags.len())
                .find(|&k| matches!(tags[k], Operand::Time))
                .unwrap_or(i);
            match knob % 5 {
                0 => format!("t{i} < now() - {hours}h"),
                1 => format!("days_since(t{i}) >= {}", knob % 3),
                2 => format!(
                    "coalesce(days_since(t{i}), 0) + days_since(t{j}) >= {}",
                    knob % 4
                ),
                _ => format!("t{i} > now() - {hours}h"),
            }
        }
    }
}

/// A random rules file: 2–5 aggregate tags, sometimes a lifecycle `case` and a `tier`, and 1–3
/// segments of one to three comparisons joined by AND / OR / AND NOT.
fn random_rules() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(aggregate_tag(), 2..6),
        prop_oneof![Just("UTC"), Just("America/New_York"), Just("Asia/Shanghai")],
        any::<bool>(),
        prop::collection::vec(
            prop::collection::vec((any::<usize>(), any::<u32>(), 0u8..3), 1..4),
            1..4,
        ),
    )
        .prop_map(|(aggs, zone, derived, segments)| {
            let mut toml = format!("time_zone = \"{zone}\"\ndedup_window = \"0d\"\n");
            let mut operands = Vec::new();
            for (i, (tag, operand)) in aggs.into_iter().enumerate() {
                toml += &format!("[[tag]]\nname = \"t{i}\"\n{tag}");
                operands.push(operand);
            }
            if derived {
                let n = operands.len();
                toml += &format!(
                    "[[tag]]\nname = \"t{n}\"\nkind = \"case\"\ncases = [\n  {{ when = \"first_seen > now() - 1d\", value = \"a\" }},\n  {{ when = \"last_seen > now() - 2d\", value = \"b\" }},\n]\nelse = \"c\"\n"
                );
                operands.push(Operand::Text);
                if let Some(j) = operands.iter().position(|o| matches!(o, Operand::Number(..))) {
                    let n = operands.len();
                    toml += &format!("[[tag]]\nname = \"t{n}\"\nkind = \"tier\"\nof = \"t{j}\"\ntiers = [{{ label = \"a\", min = 0 }}, {{ label = \"b\", min = 2 }}, {{ label = \"c\", min = 40 }}]\n");
                    operands.push(Operand::Text);
                }
            }
            for (s, terms) in segments.iter().enumerate() {
                let mut when = String::new();
                for (k, (pick, knob, join)) in terms.iter().enumerate() {
                    if k > 0 {
                        when += [" AND ", " OR ", " AND NOT "][*join as usize];
                    }
                    when += &format!("({})", comparison(&operands, *pick, *knob));
                }
                toml += &format!("[[segment]]\nname = \"s{s}\"\nwhen = \"{when}\"\n");
            }
            toml
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn random_rules_match_the_naive_model(
        rules in random_rules(),
        steps in prop::collection::vec(step(), 1..40),
        extra_hours in 0i64..200,
    ) {
        if let Err(e) = tagstream_rules::rules::RuleSet::compile(&rules, "random.toml") {
            panic!("the generator wrote rules that do not compile: {e}\n{rules}");
        }
        check(&rules, &steps, extra_hours)?;
    }

    #[test]
    fn incremental_equals_from_scratch(steps in prop::collection::vec(step(), 1..60), extra_hours in 0i64..200) {
        check(RULES, &steps, extra_hours)?;
    }

    #[test]
    fn changes_that_move_back_and_forth_are_exact(steps in prop::collection::vec(step(), 1..40), extra_hours in 0i64..200) {
        check(CHANGING_RULES, &steps, extra_hours)?;
    }
}
