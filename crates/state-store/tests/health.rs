//! `StateStore::health`: RocksDB reports its figures; a store without them reports none.

use tagstream_state::{Cf, MemStore, RocksStore, StateStore, StoreHealth, WriteBatch};

#[test]
fn rocksdb_reports_its_health_figures() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..1000u32 {
        batch.put(Cf::Users, i.to_be_bytes().to_vec(), vec![7u8; 100]);
    }
    store.commit(batch).unwrap();
    // Reads go through the block cache once the data is in SST files; before, the memtable.
    for i in 0..1000u32 {
        assert!(store.get(Cf::Users, &i.to_be_bytes()).unwrap().is_some());
    }
    let h = store.health();
    assert_eq!(h.write_stopped, Some(false), "{h:?}");
    assert_eq!(h.delayed_write_rate, Some(0), "{h:?}");
    assert!(h.block_cache_usage_bytes.is_some(), "{h:?}");
    assert!(h.pending_compaction_bytes.is_some(), "{h:?}");
    assert!(h.live_sst_bytes.is_some(), "{h:?}");
}

#[test]
fn an_in_memory_store_has_no_health_figures() {
    assert_eq!(MemStore::new().health(), StoreHealth::default());
}
