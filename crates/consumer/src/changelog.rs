//! The Kafka changelog (SPEC §6 rev 2): a compacted topic that replicates each partition's
//! state, so a partition can move to an instance without local state (a lost volume, a new
//! pod) and continue exactly without re-reading the input's history.
//!
//! **Records.** Partition `p` of the changelog holds input partition `p`. A user's record is
//! keyed by its user id, its value the encoded [`UserState`](tagstream_rules::state::UserState);
//! a deleted user is a tombstone (so compaction erases it). After the user records of a commit
//! comes one checkpoint record under [`CHECKPOINT_KEY`] (a byte that no UTF-8 user id can start
//! with): the input offsets, the engine time and the delete count of the partition once that
//! commit is applied, and a serial that grows with every commit touching the partition.
//!
//! **Publication** follows the outbox's pattern. A commit stages its records in
//! `Cf::Changelog` ([`Pending`], keyed by a sequence number) in the same atomic write as the
//! state; the [`Publisher`] sends them in sequence order with an idempotent producer and
//! deletes the acknowledged prefix. A crash between commit and publication re-publishes on the
//! next start; a record sent twice is harmless (the same value under the same key, and a
//! repeated checkpoint after it).
//!
//! **Completeness.** A checkpoint is written after every record of its commit, and the
//! producer keeps a partition's records in order, so the records before the last checkpoint
//! are exactly the state at that checkpoint. A restore ([`read_partition`]) applies records
//! only when a checkpoint follows them: the records of a commit cut short (written without
//! their checkpoint) never reach the restored state. Compaction keeps only a key's latest
//! record: were a key's pre-checkpoint value compacted away under such an unfinished record,
//! the key would be lost; the topic is therefore created with `min.compaction.lag.ms`
//! (a day), and any owner re-publishes a touched user with a new checkpoint within seconds.
//!
//! **Freshness.** An instance keeps each partition's serial in its store (`Cf::Meta`). On
//! assignment it reads the changelog partition: a checkpoint with a higher serial than the local
//! one (no local state, a stale copy, a store that lost unsynced writes), or one this store did
//! not write ([`Engine::holds_checkpoint`](crate::engine::Engine::holds_checkpoint): another
//! owner's history, which a stale copy may have forked from at any serial), replaces the local
//! state of that partition ([`Engine::restore_partition`](crate::engine::Engine)); local state
//! that the changelog has never seen (a first start with the changelog on) is published in full.
//!
//! **Transition ids never change (SPEC §6 rev 2).** In `wall` mode an event applied again gets
//! a new engine time, so its transitions get new `ts` and new `event_id`s; in either mode a
//! state that lost commits would number its next transitions again. Two rules keep any
//! transition a sink may hold from being made again differently:
//!
//! 1. *The sink only gets transitions of published commits.* A commit's outbox entries are
//!    released to delivery only once every changelog entry staged up to that commit (its
//!    checkpoints included) is acknowledged by the broker
//!    ([`Engine::release_outbox`](crate::engine::Engine::release_outbox); one produce round
//!    trip, not one per transition). The transitions of a commit whose records are dropped
//!    (the partition was revoked before they went out) are withdrawn from the outbox.
//! 2. *A published commit's undelivered transitions travel with it.* Every transition is
//!    staged as a changelog record keyed by its `event_id` ([`transition_key`], value
//!    [`Undelivered`]) before its partition's checkpoint, and gets a tombstone with a later
//!    checkpoint once the sink has it. A restore rebuilds the partition's outbox from the
//!    records its last checkpoint covers, under their original ids, and drops the local
//!    outbox entries of the partition (those of commits the changelog never got).
//!
//! Why a visible transition survives into every later owner's state: by (1) it is visible only
//! if its commit's checkpoint is in the changelog. Every later owner of the partition starts
//! from that checkpoint or a later one: a restore takes the changelog's last checkpoint, and a
//! local state is kept only when the changelog ends with a checkpoint that store wrote, so it
//! extends the changelog's history. Checkpoints only follow one another along one history, so
//! the commit that made the transition is in every later owner's state: its events are never
//! applied again (the checkpoint's offsets are past them), the user's `seq` counters are past
//! it, and no later commit makes another transition with that (user, segment, seq).
//!
//! Why ids cannot fork: a (user, segment, seq) gets a second id only if two histories both
//! committed it; only one of them is ever published past that point (the changelog holds one
//! sequence of checkpoints per partition, and an owner whose history differs from it is
//! restored, not kept), and by (1) only published commits reach a sink. Why nothing is lost:
//! by (2) a transition of a published commit is either delivered (then tombstoned) or still in
//! the changelog, and whoever restores the partition delivers it again — at least once, under
//! the same id.
//!
//! [`transition_key`]: crate::schema::transition_key

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{ConsumerError, Result};
use crate::kafka::{client_config, RateLimit, Rewind};
use crate::metrics::Metrics;
use crate::schema::{CHECKPOINT_KEY, TRANSITION_KEY_PREFIX};
use crate::sink::kafka::{is_queue_full, is_too_large, KafkaProducer};

/// A transition committed in a partition and not yet known to be delivered, as the changelog
/// carries it so that a later owner delivers it under its original id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undelivered {
    /// The serial of the checkpoint that first covered it, then its place in that commit: the
    /// order in which a later owner delivers the transitions it restores.
    pub serial: u64,
    pub index: u32,
    pub user_id: String,
    /// The sink's JSON text, `event_id` included, exactly as first committed.
    pub json: String,
}

impl Undelivered {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Undelivered, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("corrupt changelog transition: {e}"))
    }
}

/// `state.changelog_topic` when it is not set.
pub fn default_topic(group_id: &str) -> String {
    format!("{group_id}-changelog")
}

/// Where a partition's state stands after a commit: enough to continue exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Grows by one with every commit that touches the partition.
    pub serial: u64,
    /// Next input offset to apply, by topic.
    pub offsets: BTreeMap<String, i64>,
    /// The partition's engine time (None before its first event).
    pub clock: Option<i64>,
    /// Users erased by deletes in this partition (stamps new incarnations).
    pub deletes: u64,
}

impl Checkpoint {
    /// JSON, so that `kcat` shows where a partition stands.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt changelog checkpoint: {e}"))
    }
}

/// A record staged for publication (`Cf::Changelog`, keyed by sequence number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub partition: u32,
    pub key: Vec<u8>,
    /// None: a tombstone.
    pub value: Option<Vec<u8>>,
}

impl Pending {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Pending, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("corrupt changelog entry: {e}"))
    }
}

/// What a changelog partition holds up to its last checkpoint.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub partition: u32,
    /// Encoded states of the users present at the checkpoint.
    pub users: BTreeMap<String, Vec<u8>>,
    /// The transitions committed up to the checkpoint and not known to be delivered, by
    /// changelog key (encoded [`Undelivered`]).
    pub transitions: BTreeMap<Vec<u8>, Vec<u8>>,
    /// None: the partition has never been checkpointed.
    pub checkpoint: Option<Checkpoint>,
    /// Where that checkpoint sits in the changelog partition.
    pub checkpoint_offset: Option<i64>,
    /// Records read (all of the partition).
    pub records: u64,
    pub bytes: u64,
    /// Records (users, transitions) written after the last checkpoint (left out).
    pub ignored: u64,
    pub read_in: Duration,
    /// False when only the end of the partition was read: its last record is a checkpoint
    /// this store published and holds (`users` is then empty; nothing to restore).
    pub complete: bool,
}

/// How the service reaches the changelog topic.
#[derive(Debug, Clone)]
pub struct ChangelogConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka options of the clients reading and creating the topic (connection and
    /// security options of the source).
    pub options: BTreeMap<String, String>,
}

/// Without progress for this long, reading a changelog partition fails (the broker is gone).
const STALL: Duration = Duration::from_secs(120);

/// Reads partition `partition` of the changelog from its start to its end and keeps what its
/// last checkpoint covers (see the module documentation). While the partition cannot be reached
/// (its leader is down) it keeps trying, until `stopping` says the service stops: the input
/// partition is not consumed before its state is known.
///
/// `known` is where this store's last acknowledged checkpoint of the partition sits (offset,
/// serial), when the store is at least that recent: if that checkpoint is still the partition's
/// last record, nobody wrote after it and nothing is read.
pub fn read_partition(
    config: &ChangelogConfig,
    partition: u32,
    known: Option<(i64, u64)>,
    stopping: &dyn Fn() -> bool,
) -> Result<Snapshot, String> {
    let started = Instant::now();
    let group = format!("{}-restore", config.topic);
    let consumer: BaseConsumer = client_config(
        &config.brokers,
        &[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            ("fetch.max.bytes", "52428800"),
            ("max.partition.fetch.bytes", "10485760"),
        ],
        &config.options,
    )
    .create()
    .map_err(|e| format!("cannot create the changelog reader: {e}"))?;
    let p = i32::try_from(partition).map_err(|_| format!("partition {partition} out of range"))?;
    let mut errors = RateLimit::default();
    let (low, high) = loop {
        match consumer.fetch_watermarks(&config.topic, p, Duration::from_secs(10)) {
            Ok(marks) => break marks,
            Err(e) if stopping() => {
                return Err(format!("reading the end of {}/{p}: {e}", config.topic))
            }
            Err(e) => {
                if errors.allow("watermarks") {
                    tracing::warn!(
                        "cannot read the end of the changelog partition {}/{p} yet: {e}; the partition is not consumed until it is restored (retrying)",
                        config.topic
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    let mut snapshot = Snapshot {
        partition,
        complete: true,
        ..Snapshot::default()
    };
    if let Some((offset, serial)) = known.filter(|(offset, _)| high == offset + 1) {
        snapshot.checkpoint = Some(Checkpoint {
            serial,
            ..Checkpoint::default()
        });
        snapshot.checkpoint_offset = Some(offset);
        snapshot.complete = false;
        snapshot.read_in = started.elapsed();
        tracing::debug!(
            partition,
            offset,
            serial,
            "the changelog ends with this store's checkpoint: not read"
        );
        return Ok(snapshot);
    }
    if high <= low {
        snapshot.read_in = started.elapsed();
        return Ok(snapshot);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.topic, p, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer
        .assign(&tpl)
        .map_err(|e| format!("reading {}/{p}: {e}", config.topic))?;
    // Changes since the last checkpoint: applied to `users` only when a checkpoint follows.
    let mut unconfirmed: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut unconfirmed_transitions: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut last_progress = Instant::now();
    let mut next = low;
    while next < high {
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_progress.elapsed() > STALL || stopping() {
                    return Err(format!(
                        "reading {}/{p} stalled at offset {next} of {high}",
                        config.topic
                    ));
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!("reading the changelog {}/{p}: {e} (retrying)", config.topic);
                continue;
            }
            Some(Ok(m)) => m,
        };
        last_progress = Instant::now();
        next = message.offset() + 1;
        snapshot.records += 1;
        let key = message.key().unwrap_or_default();
        let value = message.payload();
        snapshot.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        if key == CHECKPOINT_KEY {
            let Some(value) = value else { continue };
            snapshot.checkpoint = Some(Checkpoint::decode(value)?);
            snapshot.checkpoint_offset = Some(message.offset());
            for (user, state) in std::mem::take(&mut unconfirmed) {
                match state {
                    Some(s) => snapshot.users.insert(user, s),
                    None => snapshot.users.remove(&user),
                };
            }
            for (key, record) in std::mem::take(&mut unconfirmed_transitions) {
                match record {
                    Some(r) => snapshot.transitions.insert(key, r),
                    None => snapshot.transitions.remove(&key),
                };
            }
            continue;
        }
        if key.starts_with(TRANSITION_KEY_PREFIX) {
            unconfirmed_transitions.insert(key.to_vec(), value.map(<[u8]>::to_vec));
            continue;
        }
        let Ok(user) = std::str::from_utf8(key) else {
            return Err(format!(
                "changelog {}/{p} offset {}: a key that is neither a user id nor a checkpoint",
                config.topic,
                message.offset()
            ));
        };
        unconfirmed.insert(user.to_string(), value.map(<[u8]>::to_vec));
    }
    snapshot.ignored = (unconfirmed.len() + unconfirmed_transitions.len()) as u64;
    snapshot.read_in = started.elapsed();
    Ok(snapshot)
}

/// The largest partition count of `topics`, from the cluster's metadata.
fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, String> {
    // Every topic's metadata: asking for one topic by name makes brokers that auto-create
    // topics create it, with their default partition count.
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("reading the metadata of topic {topic}: {e}"))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// Creates the changelog topic when missing (compacted, one partition per input partition), or
/// checks that the existing one has as many partitions as the input. The input topics must
/// exist: their partition count is the changelog's. `ConsumerError::User` when the topics do
/// not fit; any other error means the cluster could not be asked (within `timeout` per request).
pub fn ensure_topic(config: &ChangelogConfig, inputs: &[String], timeout: Duration) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&config.brokers, &[], &config.options)
            .create()
            .map_err(|e| ConsumerError::User(format!("cannot create a kafka admin client: {e}")))?;
    let transient = |e: String| ConsumerError::transient("kafka metadata", e);
    let mut wanted = 0;
    for topic in inputs {
        // A new input topic may take a moment to appear in the metadata.
        let deadline = Instant::now() + Duration::from_secs(30);
        let count = loop {
            match partition_count(&admin, topic, timeout).map_err(transient)? {
                Some(n) => break n,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                None => {
                    return Err(ConsumerError::User(format!(
                        "input topic {topic} does not exist: the changelog topic {} needs its partition count (create it, or set state.changelog_topic = \"\")",
                        config.topic
                    )))
                }
            }
        };
        wanted = wanted.max(count);
    }
    if let Some(have) = partition_count(&admin, &config.topic, timeout).map_err(transient)? {
        if have != wanted {
            return Err(ConsumerError::User(format!(
                "the changelog topic {} has {have} partitions but the input has {wanted}: partition p of the changelog holds input partition p, so they must be equal (recreate the changelog with {wanted} partitions, or name another one in state.changelog_topic)",
                config.topic
            )));
        }
        return Ok(());
    }
    let brokers = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map(|m| m.brokers().len())
        .unwrap_or(1);
    let replication = i32::try_from(brokers.clamp(1, 3)).unwrap_or(1);
    let partitions = i32::try_from(wanted).unwrap_or(i32::MAX);
    let new = NewTopic::new(
        &config.topic,
        partitions,
        TopicReplication::Fixed(replication),
    )
    .set("cleanup.policy", "compact")
    .set("min.compaction.lag.ms", "86400000");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConsumerError::io("starting the admin runtime", e))?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = runtime
        .block_on(admin.create_topics([&new], &options))
        .map_err(|e| {
            transient(format!(
                "creating the changelog topic {}: {e}",
                config.topic
            ))
        })?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(
                topic = %config.topic,
                partitions,
                replication,
                "changelog topic created (cleanup.policy=compact)"
            ),
            // Another instance created it first.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => {
                return Err(transient(format!(
                    "creating the changelog topic {topic}: {e}"
                )))
            }
        }
    }
    Ok(())
}

/// Sends the staged changelog records (see the module documentation).
pub struct Publisher {
    producer: Arc<KafkaProducer>,
    topic: String,
    metrics: Metrics,
    /// Every entry below this is acknowledged (deleted).
    first_unacked: u64,
    next_send: u64,
    /// Sent, not yet acknowledged: the checkpoints among them with their partition and serial.
    in_flight: BTreeMap<u64, Option<(u32, u64)>>,
    /// Offsets of checkpoints acknowledged since the last pump, by partition.
    acked: BTreeMap<u32, (i64, u64)>,
    /// Where publishing starts again after a failure, and when.
    rewind: Rewind,
    errors: RateLimit,
    /// Entries below this were staged by an earlier run: one of a partition is sent only once
    /// the partition is assigned here and its local state found to continue the changelog
    /// ([`Publisher::confirm`]). Another owner may have taken the partition over meanwhile,
    /// and a late record from here would append a forked history to its changelog.
    held_below: u64,
    confirmed: std::collections::BTreeSet<u32>,
    /// Sending stopped at a held entry.
    blocked: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("next_send", &self.next_send)
            .finish()
    }
}

const MAX_IN_FLIGHT: usize = 50_000;

impl Publisher {
    /// Starts at the first entry still staged (left by an earlier run, or new).
    pub fn new(
        engine: &Engine,
        producer: Arc<KafkaProducer>,
        topic: String,
        metrics: Metrics,
    ) -> Result<Publisher> {
        let first = engine.changelog_first()?;
        Ok(Publisher {
            producer,
            topic,
            metrics,
            first_unacked: first,
            next_send: first,
            in_flight: Default::default(),
            acked: BTreeMap::new(),
            rewind: Rewind::default(),
            errors: RateLimit::default(),
            held_below: engine.changelog_next_seq(),
            confirmed: Default::default(),
            blocked: false,
        })
    }

    /// `partition` is assigned here and its local state continues the changelog (or was just
    /// restored from it): what an earlier run staged for it may be published.
    pub fn confirm(&mut self, partition: u32) {
        self.confirmed.insert(partition);
    }

    /// Once the first assignment is known: what an earlier run staged for partitions not
    /// assigned here is dropped (their owner publishes from its own state), and nothing is
    /// held any more.
    pub fn release_held(&mut self, engine: &mut Engine) -> Result<()> {
        if self.held_below == 0 {
            return Ok(());
        }
        let mut foreign = std::collections::BTreeSet::new();
        for (seq, entry) in engine.changelog_from(0, usize::MAX)? {
            if seq >= self.held_below {
                break;
            }
            if !self.confirmed.contains(&entry.partition) {
                foreign.insert(entry.partition);
            }
        }
        self.held_below = 0;
        if foreign.is_empty() {
            return Ok(());
        }
        let foreign: Vec<u32> = foreign.into_iter().collect();
        tracing::warn!(
            partitions = ?foreign,
            "changelog records an earlier run staged for partitions not assigned here are dropped unpublished"
        );
        self.drop_partitions(engine, &foreign)
    }

    /// Every staged entry below this sequence number is published (or was dropped with its
    /// partition).
    pub fn published_below(&self) -> u64 {
        self.first_unacked
    }

    /// Whether records are in flight: the loop then pumps often, since the outbox waits for
    /// their acknowledgement.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Entries not yet acknowledged.
    pub fn backlog(&self, engine: &Engine) -> u64 {
        engine
            .changelog_next_seq()
            .saturating_sub(self.first_unacked)
    }

    /// Collects acknowledgements, sends what is staged and deletes the acknowledged prefix.
    /// Never blocks on the network.
    pub fn pump(&mut self, engine: &Engine) -> Result<()> {
        for (seq, result) in self.producer.take_results() {
            let Some(checkpoint) = self.in_flight.remove(&seq) else {
                continue;
            };
            match result {
                Ok(offset) => {
                    if let Some((p, serial)) = checkpoint {
                        self.acked.insert(p, (offset, serial));
                    }
                    self.metrics.changelog_records_published.inc();
                    self.rewind.succeeded();
                }
                Err(e) if is_too_large(&e) => self.oversized(seq, checkpoint, &e.to_string()),
                Err(e) => self.failed(seq, &e.to_string()),
            }
        }
        if let Some(from) = self.rewind.resume(self.in_flight.is_empty()) {
            self.next_send = from;
        }
        if self.rewind.pending().is_none() {
            self.send_pending(engine)?;
        }
        let mut watermark = self.next_send;
        if let Some((&seq, _)) = self.in_flight.first_key_value() {
            watermark = watermark.min(seq);
        }
        if let Some(seq) = self.rewind.pending() {
            watermark = watermark.min(seq);
        }
        if watermark > self.first_unacked || !self.acked.is_empty() {
            engine.acknowledge_changelog(
                self.first_unacked,
                watermark,
                &std::mem::take(&mut self.acked),
            )?;
            self.first_unacked = self.first_unacked.max(watermark);
        }
        self.metrics
            .changelog_backlog
            .set(i64::try_from(self.backlog(engine)).unwrap_or(i64::MAX));
        Ok(())
    }

    /// A record larger than the changelog takes (a user state over the topic's
    /// `max.message.bytes`) would be refused forever, and with it every later record and, since
    /// delivery waits for the changelog, every transition: it is skipped, loudly. A restore of
    /// its partition then has that user's last state that fitted.
    fn oversized(&mut self, seq: u64, checkpoint: Option<(u32, u64)>, error: &str) {
        if !self.errors.allow("oversized changelog record") {
            return;
        }
        tracing::error!(
            seq,
            checkpoint = checkpoint.is_some(),
            "a changelog record is larger than the topic {} accepts ({error}): skipped; a restore of its partition will not have it (raise the topic's max.message.bytes and the changelog producer's message.max.bytes)",
            self.topic
        );
    }

    fn failed(&mut self, seq: u64, error: &str) {
        if let Some(retry_in) = self.rewind.failed(seq) {
            let text = format!("publishing to the changelog {} failed: {error}", self.topic);
            if self.errors.allow(&text) {
                tracing::warn!(
                    seq,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "{text}; retrying"
                );
            }
        }
    }

    fn send_pending(&mut self, engine: &Engine) -> Result<()> {
        self.blocked = false;
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let entries = engine.changelog_from(self.next_send, 2_000)?;
            if entries.is_empty() {
                // Entries of revoked partitions may have been dropped: nothing is staged
                // before the next sequence number.
                self.next_send = self.next_send.max(engine.changelog_next_seq());
                return Ok(());
            }
            for (seq, entry) in entries {
                if seq < self.held_below && !self.confirmed.contains(&entry.partition) {
                    // In order: nothing after it goes before it is confirmed or dropped.
                    self.blocked = true;
                    return Ok(());
                }
                let partition = i32::try_from(entry.partition).unwrap_or(i32::MAX);
                match self.producer.send_changelog(
                    seq,
                    &self.topic,
                    partition,
                    &entry.key,
                    entry.value.as_deref(),
                ) {
                    Ok(()) => {
                        let checkpoint = (entry.key == CHECKPOINT_KEY)
                            .then(|| entry.value.as_deref().map(Checkpoint::decode))
                            .flatten()
                            .and_then(|c| c.ok())
                            .map(|c| (entry.partition, c.serial));
                        self.in_flight.insert(seq, checkpoint);
                        self.next_send = seq + 1;
                    }
                    Err(e) if is_queue_full(&e) => {
                        self.producer.poll();
                        return Ok(());
                    }
                    Err(e) if is_too_large(&e) => {
                        self.oversized(seq, None, &e.to_string());
                        self.next_send = seq + 1;
                    }
                    Err(e) => {
                        self.failed(seq, &e.to_string());
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes until nothing is staged or `timeout` passes (a revocation, shutdown). Returns
    /// whether everything was published.
    pub fn flush(&mut self, engine: &Engine, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump(engine)?;
            if self.backlog(engine) == 0 {
                return Ok(true);
            }
            // Held until an assignment that will not come now (a stop before the first one).
            if Instant::now() >= deadline || (self.blocked && self.in_flight.is_empty()) {
                return Ok(false);
            }
            self.producer.flush(Duration::from_millis(20));
        }
    }

    /// Forgets what is staged for partitions this instance no longer owns: their new owner
    /// publishes from its own state, and a late record from here would overwrite it.
    pub fn drop_partitions(&mut self, engine: &mut Engine, partitions: &[u32]) -> Result<()> {
        let dropped = engine.drop_changelog_entries(partitions)?;
        if dropped > 0 {
            tracing::warn!(
                ?partitions,
                dropped,
                "changelog records of revoked partitions were not published in time: dropped (the new owner restores from the last published checkpoint)"
            );
        }
        Ok(())
    }
}
