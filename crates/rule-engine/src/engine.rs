//! The per-user engine: how one event or the passing of time changes a user's state, which
//! transitions that emits, and when the user's segments can next change with time alone.
//!
//! Pure functions over ([`RuleSet`], [`UserState`], engine time). The caller owns engine time:
//! it must call [`catch_up`] (firing every timer due up to `now`) before [`apply`].

use std::cmp::Ordering;
use std::sync::Arc;

use crate::cexpr::{CExpr, EventView, Scope};
use crate::event::{Event, EventBody, Millis, ProfileOp};
use crate::rules::{InertGuard, NodeKind, Probe, ProbeInfo, RuleSet};
use crate::state::{AggState, Pending, UserState};
use crate::time::{BucketsAt, Unit, Window, DAY_MS, FAR_FUTURE, HOUR_MS};
use crate::transition::{Cause, Transition};
use crate::value::{Scalar, Value};

/// Values of every tag and segment of `rules` (indexed by node id) at engine time `now`.
pub fn evaluate(rules: &RuleSet, state: &UserState, now: Millis) -> Vec<Value> {
    let at = BucketsAt::new(&rules.zone, now);
    let mut values = Vec::with_capacity(rules.nodes.len());
    for id in 0..rules.nodes.len() {
        let v = evaluate_node(rules, state, id, &values, now, &at);
        values.push(v);
    }
    values
}

/// Values of the nodes segments depend on (others are left NULL): the event and timer path.
fn evaluate_needed(rules: &RuleSet, state: &UserState, now: Millis) -> Vec<Value> {
    let at = BucketsAt::new(&rules.zone, now);
    let mut values = Vec::with_capacity(rules.nodes.len());
    for id in 0..rules.nodes.len() {
        let v = if rules.needed[id] {
            evaluate_node(rules, state, id, &values, now, &at)
        } else {
            Value::Null
        };
        values.push(v);
    }
    values
}

/// What an event changed in a user's state, for [`evaluate_since`].
#[derive(Debug, Default)]
struct Touched {
    /// Aggregate slots that took the event (bit i = slot i); `all` past 128 aggregates.
    aggs: u128,
    all: bool,
    profile: bool,
}

impl Touched {
    fn agg(&mut self, slot: usize) {
        match 1u128.checked_shl(slot as u32) {
            Some(bit) if slot < 128 => self.aggs |= bit,
            _ => self.all = true,
        }
    }

    fn has_agg(&self, slot: usize) -> bool {
        self.all || (slot < 128 && self.aggs & (1u128 << slot) != 0)
    }
}

/// The values of [`evaluate_needed`] at `now`, computed from the values `before` held at an
/// earlier instant of the same state, changed only by what `touched` names: a node is
/// evaluated again only when it reads `now()` (for a node constant between breakpoints: only
/// once `before`'s quiet bound has passed), an aggregate it reads took the event or lost a
/// bucket to the window, or a node it reads changed value. Equal to a full evaluation by
/// construction: every input of a skipped node is unchanged.
fn evaluate_since(
    rules: &RuleSet,
    state: &UserState,
    now: Millis,
    before: Pending,
    touched: &Touched,
) -> Vec<Value> {
    let at = BucketsAt::new(&rules.zone, now);
    let then = BucketsAt::new(&rules.zone, before.since);
    // Before the quiet bound no probe changed outcome: a node whose value time moves only
    // through its decisions (constant between breakpoints) is as it was, unless a node it
    // reads changed.
    let no_decision_moved = before.quiet_until.is_some_and(|quiet| now < quiet);
    let mut values = before.values;
    let mut changed = vec![false; rules.nodes.len()];
    for id in 0..rules.nodes.len() {
        if !rules.needed[id] {
            continue;
        }
        let dirty = match &rules.nodes[id].kind {
            NodeKind::Aggregate(slot) => {
                touched.has_agg(*slot)
                    || rules.aggregates[*slot].window.is_some_and(|w| {
                        lost_a_bucket(&state.aggs[*slot], then.oldest(w), at.oldest(w))
                    })
            }
            NodeKind::Profile(_) => touched.profile,
            _ => {
                let time_moved_it =
                    rules.reads_now[id] && !(no_decision_moved && rules.nodes[id].shape.is_const());
                time_moved_it || rules.node_deps[id].iter().any(|&d| changed[d])
            }
        };
        if dirty {
            let v = evaluate_node(rules, state, id, &values, now, &at);
            if v != values[id] {
                values[id] = v;
                changed[id] = true;
            }
        }
    }
    values
}

/// Whether an aggregate the window moved over (its oldest bucket from `before` to `after`) lost
/// a bucket: its value is a function of its buckets from the oldest one on, so when every
/// bucket it held at `before` is still in the window, the value is unchanged.
fn lost_a_bucket(agg: &AggState, before: i64, after: i64) -> bool {
    if after <= before {
        return after != before;
    }
    agg.oldest_live_bucket(before)
        .is_some_and(|first| first < after)
}

pub(crate) fn evaluate_node(
    rules: &RuleSet,
    state: &UserState,
    id: usize,
    values: &[Value],
    now: Millis,
    at: &BucketsAt,
) -> Value {
    let scope = Scope {
        values,
        now,
        zone: &rules.zone,
        event: None,
    };
    match &rules.nodes[id].kind {
        NodeKind::Aggregate(slot) => match state.aggs.get(*slot) {
            Some(agg) => agg.value_at(&rules.aggregates[*slot], at),
            None => Value::Null,
        },
        NodeKind::Profile(attr) => state
            .profile
            .get(&**attr)
            .map_or(Value::Null, |(_, v)| v.to_value()),
        NodeKind::Expr(e) => e.eval(&scope),
        NodeKind::Case { cases, otherwise } => {
            for (when, value) in cases {
                if *when.operand(&scope) == Value::Bool(true) {
                    return value.eval(&scope);
                }
            }
            otherwise.eval(&scope)
        }
        NodeKind::Tier { of, tiers } => match *of.operand(&scope) {
            Value::Num(x) => tiers
                .iter()
                .rev()
                .find(|(min, _)| *min <= x)
                .map_or(Value::Null, |(_, label)| Value::Str(label.clone())),
            _ => Value::Null,
        },
        NodeKind::Nearest {
            features,
            centroids,
        } => {
            let mut point = Vec::with_capacity(features.len());
            for f in features {
                match values[*f] {
                    Value::Num(x) => point.push(x),
                    _ => return Value::Null,
                }
            }
            let mut best: Option<(f64, &Arc<str>)> = None;
            for (name, centre) in centroids {
                let d: f64 = point
                    .iter()
                    .zip(centre)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                if best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, name));
                }
            }
            best.map_or(Value::Null, |(_, n)| Value::Str(n.clone()))
        }
        NodeKind::Segment(e) => Value::Bool(*e.operand(&scope) == Value::Bool(true)),
    }
}

/// Recomputes, in `scratch`, the nodes that move continuously with time at instant `t`. Every
/// other entry of `scratch` keeps its value at the start of the interval (valid while no
/// breakpoint lies between that instant and `t`).
fn moved(rules: &RuleSet, state: &UserState, moving: &[usize], scratch: &mut [Value], t: Millis) {
    if moving.is_empty() {
        return;
    }
    let at = BucketsAt::new(&rules.zone, t);
    for &id in moving {
        scratch[id] = evaluate_node(rules, state, id, scratch, t, &at);
    }
}

/// One component of a probe's signature at an instant (see [`Probe`]).
fn signature_parts<'a>(
    rules: &'a RuleSet,
    probe: &'a Probe,
    values: &'a [Value],
    t: Millis,
) -> impl Iterator<Item = i64> + 'a {
    let scope = Scope {
        values,
        now: t,
        zone: &rules.zone,
        event: None,
    };
    let (pairs, bucket): (&[(CExpr, CExpr)], _) = match probe {
        Probe::Compare(pairs) | Probe::Changing(pairs) => (pairs, None),
        Probe::LocalBucket { arg, unit } => (&[], Some((arg, *unit))),
    };
    let compared =
        pairs.iter().map(
            move |(a, b)| match a.operand(&scope).compare(&b.operand(&scope)) {
                Some(Ordering::Less) => -1,
                Some(Ordering::Equal) => 0,
                Some(Ordering::Greater) => 1,
                None => 2,
            },
        );
    let local = bucket.map(move |(arg, unit)| match arg.eval(&scope) {
        Value::Ts(x) => match unit {
            Unit::Day => rules.zone.local_day(x),
            _ => rules.zone.sub_day_bucket(x, HOUR_MS),
        },
        _ => i64::MIN,
    });
    compared.chain(local)
}

/// A probe's signature at `t`, written into `out` (reused between calls: no allocation).
fn signature(rules: &RuleSet, probe: &Probe, values: &[Value], t: Millis, out: &mut Vec<i64>) {
    out.clear();
    out.extend(signature_parts(rules, probe, values, t));
}

/// Whether a probe's signature at `t` differs from `initial`.
fn signature_differs(
    rules: &RuleSet,
    probe: &Probe,
    values: &[Value],
    t: Millis,
    initial: &[i64],
) -> bool {
    !signature_parts(rules, probe, values, t).eq(initial.iter().copied())
}

/// The first instant after `now` at which any segment of this user may change with no new
/// event, or None if it never will. `values` are the node values at `now`.
///
/// Candidates are the instants at which a windowed aggregate loses its oldest non-empty bucket,
/// and the first instants at which time-dependent decisions (probes) change. Probes are visited
/// in evaluation order, shrinking the horizon as they go: up to the first change of any earlier
/// probe, the values a probe compares are monotone in time, so bisection finds its first change
/// exactly. The result may be a spurious wake-up (nothing changes) but never late.
fn next_candidate(
    rules: &RuleSet,
    state: &UserState,
    values: &[Value],
    now: Millis,
    bound: Millis,
) -> Option<Millis> {
    let mut horizon = bound.min(next_window_drop(rules, state, values, now).unwrap_or(FAR_FUTURE));
    if rules.probes.is_empty() {
        return (horizon < bound).then_some(horizon);
    }
    // Only probes over moving nodes need the values recomputed at other instants; the others
    // read `values` as they are (no copy).
    let mut scratch: Vec<Value> = if rules.probes.iter().any(|p| !p.moving.is_empty()) {
        values.to_vec()
    } else {
        Vec::new()
    };
    let changed = |scratch: &mut Vec<Value>, info: &ProbeInfo, initial: &[i64], at: Millis| {
        if info.moving.is_empty() {
            return signature_differs(rules, &info.probe, values, at, initial);
        }
        moved(rules, state, &info.moving, scratch, at);
        signature_differs(rules, &info.probe, scratch, at, initial)
    };
    let mut initial = Vec::new();
    for info in &rules.probes {
        if horizon - 1 <= now {
            break;
        }
        if probe_inert(info, values) {
            continue;
        }
        let last = horizon - 1;
        // A closed form that rules out a change before the horizon needs no signature.
        let flip = linear_flip(rules, info, values, now);
        match flip {
            Flip::Never => continue,
            Flip::At(t) if t > last => continue,
            _ => {}
        }
        signature(rules, &info.probe, values, now, &mut initial);
        let initial = initial.as_slice();
        if info.is_changing() {
            let to = last.min(now.saturating_add(CHANGING_LOOKAHEAD_MS));
            let search = ChangeSearch {
                rules,
                state,
                values,
                info,
                initial,
            };
            match search.first_change(&mut scratch, now, now + 1, to) {
                Some(t) => horizon = t,
                // Nothing changes up to the look-ahead: wake up there and look again.
                None if to < last => horizon = to + 1,
                None => {}
            }
            continue;
        }
        match flip {
            Flip::Never => continue,
            Flip::At(t) if t > last => continue,
            Flip::At(t) => {
                if !changed(&mut scratch, info, initial, t - 1)
                    && changed(&mut scratch, info, initial, t)
                {
                    horizon = t;
                    continue;
                }
            }
            Flip::Unknown => {}
        }
        if let Some(arg) = &info.day_steps {
            // Only `days_since(x)` moves: the outcome can change only at x + k days.
            let scope = Scope {
                values,
                now,
                zone: &rules.zone,
                event: None,
            };
            let Value::Ts(x) = arg.eval(&scope) else {
                continue;
            };
            let at = |k: i64| x.saturating_add(k.saturating_mul(DAY_MS));
            let first = (now - x).div_euclid(DAY_MS) + 1;
            let final_step = (last - x).div_euclid(DAY_MS);
            if first > final_step || !changed(&mut scratch, info, initial, at(final_step)) {
                continue;
            }
            let (mut lo, mut hi) = (first - 1, final_step);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if changed(&mut scratch, info, initial, at(mid)) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            horizon = at(hi);
            continue;
        }
        // The change predicate is monotone up to `horizon`, so a guess that checks out on both
        // sides is exact.
        if let Some(t) = linear_guess(rules, state, values, &mut scratch, info, now, last) {
            if !changed(&mut scratch, info, initial, t - 1)
                && changed(&mut scratch, info, initial, t)
            {
                horizon = t;
                continue;
            }
        }
        if !changed(&mut scratch, info, initial, last) {
            continue;
        }
        // Invariant: signature(lo) == initial, signature(hi) != initial.
        let (mut lo, mut hi) = (now, last);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if changed(&mut scratch, info, initial, mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        horizon = hi;
    }
    (horizon < bound).then_some(horizon)
}

/// The first instant after `now` at which a windowed aggregate that segments read loses its
/// oldest non-empty bucket, skipping the aggregates whose guard says no segment can change
/// while they only fall (`values` are the node values at `now`). Worked out in bucket indexes,
/// converted to an instant once per unit.
fn next_window_drop(
    rules: &RuleSet,
    state: &UserState,
    values: &[Value],
    now: Millis,
) -> Option<Millis> {
    let at = BucketsAt::new(&rules.zone, now);
    let mut first_drop: [Option<i64>; 3] = [None; 3];
    let unit_index = |u: Unit| match u {
        Unit::Minute => 0,
        Unit::Hour => 1,
        Unit::Day => 2,
    };
    for windowed in &rules.windowed_for_segments {
        let slot = windowed.slot;
        let Some(window) = rules.aggregates[slot].window else {
            continue;
        };
        if let Some(guard) = &windowed.inert {
            if holds(guard, values)
                && (!guard.needs_non_negative
                    || state.aggs[slot].live_non_negative(at.oldest(window)))
            {
                continue;
            }
        }
        if let Some(first) = state.aggs[slot].oldest_live_bucket(at.oldest(window)) {
            // Bucket `first` leaves the window when bucket `first + N` starts.
            let idx = first + window.buckets;
            let entry = &mut first_drop[unit_index(window.unit)];
            *entry = Some(entry.map_or(idx, |e: i64| e.min(idx)));
        }
    }
    [Unit::Minute, Unit::Hour, Unit::Day]
        .into_iter()
        .zip(first_drop)
        .filter_map(|(unit, idx)| {
            let start = Window { unit, buckets: 1 }.bucket_start(&rules.zone, idx?);
            (start > now).then_some(start)
        })
        .min()
}

/// Whether every segment an [`InertGuard`] names has the value it lists (`values` at the
/// instant the search starts from).
fn holds(guard: &InertGuard, values: &[Value]) -> bool {
    guard
        .while_segments
        .iter()
        .all(|&(node, value)| values[node] == Value::Bool(value))
}

/// Whether a probe's changes can be skipped: its guard holds.
fn probe_inert(info: &ProbeInfo, values: &[Value]) -> bool {
    info.inert.as_ref().is_some_and(|g| holds(g, values))
}

/// When a probe's outcome next changes, from its closed form (see [`ProbeInfo::linear`]).
enum Flip {
    /// The first instant after `now` at which the comparison's outcome differs (to be
    /// verified: arithmetic at the edges of time saturates).
    At(Millis),
    /// The outcome never changes (the sides move apart, or one is NULL for good).
    Never,
    /// No closed form for this probe or these values: search.
    Unknown,
}

fn linear_flip(rules: &RuleSet, info: &ProbeInfo, values: &[Value], now: Millis) -> Flip {
    let (Some(k), Probe::Compare(pairs)) = (info.linear, &info.probe) else {
        return Flip::Unknown;
    };
    let [(a, b)] = pairs.as_slice() else {
        return Flip::Unknown;
    };
    let scope = Scope {
        values,
        now,
        zone: &rules.zone,
        event: None,
    };
    let millis = |v: Value| match v {
        Value::Ts(x) | Value::Dur(x) => Ok(Some(i128::from(x))),
        Value::Null => Ok(None),
        _ => Err(()),
    };
    let (Ok(a), Ok(b)) = (millis(a.eval(&scope)), millis(b.eval(&scope))) else {
        return Flip::Unknown;
    };
    let (Some(a), Some(b)) = (a, b) else {
        // NULL stays NULL: the sides read no moving node and only add now() to them.
        return Flip::Never;
    };
    // a - b at t is d0 + k·(t - now): it leaves its sign class at the first whole millisecond.
    let (d0, k) = (a - b, i128::from(k));
    let ahead = if d0 == 0 {
        1
    } else if (d0 < 0) == (k > 0) {
        let (num, den) = (d0.abs(), k.abs());
        // `now()` mostly appears once (k = ±1): no 128-bit division.
        if den == 1 {
            num
        } else {
            (num + den - 1) / den
        }
    } else {
        return Flip::Never;
    };
    match Millis::try_from(i128::from(now) + ahead) {
        Ok(t) if t <= FAR_FUTURE => Flip::At(t),
        _ => Flip::Never,
    }
}

/// How far ahead a search for the change of a [`Probe::Changing`] looks; with no change within
/// it, a wake-up at its end searches again.
const CHANGING_LOOKAHEAD_MS: Millis = 400 * DAY_MS;

/// Enclosure evaluations one search may spend before settling for a (spurious, never late)
/// wake-up at the first instant it has not cleared.
const CHANGING_BUDGET: usize = 2_000;

/// Spans this short are checked instant by instant rather than enclosed.
const POINTWISE_SPAN: Millis = 4;

/// Finds the first change of a probe whose outcome can move back and forth (SPEC §4 rev 2):
/// every earlier probe is constant up to the horizon, so each moving node is a function of
/// `now()` alone there, and [`crate::enclose`] bounds what it can be over a span.
struct ChangeSearch<'a> {
    rules: &'a RuleSet,
    state: &'a UserState,
    values: &'a [Value],
    info: &'a ProbeInfo,
    initial: &'a [i64],
}

/// The instants `x + k days`, `k` in `first..=last`, at which alone a probe whose time
/// dependence goes through `days_since(x)` can change.
#[derive(Clone, Copy)]
struct DaySteps {
    x: Millis,
    first: i64,
    last: i64,
}

impl DaySteps {
    fn at(self, k: i64) -> Millis {
        self.x.saturating_add(k.saturating_mul(DAY_MS))
    }
}

impl ChangeSearch<'_> {
    /// The day steps after `now` up to `to`, when the probe has them (None: search time).
    fn day_steps(&self, now: Millis, to: Millis) -> Option<DaySteps> {
        let arg = self.info.day_steps.as_ref()?;
        let scope = Scope {
            values: self.values,
            now,
            zone: &self.rules.zone,
            event: None,
        };
        let Value::Ts(x) = arg.eval(&scope) else {
            return None;
        };
        let first = now.checked_sub(x)?.div_euclid(DAY_MS) + 1;
        let last = to.checked_sub(x)?.div_euclid(DAY_MS);
        Some(DaySteps { x, first, last })
    }

    /// [`ChangeSearch::first_change`] over whole day steps: the outcome is constant between two
    /// steps, so ranges of steps are enclosed and split, and single steps evaluated.
    fn first_step_change(&self, scratch: &mut [Value], steps: DaySteps) -> Option<Millis> {
        let mut stack = vec![(steps.first, steps.last)];
        let mut budget = CHANGING_BUDGET;
        while let Some((lo, hi)) = stack.pop() {
            if lo > hi {
                continue;
            }
            if lo == hi {
                if self.differs_at(scratch, steps.at(lo)) {
                    return Some(steps.at(lo));
                }
                continue;
            }
            if budget == 0 {
                return Some(steps.at(lo));
            }
            budget -= 1;
            if !self.may_change(steps.at(lo), steps.at(hi)) {
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            stack.push((mid + 1, hi));
            stack.push((lo, mid));
        }
        None
    }

    /// Whether the outcome can differ from `initial` somewhere in `[lo, hi]`.
    fn may_change(&self, lo: Millis, hi: Millis) -> bool {
        let Probe::Changing(pairs) = &self.info.probe else {
            return true;
        };
        let span = crate::enclose::Span::new(self.rules, self.values, &self.info.moving, lo, hi);
        pairs.iter().zip(self.initial).any(|((a, b), &code)| {
            let codes = if a == b {
                crate::enclose::self_compare_codes(&span.expr(a))
            } else {
                crate::enclose::compare_codes(&span.expr(a), &span.expr(b))
            };
            !codes.is_only(code)
        })
    }

    fn differs_at(&self, scratch: &mut [Value], t: Millis) -> bool {
        if self.info.moving.is_empty() {
            return signature_differs(self.rules, &self.info.probe, self.values, t, self.initial);
        }
        moved(self.rules, self.state, &self.info.moving, scratch, t);
        signature_differs(self.rules, &self.info.probe, scratch, t, self.initial)
    }

    /// The first instant in `[from, to]` at which the outcome differs from `initial`: spans are
    /// split, earliest first, until an enclosure shows no change or the span is a few
    /// milliseconds, evaluated exactly. Out of budget, the first span not cleared is returned:
    /// nothing changes before it, so waking up there is early at worst.
    fn first_change(
        &self,
        scratch: &mut [Value],
        now: Millis,
        from: Millis,
        to: Millis,
    ) -> Option<Millis> {
        if let Some(steps) = self.day_steps(now, to) {
            return self.first_step_change(scratch, steps);
        }
        let mut stack = vec![(from, to)];
        let mut budget = CHANGING_BUDGET;
        while let Some((lo, hi)) = stack.pop() {
            if lo > hi {
                continue;
            }
            if hi - lo < POINTWISE_SPAN {
                if let Some(t) = (lo..=hi).find(|&t| self.differs_at(scratch, t)) {
                    return Some(t);
                }
                continue;
            }
            if budget == 0 {
                return Some(lo);
            }
            budget -= 1;
            if !self.may_change(lo, hi) {
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            stack.push((mid + 1, hi));
            stack.push((lo, mid));
        }
        None
    }
}

/// A lower bound on the first instant after `since` at which any segment may change with no
/// new event, cheap to compute: the first instant a windowed aggregate loses a non-empty
/// bucket (`state` is the user's state at `since`: no event came since), and the closed-form
/// change of every probe. Probes without a closed form give no bound (`since + 1`).
fn quiet_until(rules: &RuleSet, state: &UserState, values: &[Value], since: Millis) -> Millis {
    let mut quiet = next_window_drop(rules, state, values, since).unwrap_or(FAR_FUTURE);
    for info in rules.probes.iter().filter(|p| !probe_inert(p, values)) {
        match linear_flip(rules, info, values, since) {
            Flip::Never => {}
            Flip::At(t) => quiet = quiet.min(t),
            Flip::Unknown => return since.saturating_add(1),
        }
    }
    quiet
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Num(x) => Some(*x),
        Value::Ts(t) | Value::Dur(t) => Some(*t as f64),
        _ => None,
    }
}

/// For a single comparison whose sides differ linearly in time (`x > now() - 7d`, `now() - x
/// BETWEEN ..`), the instant the comparison flips, from two evaluations. Only a guess: the
/// caller verifies it, and falls back to bisection (step functions such as `days_since`).
fn linear_guess(
    rules: &RuleSet,
    state: &UserState,
    values: &[Value],
    scratch: &mut [Value],
    info: &ProbeInfo,
    now: Millis,
    last: Millis,
) -> Option<Millis> {
    let Probe::Compare(pairs) = &info.probe else {
        return None;
    };
    let [(a, b)] = pairs.as_slice() else {
        return None;
    };
    let diff = |vals: &[Value], t: Millis| {
        let scope = Scope {
            values: vals,
            now: t,
            zone: &rules.zone,
            event: None,
        };
        Some(as_number(&a.eval(&scope))? - as_number(&b.eval(&scope))?)
    };
    let d0 = diff(values, now)?;
    let step = (last - now).min(crate::time::DAY_MS);
    moved(rules, state, &info.moving, scratch, now + step);
    let later: &[Value] = if info.moving.is_empty() {
        values
    } else {
        scratch
    };
    let slope = (diff(later, now + step)? - d0) / step as f64;
    let ahead = if d0 == 0.0 {
        1.0
    } else if (d0 < 0.0) == (slope > 0.0) && slope != 0.0 {
        (-d0 / slope).ceil().max(1.0)
    } else {
        return None;
    };
    let t = now as f64 + ahead;
    (t <= last as f64).then_some(t as Millis)
}

/// How many candidate instants a timer firing examines before settling for the next wake-up.
/// (After an event no look-ahead is done: the user's next event usually comes first.)
const TIMER_LOOKAHEAD: usize = 8;

/// The first instant after `now` at which any segment of this user changes with no new event,
/// or None if none ever will. `values` are the node values at `now`.
///
/// Candidates come from [`next_candidate`]; between two consecutive candidates nothing changes,
/// so evaluating the segments at each candidate in turn finds the first real change. Looking
/// ahead skips the many instants at which a window rolls without changing any membership; after
/// `lookahead` candidates the last one is returned as a wake-up (exact either way: a wake-up
/// that changes nothing just schedules the next one).
pub fn next_change(
    rules: &RuleSet,
    state: &UserState,
    values: &[Value],
    now: Millis,
    lookahead: usize,
    bound: Millis,
) -> Option<Millis> {
    let start: Vec<bool> = rules
        .segments
        .iter()
        .map(|s| values[s.node] == Value::Bool(true))
        .collect();
    let differs = |vals: &[Value]| {
        rules
            .segments
            .iter()
            .zip(&start)
            .any(|(s, &member)| (vals[s.node] == Value::Bool(true)) != member)
    };
    let mut t = next_candidate(rules, state, values, now, bound)?;
    if lookahead <= 1 {
        return Some(t);
    }
    let mut at = Pending::new(now, values.to_vec());
    for _ in 1..lookahead {
        at = Pending::new(t, evaluate_since(rules, state, t, at, &Touched::default()));
        if differs(&at.values) {
            return Some(t);
        }
        t = next_candidate(rules, state, &at.values, t, bound)?;
    }
    Some(t)
}

/// Compares segment values with stored membership and records transitions.
pub(crate) fn transitions(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &mut UserState,
    values: &[Value],
    now: Millis,
    cause: Cause,
    out: &mut Vec<Transition>,
) {
    for (i, seg) in rules.segments.iter().enumerate() {
        let member = values[seg.node] == Value::Bool(true);
        let st = &mut state.segments[i];
        if st.member != member {
            st.member = member;
            st.seq += 1;
            out.push(Transition {
                user_id: user.clone(),
                segment: seg.name.clone(),
                enter: member,
                seq: st.seq,
                ts: now,
                cause,
                tags: seg
                    .direct_tags
                    .iter()
                    .map(|&t| (rules.nodes[t].name.clone(), values[t].clone()))
                    .collect(),
                incarnation: state.incarnation,
            });
        }
    }
}

/// Fires every timer of this user due at or before `now`, each at its own instant.
pub fn catch_up(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &mut UserState,
    now: Millis,
    out: &mut Vec<Transition>,
) -> usize {
    let mut fired = 0;
    // After an event the timer is left pending: only the interval since then is searched.
    while let Some(mut p) = state.pending.take() {
        // Most events of a user come minutes apart, long before any window rolls or any
        // `now()` comparison flips: a cheap bound proves nothing can have changed.
        let quiet = *p
            .quiet_until
            .get_or_insert_with(|| quiet_until(rules, state, &p.values, p.since));
        if now < quiet {
            state.pending = Some(p);
            return fired;
        }
        let Some(due) = next_change(
            rules,
            state,
            &p.values,
            p.since,
            TIMER_LOOKAHEAD,
            now.saturating_add(1),
        ) else {
            state.pending = Some(p);
            return fired;
        };
        fired += 1;
        let values = evaluate_since(rules, state, due, p, &Touched::default());
        transitions(rules, user, state, &values, due, Cause::Timer, out);
        state.pending = Some(Pending::new(due, values));
    }
    while let Some(due) = state.next_timer.filter(|t| *t <= now) {
        fired += 1;
        let values = evaluate_needed(rules, state, due);
        transitions(rules, user, state, &values, due, Cause::Timer, out);
        state.next_timer = next_change(rules, state, &values, due, TIMER_LOOKAHEAD, FAR_FUTURE);
    }
    fired
}

/// Marks the state as changed at `now` (with the node `values` at `now`) and computes its
/// next timer from there.
pub(crate) fn settle_after_change(
    rules: &RuleSet,
    state: &mut UserState,
    now: Millis,
    values: Vec<Value>,
) {
    state.next_timer = None;
    state.pending = Some(Pending::new(now, values));
    settle(rules, state);
}

/// Computes a pending timer (see [`UserState::pending`]); call before storing a state.
pub fn settle(rules: &RuleSet, state: &mut UserState) {
    if let Some(p) = state.pending.take() {
        state.next_timer = next_change(rules, state, &p.values, p.since, 1, FAR_FUTURE);
    }
}

fn id_hash(id: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `event` repeats an event id already applied to this user within the dedup window,
/// judged at the engine time `now` the event would be applied at.
pub fn is_duplicate(
    rules: &RuleSet,
    state: Option<&UserState>,
    event: &Event,
    now: Millis,
) -> bool {
    let (Some(state), Some(id)) = (state, event.event_id.as_deref()) else {
        return false;
    };
    if rules.dedup_window_ms <= 0 {
        return false;
    }
    let h = id_hash(id);
    let horizon = now.saturating_sub(rules.dedup_window_ms);
    state.dedup.iter().any(|&(x, ts)| x == h && ts >= horizon)
}

/// Applies a track or profile event at engine time `now` (timers must already be caught up) and
/// records the transitions it causes. Returns the user's state afterwards.
pub fn apply(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &mut UserState,
    event: &Event,
    now: Millis,
    out: &mut Vec<Transition>,
) {
    if let (Some(id), true) = (event.event_id.as_deref(), rules.dedup_window_ms > 0) {
        let horizon = now.saturating_sub(rules.dedup_window_ms);
        state.dedup.retain(|&(_, ts)| ts >= horizon);
        state.dedup.push((id_hash(id), event.ts));
    }
    // Values before the event (at the last instant they were computed, within this batch):
    // only what the event or the passing of time can have changed is evaluated again.
    let before = state.pending.take();
    let mut touched = Touched {
        profile: matches!(event.body, EventBody::Profile { .. }),
        ..Touched::default()
    };
    match &event.body {
        EventBody::Track { name, properties } => {
            let view = EventView { name, properties };
            for slot in rules.aggregates_for(name) {
                let agg = &rules.aggregates[slot];
                if let Some(filter) = &agg.filter {
                    let scope = Scope {
                        values: &[],
                        now,
                        zone: &rules.zone,
                        event: Some(view),
                    };
                    if filter.eval(&scope) != Value::Bool(true) {
                        continue;
                    }
                }
                // An event the filter drops leaves the accumulator as it was.
                touched.agg(slot);
                let property = agg.property.as_ref().and_then(|p| properties.get(&**p));
                state.aggs[slot].add(agg, &rules.zone, now, event.ts, property);
            }
        }
        EventBody::Profile { op, properties } => {
            for (key, value) in properties {
                let current = state.profile.get(key);
                let write = match op {
                    // Only where there is no value yet; an explicit null recorded later in event
                    // time still wins over it, as for any profile value.
                    ProfileOp::SetOnce => {
                        current.is_none_or(|(t, v)| v.is_null() && event.ts >= *t)
                    }
                    // An increment or append computes its result from the current value, and
                    // that result competes by event time like any value: a late one (older than
                    // the current value) loses and changes nothing.
                    ProfileOp::Set
                    | ProfileOp::Unset
                    | ProfileOp::Increment
                    | ProfileOp::Append => current.is_none_or(|(t, _)| event.ts >= *t),
                };
                if write {
                    let value: Scalar = op.value(current.map(|(_, v)| v), value);
                    state.profile.insert(key.clone(), (event.ts, value));
                }
            }
        }
        EventBody::Delete => {}
    }
    let values = match before {
        Some(p) => evaluate_since(rules, state, now, p, &touched),
        None => evaluate_needed(rules, state, now),
    };
    transitions(rules, user, state, &values, now, Cause::Event, out);
    state.next_timer = None;
    state.pending = Some(Pending::new(now, values));
}

/// Erases a user at engine time `now`: exits for every segment it is in, with cause `delete`.
pub fn delete(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &UserState,
    now: Millis,
    out: &mut Vec<Transition>,
) {
    let all: Vec<usize> = (0..rules.segments.len()).collect();
    exit_segments(rules, user, state, &all, now, Cause::Delete, out);
}

/// Exits from those of `segments` (indices into `rules.segments`) the user is a member of, as
/// one last transition of each sequence (a delete, a segment removed by a rules reload).
pub(crate) fn exit_segments(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &UserState,
    segments: &[usize],
    now: Millis,
    cause: Cause,
    out: &mut Vec<Transition>,
) {
    if !segments.iter().any(|&i| state.segments[i].member) {
        return;
    }
    let values = evaluate(rules, state, now);
    for &i in segments {
        let (seg, st) = (&rules.segments[i], state.segments[i]);
        if st.member {
            out.push(Transition {
                user_id: user.clone(),
                segment: seg.name.clone(),
                enter: false,
                seq: st.seq + 1,
                ts: now,
                cause,
                tags: seg
                    .direct_tags
                    .iter()
                    .map(|&t| (rules.nodes[t].name.clone(), values[t].clone()))
                    .collect(),
                incarnation: state.incarnation,
            });
        }
    }
}

/// One line of the state dump (SPEC §5): every defined tag and the sorted segments, at `now`.
pub fn dump_line(rules: &RuleSet, user: &str, state: &UserState, now: Millis) -> serde_json::Value {
    let values = evaluate(rules, state, now);
    let tags: serde_json::Map<String, serde_json::Value> = rules
        .tags
        .iter()
        .map(|&id| (rules.nodes[id].name.to_string(), values[id].to_json()))
        .collect();
    let mut segments: Vec<&str> = rules
        .segments
        .iter()
        .filter(|s| values[s.node] == Value::Bool(true))
        .map(|s| &*s.name)
        .collect();
    segments.sort_unstable();
    serde_json::json!({ "user_id": user, "tags": tags, "segments": segments })
}
