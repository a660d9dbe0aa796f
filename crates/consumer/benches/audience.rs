//! Audience benchmark: parse and evaluate expressions over 1,000,000 users and six segments of
//! realistic shapes, including the work of an API answer (first 100 ids and the size).
//!
//! `cargo bench -p tagstream-consumer --bench audience`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use roaring::RoaringBitmap;
use tagstream_consumer::audience::Audience;

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

criterion_group!(benches, bench);
criterion_main!(benches);
