//! Exports stream in bounded memory: a segment of 1,000,000 members (bitmap level, in a
//! RocksDB store) is exported chunk by chunk through a bounded channel, and the process's
//! peak resident memory grows by far less than the export's size. Alone in its own test
//! binary so that no other test's allocations blur the measurement.

use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use tagstream_consumer::audience::{export_ndjson, ExportOrder, ExportSet, EXPORT_CHUNK};
use tagstream_consumer::engine::{Engine, EngineOptions, SharedEngine};
use tagstream_rules::rules::RuleSet;
use tagstream_state::{RocksStore, SegmentBitmaps, StateStore, StoreOptions, UserIds, WriteBatch};

const USERS: u32 = 1_000_000;

const RULES: &str = r#"
[[tag]]
name = "n"
kind = "count"
event = "*"

[[segment]]
name = "big"
when = "n >= 1"
"#;

/// kB of a `/proc/self/status` field.
fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// A store whose segment `big` has every one of `USERS` users as a member (ids and bitmaps
/// only: exports read no user state).
fn store(dir: &std::path::Path) -> Arc<dyn StateStore> {
    let store: Arc<dyn StateStore> = Arc::new(
        RocksStore::open_with(
            dir,
            StoreOptions {
                // A small cache, so that reading the ids does not pass for buffering.
                block_cache_bytes: 1 << 20,
                ..StoreOptions::default()
            },
        )
        .unwrap(),
    );
    let mut ids = UserIds::new();
    let mut bitmaps = SegmentBitmaps::new();
    let mut batch = WriteBatch::new();
    for i in 0..USERS {
        let id = ids
            .get_or_assign(store.as_ref(), &format!("u{i:07}"), &mut batch)
            .unwrap();
        bitmaps.mark_present(0, id);
        bitmaps.insert("big", 0, id);
        if batch.len() >= 200_000 {
            store.commit(std::mem::take(&mut batch)).unwrap();
            ids.committed();
        }
    }
    bitmaps.flush_dirty(&mut batch);
    store.commit(batch).unwrap();
    store
}

#[test]
fn a_million_member_export_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let rules = Arc::new(RuleSet::compile(RULES, "rules.toml").unwrap());
    let engine = SharedEngine::new(
        Engine::open(store.clone(), rules, RULES, EngineOptions::default()).unwrap(),
    );
    assert_eq!(engine.lock().segment_size("big"), u64::from(USERS));

    // Reset the peak (VmHWM) where the kernel allows it; otherwise the consumer samples VmRSS.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let baseline = status_kb("VmRSS:");

    // A consumer as slow as a network client: a bounded channel of 2 chunks, read on another
    // thread, which keeps only counts and the peak resident memory it sees.
    let (tx, rx) = sync_channel::<Vec<u8>>(2);
    let reader = std::thread::spawn(move || {
        let (mut lines, mut bytes, mut chunks, mut max_chunk, mut peak) = (0u64, 0u64, 0u64, 0, 0);
        let mut last: Option<String> = None;
        for chunk in rx {
            chunks += 1;
            bytes += chunk.len() as u64;
            let text = String::from_utf8(chunk).unwrap();
            let n = text.lines().count();
            max_chunk = max_chunk.max(n);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let id = v["user_id"].as_str().unwrap().to_string();
                // The order of the paged listing: internal ids, here assigned in name order.
                assert!(last.as_deref() < Some(id.as_str()), "{id} after {last:?}");
                last = Some(id);
                lines += 1;
            }
            peak = peak.max(status_kb("VmRSS:"));
        }
        (lines, bytes, chunks, max_chunk, peak)
    });
    let sent = export_ndjson(
        &engine,
        &ExportSet::Segment("big".into()),
        ExportOrder::Id,
        EXPORT_CHUNK,
        &mut |chunk| tx.send(chunk).is_ok(),
    )
    .unwrap();
    drop(tx);
    let (lines, bytes, chunks, max_chunk, sampled_peak) = reader.join().unwrap();
    let peak = if reset {
        status_kb("VmHWM:")
    } else {
        sampled_peak
    };

    assert_eq!(sent, u64::from(USERS));
    assert_eq!(lines, u64::from(USERS));
    assert!(
        max_chunk <= EXPORT_CHUNK,
        "a chunk holds at most {EXPORT_CHUNK} users"
    );
    assert!(chunks >= u64::from(USERS) / EXPORT_CHUNK as u64);
    let grew_kb = peak.saturating_sub(baseline);
    eprintln!(
        "export of {lines} users, {} MiB of NDJSON in {chunks} chunks: peak RSS grew by {} KiB (measured by {})",
        bytes >> 20,
        grew_kb,
        if reset { "VmHWM" } else { "sampling VmRSS" }
    );
    // Holding the whole export would take at least its size (23 MB here) plus a String per
    // member; streaming holds a few chunks of ~100 KB.
    assert!(
        grew_kb * 1024 < bytes / 4,
        "peak RSS grew by {grew_kb} KiB while exporting {bytes} bytes"
    );
}
