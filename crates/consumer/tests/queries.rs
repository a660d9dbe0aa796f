//! The engine's API queries: profiles equal dump lines, pages cover a set exactly once, and
//! queries answer only for the partitions this instance owns (a revoked partition's state stays
//! on disk but is no longer current).

use std::collections::BTreeSet;
use std::sync::Arc;

use tagstream_consumer::outbox::Origin;
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::MemStore;

const RULES: &str = r#"
[[tag]]
name = "n"
kind = "count"
event = "*"

[[segment]]
name = "active"
when = "n >= 1"

[[segment]]
name = "busy"
when = "n >= 2"
"#;

fn engine_with_two_partitions() -> Engine {
    let rules = Arc::new(RuleSet::compile(RULES, "rules.toml").unwrap());
    let mut engine = Engine::open(
        Arc::new(MemStore::new()),
        rules,
        RULES,
        EngineOptions::default(),
    )
    .unwrap();
    let lines: Vec<(u32, String)> = (0..40)
        .map(|i| {
            let user = format!("u{}", i % 10);
            let partition = (i % 10) % 2;
            (
                partition,
                format!(
                    r#"{{"user_id":"{user}","event":"view","ts":{}}}"#,
                    1_700_000_000_000i64 + i as i64 * (1 + (i % 10) as i64)
                ),
            )
        })
        .collect();
    let records: Vec<Record<'_>> = lines
        .iter()
        .map(|(p, l)| Record {
            partition: *p,
            bytes: l.as_bytes(),
            origin: Origin::Line {
                source: "t".into(),
                line: 0,
            },
            fault: None,
        })
        .collect();
    engine.process(&records, &[]).unwrap();
    engine
}

fn even(name: &str) -> bool {
    name[1..].parse::<u32>().unwrap() % 2 == 0
}

#[test]
fn queries_answer_for_owned_partitions_only() {
    let mut engine = engine_with_two_partitions();
    assert_eq!(engine.segment_size("active"), 10);
    assert_eq!(engine.all_users().len(), 10);
    assert!(engine.profile("u1").unwrap().is_some());

    engine.set_owned(Some(BTreeSet::from([0])));
    assert_eq!(engine.segment_size("active"), 5);
    assert_eq!(engine.all_users().len(), 5);
    assert!(
        engine.profile("u1").unwrap().is_none(),
        "u1 lives in partition 1"
    );
    assert!(engine.profile("u2").unwrap().is_some());
    assert!(!engine.delete_user("u1").unwrap(), "not ours to delete");
    let page = engine
        .page(&engine.segment_bitmap("active").unwrap(), None, 100)
        .unwrap();
    assert_eq!(page.members.len(), 5);
    assert!(page.members.iter().all(|m| even(m)));
    assert!(engine
        .segment_summaries()
        .iter()
        .all(|s| s.size == engine.segment_size(&s.name)));

    engine.set_owned(Some(BTreeSet::new()));
    assert_eq!(engine.segment_size("active"), 0);
    assert!(engine.profile("u2").unwrap().is_none());
}

#[test]
fn pages_cover_a_set_exactly_once_and_profiles_equal_dump_lines() {
    let engine = engine_with_two_partitions();
    let set = engine.segment_bitmap("active").unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = engine.page(&set, after, 3).unwrap();
        assert!(page.members.len() <= 3);
        seen.extend(page.members);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(seen.len() as u64, set.len());
    let mut lines = Vec::new();
    engine
        .for_each_user(&mut |id, state, now| {
            lines.push((
                id.to_string(),
                tagstream_rules::engine::dump_line(engine.rules(), id, state, now),
            ));
            Ok(())
        })
        .unwrap();
    assert_eq!(lines.len(), 10);
    for (id, line) in lines {
        assert_eq!(engine.profile(&id).unwrap(), Some(line));
    }
    // Past the last id, and a cursor at u32::MAX, are empty pages.
    let last = set.max().unwrap();
    assert!(engine.page(&set, Some(last), 3).unwrap().members.is_empty());
    assert!(engine
        .page(&set, Some(u32::MAX), 3)
        .unwrap()
        .members
        .is_empty());
}
