//! SPEC §2 rev 2: the Sensors records that are not about users (`item_set`, `item_delete`,
//! `track_id_bind`, `track_id_unbind`) are skipped by the driver: counted in
//! `BatchReport::skipped` (and so in `tagstream_events_total{outcome="skipped"}`), never
//! applied, never dead-lettered, and they never move engine time.

use std::sync::Arc;

use tagstream_consumer::metrics::Metrics;
use tagstream_consumer::outbox::{Origin, OutboxEntry};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::event::{DecodeOptions, Format};
use tagstream_rules::rules::RuleSet;
use tagstream_state::MemStore;

const RULES: &str = r#"
[[tag]]
name = "events"
kind = "count"
event = "*"
"#;

const T: i64 = 1_732_000_000_000;

#[test]
fn skipped_records_are_counted_and_change_nothing() {
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let options = EngineOptions {
        decode: DecodeOptions {
            format: Format::Sensors,
            ..DecodeOptions::default()
        },
        ..EngineOptions::default()
    };
    let mut engine = Engine::open(Arc::new(MemStore::new()), rules, RULES, options).unwrap();
    let later = T + 100 * 86_400_000;
    let lines = [
        format!(r#"{{"type":"track","event":"e","distinct_id":"u1","time":{T}}}"#),
        format!(r#"{{"type":"item_set","item_type":"book","item_id":"b1","time":{later}}}"#),
        format!(r#"{{"type":"item_delete","item_type":"book","item_id":"b1","time":{later}}}"#),
        format!(
            r#"{{"type":"track_id_bind","event":"$BindID","distinct_id":"u2","time":{later},"_track_id":1}}"#
        ),
        format!(
            r#"{{"type":"track_id_unbind","event":"$UnbindID","distinct_id":"u3","time":{later}}}"#
        ),
        r#"{"type":"item_set""#.to_string(),
    ];
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
    let report = engine.process(&records, &[]).unwrap();
    assert_eq!(report.skipped, 4, "{report:?}");
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(
        report.dead_lettered(),
        1,
        "only the broken line: {report:?}"
    );
    assert_eq!(report.dead_letters.get("invalid_json"), Some(&1));
    assert_eq!(
        engine.clock(0),
        Some(T),
        "skipped records do not move engine time"
    );
    let dead: Vec<_> = engine
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| matches!(e, OutboxEntry::DeadLetter(_)))
        .collect();
    assert_eq!(dead.len(), 1);

    // merged reports add the count up; the metric exists at 0 and counts it
    let mut total = report.clone();
    total.merge(&report);
    assert_eq!(total.skipped, 8);
    let metrics = Metrics::new();
    assert!(metrics
        .render()
        .contains("tagstream_events_total{outcome=\"skipped\"} 0"));
    metrics.record_batch(&report);
    assert!(metrics
        .render()
        .contains("tagstream_events_total{outcome=\"skipped\"} 4"));
}
