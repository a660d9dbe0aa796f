//! Per-user state: one accumulator per aggregate tag, profile attributes, remembered event ids,
//! segment membership and the next timer. Encoded compactly (postcard) for the state store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::event::Millis;
use crate::rules::{AggKind, Aggregate};
use crate::time::{BucketsAt, Window, Zone};
use crate::value::{Scalar, Value};

mod recent_ids;
pub use recent_ids::RecentIds;

/// Version byte in front of every encoded state, so the layout can evolve.
/// Version 2 prefixes the postcard body with the incarnation stamp (a varint); version 1 states
/// (written before stamps existed) are read with stamp 0.
const FORMAT_VERSION: u8 = 2;
const FORMAT_VERSION_UNSTAMPED: u8 = 1;

/// Bytes reserved for an encoded state up front (most states of the example rules fit).
const ENCODE_CAPACITY: usize = 512;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UserState {
    /// One accumulator per [`crate::rules::RuleSet::aggregates`] entry.
    pub aggs: Vec<AggState>,
    /// Profile attributes: (event time of the value, value); an explicit null is a value.
    pub profile: BTreeMap<String, (Millis, Scalar)>,
    /// Hashes of applied event ids with their event time, for deduplication.
    pub dedup: RecentIds,
    /// Per segment (file order): membership and the number of transitions emitted so far.
    pub segments: Vec<SegmentState>,
    /// The next instant at which a segment may change with time alone.
    pub next_timer: Option<Millis>,
    /// Set by an event instead of `next_timer`, which is then computed once per batch rather
    /// than after every event ([`crate::engine::settle`]). Never stored.
    #[serde(skip)]
    pub pending: Option<Pending>,
    /// Tells this incarnation of the user apart from earlier ones (SPEC §5 rev 2: a user
    /// deleted and re-created within one millisecond must not repeat a transition id). It is
    /// the number of deletes its partition had applied when the user was created: any two
    /// incarnations of one user have a delete of that user between them, so their stamps
    /// differ, the same input in the same order gives the same stamps, and nothing about the
    /// deleted user is kept. Stored outside the postcard body (see [`UserState::encode`]).
    #[serde(skip)]
    pub incarnation: u64,
}

/// A timer not computed yet: segments cannot have changed before `since`, and `values` are the
/// node values at `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub since: Millis,
    pub values: Vec<Value>,
    /// Nothing can change before this instant (computed on first need; see
    /// [`crate::engine::catch_up`]).
    pub quiet_until: Option<Millis>,
}

impl Pending {
    pub fn new(since: Millis, values: Vec<Value>) -> Pending {
        Pending {
            since,
            values,
            quiet_until: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentState {
    pub member: bool,
    pub seq: u32,
}

/// Partial aggregates per bucket (sorted by bucket index; a lifetime aggregate has one bucket, 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Buckets<T>(pub Vec<(i64, T)>);

impl<T> Default for Buckets<T> {
    fn default() -> Self {
        Buckets(Vec::new())
    }
}

impl<T: Default> Buckets<T> {
    fn slot(&mut self, idx: i64) -> &mut T {
        let pos = match self.0.binary_search_by_key(&idx, |(i, _)| *i) {
            Ok(p) => p,
            Err(p) => {
                self.0.insert(p, (idx, T::default()));
                p
            }
        };
        &mut self.0[pos].1
    }
}

impl<T> Buckets<T> {
    /// Buckets with index >= `oldest`.
    fn live(&self, oldest: i64) -> impl Iterator<Item = &T> {
        let start = self.0.partition_point(|(i, _)| *i < oldest);
        self.0[start..].iter().map(|(_, v)| v)
    }

    fn prune(&mut self, oldest: i64) {
        let start = self.0.partition_point(|(i, _)| *i < oldest);
        self.0.drain(..start);
    }

    fn oldest_live(&self, oldest: i64) -> Option<i64> {
        let start = self.0.partition_point(|(i, _)| *i < oldest);
        self.0.get(start).map(|(i, _)| *i)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum AggState {
    Count(Buckets<u64>),
    Sum(Buckets<f64>),
    Min(Buckets<f64>),
    Max(Buckets<f64>),
    Avg(Buckets<(f64, u64)>),
    Distinct(Buckets<BTreeSet<Scalar>>),
    /// Boxed: its merge caches would otherwise make every accumulator of every user as large.
    Top(Box<TopState>),
    /// (event time, value of the property on that event; Null when it lacked it)
    First(Option<(Millis, Scalar)>),
    Last(Option<(Millis, Scalar)>),
    FirstTime(Option<Millis>),
    LastTime(Option<Millis>),
}

impl AggState {
    pub fn empty(kind: AggKind) -> AggState {
        match kind {
            AggKind::Count => AggState::Count(Buckets::default()),
            AggKind::Sum => AggState::Sum(Buckets::default()),
            AggKind::Min => AggState::Min(Buckets::default()),
            AggKind::Max => AggState::Max(Buckets::default()),
            AggKind::Avg => AggState::Avg(Buckets::default()),
            AggKind::Distinct => AggState::Distinct(Buckets::default()),
            AggKind::Top => AggState::Top(Box::default()),
            AggKind::First => AggState::First(None),
            AggKind::Last => AggState::Last(None),
            AggKind::FirstTime => AggState::FirstTime(None),
            AggKind::LastTime => AggState::LastTime(None),
        }
    }
}

fn numeric(v: Option<&Json>) -> Option<f64> {
    match v {
        Some(Json::Number(n)) => n.as_f64(),
        _ => None,
    }
}

/// Window bookkeeping for one aggregate at one engine time.
struct Span {
    window: Option<Window>,
    oldest: i64,
}

impl Span {
    fn new(agg: &Aggregate, zone: &Zone, now: Millis) -> Span {
        match agg.window {
            Some(w) => Span {
                window: Some(w),
                oldest: w.oldest_bucket(zone, now),
            },
            None => Span {
                window: None,
                oldest: i64::MIN,
            },
        }
    }

    /// The bucket an event at `ts` belongs to, or None when the window no longer covers it.
    fn bucket(&self, zone: &Zone, ts: Millis) -> Option<i64> {
        match self.window {
            None => Some(0),
            Some(w) => Some(w.bucket_of(zone, ts)).filter(|b| *b >= self.oldest),
        }
    }
}

impl AggState {
    /// Adds one matching event (its filter already passed). `property` is the event's value of
    /// the aggregate's property (None when absent).
    pub fn add(
        &mut self,
        agg: &Aggregate,
        zone: &Zone,
        now: Millis,
        ts: Millis,
        property: Option<&Json>,
    ) {
        let span = Span::new(agg, zone, now);
        let bucket = span.bucket(zone, ts);
        match self {
            AggState::Count(b) => {
                b.prune(span.oldest);
                if let Some(i) = bucket {
                    *b.slot(i) += 1;
                }
            }
            AggState::Sum(b) => {
                b.prune(span.oldest);
                if let (Some(i), Some(x)) = (bucket, numeric(property)) {
                    *b.slot(i) += x;
                }
            }
            AggState::Min(b) | AggState::Max(b) => {
                let is_min = matches!(agg.kind, AggKind::Min);
                b.prune(span.oldest);
                if let (Some(i), Some(x)) = (bucket, numeric(property)) {
                    let fresh = !b.0.iter().any(|(j, _)| *j == i);
                    let slot = b.slot(i);
                    if fresh || (is_min && x < *slot) || (!is_min && x > *slot) {
                        *slot = x;
                    }
                }
            }
            AggState::Avg(b) => {
                b.prune(span.oldest);
                if let (Some(i), Some(x)) = (bucket, numeric(property)) {
                    let slot = b.slot(i);
                    slot.0 += x;
                    slot.1 += 1;
                }
            }
            AggState::Distinct(b) => {
                b.prune(span.oldest);
                let value = property.map(Scalar::from_json).filter(|s| !s.is_null());
                if let (Some(i), Some(v)) = (bucket, value) {
                    b.slot(i).insert(v);
                }
            }
            AggState::Top(top) => {
                let value = property.map(Scalar::from_json).filter(|s| !s.is_null());
                top.add(span.oldest, bucket, value);
            }
            AggState::First(cur) => {
                if cur.as_ref().is_none_or(|(t, _)| ts < *t) {
                    *cur = Some((ts, property.map_or(Scalar::Null, Scalar::from_json)));
                }
            }
            AggState::Last(cur) => {
                if cur.as_ref().is_none_or(|(t, _)| ts >= *t) {
                    *cur = Some((ts, property.map_or(Scalar::Null, Scalar::from_json)));
                }
            }
            AggState::FirstTime(cur) => *cur = Some(cur.map_or(ts, |t| t.min(ts))),
            AggState::LastTime(cur) => *cur = Some(cur.map_or(ts, |t| t.max(ts))),
        }
    }

    /// The aggregate's value at engine time `now`.
    pub fn value(&self, agg: &Aggregate, zone: &Zone, now: Millis) -> Value {
        self.value_at(agg, &BucketsAt::new(zone, now))
    }

    /// The aggregate's value at the instant whose buckets are `at`.
    pub fn value_at(&self, agg: &Aggregate, at: &BucketsAt) -> Value {
        let oldest = agg.window.map_or(i64::MIN, |w| at.oldest(w));
        match self {
            AggState::Count(b) => Value::Num(b.live(oldest).sum::<u64>() as f64),
            AggState::Sum(b) => Value::Num(b.live(oldest).sum::<f64>()),
            AggState::Min(b) => b
                .live(oldest)
                .copied()
                .reduce(f64::min)
                .map_or(Value::Null, Value::Num),
            AggState::Max(b) => b
                .live(oldest)
                .copied()
                .reduce(f64::max)
                .map_or(Value::Null, Value::Num),
            AggState::Avg(b) => {
                let (sum, n) = b
                    .live(oldest)
                    .fold((0.0, 0u64), |(s, n), (bs, bn)| (s + bs, n + bn));
                if n == 0 {
                    Value::Null
                } else {
                    Value::Num(sum / n as f64)
                }
            }
            AggState::Distinct(b) => {
                let mut live = b.live(oldest);
                match (live.next(), b.0.len()) {
                    (None, _) => Value::Num(0.0),
                    (Some(only), 1) => Value::Num(only.len() as f64),
                    (Some(first), _) => {
                        let mut union: BTreeSet<&Scalar> = first.iter().collect();
                        for set in live {
                            union.extend(set.iter());
                        }
                        Value::Num(union.len() as f64)
                    }
                }
            }
            AggState::Top(top) => top.value(oldest, agg.k),
            AggState::First(cur) | AggState::Last(cur) => {
                cur.as_ref().map_or(Value::Null, |(_, v)| v.to_value())
            }
            AggState::FirstTime(cur) | AggState::LastTime(cur) => {
                cur.map_or(Value::Null, Value::Ts)
            }
        }
    }

    /// The instant (> now) at which the oldest non-empty bucket leaves the window, if any.
    pub fn next_drop(&self, agg: &Aggregate, zone: &Zone, now: Millis) -> Option<Millis> {
        let window = agg.window?;
        let first = self.oldest_live_bucket(window.oldest_bucket(zone, now))?;
        Some(window.drop_instant(zone, first)).filter(|t| *t > now)
    }

    /// The index of the oldest non-empty bucket at or after `oldest` (windowed kinds only).
    /// Whether no bucket from `oldest` on holds a negative sum (true for every kind but `sum`):
    /// then losing buckets can only lower a `sum`.
    pub fn live_non_negative(&self, oldest: i64) -> bool {
        match self {
            AggState::Sum(b) => b.live(oldest).all(|s| *s >= 0.0),
            _ => true,
        }
    }

    pub fn oldest_live_bucket(&self, oldest: i64) -> Option<i64> {
        match self {
            AggState::Count(b) => b.oldest_live(oldest),
            AggState::Sum(b) | AggState::Min(b) | AggState::Max(b) => b.oldest_live(oldest),
            AggState::Avg(b) => b.oldest_live(oldest),
            AggState::Distinct(b) => b.oldest_live(oldest),
            AggState::Top(top) => top.buckets.oldest_live(oldest),
            _ => None,
        }
    }
}

/// Counts per value merged over the buckets from an oldest bucket index on: (that index, counts).
type MergedCounts = (i64, Vec<(Scalar, u64)>);

/// A `top` accumulator: counts per value and bucket, plus the counts merged over the buckets
/// the window held at the last evaluation. An event adds to both; the merge is redone only when
/// the window has moved (a new bucket index for its oldest bucket), not on every evaluation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopState {
    pub buckets: Buckets<BTreeMap<Scalar, u64>>,
    /// (oldest live bucket, merged counts over the buckets from it on), for the two window
    /// positions evaluated last (today's, and the next day's a timer search looks at); never
    /// stored.
    #[serde(skip)]
    totals: std::cell::RefCell<[Option<MergedCounts>; 2]>,
}

impl PartialEq for TopState {
    fn eq(&self, other: &Self) -> bool {
        self.buckets == other.buckets
    }
}

impl TopState {
    fn value(&self, oldest: i64, k: usize) -> Value {
        let mut totals = self.totals.borrow_mut();
        let slot = match totals
            .iter()
            .position(|t| t.as_ref().is_some_and(|(o, _)| *o == oldest))
        {
            Some(i) => i,
            None => {
                // Replace the entry for the older window position (or an empty one).
                let i = match (&totals[0], &totals[1]) {
                    (None, _) => 0,
                    (_, None) => 1,
                    (Some((a, _)), Some((b, _))) => usize::from(b < a),
                };
                totals[i] = Some((oldest, merge_counts(self.buckets.live(oldest))));
                i
            }
        };
        let counts = totals[slot].as_ref().map_or(&[][..], |(_, c)| c.as_slice());
        top_of(counts.iter().map(|(v, n)| (v, *n)).collect(), k)
    }

    /// Adds `n` to `value` in bucket `bucket` (already pruned to `oldest`).
    fn add(&mut self, oldest: i64, bucket: Option<i64>, value: Option<Scalar>) {
        self.buckets.prune(oldest);
        for entry in self.totals.get_mut().iter_mut() {
            // Positions older than the window's are never evaluated again (time moves on).
            if entry.as_ref().is_some_and(|(o, _)| *o < oldest) {
                *entry = None;
            }
        }
        let (Some(i), Some(v)) = (bucket, value) else {
            return;
        };
        for (o, counts) in self.totals.get_mut().iter_mut().flatten() {
            if i >= *o {
                match counts.iter_mut().find(|(x, _)| *x == v) {
                    Some(entry) => entry.1 += 1,
                    None => counts.push((v.clone(), 1)),
                }
            }
        }
        *self.buckets.slot(i).entry(v).or_insert(0) += 1;
    }
}

/// Counts per value over several buckets. Marketing properties (categories, channels) have
/// few distinct values: merging by linear search beats sorting every (bucket, value) pair; past
/// `LINEAR_LIMIT` distinct values the merge sorts instead.
fn merge_counts<'a>(
    buckets: impl Iterator<Item = &'a BTreeMap<Scalar, u64>>,
) -> Vec<(Scalar, u64)> {
    const LINEAR_LIMIT: usize = 24;
    let mut merged: Vec<(&Scalar, u64)> = Vec::new();
    let mut spill: Vec<(&Scalar, u64)> = Vec::new();
    for bucket in buckets {
        for (v, n) in bucket {
            if !spill.is_empty() {
                spill.push((v, *n));
            } else if let Some(entry) = merged.iter_mut().find(|e| e.0 == v) {
                entry.1 += n;
            } else if merged.len() < LINEAR_LIMIT {
                merged.push((v, *n));
            } else {
                spill.append(&mut merged);
                spill.push((v, *n));
            }
        }
    }
    if !spill.is_empty() {
        spill.sort_by(|a, b| a.0.cmp(b.0));
        for (v, n) in spill {
            match merged.last_mut() {
                Some(last) if last.0.cmp(v).is_eq() => last.1 += n,
                _ => merged.push((v, n)),
            }
        }
    }
    merged.into_iter().map(|(v, n)| (v.clone(), n)).collect()
}

/// The most frequent value (ties: the value that sorts first), or with `k > 1` the list of
/// up to k values by count descending then value order; NULL when there is none.
fn top_of(mut merged: Vec<(&Scalar, u64)>, k: usize) -> Value {
    if merged.is_empty() {
        return Value::Null;
    }
    if k <= 1 {
        let mut best = merged[0];
        for entry in &merged[1..] {
            if entry.1 > best.1 || (entry.1 == best.1 && entry.0 < best.0) {
                best = *entry;
            }
        }
        return best.0.to_value();
    }
    merged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    Value::List(Arc::new(
        merged.iter().take(k).map(|(v, _)| v.to_value()).collect(),
    ))
}

impl UserState {
    pub fn new(aggregates: &[Aggregate], segments: usize) -> UserState {
        UserState {
            aggs: aggregates.iter().map(|a| AggState::empty(a.kind)).collect(),
            profile: BTreeMap::new(),
            dedup: RecentIds::default(),
            segments: vec![SegmentState::default(); segments],
            next_timer: None,
            pending: None,
            incarnation: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // One buffer, sized for a typical state: growing from empty and copying a second
        // buffer in cost more than the serialisation itself.
        let mut out = Vec::with_capacity(ENCODE_CAPACITY);
        out.push(FORMAT_VERSION);
        // Serialising plain data into a Vec cannot fail.
        let out = postcard::to_extend(&self.incarnation, out).unwrap_or_default();
        postcard::to_extend(self, out).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<UserState, String> {
        let corrupt = |e: postcard::Error| format!("corrupt user state: {e}");
        match bytes.split_first() {
            Some((&FORMAT_VERSION, rest)) => {
                let (incarnation, body) = postcard::take_from_bytes::<u64>(rest).map_err(corrupt)?;
                let mut state: UserState = postcard::from_bytes(body).map_err(corrupt)?;
                state.incarnation = incarnation;
                Ok(state)
            }
            Some((&FORMAT_VERSION_UNSTAMPED, rest)) => postcard::from_bytes(rest).map_err(corrupt),
            Some((v, _)) => Err(format!(
                "user state has format version {v}, this build reads {FORMAT_VERSION_UNSTAMPED} and {FORMAT_VERSION}"
            )),
            None => Err("empty user state".into()),
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// Every user holds one accumulator per aggregate tag: their size is the engine's memory.
    #[test]
    fn accumulators_stay_small() {
        assert!(
            std::mem::size_of::<AggState>() <= 40,
            "{}",
            std::mem::size_of::<AggState>()
        );
    }
}
