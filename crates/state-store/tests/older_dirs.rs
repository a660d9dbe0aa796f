//! A state dir written by an older version lacks the newer column families. Opened read-write
//! they are created; opened read-only (a `dump` beside a running service) they read as empty
//! and a write to one is a clear error, never a refusal to open.

use tagstream_state::{Cf, RocksStore, StateStore, StoreError, StoreOptions, WriteBatch};

/// A directory holding every column family but `missing`, with one user stored.
fn older_dir(missing: Cf) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let names: Vec<&str> = Cf::ALL
        .iter()
        .filter(|&&cf| cf != missing)
        .map(|cf| cf.name())
        .collect();
    let db = rocksdb::DB::open_cf(&opts, dir.path(), &names).unwrap();
    db.put_cf(db.cf_handle(Cf::Users.name()).unwrap(), b"u1", b"state")
        .unwrap();
    drop(db);
    dir
}

#[test]
fn a_read_only_open_of_an_older_dir_reads_missing_column_families_as_empty() {
    let dir = older_dir(Cf::Changelog);
    let read_only = StoreOptions {
        read_only: true,
        ..StoreOptions::default()
    };
    let store = RocksStore::open_with(dir.path(), read_only).unwrap();
    assert_eq!(
        store.get(Cf::Users, b"u1").unwrap().as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(store.get(Cf::Changelog, b"k").unwrap(), None);
    assert_eq!(
        store.multi_get(Cf::Changelog, &[b"a", b"b"]).unwrap(),
        [None, None]
    );
    assert!(store
        .scan(Cf::Changelog, &[], None, usize::MAX)
        .unwrap()
        .is_empty());
    let _ = store.health();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Changelog, b"k".to_vec(), b"v".to_vec());
    match store.commit(batch) {
        Err(StoreError::MissingColumnFamily { cf, .. }) => assert_eq!(cf, "changelog"),
        other => panic!("expected MissingColumnFamily, got {other:?}"),
    }
    drop(store);

    // Read-write, the column family is created and the old data is all there.
    let store = RocksStore::open(dir.path()).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Changelog, b"k".to_vec(), b"v".to_vec());
    store.commit(batch).unwrap();
    assert_eq!(
        store.get(Cf::Users, b"u1").unwrap().as_deref(),
        Some(&b"state"[..])
    );
}
