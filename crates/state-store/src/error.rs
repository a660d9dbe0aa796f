//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the state store.
///
/// Messages are lowercase, name the state directory and what was being done, and say
/// what to do where there is something to do. None of these is a bad-input error: the
/// engine should stop without committing (its last committed batch is intact on disk).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another `RocksStore` in this one) holds the directory's lock.
    #[error("cannot open state dir {path}: {source}; is another tagstream process using it?")]
    Locked {
        /// The state directory.
        path: PathBuf,
        /// RocksDB's own error.
        #[source]
        source: rocksdb::Error,
    },

    /// RocksDB refused to open the directory (corruption, permissions, bad options...).
    #[error("cannot open state dir {path}: {source}")]
    Open {
        /// The state directory.
        path: PathBuf,
        /// RocksDB's own error.
        #[source]
        source: rocksdb::Error,
    },

    /// The state directory could not be created.
    #[error("cannot create state dir {path}: {source}")]
    CreateDir {
        /// The state directory.
        path: PathBuf,
        /// The filesystem error.
        #[source]
        source: io::Error,
    },

    /// A read (get, multi_get, scan) failed.
    #[error("reading column family `{cf}` in state dir {path}: {source}")]
    Read {
        /// The state directory.
        path: PathBuf,
        /// The column family read.
        cf: &'static str,
        /// RocksDB's own error.
        #[source]
        source: rocksdb::Error,
    },

    /// A write to a column family that a read-only open found missing (a state dir written by
    /// an older version, opened read-only, has none of the newer column families).
    #[error("column family `{cf}` does not exist in state dir {path} (opened read-only); open it read-write once with this version to create it")]
    MissingColumnFamily {
        /// The state directory.
        path: PathBuf,
        /// The column family.
        cf: &'static str,
    },

    /// An atomic commit failed; none of its operations were applied.
    #[error("committing a batch of {ops} operations to state dir {path}: {source}")]
    Commit {
        /// The state directory.
        path: PathBuf,
        /// Operations in the batch.
        ops: usize,
        /// RocksDB's own error.
        #[source]
        source: rocksdb::Error,
    },

    /// Syncing the write-ahead log to disk failed.
    #[error("syncing the write-ahead log of state dir {path}: {source}")]
    Sync {
        /// The state directory.
        path: PathBuf,
        /// RocksDB's own error.
        #[source]
        source: rocksdb::Error,
    },

    /// A stored value this crate encodes itself (ids, bitmaps) could not be decoded.
    #[error("corrupt {what} in column family `{cf}`: {detail}")]
    Corrupt {
        /// The column family holding the value.
        cf: &'static str,
        /// What the value is (e.g. `user id`, `bitmap`).
        what: &'static str,
        /// What is wrong with it, and where.
        detail: String,
    },

    /// All 2^32 user ids have been handed out.
    #[error("user id space exhausted: 2^32 ids assigned in this state dir")]
    IdsExhausted,
}

impl StoreError {
    pub(crate) fn corrupt(cf: &'static str, what: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            cf,
            what,
            detail: detail.into(),
        }
    }
}
