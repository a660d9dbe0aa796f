//! Compiled expressions: names resolved to node indices, evaluated with SQL three-valued logic.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use crate::event::{Millis, Properties};
use crate::time::{Zone, DAY_MS};
use crate::value::Value;

/// A compiled expression. Built only by the rules compiler, after type checking.
#[derive(Debug, Clone, PartialEq)]
pub enum CExpr {
    Const(Value),
    /// The value of a tag or segment (segments are always `Bool`).
    Ref(usize),
    /// `properties.<key>` of the event being filtered (`where` only).
    Prop(Arc<str>),
    /// The event name (`where` only).
    EventName,
    Now,
    Neg(Box<CExpr>),
    Not(Box<CExpr>),
    Arith(ArithOp, Box<CExpr>, Box<CExpr>),
    Cmp(CmpOp, Box<CExpr>, Box<CExpr>),
    And(Box<CExpr>, Box<CExpr>),
    Or(Box<CExpr>, Box<CExpr>),
    In {
        expr: Box<CExpr>,
        list: Vec<CExpr>,
        negated: bool,
    },
    Between {
        expr: Box<CExpr>,
        low: Box<CExpr>,
        high: Box<CExpr>,
        negated: bool,
    },
    IsNull {
        expr: Box<CExpr>,
        negated: bool,
    },
    Call(Func, Vec<CExpr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    pub(crate) fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::NotEq => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::LtEq => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::GtEq => ord != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Coalesce,
    DaysSince,
    HourOfDay,
    DayOfWeek,
    Abs,
    Least,
    Greatest,
    Round,
    Ln,
    Exp,
    Sigmoid,
}

/// The event a `where` filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub name: &'a str,
    pub properties: &'a Properties,
}

/// Everything an expression can read.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub values: &'a [Value],
    pub now: Millis,
    pub zone: &'a Zone,
    pub event: Option<EventView<'a>>,
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn from_truth(t: Option<bool>) -> Value {
    t.map_or(Value::Null, Value::Bool)
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        Value::Num(x)
    } else {
        Value::Null
    }
}

impl CExpr {
    /// Calls `f` with every direct sub-expression.
    pub fn for_each_child(&self, f: &mut dyn FnMut(&CExpr)) {
        match self {
            CExpr::Const(_) | CExpr::Ref(_) | CExpr::Prop(_) | CExpr::EventName | CExpr::Now => {}
            CExpr::Neg(e) | CExpr::Not(e) | CExpr::IsNull { expr: e, .. } => f(e),
            CExpr::Arith(_, a, b) | CExpr::Cmp(_, a, b) | CExpr::And(a, b) | CExpr::Or(a, b) => {
                f(a);
                f(b);
            }
            CExpr::In { expr, list, .. } => {
                f(expr);
                list.iter().for_each(&mut *f);
            }
            CExpr::Between {
                expr, low, high, ..
            } => {
                f(expr);
                f(low);
                f(high);
            }
            CExpr::Call(_, args) => args.iter().for_each(f),
        }
    }

    /// Node ids this expression reads directly.
    pub fn refs(&self, out: &mut Vec<usize>) {
        if let CExpr::Ref(id) = self {
            out.push(*id);
        }
        self.for_each_child(&mut |c| c.refs(out));
    }

    /// The value of this expression, borrowed when it is a constant or a node value: operands
    /// are compared and combined without cloning (and reference-counting) strings.
    pub fn operand<'s>(&'s self, scope: &Scope<'s>) -> Cow<'s, Value> {
        match self {
            CExpr::Const(v) => Cow::Borrowed(v),
            CExpr::Ref(i) => scope
                .values
                .get(*i)
                .map_or(Cow::Owned(Value::Null), Cow::Borrowed),
            _ => Cow::Owned(self.eval(scope)),
        }
    }

    pub fn eval(&self, scope: &Scope<'_>) -> Value {
        match self {
            CExpr::Const(v) => v.clone(),
            CExpr::Ref(i) => scope.values.get(*i).cloned().unwrap_or(Value::Null),
            CExpr::Prop(key) => match scope.event {
                Some(ev) => ev
                    .properties
                    .get(&**key)
                    .map_or(Value::Null, Value::from_json),
                None => Value::Null,
            },
            CExpr::EventName => scope.event.map_or(Value::Null, |ev| Value::str(ev.name)),
            CExpr::Now => Value::Ts(scope.now),
            CExpr::Neg(e) => match e.eval(scope) {
                Value::Num(n) => Value::Num(-n),
                Value::Dur(d) => d.checked_neg().map_or(Value::Null, Value::Dur),
                _ => Value::Null,
            },
            CExpr::Not(e) => from_truth(truth(&e.operand(scope)).map(|b| !b)),
            CExpr::Arith(op, a, b) => arith(*op, &a.operand(scope), &b.operand(scope)),
            CExpr::Cmp(op, a, b) => compare(*op, &a.operand(scope), &b.operand(scope)),
            CExpr::And(a, b) => {
                let left = truth(&a.operand(scope));
                if left == Some(false) {
                    return Value::Bool(false);
                }
                match (left, truth(&b.operand(scope))) {
                    (_, Some(false)) => Value::Bool(false),
                    (Some(true), Some(true)) => Value::Bool(true),
                    _ => Value::Null,
                }
            }
            CExpr::Or(a, b) => {
                let left = truth(&a.operand(scope));
                if left == Some(true) {
                    return Value::Bool(true);
                }
                match (left, truth(&b.operand(scope))) {
                    (_, Some(true)) => Value::Bool(true),
                    (Some(false), Some(false)) => Value::Bool(false),
                    _ => Value::Null,
                }
            }
            CExpr::In {
                expr,
                list,
                negated,
            } => {
                let x = expr.operand(scope);
                if x.is_null() {
                    return Value::Null;
                }
                let mut saw_null = false;
                for item in list {
                    match x.compare(&item.operand(scope)) {
                        Some(Ordering::Equal) => return Value::Bool(!negated),
                        Some(_) => {}
                        None => saw_null = true,
                    }
                }
                if saw_null {
                    Value::Null
                } else {
                    Value::Bool(*negated)
                }
            }
            CExpr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let x = expr.operand(scope);
                let ge = truth(&compare(CmpOp::GtEq, &x, &low.operand(scope)));
                let le = truth(&compare(CmpOp::LtEq, &x, &high.operand(scope)));
                let inside = match (ge, le) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                from_truth(inside.map(|b| b != *negated))
            }
            CExpr::IsNull { expr, negated } => {
                Value::Bool(expr.operand(scope).is_null() != *negated)
            }
            CExpr::Call(func, args) => call(*func, args, scope),
        }
    }
}

/// SQL comparison; NULL when either side is NULL or the types differ.
pub fn compare(op: CmpOp, a: &Value, b: &Value) -> Value {
    from_truth(a.compare(b).map(|ord| op.holds(ord)))
}

pub fn arith(op: ArithOp, a: &Value, b: &Value) -> Value {
    use Value::*;
    match (op, a, b) {
        (_, Num(x), Num(y)) => match op {
            ArithOp::Add => finite(x + y),
            ArithOp::Sub => finite(x - y),
            ArithOp::Mul => finite(x * y),
            ArithOp::Div if *y == 0.0 => Null,
            ArithOp::Div => finite(x / y),
            ArithOp::Mod if *y == 0.0 => Null,
            ArithOp::Mod => finite(x % y),
        },
        (ArithOp::Sub, Ts(x), Ts(y)) => x.checked_sub(*y).map_or(Null, Dur),
        (ArithOp::Add, Ts(x), Dur(y)) | (ArithOp::Add, Dur(y), Ts(x)) => {
            x.checked_add(*y).map_or(Null, Ts)
        }
        (ArithOp::Sub, Ts(x), Dur(y)) => x.checked_sub(*y).map_or(Null, Ts),
        (ArithOp::Add, Dur(x), Dur(y)) => x.checked_add(*y).map_or(Null, Dur),
        (ArithOp::Sub, Dur(x), Dur(y)) => x.checked_sub(*y).map_or(Null, Dur),
        (ArithOp::Mod, Dur(_), Dur(0)) => Null,
        (ArithOp::Mod, Dur(x), Dur(y)) => Dur(x % y),
        (ArithOp::Div, Dur(_), Dur(0)) => Null,
        (ArithOp::Div, Dur(x), Dur(y)) => finite(*x as f64 / *y as f64),
        (ArithOp::Mul, Dur(d), Num(n)) | (ArithOp::Mul, Num(n), Dur(d)) => {
            scaled_duration(*d as f64 * n)
        }
        (ArithOp::Div, Dur(_), Num(n)) if *n == 0.0 => Null,
        (ArithOp::Div, Dur(d), Num(n)) => scaled_duration(*d as f64 / n),
        _ => Null,
    }
}

fn scaled_duration(ms: f64) -> Value {
    if ms.is_finite() && ms.abs() < 9.0e15 {
        Value::Dur(ms.round() as i64)
    } else {
        Value::Null
    }
}

fn number_arg(args: &[CExpr], i: usize, scope: &Scope<'_>) -> Option<f64> {
    match args.get(i).map(|a| a.eval(scope)) {
        Some(Value::Num(n)) => Some(n),
        _ => None,
    }
}

fn call(func: Func, args: &[CExpr], scope: &Scope<'_>) -> Value {
    match func {
        Func::Coalesce => args
            .iter()
            .map(|a| a.eval(scope))
            .find(|v| !v.is_null())
            .unwrap_or(Value::Null),
        Func::DaysSince => match args[0].eval(scope) {
            Value::Ts(t) => match scope.now.checked_sub(t) {
                Some(d) => Value::Num(d.div_euclid(DAY_MS) as f64),
                None => Value::Null,
            },
            _ => Value::Null,
        },
        Func::HourOfDay => match args[0].eval(scope) {
            Value::Ts(t) => Value::Num(scope.zone.hour_of_day(t) as f64),
            _ => Value::Null,
        },
        Func::DayOfWeek => match args[0].eval(scope) {
            Value::Ts(t) => Value::Num(scope.zone.day_of_week(t) as f64),
            _ => Value::Null,
        },
        Func::Abs => match args[0].eval(scope) {
            Value::Num(n) => Value::Num(n.abs()),
            Value::Dur(d) => d.checked_abs().map_or(Value::Null, Value::Dur),
            _ => Value::Null,
        },
        Func::Least | Func::Greatest => {
            let want = if func == Func::Least {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let mut best: Option<Value> = None;
            for v in args.iter().map(|a| a.eval(scope)).filter(|v| !v.is_null()) {
                best = match best {
                    None => Some(v),
                    Some(b) => match v.compare(&b) {
                        Some(ord) if ord == want => Some(v),
                        Some(_) => Some(b),
                        None => return Value::Null,
                    },
                };
            }
            best.unwrap_or(Value::Null)
        }
        Func::Round => {
            let Some(x) = number_arg(args, 0, scope) else {
                return Value::Null;
            };
            let digits = if args.len() > 1 {
                match number_arg(args, 1, scope) {
                    Some(d) => d.trunc() as i32,
                    None => return Value::Null,
                }
            } else {
                0
            };
            round_half_away(x, digits)
        }
        Func::Ln => match number_arg(args, 0, scope) {
            Some(x) if x > 0.0 => finite(x.ln()),
            _ => Value::Null,
        },
        Func::Exp => number_arg(args, 0, scope).map_or(Value::Null, |x| finite(x.exp())),
        Func::Sigmoid => {
            number_arg(args, 0, scope).map_or(Value::Null, |x| finite(1.0 / (1.0 + (-x).exp())))
        }
    }
}

/// `round(x, digits)`, halves away from zero.
pub fn round_half_away(x: f64, digits: i32) -> Value {
    if digits == 0 {
        return finite(x.round());
    }
    let digits = digits.clamp(-300, 300);
    let scale = 10f64.powi(digits);
    let scaled = x * scale;
    if !scaled.is_finite() {
        return finite(x);
    }
    finite(scaled.round() / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(values: &[Value]) -> Scope<'_> {
        static ZONE: std::sync::OnceLock<Zone> = std::sync::OnceLock::new();
        Scope {
            values,
            now: 10 * DAY_MS + 5,
            zone: ZONE.get_or_init(Zone::utc),
            event: None,
        }
    }

    fn c(v: Value) -> Box<CExpr> {
        Box::new(CExpr::Const(v))
    }

    #[test]
    fn three_valued_logic() {
        let s = scope(&[]);
        let t = || c(Value::Bool(true));
        let f = || c(Value::Bool(false));
        let n = || c(Value::Null);
        assert_eq!(CExpr::And(n(), f()).eval(&s), Value::Bool(false));
        assert_eq!(CExpr::And(n(), t()).eval(&s), Value::Null);
        assert_eq!(CExpr::Or(n(), t()).eval(&s), Value::Bool(true));
        assert_eq!(CExpr::Or(n(), f()).eval(&s), Value::Null);
        assert_eq!(CExpr::Not(n()).eval(&s), Value::Null);
        let in_list = CExpr::In {
            expr: c(Value::Num(3.0)),
            list: vec![CExpr::Const(Value::Num(1.0)), CExpr::Const(Value::Null)],
            negated: true,
        };
        assert_eq!(in_list.eval(&s), Value::Null);
    }

    #[test]
    fn arithmetic_edges() {
        assert_eq!(
            arith(ArithOp::Div, &Value::Num(1.0), &Value::Num(0.0)),
            Value::Null
        );
        assert_eq!(
            arith(ArithOp::Mod, &Value::Num(7.0), &Value::Num(0.0)),
            Value::Null
        );
        assert_eq!(
            arith(ArithOp::Div, &Value::Num(7.0), &Value::Num(2.0)),
            Value::Num(3.5)
        );
        assert_eq!(
            arith(ArithOp::Sub, &Value::Ts(10), &Value::Ts(4)),
            Value::Dur(6)
        );
        assert_eq!(
            arith(ArithOp::Sub, &Value::Ts(10), &Value::Dur(4)),
            Value::Ts(6)
        );
        assert_eq!(
            arith(ArithOp::Add, &Value::str("a"), &Value::Num(1.0)),
            Value::Null
        );
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_half_away(2.5, 0), Value::Num(3.0));
        assert_eq!(round_half_away(-2.5, 0), Value::Num(-3.0));
        assert_eq!(round_half_away(1.25, 1), Value::Num(1.3));
        assert_eq!(round_half_away(1234.0, -2), Value::Num(1200.0));
    }

    #[test]
    fn days_since_floors() {
        let s = scope(&[]);
        let e = CExpr::Call(Func::DaysSince, vec![CExpr::Const(Value::Ts(5))]);
        assert_eq!(e.eval(&s), Value::Num(10.0));
        let e = CExpr::Call(Func::DaysSince, vec![CExpr::Const(Value::Ts(6))]);
        assert_eq!(e.eval(&s), Value::Num(9.0));
    }

    #[test]
    fn least_greatest_skip_nulls() {
        let s = scope(&[]);
        let args = vec![
            CExpr::Const(Value::Null),
            CExpr::Const(Value::Num(3.0)),
            CExpr::Const(Value::Num(1.0)),
        ];
        assert_eq!(
            CExpr::Call(Func::Least, args.clone()).eval(&s),
            Value::Num(1.0)
        );
        assert_eq!(CExpr::Call(Func::Greatest, args).eval(&s), Value::Num(3.0));
        assert_eq!(
            CExpr::Call(Func::Least, vec![CExpr::Const(Value::Null)]).eval(&s),
            Value::Null
        );
    }
}
