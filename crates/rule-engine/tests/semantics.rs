//! Behaviour of the engine on hand-computed scenarios (SPEC §3, §4 "Precise semantics", §5).

mod sim;

use serde_json::json;
use sim::Sim;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_732_000_000_000; // 2024-11-19T07:06:40Z

fn track(user: &str, name: &str, ts: i64, props: serde_json::Value) -> String {
    json!({"user_id": user, "event": name, "ts": ts, "properties": props}).to_string()
}

#[test]
fn every_aggregate_kind() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "n"
kind = "count"
event = "purchase"
[[tag]]
name = "total"
kind = "sum"
event = "purchase"
property = "amount"
[[tag]]
name = "lo"
kind = "min"
event = "purchase"
property = "amount"
[[tag]]
name = "hi"
kind = "max"
event = "purchase"
property = "amount"
[[tag]]
name = "mean"
kind = "avg"
event = "purchase"
property = "amount"
[[tag]]
name = "cats"
kind = "distinct"
event = "purchase"
property = "category"
[[tag]]
name = "fav"
kind = "top"
event = "purchase"
property = "category"
[[tag]]
name = "top2"
kind = "top"
k = 2
event = "purchase"
property = "category"
[[tag]]
name = "first_cat"
kind = "first"
event = "purchase"
property = "category"
[[tag]]
name = "last_cat"
kind = "last"
event = "purchase"
property = "category"
[[tag]]
name = "first_buy"
kind = "first_time"
event = "purchase"
[[tag]]
name = "last_buy"
kind = "last_time"
event = "purchase"
[[tag]]
name = "city"
kind = "profile"
property = "city"
"#,
    );
    sim.event(&track(
        "u",
        "purchase",
        T0,
        json!({"amount": 10, "category": "b"}),
    ));
    sim.event(&track(
        "u",
        "purchase",
        T0 + 1,
        json!({"amount": "12.5", "category": "a"}),
    ));
    sim.event(&track(
        "u",
        "purchase",
        T0 + 2,
        json!({"amount": 2.5, "category": "b"}),
    ));
    sim.event(&track("u", "purchase", T0 - 5, json!({"category": "c"})));
    sim.event(&track("u", "view", T0 + 3, json!({"amount": 1000})));
    sim.event(
        &json!({"type": "profile", "user_id": "u", "ts": T0, "properties": {"city": "Paris"}})
            .to_string(),
    );
    assert_eq!(sim.tag("u", "n"), json!(4));
    assert_eq!(sim.tag("u", "total"), json!(12.5));
    assert_eq!(sim.tag("u", "lo"), json!(2.5));
    assert_eq!(sim.tag("u", "hi"), json!(10));
    assert_eq!(sim.tag("u", "mean"), json!(6.25));
    assert_eq!(sim.tag("u", "cats"), json!(3));
    assert_eq!(sim.tag("u", "fav"), json!("b"));
    assert_eq!(sim.tag("u", "top2"), json!(["b", "a"]));
    assert_eq!(sim.tag("u", "first_cat"), json!("c"));
    assert_eq!(sim.tag("u", "last_cat"), json!("b"));
    assert_eq!(sim.tag("u", "first_buy"), json!(T0 - 5));
    assert_eq!(sim.tag("u", "last_buy"), json!(T0 + 2));
    assert_eq!(sim.tag("u", "city"), json!("Paris"));
}

#[test]
fn empty_values() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "n"
kind = "count"
event = "purchase"
[[tag]]
name = "total"
kind = "sum"
event = "purchase"
property = "amount"
[[tag]]
name = "mean"
kind = "avg"
event = "purchase"
property = "amount"
[[tag]]
name = "fav"
kind = "top"
event = "purchase"
property = "category"
"#,
    );
    sim.event(&track("u", "view", T0, json!({})));
    assert_eq!(sim.tag("u", "n"), json!(0));
    assert_eq!(sim.tag("u", "total"), json!(0));
    assert_eq!(sim.tag("u", "mean"), json!(null));
    assert_eq!(sim.tag("u", "fav"), json!(null));
}

#[test]
fn ties_follow_arrival_and_value_order() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "first_v"
kind = "first"
event = "e"
property = "v"
[[tag]]
name = "last_v"
kind = "last"
event = "e"
property = "v"
[[tag]]
name = "fav"
kind = "top"
event = "e"
property = "v"
"#,
    );
    sim.event(&track("u", "e", T0, json!({"v": "y"})));
    sim.event(&track("u", "e", T0, json!({"v": "x"})));
    assert_eq!(sim.tag("u", "first_v"), json!("y"));
    assert_eq!(sim.tag("u", "last_v"), json!("x"));
    assert_eq!(
        sim.tag("u", "fav"),
        json!("x"),
        "equal counts go to the smallest value"
    );
    sim.event(&track("u", "e", T0, json!({"v": 5})));
    sim.event(&track("u", "e", T0, json!({"v": 5.0})));
    assert_eq!(
        sim.tag("u", "fav"),
        json!(5),
        "1 equals 1.0; numbers sort before strings"
    );
}

#[test]
fn profile_ties_null_and_set_once() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "city"
kind = "profile"
property = "city"
"#,
    );
    let profile = |ts: i64, props: serde_json::Value| {
        json!({"type": "profile", "user_id": "u", "ts": ts, "properties": props}).to_string()
    };
    sim.event(&profile(T0 + 10, json!({"city": "A"})));
    sim.event(&profile(T0 + 5, json!({"city": "B"})));
    assert_eq!(sim.tag("u", "city"), json!("A"), "older value does not win");
    sim.event(&profile(T0 + 10, json!({"city": "C"})));
    assert_eq!(sim.tag("u", "city"), json!("C"), "ties: later arrival wins");
    sim.event(&profile(T0 + 11, json!({"other": 1})));
    assert_eq!(
        sim.tag("u", "city"),
        json!("C"),
        "a profile event without the key leaves it alone"
    );
    sim.event(&profile(T0 + 12, json!({"city": null})));
    assert_eq!(
        sim.tag("u", "city"),
        json!(null),
        "explicit null is a value"
    );
    let set_once = |ts: i64, props: serde_json::Value| {
        json!({"type": "profile_set_once", "distinct_id": "u", "time": ts, "properties": props})
            .to_string()
    };
    let mut sensors =
        Sim::new("[[tag]]\nname = \"city\"\nkind = \"profile\"\nproperty = \"city\"\n");
    sensors.event_as(
        &set_once(T0, json!({"city": "A"})),
        tagstream_rules::event::Format::Sensors,
    );
    sensors.event_as(
        &set_once(T0 + 1, json!({"city": "B"})),
        tagstream_rules::event::Format::Sensors,
    );
    assert_eq!(
        sensors.tag("u", "city"),
        json!("A"),
        "set_once does not overwrite a value"
    );
}

#[test]
fn day_window_rolls_at_local_midnight_with_timer_transitions() {
    let mut sim = Sim::new(
        r#"
time_zone = "Asia/Shanghai"
[[tag]]
name = "spend_2d"
kind = "sum"
event = "purchase"
property = "amount"
window = "2d"
[[segment]]
name = "big"
when = "spend_2d >= 100"
"#,
    );
    // 2024-11-19T10:00+08:00
    let t = chrono::DateTime::parse_from_rfc3339("2024-11-19T10:00:00+08:00")
        .unwrap()
        .timestamp_millis();
    sim.event(&track("u", "purchase", t, json!({"amount": 150})));
    assert_eq!(sim.segments("u"), json!(["big"]));
    // Window = 19th and 20th; the 19th leaves at local midnight starting the 21st.
    let drop = chrono::DateTime::parse_from_rfc3339("2024-11-21T00:00:00+08:00")
        .unwrap()
        .timestamp_millis();
    sim.advance(drop - 1);
    assert_eq!(sim.segments("u"), json!(["big"]));
    sim.advance(drop + DAY);
    assert_eq!(sim.tag("u", "spend_2d"), json!(0));
    let log = sim.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[1],
        ("u".into(), "big".into(), "segment_exit", drop, "timer")
    );
}

#[test]
fn now_comparisons_flip_at_the_exact_millisecond() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "last_seen"
kind = "last_time"
event = "*"
[[segment]]
name = "recent"
when = "last_seen > now() - 7d"
[[segment]]
name = "dormant"
when = "last_seen < now() - 7d"
"#,
    );
    sim.event(&track("u", "view", T0, json!({})));
    sim.advance(T0 + 30 * DAY);
    let log = sim.log();
    assert_eq!(
        log,
        vec![
            ("u".into(), "recent".into(), "segment_enter", T0, "event"),
            (
                "u".into(),
                "recent".into(),
                "segment_exit",
                T0 + 7 * DAY,
                "timer"
            ),
            (
                "u".into(),
                "dormant".into(),
                "segment_enter",
                T0 + 7 * DAY + 1,
                "timer"
            ),
        ]
    );
}

#[test]
fn lifecycle_case_and_days_since() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "lifecycle"
kind = "case"
cases = [
  { when = "first_seen > now() - 7d", value = "new" },
  { when = "last_seen > now() - 7d", value = "active" },
  { when = "last_seen > now() - 30d", value = "dormant" },
]
else = "churned"
[[tag]]
name = "idle_days"
kind = "expr"
expr = "days_since(last_seen)"
[[segment]]
name = "churned"
when = "lifecycle = 'churned'"
[[segment]]
name = "idle_10"
when = "idle_days >= 10"
"#,
    );
    sim.event(&track("u", "view", T0, json!({})));
    assert_eq!(sim.tag("u", "lifecycle"), json!("new"));
    sim.event(&track("u", "view", T0 + 8 * DAY, json!({})));
    assert_eq!(sim.tag("u", "lifecycle"), json!("active"));
    sim.advance(T0 + 8 * DAY + 10 * DAY);
    assert_eq!(sim.tag("u", "idle_days"), json!(10));
    assert_eq!(sim.tag("u", "lifecycle"), json!("dormant"));
    sim.advance(T0 + 8 * DAY + 40 * DAY);
    let log = sim.log();
    assert!(
        log.contains(&(
            "u".into(),
            "idle_10".into(),
            "segment_enter",
            T0 + 18 * DAY,
            "timer"
        )),
        "{log:?}"
    );
    assert!(
        log.contains(&(
            "u".into(),
            "churned".into(),
            "segment_enter",
            T0 + 38 * DAY,
            "timer"
        )),
        "{log:?}"
    );
}

#[test]
fn delete_emits_exits_and_restarts_sequences() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "n"
kind = "count"
event = "*"
[[segment]]
name = "any"
when = "n > 0"
"#,
    );
    sim.event(&track("u", "view", T0, json!({})));
    sim.event(&json!({"type": "delete", "user_id": "u", "ts": T0 + 1}).to_string());
    assert_eq!(sim.segments("u"), json!(null));
    sim.event(&json!({"type": "delete", "user_id": "ghost", "ts": T0 + 2}).to_string());
    assert!(!sim.users.contains_key("ghost"));
    sim.event(&track("u", "view", T0 + 3, json!({})));
    let seqs: Vec<(u32, &str)> = sim.out.iter().map(|t| (t.seq, t.cause.as_str())).collect();
    assert_eq!(seqs, vec![(1, "event"), (2, "delete"), (1, "event")]);
    assert_eq!(sim.now, T0 + 3);
}

#[test]
fn duplicates_within_the_window_are_skipped() {
    let mut sim = Sim::new(
        r#"
dedup_window = "1d"
[[tag]]
name = "n"
kind = "count"
event = "*"
"#,
    );
    let e =
        |ts: i64| json!({"user_id": "u", "event": "view", "ts": ts, "event_id": "e1"}).to_string();
    sim.event(&e(T0));
    sim.event(&e(T0));
    assert_eq!((sim.tag("u", "n"), sim.duplicates), (json!(1), 1));
    sim.event(&track("u", "other", T0 + 2 * DAY, json!({})));
    sim.event(&e(T0));
    assert_eq!(
        sim.tag("u", "n"),
        json!(3),
        "outside the window the id is forgotten"
    );
}

#[test]
fn where_filters_and_null_logic() {
    let mut sim = Sim::new(
        r#"
[[tag]]
name = "app_spend"
kind = "sum"
event = ["purchase", "refund"]
property = "amount"
where = "properties.channel = 'app' AND event = 'purchase'"
[[tag]]
name = "ratio"
kind = "expr"
expr = "app_spend / 0"
[[segment]]
name = "not_ratio"
when = "NOT (ratio > 1)"
[[segment]]
name = "neg"
when = "NOT has_ratio"
[[segment]]
name = "has_ratio"
when = "ratio IS NOT NULL"
"#,
    );
    sim.event(&track(
        "u",
        "purchase",
        T0,
        json!({"amount": 5, "channel": "app"}),
    ));
    sim.event(&track(
        "u",
        "purchase",
        T0,
        json!({"amount": 7, "channel": 3}),
    ));
    sim.event(&track(
        "u",
        "refund",
        T0,
        json!({"amount": 9, "channel": "app"}),
    ));
    assert_eq!(sim.tag("u", "app_spend"), json!(5));
    assert_eq!(sim.tag("u", "ratio"), json!(null));
    assert_eq!(
        sim.segments("u"),
        json!(["neg"]),
        "NULL is not TRUE; a segment referenced is never NULL"
    );
}

#[test]
fn a_window_drop_before_a_now_comparison_is_not_skipped() {
    let mut sim = Sim::new(
        r#"
time_zone = "Asia/Shanghai"
[[tag]]
name = "carts_7d"
kind = "count"
event = "add_to_cart"
window = "7d"
[[tag]]
name = "orders_7d"
kind = "count"
event = "purchase"
window = "7d"
[[tag]]
name = "last_seen"
kind = "last_time"
event = "*"
[[segment]]
name = "cart_abandoner"
when = "carts_7d > 0 AND orders_7d = 0 AND last_seen > now() - 2d"
"#,
    );
    for (name, ts) in [
        ("view", 1730106033471),
        ("add_to_cart", 1730106104466),
        ("view", 1730106429215),
        ("view", 1730640527855),
        ("search", 1730638293453),
        ("view", 1730640641032),
    ] {
        sim.event(&track("u", name, ts, json!({})));
    }
    sim.advance(1730640641032 + 10 * DAY);
    let log = sim.log();
    assert_eq!(
        log.last().unwrap(),
        &(
            "u".to_string(),
            "cart_abandoner".to_string(),
            "segment_exit",
            1730649600000,
            "timer"
        ),
        "{log:#?}"
    );
}

#[test]
fn every_function_through_the_compiler() {
    let mut sim = Sim::new(
        r#"
time_zone = "Asia/Shanghai"
[[tag]]
name = "seen"
kind = "last_time"
event = "*"
[[tag]]
name = "amount"
kind = "sum"
event = "*"
property = "amount"
[[tag]]
name = "f_coalesce"
kind = "expr"
expr = "coalesce(NULL, amount, 1)"
[[tag]]
name = "f_days"
kind = "expr"
expr = "days_since(seen)"
[[tag]]
name = "f_hour"
kind = "expr"
expr = "hour_of_day(seen)"
[[tag]]
name = "f_dow"
kind = "expr"
expr = "day_of_week(seen)"
[[tag]]
name = "f_abs"
kind = "expr"
expr = "abs(-amount)"
[[tag]]
name = "f_least"
kind = "expr"
expr = "least(amount, NULL, 3)"
[[tag]]
name = "f_greatest"
kind = "expr"
expr = "greatest(amount, NULL, 3)"
[[tag]]
name = "f_round"
kind = "expr"
expr = "round(amount / 4, 1)"
[[tag]]
name = "f_ln"
kind = "expr"
expr = "round(ln(amount), 3)"
[[tag]]
name = "f_ln_bad"
kind = "expr"
expr = "ln(0)"
[[tag]]
name = "f_exp"
kind = "expr"
expr = "round(exp(2), 3)"
[[tag]]
name = "f_sigmoid"
kind = "expr"
expr = "sigmoid(0)"
[[tag]]
name = "f_time"
kind = "expr"
expr = "now() - seen"
[[tag]]
name = "f_ts"
kind = "expr"
expr = "seen + 1d"
[[tag]]
name = "f_mod"
kind = "expr"
expr = "-7 % 3"
[[tag]]
name = "f_in"
kind = "expr"
expr = "amount NOT IN (1, 2) AND amount BETWEEN 9 AND 11 AND seen IS NOT NULL"
"#,
    );
    // 2024-11-18T23:30:00+08:00 is a Monday, 23h local.
    let t = chrono::DateTime::parse_from_rfc3339("2024-11-18T23:30:00+08:00")
        .unwrap()
        .timestamp_millis();
    sim.event(&track("u", "e", t, json!({"amount": 10})));
    sim.event(&track("u", "tick", t - 1, json!({})));
    sim.advance(t + 3 * DAY + 5);
    let expect = [
        ("f_coalesce", json!(10)),
        ("f_days", json!(3)),
        ("f_hour", json!(23)),
        ("f_dow", json!(1)),
        ("f_abs", json!(10)),
        ("f_least", json!(3)),
        ("f_greatest", json!(10)),
        ("f_round", json!(2.5)),
        ("f_ln", json!(2.303)),
        ("f_ln_bad", json!(null)),
        ("f_exp", json!(7.389)),
        ("f_sigmoid", json!(0.5)),
        ("f_time", json!(3 * DAY + 5)),
        ("f_ts", json!(t + DAY)),
        ("f_mod", json!(-1)),
        ("f_in", json!(true)),
    ];
    for (tag, want) in expect {
        assert_eq!(sim.tag("u", tag), want, "{tag}");
    }
}
