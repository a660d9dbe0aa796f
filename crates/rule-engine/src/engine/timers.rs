//! When a user's segments can next change with no new event: candidate instants (lost
//! buckets, probe flips), the cheap bound that rules most searches out, and the search itself.

use std::cmp::Ordering;

use super::evaluate::{evaluate_since, moved, Touched};
use crate::cexpr::{CExpr, Scope};
use crate::event::Millis;
use crate::rules::{InertGuard, Probe, ProbeInfo, RuleSet};
use crate::state::{Pending, UserState};
use crate::time::{BucketsAt, Unit, Window, DAY_MS, FAR_FUTURE, HOUR_MS};
use crate::value::Value;

/// Where expressions of `rules` are evaluated at instant `t` with node values `values`.
fn scope_at<'a>(rules: &'a RuleSet, values: &'a [Value], t: Millis) -> Scope<'a> {
    Scope {
        values,
        now: t,
        zone: &rules.zone,
        event: None,
    }
}

/// One component of a probe's signature at an instant (see [`Probe`]).
fn signature_parts<'a>(
    rules: &'a RuleSet,
    probe: &'a Probe,
    values: &'a [Value],
    t: Millis,
) -> impl Iterator<Item = i64> + 'a {
    let scope = scope_at(rules, values, t);
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
    // read `values` as they are. The copy is made for the first such probe not ruled out by
    // its closed form (most searches make none).
    let mut scratch: Vec<Value> = Vec::new();
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
            // Nor does a next day step past it, for a probe that moves only with those.
            Flip::Unknown
                if !info.step_args.is_empty() && next_day_step(rules, info, values, now) > last =>
            {
                continue
            }
            _ => {}
        }
        if !info.moving.is_empty() && scratch.is_empty() {
            scratch.extend_from_slice(values);
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
            let scope = scope_at(rules, values, now);
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
        // Moving only with `days_since` of several timestamps, the outcome still changes only
        // at a day step of one of them: no closed-form guess, and the bisection below stops
        // once a single step is left in its interval.
        let steps = StepInstants::of(rules, info, values, now);
        // The change predicate is monotone up to `horizon`, so a guess that checks out on both
        // sides is exact.
        if let (None, Some(t)) = (
            &steps,
            linear_guess(rules, state, values, &mut scratch, info, now, last),
        ) {
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
            if let Some(t) = steps.as_ref().and_then(|s| s.only_one_in(lo, hi)) {
                hi = t;
                break;
            }
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

/// The day steps `x + k days` of the `days_since` arguments of a probe that moves only with
/// those (see [`ProbeInfo::step_args`]); its outcome is constant between two of them.
struct StepInstants {
    xs: Vec<Millis>,
}

impl StepInstants {
    /// None when the probe has other time dependence.
    fn of(rules: &RuleSet, info: &ProbeInfo, values: &[Value], now: Millis) -> Option<Self> {
        if info.step_args.is_empty() {
            return None;
        }
        let xs = step_origins(rules, info, values, now).collect();
        Some(StepInstants { xs })
    }

    /// The step in `(lo, hi]` when there is exactly one (steps of different arguments at the
    /// same instant are one).
    fn only_one_in(&self, lo: Millis, hi: Millis) -> Option<Millis> {
        let mut only: Option<Millis> = None;
        for &x in &self.xs {
            let first = first_step_after(x, lo);
            if first > hi {
                continue;
            }
            if first.saturating_add(DAY_MS) <= hi || only.is_some_and(|t| t != first) {
                return None;
            }
            only = Some(first);
        }
        only
    }
}

/// The first instant `x + k days` (k an integer) after `t`, or [`FAR_FUTURE`] past it.
fn first_step_after(x: Millis, t: Millis) -> Millis {
    // In 128 bits: the step after `t` is later than it, and past the far future it bounds
    // nothing.
    let (x, t, day) = (i128::from(x), i128::from(t), i128::from(DAY_MS));
    let step = x + ((t - x).div_euclid(day) + 1) * day;
    Millis::try_from(step).map_or(FAR_FUTURE, |s| s.min(FAR_FUTURE))
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
    let scope = scope_at(rules, values, now);
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
        let scope = scope_at(self.rules, self.values, now);
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
/// bucket (`state` is the user's state at `since`: no event came since), the closed-form
/// change of every probe, and for a probe that moves only with `days_since`, the next day step
/// of its arguments. Probes with none of these give no bound (`since + 1`). Lost
/// buckets and probes whose [`InertGuard`] holds are left out: before the bound, no other
/// probe has changed outcome (`evaluate_since` relies on this).
pub(super) fn quiet_until(
    rules: &RuleSet,
    state: &UserState,
    values: &[Value],
    since: Millis,
) -> Millis {
    let mut quiet = next_window_drop(rules, state, values, since).unwrap_or(FAR_FUTURE);
    for info in rules.probes.iter().filter(|p| !probe_inert(p, values)) {
        match linear_flip(rules, info, values, since) {
            Flip::Never => {}
            Flip::At(t) => quiet = quiet.min(t),
            Flip::Unknown if !info.step_args.is_empty() => {
                quiet = quiet.min(next_day_step(rules, info, values, since));
            }
            Flip::Unknown => return since.saturating_add(1),
        }
    }
    quiet
}

/// The first instant after `since` at which a `days_since(x)` the probe depends on moves to
/// its next day (`x + k days`); its outcome is the same until then. An `x` that is not a
/// timestamp (NULL) keeps `days_since(x)` NULL for good.
fn next_day_step(rules: &RuleSet, info: &ProbeInfo, values: &[Value], since: Millis) -> Millis {
    step_origins(rules, info, values, since)
        .map(|x| first_step_after(x, since))
        .min()
        .unwrap_or(FAR_FUTURE)
}

/// The timestamps `x` of the probe's `days_since(x)` at `t` (see [`ProbeInfo::step_args`]);
/// an argument that is not a timestamp (NULL: `days_since` of it stays NULL) has no steps.
fn step_origins<'a>(
    rules: &'a RuleSet,
    info: &'a ProbeInfo,
    values: &'a [Value],
    t: Millis,
) -> impl Iterator<Item = Millis> + 'a {
    let scope = scope_at(rules, values, t);
    info.step_args
        .iter()
        .filter_map(move |arg| match arg.eval(&scope) {
            Value::Ts(x) => Some(x),
            _ => None,
        })
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
        let scope = scope_at(rules, vals, t);
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
pub(super) const TIMER_LOOKAHEAD: usize = 8;

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
