//! A rules reload, live or at a restart, carries over only the partitions this instance owns:
//! the local copies of the others (left on disk when a rebalance took them away) are dropped,
//! so no transition and no changelog record is written for a partition another instance owns.
//! On RocksDB, through the engine's public API.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tagstream_consumer::outbox::{Origin, OutboxEntry};
use tagstream_consumer::schema::{encode_offset, offsets_key};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{Cf, RocksStore, StateStore};

use common::TWO_VIEWS_RULES as RULES;

/// RULES plus a segment every user who viewed once is in: the reload emits an enter for each.
fn new_rules() -> String {
    format!("{RULES}\n[[segment]]\nname = \"seen\"\nwhen = \"views >= 1\"\n")
}

const T: i64 = 1_732_000_000_000;

fn open(store: Arc<dyn StateStore>, rules: &str, reload_on_open: bool) -> Engine {
    let compiled = Arc::new(RuleSet::compile(rules, "rules").unwrap());
    let options = EngineOptions {
        changelog: true,
        reload_on_open,
        ..EngineOptions::default()
    };
    Engine::open(store, compiled, rules, options).unwrap()
}

/// Three users with views in each of partitions 0 and 1, as Kafka messages.
fn fill(engine: &mut Engine) {
    for p in [0u32, 1] {
        let lines: Vec<String> = (0..3)
            .map(|u| format!(r#"{{"user_id":"p{p}-u{u}","event":"view","ts":{}}}"#, T + u))
            .collect();
        let records: Vec<Record<'_>> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Record {
                partition: p,
                bytes: l.as_bytes(),
                origin: Origin::Kafka {
                    topic: "events".into(),
                    partition: p as i32,
                    offset: i as i64,
                    key: None,
                },
                fault: None,
            })
            .collect();
        let positions = [(
            offsets_key("events", p as i32),
            encode_offset(lines.len() as i64),
        )];
        engine.process(&records, &positions).unwrap();
    }
}

/// Users of the outbox's transitions from `from` on.
fn transition_users(engine: &Engine, from: u64) -> BTreeSet<String> {
    engine
        .outbox_from(from, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e {
            OutboxEntry::Transition { user_id, .. } => Some(user_id),
            OutboxEntry::DeadLetter(_) => None,
        })
        .collect()
}

/// Partitions of the changelog records staged from `from` on, with their count.
fn changelog_partitions(engine: &Engine, from: u64) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    for (_, entry) in engine.changelog_from(from, usize::MAX).unwrap() {
        *out.entry(entry.partition).or_default() += 1;
    }
    out
}

/// Every stored user, whatever the ownership (queries then answer for every partition).
fn stored_users(engine: &mut Engine) -> BTreeSet<String> {
    engine.set_owned(None);
    let mut out = BTreeSet::new();
    engine
        .for_each_user(&mut |u, _, _| {
            out.insert(u.to_string());
            Ok(())
        })
        .unwrap();
    out
}

fn p0_users() -> BTreeSet<String> {
    (0..3).map(|u| format!("p0-u{u}")).collect()
}

#[test]
fn a_live_reload_carries_over_the_owned_partitions_and_drops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let mut engine = open(store.clone(), RULES, false);
    fill(&mut engine);
    assert_eq!(stored_users(&mut engine).len(), 6);
    // Partition 1 went to another instance.
    engine.set_owned(Some(BTreeSet::from([0])));
    let (outbox, changelog) = (engine.outbox_next_seq(), engine.changelog_next_seq());

    let rules = Arc::new(RuleSet::compile(&new_rules(), "rules").unwrap());
    let report = engine.reload(rules, &new_rules()).unwrap();
    assert_eq!(
        report.users, 3,
        "only partition 0's users were carried over"
    );
    assert_eq!(transition_users(&engine, outbox), p0_users());
    assert_eq!(
        changelog_partitions(&engine, changelog)
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![0],
        "changelog records only for the owned partition"
    );
    assert_eq!(stored_users(&mut engine), p0_users());
    assert_eq!(engine.clock(1), None);
    assert_eq!(
        store.get(Cf::Offsets, &offsets_key("events", 1)).unwrap(),
        None,
        "partition 1 starts from the changelog (or the input) if it comes back"
    );
    assert!(store
        .get(Cf::Offsets, &offsets_key("events", 0))
        .unwrap()
        .is_some());
}

#[test]
fn a_restart_with_new_rules_carries_over_only_the_partitions_not_released() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, changelog) = {
        let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let mut engine = open(store, RULES, false);
        fill(&mut engine);
        // A rebalance took partitions 1 and 2 away; 2 came back since.
        engine.mark_released(&BTreeSet::from([1, 2])).unwrap();
        engine.mark_assigned(&BTreeSet::from([2])).unwrap();
        assert_eq!(engine.released().unwrap(), BTreeSet::from([1]));
        (engine.outbox_next_seq(), engine.changelog_next_seq())
    };
    let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let mut engine = open(store, &new_rules(), true);
    assert_eq!(transition_users(&engine, outbox), p0_users());
    assert_eq!(
        changelog_partitions(&engine, changelog)
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(stored_users(&mut engine), p0_users());
    assert!(
        engine.released().unwrap().is_empty(),
        "the mark went with the copy"
    );
}

/// Runs the pipeline loop over `events` (then the source ends), optionally shutting down.
fn run_pipeline(
    engine: &tagstream_consumer::engine::SharedEngine,
    dir: &std::path::Path,
    events: Vec<tagstream_consumer::source::SourceEvent>,
    shutting_down: bool,
) {
    use tagstream_consumer::metrics::Metrics;
    use tagstream_consumer::pipeline::{self, PipelineOptions, Shutdown};
    use tagstream_consumer::sink::lines::LineSink;
    use tagstream_consumer::sink::{Delivery, Route};
    use tagstream_consumer::source::Control;

    let metrics = Metrics::new();
    let delivery = {
        let e = engine.lock();
        let sink = |name: &str| {
            Route::Lines(LineSink::open(dir.join(name).to_str().unwrap(), false).unwrap())
        };
        Delivery::new(&e, sink("out"), sink("dlq"), metrics.clone()).unwrap()
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    for event in events {
        tx.send(event).unwrap();
    }
    drop(tx);
    let shutdown = Shutdown::new();
    if shutting_down {
        shutdown.trigger();
    }
    let options = PipelineOptions {
        clock: tagstream_consumer::ClockMode::Event,
        ..PipelineOptions::default()
    };
    pipeline::run(
        engine.clone(),
        rx,
        Control::new(),
        delivery,
        None,
        &metrics,
        &shutdown,
        &options,
    )
    .unwrap();
}

/// The pipeline marks what a rebalance takes away, clears the mark when the partition comes
/// back, and marks nothing when the revocation is a shutdown's.
#[test]
fn the_pipeline_marks_partitions_a_rebalance_took_away() {
    use tagstream_consumer::engine::SharedEngine;
    use tagstream_consumer::source::SourceEvent;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(&dir.path().join("state")).unwrap());
    let engine = SharedEngine::new(open(store, RULES, false));
    let assigned =
        |ps: &[i32]| SourceEvent::Assigned(ps.iter().map(|p| ("events".into(), *p)).collect());
    let revoked = |ps: &[i32]| {
        // The loop drops `done` once the partitions are settled; nobody waits here.
        let (done, _) = std::sync::mpsc::sync_channel(1);
        SourceEvent::Revoked {
            partitions: ps.iter().map(|p| ("events".into(), *p)).collect(),
            done,
        }
    };

    run_pipeline(
        &engine,
        dir.path(),
        vec![assigned(&[0, 1, 2]), revoked(&[1, 2])],
        false,
    );
    assert_eq!(engine.lock().released().unwrap(), BTreeSet::from([1, 2]));
    run_pipeline(&engine, dir.path(), vec![assigned(&[2])], false);
    assert_eq!(engine.lock().released().unwrap(), BTreeSet::from([1]));
    run_pipeline(
        &engine,
        dir.path(),
        vec![assigned(&[0]), revoked(&[0])],
        true,
    );
    assert_eq!(engine.lock().released().unwrap(), BTreeSet::from([1]));
}
