//! [`Span`]: enclosures of compiled expressions and rule nodes over a span of engine time.

use super::{arith_enc, compare_codes, widen, BoolSet, Enc, IntKind, Range};
use crate::cexpr::{compare, round_half_away, CExpr, CmpOp, Func, Scope};
use crate::event::Millis;
use crate::rules::{NodeKind, RuleSet};
use crate::time::{DAY_MS, HOUR_MS};
use crate::value::Value;

/// Enclosures over the span `[lo, hi]` of the nodes a probe reads.
pub(crate) struct Span<'a> {
    rules: &'a RuleSet,
    /// Node values at an instant of the span (exact for every node that is constant on it).
    values: &'a [Value],
    /// Enclosures of the moving nodes (a handful), by node id; every other node is constant
    /// over the span and read from `values`.
    moving: Vec<(usize, Enc)>,
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
            moving: Vec::with_capacity(moving.len()),
            lo,
            hi,
        };
        for &id in moving {
            let e = span.node(id);
            span.moving.push((id, e));
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

    pub(super) fn read(&self, id: usize) -> Enc {
        match self.moving.iter().find(|(m, _)| *m == id) {
            Some((_, e)) => e.clone(),
            None => Enc::Exact(self.values.get(id).cloned().unwrap_or(Value::Null)),
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
