//! Differential test: the engine's dump after `replay` must equal an independent from-scratch
//! batch computation (tests/oracle/oracle.py, written from the spec alone) at the same engine
//! time — once at the end of the stream and again after `--advance-to` 60 days later.

mod common;
use common::{compare_with_oracle, repo_root, run_oracle};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tagstream(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(args)
        .output()
        .expect("run tagstream");
    assert!(
        out.status.success(),
        "tagstream {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn oracle(rules: &Path, input: &Path, now: Option<i64>) -> Vec<u8> {
    let args: Vec<String> = now
        .map(|n| vec!["--now".into(), n.to_string()])
        .unwrap_or_default();
    run_oracle(rules, input, &args).0
}

fn last_engine_time(rules: &Path, input: &Path) -> i64 {
    // The event clock is the largest applied event time; the oracle reports it with --stats.
    let (_, stats) = run_oracle(rules, input, &[]);
    let clock = stats
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .filter_map(|w| w.parse::<i64>().ok())
        .find(|n| *n > 1_000_000_000_000);
    clock.unwrap_or_else(|| panic!("no clock in oracle stats: {stats}"))
}

fn run_differential(rules: &Path, users: &str, events: &str, seed: &str) {
    run_differential_at(rules, users, events, seed, &[60 * 24]);
}

/// Replays generated events, compares the dump with the oracle at the end of the stream, then
/// moves engine time on by timers alone to each of `advance_hours` (cumulative, after the last
/// engine time) and compares again, and checks that membership implied by all transitions so
/// far equals the dump's segments at each of those instants.
fn run_differential_at(rules: &Path, users: &str, events: &str, seed: &str, advance_hours: &[i64]) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    let generated = tagstream(&[
        "gen", "--users", users, "--events", events, "--seed", seed, "--days", "45",
    ]);
    std::fs::write(&input, &generated.stdout).unwrap();
    let state = dir.path().join("state");
    let (input_s, state_s, rules_s) = (
        input.to_str().unwrap(),
        state.to_str().unwrap(),
        rules.to_str().unwrap(),
    );
    let out = dir.path().join("transitions.ndjson");
    tagstream(&[
        "replay",
        "--rules",
        rules_s,
        "--input",
        input_s,
        "--state-dir",
        state_s,
        "--out",
        out.to_str().unwrap(),
    ]);
    let dump = tagstream(&["dump", "--state-dir", state_s, "--rules", rules_s]).stdout;
    compare_with_oracle(dir.path(), "final", &oracle(rules, &input, None), &dump);

    // Move on by timers alone: windows drain, now() comparisons flip.
    let last = last_engine_time(rules, &input);
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, b"").unwrap();
    let mut logs = vec![out];
    for (i, hours) in advance_hours.iter().enumerate() {
        let now = last + hours * 3_600_000;
        let log = dir.path().join(format!("transitions{}.ndjson", i + 2));
        let advance = now.to_string();
        tagstream(&[
            "replay",
            "--rules",
            rules_s,
            "--input",
            empty.to_str().unwrap(),
            "--state-dir",
            state_s,
            "--out",
            log.to_str().unwrap(),
            "--advance-to",
            &advance,
        ]);
        logs.push(log);
        let dump = tagstream(&["dump", "--state-dir", state_s]).stdout;
        compare_with_oracle(
            dir.path(),
            &format!("advanced_{hours}h"),
            &oracle(rules, &input, Some(now)),
            &dump,
        );
        // Membership implied by the transitions equals the dump's segments.
        check_transitions_match_dump(&logs, &dump);
    }
}

fn check_transitions_match_dump(logs: &[PathBuf], dump: &[u8]) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last_seq: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut last_ts: BTreeMap<String, i64> = BTreeMap::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut count = 0;
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let t: serde_json::Value = serde_json::from_str(line).unwrap();
            let user = t["user_id"].as_str().unwrap().to_string();
            let seg = t["segment"].as_str().unwrap().to_string();
            let seq = t["seq"].as_u64().unwrap();
            let ts = t["ts"].as_i64().unwrap();
            let enter = t["type"] == "segment_enter";
            let prev = last_seq
                .get(&(user.clone(), seg.clone()))
                .copied()
                .unwrap_or(0);
            if t["cause"] == "delete" {
                // A delete ends every sequence of the user (reset before its next transition).
                assert_eq!(seq, prev + 1, "{line}");
                deleted.insert(user.clone());
                members.remove(&user);
            } else {
                if deleted.remove(&user) {
                    last_seq.retain(|(u, _), _| *u != user);
                }
                let prev = last_seq
                    .get(&(user.clone(), seg.clone()))
                    .copied()
                    .unwrap_or(0);
                // A user re-created after a delete (which emits nothing when the user was in no
                // segment) starts again at 1.
                assert!(
                    seq == prev + 1 || (enter && seq == 1),
                    "seq gap: {line} after {prev}"
                );
                last_seq.insert((user.clone(), seg.clone()), seq);
                let set = members.entry(user.clone()).or_default();
                if enter {
                    set.insert(seg);
                } else {
                    set.remove(&seg);
                }
            }
            assert_eq!(enter, seq % 2 == 1, "odd seq = enter: {line}");
            assert!(
                ts >= last_ts.get(&user).copied().unwrap_or(i64::MIN),
                "per user, transitions come in non-decreasing ts: {line}"
            );
            last_ts.insert(user, ts);
            count += 1;
        }
    }
    assert!(count > 0, "the scenario must produce transitions");
    for line in String::from_utf8_lossy(dump).lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let user = row["user_id"].as_str().unwrap();
        let want: BTreeSet<String> = row["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            members.get(user).cloned().unwrap_or_default(),
            want,
            "user {user}"
        );
    }
}

#[test]
fn replay_matches_an_independent_batch_computation() {
    let rules = repo_root().join("crates/tagstream/tests/data/differential.toml");
    run_differential(&rules, "300", "30000", "7");
}

#[test]
fn example_rules_match_the_oracle() {
    let rules = repo_root().join("config/rules/ecommerce.toml");
    run_differential(&rules, "200", "15000", "11");
}

/// SPEC §4 rev 2: segments whose membership moves back and forth with time alone (k-means over
/// recency, abs, %, products, ...) stay exact at many instants after the stream, by timers alone.
#[test]
fn changing_shapes_match_the_oracle_at_many_instants() {
    let rules = repo_root().join("crates/tagstream/tests/data/changing.toml");
    run_differential_at(
        &rules,
        "200",
        "12000",
        "5",
        &[3, 17, 30, 49, 71, 75, 100, 150, 24 * 9, 24 * 20, 24 * 50],
    );
}
