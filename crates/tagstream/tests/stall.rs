//! A sink that blocks (a FIFO nobody reads) stalls the pipeline but not the API: `/v1` keeps
//! answering, `/healthz` turns 503 after `api.stall_after`, and once the FIFO is read delivery
//! resumes, every transition arrives and `/healthz` is 200 again.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fetch_metrics, spawn_run};
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

/// Users, each entering `seen` once: far more transition bytes than a pipe holds (64 KiB).
const USERS: usize = 3000;

fn wait_for<T>(what: &str, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(base: &str, path: &str) -> (u16, Value) {
    let response = match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[test]
fn a_blocked_sink_keeps_the_api_serving_and_healthz_reports_the_stall() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("out.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Held open for reading (read-write, so opening never blocks) but not read: once the pipe
    // is full, the sink's write blocks.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    std::fs::write(d.join("rules.toml"), RULES).unwrap();
    let events: String = (0..USERS)
        .map(|i| {
            format!(
                "{{\"user_id\":\"user-{i:05}\",\"event\":\"view\",\"ts\":{}}}\n",
                1_732_000_000_000i64 + i as i64
            )
        })
        .collect();
    std::fs::write(d.join("events.ndjson"), events).unwrap();
    std::fs::write(
        d.join("tagstream.toml"),
        "rules = \"rules.toml\"\n[source]\nkind = \"file\"\npath = \"events.ndjson\"\nfollow = true\n\
         [sink]\nkind = \"file\"\npath = \"out.fifo\"\n[dead_letter]\nkind = \"file\"\npath = \"dlq.ndjson\"\n\
         [state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nstall_after = \"1s\"\n",
    )
    .unwrap();
    let log = d.join("log.txt");
    let mut child = spawn_run(&d.join("tagstream.toml"), &log);
    let addr = wait_for("the api to listen", &log, || common::api_address(&log));
    let base = format!("http://{addr}");

    let stalled = wait_for("/healthz to report the stall", &log, || {
        let (status, body) = get(&base, "/healthz");
        (status == 503).then_some(body)
    });
    assert!(stalled["stalled_seconds"].as_u64().is_some(), "{stalled}");
    assert!(
        stalled["error"].as_str().unwrap().contains("stalled"),
        "{stalled}"
    );
    // The engine is not locked by the blocked write: reads answer, with every user applied.
    let (status, segments) = get(&base, "/v1/segments");
    assert_eq!(status, 200, "{segments}");
    let (status, user) = get(&base, "/v1/users/user-00000");
    assert_eq!(status, 200, "{user}");
    let scrape = fetch_metrics(&base);
    let age = common::metric_sum(&scrape, "tagstream_pipeline_last_progress_seconds");
    assert!(
        age >= 1.0,
        "tagstream_pipeline_last_progress_seconds = {age}"
    );

    // Reading the FIFO unblocks delivery.
    let lines = Arc::new(AtomicUsize::new(0));
    let counted = lines.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut buf) {
            let newlines = buf[..n].iter().filter(|b| **b == b'\n').count();
            counted.fetch_add(newlines, Ordering::SeqCst);
        }
    });
    wait_for("every transition to be delivered", &log, || {
        (lines.load(Ordering::SeqCst) >= USERS).then_some(())
    });
    wait_for("/healthz to recover", &log, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        (get(&base, "/healthz").0 == 200).then_some(())
    });
    assert_eq!(lines.load(Ordering::SeqCst), USERS);

    common::sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
