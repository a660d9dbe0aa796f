//! The Kafka source: a consumer-group member polled on its own thread.
//!
//! - **Offsets are state.** On every assignment each partition is positioned at the offset
//!   stored in `Cf::Offsets` (written in the same atomic batch as the state it produced). A
//!   partition without stored state is rebuilt from the earliest retained offset — never from
//!   the group's committed offset, which would combine empty state with a later position. The
//!   group's offsets are committed (asynchronously) only so standard lag tools work.
//! - **Revocation** is synchronous: the callback hands a barrier to the engine thread and waits
//!   until every batch handed over before it is committed, then commits those offsets to the
//!   group and releases the partitions.
//! - **Gaps**: a stored offset that retention has already deleted makes librdkafka reset the
//!   partition to its earliest retained offset without telling. The first message after an
//!   assignment is compared with the stored offset; above it, and with the stored offset below
//!   the partition's log start (not a compacted record or a transaction marker), the events in
//!   between were never applied: logged once and counted in `tagstream_input_gaps_total`.
//! - **Backpressure**: when the pipeline asks for it, the assigned partitions are paused; the
//!   thread keeps polling (group membership and rebalances go on) without fetching.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tagstream_state::{Cf, StateStore};

use super::{Batch, Control, Message, SourceEvent};
use crate::changelog::{ensure_topic, read_partition, ChangelogConfig};
use crate::kafka::{client_config, log_client_error, log_line, RateLimit};
use crate::metrics::Metrics;
use crate::outbox::Origin;
use crate::schema::{decode_offset, offsets_key};

/// What the consumer needs.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// librdkafka properties, as is (override the defaults).
    pub options: BTreeMap<String, String>,
    /// At most this many messages per batch.
    pub max_batch: usize,
    /// The changelog partitions are restored from on assignment (None: no changelog).
    pub changelog: Option<ChangelogConfig>,
    /// The changelog topic could not be checked at startup (the cluster was unreachable):
    /// check (and create) it before joining the group.
    pub check_changelog: bool,
}

type Tp = (String, i32);

struct Context {
    store: Arc<dyn StateStore>,
    tx: SyncSender<SourceEvent>,
    control: Arc<Control>,
    metrics: Metrics,
    /// `auto.offset.reset` says latest: a partition without state starts at the end.
    latest_without_state: bool,
    assignment: Mutex<BTreeSet<Tp>>,
    /// Partitions positioned at a stored offset whose first message has not arrived yet.
    resumed_at: Mutex<HashMap<Tp, i64>>,
    rebalanced: AtomicBool,
    errors: Mutex<RateLimit>,
    /// The last offset committed (or tried) per assigned partition.
    last_commits: Mutex<BTreeMap<Tp, i64>>,
    changelog: Option<ChangelogConfig>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line("consumer", level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.errors, "consumer", &error, reason);
    }

    /// Keeps each partition's low and high watermarks (for the lag gauge).
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(topics) = v.get("topics").and_then(|t| t.as_object()) else {
            return;
        };
        let Ok(mut marks) = self.control.watermarks.lock() else {
            return;
        };
        for (topic, t) in topics {
            let Some(parts) = t.get("partitions").and_then(|p| p.as_object()) else {
                continue;
            };
            for (p, stats) in parts {
                let Ok(p) = p.parse::<i32>() else { continue };
                if p < 0 {
                    continue;
                }
                let lo = stats
                    .get("lo_offset")
                    .and_then(|x| x.as_i64())
                    .unwrap_or(-1);
                let hi = stats
                    .get("hi_offset")
                    .and_then(|x| x.as_i64())
                    .unwrap_or(-1);
                if hi >= 0 {
                    marks.insert((topic.clone(), p), (lo, hi));
                }
            }
        }
    }
}

impl Context {
    fn elements(tpl: &TopicPartitionList) -> Vec<Tp> {
        tpl.elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect()
    }

    /// Where a newly assigned partition starts: its stored offset, or a rebuild.
    fn start_offset(&self, topic: &str, partition: i32) -> Result<Offset, String> {
        match self.store.get(Cf::Offsets, &offsets_key(topic, partition)) {
            Ok(Some(v)) => decode_offset(&v)
                .map(Offset::Offset)
                .ok_or_else(|| format!("corrupt stored offset for {topic}/{partition}")),
            Ok(None) => {
                self.metrics.partition_rebuilds.inc();
                if self.latest_without_state {
                    tracing::warn!(topic, partition, "partition has no local state and auto.offset.reset is latest: starting at the end of the partition (earlier events are not applied)");
                    Ok(Offset::End)
                } else {
                    tracing::info!(
                        topic,
                        partition,
                        "partition has no local state: rebuilding it from the earliest retained offset (the group's committed offset is only used for lag)"
                    );
                    Ok(Offset::Beginning)
                }
            }
            Err(e) => Err(format!(
                "reading the stored offset of {topic}/{partition}: {e}"
            )),
        }
    }

    /// Hands each engine partition's changelog snapshot to the engine thread and waits until
    /// it is applied, so that the stored offsets read next are the restored ones.
    fn restore(&self, parts: &[Tp]) {
        let Some(config) = &self.changelog else {
            return;
        };
        let partitions: BTreeSet<u32> = parts.iter().map(|(_, p)| *p as u32).collect();
        for p in partitions {
            let known = match crate::engine::Engine::changelog_position(self.store.as_ref(), p) {
                Ok(known) => known,
                Err(e) => {
                    self.control.fail(format!(
                        "reading the changelog position of partition {p}: {e}"
                    ));
                    continue;
                }
            };
            match read_partition(config, p, known, &|| self.control.stopping()) {
                Ok(snapshot) => {
                    let (done_tx, done_rx) = sync_channel(1);
                    if self
                        .tx
                        .send(SourceEvent::Changelog {
                            snapshot,
                            done: done_tx,
                        })
                        .is_ok()
                    {
                        let _ = done_rx.recv();
                    }
                }
                Err(e) => self.control.fail(format!(
                    "reading partition {p} of the changelog {}: {e}",
                    config.topic
                )),
            }
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let parts = Self::elements(tpl);
        self.restore(&parts);
        for (topic, partition) in &parts {
            match self.start_offset(topic, *partition) {
                Ok(offset) => {
                    if let Offset::Offset(o) = offset {
                        tracing::info!(
                            topic,
                            partition,
                            offset = o,
                            "partition assigned: resuming at the stored offset"
                        );
                        // The group's offset may lag the stored one (an asynchronous commit lost
                        // to a crash); with nothing left to consume it would never catch up, and
                        // lag tools would report phantom lag.
                        let mut resume = std::collections::BTreeMap::new();
                        resume.insert((topic.clone(), *partition), o);
                        self.control.add_commits(&resume);
                        if let Ok(mut r) = self.resumed_at.lock() {
                            r.insert((topic.clone(), *partition), o);
                        }
                        // At 0 from the start, so that `increase()` sees a first gap.
                        self.metrics
                            .input_gaps
                            .with_label_values(&[topic.as_str(), partition.to_string().as_str()]);
                    }
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                        self.control
                            .fail(format!("positioning {topic}/{partition}: {e}"));
                    }
                }
                Err(e) => self.control.fail(e),
            }
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = result {
            tracing::error!("assigning partitions failed: {e}");
        }
        // librdkafka keeps a partition's pause flag across its revocation: one paused for
        // backpressure when it was taken away would stay paused forever when it comes back,
        // since the poll loop only resumes the partitions assigned when backpressure ends. The
        // loop pauses the whole assignment again (`rebalanced`) if it still wants to.
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!("resuming newly assigned partitions failed: {e}");
            }
        }
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        if let Ok(mut a) = self.assignment.lock() {
            a.extend(parts.iter().cloned());
        }
        self.rebalanced.store(true, Ordering::SeqCst);
        let _ = self.tx.send(SourceEvent::Assigned(parts));
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let parts = Self::elements(tpl);
        tracing::info!(partitions = ?parts, lost = consumer.assignment_lost(), "partitions revoked: finishing the batches in hand");
        // Wait until the engine thread has committed everything handed over so far.
        let (done_tx, done_rx) = sync_channel(1);
        if self
            .tx
            .send(SourceEvent::Revoked {
                partitions: parts.clone(),
                done: done_tx,
            })
            .is_ok()
        {
            let _ = done_rx.recv();
        }
        // Where each partition's applied range ends: the new owner starts there (tests check
        // that no two owners apply a partition's offsets at once).
        for (topic, partition) in &parts {
            let next = self
                .store
                .get(Cf::Offsets, &offsets_key(topic, *partition))
                .ok()
                .flatten()
                .and_then(|v| decode_offset(&v));
            tracing::info!(topic, partition, next_offset = ?next, "partition released");
        }
        commit_pending(consumer, self, false);
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::error!("releasing partitions failed: {e}");
        }
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        if let Ok(mut a) = self.assignment.lock() {
            for p in &parts {
                a.remove(p);
            }
        }
        if let Ok(mut r) = self.resumed_at.lock() {
            for p in &parts {
                r.remove(p);
            }
        }
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(
                    "consumer group rebalance error: {other:?}; releasing the assignment"
                );
                // Under a cooperative protocol a plain unassign is an error (the assignment
                // would stay as it was).
                let _ = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
                    _ => consumer.unassign(),
                };
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(
                "committing offsets to the group failed (only affects lag reporting): {e}"
            );
        }
    }
}

/// Commits the offsets the engine thread stored since the last call (assigned partitions only);
/// with `again`, the last offset of every assigned partition as well.
///
/// The outcome of an asynchronous commit never reaches the application (librdkafka only logs a
/// refused one), and under a cooperative protocol a partition kept through a rebalance is never
/// assigned again (an assignment re-commits the stored offset). An offset refused mid-rebalance
/// would then stay behind for good once the partition is idle, and lag tools would report
/// phantom lag: hence the periodic commit `again`.
fn commit_pending(consumer: &BaseConsumer<Context>, ctx: &Context, again: bool) {
    let pending = ctx.control.take_commits();
    if pending.is_empty() && !again {
        return;
    }
    let assigned = ctx.assignment.lock().map(|a| a.clone()).unwrap_or_default();
    let Ok(mut last) = ctx.last_commits.lock() else {
        return;
    };
    last.retain(|tp, _| assigned.contains(tp));
    let mut tpl = TopicPartitionList::new();
    for (tp, next) in pending {
        if assigned.contains(&tp) {
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(next));
            last.insert(tp, next);
        }
    }
    if again {
        for ((topic, partition), next) in last.iter() {
            if tpl.find_partition(topic, *partition).is_none() {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
            }
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(
                "committing offsets to the group failed (only affects lag reporting): {e}"
            );
        }
    }
}

/// Compares the first message of each partition resumed at a stored offset with that offset
/// (see the module documentation).
fn check_gaps(consumer: &BaseConsumer<Context>, ctx: &Context, messages: &[Message]) {
    let Ok(mut resumed_at) = ctx.resumed_at.lock() else {
        return;
    };
    if resumed_at.is_empty() {
        return;
    }
    for m in messages {
        let Origin::Kafka {
            topic,
            partition,
            offset,
            ..
        } = &m.origin
        else {
            continue;
        };
        let Some(stored) = resumed_at.remove(&(topic.clone(), *partition)) else {
            continue;
        };
        if *offset <= stored {
            continue;
        }
        // Offsets also skip compacted-away records and transaction markers; only a stored
        // offset below the log start means retained records were never read. Without an
        // answer from the broker the jump itself is taken as the gap.
        let low = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(5))
            .ok()
            .map(|(low, _)| low);
        if low.is_some_and(|low| low <= stored) {
            tracing::debug!(
                topic,
                partition,
                stored,
                offset,
                "first offset after the stored one is higher, but the stored one is retained (compaction or transaction markers)"
            );
            continue;
        }
        tracing::warn!(
            topic,
            partition,
            stored,
            resumed = offset,
            missed = offset - stored,
            "input gap: the stored offset is no longer retained by the topic (retention deleted it while this partition was not consumed); the events in between were never applied"
        );
        ctx.metrics
            .input_gaps
            .with_label_values(&[topic.as_str(), partition.to_string().as_str()])
            .inc();
    }
}

/// A running Kafka source.
pub struct KafkaSource {
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaSource")
    }
}

impl KafkaSource {
    /// Creates the consumer, subscribes, and starts polling on a new thread. Invalid options
    /// are user errors (returned as text).
    pub fn start(
        config: &KafkaSourceConfig,
        store: Arc<dyn StateStore>,
        control: Arc<Control>,
        tx: SyncSender<SourceEvent>,
        metrics: Metrics,
    ) -> Result<KafkaSource, String> {
        let defaults = [
            ("group.id", config.group_id.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("statistics.interval.ms", "5000"),
            // librdkafka's 500 ms is how long a broker may hold a fetch that finds nothing new;
            // brokers that hold it whole even when data arrives (librdkafka's mock cluster,
            // some Kafka-compatible ones) then add up to that much to every event's latency.
            // Kafka itself answers as soon as `fetch.min.bytes` (1) is there, so this only
            // makes idle fetches more frequent.
            ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS),
        ];
        // Engine partition p holds partition p of every input topic: only the range assignor
        // keeps them on one instance (the sticky and round-robin ones spread them).
        if config.topics.len() > 1 {
            if let Some(strategy) = config.options.get("partition.assignment.strategy") {
                if strategy.trim() != "range" {
                    return Err(format!(
                        "partition.assignment.strategy = {strategy:?} with several input topics ({}): \
                         partition p of every topic must be consumed by the same instance, which \
                         only \"range\" guarantees; use one topic, or \"range\"",
                        config.topics.join(", ")
                    ));
                }
            }
        }
        let latest_without_state = matches!(
            config.options.get("auto.offset.reset").map(|s| s.as_str()),
            Some("latest" | "largest" | "end")
        );
        let context = Context {
            store,
            tx,
            control: control.clone(),
            metrics: metrics.clone(),
            latest_without_state,
            assignment: Mutex::new(BTreeSet::new()),
            resumed_at: Mutex::new(HashMap::new()),
            rebalanced: AtomicBool::new(false),
            errors: Mutex::new(RateLimit::default()),
            last_commits: Mutex::new(BTreeMap::new()),
            changelog: config.changelog.clone(),
        };
        let consumer: BaseConsumer<Context> =
            client_config(&config.brokers, &defaults, &config.options)
                .create_with_context(context)
                .map_err(|e| {
                    format!(
                        "cannot create the kafka consumer for {}: {e}",
                        config.brokers
                    )
                })?;
        let topics: Vec<&str> = config.topics.iter().map(|s| s.as_str()).collect();
        let deferred = match (&config.changelog, config.check_changelog) {
            (Some(c), true) => Some((c.clone(), config.topics.clone())),
            _ => {
                consumer
                    .subscribe(&topics)
                    .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
                None
            }
        };
        tracing::info!(brokers = %config.brokers, topics = ?config.topics, group = %config.group_id, "kafka source started");
        let max_batch = config.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("kafka-source".into())
            .spawn(move || {
                if let Some((changelog, topics)) = deferred {
                    if !check_then_subscribe(&consumer, &control, &changelog, &topics) {
                        return;
                    }
                }
                poll_loop(consumer, control, metrics, max_batch)
            })
            .map_err(|e| format!("cannot start the kafka source thread: {e}"))?;
        Ok(KafkaSource {
            thread: Some(thread),
        })
    }

    /// Waits for the thread to finish (after [`Control::stop`]).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checks (or creates) the changelog topic until the cluster answers, then subscribes. Polls in
/// between, so that the client reports why the cluster cannot be reached. False when the
/// service stops or the topics do not fit (reported as a failure).
fn check_then_subscribe(
    consumer: &BaseConsumer<Context>,
    control: &Control,
    changelog: &ChangelogConfig,
    topics: &[String],
) -> bool {
    let mut errors = RateLimit::default();
    loop {
        if control.stopping() {
            return false;
        }
        match ensure_topic(changelog, topics, Duration::from_secs(5)) {
            Ok(()) => break,
            Err(e) if e.is_user_error() => {
                control.fail(e.to_string());
                return false;
            }
            Err(e) => {
                if errors.allow("changelog") {
                    tracing::warn!(
                        "kafka consumer: checking the changelog topic {}: {e} (retrying)",
                        changelog.topic
                    );
                }
                let _ = consumer.poll(Duration::from_millis(500));
            }
        }
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&names) {
        control.fail(format!("cannot subscribe to {names:?}: {e}"));
        return false;
    }
    true
}

const MAX_BATCH_BYTES: usize = 16 << 20;

/// Default `fetch.wait.max.ms` (see [`KafkaSource::start`]).
pub const FETCH_WAIT_MAX_MS: &str = "10";

/// How often stored offsets are committed to the consumer group (revocation and shutdown commit
/// at once).
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How often every assigned partition's last offset is committed again, whether or not it
/// moved (see [`commit_pending`]): one small request per interval when idle.
const RECOMMIT_INTERVAL: Duration = Duration::from_secs(10);

fn poll_loop(
    consumer: BaseConsumer<Context>,
    control: Arc<Control>,
    metrics: Metrics,
    max_batch: usize,
) {
    let ctx = consumer.context().clone();
    let mut paused = false;
    let mut errors = RateLimit::default();
    let mut last_commit = Instant::now();
    let mut last_full_commit = Instant::now();
    while !control.stopping() {
        // Group offsets only feed lag tools: a commit per poll round (hundreds a second at low
        // rates) would be a coordinator request per round for nothing.
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            let again = last_full_commit.elapsed() >= RECOMMIT_INTERVAL;
            commit_pending(&consumer, &ctx, again);
            last_commit = Instant::now();
            if again {
                last_full_commit = last_commit;
            }
        }
        let want = control.pause_wanted();
        if ctx.rebalanced.swap(false, Ordering::SeqCst) && want {
            paused = false; // re-apply to the new assignment
        }
        if want != paused {
            let assigned = ctx.assignment.lock().map(|a| a.clone()).unwrap_or_default();
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &assigned {
                tpl.add_partition(t, *p);
            }
            let result = if want {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            match result {
                Ok(()) => {
                    tracing::info!(
                        partitions = tpl.count(),
                        "{} consumption",
                        if want { "paused" } else { "resumed" }
                    );
                    paused = want;
                }
                Err(e) => tracing::warn!("pause/resume failed: {e}"),
            }
        }
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut timeout = Duration::from_millis(100);
        while messages.len() < max_batch && bytes < MAX_BATCH_BYTES {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    let payload = m.payload().unwrap_or(&[]).to_vec();
                    bytes += payload.len();
                    messages.push(Message {
                        partition: m.partition() as u32,
                        bytes: payload,
                        origin: Origin::Kafka {
                            topic: m.topic().to_string(),
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(|k| k.to_vec()),
                        },
                        fault: None,
                    });
                    timeout = Duration::ZERO;
                }
                Some(Err(e)) => {
                    if errors.allow(&format!("{:?}", e.rdkafka_error_code())) {
                        tracing::warn!("kafka consumer: {e} (retrying)");
                    }
                    break;
                }
            }
        }
        if !messages.is_empty() {
            check_gaps(&consumer, &ctx, &messages);
            metrics.messages_read.inc_by(messages.len() as u64);
            if ctx
                .tx
                .send(SourceEvent::Batch(Batch::new(messages, Vec::new())))
                .is_err()
            {
                break;
            }
        }
    }
    commit_pending(&consumer, &ctx, false);
    tracing::info!("leaving the consumer group");
    // Dropping the consumer closes it: the revocation callback runs (the engine thread finishes
    // its batches), final offsets are committed, and the group is left.
    drop(consumer);
    tracing::info!("kafka consumer closed");
}
