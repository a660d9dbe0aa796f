//! The event-clock guard against far-future events: with `max_future_ms` set, an event further
//! ahead of the wall clock is dead-lettered as `future_timestamp` in event mode too, and never
//! moves its partition's engine time (which would otherwise make every windowed tag ignore all
//! later events); without it (`replay`), every event is applied as it is.

use std::sync::Arc;

use tagstream_consumer::engine::ClockMode;
use tagstream_consumer::outbox::{Origin, OutboxEntry};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::RocksStore;

const RULES: &str = r#"
[[tag]]
name = "views_1d"
kind = "count"
event = "view"
window = "1d"
"#;

/// The wall clock the engine sees in these tests.
const WALL: i64 = 1_732_000_000_000;
const YEAR: i64 = 365 * 86_400_000;

fn wall() -> i64 {
    WALL
}

fn line(user: &str, ts: i64) -> String {
    format!(r#"{{"user_id":"{user}","event":"view","ts":{ts}}}"#)
}

fn process(engine: &mut Engine, lines: &[String]) -> tagstream_consumer::engine::BatchReport {
    let records: Vec<Record<'_>> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| Record {
            partition: 0,
            bytes: l.as_bytes(),
            origin: Origin::Line {
                source: "t".into(),
                line: i as u64 + 1,
            },
            fault: None,
        })
        .collect();
    engine.process(&records, &[]).unwrap()
}

fn engine(dir: &std::path::Path, max_future_ms: Option<i64>) -> Engine {
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let options = EngineOptions {
        clock: ClockMode::Event,
        max_future_ms,
        ..EngineOptions::default()
    };
    let store = Arc::new(RocksStore::open(dir).unwrap());
    let mut engine = Engine::open(store, rules, RULES, options).unwrap();
    engine.set_wall_clock(wall);
    engine
}

#[test]
fn a_far_future_event_is_dead_lettered_and_never_moves_the_event_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), Some(5 * 60_000));
    let lines = [
        line("u1", WALL - 60_000),
        line("u2", WALL + 10 * YEAR),
        line("u1", WALL - 30_000),
        // Within the allowed lead: applied, and it moves the clock as usual.
        line("u3", WALL + 60_000),
    ];
    let report = process(&mut e, &lines);
    assert_eq!(report.applied, 3, "{report:?}");
    assert_eq!(report.dead_letters.get("future_timestamp"), Some(&1));
    assert_eq!(e.clock(0), Some(WALL + 60_000));
    assert!(e.user("u2").unwrap().is_none());
    let dump = tagstream_rules::engine::dump_line(
        e.rules(),
        "u1",
        &e.user("u1").unwrap().unwrap().0,
        e.clock(0).unwrap(),
    );
    assert_eq!(dump["tags"]["views_1d"], 2, "{dump}");
    let dead: Vec<_> = e
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|(_, entry)| match entry {
            OutboxEntry::DeadLetter(dl) => Some(dl),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "future_timestamp");
    assert_eq!(
        dead[0].origin,
        Origin::Line {
            source: "t".into(),
            line: 2
        }
    );
}

#[test]
fn without_a_limit_every_event_is_applied_as_replay_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), None);
    let lines = [line("u1", WALL), line("u2", WALL + 10 * YEAR)];
    let report = process(&mut e, &lines);
    assert_eq!(report.applied, 2, "{report:?}");
    assert_eq!(e.clock(0), Some(WALL + 10 * YEAR));
}
