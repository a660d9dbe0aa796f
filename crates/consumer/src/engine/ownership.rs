//! Local copies of partitions this instance no longer owns.
//!
//! A partition taken away by a rebalance leaves its state on disk: it is no longer current (the
//! new owner applies what comes next), and a rules reload must not carry it over — that would
//! emit transitions (and stage changelog records) for a partition another instance owns, and a
//! copy left on the old rules could not be read under the new ones. So a reload migrates the
//! partitions owned now and drops the local copies of the others; a partition that comes back
//! later is restored from the changelog (or, without one, rebuilt from the input).
//!
//! Which partitions are owned is known once the source has been assigned some. Before that (a
//! restart, whose rules changed, opens the store before joining the group), the partitions a
//! rebalance took away are known from a durable mark written when they were released and
//! cleared when they are assigned again. A shutdown's revocation marks nothing: the instance
//! expects its partitions back.

use std::collections::BTreeSet;

use tagstream_rules::state::UserState;
use tagstream_state::keys::prefix_end;
use tagstream_state::{Cf, StateStore, WriteBatch};

use super::Engine;
use crate::error::Result;
use crate::schema::{
    changelog_seq_key, parse_offsets_key, partition_meta_key, timer_key, KAFKA_OFFSETS_END,
    KAFKA_OFFSETS_START, META_CHANGELOG_ACKED, META_CHANGELOG_SERIAL, META_CLOCK, META_DELETES,
    META_RELEASED,
};

impl Engine {
    /// Marks `partitions` as released by a rebalance (see the module documentation).
    pub fn mark_released(&mut self, partitions: &BTreeSet<u32>) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for p in partitions {
            batch.put(Cf::Meta, partition_meta_key(META_RELEASED, *p), Vec::new());
        }
        self.store.commit(batch)?;
        Ok(())
    }

    /// Clears the marks of `partitions`: they are assigned here again.
    pub fn mark_assigned(&mut self, partitions: &BTreeSet<u32>) -> Result<()> {
        let released = self.released()?;
        let mut batch = WriteBatch::new();
        for p in partitions.intersection(&released) {
            batch.delete(Cf::Meta, partition_meta_key(META_RELEASED, *p));
        }
        if !batch.is_empty() {
            self.store.commit(batch)?;
        }
        Ok(())
    }

    /// The partitions marked released.
    pub fn released(&self) -> Result<BTreeSet<u32>> {
        let end = prefix_end(META_RELEASED);
        self.store
            .scan(Cf::Meta, META_RELEASED, end.as_deref(), usize::MAX)?
            .into_iter()
            .map(|(k, _)| {
                tagstream_state::keys::decode_u32_be(&k[META_RELEASED.len()..]).ok_or_else(|| {
                    crate::error::ConsumerError::Corrupt("released partition key".into())
                })
            })
            .collect()
    }

    /// Partitions with local state that this instance does not own: every one not assigned
    /// once the assignment is known, the ones marked released before.
    pub(super) fn not_owned(&self) -> Result<BTreeSet<u32>> {
        match &self.owned {
            Some(owned) if !owned.is_empty() => Ok(self
                .clocks
                .keys()
                .copied()
                .chain(self.released()?)
                .filter(|p| !owned.contains(p))
                .collect()),
            _ => self.released(),
        }
    }

    /// Deletes everything this store holds of `partition` (users, timers, ids of its users,
    /// segment bitmaps, engine time, delete count, input offsets, changelog position and staged
    /// records, the released mark), in one atomic write. Transitions already in the outbox
    /// stay: they were committed while this instance owned the partition. Returns the number
    /// of users.
    pub fn drop_partition(&mut self, partition: u32) -> Result<u64> {
        let store = self.store.clone();
        let mut batch = WriteBatch::new();
        let (start, end) = tagstream_state::keys::partition_range(partition);
        let users = store.scan(Cf::Users, &start, end.as_deref(), usize::MAX)?;
        for (key, bytes) in &users {
            batch.delete(Cf::Users, key.clone());
            let user = String::from_utf8_lossy(&key[start.len()..]);
            if let Ok(state) = UserState::decode(bytes) {
                if let Some(t) = state.next_timer {
                    batch.delete(Cf::Timers, timer_key(partition, t, &user));
                }
            }
            if let Some(id) = self.ids.lookup(store.as_ref(), &user)? {
                self.ids.forget(&user, id, &mut batch);
            }
        }
        for (key, _) in store.scan(Cf::Timers, &start, end.as_deref(), usize::MAX)? {
            batch.delete(Cf::Timers, key);
        }
        self.bitmaps.drop_partition(partition, &mut batch);
        for prefix in [
            META_CLOCK,
            META_DELETES,
            META_CHANGELOG_SERIAL,
            META_CHANGELOG_ACKED,
            META_RELEASED,
        ] {
            batch.delete(Cf::Meta, partition_meta_key(prefix, partition));
        }
        stage_offsets_delete(store.as_ref(), partition, &mut batch)?;
        for (seq, entry) in self.changelog_from(0, usize::MAX)? {
            if entry.partition == partition {
                batch.delete(Cf::Changelog, changelog_seq_key(seq).to_vec());
            }
        }
        self.stage_forget_undelivered(partition, &mut batch);
        store.commit(batch)?;
        self.undelivered.remove(&partition);
        self.ids.committed();
        self.clocks.remove(&partition);
        self.deletes.remove(&partition);
        self.serials.remove(&partition);
        self.timer_floor.remove(&partition);
        self.cache.retain(|(q, _), _| *q != partition);
        Ok(users.len() as u64)
    }

    /// Drops the local copies of the partitions this instance does not own (before a reload).
    pub(super) fn drop_not_owned(&mut self) -> Result<()> {
        for p in self.not_owned()? {
            let users = self.drop_partition(p)?;
            tracing::info!(
                partition = p,
                users,
                "rules reload: dropped the local copy of a partition this instance does not own (restored or rebuilt if it comes back)"
            );
        }
        Ok(())
    }
}

/// Stages the deletion of every Kafka input offset stored for engine `partition` (any topic).
pub(super) fn stage_offsets_delete(
    store: &dyn StateStore,
    partition: u32,
    batch: &mut WriteBatch,
) -> Result<()> {
    for (k, _) in store.scan(
        Cf::Offsets,
        KAFKA_OFFSETS_START,
        Some(KAFKA_OFFSETS_END),
        usize::MAX,
    )? {
        if parse_offsets_key(&k).is_some_and(|(_, q)| u32::try_from(q).ok() == Some(partition)) {
            batch.delete(Cf::Offsets, k);
        }
    }
    Ok(())
}
