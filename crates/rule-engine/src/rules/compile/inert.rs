//! When a windowed aggregate losing buckets cannot change a segment, so the timer search can
//! skip those instants.
//!
//! With no new event, a `count`, `distinct` or non-negative `sum` over a window only falls as
//! buckets leave it, and a `max` falls or becomes NULL. A segment that reads such an aggregate
//! only through comparisons with values that do not depend on it (`views_1d >= 10`,
//! `orders_7d = 0`), combined with AND, OR and NOT, moves one way as the aggregate falls: when
//! every such comparison grows truer with the aggregate (`>`, `>=`), a segment that is false now
//! stays false while only the aggregate falls; when every one grows truer as it falls (`<`,
//! `<=`, `= 0` of a count), a segment that is true now stays true. SQL's three-valued AND, OR and
//! NOT are monotone in false < NULL < true, and a comparison that turns NULL because a `max` lost
//! its last value cannot make a false segment true (they are monotone in information order
//! too), which is why a `max` is only skipped for segments that are false now.
//!
//! The same holds for a probe: a single comparison `a <op> b` whose sides differ linearly in
//! time (`last_seen > now() - 2d`) moves one way as time passes (this one from true to false).
//! When the segment that owns it reads it only through AND, OR and NOT, and no other node reads
//! that segment, a segment that is false now stays false while the comparison falls (true
//! while it rises), and the probe's changes are skipped.
//!
//! A segment that reads the aggregate any other way (through another tag, arithmetic, `IN`,
//! `BETWEEN`, a function, both sides of a comparison) gives no guard: every lost bucket stays a
//! candidate. The guard only removes candidates at which nothing can change, so timers stay
//! exact: the timer search re-evaluates everything at the next candidate it keeps.

use super::*;
use crate::rules::{InertGuard, ProbeInfo, WindowedSlot};

/// How an expression's truth (false < NULL < true) moves as one aggregate's value grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// The expression does not read the aggregate.
    Not,
    /// Non-decreasing in the aggregate.
    Rising,
    /// Non-increasing in the aggregate.
    Falling,
    /// Anything else.
    Any,
}

impl Reads {
    fn and(self, other: Reads) -> Reads {
        match (self, other) {
            (Reads::Not, x) | (x, Reads::Not) => x,
            (x, y) if x == y => x,
            _ => Reads::Any,
        }
    }

    fn flipped(self) -> Reads {
        match self {
            Reads::Rising => Reads::Falling,
            Reads::Falling => Reads::Rising,
            other => other,
        }
    }
}

/// How an aggregate kind moves when buckets leave its window and no event comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drift {
    /// Falls, never NULL, never negative (`count`, `distinct`; `sum` while no live bucket is
    /// negative).
    Falls,
    /// Falls or becomes NULL (`max`).
    FallsOrNull,
}

fn drift(kind: AggKind) -> Option<Drift> {
    match kind {
        AggKind::Count | AggKind::Distinct | AggKind::Sum => Some(Drift::Falls),
        AggKind::Max => Some(Drift::FallsOrNull),
        _ => None,
    }
}

/// The guard of every windowed aggregate segments read (`windowed` are aggregate slots).
pub(super) fn windowed_slots(
    windowed: &[usize],
    nodes: &[Node],
    node_deps: &[Vec<NodeId>],
    aggregates: &[Aggregate],
    segments: &[Segment],
) -> Vec<WindowedSlot> {
    windowed
        .iter()
        .map(|&slot| WindowedSlot {
            slot,
            inert: guard(slot, nodes, node_deps, aggregates, segments),
        })
        .collect()
}

fn guard(
    slot: usize,
    nodes: &[Node],
    node_deps: &[Vec<NodeId>],
    aggregates: &[Aggregate],
    segments: &[Segment],
) -> Option<InertGuard> {
    let drift = drift(aggregates[slot].kind)?;
    let agg = nodes
        .iter()
        .position(|n| matches!(n.kind, NodeKind::Aggregate(s) if s == slot))?;
    // Nodes that read the aggregate through other nodes (nodes come after what they read).
    let mut through = vec![false; nodes.len()];
    for id in 0..nodes.len() {
        through[id] = node_deps[id].iter().any(|&d| d == agg || through[d]);
    }
    let never_negative = drift == Drift::Falls;
    let mut while_segments = Vec::new();
    for seg in segments {
        if !through[seg.node] {
            continue;
        }
        let NodeKind::Segment(when) = &nodes[seg.node].kind else {
            return None;
        };
        match (reads(when, agg, &through, never_negative), drift) {
            (Reads::Not, _) => {}
            (Reads::Rising, _) => while_segments.push((seg.node, false)),
            (Reads::Falling, Drift::Falls) => while_segments.push((seg.node, true)),
            _ => return None,
        }
    }
    Some(InertGuard {
        while_segments,
        needs_non_negative: aggregates[slot].kind == AggKind::Sum,
    })
}

/// Per node, whether its value can change when a window loses a bucket: it is a windowed
/// aggregate or reads one (nodes come after what they read).
pub(super) fn moved_by_windows(
    nodes: &[Node],
    node_deps: &[Vec<NodeId>],
    aggregates: &[Aggregate],
) -> Vec<bool> {
    let mut moved = vec![false; nodes.len()];
    for id in 0..nodes.len() {
        moved[id] = match nodes[id].kind {
            NodeKind::Aggregate(slot) => aggregates[slot].window.is_some(),
            _ => node_deps[id].iter().any(|&d| moved[d]),
        };
    }
    moved
}

/// The guard of a probe owned by node `owner` (see the module docs). `moved_by_windows` is
/// [`moved_by_windows`]: a side that jumps when a bucket leaves a window does not move only
/// linearly between the candidates the search keeps, so such a probe gets no guard.
pub(super) fn probe_guard(
    owner: NodeId,
    info: &ProbeInfo,
    nodes: &[Node],
    node_deps: &[Vec<NodeId>],
    moved_by_windows: &[bool],
) -> Option<InertGuard> {
    let (Some(k), Probe::Compare(pairs)) = (info.linear, &info.probe) else {
        return None;
    };
    let [(a, b)] = pairs.as_slice() else {
        return None;
    };
    let NodeKind::Segment(when) = &nodes[owner].kind else {
        return None;
    };
    let mut sides = Vec::new();
    a.refs(&mut sides);
    b.refs(&mut sides);
    if k == 0
        || sides.iter().any(|&id| moved_by_windows[id])
        || node_deps.iter().any(|deps| deps.contains(&owner))
    {
        return None;
    }
    // `a - b` moves with slope k: `a > b` falls as time passes when k < 0.
    let over_time = match reads_comparison(when, a, b) {
        Reads::Rising if k < 0 => Reads::Falling,
        Reads::Falling if k < 0 => Reads::Rising,
        other => other,
    };
    let keeps = match over_time {
        // The segment's truth falls with time: a false segment stays false.
        Reads::Falling => false,
        Reads::Rising => true,
        Reads::Not | Reads::Any => return None,
    };
    Some(InertGuard {
        while_segments: vec![(owner, keeps)],
        needs_non_negative: false,
    })
}

/// How `e`'s truth moves as `a - b` grows, where `a` and `b` are the sides of comparisons in
/// `e` (either way round).
fn reads_comparison(e: &CExpr, a: &CExpr, b: &CExpr) -> Reads {
    fn contains(e: &CExpr, a: &CExpr, b: &CExpr) -> bool {
        let mut found = matches!(e, CExpr::Cmp(_, l, r)
            if (**l == *a && **r == *b) || (**l == *b && **r == *a));
        e.for_each_child(&mut |c| found |= contains(c, a, b));
        found
    }
    match e {
        CExpr::Not(x) => reads_comparison(x, a, b).flipped(),
        CExpr::And(x, y) | CExpr::Or(x, y) => {
            reads_comparison(x, a, b).and(reads_comparison(y, a, b))
        }
        CExpr::Cmp(op, l, r) if **l == *a && **r == *b => rises_with_difference(*op),
        CExpr::Cmp(op, l, r) if **l == *b && **r == *a => rises_with_difference(mirrored(*op)),
        other if contains(other, a, b) => Reads::Any,
        _ => Reads::Not,
    }
}

/// How `a <op> b` moves as `a - b` grows.
fn rises_with_difference(op: CmpOp) -> Reads {
    match op {
        CmpOp::Gt | CmpOp::GtEq => Reads::Rising,
        CmpOp::Lt | CmpOp::LtEq => Reads::Falling,
        CmpOp::Eq | CmpOp::NotEq => Reads::Any,
    }
}

/// How `e`'s truth moves as node `agg` grows; `through` marks the nodes that read `agg`.
fn reads(e: &CExpr, agg: NodeId, through: &[bool], never_negative: bool) -> Reads {
    let mentions = |e: &CExpr| {
        let mut refs = Vec::new();
        e.refs(&mut refs);
        refs.iter().any(|&id| id == agg || through[id])
    };
    let is_agg = |e: &CExpr| matches!(e, CExpr::Ref(id) if *id == agg);
    match e {
        CExpr::Not(x) => reads(x, agg, through, never_negative).flipped(),
        CExpr::And(a, b) | CExpr::Or(a, b) => {
            reads(a, agg, through, never_negative).and(reads(b, agg, through, never_negative))
        }
        CExpr::Cmp(op, left, right) => match (mentions(left), mentions(right)) {
            (false, false) => Reads::Not,
            (true, false) if is_agg(left) => orient(*op, right, never_negative),
            (false, true) if is_agg(right) => orient(mirrored(*op), left, never_negative),
            _ => Reads::Any,
        },
        other if mentions(other) => Reads::Any,
        _ => Reads::Not,
    }
}

/// `aggregate <op> other`, where `other` does not read the aggregate.
fn orient(op: CmpOp, other: &CExpr, never_negative: bool) -> Reads {
    let zero = matches!(other, CExpr::Const(Value::Num(x)) if *x == 0.0);
    match op {
        CmpOp::Gt | CmpOp::GtEq => Reads::Rising,
        CmpOp::Lt | CmpOp::LtEq => Reads::Falling,
        // Over values that are never negative, `= 0` is `<= 0` and `<> 0` is `> 0`.
        CmpOp::Eq if never_negative && zero => Reads::Falling,
        CmpOp::NotEq if never_negative && zero => Reads::Rising,
        CmpOp::Eq | CmpOp::NotEq => Reads::Any,
    }
}

/// `a <op> b` as `b <mirrored op> a`.
fn mirrored(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        CmpOp::Eq | CmpOp::NotEq => op,
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::RuleSet;

    /// Segment names with the value each must keep.
    type Held = Vec<(String, bool)>;

    /// The guard of each windowed aggregate segments read, by aggregate name.
    fn guards(segments: &str) -> Vec<(String, Option<Held>)> {
        let src = format!(
            r#"
[[tag]]
name = "views_1d"
kind = "count"
event = "view"
window = "1d"

[[tag]]
name = "spend_7d"
kind = "sum"
event = "purchase"
property = "amount"
window = "7d"

[[tag]]
name = "max_7d"
kind = "max"
event = "purchase"
property = "amount"
window = "7d"

[[tag]]
name = "avg_7d"
kind = "avg"
event = "purchase"
property = "amount"
window = "7d"

[[tag]]
name = "doubled"
kind = "expr"
expr = "views_1d * 2"

[[tag]]
name = "last_seen"
kind = "last_time"
event = "*"
{segments}"#
        );
        let rules = RuleSet::compile(&src, "rules.toml").unwrap_or_else(|e| panic!("{e}\n{src}"));
        let name = |node: usize| rules.nodes[node].name.to_string();
        rules
            .windowed_for_segments
            .iter()
            .map(|w| {
                let guard = w.inert.as_ref().map(|g| {
                    g.while_segments
                        .iter()
                        .map(|&(node, value)| (name(node), value))
                        .collect()
                });
                (rules.aggregates[w.slot].name.to_string(), guard)
            })
            .collect()
    }

    fn segment(name: &str, when: &str) -> String {
        format!("\n[[segment]]\nname = \"{name}\"\nwhen = \"{when}\"\n")
    }

    fn one(when: &str) -> Option<Held> {
        let g = guards(&segment("s", when));
        assert_eq!(g.len(), 1, "{when}: {g:?}");
        g.into_iter().next().expect("one").1
    }

    fn stays(value: bool) -> Option<Held> {
        Some(vec![("s".into(), value)])
    }

    #[test]
    fn comparisons_that_rise_with_the_aggregate_hold_a_false_segment() {
        assert_eq!(one("views_1d >= 10"), stays(false));
        assert_eq!(one("10 < views_1d"), stays(false));
        assert_eq!(one("views_1d <> 0"), stays(false));
        assert_eq!(one("views_1d > 3 AND last_seen > now() - 2d"), stays(false));
        assert_eq!(one("NOT (views_1d < 3)"), stays(false));
        assert_eq!(one("max_7d >= 200 OR last_seen IS NULL"), stays(false));
    }

    #[test]
    fn comparisons_that_rise_as_the_aggregate_falls_hold_a_true_segment() {
        assert_eq!(one("views_1d = 0"), stays(true));
        assert_eq!(one("views_1d <= 2 AND last_seen > now() - 7d"), stays(true));
        assert_eq!(one("NOT (views_1d > 2)"), stays(true));
        assert_eq!(one("spend_7d < 100"), stays(true));
    }

    #[test]
    fn a_max_turning_null_only_holds_a_false_segment() {
        assert_eq!(one("max_7d >= 200"), stays(false));
        assert_eq!(one("max_7d < 200"), None);
        assert_eq!(one("NOT (max_7d >= 200)"), None);
    }

    #[test]
    fn any_other_reading_gives_no_guard() {
        for when in [
            "views_1d = 3",
            "views_1d >= 3 OR views_1d < 1",
            "views_1d BETWEEN 1 AND 5",
            "views_1d IN (1, 2)",
            "views_1d + 1 > 3",
            "doubled > 3",
            "views_1d > doubled",
            "avg_7d > 3",
            "max_7d = 0",
        ] {
            let g = guards(&segment("s", when));
            assert!(g.iter().all(|(_, guard)| guard.is_none()), "{when}: {g:?}");
        }
    }

    /// The guard of each probe, as (segment, value) lists, in evaluation order.
    fn probe_guards(segments: &str) -> Vec<Option<Held>> {
        let src = format!(
            "[[tag]]\nname = \"last_seen\"\nkind = \"last_time\"\nevent = \"*\"\n\n[[tag]]\nname = \"views_1d\"\nkind = \"count\"\nevent = \"view\"\nwindow = \"1d\"\n{segments}"
        );
        let rules = RuleSet::compile(&src, "rules.toml").unwrap_or_else(|e| panic!("{e}\n{src}"));
        rules
            .probes
            .iter()
            .map(|p| {
                p.inert.as_ref().map(|g| {
                    g.while_segments
                        .iter()
                        .map(|&(node, value)| (rules.nodes[node].name.to_string(), value))
                        .collect()
                })
            })
            .collect()
    }

    #[test]
    fn a_comparison_time_moves_one_way_holds_its_segment() {
        // `last_seen > now() - 2d` only turns false as time passes.
        assert_eq!(
            probe_guards(&segment("s", "views_1d > 0 AND last_seen > now() - 2d")),
            vec![stays(false)]
        );
        assert_eq!(
            probe_guards(&segment("s", "now() - 2d < last_seen")),
            vec![stays(false)]
        );
        // ... so its negation only turns true.
        assert_eq!(
            probe_guards(&segment("s", "NOT (last_seen > now() - 2d)")),
            vec![stays(true)]
        );
        assert_eq!(
            probe_guards(&segment("s", "last_seen <= now() - 30d OR views_1d > 5")),
            vec![stays(true)]
        );
    }

    #[test]
    fn a_probe_read_any_other_way_has_no_guard() {
        for segments in [
            // read both ways
            segment(
                "s",
                "last_seen > now() - 2d AND NOT (last_seen > now() - 2d)",
            ),
            // an equality flips twice
            segment("s", "last_seen = now() - 2d"),
            // through a function
            segment("s", "coalesce(last_seen > now() - 2d, false)"),
            // a side that jumps when a window loses a bucket
            format!(
                "[[tag]]\nname = \"shifted\"\nkind = \"expr\"\nexpr = \"last_seen - views_1d * 1h\"\n{}",
                segment("s", "shifted > now() - 2d")
            ),
        ] {
            let guards = probe_guards(&segments);
            assert!(guards.iter().all(Option::is_none), "{segments}: {guards:?}");
        }
        // A segment another node reads: its changes matter beyond its own membership.
        let guards = probe_guards(&format!(
            "{}{}",
            segment("recent", "last_seen > now() - 2d"),
            segment("s", "recent AND views_1d > 0"),
        ));
        assert!(guards.iter().all(Option::is_none), "{guards:?}");
        // A tag's decision (a `case` branch) is not a segment's.
        let guards = probe_guards(
            "[[tag]]\nname = \"stage\"\nkind = \"case\"\ncases = [{ when = \"last_seen > now() - 2d\", value = \"a\" }]\nelse = \"b\"\n\n[[segment]]\nname = \"s\"\nwhen = \"stage = 'a'\"\n",
        );
        assert!(guards.iter().all(Option::is_none), "{guards:?}");
    }

    #[test]
    fn every_segment_that_reads_the_aggregate_is_in_the_guard() {
        let g = guards(&format!(
            "{}{}{}",
            segment("hot", "views_1d >= 10"),
            segment("quiet", "views_1d = 0 AND spend_7d >= 1"),
            segment("buyer", "spend_7d > 100"),
        ));
        assert_eq!(
            g,
            vec![
                (
                    "views_1d".into(),
                    Some(vec![("hot".into(), false), ("quiet".into(), true)])
                ),
                (
                    "spend_7d".into(),
                    Some(vec![("quiet".into(), false), ("buyer".into(), false)])
                ),
            ]
        );
        // Read both rising and falling: no guard.
        let rules = RuleSet::compile(&format!(
            "[[tag]]\nname = \"spend_7d\"\nkind = \"sum\"\nevent = \"purchase\"\nproperty = \"amount\"\nwindow = \"7d\"\n{}{}",
            segment("a", "spend_7d > 100"),
            segment("b", "spend_7d >= 1 AND spend_7d < 1000"),
        ), "rules.toml")
        .expect("rules");
        let guards: Vec<_> = rules
            .windowed_for_segments
            .iter()
            .map(|w| w.inert.clone())
            .collect();
        assert_eq!(guards, vec![None]);
        let rules = RuleSet::compile(&format!(
            "[[tag]]\nname = \"spend_7d\"\nkind = \"sum\"\nevent = \"purchase\"\nproperty = \"amount\"\nwindow = \"7d\"\n{}",
            segment("a", "spend_7d > 100"),
        ), "rules.toml")
        .expect("rules");
        let guard = rules.windowed_for_segments[0]
            .inert
            .clone()
            .expect("a guard");
        assert!(guard.needs_non_negative);
    }
}
