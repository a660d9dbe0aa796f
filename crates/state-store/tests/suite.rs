//! One behavioural suite run against both `MemStore` and `RocksStore`, plus
//! RocksDB-only tests for what outlives the process (reopen, lock, crash).

use std::path::Path;

use tagstream_state::bitmaps::PRESENT;
use tagstream_state::keys::{i64_ordered, prefix_end, prefixed};
use tagstream_state::{
    Cf, MemStore, RocksStore, SegmentBitmaps, StateStore, StoreError, StoreOptions, UserIds,
    WriteBatch,
};

type Kv = (Vec<u8>, Vec<u8>);

fn put_all(store: &dyn StateStore, cf: Cf, pairs: &[(&[u8], &[u8])]) {
    let mut b = WriteBatch::new();
    for (k, v) in pairs {
        b.put(cf, *k, *v);
    }
    store.commit(b).unwrap();
}

fn kv(k: &[u8], v: &[u8]) -> Kv {
    (k.to_vec(), v.to_vec())
}

fn keys_of(entries: &[Kv]) -> Vec<&[u8]> {
    entries.iter().map(|(k, _)| &k[..]).collect()
}

// ---------------------------------------------------------------- the shared suite

fn get_put_delete(s: &dyn StateStore) {
    assert_eq!(s.get(Cf::Users, b"u1").unwrap(), None);
    put_all(s, Cf::Users, &[(b"u1", b"one")]);
    put_all(s, Cf::Meta, &[(b"u1", b"meta")]);
    assert_eq!(s.get(Cf::Users, b"u1").unwrap(), Some(b"one".to_vec()));
    // Column families are separate key spaces.
    assert_eq!(s.get(Cf::Meta, b"u1").unwrap(), Some(b"meta".to_vec()));
    assert_eq!(s.get(Cf::Timers, b"u1").unwrap(), None);

    put_all(s, Cf::Users, &[(b"u1", b"uno")]);
    assert_eq!(s.get(Cf::Users, b"u1").unwrap(), Some(b"uno".to_vec()));

    // Empty keys and values are ordinary.
    put_all(s, Cf::Users, &[(b"", b"")]);
    assert_eq!(s.get(Cf::Users, b"").unwrap(), Some(vec![]));

    let mut b = WriteBatch::new();
    b.delete(Cf::Users, b"u1".to_vec());
    b.delete(Cf::Users, b"never-there".to_vec());
    s.commit(b).unwrap();
    assert_eq!(s.get(Cf::Users, b"u1").unwrap(), None);
    assert_eq!(s.get(Cf::Meta, b"u1").unwrap(), Some(b"meta".to_vec()));

    // An empty batch commits and changes nothing.
    s.commit(WriteBatch::new()).unwrap();
    assert_eq!(s.get(Cf::Users, b"").unwrap(), Some(vec![]));
}

fn multi_get(s: &dyn StateStore) {
    put_all(s, Cf::Ids, &[(b"a", b"1"), (b"c", b"3")]);
    let got = s.multi_get(Cf::Ids, &[b"c", b"b", b"a", b"c"]).unwrap();
    assert_eq!(
        got,
        vec![
            Some(b"3".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"3".to_vec())
        ]
    );
    assert!(s.multi_get(Cf::Ids, &[]).unwrap().is_empty());
}

fn scan_bounds_and_limits(s: &dyn StateStore) {
    // Inserted out of order; includes prefix and high-byte cases.
    let keys: [&[u8]; 8] = [
        b"b", b"a\x00", b"ab", b"\xff", b"a", b"c", b"\x00", b"a\xff",
    ];
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (*k, *k)).collect();
    put_all(s, Cf::Timers, &pairs);
    put_all(s, Cf::Outbox, &[(b"zz", b"other cf")]);

    let sorted: Vec<&[u8]> = vec![
        b"\x00", b"a", b"a\x00", b"ab", b"a\xff", b"b", b"c", b"\xff",
    ];
    let all = s.scan(Cf::Timers, b"", None, usize::MAX).unwrap();
    assert_eq!(
        keys_of(&all),
        sorted,
        "unsigned byte order, shorter prefix first"
    );
    assert!(all.iter().all(|(k, v)| k == v));

    // [start, end): start included, end excluded.
    let mid = s.scan(Cf::Timers, b"a\x00", Some(b"b"), 100).unwrap();
    assert_eq!(keys_of(&mid), vec![&b"a\x00"[..], b"ab", b"a\xff"]);
    // Bounds between keys.
    let mid = s.scan(Cf::Timers, b"a\x01", Some(b"bb"), 100).unwrap();
    assert_eq!(keys_of(&mid), vec![&b"ab"[..], b"a\xff", b"b"]);
    // Prefix scan through prefix_end.
    let end = prefix_end(b"a").unwrap();
    let pre = s.scan(Cf::Timers, b"a", Some(&end), 100).unwrap();
    assert_eq!(keys_of(&pre), vec![&b"a"[..], b"a\x00", b"ab", b"a\xff"]);

    // Limits.
    assert_eq!(
        keys_of(&s.scan(Cf::Timers, b"", None, 2).unwrap()),
        vec![&b"\x00"[..], b"a"]
    );
    assert!(s.scan(Cf::Timers, b"", None, 0).unwrap().is_empty());
    assert_eq!(s.scan(Cf::Timers, b"b", None, 100).unwrap().len(), 3);

    // Empty and inverted ranges, and ranges past the end.
    assert!(s
        .scan(Cf::Timers, b"b", Some(b"b"), 100)
        .unwrap()
        .is_empty());
    assert!(s
        .scan(Cf::Timers, b"c", Some(b"a"), 100)
        .unwrap()
        .is_empty());
    assert!(s
        .scan(Cf::Timers, b"\xff\x00", None, 100)
        .unwrap()
        .is_empty());
    assert!(s.scan(Cf::Meta, b"", None, 100).unwrap().is_empty());
}

fn scan_numeric_keys(s: &dyn StateStore) {
    // Timers keyed by due time: negative millis must come first.
    let times = [5_i64, -1, i64::MAX, 0, i64::MIN, 1, -1_000];
    let mut b = WriteBatch::new();
    for t in times {
        b.put(Cf::Timers, i64_ordered(t), t.to_string());
    }
    s.commit(b).unwrap();
    let got: Vec<i64> = s
        .scan(Cf::Timers, b"", None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, vec![i64::MIN, -1_000, -1, 0, 1, 5, i64::MAX]);

    // Due timers: everything strictly before 1.
    let due = s.scan(Cf::Timers, b"", Some(&i64_ordered(1)), 100).unwrap();
    assert_eq!(due.len(), 4);
}

fn for_each_streams_and_stops(s: &dyn StateStore) {
    let mut b = WriteBatch::new();
    for i in 0..100u32 {
        b.put(Cf::Users, prefixed(i / 10, &i.to_be_bytes()), i.to_string());
    }
    s.commit(b).unwrap();

    let mut seen = Vec::new();
    s.for_each(Cf::Users, b"", None, &mut |k, _| {
        seen.push(k.to_vec());
        true
    })
    .unwrap();
    assert_eq!(seen.len(), 100);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    // Early stop: `f` is not called again after returning false.
    let mut calls = 0;
    s.for_each(Cf::Users, b"", None, &mut |_, _| {
        calls += 1;
        calls < 3
    })
    .unwrap();
    assert_eq!(calls, 3);

    // Bounded: one partition's keys.
    let mut values = Vec::new();
    let (start, end) = (prefixed(4, b""), prefixed(5, b""));
    s.for_each(Cf::Users, &start, Some(&end), &mut |_, v| {
        values.push(String::from_utf8(v.to_vec()).unwrap());
        true
    })
    .unwrap();
    assert_eq!(values, (40..50).map(|i| i.to_string()).collect::<Vec<_>>());

    let mut calls = 0;
    s.for_each(Cf::Users, &end, Some(&start), &mut |_, _| {
        calls += 1;
        true
    })
    .unwrap();
    assert_eq!(calls, 0, "inverted range is empty");
}

fn delete_range(s: &dyn StateStore) {
    let keys: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'k', i]).collect();
    let mut b = WriteBatch::new();
    for k in &keys {
        b.put(Cf::Outbox, k.clone(), b"v".to_vec());
        b.put(Cf::Offsets, k.clone(), b"v".to_vec());
    }
    s.commit(b).unwrap();

    let mut b = WriteBatch::new();
    b.delete_range(Cf::Outbox, vec![b'k', 2], vec![b'k', 5]); // removes 2, 3, 4
    b.delete_range(Cf::Outbox, vec![b'k', 9], vec![b'k', 7]); // inverted: no-op
    b.delete_range(Cf::Outbox, vec![b'k', 8], vec![b'k', 8]); // empty: no-op
    s.commit(b).unwrap();
    let left = s.scan(Cf::Outbox, b"", None, 100).unwrap();
    let left: Vec<u8> = left.iter().map(|(k, _)| k[1]).collect();
    assert_eq!(left, vec![0, 1, 5, 6, 7, 8, 9]);
    // Other column families untouched.
    assert_eq!(s.scan(Cf::Offsets, b"", None, 100).unwrap().len(), 10);

    // Whole partition-style range to the end of the keys.
    let mut b = WriteBatch::new();
    b.delete_range(Cf::Offsets, b"k".to_vec(), prefix_end(b"k").unwrap());
    s.commit(b).unwrap();
    assert!(s.scan(Cf::Offsets, b"", None, 100).unwrap().is_empty());
}

fn ops_apply_in_order(s: &dyn StateStore) {
    put_all(s, Cf::Users, &[(b"a", b"0"), (b"b", b"0"), (b"c", b"0")]);
    let mut b = WriteBatch::new();
    b.put(Cf::Users, b"a".to_vec(), b"1".to_vec());
    b.delete(Cf::Users, b"a".to_vec()); // put then delete: gone
    b.delete(Cf::Users, b"b".to_vec());
    b.put(Cf::Users, b"b".to_vec(), b"2".to_vec()); // delete then put: present
    b.delete_range(Cf::Users, b"a".to_vec(), b"z".to_vec());
    b.put(Cf::Users, b"c".to_vec(), b"3".to_vec()); // put after a covering range delete
    b.put(Cf::Users, b"d".to_vec(), b"x".to_vec());
    b.put(Cf::Users, b"d".to_vec(), b"4".to_vec()); // last put wins
    assert_eq!(b.len(), 8);
    s.commit(b).unwrap();
    let all = s.scan(Cf::Users, b"", None, 100).unwrap();
    assert_eq!(all, vec![kv(b"c", b"3"), kv(b"d", b"4")]);
}

fn uncommitted_batches_are_invisible(s: &dyn StateStore) {
    put_all(s, Cf::Meta, &[(b"k", b"old")]);
    let mut b = WriteBatch::new();
    b.put(Cf::Meta, b"k".to_vec(), b"new".to_vec());
    b.put(Cf::Users, b"u".to_vec(), b"x".to_vec());
    b.delete_range(Cf::Meta, b"".to_vec(), b"\xff".to_vec());
    assert!(!b.is_empty());
    assert_eq!(s.get(Cf::Meta, b"k").unwrap(), Some(b"old".to_vec()));
    assert_eq!(s.get(Cf::Users, b"u").unwrap(), None);
    drop(b);
    assert_eq!(s.get(Cf::Meta, b"k").unwrap(), Some(b"old".to_vec()));
    assert!(s.scan(Cf::Users, b"", None, 10).unwrap().is_empty());
}

fn readers_never_see_half_a_batch(s: &dyn StateStore) {
    // Each batch rewrites 20 keys (plus an offset) with the same round number; a
    // concurrent reader must always see one round across a scan or a multi_get.
    let keys: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
    let key_refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let write_round = |round: u32| {
        let mut b = WriteBatch::new();
        for k in &keys {
            b.put(Cf::Users, k.clone(), round.to_be_bytes().to_vec());
        }
        b.put(Cf::Offsets, b"p0".to_vec(), round.to_be_bytes().to_vec());
        s.commit(b).unwrap();
    };
    write_round(0);
    std::thread::scope(|scope| {
        scope.spawn(|| (1..=300).for_each(write_round));
        let mut last = 0;
        while last < 300 {
            let scanned = s.scan(Cf::Users, b"", None, 100).unwrap();
            assert_eq!(scanned.len(), 20);
            assert!(scanned.iter().all(|(_, v)| *v == scanned[0].1), "torn scan");
            let got = s.multi_get(Cf::Users, &key_refs).unwrap();
            assert!(got.iter().all(|v| *v == got[0]), "torn multi_get");
            last = u32::from_be_bytes(scanned[0].1[..].try_into().unwrap());
        }
    });
    assert_eq!(
        s.get(Cf::Offsets, b"p0").unwrap(),
        Some(300u32.to_be_bytes().to_vec())
    );
}

fn size_grows_with_data(s: &dyn StateStore) {
    let before = s.approximate_size_bytes();
    let mut b = WriteBatch::new();
    for i in 0..1000u32 {
        b.put(Cf::Users, i.to_be_bytes().to_vec(), vec![7u8; 100]);
    }
    assert!(b.size_bytes() >= 100_000);
    s.commit(b).unwrap();
    assert!(s.approximate_size_bytes() > before);
    s.sync().unwrap();
}

fn user_ids_assign_and_resolve(s: &dyn StateStore) {
    let mut ids = UserIds::new();
    let mut b = WriteBatch::new();
    let u1 = ids.get_or_assign(s, "u1", &mut b).unwrap();
    let u2 = ids.get_or_assign(s, "u2", &mut b).unwrap();
    assert_ne!(u1, u2);
    // Same batch, before commit: the pending cache answers.
    assert_eq!(ids.get_or_assign(s, "u1", &mut b).unwrap(), u1);
    assert_eq!(ids.lookup(s, "u2").unwrap(), Some(u2));
    assert_eq!(UserIds::name_of(s, u1).unwrap(), None, "not committed yet");
    s.commit(b).unwrap();
    ids.committed();
    assert_eq!(ids.pending_len(), 0);

    // Committed: any instance sees it.
    let fresh = UserIds::new();
    assert_eq!(fresh.lookup(s, "u1").unwrap(), Some(u1));
    assert_eq!(fresh.lookup(s, "nobody").unwrap(), None);
    assert_eq!(UserIds::name_of(s, u2).unwrap().as_deref(), Some("u2"));
    assert_eq!(
        UserIds::names_of(s, &[u2, 999, u1]).unwrap(),
        vec![Some("u2".to_owned()), None, Some("u1".to_owned())]
    );

    // A new batch continues the counter; nothing is reused.
    let mut b = WriteBatch::new();
    assert_eq!(ids.get_or_assign(s, "u1", &mut b).unwrap(), u1);
    let u3 = ids.get_or_assign(s, "ü3 with spaces", &mut b).unwrap();
    assert!(u3 != u1 && u3 != u2);
    s.commit(b).unwrap();
    ids.committed();
    let mut other = UserIds::new();
    let mut b = WriteBatch::new();
    let u4 = other.get_or_assign(s, "u4", &mut b).unwrap();
    assert!(
        ![u1, u2, u3].contains(&u4),
        "a new instance reads the counter"
    );
    assert_eq!(
        UserIds::name_of(s, u3).unwrap().as_deref(),
        Some("ü3 with spaces")
    );
}

fn user_ids_survive_a_dropped_batch(s: &dyn StateStore) {
    let mut ids = UserIds::new();
    let mut dropped = WriteBatch::new();
    let a = ids.get_or_assign(s, "a", &mut dropped).unwrap();
    drop(dropped); // e.g. the batch was abandoned; `a` was handed out anyway

    let mut b = WriteBatch::new();
    assert_eq!(ids.get_or_assign(s, "a", &mut b).unwrap(), a);
    let bb = ids.get_or_assign(s, "b", &mut b).unwrap();
    assert_ne!(a, bb);
    s.commit(b).unwrap();
    ids.committed();

    // `a`'s assignment was re-staged into the committed batch.
    let fresh = UserIds::new();
    assert_eq!(fresh.lookup(s, "a").unwrap(), Some(a));
    assert_eq!(UserIds::name_of(s, a).unwrap().as_deref(), Some("a"));
    let mut b = WriteBatch::new();
    let c = UserIds::new().get_or_assign(s, "c", &mut b).unwrap();
    assert!(c != a && c != bb);
}

fn user_ids_in_bulk_equal_one_at_a_time(s: &dyn StateStore) {
    // Committed, pending, new, and a name given twice: one batched read, the same ids.
    let mut ids = UserIds::new();
    let mut b = WriteBatch::new();
    let stored = ids.get_or_assign(s, "stored", &mut b).unwrap();
    s.commit(b).unwrap();
    ids.committed();
    let mut b = WriteBatch::new();
    let pending = ids.get_or_assign(s, "pending", &mut b).unwrap();
    let names = ["new1", "stored", "pending", "new2", "new1", "new3"];
    let bulk = ids.get_or_assign_many(s, &names, &mut b).unwrap();
    s.commit(b).unwrap();
    ids.committed();

    let mut one_by_one = Vec::new();
    let mut b = WriteBatch::new();
    for name in names {
        one_by_one.push(ids.get_or_assign(s, name, &mut b).unwrap());
    }
    assert_eq!(bulk, one_by_one);
    assert_eq!(bulk[1], stored);
    assert_eq!(bulk[2], pending);
    assert_eq!(bulk[0], bulk[4], "a name given twice gets one id");
    // New ids are handed out in the order the names come, after every earlier one.
    assert!(pending < bulk[0] && bulk[0] < bulk[3] && bulk[3] < bulk[5]);
    assert_eq!(
        UserIds::names_of(s, &[bulk[0], bulk[3], bulk[5]]).unwrap(),
        vec![
            Some("new1".to_owned()),
            Some("new2".to_owned()),
            Some("new3".to_owned())
        ]
    );
}

fn bitmaps_flush_and_load(s: &dyn StateStore) {
    let mut bm = SegmentBitmaps::load(s).unwrap();
    assert_eq!(bm.len("vip"), 0);
    assert!(bm.insert("vip", 0, 1));
    assert!(!bm.insert("vip", 0, 1), "already there");
    bm.insert("vip", 0, 2);
    bm.insert("vip", 3, 100_000);
    bm.insert("dormant", 3, 7);
    for (p, id) in [(0, 1), (0, 2), (3, 7), (3, 100_000)] {
        assert!(bm.mark_present(p, id));
    }
    assert!(bm.contains("vip", 3, 100_000));
    assert!(!bm.contains("vip", 0, 100_000), "partitions are separate");
    assert_eq!(bm.len("vip"), 3);
    assert_eq!(
        bm.union_of("vip").iter().collect::<Vec<_>>(),
        vec![1, 2, 100_000]
    );
    assert_eq!(bm.all_users().len(), 4);
    assert_eq!(bm.segments().collect::<Vec<_>>(), vec!["dormant", "vip"]);

    let mut b = WriteBatch::new();
    bm.flush_dirty(&mut b);
    // vip/0, vip/3, dormant/3, present/0, present/3
    assert_eq!(b.len(), 5);
    s.commit(b).unwrap();
    assert_eq!(bm.dirty_len(), 0);

    // Only what changed since is staged.
    bm.remove("vip", 0, 2);
    assert!(!bm.remove("vip", 0, 2), "already gone");
    assert!(!bm.remove("nope", 0, 2));
    let mut b = WriteBatch::new();
    bm.flush_dirty(&mut b);
    assert_eq!(b.len(), 1);
    s.commit(b).unwrap();
    let mut b = WriteBatch::new();
    bm.flush_dirty(&mut b);
    assert!(b.is_empty(), "nothing changed");

    let loaded = SegmentBitmaps::load(s).unwrap();
    assert_eq!(
        loaded.union_of("vip").iter().collect::<Vec<_>>(),
        vec![1, 100_000]
    );
    assert!(loaded.contains("dormant", 3, 7));
    assert_eq!(loaded.all_users(), bm.all_users());
    assert_eq!(loaded.get("vip", 3), bm.get("vip", 3));

    // Emptying a bitmap deletes its key.
    bm.remove("dormant", 3, 7);
    assert_eq!(bm.segments().collect::<Vec<_>>(), vec!["vip"]);
    let mut b = WriteBatch::new();
    bm.flush_dirty(&mut b);
    s.commit(b).unwrap();
    let loaded = SegmentBitmaps::load(s).unwrap();
    assert_eq!(loaded.len("dormant"), 0);
    assert_eq!(s.scan(Cf::Segments, b"", None, 100).unwrap().len(), 4);

    // Leaving every segment at once (a user delete).
    let mut left = bm.remove_everywhere(0, 1);
    left.sort();
    assert_eq!(left, vec!["vip".to_owned()]);
    assert!(!bm.all_users().contains(1));
}

fn bitmaps_drop_partition(s: &dyn StateStore) {
    let mut bm = SegmentBitmaps::new();
    for p in 0..3 {
        bm.insert("a", p, p * 10);
        bm.insert("b", p, p * 10 + 1);
        bm.mark_present(p, p * 10);
    }
    let mut b = WriteBatch::new();
    bm.flush_dirty(&mut b);
    s.commit(b).unwrap();

    // An unflushed removal empties b/1 before the drop: its key must go too.
    bm.remove("b", 1, 11);
    let mut b = WriteBatch::new();
    bm.drop_partition(1, &mut b);
    bm.flush_dirty(&mut b);
    s.commit(b).unwrap();

    assert!(!bm.contains("a", 1, 10));
    assert_eq!(bm.union_of("a").iter().collect::<Vec<_>>(), vec![0, 20]);
    let loaded = SegmentBitmaps::load(s).unwrap();
    assert_eq!(loaded.union_of("a").iter().collect::<Vec<_>>(), vec![0, 20]);
    assert_eq!(loaded.union_of("b").iter().collect::<Vec<_>>(), vec![1, 21]);
    assert_eq!(loaded.all_users().iter().collect::<Vec<_>>(), vec![0, 20]);
    assert_eq!(s.scan(Cf::Segments, b"", None, 100).unwrap().len(), 6);

    // unload/load_partition: memory only, then back from the store.
    let mut bm = loaded;
    bm.unload_partition(2);
    assert_eq!(bm.len("a"), 1);
    bm.load_partition(s, 2).unwrap();
    assert_eq!(bm.len("a"), 2);
    assert!(bm.contains(PRESENT, 2, 20));

    // drop_segment.
    let mut b = WriteBatch::new();
    bm.drop_segment("b", &mut b);
    assert_eq!(b.len(), 2);
    s.commit(b).unwrap();
    assert_eq!(SegmentBitmaps::load(s).unwrap().len("b"), 0);
}

fn corrupt_bitmap_is_an_error(s: &dyn StateStore) {
    put_all(
        s,
        Cf::Segments,
        &[(b"vip\x00\x00\x00\x00\x01", b"not a bitmap")],
    );
    let err = SegmentBitmaps::load(s).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("vip"), "{err}");
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(#[test]
            fn $name() {
                super::$name(&tagstream_state::MemStore::new());
            })*
        }
        mod rocks {
            $(#[test]
            fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let store = tagstream_state::RocksStore::open(dir.path()).unwrap();
                super::$name(&store);
            })*
        }
    };
}

suite!(
    get_put_delete,
    multi_get,
    scan_bounds_and_limits,
    scan_numeric_keys,
    for_each_streams_and_stops,
    delete_range,
    ops_apply_in_order,
    uncommitted_batches_are_invisible,
    readers_never_see_half_a_batch,
    size_grows_with_data,
    user_ids_assign_and_resolve,
    user_ids_survive_a_dropped_batch,
    user_ids_in_bulk_equal_one_at_a_time,
    bitmaps_flush_and_load,
    bitmaps_drop_partition,
    corrupt_bitmap_is_an_error,
);

// ------------------------------------------------------------ RocksDB only: disk

fn write_sample(s: &dyn StateStore) -> (u32, u32) {
    let mut ids = UserIds::new();
    let mut bm = SegmentBitmaps::new();
    let mut b = WriteBatch::new();
    let u1 = ids.get_or_assign(s, "u1", &mut b).unwrap();
    let u2 = ids.get_or_assign(s, "u2", &mut b).unwrap();
    bm.insert("vip", 0, u1);
    bm.mark_present(0, u1);
    bm.mark_present(0, u2);
    bm.flush_dirty(&mut b);
    for i in 0..50u8 {
        b.put(Cf::Users, vec![i], vec![i; 10]);
    }
    b.put(
        Cf::Offsets,
        b"events/0".to_vec(),
        42u64.to_be_bytes().to_vec(),
    );
    b.put(
        Cf::Outbox,
        1u64.to_be_bytes().to_vec(),
        b"transition".to_vec(),
    );
    s.commit(b).unwrap();
    let mut b = WriteBatch::new();
    b.delete_range(Cf::Users, vec![10], vec![20]);
    b.delete(Cf::Outbox, 1u64.to_be_bytes().to_vec());
    s.commit(b).unwrap();
    (u1, u2)
}

fn check_sample(s: &dyn StateStore, (u1, u2): (u32, u32)) {
    let users = s.scan(Cf::Users, b"", None, 100).unwrap();
    assert_eq!(users.len(), 40);
    assert!(users.iter().all(|(k, _)| !(10..20).contains(&k[0])));
    assert_eq!(s.get(Cf::Users, &[5]).unwrap(), Some(vec![5; 10]));
    assert_eq!(
        s.get(Cf::Offsets, b"events/0").unwrap(),
        Some(42u64.to_be_bytes().to_vec())
    );
    assert!(s.scan(Cf::Outbox, b"", None, 10).unwrap().is_empty());
    let ids = UserIds::new();
    assert_eq!(ids.lookup(s, "u1").unwrap(), Some(u1));
    assert_eq!(ids.lookup(s, "u2").unwrap(), Some(u2));
    assert_eq!(UserIds::names_of(s, &[u1, u2]).unwrap().len(), 2);
    let bm = SegmentBitmaps::load(s).unwrap();
    assert!(bm.contains("vip", 0, u1));
    assert_eq!(bm.all_users().len(), 2);
}

#[test]
fn rocks_reopen_sees_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let sample = {
        let s = RocksStore::open(dir.path()).unwrap();
        write_sample(&s)
    };
    let s = RocksStore::open(dir.path()).unwrap();
    check_sample(&s, sample);

    // Ids keep counting after a reopen: nothing is reused.
    let mut b = WriteBatch::new();
    let u3 = UserIds::new().get_or_assign(&s, "u3", &mut b).unwrap();
    assert!(u3 != sample.0 && u3 != sample.1);
    s.commit(b).unwrap();
    drop(s);
    let s = RocksStore::open_with(
        dir.path(),
        StoreOptions {
            sync: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(UserIds::new().lookup(&s, "u3").unwrap(), Some(u3));
    assert_eq!(s.path(), dir.path());
}

#[test]
fn rocks_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/state");
    let s = RocksStore::open(&nested).unwrap();
    put_all(&s, Cf::Meta, &[(b"k", b"v")]);
    assert!(nested.join("CURRENT").exists());
}

#[test]
fn rocks_second_open_reports_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RocksStore::open(dir.path()).unwrap();
    let err = RocksStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("cannot open state dir "), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(
        msg.ends_with("is another tagstream process using it?"),
        "{msg}"
    );
}

#[test]
fn rocks_read_only_open_sees_commits_beside_a_writer_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let writer = RocksStore::open(dir.path()).unwrap();
    put_all(&writer, Cf::Users, &[(b"u1", b"state")]);
    let reader = RocksStore::open_with(
        dir.path(),
        StoreOptions {
            read_only: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        reader.get(Cf::Users, b"u1").unwrap(),
        Some(b"state".to_vec())
    );
    let mut batch = WriteBatch::new();
    batch.put(Cf::Users, b"u2".to_vec(), b"x".to_vec());
    assert!(
        reader.commit(batch).is_err(),
        "a read-only store refuses writes"
    );
    assert_eq!(writer.get(Cf::Users, b"u2").unwrap(), None);
}

#[test]
fn rocks_unusable_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = RocksStore::open(&file).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    let err = RocksStore::open(&file.join("below")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
}

const CRASH_DIR_ENV: &str = "TAGSTREAM_STATE_CRASH_DIR";

/// Child half of `rocks_commits_survive_process_abort`: does nothing unless spawned by it.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let s = RocksStore::open(Path::new(&dir)).unwrap();
    let sample = write_sample(&s);
    std::fs::write(
        Path::new(&dir).join("sample"),
        format!("{} {}", sample.0, sample.1),
    )
    .unwrap();
    // A batch staged but never committed must not appear after the crash.
    let mut b = WriteBatch::new();
    b.put(Cf::Meta, b"uncommitted".to_vec(), b"x".to_vec());
    // No destructors, no memtable flush: the closest thing to `kill -9` in-process.
    std::process::abort();
}

#[test]
fn rocks_commits_survive_process_abort() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");
    let sample = std::fs::read_to_string(dir.path().join("sample")).unwrap();
    let (u1, u2) = sample.split_once(' ').unwrap();
    let s = RocksStore::open(dir.path()).unwrap();
    check_sample(&s, (u1.parse().unwrap(), u2.parse().unwrap()));
    assert_eq!(s.get(Cf::Meta, b"uncommitted").unwrap(), None);
}

#[test]
fn mem_store_is_empty_per_instance() {
    let a = MemStore::new();
    put_all(&a, Cf::Users, &[(b"k", b"v")]);
    assert_eq!(MemStore::new().get(Cf::Users, b"k").unwrap(), None);
    assert!(a.approximate_size_bytes() > 0);
}
