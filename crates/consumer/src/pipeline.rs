//! The run loop of `tagstream run`: source → engine → outbox → sinks.
//!
//! One engine thread (the caller of [`run`]) owns the [`Engine`]. Sources run on their own
//! threads and hand [`SourceEvent`]s over a bounded channel: batches of messages, partition
//! assignments, and revocation barriers (the Kafka rebalance callback waits until every batch
//! handed over before the barrier is committed). For each batch the loop
//!
//! 1. drops messages below the offset already stored for their partition (never twice),
//! 2. calls [`Engine::process`], which commits state, timers, outbox entries and the input
//!    positions in one atomic write,
//! 3. queues the stored offsets for an asynchronous commit to the consumer group (lag only),
//! 4. pumps the staged changelog records to the changelog topic ([`Publisher`]) and the outbox
//!    to the sinks ([`Delivery`]): entries are deleted once acknowledged. With a changelog, the
//!    outbox goes only as far as the published checkpoints allow (see [`crate::changelog`]:
//!    this is what keeps transition ids from ever changing).
//!
//! Partitions: on assignment the source hands over each partition's changelog snapshot
//! ([`SourceEvent::Changelog`]) before it positions the partition; the loop restores the
//! partition from it when the snapshot is newer than the local state. Messages of a partition
//! not assigned (any more) are dropped: a batch polled before a revocation is never applied
//! after it, so an instance that lost a partition writes nothing more for it. On revocation
//! the changelog is published before the partition is released (what cannot be published in
//! time is dropped: the new owner continues from the last published checkpoint).
//!
//! Around that: clock ticks (wall mode: every assigned partition's engine time follows the
//! system clock, so timers fire without events; event mode: due timers left over by bounded
//! batches are fired; a tick fires at most [`TIMERS_PER_TICK`] and the next turn ticks again,
//! so a mass expiry is fired in slices with the batches that arrive meanwhile applied between
//! them), backpressure (consumption pauses while the outbox backlog is at its
//! bound), and shutdown (stop polling, finish the batch in hand, flush the outbox, leave the
//! group).
//!
//! [`Engine`]: crate::engine::Engine
//! [`Engine::process`]: crate::engine::Engine::process

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tagstream_state::Cf;

use crate::changelog::{Publisher, Snapshot};
use crate::engine::{BatchReport, ClockMode, Record, SharedEngine};
use crate::error::{ConsumerError, Result};
use crate::metrics::Metrics;
use crate::outbox::Origin;
use crate::schema::{decode_offset, encode_offset, offsets_key};
use crate::sink::Delivery;
use crate::source::{now_millis, Batch, Control, SourceEvent};

/// At most this many messages are merged into one engine batch by [`coalesce`].
const MAX_COALESCED: usize = 16_384;

/// Merges the batches queued behind `batch` into it, in order, stopping at the first event that
/// is not a batch (returned, to be handled next, after the merged batch is committed).
///
/// Sources hand over a batch as soon as a poll finds nothing more, so that a lone event is
/// applied at once. While the engine thread is busy (a commit, an fsync with `state.sync =
/// "batch"`), such small batches queue up; committing them one by one would pay the per-commit
/// cost (and an fsync) for each, and the last would wait for all of them. Merged, they cost one
/// commit. Batch boundaries do not change results: the engine applies messages in order either
/// way.
fn coalesce(mut batch: Batch, rx: &Receiver<SourceEvent>) -> (Batch, Option<SourceEvent>) {
    while batch.messages.len() < MAX_COALESCED {
        match rx.try_recv() {
            Ok(SourceEvent::Batch(later)) => batch.absorb(later),
            Ok(other) => return (batch, Some(other)),
            Err(_) => break,
        }
    }
    (batch, None)
}

/// A shutdown request: the stop flag the loop reads (set by the binary's signal handlers, or a
/// test).
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub clock: ClockMode,
    /// Clock tick period (wall mode: how often engine time follows the system clock).
    pub tick: Duration,
    /// Consumption pauses when this many outbox entries await delivery; it resumes at half.
    pub max_backlog: u64,
    /// On shutdown, how long to keep delivering the outbox before giving up (entries stay in
    /// the outbox for the next start).
    pub flush_timeout: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            clock: ClockMode::Wall,
            tick: Duration::from_secs(1),
            max_backlog: 100_000,
            flush_timeout: Duration::from_secs(30),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub report: BatchReport,
    pub messages: u64,
    /// Messages dropped because their offset was already applied.
    pub skipped: u64,
    /// Messages dropped because their partition was no longer assigned.
    pub revoked: u64,
}

fn internal(message: String) -> ConsumerError {
    ConsumerError::Internal(format!("{message}: pipeline stopped"))
}

struct Loop<'a> {
    engine: SharedEngine,
    delivery: Delivery,
    metrics: &'a Metrics,
    control: Arc<Control>,
    options: &'a PipelineOptions,
    assigned: BTreeSet<(String, i32)>,
    next_offsets: HashMap<(String, i32), i64>,
    /// Event mode: partitions whose clock moved, or that were assigned, since the last tick.
    touched: BTreeSet<u32>,
    paused: bool,
    /// Some assigned partition had input lag at the last look at the watermarks.
    lagging: bool,
    summary: Summary,
    changelog: Option<Publisher>,
}

/// How long a revocation waits for the changelog of the revoked partitions to be published.
const REVOKE_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many due timers fire per loop turn (split over the owned partitions), about
/// 50 ms of work on this project's 2-core benchmark machine: a midnight roll of a million users
/// is fired a slice at a time, with the batches that arrive meanwhile applied between slices.
pub const TIMERS_PER_TICK: usize = 2_000;

/// At most this many due timers fire per partition in one batch of events, the service's
/// [`EngineOptions::timers_per_batch`](crate::engine::EngineOptions): a batch touching four
/// partitions during a mass expiry does about one tick's share. (`bench_kafka --roll-users
/// 100000`: new users' p50 during the roll 363–501 ms with 2,000 here, 176–200 ms with 500;
/// the roll itself 1.6–1.7 s against 2.0–2.3 s.)
pub const TIMERS_PER_BATCH_PARTITION: usize = 500;

/// Runs until the source ends (after `shutdown` is triggered; a file or stdin source at its end
/// keeps waiting) and returns what was done. Errors are internal failures: nothing further is committed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    engine: SharedEngine,
    rx: Receiver<SourceEvent>,
    control: Arc<Control>,
    delivery: Delivery,
    changelog: Option<Publisher>,
    metrics: &Metrics,
    shutdown: &Shutdown,
    options: &PipelineOptions,
) -> Result<Summary> {
    let mut l = Loop {
        engine,
        delivery,
        metrics,
        control: control.clone(),
        options,
        assigned: BTreeSet::new(),
        next_offsets: HashMap::new(),
        touched: BTreeSet::new(),
        paused: false,
        lagging: false,
        summary: Summary::default(),
        changelog,
    };
    control.progressed();
    // Queries answer for assigned partitions only, and none is assigned yet.
    l.engine.lock().set_owned(Some(BTreeSet::new()));
    let result = l.main(&rx, shutdown);
    if result.is_err() {
        // Release the source: stop it and unblock its sends and barriers.
        control.stop();
        drop(rx);
        return result.map(|_| Summary::default());
    }
    drop(rx);
    if options.clock == ClockMode::Event {
        // The last batches' due timers would otherwise wait for the next start.
        let owned = l.partitions();
        l.fire_due_timers(&owned)?;
    }
    control.assigned.store(0, Ordering::SeqCst);
    metrics.ready.set(0);
    // The changelog first: the outbox goes to the sink only as far as it is published.
    if let Some(c) = l.changelog.as_mut() {
        let engine = l.engine.lock();
        if !c.flush(&engine, options.flush_timeout)? {
            tracing::warn!(
                "changelog not fully published at shutdown; the rest is published on the next start"
            );
        }
    }
    l.pump_changelog()?;
    l.delivery.flush(&l.engine, options.flush_timeout)?;
    // What the sink took since the last checkpoints gets its tombstones, so that the next owner
    // of a partition does not deliver it again.
    if let Some(c) = l.changelog.as_mut() {
        let mut engine = l.engine.lock();
        engine.note_delivered(l.delivery.acknowledged());
        if engine.settle_delivered(None)? > 0 {
            c.flush(&engine, options.flush_timeout.min(Duration::from_secs(5)))?;
        }
    }
    let store = l.engine.lock().store().clone();
    store.sync()?;
    l.gauges(true)?;
    Ok(l.summary)
}

impl Loop<'_> {
    fn main(&mut self, rx: &Receiver<SourceEvent>, shutdown: &Shutdown) -> Result<()> {
        let mut stopping = false;
        let mut next_tick = Instant::now();
        let mut next_slow = Instant::now();
        // An event received while coalescing batches, handled before anything else.
        let mut deferred: Option<SourceEvent> = None;
        loop {
            if let Some(message) = self.control.failure() {
                return Err(internal(message));
            }
            if shutdown.triggered() && !stopping {
                stopping = true;
                self.control.stop();
                tracing::info!("stopping: no more polling; finishing the batches in hand");
            }
            // While acknowledgements are awaited the loop turns every 2 ms: the changelog's
            // acknowledgement releases delivery, so this wait is part of every transition's
            // latency (5 ms: p99 +10 ms at 2,000 events/s in bench_kafka).
            let idle =
                if self.delivery.busy() || self.changelog.as_ref().is_some_and(Publisher::busy) {
                    Duration::from_millis(2)
                } else {
                    Duration::from_millis(100)
                };
            let wait = idle.min(next_tick.saturating_duration_since(Instant::now()));
            let received = match deferred.take() {
                Some(event) => Ok(event),
                None => rx.recv_timeout(wait),
            };
            match received {
                Ok(SourceEvent::Batch(batch)) => {
                    let (batch, next) = coalesce(batch, rx);
                    deferred = next;
                    self.batch(batch)?;
                }
                Ok(SourceEvent::Assigned(parts)) => {
                    tracing::info!(partitions = ?parts, "partitions assigned");
                    // Event mode: timers that became due in a partition's last batch fire at the
                    // next tick; after a restart that tick must still come, events or not.
                    self.touched.extend(parts.iter().map(|(_, p)| *p as u32));
                    self.engine
                        .lock()
                        .mark_assigned(&parts.iter().map(|(_, p)| *p as u32).collect())?;
                    self.assigned.extend(parts);
                    self.publish_assignment();
                    if let Some(c) = self.changelog.as_mut() {
                        c.release_held(&mut self.engine.lock())?;
                    }
                }
                Ok(SourceEvent::Revoked { partitions, done }) => {
                    // Every earlier batch is committed (they were processed in order). Timers
                    // already due at the partitions' engine time fire before they are released,
                    // so the state handed over is complete at that time.
                    if self.options.clock == ClockMode::Event {
                        let revoked: BTreeSet<u32> =
                            partitions.iter().map(|(_, p)| *p as u32).collect();
                        self.fire_due_timers(&revoked)?;
                    }
                    for p in &partitions {
                        self.assigned.remove(p);
                        self.next_offsets.remove(p);
                        self.metrics.forget_partition(&p.0, p.1);
                    }
                    self.publish_assignment();
                    self.release_changelog(&partitions)?;
                    // A shutdown's revocation is no loss: the instance expects them back.
                    if !self.control.stopping() {
                        let owned = self.partitions();
                        let released = partitions
                            .iter()
                            .map(|(_, p)| *p as u32)
                            .filter(|p| !owned.contains(p))
                            .collect();
                        self.engine.lock().mark_released(&released)?;
                    }
                    drop(done);
                }
                Ok(SourceEvent::Changelog { snapshot, done }) => {
                    self.restore(snapshot)?;
                    drop(done);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let acknowledged = self.delivery.acknowledged();
            self.pump_changelog()?;
            self.delivery.pump(&self.engine)?;
            let backlog = self.backpressure();
            if self.delivery.acknowledged() > acknowledged || (backlog == 0 && !self.lagging) {
                self.control.progressed();
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.options.tick;
                if !stopping && self.tick()? {
                    // Timers still due: the next turn ticks again, once what arrived is in.
                    next_tick = Instant::now();
                }
                let slow = now >= next_slow;
                if slow {
                    next_slow = now + Duration::from_secs(15);
                }
                self.gauges(slow)?;
            }
        }
    }

    /// Publishes staged changelog records, then lets delivery go as far as the published
    /// checkpoints allow, and reports what the sink has taken (its transitions' changelog
    /// records get tombstones).
    fn pump_changelog(&mut self) -> Result<()> {
        let Some(c) = self.changelog.as_mut() else {
            return Ok(());
        };
        let mut engine = self.engine.lock();
        c.pump(&engine)?;
        let release = engine.release_outbox(c.published_below());
        engine.note_delivered(self.delivery.acknowledged());
        self.delivery.release_below(release);
        Ok(())
    }

    fn publish_assignment(&self) {
        self.engine.lock().set_owned(Some(self.partitions()));
        self.control
            .assigned
            .store(self.assigned.len(), Ordering::SeqCst);
        self.metrics.ready.set(i64::from(!self.assigned.is_empty()));
    }

    /// Publishes what is staged for the revoked partitions that no topic of this instance
    /// still holds, then forgets what could not be published in time.
    fn release_changelog(&mut self, revoked: &[(String, i32)]) -> Result<()> {
        let Some(publisher) = self.changelog.as_mut() else {
            return Ok(());
        };
        let owned = self
            .assigned
            .iter()
            .map(|(_, p)| *p as u32)
            .collect::<BTreeSet<_>>();
        let released: Vec<u32> = revoked
            .iter()
            .map(|(_, p)| *p as u32)
            .filter(|p| !owned.contains(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if released.is_empty() {
            return Ok(());
        }
        let mut engine = self.engine.lock();
        engine.note_delivered(self.delivery.acknowledged());
        engine.settle_delivered(Some(&released))?;
        publisher.flush(&engine, REVOKE_PUBLISH_TIMEOUT)?;
        // What is published now may still go to the sink; the rest of the released partitions'
        // transitions is withdrawn with their changelog records.
        engine.release_outbox(publisher.published_below());
        publisher.drop_partitions(&mut engine, &released)
    }

    /// Restores a partition being assigned from its changelog snapshot when that is newer than
    /// the local state; publishes the local state in full when the changelog has none of it.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        let started = Instant::now();
        let p = snapshot.partition;
        let mut engine = self.engine.lock();
        if let Some(c) = self.changelog.as_mut() {
            c.confirm(p);
        }
        let local = engine.changelog_serial(p);
        // A checkpoint this store did not write means another owner's history: restored even
        // at a serial not above the local one (a stale copy whose unpublished commits forked).
        let foreign = match &snapshot.checkpoint {
            Some(c) if snapshot.complete && c.serial <= local => {
                !engine.holds_checkpoint(p, c, snapshot.checkpoint_offset)?
            }
            _ => false,
        };
        match &snapshot.checkpoint {
            Some(checkpoint) if checkpoint.serial > local || foreign => {
                let users = engine.restore_partition(&snapshot)?;
                self.next_offsets
                    .retain(|(_, q), _| u32::try_from(*q).ok() != Some(p));
                let seconds = (snapshot.read_in + started.elapsed()).as_secs_f64();
                self.metrics.changelog_restores.inc();
                self.metrics
                    .changelog_restore_records
                    .inc_by(snapshot.records);
                self.metrics.changelog_restore_seconds.observe(seconds);
                tracing::info!(
                    partition = p,
                    records = snapshot.records,
                    bytes = snapshot.bytes,
                    users,
                    undelivered_transitions = snapshot.transitions.len(),
                    ignored_after_checkpoint = snapshot.ignored,
                    serial = checkpoint.serial,
                    local_serial = local,
                    offsets = ?checkpoint.offsets,
                    seconds,
                    "partition restored from the changelog"
                );
            }
            Some(checkpoint) => tracing::info!(
                partition = p,
                serial = checkpoint.serial,
                local_serial = local,
                changelog_read = snapshot.complete,
                "local state of the partition is as recent as the changelog: not restored"
            ),
            None if engine.has_partition_state(p)? => {
                let users = engine.publish_partition(p)?;
                tracing::info!(
                    partition = p,
                    users,
                    "the changelog has no checkpoint of this partition: publishing its local state"
                );
            }
            None => {}
        }
        Ok(())
    }

    fn batch(&mut self, batch: Batch) -> Result<()> {
        let engine = self.engine.clone();
        let mut engine = engine.lock();
        let mut records = Vec::with_capacity(batch.messages.len());
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        self.summary.messages += batch.messages.len() as u64;
        for m in &batch.messages {
            if let Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            } = &m.origin
            {
                let key = (topic.clone(), *partition);
                if !self.assigned.contains(&key) {
                    // Polled before the partition was revoked: its new owner applies it.
                    self.summary.revoked += 1;
                    continue;
                }
                let next = match self.next_offsets.get(&key) {
                    Some(n) => Some(*n),
                    None => engine
                        .store()
                        .get(Cf::Offsets, &offsets_key(topic, *partition))?
                        .as_deref()
                        .and_then(decode_offset),
                };
                if next.is_some_and(|n| *offset < n) {
                    self.summary.skipped += 1;
                    continue;
                }
                self.next_offsets.insert(key.clone(), offset + 1);
                offsets.insert(key, offset + 1);
            }
            records.push(Record {
                partition: m.partition,
                bytes: &m.bytes,
                origin: m.origin.clone(),
                fault: m.fault.clone(),
            });
        }
        let mut positions = batch.positions;
        positions.extend(
            offsets
                .iter()
                .map(|((t, p), next)| (offsets_key(t, *p), encode_offset(*next))),
        );
        if records.is_empty() && positions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let report = engine.process(&records, &positions)?;
        self.metrics
            .batch_apply_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .ingest_to_commit_seconds
            .observe(batch.received.elapsed().as_secs_f64());
        self.metrics.record_batch(&report);
        self.summary.report.merge(&report);
        self.control.add_commits(&offsets);
        self.control.progressed();
        for r in &records {
            self.touched.insert(r.partition);
        }
        Ok(())
    }

    /// Engine partitions owned now.
    fn partitions(&self) -> BTreeSet<u32> {
        self.assigned.iter().map(|(_, p)| *p as u32).collect()
    }

    /// Moves the engine time of the owned partitions on and fires what is due, at most
    /// [`TIMERS_PER_TICK`] timers per turn. Returns whether timers that are due remain: the
    /// loop then ticks again on its next turn, after the batches that arrived meanwhile.
    fn tick(&mut self) -> Result<bool> {
        let engine = self.engine.clone();
        let mut engine = engine.lock();
        let partitions: Vec<u32> = match self.options.clock {
            ClockMode::Wall => self.partitions().into_iter().collect(),
            // Only partitions still owned: a revoked one was settled before its release.
            ClockMode::Event => {
                let owned = self.partitions();
                std::mem::take(&mut self.touched)
                    .into_iter()
                    .filter(|p| owned.contains(p))
                    .collect()
            }
        };
        let limit = (TIMERS_PER_TICK / partitions.len().max(1)).max(1);
        let mut more = false;
        for p in partitions {
            let t = match self.options.clock {
                ClockMode::Wall => now_millis(),
                ClockMode::Event => match engine.clock(p) {
                    Some(t) => t,
                    None => continue,
                },
            };
            let (report, left) = engine.advance_by(p, t, limit)?;
            if left {
                more = true;
                if self.options.clock == ClockMode::Event {
                    self.touched.insert(p);
                }
            }
            self.metrics.record_batch(&report);
            self.summary.report.merge(&report);
        }
        Ok(more)
    }

    fn fire_due_timers(&mut self, partitions: &BTreeSet<u32>) -> Result<()> {
        let due: Vec<u32> = self.touched.intersection(partitions).copied().collect();
        let engine = self.engine.clone();
        let mut engine = engine.lock();
        for p in due {
            self.touched.remove(&p);
            if let Some(t) = engine.clock(p) {
                let report = engine.advance(p, t)?;
                self.metrics.record_batch(&report);
                self.summary.report.merge(&report);
            }
        }
        Ok(())
    }

    /// Pauses or resumes consumption by the outbox backlog, which it returns.
    fn backpressure(&mut self) -> u64 {
        let backlog = self.delivery.backlog(&self.engine.lock());
        self.metrics.outbox_backlog.set(backlog as i64);
        let max = self.options.max_backlog.max(1);
        if !self.paused && backlog >= max {
            tracing::warn!(
                backlog,
                "outbox backlog reached its bound: pausing consumption until the sink catches up"
            );
            self.paused = true;
        } else if self.paused && backlog <= max / 2 {
            tracing::info!(backlog, "outbox backlog drained: resuming consumption");
            self.paused = false;
        } else {
            return backlog;
        }
        self.control.set_pause(self.paused);
        self.metrics.consumer_paused.set(i64::from(self.paused));
        backlog
    }

    fn gauges(&mut self, slow: bool) -> Result<()> {
        let m = self.metrics;
        let engine = self.engine.lock();
        for p in self.partitions() {
            if let Some(t) = engine.clock(p) {
                m.set_engine_time(p, t);
            }
        }
        for seg in &engine.rules().segments {
            m.segment_members
                .with_label_values(&[&*seg.name])
                .set(engine.segment_size(&seg.name) as i64);
        }
        if let Ok(marks) = self.control.watermarks.lock() {
            self.lagging = false;
            for tp in &self.assigned {
                if let Some(&(lo, hi)) = marks.get(tp) {
                    let lag = match self.next_offsets.get(tp) {
                        Some(next) => hi - next,
                        None => hi - lo.max(0),
                    };
                    m.consumer_lag
                        .with_label_values(&[tp.0.as_str(), tp.1.to_string().as_str()])
                        .set(lag.max(0));
                    self.lagging |= lag > 0;
                }
            }
        }
        if slow {
            m.timers_pending.set(engine.timers_pending()? as i64);
            m.state_size_bytes
                .set(engine.store().approximate_size_bytes() as i64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;
    use crate::source::Message;

    fn batch(lines: &[&str], position: &str) -> SourceEvent {
        let messages = lines
            .iter()
            .map(|l| Message {
                partition: 0,
                bytes: l.as_bytes().to_vec(),
                origin: Origin::Line {
                    source: "test".into(),
                    line: 0,
                },
                fault: None,
            })
            .collect();
        SourceEvent::Batch(Batch::new(
            messages,
            vec![(b"pos".to_vec(), position.as_bytes().to_vec())],
        ))
    }

    fn texts(b: &Batch) -> Vec<String> {
        b.messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.bytes).into_owned())
            .collect()
    }

    #[test]
    fn queued_batches_merge_in_order_up_to_the_next_control_event() {
        let (tx, rx) = sync_channel(8);
        tx.send(batch(&["b1", "b2"], "2")).unwrap();
        tx.send(batch(&["c1"], "3")).unwrap();
        tx.send(SourceEvent::Assigned(vec![("events".into(), 1)]))
            .unwrap();
        tx.send(batch(&["d1"], "4")).unwrap();
        let SourceEvent::Batch(first) = batch(&["a1"], "1") else {
            unreachable!()
        };
        let (merged, next) = coalesce(first, &rx);
        assert_eq!(texts(&merged), ["a1", "b1", "b2", "c1"]);
        // Later positions come last, so they win in the commit.
        let positions: Vec<&[u8]> = merged.positions.iter().map(|(_, v)| &v[..]).collect();
        assert_eq!(positions, [b"1", b"2", b"3"]);
        // The assignment is handed back, and the batch after it is left for later.
        assert!(
            matches!(next, Some(SourceEvent::Assigned(ref p)) if p == &[("events".to_string(), 1)])
        );
        let Ok(SourceEvent::Batch(rest)) = rx.try_recv() else {
            panic!("the batch after the assignment must stay queued")
        };
        assert_eq!(texts(&rest), ["d1"]);
    }

    #[test]
    fn a_lone_batch_is_handed_back_unchanged() {
        let (_tx, rx) = sync_channel::<SourceEvent>(1);
        let SourceEvent::Batch(only) = batch(&["x"], "1") else {
            unreachable!()
        };
        let (merged, next) = coalesce(only, &rx);
        assert_eq!(texts(&merged), ["x"]);
        assert!(next.is_none());
    }
}
