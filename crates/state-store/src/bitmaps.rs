//! [`SegmentBitmaps`]: segment memberships as roaring bitmaps of [`UserIds`](crate::UserIds)
//! ids, one per (segment, partition), held in memory and persisted in [`Cf::Segments`].
//!
//! Key: segment name bytes + `0x00` + partition (`u32` BE); value: the bitmap in the
//! portable roaring format. The reserved segment name `""` ([`PRESENT`]) holds the users
//! present in each partition, so [`SegmentBitmaps::all_users`] needs no scan.

use std::collections::{BTreeMap, BTreeSet};

use roaring::RoaringBitmap;

use crate::keys::u32_be;
use crate::{Cf, StateStore, StoreError, WriteBatch};

/// The reserved segment name of the per-partition "present users" bitmaps.
pub const PRESENT: &str = "";

fn bitmap_key(segment: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(segment.len() + 5);
    k.extend_from_slice(segment.as_bytes());
    k.push(0);
    k.extend_from_slice(&u32_be(partition));
    k
}

/// Inverse of [`bitmap_key`]; parsed from the end, so a name may itself contain `0x00`.
fn parse_key(key: &[u8]) -> Result<(String, u32), StoreError> {
    let corrupt = |detail: String| StoreError::corrupt(Cf::Segments.name(), "bitmap key", detail);
    let (head, p) = key
        .split_last_chunk::<4>()
        .ok_or_else(|| corrupt(format!("{key:?} is shorter than 5 bytes")))?;
    let name = match head.split_last() {
        Some((0, name)) => name,
        _ => return Err(corrupt(format!("{key:?} lacks the 0x00 separator"))),
    };
    let name = String::from_utf8(name.to_vec()).map_err(|e| corrupt(e.to_string()))?;
    Ok((name, u32::from_be_bytes(*p)))
}

/// In-memory segment bitmaps with dirty tracking.
///
/// Mutations only touch memory; [`SegmentBitmaps::flush_dirty`] stages the changed
/// bitmaps (whole) into the batch that also carries the state changes behind them, so
/// bitmaps and user state commit together.
#[derive(Debug, Default)]
pub struct SegmentBitmaps {
    /// segment → partition → members. Empty bitmaps are removed.
    maps: BTreeMap<String, BTreeMap<u32, RoaringBitmap>>,
    /// (segment, partition) changed since the last flush.
    dirty: BTreeSet<(String, u32)>,
    /// While a savepoint is open: how to undo each change made since, in order.
    journal: Option<Journal>,
}

/// What [`SegmentBitmaps::rollback`] needs to put memory back as it was at
/// [`SegmentBitmaps::savepoint`].
#[derive(Debug)]
struct Journal {
    dirty: BTreeSet<(String, u32)>,
    undo: Vec<Undo>,
}

#[derive(Debug)]
enum Undo {
    /// `id` was added to (segment, partition): remove it.
    Added(String, u32, u32),
    /// `id` was removed from (segment, partition): add it back.
    Removed(String, u32, u32),
    /// A whole bitmap was dropped from memory: restore it.
    Dropped(String, u32, RoaringBitmap),
}

impl SegmentBitmaps {
    /// No bitmaps (a fresh state dir).
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every bitmap stored in [`Cf::Segments`].
    pub fn load(store: &dyn StateStore) -> Result<Self, StoreError> {
        let mut this = Self::new();
        this.load_matching(store, |_| true)?;
        Ok(this)
    }

    /// Loads (replacing what is held) the bitmaps of `partition`, e.g. when it is
    /// assigned to this process again.
    pub fn load_partition(
        &mut self,
        store: &dyn StateStore,
        partition: u32,
    ) -> Result<(), StoreError> {
        self.unload_partition(partition);
        self.load_matching(store, |p| p == partition)
    }

    fn load_matching(
        &mut self,
        store: &dyn StateStore,
        wanted: impl Fn(u32) -> bool,
    ) -> Result<(), StoreError> {
        let mut failure = None;
        store.for_each(Cf::Segments, b"", None, &mut |k, v| {
            let loaded = parse_key(k).and_then(|(segment, partition)| {
                if !wanted(partition) {
                    return Ok(());
                }
                let bitmap = RoaringBitmap::deserialize_from(v).map_err(|e| {
                    StoreError::corrupt(
                        Cf::Segments.name(),
                        "bitmap",
                        format!("segment {segment:?} partition {partition}: {e}"),
                    )
                })?;
                if !bitmap.is_empty() {
                    self.maps
                        .entry(segment)
                        .or_default()
                        .insert(partition, bitmap);
                }
                Ok(())
            });
            match loaded {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Adds `id` to `segment` in `partition`; true if it was not there.
    pub fn insert(&mut self, segment: &str, partition: u32, id: u32) -> bool {
        let bitmap = self
            .maps
            .entry(segment.to_owned())
            .or_default()
            .entry(partition)
            .or_default();
        let added = bitmap.insert(id);
        if added {
            self.mark_dirty(segment, partition);
            self.journal_push(|| Undo::Added(segment.to_owned(), partition, id));
        }
        added
    }

    /// Removes `id` from `segment` in `partition`; true if it was there.
    pub fn remove(&mut self, segment: &str, partition: u32, id: u32) -> bool {
        let Some(parts) = self.maps.get_mut(segment) else {
            return false;
        };
        let Some(bitmap) = parts.get_mut(&partition) else {
            return false;
        };
        let removed = bitmap.remove(id);
        if bitmap.is_empty() {
            parts.remove(&partition);
            if parts.is_empty() {
                self.maps.remove(segment);
            }
        }
        if removed {
            self.mark_dirty(segment, partition);
            self.journal_push(|| Undo::Removed(segment.to_owned(), partition, id));
        }
        removed
    }

    /// Whether `id` is in `segment` in `partition`.
    pub fn contains(&self, segment: &str, partition: u32, id: u32) -> bool {
        self.get(segment, partition).is_some_and(|b| b.contains(id))
    }

    /// The bitmap of `segment` in `partition`, if it has members.
    pub fn get(&self, segment: &str, partition: u32) -> Option<&RoaringBitmap> {
        self.maps.get(segment)?.get(&partition)
    }

    /// Members of `segment` over every partition held.
    pub fn union_of(&self, segment: &str) -> RoaringBitmap {
        self.union_where(segment, |_| true)
    }

    /// Members of `segment` over the partitions `keep` accepts.
    pub fn union_where(&self, segment: &str, keep: impl Fn(u32) -> bool) -> RoaringBitmap {
        self.maps
            .get(segment)
            .map(|parts| {
                parts
                    .iter()
                    .filter(|(p, _)| keep(**p))
                    .fold(RoaringBitmap::new(), |acc, (_, b)| acc | b)
            })
            .unwrap_or_default()
    }

    /// Number of members of `segment` over every partition held.
    pub fn len(&self, segment: &str) -> u64 {
        self.len_where(segment, |_| true)
    }

    /// Number of members of `segment` over the partitions `keep` accepts.
    pub fn len_where(&self, segment: &str, keep: impl Fn(u32) -> bool) -> u64 {
        self.maps.get(segment).map_or(0, |parts| {
            parts
                .iter()
                .filter(|(p, _)| keep(**p))
                .map(|(_, b)| b.len())
                .sum()
        })
    }

    /// Names of the segments with at least one member (excluding [`PRESENT`]), sorted.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.maps
            .keys()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Records that `id` is present (has state) in `partition`; true if it was not.
    pub fn mark_present(&mut self, partition: u32, id: u32) -> bool {
        self.insert(PRESENT, partition, id)
    }

    /// Records that `id` is no longer present in `partition`; true if it was.
    pub fn mark_absent(&mut self, partition: u32, id: u32) -> bool {
        self.remove(PRESENT, partition, id)
    }

    /// Every present user over the partitions held.
    pub fn all_users(&self) -> RoaringBitmap {
        self.union_of(PRESENT)
    }

    /// Removes `id` from every segment (and the present set) of `partition`, e.g. on a
    /// user `delete`. Returns the segments it left (excluding [`PRESENT`]).
    pub fn remove_everywhere(&mut self, partition: u32, id: u32) -> Vec<String> {
        let holding: Vec<String> = self
            .maps
            .iter()
            .filter(|(_, parts)| parts.get(&partition).is_some_and(|b| b.contains(id)))
            .map(|(s, _)| s.clone())
            .collect();
        for segment in &holding {
            self.remove(segment, partition, id);
        }
        holding.into_iter().filter(|s| !s.is_empty()).collect()
    }

    /// Forgets `partition`'s bitmaps and stages their deletion (the partition's state is
    /// being dropped). Deletes what is held: the partition must be loaded (it is after
    /// [`SegmentBitmaps::load`], not after [`SegmentBitmaps::unload_partition`]).
    pub fn drop_partition(&mut self, partition: u32, batch: &mut WriteBatch) {
        // Bitmaps emptied since the last flush are no longer held but still on disk.
        let mut gone: BTreeSet<String> = self
            .dirty
            .iter()
            .filter(|(_, p)| *p == partition)
            .map(|(s, _)| s.clone())
            .collect();
        gone.extend(self.unload_partition(partition));
        for segment in gone {
            batch.delete(Cf::Segments, bitmap_key(&segment, partition));
        }
    }

    /// Forgets `partition`'s bitmaps from memory only (e.g. the partition was revoked
    /// but its state stays on disk). Unflushed changes to them are discarded. Returns
    /// the segments that had members there.
    pub fn unload_partition(&mut self, partition: u32) -> Vec<String> {
        let mut held = Vec::new();
        let journal = &mut self.journal;
        self.maps.retain(|segment, parts| {
            if let Some(bitmap) = parts.remove(&partition) {
                held.push(segment.clone());
                if let Some(j) = journal.as_mut() {
                    j.undo
                        .push(Undo::Dropped(segment.clone(), partition, bitmap));
                }
            }
            !parts.is_empty()
        });
        self.dirty.retain(|(_, p)| *p != partition);
        held
    }

    /// Forgets `segment` in every partition and stages the deletion of its bitmaps
    /// (e.g. the rules no longer define it).
    pub fn drop_segment(&mut self, segment: &str, batch: &mut WriteBatch) {
        let dropped = self.maps.remove(segment).unwrap_or_default();
        let mut partitions: BTreeSet<u32> = dropped.keys().copied().collect();
        if let Some(j) = self.journal.as_mut() {
            j.undo.extend(
                dropped
                    .into_iter()
                    .map(|(p, bitmap)| Undo::Dropped(segment.to_owned(), p, bitmap)),
            );
        }
        self.dirty.retain(|(s, p)| {
            if s == segment {
                partitions.insert(*p);
                false
            } else {
                true
            }
        });
        for p in partitions {
            batch.delete(Cf::Segments, bitmap_key(segment, p));
        }
    }

    /// Stages every bitmap changed since the last flush (a delete for one now empty).
    pub fn flush_dirty(&mut self, batch: &mut WriteBatch) {
        for (segment, partition) in std::mem::take(&mut self.dirty) {
            let key = bitmap_key(&segment, partition);
            match self.get(&segment, partition) {
                Some(bitmap) => {
                    let mut value = Vec::with_capacity(bitmap.serialized_size());
                    bitmap
                        .serialize_into(&mut value)
                        .expect("writing to a Vec cannot fail");
                    batch.put(Cf::Segments, key, value);
                }
                None => batch.delete(Cf::Segments, key),
            }
        }
    }

    /// Number of (segment, partition) bitmaps changed since the last flush.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Starts recording changes so that [`SegmentBitmaps::rollback`] can undo them: call
    /// before changing memory for a batch whose commit may fail. Replaces an open savepoint.
    /// Costs one journal entry per change, not a copy of the bitmaps.
    pub fn savepoint(&mut self) {
        self.journal = Some(Journal {
            dirty: self.dirty.clone(),
            undo: Vec::new(),
        });
    }

    /// Puts memory (bitmaps and dirty set) back as it was at the open savepoint and closes
    /// it: the batch that made the changes was not committed. Without a savepoint, nothing.
    pub fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        for undo in journal.undo.into_iter().rev() {
            match undo {
                Undo::Added(segment, p, id) => {
                    self.remove(&segment, p, id);
                }
                Undo::Removed(segment, p, id) => {
                    self.insert(&segment, p, id);
                }
                Undo::Dropped(segment, p, bitmap) => {
                    self.maps.entry(segment).or_default().insert(p, bitmap);
                }
            }
        }
        self.dirty = journal.dirty;
    }

    /// Closes the open savepoint, keeping the changes (their batch was committed).
    pub fn release(&mut self) {
        self.journal = None;
    }

    fn journal_push(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(j) = self.journal.as_mut() {
            j.undo.push(undo());
        }
    }

    fn mark_dirty(&mut self, segment: &str, partition: u32) {
        self.dirty.insert((segment.to_owned(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(b: &SegmentBitmaps) -> (BTreeMap<String, BTreeMap<u32, RoaringBitmap>>, usize) {
        (b.maps.clone(), b.dirty_len())
    }

    #[test]
    fn rollback_restores_bitmaps_and_dirty_set_as_at_the_savepoint() {
        let mut b = SegmentBitmaps::new();
        b.insert("a", 0, 1);
        b.insert("a", 1, 2);
        b.insert("b", 0, 1);
        b.flush_dirty(&mut WriteBatch::new());
        b.insert("a", 0, 9);
        let before = snapshot(&b);

        b.savepoint();
        b.insert("a", 0, 3);
        b.remove("a", 1, 2);
        b.remove_everywhere(0, 1);
        b.mark_present(0, 3);
        b.drop_segment("a", &mut WriteBatch::new());
        b.unload_partition(0);
        b.flush_dirty(&mut WriteBatch::new());
        assert_ne!(snapshot(&b), before);
        b.rollback();
        assert_eq!(snapshot(&b), before);

        // A released savepoint keeps the changes, and a later rollback does nothing.
        b.savepoint();
        b.insert("c", 2, 7);
        b.release();
        b.rollback();
        assert!(b.contains("c", 2, 7));
    }
}
