//! Sources: what reads input and hands it to the engine thread.
//!
//! Every source runs on a thread of its own and hands [`SourceEvent`]s to the engine thread
//! (the loop of [`crate::pipeline`]) over a bounded channel: batches of [`Message`]s, partition
//! assignments and revocation barriers, and changelog snapshots of partitions being assigned.
//! [`Control`] is what the two threads share: stop and pause requests, offsets to commit to the
//! consumer group, watermarks, failures and progress.
//!
//! - [`kafka`]: the consumer-group source.
//! - [`lines`]: the file and stdin sources of `run`, over the one NDJSON [`line_reader`] that
//!   `replay` reads with too.

pub mod kafka;
pub mod line_reader;
pub mod lines;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::changelog::Snapshot;
use crate::engine::SourceFault;
use crate::outbox::Origin;

pub use lines::{start_lines, LinesConfig};

/// One input message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Engine partition (the Kafka partition number; 0 for files and stdin).
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub origin: Origin,
    /// The source could hand over only part of the message (a line over `max_event_bytes`, an
    /// unreadable input).
    pub fault: Option<SourceFault>,
}

/// Messages read together, plus extra input positions to commit with them (file sources; Kafka
/// positions are derived from the messages' origins).
#[derive(Debug)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub positions: Vec<(Vec<u8>, Vec<u8>)>,
    /// When the source read the batch (for `tagstream_ingest_to_commit_seconds`).
    pub received: Instant,
}

impl Batch {
    pub fn new(messages: Vec<Message>, positions: Vec<(Vec<u8>, Vec<u8>)>) -> Batch {
        Batch {
            messages,
            positions,
            received: Instant::now(),
        }
    }

    /// Appends a later batch: its messages after these, its positions after these (a later
    /// position of the same input overwrites an earlier one in the commit).
    pub(crate) fn absorb(&mut self, later: Batch) {
        self.messages.extend(later.messages);
        self.positions.extend(later.positions);
        self.received = self.received.min(later.received);
    }
}

/// What a source hands to the engine thread.
#[derive(Debug)]
pub enum SourceEvent {
    Batch(Batch),
    /// These (topic, partition) pairs are now owned by this instance.
    Assigned(Vec<(String, i32)>),
    /// These are being taken away: the engine thread has committed every earlier batch once it
    /// receives this; it then drops `done` to release the source.
    Revoked {
        partitions: Vec<(String, i32)>,
        done: SyncSender<()>,
    },
    /// What the changelog holds for a partition being assigned, read before the partition is
    /// positioned: the engine thread restores the partition from it when it is newer than the
    /// local state, then drops `done` (the source then reads the partition's stored offsets).
    Changelog {
        snapshot: Snapshot,
        done: SyncSender<()>,
    },
}

/// State shared between the engine thread and a source thread.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    /// Offsets to commit to the consumer group, by (topic, partition).
    commits: Mutex<BTreeMap<(String, i32), i64>>,
    /// (low, high) watermarks by (topic, partition), from the client's statistics.
    pub watermarks: Mutex<HashMap<(String, i32), (i64, i64)>>,
    failure: Mutex<Option<String>>,
    /// Input partitions owned now (readiness: at least one).
    pub(crate) assigned: AtomicUsize,
    /// Wall-clock ms when the pipeline last made progress or had nothing pending (0: not
    /// started). Written by the engine thread, read by `/healthz` and `/metrics`, which keep
    /// answering while that thread is blocked.
    last_progress_ms: AtomicI64,
    /// `api.stall_after` in ms (0: stalls are not reported).
    stall_after_ms: AtomicI64,
    /// The current stall was logged (once per stall; reset by progress).
    stall_logged: AtomicBool,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control::default())
    }

    /// Asks the source to stop reading and close.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn set_pause(&self, pause: bool) {
        self.pause.store(pause, Ordering::SeqCst);
    }

    pub fn pause_wanted(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    /// Queues offsets to commit to the consumer group (for lag reporting only).
    pub fn add_commits(&self, offsets: &BTreeMap<(String, i32), i64>) {
        if let Ok(mut c) = self.commits.lock() {
            for (k, v) in offsets {
                c.insert(k.clone(), *v);
            }
        }
    }

    /// Offsets stored since the last call.
    pub fn take_commits(&self) -> BTreeMap<(String, i32), i64> {
        self.commits
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    /// Reports an internal failure from a source thread: the pipeline stops without committing
    /// anything further.
    pub fn fail(&self, message: String) {
        tracing::error!("{message}");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(message);
        }
    }

    /// Whether this instance owns input partitions (what `/readyz` reports, with the state
    /// being open, which it is whenever the pipeline runs).
    pub fn ready(&self) -> bool {
        self.assigned.load(Ordering::SeqCst) > 0
    }

    /// Records that the pipeline made progress (a batch committed, outbox entries acknowledged)
    /// or has nothing pending.
    pub fn progressed(&self) {
        self.last_progress_ms.store(now_millis(), Ordering::SeqCst);
        if self.stall_logged.swap(false, Ordering::Relaxed) {
            tracing::info!("the pipeline makes progress again");
        }
    }

    /// How long since the pipeline last made progress or had nothing pending (zero before it
    /// started).
    pub fn since_progress(&self) -> Duration {
        match self.last_progress_ms.load(Ordering::SeqCst) {
            0 => Duration::ZERO,
            last => Duration::from_millis(now_millis().saturating_sub(last).max(0) as u64),
        }
    }

    /// Reports a stall once [`Control::since_progress`] exceeds `after` (None: never).
    pub fn set_stall_after(&self, after: Option<Duration>) {
        let ms = after.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64);
        self.stall_after_ms.store(ms, Ordering::SeqCst);
    }

    /// How long the pipeline has been stalled, when longer than the configured stall time
    /// (asked by `/healthz` and at each scrape, which log a stall once: the stalled thread
    /// itself cannot).
    pub fn stalled(&self) -> Option<Duration> {
        let after = self.stall_after_ms.load(Ordering::SeqCst);
        let since = self.since_progress();
        let stalled = after > 0 && since > Duration::from_millis(after as u64);
        if stalled && !self.stall_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                stalled_s = since.as_secs(),
                "the pipeline has had work pending without progress for longer than api.stall_after (a blocked sink write, a stuck consumer, a sink that stays down): /healthz answers 503"
            );
        }
        stalled.then_some(since)
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
