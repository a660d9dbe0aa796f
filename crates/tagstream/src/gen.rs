//! `tagstream gen`: a realistic, deterministic synthetic e-commerce event stream (SPEC §7).
//!
//! The output is native-format NDJSON (SPEC §2), exactly `events` lines, streamed to the
//! writer. The same options always give the same bytes.
//!
//! What it looks like:
//! * time runs from `END_MS - days` to [`END_MS`] (2024-11-20T00:00:00Z), with a daily rhythm
//!   in Asia/Shanghai local time (quiet nights, lunch and evening peaks), busier weekends and
//!   a Singles' Day (11-11) spike;
//! * user activity is Zipf-skewed (a few heavy users, a long tail); ids are `u000123`;
//! * users browse in sessions that run through a funnel with drop-off at each step:
//!   `view` → `search` → `add_to_cart` → `purchase`, mostly in the user's preferred
//!   category (`skincare`, `makeup`, `fragrance`, `haircare`, `apparel`, `electronics`,
//!   `home`), on the `app` or the `web`;
//! * the first time a user shows up, a `profile` event (`gender`, `city`, `age`, `tier`,
//!   `signup_channel`) comes first; now and then a profile update follows later;
//! * every line has a deterministic `event_id`.
//!
//! It is messy the way real tracking data is, at small rates: ~1% late events (minutes to
//! days in the past), same-millisecond ties, ~0.3% retried lines (an exact repeat of a
//! recent line, same `event_id`), ~0.2% purchases whose `amount` is a string such as
//! `"12.50"` or null, profile times as RFC 3339 strings (`Z` or `+08:00`) while track times
//! are epoch milliseconds, and a handful of `{"type":"delete"}` events for users who come
//! back later (with a fresh profile).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, Write};

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, Timelike};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The fixed end of every generated stream: 2024-11-20T00:00:00Z.
pub const END_MS: i64 = 1_732_060_800_000;

/// Longest supported span (100 years).
pub const MAX_DAYS: u32 = 36_500;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Asia/Shanghai is UTC+8 all year (no daylight saving).
const LOCAL_OFFSET_MS: i64 = 8 * HOUR_MS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Number of distinct users that may appear (`u000001` ..).
    pub users: u64,
    /// Number of lines written, exactly.
    pub events: u64,
    pub seed: u64,
    /// Days covered, ending at [`END_MS`].
    pub days: u32,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            users: 1_000,
            events: 100_000,
            seed: 42,
            days: 30,
        }
    }
}

impl GenOptions {
    /// Checks the options; the error is one line fit for the command line.
    pub fn validate(&self) -> Result<(), String> {
        if self.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if self.days == 0 || self.days > MAX_DAYS {
            return Err(format!("--days must be between 1 and {MAX_DAYS}"));
        }
        Ok(())
    }
}

/// Writes the stream to `out` (buffered internally; flushed at the end).
///
/// Fails with `InvalidInput` when [`GenOptions::validate`] fails, or with the writer's error.
pub fn generate(opts: &GenOptions, out: &mut dyn Write) -> io::Result<()> {
    opts.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    let mut gen = Generator::new(opts);
    for i in 0..opts.events {
        gen.line.clear();
        gen.next_line(i);
        gen.line.push('\n');
        out.write_all(gen.line.as_bytes())?;
    }
    out.flush()
}

// ---- catalogue ------------------------------------------------------------------------------

struct Category {
    name: &'static str,
    sku_prefix: &'static str,
    /// Share of users who prefer it (per mille).
    share: u32,
    /// Median price (currency units) and log-normal spread.
    median: f64,
    sigma: f64,
    queries: &'static [&'static str],
}

const CATEGORIES: [Category; 7] = [
    Category {
        name: "skincare",
        sku_prefix: "SKN",
        share: 240,
        median: 45.0,
        sigma: 0.6,
        queries: &[
            "vitamin c serum",
            "sunscreen spf50",
            "retinol",
            "moisturizer",
            "cleanser",
            "eye cream",
            "sheet mask",
        ],
    },
    Category {
        name: "makeup",
        sku_prefix: "MKP",
        share: 170,
        median: 28.0,
        sigma: 0.55,
        queries: &[
            "lipstick",
            "foundation",
            "mascara",
            "eyeshadow palette",
            "cushion compact",
            "concealer",
        ],
    },
    Category {
        name: "fragrance",
        sku_prefix: "FRG",
        share: 70,
        median: 85.0,
        sigma: 0.5,
        queries: &[
            "perfume",
            "eau de toilette",
            "gift set",
            "travel spray",
            "body mist",
        ],
    },
    Category {
        name: "haircare",
        sku_prefix: "HAR",
        share: 90,
        median: 18.0,
        sigma: 0.5,
        queries: &[
            "shampoo",
            "hair mask",
            "conditioner",
            "hair oil",
            "dry shampoo",
        ],
    },
    Category {
        name: "apparel",
        sku_prefix: "APP",
        share: 220,
        median: 55.0,
        sigma: 0.65,
        queries: &[
            "down jacket",
            "sneakers",
            "hoodie",
            "dress",
            "jeans",
            "wool coat",
            "yoga pants",
        ],
    },
    Category {
        name: "electronics",
        sku_prefix: "ELC",
        share: 120,
        median: 160.0,
        sigma: 0.85,
        queries: &[
            "wireless earbuds",
            "phone case",
            "power bank",
            "smart watch",
            "charger",
            "tablet",
        ],
    },
    Category {
        name: "home",
        sku_prefix: "HOM",
        share: 90,
        median: 32.0,
        sigma: 0.6,
        queries: &[
            "scented candle",
            "bedding set",
            "storage box",
            "mug",
            "air purifier",
            "towels",
        ],
    },
];

/// Products per category; popularity inside a category is Zipf-skewed too.
const PRODUCTS_PER_CATEGORY: u64 = 800;

const CITIES: [(&str, u32); 12] = [
    ("Shanghai", 180),
    ("Beijing", 160),
    ("Shenzhen", 120),
    ("Guangzhou", 110),
    ("Hangzhou", 90),
    ("Chengdu", 80),
    ("Wuhan", 55),
    ("Nanjing", 55),
    ("Chongqing", 50),
    ("Xi'an", 40),
    ("Suzhou", 35),
    ("Tianjin", 25),
];

const TIERS: [(&str, u32); 4] = [
    ("basic", 700),
    ("silver", 200),
    ("gold", 80),
    ("platinum", 20),
];

/// Relative activity by local hour of day (Asia/Shanghai).
const HOUR_WEIGHT: [f64; 24] = [
    0.40, 0.22, 0.12, 0.08, 0.07, 0.10, 0.25, 0.50, 0.80, 0.95, 1.00, 1.05, //
    1.20, 1.15, 1.00, 0.95, 0.95, 1.00, 1.10, 1.30, 1.55, 1.70, 1.45, 0.85,
];

fn pick_weighted<T: Copy>(table: &[(T, u32)], x: u64) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut r = (x % u64::from(total)) as u32;
    for &(v, w) in table {
        if r < w {
            return v;
        }
        r -= w;
    }
    table[table.len() - 1].0
}

fn pick_category(x: u64) -> usize {
    let total: u32 = CATEGORIES.iter().map(|c| c.share).sum();
    let mut r = (x % u64::from(total)) as u32;
    for (i, c) in CATEGORIES.iter().enumerate() {
        if r < c.share {
            return i;
        }
        r -= c.share;
    }
    0
}

/// SplitMix64: a bijective 64-bit mixer, for per-user and per-product traits and event ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Price in cents of product `idx` of category `cat`: log-normal around the median, ending in
/// .99, .90 or .00 like real price tags. Stable for a given seed.
fn product_price_cents(seed: u64, cat: usize, idx: u64) -> u64 {
    let h = mix(seed ^ mix(0x5052_4943_4500_0000 ^ ((cat as u64) << 40) ^ idx));
    let (u1, u2) = (unit(h).max(1e-12), unit(mix(h)));
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let c = &CATEGORIES[cat];
    let units = (c.median * (c.sigma * z).exp())
        .round()
        .clamp(2.0, 20_000.0) as u64;
    let ending = [1, 1, 10, 0][(h >> 60) as usize & 3];
    units * 100 - ending
}

// ---- users ---------------------------------------------------------------------------------

/// Stable per-user traits, derived from the seed and the user index.
struct Traits {
    category: usize,
    gender: &'static str,
    city: &'static str,
    age: u64,
    tier: &'static str,
    app_share: f64,
    coupon_affinity: f64,
    buy_propensity: f64,
}

fn traits(seed: u64, user: u64) -> Traits {
    let h = |k: u64| mix(seed ^ mix(user.wrapping_mul(0x100) ^ k ^ 0x7553_4552_0000_0000));
    let gender = match h(2) % 100 {
        0..=61 => "F",
        62..=96 => "M",
        _ => "U",
    };
    // ages skew young: 18 + a triangular-ish distribution over 0..50
    let age = 18 + (h(4) % 26 + h(5) % 26).min(52);
    Traits {
        category: pick_category(h(1)),
        gender,
        city: pick_weighted(&CITIES, h(3)),
        age,
        tier: pick_weighted(&TIERS, h(6)),
        app_share: [0.85, 0.7, 0.55, 0.3][(h(7) % 4) as usize],
        coupon_affinity: [0.05, 0.12, 0.2, 0.5][(h(8) % 4) as usize],
        buy_propensity: 0.5 + 1.2 * unit(h(9)),
    }
}

// ---- time ----------------------------------------------------------------------------------

/// Maps event ordinals to timestamps: stratified samples of a piecewise-constant intensity
/// over the span (hour resolution), so timestamps never decrease with the ordinal.
struct Clock {
    start: i64,
    cum: Vec<f64>,
    hour: usize,
    events: f64,
}

impl Clock {
    fn new(days: u32, events: u64) -> Clock {
        let start = END_MS - i64::from(days) * DAY_MS;
        let hours = days as usize * 24;
        let mut cum = Vec::with_capacity(hours + 1);
        let mut total = 0.0;
        cum.push(0.0);
        for h in 0..hours {
            let t = start + h as i64 * HOUR_MS;
            let local = DateTime::from_timestamp_millis(t + LOCAL_OFFSET_MS)
                .map(|d| d.naive_utc())
                .unwrap_or_default();
            let mut w = HOUR_WEIGHT[local.hour() as usize];
            if local.weekday().number_from_monday() >= 6 {
                w *= 1.15;
            }
            if local.month() == 11 && local.day() == 11 {
                w *= 2.5; // Singles' Day
            }
            // slow growth over the span
            w *= 0.85 + 0.3 * h as f64 / hours as f64;
            total += w;
            cum.push(total);
        }
        Clock {
            start,
            cum,
            hour: 0,
            events: events.max(1) as f64,
        }
    }

    /// Timestamp of ordinal `i`, given `u` uniform in [0, 1). Non-decreasing in `i`.
    fn at(&mut self, i: u64, u: f64) -> i64 {
        let hours = self.cum.len() - 1;
        let total = self.cum[hours];
        let target = (i as f64 + u) / self.events * total;
        while self.hour + 1 < hours && self.cum[self.hour + 1] <= target {
            self.hour += 1;
        }
        let (lo, hi) = (self.cum[self.hour], self.cum[self.hour + 1]);
        let frac = ((target - lo) / (hi - lo)).clamp(0.0, 1.0);
        let t = self.start + self.hour as i64 * HOUR_MS + (frac * HOUR_MS as f64) as i64;
        t.min(END_MS - 1)
    }
}

fn rfc3339(ms: i64, shanghai: bool) -> String {
    let Some(dt) = DateTime::from_timestamp_millis(ms) else {
        return ms.to_string();
    };
    if shanghai {
        let tz = FixedOffset::east_opt(8 * 3600).expect("valid offset");
        dt.with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    } else {
        dt.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

// ---- sessions ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    View,
    Search,
    Cart,
    Purchase,
}

struct Session {
    user: u64,
    category: usize,
    app: bool,
    step: Step,
    /// A profile event to send before the next track event.
    profile: Option<ProfileKind>,
    /// The product last viewed: (category, product index, price in cents).
    product: Option<(usize, u64, u64)>,
    cart_cents: u64,
    cart_items: u64,
    /// The most expensive item in the cart: (category, product index, cents).
    cart_top: Option<(usize, u64, u64)>,
    buy_propensity: f64,
    coupon_affinity: f64,
}

#[derive(Clone, Copy)]
enum ProfileKind {
    Signup,
    Update,
}

struct Generator {
    seed: u64,
    users: u64,
    width: usize,
    rng: StdRng,
    clock: Clock,
    user_zipf: Zipf<f64>,
    /// q of the Zipf-Mandelbrot user activity.
    user_offset: u64,
    product_zipf: Zipf<f64>,
    /// Zipf rank → user index permutation: (rank * perm_a + perm_b) mod users.
    perm_a: u64,
    perm_b: u64,
    pool: Vec<Session>,
    pool_target: usize,
    seen: HashSet<u64>,
    /// Recent lines (user, line) for retries; the user is `u64::MAX` once invalidated.
    ring: Vec<(u64, String)>,
    ring_next: usize,
    deletes: Vec<u64>,
    /// Deleted users due back at an ordinal: (ordinal, user).
    comebacks: Vec<(u64, u64)>,
    events: u64,
    last_ts: i64,
    /// The user of the line being written.
    line_user: u64,
    id_key: u64,
    id_counter: u64,
    orders: u64,
    line: String,
}

const RING: usize = 256;

impl Generator {
    fn new(opts: &GenOptions) -> Generator {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let users = opts.users;
        let width = users.to_string().len().max(6);
        let perm_b = rng.gen_range(0..users);
        let mut perm_a = (rng.gen::<u64>() % users) | 1;
        while gcd(perm_a, users) != 1 {
            perm_a = (perm_a + 2) % users.max(2);
            if perm_a == 0 {
                perm_a = 1;
            }
        }
        let user_offset = (users / 1_000).clamp(1, 1_000_000);
        let span = f64::from(opts.days) * DAY_MS as f64;
        let gap = span / opts.events.max(1) as f64;
        // concurrent sessions, so that a session's events are ~1-2 minutes apart
        let pool_target = (90_000.0 / gap).round().clamp(1.0, 512.0) as usize;
        let n_deletes = match opts.events {
            0..=99 => 0,
            100..=999 => 1,
            n => (n / 250_000).clamp(3, 12),
        };
        let deletes = (0..n_deletes)
            .map(|k| {
                let f = 0.1 + 0.75 * (k as f64 + 0.5) / n_deletes as f64;
                (opts.events as f64 * f) as u64
            })
            .rev()
            .collect();
        Generator {
            seed: opts.seed,
            users,
            width,
            clock: Clock::new(opts.days, opts.events),
            user_zipf: Zipf::new(users.saturating_add(user_offset), 1.0).expect("users >= 1"),
            user_offset,
            product_zipf: Zipf::new(PRODUCTS_PER_CATEGORY, 1.05).expect("valid zipf"),
            perm_a,
            perm_b,
            pool: Vec::with_capacity(pool_target),
            pool_target,
            seen: HashSet::new(),
            ring: Vec::with_capacity(RING),
            ring_next: 0,
            deletes,
            comebacks: Vec::new(),
            events: opts.events,
            last_ts: i64::MIN,
            line_user: 0,
            id_key: mix(opts.seed ^ 0x4556_454E_5449_4400),
            id_counter: 0,
            orders: 0,
            line: String::with_capacity(512),
            rng,
        }
    }

    /// Writes line `i` (without the newline) into `self.line`.
    fn next_line(&mut self, i: u64) {
        let now = self.clock.at(i, self.rng.gen::<f64>());
        if self.deletes.last().is_some_and(|&at| at <= i) && !self.pool.is_empty() {
            self.deletes.pop();
            self.delete(i, now);
            return;
        }
        if !self.ring.is_empty() && self.rng.gen_bool(0.003) {
            let k = self.rng.gen_range(0..self.ring.len());
            if self.ring[k].0 != u64::MAX {
                let (_, line) = &self.ring[k];
                self.line.push_str(line);
                return;
            }
        }
        loop {
            if self.pool.len() < self.pool_target {
                self.start_session(i);
            }
            let k = self.rng.gen_range(0..self.pool.len());
            if self.session_event(k, now) {
                break;
            }
            self.pool.swap_remove(k);
        }
        self.remember(self.line_user);
    }

    fn remember(&mut self, user: u64) {
        if self.ring.len() < RING {
            self.ring.push((user, self.line.clone()));
        } else {
            let slot = &mut self.ring[self.ring_next];
            slot.0 = user;
            slot.1.clear();
            slot.1.push_str(&self.line);
            self.ring_next = (self.ring_next + 1) % RING;
        }
    }

    fn delete(&mut self, i: u64, now: i64) {
        let k = self.rng.gen_range(0..self.pool.len());
        let user = self.pool.swap_remove(k).user;
        self.pool.retain(|s| s.user != user);
        self.seen.remove(&user);
        for slot in &mut self.ring {
            if slot.0 == user {
                slot.0 = u64::MAX;
            }
        }
        let remaining = self.events - i;
        let back = i + 1 + self.rng.gen_range(remaining / 100..=remaining / 8);
        self.comebacks.push((back, user));
        let ts = self.tie_or(now);
        self.begin(user);
        let _ = write!(self.line, r#""type":"delete","ts":{ts},"#);
        self.finish();
    }

    fn start_session(&mut self, i: u64) {
        let user = match self.comebacks.iter().position(|&(at, _)| at <= i) {
            Some(k) => self.comebacks.swap_remove(k).1,
            None => {
                // Zipf-Mandelbrot, P(rank) ~ 1 / (rank + q): Zipf over n + q ranks with the
                // first q rejected, so the heaviest users are heavy but not bots
                let rank = loop {
                    let r = self.user_zipf.sample(&mut self.rng) as u64;
                    if r > self.user_offset {
                        break r - self.user_offset - 1;
                    }
                };
                ((u128::from(rank) * u128::from(self.perm_a) + u128::from(self.perm_b))
                    % u128::from(self.users)) as u64
            }
        };
        let t = traits(self.seed, user);
        let profile = if self.seen.insert(user) {
            Some(ProfileKind::Signup)
        } else if self.rng.gen_bool(0.02) {
            Some(ProfileKind::Update)
        } else {
            None
        };
        let category = if self.rng.gen_bool(0.7) {
            t.category
        } else {
            pick_category(self.rng.gen())
        };
        self.pool.push(Session {
            user,
            category,
            app: self.rng.gen_bool(t.app_share),
            step: Step::Start,
            profile,
            product: None,
            cart_cents: 0,
            cart_items: 0,
            cart_top: None,
            buy_propensity: t.buy_propensity,
            coupon_affinity: t.coupon_affinity,
        });
    }

    /// Emits the next event of session `k` into `self.line`; false when the session ended.
    fn session_event(&mut self, k: usize, now: i64) -> bool {
        if let Some(kind) = self.pool[k].profile.take() {
            self.profile_event(k, kind, now);
            return true;
        }
        let s = &self.pool[k];
        let x: f64 = self.rng.gen();
        let buy = s.buy_propensity;
        let next = match s.step {
            Step::Start => {
                if x < 0.35 {
                    Some(Step::Search)
                } else {
                    Some(Step::View)
                }
            }
            Step::View => {
                let cart = 0.14 * buy;
                if x < 0.45 {
                    Some(Step::View)
                } else if x < 0.53 {
                    Some(Step::Search)
                } else if x < 0.53 + cart {
                    Some(Step::Cart)
                } else {
                    None
                }
            }
            Step::Search => (x < 0.85).then_some(Step::View),
            Step::Cart => {
                let purchase = (0.42 * buy).min(0.9);
                if x < purchase {
                    Some(Step::Purchase)
                } else if x < purchase + 0.3 {
                    Some(Step::View)
                } else if s.cart_items > 0 && x > 0.97 {
                    Some(Step::Cart)
                } else {
                    None
                }
            }
            Step::Purchase => (x < 0.15).then_some(Step::View),
        };
        let Some(step) = next else { return false };
        self.pool[k].step = step;
        let ts = self.track_ts(now);
        match step {
            Step::Start | Step::View => self.view(k, ts),
            Step::Search => self.search(k, ts),
            Step::Cart => self.add_to_cart(k, ts),
            Step::Purchase => self.purchase(k, ts),
        }
        true
    }

    /// The time of a track event: usually `now`; sometimes a tie with the previous line, or
    /// late (minutes to days in the past, as from an app that was offline).
    fn track_ts(&mut self, now: i64) -> i64 {
        let x: f64 = self.rng.gen();
        if x < 0.01 {
            let lo = (2.0 * 60_000.0f64).ln();
            let hi = (3.0 * DAY_MS as f64).ln();
            let delay = self.rng.gen_range(lo..hi).exp() as i64;
            self.last_ts = self.last_ts.max(now);
            return (now - delay).max(self.clock.start);
        }
        self.tie_or_with(now, x < 0.015)
    }

    fn tie_or(&mut self, now: i64) -> i64 {
        let tie = self.rng.gen_bool(0.005);
        self.tie_or_with(now, tie)
    }

    fn tie_or_with(&mut self, now: i64, tie: bool) -> i64 {
        if tie && self.last_ts != i64::MIN {
            return self.last_ts;
        }
        self.last_ts = self.last_ts.max(now);
        now
    }

    fn begin(&mut self, user: u64) {
        self.line_user = user;
        let w = self.width;
        let _ = write!(self.line, r#"{{"user_id":"u{:0w$}","#, user + 1);
    }

    /// Appends the event id and closes the object.
    fn finish(&mut self) {
        let a = mix(self.id_key.wrapping_add(self.id_counter));
        let b = mix(a ^ self.id_key);
        self.id_counter += 1;
        let _ = write!(
            self.line,
            r#""event_id":"{:08x}-{:04x}-{:04x}-{:04x}-{:012x}"}}"#,
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        );
    }

    fn channel(&self, k: usize) -> &'static str {
        if self.pool[k].app {
            "app"
        } else {
            "web"
        }
    }

    fn track_head(&mut self, k: usize, name: &str, ts: i64) {
        self.begin(self.pool[k].user);
        let _ = write!(self.line, r#""event":"{name}","ts":{ts},"properties":{{"#);
    }

    fn pick_product(&mut self, k: usize) -> (usize, u64, u64) {
        let cat = if self.rng.gen_bool(0.85) {
            self.pool[k].category
        } else {
            pick_category(self.rng.gen())
        };
        let idx = self.product_zipf.sample(&mut self.rng) as u64;
        (cat, idx, product_price_cents(self.seed, cat, idx))
    }

    fn view(&mut self, k: usize, ts: i64) {
        let (cat, idx, cents) = self.pick_product(k);
        self.pool[k].product = Some((cat, idx, cents));
        let channel = self.channel(k);
        self.track_head(k, "view", ts);
        let c = &CATEGORIES[cat];
        let _ = write!(
            self.line,
            r#""category":"{}","product_id":"{}-{idx:05}","price":{}.{:02},"channel":"{channel}"}},"#,
            c.name,
            c.sku_prefix,
            cents / 100,
            cents % 100
        );
        self.finish();
    }

    fn search(&mut self, k: usize, ts: i64) {
        let cat = if self.rng.gen_bool(0.8) {
            self.pool[k].category
        } else {
            pick_category(self.rng.gen())
        };
        self.pool[k].category = cat;
        let c = &CATEGORIES[cat];
        let query = c.queries[self.rng.gen_range(0..c.queries.len())];
        let results = if self.rng.gen_bool(0.04) {
            0
        } else {
            self.rng.gen_range(3..240)
        };
        let channel = self.channel(k);
        self.track_head(k, "search", ts);
        let _ = write!(
            self.line,
            r#""query":"{query}","category":"{}","results":{results},"channel":"{channel}"}},"#,
            c.name
        );
        self.finish();
    }

    fn add_to_cart(&mut self, k: usize, ts: i64) {
        let (cat, idx, cents) = match self.pool[k].product {
            Some(p) => p,
            None => self.pick_product(k),
        };
        let quantity = match self.rng.gen_range(0..100) {
            0..=84 => 1,
            85..=96 => 2,
            _ => 3,
        };
        let s = &mut self.pool[k];
        s.cart_cents += cents * quantity;
        s.cart_items += quantity;
        if s.cart_top.is_none() || s.cart_top.is_some_and(|(_, _, top)| cents > top) {
            s.cart_top = Some((cat, idx, cents));
        }
        let channel = self.channel(k);
        self.track_head(k, "add_to_cart", ts);
        let c = &CATEGORIES[cat];
        let _ = write!(
            self.line,
            r#""category":"{}","product_id":"{}-{idx:05}","price":{}.{:02},"quantity":{quantity},"channel":"{channel}"}},"#,
            c.name,
            c.sku_prefix,
            cents / 100,
            cents % 100
        );
        self.finish();
    }

    fn purchase(&mut self, k: usize, ts: i64) {
        let (cat, idx, _) = self.pool[k]
            .cart_top
            .unwrap_or((self.pool[k].category, 1, 100));
        let mut cents = self.pool[k].cart_cents.max(100);
        let items = self.pool[k].cart_items.max(1);
        let coupon = self.rng.gen_bool(self.pool[k].coupon_affinity);
        if coupon {
            let off = [10, 15, 20][self.rng.gen_range(0..3)];
            cents -= cents * off / 100;
        }
        let s = &mut self.pool[k];
        s.cart_cents = 0;
        s.cart_items = 0;
        s.cart_top = None;
        self.orders += 1;
        let order = self.orders;
        let channel = self.channel(k);
        let x: f64 = self.rng.gen();
        let amount = if x < 0.001 {
            format!("\"{}.{:02}\"", cents / 100, cents % 100)
        } else if x < 0.002 {
            "null".to_owned()
        } else {
            format!("{}.{:02}", cents / 100, cents % 100)
        };
        self.track_head(k, "purchase", ts);
        let c = &CATEGORIES[cat];
        let _ = write!(
            self.line,
            r#""order_id":"o{order:08}","category":"{}","product_id":"{}-{idx:05}","items":{items},"amount":{amount},"currency":"CNY","coupon":{coupon},"channel":"{channel}"}},"#,
            c.name, c.sku_prefix,
        );
        self.finish();
    }

    fn profile_event(&mut self, k: usize, kind: ProfileKind, now: i64) {
        let user = self.pool[k].user;
        let t = traits(self.seed, user);
        let ts = self.tie_or(now);
        let when = rfc3339(ts, self.rng.gen_bool(0.5));
        self.begin(user);
        let _ = write!(
            self.line,
            r#""type":"profile","ts":"{when}","properties":{{"#
        );
        match kind {
            ProfileKind::Signup => {
                let age = if self.rng.gen_bool(0.01) {
                    "null".to_owned()
                } else {
                    t.age.to_string()
                };
                let channel = self.channel(k);
                let _ = write!(
                    self.line,
                    r#""gender":"{}","city":"{}","age":{age},"tier":"{}","signup_channel":"{channel}"}},"#,
                    t.gender, t.city, t.tier
                );
            }
            ProfileKind::Update => match self.rng.gen_range(0..3) {
                0 => {
                    let tier = pick_weighted(&TIERS, self.rng.gen());
                    let _ = write!(self.line, r#""tier":"{tier}"}},"#);
                }
                1 => {
                    let city = pick_weighted(&CITIES, self.rng.gen());
                    let _ = write!(self.line, r#""city":"{city}"}},"#);
                }
                _ => {
                    let _ = write!(self.line, r#""age":{}}},"#, t.age + 1);
                }
            },
        }
        self.finish();
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tagstream_rules::event::{decode, DecodeOptions, Event, EventBody};

    fn gen(users: u64, events: u64, seed: u64, days: u32) -> Vec<u8> {
        let mut out = Vec::new();
        generate(
            &GenOptions {
                users,
                events,
                seed,
                days,
            },
            &mut out,
        )
        .unwrap();
        out
    }

    fn decode_all(out: &[u8]) -> Vec<Event> {
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                decode(l, &DecodeOptions::default()).unwrap_or_else(|r| {
                    panic!("{r:?} for {}", String::from_utf8_lossy(l));
                })
            })
            .collect()
    }

    #[test]
    fn deterministic() {
        let a = gen(500, 5_000, 7, 30);
        assert_eq!(a, gen(500, 5_000, 7, 30));
        assert_ne!(a, gen(500, 5_000, 8, 30));
    }

    #[test]
    fn exact_line_count() {
        for (users, events, days) in [
            (1, 0, 1),
            (1, 1, 1),
            (1, 7, 1),
            (3, 100, 2),
            (50, 999, 30),
            (2_000, 12_345, 30),
        ] {
            let out = gen(users, events, 1, days);
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count() as u64, events);
            assert!(out.is_empty() || out.ends_with(b"\n"));
        }
    }

    #[test]
    fn rejects_bad_options() {
        let mut out = Vec::new();
        let bad = GenOptions {
            users: 0,
            ..GenOptions::default()
        };
        assert_eq!(
            generate(&bad, &mut out).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let bad = GenOptions {
            days: 0,
            ..GenOptions::default()
        };
        assert!(bad.validate().is_err());
        assert!(GenOptions::default().validate().is_ok());
    }

    #[test]
    fn every_line_decodes_and_looks_real() {
        let users = 1_000;
        let out = gen(users, 60_000, 42, 30);
        let events = decode_all(&out);
        assert_eq!(events.len(), 60_000);
        let start = END_MS - 30 * DAY_MS;
        let mut names: HashMap<String, u64> = HashMap::new();
        let mut ids: HashMap<&str, u64> = HashMap::new();
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut users_seen = HashSet::new();
        let (mut profiles, mut deletes, mut late, mut ties, mut string_amounts) = (0, 0, 0, 0, 0);
        let mut coupons = 0;
        let mut prev = i64::MIN;
        for (n, ev) in events.iter().enumerate() {
            assert!(ev.ts >= start && ev.ts < END_MS, "{ev:?}");
            let id = &ev.user_id;
            assert!(id.len() == 7 && id.starts_with('u'), "{id}");
            let num: u64 = id[1..].parse().unwrap();
            assert!((1..=users).contains(&num));
            users_seen.insert(id.clone());
            *ids.entry(ev.event_id.as_deref().expect("every event has an id"))
                .or_default() += 1;
            if ev.ts < prev {
                late += 1;
            }
            if ev.ts == prev {
                ties += 1;
            }
            prev = prev.max(ev.ts);
            match &ev.body {
                EventBody::Track { name, properties } => {
                    *names.entry(name.clone()).or_default() += 1;
                    assert!(
                        first_seen.contains_key(id.as_str()),
                        "{id} tracked before profile"
                    );
                    let channel = properties["channel"].as_str().unwrap();
                    assert!(channel == "app" || channel == "web");
                    let cat = properties["category"].as_str().unwrap();
                    assert!(CATEGORIES.iter().any(|c| c.name == cat), "{cat}");
                    if name == "purchase" {
                        match &properties["amount"] {
                            serde_json::Value::Number(a) => assert!(a.as_f64().unwrap() > 0.0),
                            _ => string_amounts += 1,
                        }
                        if properties["coupon"] == serde_json::Value::Bool(true) {
                            coupons += 1;
                        }
                    }
                    if name == "search" {
                        assert!(properties["query"].is_string());
                    }
                }
                EventBody::Profile { properties, .. } => {
                    profiles += 1;
                    first_seen.entry(id.as_str()).or_insert(n);
                    assert!(!properties.is_empty());
                }
                EventBody::Delete => {
                    deletes += 1;
                    first_seen.remove(id.as_str());
                    // the user comes back later, with a fresh profile
                    let back = events[n + 1..].iter().position(|e| &e.user_id == id);
                    let back = back.expect("a deleted user comes back") + n + 1;
                    assert!(matches!(events[back].body, EventBody::Profile { .. }));
                }
            }
        }
        let views = names["view"];
        let searches = names["search"];
        let carts = names["add_to_cart"];
        let purchases = names["purchase"];
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(
            views > searches && searches > carts && carts > purchases,
            "{names:?}"
        );
        assert!(purchases > 1_000, "{names:?}");
        assert!(
            coupons > purchases / 20 && coupons < purchases / 2,
            "{coupons}/{purchases}"
        );
        assert!((3..=12).contains(&deletes), "{deletes}");
        assert!(profiles as usize >= users_seen.len());
        assert!(users_seen.len() > 500, "{}", users_seen.len());
        // ~1% late (plus retries), some ties, ~0.3% exact retries
        assert!((300..1_500).contains(&late), "late {late}");
        assert!(ties > 50, "ties {ties}");
        let dups: u64 = ids.values().filter(|&&c| c > 1).map(|c| c - 1).sum();
        assert!((80..400).contains(&dups), "dups {dups}");
        assert!(string_amounts >= 1 || purchases < 2_000, "{string_amounts}");
        // duplicate ids are exact repeats of an earlier line
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut by_id: HashMap<&str, &[u8]> = HashMap::new();
        for (ev, line) in events.iter().zip(&lines) {
            let prev = by_id.insert(ev.event_id.as_deref().unwrap(), line);
            if let Some(prev) = prev {
                assert_eq!(prev, *line);
            }
        }
    }

    #[test]
    fn activity_is_skewed() {
        let out = gen(10_000, 50_000, 3, 30);
        let events = decode_all(&out);
        let mut per_user: HashMap<&str, u64> = HashMap::new();
        for ev in &events {
            *per_user.entry(&ev.user_id).or_default() += 1;
        }
        let mut counts: Vec<u64> = per_user.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_1pct: u64 = counts.iter().take(100).sum();
        assert!(
            top_1pct * 10 > 50_000,
            "top 1% of users make {top_1pct} of 50000 events"
        );
        assert!(counts.len() > 2_000, "{} users", counts.len());
        // u000001 is not automatically the heaviest user
        let heaviest = per_user
            .iter()
            .max_by_key(|(u, c)| (**c, std::cmp::Reverse(**u)))
            .unwrap();
        assert_ne!(*heaviest.0, "u000001");
    }

    #[test]
    fn prices_are_stable_and_plausible() {
        for cat in 0..CATEGORIES.len() {
            for idx in 1..50 {
                let p = product_price_cents(9, cat, idx);
                assert_eq!(p, product_price_cents(9, cat, idx));
                assert!((100..=2_000_000).contains(&p), "{p}");
            }
        }
    }

    #[test]
    fn clock_is_monotone_and_in_range() {
        let mut rng = StdRng::seed_from_u64(5);
        for (days, events) in [(1, 1), (1, 10), (30, 1_000), (30, 100_000), (365, 5_000)] {
            let mut c = Clock::new(days, events);
            let mut prev = i64::MIN;
            for i in 0..events {
                let u = if i % 2 == 0 {
                    0.999_999_999
                } else {
                    rng.gen::<f64>()
                };
                let t = c.at(i, u);
                assert!(t >= prev && t >= END_MS - i64::from(days) * DAY_MS && t < END_MS);
                prev = t;
            }
            // the span is covered: the first events fall in the first day, the last ones in
            // the last day
            assert!(c.at(events - 1, 0.5) > END_MS - DAY_MS || events < 10);
        }
    }

    #[test]
    fn big_user_ids_are_wider() {
        let out = gen(2_000_000, 50, 1, 1);
        for ev in decode_all(&out) {
            assert_eq!(ev.user_id.len(), 8, "{}", ev.user_id);
        }
    }
}
