//! The engine's side of the Kafka changelog (see [`crate::changelog`]): staging each commit's
//! records in `Cf::Changelog`, reading and acknowledging them for the publisher, and replacing
//! a partition's state by a changelog snapshot.

use std::collections::{BTreeMap, BTreeSet};

use tagstream_rules::state::UserState;
use tagstream_state::keys::{decode_u64_be, i64_ordered, u64_be};
use tagstream_state::{Cf, StateStore, WriteBatch};

use super::Engine;
use crate::changelog::{Checkpoint, Pending, Snapshot, Undelivered};
use crate::error::{ConsumerError, Result};
use crate::schema::{
    changelog_seq_key, decode_offset, encode_offset, offsets_key, outbox_key, parse_offsets_key,
    partition_meta_key, timer_key, transition_meta_key, user_key, CHECKPOINT_KEY,
    KAFKA_OFFSETS_END, KAFKA_OFFSETS_START, META_CHANGELOG_ACKED, META_CHANGELOG_SEQ,
    META_CHANGELOG_SERIAL, META_CHANGELOG_TRANSITION, META_CLOCK, META_DELETES, META_OUTBOX_SEQ,
};

/// Reads [`META_CHANGELOG_TRANSITION`]: partition → outbox sequence number → changelog key.
pub(super) fn load_transitions(
    store: &dyn StateStore,
) -> Result<BTreeMap<u32, BTreeMap<u64, Vec<u8>>>> {
    let prefix = META_CHANGELOG_TRANSITION;
    let end = tagstream_state::keys::prefix_end(prefix);
    let mut out: BTreeMap<u32, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for (k, v) in store.scan(Cf::Meta, prefix, end.as_deref(), usize::MAX)? {
        let rest = &k[prefix.len()..];
        let (Some(p), Some(seq)) = (
            rest.get(..4).and_then(tagstream_state::keys::decode_u32_be),
            rest.get(4..).and_then(decode_u64_be),
        ) else {
            return Err(ConsumerError::Corrupt("changelog transition key".into()));
        };
        out.entry(p).or_default().insert(seq, v);
    }
    Ok(out)
}

/// A transition of this commit for the changelog.
pub(super) struct StagedTransition {
    pub(super) partition: u32,
    pub(super) outbox_seq: u64,
    pub(super) key: Vec<u8>,
    pub(super) user_id: String,
    pub(super) json: String,
}

/// How a commit changes the engine's index of undelivered transitions, adopted once the
/// commit is written.
#[derive(Default)]
pub(super) struct TransitionChanges {
    added: Vec<(u32, u64, Vec<u8>)>,
    delivered: Vec<(u32, u64)>,
}

/// Outbox entries that wait for the changelog: entries below `outbox_end` go to the sink once
/// every changelog entry below `changelog_end` is published.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gate {
    pub(super) outbox_end: u64,
    pub(super) changelog_end: u64,
}

/// Records of one commit to stage for the changelog.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) records: Vec<Pending>,
    pub(super) partitions: BTreeSet<u32>,
    pub(super) transitions: Vec<StagedTransition>,
}

impl Staged {
    pub(super) fn user(&mut self, partition: u32, user: &str, state: Option<Vec<u8>>) {
        self.partitions.insert(partition);
        self.records.push(Pending {
            partition,
            key: user.as_bytes().to_vec(),
            value: state,
        });
    }
}

/// The stored input offsets of `partition`, by topic, with `positions` (this commit's) on top.
fn offsets_of(
    store: &dyn StateStore,
    partition: u32,
    positions: &[(Vec<u8>, Vec<u8>)],
) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    let stored = store.scan(
        Cf::Offsets,
        KAFKA_OFFSETS_START,
        Some(KAFKA_OFFSETS_END),
        usize::MAX,
    )?;
    for (k, v) in stored.iter().chain(positions) {
        if let Some((topic, p)) = parse_offsets_key(k) {
            if u32::try_from(p).ok() == Some(partition) {
                if let Some(next) = decode_offset(v) {
                    out.insert(topic, next);
                }
            }
        }
    }
    Ok(out)
}

impl Engine {
    /// Stages the removal of a partition's undelivered transitions from the outbox (and of
    /// their changelog index): a restore replaces them with the changelog's, and a partition
    /// dropped because another instance owns it must never deliver them (its owner restores and
    /// delivers them under the same ids).
    pub(super) fn stage_forget_undelivered(&self, p: u32, batch: &mut WriteBatch) {
        if let Some(pending) = self.undelivered.get(&p) {
            for &seq in pending.keys() {
                batch.delete(Cf::Outbox, outbox_key(seq).to_vec());
                batch.delete(Cf::Meta, transition_meta_key(p, seq));
            }
        }
    }

    /// Stages `staged` and a checkpoint of each partition it touched into `batch`: `clocks`
    /// and `deletes` are the partitions' values once the batch is committed.
    pub(super) fn stage_changelog(
        &mut self,
        staged: Staged,
        clocks: &BTreeMap<u32, i64>,
        deletes: &BTreeMap<u32, u64>,
        positions: &[(Vec<u8>, Vec<u8>)],
        batch: &mut WriteBatch,
    ) -> Result<TransitionChanges> {
        let Staged {
            mut records,
            mut partitions,
            transitions,
        } = staged;
        partitions.extend(transitions.iter().map(|t| t.partition));
        let mut changes = TransitionChanges::default();
        for p in partitions {
            let serial = self.serials.get(&p).copied().unwrap_or(0) + 1;
            self.serials.insert(p, serial);
            // The transitions this commit made, then tombstones of those the sink has since
            // taken, all before the checkpoint that confirms them.
            for (index, t) in transitions.iter().filter(|t| t.partition == p).enumerate() {
                let record = Undelivered {
                    serial,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    user_id: t.user_id.clone(),
                    json: t.json.clone(),
                };
                records.push(Pending {
                    partition: p,
                    key: t.key.clone(),
                    value: Some(record.encode()),
                });
                batch.put(
                    Cf::Meta,
                    transition_meta_key(p, t.outbox_seq),
                    t.key.clone(),
                );
                changes.added.push((p, t.outbox_seq, t.key.clone()));
            }
            if let Some(pending) = self.undelivered.get(&p) {
                for (&seq, key) in pending.range(..self.delivered_below) {
                    records.push(Pending {
                        partition: p,
                        key: key.clone(),
                        value: None,
                    });
                    batch.delete(Cf::Meta, transition_meta_key(p, seq));
                    changes.delivered.push((p, seq));
                }
            }
            batch.put(
                Cf::Meta,
                partition_meta_key(META_CHANGELOG_SERIAL, p),
                u64_be(serial).to_vec(),
            );
            let checkpoint = Checkpoint {
                serial,
                offsets: offsets_of(self.store.as_ref(), p, positions)?,
                clock: clocks.get(&p).copied(),
                deletes: deletes.get(&p).copied().unwrap_or(0),
            };
            records.push(Pending {
                partition: p,
                key: CHECKPOINT_KEY.to_vec(),
                value: Some(checkpoint.encode()),
            });
        }
        for record in records {
            batch.put(
                Cf::Changelog,
                changelog_seq_key(self.changelog_seq).to_vec(),
                record.encode(),
            );
            self.changelog_seq += 1;
        }
        batch.put(
            Cf::Meta,
            META_CHANGELOG_SEQ,
            u64_be(self.changelog_seq).to_vec(),
        );
        Ok(changes)
    }

    /// Adopts what a committed batch changed in the index of undelivered transitions, and
    /// holds its outbox entries (below `outbox_end`) until its changelog entries are published.
    pub(super) fn adopt_transitions(&mut self, changes: TransitionChanges, outbox_end: u64) {
        for (p, seq) in changes.delivered {
            if let Some(pending) = self.undelivered.get_mut(&p) {
                pending.remove(&seq);
            }
        }
        for (p, seq, key) in changes.added {
            self.undelivered.entry(p).or_default().insert(seq, key);
        }
        self.hold_outbox(outbox_end);
    }

    /// Outbox entries below `outbox_end` wait until every changelog entry staged so far is
    /// published.
    pub(super) fn hold_outbox(&mut self, outbox_end: u64) {
        if !self.options.changelog || outbox_end <= self.released {
            return;
        }
        let gate = Gate {
            outbox_end,
            changelog_end: self.changelog_seq,
        };
        match self.gates.back_mut() {
            Some(last) if last.changelog_end == gate.changelog_end => {
                last.outbox_end = last.outbox_end.max(outbox_end)
            }
            _ => self.gates.push_back(gate),
        }
    }

    /// With a changelog, how far the outbox may go to the sink: every entry below the returned
    /// sequence number belongs to a commit whose changelog entries (its checkpoints included)
    /// are all below `published_below`, i.e. acknowledged by the broker (or dropped with the
    /// partition they belonged to, whose entries are then deleted from the outbox). See the
    /// module documentation of [`crate::changelog`] for why this keeps ids from forking.
    /// Without a changelog, every committed entry may go. Never beyond the next outbox
    /// sequence number: every entry below the returned bound is committed.
    pub fn release_outbox(&mut self, published_below: u64) -> u64 {
        if !self.options.changelog {
            return self.outbox_seq;
        }
        while let Some(gate) = self.gates.front() {
            if gate.changelog_end > published_below {
                break;
            }
            self.released = self.released.max(gate.outbox_end);
            self.gates.pop_front();
        }
        if self.gates.is_empty() {
            self.released = self.released.max(self.outbox_seq);
        }
        self.released
    }

    /// Tells the engine that every outbox entry below `below` reached its sink: the changelog
    /// records of those transitions get a tombstone with their partition's next checkpoint.
    pub fn note_delivered(&mut self, below: u64) {
        self.delivered_below = self.delivered_below.max(below);
    }

    /// Stages tombstones for the transitions of `partitions` (all when None) that reached the
    /// sink since their partition's last checkpoint, with a new checkpoint of each partition
    /// that has some: a graceful stop or a revocation leaves a changelog that a later owner
    /// does not deliver again from. Returns the number of tombstones.
    pub fn settle_delivered(&mut self, partitions: Option<&[u32]>) -> Result<usize> {
        if !self.options.changelog {
            return Ok(0);
        }
        let below = self.delivered_below;
        let mut staged = Staged::default();
        let mut count = 0;
        for (p, pending) in &self.undelivered {
            if partitions.is_some_and(|only| !only.contains(p)) {
                continue;
            }
            let n = pending.range(..below).count();
            if n > 0 {
                staged.partitions.insert(*p);
                count += n;
            }
        }
        if count == 0 {
            return Ok(0);
        }
        self.commit_staged(staged)?;
        Ok(count)
    }

    /// Transitions the changelog carries as undelivered for `partition` (tests, logs).
    pub fn undelivered_count(&self, partition: u32) -> usize {
        self.undelivered.get(&partition).map_or(0, BTreeMap::len)
    }

    /// Commits `staged` with a checkpoint of each of its partitions, outside of any batch
    /// (the partitions' engine times and offsets are the stored ones).
    fn commit_staged(&mut self, staged: Staged) -> Result<()> {
        let clocks = self.clocks.clone();
        let deletes = self.deletes.clone();
        let mut batch = WriteBatch::new();
        // The sequence and serials move in memory while staging: put back if nothing commits.
        let before = (self.changelog_seq, self.serials.clone());
        let changes = match self.stage_changelog(staged, &clocks, &deletes, &[], &mut batch) {
            Ok(changes) => changes,
            Err(e) => {
                (self.changelog_seq, self.serials) = before;
                return Err(e);
            }
        };
        if let Err(e) = self.store.commit(batch) {
            (self.changelog_seq, self.serials) = before;
            return Err(e.into());
        }
        let outbox_end = self.outbox_seq;
        self.adopt_transitions(changes, outbox_end);
        Ok(())
    }

    /// Whether commits stage changelog records.
    pub fn changelog_enabled(&self) -> bool {
        self.options.changelog
    }

    /// The serial of `partition`'s last checkpoint staged here (0: none).
    pub fn changelog_serial(&self, partition: u32) -> u64 {
        self.serials.get(&partition).copied().unwrap_or(0)
    }

    /// The first staged entry's sequence number (the next one when nothing is staged).
    pub fn changelog_first(&self) -> Result<u64> {
        Ok(self
            .changelog_from(0, 1)?
            .first()
            .map_or(self.changelog_seq, |(seq, _)| *seq))
    }

    /// The sequence number the next staged entry will get.
    pub fn changelog_next_seq(&self) -> u64 {
        self.changelog_seq
    }

    /// Up to `limit` staged entries from sequence number `from` on, in order.
    pub fn changelog_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, Pending)>> {
        self.store
            .scan(Cf::Changelog, &changelog_seq_key(from), None, limit)?
            .into_iter()
            .map(|(k, v)| {
                let seq = decode_u64_be(&k)
                    .ok_or_else(|| ConsumerError::Corrupt("changelog key".into()))?;
                Ok((seq, Pending::decode(&v).map_err(ConsumerError::Corrupt)?))
            })
            .collect()
    }

    /// Deletes the published entries (sequence numbers below `below`) and records where the
    /// acknowledged checkpoints landed: partition → (offset, serial).
    ///
    /// `from` is where the previous acknowledgement ended: a small acknowledgement deletes its
    /// entries one by one, since range tombstones (one per pump, every few milliseconds while
    /// delivery waits for the changelog) pile up and slow every later read of the column
    /// family (see [`crate::outbox::acknowledge`]).
    pub fn acknowledge_changelog(
        &self,
        from: u64,
        below: u64,
        checkpoints: &BTreeMap<u32, (i64, u64)>,
    ) -> Result<()> {
        const POINT_DELETES: u64 = 4096;
        let mut batch = WriteBatch::new();
        if below > from && below - from < POINT_DELETES {
            for seq in from..below {
                batch.delete(Cf::Changelog, changelog_seq_key(seq).to_vec());
            }
        } else if below > from {
            batch.delete_range(
                Cf::Changelog,
                changelog_seq_key(from).to_vec(),
                changelog_seq_key(below).to_vec(),
            );
        }
        for (p, (offset, serial)) in checkpoints {
            let mut value = offset.to_be_bytes().to_vec();
            value.extend_from_slice(&u64_be(*serial));
            batch.put(
                Cf::Meta,
                partition_meta_key(META_CHANGELOG_ACKED, *p),
                value,
            );
        }
        self.store.commit(batch)?;
        Ok(())
    }

    /// Where `partition`'s last checkpoint acknowledged from this store sits in the changelog
    /// (offset, serial), when the store is at least that recent; None otherwise. Read from the
    /// store directly: the source thread asks before it hands the partition to the engine.
    pub fn changelog_position(
        store: &dyn StateStore,
        partition: u32,
    ) -> Result<Option<(i64, u64)>> {
        let Some(v) = store.get(
            Cf::Meta,
            &partition_meta_key(META_CHANGELOG_ACKED, partition),
        )?
        else {
            return Ok(None);
        };
        let (offset, serial) = match (v.get(..8), v.get(8..)) {
            (Some(o), Some(s)) => (o.try_into().map(i64::from_be_bytes).ok(), decode_u64_be(s)),
            _ => (None, None),
        };
        let (Some(offset), Some(serial)) = (offset, serial) else {
            return Err(ConsumerError::Corrupt("changelog position".into()));
        };
        let local = store
            .get(
                Cf::Meta,
                &partition_meta_key(META_CHANGELOG_SERIAL, partition),
            )?
            .as_deref()
            .and_then(decode_u64_be)
            .unwrap_or(0);
        Ok((local >= serial).then_some((offset, serial)))
    }

    /// Whether the changelog's last checkpoint of `partition` (at `offset`) is one this store
    /// wrote: the last one the broker acknowledged from here, or one still staged here (sent,
    /// its acknowledgement lost to a crash). Only then does the local state continue the
    /// changelog's history; any other checkpoint was written by another owner, whose history
    /// may have forked from this store's even at a lower serial, so the partition is restored.
    pub fn holds_checkpoint(
        &self,
        partition: u32,
        checkpoint: &Checkpoint,
        offset: Option<i64>,
    ) -> Result<bool> {
        let acked = self
            .store
            .get(
                Cf::Meta,
                &partition_meta_key(META_CHANGELOG_ACKED, partition),
            )?
            .and_then(|v| v.get(..8).and_then(|o| o.try_into().ok()))
            .map(i64::from_be_bytes);
        if acked.is_some() && acked == offset {
            return Ok(true);
        }
        for (_, entry) in self.changelog_from(0, usize::MAX)? {
            if entry.partition == partition && entry.key == CHECKPOINT_KEY {
                let staged = entry.value.as_deref().map(Checkpoint::decode);
                if matches!(staged, Some(Ok(c)) if &c == checkpoint) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Deletes the staged entries of `partitions` and returns how many there were. Their local
    /// state is then ahead of the changelog: its serial is reset, so that the partition is
    /// restored from the changelog (or published in full) when it is assigned here again.
    pub fn drop_changelog_entries(&mut self, partitions: &[u32]) -> Result<u64> {
        let mut batch = WriteBatch::new();
        let mut dropped = 0;
        for (seq, entry) in self.changelog_from(0, usize::MAX)? {
            if partitions.contains(&entry.partition) {
                batch.delete(Cf::Changelog, changelog_seq_key(seq).to_vec());
                dropped += 1;
            }
        }
        if dropped == 0 {
            return Ok(0);
        }
        // Their transitions not yet released to the sink go too: their checkpoint never reached
        // the changelog, so the new owner applies their events again (in wall mode at a new
        // engine time, so under new ids); these must never become visible.
        let mut withdrawn = Vec::new();
        for p in partitions {
            batch.delete(Cf::Meta, partition_meta_key(META_CHANGELOG_SERIAL, *p));
            batch.delete(Cf::Meta, partition_meta_key(META_CHANGELOG_ACKED, *p));
            self.serials.remove(p);
            if let Some(pending) = self.undelivered.get(p) {
                for &seq in pending.range(self.released..).map(|(seq, _)| seq) {
                    batch.delete(Cf::Outbox, outbox_key(seq).to_vec());
                    batch.delete(Cf::Meta, transition_meta_key(*p, seq));
                    withdrawn.push((*p, seq));
                }
            }
        }
        self.store.commit(batch)?;
        for (p, seq) in &withdrawn {
            if let Some(pending) = self.undelivered.get_mut(p) {
                pending.remove(seq);
            }
        }
        if !withdrawn.is_empty() {
            tracing::warn!(
                ?partitions,
                transitions = withdrawn.len(),
                "transitions of revoked partitions whose checkpoint was not published were withdrawn before reaching the sink (the new owner makes them again)"
            );
        }
        Ok(dropped)
    }

    /// Whether this store holds any state of `partition`.
    pub fn has_partition_state(&self, partition: u32) -> Result<bool> {
        if self.clocks.contains_key(&partition) {
            return Ok(true);
        }
        let (start, end) = tagstream_state::keys::partition_range(partition);
        Ok(!self
            .store
            .scan(Cf::Users, &start, end.as_deref(), 1)?
            .is_empty())
    }

    /// The users stored for `partition`: (user id, encoded state).
    fn partition_users(&self, partition: u32) -> Result<Vec<(String, Vec<u8>)>> {
        let (start, end) = tagstream_state::keys::partition_range(partition);
        self.store
            .scan(Cf::Users, &start, end.as_deref(), usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let user = std::str::from_utf8(&k[4..])
                    .map_err(|_| ConsumerError::Corrupt(format!("user key {k:?}")))?;
                Ok((user.to_string(), v))
            })
            .collect()
    }

    /// Stages every user of `partition` and a checkpoint (the changelog has never seen this
    /// partition, but this store has state for it). Returns the number of users.
    pub fn publish_partition(&mut self, partition: u32) -> Result<u64> {
        let mut staged = Staged::default();
        staged.partitions.insert(partition);
        let users = self.partition_users(partition)?;
        let n = users.len() as u64;
        for (user, state) in users {
            staged.user(partition, &user, Some(state));
        }
        self.commit_staged(staged)?;
        Ok(n)
    }

    /// Replaces the state of `snapshot.partition` by the snapshot, in one atomic write: users,
    /// timers, the id dictionary, segment bitmaps, engine time, delete count, input offsets
    /// and changelog serial. Local entries still staged for the partition are dropped (they
    /// are older than the snapshot). Emits no transition: the partition's outbox entries are
    /// replaced by the snapshot's undelivered transitions, under their original ids. Returns
    /// the number of users.
    pub fn restore_partition(&mut self, snapshot: &Snapshot) -> Result<u64> {
        let p = snapshot.partition;
        let Some(checkpoint) = &snapshot.checkpoint else {
            return Ok(0);
        };
        if !snapshot.complete {
            return Err(ConsumerError::Corrupt(format!(
                "partition {p}: a restore needs the whole changelog partition, not its end"
            )));
        }
        let store = self.store.clone();
        let mut batch = WriteBatch::new();
        // What the store holds for the partition goes, except the ids of users that stay.
        for (user, bytes) in self.partition_users(p)? {
            batch.delete(Cf::Users, user_key(p, &user));
            if let Ok(state) = UserState::decode(&bytes) {
                if let Some(t) = state.next_timer {
                    batch.delete(Cf::Timers, timer_key(p, t, &user));
                }
            }
            if !snapshot.users.contains_key(&user) {
                if let Some(id) = self.ids.lookup(store.as_ref(), &user)? {
                    self.ids.forget(&user, id, &mut batch);
                }
            }
        }
        let (start, end) = tagstream_state::keys::partition_range(p);
        for (key, _) in store.scan(Cf::Timers, &start, end.as_deref(), usize::MAX)? {
            batch.delete(Cf::Timers, key);
        }
        self.bitmaps.drop_partition(p, &mut batch);
        let rules = self.rules.clone();
        // Every restored user's id in one batched dictionary read, in the snapshot's order.
        let names: Vec<&str> = snapshot.users.keys().map(|user| &**user).collect();
        let ids = self
            .ids
            .get_or_assign_many(store.as_ref(), &names, &mut batch)?;
        for ((user, bytes), id) in snapshot.users.iter().zip(ids) {
            let state = UserState::decode(bytes).map_err(|e| {
                ConsumerError::Corrupt(format!("changelog state of user {user}: {e}"))
            })?;
            if state.segments.len() != rules.segments.len() {
                return Err(ConsumerError::User(format!(
                    "the changelog state of partition {p} was built with other rules ({} segments, these rules have {}): run with the rules of the previous owner, then reload",
                    state.segments.len(),
                    rules.segments.len()
                )));
            }
            batch.put(Cf::Users, user_key(p, user), bytes.clone());
            if let Some(t) = state.next_timer {
                batch.put(Cf::Timers, timer_key(p, t, user), Vec::new());
            }
            self.bitmaps.mark_present(p, id);
            for (i, seg) in rules.segments.iter().enumerate() {
                if state.segments[i].member {
                    self.bitmaps.insert(&seg.name, p, id);
                }
            }
        }
        self.bitmaps.flush_dirty(&mut batch);
        match checkpoint.clock {
            Some(t) => batch.put(
                Cf::Meta,
                partition_meta_key(META_CLOCK, p),
                i64_ordered(t).to_vec(),
            ),
            None => batch.delete(Cf::Meta, partition_meta_key(META_CLOCK, p)),
        }
        batch.put(
            Cf::Meta,
            partition_meta_key(META_DELETES, p),
            u64_be(checkpoint.deletes).to_vec(),
        );
        batch.put(
            Cf::Meta,
            partition_meta_key(META_CHANGELOG_SERIAL, p),
            u64_be(checkpoint.serial).to_vec(),
        );
        // The store now holds exactly that checkpoint's state, as if it had written it.
        match snapshot.checkpoint_offset {
            Some(offset) => {
                let mut value = offset.to_be_bytes().to_vec();
                value.extend_from_slice(&u64_be(checkpoint.serial));
                batch.put(Cf::Meta, partition_meta_key(META_CHANGELOG_ACKED, p), value);
            }
            None => batch.delete(Cf::Meta, partition_meta_key(META_CHANGELOG_ACKED, p)),
        }
        super::ownership::stage_offsets_delete(store.as_ref(), p, &mut batch)?;
        let partition = i32::try_from(p).unwrap_or(i32::MAX);
        for (topic, next) in &checkpoint.offsets {
            batch.put(
                Cf::Offsets,
                offsets_key(topic, partition),
                encode_offset(*next),
            );
        }
        for (seq, entry) in self.changelog_from(0, usize::MAX)? {
            if entry.partition == p {
                batch.delete(Cf::Changelog, changelog_seq_key(seq).to_vec());
            }
        }
        // The outbox of the partition becomes what the changelog says is undelivered. Local
        // entries go: those the changelog holds come back below under the same ids, and the
        // others belong to commits the changelog never got (a store that lost writes, an old
        // copy), which must never reach a sink.
        self.stage_forget_undelivered(p, &mut batch);
        let mut undelivered = Vec::with_capacity(snapshot.transitions.len());
        for (key, bytes) in &snapshot.transitions {
            let record = Undelivered::decode(bytes).map_err(ConsumerError::Corrupt)?;
            undelivered.push((record, key));
        }
        undelivered.sort_by_key(|(r, _)| (r.serial, r.index));
        let mut outbox_seq = self.outbox_seq;
        let mut restored = BTreeMap::new();
        for (record, key) in undelivered {
            let entry = crate::outbox::OutboxEntry::Transition {
                user_id: record.user_id,
                json: record.json,
                ingested_ms: 0,
            };
            batch.put(Cf::Outbox, outbox_key(outbox_seq).to_vec(), entry.encode());
            batch.put(Cf::Meta, transition_meta_key(p, outbox_seq), key.clone());
            restored.insert(outbox_seq, key.clone());
            outbox_seq += 1;
        }
        batch.put(Cf::Meta, META_OUTBOX_SEQ, u64_be(outbox_seq).to_vec());
        store.commit(batch)?;
        if self.options.sync {
            store.sync()?;
        }
        self.ids.committed();
        match checkpoint.clock {
            Some(t) => self.clocks.insert(p, t),
            None => self.clocks.remove(&p),
        };
        self.deletes.insert(p, checkpoint.deletes);
        self.serials.insert(p, checkpoint.serial);
        self.cache.retain(|(q, _), _| *q != p);
        self.timer_floor.remove(&p);
        self.outbox_seq = outbox_seq;
        self.undelivered.insert(p, restored);
        self.hold_outbox(outbox_seq);
        Ok(snapshot.users.len() as u64)
    }
}
