//! Tag kinds: aggregates over events, and the derived kinds (`expr`, `case`, `tier`,
//! `nearest`).

use super::*;

impl Compiler<'_> {
    pub(super) fn forbid<T>(
        &mut self,
        field: &Option<Spanned<T>>,
        name: &str,
        kind: &str,
        why: &str,
    ) {
        if let Some(f) = field {
            self.error_span(
                f,
                format!("`{name}` does not apply to kind \"{kind}\"; {why}"),
            );
        }
    }

    pub(super) fn aggregate(&mut self, tag: &RawTag, kind: AggKind) -> (Aggregate, Type) {
        let kind_name = tag.kind.get_ref().as_str();
        let windowed = matches!(
            kind,
            AggKind::Count
                | AggKind::Sum
                | AggKind::Min
                | AggKind::Max
                | AggKind::Avg
                | AggKind::Distinct
                | AggKind::Top
        );
        let needs_property = !matches!(
            kind,
            AggKind::Count | AggKind::FirstTime | AggKind::LastTime
        );
        self.forbid(&tag.expr, "expr", kind_name, "it is for kind \"expr\"");
        self.forbid(&tag.cases, "cases", kind_name, "it is for kind \"case\"");
        self.forbid(&tag.otherwise, "else", kind_name, "it is for kind \"case\"");
        self.forbid(
            &tag.else_expr,
            "else_expr",
            kind_name,
            "it is for kind \"case\"",
        );
        self.forbid(&tag.of, "of", kind_name, "it is for kind \"tier\"");
        self.forbid(&tag.tiers, "tiers", kind_name, "it is for kind \"tier\"");
        self.forbid(
            &tag.features,
            "features",
            kind_name,
            "it is for kind \"nearest\"",
        );
        self.forbid(
            &tag.centroids,
            "centroids",
            kind_name,
            "it is for kind \"nearest\"",
        );
        if kind != AggKind::Top {
            self.forbid(&tag.k, "k", kind_name, "it is for kind \"top\"");
        }
        if !windowed {
            self.forbid(&tag.window, "window", kind_name, &format!("windows are allowed on {WINDOW_KINDS}; this kind always covers the user's whole history"));
        }
        // `property` on count, first_time and last_time is accepted and has no effect: these
        // kinds count or time matching events whatever their properties.
        match &tag.event {
            None => self.error_span(&tag.name, format!("kind \"{kind_name}\" needs `event`: an event name, a list of names, or \"*\" for every track event")),
            Some(sel) => {
                let names: Vec<&String> = match sel.get_ref() {
                    EventSelector::One(n) => vec![n],
                    EventSelector::Many(ns) => ns.iter().collect(),
                };
                if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                    self.error_span(sel, "`event` must name at least one event, and names cannot be empty");
                }
            }
        }
        let property = match (&tag.property, needs_property) {
            (Some(p), true) if p.get_ref().is_empty() => {
                self.error_span(p, "`property` cannot be empty");
                None
            }
            (Some(p), _) => Some(Arc::from(p.get_ref().as_str())),
            (None, true) => {
                self.error_span(&tag.name, format!("kind \"{kind_name}\" needs `property`: the event property it reads, e.g. property = \"amount\""));
                None
            }
            (None, false) => None,
        };
        let filter = tag.filter.as_ref().map(|w| self.condition(w, "where").c);
        let window = match &tag.window {
            Some(w) if windowed => match Window::parse(w.get_ref()) {
                Ok(win) => Some(win),
                Err(e) => {
                    self.error_span(w, e);
                    None
                }
            },
            _ => None,
        };
        let mut k = 1;
        if let Some(kv) = &tag.k {
            if (1..=1000).contains(kv.get_ref()) {
                k = *kv.get_ref() as usize;
            } else {
                self.error_span(kv, "`k` must be a whole number from 1 to 1000");
            }
        }
        let ty = match kind {
            AggKind::Count
            | AggKind::Sum
            | AggKind::Min
            | AggKind::Max
            | AggKind::Avg
            | AggKind::Distinct => Type::Num,
            AggKind::Top if k > 1 => Type::List,
            AggKind::Top | AggKind::First | AggKind::Last => Type::Any,
            AggKind::FirstTime | AggKind::LastTime => Type::Ts,
        };
        let name = Arc::from(tag.name.get_ref().as_str());
        let mut events: Vec<&str> = match tag.event.as_ref().map(|e| e.get_ref()) {
            Some(EventSelector::One(n)) => vec![n.as_str()],
            Some(EventSelector::Many(ns)) => ns.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        events.sort_unstable();
        events.dedup();
        let signature = format!(
            "{kind:?}|{}|{}|{}|{}|{k}",
            events.join(","),
            property.as_deref().unwrap_or(""),
            tag.filter
                .as_ref()
                .map(|f| f.get_ref().trim().to_string())
                .unwrap_or_default(),
            window.map_or_else(|| "none".to_string(), |w| format!("{w:?}")),
        );
        (
            Aggregate {
                name,
                kind,
                property,
                filter,
                window,
                k,
                signature,
            },
            ty,
        )
    }

    pub(super) fn derived(&mut self, tag: &RawTag) -> (NodeKind, Type, Shape) {
        let kind = tag.kind.get_ref().as_str();
        let not_aggregate = "it applies to aggregates over events";
        if kind != "profile" {
            self.forbid(&tag.event, "event", kind, not_aggregate);
            self.forbid(&tag.property, "property", kind, not_aggregate);
        }
        self.forbid(&tag.filter, "where", kind, not_aggregate);
        self.forbid(
            &tag.window,
            "window",
            kind,
            &format!("windows are allowed on {WINDOW_KINDS}"),
        );
        self.forbid(&tag.k, "k", kind, "it is for kind \"top\"");
        if kind != "expr" {
            self.forbid(&tag.expr, "expr", kind, "it is for kind \"expr\"");
        }
        if kind != "case" {
            self.forbid(&tag.cases, "cases", kind, "it is for kind \"case\"");
            self.forbid(&tag.otherwise, "else", kind, "it is for kind \"case\"");
            self.forbid(&tag.else_expr, "else_expr", kind, "it is for kind \"case\"");
        }
        if kind != "tier" {
            self.forbid(&tag.of, "of", kind, "it is for kind \"tier\"");
            self.forbid(&tag.tiers, "tiers", kind, "it is for kind \"tier\"");
        }
        if kind != "nearest" {
            self.forbid(
                &tag.features,
                "features",
                kind,
                "it is for kind \"nearest\"",
            );
            self.forbid(
                &tag.centroids,
                "centroids",
                kind,
                "it is for kind \"nearest\"",
            );
        }
        let poisoned = (
            NodeKind::Expr(CExpr::Const(Value::Null)),
            Type::Any,
            Shape::Const,
        );
        match kind {
            "profile" => {
                self.forbid(
                    &tag.event,
                    "event",
                    kind,
                    "a profile tag reads a user attribute set by profile events",
                );
                match &tag.property {
                    Some(p) if !p.get_ref().is_empty() => (
                        NodeKind::Profile(Arc::from(p.get_ref().as_str())),
                        Type::Any,
                        Shape::Const,
                    ),
                    _ => {
                        self.error_span(&tag.name, "kind \"profile\" needs `property`: the profile attribute it reads, e.g. property = \"city\"");
                        poisoned
                    }
                }
            }
            "expr" => match &tag.expr {
                Some(text) => {
                    let t = self.compile_text(text, Ctx::Rule);
                    (NodeKind::Expr(t.c), t.ty, t.shape)
                }
                None => {
                    self.error_span(
                        &tag.name,
                        "kind \"expr\" needs `expr`, e.g. expr = \"spend_30d / orders_30d\"",
                    );
                    poisoned
                }
            },
            "case" => self.case(tag).unwrap_or(poisoned),
            "tier" => self.tier(tag).unwrap_or(poisoned),
            "nearest" => self.nearest(tag).unwrap_or(poisoned),
            other => {
                self.error_span(
                    &tag.kind,
                    format!("unknown kind {other:?}; kinds are count, sum, min, max, avg, distinct, top, first, last, first_time, last_time, profile, expr, case, tier and nearest"),
                );
                poisoned
            }
        }
    }

    pub(super) fn literal(&mut self, v: &Spanned<toml::Value>) -> Typed {
        let (value, ty) = match v.get_ref() {
            toml::Value::String(s) => (Value::str(s), Type::Str),
            toml::Value::Integer(i) => (Value::Num(*i as f64), Type::Num),
            toml::Value::Float(f) => (Value::Num(*f), Type::Num),
            toml::Value::Boolean(b) => (Value::Bool(*b), Type::Bool),
            _ => {
                self.error_span(v, "a case value must be a string, number or boolean; use `value_expr` for anything computed");
                return Typed::poisoned();
            }
        };
        Typed {
            c: CExpr::Const(value),
            ty,
            shape: Shape::Const,
        }
    }

    pub(super) fn case(&mut self, tag: &RawTag) -> Option<(NodeKind, Type, Shape)> {
        let Some(cases) = &tag.cases else {
            self.error_span(
                &tag.name,
                "kind \"case\" needs `cases = [{ when = \"...\", value = \"...\" }, ...]`",
            );
            return None;
        };
        if cases.get_ref().is_empty() {
            self.error_span(
                cases,
                "`cases` is empty; give at least one { when = \"...\", value = \"...\" }",
            );
        }
        let mut compiled = Vec::new();
        let mut types = Vec::new();
        let mut value_shapes = Vec::new();
        for case in cases.get_ref() {
            let case = case.get_ref();
            let when = self.condition(&case.when, "when");
            self.settled(&when);
            let value = match (&case.value, &case.value_expr) {
                (Some(v), None) => self.literal(v),
                (None, Some(e)) => self.compile_text(e, Ctx::Rule),
                (Some(v), Some(_)) => {
                    self.error_span(v, "give either `value` or `value_expr`, not both");
                    Typed::poisoned()
                }
                (None, None) => {
                    self.error_span(
                        &case.when,
                        "this case has no `value` (a literal) or `value_expr` (an expression)",
                    );
                    Typed::poisoned()
                }
            };
            types.push(value.ty);
            value_shapes.push(value.shape);
            compiled.push((when.c, value.c));
        }
        let otherwise = match (&tag.otherwise, &tag.else_expr) {
            (Some(v), None) => self.literal(v),
            (None, Some(e)) => self.compile_text(e, Ctx::Rule),
            (Some(v), Some(_)) => {
                self.error_span(v, "give either `else` or `else_expr`, not both");
                Typed::poisoned()
            }
            (None, None) => Typed {
                c: CExpr::Const(Value::Null),
                ty: Type::Null,
                shape: Shape::Const,
            },
        };
        types.push(otherwise.ty);
        value_shapes.push(otherwise.shape);
        let shape = Shape::choice(value_shapes);
        Some((
            NodeKind::Case {
                cases: compiled,
                otherwise: otherwise.c,
            },
            Type::join(types),
            shape,
        ))
    }

    pub(super) fn tier(&mut self, tag: &RawTag) -> Option<(NodeKind, Type, Shape)> {
        let (Some(of), Some(tiers)) = (&tag.of, &tag.tiers) else {
            self.error_span(&tag.name, "kind \"tier\" needs `of` (an expression) and `tiers = [{ label = \"high\", min = 1000 }, ...]`");
            return None;
        };
        let value = self.compile_text(of, Ctx::Rule);
        if !value.ty.is(Type::Num) {
            self.error_span(
                of,
                format!(
                    "`of` must be a number, but this expression is {}",
                    value.ty.name()
                ),
            );
        }
        if tiers.get_ref().is_empty() {
            self.error_span(
                tiers,
                "`tiers` is empty; give at least one { label = \"...\", min = ... }",
            );
        }
        let mut list: Vec<(f64, Arc<str>)> = Vec::new();
        for t in tiers.get_ref() {
            let t = t.get_ref();
            if list.iter().any(|(m, _)| *m == *t.min.get_ref()) {
                self.error_span(
                    &t.min,
                    format!(
                        "two tiers have min = {}; each tier needs its own threshold",
                        t.min.get_ref()
                    ),
                );
            }
            list.push((*t.min.get_ref(), Arc::from(t.label.get_ref().as_str())));
        }
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !value.shape.is_const() {
            let pairs = list
                .iter()
                .map(|(min, _)| (value.c.clone(), CExpr::Const(Value::Num(*min))))
                .collect();
            let probe = if value.shape == Shape::Unknown {
                Probe::Changing(pairs)
            } else {
                Probe::Compare(pairs)
            };
            self.probes.push((self.current, probe));
        }
        let shape = Shape::Const;
        Some((
            NodeKind::Tier {
                of: value.c,
                tiers: list,
            },
            Type::Str,
            shape,
        ))
    }

    pub(super) fn nearest(&mut self, tag: &RawTag) -> Option<(NodeKind, Type, Shape)> {
        let (Some(features), Some(centroids)) = (&tag.features, &tag.centroids) else {
            self.error_span(&tag.name, "kind \"nearest\" needs `features = [\"tag\", ...]` and `centroids = { name = [numbers], ... }`");
            return None;
        };
        let mut ids = Vec::new();
        let mut shape = Shape::Const;
        for f in features.get_ref() {
            match self.ids.get(f.get_ref()).copied() {
                Some(id) if !self.is_segment[id] => {
                    if !self.types[id].is(Type::Num) {
                        self.error_span(
                            f,
                            format!(
                                "feature {:?} is {}, but features must be numbers",
                                f.get_ref(),
                                self.types[id].name()
                            ),
                        );
                    }
                    if !self.shapes[id].is_const() {
                        shape = Shape::Unknown;
                    }
                    ids.push(id);
                }
                _ => {
                    let hint = self.suggest(f.get_ref());
                    self.error_span(f, format!("feature {:?} is not a tag{hint}", f.get_ref()));
                }
            }
        }
        if ids.is_empty() {
            self.error_span(features, "`features` needs at least one tag");
        }
        let mut list: Vec<(Arc<str>, Vec<f64>)> = Vec::new();
        if centroids.get_ref().is_empty() {
            self.error_span(
                centroids,
                "`centroids` is empty; give at least one name = [numbers]",
            );
        }
        for (name, point) in centroids.get_ref() {
            if point.get_ref().len() != features.get_ref().len() {
                self.error_span(
                    point,
                    format!(
                        "centroid {name:?} has {} coordinates but there are {} features",
                        point.get_ref().len(),
                        features.get_ref().len()
                    ),
                );
            }
            list.push((Arc::from(name.as_str()), point.get_ref().clone()));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Some((
            NodeKind::Nearest {
                features: ids,
                centroids: list,
            },
            Type::Str,
            shape,
        ))
    }
}

pub(super) fn agg_kind(kind: &str) -> Option<AggKind> {
    Some(match kind {
        "count" => AggKind::Count,
        "sum" => AggKind::Sum,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        "avg" => AggKind::Avg,
        "distinct" => AggKind::Distinct,
        "top" => AggKind::Top,
        "first" => AggKind::First,
        "last" => AggKind::Last,
        "first_time" => AggKind::FirstTime,
        "last_time" => AggKind::LastTime,
        _ => return None,
    })
}
