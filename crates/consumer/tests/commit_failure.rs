//! A commit the state store refuses (disk full, IO error) leaves the engine's memory exactly as
//! it was before the batch: segment bitmaps, user states, the id dictionary, engine times,
//! delete counts and the outbox sequence. Retrying the batch then gives what a run that never
//! failed gives, byte for byte on disk. A rules reload interrupted between two of its chunks is
//! finished by the next open, with the same result as an uninterrupted one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tagstream_consumer::outbox::Origin;
use tagstream_consumer::{Engine, EngineOptions, Record};
use tagstream_rules::rules::RuleSet;
mod common;

use common::{Hooked, Hooks};
use tagstream_state::{Cf, RocksStore, StateStore, StoreError, WriteBatch};

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

/// Fails the next commit, as with a full disk, when armed; or, with `fail_commit_in` = n > 0,
/// the n-th commit from now.
#[derive(Default)]
struct FailNext {
    fail_next_commit: AtomicBool,
    fail_commit_in: AtomicUsize,
}

impl Hooks for FailNext {
    fn commit(&self, _batch: &WriteBatch) -> Result<(), StoreError> {
        let countdown = self
            .fail_commit_in
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .unwrap_or(0);
        if self.fail_next_commit.swap(false, Ordering::SeqCst) || countdown == 1 {
            return Err(StoreError::CreateDir {
                path: "state".into(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        Ok(())
    }
}

type FailingStore = Hooked<FailNext>;

fn failing_store(dir: &std::path::Path) -> Arc<FailingStore> {
    Arc::new(Hooked {
        inner: RocksStore::open(dir).unwrap(),
        hooks: FailNext::default(),
    })
}

fn fixed_clock() -> i64 {
    T + 3_600_000
}

fn open(store: Arc<dyn StateStore>) -> Engine {
    open_with(store, RULES, EngineOptions::default())
}

fn open_with(store: Arc<dyn StateStore>, source: &str, options: EngineOptions) -> Engine {
    let rules = Arc::new(RuleSet::compile(source, "rules").unwrap());
    let mut engine = Engine::open(store, rules, source, options).unwrap();
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
    let faulty = failing_store(dirs.0.path());
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
    faulty.hooks.fail_next_commit.store(true, Ordering::SeqCst);
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
    let faulty = failing_store(dirs.0.path());
    let clean_store = Arc::new(RocksStore::open(dirs.1.path()).unwrap());
    let mut engine = open(faulty.clone());
    let mut clean = open(clean_store.clone());
    let first = first_batch();
    engine.process(&records(&first), &[]).unwrap();
    clean.process(&records(&first), &[]).unwrap();
    let before = observe(&engine, &USERS);

    faulty.hooks.fail_next_commit.store(true, Ordering::SeqCst);
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
    let faulty = failing_store(dir.path());
    let mut engine = open(faulty.clone());
    engine.process(&records(&first_batch()), &[]).unwrap();
    let before = observe(&engine, &USERS);
    let on_disk = contents(faulty.as_ref());

    // The new rules drop `browser` (its bitmaps are dropped in memory before the commit).
    let new_source = RULES.replace("name = \"browser\"", "name = \"looker\"");
    let new_rules = Arc::new(RuleSet::compile(&new_source, "rules").unwrap());
    faulty.hooks.fail_next_commit.store(true, Ordering::SeqCst);
    assert!(engine.reload(new_rules, &new_source).is_err());
    assert_eq!(observe(&engine, &USERS), before);
    assert_eq!(contents(faulty.as_ref()), on_disk);
}

/// The rules a reload switches to: `browser` is removed, `looker` is new, `buyer` stays.
fn new_rules() -> String {
    RULES.replace(
        "name = \"browser\"\nwhen = \"views >= 2 and orders = 0\"",
        "name = \"looker\"\nwhen = \"views >= 1\"",
    )
}

#[test]
fn a_reload_interrupted_between_chunks_is_finished_at_the_next_open() {
    let users: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    let lines: Vec<String> = users
        .iter()
        .enumerate()
        .flat_map(|(i, u)| {
            let kind = if i % 3 == 0 { "purchase" } else { "view" };
            [track(u, kind, i as i64), track(u, "view", 100 + i as i64)]
        })
        .collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let new_source = new_rules();
    assert_ne!(new_source, RULES);
    let new = || Arc::new(RuleSet::compile(&new_source, "rules").unwrap());

    // Uninterrupted, in one chunk.
    let clean_dir = tempfile::tempdir().unwrap();
    let clean_store = Arc::new(RocksStore::open(clean_dir.path()).unwrap());
    let mut clean = open(clean_store.clone());
    clean.process(&records(&lines), &[]).unwrap();
    let report = clean.reload(new(), &new_source).unwrap();
    assert!(report.report.transitions > 0);

    // Three users per chunk (7 commits); the third commit fails, as a crash after two would.
    let dir = tempfile::tempdir().unwrap();
    let faulty = failing_store(dir.path());
    let chunked = EngineOptions {
        reload_chunk: 3,
        ..EngineOptions::default()
    };
    let mut engine = open_with(faulty.clone(), RULES, chunked.clone());
    engine.process(&records(&lines), &[]).unwrap();
    faulty.hooks.fail_commit_in.store(3, Ordering::SeqCst);
    assert!(engine.reload(new(), &new_source).is_err());
    // Part of the users are on the new rules: nothing more is applied before a restart.
    let more = vec![track("u00", "view", 500)];
    let refused = engine.process(&records(&more), &[]).unwrap_err();
    assert!(refused.to_string().contains("restart"), "{refused}");
    drop(engine);
    assert!(faulty
        .get(Cf::Meta, b"reloading")
        .unwrap()
        .is_some_and(|record| !record.is_empty()));

    // The next open finishes the reload before comparing the rules it is given.
    let reopened = open_with(faulty.clone(), &new_source, chunked);
    assert_eq!(reopened.rules().fingerprint, clean.rules().fingerprint);
    assert_eq!(observe(&reopened, &names), observe(&clean, &names));
    assert_eq!(contents(faulty.as_ref()), contents(clean_store.as_ref()));
    assert_eq!(faulty.get(Cf::Meta, b"reloading").unwrap(), None);
}

#[test]
fn a_chunked_reload_equals_a_reload_in_one_commit() {
    let lines: Vec<String> = (0..50)
        .map(|i| {
            let kind = if i % 4 == 0 { "purchase" } else { "view" };
            track(&format!("u{:02}", i % 25), kind, i)
        })
        .collect();
    let new_source = new_rules();
    let mut stores = Vec::new();
    let mut dirs = Vec::new();
    for chunk in [1, 7, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RocksStore::open(dir.path()).unwrap());
        let options = EngineOptions {
            reload_chunk: chunk,
            ..EngineOptions::default()
        };
        let mut engine = open_with(store.clone(), RULES, options);
        engine.process(&records(&lines), &[]).unwrap();
        let report = engine
            .reload(
                Arc::new(RuleSet::compile(&new_source, "rules").unwrap()),
                &new_source,
            )
            .unwrap();
        assert_eq!(report.users, 25);
        stores.push(store);
        dirs.push(dir);
    }
    let one = contents(stores[2].as_ref());
    assert_eq!(contents(stores[0].as_ref()), one);
    assert_eq!(contents(stores[1].as_ref()), one);
}
