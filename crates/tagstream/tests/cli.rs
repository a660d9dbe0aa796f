//! The binary's command line: exit codes, one-line errors, dead letters, continuation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(args)
        .output()
        .expect("run tagstream")
}

fn ok(args: &[&str]) -> Output {
    let out = bin(args);
    assert!(
        out.status.success(),
        "tagstream {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const RULES: &str = r#"
[[tag]]
name = "spend"
kind = "sum"
event = "purchase"
property = "amount"
[[tag]]
name = "n"
kind = "count"
event = "*"
[[segment]]
name = "buyer"
when = "spend > 0"
"#;

#[test]
fn check_accepts_good_rules_and_reports_bad_ones_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", RULES);
    let out = ok(&["check", "--rules", good.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    let bad = write(
        dir.path(),
        "bad.toml",
        &RULES.replace("spend > 0", "spend > 'x'"),
    );
    let out = bin(&["check", "--rules", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // Exactly `file:line:column: rule: message`, one line per problem (problem-matcher form).
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let prefix = format!("{}:13:9: segment 'buyer': cannot compare", bad.display());
    assert!(lines[0].starts_with(&prefix), "{err}");
    // Two problems, two lines, each in the same form.
    let two = write(
        dir.path(),
        "two.toml",
        &RULES.replace("spend > 0", "spnd > 0 AND n = 'x'"),
    );
    let out = bin(&["check", "--rules", two.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    for (line, col) in lines.iter().zip([9, 22]) {
        let prefix = format!("{}:13:{col}: segment 'buyer': ", two.display());
        assert!(line.starts_with(&prefix), "{line}");
    }
    let out = bin(&["check", "--rules", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn malformed_events_go_to_the_dead_letter_file_and_the_rest_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", RULES);
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let long_id = "x".repeat(300);
    let lines = [
        r#"{"user_id":"u1","event":"purchase","ts":1732000000000,"properties":{"amount":5}}"#
            .to_string(),
        "{not json".into(),
        "[1,2]".into(),
        r#"{"event":"view","ts":1732000000000}"#.into(),
        format!(r#"{{"user_id":"{long_id}","event":"view","ts":1732000000000}}"#),
        r#"{"user_id":"u1","ts":1732000000000}"#.into(),
        r#"{"user_id":"u1","event":"view","ts":1732000000000.5}"#.into(),
        r#"{"user_id":"u1","event":"view","ts":1732000000000,"properties":[1]}"#.into(),
        r#"{"type":"merge","user_id":"u1","ts":1732000000000}"#.into(),
        "".into(),
        deep,
        r#"{"user_id":"u2","event":"view","ts":"2024-11-19T07:06:40.123456Z"}"#.into(),
    ];
    let input = write(dir.path(), "in.ndjson", &(lines.join("\n") + "\n"));
    let (state, out, dlq) = (
        dir.path().join("state"),
        dir.path().join("out.ndjson"),
        dir.path().join("dlq.ndjson"),
    );
    ok(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dlq",
        dlq.to_str().unwrap(),
    ]);
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dlq)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, u64)> = dead
        .iter()
        .map(|d| {
            (
                d["reason"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("invalid_json", 2),
        ("not_an_object", 3),
        ("missing_user_id", 4),
        ("invalid_user_id", 5),
        ("missing_event", 6),
        ("invalid_timestamp", 7),
        ("invalid_properties", 8),
        ("unknown_type", 9),
        ("invalid_json", 11),
    ]
    .iter()
    .map(|(r, l)| (r.to_string(), *l))
    .collect();
    assert_eq!(got, want);
    assert!(dead.iter().all(|d| d["source"] == input.to_str().unwrap()
        && d["raw"].is_string()
        && !d["detail"].as_str().unwrap().is_empty()));
    let dump =
        String::from_utf8(ok(&["dump", "--state-dir", state.to_str().unwrap()]).stdout).unwrap();
    let users: Vec<serde_json::Value> = dump
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["user_id"], "u1");
    assert_eq!(users[0]["tags"]["spend"], 5);
    assert_eq!(users[0]["segments"], serde_json::json!(["buyer"]));
    let transitions = std::fs::read_to_string(&out).unwrap();
    assert_eq!(transitions.lines().count(), 1);
}

#[test]
fn replay_continues_on_the_same_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", RULES);
    let events =
        String::from_utf8(ok(&["gen", "--users", "50", "--events", "3000", "--seed", "3"]).stdout)
            .unwrap();
    let all: Vec<&str> = events.lines().collect();
    let whole = write(dir.path(), "all.ndjson", &events);
    let part1 = write(dir.path(), "part1.ndjson", &(all[..1700].join("\n") + "\n"));
    let part2 = write(dir.path(), "part2.ndjson", &(all[1700..].join("\n") + "\n"));
    let r = rules.to_str().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let sink = dir.path().join("t.ndjson");
    let s = sink.to_str().unwrap();
    ok(&[
        "replay",
        "--rules",
        r,
        "--input",
        whole.to_str().unwrap(),
        "--state-dir",
        one.to_str().unwrap(),
        "--out",
        s,
    ]);
    ok(&[
        "replay",
        "--rules",
        r,
        "--input",
        part1.to_str().unwrap(),
        "--state-dir",
        two.to_str().unwrap(),
        "--out",
        s,
    ]);
    ok(&[
        "replay",
        "--rules",
        r,
        "--input",
        part2.to_str().unwrap(),
        "--state-dir",
        two.to_str().unwrap(),
        "--out",
        s,
    ]);
    // Replaying the same file again applies nothing twice.
    ok(&[
        "replay",
        "--rules",
        r,
        "--input",
        part2.to_str().unwrap(),
        "--state-dir",
        two.to_str().unwrap(),
        "--out",
        s,
    ]);
    let d1 = ok(&["dump", "--state-dir", one.to_str().unwrap()]).stdout;
    let d2 = ok(&["dump", "--state-dir", two.to_str().unwrap()]).stdout;
    assert!(!d1.is_empty());
    assert_eq!(
        String::from_utf8(d1).unwrap(),
        String::from_utf8(d2).unwrap()
    );
}

#[test]
fn user_errors_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", RULES);
    let input = write(
        dir.path(),
        "in.ndjson",
        "{\"user_id\":\"u\",\"event\":\"e\",\"ts\":1732000000000}\n",
    );
    let state = dir.path().join("s");
    let args = |advance: &'static str| {
        vec![
            "replay".to_string(),
            "--rules".into(),
            rules.to_str().unwrap().into(),
            "--input".into(),
            input.to_str().unwrap().into(),
            "--state-dir".into(),
            state.to_str().unwrap().into(),
            "--out".into(),
            "-".into(),
            "--advance-to".into(),
            advance.into(),
        ]
    };
    let a = args("2024-11-20T00:00:00Z");
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let b = args("1000");
    let out = bin(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("before the current engine time") && err.lines().count() == 1,
        "{err}"
    );

    let out = bin(&[
        "dump",
        "--state-dir",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = bin(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        "-",
        "--format",
        "xml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = bin(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    // Other rules on an existing state dir are refused rather than silently mixed.
    let other = write(
        dir.path(),
        "other.toml",
        &RULES.replace("spend > 0", "spend > 1"),
    );
    let out = bin(&[
        "replay",
        "--rules",
        other.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn gen_is_deterministic() {
    let a = ok(&["gen", "--users", "20", "--events", "500", "--seed", "9"]).stdout;
    let b = ok(&["gen", "--users", "20", "--events", "500", "--seed", "9"]).stdout;
    let c = ok(&["gen", "--users", "20", "--events", "500", "--seed", "10"]).stdout;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(String::from_utf8(a).unwrap().lines().count(), 500);
}

#[test]
fn check_config_validates_the_configuration_and_its_rules_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rules.toml", RULES);
    let config = write(
        dir.path(),
        "tagstream.toml",
        "rules = \"rules.toml\"\n[source]\nkind = \"stdin\"\n[state]\ndir = \"state\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env_remove("TAGSTREAM_API_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (rules "));
    // Nothing was started or created.
    assert!(!dir.path().join("state").exists());

    // A configuration error names the file, the line and the key.
    let bad = write(
        dir.path(),
        "bad.toml",
        "rules = \"rules.toml\"\n[source]\nkind = \"stdin\"\nfolow = true\n",
    );
    let out = bin(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:4: source.folow:", bad.display())),
        "{err}"
    );

    // The rules it names are checked too, in the rules' own `file:line:column` form.
    write(
        dir.path(),
        "rules.toml",
        &RULES.replace("spend > 0", "spend > 'x'"),
    );
    let out = bin(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rules.toml:13:9: segment 'buyer'"), "{err}");

    // Both API token sources at once: an error naming both.
    write(dir.path(), "rules.toml", RULES);
    write(dir.path(), "token", "t0ken\n");
    let with_token = write(
        dir.path(),
        "token.toml",
        "rules = \"rules.toml\"\n[source]\nkind = \"stdin\"\n[api]\ntoken_file = \"token\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(["check", "--config", with_token.to_str().unwrap()])
        .env("TAGSTREAM_API_TOKEN", "other")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TAGSTREAM_API_TOKEN") && err.contains("api.token_file"),
        "{err}"
    );
    // An API other machines can reach, with no token: refused by `check` and by `run` (before
    // anything is created), unless `api.allow_anonymous` says so on purpose.
    let open = write(
        dir.path(),
        "open.toml",
        "rules = \"rules.toml\"\n[source]\nkind = \"stdin\"\n[state]\ndir = \"open-state\"\n[api]\nlisten = \"0.0.0.0:0\"\n",
    );
    for command in ["check", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
            .args([command, "--config", open.to_str().unwrap()])
            .env_remove("TAGSTREAM_API_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("api.listen 0.0.0.0:0") && err.contains("api.allow_anonymous = true"),
            "{command}: {err}"
        );
    }
    assert!(!dir.path().join("open-state").exists());
    let anonymous = write(
        dir.path(),
        "anonymous.toml",
        "rules = \"rules.toml\"\n[source]\nkind = \"stdin\"\n[api]\nlisten = \"0.0.0.0:0\"\nallow_anonymous = true\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(["check", "--config", anonymous.to_str().unwrap()])
        .env_remove("TAGSTREAM_API_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `check` needs one of --rules and --config.
    assert_eq!(bin(&["check"]).status.code(), Some(1));
}

#[test]
fn version_names_the_commit_and_help_lists_the_formats() {
    let out = ok(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("tagstream {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert!(
        text.contains(&format!("(commit {commit})")),
        "{text} vs {commit}"
    );

    let help = String::from_utf8_lossy(&ok(&["replay", "--help"]).stdout).to_string();
    for format in ["native", "segment", "sensors"] {
        assert!(help.contains(&format!("- {format}:")), "{help}");
    }
    for sub in ["run", "replay", "dump", "check", "gen"] {
        let help = String::from_utf8_lossy(&ok(&[sub, "--help"]).stdout).to_string();
        // Every flag's help carries an example.
        let flags = help
            .lines()
            .filter(|l| l.trim_start().starts_with("--"))
            .count();
        assert!(flags > 0, "{sub}: {help}");
        assert!(
            help.matches("e.g. `--").count() >= flags,
            "{sub}: every flag needs an example:\n{help}"
        );
    }
    let out = bin(&[
        "replay",
        "--rules",
        "r",
        "--input",
        "i",
        "--state-dir",
        "s",
        "--out",
        "o",
        "--format",
        "csv",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("native, segment, sensors"));
}

#[test]
fn rust_log_is_honoured_and_tagstream_log_wins() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", RULES);
    let input = write(
        dir.path(),
        "in.ndjson",
        "{\"user_id\":\"u1\",\"event\":\"purchase\",\"ts\":1732000000000,\"properties\":{\"amount\":5}}\n",
    );
    let replay = |n: usize, vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagstream"));
        cmd.args([
            "replay",
            "--rules",
            rules.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .args([
            "--state-dir",
            dir.path().join(format!("s{n}")).to_str().unwrap(),
            "--out",
            "-",
        ])
        .env_remove("RUST_LOG")
        .env_remove("TAGSTREAM_LOG");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).contains("replay finished")
    };
    assert!(!replay(0, &[]), "replay logs at warn by default");
    assert!(replay(1, &[("RUST_LOG", "info")]));
    assert!(replay(2, &[("TAGSTREAM_LOG", "info")]));
    assert!(!replay(
        3,
        &[("RUST_LOG", "info"), ("TAGSTREAM_LOG", "warn")]
    ));
    assert!(replay(
        4,
        &[("RUST_LOG", "warn"), ("TAGSTREAM_LOG", "info")]
    ));
}

#[test]
fn a_quoted_property_name_reads_a_key_that_is_not_an_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.toml",
        "[[tag]]\nname = \"ios_views\"\nkind = \"count\"\nevent = \"view\"\nwhere = \"properties.'$os' = 'iOS'\"\n",
    );
    let input = write(
        dir.path(),
        "in.ndjson",
        &[
            r#"{"user_id":"u1","event":"view","ts":1732000000000,"properties":{"$os":"iOS"}}"#,
            r#"{"user_id":"u1","event":"view","ts":1732000000001,"properties":{"$os":"Android"}}"#,
            r#"{"user_id":"u1","event":"view","ts":1732000000002,"properties":{"os":"iOS"}}"#,
        ]
        .join("\n"),
    );
    let state = dir.path().join("state");
    ok(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        "-",
    ]);
    let out = ok(&["dump", "--state-dir", state.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tags"]["ios_views"], 1, "{v}");
}

#[test]
fn check_preview_shows_what_a_reload_would_do_reading_the_state_only() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", RULES);
    let events = write(
        dir.path(),
        "events.ndjson",
        concat!(
            r#"{"user_id":"u1","event":"purchase","ts":1000,"properties":{"amount":100}}"#,
            "\n",
            r#"{"user_id":"u2","event":"purchase","ts":2000,"properties":{"amount":20}}"#,
            "\n",
            r#"{"user_id":"u3","event":"view","ts":3000}"#,
            "\n",
            r#"{"user_id":"u3","event":"view","ts":4000}"#,
            "\n",
        ),
    );
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    ok(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
        "--state-dir",
        state,
        "--out",
        dir.path().join("out.ndjson").to_str().unwrap(),
    ]);
    let dump_before = ok(&["dump", "--state-dir", state]).stdout;
    // buyer narrowed (u2 leaves), a segment added (u3 enters), a windowed tag added (empty).
    let next = write(
        dir.path(),
        "next.toml",
        &format!(
            "{}\n[[tag]]\nname = \"spend_7d\"\nkind = \"sum\"\nevent = \"purchase\"\nproperty = \"amount\"\nwindow = \"7d\"\n[[segment]]\nname = \"active\"\nwhen = \"n >= 2\"\n",
            RULES.replace("spend > 0", "spend > 50")
        ),
    );
    let preview = |rules: &Path| -> serde_json::Value {
        let out = ok(&[
            "check",
            "--rules",
            rules.to_str().unwrap(),
            "--preview",
            "--state-dir",
            state,
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let p = preview(&next);
    assert_eq!(p["dry_run"], true);
    assert_eq!(p["changed"], true);
    assert_eq!(p["users"], 3);
    assert_eq!(
        p["segments"],
        serde_json::json!([
            {"name":"buyer","size_before":2,"size_after":1,"enters":0,"exits":1},
            {"name":"active","size_before":0,"size_after":1,"enters":1,"exits":0},
        ])
    );
    assert_eq!(p["warming"], serde_json::json!(["spend_7d"]));
    // A removed segment shows 0 after, an exit per member.
    let without = write(
        dir.path(),
        "without.toml",
        &RULES.replace("[[segment]]\nname = \"buyer\"\nwhen = \"spend > 0\"\n", ""),
    );
    let p = preview(&without);
    assert_eq!(
        p["segments"],
        serde_json::json!([{"name":"buyer","size_before":2,"size_after":0,"enters":0,"exits":2}])
    );
    // The same rules: nothing would change.
    let p = preview(&rules);
    assert_eq!(p["changed"], false);
    assert_eq!(p["segments"][0]["size_after"], 2);
    // Nothing was written: the dump is the same and the old rules still continue the state.
    assert_eq!(ok(&["dump", "--state-dir", state]).stdout, dump_before);
    ok(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
        "--state-dir",
        state,
        "--out",
        dir.path().join("out2.ndjson").to_str().unwrap(),
    ]);
    // --preview needs --state-dir; a missing state dir is a user error.
    let out = bin(&["check", "--rules", next.to_str().unwrap(), "--preview"]);
    assert_eq!(out.status.code(), Some(1));
    let missing = dir.path().join("nothing");
    let out = bin(&[
        "check",
        "--rules",
        next.to_str().unwrap(),
        "--preview",
        "--state-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tagstream state"));
}

/// Each committed batch logs one span naming where it starts and ends in its input, so a slow
/// batch can be found; `--batch-size` cuts batches at that many events.
#[test]
fn each_batch_logs_where_it_starts_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", RULES);
    let events =
        String::from_utf8(ok(&["gen", "--users", "20", "--events", "2500", "--seed", "5"]).stdout)
            .unwrap();
    let input = write(dir.path(), "events.ndjson", &events);
    let out = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .env("TAGSTREAM_LOG", "tagstream_consumer=debug")
        .env_remove("TAGSTREAM_LOG_FORMAT")
        .args([
            "replay",
            "--rules",
            rules.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--out",
            dir.path().join("t.ndjson").to_str().unwrap(),
            "--batch-size",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    let path = input.to_str().unwrap();
    let spans: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("batch committed") && l.contains("batch{first="))
        .collect();
    for (i, (first, last)) in [(1, 1000), (1001, 2000), (2001, 2500)].iter().enumerate() {
        let span = spans
            .get(i)
            .unwrap_or_else(|| panic!("batch {i} not logged:\n{log}"));
        assert!(
            span.contains(&format!(
                "first={path}:{first} last={path}:{last} records={}",
                last - first + 1
            )),
            "{span}"
        );
    }
}
