//! Segment size history: one sample per minute of engine time with the size after the last
//! batch of that minute, summed over partitions, and nothing older than 30 days kept.

use std::sync::Arc;

use tagstream_consumer::engine::HISTORY_RETENTION_MS;
use tagstream_consumer::outbox::Origin;
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{MemStore, StateStore};

const RULES: &str = r#"
[[tag]]
name = "n"
kind = "count"
event = "*"
window = "1d"
[[segment]]
name = "active"
when = "n > 0"
"#;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_730_000_000_000;

fn feed(engine: &mut Engine, partition: u32, lines: &[String]) {
    let records: Vec<Record<'_>> = lines
        .iter()
        .map(|l| Record {
            partition,
            bytes: l.as_bytes(),
            origin: Origin::Line {
                source: "t".into(),
                line: 0,
            },
            fault: None,
        })
        .collect();
    engine.process(&records, &[]).unwrap();
}

fn event(user: &str, ts: i64) -> String {
    format!(r#"{{"user_id":"{user}","event":"view","ts":{ts}}}"#)
}

#[test]
fn history_samples_each_minute_sums_partitions_and_forgets_after_30_days() {
    let store: Arc<dyn StateStore> = Arc::new(MemStore::new());
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let mut engine = Engine::open(store, rules, RULES, EngineOptions::default()).unwrap();

    // Partition 0: one user at T0, a second in the same minute (the minute's point is the
    // size after its last batch), a third a minute later. Partition 1: one user two minutes on.
    feed(&mut engine, 0, &[event("a", T0)]);
    feed(&mut engine, 0, &[event("b", T0 + 1_000)]);
    feed(&mut engine, 0, &[event("c", T0 + 60_000)]);
    feed(&mut engine, 1, &[event("d", T0 + 120_000)]);
    let minute = |t: i64| t - t.rem_euclid(60_000);
    let points = engine
        .segment_history("active", i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(
        points,
        vec![
            (minute(T0), 2),
            (minute(T0 + 60_000), 3),
            (minute(T0 + 120_000), 4),
        ]
    );
    // A range starting between two points begins with the size then.
    let from = minute(T0 + 60_000) + 30_000;
    assert_eq!(
        engine.segment_history("active", from, i64::MAX).unwrap(),
        vec![(from, 3), (minute(T0 + 120_000), 4)]
    );

    // 40 days later (windows empty, timers fired): samples past 30 days are gone.
    let later = T0 + 40 * DAY;
    engine.advance(0, later).unwrap();
    engine.advance(1, later).unwrap();
    let points = engine
        .segment_history("active", i64::MIN, i64::MAX)
        .unwrap();
    assert!(!points.is_empty());
    assert!(
        points
            .iter()
            .all(|(t, _)| *t >= minute(later) - HISTORY_RETENTION_MS),
        "{points:?}"
    );
    assert_eq!(points.last().unwrap().1, 0);
}
