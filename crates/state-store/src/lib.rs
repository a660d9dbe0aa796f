//! tagstream's state store: bytes in named column families, one atomic commit per batch.
//!
//! The engine encodes its own values; this crate knows nothing of rules or events. It
//! offers a small synchronous trait, [`StateStore`], with two implementations:
//! [`RocksStore`] (embedded RocksDB, one column family per [`Cf`]) and [`MemStore`]
//! (a `BTreeMap` per column family, for tests). On top of it sit two typed helpers: the
//! user-id dictionary [`UserIds`] (user id ↔ `u32`) and the per-segment roaring bitmaps
//! [`SegmentBitmaps`]; [`keys`] has the order-preserving key encodings.
//!
//! # Guarantees
//!
//! - **Atomic commit.** [`StateStore::commit`] applies every [`Op`] of a [`WriteBatch`],
//!   in order, across column families, all or nothing. Readers never see half a batch.
//!   A batch that is never committed is never visible. This is what lets the engine store
//!   input offsets, user state and outbox entries in one write.
//! - **Durability.** Once `commit` returns, the batch survives the process being killed
//!   (`kill -9`, panic, OOM kill) at any instant: RocksDB has written it to its
//!   write-ahead log in the OS page cache. Surviving *power loss or a kernel crash* needs
//!   the log fsync'd: open with [`StoreOptions { sync: true }`](StoreOptions) (every
//!   commit fsyncs) or call [`StateStore::sync`] at chosen points (e.g. on shutdown).
//! - **Key order.** Keys are compared as unsigned bytes (lexicographically, shorter prefix
//!   first); [`StateStore::scan`] and [`StateStore::for_each`] return entries in that
//!   order. The [`keys`] encodings are big-endian (sign bit flipped for `i64`), so byte
//!   order equals numeric order.
//! - **No panics on IO errors.** Every failure is a [`StoreError`] naming the state dir
//!   and what failed.

#![warn(missing_docs)]

pub mod bitmaps;
mod error;
pub mod ids;
pub mod keys;
mod mem;
mod rocks;

pub use bitmaps::SegmentBitmaps;
pub use error::StoreError;
pub use ids::UserIds;
pub use mem::MemStore;
pub use rocks::{RocksStore, StoreOptions};

use std::sync::atomic::{AtomicU64, Ordering};

/// One `(key, value)` entry of a scan.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A column family: an independent, ordered key space. One RocksDB column family each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Per-user state (tags, aggregates), keyed by the engine.
    Users,
    /// Pending time-driven re-evaluations, keyed by due time.
    Timers,
    /// Transitions awaiting delivery to the sink.
    Outbox,
    /// Input offsets, written in the same batch as the state they produced.
    Offsets,
    /// Miscellaneous engine metadata (rules hash, engine time, format version...).
    Meta,
    /// The user-id dictionary (see [`UserIds`]).
    Ids,
    /// Serialized segment bitmaps (see [`SegmentBitmaps`]).
    Segments,
    /// State changes awaiting publication to the Kafka changelog topic, in commit order.
    Changelog,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 8] = [
        Cf::Users,
        Cf::Timers,
        Cf::Outbox,
        Cf::Offsets,
        Cf::Meta,
        Cf::Ids,
        Cf::Segments,
        Cf::Changelog,
    ];

    /// The column family's name on disk (stable: renaming it loses data).
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Users => "users",
            Cf::Timers => "timers",
            Cf::Outbox => "outbox",
            Cf::Offsets => "offsets",
            Cf::Meta => "meta",
            Cf::Ids => "ids",
            Cf::Segments => "segments",
            Cf::Changelog => "changelog",
        }
    }

    /// Position in [`Cf::ALL`], for per-CF arrays.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Cf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One write inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Remove `key` (no-op if absent).
    Delete(Cf, Vec<u8>),
    /// Remove every key in `[start, end)`; an empty or inverted range is a no-op.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Writes staged for one atomic [`StateStore::commit`], applied in the order added
/// (a `Put` after a `Delete`/`DeleteRange` covering its key wins, and vice versa).
#[derive(Debug)]
pub struct WriteBatch {
    ops: Vec<Op>,
    /// Process-unique serial, so [`UserIds`] can tell batches apart.
    serial: u64,
}

impl Default for WriteBatch {
    fn default() -> Self {
        static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);
        WriteBatch {
            ops: Vec::new(),
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages `key = value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }

    /// Stages the removal of `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }

    /// Stages the removal of every key in `[start, end)` from `cf`.
    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, start.into(), end.into()));
    }

    /// Appends another batch's operations after this one's.
    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of staged operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate payload size (keys + values), e.g. to cap batch size.
    pub fn size_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(_, k, v) | Op::DeleteRange(_, k, v) => k.len() + v.len(),
                Op::Delete(_, k) => k.len(),
            })
            .sum()
    }

    /// The staged operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Consumes the batch, returning its operations in order.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }
}

/// The storage seam: ordered byte maps per [`Cf`] with atomic multi-CF commits.
///
/// Implementations are shared across threads (`&self` everywhere); reads see only
/// committed batches, each batch entirely or not at all.
pub trait StateStore: Send + Sync {
    /// The value under `key`, if any.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The values under `keys`, in the same order, read from one consistent view.
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Ordered scan of keys in `[start, end)` (`end` `None` = to the end of the CF),
    /// at most `limit` entries.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// Streaming ordered scan of `[start, end)` for large ranges (dumps): calls `f` for
    /// each entry until it returns `false`. Sees one consistent view throughout.
    fn for_each(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Applies every op atomically (all or nothing), in order. Survives a process kill
    /// once it returns; see [`StateStore::sync`] for power loss.
    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Makes every committed batch durable against power loss (fsyncs the write-ahead
    /// log). A no-op for stores without a disk.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Approximate on-disk size (live SST files + memtables), for `state_size_bytes`.
    fn approximate_size_bytes(&self) -> u64;

    /// The storage engine's health figures, for monitoring. Stores without such figures
    /// (in memory) report none.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}

/// Health figures of a storage engine (RocksDB's properties); `None` where the store has no
/// such figure or could not read it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Bytes held by the block cache (shared by every column family).
    pub block_cache_usage_bytes: Option<u64>,
    /// Bytes compaction still has to rewrite to bring the levels within their targets.
    pub pending_compaction_bytes: Option<u64>,
    /// Whether writes are stopped (too many level-0 files, memtables or pending compaction).
    pub write_stopped: Option<bool>,
    /// The rate writes are throttled to (bytes/s); 0 when writes are not delayed.
    pub delayed_write_rate: Option<u64>,
    /// Bytes of live SST files (all column families).
    pub live_sst_bytes: Option<u64>,
}
