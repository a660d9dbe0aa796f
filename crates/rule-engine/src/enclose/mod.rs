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

use crate::cexpr::{arith, ArithOp, CmpOp};
use crate::value::Value;

mod span;
#[cfg(test)]
mod tests;

pub(crate) use span::Span;

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
