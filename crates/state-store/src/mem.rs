//! [`MemStore`]: the in-memory twin of [`RocksStore`](crate::RocksStore), for tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use crate::{Cf, KeyValue, Op, StateStore, StoreError, WriteBatch};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A `BTreeMap` per column family behind one `RwLock`: a commit takes the write lock for
/// the whole batch, so readers see it entirely or not at all. Nothing survives the
/// process; every operation succeeds.
#[derive(Debug, Default)]
pub struct MemStore {
    cfs: RwLock<[Map; Cf::ALL.len()]>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, [Map; Cf::ALL.len()]> {
        // A panic while holding the lock cannot leave a half-applied batch behind (ops are
        // infallible map updates), so a poisoned lock is still consistent enough to read.
        self.cfs.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn range<'a>(
    map: &'a Map,
    start: &[u8],
    end: Option<&[u8]>,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    let upper = match end {
        // BTreeMap::range panics on an inverted range; an empty one is what we mean.
        Some(end) if end <= start => None,
        Some(end) => Some(Bound::Excluded(end)),
        None => Some(Bound::Unbounded),
    };
    upper
        .map(|upper| map.range::<[u8], _>((Bound::Included(start), upper)))
        .into_iter()
        .flatten()
}

impl StateStore for MemStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read()[cf.index()].get(key).cloned())
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cfs = self.read();
        let map = &cfs[cf.index()];
        Ok(keys.iter().map(|k| map.get(*k).cloned()).collect())
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let cfs = self.read();
        Ok(range(&cfs[cf.index()], start, end)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn for_each(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // Copy the range out so `f` sees one snapshot (like RocksDB's iterator) and may
        // itself read or commit without deadlocking on the lock.
        let snapshot = self.scan(cf, start, end, usize::MAX)?;
        for (k, v) in &snapshot {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut cfs = self.cfs.write().unwrap_or_else(PoisonError::into_inner);
        for op in batch.into_ops() {
            match op {
                Op::Put(cf, k, v) => {
                    cfs[cf.index()].insert(k, v);
                }
                Op::Delete(cf, k) => {
                    cfs[cf.index()].remove(&k);
                }
                Op::DeleteRange(cf, start, end) => {
                    let map = &mut cfs[cf.index()];
                    if start < end {
                        // Split off [start, ..), then give back [end, ..).
                        let mut tail = map.split_off(&start);
                        let mut kept = tail.split_off(&end);
                        map.append(&mut kept);
                    }
                }
            }
        }
        Ok(())
    }

    fn approximate_size_bytes(&self) -> u64 {
        self.read()
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}
