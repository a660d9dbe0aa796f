//! Time-shape analysis of the probes, once every node is known: the moving nodes each reads,
//! whether its outcome steps by whole days of its timestamps, and closed forms.

use super::*;

/// How a value depends on time within an interval where every probe keeps its outcome.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TimeSource {
    None,
    /// Only through `days_since` of these (time-independent) arguments, each listed once.
    Days(Vec<CExpr>),
    Continuous,
}

impl TimeSource {
    fn join(self, other: TimeSource) -> TimeSource {
        match (self, other) {
            (TimeSource::None, x) | (x, TimeSource::None) => x,
            (TimeSource::Days(mut a), TimeSource::Days(b)) => {
                for arg in b {
                    if !a.contains(&arg) {
                        a.push(arg);
                    }
                }
                TimeSource::Days(a)
            }
            _ => TimeSource::Continuous,
        }
    }
}

/// The time source of an expression's value. Decisions (comparisons, logic) contribute nothing:
/// their changes are probes of their own, visited earlier.
pub(super) fn source_of(e: &CExpr, nodes: &[TimeSource]) -> TimeSource {
    match e {
        CExpr::Now => TimeSource::Continuous,
        CExpr::Ref(id) => nodes.get(*id).cloned().unwrap_or(TimeSource::None),
        CExpr::Call(Func::DaysSince, args) => match source_of(&args[0], nodes) {
            TimeSource::None => TimeSource::Days(vec![args[0].clone()]),
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

pub(super) fn time_sources(nodes: &[Node]) -> Vec<TimeSource> {
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
            // The nearest centroid changes only when a feature does.
            NodeKind::Nearest { features, .. } => features
                .iter()
                .fold(TimeSource::None, |acc, &f| acc.join(out[f].clone())),
            _ => TimeSource::None,
        };
        out.push(s);
    }
    out
}

/// Whether a node's own definition reads engine time: `now()`, or `days_since`, which counts
/// days up to it.
pub(super) fn kind_reads_now(kind: &NodeKind) -> bool {
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

pub(super) fn node_refs(kind: &NodeKind) -> Vec<NodeId> {
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

pub(super) fn probe_info(probe: Probe, nodes: &[Node], sources: &[TimeSource]) -> ProbeInfo {
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
    let step_args = match source {
        TimeSource::Days(args) => args,
        _ => Vec::new(),
    };
    let day_steps = match step_args.as_slice() {
        [arg] => Some(arg.clone()),
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
        step_args,
        linear,
        inert: None,
    }
}

/// The coefficient of `now()` in `e` when `e` is a sum of `now()`, constants and references to
/// nodes that do not move with time (so its value at `t` is exactly `value(now) + k·(t - now)`);
/// None for any other shape.
pub(super) fn now_coefficient(e: &CExpr, nodes: &[Node]) -> Option<i64> {
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
