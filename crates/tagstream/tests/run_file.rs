//! `tagstream run` with a file source (no Kafka): follow mode, restart without double counting,
//! SIGTERM, and configuration errors (exit 1, one line naming file, line and key).

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

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

[[segment]]
name = "busy"
when = "n >= 3"
"#;

fn event(user: &str, name: &str, ts: i64, amount: f64) -> String {
    format!(
        r#"{{"user_id":"{user}","event":"{name}","ts":{ts},"properties":{{"amount":{amount}}}}}"#
    )
}

fn lines(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            event(
                &format!("u{}", i % 7),
                if i % 3 == 0 { "purchase" } else { "view" },
                1_732_000_000_000 + i as i64 * 1000,
                5.0,
            ) + "\n"
        })
        .collect()
}

fn config(dir: &Path, follow: bool) -> std::path::PathBuf {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let text = format!(
        "rules = \"rules.toml\"\n[source]\nkind = \"file\"\npath = \"events.ndjson\"\nfollow = {follow}\n[sink]\nkind = \"file\"\npath = \"out.ndjson\"\n[dead_letter]\nkind = \"file\"\npath = \"dlq.ndjson\"\n[state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n[api]\nlisten = \"127.0.0.1:0\"\n"
    );
    let p = dir.join("tagstream.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn spawn(config: &Path, log: &Path) -> Child {
    Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("TAGSTREAM_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child, log: &Path) {
    common::sigterm(&child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn dump(state: &Path) -> String {
    let out = Command::new(bin())
        .args(["dump", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn replay_dump(dir: &Path, input: &str) -> (String, usize) {
    let r = dir.join("replay");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("in.ndjson"), input).unwrap();
    std::fs::write(r.join("rules.toml"), RULES).unwrap();
    let s = |p: &str| r.join(p).to_str().unwrap().to_string();
    let out = Command::new(bin())
        .args([
            "replay",
            "--rules",
            &s("rules.toml"),
            "--input",
            &s("in.ndjson"),
            "--state-dir",
            &s("state"),
            "--out",
            &s("out.ndjson"),
            "--dlq",
            &s("dlq.ndjson"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let transitions = std::fs::read_to_string(r.join("out.ndjson"))
        .unwrap()
        .lines()
        .count();
    let d = dump(&r.join("state"));
    std::fs::remove_dir_all(&r).unwrap();
    (d, transitions)
}

fn count_lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn file_source_follows_appends_survives_restarts_and_dead_letters_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(d, true);
    let mut input = lines(0, 200);
    input.push_str("{not json\n");
    std::fs::write(d.join("events.ndjson"), &input).unwrap();
    let log = d.join("run1.log");
    let child = spawn(&cfg, &log);
    let (_, want) = replay_dump(d, &input);
    wait_for("the first transitions", &log, || {
        count_lines(&d.join("out.ndjson")) >= want
    });
    // Appended lines (the last one in two writes) are picked up.
    let more = lines(200, 300);
    let (head, rest) = more.split_at(more.len() - 20);
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("events.ndjson"))
        .unwrap()
        .write_all(head.as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("events.ndjson"))
        .unwrap()
        .write_all(rest.as_bytes())
        .unwrap();
    input.push_str(&more);
    let (want_dump, want) = replay_dump(d, &input);
    wait_for("the appended lines", &log, || {
        count_lines(&d.join("out.ndjson")) >= want
    });
    stop(child, &log);
    assert_eq!(dump(&d.join("state")), want_dump);
    assert_eq!(count_lines(&d.join("out.ndjson")), want);
    let dlq = std::fs::read_to_string(d.join("dlq.ndjson")).unwrap();
    let dl: serde_json::Value = serde_json::from_str(dlq.lines().next().unwrap()).unwrap();
    assert_eq!(dl["reason"], "invalid_json");
    assert_eq!(dl["line"], 201);
    assert_eq!(dl["raw"], "{not json");

    // A restart on the same (grown) file continues after the last line: nothing twice.
    let log = d.join("run2.log");
    let child = spawn(&cfg, &log);
    wait_for("the restart to reach the end", &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reached the end")
    });
    stop(child, &log);
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("continuing"));
    assert_eq!(dump(&d.join("state")), want_dump);
    assert_eq!(count_lines(&d.join("out.ndjson")), want);
    assert_eq!(count_lines(&d.join("dlq.ndjson")), 1);
}

#[test]
fn configuration_errors_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), false);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("follow = false", "follow = false\nfolow = true");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("tagstream.toml:6: source.folow: unknown field `folow`"),
        "{err}"
    );

    // The environment overrides the file, and its errors name the variable.
    let out = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("TAGSTREAM__SOURCE__FOLOW", "")
        .env("TAGSTREAM__SINK__KIND", "kafka")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(bin())
        .args(["run", "--config", "/nonexistent/tagstream.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));

    // Bad rules are user errors too.
    let cfg = config(dir.path(), false);
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[segment]]\nname = \"x\"\nwhen = \"nope > 1\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stdin_source_applies_lines_and_stops_on_sigterm_while_stdin_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), false);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "kind = \"file\"\npath = \"events.ndjson\"\nfollow = false\n",
        "kind = \"stdin\"\n",
    );
    assert!(text.contains("kind = \"stdin\""));
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("log.txt");
    let mut child = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("TAGSTREAM_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let input = lines(0, 60);
    // Keep the pipe open: the service must not wait for stdin to close to apply or to stop.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let out = dir.path().join("out.ndjson");
    let (want_dump, want_transitions) = replay_dump(dir.path(), &input);
    wait_for("the transitions", &log, || {
        count_lines(&out) == want_transitions
    });
    stop(child, &log);
    drop(stdin);
    assert_eq!(dump(&dir.path().join("state")), want_dump);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.matches("reached the end").count() <= 1,
        "the end of input is logged once:\n{text}"
    );
}
