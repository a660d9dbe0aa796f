//! The driver (batches, bounded timer firing from the RocksDB timer index, scan floors, state
//! round trips through the store) emits exactly the transitions of a naive model that fires
//! every user's timers before every event.

use std::collections::BTreeMap;
use std::sync::Arc;

use tagstream_consumer::outbox::{Origin, OutboxEntry};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::engine;
use tagstream_rules::event::{decode, DecodeOptions, EventBody, Millis};
use tagstream_rules::rules::RuleSet;
use tagstream_rules::state::UserState;
use tagstream_state::{MemStore, RocksStore, StateStore};

const DAY: i64 = 86_400_000;

/// The differential rules (every kind, m/h/d/w windows, DST) and the benchmark rules.
fn rules_sources() -> Vec<(&'static str, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        "crates/tagstream/tests/data/differential.toml",
        "config/rules/bench15.toml",
    ]
    .into_iter()
    .map(|path| (path, std::fs::read_to_string(root.join(path)).unwrap()))
    .collect()
}

/// A deterministic messy stream: bursts per user, late events, ties, deletes, retries.
fn events(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut clock: i64 = 1_730_000_000_000;
    let mut out = Vec::new();
    for i in 0..n {
        let r = next();
        clock += (r % (6 * 3_600_000)) as i64;
        let late = if r % 17 == 0 {
            (next() % (3 * DAY as u64)) as i64
        } else {
            0
        };
        let ts = clock - late;
        let user = format!("u{}", next() % 40);
        let cat = ["skincare", "makeup", "home"][(next() % 3) as usize];
        let line = match next() % 20 {
            0 if i % 3 == 0 => format!(r#"{{"type":"delete","user_id":"{user}","ts":{ts}}}"#),
            1 => format!(
                r#"{{"type":"profile","user_id":"{user}","ts":{ts},"properties":{{"city":"C{}"}}}}"#,
                next() % 3
            ),
            2..=7 => format!(
                r#"{{"user_id":"{user}","event":"purchase","ts":{ts},"event_id":"e{}","properties":{{"amount":{},"category":"{cat}","channel":"{}"}}}}"#,
                next() % 50,
                next() % 400,
                if next() % 2 == 0 { "app" } else { "web" }
            ),
            8..=10 => format!(
                r#"{{"user_id":"{user}","event":"add_to_cart","ts":{ts},"properties":{{"category":"{cat}"}}}}"#
            ),
            _ => format!(
                r#"{{"user_id":"{user}","event":"view","ts":{ts},"properties":{{"category":"{cat}"}}}}"#
            ),
        };
        out.push(line);
    }
    out
}

type Row = (String, String, u64, i64, String, String);

fn row(v: &serde_json::Value) -> Row {
    (
        v["user_id"].as_str().unwrap().into(),
        v["segment"].as_str().unwrap().into(),
        v["seq"].as_u64().unwrap(),
        v["ts"].as_i64().unwrap(),
        v["type"].as_str().unwrap().into(),
        v["cause"].as_str().unwrap().into(),
    )
}

fn model(rules: &RuleSet, lines: &[String], end: Millis) -> Vec<Row> {
    let mut users: BTreeMap<String, UserState> = BTreeMap::new();
    let mut now = Millis::MIN;
    let mut out = Vec::new();
    let catch_up_all = |users: &mut BTreeMap<String, UserState>, now: Millis, out: &mut Vec<_>| {
        for (id, st) in users.iter_mut() {
            engine::catch_up(rules, &Arc::from(id.as_str()), st, now, out);
        }
    };
    for line in lines {
        let ev = decode(line.as_bytes(), &DecodeOptions::default()).unwrap();
        if engine::is_duplicate(rules, users.get(&ev.user_id), &ev, now) {
            continue;
        }
        now = now.max(ev.ts);
        catch_up_all(&mut users, now, &mut out);
        let id: Arc<str> = Arc::from(ev.user_id.as_str());
        if matches!(ev.body, EventBody::Delete) {
            if let Some(st) = users.remove(&ev.user_id) {
                engine::delete(rules, &id, &st, now, &mut out);
            }
            continue;
        }
        let st = users
            .entry(ev.user_id.clone())
            .or_insert_with(|| UserState::new(&rules.aggregates, rules.segments.len()));
        engine::apply(rules, &id, st, &ev, now, &mut out);
    }
    catch_up_all(&mut users, end, &mut out);
    let mut rows: Vec<Row> = out.iter().map(|t| row(&t.to_json())).collect();
    rows.sort();
    rows
}

fn driver(
    store: Arc<dyn StateStore>,
    source: &str,
    lines: &[String],
    batch: usize,
    end: Millis,
    tick_slice: Option<usize>,
) -> Vec<Row> {
    let rules = Arc::new(RuleSet::compile(source, "rules").unwrap());
    let options = EngineOptions {
        timers_per_batch: 3,
        ..EngineOptions::default()
    };
    let mut engine = Engine::open(store, rules, source, options).unwrap();
    let mut rows = Vec::new();
    let drain = |engine: &Engine, rows: &mut Vec<Row>| {
        let entries = engine.outbox(usize::MAX).unwrap();
        if let Some(&(last, _)) = entries.last() {
            for (_, e) in &entries {
                if let OutboxEntry::Transition { json, .. } = e {
                    rows.push(row(&serde_json::from_str(json).unwrap()));
                }
            }
            engine.acknowledge(last).unwrap();
        }
    };
    for (i, chunk) in lines.chunks(batch).enumerate() {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(j, l)| Record {
                partition: 0,
                bytes: l.as_bytes(),
                origin: Origin::Line {
                    source: "t".into(),
                    line: (i * batch + j + 1) as u64,
                },
                fault: None,
            })
            .collect();
        engine.process(&records, &[]).unwrap();
        // The service's clock tick between batches: one bounded slice of the due timers, the
        // rest left for later slices while the next batches apply.
        if let (Some(limit), Some(t)) = (tick_slice, engine.clock(0)) {
            engine.advance_by(0, t, limit).unwrap();
        }
        drain(&engine, &mut rows);
    }
    engine.advance(0, end).unwrap();
    drain(&engine, &mut rows);
    rows.sort();
    rows
}

#[test]
fn driver_equals_naive_model_in_memory_and_on_rocksdb() {
    for (path, source) in rules_sources() {
        driver_equals_naive_model(path, &source);
    }
}

fn driver_equals_naive_model(path: &str, source: &str) {
    let source = source.to_string();
    let rules = RuleSet::compile(&source, path).unwrap();
    let lines = events(3000, 0x9e37_79b9_7f4a_7c15);
    let end = 1_730_000_000_000 + 400 * DAY;
    let want = model(&rules, &lines, end);
    assert!(
        want.iter().filter(|r| r.5 == "timer").count() > 50,
        "{path}: the scenario must exercise timers"
    );
    for batch in [1, 7, 64] {
        let got = driver(Arc::new(MemStore::new()), &source, &lines, batch, end, None);
        if got != want {
            let g: std::collections::BTreeSet<_> = got.iter().cloned().collect();
            let w: std::collections::BTreeSet<_> = want.iter().cloned().collect();
            eprintln!(
                "first transitions only the driver emitted: {:?}",
                g.difference(&w).take(5).collect::<Vec<_>>()
            );
            eprintln!(
                "first transitions only the model emitted: {:?}",
                w.difference(&g).take(5).collect::<Vec<_>>()
            );
        }
        assert_eq!(got, want, "{path}: in-memory store, batch size {batch}");
    }
    let dir = tempfile::tempdir().unwrap();
    let got = driver(
        Arc::new(RocksStore::open(dir.path()).unwrap()),
        &source,
        &lines,
        50,
        end,
        None,
    );
    assert_eq!(got, want, "{path}: RocksDB store");
    for (batch, slice) in [(7, 1), (64, 2)] {
        let got = driver(
            Arc::new(MemStore::new()),
            &source,
            &lines,
            batch,
            end,
            Some(slice),
        );
        assert_eq!(
            got, want,
            "{path}: batches of {batch} with clock ticks of {slice} timer(s) between them"
        );
    }
}
