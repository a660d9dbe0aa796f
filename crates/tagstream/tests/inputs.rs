//! Input that cannot hurt (issue 10), through the real binary: lines longer than
//! `max_event_bytes` and gzip bombs read in bounded memory, corrupt `.gz` inputs that stop only
//! themselves, the event-clock guard against far-future events, `replay` of a grown file, and a
//! non-UTF-8 environment.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{bin, dump, fetch_metrics, spawn_run, tail};
use serde_json::Value;

const RULES: &str = r#"
[[tag]]
name = "n"
kind = "count"
event = "*"

[[segment]]
name = "seen"
when = "n >= 1"
"#;

const TS: i64 = 1_732_000_000_000;

fn event(user: &str, ts: i64) -> String {
    format!(r#"{{"user_id":"{user}","event":"view","ts":{ts}}}"#)
}

/// `count` events of users `u0..u{count}`, one per line, each line ending with a newline.
fn events(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| event(&format!("u{i}"), TS + i as i64) + "\n")
        .collect()
}

/// Gzip of what `write` writes.
fn gzip(write: impl FnOnce(&mut dyn std::io::Write)) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    write(&mut gz);
    gz.finish().unwrap()
}

/// Lines `u0`, a line of `line` bytes, `u1`, `u2`, compressed.
fn gzip_bomb(line: usize) -> Vec<u8> {
    gzip(|w| {
        w.write_all(events(0, 1).as_bytes()).unwrap();
        long_line(w, line);
        w.write_all(("\n".to_string() + &events(1, 2)).as_bytes())
            .unwrap();
    })
}

/// Writes `n` bytes of `x` (no newline) in chunks: a line no reader should hold whole.
fn long_line(out: &mut dyn std::io::Write, n: usize) {
    let chunk = vec![b'x'; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        out.write_all(&chunk[..k]).unwrap();
        left -= k;
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tagstream replay` of `input` into `dir/state`, dead letters to `dir/dlq.ndjson`.
fn replay(dir: &Path, input: &Path) -> Output {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    Command::new(bin())
        .args(["replay", "--rules"])
        .arg(dir.join("rules.toml"))
        .arg("--input")
        .arg(input)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--out")
        .arg(dir.join("out.ndjson"))
        .arg("--dlq")
        .arg(dir.join("dlq.ndjson"))
        .output()
        .unwrap()
}

/// The same replay under Python's `resource` module: the child's peak resident set, in KiB.
fn replay_peak_kib(dir: &Path, input: &Path) -> u64 {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let script = "import resource, subprocess, sys\n\
                  r = subprocess.run(sys.argv[1:])\n\
                  print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
                  sys.exit(r.returncode)";
    let out = Command::new("python3")
        .args(["-c", script, bin(), "replay", "--rules"])
        .arg(dir.join("rules.toml"))
        .arg("--input")
        .arg(input)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--out")
        .arg(dir.join("out.ndjson"))
        .arg("--dlq")
        .arg(dir.join("dlq.ndjson"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn dead_letters(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn users(state: &Path) -> Vec<String> {
    dump(state)
        .iter()
        .map(|l| common::user_of(l))
        .collect::<Vec<_>>()
}

#[test]
fn replay_dead_letters_an_oversized_line_with_its_first_64_kib_and_applies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let big = format!(
        r#"{{"user_id":"big","event":"view","ts":{TS},"properties":{{"blob":"{}"}}}}"#,
        "y".repeat(5 << 20)
    );
    let input = d.join("in.ndjson");
    std::fs::write(&input, events(0, 3) + &big + "\n" + &events(3, 3)).unwrap();
    let out = replay(d, &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dls = dead_letters(&d.join("dlq.ndjson"));
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0]["reason"], "too_large");
    assert_eq!(dls[0]["line"], 4);
    let raw = dls[0]["raw"].as_str().unwrap();
    assert_eq!(raw.len(), 64 * 1024);
    assert!(big.starts_with(raw));
    let detail = dls[0]["detail"].as_str().unwrap();
    assert!(detail.contains(&big.len().to_string()), "{detail}");
    assert_eq!(
        users(&d.join("state")),
        ["u0", "u1", "u2", "u3", "u4", "u5"]
    );
}

#[test]
fn a_gzip_bomb_line_is_read_in_bounded_memory_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = d.join("small.ndjson.gz");
    std::fs::write(
        &small,
        gzip(|w| w.write_all(events(0, 3).as_bytes()).unwrap()),
    )
    .unwrap();
    let bomb = d.join("bomb.ndjson.gz");
    // 256 MiB of one line, compressed to well under a megabyte, between two ordinary lines.
    let line = 256 << 20;
    std::fs::write(&bomb, gzip_bomb(line)).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < (4 << 20));
    let base = tempfile::tempdir().unwrap();
    let baseline = replay_peak_kib(base.path(), &small);
    let peak = replay_peak_kib(d, &bomb);
    eprintln!("replay peak {peak} KiB, baseline {baseline} KiB");
    // The reader may hold max_event_bytes (1 MiB) of the line and its 1 MiB read buffer; a
    // reader holding the line would need 256 MiB.
    assert!(
        peak < baseline + 32 * 1024,
        "peak resident set {peak} KiB reading a 256 MiB line, {baseline} KiB without it"
    );
    let dls = dead_letters(&d.join("dlq.ndjson"));
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0]["reason"], "too_large");
    assert_eq!(dls[0]["line"], 2);
    assert_eq!(dls[0]["raw"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(users(&d.join("state")), ["u0", "u1", "u2"]);
}

/// A `tagstream run` with a file source, an event clock, file sinks and an API on a free port.
struct Service {
    child: Option<Child>,
    log: PathBuf,
    base: String,
}

fn run_config(dir: &Path, input: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let text = format!(
        "rules = \"rules.toml\"\n[source]\nkind = \"file\"\npath = \"{input}\"\n[sink]\nkind = \"file\"\npath = \"out.ndjson\"\n[dead_letter]\nkind = \"file\"\npath = \"dlq.ndjson\"\n[state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n{extra}[api]\nlisten = \"127.0.0.1:0\"\n"
    );
    let p = dir.join("tagstream.toml");
    std::fs::write(&p, text).unwrap();
    p
}

impl Service {
    fn start(dir: &Path, name: &str) -> Service {
        let log = dir.join(format!("{name}.log"));
        let child = spawn_run(&dir.join("tagstream.toml"), &log);
        Service::attach(child, log)
    }

    /// A started `tagstream run` writing its log to `log`, once its API listens.
    fn attach(child: Child, log: PathBuf) -> Service {
        let mut service = Service {
            child: Some(child),
            log,
            base: String::new(),
        };
        let addr = service.wait_for("the api to listen", |s| common::api_address(&s.log));
        service.base = format!("http://{addr}");
        service
    }

    fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(&Service) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the service exited ({status}) waiting for {what}:\n{}",
                    tail(&self.log, 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status(&self, path: &str) -> u16 {
        match ureq::get(&format!("{}{path}", self.base)).call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// Peak resident set of the service so far, in KiB.
    fn peak_kib(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        common::sigterm(&child);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{}", tail(&self.log, 30));
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn run_dead_letters_a_gzip_bomb_line_in_bounded_memory_and_applies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = 256 << 20;
    std::fs::write(d.join("events.ndjson.gz"), gzip_bomb(line)).unwrap();
    run_config(d, "events.ndjson.gz", "");
    let mut service = Service::start(d, "run");
    service.wait_for("the dead letter and the lines after it", |s| {
        let dls = dead_letters(&d.join("dlq.ndjson"));
        (s.status("/v1/users/u2") == 200 && !dls.is_empty()).then_some(())
    });
    let dls = dead_letters(&d.join("dlq.ndjson"));
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0]["reason"], "too_large");
    assert_eq!(dls[0]["line"], 2);
    assert_eq!(dls[0]["raw"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(service.status("/v1/users/u0"), 200);
    let peak = service.peak_kib();
    eprintln!("run peak {peak} KiB");
    // A reader holding the line would need 256 MiB; the service itself needs far less than 128.
    assert!(peak < 128 * 1024, "peak resident set {peak} KiB");
    service.stop();
}

fn corrupt_gz(dir: &Path, name: &str) -> PathBuf {
    let bytes = gzip(|w| w.write_all(events(0, 20_000).as_bytes()).unwrap());
    let p = dir.join(name);
    // Cut in the middle of the deflate stream: a truncated upload, a disk that filled up.
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    p
}

#[test]
fn run_stops_reading_a_corrupt_gz_keeps_serving_and_does_not_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corrupt_gz(d, "events.ndjson.gz");
    run_config(d, "events.ndjson.gz", "");
    let mut service = Service::start(d, "run1");
    let dl = service.wait_for("the unreadable_input dead letter", |_| {
        dead_letters(&d.join("dlq.ndjson")).pop()
    });
    assert_eq!(dl["reason"], "unreadable_input");
    let line = dl["line"].as_u64().unwrap();
    assert!(line > 1 && line < 20_000, "{dl}");
    service.wait_for("the readable lines", |s| {
        (s.status(&format!("/v1/users/u{}", line - 2)) == 200).then_some(())
    });
    assert_eq!(service.status("/healthz"), 200);
    assert_eq!(service.status(&format!("/v1/users/u{}", line - 1)), 404);
    let metrics = fetch_metrics(&service.base);
    let unreadable = metrics
        .samples
        .iter()
        .find(|m| {
            m.metric == "tagstream_dead_letters_total"
                && m.labels.get("reason") == Some("unreadable_input")
        })
        .map(|m| m.value.clone());
    assert_eq!(
        unreadable,
        Some(prometheus_parse::Value::Counter(1.0)),
        "{:?}",
        metrics.samples.len()
    );
    service.stop();

    // A restart stays stopped at the same line: no second dead letter, no exit.
    let mut service = Service::start(d, "run2");
    service.wait_for("the restarted source to stop at the same line", |s| {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        log.contains("stays stopped there").then_some(())
    });
    assert_eq!(service.status(&format!("/v1/users/u{}", line - 2)), 200);
    assert_eq!(service.status("/healthz"), 200);
    service.stop();
    assert_eq!(dead_letters(&d.join("dlq.ndjson")).len(), 1);
}

#[test]
fn replay_of_a_corrupt_gz_applies_what_it_can_and_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = corrupt_gz(d, "events.ndjson.gz");
    let out = replay(d, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(s(&input)) && stderr.contains("cannot be read past line"),
        "{stderr}"
    );
    let dls = dead_letters(&d.join("dlq.ndjson"));
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0]["reason"], "unreadable_input");
    let line = dls[0]["line"].as_u64().unwrap();
    let applied = users(&d.join("state")).len() as u64;
    assert_eq!(
        applied,
        line - 1,
        "users applied before the dead letter at line {line}"
    );

    // Again on the same state: the same failure, nothing applied or dead-lettered twice.
    let again = replay(d, &input);
    assert_eq!(again.status.code(), Some(1));
    assert!(dead_letters(&d.join("dlq.ndjson")).is_empty());
    assert_eq!(users(&d.join("state")).len() as u64, applied);
}

#[test]
fn run_in_event_mode_dead_letters_a_far_future_event_while_replay_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Ten years ahead of any machine that runs this test.
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 10 * 365 * 86_400_000;
    let input = events(0, 2) + &event("future", far) + "\n" + &events(2, 2);
    std::fs::write(d.join("events.ndjson"), &input).unwrap();
    run_config(d, "events.ndjson", "");
    let mut service = Service::start(d, "run");
    service.wait_for("the lines after the future event", |s| {
        (s.status("/v1/users/u3") == 200).then_some(())
    });
    let dls = dead_letters(&d.join("dlq.ndjson"));
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0]["reason"], "future_timestamp");
    assert_eq!(dls[0]["line"], 3);
    assert_eq!(service.status("/v1/users/future"), 404);
    let engine_time = service.wait_for("the engine time gauge", |s| {
        let t = common::metric_sum(&fetch_metrics(&s.base), "tagstream_engine_time_seconds");
        (t > 0.0).then_some(t)
    });
    assert_eq!(
        engine_time,
        (TS + 3) as f64 / 1000.0,
        "the event clock stays at the last applied event"
    );
    service.stop();

    let replayed = tempfile::tempdir().unwrap();
    let out = replay(replayed.path(), &d.join("events.ndjson"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dead_letters(&replayed.path().join("dlq.ndjson")).is_empty());
    assert!(users(&replayed.path().join("state")).contains(&"future".to_string()));
}

#[test]
fn replay_of_a_small_file_that_grew_applies_only_the_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.ndjson");
    std::fs::write(&input, events(0, 3)).unwrap();
    let out = replay(d, &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all((event("u0", TS + 10) + "\n" + &events(3, 1)).as_bytes())
        .unwrap();
    let out = replay(d, &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<(String, i64)> = dump(&d.join("state"))
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (common::user_of(l), v["tags"]["n"].as_i64().unwrap())
        })
        .collect();
    let want = [("u0", 2), ("u1", 1), ("u2", 1), ("u3", 1)].map(|(u, n)| (u.to_string(), n));
    assert_eq!(counts, want);
    // The second run's transitions are those of the appended lines only: u3 enters.
    let transitions = std::fs::read_to_string(d.join("out.ndjson")).unwrap();
    let entered: Vec<String> = transitions.lines().map(common::user_of).collect();
    assert_eq!(entered, ["u3"]);
}

#[test]
fn a_non_utf8_environment_never_panics_and_ours_is_named() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("events.ndjson"), events(0, 2)).unwrap();
    let config = run_config(d, "events.ndjson", "");
    let latin1 = || OsString::from_vec(b"caf\xe9".to_vec());
    let check = |name: &str| {
        Command::new(bin())
            .args(["check", "--config"])
            .arg(&config)
            .env_remove("TAGSTREAM_API_TOKEN")
            .env(name, latin1())
            .output()
            .unwrap()
    };
    // Someone else's variable: not ours to read.
    let out = check("LEGACY_LABEL");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One of ours: a clear error naming it, exit 1.
    let out = check("TAGSTREAM__STATE__DIR");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TAGSTREAM__STATE__DIR is not valid UTF-8") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // The service starts and serves beside a non-UTF-8 variable.
    let log = d.join("run.log");
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("TAGSTREAM_LOG", "info")
        .env("LEGACY_LABEL", latin1())
        .env_remove("TAGSTREAM_API_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut service = Service::attach(child, log);
    service.wait_for("the events to be applied", |s| {
        (s.status("/v1/users/u1") == 200).then_some(())
    });
    service.stop();
}

/// GET `path`: (status, JSON body, `Retry-After`).
fn get_json(base: &str, path: &str) -> (u16, Value, Option<String>) {
    let response = match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = response.status();
    let retry = response.header("Retry-After").map(str::to_string);
    let body = serde_json::from_str(&response.into_string().unwrap()).unwrap();
    (status, body, retry)
}

#[test]
fn explain_of_a_deep_segment_chain_is_refused_with_422_not_built() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("events.ndjson"), events(0, 2)).unwrap();
    run_config(d, "events.ndjson", "");
    // Each segment reads the one below three times: the tree of s12 has over 3^12 nodes.
    let mut rules = RULES.to_string();
    rules.push_str("[[segment]]\nname = \"s0\"\nwhen = \"n > 0\"\n");
    for i in 1..=12 {
        let p = i - 1;
        rules.push_str(&format!(
            "[[segment]]\nname = \"s{i}\"\nwhen = \"s{p} AND (s{p} OR s{p})\"\n"
        ));
    }
    std::fs::write(d.join("rules.toml"), rules).unwrap();
    let mut service = Service::start(d, "run");
    service.wait_for("the events", |s| {
        (s.status("/v1/users/u1") == 200).then_some(())
    });
    let (status, body, _) = get_json(&service.base, "/v1/users/u1/explain?segment=s12");
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"s12\""),
        "{body}"
    );
    assert_eq!(body["max_nodes"], 10_000);
    let (status, body, _) = get_json(&service.base, "/v1/users/u1/explain?segment=s2");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["member"], true);
    service.stop();
}

#[test]
fn v1_sheds_requests_beyond_max_in_flight_and_times_out_slow_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("events.ndjson"), events(0, 2)).unwrap();
    // A peer that accepts connections and never answers: every /v1 read waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream.unwrap());
            if accepted_tx.send(()).is_err() {
                return;
            }
        }
    });
    let mut cfg = std::fs::read_to_string(run_config(d, "events.ndjson", "")).unwrap();
    cfg.push_str(&format!(
        "peers = [\"{peer}\"]\nmax_in_flight = 2\nrequest_timeout = \"3s\"\n"
    ));
    std::fs::write(d.join("tagstream.toml"), cfg).unwrap();
    let service = Service::start(d, "run");
    let base = service.base.clone();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || get_json(&base, "/v1/segments"))
        })
        .collect();
    // Both requests are in flight once the peer has their fan-outs.
    accepted.recv().unwrap();
    accepted.recv().unwrap();
    let (status, body, retry) = get_json(&base, "/v1/segments");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("api.max_in_flight = 2"),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    // The open endpoints are never limited.
    assert_eq!(service.status("/healthz"), 200);
    assert_eq!(service.status("/metrics"), 200);
    for handle in slow {
        let (status, body, _) = handle.join().unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("api.request_timeout"),
            "{body}"
        );
    }
    let metrics = fetch_metrics(&base);
    let rejected = |reason: &str| {
        metrics
            .samples
            .iter()
            .find(|m| {
                m.metric == "tagstream_api_rejected_total" && m.labels.get("reason") == Some(reason)
            })
            .map(|m| m.value.clone())
    };
    assert_eq!(
        rejected("overloaded"),
        Some(prometheus_parse::Value::Counter(1.0))
    );
    assert_eq!(
        rejected("timeout"),
        Some(prometheus_parse::Value::Counter(2.0))
    );
    drop(service);
}
