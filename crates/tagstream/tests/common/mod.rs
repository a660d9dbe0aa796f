//! Helpers shared by the end-to-end tests: the binary, dumps, logs, the test partitioner and
//! Prometheus scrapes. (Each test binary uses a different subset.)
#![allow(dead_code)]

pub mod kafka;

use std::path::Path;
use std::process::Command;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tagstream")
}

/// `tagstream dump --state-dir <state>`, one line per user.
pub fn dump(state: &Path) -> Vec<String> {
    let out = Command::new(bin())
        .args(["dump", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `user_id` of a JSON line (a number is taken as its decimal text, as the codecs do).
pub fn user_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    v["user_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v["user_id"].to_string())
}

/// The last `n` lines of a log file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {}:\n{}",
        path.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

/// The address `tagstream run` says its API listens on (`api listening addr=…` in its log),
/// once it has said so.
pub fn api_address(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().find(|l| l.contains("api listening"))?;
    let at = line.find("addr=")? + 5;
    Some(
        line[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// Asks a `tagstream run` (or any child) to shut down gracefully.
pub fn sigterm(child: &std::process::Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Stops a `tagstream run` with SIGTERM and checks that it exits 0 within `within` (a graceful
/// shutdown); `log` is shown when it does not.
pub fn stop_gracefully(child: &mut std::process::Child, within: std::time::Duration, log: &Path) {
    sigterm(child);
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tagstream did not stop within {within:?} of SIGTERM:\n{}",
            tail(log, 40)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM:\n{}",
        tail(log, 40)
    );
}

/// Sends `record`, waiting for room in the producer's queue when it is full.
pub fn send_retrying<'a, K, P>(
    producer: &rdkafka::producer::BaseProducer,
    mut record: rdkafka::producer::BaseRecord<'a, K, P>,
) where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, r)) => {
                producer.poll(std::time::Duration::from_millis(10));
                record = r;
            }
        }
    }
    producer.poll(std::time::Duration::ZERO);
}

/// FNV-1a over the key: the tests' own partitioner (messages go to explicit partitions).
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    let mut h: u32 = 0x811c9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions as u32) as i32
}

/// Parses a `/metrics` text with a Prometheus text-format parser.
pub fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text format")
}

/// GET `<base>/metrics`, parsed.
pub fn fetch_metrics(base: &str) -> prometheus_parse::Scrape {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("a text body");
    scrape(&text)
}

/// The sum of every sample of a counter, gauge or untyped metric (over all label values).
pub fn metric_sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Starts `tagstream run --config <config>` with info logs written to `log`, no token from the
/// environment (tests configure their own), and no stdin/stdout.
pub fn spawn_run(config: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("TAGSTREAM_LOG", "info")
        .env_remove("TAGSTREAM_API_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The repository root (the oracle, example rules and docs live there).
pub fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Compares a dump with the oracle's (`tests/oracle/compare.py`): zero differences, over at
/// least one user. The files are kept in `dir` as `<name>.expected.ndjson` / `.actual.ndjson`.
pub fn compare_with_oracle(dir: &Path, name: &str, expected: &[u8], actual: &[u8]) {
    let (e, a) = (
        dir.join(format!("{name}.expected.ndjson")),
        dir.join(format!("{name}.actual.ndjson")),
    );
    std::fs::write(&e, expected).unwrap();
    std::fs::write(&a, actual).unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/oracle/compare.py"))
        .arg(&e)
        .arg(&a)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: engine differs from the oracle:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" 0 differences"), "{report}");
    assert!(!expected.is_empty(), "the comparison must cover users");
}

/// Writes a `tagstream run` set-up into `dir` for the API tests: `events` generated events of
/// 300 users (seed 11) in a file source, `rules`, the bearer token `token` in a token file,
/// file sink and dead letters, event clock, the API on a free loopback port. Returns the
/// number of events.
pub fn write_file_service(dir: &Path, events: usize, rules: &str, token: &str) -> usize {
    let out = Command::new(bin())
        .args([
            "gen",
            "--users",
            "300",
            "--events",
            &events.to_string(),
            "--seed",
            "11",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    std::fs::write(dir.join("events.ndjson"), out.stdout).unwrap();
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    std::fs::write(
        dir.join("tagstream.toml"),
        "rules = \"rules.toml\"\n[source]\nkind = \"file\"\npath = \"events.ndjson\"\n[sink]\nkind = \"file\"\npath = \"out.ndjson\"\n[dead_letter]\nkind = \"file\"\npath = \"dlq.ndjson\"\n[state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token\"\n",
    )
    .unwrap();
    lines
}

/// Runs the independent oracle (`tests/oracle/oracle.py --stats`) on `input` with `rules` and
/// any further arguments (`--format`, `--now`); returns its dump and its stats line.
pub fn run_oracle(rules: &Path, input: &Path, args: &[String]) -> (Vec<u8>, String) {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/oracle/oracle.py"))
        .arg("--stats")
        .arg("--rules")
        .arg(rules)
        .arg("--input")
        .arg(input)
        .args(args)
        .output()
        .expect("python3 is needed for the differential tests");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` every 100 ms until it returns a value; panics after `within` with `what` and
/// `context()`.
pub fn wait_for<T>(
    what: &str,
    within: std::time::Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
