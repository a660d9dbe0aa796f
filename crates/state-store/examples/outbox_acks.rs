//! Why outbox acknowledgements delete point-wise (docs/performance.md, `tagstream run`): the
//! delivery loop of `run` acknowledges a small prefix of the outbox many times a second, and
//! reads on from where it stopped. This replays that pattern against a real RocksDB store with
//! each acknowledgement written as (a) one range tombstone from 0, as before, and (b) point
//! deletes, and prints the mean time of an outbox read per block of rounds.
//!
//! `cargo run -p tagstream-state --example outbox_acks -- [rounds]` (default 20000).

use std::time::{Duration, Instant};

use tagstream_state::{Cf, RocksStore, StateStore, WriteBatch};

fn key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

fn run(rounds: u64, ranges: bool) -> Vec<Duration> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = RocksStore::open(dir.path()).expect("a fresh store");
    let block = (rounds / 5).max(1);
    let (mut spent, mut means) = (Duration::ZERO, Vec::new());
    for seq in 0..rounds {
        // One transition committed, one delivered and acknowledged, the next read started.
        let mut batch = WriteBatch::new();
        batch.put(Cf::Outbox, key(seq), vec![b'x'; 300]);
        store.commit(batch).expect("commit");
        let mut ack = WriteBatch::new();
        if ranges {
            ack.delete_range(Cf::Outbox, key(0), key(seq + 1));
        } else {
            ack.delete(Cf::Outbox, key(seq));
        }
        store.commit(ack).expect("acknowledge");
        let started = Instant::now();
        let rows = store
            .scan(Cf::Outbox, &key(seq + 1), None, 2000)
            .expect("scan");
        spent += started.elapsed();
        assert!(rows.is_empty());
        if (seq + 1) % block == 0 {
            means.push(spent / block as u32);
            spent = Duration::ZERO;
        }
    }
    means
}

fn main() {
    let rounds = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000u64);
    for (name, ranges) in [("range tombstone from 0", true), ("point deletes", false)] {
        let means: Vec<String> = run(rounds, ranges)
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e6))
            .collect();
        println!(
            "{name:>24}: mean µs per outbox read, by fifths of {rounds} rounds: {}",
            means.join(" ")
        );
    }
}
