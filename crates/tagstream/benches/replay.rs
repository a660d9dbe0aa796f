//! Replay benchmark: events/s of the full engine (decode, rules, RocksDB commit, outbox) on a
//! generated stream, against a parse-only pass over the same file measured in the same run.
//!
//! `cargo bench -p tagstream --bench replay` (env: BENCH_USERS, BENCH_EVENTS, BENCH_RULES).

use std::io::BufRead;
use std::process::Command;
use std::time::Instant;

use tagstream_consumer::replay::{replay, ReplayOptions};
use tagstream_rules::event::{decode, DecodeOptions, Format};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn parse_only(path: &std::path::Path) -> (u64, f64) {
    let start = Instant::now();
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).unwrap());
    let opts = DecodeOptions::default();
    let mut ok = 0u64;
    for line in file.split(b'\n') {
        let line = line.unwrap();
        if decode(&line, &opts).is_ok() {
            ok += 1;
        }
    }
    (ok, start.elapsed().as_secs_f64())
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is ignored.
    let users = env_or("BENCH_USERS", "20000");
    let events: u64 = env_or("BENCH_EVENTS", "500000").parse().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rules = env_or(
        "BENCH_RULES",
        root.join("config/rules/ecommerce.toml").to_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args([
            "gen",
            "--users",
            &users,
            "--events",
            &events.to_string(),
            "--seed",
            "1",
        ])
        .output()
        .unwrap();
    std::fs::write(&input, out.stdout).unwrap();

    let mut best_parse = f64::MAX;
    let mut best_engine = f64::MAX;
    for round in 0..3 {
        let (_, parse_s) = parse_only(&input);
        let state = dir.path().join(format!("state{round}"));
        let opts = ReplayOptions {
            rules: rules.clone(),
            input: input.to_str().unwrap().into(),
            state_dir: state.to_str().unwrap().into(),
            out: dir.path().join("out.ndjson").to_str().unwrap().into(),
            format: Format::Native,
            dlq: Some(dir.path().join("dlq.ndjson").to_str().unwrap().into()),
            advance_to: None,
            batch_size: env_or("BENCH_BATCH", "4096").parse().unwrap(),
        };
        let start = Instant::now();
        let summary = replay(&opts).unwrap();
        let engine_s = start.elapsed().as_secs_f64();
        best_parse = best_parse.min(parse_s);
        best_engine = best_engine.min(engine_s);
        println!(
            "round {round}: parse-only {:.0} events/s, engine {:.0} events/s ({} applied, {} transitions)",
            events as f64 / parse_s,
            events as f64 / engine_s,
            summary.report.applied,
            summary.report.transitions
        );
    }
    println!("best of 3 over {events} events, {users} users, rules {rules}:");
    println!(
        "  parse-only  {:>10.0} events/s",
        events as f64 / best_parse
    );
    println!(
        "  full engine {:>10.0} events/s",
        events as f64 / best_engine
    );
    println!(
        "  ratio engine/parse-only = {:.3}",
        best_parse / best_engine
    );
}
