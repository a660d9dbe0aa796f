//! The pipeline loop in process, without Kafka: the test is the source. It sends
//! `SourceEvent`s over the loop's channel by hand and waits only on the loop itself (revocation
//! barriers, which the loop releases once every earlier event is handled, a sink that tells
//! when it is written to, and the `Summary` the loop returns) — never on the clock.
//!
//! Covered: messages of a partition that arrive after its revocation are not applied; an offset
//! delivered twice is applied once; an outbox backlog over its bound pauses the source and
//! resumes it once delivered.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tagstream_consumer::engine::SharedEngine;
use tagstream_consumer::metrics::Metrics;
use tagstream_consumer::outbox::Origin;
use tagstream_consumer::pipeline::{self, PipelineOptions, Shutdown, Summary};
use tagstream_consumer::sink::lines::{LineSink, SyncWrite};
use tagstream_consumer::sink::{Delivery, Route};
use tagstream_consumer::source::{Batch, Control, Message, SourceEvent};
use tagstream_consumer::{ClockMode, Engine, EngineOptions};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{RocksStore, StateStore};

use common::TWO_VIEWS_RULES as RULES;

const T: i64 = 1_732_000_000_000;
const TOPIC: &str = "events";

/// A pipeline loop running on its own thread over a RocksDB store in a tempdir.
struct Running {
    tx: SyncSender<SourceEvent>,
    control: Arc<Control>,
    thread: JoinHandle<Summary>,
}

impl Running {
    fn start(state: &Path, out: &Path, dead_letters: Route, max_backlog: u64) -> Running {
        let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(state).unwrap());
        let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
        let engine = Engine::open(store, rules, RULES, EngineOptions::default()).unwrap();
        let engine = SharedEngine::new(engine);
        let metrics = Metrics::new();
        let transitions = Route::Lines(LineSink::open(out.to_str().unwrap(), false).unwrap());
        let delivery =
            Delivery::new(&engine.lock(), transitions, dead_letters, metrics.clone()).unwrap();
        let (tx, rx) = sync_channel(16);
        let control = Control::new();
        let options = PipelineOptions {
            // Engine time follows the events only: nothing here depends on the wall clock.
            clock: ClockMode::Event,
            max_backlog,
            ..PipelineOptions::default()
        };
        let thread = {
            let control = control.clone();
            std::thread::spawn(move || {
                pipeline::run(
                    engine,
                    rx,
                    control,
                    delivery,
                    None,
                    &metrics,
                    &Shutdown::new(),
                    &options,
                )
                .unwrap()
            })
        };
        Running {
            tx,
            control,
            thread,
        }
    }

    fn send(&self, event: SourceEvent) {
        self.tx.send(event).unwrap();
    }

    /// Revokes `partitions` and waits until the loop has handled every event sent before (with
    /// no partition, a pure barrier).
    fn revoke(&self, partitions: &[i32]) {
        let (done, released) = sync_channel(0);
        self.send(SourceEvent::Revoked {
            partitions: partitions.iter().map(|p| (TOPIC.to_string(), *p)).collect(),
            done,
        });
        // The loop drops `done` once the barrier is handled: the receive then fails.
        assert!(released.recv().is_err());
    }

    /// Ends the source (the channel closes) and returns what the loop did.
    fn finish(self) -> Summary {
        drop(self.tx);
        self.thread.join().unwrap()
    }
}

fn assigned(partitions: &[i32]) -> SourceEvent {
    SourceEvent::Assigned(partitions.iter().map(|p| (TOPIC.to_string(), *p)).collect())
}

/// A view of `user` read from `partition` at `offset`.
fn view(partition: i32, offset: i64, user: &str) -> Message {
    Message {
        partition: partition as u32,
        bytes: format!(
            r#"{{"user_id":"{user}","event":"view","ts":{}}}"#,
            T + offset
        )
        .into_bytes(),
        origin: Origin::Kafka {
            topic: TOPIC.into(),
            partition,
            offset,
            key: None,
        },
        fault: None,
    }
}

fn batch(messages: Vec<Message>) -> SourceEvent {
    SourceEvent::Batch(Batch::new(messages, vec![]))
}

/// `tagstream dump` of the state dir: user id -> views.
fn dumped_views(state: &Path) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    tagstream_consumer::replay::dump(state.to_str().unwrap(), None, None, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["user_id"].as_str().unwrap().to_string(),
                v["tags"]["views"].as_i64().unwrap(),
            )
        })
        .collect()
}

struct Dirs {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    out: PathBuf,
    dlq: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    Dirs {
        state: tmp.path().join("state"),
        out: tmp.path().join("out.ndjson"),
        dlq: tmp.path().join("dlq.ndjson"),
        _tmp: tmp,
    }
}

fn file_route(path: &Path) -> Route {
    Route::Lines(LineSink::open(path.to_str().unwrap(), false).unwrap())
}

#[test]
fn messages_of_a_partition_arriving_after_its_revocation_are_not_applied() {
    let d = dirs();
    let running = Running::start(&d.state, &d.out, file_route(&d.dlq), 100_000);
    running.send(assigned(&[0, 1]));
    running.send(batch(vec![view(0, 0, "a"), view(1, 0, "b")]));
    running.revoke(&[1]);
    // Polled before the revocation, handed over after it: partition 1's messages belong to its
    // new owner; partition 0's are still this instance's.
    running.send(batch(vec![
        view(1, 1, "b"),
        view(0, 1, "a"),
        view(1, 2, "late"),
    ]));
    let summary = running.finish();

    assert_eq!(summary.messages, 5);
    assert_eq!(summary.revoked, 2);
    assert_eq!(summary.skipped, 0);
    assert_eq!(
        summary.report.transitions, 1,
        "a enters viewers; b never does"
    );
    assert_eq!(
        dumped_views(&d.state),
        [("a".to_string(), 2), ("b".to_string(), 1)]
    );
    let out = std::fs::read_to_string(&d.out).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains(r#""user_id":"a""#), "{out}");
}

#[test]
fn an_offset_delivered_twice_is_applied_once() {
    let d = dirs();
    let running = Running::start(&d.state, &d.out, file_route(&d.dlq), 100_000);
    running.send(assigned(&[0]));
    // Within one batch (a redelivery right behind the original)...
    running.send(batch(vec![view(0, 0, "a"), view(0, 0, "a")]));
    running.revoke(&[]);
    // ...and in a later batch, once the first is committed (a rewind after a rebalance).
    running.send(batch(vec![view(0, 0, "a"), view(0, 1, "a")]));
    let summary = running.finish();

    assert_eq!(summary.messages, 4);
    assert_eq!(summary.skipped, 2);
    assert_eq!(summary.revoked, 0);
    assert_eq!(dumped_views(&d.state), [("a".to_string(), 2)]);
    let out = std::fs::read_to_string(&d.out).unwrap();
    assert_eq!(out.lines().count(), 1, "one enter, not two: {out}");
}

/// A line destination that blocks at its first write after its first flush until the test
/// lets it go, and says when it blocks.
struct Gate {
    out: Vec<u8>,
    flushed: bool,
    blocked: Option<SyncSender<()>>,
    release: Option<Receiver<()>>,
    lines: Arc<Mutex<usize>>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.flushed {
            if let (Some(blocked), Some(release)) = (self.blocked.take(), self.release.take()) {
                blocked.send(()).unwrap();
                release.recv().unwrap();
            }
        }
        self.out.extend_from_slice(buf);
        *self.lines.lock().unwrap() += buf.iter().filter(|b| **b == b'\n').count();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flushed = true;
        Ok(())
    }
}

impl SyncWrite for Gate {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

#[test]
fn an_outbox_backlog_over_its_bound_pauses_the_source_until_delivered() {
    // Delivery sends at most 20 000 entries per round: a larger batch leaves a backlog after
    // the first round, however fast the sink.
    const ENTRIES: usize = 25_000;
    let d = dirs();
    let (blocked_tx, blocked) = sync_channel(1);
    let (release, release_rx) = sync_channel(1);
    let lines = Arc::new(Mutex::new(0));
    let gate = Gate {
        out: Vec::new(),
        flushed: false,
        blocked: Some(blocked_tx),
        release: Some(release_rx),
        lines: lines.clone(),
    };
    let dead_letters = Route::Lines(LineSink::from_writer("gate", Box::new(gate)));
    let running = Running::start(&d.state, &d.out, dead_letters, 1_000);
    assert!(!running.control.pause_wanted());

    // Lines that are not events: every one is a dead letter in the outbox.
    let messages = (0..ENTRIES)
        .map(|i| Message {
            partition: 0,
            bytes: b"not json".to_vec(),
            origin: Origin::Line {
                source: "input".into(),
                line: i as u64 + 1,
            },
            fault: None,
        })
        .collect();
    running.send(batch(messages));

    // The first round delivered and flushed part of the backlog; the loop looked at what was
    // left and asked the source to pause before its next round, which is now held in the sink.
    blocked.recv().unwrap();
    assert!(
        running.control.pause_wanted(),
        "a backlog over max_backlog pauses the source"
    );
    let first_round = *lines.lock().unwrap();
    assert!(first_round > 0 && first_round < ENTRIES, "{first_round}");

    // Let the sink go: the rest is delivered, and the source may read again.
    release.send(()).unwrap();
    running.revoke(&[]);
    assert!(
        !running.control.pause_wanted(),
        "a delivered backlog resumes the source"
    );
    assert_eq!(*lines.lock().unwrap(), ENTRIES);

    let summary = running.finish();
    assert_eq!(summary.messages, ENTRIES as u64);
    assert_eq!(summary.report.dead_lettered(), ENTRIES as u64);
}
