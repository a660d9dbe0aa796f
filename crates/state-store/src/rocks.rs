//! [`RocksStore`]: the embedded RocksDB implementation of [`StateStore`].
//!
//! One RocksDB column family per [`Cf`]; a commit is one RocksDB `WriteBatch` written
//! through the write-ahead log, which RocksDB applies atomically across column families
//! and replays on open after a crash.
//!
//! Tuning targets a write-heavy, point-lookup workload on a small (2-core) machine; see
//! [`RocksStore::open_with`] for the choices.

use std::path::{Path, PathBuf};

use rocksdb::properties::{self, PropName};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, DBWithThreadMode, DataBlockIndexType, Options, ReadOptions, SingleThreaded,
    WriteOptions, DEFAULT_COLUMN_FAMILY_NAME,
};

use crate::{Cf, KeyValue, Op, StateStore, StoreError, WriteBatch};

const MIB: usize = 1024 * 1024;

/// How a [`RocksStore`] is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// fsync the write-ahead log on every commit. Off (the default), a committed batch
    /// survives a process kill but the last few may be lost on power loss or a kernel
    /// crash; on, each commit costs a disk flush (~ms on SSDs, far more on network disks).
    pub sync: bool,
    /// Size of the block cache shared by all column families (data, index and filter
    /// blocks). Default 256 MiB.
    pub block_cache_bytes: usize,
    /// Open without the directory's lock, for reading only (commits fail): a `dump` beside a
    /// running service. It sees every batch committed before the open (the write-ahead log is
    /// replayed into memory, not written).
    pub read_only: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: false,
            block_cache_bytes: 256 * MIB,
            read_only: false,
        }
    }
}

/// The RocksDB-backed [`StateStore`]. One process may open a directory at a time
/// (RocksDB's `LOCK` file); a second open fails with [`StoreError::Locked`].
pub struct RocksStore {
    db: DBWithThreadMode<SingleThreaded>,
    path: PathBuf,
    write_opts: WriteOptions,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RocksStore {
    /// Opens (creating if missing) the state directory `dir` with default options.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if missing) the state directory `dir` and any missing column
    /// family.
    ///
    /// Tuning, for a write-heavy point-lookup workload on a small machine:
    /// - 2 background threads (`increase_parallelism(2)`) so flushes and compactions
    ///   keep up without starving the engine on 2 cores;
    /// - LZ4 on every level (cheap CPU, ~2x on JSON-ish state);
    /// - one LRU block cache for all column families, with index and filter blocks
    ///   charged to it (memory stays bounded as the data grows) and L0's pinned;
    /// - full-key bloom filters (10 bits/key, ~1% false positives) and a data-block hash
    ///   index on `users` and `ids`, which are read by exact key on every event; none on
    ///   the scanned column families;
    /// - `timers` and `outbox` are queues (insert, scan from the front, delete): SST files
    ///   dense with tombstones are compacted early so front-of-queue scans stay fast;
    /// - memtables capped at 64 MiB in total and the WAL at 64 MiB, so a rarely written
    ///   column family (`meta`, `segments`) cannot pin old log files forever.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let path = dir.to_path_buf();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_db_write_buffer_size(64 * MIB);
        db_opts.set_max_total_wal_size(64 * MIB as u64);
        db_opts.set_bytes_per_sync(MIB as u64);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_log_file_size(16 * MIB);

        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let existing = DBWithThreadMode::<SingleThreaded>::list_cf(&db_opts, dir).ok();
        // A read-only open cannot create the column families an older version did not have:
        // those read as empty (see `handle`).
        let mut descriptors: Vec<ColumnFamilyDescriptor> = Cf::ALL
            .iter()
            .filter(|cf| {
                !options.read_only
                    || existing
                        .as_ref()
                        .is_none_or(|names| names.iter().any(|n| n == cf.name()))
            })
            .map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf, &cache)))
            .collect();
        // Column families written by a newer version must be opened too, or RocksDB
        // refuses the directory; they keep default options. (Fails on a new directory.)
        if let Some(existing) = existing {
            for name in existing {
                let known = name == DEFAULT_COLUMN_FAMILY_NAME
                    || Cf::ALL.iter().any(|cf| cf.name() == name);
                if !known {
                    descriptors.push(ColumnFamilyDescriptor::new(name, Options::default()));
                }
            }
        }

        let opened = if options.read_only {
            DBWithThreadMode::<SingleThreaded>::open_cf_descriptors_read_only(
                &db_opts,
                dir,
                descriptors,
                false,
            )
        } else {
            DBWithThreadMode::<SingleThreaded>::open_cf_descriptors(&db_opts, dir, descriptors)
        };
        let db = opened.map_err(|source| {
            if is_lock_error(&source) {
                StoreError::Locked {
                    path: path.clone(),
                    source,
                }
            } else {
                StoreError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(options.sync);
        Ok(RocksStore {
            db,
            path,
            write_opts,
        })
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The column family's handle: always there, except in a directory written by an older
    /// version and opened read-only, where a missing column family reads as empty.
    fn handle(&self, cf: Cf) -> Option<&ColumnFamily> {
        self.db.cf_handle(cf.name())
    }

    fn read_err(&self, cf: Cf) -> impl FnOnce(rocksdb::Error) -> StoreError + '_ {
        move |source| StoreError::Read {
            path: self.path.clone(),
            cf: cf.name(),
            source,
        }
    }

    /// Iterates `[start, end)` of `cf`, stopping when `f` returns false.
    fn iterate(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        fill_cache: bool,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut read_opts = ReadOptions::default();
        if let Some(end) = end {
            if end <= start {
                return Ok(());
            }
            // Lets RocksDB stop at `end` instead of skipping tombstones beyond it.
            read_opts.set_iterate_upper_bound(end);
        }
        read_opts.fill_cache(fill_cache);
        let Some(handle) = self.handle(cf) else {
            return Ok(());
        };
        let mut it = self.db.raw_iterator_cf_opt(handle, read_opts);
        it.seek(start);
        while let Some((k, v)) = it.item() {
            if !f(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(self.read_err(cf))
    }
}

/// Whether `e` is RocksDB failing to take the directory's `LOCK` file ("While lock
/// file: <dir>/LOCK: Resource temporarily unavailable" from another process, "lock hold
/// by current process" from this one). Matching on the file name, not the word "lock",
/// so a directory like `/srv/blocks` is not mistaken for it.
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let msg = e.as_ref();
    msg.contains("While lock file")
        || msg.contains("lock hold by current process")
        || msg.contains("/LOCK:")
}

/// The column family and key an operation writes (a range: its start).
fn op_key(op: &Op) -> (Cf, &[u8]) {
    match op {
        Op::Put(cf, k, _) | Op::Delete(cf, k) | Op::DeleteRange(cf, k, _) => (*cf, k.as_slice()),
    }
}

/// Per-column-family options.
fn cf_options(cf: Cf, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Partitioned (two-level) index and filters: a point lookup loads one small index and one
    // small filter partition into the cache, not a whole file's multi-megabyte index and
    // filter, which a bounded cache cannot hold for millions of users (every `get` then read,
    // decompressed and checksummed them again: the cliff past a few million users).
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);

    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(DBCompressionType::Lz4);
    match cf {
        Cf::Users | Cf::Ids => {
            table.set_bloom_filter(10.0, false);
            table.set_partition_filters(true);
            table.set_optimize_filters_for_memory(true);
            table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
            table.set_data_block_hash_ratio(0.75);
            opts.set_write_buffer_size(32 * MIB);
        }
        Cf::Timers | Cf::Outbox | Cf::Changelog => {
            // Mark an SST for compaction when 50 of any 128 consecutive entries are
            // tombstones (or half of the file is).
            opts.add_compact_on_deletion_collector_factory(128, 50, 0.5);
            opts.set_write_buffer_size(16 * MIB);
        }
        Cf::Offsets | Cf::Meta | Cf::Segments => {
            opts.set_write_buffer_size(8 * MIB);
        }
    }
    opts.set_block_based_table_factory(&table);
    opts
}

impl StateStore for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(handle) = self.handle(cf) else {
            return Ok(None);
        };
        self.db.get_cf(handle, key).map_err(self.read_err(cf))
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let Some(handle) = self.handle(cf) else {
            return Ok(vec![None; keys.len()]);
        };
        self.db
            .batched_multi_get_cf(handle, keys.iter(), false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(self.read_err(cf)))
            .collect()
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.iterate(cf, start, end, true, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < limit
        })?;
        Ok(out)
    }

    fn for_each(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // A dump reads everything once: keep it from evicting the engine's hot blocks.
        self.iterate(cf, start, end, false, f)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ops = batch.len();
        let mut staged = batch.into_ops();
        // RocksDB inserts a batch into its skiplist memtables in the order given; in key order
        // each insert starts from the previous one's position instead of searching from the
        // top (a large share of commit time for batches of 100k+ users in hash order). Point
        // operations on different keys commute, and a stable sort keeps one key's operations
        // in order; a range deletion does not commute with them, so each run of point
        // operations between two range deletions is sorted on its own (the engine's batches
        // carry one on the first batch of each day, for the size history).
        for run in staged.split_mut(|op| matches!(op, Op::DeleteRange(..))) {
            run.sort_by(|a, b| op_key(a).cmp(&op_key(b)));
        }
        let mut wb = rocksdb::WriteBatch::default();
        for op in staged {
            let cf = match &op {
                Op::Put(cf, ..) | Op::Delete(cf, _) | Op::DeleteRange(cf, ..) => *cf,
            };
            let handle = self
                .handle(cf)
                .ok_or_else(|| StoreError::MissingColumnFamily {
                    path: self.path.clone(),
                    cf: cf.name(),
                })?;
            match op {
                Op::Put(_, k, v) => wb.put_cf(handle, k, v),
                Op::Delete(_, k) => wb.delete_cf(handle, k),
                // RocksDB rejects an inverted range; ours is an empty one.
                Op::DeleteRange(_, start, end) if start >= end => {}
                Op::DeleteRange(_, start, end) => wb.delete_range_cf(handle, start, end),
            }
        }
        self.db
            .write_opt(wb, &self.write_opts)
            .map_err(|source| StoreError::Commit {
                path: self.path.clone(),
                ops,
                source,
            })
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|source| StoreError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    fn approximate_size_bytes(&self) -> u64 {
        let prop = |cf: Cf, name: &PropName| {
            self.handle(cf)
                .and_then(|h| self.db.property_int_value_cf(h, name).ok().flatten())
                .unwrap_or(0)
        };
        Cf::ALL
            .iter()
            .map(|&cf| {
                prop(cf, properties::LIVE_SST_FILES_SIZE)
                    + prop(cf, properties::CUR_SIZE_ALL_MEM_TABLES)
            })
            .sum()
    }

    fn health(&self) -> crate::StoreHealth {
        self.rocksdb_health()
    }
}

/// RocksDB's health properties, for the `tagstream_rocksdb_*` gauges.
impl RocksStore {
    fn rocksdb_health(&self) -> crate::StoreHealth {
        let db_prop = |name: &PropName| self.db.property_int_value(name).ok().flatten();
        let cf_sum = |name: &PropName| {
            Cf::ALL.iter().try_fold(0u64, |sum, &cf| {
                let v = self
                    .handle(cf)
                    .and_then(|h| self.db.property_int_value_cf(h, name).ok().flatten())
                    .unwrap_or(0);
                Some(sum + v)
            })
        };
        crate::StoreHealth {
            // One cache is shared by our column families, so any of their handles reports
            // all of it (the default column family has a cache of its own).
            block_cache_usage_bytes: self.handle(Cf::ALL[0]).and_then(|h| {
                self.db
                    .property_int_value_cf(h, properties::BLOCK_CACHE_USAGE)
                    .ok()
                    .flatten()
            }),
            pending_compaction_bytes: cf_sum(properties::ESTIMATE_PENDING_COMPACTION_BYTES),
            write_stopped: db_prop(properties::IS_WRITE_STOPPED).map(|v| v != 0),
            delayed_write_rate: db_prop(properties::ACTUAL_DELAYED_WRITE_RATE),
            live_sst_bytes: cf_sum(properties::LIVE_SST_FILES_SIZE),
        }
    }
}
