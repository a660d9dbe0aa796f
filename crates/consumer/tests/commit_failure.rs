//! A commit the state store refuses (disk full, IO error) leaves the engine's memory exactly as
//! it was before the batch: segment bitmaps, user states, the id dictionary, engine times,
//! delete counts and the outbox sequence. Retrying the batch then gives what a run that never
//! failed gives, byte for byte on disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tagstream_consumer::outbox::Origin;
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{Cf, KeyValue, RocksStore, StateStore, StoreError, StoreHealth, WriteBatch};

const RULES: &str = r#"
[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[tag]]
name = "views"
kind = "count"
event = "view"

[[segment]]
name = "buyer"
when = "orders >= 1"

[[segment]]
name = "browser"
when = "views >= 2 and orders = 0"
"#;

const T: i64 = 1_732_000_000_000;

/// A real RocksDB store whose next commit fails, as with a full disk, when armed.
struct FailingStore {
    inner: RocksStore,
    fail_next_commit: AtomicBool,
}

impl StateStore for FailingStore {
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
        if self.fail_next_commit.swap(false, Ordering::SeqCst) {
            return Err(StoreError::CreateDir {
                path: self.inner.path().to_path_buf(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        self.inner.commit(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn approximate_size_bytes(&self) -> u64 {
        self.inner.approximate_size_bytes()
    }
    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
}

fn fixed_clock() -> i64 {
    T + 3_600_000
}

fn open(store: Arc<dyn StateStore>) -> Engine {
    let rules = Arc::new(RuleSet::compile(RULES, "rules").unwrap());
    let mut engine = Engine::open(store, rules, RULES, EngineOptions::default()).unwrap();
    engine.set_wall_clock(fixed_clock);
    engine
}

fn track(user: &str, event: &str, i: i64) -> String {
    format!(
        r#"{{"type":"track","event":"{event}","user_id":"{user}","ts":{}}}"#,
        T + i
    )
}

fn delete(user: &str, i: i64) -> String {
    format!(r#"{{"type":"delete","user_id":"{user}","ts":{}}}"#, T + i)
}

fn records(lines: &[String]) -> Vec<Record<'_>> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| Record {
            // A user always lives in one partition, as with Kafka keys.
            partition: u32::from(
                serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"]
                    .as_str()
                    .unwrap()
                    .as_bytes()[0],
            ) % 2,
            bytes: l.as_bytes(),
            origin: Origin::Line {
                source: "t".into(),
                line: i as u64 + 1,
            },
            fault: None,
        })
        .collect()
}

/// Everything a query can see of the engine's memory, plus its next outbox sequence number.
fn observe(engine: &Engine, users: &[&str]) -> String {
    let mut out = String::new();
    for segment in ["buyer", "browser"] {
        let members = engine.segment_bitmap(segment).unwrap_or_default();
        let page = engine.page(&members, None, 1000).unwrap();
        out += &format!(
            "{segment}: size {} members {:?} {:?}\n",
            engine.segment_size(segment),
            page.members,
            page.next
        );
    }
    let all = engine.all_users();
    let page = engine.page(&all, None, 1000).unwrap();
    out += &format!("all: {:?} {:?}\n", page.members, page.next);
    for user in users {
        out += &format!("{user}: {:?}\n", engine.profile(user).unwrap());
    }
    out += &format!(
        "clocks: {:?} {:?}\noutbox next: {}\n",
        engine.clock(0),
        engine.clock(1),
        engine.outbox_next_seq()
    );
    out
}

/// Every key and value of every column family.
fn contents(store: &dyn StateStore) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for cf in Cf::ALL {
        store
            .for_each(cf, b"", None, &mut |k, v| {
                out.push((cf, k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
    }
    out
}

const USERS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn first_batch() -> Vec<String> {
    vec![
        track("a", "purchase", 1),
        track("b", "view", 2),
        track("c", "view", 3),
        track("c", "view", 4),
        track("d", "view", 5),
        track("d", "view", 6),
    ]
}

/// New users (new ids), entries, exits and a delete, in both partitions.
fn second_batch() -> Vec<String> {
    vec![
        track("e", "purchase", 10),
        track("b", "view", 11),
        track("f", "view", 12),
        track("c", "purchase", 13),
        delete("a", 14),
        delete("d", 15),
    ]
}

#[test]
fn a_failed_commit_leaves_memory_as_before_and_a_retry_equals_a_clean_run() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let faulty = Arc::new(FailingStore {
        inner: RocksStore::open(dirs.0.path()).unwrap(),
        fail_next_commit: AtomicBool::new(false),
    });
    let clean_store = Arc::new(RocksStore::open(dirs.1.path()).unwrap());
    let mut engine = open(faulty.clone());
    let mut clean = open(clean_store.clone());

    let first = first_batch();
    engine.process(&records(&first), &[]).unwrap();
    clean.process(&records(&first), &[]).unwrap();
    let before = observe(&engine, &USERS);
    assert_eq!(before, observe(&clean, &USERS));

    let second = second_batch();
    let positions = vec![(b"file/t".to_vec(), b"6".to_vec())];
    faulty.fail_next_commit.store(true, Ordering::SeqCst);
    let err = engine.process(&records(&second), &positions).unwrap_err();
    assert!(err.to_string().contains("os error 28"), "{err}");
    assert_eq!(
        observe(&engine, &USERS),
        before,
        "memory moved with a failed commit"
    );
    assert_eq!(contents(faulty.as_ref()), contents(clean_store.as_ref()));

    engine.process(&records(&second), &positions).unwrap();
    clean.process(&records(&second), &positions).unwrap();
    let after = observe(&engine, &USERS);
    assert_ne!(after, before);
    assert_eq!(after, observe(&clean, &USERS));
    assert_eq!(contents(faulty.as_ref()), contents(clean_store.as_ref()));

    // A third batch on top: the id dictionary and bitmaps keep agreeing with a clean run.
    let third = vec![track("g", "purchase", 20), track("a", "view", 21)];
    engine.process(&records(&third), &[]).unwrap();
    clean.process(&records(&third), &[]).unwrap();
    assert_eq!(observe(&engine, &USERS), observe(&clean, &USERS));
    assert_eq!(contents(faulty.as_ref()), contents(clean_store.as_ref()));
}

#[test]
fn a_failed_api_delete_leaves_the_user_and_its_segments_in_place() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let faulty = Arc::new(FailingStore {
        inner: RocksStore::open(dirs.0.path()).unwrap(),
        fail_next_commit: AtomicBool::new(false),
    });
    let clean_store = Arc::new(RocksStore::open(dirs.1.path()).unwrap());
    let mut engine = open(faulty.clone());
    let mut clean = open(clean_store.clone());
    let first = first_batch();
    engine.process(&records(&first), &[]).unwrap();
    clean.process(&records(&first), &[]).unwrap();
    let before = observe(&engine, &USERS);

    faulty.fail_next_commit.store(true, Ordering::SeqCst);
    assert!(engine.delete_user("a").is_err());
    assert_eq!(observe(&engine, &USERS), before);

    assert!(engine.delete_user("a").unwrap());
    assert!(clean.delete_user("a").unwrap());
    assert_eq!(observe(&engine, &USERS), observe(&clean, &USERS));
    assert_eq!(engine.segment_size("buyer"), 0);
    assert_eq!(contents(faulty.as_ref()), contents(clean_store.as_ref()));
}

#[test]
fn a_failed_reload_keeps_the_old_rules_bitmaps_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FailingStore {
        inner: RocksStore::open(dir.path()).unwrap(),
        fail_next_commit: AtomicBool::new(false),
    });
    let mut engine = open(faulty.clone());
    engine.process(&records(&first_batch()), &[]).unwrap();
    let before = observe(&engine, &USERS);
    let on_disk = contents(faulty.as_ref());

    // The new rules drop `browser` (its bitmaps are dropped in memory before the commit).
    let new_source = RULES.replace("name = \"browser\"", "name = \"looker\"");
    let new_rules = Arc::new(RuleSet::compile(&new_source, "rules").unwrap());
    faulty.fail_next_commit.store(true, Ordering::SeqCst);
    assert!(engine.reload(new_rules, &new_source).is_err());
    assert_eq!(observe(&engine, &USERS), before);
    assert_eq!(contents(faulty.as_ref()), on_disk);
}
