//! The changelog without a broker: what a commit stages restores, in another store, exactly
//! the state it came from; and the pipeline loop drops messages of partitions it does not own
//! (a batch polled before a revocation is never applied after it).

use std::collections::BTreeMap;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use tagstream_consumer::changelog::{Checkpoint, Snapshot, Undelivered};
use tagstream_consumer::engine::SharedEngine;
use tagstream_consumer::metrics::Metrics;
use tagstream_consumer::outbox::Origin;
use tagstream_consumer::pipeline::{self, PipelineOptions, Shutdown};
use tagstream_consumer::schema::{
    encode_offset, offsets_key, CHECKPOINT_KEY, TRANSITION_KEY_PREFIX,
};
use tagstream_consumer::sink::lines::LineSink;
use tagstream_consumer::sink::{Delivery, Route};
use tagstream_consumer::source::{Batch, Control, Message, SourceEvent};
use tagstream_consumer::{ClockMode, Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{RocksStore, StateStore};

const RULES: &str = r#"
[[tag]]
name = "views"
kind = "count"
event = "view"
window = "1d"

[[segment]]
name = "viewers"
when = "views >= 2"
"#;

const T: i64 = 1_732_000_000_000;

fn engine(dir: &std::path::Path, changelog: bool) -> Engine {
    let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir).unwrap());
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let options = EngineOptions {
        changelog,
        ..EngineOptions::default()
    };
    Engine::open(store, rules, RULES, options).unwrap()
}

fn view(user: &str, ts: i64) -> String {
    format!(r#"{{"user_id":"{user}","event":"view","ts":{ts}}}"#)
}

fn delete(user: &str, ts: i64) -> String {
    format!(r#"{{"type":"delete","user_id":"{user}","ts":{ts}}}"#)
}

/// Applies `lines` to partition `p` as Kafka messages from `offset` on.
fn apply(engine: &mut Engine, p: u32, offset: i64, lines: &[String]) {
    let records: Vec<Record<'_>> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| Record {
            partition: p,
            bytes: l.as_bytes(),
            origin: Origin::Kafka {
                topic: "events".into(),
                partition: p as i32,
                offset: offset + i as i64,
                key: None,
            },
            fault: None,
        })
        .collect();
    let next = offset + lines.len() as i64;
    let positions = [(offsets_key("events", p as i32), encode_offset(next))];
    engine.process(&records, &positions).unwrap();
}

/// Every user as (id, state bytes) with the partition's engine time.
fn users(engine: &Engine) -> Vec<(String, Vec<u8>, i64)> {
    let mut out = Vec::new();
    engine
        .for_each_user(&mut |u, s, now| {
            out.push((u.to_string(), s.encode(), now));
            Ok(())
        })
        .unwrap();
    out
}

/// Reads the staged records of `p` as a restore reads the topic: records count once a
/// checkpoint follows them.
fn snapshot_of(engine: &Engine, p: u32) -> Snapshot {
    let mut snapshot = Snapshot {
        partition: p,
        complete: true,
        ..Snapshot::default()
    };
    let mut unconfirmed = BTreeMap::new();
    let mut unconfirmed_transitions = BTreeMap::new();
    for (_, entry) in engine.changelog_from(0, usize::MAX).unwrap() {
        if entry.partition != p {
            continue;
        }
        snapshot.records += 1;
        if entry.key == CHECKPOINT_KEY {
            snapshot.checkpoint = Some(Checkpoint::decode(&entry.value.unwrap()).unwrap());
            for (user, state) in std::mem::take(&mut unconfirmed) {
                match state {
                    Some(s) => snapshot.users.insert(user, s),
                    None => snapshot.users.remove(&user),
                };
            }
            for (key, record) in std::mem::take(&mut unconfirmed_transitions) {
                match record {
                    Some(r) => snapshot.transitions.insert(key, r),
                    None => snapshot.transitions.remove(&key),
                };
            }
        } else if entry.key.starts_with(TRANSITION_KEY_PREFIX) {
            unconfirmed_transitions.insert(entry.key, entry.value);
        } else {
            unconfirmed.insert(String::from_utf8(entry.key).unwrap(), entry.value);
        }
    }
    snapshot
}

#[test]
fn staged_changelog_restores_the_exact_state_ids_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = engine(&dir.path().join("a"), true);
    apply(
        &mut a,
        0,
        0,
        &[view("u1", T), view("u1", T + 1), view("u2", T + 2)],
    );
    apply(&mut a, 1, 0, &[view("v1", T), view("v1", T + 5)]);
    apply(&mut a, 0, 3, &[delete("u2", T + 3), view("u3", T + 4)]);
    // Timers fire later: u1 leaves `viewers` a day after its views.
    a.advance(0, T + 2 * 86_400_000).unwrap();

    let mut b = engine(&dir.path().join("b"), true);
    for p in [0, 1] {
        let snapshot = snapshot_of(&a, p);
        let checkpoint = snapshot.checkpoint.clone().unwrap();
        assert_eq!(checkpoint.serial, a.changelog_serial(p));
        assert_eq!(checkpoint.clock, a.clock(p));
        b.restore_partition(&snapshot).unwrap();
    }
    assert_eq!(users(&b), users(&a));
    assert_eq!(b.segment_size("viewers"), a.segment_size("viewers"));
    assert_eq!(b.segment_size("viewers"), 1, "v1 is still a viewer");
    assert_eq!(b.timers_pending().unwrap(), a.timers_pending().unwrap());
    // A restore emits nothing new: B's outbox holds A's undelivered transitions, under A's ids
    // (in A's order within a partition; B restored partition 0, then 1).
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(transition_texts(&b)), sorted(transition_texts(&a)));
    for p in [0, 1] {
        assert_eq!(b.changelog_serial(p), a.changelog_serial(p));
        let key = offsets_key("events", p as i32);
        assert_eq!(
            b.store().get(tagstream_state::Cf::Offsets, &key).unwrap(),
            a.store().get(tagstream_state::Cf::Offsets, &key).unwrap()
        );
    }

    // Both continue identically: the restored engine times, timers and delete counts are A's.
    apply(&mut a, 1, 2, &[view("v2", T + 6), view("v2", T + 7)]);
    apply(&mut b, 1, 2, &[view("v2", T + 6), view("v2", T + 7)]);
    a.advance(1, T + 3 * 86_400_000).unwrap();
    b.advance(1, T + 3 * 86_400_000).unwrap();
    assert_eq!(users(&b), users(&a));
    let transitions = |e: &Engine| -> Vec<String> {
        let all = e.outbox(1_000).unwrap();
        let mut out: Vec<String> = all
            .into_iter()
            .filter_map(|(_, e)| match e {
                tagstream_consumer::outbox::OutboxEntry::Transition { json, .. } => Some(json),
                _ => None,
            })
            .collect();
        out.retain(|j| j.contains("\"v2\"") || j.contains("\"v1\""));
        out
    };
    let from_a = transitions(&a);
    assert_eq!(
        transitions(&b),
        from_a[from_a.len() - transitions(&b).len()..].to_vec()
    );
}

/// The transitions in an engine's outbox (JSON text), in outbox order.
fn transition_texts(engine: &Engine) -> Vec<String> {
    engine
        .outbox(usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e {
            tagstream_consumer::outbox::OutboxEntry::Transition { json, .. } => Some(json),
            _ => None,
        })
        .collect()
}

/// Marks every outbox entry delivered, as the delivery loop does.
fn deliver_all(engine: &mut Engine) {
    let next = engine.outbox_next_seq();
    if next > 0 {
        engine.acknowledge(next - 1).unwrap();
    }
    engine.note_delivered(next);
}

/// Undelivered transitions travel in the changelog until the sink has them: a restore brings
/// back exactly those not yet delivered, under their ids, and none that were.
#[test]
fn the_changelog_carries_undelivered_transitions_until_they_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = engine(&dir.path().join("a"), true);
    apply(&mut a, 0, 0, &[view("u1", T), view("u1", T + 1)]);
    let first = transition_texts(&a);
    assert_eq!(first.len(), 1, "u1 entered viewers");
    let snapshot = snapshot_of(&a, 0);
    assert_eq!(snapshot.transitions.len(), 1);
    let record = Undelivered::decode(snapshot.transitions.values().next().unwrap()).unwrap();
    assert_eq!(record.json, first[0]);
    assert_eq!(record.user_id, "u1");

    // Delivered, then another commit of the partition: the record gets its tombstone.
    deliver_all(&mut a);
    apply(&mut a, 0, 2, &[view("u2", T + 2), view("u2", T + 3)]);
    let second = transition_texts(&a);
    assert_eq!(second.len(), 1, "u2 entered viewers; u1's entry is gone");
    assert_eq!(a.undelivered_count(0), 1);
    let snapshot = snapshot_of(&a, 0);
    let carried: Vec<String> = snapshot
        .transitions
        .values()
        .map(|v| Undelivered::decode(v).unwrap().json)
        .collect();
    assert_eq!(carried, second, "only the undelivered transition travels");

    let mut b = engine(&dir.path().join("b"), true);
    b.restore_partition(&snapshot).unwrap();
    assert_eq!(transition_texts(&b), second);
    assert_eq!(b.undelivered_count(0), 1);

    // A graceful stop settles what was delivered: nothing is left to deliver again.
    deliver_all(&mut a);
    assert_eq!(a.settle_delivered(None).unwrap(), 1);
    assert!(snapshot_of(&a, 0).transitions.is_empty());
    assert_eq!(a.undelivered_count(0), 0);
}

/// A commit's outbox entries are released to the sink only once every changelog entry staged
/// with them is published; a partition revoked before its checkpoint was published withdraws
/// its unreleased transitions, since its next owner applies those events again.
#[test]
fn the_outbox_waits_for_the_changelog_and_a_revocation_withdraws_what_was_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = engine(&dir.path().join("a"), true);
    apply(&mut a, 0, 0, &[view("u1", T), view("u1", T + 1)]);
    let published = a.changelog_next_seq();
    let released = a.release_outbox(a.changelog_first().unwrap());
    assert_eq!(released, 0, "nothing published: nothing released");
    assert_eq!(a.release_outbox(published), a.outbox_next_seq());
    let after_first = a.outbox_next_seq();

    apply(&mut a, 0, 2, &[view("u2", T + 2), view("u2", T + 3)]);
    apply(&mut a, 1, 0, &[view("v1", T), view("v1", T + 1)]);
    // Only the first batch's records are published.
    assert_eq!(a.release_outbox(published), after_first);
    assert_eq!(a.outbox(usize::MAX).unwrap().len(), 3);
    // Partition 0 is revoked with its second batch unpublished: u2's entry is withdrawn, u1's
    // (published, perhaps delivered) and partition 1's stay.
    assert!(a.drop_changelog_entries(&[0]).unwrap() > 0);
    let left = transition_texts(&a);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left[0].contains("\"u1\"") && left[1].contains("\"v1\""),
        "{left:?}"
    );
    // Partition 1's entry goes once its checkpoint is published.
    assert_eq!(
        a.release_outbox(a.changelog_next_seq()),
        a.outbox_next_seq()
    );
}

/// A store that lost writes (or an old copy put back) holds outbox entries of commits the
/// changelog never got: a restore replaces them by the changelog's undelivered transitions,
/// so that no transition of a forked history reaches the sink.
#[test]
fn a_restore_drops_local_transitions_the_changelog_never_got() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = engine(&dir.path().join("a"), true);
    apply(&mut a, 0, 0, &[view("u1", T), view("u1", T + 1)]);
    let published = snapshot_of(&a, 0);
    // A later commit, never published; its transition is committed locally.
    apply(&mut a, 0, 2, &[view("u2", T + 5), view("u2", T + 6)]);
    assert_eq!(transition_texts(&a).len(), 2);
    let mut newer = published;
    newer.checkpoint.as_mut().unwrap().serial += 5;
    a.restore_partition(&newer).unwrap();
    let texts = transition_texts(&a);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("\"u1\""));
    assert_eq!(a.undelivered_count(0), 1);
}

/// A store recognises the changelog's last checkpoint as its own (still staged, or the last
/// one acknowledged from it) and no other, even one with the same serial: another owner's
/// checkpoint means a history this store's state may have forked from.
#[test]
fn a_store_knows_its_own_checkpoints_from_another_owners() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = engine(&dir.path().join("a"), true);
    apply(&mut a, 0, 0, &[view("u1", T), view("u1", T + 1)]);
    let own = snapshot_of(&a, 0).checkpoint.unwrap();
    assert!(a.holds_checkpoint(0, &own, None).unwrap(), "staged here");
    let mut forked = own.clone();
    forked.clock = Some(T + 7);
    assert!(!a.holds_checkpoint(0, &forked, None).unwrap());

    // Published: the broker's offset identifies it from then on.
    let acked = BTreeMap::from([(0u32, (41i64, own.serial))]);
    a.acknowledge_changelog(0, a.changelog_next_seq(), &acked)
        .unwrap();
    assert!(a.changelog_from(0, 10).unwrap().is_empty());
    assert!(a.holds_checkpoint(0, &own, Some(41)).unwrap());
    assert!(
        !a.holds_checkpoint(0, &own, Some(42)).unwrap(),
        "written after ours"
    );

    // A restored store holds the checkpoint it was restored from.
    let mut b = engine(&dir.path().join("b"), true);
    let mut snapshot = snapshot_of(&a, 0);
    snapshot.checkpoint = Some(own.clone());
    snapshot.checkpoint_offset = Some(41);
    b.restore_partition(&snapshot).unwrap();
    assert!(b.holds_checkpoint(0, &own, Some(41)).unwrap());
}

#[test]
fn the_pipeline_drops_messages_of_partitions_it_does_not_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = SharedEngine::new(engine(&dir.path().join("state"), false));
    let metrics = Metrics::new();
    let delivery = {
        let e = engine.lock();
        Delivery::new(
            &e,
            Route::Lines(LineSink::open(dir.path().join("out").to_str().unwrap(), false).unwrap()),
            Route::Lines(LineSink::open(dir.path().join("dlq").to_str().unwrap(), false).unwrap()),
            metrics.clone(),
        )
        .unwrap()
    };
    let message = |p: i32, offset: i64, user: &str| Message {
        partition: p as u32,
        bytes: view(user, T + offset).into_bytes(),
        origin: Origin::Kafka {
            topic: "events".into(),
            partition: p,
            offset,
            key: None,
        },
        fault: None,
    };
    let (tx, rx) = sync_channel(16);
    let (done_tx, done_rx) = sync_channel(1);
    tx.send(SourceEvent::Assigned(vec![
        ("events".into(), 0),
        ("events".into(), 1),
    ]))
    .unwrap();
    tx.send(SourceEvent::Batch(Batch::new(
        vec![message(0, 0, "a"), message(1, 0, "b")],
        Vec::new(),
    )))
    .unwrap();
    tx.send(SourceEvent::Revoked {
        partitions: vec![("events".into(), 1)],
        done: done_tx,
    })
    .unwrap();
    // Polled before the revocation, handed over after it.
    tx.send(SourceEvent::Batch(Batch::new(
        vec![message(0, 1, "a"), message(1, 1, "zombie")],
        Vec::new(),
    )))
    .unwrap();
    // Never assigned here.
    tx.send(SourceEvent::Batch(Batch::new(
        vec![message(2, 0, "stranger")],
        Vec::new(),
    )))
    .unwrap();
    drop(tx);
    let options = PipelineOptions {
        clock: ClockMode::Event,
        ..PipelineOptions::default()
    };
    let summary = pipeline::run(
        engine.clone(),
        rx,
        Control::new(),
        delivery,
        None,
        &metrics,
        &Shutdown::new(),
        &options,
    )
    .unwrap();
    assert!(done_rx.recv().is_err(), "the revocation was released");
    assert_eq!(summary.revoked, 2);
    assert_eq!(summary.report.applied, 3);
    let mut e = engine.lock();
    e.set_owned(None);
    let names: Vec<String> = users(&e).into_iter().map(|(u, _, _)| u).collect();
    assert_eq!(names, ["a", "b"]);
}
