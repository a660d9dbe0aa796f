//! Helpers shared by the engine tests. (Each test binary uses a different subset.)
#![allow(dead_code)]

use tagstream_state::{Cf, KeyValue, RocksStore, StateStore, StoreError, StoreHealth, WriteBatch};

/// One count tag and one segment: users who viewed twice.
pub const TWO_VIEWS_RULES: &str = r#"
[[tag]]
name = "views"
kind = "count"
event = "view"

[[segment]]
name = "viewers"
when = "views >= 2"
"#;

/// What a test does around a real store's writes: record them (ordering tests) or fail them
/// (fault injection). Reads are never intercepted.
pub trait Hooks: Send + Sync {
    /// Runs before a commit; an error fails the commit and nothing is written.
    fn commit(&self, _batch: &WriteBatch) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs before the write-ahead log is synced.
    fn sync(&self) {}
}

/// A real RocksDB store with [`Hooks`] on its writes.
pub struct Hooked<H> {
    pub inner: RocksStore,
    pub hooks: H,
}

impl<H: Hooks> StateStore for Hooked<H> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(cf, key)
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.multi_get(cf, keys)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan(cf, start, end, limit)
    }

    fn for_each(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.for_each(cf, start, end, f)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.hooks.commit(&batch)?;
        self.inner.commit(batch)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.hooks.sync();
        self.inner.sync()
    }

    fn approximate_size_bytes(&self) -> u64 {
        self.inner.approximate_size_bytes()
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
}
