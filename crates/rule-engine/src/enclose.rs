//! What a value can be over a span of engine time: sound enclosures of compiled expressions.
//!
//! SPEC §4 rev 2 accepts every rule whatever its shape over `now()`: `nearest` over features
//! that move with time, `abs`, `%`, `least`/`greatest`, products of moving values. Their
//! decisions can change back and forth, so bisection (which needs a monotone change) cannot
//! find their first change. Instead [`crate::engine`] asks, for a span `[lo, hi]` in which every
//! windowed aggregate and every earlier decision is constant, whether a decision *can* differ
//! anywhere in it; if so it splits the span, down to single milliseconds evaluated exactly.
//!
//! The guarantee this module gives: the enclosure of an expression over `[lo, hi]` contains
//! the value [`CExpr::eval`] computes at every instant of the span. Each operation is evaluated
//! on the ends of its operands' ranges with the same floating-point operation the pointwise
//! evaluation uses (round-to-nearest is monotone, so the ends bound every rounded result in
//! between); where the formula differs from the pointwise one (`%`, `nearest`) or the library
//! function is not guaranteed monotone to the last bit (`ln`, `exp`), the range is widened.
//! Over-approximating is always safe: it only costs more splitting.

use std::cmp::Ordering;

use crate::cexpr::{arith, compare, round_half_away, ArithOp, CExpr, CmpOp, Func, Scope};
use crate::event::Millis;
use crate::rules::{NodeKind, RuleSet};
use crate::time::{DAY_MS, HOUR_MS};
use crate::value::Value;

/// Which of TRUE, FALSE and NULL a boolean can be over the span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoolSet {
    pub t: bool,
    pub f: bool,
    pub null: bool,
}

impl BoolSet {
    const ALL: BoolSet = BoolSet {
        t: true,
        f: true,
        null: true,
    };

    fn of(v: Option<bool>) -> BoolSet {
        let mut s = BoolSet::default();
        s.add(v);
        s
    }

    fn add(&mut self, v: Option<bool>) {
        match v {
            Some(true) => self.t = true,
            Some(false) => self.f = true,
            None => self.null = true,
        }
    }

    fn members(self) -> impl Iterator<Item = Option<bool>> {
        [
            (self.t, Some(true)),
            (self.f, Some(false)),
            (self.null, None),
        ]
        .into_iter()
        .filter_map(|(present, v)| present.then_some(v))
    }

    /// The set of `op(a, b)` over every pair of members.
    fn combine(
        a: BoolSet,
        b: BoolSet,
        op: impl Fn(Option<bool>, Option<bool>) -> Option<bool>,
    ) -> BoolSet {
        let mut out = BoolSet::default();
        for x in a.members() {
            for y in b.members() {
                out.add(op(x, y));
            }
        }
        out
    }
}

/// Timestamps and durations are whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    Ts,
    Dur,
}

/// The values an expression can take over a span (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum Enc {
    /// The same value at every instant.
    Exact(Value),
    /// A number in `[lo, hi]`, or NULL at some instants when `null`.
    Num { lo: f64, hi: f64, null: bool },
    /// A timestamp or duration in `[lo, hi]`, or NULL at some instants when `null`.
    Int {
        kind: IntKind,
        lo: i64,
        hi: i64,
        null: bool,
    },
    /// A boolean that can change.
    Bool(BoolSet),
    /// Anything (a string or list that can change).
    Any,
}

/// A numeric view of an enclosure.
#[derive(Debug, Clone, Copy)]
enum Range {
    /// Only NULL.
    Empty,
    Num(f64, f64),
    Int(IntKind, i64, i64),
}

fn int_value(kind: IntKind, x: i64) -> Value {
    match kind {
        IntKind::Ts => Value::Ts(x),
        IntKind::Dur => Value::Dur(x),
    }
}

impl Enc {
    const NULL: Enc = Enc::Exact(Value::Null);

    fn num(lo: f64, hi: f64, null: bool) -> Enc {
        // A result outside the finite numbers is NULL pointwise (`finite`).
        let null = null || !lo.is_finite() || !hi.is_finite();
        let (lo, hi) = (lo.max(-f64::MAX), hi.min(f64::MAX));
        if lo > hi || lo.is_nan() || hi.is_nan() {
            return if null { Enc::NULL } else { Enc::Any };
        }
        if lo == hi && !null {
            Enc::Exact(Value::Num(lo))
        } else {
            Enc::Num { lo, hi, null }
        }
    }

    /// From exact bounds; what falls outside i64 is NULL pointwise (checked arithmetic).
    fn int(kind: IntKind, lo: i128, hi: i128, null: bool) -> Enc {
        let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
        let null = null || lo < min || hi > max;
        let (lo, hi) = (lo.max(min), hi.min(max));
        if lo > hi {
            return if null { Enc::NULL } else { Enc::Any };
        }
        let (lo, hi) = (lo as i64, hi as i64);
        if lo == hi && !null {
            Enc::Exact(int_value(kind, lo))
        } else {
            Enc::Int { kind, lo, hi, null }
        }
    }

    fn bools(s: BoolSet) -> Enc {
        match (s.t, s.f, s.null) {
            (true, false, false) => Enc::Exact(Value::Bool(true)),
            (false, true, false) => Enc::Exact(Value::Bool(false)),
            (false, false, true) => Enc::NULL,
            _ => Enc::Bool(s),
        }
    }

    fn range(&self) -> Option<(Range, bool)> {
        Some(match self {
            Enc::Exact(Value::Null) => (Range::Empty, true),
            Enc::Exact(Value::Num(x)) => (Range::Num(*x, *x), false),
            Enc::Exact(Value::Ts(x)) => (Range::Int(IntKind::Ts, *x, *x), false),
            Enc::Exact(Value::Dur(x)) => (Range::Int(IntKind::Dur, *x, *x), false),
            Enc::Num { lo, hi, null } => (Range::Num(*lo, *hi), *null),
            Enc::Int { kind, lo, hi, null } => (Range::Int(*kind, *lo, *hi), *null),
            _ => return None,
        })
    }

    fn truth(&self) -> BoolSet {
        match self {
            Enc::Exact(Value::Bool(b)) => BoolSet::of(Some(*b)),
            Enc::Exact(_) => BoolSet::of(None),
            Enc::Bool(s) => *s,
            // A number or a moving string is never TRUE or FALSE.
            Enc::Num { .. } | Enc::Int { .. } => BoolSet::of(None),
            Enc::Any => BoolSet::ALL,
        }
    }

    fn can_be_null(&self) -> bool {
        match self {
            Enc::Exact(v) => v.is_null(),
            Enc::Num { null, .. } | Enc::Int { null, .. } => *null,
            Enc::Bool(s) => s.null,
            Enc::Any => true,
        }
    }

    fn can_be_value(&self) -> bool {
        !matches!(self, Enc::Exact(Value::Null))
    }

    /// The same values without NULL (None when only NULL is left).
    fn without_null(&self) -> Option<Enc> {
        match self {
            Enc::Exact(Value::Null) => None,
            Enc::Num { lo, hi, .. } => Some(Enc::num(*lo, *hi, false)),
            Enc::Int { kind, lo, hi, .. } => {
                Some(Enc::int(*kind, (*lo).into(), (*hi).into(), false))
            }
            Enc::Bool(s) => Some(Enc::bools(BoolSet { null: false, ..*s })),
            other => Some(other.clone()),
        }
    }

    /// The same values, and NULL too when `null`.
    fn with_null(self, null: bool) -> Enc {
        if !null {
            return self;
        }
        match self {
            Enc::Exact(Value::Null) => self,
            Enc::Exact(Value::Num(x)) => Enc::num(x, x, true),
            Enc::Num { lo, hi, .. } => Enc::num(lo, hi, true),
            Enc::Exact(Value::Ts(x)) => Enc::int(IntKind::Ts, x.into(), x.into(), true),
            Enc::Exact(Value::Dur(x)) => Enc::int(IntKind::Dur, x.into(), x.into(), true),
            Enc::Int { kind, lo, hi, .. } => Enc::int(kind, lo.into(), hi.into(), true),
            Enc::Exact(Value::Bool(_)) | Enc::Bool(_) => Enc::bools(BoolSet {
                null: true,
                ..self.truth()
            }),
            _ => Enc::Any,
        }
    }

    /// The smallest enclosure holding both.
    fn union(self, other: Enc) -> Enc {
        if self == other {
            return self;
        }
        let null = self.can_be_null() || other.can_be_null();
        let core = match (self.without_null(), other.without_null()) {
            (None, None) => return Enc::NULL,
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(x), Some(y)) => match (x.range(), y.range()) {
                (Some((Range::Num(a1, a2), _)), Some((Range::Num(b1, b2), _))) => {
                    Enc::num(a1.min(b1), a2.max(b2), false)
                }
                (Some((Range::Int(ka, a1, a2), _)), Some((Range::Int(kb, b1, b2), _)))
                    if ka == kb =>
                {
                    Enc::int(ka, a1.min(b1).into(), a2.max(b2).into(), false)
                }
                _ if x.is_boolean() && y.is_boolean() => {
                    let (a, b) = (x.truth(), y.truth());
                    Enc::bools(BoolSet {
                        t: a.t || b.t,
                        f: a.f || b.f,
                        null: false,
                    })
                }
                _ => Enc::Any,
            },
        };
        core.with_null(null)
    }

    fn is_boolean(&self) -> bool {
        matches!(self, Enc::Exact(Value::Bool(_)) | Enc::Bool(_))
    }
}

/// Widens `[lo, hi]` by a relative margin (plus the smallest absolute one).
fn widen(lo: f64, hi: f64, rel: f64) -> (f64, f64) {
    let m = rel * lo.abs().max(hi.abs()) + f64::MIN_POSITIVE;
    (lo - m, hi + m)
}

fn corners(a1: f64, a2: f64, b1: f64, b2: f64, f: impl Fn(f64, f64) -> f64) -> (f64, f64) {
    let c = [f(a1, b1), f(a1, b2), f(a2, b1), f(a2, b2)];
    let lo = c.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A NaN corner (never from finite operands of + - * /) is treated as unbounded.
    if c.iter().any(|x| x.is_nan()) {
        return (f64::NEG_INFINITY, f64::INFINITY);
    }
    (lo, hi)
}

fn num_arith(op: ArithOp, (a1, a2): (f64, f64), (b1, b2): (f64, f64), null: bool) -> Enc {
    match op {
        ArithOp::Add => Enc::num(a1 + b1, a2 + b2, null),
        ArithOp::Sub => Enc::num(a1 - b2, a2 - b1, null),
        ArithOp::Mul => {
            let (lo, hi) = corners(a1, a2, b1, b2, |x, y| x * y);
            Enc::num(lo, hi, null)
        }
        ArithOp::Div => {
            if b1 == 0.0 && b2 == 0.0 {
                return Enc::NULL;
            }
            if b1 <= 0.0 && b2 >= 0.0 {
                // Division by zero is NULL; near zero the quotient is unbounded.
                return Enc::num(f64::NEG_INFINITY, f64::INFINITY, true);
            }
            let (lo, hi) = corners(a1, a2, b1, b2, |x, y| x / y);
            Enc::num(lo, hi, null)
        }
        ArithOp::Mod => {
            if b1 == 0.0 && b2 == 0.0 {
                return Enc::NULL;
            }
            let m = b1.abs().max(b2.abs());
            let bound = m.min(a1.abs().max(a2.abs()));
            let (sign_lo, sign_hi) = if a1 >= 0.0 {
                (0.0, bound)
            } else if a2 <= 0.0 {
                (-bound, 0.0)
            } else {
                (-bound, bound)
            };
            let zero = b1 <= 0.0 && b2 >= 0.0;
            if !zero {
                // x % y = x - trunc(x / y)·y exactly; when trunc(x / y) is one integer k over
                // the whole box, the result is the range of x - k·y.
                let (q1, q2) = corners(a1, a2, b1, b2, |x, y| x / y);
                let (q1, q2) = widen(q1, q2, 1e-9);
                if q1.is_finite() && q2.is_finite() && q1.trunc() == q2.trunc() {
                    let k = q1.trunc();
                    let (kb1, kb2) = (k * b1, k * b2);
                    let (lo, hi) = widen(a1 - kb1.max(kb2), a2 - kb1.min(kb2), 1e-12);
                    return Enc::num(lo.max(sign_lo), hi.min(sign_hi), null);
                }
            }
            Enc::num(sign_lo, sign_hi, null || zero)
        }
    }
}

fn int_arith(
    op: ArithOp,
    (ka, a1, a2): (IntKind, i64, i64),
    (kb, b1, b2): (IntKind, i64, i64),
    null: bool,
) -> Enc {
    use IntKind::{Dur, Ts};
    let (a1, a2, b1, b2) = (
        i128::from(a1),
        i128::from(a2),
        i128::from(b1),
        i128::from(b2),
    );
    match (op, ka, kb) {
        (ArithOp::Sub, Ts, Ts) => Enc::int(Dur, a1 - b2, a2 - b1, null),
        (ArithOp::Add, Ts, Dur) | (ArithOp::Add, Dur, Ts) => Enc::int(Ts, a1 + b1, a2 + b2, null),
        (ArithOp::Sub, Ts, Dur) => Enc::int(Ts, a1 - b2, a2 - b1, null),
        (ArithOp::Add, Dur, Dur) => Enc::int(Dur, a1 + b1, a2 + b2, null),
        (ArithOp::Sub, Dur, Dur) => Enc::int(Dur, a1 - b2, a2 - b1, null),
        (ArithOp::Div, Dur, Dur) => num_arith(
            ArithOp::Div,
            (a1 as f64, a2 as f64),
            (b1 as f64, b2 as f64),
            null,
        ),
        (ArithOp::Mod, Dur, Dur) => {
            if b1 == 0 && b2 == 0 {
                return Enc::NULL;
            }
            let zero = b1 <= 0 && b2 >= 0;
            let bound = (b1.abs().max(b2.abs()) - 1).min(a1.abs().max(a2.abs()));
            let (sign_lo, sign_hi) = if a1 >= 0 {
                (0, bound)
            } else if a2 <= 0 {
                (-bound, 0)
            } else {
                (-bound, bound)
            };
            if !zero {
                let q = [a1 / b1, a1 / b2, a2 / b1, a2 / b2];
                let (q1, q2) = (q.iter().min().copied(), q.iter().max().copied());
                if let (Some(k), Some(k2)) = (q1, q2) {
                    if k == k2 {
                        let (kb1, kb2) = (k * b1, k * b2);
                        let lo = (a1 - kb1.max(kb2)).max(sign_lo);
                        let hi = (a2 - kb1.min(kb2)).min(sign_hi);
                        return Enc::int(Dur, lo, hi, null);
                    }
                }
            }
            Enc::int(Dur, sign_lo, sign_hi, null || zero)
        }
        _ => Enc::NULL,
    }
}

/// `scaled_duration` of every product or quotient in `[lo, hi]`.
fn scaled(lo: f64, hi: f64, null: bool) -> Enc {
    const LIMIT: f64 = 9.0e15;
    let null = null || !(lo.is_finite() && hi.is_finite() && lo.abs() < LIMIT && hi.abs() < LIMIT);
    let (lo, hi) = (lo.max(-LIMIT).round(), hi.min(LIMIT).round());
    if lo > hi {
        return if null { Enc::NULL } else { Enc::Any };
    }
    Enc::int(IntKind::Dur, lo as i128, hi as i128, null)
}

fn arith_enc(op: ArithOp, a: &Enc, b: &Enc) -> Enc {
    if let (Enc::Exact(x), Enc::Exact(y)) = (a, b) {
        return Enc::Exact(arith(op, x, y));
    }
    let (Some((ra, na)), Some((rb, nb))) = (a.range(), b.range()) else {
        // Strings, booleans or lists: arithmetic on them is NULL, but a moving string's
        // enclosure says nothing about its type.
        return if matches!(a, Enc::Any) || matches!(b, Enc::Any) {
            Enc::Any
        } else {
            Enc::NULL
        };
    };
    let null = na || nb;
    match (ra, rb) {
        (Range::Empty, _) | (_, Range::Empty) => Enc::NULL,
        (Range::Num(a1, a2), Range::Num(b1, b2)) => num_arith(op, (a1, a2), (b1, b2), null),
        (Range::Int(ka, a1, a2), Range::Int(kb, b1, b2)) => {
            int_arith(op, (ka, a1, a2), (kb, b1, b2), null)
        }
        (Range::Int(IntKind::Dur, d1, d2), Range::Num(n1, n2))
        | (Range::Num(n1, n2), Range::Int(IntKind::Dur, d1, d2))
            if op == ArithOp::Mul =>
        {
            let (lo, hi) = corners(d1 as f64, d2 as f64, n1, n2, |d, n| d * n);
            scaled(lo, hi, null)
        }
        (Range::Int(IntKind::Dur, d1, d2), Range::Num(n1, n2)) if op == ArithOp::Div => {
            if n1 <= 0.0 && n2 >= 0.0 {
                return if n1 == 0.0 && n2 == 0.0 {
                    Enc::NULL
                } else {
                    scaled(f64::NEG_INFINITY, f64::INFINITY, true)
                };
            }
            let (lo, hi) = corners(d1 as f64, d2 as f64, n1, n2, |d, n| d / n);
            scaled(lo, hi, null)
        }
        _ => Enc::NULL,
    }
}

/// The orderings `a` can have against `b` (NULL when either is NULL or their types differ).
fn orderings(a: &Enc, b: &Enc) -> Option<(Vec<Ordering>, bool)> {
    let (ra, na) = a.range()?;
    let (rb, nb) = b.range()?;
    let mut null = na || nb;
    let (lo_lt_hi, hi_gt_lo, overlap) = match (ra, rb) {
        (Range::Num(a1, a2), Range::Num(b1, b2)) => (a1 < b2, a2 > b1, a1 <= b2 && b1 <= a2),
        (Range::Int(ka, a1, a2), Range::Int(kb, b1, b2)) if ka == kb => {
            (a1 < b2, a2 > b1, a1 <= b2 && b1 <= a2)
        }
        _ => {
            null = true;
            (false, false, false)
        }
    };
    let mut out = Vec::new();
    if lo_lt_hi {
        out.push(Ordering::Less);
    }
    if overlap {
        out.push(Ordering::Equal);
    }
    if hi_gt_lo {
        out.push(Ordering::Greater);
    }
    Some((out, null))
}

/// The values a small enclosure can take, listed (booleans and exact values).
fn listed(e: &Enc) -> Option<Vec<Value>> {
    match e {
        Enc::Exact(v) => Some(vec![v.clone()]),
        Enc::Bool(s) => Some(
            s.members()
                .map(|b| b.map_or(Value::Null, Value::Bool))
                .collect(),
        ),
        _ => None,
    }
}

/// Every comparison code ([`crate::engine`] signatures: -1, 0, 1, NULL = 2) `a` against `b`
/// can give over the span.
pub(crate) fn compare_codes(a: &Enc, b: &Enc) -> CodeSet {
    let code = |o: Option<Ordering>| match o {
        Some(Ordering::Less) => 0,
        Some(Ordering::Equal) => 1,
        Some(Ordering::Greater) => 2,
        None => 3,
    };
    let mut set = CodeSet::default();
    if let (Some(xs), Some(ys)) = (listed(a), listed(b)) {
        for x in &xs {
            for y in &ys {
                set.0[code(x.compare(y))] = true;
            }
        }
        return set;
    }
    match orderings(a, b) {
        Some((ords, null)) => {
            for o in ords {
                set.0[code(Some(o))] = true;
            }
            set.0[3] |= null;
        }
        None => set.0 = [true; 4],
    }
    set
}

/// The codes of `x` compared with itself: equal exactly when it is not NULL. (Comparing the
/// enclosure with itself would lose that the two sides are one value.)
pub(crate) fn self_compare_codes(x: &Enc) -> CodeSet {
    let mut set = CodeSet::default();
    set.0[1] = x.can_be_value();
    set.0[3] = x.can_be_null();
    set
}

/// Which comparison outcomes (less, equal, greater, NULL) are possible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CodeSet([bool; 4]);

impl CodeSet {
    /// Whether the only possible outcome is the signature code `code` (-1, 0, 1, 2).
    pub(crate) fn is_only(self, code: i64) -> bool {
        let index = match code {
            -1 => 0,
            0 => 1,
            1 => 2,
            _ => 3,
        };
        self.0.iter().enumerate().all(|(i, &p)| p == (i == index))
    }

    fn truth(self, op: CmpOp) -> BoolSet {
        let mut out = BoolSet::default();
        for (i, ord) in [Ordering::Less, Ordering::Equal, Ordering::Greater]
            .into_iter()
            .enumerate()
        {
            if self.0[i] {
                out.add(Some(op.holds(ord)));
            }
        }
        out.null |= self.0[3];
        out
    }
}

/// Enclosures over the span `[lo, hi]` of the nodes a probe reads.
pub(crate) struct Span<'a> {
    rules: &'a RuleSet,
    /// Node values at an instant of the span (exact for every node that is constant on it).
    values: &'a [Value],
    /// Enclosures of the moving nodes, by node id (None: constant, read `values`).
    moving: Vec<Option<Enc>>,
    lo: Millis,
    hi: Millis,
}

impl<'a> Span<'a> {
    /// Encloses the `moving` nodes (in evaluation order) over `[lo, hi]`.
    pub(crate) fn new(
        rules: &'a RuleSet,
        values: &'a [Value],
        moving: &[usize],
        lo: Millis,
        hi: Millis,
    ) -> Span<'a> {
        let mut span = Span {
            rules,
            values,
            moving: vec![None; values.len()],
            lo,
            hi,
        };
        for &id in moving {
            let e = span.node(id);
            span.moving[id] = Some(e);
        }
        span
    }

    fn node(&self, id: usize) -> Enc {
        match &self.rules.nodes[id].kind {
            NodeKind::Expr(e) => self.expr(e),
            NodeKind::Segment(e) => {
                let s = self.expr(e).truth();
                Enc::bools(BoolSet {
                    t: s.t,
                    f: s.f || s.null,
                    null: false,
                })
            }
            NodeKind::Case { cases, otherwise } => {
                let mut out: Option<Enc> = None;
                let mut join = |e: Enc| {
                    out = Some(match out.take() {
                        Some(o) => o.union(e),
                        None => e,
                    })
                };
                for (when, value) in cases {
                    let w = self.expr(when).truth();
                    if w.t {
                        join(self.expr(value));
                    }
                    if !(w.f || w.null) {
                        return out.unwrap_or(Enc::NULL);
                    }
                }
                join(self.expr(otherwise));
                out.unwrap_or(Enc::NULL)
            }
            NodeKind::Tier { of, tiers } => {
                let tier_of = |x: f64| tiers.iter().rposition(|(min, _)| *min <= x);
                let label =
                    |i: Option<usize>| i.map_or(Value::Null, |i| Value::Str(tiers[i].1.clone()));
                match self.expr(of) {
                    Enc::Exact(Value::Num(x)) => Enc::Exact(label(tier_of(x))),
                    Enc::Num { lo, hi, null } => {
                        let (a, b) = (tier_of(lo), tier_of(hi));
                        if a == b && !null {
                            Enc::Exact(label(a))
                        } else {
                            Enc::Any
                        }
                    }
                    Enc::Any => Enc::Any,
                    _ => Enc::NULL,
                }
            }
            NodeKind::Nearest {
                features,
                centroids,
            } => self.nearest(features, centroids),
            NodeKind::Aggregate(_) | NodeKind::Profile(_) => Enc::Exact(self.values[id].clone()),
        }
    }

    /// The nearest centroid over a box of feature values. `d_i - d_j` is linear in every
    /// feature, so its range over the box is exact up to rounding (a margin covers that); a
    /// centroid can win only if it can be no farther than every other one.
    fn nearest(&self, features: &[usize], centroids: &[(std::sync::Arc<str>, Vec<f64>)]) -> Enc {
        let mut boxes = Vec::with_capacity(features.len());
        let mut null = false;
        for &f in features {
            let e = self.read(f);
            match e.range() {
                Some((Range::Num(lo, hi), n)) => {
                    null |= n;
                    boxes.push((lo, hi));
                }
                Some((_, _)) => return Enc::NULL,
                None => return Enc::Any,
            }
        }
        if centroids.is_empty() {
            return Enc::NULL;
        }
        let mut winners = Vec::new();
        for (i, (_, ci)) in centroids.iter().enumerate() {
            let can_win = centroids.iter().enumerate().all(|(j, (_, cj))| {
                if i == j {
                    return true;
                }
                // d_i - d_j = Σ (ci² - cj²) - 2·x·(ci - cj)
                let (mut lo, mut scale) = (0.0f64, 0.0f64);
                for ((x1, x2), (a, b)) in boxes.iter().zip(ci.iter().zip(cj)) {
                    let constant = a * a - b * b;
                    let slope = -2.0 * (a - b);
                    let (t1, t2) = (slope * x1, slope * x2);
                    lo += constant + t1.min(t2);
                    let far = x1.abs().max(x2.abs()) + a.abs().max(b.abs());
                    scale += far * far;
                }
                lo <= 1e-9 * scale + f64::MIN_POSITIVE
            });
            if can_win {
                winners.push(i);
            }
        }
        match winners.as_slice() {
            [only] => {
                let v = Enc::Exact(Value::Str(centroids[*only].0.clone()));
                if null {
                    Enc::Any
                } else {
                    v
                }
            }
            _ => Enc::Any,
        }
    }

    fn read(&self, id: usize) -> Enc {
        match self.moving.get(id) {
            Some(Some(e)) => e.clone(),
            _ => Enc::Exact(self.values.get(id).cloned().unwrap_or(Value::Null)),
        }
    }

    /// The enclosure of `e` over the span.
    pub(crate) fn expr(&self, e: &CExpr) -> Enc {
        match e {
            CExpr::Const(v) => Enc::Exact(v.clone()),
            CExpr::Ref(id) => self.read(*id),
            CExpr::Prop(_) | CExpr::EventName => Enc::NULL,
            CExpr::Now => Enc::int(IntKind::Ts, self.lo.into(), self.hi.into(), false),
            CExpr::Neg(x) => match self.expr(x) {
                Enc::Exact(v) => {
                    Enc::Exact(CExpr::Neg(Box::new(CExpr::Const(v))).eval(&self.scope()))
                }
                other => match other.range() {
                    Some((Range::Num(lo, hi), null)) => Enc::num(-hi, -lo, null),
                    Some((Range::Int(IntKind::Dur, lo, hi), null)) => Enc::int(
                        IntKind::Dur,
                        -i128::from(hi),
                        -i128::from(lo),
                        null || lo == i64::MIN,
                    ),
                    Some(_) => Enc::NULL,
                    None => Enc::Any,
                },
            },
            CExpr::Not(x) => {
                let s = self.expr(x).truth();
                Enc::bools(BoolSet {
                    t: s.f,
                    f: s.t,
                    null: s.null,
                })
            }
            CExpr::Arith(op, a, b) => arith_enc(*op, &self.expr(a), &self.expr(b)),
            CExpr::Cmp(op, a, b) => {
                let (a, b) = (self.expr(a), self.expr(b));
                if let (Enc::Exact(x), Enc::Exact(y)) = (&a, &b) {
                    return Enc::Exact(compare(*op, x, y));
                }
                Enc::bools(compare_codes(&a, &b).truth(*op))
            }
            CExpr::And(a, b) => Enc::bools(BoolSet::combine(
                self.expr(a).truth(),
                self.expr(b).truth(),
                |x, y| match (x, y) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
            )),
            CExpr::Or(a, b) => Enc::bools(BoolSet::combine(
                self.expr(a).truth(),
                self.expr(b).truth(),
                |x, y| match (x, y) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            )),
            CExpr::In {
                expr,
                list,
                negated,
            } => {
                let x = self.expr(expr);
                let mut out = BoolSet {
                    null: x.can_be_null(),
                    ..BoolSet::default()
                };
                if let Some(x) = x.without_null() {
                    // The fold of the pointwise evaluation, over sets: the runs still going
                    // without and with a NULL comparison seen, and whether one found a match.
                    let (mut clean, mut saw_null, mut found) = (true, false, false);
                    for item in list {
                        if !(clean || saw_null) {
                            break;
                        }
                        let eq = compare_codes(&x, &self.expr(item)).truth(CmpOp::Eq);
                        found |= eq.t;
                        saw_null =
                            (saw_null && (eq.f || eq.null)) || ((clean || saw_null) && eq.null);
                        clean = clean && eq.f;
                    }
                    if found {
                        out.add(Some(!negated));
                    }
                    if saw_null {
                        out.null = true;
                    }
                    if clean {
                        out.add(Some(*negated));
                    }
                }
                Enc::bools(out)
            }
            CExpr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let x = self.expr(expr);
                let ge = compare_codes(&x, &self.expr(low)).truth(CmpOp::GtEq);
                let le = compare_codes(&x, &self.expr(high)).truth(CmpOp::LtEq);
                let inside = BoolSet::combine(ge, le, |a, b| match (a, b) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                });
                Enc::bools(if *negated {
                    BoolSet {
                        t: inside.f,
                        f: inside.t,
                        null: inside.null,
                    }
                } else {
                    inside
                })
            }
            CExpr::IsNull { expr, negated } => {
                let x = self.expr(expr);
                let mut s = BoolSet::default();
                if x.can_be_null() {
                    s.add(Some(!negated));
                }
                if x.can_be_value() {
                    s.add(Some(*negated));
                }
                Enc::bools(s)
            }
            CExpr::Call(func, args) => self.call(*func, args),
        }
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            values: self.values,
            now: self.lo,
            zone: &self.rules.zone,
            event: None,
        }
    }

    fn call(&self, func: Func, args: &[CExpr]) -> Enc {
        let encs: Vec<Enc> = args.iter().map(|a| self.expr(a)).collect();
        let moves_with_now = matches!(func, Func::DaysSince);
        if !moves_with_now && encs.iter().all(|e| matches!(e, Enc::Exact(_))) {
            // Pointwise, with the arguments as constants.
            let consts: Vec<CExpr> = encs
                .into_iter()
                .map(|e| match e {
                    Enc::Exact(v) => CExpr::Const(v),
                    _ => CExpr::Const(Value::Null),
                })
                .collect();
            return Enc::Exact(CExpr::Call(func, consts).eval(&self.scope()));
        }
        let first = || encs[0].range();
        match func {
            Func::Coalesce => {
                let mut out: Option<Enc> = None;
                for e in &encs {
                    if let Some(v) = e.without_null() {
                        out = Some(match out {
                            Some(o) => o.union(v),
                            None => v,
                        });
                    }
                    if !e.can_be_null() {
                        return out.unwrap_or(Enc::NULL);
                    }
                }
                out.map_or(Enc::NULL, |o| o.union(Enc::NULL))
            }
            Func::DaysSince => match first() {
                Some((Range::Int(IntKind::Ts, t1, t2), null)) => {
                    let (d1, d2) = (
                        i128::from(self.lo) - i128::from(t2),
                        i128::from(self.hi) - i128::from(t1),
                    );
                    let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
                    let null = null || d1 < min || d2 > max;
                    let days = |d: i128| d.clamp(min, max).div_euclid(i128::from(DAY_MS)) as f64;
                    Enc::num(days(d1), days(d2), null)
                }
                Some(_) => Enc::NULL,
                None => Enc::Any,
            },
            Func::HourOfDay | Func::DayOfWeek => match first() {
                Some((Range::Int(IntKind::Ts, t1, t2), null)) => {
                    let zone = &self.rules.zone;
                    let (f, limit, span): (fn(&crate::time::Zone, Millis) -> i64, _, _) =
                        if func == Func::HourOfDay {
                            (crate::time::Zone::hour_of_day, (0.0, 23.0), HOUR_MS)
                        } else {
                            (crate::time::Zone::day_of_week, (1.0, 7.0), DAY_MS)
                        };
                    // Local time is monotone between offset changes, and two offset changes
                    // never fall within one hour or day.
                    let constant = t2 - t1 < span
                        && zone.offset_ms(t1) == zone.offset_ms(t2)
                        && f(zone, t1) == f(zone, t2);
                    if constant {
                        let v = f(zone, t1) as f64;
                        Enc::num(v, v, null)
                    } else {
                        Enc::num(limit.0, limit.1, null)
                    }
                }
                Some(_) => Enc::NULL,
                None => Enc::Any,
            },
            Func::Abs => match first() {
                Some((Range::Num(lo, hi), null)) => {
                    if lo >= 0.0 {
                        Enc::num(lo, hi, null)
                    } else if hi <= 0.0 {
                        Enc::num(-hi, -lo, null)
                    } else {
                        Enc::num(0.0, (-lo).max(hi), null)
                    }
                }
                Some((Range::Int(IntKind::Dur, lo, hi), null)) => {
                    let (lo, hi, null) = (i128::from(lo), i128::from(hi), null || lo == i64::MIN);
                    if lo >= 0 {
                        Enc::int(IntKind::Dur, lo, hi, null)
                    } else if hi <= 0 {
                        Enc::int(IntKind::Dur, -hi, -lo, null)
                    } else {
                        Enc::int(IntKind::Dur, 0, (-lo).max(hi), null)
                    }
                }
                Some(_) => Enc::NULL,
                None => Enc::Any,
            },
            Func::Least | Func::Greatest => self.extremum(func == Func::Least, &encs),
            Func::Round => {
                let digits = match encs.get(1) {
                    None => 0,
                    Some(Enc::Exact(Value::Num(d))) => d.trunc() as i32,
                    Some(Enc::Exact(_)) => return Enc::NULL,
                    Some(_) => return Enc::num(f64::NEG_INFINITY, f64::INFINITY, true),
                };
                match first() {
                    // Rounding is monotone: the ends bound every rounded value between.
                    Some((Range::Num(lo, hi), null)) => {
                        let end = |x: f64| match round_half_away(x, digits) {
                            Value::Num(r) => (r, false),
                            _ => (x, true),
                        };
                        let ((a, na), (b, nb)) = (end(lo), end(hi));
                        let (a, b) = widen(a, b, 1e-12);
                        Enc::num(a, b, null || na || nb)
                    }
                    Some(_) => Enc::NULL,
                    None => Enc::Any,
                }
            }
            Func::Ln => match first() {
                Some((Range::Num(lo, hi), null)) => {
                    if hi <= 0.0 {
                        Enc::NULL
                    } else if lo > 0.0 {
                        let (a, b) = widen(lo.ln(), hi.ln(), 1e-12);
                        Enc::num(a, b, null)
                    } else {
                        // ln of the smallest positive number is about -744.4.
                        let (_, b) = widen(hi.ln(), hi.ln(), 1e-12);
                        Enc::num(-746.0, b, true)
                    }
                }
                Some(_) => Enc::NULL,
                None => Enc::Any,
            },
            Func::Exp | Func::Sigmoid => match first() {
                Some((Range::Num(lo, hi), null)) => {
                    let f = |x: f64| {
                        if func == Func::Exp {
                            x.exp()
                        } else {
                            1.0 / (1.0 + (-x).exp())
                        }
                    };
                    let (a, b) = widen(f(lo), f(hi), 1e-12);
                    Enc::num(a.max(0.0), b, null)
                }
                Some(_) => Enc::NULL,
                None => Enc::Any,
            },
        }
    }

    /// `least`/`greatest`: the extremum of the arguments that are not NULL.
    fn extremum(&self, least: bool, encs: &[Enc]) -> Enc {
        let mut ranges = Vec::new();
        let mut all_may_be_null = true;
        for e in encs {
            match e.range() {
                Some((Range::Empty, _)) => {}
                Some((r, null)) => {
                    all_may_be_null &= null;
                    ranges.push((r, null));
                }
                None => return Enc::Any,
            }
        }
        let Some(&(first, _)) = ranges.first() else {
            return Enc::NULL;
        };
        let kind_of = |r: Range| match r {
            Range::Int(k, ..) => Some(k),
            _ => None,
        };
        if ranges.iter().any(|(r, _)| kind_of(*r) != kind_of(first)) {
            // Mixed types compare as NULL pointwise.
            return Enc::Any;
        }
        let (lo, hi) = match kind_of(first) {
            Some(_) => {
                let bounds = |r: Range| match r {
                    Range::Int(_, a, b) => (i128::from(a), i128::from(b)),
                    _ => (0, 0),
                };
                let (lo, hi) = extremum_bounds(least, &ranges, bounds);
                return Enc::int(
                    kind_of(first).unwrap_or(IntKind::Dur),
                    lo,
                    hi,
                    all_may_be_null,
                );
            }
            None => {
                let bounds = |r: Range| match r {
                    Range::Num(a, b) => (a, b),
                    _ => (0.0, 0.0),
                };
                extremum_bounds(least, &ranges, bounds)
            }
        };
        Enc::num(lo, hi, all_may_be_null)
    }
}

/// Bounds of the extremum of any non-empty subset of the non-NULL arguments. For `least`: the
/// least lower bound, and the least upper bound among the arguments that are never NULL (else
/// the largest upper bound); symmetrically for `greatest`.
fn extremum_bounds<T: PartialOrd + Copy>(
    least: bool,
    ranges: &[(Range, bool)],
    bounds: impl Fn(Range) -> (T, T),
) -> (T, T) {
    let pick = |xs: &mut dyn Iterator<Item = T>, smaller: bool| {
        xs.reduce(|a, b| if (b < a) == smaller { b } else { a })
    };
    let all = || ranges.iter().map(|(r, _)| bounds(*r));
    let sure = || ranges.iter().filter(|(_, n)| !n).map(|(r, _)| bounds(*r));
    let (l0, h0) = bounds(ranges[0].0);
    if least {
        let lo = pick(&mut all().map(|b| b.0), true).unwrap_or(l0);
        let hi = pick(&mut sure().map(|b| b.1), true)
            .or_else(|| pick(&mut all().map(|b| b.1), false))
            .unwrap_or(h0);
        (lo, hi)
    } else {
        let hi = pick(&mut all().map(|b| b.1), false).unwrap_or(h0);
        let lo = pick(&mut sure().map(|b| b.0), false)
            .or_else(|| pick(&mut all().map(|b| b.0), true))
            .unwrap_or(l0);
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether `v` is one of the values `e` allows.
    fn contains(e: &Enc, v: &Value) -> bool {
        match (e, v) {
            (Enc::Any, _) => true,
            (Enc::Exact(x), v) => x == v || x.compare(v) == Some(Ordering::Equal),
            (Enc::Num { null, .. } | Enc::Int { null, .. }, Value::Null) => *null,
            (Enc::Num { lo, hi, .. }, Value::Num(x)) => lo <= x && x <= hi,
            (Enc::Int { kind, lo, hi, .. }, Value::Ts(x) | Value::Dur(x)) => {
                let k = if matches!(v, Value::Ts(_)) {
                    IntKind::Ts
                } else {
                    IntKind::Dur
                };
                *kind == k && lo <= x && x <= hi
            }
            (Enc::Bool(s), Value::Bool(b)) => {
                if *b {
                    s.t
                } else {
                    s.f
                }
            }
            (Enc::Bool(s), Value::Null) => s.null,
            _ => false,
        }
    }

    const EXPRS: &[&str] = &[
        "abs((now() - t0) / 1h - 20)",
        "(now() - t0) % 1d",
        "((now() - t0) / 1h) % 7.5",
        "((now() - t0) / 1h) * ((now() - t0) / 1h - 30)",
        "least(now() - t0, 36h - (now() - t0))",
        "greatest(days_since(t0), 10 - days_since(t0))",
        "ln((now() - t0) / 1h - 10)",
        "exp(((now() - t0) / 1d) - 3)",
        "sigmoid((now() - t0) / 1d - 2)",
        "round((now() - t0) / 1h / 7, 1)",
        "hour_of_day(t0 + (now() - t0) * 2)",
        "day_of_week(now() - (now() - t0) * 3)",
        "100 / ((now() - t0) / 1h - 12)",
        "(now() - t0) * -0.5 + 3d",
        "coalesce(ln((now() - t0) / 1h - 5), -1)",
        "abs((now() - t0) / 1h - 20) < 5",
        "(now() - t0) % 1d BETWEEN 2h AND 9h",
        "days_since(t0) IN (1, 3, 5)",
        "mood",
        "band",
    ];

    const RULES: &str = r#"
time_zone = "America/New_York"
[[tag]]
name = "t0"
kind = "last_time"
event = "e"
[[tag]]
name = "n"
kind = "count"
event = "e"
[[tag]]
name = "hours"
kind = "expr"
expr = "(now() - t0) / 1h"
[[tag]]
name = "mood"
kind = "nearest"
features = ["hours", "n"]
centroids = { a = [5, 1], b = [30, 2], c = [80, 0] }
[[tag]]
name = "band"
kind = "tier"
of = "abs(hours - 30)"
tiers = [{ label = "near", min = 0 }, { label = "far", min = 12 }]
"#;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The enclosure over a span holds the pointwise value at every sampled instant.
        #[test]
        fn enclosures_hold_every_pointwise_value(
            which in 0..EXPRS.len(),
            offset_h in -200i64..200,
            width in prop_oneof![0i64..10, 0i64..100_000, 0i64..(30 * DAY_MS)],
            count in 0.0f64..3.0,
            samples in prop::collection::vec(0.0f64..=1.0, 1..8),
        ) {
            let src = format!("{RULES}[[tag]]\nname = \"x\"\nkind = \"expr\"\nexpr = {:?}\n", EXPRS[which]);
            let rules = RuleSet::compile(&src, "t").unwrap();
            let t0: Millis = 1_730_000_000_000;
            let lo = t0 + offset_h * HOUR_MS;
            let hi = lo + width;
            let x = rules.node_by_name("x").unwrap();
            let mut values = vec![Value::Null; rules.nodes.len()];
            values[rules.node_by_name("t0").unwrap()] = Value::Ts(t0);
            values[rules.node_by_name("n").unwrap()] = Value::Num(count.floor());
            let moving: Vec<usize> = (0..rules.nodes.len())
                .filter(|&i| !rules.nodes[i].shape.is_const() || i == x)
                .filter(|&i| i >= 2)
                .collect();
            let span = Span::new(&rules, &values, &moving, lo, hi);
            let enc = span.read(x);
            let state = crate::state::UserState::new(&rules.aggregates, rules.segments.len());
            for s in samples {
                let t = lo + (width as f64 * s) as i64;
                let mut at = values.clone();
                let buckets = crate::time::BucketsAt::new(&rules.zone, t);
                for &id in &moving {
                    at[id] = crate::engine::evaluate_node(&rules, &state, id, &at, t, &buckets);
                }
                prop_assert!(contains(&enc, &at[x]), "{}: {:?} at {} not in {:?} over [{}, {}]", EXPRS[which], at[x], t, enc, lo, hi);
            }
        }
    }
}
