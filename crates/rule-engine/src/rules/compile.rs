//! TOML source → validated [`RuleSet`]: names, types, evaluation order, time shapes, probes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::error::LineIndex;
use super::raw::{EventSelector, RawRules, RawSegment, RawTag};
use super::{
    AggKind, Aggregate, Node, NodeId, NodeKind, Probe, ProbeInfo, RuleError, RuleErrors, RuleSet,
    Segment, Shape,
};
use crate::cexpr::{ArithOp, CExpr, CmpOp, Func};
use crate::expr::{self, BinaryOp, Expr, ExprKind, UnaryOp};
use crate::time::{parse_duration, Unit, Window, Zone, DAY_MS};
use crate::value::Value;

const RESERVED: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "is",
    "null",
    "true",
    "false",
    "between",
    "properties",
    "event",
    "now",
];
const FUNCTIONS: &str = "now, coalesce, days_since, hour_of_day, day_of_week, abs, least, greatest, round, ln, exp, sigmoid";
const WINDOW_KINDS: &str = "count, sum, min, max, avg, distinct and top";
const DEFAULT_DEDUP_WINDOW_MS: i64 = 7 * DAY_MS;

/// Static type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Num,
    Str,
    Bool,
    Ts,
    Dur,
    List,
    /// Known only at run time (event properties, profile attributes, first/last values).
    Any,
    /// The `NULL` literal.
    Null,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Num => "a number",
            Type::Str => "a string",
            Type::Bool => "a boolean",
            Type::Ts => "a timestamp",
            Type::Dur => "a duration",
            Type::List => "a list",
            Type::Any => "a value",
            Type::Null => "NULL",
        }
    }

    fn flexible(self) -> bool {
        matches!(self, Type::Any | Type::Null)
    }

    fn is(self, want: Type) -> bool {
        self == want || self.flexible()
    }

    fn comparable(a: Type, b: Type) -> bool {
        a == b || a.flexible() || b.flexible()
    }

    /// Common type of alternatives (`coalesce`, `case`): mixed types become `Any`.
    fn join(types: impl IntoIterator<Item = Type>) -> Type {
        let mut out = Type::Null;
        for t in types {
            out = match (out, t) {
                (Type::Null, t) => t,
                (o, Type::Null) => o,
                (o, t) if o == t => o,
                _ => Type::Any,
            };
        }
        out
    }
}

/// A compiled expression with what the compiler knows about it.
struct Typed {
    c: CExpr,
    ty: Type,
    shape: Shape,
}

impl Typed {
    fn poisoned() -> Typed {
        Typed {
            c: CExpr::Const(Value::Null),
            ty: Type::Any,
            shape: Shape::Const,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// A `where` filter: sees only the event.
    Filter,
    /// A tag or segment expression.
    Rule,
}

/// One declared (or implicit) tag or segment, before compilation.
struct Decl<'r> {
    name: String,
    name_offset: usize,
    source: DeclSource<'r>,
    /// Names this declaration reads (tags and segments; only those that exist).
    deps: Vec<String>,
}

enum DeclSource<'r> {
    Tag(&'r RawTag),
    Segment(&'r RawSegment),
    /// `first_seen` / `last_seen` used without being defined.
    Implicit(AggKind),
}

impl DeclSource<'_> {
    fn what(&self) -> &'static str {
        match self {
            DeclSource::Segment(_) => "segment",
            _ => "tag",
        }
    }
}

struct Compiler<'s> {
    lines: LineIndex<'s>,
    errors: Vec<RuleError>,
    /// The rule being compiled, for error messages.
    rule: String,
    ids: HashMap<String, NodeId>,
    types: Vec<Type>,
    shapes: Vec<Shape>,
    is_segment: Vec<bool>,
    /// Probes with the node that owns them.
    probes: Vec<(NodeId, Probe)>,
    current: NodeId,
}

pub(super) fn compile(source: &str, path: &str) -> Result<RuleSet, RuleErrors> {
    let mut c = Compiler {
        lines: LineIndex::new(source),
        errors: Vec::new(),
        rule: "rules file".into(),
        ids: HashMap::new(),
        types: Vec::new(),
        shapes: Vec::new(),
        is_segment: Vec::new(),
        probes: Vec::new(),
        current: 0,
    };
    let fail = |errors: Vec<RuleError>| RuleErrors {
        path: path.to_string(),
        errors,
    };
    let raw: RawRules = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim().replace('\n', " ");
            let hint = if message.contains("unknown field") {
                "; check the spelling against the rules reference in the README"
            } else {
                ""
            };
            c.error_at(offset, format!("{message}{hint}"));
            return Err(fail(c.errors));
        }
    };
    match c.build(&raw, source) {
        Some(rules) if c.errors.is_empty() => Ok(rules),
        _ => Err(fail(c.errors)),
    }
}

impl<'s> Compiler<'s> {
    fn error_at(&mut self, offset: usize, message: impl Into<String>) {
        let (line, column) = self.lines.position(offset);
        self.errors.push(RuleError {
            line,
            column,
            rule: self.rule.clone(),
            message: message.into(),
        });
    }

    fn error_span<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.error_at(spanned.span().start, message);
    }

    fn build(&mut self, raw: &RawRules, source: &str) -> Option<RuleSet> {
        let zone = match &raw.time_zone {
            None => Zone::utc(),
            Some(name) => Zone::parse(name.get_ref().trim()).unwrap_or_else(|| {
                self.error_span(name, format!("unknown time zone {:?}; use an IANA name such as \"Asia/Shanghai\" or \"UTC\"", name.get_ref()));
                Zone::utc()
            }),
        };
        let dedup_window_ms = match &raw.dedup_window {
            None => DEFAULT_DEDUP_WINDOW_MS,
            Some(text) => parse_duration(text.get_ref()).unwrap_or_else(|e| {
                self.error_span(
                    text,
                    format!("dedup_window: {e} (\"0d\" turns deduplication off)"),
                );
                DEFAULT_DEDUP_WINDOW_MS
            }),
        };

        let mut decls = self.declare(raw);
        self.order(&mut decls);
        let order = self.topological_order(&decls);

        // Aggregates get their state slot in file order, so that state layout follows the file.
        let mut agg_slot: HashMap<usize, usize> = HashMap::new();
        for (i, d) in decls.iter().enumerate() {
            let is_agg = match &d.source {
                DeclSource::Tag(t) => agg_kind(t.kind.get_ref()).is_some(),
                DeclSource::Implicit(_) => true,
                DeclSource::Segment(_) => false,
            };
            if is_agg {
                let slot = agg_slot.len();
                agg_slot.insert(i, slot);
            }
        }
        let mut aggregates: Vec<Option<Aggregate>> = (0..agg_slot.len()).map(|_| None).collect();

        for (id, &decl_index) in order.iter().enumerate() {
            self.ids.insert(decls[decl_index].name.clone(), id);
        }
        let mut nodes = Vec::with_capacity(order.len());
        for (id, &decl_index) in order.iter().enumerate() {
            let decl = &decls[decl_index];
            self.current = id;
            self.rule = format!("{} '{}'", decl.source.what(), decl.name);
            let (kind, ty, shape) = match &decl.source {
                DeclSource::Implicit(kind) => {
                    let slot = agg_slot[&decl_index];
                    aggregates[slot] = Some(Aggregate {
                        name: Arc::from(decl.name.as_str()),
                        kind: *kind,
                        property: None,
                        filter: None,
                        window: None,
                        k: 1,
                        signature: format!("{kind:?}|*|||none|1"),
                    });
                    (NodeKind::Aggregate(slot), Type::Ts, Shape::Const)
                }
                DeclSource::Segment(seg) => {
                    let t = self.condition(&seg.when, "when");
                    let shape = self.settled(&t);
                    (NodeKind::Segment(t.c), Type::Bool, shape)
                }
                DeclSource::Tag(tag) => match agg_kind(tag.kind.get_ref()) {
                    Some(kind) => {
                        let slot = agg_slot[&decl_index];
                        let (agg, ty) = self.aggregate(tag, kind);
                        aggregates[slot] = Some(agg);
                        (NodeKind::Aggregate(slot), ty, Shape::Const)
                    }
                    None => self.derived(tag),
                },
            };
            self.types.push(ty);
            self.shapes.push(shape);
            self.is_segment
                .push(matches!(decl.source, DeclSource::Segment(_)));
            let (description, kind_name, window_text) = match &decl.source {
                DeclSource::Tag(t) => (
                    t.description.clone().unwrap_or_default(),
                    Arc::from(t.kind.get_ref().as_str()),
                    t.window.as_ref().map(|w| w.get_ref().trim().to_string()),
                ),
                DeclSource::Segment(s) => (
                    s.description.clone().unwrap_or_default(),
                    Arc::from("segment"),
                    None,
                ),
                DeclSource::Implicit(k) => (String::new(), Arc::from(k.as_str()), None),
            };
            nodes.push(Node {
                name: Arc::from(decl.name.as_str()),
                kind,
                shape,
                hidden: matches!(decl.source, DeclSource::Implicit(_)),
                description,
                kind_name,
                window_text,
            });
        }
        let _ = source;
        if !self.errors.is_empty() {
            return None;
        }
        let aggregates: Vec<Aggregate> = aggregates
            .into_iter()
            .map(|a| a.expect("every aggregate slot is compiled"))
            .collect();
        self.finish(
            zone,
            dedup_window_ms,
            &decls,
            &order,
            nodes,
            aggregates,
            source,
        )
    }

    /// Collects declarations, checking names and duplicates, and reads their dependencies.
    fn declare<'r>(&mut self, raw: &'r RawRules) -> Vec<Decl<'r>> {
        let mut decls: Vec<Decl<'r>> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let sources = raw
            .tag
            .iter()
            .map(|t| (&t.get_ref().name, DeclSource::Tag(t.get_ref())))
            .chain(
                raw.segment
                    .iter()
                    .map(|s| (&s.get_ref().name, DeclSource::Segment(s.get_ref()))),
            );
        for (name, source) in sources {
            self.rule = format!("{} '{}'", source.what(), name.get_ref());
            let text = name.get_ref().clone();
            if !is_identifier(&text) {
                self.error_span(name, format!("{text:?} is not a valid name; use letters, digits and underscores, starting with a letter or underscore"));
                continue;
            }
            if RESERVED.contains(&text.to_ascii_lowercase().as_str()) {
                self.error_span(name, format!("{text:?} is a reserved word of the expression language; choose another name"));
                continue;
            }
            if let Some(&first) = seen.get(&text) {
                let (line, _) = self.lines.position(first);
                self.error_span(name, format!("the name {text:?} is already used on line {line}; tag and segment names must be unique"));
                continue;
            }
            seen.insert(text.clone(), name.span().start);
            decls.push(Decl {
                name: text,
                name_offset: name.span().start,
                source,
                deps: Vec::new(),
            });
        }
        decls
    }

    /// Fills in dependencies and adds implicit `first_seen`/`last_seen` where they are read.
    fn order(&mut self, decls: &mut Vec<Decl<'_>>) {
        let mut referenced: Vec<Vec<String>> = Vec::new();
        for d in decls.iter() {
            let mut names = Vec::new();
            for text in rule_expressions(&d.source) {
                if let Ok(e) = expr::parse(text) {
                    collect_idents(&e, &mut names);
                }
            }
            if let DeclSource::Tag(t) = d.source {
                if let Some(features) = &t.features {
                    names.extend(features.get_ref().iter().map(|f| f.get_ref().clone()));
                }
            }
            referenced.push(names);
        }
        let declared: HashSet<String> = decls.iter().map(|d| d.name.clone()).collect();
        for (implicit, kind) in [
            ("first_seen", AggKind::FirstTime),
            ("last_seen", AggKind::LastTime),
        ] {
            if !declared.contains(implicit) && referenced.iter().flatten().any(|n| n == implicit) {
                decls.push(Decl {
                    name: implicit.into(),
                    name_offset: 0,
                    source: DeclSource::Implicit(kind),
                    deps: Vec::new(),
                });
            }
        }
        let declared: HashSet<String> = decls.iter().map(|d| d.name.clone()).collect();
        for (d, names) in decls.iter_mut().zip(referenced) {
            let mut deps: Vec<String> =
                names.into_iter().filter(|n| declared.contains(n)).collect();
            deps.dedup();
            d.deps = deps;
        }
    }

    /// Depth-first order in which every declaration follows what it reads; reports cycles.
    fn topological_order(&mut self, decls: &[Decl<'_>]) -> Vec<usize> {
        let index: HashMap<&str, usize> = decls
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; decls.len()];
        let mut order = Vec::with_capacity(decls.len());
        let mut stack: Vec<usize> = Vec::new();
        fn visit(
            c: &mut Compiler<'_>,
            i: usize,
            decls: &[Decl<'_>],
            index: &HashMap<&str, usize>,
            state: &mut [u8],
            stack: &mut Vec<usize>,
            order: &mut Vec<usize>,
        ) {
            state[i] = 1;
            stack.push(i);
            for dep in &decls[i].deps {
                let j = index[dep.as_str()];
                match state[j] {
                    0 => visit(c, j, decls, index, state, stack, order),
                    1 => {
                        let from = stack.iter().position(|&s| s == j).unwrap_or(0);
                        let mut path: Vec<&str> = stack[from..]
                            .iter()
                            .map(|&s| decls[s].name.as_str())
                            .collect();
                        path.push(decls[j].name.as_str());
                        c.rule = format!("{} '{}'", decls[i].source.what(), decls[i].name);
                        let message = format!("cycle between rules: {}; a tag or segment cannot depend on itself, directly or through others", path.join(" -> "));
                        c.error_at(decls[i].name_offset, message);
                    }
                    _ => {}
                }
            }
            stack.pop();
            state[i] = 2;
            order.push(i);
        }
        for i in 0..decls.len() {
            if state[i] == 0 {
                visit(self, i, decls, &index, &mut state, &mut stack, &mut order);
            }
        }
        order
    }

    fn parse(&mut self, text: &Spanned<String>) -> Option<(Expr, usize)> {
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

    fn compile_text(&mut self, text: &Spanned<String>, ctx: Ctx) -> Typed {
        match self.parse(text) {
            Some((e, base)) => self.expr(&e, base, ctx),
            None => Typed::poisoned(),
        }
    }

    /// An expression that must be a condition (a segment's `when`, a `case` when, a `where`).
    /// A condition that chooses (a segment's membership, a `case` branch) is constant between
    /// probe changes. Conditions are built from decisions, which register their own probes, so
    /// this only guards the rule: any other moving condition gets a probe of its own.
    fn settled(&mut self, condition: &Typed) -> Shape {
        if !condition.shape.is_const() {
            let pair = (condition.c.clone(), CExpr::Const(Value::Bool(true)));
            self.probes
                .push((self.current, Probe::Changing(vec![pair])));
        }
        Shape::Const
    }

    fn condition(&mut self, text: &Spanned<String>, field: &str) -> Typed {
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

    fn forbid<T>(&mut self, field: &Option<Spanned<T>>, name: &str, kind: &str, why: &str) {
        if let Some(f) = field {
            self.error_span(
                f,
                format!("`{name}` does not apply to kind \"{kind}\"; {why}"),
            );
        }
    }

    fn aggregate(&mut self, tag: &RawTag, kind: AggKind) -> (Aggregate, Type) {
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

    fn derived(&mut self, tag: &RawTag) -> (NodeKind, Type, Shape) {
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

    fn literal(&mut self, v: &Spanned<toml::Value>) -> Typed {
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

    fn case(&mut self, tag: &RawTag) -> Option<(NodeKind, Type, Shape)> {
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

    fn tier(&mut self, tag: &RawTag) -> Option<(NodeKind, Type, Shape)> {
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

    fn nearest(&mut self, tag: &RawTag) -> Option<(NodeKind, Type, Shape)> {
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

    fn suggest(&self, name: &str) -> String {
        let best = self
            .ids
            .keys()
            .map(|k| (edit_distance(k, name), k))
            .filter(|(d, _)| *d <= 2)
            .min();
        match best {
            Some((_, k)) => format!("; did you mean {k:?}?"),
            None => String::new(),
        }
    }

    fn expr(&mut self, e: &Expr, base: usize, ctx: Ctx) -> Typed {
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

    fn ident(&mut self, name: &str, at: usize, ctx: Ctx) -> Typed {
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

    fn expect_bool(&mut self, t: &Typed, at: usize, what: &str) {
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
    fn decision(&mut self, pairs: &[(&Typed, &Typed)]) -> Shape {
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

    fn binary(&mut self, op: BinaryOp, l: Typed, r: Typed, at: usize) -> Typed {
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

    fn call(&mut self, name: &str, args: &[Expr], base: usize, at: usize, ctx: Ctx) -> Typed {
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

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        zone: Zone,
        dedup_window_ms: i64,
        decls: &[Decl<'_>],
        order: &[usize],
        nodes: Vec<Node>,
        aggregates: Vec<Aggregate>,
        source: &str,
    ) -> Option<RuleSet> {
        let id_of_decl: HashMap<usize, NodeId> =
            order.iter().enumerate().map(|(id, &d)| (d, id)).collect();
        // Reachability from segments, following dependencies.
        let mut reach = vec![false; nodes.len()];
        let mut stack: Vec<NodeId> = (0..nodes.len()).filter(|&i| self.is_segment[i]).collect();
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut reach[id], true) {
                continue;
            }
            for dep in &decls[order[id]].deps {
                stack.push(self.ids[dep]);
            }
        }
        if !self.errors.is_empty() {
            return None;
        }
        let moving_nodes = (0..nodes.len())
            .filter(|&i| reach[i] && !nodes[i].shape.is_const())
            .collect();
        let windowed_for_segments: Vec<usize> = (0..nodes.len())
            .filter(|&i| reach[i])
            .filter_map(|i| match nodes[i].kind {
                NodeKind::Aggregate(a) if aggregates[a].window.is_some() => Some(a),
                _ => None,
            })
            .collect();
        let node_deps: Vec<Vec<NodeId>> = nodes.iter().map(|n| node_refs(&n.kind)).collect();
        let reads_now: Vec<bool> = nodes.iter().map(|n| kind_reads_now(&n.kind)).collect();
        let mut window_units: Vec<Unit> = Vec::new();
        for &slot in &windowed_for_segments {
            if let Some(w) = aggregates[slot].window {
                if !window_units.contains(&w.unit) {
                    window_units.push(w.unit);
                }
            }
        }
        let sources = time_sources(&nodes);
        // Probes in evaluation order: up to the first change of one, every later probe's
        // operands are as constant or monotone as their shapes say.
        let mut probes = std::mem::take(&mut self.probes);
        probes.sort_by_key(|(owner, _)| *owner);
        let probes = probes
            .into_iter()
            .filter(|(owner, _)| reach[*owner])
            .map(|(_, probe)| probe_info(probe, &nodes, &sources))
            .collect();

        let mut by_event: HashMap<String, Vec<usize>> = HashMap::new();
        let mut all_events = Vec::new();
        for (i, d) in decls.iter().enumerate() {
            let Some(&id) = id_of_decl.get(&i) else {
                continue;
            };
            let NodeKind::Aggregate(slot) = nodes[id].kind else {
                continue;
            };
            let names: Vec<String> = match &d.source {
                DeclSource::Implicit(_) => vec!["*".into()],
                DeclSource::Tag(t) => match t.event.as_ref().map(|e| e.get_ref()) {
                    Some(EventSelector::One(n)) => vec![n.clone()],
                    Some(EventSelector::Many(ns)) => ns.clone(),
                    None => vec![],
                },
                DeclSource::Segment(_) => vec![],
            };
            if names.iter().any(|n| n == "*") {
                all_events.push(slot);
            } else {
                let mut names = names;
                names.sort();
                names.dedup();
                for n in names {
                    by_event.entry(n).or_default().push(slot);
                }
            }
        }
        let tags = decls
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.source, DeclSource::Tag(_)))
            .map(|(i, _)| id_of_decl[&i])
            .collect();
        let segments = decls
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d.source {
                DeclSource::Segment(seg) => {
                    let node = id_of_decl[&i];
                    let mut direct_tags = Vec::new();
                    let mut names = Vec::new();
                    if let Ok(e) = expr::parse(seg.when.get_ref()) {
                        collect_idents(&e, &mut names);
                    }
                    for n in names {
                        if let Some(&id) = self.ids.get(&n) {
                            if !self.is_segment[id] && !direct_tags.contains(&id) {
                                direct_tags.push(id);
                            }
                        }
                    }
                    Some(Segment {
                        name: Arc::from(d.name.as_str()),
                        description: seg.description.clone().unwrap_or_default(),
                        emit: seg.emit.unwrap_or(true),
                        when: seg.when.get_ref().clone(),
                        node,
                        direct_tags,
                    })
                }
                _ => None,
            })
            .collect();
        let fingerprint = hex::encode(Sha256::digest(source.as_bytes()));
        Some(RuleSet {
            zone,
            dedup_window_ms,
            nodes,
            tags,
            segments,
            aggregates,
            by_event,
            all_events,
            probes,
            moving_nodes,
            needed: reach,
            node_deps,
            reads_now,
            window_units,
            windowed_for_segments,
            fingerprint,
        })
    }
}

fn agg_kind(kind: &str) -> Option<AggKind> {
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

fn arith_type(op: ArithOp, a: Type, b: Type) -> Option<Type> {
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

/// Every expression text of a declaration whose names count as dependencies.
fn rule_expressions<'r>(source: &DeclSource<'r>) -> Vec<&'r str> {
    let mut out = Vec::new();
    match source {
        DeclSource::Segment(s) => out.push(s.when.get_ref().as_str()),
        DeclSource::Tag(t) => {
            for e in [&t.expr, &t.else_expr, &t.of].into_iter().flatten() {
                out.push(e.get_ref().as_str());
            }
            if let Some(cases) = &t.cases {
                for c in cases.get_ref() {
                    out.push(c.get_ref().when.get_ref().as_str());
                    if let Some(v) = &c.get_ref().value_expr {
                        out.push(v.get_ref().as_str());
                    }
                }
            }
        }
        DeclSource::Implicit(_) => {}
    }
    out
}

fn collect_idents(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Ident(n) if !out.contains(n) => out.push(n.clone()),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| collect_idents(a, out)),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => collect_idents(expr, out),
        ExprKind::Binary { left, right, .. } => {
            collect_idents(left, out);
            collect_idents(right, out);
        }
        ExprKind::In { expr, list, .. } => {
            collect_idents(expr, out);
            list.iter().for_each(|a| collect_idents(a, out));
        }
        ExprKind::Between {
            expr, low, high, ..
        } => {
            collect_idents(expr, out);
            collect_idents(low, out);
            collect_idents(high, out);
        }
        _ => {}
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// How a value depends on time within an interval where every probe keeps its outcome.
#[derive(Debug, Clone, PartialEq)]
enum TimeSource {
    None,
    /// Only through `days_since` of this (time-independent) argument.
    Days(CExpr),
    Continuous,
}

impl TimeSource {
    fn join(self, other: TimeSource) -> TimeSource {
        match (self, other) {
            (TimeSource::None, x) | (x, TimeSource::None) => x,
            (TimeSource::Days(a), TimeSource::Days(b)) if a == b => TimeSource::Days(a),
            _ => TimeSource::Continuous,
        }
    }
}

/// The time source of an expression's value. Decisions (comparisons, logic) contribute nothing:
/// their changes are probes of their own, visited earlier.
fn source_of(e: &CExpr, nodes: &[TimeSource]) -> TimeSource {
    match e {
        CExpr::Now => TimeSource::Continuous,
        CExpr::Ref(id) => nodes.get(*id).cloned().unwrap_or(TimeSource::None),
        CExpr::Call(Func::DaysSince, args) => match source_of(&args[0], nodes) {
            TimeSource::None => TimeSource::Days(args[0].clone()),
            _ => TimeSource::Continuous,
        },
        CExpr::Call(Func::HourOfDay | Func::DayOfWeek, _) => TimeSource::None,
        CExpr::Cmp(..)
        | CExpr::And(..)
        | CExpr::Or(..)
        | CExpr::Not(_)
        | CExpr::In { .. }
        | CExpr::Between { .. }
        | CExpr::IsNull { .. } => TimeSource::None,
        _ => {
            let mut out = TimeSource::None;
            e.for_each_child(&mut |c| {
                let s = source_of(c, nodes);
                out = std::mem::replace(&mut out, TimeSource::None).join(s);
            });
            out
        }
    }
}

fn time_sources(nodes: &[Node]) -> Vec<TimeSource> {
    let mut out: Vec<TimeSource> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let s = match &node.kind {
            NodeKind::Expr(e) => source_of(e, &out),
            // Which branch is taken only changes at the `when` probes; within, the value moves
            // like the branch's value.
            NodeKind::Case { cases, otherwise } => cases
                .iter()
                .fold(source_of(otherwise, &out), |acc, (_, v)| {
                    acc.join(source_of(v, &out))
                }),
            NodeKind::Nearest { .. } if !node.shape.is_const() => TimeSource::Continuous,
            _ => TimeSource::None,
        };
        out.push(s);
    }
    out
}

/// Whether a node's own definition reads engine time: `now()`, or `days_since`, which counts
/// days up to it.
fn kind_reads_now(kind: &NodeKind) -> bool {
    fn reads(e: &CExpr) -> bool {
        let mut found = matches!(e, CExpr::Now | CExpr::Call(Func::DaysSince, _));
        e.for_each_child(&mut |c| found |= reads(c));
        found
    }
    match kind {
        NodeKind::Expr(e) | NodeKind::Segment(e) | NodeKind::Tier { of: e, .. } => reads(e),
        NodeKind::Case { cases, otherwise } => {
            reads(otherwise) || cases.iter().any(|(w, v)| reads(w) || reads(v))
        }
        NodeKind::Nearest { .. } | NodeKind::Aggregate(_) | NodeKind::Profile(_) => false,
    }
}

fn node_refs(kind: &NodeKind) -> Vec<NodeId> {
    let mut out = Vec::new();
    match kind {
        NodeKind::Expr(e) | NodeKind::Segment(e) | NodeKind::Tier { of: e, .. } => e.refs(&mut out),
        NodeKind::Case { cases, otherwise } => {
            for (w, v) in cases {
                w.refs(&mut out);
                v.refs(&mut out);
            }
            otherwise.refs(&mut out);
        }
        NodeKind::Nearest { features, .. } => out.extend(features),
        NodeKind::Aggregate(_) | NodeKind::Profile(_) => {}
    }
    out
}

fn probe_info(probe: Probe, nodes: &[Node], sources: &[TimeSource]) -> ProbeInfo {
    let mut refs = Vec::new();
    let mut source = TimeSource::None;
    match &probe {
        Probe::Compare(pairs) | Probe::Changing(pairs) => {
            for (a, b) in pairs {
                a.refs(&mut refs);
                b.refs(&mut refs);
                source = source
                    .join(source_of(a, sources))
                    .join(source_of(b, sources));
            }
        }
        Probe::LocalBucket { arg, .. } => {
            arg.refs(&mut refs);
            source = TimeSource::Continuous;
        }
    }
    // Moving nodes reached through moving nodes (a constant node's value is reused as is).
    let mut moving: Vec<NodeId> = Vec::new();
    while let Some(id) = refs.pop() {
        if !nodes[id].shape.is_const() && !moving.contains(&id) {
            moving.push(id);
            refs.extend(node_refs(&nodes[id].kind));
        }
    }
    moving.sort_unstable();
    // Bisection over day steps needs a monotone outcome.
    let day_steps = match source {
        TimeSource::Days(arg) if !matches!(probe, Probe::Changing(_)) => Some(arg),
        _ => None,
    };
    let linear = match &probe {
        Probe::Compare(pairs) if moving.is_empty() => match pairs.as_slice() {
            [(a, b)] => match (now_coefficient(a, nodes), now_coefficient(b, nodes)) {
                (Some(ka), Some(kb)) if ka != kb => Some(ka - kb),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    ProbeInfo {
        probe,
        moving,
        day_steps,
        linear,
    }
}

/// The coefficient of `now()` in `e` when `e` is a sum of `now()`, constants and references to
/// nodes that do not move with time (so its value at `t` is exactly `value(now) + k·(t - now)`);
/// None for any other shape.
fn now_coefficient(e: &CExpr, nodes: &[Node]) -> Option<i64> {
    match e {
        CExpr::Now => Some(1),
        CExpr::Const(_) => Some(0),
        CExpr::Ref(id) => nodes.get(*id).filter(|n| n.shape.is_const()).map(|_| 0),
        CExpr::Neg(x) => now_coefficient(x, nodes).map(|k| -k),
        CExpr::Arith(ArithOp::Add, x, y) => {
            Some(now_coefficient(x, nodes)? + now_coefficient(y, nodes)?)
        }
        CExpr::Arith(ArithOp::Sub, x, y) => {
            Some(now_coefficient(x, nodes)? - now_coefficient(y, nodes)?)
        }
        _ => None,
    }
}
