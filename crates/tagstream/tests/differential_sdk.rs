//! Differential test of what real SDKs send (SPEC §2 rev 2): a Sensors Data stream with every
//! record type (`track_signup`, `profile_increment` and `profile_append` in all their corners,
//! the skipped item and id-binding records, `$is_login_id`) and a Segment / RudderStack stream
//! (`identify` with top-level and `context.traits`, `page` with `name` and `category`,
//! `screen`, `track`) are replayed with `--format sensors|segment`; the engine's dump must
//! equal the independent oracle's (tests/oracle/oracle.py, written from the spec alone) at the
//! end of the stream and again after `--advance-to` 60 days later.

mod common;
use common::{compare_with_oracle, repo_root, run_oracle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn data(name: &str) -> PathBuf {
    repo_root().join("crates/tagstream/tests/data").join(name)
}

fn tagstream(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(args)
        .output()
        .expect("run tagstream");
    assert!(
        out.status.success(),
        "tagstream {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The oracle's dump, and its `--stats` line.
fn oracle(rules: &Path, input: &Path, format: &str, now: Option<i64>) -> (Vec<u8>, String) {
    let mut args = vec!["--format".to_string(), format.to_string()];
    if let Some(now) = now {
        args.extend(["--now".to_string(), now.to_string()]);
    }
    run_oracle(rules, input, &args)
}

/// `key=<integer>` from the oracle's stats line.
fn stat(stats: &str, key: &str) -> i64 {
    let at = stats
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {stats}"));
    stats[at + key.len() + 1..]
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number for {key} in {stats}"))
}

/// The dead-letter reasons of a `--dlq` file, counted.
fn dead_letters(path: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *out.entry(v["reason"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    out
}

/// Replays `input` in `format`, compares with the oracle at the end of the stream and 60 days
/// later, and returns the final dump (by user) and the dead letters.
fn run(
    input: &Path,
    format: &str,
) -> (
    BTreeMap<String, serde_json::Value>,
    BTreeMap<String, u64>,
    String,
) {
    let rules = data("sdk.toml");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let dlq = dir.path().join("dlq.ndjson");
    let (rules_s, state_s) = (rules.to_str().unwrap(), state.to_str().unwrap());
    tagstream(&[
        "replay",
        "--rules",
        rules_s,
        "--input",
        input.to_str().unwrap(),
        "--format",
        format,
        "--state-dir",
        state_s,
        "--out",
        dir.path().join("transitions.ndjson").to_str().unwrap(),
        "--dlq",
        dlq.to_str().unwrap(),
    ]);
    let dump = tagstream(&["dump", "--state-dir", state_s, "--rules", rules_s]);
    let (expected, stats) = oracle(&rules, input, format, None);
    compare_with_oracle(dir.path(), &format!("{format}-final"), &expected, &dump);
    let final_dump = String::from_utf8(dump)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["user_id"].as_str().unwrap().to_string(), v)
        })
        .collect();

    // Sixty days on: every window drains and every segment over one changes, by timers alone.
    let now = stat(&stats, "clock") + 60 * 86_400_000;
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, b"").unwrap();
    tagstream(&[
        "replay",
        "--rules",
        rules_s,
        "--input",
        empty.to_str().unwrap(),
        "--format",
        format,
        "--state-dir",
        state_s,
        "--out",
        dir.path().join("transitions2.ndjson").to_str().unwrap(),
        "--advance-to",
        &now.to_string(),
    ]);
    let dump = tagstream(&["dump", "--state-dir", state_s]);
    let (expected, _) = oracle(&rules, input, format, Some(now));
    compare_with_oracle(dir.path(), &format!("{format}-advanced"), &expected, &dump);
    (final_dump, dead_letters(&dlq), stats)
}

#[test]
fn sensors_sdk_stream_matches_the_oracle() {
    let (dump, dead, stats) = run(&data("sdk_sensors.jsonl"), "sensors");
    // The skipped records are neither dead letters nor users, and did not move the clock
    // (they are 100 days ahead of everything else).
    assert_eq!(
        dead,
        BTreeMap::from([("invalid_properties".to_string(), 2)]),
        "only the two increments by a non-number are dead letters"
    );
    assert_eq!(stat(&stats, "skipped"), 4, "{stats}");
    assert_eq!(stat(&stats, "clock"), 1_732_000_000_000 + 6 * 86_400_000);
    assert_eq!(
        dump.keys().collect::<Vec<_>>(),
        ["anon-9", "s1", "s2", "s3", "s4"]
    );
    // Spot checks that the scenario exercises what it claims (the oracle agrees on all).
    let tags = |u: &str| &dump[u]["tags"];
    assert_eq!(tags("s1")["points"], 100);
    assert_eq!(
        tags("s1")["interests"],
        serde_json::json!(["books", "music", "games"])
    );
    assert_eq!(
        tags("s2")["tags_list"],
        serde_json::json!(["a", "b", "c", "d"])
    );
    assert_eq!(tags("s2")["signed_up_from"], "anon-9");
    assert_eq!(tags("s2")["visits"], 10);
    assert_eq!(tags("s3")["points"], 5);
    assert_eq!(tags("s4")["points"], 120);
    assert_eq!(tags("s1")["login_flags"], 1);
    for user in dump.keys() {
        assert!(tags(user)["login_attribute"].is_null(), "{user}");
    }
    assert!(dump["s1"]["segments"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("loyal")));
}

#[test]
fn segment_and_rudderstack_stream_matches_the_oracle() {
    let (dump, dead, _) = run(&data("sdk_segment.jsonl"), "segment");
    assert_eq!(
        dead,
        BTreeMap::from([
            ("not_an_object".to_string(), 1),
            ("unknown_type".to_string(), 1)
        ])
    );
    let tags = |u: &str| &dump[u]["tags"];
    assert_eq!(tags("g1")["plan"], "pro");
    assert_eq!(tags("g1")["city"], "Shenzhen");
    assert_eq!(tags("g2")["plan"], "free");
    assert_eq!(tags("a-3")["plan"], "trial");
    assert_eq!(
        tags("g1")["top_page_categories_30d"],
        serde_json::json!(["beauty", "home", "books"])
    );
    assert_eq!(tags("g1")["screen_categories"], 0);
    assert_eq!(
        tags("g2")["top_page_categories_30d"],
        serde_json::json!(["kept", "sports"])
    );
}
