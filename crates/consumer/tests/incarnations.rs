//! SPEC §5 rev 2: two different transitions never share an `event_id`, including those of a
//! user deleted and re-created within the same millisecond; the same input in the same order
//! gives the same ids; and nothing of the deleted user is kept to tell its incarnations apart.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use tagstream_consumer::outbox::{Origin, OutboxEntry};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{Cf, RocksStore, StateStore};

const RULES: &str = r#"
[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[segment]]
name = "buyer"
when = "orders >= 1"
"#;

const T: i64 = 1_732_000_000_000;

fn open(dir: &Path) -> Engine {
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let store = Arc::new(RocksStore::open(dir).unwrap());
    Engine::open(store, rules, RULES, EngineOptions::default()).unwrap()
}

fn line(kind: &str) -> String {
    match kind {
        "buy" => format!(r#"{{"type":"track","event":"purchase","user_id":"u1","ts":{T}}}"#),
        _ => format!(r#"{{"type":"delete","user_id":"u1","ts":{T}}}"#),
    }
}

/// Processes `lines` as one batch and returns the transitions it emitted, delivered.
fn process(engine: &mut Engine, lines: &[String]) -> Vec<serde_json::Value> {
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
    engine.process(&records, &[]).unwrap();
    let entries = engine.outbox(usize::MAX).unwrap();
    if let Some((last, _)) = entries.last() {
        engine.acknowledge(*last).unwrap();
    }
    entries
        .into_iter()
        .filter_map(|(_, e)| match e {
            OutboxEntry::Transition { json, .. } => Some(serde_json::from_str(&json).unwrap()),
            _ => None,
        })
        .collect()
}

fn ids(transitions: &[serde_json::Value]) -> Vec<String> {
    transitions
        .iter()
        .map(|t| t["event_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_user_recreated_in_the_same_millisecond_gets_new_ids_deterministically() {
    let first_batch = [line("buy"), line("delete"), line("buy")];
    let second_batch = [line("delete"), line("buy")];

    let dir = tempfile::tempdir().unwrap();
    let mut engine = open(dir.path());
    let mut all = process(&mut engine, &first_batch);
    let shape: Vec<(String, u64, i64)> = all
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["seq"].as_u64().unwrap(),
                t["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("segment_enter".to_string(), 1, T),
            ("segment_exit".to_string(), 2, T),
            ("segment_enter".to_string(), 1, T),
        ],
        "same user, segment, seq and ts for both enters: only the incarnation differs"
    );
    // The count of deletes survives a restart: a third incarnation after reopening.
    drop(engine);
    let mut engine = open(dir.path());
    all.extend(process(&mut engine, &second_batch));
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 5);
    let distinct: BTreeSet<&String> = all_ids.iter().collect();
    assert_eq!(distinct.len(), all_ids.len(), "ids collide: {all:#?}");

    // Same input, same order, other batching, other store: the same ids.
    let again_dir = tempfile::tempdir().unwrap();
    let mut again = open(again_dir.path());
    let mut replayed = Vec::new();
    for l in first_batch.iter().chain(&second_batch) {
        replayed.extend(process(&mut again, std::slice::from_ref(l)));
    }
    assert_eq!(ids(&replayed), all_ids);

    // Nothing of the deleted user is kept: after a final delete, no stored key or value
    // names it (the stamp is a per-partition count, not a record of who was deleted).
    process(&mut again, &[line("delete")]);
    drop(again);
    let store = RocksStore::open(again_dir.path()).unwrap();
    for cf in [Cf::Users, Cf::Timers, Cf::Meta, Cf::Ids, Cf::Outbox] {
        for (k, v) in store.scan(cf, &[], None, usize::MAX).unwrap() {
            let named = |b: &[u8]| b.windows(2).any(|w| w == b"u1");
            assert!(
                !named(&k) && !named(&v),
                "{cf:?} still holds the deleted user: {:?}",
                String::from_utf8_lossy(&k)
            );
        }
    }
}
