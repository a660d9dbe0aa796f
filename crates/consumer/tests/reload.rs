//! Rules reload is exact where it can be: state built with rules A and reloaded to rules B
//! equals state built with B from scratch — at once for every tag whose definition both share,
//! and for a new windowed tag once its window has passed — and the transitions it emits keep
//! every user's membership consistent. Also: reload on open (a restart with a new rules file)
//! on RocksDB gives the same result, and identical rules change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use tagstream_consumer::outbox::{Origin, OutboxEntry};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::engine::dump_line;
use tagstream_rules::rules::RuleSet;
use tagstream_state::{MemStore, RocksStore, StateStore};

const DAY: i64 = 86_400_000;

fn rules_a() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tagstream/tests/data/differential.toml"
    ))
    .unwrap()
}

/// A without the `weekend_now` segment, with a segment over existing tags, a segment that
/// reads a new windowed tag, and `lapsed_buyer` redefined.
fn rules_b() -> String {
    let a = rules_a();
    let cut = a.find("[[segment]]\nname = \"weekend_now\"").unwrap();
    let mut b = a[..cut].replace(
        "when = \"last_purchase < now() - 10d AND orders_30d > 0\"",
        "when = \"last_purchase < now() - 12d AND orders_30d > 0\"",
    );
    assert_ne!(b, a[..cut]);
    b.push_str(
        r#"
[[tag]]
name = "views_2d_new"
kind = "count"
event = "view"
window = "2d"

[[segment]]
name = "two_orders"
when = "orders_30d >= 2"

[[segment]]
name = "browsing_now"
when = "views_2d_new >= 2"
"#,
    );
    b
}

fn events(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut clock: i64 = 1_730_000_000_000;
    (0..n)
        .map(|_| {
            clock += (next() % (4 * 3_600_000)) as i64;
            let user = format!("u{}", next() % 60);
            let cat = ["skincare", "makeup", "home"][(next() % 3) as usize];
            match next() % 10 {
                0..=3 => format!(
                    r#"{{"user_id":"{user}","event":"purchase","ts":{clock},"properties":{{"amount":{},"category":"{cat}","channel":"app"}}}}"#,
                    next() % 300
                ),
                4 => format!(
                    r#"{{"user_id":"{user}","event":"add_to_cart","ts":{clock},"properties":{{"category":"{cat}"}}}}"#
                ),
                _ => format!(
                    r#"{{"user_id":"{user}","event":"view","ts":{clock},"properties":{{"category":"{cat}"}}}}"#
                ),
            }
        })
        .collect()
}

fn open(store: Arc<dyn StateStore>, source: &str, reload_on_open: bool) -> Engine {
    let rules = Arc::new(RuleSet::compile(source, "rules").unwrap());
    let options = EngineOptions {
        reload_on_open,
        ..EngineOptions::default()
    };
    Engine::open(store, rules, source, options).unwrap()
}

fn feed(engine: &mut Engine, lines: &[String]) {
    for chunk in lines.chunks(50) {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .map(|l| Record {
                partition: 0,
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
    let end = engine.clock(0).unwrap();
    engine.advance(0, end).unwrap();
}

/// Dump lines by user, without the tags named in `skip`.
fn dump(engine: &Engine, skip: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    engine
        .for_each_user(&mut |id, state, now| {
            let mut line = dump_line(engine.rules(), id, state, now);
            for tag in skip {
                line["tags"].as_object_mut().unwrap().remove(*tag);
            }
            out.insert(id.to_string(), line);
            Ok(())
        })
        .unwrap();
    out
}

/// (type, seq, cause) of each transition of one user and segment, in order.
type History = Vec<(String, u64, String)>;

/// Transitions in the outbox by (user, segment).
fn transitions(engine: &Engine) -> BTreeMap<(String, String), History> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (_, entry) in engine.outbox(usize::MAX).unwrap() {
        if let OutboxEntry::Transition { json, .. } = entry {
            let t: serde_json::Value = serde_json::from_str(&json).unwrap();
            out.entry((
                t["user_id"].as_str().unwrap().to_string(),
                t["segment"].as_str().unwrap().to_string(),
            ))
            .or_default()
            .push((
                t["type"].as_str().unwrap().to_string(),
                t["seq"].as_u64().unwrap(),
                t["cause"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn check_against_scratch(reloaded: &mut Engine, lines: &[String]) {
    let mut scratch = open(Arc::new(MemStore::new()), &rules_b(), false);
    feed(&mut scratch, lines);
    assert_eq!(reloaded.clock(0), scratch.clock(0));
    // At the reload: everything but the new tag and the segment reading it.
    let strip = |mut d: BTreeMap<String, serde_json::Value>| {
        for line in d.values_mut() {
            let segs = line["segments"].as_array_mut().unwrap();
            segs.retain(|s| s != "browsing_now");
        }
        d
    };
    assert_eq!(
        strip(dump(reloaded, &["views_2d_new"])),
        strip(dump(&scratch, &["views_2d_new"]))
    );
    // Once the new tag's window has passed, everything.
    let later = reloaded.clock(0).unwrap() + 30 * DAY;
    reloaded.advance(0, later).unwrap();
    scratch.advance(0, later).unwrap();
    let got = dump(reloaded, &[]);
    assert_eq!(got, dump(&scratch, &[]));
    // The transitions (before, at and after the reload) imply exactly the final membership,
    // alternating with consecutive seq numbers.
    let mut implied: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((user, segment), ts) in transitions(reloaded) {
        for (i, (kind, seq, _)) in ts.iter().enumerate() {
            assert_eq!(*seq as usize, i + 1, "{user} {segment}");
            let want = if i % 2 == 0 {
                "segment_enter"
            } else {
                "segment_exit"
            };
            assert_eq!(kind, want, "{user} {segment}");
        }
        if ts.len() % 2 == 1 {
            implied.entry(user).or_default().push(segment);
        }
    }
    for (user, line) in &got {
        let mut segs: Vec<String> = line["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        segs.sort();
        let mut imp = implied.remove(user).unwrap_or_default();
        imp.sort();
        assert_eq!(segs, imp, "{user}");
    }
    // Bitmaps agree with the dump.
    for seg in &reloaded.rules().segments {
        let n = got
            .values()
            .filter(|l| {
                l["segments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == &*seg.name)
            })
            .count();
        assert_eq!(
            reloaded.segment_bitmap(&seg.name).unwrap().len() as usize,
            n,
            "{}",
            seg.name
        );
    }
    assert!(reloaded.segment_bitmap("weekend_now").is_none());
}

#[test]
fn reload_equals_a_from_scratch_build_in_memory() {
    let lines = events(3000);
    let mut engine = open(Arc::new(MemStore::new()), &rules_a(), false);
    feed(&mut engine, &lines);
    let rules = Arc::new(RuleSet::compile(&rules_b(), "rules").unwrap());
    let report = engine.reload(rules, &rules_b()).unwrap();
    assert!(report.changed);
    assert_eq!(report.warming.len(), 1);
    assert_eq!(report.warming[0].0, "views_2d_new");
    let causes: Vec<String> = transitions(&engine)
        .values()
        .flatten()
        .map(|t| t.2.clone())
        .collect();
    assert!(
        causes.iter().any(|c| c == "rules"),
        "the reload emits transitions"
    );
    let summaries = engine.segment_summaries();
    let browsing = summaries.iter().find(|s| s.name == "browsing_now").unwrap();
    assert!(browsing.warming_until.is_some());
    assert!(summaries
        .iter()
        .filter(|s| s.name != "browsing_now")
        .all(|s| s.warming_until.is_none() && s.history_since.is_none()));
    check_against_scratch(&mut engine, &lines);
    // Warm now: the window has passed.
    assert!(engine
        .segment_summaries()
        .iter()
        .all(|s| s.warming_until.is_none()));
    // The same rules again: nothing to do.
    let again = Arc::new(RuleSet::compile(&rules_b(), "rules").unwrap());
    assert!(!engine.reload(again, &rules_b()).unwrap().changed);
}

#[test]
fn reload_on_open_carries_rocksdb_state_over() {
    let lines = events(3000);
    let dir = tempfile::tempdir().unwrap();
    {
        let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let mut engine = open(store, &rules_a(), false);
        feed(&mut engine, &lines);
    }
    let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let refused = Engine::open(
        store.clone(),
        Arc::new(RuleSet::compile(&rules_b(), "rules").unwrap()),
        &rules_b(),
        EngineOptions::default(),
    );
    assert!(
        refused.is_err(),
        "without reload_on_open other rules are refused"
    );
    let mut engine = open(store, &rules_b(), true);
    check_against_scratch(&mut engine, &lines);
    assert_eq!(
        Engine::stored_rules(engine.store().as_ref())
            .unwrap()
            .unwrap(),
        rules_b()
    );
}

/// `emit = false`: the segment's membership is computed (other rules and the dump see it, its
/// seq counts) but its transitions never reach the outbox; switching it on by a reload emits no
/// historical enters, and from then on its changes are delivered with the seq they continue.
#[test]
fn quiet_segments_stay_off_the_sink_and_switching_them_on_replays_nothing() {
    let quiet = r#"
[[tag]]
name = "spend"
kind = "sum"
event = "purchase"
property = "amount"
window = "2d"
[[segment]]
name = "spender"
emit = false
when = "spend >= 100"
[[segment]]
name = "big_spender"
when = "spender AND spend >= 300"
"#;
    let store: Arc<dyn StateStore> = Arc::new(MemStore::new());
    let mut engine = open(store.clone(), quiet, false);
    let lines = events(400);
    let (first, second) = lines.split_at(200);
    feed(&mut engine, first);
    let members = dump(&engine, &[])
        .values()
        .filter(|l| {
            l["segments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "spender")
        })
        .count();
    assert!(
        members > 0,
        "the scenario must put users in the quiet segment"
    );
    let sent = transitions(&engine);
    assert!(sent.keys().all(|(_, seg)| seg == "big_spender"), "{sent:?}");
    assert!(
        !sent.is_empty(),
        "the segment reading the quiet one is delivered"
    );
    // Delivered: only what comes next is looked at.
    engine.acknowledge(engine.outbox_next_seq() - 1).unwrap();

    // Switch it on: the same definition, now emitted.
    let loud = quiet.replace("emit = false\n", "");
    let rules = Arc::new(RuleSet::compile(&loud, "rules").unwrap());
    engine.reload(rules, &loud).unwrap();
    assert!(
        transitions(&engine).keys().all(|(_, seg)| seg != "spender"),
        "switching a segment on must not replay its members' enters"
    );
    feed(&mut engine, second);
    let after = transitions(&engine);
    let spender: Vec<&History> = after
        .iter()
        .filter(|((_, seg), _)| seg == "spender")
        .map(|(_, h)| h)
        .collect();
    assert!(
        !spender.is_empty(),
        "changes after switching on are delivered"
    );
}
