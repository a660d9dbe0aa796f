//! Audience benchmark: parse and evaluate expressions over 1,000,000 users and six segments of
//! realistic shapes, including the work of an API answer (first 100 ids and the size).
//!
//! A second group evaluates conditions over tags (`AudienceQuery::Condition`) over 1,000,000
//! users in a RocksDB state built by the engine itself: every candidate's state is read and
//! every tag evaluated at its partition's engine time. Measured on 2 shared cores (dev
//! profile, opt-level 2): 6.0 s for a condition over every one of the 1M users (~6 µs a user:
//! ~1.3 s id → name lookups, ~2.9 s state reads, ~0.2 s evaluation), 0.87 s when a segment
//! conjunct of 10% of the users restricts the candidates first.
//!
//! `cargo bench -p tagstream-consumer --bench audience`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use roaring::RoaringBitmap;
use tagstream_consumer::audience::{Audience, AudienceQuery};
use tagstream_consumer::engine::{Engine, EngineOptions, Record, SharedEngine};
use tagstream_consumer::outbox::Origin;
use tagstream_rules::rules::RuleSet;
use tagstream_state::{RocksStore, StateStore};

const USERS: u32 = 1_000_000;

/// xorshift64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, percent: f64) -> bool {
        (self.next() % 1_000_000) as f64 <= percent * 10_000.0
    }
}

fn random(rng: &mut Rng, percent: f64) -> RoaringBitmap {
    (0..USERS).filter(|_| rng.chance(percent)).collect()
}

/// Runs of consecutive ids, as left by cohorts that signed up together.
fn clustered(rng: &mut Rng, runs: u32, max_run: u64) -> RoaringBitmap {
    let mut bitmap = RoaringBitmap::new();
    for _ in 0..runs {
        let start = (rng.next() % u64::from(USERS)) as u32;
        let len = (rng.next() % max_run) as u32 + 1;
        bitmap.insert_range(start..start.saturating_add(len).min(USERS));
    }
    bitmap
}

fn segments() -> HashMap<&'static str, RoaringBitmap> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    HashMap::from([
        ("active", random(&mut rng, 50.0)),
        ("buyer", random(&mut rng, 20.0)),
        ("vip", random(&mut rng, 5.0)),
        ("churn", random(&mut rng, 1.0)),
        ("cohort", clustered(&mut rng, 40, 5_000)),
        ("promo", (300_000..450_000).collect()),
    ])
}

fn bench(c: &mut Criterion) {
    let segments = segments();
    let universe: RoaringBitmap = (0..USERS).collect();
    for (name, bitmap) in &segments {
        eprintln!("segment {name}: {} members", bitmap.len());
    }
    // The API's lookup hands out owned bitmaps, so each evaluation pays one clone per name.
    let lookup = |name: &str| segments.get(name).cloned();

    let mut group = c.benchmark_group("audience");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let complex = "(active OR buyer) AND NOT (churn OR cohort) OR vip AND promo";
    group.bench_function("parse", |b| {
        b.iter(|| Audience::parse(black_box(complex)).unwrap())
    });
    group.bench_function("clone 50% segment", |b| {
        b.iter(|| lookup(black_box("active")).unwrap())
    });

    for expr in [
        "active AND buyer",
        "active AND NOT buyer",
        "(active OR buyer) AND NOT (churn OR cohort)",
        "NOT active",
        "vip AND NOT churn AND promo",
        complex,
    ] {
        let audience = Audience::parse(expr).unwrap();
        let size = audience.evaluate(&lookup, &universe).unwrap().len();
        eprintln!("{expr}: {size} users");
        // What the endpoint does: evaluate, then the first page and the size.
        group.bench_function(format!("eval+page+len: {expr}"), |b| {
            b.iter(|| {
                let members = audience.evaluate(&lookup, &universe).unwrap();
                let page: Vec<u32> = members.iter().take(100).collect();
                (page, members.len())
            })
        });
    }

    let result = Audience::parse("NOT active")
        .unwrap()
        .evaluate(&lookup, &universe)
        .unwrap();
    group.bench_function("page+len only", |b| {
        b.iter(|| {
            let page: Vec<u32> = black_box(&result).iter().take(100).collect();
            (page, result.len())
        })
    });
    group.finish();
}

const TAG_RULES: &str = r#"
[[tag]]
name = "spend_30d"
kind = "sum"
event = "purchase"
property = "amount"
window = "30d"

[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[tag]]
name = "city"
kind = "profile"
property = "city"

[[tag]]
name = "last_seen"
kind = "last_time"
event = "*"

[[segment]]
name = "vip"
when = "spend_30d >= 900"

[[segment]]
name = "buyer"
when = "orders >= 1"
"#;

/// 1,000,000 users, each with a city and one purchase (amount 0..1000), over 4 partitions.
fn tag_state(dir: &std::path::Path) -> SharedEngine {
    let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(dir).unwrap());
    let rules = Arc::new(RuleSet::compile(TAG_RULES, "rules.toml").unwrap());
    let mut engine = Engine::open(store, rules, TAG_RULES, EngineOptions::default()).unwrap();
    let cities = ["Shanghai", "Beijing", "Shenzhen", "Chengdu", "Hangzhou"];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let base = 1_700_000_000_000i64;
    let mut lines: Vec<(u32, String)> = Vec::new();
    for u in 0..USERS {
        let ts = base + i64::from(u);
        let city = cities[(rng.next() % 5) as usize];
        let amount = rng.next() % 1000;
        lines.push((u % 4, format!(r#"{{"type":"profile","user_id":"u{u:07}","ts":{ts},"properties":{{"city":"{city}"}}}}"#)));
        lines.push((u % 4, format!(r#"{{"user_id":"u{u:07}","event":"purchase","ts":{ts},"properties":{{"amount":{amount}}}}}"#)));
        if lines.len() >= 20_000 || u == USERS - 1 {
            let records: Vec<Record<'_>> = lines
                .iter()
                .enumerate()
                .map(|(i, (p, l))| Record {
                    partition: *p,
                    bytes: l.as_bytes(),
                    origin: Origin::Line {
                        source: "bench".into(),
                        line: i as u64,
                    },
                    fault: None,
                })
                .collect();
            engine.process(&records, &[]).unwrap();
            lines.clear();
        }
    }
    SharedEngine::new(engine)
}

fn bench_tags(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let engine = tag_state(dir.path());
    eprintln!(
        "built {USERS} users in {:.1}s; vip: {}",
        started.elapsed().as_secs_f64(),
        engine.lock().segment_size("vip")
    );
    let mut group = c.benchmark_group("audience over tags, 1M users");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(60));
    for expr in [
        // Every user is a candidate: 1M states read and evaluated.
        "spend_30d > 500 AND city IN ('Shanghai', 'Beijing')",
        // Restricted to the members of a segment conjunct (~10%) first.
        "vip AND city IN ('Shanghai', 'Beijing')",
    ] {
        let query = AudienceQuery::resolve_in(&engine, expr).unwrap();
        assert!(matches!(query, AudienceQuery::Condition { .. }));
        let size = query.members(&engine).unwrap().len();
        eprintln!("{expr}: {size} users");
        group.bench_function(format!("resolve+members: {expr}"), |b| {
            b.iter(|| {
                let query = AudienceQuery::resolve_in(&engine, black_box(expr)).unwrap();
                query.members(&engine).unwrap().len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_tags);
criterion_main!(benches);
