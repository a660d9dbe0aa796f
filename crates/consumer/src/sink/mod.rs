//! Sinks ([`kafka`], [`lines`]) and outbox delivery: transitions and dead letters go from the
//! outbox to their sinks, and entries are deleted only once the sink has them (Kafka: the broker
//! acknowledged; files: written and flushed).
//!
//! Entries are sent in sequence order without waiting for each acknowledgement; the prefix of
//! acknowledged entries is deleted as it grows. When a delivery fails for good (librdkafka gave
//! up after its own retries and `message.timeout.ms`), sending stops, the in-flight entries
//! settle, and delivery restarts from the first failed entry after a backoff (500 ms doubling
//! to 30 s). Entries after it that had already been delivered go out again: delivery is at
//! least once, and transitions carry stable `event_id`s.
//!
//! Delivery never holds the engine lock while it writes: it reads and trims the outbox in the
//! store directly ([`crate::outbox::read_from`]), taking the lock only for an instant to learn
//! the store and the next sequence number. A sink that blocks (a full pipe, a hung disk) thus
//! stalls the pipeline thread but not the API, and `/healthz` reports the stall.
//!
//! With a changelog, delivery only goes as far as the engine released the outbox
//! ([`Delivery::release_below`]): a commit's entries wait until its changelog checkpoint is
//! published, so that no sink sees a transition that a later owner of its partition could make
//! again under another id (see [`crate::changelog`]).
//!
//! A transition larger than the sink accepts (`sink.max_message_bytes`, or a smaller limit the
//! broker answers with `MSG_SIZE_TOO_LARGE`) is cut to fit ([`fit_transition`]) rather than
//! retried forever, which would stop the outbox and then, through the backlog bound, all
//! consumption.

pub mod kafka;
pub mod lines;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use self::kafka::{is_queue_full, is_too_large, KafkaProducer};
use self::lines::LineSink;
use crate::engine::{Engine, SharedEngine};
use crate::error::Result;
use crate::kafka::{RateLimit, Rewind};
use crate::metrics::Metrics;
use crate::outbox::{self, fit_transition, OutboxEntry};

/// What a Kafka record carries besides its value and key (record and batch headers,
/// timestamps), kept out of a transition's budget.
const KAFKA_RECORD_OVERHEAD: usize = 512;

/// Default `sink.max_message_bytes`: librdkafka's `message.max.bytes` default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Where one kind of outbox entry goes.
pub enum Route {
    Kafka {
        producer: Arc<KafkaProducer>,
        topic: String,
    },
    Lines(LineSink),
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Kafka { topic, .. } => write!(f, "kafka topic {topic}"),
            Route::Lines(sink) => write!(f, "{sink:?}"),
        }
    }
}

struct Flight {
    ingested_ms: i64,
    dead_letter: bool,
}

/// Delivers the outbox. See the module documentation.
pub struct Delivery {
    transitions: Route,
    dead_letters: Route,
    producers: Vec<Arc<KafkaProducer>>,
    metrics: Metrics,
    /// Every entry below this is acknowledged (deleted).
    first_unacked: u64,
    /// The next entry to send.
    next_send: u64,
    in_flight: BTreeMap<u64, Flight>,
    /// Written to a line sink, not yet flushed: (seq, ingested_ms).
    unflushed: Vec<(u64, i64)>,
    /// Where delivery starts again after a failure, and when.
    rewind: Rewind,
    /// Dead letters the broker refused at full size: resend truncated.
    truncate: BTreeSet<u64>,
    /// The largest transition a sink takes (bytes).
    max_message_bytes: usize,
    /// Transitions refused as too large at a smaller size than `max_message_bytes`: the
    /// budget of their next attempt (halved at each refusal).
    shrink: BTreeMap<u64, usize>,
    /// Oversized transitions already counted and logged (resends are not counted again).
    oversized: BTreeSet<u64>,
    errors: RateLimit,
    max_in_flight: usize,
    /// Entries from this one on are not sent yet (None: no limit).
    release: Option<u64>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("transitions", &self.transitions)
            .field("dead_letters", &self.dead_letters)
            .field("next_send", &self.next_send)
            .finish()
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

enum SendError {
    /// Retried after a backoff.
    Kafka(KafkaError),
    /// Stops the service.
    Fatal(crate::error::ConsumerError),
}

enum Sent {
    Done,
    /// Local queue full: try again after the producer drained some.
    Full,
}

impl Delivery {
    /// Starts delivery at the first entry still in the outbox (left by an earlier run, or new).
    pub fn new(
        engine: &Engine,
        transitions: Route,
        dead_letters: Route,
        metrics: Metrics,
    ) -> Result<Delivery> {
        let first = engine
            .outbox_from(0, 1)?
            .first()
            .map(|(seq, _)| *seq)
            .unwrap_or(engine.outbox_next_seq());
        let mut producers: Vec<Arc<KafkaProducer>> = Vec::new();
        for route in [&transitions, &dead_letters] {
            if let Route::Kafka { producer, .. } = route {
                if !producers.iter().any(|p| Arc::ptr_eq(p, producer)) {
                    producers.push(producer.clone());
                }
            }
        }
        if first < engine.outbox_next_seq() {
            tracing::info!(
                entries = engine.outbox_next_seq() - first,
                "delivering outbox entries left by the previous run"
            );
        }
        Ok(Delivery {
            transitions,
            dead_letters,
            producers,
            metrics,
            first_unacked: first,
            next_send: first,
            in_flight: BTreeMap::new(),
            unflushed: Vec::new(),
            rewind: Rewind::default(),
            truncate: BTreeSet::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            shrink: BTreeMap::new(),
            oversized: BTreeSet::new(),
            errors: RateLimit::default(),
            max_in_flight: 50_000,
            release: None,
        })
    }

    /// Caps the size of a transition as delivered (`sink.max_message_bytes`).
    pub fn set_max_message_bytes(&mut self, bytes: usize) {
        self.max_message_bytes = bytes;
    }

    /// Sends only entries below `below` (those the engine released: their commits' changelog
    /// checkpoints are published). Every entry below `below` must be committed: one missing
    /// there is taken as withdrawn.
    pub fn release_below(&mut self, below: u64) {
        self.release = Some(below);
    }

    /// Whether every entry that may be sent now is acknowledged.
    fn caught_up(&self, engine: &Engine) -> bool {
        let end = engine.outbox_next_seq();
        self.first_unacked >= self.release.map_or(end, |r| r.min(end))
    }

    /// Entries not yet acknowledged.
    pub fn backlog(&self, engine: &Engine) -> u64 {
        engine.outbox_next_seq().saturating_sub(self.first_unacked)
    }

    /// Whether deliveries are in flight (the loop then pumps more often).
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Collects acknowledgements, sends what is pending, flushes line sinks, and deletes the
    /// acknowledged prefix of the outbox. Never blocks on the network; a line sink may block
    /// (a full pipe), but never with the engine locked.
    pub fn pump(&mut self, engine: &SharedEngine) -> Result<()> {
        let store = engine.lock().store().clone();
        self.pump_store(store.as_ref())
    }

    /// Entries acknowledged so far: every sequence number below this one.
    pub fn acknowledged(&self) -> u64 {
        self.first_unacked
    }

    fn pump_store(&mut self, store: &dyn tagstream_state::StateStore) -> Result<()> {
        self.recover_fatal()?;
        self.collect();
        if let Some(from) = self.rewind.resume(self.in_flight.is_empty()) {
            tracing::info!(seq = from, "retrying delivery from outbox entry {from}");
            self.next_send = from;
        }
        if self.rewind.pending().is_none() {
            self.send_pending(store)?;
        }
        self.flush_lines()?;
        let mut watermark = self.next_send;
        if let Some((&seq, _)) = self.in_flight.first_key_value() {
            watermark = watermark.min(seq);
        }
        if let Some(seq) = self.rewind.pending() {
            watermark = watermark.min(seq);
        }
        if watermark > self.first_unacked {
            outbox::acknowledge(store, self.first_unacked, watermark - 1)?;
            self.truncate = self.truncate.split_off(&watermark);
            self.shrink = self.shrink.split_off(&watermark);
            self.oversized = self.oversized.split_off(&watermark);
            self.first_unacked = watermark;
        }
        Ok(())
    }

    /// Delivers until the outbox is empty or `timeout` passes (shutdown).
    pub fn flush(&mut self, engine: &SharedEngine, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump(engine)?;
            let (backlog, caught_up) = {
                let engine = engine.lock();
                (self.backlog(&engine), self.caught_up(&engine))
            };
            if caught_up {
                if backlog > 0 {
                    tracing::warn!(backlog, "outbox entries whose changelog checkpoint is not published stay in the outbox; they are delivered on the next start once it is");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(backlog, "outbox not fully delivered at shutdown; the rest is delivered on the next start");
                return Ok(());
            }
            for p in &self.producers {
                p.flush(Duration::from_millis(20));
            }
            if self.producers.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Replaces a producer that hit a fatal error (it would fail every message forever) and
    /// resends every unacknowledged entry after the usual backoff. Duplicates are possible, as
    /// after any failure: transitions carry stable `event_id`s.
    fn recover_fatal(&mut self) -> Result<()> {
        let mut recreated = false;
        for p in &self.producers {
            let Some(reason) = p.fatal_error() else {
                continue;
            };
            self.metrics.sink_producer_fatal_errors.inc();
            tracing::error!(
                producer = p.name(),
                retry_in_ms = self.rewind.backoff().as_millis() as u64,
                "the {} kafka producer hit a fatal error ({reason}): replacing it and sending every unacknowledged outbox entry again",
                p.name()
            );
            p.recreate().map_err(|e| {
                crate::error::ConsumerError::Internal(format!("{e}: fatal producer error"))
            })?;
            recreated = true;
        }
        if recreated {
            // The old clients' outcomes are gone with them.
            self.in_flight.clear();
            self.rewind.restart_from(self.first_unacked);
        }
        Ok(())
    }

    fn collect(&mut self) {
        for i in 0..self.producers.len() {
            for (seq, result) in self.producers[i].take_results() {
                let Some(flight) = self.in_flight.remove(&seq) else {
                    continue;
                };
                match result {
                    Ok(_) => {
                        if flight.ingested_ms > 0 {
                            self.metrics.event_to_transition_seconds.observe(
                                (now_millis() - flight.ingested_ms).max(0) as f64 / 1000.0,
                            );
                        }
                        self.rewind.succeeded();
                    }
                    Err(e) => self.failed(seq, flight.dead_letter, &e),
                }
            }
        }
    }

    fn failed(&mut self, seq: u64, dead_letter: bool, e: &KafkaError) {
        let sink = if dead_letter {
            "dead_letter"
        } else {
            "transitions"
        };
        self.metrics
            .sink_delivery_errors
            .with_label_values(&[sink])
            .inc();
        if dead_letter && is_too_large(e) {
            self.truncate.insert(seq);
        }
        if !dead_letter && is_too_large(e) {
            self.shrink_budget(seq);
        }
        if let Some(retry_in) = self.rewind.failed(seq) {
            let text = format!("delivery to the {sink} sink failed: {e}");
            if self.errors.allow(&text) {
                tracing::warn!(
                    seq,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "{text}; retrying"
                );
            }
        }
    }

    fn send_pending(&mut self, store: &dyn tagstream_state::StateStore) -> Result<()> {
        let mut budget = 20_000usize;
        while budget > 0 && self.in_flight.len() < self.max_in_flight {
            if self.release.is_some_and(|r| self.next_send >= r) {
                return Ok(());
            }
            let entries = outbox::read_from(store, self.next_send, budget.min(2_000))?;
            // Every entry below the release bound is committed: one missing below it was
            // withdrawn (see `Engine::release_outbox`), so the bound is where sending resumes.
            let Some((first, _)) = entries.first() else {
                if let Some(r) = self.release {
                    self.next_send = self.next_send.max(r);
                }
                return Ok(());
            };
            if let Some(r) = self.release.filter(|r| first >= r) {
                self.next_send = self.next_send.max(r);
                return Ok(());
            }
            for (seq, entry) in entries {
                if self.release.is_some_and(|r| seq >= r) {
                    return Ok(());
                }
                match self.send(seq, &entry) {
                    Ok(Sent::Done) => {
                        self.next_send = seq + 1;
                        budget -= 1;
                    }
                    Ok(Sent::Full) => {
                        for p in &self.producers {
                            p.poll();
                        }
                        return Ok(());
                    }
                    Err(SendError::Kafka(e)) => {
                        let dead_letter = matches!(entry, OutboxEntry::DeadLetter(_));
                        self.failed(seq, dead_letter, &e);
                        return Ok(());
                    }
                    Err(SendError::Fatal(e)) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The next attempt of transition `seq` gets half its last budget.
    fn shrink_budget(&mut self, seq: u64) {
        let budget = self
            .shrink
            .get(&seq)
            .copied()
            .unwrap_or(self.max_message_bytes);
        self.shrink.insert(seq, budget / 2);
    }

    /// The transition as it fits its sink's budget, or `None` when it cannot fit at all
    /// (counted and logged, never retried).
    fn fitted<'j>(
        &mut self,
        seq: u64,
        user_id: &str,
        json: &'j str,
        kafka: bool,
    ) -> Option<std::borrow::Cow<'j, str>> {
        let mut budget = self
            .shrink
            .get(&seq)
            .copied()
            .unwrap_or(self.max_message_bytes);
        if kafka {
            budget = budget.saturating_sub(user_id.len() + KAFKA_RECORD_OVERHEAD);
        }
        let fitted = fit_transition(json, budget);
        let action = match &fitted {
            Some(std::borrow::Cow::Borrowed(_)) => return fitted,
            Some(std::borrow::Cow::Owned(_)) => "truncated",
            None => "dropped",
        };
        if !self.oversized.insert(seq) {
            return fitted;
        }
        self.metrics
            .sink_oversized_transitions
            .with_label_values(&[action])
            .inc();
        let text = format!("a transition larger than the sink accepts was {action}");
        if self.errors.allow(&text) {
            tracing::warn!(
                seq,
                bytes = json.len(),
                budget,
                "{text} (tag values cut are listed in its truncated_tags; raise sink.max_message_bytes and the topic's max.message.bytes to keep them whole)"
            );
        }
        fitted
    }

    fn send(&mut self, seq: u64, entry: &OutboxEntry) -> Result<Sent, SendError> {
        let kafka = matches!(
            (entry, &self.transitions),
            (OutboxEntry::Transition { .. }, Route::Kafka { .. })
        );
        let fitted = match entry {
            OutboxEntry::Transition { user_id, json, .. } => {
                match self.fitted(seq, user_id, json, kafka) {
                    Some(fitted) => Some(fitted),
                    // Skipped for good: consumers see the gap in the user's `seq`.
                    None => return Ok(Sent::Done),
                }
            }
            OutboxEntry::DeadLetter(_) => None,
        };
        let (route, dead_letter, ingested_ms) = match entry {
            OutboxEntry::Transition { ingested_ms, .. } => {
                (&mut self.transitions, false, *ingested_ms)
            }
            OutboxEntry::DeadLetter(_) => (&mut self.dead_letters, true, 0),
        };
        match route {
            Route::Kafka { producer, topic } => {
                let result = match (entry, &fitted) {
                    (OutboxEntry::Transition { user_id, .. }, Some(json)) => {
                        producer.send_transition(seq, topic, user_id, json)
                    }
                    (OutboxEntry::Transition { .. }, None) => return Ok(Sent::Done),
                    (OutboxEntry::DeadLetter(dl), _) => {
                        producer.send_dead_letter(seq, topic, dl, self.truncate.contains(&seq))
                    }
                };
                match result {
                    Ok(()) => {
                        self.in_flight.insert(
                            seq,
                            Flight {
                                ingested_ms,
                                dead_letter,
                            },
                        );
                        Ok(Sent::Done)
                    }
                    Err(e) if is_queue_full(&e) => Ok(Sent::Full),
                    Err(e) if dead_letter && is_too_large(&e) && !self.truncate.contains(&seq) => {
                        // Over the producer's message.max.bytes: keep the first 64 KiB.
                        self.truncate.insert(seq);
                        Ok(Sent::Full)
                    }
                    Err(e) if !dead_letter && is_too_large(&e) => {
                        // Over the producer's own message.max.bytes: send it again smaller.
                        self.shrink_budget(seq);
                        Ok(Sent::Full)
                    }
                    Err(e) => Err(SendError::Kafka(e)),
                }
            }
            Route::Lines(sink) => {
                let line = match (entry, fitted) {
                    (_, Some(json)) => json,
                    (OutboxEntry::DeadLetter(dl), None) => {
                        std::borrow::Cow::Owned(dl.to_file_line())
                    }
                    (OutboxEntry::Transition { .. }, None) => return Ok(Sent::Done),
                };
                // File errors are not retried: they stop the service (exit 2) with the path.
                sink.write_line(&line).map_err(SendError::Fatal)?;
                self.unflushed.push((seq, ingested_ms));
                Ok(Sent::Done)
            }
        }
    }

    fn flush_lines(&mut self) -> Result<()> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        for route in [&mut self.transitions, &mut self.dead_letters] {
            if let Route::Lines(sink) = route {
                sink.flush()?;
            }
        }
        let now = now_millis();
        for (_, ingested) in self.unflushed.drain(..) {
            if ingested > 0 {
                self.metrics
                    .event_to_transition_seconds
                    .observe((now - ingested).max(0) as f64 / 1000.0);
            }
        }
        Ok(())
    }
}
