//! Measurement, not a check (run by hand, `--ignored --nocapture`): how long a rules reload of
//! `TAGSTREAM_RELOAD_USERS` users (default 1 000 000) in RocksDB holds the engine, and the
//! process's peak memory during it, migrating in chunks (the default) and in one commit.

use std::sync::Arc;
use std::time::Instant;

use tagstream_consumer::outbox::Origin;
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::RocksStore;

const RULES: &str = r#"
[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[tag]]
name = "views_7d"
kind = "count"
event = "view"
window = "7d"

[[segment]]
name = "buyer"
when = "orders >= 1"

[[segment]]
name = "browser"
when = "views_7d >= 2"
"#;

const T: i64 = 1_732_000_000_000;

/// Peak resident memory (VmHWM) in MiB since the last [`reset_peak`].
fn peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn reset_peak() {
    // Linux: "5" resets the peak RSS to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn measure(users: usize, chunk: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let options = EngineOptions {
        reload_chunk: chunk,
        ..EngineOptions::default()
    };
    let mut engine = Engine::open(store, rules, RULES, options).unwrap();
    let started = Instant::now();
    let per_batch = 20_000;
    for from in (0..users).step_by(per_batch) {
        let lines: Vec<String> = (from..(from + per_batch).min(users))
            .map(|i| {
                let kind = if i % 5 == 0 { "purchase" } else { "view" };
                format!(
                    r#"{{"type":"track","event":"{kind}","user_id":"user-{i:08}","ts":{}}}"#,
                    T + i as i64
                )
            })
            .collect();
        let records: Vec<Record<'_>> = lines
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
        let last = engine.outbox_next_seq();
        if last > 0 {
            engine.acknowledge(last - 1).unwrap();
        }
    }
    let built = started.elapsed();
    let new_source = RULES.replace("views_7d >= 2", "views_7d >= 1");
    let new = Arc::new(RuleSet::compile(&new_source, "rules").unwrap());
    reset_peak();
    let before = peak_mib();
    let started = Instant::now();
    let report = engine.reload(new, &new_source).unwrap();
    let took = started.elapsed();
    println!(
        "users {users}, chunk {chunk}: built in {:.1} s; reload {:.1} s ({} transitions), peak RSS {} MiB -> {} MiB during the reload",
        built.as_secs_f64(),
        took.as_secs_f64(),
        report.report.transitions,
        before,
        peak_mib()
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn reload_time_and_memory_at_scale() {
    let users = std::env::var("TAGSTREAM_RELOAD_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    measure(users, EngineOptions::default().reload_chunk);
    measure(users, users + 1);
}
