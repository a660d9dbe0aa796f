//! TOML source → validated [`RuleSet`]: names, types, evaluation order, time shapes, probes.
//!
//! [`declare`] names the tags and segments and orders them by dependency; [`kinds`] compiles
//! each tag kind; [`typing`] type-checks expressions and works out how each value moves with
//! time, registering a probe at each decision that time alone can change; [`probes`] analyses
//! those probes once every node is known (what they read, closed forms, day steps).

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

mod declare;
mod inert;
mod kinds;
mod probes;
mod typing;

use declare::collect_idents;
use kinds::agg_kind;
use probes::{kind_reads_now, node_refs, probe_info, time_sources};

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
        let windowed: Vec<usize> = (0..nodes.len())
            .filter(|&i| reach[i])
            .filter_map(|i| match nodes[i].kind {
                NodeKind::Aggregate(a) if aggregates[a].window.is_some() => Some(a),
                _ => None,
            })
            .collect();
        let reads_now: Vec<bool> = nodes.iter().map(|n| kind_reads_now(&n.kind)).collect();
        let mut window_units: Vec<Unit> = Vec::new();
        for &slot in &windowed {
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
        let node_deps: Vec<Vec<NodeId>> = nodes.iter().map(|n| node_refs(&n.kind)).collect();
        let moved_by_windows = inert::moved_by_windows(&nodes, &node_deps, &aggregates);
        let probes = probes
            .into_iter()
            .filter(|(owner, _)| reach[*owner])
            .map(|(owner, probe)| {
                let mut info = probe_info(probe, &nodes, &sources);
                info.inert =
                    inert::probe_guard(owner, &info, &nodes, &node_deps, &moved_by_windows);
                info
            })
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
        let segments: Vec<Segment> = decls
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
        let windowed_for_segments =
            inert::windowed_slots(&windowed, &nodes, &node_deps, &aggregates, &segments);
        let fingerprint = hex::encode(Sha256::digest(source.as_bytes()));
        let track_properties = super::track_properties(&aggregates);
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
            track_properties,
        })
    }
}
