//! The engine driver: applies batches of raw messages to the state store.
//!
//! One call to [`Engine::process`] decodes a batch, advances each partition's engine time,
//! fires the timers due, applies the events, and commits in ONE atomic write: user states, timer
//! index, segment bitmaps, outbox entries (transitions and dead letters), engine times and the
//! input positions given by the caller. A crash before the commit loses nothing (the batch is
//! re-read from the stored positions); after it, nothing is applied twice.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use tagstream_rules::engine as core;
use tagstream_rules::event::{
    decode_message_keeping, DecodeOptions, Decoded, Event, EventBody, Millis, Reason, Rejection,
};
use tagstream_rules::rules::RuleSet;
use tagstream_rules::state::UserState;
use tagstream_rules::transition::Transition;
use tagstream_state::keys::{decode_i64_ordered, i64_ordered, prefixed};
use tagstream_state::{Cf, SegmentBitmaps, StateStore, UserIds, WriteBatch};

use crate::error::{ConsumerError, Result};
use crate::metrics::Metrics;
use crate::outbox::{self, DeadLetter, Origin, OutboxEntry};
use crate::schema::{
    outbox_key, parse_offsets_key, partition_meta_key, timer_key, transition_key, user_key,
    META_CHANGELOG_SEQ, META_CHANGELOG_SERIAL, META_CLOCK, META_DELETES, META_OUTBOX_SEQ,
    META_RULES, META_RULES_HASH,
};

mod changelog;
mod history;
mod ownership;
mod query;
mod reload;

pub use history::{sum_step_series, RETENTION_MS as HISTORY_RETENTION_MS};
pub use query::{Page, SegmentSummary};
pub use reload::{ReloadReport, WarmingEntry};

/// How engine time moves (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// now = the largest event time applied so far (per partition).
    Event,
    /// now = max(system clock, largest event time applied).
    Wall,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub clock: ClockMode,
    /// Events further ahead of the wall clock than this are dead-lettered (`future_timestamp`),
    /// in both clock modes: in event mode one far-future event would otherwise move its
    /// partition's engine time for good. None (`replay`) applies no limit, so a replay of any
    /// input stays exact.
    pub max_future_ms: Option<i64>,
    /// At most this many due timers are fired per batch, so a midnight roll of millions of
    /// users is spread over many commits instead of stalling event processing.
    pub timers_per_batch: usize,
    pub decode: DecodeOptions,
    /// When the store was built with other rules: carry its state over to the given rules
    /// (as a reload does, transitions with cause `rules`) instead of refusing to open.
    pub reload_on_open: bool,
    /// fsync the store's write-ahead log after each commit of a batch, a timer run, a delete
    /// or a reload (`state.sync = "batch"`), so that what the outbox then delivers and what
    /// the API then answers survive power loss. Outbox acknowledgements are not synced: one
    /// lost to a power cut only means a redelivery.
    pub sync: bool,
    /// A rules reload migrates this many users per commit: memory holds one chunk.
    pub reload_chunk: usize,
    /// Stage every commit's state changes and a per-partition checkpoint for the Kafka
    /// changelog (`Cf::Changelog`, see [`crate::changelog`]).
    pub changelog: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            clock: ClockMode::Event,
            max_future_ms: None,
            timers_per_batch: 10_000,
            decode: DecodeOptions::default(),
            reload_on_open: false,
            sync: false,
            reload_chunk: 10_000,
            changelog: false,
        }
    }
}

/// One raw input message.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub partition: u32,
    pub bytes: &'a [u8],
    pub origin: Origin,
    /// Set when the source could hand over only part of the message: it is dead-lettered as
    /// it is, without being decoded.
    pub fault: Option<SourceFault>,
}

/// Records decoded (and their users' stored states read) at a time before being applied.
const DECODE_GROUP: usize = 1024;

/// Dead-letter reason of input that could not be read (a corrupt or truncated `.gz`).
pub const UNREADABLE_INPUT: &str = "unreadable_input";

/// Why a source handed over only part of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceFault {
    /// A line longer than `max_event_bytes` (`len` bytes): the record holds its first 64 KiB.
    TooLarge { len: u64 },
    /// The input cannot be read past this line (a corrupt or truncated gzip stream, a read
    /// error): the record holds what was read of the line.
    Unreadable { error: String },
}

/// Counters of what a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub applied: u64,
    pub duplicates: u64,
    /// Messages of a kind that is not applied (SPEC §2: Sensors item and id-binding records).
    pub skipped: u64,
    pub dead_letters: BTreeMap<&'static str, u64>,
    pub transitions: u64,
    pub timers_fired: u64,
    /// Transitions by (segment, type) for metrics.
    pub transitions_by_segment: BTreeMap<(String, &'static str), u64>,
}

impl BatchReport {
    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    pub fn merge(&mut self, other: &BatchReport) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.skipped += other.skipped;
        self.transitions += other.transitions;
        self.timers_fired += other.timers_fired;
        for (k, v) in &other.dead_letters {
            *self.dead_letters.entry(k).or_insert(0) += v;
        }
        for (k, v) in &other.transitions_by_segment {
            *self.transitions_by_segment.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// A record after decoding (see [`Run::decode`]).
enum Input {
    Event(Event, Arc<str>),
    Skipped,
    Rejected(Rejection),
    /// The source could hand over only part of it: dead-lettered, not decoded.
    Fault,
}

/// A user touched by the current batch.
struct Slot {
    state: Option<UserState>,
    /// The user's dense id, when known (a cached user): saves a dictionary read per commit.
    id: Option<u32>,
    stored_timer: Option<Millis>,
    stored_members: Vec<bool>,
    existed: bool,
    dirty: bool,
}

/// Reads the per-partition values stored under `prefix` in [`Cf::Meta`].
fn load_partition_meta<T>(
    store: &dyn StateStore,
    prefix: &[u8],
    what: &str,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Result<BTreeMap<u32, T>> {
    let mut out = BTreeMap::new();
    let end = tagstream_state::keys::prefix_end(prefix);
    for (k, v) in store.scan(Cf::Meta, prefix, end.as_deref(), usize::MAX)? {
        let p = tagstream_state::keys::decode_u32_be(&k[prefix.len()..])
            .ok_or_else(|| ConsumerError::Corrupt(format!("{what} key")))?;
        let value = decode(&v).ok_or_else(|| ConsumerError::Corrupt(format!("{what} value")))?;
        out.insert(p, value);
    }
    Ok(out)
}

pub struct Engine {
    store: Arc<dyn StateStore>,
    rules: Arc<RuleSet>,
    options: EngineOptions,
    clocks: BTreeMap<u32, Millis>,
    /// Per partition, the users erased by deletes so far (stamps new incarnations).
    deletes: BTreeMap<u32, u64>,
    ids: UserIds,
    bitmaps: SegmentBitmaps,
    outbox_seq: u64,
    /// No outbox entry below this sequence number is left (acknowledgements delete from here).
    outbox_floor: std::sync::atomic::AtomicU64,
    wall_clock: fn() -> Millis,
    /// Per partition, no timer key below this instant is left: scans start here instead of
    /// walking the tombstones of every timer already fired.
    timer_floor: BTreeMap<u32, Millis>,
    /// Segment size samples (`GET /v1/segments/{name}/history`).
    history: history::Sampler,
    /// Committed user states kept decoded between batches (hot users are read once, not per
    /// batch). Always equal to what the store holds; bounded by [`CACHED_USERS`].
    cache: FxHashMap<(u32, Arc<str>), (UserState, u32)>,
    /// Aggregates that started empty at a rules reload (see [`WarmingEntry`]).
    warming: Vec<WarmingEntry>,
    metrics: Option<Metrics>,
    /// The partitions this instance owns now (None: every partition in the store, as in
    /// `replay` and `dump`). Queries answer for owned partitions only: the state of a partition
    /// handed to another instance stays on disk but is no longer current.
    owned: Option<std::collections::BTreeSet<u32>>,
    /// A `future_timestamp` rejection was logged (once per process: each is dead-lettered).
    future_logged: bool,
    /// A reload failed after committing some of its chunks: the state is partly on the new
    /// rules, so nothing more is applied until a restart finishes the reload.
    reload_unfinished: bool,
    /// Next `Cf::Changelog` sequence number.
    changelog_seq: u64,
    /// Per partition, the serial of its last checkpoint staged for the changelog.
    serials: BTreeMap<u32, u64>,
    /// Per partition, the outbox entries the changelog carries as undelivered transitions
    /// (outbox sequence number → changelog key).
    undelivered: BTreeMap<u32, BTreeMap<u64, Vec<u8>>>,
    /// Outbox entries waiting for their commits' changelog entries to be published.
    gates: std::collections::VecDeque<changelog::Gate>,
    /// Outbox entries below this may go to the sink.
    released: u64,
    /// Outbox entries below this have reached the sink.
    delivered_below: u64,
}

/// The engine as the pipeline thread and the HTTP API share it: the pipeline holds the lock
/// for one batch at a time, so API reads see committed batches and API writes (delete, reload)
/// land between batches.
#[derive(Clone)]
pub struct SharedEngine(Arc<std::sync::Mutex<Engine>>);

impl SharedEngine {
    pub fn new(engine: Engine) -> SharedEngine {
        SharedEngine(Arc::new(std::sync::Mutex::new(engine)))
    }

    /// Locks the engine. A panic while it was held cannot leave it half-changed (every change
    /// is one store commit), so a poisoned lock is simply taken over.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedEngine")
    }
}

/// Users kept decoded between batches; the cache is simply emptied when it grows past this.
const CACHED_USERS: usize = 200_000;

fn system_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// Opens the engine over a store. A store built with other rules is refused: rules changes
    /// go through reload, which re-evaluates stored users.
    ///
    /// A rules reload interrupted by a crash is finished first, so the state is entirely on the
    /// rules that reload was applying before they are compared with `rules`.
    pub fn open(
        store: Arc<dyn StateStore>,
        rules: Arc<RuleSet>,
        rules_source: &str,
        options: EngineOptions,
    ) -> Result<Engine> {
        reload::finish_pending(&store, &options)?;
        match store.get(Cf::Meta, META_RULES_HASH)? {
            Some(hash) if hash != rules.fingerprint.as_bytes() && options.reload_on_open => {
                return reload::open_with_new_rules(store, rules, rules_source, options);
            }
            Some(hash) if hash != rules.fingerprint.as_bytes() => {
                return Err(ConsumerError::User(
                    "this state dir was built with different rules; use the rules it was built with, or replay into a new --state-dir".into(),
                ))
            }
            Some(_) => {}
            None => {
                let mut batch = WriteBatch::new();
                batch.put(Cf::Meta, META_RULES_HASH, rules.fingerprint.as_bytes().to_vec());
                batch.put(Cf::Meta, META_RULES, rules_source.as_bytes().to_vec());
                store.commit(batch)?;
            }
        }
        Self::open_current(store, rules, options)
    }

    /// Opens the engine over a store built with `rules` (checked by the caller).
    fn open_current(
        store: Arc<dyn StateStore>,
        rules: Arc<RuleSet>,
        options: EngineOptions,
    ) -> Result<Engine> {
        let outbox_seq = match store.get(Cf::Meta, META_OUTBOX_SEQ)? {
            Some(v) => tagstream_state::keys::decode_u64_be(&v)
                .ok_or_else(|| ConsumerError::Corrupt("outbox sequence".into()))?,
            None => 0,
        };
        let outbox_floor = match store.scan(Cf::Outbox, &outbox_key(0), None, 1)?.first() {
            Some((k, _)) => tagstream_state::keys::decode_u64_be(k)
                .ok_or_else(|| ConsumerError::Corrupt("outbox key".into()))?,
            None => outbox_seq,
        };
        let clocks = load_partition_meta(store.as_ref(), META_CLOCK, "clock", decode_i64_ordered)?;
        let deletes = load_partition_meta(
            store.as_ref(),
            META_DELETES,
            "delete count",
            tagstream_state::keys::decode_u64_be,
        )?;
        let bitmaps = SegmentBitmaps::load(store.as_ref())?;
        let warming = reload::load_warming(store.as_ref())?;
        let changelog_seq = match store.get(Cf::Meta, META_CHANGELOG_SEQ)? {
            Some(v) => tagstream_state::keys::decode_u64_be(&v)
                .ok_or_else(|| ConsumerError::Corrupt("changelog sequence".into()))?,
            None => 0,
        };
        let serials = load_partition_meta(
            store.as_ref(),
            META_CHANGELOG_SERIAL,
            "changelog serial",
            tagstream_state::keys::decode_u64_be,
        )?;
        let undelivered = changelog::load_transitions(store.as_ref())?;
        // What the outbox holds from an earlier run waits until everything staged for the
        // changelog then is published: which of its commits were published is not recorded.
        let mut gates = std::collections::VecDeque::new();
        if options.changelog && outbox_floor < outbox_seq {
            gates.push_back(changelog::Gate {
                outbox_end: outbox_seq,
                changelog_end: changelog_seq,
            });
        }
        Ok(Engine {
            store,
            rules,
            options,
            clocks,
            deletes,
            ids: UserIds::new(),
            bitmaps,
            outbox_seq,
            outbox_floor: outbox_floor.into(),
            wall_clock: system_millis,
            timer_floor: BTreeMap::new(),
            history: history::Sampler::default(),
            cache: FxHashMap::default(),
            warming,
            metrics: None,
            owned: None,
            future_logged: false,
            reload_unfinished: false,
            changelog_seq,
            serials,
            undelivered,
            gates,
            released: outbox_floor,
            delivered_below: outbox_floor,
        })
    }

    /// The rules source stored in a state dir (for `dump` without `--rules`).
    pub fn stored_rules(store: &dyn StateStore) -> Result<Option<String>> {
        Ok(store
            .get(Cf::Meta, META_RULES)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    pub fn bitmaps(&self) -> &SegmentBitmaps {
        &self.bitmaps
    }

    /// Engine time of a partition (None before its first event).
    pub fn clock(&self, partition: u32) -> Option<Millis> {
        self.clocks.get(&partition).copied()
    }

    /// Observes each emitted transition's delay from its engine time to its commit in
    /// `tagstream_transition_event_lag_seconds`.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = Some(metrics);
    }

    /// Restricts queries (users, segment sizes and members) to the partitions owned now.
    pub fn set_owned(&mut self, owned: Option<std::collections::BTreeSet<u32>>) {
        self.owned = owned;
    }

    /// Whether queries answer for `partition`.
    pub fn owns(&self, partition: u32) -> bool {
        self.owned.as_ref().is_none_or(|o| o.contains(&partition))
    }

    /// Replaces the wall clock (tests).
    pub fn set_wall_clock(&mut self, clock: fn() -> Millis) {
        self.wall_clock = clock;
    }

    /// Processes one batch and commits it together with `positions` (Cf::Offsets key/value
    /// pairs describing how far the input has been consumed).
    pub fn process(
        &mut self,
        records: &[Record<'_>],
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<BatchReport> {
        let mut batch = self.begin()?;
        batch.apply(records)?;
        batch.commit(positions)
    }

    /// Starts a batch that can take its records in several chunks and is committed once:
    /// `replay` reads a file in chunks and commits far fewer times than it reads, because each
    /// commit writes every user the batch touched (a user seen in ten chunks is written once).
    pub fn begin(&mut self) -> Result<Batch<'_>> {
        self.check_usable()?;
        let span = tracing::info_span!(
            "batch",
            records = tracing::field::Empty,
            first = tracing::field::Empty,
            last = tracing::field::Empty,
            partitions = tracing::field::Empty,
            applied = tracing::field::Empty,
            timers_fired = tracing::field::Empty,
        );
        Ok(Batch {
            run: Run::new(self),
            span,
            records: 0,
            started: std::time::Instant::now(),
            applying: std::time::Duration::ZERO,
        })
    }

    /// Refuses to change state while a failed reload has left it partly on new rules.
    fn check_usable(&self) -> Result<()> {
        if self.reload_unfinished {
            return Err(ConsumerError::Internal(
                "a rules reload failed part-way: the state is partly migrated; restart to finish the reload".into(),
            ));
        }
        Ok(())
    }

    /// Moves a partition's engine time forward to `t` (never backwards), firing due timers in
    /// bounded batches; each batch is committed. Returns what fired.
    pub fn advance(&mut self, partition: u32, t: Millis) -> Result<BatchReport> {
        let mut total = BatchReport::default();
        loop {
            let (report, more) = self.advance_by(partition, t, self.options.timers_per_batch)?;
            total.merge(&report);
            if !more {
                return Ok(total);
            }
        }
    }

    /// Moves a partition's engine time forward to `t` (never backwards) and fires at most
    /// `limit` of the timers then due, in one commit. Returns what fired and whether timers
    /// due at `t` remain. The service's clock tick fires a mass expiry (a midnight roll of
    /// millions of users) this way, a slice per loop turn, so that events keep being applied
    /// meanwhile: exact, since an event catches its user up to its engine time before it
    /// applies, whether or not that user's timer has fired yet.
    pub fn advance_by(
        &mut self,
        partition: u32,
        t: Millis,
        limit: usize,
    ) -> Result<(BatchReport, bool)> {
        self.check_usable()?;
        let limit = limit.max(1);
        let mut run = Run::new(self);
        let now = run
            .clocks
            .get(&partition)
            .copied()
            .unwrap_or(Millis::MIN)
            .max(t);
        run.clocks.insert(partition, now);
        run.clock_changed.insert(partition);
        let fired = run.fire_due(partition, limit)?;
        let report = run.commit(&[])?;
        Ok((report, fired >= limit))
    }

    /// Deletes a user (API `DELETE /v1/users/{id}`), emitting exits with cause `delete`.
    /// Returns false when the user is unknown.
    pub fn delete_user(&mut self, user: &str) -> Result<bool> {
        self.check_usable()?;
        let Some(partition) = self.partition_of(user)? else {
            return Ok(false);
        };
        let mut run = Run::new(self);
        let now = run.now_for(partition, None);
        run.clocks.insert(partition, now);
        let user: Arc<str> = Arc::from(user);
        run.delete(partition, &user, now, 0)?;
        run.commit(&[])?;
        Ok(true)
    }

    /// The partition whose state holds `user`, if any.
    pub fn partition_of(&self, user: &str) -> Result<Option<u32>> {
        for &p in self.clocks.keys().filter(|p| self.owns(**p)) {
            if self.store.get(Cf::Users, &user_key(p, user))?.is_some() {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// A user's state and the engine time of its partition.
    pub fn user(&self, user: &str) -> Result<Option<(UserState, Millis)>> {
        for (&p, &now) in self.clocks.iter().filter(|(p, _)| self.owns(**p)) {
            if let Some(bytes) = self.store.get(Cf::Users, &user_key(p, user))? {
                let state = UserState::decode(&bytes).map_err(ConsumerError::Corrupt)?;
                return Ok(Some((state, now)));
            }
        }
        Ok(None)
    }

    /// Calls `f` with every user (id, state, engine time of its partition), sorted by user id.
    pub fn for_each_user(
        &self,
        f: &mut dyn FnMut(&str, &UserState, Millis) -> Result<()>,
    ) -> Result<()> {
        let mut rows: Vec<(Vec<u8>, Vec<u8>, Millis)> = Vec::new();
        let single = self.clocks.len() <= 1;
        for (&p, &now) in &self.clocks {
            let (start, end) = tagstream_state::keys::partition_range(p);
            let mut err = None;
            self.store
                .for_each(Cf::Users, &start, end.as_deref(), &mut |k, v| {
                    let user = &k[4..];
                    if single {
                        match (std::str::from_utf8(user), UserState::decode(v)) {
                            (Ok(u), Ok(state)) => {
                                if let Err(e) = f(u, &state, now) {
                                    err = Some(e);
                                    return false;
                                }
                            }
                            _ => {
                                err = Some(ConsumerError::Corrupt(format!(
                                    "user state under key {k:?}"
                                )));
                                return false;
                            }
                        }
                    } else {
                        rows.push((user.to_vec(), v.to_vec(), now));
                    }
                    true
                })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        rows.sort();
        for (user, bytes, now) in rows {
            let state = UserState::decode(&bytes).map_err(ConsumerError::Corrupt)?;
            f(&String::from_utf8_lossy(&user), &state, now)?;
        }
        Ok(())
    }

    /// Reads up to `limit` outbox entries in commit order.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.outbox_from(0, limit)
    }

    /// Reads up to `limit` outbox entries with sequence numbers `>= from`, in commit order (a
    /// sink with deliveries in flight reads on from where it stopped sending).
    pub fn outbox_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        outbox::read_from(self.store.as_ref(), from, limit)
    }

    /// Deletes delivered outbox entries (all with seq <= `upto`; see [`outbox::acknowledge`]).
    pub fn acknowledge(&self, upto: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let from = self.outbox_floor.load(Relaxed);
        if upto < from {
            return Ok(());
        }
        outbox::acknowledge(self.store.as_ref(), from, upto)?;
        self.outbox_floor.store(upto + 1, Relaxed);
        Ok(())
    }

    /// The sequence number the next outbox entry will get. Entries are assigned consecutive
    /// numbers and acknowledged as a prefix, so the outbox always holds the contiguous range
    /// `[first unacknowledged, outbox_next_seq())`.
    pub fn outbox_next_seq(&self) -> u64 {
        self.outbox_seq
    }

    /// Number of entries awaiting delivery.
    pub fn outbox_backlog(&self) -> Result<u64> {
        let mut n = 0;
        self.store.for_each(Cf::Outbox, &[], None, &mut |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    /// Number of pending timers (all partitions).
    pub fn timers_pending(&self) -> Result<u64> {
        let mut n = 0;
        self.store.for_each(Cf::Timers, &[], None, &mut |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }
}

/// The working set of one batch.
struct Run<'e> {
    engine: &'e mut Engine,
    users: FxHashMap<(u32, Arc<str>), Slot>,
    /// Stored states read ahead for the records being applied (see [`Run::prefetch`]).
    prefetched: FxHashMap<(u32, Arc<str>), Option<UserState>>,
    clocks: BTreeMap<u32, Millis>,
    clock_changed: std::collections::BTreeSet<u32>,
    deletes: BTreeMap<u32, u64>,
    touched_partitions: std::collections::BTreeSet<u32>,
    outbox: Vec<OutboxEntry>,
    report: BatchReport,
    ingested_ms: Millis,
    /// Timer keys whose user has no state (left by an interrupted change): removed at commit.
    orphan_timers: Vec<Vec<u8>>,
    /// Timer scan floors to adopt once this batch is committed.
    floors: BTreeMap<u32, Millis>,
    /// Partitions whose due timers were scanned in this batch.
    scanned: std::collections::BTreeSet<u32>,
    /// Further writes committed atomically with the batch (a reload's rules and bitmaps).
    extra: WriteBatch,
    /// Engine times of the transitions emitted.
    emitted_ts: Vec<Millis>,
    /// With a changelog: the partition, `event_id` and index in `outbox` of each transition.
    transitions: Vec<(u32, String, usize)>,
    /// The id dictionary as it was before the batch, restored if the batch is not committed.
    ids_before: Option<UserIds>,
}

/// A batch open for records (see [`Engine::begin`]); dropping it uncommitted leaves the engine
/// as it was (see `Run`'s `Drop`).
pub struct Batch<'e> {
    run: Run<'e>,
    /// One span per batch (partitions, events, timers fired), so a slow batch can be found.
    span: tracing::Span,
    records: usize,
    started: std::time::Instant,
    applying: std::time::Duration,
}

impl Batch<'_> {
    /// Applies records in order, as if they followed the ones applied before in this batch.
    pub fn apply(&mut self, records: &[Record<'_>]) -> Result<()> {
        let started = std::time::Instant::now();
        let _entered = self.span.enter();
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            // where the batch starts and ends in its input, so a slow batch can be found
            if self.records == 0 {
                self.span
                    .record("first", tracing::field::display(&first.origin));
            }
            self.span
                .record("last", tracing::field::display(&last.origin));
        }
        // Decoding needs no state: a group of records is decoded first, so the stored states
        // of the users it names are read in one batched lookup rather than one point read
        // each. Groups are small enough that the decoded events are still in cache when they
        // are applied.
        let mut decoded: Vec<Input> = Vec::with_capacity(DECODE_GROUP.min(records.len()));
        for group in records.chunks(DECODE_GROUP) {
            decoded.extend(group.iter().map(|r| self.run.decode(r)));
            let users = group
                .iter()
                .zip(&decoded)
                .filter_map(|(r, input)| match input {
                    Input::Event(_, user) => Some((r.partition, user.clone())),
                    _ => None,
                });
            self.run.prefetch(users)?;
            // By reference: an event is large, and moving it again per step shows in profiles.
            for (record, input) in group.iter().zip(&decoded) {
                self.run.record(record, input)?;
            }
            decoded.clear();
            self.run.prefetched.clear();
        }
        self.records += records.len();
        self.applying += started.elapsed();
        Ok(())
    }

    /// Records applied so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Users the batch holds (each is written at commit).
    pub fn users(&self) -> usize {
        self.run.users.len()
    }

    /// Fires the timers due in the partitions the batch touched and commits everything
    /// atomically together with `positions`.
    pub fn commit(self, positions: &[(Vec<u8>, Vec<u8>)]) -> Result<BatchReport> {
        let Batch {
            mut run,
            span,
            records,
            started,
            applying,
        } = self;
        let _entered = span.enter();
        span.record("records", records);
        let timers_per_batch = run.engine.options.timers_per_batch;
        let partitions: Vec<u32> = run.touched_partitions.iter().copied().collect();
        span.record("partitions", tracing::field::debug(&partitions));
        let firing = std::time::Instant::now();
        for p in partitions {
            run.fire_due(p, timers_per_batch)?;
        }
        let fired_in = firing.elapsed();
        let users = run.users.len();
        let committing = std::time::Instant::now();
        let report = run.commit(positions)?;
        span.record("applied", report.applied);
        span.record("timers_fired", report.timers_fired);
        tracing::debug!(
            users,
            apply_ms = applying.as_millis() as u64,
            timers_ms = fired_in.as_millis() as u64,
            commit_ms = committing.elapsed().as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(report)
    }
}

/// The batch's slot of a user, loaded on first use from the user cache, the states read ahead
/// or the store. A free function over the fields it needs, so that a caller can hold the slot
/// while it updates the rest of the batch (one map lookup per event instead of several).
fn slot_in<'u>(
    users: &'u mut FxHashMap<(u32, Arc<str>), Slot>,
    engine: &mut Engine,
    prefetched: &mut FxHashMap<(u32, Arc<str>), Option<UserState>>,
    partition: u32,
    user: &Arc<str>,
) -> Result<&'u mut Slot> {
    let vacant = match users.entry((partition, user.clone())) {
        Entry::Occupied(slot) => return Ok(slot.into_mut()),
        Entry::Vacant(vacant) => vacant,
    };
    let key = vacant.key();
    let (state, id) = match engine.cache.remove(key) {
        Some((state, id)) => (Some(state), Some(id)),
        None => match prefetched.remove(key) {
            Some(state) => (state, None),
            None => match engine.store.get(Cf::Users, &user_key(partition, user))? {
                Some(bytes) => (
                    Some(UserState::decode(&bytes).map_err(ConsumerError::Corrupt)?),
                    None,
                ),
                None => (None, None),
            },
        },
    };
    let stored_timer = state.as_ref().and_then(|s| s.next_timer);
    let stored_members = state
        .as_ref()
        .map(|s| s.segments.iter().map(|m| m.member).collect())
        .unwrap_or_default();
    let existed = state.is_some();
    Ok(vacant.insert(Slot {
        state,
        id,
        stored_timer,
        stored_members,
        existed,
        dirty: false,
    }))
}

/// A batch that is dropped without a successful commit (a store error while reading, staging or
/// committing, e.g. a full disk) leaves the engine's memory as it was before it: bitmaps and id
/// assignments are rolled back; clocks, delete counts, the outbox sequence, timer floors and
/// history are only adopted after the commit; cached users it took are re-read from the store.
impl Drop for Run<'_> {
    fn drop(&mut self) {
        if let Some(ids) = self.ids_before.take() {
            self.engine.ids = ids;
            self.engine.bitmaps.rollback();
        }
    }
}

impl<'e> Run<'e> {
    fn new(engine: &'e mut Engine) -> Run<'e> {
        let clocks = engine.clocks.clone();
        let deletes = engine.deletes.clone();
        let ingested_ms = (engine.wall_clock)();
        let ids_before = Some(engine.ids.clone());
        engine.bitmaps.savepoint();
        Run {
            engine,
            users: FxHashMap::default(),
            prefetched: FxHashMap::default(),
            clocks,
            clock_changed: Default::default(),
            deletes,
            touched_partitions: Default::default(),
            outbox: Vec::new(),
            report: BatchReport::default(),
            ingested_ms,
            orphan_timers: Vec::new(),
            floors: BTreeMap::new(),
            scanned: Default::default(),
            extra: WriteBatch::new(),
            emitted_ts: Vec::new(),
            transitions: Vec::new(),
            ids_before,
        }
    }

    fn slot(&mut self, partition: u32, user: &Arc<str>) -> Result<&mut Slot> {
        slot_in(
            &mut self.users,
            self.engine,
            &mut self.prefetched,
            partition,
            user,
        )
    }

    /// Engine time for a partition if an event at `ts` were applied now.
    fn now_for(&self, partition: u32, ts: Option<Millis>) -> Millis {
        let mut now = self.clocks.get(&partition).copied().unwrap_or(Millis::MIN);
        if let Some(ts) = ts {
            now = now.max(ts);
        }
        if self.engine.options.clock == ClockMode::Wall {
            now = now.max((self.engine.wall_clock)());
        }
        now
    }

    fn dead_letter(&mut self, record: &Record<'_>, reason: &'static str, detail: String) {
        *self.report.dead_letters.entry(reason).or_insert(0) += 1;
        self.outbox.push(OutboxEntry::DeadLetter(DeadLetter {
            reason: reason.into(),
            detail,
            raw: record.bytes.to_vec(),
            origin: record.origin.clone(),
        }));
    }

    /// What a record holds: its decoded message (with the user's key), or what the source
    /// could not hand over.
    fn decode(&self, record: &Record<'_>) -> Input {
        if record.fault.is_some() {
            return Input::Fault;
        }
        let decode = &self.engine.options.decode;
        let keep = &self.engine.rules.track_properties;
        match decode_message_keeping(record.bytes, decode, keep) {
            Ok(Decoded::Event(event)) => {
                let user: Arc<str> = Arc::from(event.user_id.as_str());
                Input::Event(event, user)
            }
            Ok(Decoded::Skipped(_)) => Input::Skipped,
            Err(rejection) => Input::Rejected(rejection),
        }
    }

    /// Reads, in one batched lookup, the stored states of `users` that this batch does not
    /// hold yet and the user cache does not have; [`Run::slot`] takes them from there instead
    /// of reading each (a point read per user is most of the cost of a batch of users that
    /// are not cached). The caller clears what it did not use.
    fn prefetch(&mut self, users: impl IntoIterator<Item = (u32, Arc<str>)>) -> Result<()> {
        let mut wanted: Vec<(u32, Arc<str>)> = Vec::new();
        let mut seen = rustc_hash::FxHashSet::default();
        for key in users {
            if self.users.contains_key(&key)
                || self.engine.cache.contains_key(&key)
                || self.prefetched.contains_key(&key)
                || !seen.insert(key.clone())
            {
                continue;
            }
            wanted.push(key);
        }
        if wanted.len() < 2 {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = wanted.iter().map(|(p, u)| user_key(*p, u)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let stored = self.engine.store.multi_get(Cf::Users, &refs)?;
        for (key, bytes) in wanted.into_iter().zip(stored) {
            let state = bytes
                .map(|b| UserState::decode(&b).map_err(ConsumerError::Corrupt))
                .transpose()?;
            self.prefetched.insert(key, state);
        }
        Ok(())
    }

    fn record(&mut self, record: &Record<'_>, input: &Input) -> Result<()> {
        match &record.fault {
            None => {}
            Some(SourceFault::TooLarge { len }) => {
                let detail = format!(
                    "message is {len} bytes, at most {} allowed; the first {} bytes are kept",
                    self.engine.options.decode.max_event_bytes,
                    record.bytes.len()
                );
                self.dead_letter(record, Reason::TooLarge.as_str(), detail);
                return Ok(());
            }
            Some(SourceFault::Unreadable { error }) => {
                let detail = format!("the input cannot be read past this line: {error}");
                self.dead_letter(record, UNREADABLE_INPUT, detail);
                return Ok(());
            }
        }
        let (event, user) = match input {
            Input::Event(event, user) => (event, user),
            // Neither applied nor dead-lettered, and engine time does not move.
            Input::Skipped => {
                self.report.skipped += 1;
                return Ok(());
            }
            Input::Rejected(rejection) => {
                self.dead_letter(record, rejection.reason.as_str(), rejection.detail.clone());
                return Ok(());
            }
            Input::Fault => {
                return Err(ConsumerError::Internal(
                    "a record with a source fault was decoded".into(),
                ))
            }
        };
        if let Some(max_future) = self.engine.options.max_future_ms {
            let wall = (self.engine.wall_clock)();
            if event.ts > wall.saturating_add(max_future) {
                if !self.engine.future_logged {
                    self.engine.future_logged = true;
                    tracing::warn!(
                        ahead_ms = event.ts - wall,
                        max_future_ms = max_future,
                        "an event is further ahead of the system clock than clock.max_future: dead-lettered as future_timestamp without moving engine time (logged once)"
                    );
                }
                let detail = format!(
                    "event time {} is {} ms ahead of the system clock; at most {} ms allowed",
                    event.ts,
                    event.ts - wall,
                    max_future
                );
                self.dead_letter(record, Reason::FutureTimestamp.as_str(), detail);
                return Ok(());
            }
        }
        self.event(record.partition, event, user)
    }

    fn event(&mut self, partition: u32, event: &Event, user: &Arc<str>) -> Result<()> {
        let rules = self.engine.rules.clone();
        let current = self.now_for(partition, None);
        let now = self.now_for(partition, Some(event.ts));
        let incarnation = self.deletes.get(&partition).copied().unwrap_or(0);
        // The slot borrows only the batch's map of users, so the clock and the report can be
        // updated while it is held: one lookup per event.
        let slot = slot_in(
            &mut self.users,
            self.engine,
            &mut self.prefetched,
            partition,
            user,
        )?;
        // A duplicate is judged at the engine time before it, and never moves the clock.
        if core::is_duplicate(&rules, slot.state.as_ref(), event, current) {
            self.report.duplicates += 1;
            return Ok(());
        }
        self.clocks.insert(partition, now);
        self.clock_changed.insert(partition);
        self.touched_partitions.insert(partition);
        self.report.applied += 1;
        if matches!(event.body, EventBody::Delete) {
            return self.delete(partition, user, now, self.ingested_ms);
        }
        let state = slot.state.get_or_insert_with(|| UserState {
            incarnation,
            ..UserState::new(&rules.aggregates, rules.segments.len())
        });
        slot.dirty = true;
        let mut out = Vec::new();
        let fired = core::catch_up(&rules, user, state, now, &mut out) as u64;
        let before = out.len();
        core::apply(&rules, user, state, event, now, &mut out);
        self.report.timers_fired += fired;
        self.emit(partition, out, before, self.ingested_ms);
        Ok(())
    }

    /// Records transitions of `partition`; those from index `caused_from` on were caused by the
    /// event read at `ingested_ms` (earlier ones are timers).
    fn emit(
        &mut self,
        partition: u32,
        out: Vec<Transition>,
        caused_from: usize,
        ingested_ms: Millis,
    ) {
        for (i, t) in out.into_iter().enumerate() {
            self.report.transitions += 1;
            *self
                .report
                .transitions_by_segment
                .entry((t.segment.to_string(), t.kind()))
                .or_insert(0) += 1;
            // `emit = false`: membership (and its seq) changes like any segment's, but campaigns
            // never see it. A segment the rules no longer have (a reload's exits) is emitted.
            let quiet = self
                .engine
                .rules
                .segment_by_name(&t.segment)
                .is_some_and(|s| !s.emit);
            if quiet {
                continue;
            }
            let ingested = if i >= caused_from { ingested_ms } else { 0 };
            self.emitted_ts.push(t.ts);
            if self.engine.options.changelog {
                self.transitions
                    .push((partition, t.event_id(), self.outbox.len()));
            }
            self.outbox.push(OutboxEntry::Transition {
                user_id: t.user_id.to_string(),
                json: t.to_json_string(),
                ingested_ms: ingested,
            });
        }
    }

    fn delete(
        &mut self,
        partition: u32,
        user: &Arc<str>,
        now: Millis,
        ingested_ms: Millis,
    ) -> Result<()> {
        let rules = self.engine.rules.clone();
        let slot = self.slot(partition, user)?;
        let Some(mut state) = slot.state.take() else {
            return Ok(());
        };
        slot.dirty = true;
        *self.deletes.entry(partition).or_insert(0) += 1;
        let mut out = Vec::new();
        self.report.timers_fired += core::catch_up(&rules, user, &mut state, now, &mut out) as u64;
        let before = out.len();
        core::delete(&rules, user, &state, now, &mut out);
        self.emit(partition, out, before, ingested_ms);
        Ok(())
    }

    /// Fires up to `limit` timers of `partition` due at or before its engine time.
    fn fire_due(&mut self, partition: u32, limit: usize) -> Result<usize> {
        let Some(now) = self.clocks.get(&partition).copied() else {
            return Ok(0);
        };
        let floor = self
            .engine
            .timer_floor
            .get(&partition)
            .copied()
            .unwrap_or(Millis::MIN);
        let start = prefixed(partition, &i64_ordered(floor));
        let end = prefixed(partition, &i64_ordered(now.saturating_add(1)));
        let due = self
            .engine
            .store
            .scan(Cf::Timers, &start, Some(&end), limit)?;
        let rules = self.engine.rules.clone();
        let count = due.len();
        // New timers are always later than the partition's engine time, so once every key up
        // to `now` has been seen, nothing below `now + 1` can appear again.
        let next_floor = match due.last() {
            Some((key, _)) if count >= limit => decode_i64_ordered(&key[4..12]).unwrap_or(floor),
            _ => now.saturating_add(1),
        };
        self.scanned.insert(partition);
        let floor = self.floors.entry(partition).or_insert(next_floor);
        *floor = (*floor).min(next_floor);
        let mut users = Vec::with_capacity(due.len());
        for (key, _) in &due {
            let user = std::str::from_utf8(&key[12..])
                .map_err(|_| ConsumerError::Corrupt("timer key".into()))?;
            users.push(Arc::<str>::from(user));
        }
        self.prefetch(users.iter().map(|u| (partition, u.clone())))?;
        for ((key, _), user) in due.into_iter().zip(users) {
            let slot = self.slot(partition, &user)?;
            let Some(state) = slot.state.as_mut() else {
                if !slot.existed {
                    self.orphan_timers.push(key);
                }
                continue;
            };
            let mut out = Vec::new();
            let fired = core::catch_up(&rules, &user, state, now, &mut out) as u64;
            if fired > 0 || slot.stored_timer.is_some_and(|t| t <= now) {
                slot.dirty = true;
            }
            self.report.timers_fired += fired;
            self.emit(partition, out, usize::MAX, 0);
        }
        self.prefetched.clear();
        Ok(count)
    }

    fn commit(mut self, positions: &[(Vec<u8>, Vec<u8>)]) -> Result<BatchReport> {
        let store = self.engine.store.clone();
        let rules = self.engine.rules.clone();
        let mut batch = WriteBatch::new();
        let mut staged = self
            .engine
            .options
            .changelog
            .then(changelog::Staged::default);
        // The ids of the users written without one known, in one batched dictionary read.
        let needs_id = |slot: &Slot| slot.dirty && slot.state.is_some() && slot.id.is_none();
        let names: Vec<&str> = self
            .users
            .iter()
            .filter(|(_, slot)| needs_id(slot))
            .map(|((_, user), _)| &**user)
            .collect();
        let ids = self
            .engine
            .ids
            .get_or_assign_many(store.as_ref(), &names, &mut batch)?;
        drop(names);
        let without_id = self.users.values_mut().filter(|slot| needs_id(slot));
        for (slot, id) in without_id.zip(ids) {
            slot.id = Some(id);
        }
        for ((partition, user), slot) in self.users.iter_mut() {
            if !slot.dirty {
                continue;
            }
            // Timers are computed once per user per batch, not after every event.
            if let Some(state) = slot.state.as_mut() {
                core::settle(&rules, state);
            }
            let key = user_key(*partition, user);
            let new_timer = slot.state.as_ref().and_then(|s| s.next_timer);
            if slot.stored_timer != new_timer {
                if let Some(t) = slot.stored_timer {
                    batch.delete(Cf::Timers, timer_key(*partition, t, user));
                }
                if let Some(t) = new_timer {
                    batch.put(Cf::Timers, timer_key(*partition, t, user), Vec::new());
                    // A timer written now may be due before this batch's final engine time (its
                    // user was processed earlier in the batch): keep the scan floor below it.
                    let floor = self.floors.entry(*partition).or_insert(t);
                    *floor = (*floor).min(t);
                }
            }
            match &slot.state {
                Some(state) => {
                    let encoded = state.encode();
                    if let Some(staged) = staged.as_mut() {
                        staged.user(*partition, user, Some(encoded.clone()));
                    }
                    batch.put(Cf::Users, key, encoded);
                    let id = match slot.id {
                        Some(id) => id,
                        None => {
                            let id =
                                self.engine
                                    .ids
                                    .get_or_assign(store.as_ref(), user, &mut batch)?;
                            slot.id = Some(id);
                            id
                        }
                    };
                    if !slot.existed {
                        self.engine.bitmaps.mark_present(*partition, id);
                    }
                    for (i, seg) in rules.segments.iter().enumerate() {
                        let was = slot.stored_members.get(i).copied().unwrap_or(false);
                        let is = state.segments[i].member;
                        if was != is {
                            if is {
                                self.engine.bitmaps.insert(&seg.name, *partition, id);
                            } else {
                                self.engine.bitmaps.remove(&seg.name, *partition, id);
                            }
                        }
                    }
                }
                None => {
                    if let Some(staged) = staged.as_mut() {
                        staged.user(*partition, user, None);
                    }
                    batch.delete(Cf::Users, key);
                    if slot.existed {
                        if let Some(id) = self.engine.ids.lookup(store.as_ref(), user)? {
                            self.engine.bitmaps.remove_everywhere(*partition, id);
                            self.engine.ids.forget(user, id, &mut batch);
                        }
                    }
                }
            }
        }
        for key in &self.orphan_timers {
            batch.delete(Cf::Timers, key.clone());
        }
        let segment_names: Vec<&str> = rules.segments.iter().map(|s| &*s.name).collect();
        let bitmaps = &self.engine.bitmaps;
        let sampled = self.engine.history.stage(
            &self.clocks,
            self.clock_changed.iter().copied(),
            &segment_names,
            |segment, p| bitmaps.len_where(segment, |q| q == p),
            &mut batch,
        );
        self.engine.bitmaps.flush_dirty(&mut batch);
        let mut outbox_seq = self.engine.outbox_seq;
        for entry in &self.outbox {
            batch.put(Cf::Outbox, outbox_key(outbox_seq).to_vec(), entry.encode());
            outbox_seq += 1;
        }
        batch.put(
            Cf::Meta,
            META_OUTBOX_SEQ,
            tagstream_state::keys::u64_be(outbox_seq).to_vec(),
        );
        for p in &self.clock_changed {
            batch.put(
                Cf::Meta,
                partition_meta_key(META_CLOCK, *p),
                i64_ordered(self.clocks[p]).to_vec(),
            );
        }
        for (p, n) in &self.deletes {
            if self.engine.deletes.get(p) != Some(n) {
                batch.put(
                    Cf::Meta,
                    partition_meta_key(META_DELETES, *p),
                    tagstream_state::keys::u64_be(*n).to_vec(),
                );
            }
        }
        for (k, v) in positions {
            batch.put(Cf::Offsets, k.clone(), v.clone());
        }
        // The changelog sequence and serials are staged in memory; a batch that does not commit
        // puts them back.
        let changelog_before = (self.engine.changelog_seq, self.engine.serials.clone());
        let mut transition_changes = None;
        if let Some(mut staged) = staged {
            staged.partitions.extend(self.clock_changed.iter().copied());
            for (p, n) in &self.deletes {
                if self.engine.deletes.get(p) != Some(n) {
                    staged.partitions.insert(*p);
                }
            }
            for (k, _) in positions {
                if let Some((_, p)) = parse_offsets_key(k) {
                    staged.partitions.extend(u32::try_from(p).ok());
                }
            }
            for (partition, event_id, index) in std::mem::take(&mut self.transitions) {
                if let Some(OutboxEntry::Transition { user_id, json, .. }) = self.outbox.get(index)
                {
                    staged.transitions.push(changelog::StagedTransition {
                        partition,
                        outbox_seq: self.engine.outbox_seq + index as u64,
                        key: transition_key(&event_id),
                        user_id: user_id.clone(),
                        json: json.clone(),
                    });
                }
            }
            match self.engine.stage_changelog(
                staged,
                &self.clocks,
                &self.deletes,
                positions,
                &mut batch,
            ) {
                Ok(changes) => transition_changes = Some(changes),
                Err(e) => {
                    (self.engine.changelog_seq, self.engine.serials) = changelog_before;
                    return Err(e);
                }
            }
        }
        batch.append(std::mem::take(&mut self.extra));
        if let Err(e) = store.commit(batch) {
            (self.engine.changelog_seq, self.engine.serials) = changelog_before;
            if let Some(m) = &self.engine.metrics {
                m.state_commit_failures.inc();
            }
            return Err(e.into());
        }
        // Committed: from here on memory follows the store, whatever else fails.
        self.ids_before = None;
        self.engine.bitmaps.release();
        self.engine.outbox_seq = outbox_seq;
        if let Some(changes) = transition_changes {
            self.engine.adopt_transitions(changes, outbox_seq);
        }
        let synced = if self.engine.options.sync {
            store.sync().map_err(ConsumerError::from)
        } else {
            Ok(())
        };
        if let Some(m) = &self.engine.metrics {
            let committed = (self.engine.wall_clock)();
            for ts in &self.emitted_ts {
                m.transition_event_lag_seconds
                    .observe(committed.saturating_sub(*ts).max(0) as f64 / 1000.0);
            }
        }
        if self.engine.cache.len() + self.users.len() > CACHED_USERS {
            self.engine.cache.clear();
        }
        for (key, slot) in self.users.drain() {
            if let (Some(state), Some(id)) = (slot.state, slot.id) {
                self.engine.cache.insert(key, (state, id));
            }
        }
        self.engine.ids.committed();
        self.engine.history.adopt(sampled);
        for (p, floor) in std::mem::take(&mut self.floors) {
            if self.scanned.contains(&p) {
                self.engine.timer_floor.insert(p, floor);
            } else if let Some(current) = self.engine.timer_floor.get_mut(&p) {
                // Without a scan of this partition, older timers may still be due: only lower.
                *current = (*current).min(floor);
            }
        }
        self.engine.clocks = std::mem::take(&mut self.clocks);
        self.engine.deletes = std::mem::take(&mut self.deletes);
        // A failed fsync leaves the batch committed but perhaps not durable: the caller must
        // not deliver or answer as if it were (the pipeline stops, the API answers 503).
        synced?;
        if self.engine.options.sync {
            if let Some(m) = &self.engine.metrics {
                m.state_syncs.inc();
            }
        }
        Ok(std::mem::take(&mut self.report))
    }
}
