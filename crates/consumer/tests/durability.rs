//! `state.sync = "batch"`: the write-ahead log is fsync'd after each engine commit, before the
//! outbox entries it wrote go out, and a file sink syncs its lines before their outbox entries
//! are deleted. A real RocksDB and a real file, each behind a wrapper that records, in one
//! shared log, the order in which commits, syncs, writes and acknowledgements happen.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tagstream_consumer::engine::SharedEngine;
use tagstream_consumer::metrics::Metrics;
use tagstream_consumer::outbox::Origin;
use tagstream_consumer::sink::lines::{LineSink, SyncWrite};
use tagstream_consumer::sink::{Delivery, Route};
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
mod common;

use common::{Hooked, Hooks};
use tagstream_state::{Cf, Op, RocksStore, StoreError, WriteBatch};

const RULES: &str = r#"
[[tag]]
name = "views"
kind = "count"
event = "view"

[[segment]]
name = "viewers"
when = "views >= 1"
"#;

const T: i64 = 1_732_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A commit that adds outbox entries.
    Commit,
    /// A commit that deletes delivered outbox entries.
    Ack,
    WalSync,
    SinkWrite,
    SinkSync,
}

type Log = Arc<Mutex<Vec<Step>>>;

fn record(log: &Log, step: Step) {
    let mut log = log.lock().unwrap();
    // Consecutive writes are one step: the order is what matters.
    if !(step == Step::SinkWrite && log.last() == Some(&Step::SinkWrite)) {
        log.push(step);
    }
}

/// Records commits (adding or acknowledging outbox entries) and syncs of the state store.
struct RecordSteps {
    log: Log,
}

impl Hooks for RecordSteps {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let ops = batch.ops();
        if ops.iter().any(|op| {
            matches!(
                op,
                Op::DeleteRange(Cf::Outbox, ..) | Op::Delete(Cf::Outbox, ..)
            )
        }) {
            record(&self.log, Step::Ack);
        } else if ops.iter().any(|op| matches!(op, Op::Put(Cf::Outbox, ..))) {
            record(&self.log, Step::Commit);
        }
        Ok(())
    }

    fn sync(&self) {
        record(&self.log, Step::WalSync);
    }
}

struct RecordingFile {
    file: File,
    log: Log,
}

impl Write for RecordingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        record(&self.log, Step::SinkWrite);
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl SyncWrite for RecordingFile {
    fn sync(&mut self) -> std::io::Result<()> {
        record(&self.log, Step::SinkSync);
        self.file.sync()
    }
}

/// Applies two batches (transitions and a dead letter) and delivers them to file sinks;
/// returns the recorded steps and the metrics.
fn run(dir: &std::path::Path, sync: bool) -> (Vec<Step>, Metrics) {
    let log: Log = Arc::default();
    let store = Hooked {
        inner: RocksStore::open(&dir.join("state")).unwrap(),
        hooks: RecordSteps { log: log.clone() },
    };
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let options = EngineOptions {
        sync,
        ..EngineOptions::default()
    };
    let mut engine = Engine::open(Arc::new(store), rules, RULES, options).unwrap();
    let metrics = Metrics::new();
    engine.set_metrics(metrics.clone());
    let sink = |name: &str| {
        let file = File::create(dir.join(name)).unwrap();
        let out = RecordingFile {
            file,
            log: log.clone(),
        };
        Route::Lines(LineSink::from_writer(name, Box::new(out)).sync_on_flush(sync))
    };
    let mut delivery = Delivery::new(
        &engine,
        sink("transitions.ndjson"),
        sink("dlq.ndjson"),
        metrics.clone(),
    )
    .unwrap();
    let shared = SharedEngine::new(engine);
    for batch in 0..2 {
        let lines = [
            format!(r#"{{"user_id":"u{batch}","event":"view","ts":{T}}}"#),
            "not json".to_string(),
        ];
        let records: Vec<Record<'_>> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Record {
                partition: 0,
                bytes: l.as_bytes(),
                origin: Origin::Line {
                    source: "t".into(),
                    line: i as u64 + 1,
                },
                fault: None,
            })
            .collect();
        shared.lock().process(&records, &[]).unwrap();
        delivery.pump(&shared).unwrap();
    }
    assert_eq!(delivery.backlog(&shared.lock()), 0);
    let steps = log.lock().unwrap().clone();
    let transitions = std::fs::read_to_string(dir.join("transitions.ndjson")).unwrap();
    assert_eq!(transitions.lines().count(), 2, "{transitions}");
    (steps, metrics)
}

fn syncs_total(metrics: &Metrics) -> u64 {
    metrics.state_syncs.get()
}

#[test]
fn batch_sync_makes_commits_and_sink_lines_durable_before_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let (steps, metrics) = run(dir.path(), true);
    use Step::*;
    assert_eq!(
        steps,
        [
            Commit, WalSync, SinkWrite, SinkSync, SinkSync, Ack, Commit, WalSync, SinkWrite,
            SinkSync, SinkSync, Ack
        ],
        "each commit is synced before its entries are written, and both sinks are synced \
         before the entries are acknowledged"
    );
    assert_eq!(syncs_total(&metrics), 2);
    assert!(metrics.render().contains("tagstream_state_syncs_total 2"));
}

#[test]
fn sync_none_never_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (steps, metrics) = run(dir.path(), false);
    use Step::*;
    assert_eq!(
        steps,
        [Commit, SinkWrite, Ack, Commit, SinkWrite, Ack],
        "no sync of either kind"
    );
    assert_eq!(syncs_total(&metrics), 0);
}
