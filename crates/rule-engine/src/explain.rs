//! Why a user is in or out of a segment: the segment's rule as a tree, each node with its value
//! at engine time, and the current value of every tag the rule reads (directly or through other
//! tags and segments), so a marketer can see which condition failed.
//!
//! Pure and read-only: the values are those the engine itself computes at the same instant
//! ([`crate::engine::evaluate`]), so the explanation never disagrees with the membership.

use serde_json::{json, Map, Value as Json};

use crate::cexpr::{ArithOp, CExpr, CmpOp, Func, Scope};
use crate::engine::evaluate;
use crate::event::Millis;
use crate::rules::{NodeId, NodeKind, RuleSet, Segment};
use crate::state::UserState;
use crate::value::Value;

/// Nested segments are expanded at most this deep (a rule set has no cycles, but a long chain
/// of segments reading segments would make an unreadable answer).
const MAX_SEGMENT_DEPTH: usize = 8;

/// What an answer of the API may hold: segments that read segments repeat their subtrees, so
/// the tree of a rule set of shared segments grows exponentially with its depth.
pub const MAX_TREE_NODES: usize = 10_000;

/// An explanation whose tree would have more than `max_nodes` nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    pub segment: String,
    pub max_nodes: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the explanation of segment {:?} would have more than {} nodes (its rule reads segments that read segments); explain the segments it reads one by one",
            self.segment, self.max_nodes
        )
    }
}

/// The explanation of `segment` for one user at engine time `now`.
pub fn explain(
    rules: &RuleSet,
    segment: &Segment,
    user: &str,
    state: &UserState,
    now: Millis,
) -> Json {
    explain_bounded(rules, segment, user, state, now, usize::MAX)
        .unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// [`explain`], refused when the tree would have more than `max_nodes` nodes: the work and the
/// answer stay bounded whatever the rules.
pub fn explain_bounded(
    rules: &RuleSet,
    segment: &Segment,
    user: &str,
    state: &UserState,
    now: Millis,
    max_nodes: usize,
) -> Result<Json, TooLarge> {
    let values = evaluate(rules, state, now);
    let scope = Scope {
        values: &values,
        now,
        zone: &rules.zone,
        event: None,
    };
    let member = values[segment.node] == Value::Bool(true);
    let NodeKind::Segment(expr) = &rules.nodes[segment.node].kind else {
        return Ok(json!({ "error": "not a segment" }));
    };
    let mut tags = Map::new();
    for id in dependencies(rules, segment.node) {
        let node = &rules.nodes[id];
        if !matches!(node.kind, NodeKind::Segment(_)) {
            tags.insert(node.name.to_string(), values[id].to_json());
        }
    }
    let mut budget = max_nodes;
    let tree = tree(rules, expr, &scope, 0, &mut budget).ok_or_else(|| TooLarge {
        segment: segment.name.to_string(),
        max_nodes,
    })?;
    Ok(json!({
        "user_id": user,
        "segment": &*segment.name,
        "description": segment.description,
        "rule": segment.when,
        "member": member,
        "now": now,
        "tree": tree,
        "tags": tags,
    }))
}

/// Every node `node` reads, directly or not, in evaluation order (not including itself).
pub fn dependencies(rules: &RuleSet, node: NodeId) -> Vec<NodeId> {
    let mut seen = vec![false; rules.nodes.len()];
    let mut stack = direct_refs(rules, node);
    while let Some(id) = stack.pop() {
        if !std::mem::replace(&mut seen[id], true) {
            stack.extend(direct_refs(rules, id));
        }
    }
    (0..rules.nodes.len()).filter(|&i| seen[i]).collect()
}

fn direct_refs(rules: &RuleSet, node: NodeId) -> Vec<NodeId> {
    let mut out = Vec::new();
    match &rules.nodes[node].kind {
        NodeKind::Aggregate(_) | NodeKind::Profile(_) => {}
        NodeKind::Expr(e) | NodeKind::Segment(e) => e.refs(&mut out),
        NodeKind::Case { cases, otherwise } => {
            for (when, value) in cases {
                when.refs(&mut out);
                value.refs(&mut out);
            }
            otherwise.refs(&mut out);
        }
        NodeKind::Tier { of, .. } => of.refs(&mut out),
        NodeKind::Nearest { features, .. } => out.extend(features),
    }
    out
}

/// The tree of `expr`, or None once more nodes than `budget` allows would be needed.
fn tree(
    rules: &RuleSet,
    expr: &CExpr,
    scope: &Scope<'_>,
    depth: usize,
    budget: &mut usize,
) -> Option<Json> {
    *budget = budget.checked_sub(1)?;
    let mut node = Map::new();
    node.insert("expr".into(), Json::String(render(rules, expr)));
    node.insert("value".into(), expr.eval(scope).to_json());
    match expr {
        CExpr::Ref(id) => {
            let n = &rules.nodes[*id];
            match &n.kind {
                NodeKind::Segment(inner) => {
                    node.insert("segment".into(), Json::String(n.name.to_string()));
                    if depth < MAX_SEGMENT_DEPTH {
                        node.insert(
                            "children".into(),
                            Json::Array(vec![tree(rules, inner, scope, depth + 1, budget)?]),
                        );
                    }
                }
                _ => {
                    node.insert("tag".into(), Json::String(n.name.to_string()));
                }
            }
        }
        _ => {
            let mut children = Vec::new();
            if matches!(expr, CExpr::And(..) | CExpr::Or(..)) {
                // A chain `a AND b AND c` is one node with three conditions.
                let mut operands = Vec::new();
                chain(expr, &mut operands);
                for c in operands {
                    children.push(tree(rules, c, scope, depth, budget)?);
                }
            } else {
                let mut complete = true;
                expr.for_each_child(&mut |c| {
                    if complete && !matches!(c, CExpr::Const(_)) {
                        match tree(rules, c, scope, depth, budget) {
                            Some(t) => children.push(t),
                            None => complete = false,
                        }
                    }
                });
                if !complete {
                    return None;
                }
            }
            if !children.is_empty() {
                node.insert("children".into(), Json::Array(children));
            }
        }
    }
    Some(Json::Object(node))
}

/// The expression as text, with parentheses only where precedence needs them.
pub fn render(rules: &RuleSet, expr: &CExpr) -> String {
    let prec = precedence(expr);
    // Operands that bind less tightly than their operator (or, on the right of a
    // non-associative operator, as tightly) are parenthesised.
    let operand = |e: &CExpr, right: bool| {
        let text = render(rules, e);
        let p = precedence(e);
        if p < prec || (right && p == prec && !matches!(expr, CExpr::And(..) | CExpr::Or(..))) {
            format!("({text})")
        } else {
            text
        }
    };
    let list = |items: &[CExpr]| {
        items
            .iter()
            .map(|e| render(rules, e))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let not = |negated: bool| if negated { "NOT " } else { "" };
    match expr {
        CExpr::Const(v) => render_const(v),
        CExpr::Ref(id) => rules.nodes[*id].name.to_string(),
        CExpr::Prop(p) => format!("properties.{p}"),
        CExpr::EventName => "event".into(),
        CExpr::Now => "now()".into(),
        CExpr::Neg(e) => format!("-{}", operand(e, true)),
        CExpr::Not(e) => format!("NOT {}", operand(e, true)),
        CExpr::Arith(op, a, b) => format!(
            "{} {} {}",
            operand(a, false),
            arith_symbol(*op),
            operand(b, true)
        ),
        CExpr::Cmp(op, a, b) => format!(
            "{} {} {}",
            operand(a, false),
            cmp_symbol(*op),
            operand(b, true)
        ),
        CExpr::And(a, b) => format!("{} AND {}", operand(a, false), operand(b, true)),
        CExpr::Or(a, b) => format!("{} OR {}", operand(a, false), operand(b, true)),
        CExpr::In {
            expr,
            list: items,
            negated,
        } => format!(
            "{} {}IN ({})",
            operand(expr, false),
            not(*negated),
            list(items)
        ),
        CExpr::Between {
            expr,
            low,
            high,
            negated,
        } => format!(
            "{} {}BETWEEN {} AND {}",
            operand(expr, false),
            not(*negated),
            operand(low, true),
            operand(high, true)
        ),
        CExpr::IsNull { expr, negated } => {
            format!("{} IS {}NULL", operand(expr, false), not(*negated))
        }
        CExpr::Call(func, args) => format!("{}({})", func_name(*func), list(args)),
    }
}

/// Binding strength, loosest first (as the parser reads them).
fn precedence(e: &CExpr) -> u8 {
    match e {
        CExpr::Or(..) => 1,
        CExpr::And(..) => 2,
        CExpr::Not(_) => 3,
        CExpr::Cmp(..) | CExpr::In { .. } | CExpr::Between { .. } | CExpr::IsNull { .. } => 4,
        CExpr::Arith(ArithOp::Add | ArithOp::Sub, ..) => 5,
        CExpr::Arith(..) => 6,
        CExpr::Neg(_) => 7,
        _ => 8,
    }
}

/// The operands of a chain of the same boolean operator (`a AND b AND c` → [a, b, c]).
fn chain<'a>(expr: &'a CExpr, out: &mut Vec<&'a CExpr>) {
    match expr {
        CExpr::And(a, b) => {
            for side in [a, b] {
                if matches!(**side, CExpr::And(..)) {
                    chain(side, out);
                } else {
                    out.push(side);
                }
            }
        }
        CExpr::Or(a, b) => {
            for side in [a, b] {
                if matches!(**side, CExpr::Or(..)) {
                    chain(side, out);
                } else {
                    out.push(side);
                }
            }
        }
        _ => out.push(expr),
    }
}

fn render_const(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        Value::Str(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Dur(ms) => render_duration(*ms),
        other => other.to_json().to_string(),
    }
}

fn render_duration(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn arith_symbol(op: ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::Mod => "%",
    }
}

fn cmp_symbol(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::NotEq => "!=",
        CmpOp::Lt => "<",
        CmpOp::LtEq => "<=",
        CmpOp::Gt => ">",
        CmpOp::GtEq => ">=",
    }
}

fn func_name(f: Func) -> &'static str {
    match f {
        Func::Coalesce => "coalesce",
        Func::DaysSince => "days_since",
        Func::HourOfDay => "hour_of_day",
        Func::DayOfWeek => "day_of_week",
        Func::Abs => "abs",
        Func::Least => "least",
        Func::Greatest => "greatest",
        Func::Round => "round",
        Func::Ln => "ln",
        Func::Exp => "exp",
        Func::Sigmoid => "sigmoid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, DecodeOptions};
    use crate::state::UserState;
    use std::sync::Arc;

    const RULES: &str = r#"
[[tag]]
name = "spend_30d"
kind = "sum"
event = "purchase"
property = "amount"
window = "30d"

[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[segment]]
name = "buyer"
when = "orders >= 1"

[[segment]]
name = "vip"
description = "big spenders who bought recently"
when = "buyer AND spend_30d >= 1000 AND days_since(last_seen) < 7"
"#;

    fn state_after(rules: &RuleSet, lines: &[&str]) -> (UserState, Millis) {
        let user: Arc<str> = Arc::from("u1");
        let mut state = UserState::new(&rules.aggregates, rules.segments.len());
        let mut now = 0;
        for line in lines {
            let event = decode(line.as_bytes(), &DecodeOptions::default()).unwrap();
            now = now.max(event.ts);
            let mut out = Vec::new();
            crate::engine::catch_up(rules, &user, &mut state, now, &mut out);
            crate::engine::apply(rules, &user, &mut state, &event, now, &mut out);
        }
        (state, now)
    }

    #[test]
    fn shows_which_condition_failed() {
        let rules = RuleSet::compile(RULES, "rules.toml").unwrap();
        let (state, now) = state_after(
            &rules,
            &[
                r#"{"type":"track","event":"purchase","user_id":"u1","ts":1700000000000,"properties":{"amount":300}}"#,
            ],
        );
        let vip = rules.segment_by_name("vip").unwrap();
        let e = explain(&rules, vip, "u1", &state, now);
        assert_eq!(e["member"], false);
        assert_eq!(e["rule"], vip.when);
        assert_eq!(e["tags"]["spend_30d"], 300.0);
        assert_eq!(e["tags"]["orders"], 1);
        let text = e.to_string();
        assert!(
            text.contains(r#""expr":"spend_30d >= 1000","value":false"#),
            "{text}"
        );
        assert!(
            text.contains(r#""expr":"buyer","value":true,"segment":"buyer""#),
            "{text}"
        );
        assert!(
            text.contains(r#""expr":"days_since(last_seen) < 7","value":true"#),
            "{text}"
        );
        // The top of the tree is the segment's value.
        assert_eq!(e["tree"]["value"], false);
    }

    #[test]
    fn member_when_every_condition_holds() {
        let rules = RuleSet::compile(RULES, "rules.toml").unwrap();
        let (state, now) = state_after(
            &rules,
            &[
                r#"{"type":"track","event":"purchase","user_id":"u1","ts":1700000000000,"properties":{"amount":1300}}"#,
            ],
        );
        let e = explain(
            &rules,
            rules.segment_by_name("vip").unwrap(),
            "u1",
            &state,
            now,
        );
        assert_eq!(e["member"], true);
        assert_eq!(e["tree"]["value"], true);
        // Eight days later the recency condition fails, with nothing else changed.
        let later = explain(
            &rules,
            rules.segment_by_name("vip").unwrap(),
            "u1",
            &state,
            now + 8 * 86_400_000,
        );
        assert_eq!(later["member"], false);
        assert!(later
            .to_string()
            .contains(r#""expr":"days_since(last_seen) < 7","value":false"#));
    }

    #[test]
    fn a_tree_over_its_node_budget_is_refused_not_built() {
        // Each level reads the one below three times: 3^8 copies of the bottom at depth 8.
        let mut text = String::from(
            "[[tag]]\nname = \"n\"\nkind = \"count\"\nevent = \"*\"\n[[segment]]\nname = \"s0\"\nwhen = \"n > 0\"\n",
        );
        for i in 1..=8 {
            let p = i - 1;
            text.push_str(&format!(
                "[[segment]]\nname = \"s{i}\"\nwhen = \"s{p} AND (s{p} OR s{p})\"\n"
            ));
        }
        let rules = RuleSet::compile(&text, "rules.toml").unwrap();
        let (state, now) = state_after(
            &rules,
            &[r#"{"event":"e","user_id":"u1","ts":1700000000000}"#],
        );
        let top = rules.segment_by_name("s8").unwrap();
        let e = explain_bounded(&rules, top, "u1", &state, now, MAX_TREE_NODES).unwrap_err();
        assert_eq!(e.max_nodes, MAX_TREE_NODES);
        assert!(e.to_string().contains("\"s8\""), "{e}");
        // Small ones are answered whole, within the same budget.
        let s2 = rules.segment_by_name("s2").unwrap();
        let small = explain_bounded(&rules, s2, "u1", &state, now, MAX_TREE_NODES).unwrap();
        assert_eq!(small, explain(&rules, s2, "u1", &state, now));
        assert_eq!(small["member"], true);
    }

    #[test]
    fn renders_every_construct() {
        let rules = RuleSet::compile(
            r#"
[[tag]]
name = "n"
kind = "count"
event = "e"
[[segment]]
name = "s"
when = "n BETWEEN 1 AND 3 OR n NOT IN (5, 6) OR n IS NULL OR coalesce(n, 0) * 2 > -1 OR last_seen > now() - 30d"
"#,
            "r.toml",
        )
        .unwrap();
        let NodeKind::Segment(e) = &rules.nodes[rules.segments[0].node].kind else {
            panic!()
        };
        let text = render(&rules, e);
        assert!(
            !text.contains("(n BETWEEN"),
            "no needless parentheses: {text}"
        );
        let again = RuleSet::compile(
            &format!("[[tag]]\nname = \"n\"\nkind = \"count\"\nevent = \"e\"\n[[segment]]\nname = \"s\"\nwhen = \"{text}\"\n"),
            "again.toml",
        )
        .unwrap();
        let NodeKind::Segment(e2) = &again.nodes[again.segments[0].node].kind else {
            panic!()
        };
        assert_eq!(e, e2, "the rendering reads back as the same expression");
        for part in [
            "n BETWEEN 1 AND 3",
            "n NOT IN (5, 6)",
            "n IS NULL",
            "coalesce(n, 0) * 2",
            "now() - 30d",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;

    fn segment_expr(when: &str) -> (RuleSet, NodeId) {
        let rules = RuleSet::compile(
            &format!(
                "[[tag]]\nname = \"n\"\nkind = \"count\"\nevent = \"e\"\n[[segment]]\nname = \"s\"\nwhen = \"{when}\"\n"
            ),
            "r.toml",
        )
        .unwrap_or_else(|e| panic!("{when}: {e}"));
        let node = rules.segments[0].node;
        (rules, node)
    }

    #[test]
    fn rendering_keeps_the_meaning_with_few_parentheses() {
        for (when, want) in [
            (
                "(n + 1) * 2 > 3 AND (n = 1 OR n = 2)",
                "(n + 1) * 2 > 3 AND (n = 1 OR n = 2)",
            ),
            ("NOT (n > 1 AND n < 5)", "NOT (n > 1 AND n < 5)"),
            ("n - (1 - 2) > 0", "n - (1 - 2) > 0"),
            ("n > 1 AND n < 5 AND n <> 3", "n > 1 AND n < 5 AND n != 3"),
            ("n > 1 OR n < 5 AND n <> 3", "n > 1 OR n < 5 AND n != 3"),
        ] {
            let (rules, node) = segment_expr(when);
            let NodeKind::Segment(e) = &rules.nodes[node].kind else {
                panic!()
            };
            let text = render(&rules, e);
            assert_eq!(text, want);
            let (again, node2) = segment_expr(&text);
            let NodeKind::Segment(e2) = &again.nodes[node2].kind else {
                panic!()
            };
            assert_eq!(e, e2, "{text} reads back as {when}");
        }
    }
}
