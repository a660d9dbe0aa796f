//! Expressions: type checking, and how each value moves with time ([`Shape`]); every
//! decision that time alone can change registers a probe.

use super::*;

impl Compiler<'_> {
    pub(super) fn parse(&mut self, text: &Spanned<String>) -> Option<(Expr, usize)> {
        let base = self.lines.string_content_start(text.span().start);
        match expr::parse(text.get_ref()) {
            Ok(e) => Some((e, base)),
            Err(err) => {
                self.error_at(
                    base + err.span.start,
                    format!("syntax error: {}", err.message),
                );
                None
            }
        }
    }

    pub(super) fn compile_text(&mut self, text: &Spanned<String>, ctx: Ctx) -> Typed {
        match self.parse(text) {
            Some((e, base)) => self.expr(&e, base, ctx),
            None => Typed::poisoned(),
        }
    }

    /// An expression that must be a condition (a segment's `when`, a `case` when, a `where`).
    /// A condition that chooses (a segment's membership, a `case` branch) is constant between
    /// probe changes. Conditions are built from decisions, which register their own probes, so
    /// this only guards the rule: any other moving condition gets a probe of its own.
    pub(super) fn settled(&mut self, condition: &Typed) -> Shape {
        if !condition.shape.is_const() {
            let pair = (condition.c.clone(), CExpr::Const(Value::Bool(true)));
            self.probes
                .push((self.current, Probe::Changing(vec![pair])));
        }
        Shape::Const
    }

    pub(super) fn condition(&mut self, text: &Spanned<String>, field: &str) -> Typed {
        let ctx = if field == "where" {
            Ctx::Filter
        } else {
            Ctx::Rule
        };
        let t = self.compile_text(text, ctx);
        if !t.ty.is(Type::Bool) {
            self.error_span(text, format!("`{field}` must be a condition (true or false), but this expression is {}; compare it with something, e.g. `x > 0`", t.ty.name()));
        }
        t
    }

    pub(super) fn expr(&mut self, e: &Expr, base: usize, ctx: Ctx) -> Typed {
        let at = base + e.span.start;
        let constant = |c: CExpr, ty: Type| Typed {
            c,
            ty,
            shape: Shape::Const,
        };
        match &e.kind {
            ExprKind::Null => constant(CExpr::Const(Value::Null), Type::Null),
            ExprKind::Bool(b) => constant(CExpr::Const(Value::Bool(*b)), Type::Bool),
            ExprKind::Number(n) => constant(CExpr::Const(Value::Num(*n)), Type::Num),
            ExprKind::String(s) => constant(CExpr::Const(Value::str(s)), Type::Str),
            ExprKind::Duration(ms) => constant(CExpr::Const(Value::Dur(*ms)), Type::Dur),
            ExprKind::Ident(name) => self.ident(name, at, ctx),
            ExprKind::Property(key) => {
                if ctx == Ctx::Filter {
                    constant(CExpr::Prop(Arc::from(key.as_str())), Type::Any)
                } else {
                    self.error_at(at, format!("`properties.{key}` can only be read in a `where` filter; to use it here, define a tag over it (for example kind = \"last\", property = \"{key}\")"));
                    Typed::poisoned()
                }
            }
            ExprKind::Call { name, args } => self.call(name, args, base, at, ctx),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => {
                let t = self.expr(expr, base, ctx);
                if !(t.ty.is(Type::Num) || t.ty == Type::Dur) {
                    self.error_at(
                        at,
                        format!(
                            "cannot negate {}; `-` needs a number or a duration",
                            t.ty.name()
                        ),
                    );
                }
                Typed {
                    c: CExpr::Neg(Box::new(t.c)),
                    ty: t.ty,
                    shape: t.shape.negate(),
                }
            }
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => {
                let t = self.expr(expr, base, ctx);
                self.expect_bool(&t, at, "NOT");
                Typed {
                    c: CExpr::Not(Box::new(t.c)),
                    ty: Type::Bool,
                    shape: t.shape,
                }
            }
            ExprKind::Binary { op, left, right } => {
                let l = self.expr(left, base, ctx);
                let r = self.expr(right, base, ctx);
                self.binary(*op, l, r, at)
            }
            ExprKind::In {
                expr,
                list,
                negated,
            } => {
                let x = self.expr(expr, base, ctx);
                let items: Vec<Typed> = list.iter().map(|i| self.expr(i, base, ctx)).collect();
                for item in &items {
                    if !Type::comparable(x.ty, item.ty) {
                        self.error_at(at, format!("IN compares {} with {}; the list must hold values of the same type", x.ty.name(), item.ty.name()));
                        break;
                    }
                }
                let pairs: Vec<(&Typed, &Typed)> = items.iter().map(|i| (&x, i)).collect();
                let shape = self.decision(&pairs);
                let c = CExpr::In {
                    expr: Box::new(x.c),
                    list: items.into_iter().map(|i| i.c).collect(),
                    negated: *negated,
                };
                Typed {
                    c,
                    ty: Type::Bool,
                    shape,
                }
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let x = self.expr(expr, base, ctx);
                let lo = self.expr(low, base, ctx);
                let hi = self.expr(high, base, ctx);
                if !Type::comparable(x.ty, lo.ty) || !Type::comparable(x.ty, hi.ty) {
                    self.error_at(at, format!("BETWEEN compares {} with {} and {}; the bounds must have the same type", x.ty.name(), lo.ty.name(), hi.ty.name()));
                }
                let shape = self.decision(&[(&x, &lo), (&x, &hi)]);
                Typed {
                    c: CExpr::Between {
                        expr: Box::new(x.c),
                        low: Box::new(lo.c),
                        high: Box::new(hi.c),
                        negated: *negated,
                    },
                    ty: Type::Bool,
                    shape,
                }
            }
            ExprKind::IsNull { expr, negated } => {
                let x = self.expr(expr, base, ctx);
                // Whether a moving value is NULL can change with time (`ln(days_since(t) - 3)`
                // turns from NULL to a number): `(x, x)` compares equal exactly when it is not.
                if !x.shape.is_const() {
                    self.probes.push((
                        self.current,
                        Probe::Changing(vec![(x.c.clone(), x.c.clone())]),
                    ));
                }
                let shape = Shape::Const;
                Typed {
                    c: CExpr::IsNull {
                        expr: Box::new(x.c),
                        negated: *negated,
                    },
                    ty: Type::Bool,
                    shape,
                }
            }
        }
    }

    pub(super) fn ident(&mut self, name: &str, at: usize, ctx: Ctx) -> Typed {
        if ctx == Ctx::Filter {
            if name.eq_ignore_ascii_case("event") {
                return Typed {
                    c: CExpr::EventName,
                    ty: Type::Str,
                    shape: Shape::Const,
                };
            }
            self.error_at(at, format!("a `where` filter sees only the event: use `event`, `properties.<name>`, literals and functions; {name:?} cannot be used here"));
            return Typed::poisoned();
        }
        match self.ids.get(name).copied() {
            Some(id) if id < self.types.len() => Typed {
                c: CExpr::Ref(id),
                ty: self.types[id],
                shape: self.shapes[id],
            },
            // A reference into a cycle (already reported).
            Some(_) => Typed::poisoned(),
            None if name.eq_ignore_ascii_case("event") => {
                self.error_at(
                    at,
                    "`event` (the event name) can only be used in a `where` filter",
                );
                Typed::poisoned()
            }
            None => {
                let hint = self.suggest(name);
                self.error_at(
                    at,
                    format!("unknown name {name:?}: no tag or segment has this name{hint}"),
                );
                Typed::poisoned()
            }
        }
    }

    pub(super) fn expect_bool(&mut self, t: &Typed, at: usize, what: &str) {
        if !t.ty.is(Type::Bool) {
            self.error_at(
                at,
                format!(
                    "{what} needs conditions (true or false), but got {}",
                    t.ty.name()
                ),
            );
        }
    }

    /// Shape of a decision over pairs of compared values (constant between probe changes);
    /// registers a probe when the outcome can change with time alone.
    pub(super) fn decision(&mut self, pairs: &[(&Typed, &Typed)]) -> Shape {
        let mut moving = false;
        let mut changing = false;
        for (a, b) in pairs {
            let diff = Shape::sum(a.shape, b.shape.negate());
            changing |= diff == Shape::Unknown;
            moving |= !diff.is_const();
        }
        if moving {
            let pairs = pairs
                .iter()
                .map(|(a, b)| (a.c.clone(), b.c.clone()))
                .collect();
            let probe = if changing {
                Probe::Changing(pairs)
            } else {
                Probe::Compare(pairs)
            };
            self.probes.push((self.current, probe));
        }
        Shape::Const
    }

    pub(super) fn binary(&mut self, op: BinaryOp, l: Typed, r: Typed, at: usize) -> Typed {
        let arith = |op: ArithOp| op;
        let (c_op, is_cmp) = match op {
            BinaryOp::And | BinaryOp::Or => {
                let what = if op == BinaryOp::And { "AND" } else { "OR" };
                self.expect_bool(&l, at, what);
                self.expect_bool(&r, at, what);
                let shape = if l.shape == Shape::Unknown || r.shape == Shape::Unknown {
                    Shape::Unknown
                } else {
                    Shape::Const
                };
                let c = if op == BinaryOp::And {
                    CExpr::And(Box::new(l.c), Box::new(r.c))
                } else {
                    CExpr::Or(Box::new(l.c), Box::new(r.c))
                };
                return Typed {
                    c,
                    ty: Type::Bool,
                    shape,
                };
            }
            BinaryOp::Eq => (Some(CmpOp::Eq), true),
            BinaryOp::NotEq => (Some(CmpOp::NotEq), true),
            BinaryOp::Lt => (Some(CmpOp::Lt), true),
            BinaryOp::LtEq => (Some(CmpOp::LtEq), true),
            BinaryOp::Gt => (Some(CmpOp::Gt), true),
            BinaryOp::GtEq => (Some(CmpOp::GtEq), true),
            _ => (None, false),
        };
        if is_cmp {
            if !Type::comparable(l.ty, r.ty) {
                self.error_at(
                    at,
                    format!(
                        "cannot compare {} with {}; both sides must have the same type",
                        l.ty.name(),
                        r.ty.name()
                    ),
                );
            }
            let shape = self.decision(&[(&l, &r)]);
            let c = CExpr::Cmp(
                c_op.expect("comparison operator"),
                Box::new(l.c),
                Box::new(r.c),
            );
            return Typed {
                c,
                ty: Type::Bool,
                shape,
            };
        }
        let op = arith(match op {
            BinaryOp::Add => ArithOp::Add,
            BinaryOp::Sub => ArithOp::Sub,
            BinaryOp::Mul => ArithOp::Mul,
            BinaryOp::Div => ArithOp::Div,
            _ => ArithOp::Mod,
        });
        let ty = match arith_type(op, l.ty, r.ty) {
            Some(t) => t,
            None => {
                let sym = match op {
                    ArithOp::Add => "+",
                    ArithOp::Sub => "-",
                    ArithOp::Mul => "*",
                    ArithOp::Div => "/",
                    ArithOp::Mod => "%",
                };
                self.error_at(at, format!("cannot compute {} {sym} {}; arithmetic works on numbers, and on timestamps and durations (timestamp ± duration, timestamp - timestamp)", l.ty.name(), r.ty.name()));
                Type::Any
            }
        };
        let shape = match op {
            ArithOp::Add => Shape::sum(l.shape, r.shape),
            ArithOp::Sub => Shape::sum(l.shape, r.shape.negate()),
            ArithOp::Mul => Shape::scale(l.shape, r.shape),
            ArithOp::Div if r.shape.is_const() => Shape::scale(l.shape, r.shape),
            ArithOp::Div | ArithOp::Mod if l.shape.is_const() && r.shape.is_const() => Shape::Const,
            ArithOp::Div | ArithOp::Mod => Shape::Unknown,
        };
        Typed {
            c: CExpr::Arith(op, Box::new(l.c), Box::new(r.c)),
            ty,
            shape,
        }
    }

    pub(super) fn call(
        &mut self,
        name: &str,
        args: &[Expr],
        base: usize,
        at: usize,
        ctx: Ctx,
    ) -> Typed {
        let arity = |n: usize| args.len() == n;
        let (func, ok_arity, usage) = match name {
            "now" => (None, arity(0), "now()"),
            "coalesce" => (
                Some(Func::Coalesce),
                !args.is_empty(),
                "coalesce(a, b, ...)",
            ),
            "days_since" => (Some(Func::DaysSince), arity(1), "days_since(timestamp)"),
            "hour_of_day" => (Some(Func::HourOfDay), arity(1), "hour_of_day(timestamp)"),
            "day_of_week" => (Some(Func::DayOfWeek), arity(1), "day_of_week(timestamp)"),
            "abs" => (Some(Func::Abs), arity(1), "abs(x)"),
            "least" => (Some(Func::Least), !args.is_empty(), "least(a, b, ...)"),
            "greatest" => (
                Some(Func::Greatest),
                !args.is_empty(),
                "greatest(a, b, ...)",
            ),
            "round" => (
                Some(Func::Round),
                arity(1) || arity(2),
                "round(x) or round(x, digits)",
            ),
            "ln" => (Some(Func::Ln), arity(1), "ln(x)"),
            "exp" => (Some(Func::Exp), arity(1), "exp(x)"),
            "sigmoid" => (Some(Func::Sigmoid), arity(1), "sigmoid(x)"),
            other => {
                self.error_at(
                    at,
                    format!("unknown function {other:?}; functions are {FUNCTIONS}"),
                );
                return Typed::poisoned();
            }
        };
        if !ok_arity {
            self.error_at(at, format!("wrong number of arguments: use {usage}"));
            return Typed::poisoned();
        }
        let needs_now = matches!(name, "now" | "days_since");
        if needs_now && ctx == Ctx::Filter {
            self.error_at(at, format!("{name}() cannot be used in a `where` filter: a filter sees only the event; put time conditions in the tag or segment instead"));
            return Typed::poisoned();
        }
        let Some(func) = func else {
            return Typed {
                c: CExpr::Now,
                ty: Type::Ts,
                shape: Shape::Inc,
            };
        };
        let typed: Vec<Typed> = args.iter().map(|a| self.expr(a, base, ctx)).collect();
        let want = |c: &mut Self, i: usize, ok: &[Type], what: &str| {
            let t = typed[i].ty;
            if !(t.flexible() || ok.contains(&t)) {
                c.error_at(
                    base + args[i].span.start,
                    format!("{name}() needs {what}, but got {}", t.name()),
                );
            }
        };
        let shapes: Vec<Shape> = typed.iter().map(|t| t.shape).collect();
        let (ty, shape) = match func {
            Func::Coalesce => {
                let ty = Type::join(typed.iter().map(|t| t.ty));
                (ty, Shape::choice(shapes))
            }
            Func::DaysSince => {
                want(self, 0, &[Type::Ts], "a timestamp");
                (
                    Type::Num,
                    if shapes[0].is_const() {
                        Shape::Inc
                    } else {
                        Shape::Unknown
                    },
                )
            }
            Func::HourOfDay | Func::DayOfWeek => {
                want(self, 0, &[Type::Ts], "a timestamp");
                let shape = match shapes[0] {
                    Shape::Const => Shape::Const,
                    Shape::Inc => {
                        let unit = if func == Func::HourOfDay {
                            Unit::Hour
                        } else {
                            Unit::Day
                        };
                        self.probes.push((
                            self.current,
                            Probe::LocalBucket {
                                arg: typed[0].c.clone(),
                                unit,
                            },
                        ));
                        Shape::Const
                    }
                    _ => Shape::Unknown,
                };
                (Type::Num, shape)
            }
            Func::Abs => {
                want(self, 0, &[Type::Num, Type::Dur], "a number or a duration");
                let ty = if typed[0].ty == Type::Dur {
                    Type::Dur
                } else {
                    Type::Num
                };
                (
                    ty,
                    if shapes[0].is_const() {
                        Shape::Const
                    } else {
                        Shape::Unknown
                    },
                )
            }
            Func::Least | Func::Greatest => {
                let ty = Type::join(typed.iter().map(|t| t.ty));
                if ty == Type::Any && typed.iter().filter(|t| !t.ty.flexible()).count() > 1 {
                    self.error_at(at, format!("{name}() needs arguments of one type"));
                }
                (ty, Shape::extremum(shapes))
            }
            Func::Round => {
                want(self, 0, &[Type::Num], "a number");
                if typed.len() == 2 {
                    want(self, 1, &[Type::Num], "a whole number of digits");
                }
                let shape = if typed.len() == 2 && !shapes[1].is_const() {
                    Shape::Unknown
                } else {
                    shapes[0]
                };
                (Type::Num, shape)
            }
            Func::Ln | Func::Exp | Func::Sigmoid => {
                want(self, 0, &[Type::Num], "a number");
                (Type::Num, shapes[0])
            }
        };
        Typed {
            c: CExpr::Call(func, typed.into_iter().map(|t| t.c).collect()),
            ty,
            shape,
        }
    }
}

pub(super) fn arith_type(op: ArithOp, a: Type, b: Type) -> Option<Type> {
    use Type::*;
    Some(match (op, a, b) {
        (_, Num, Num) => Num,
        (_, Any | Null, Any | Null) => Any,
        (_, Any | Null, Num) | (_, Num, Any | Null) => Num,
        (ArithOp::Sub, Ts, Ts) => Dur,
        (ArithOp::Add | ArithOp::Sub, Ts, Dur) | (ArithOp::Add, Dur, Ts) => Ts,
        (ArithOp::Add | ArithOp::Sub | ArithOp::Mod, Dur, Dur) => Dur,
        (ArithOp::Div, Dur, Dur) => Num,
        (ArithOp::Mul, Dur, Num) | (ArithOp::Mul, Num, Dur) | (ArithOp::Div, Dur, Num) => Dur,
        (_, Ts, Any | Null) | (_, Any | Null, Ts) => Any,
        (_, Dur, Any | Null) | (_, Any | Null, Dur) => Any,
        _ => return None,
    })
}
