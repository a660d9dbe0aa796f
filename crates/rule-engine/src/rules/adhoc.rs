//! Ad-hoc conditions: a boolean expression of the rules language compiled against the tags and
//! segments of a rule set in force, outside any rules file (the API's tag audiences,
//! `vip_skincare AND spend_30d > 500 AND city IN ('Shanghai','Beijing')`).
//!
//! The expression goes through the rules compiler itself, exactly as a segment's `when` would:
//! the rules source is compiled once more with one extra segment holding the expression, so
//! names, types, functions (`now()` included) and error messages are those of the rules
//! language. The extra segment comes last and reads only existing nodes, so every node keeps
//! its id and the compiled condition evaluates against the values
//! [`crate::engine::evaluate`] computes with the rules in force. An expression that would need
//! state the rules do not keep (an implicit `first_seen`/`last_seen` the rules never read) is
//! refused rather than evaluated as NULL.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{NodeKind, RuleSet};
use crate::cexpr::{CExpr, Scope};
use crate::engine::evaluate;
use crate::event::Millis;
use crate::state::UserState;
use crate::value::Value;

/// Longest accepted expression, in bytes.
pub const MAX_ADHOC_BYTES: usize = 4096;

/// A condition compiled against a rule set (see the module docs).
#[derive(Debug, Clone)]
pub struct AdhocCondition {
    /// The condition; `Ref`s are node ids of the rule set it was compiled against.
    pub expr: CExpr,
    /// Fingerprint of that rule set.
    pub fingerprint: String,
    /// Segments (by index in [`RuleSet::segments`]) that are conjuncts at the top level of the
    /// expression: only their members can match.
    pub required_segments: Vec<usize>,
}

/// Why an expression was refused: the message and the 1-based column (in characters) of the
/// expression it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdhocError {
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for AdhocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (column {})", self.message, self.column)
    }
}

impl std::error::Error for AdhocError {}

fn refuse(column: usize, message: impl Into<String>) -> AdhocError {
    AdhocError {
        column,
        message: message.into(),
    }
}

/// Compiles `text`, a condition over the tags and segments of `rules`. `source` is the text
/// `rules` was compiled from (its fingerprint is checked).
pub fn compile_condition(
    rules: &RuleSet,
    source: &str,
    text: &str,
) -> Result<AdhocCondition, AdhocError> {
    if hex::encode(Sha256::digest(source.as_bytes())) != rules.fingerprint {
        return Err(refuse(
            1,
            "internal error: the rules source does not match the rules in force",
        ));
    }
    if text.len() > MAX_ADHOC_BYTES {
        return Err(refuse(
            1,
            format!("the expression is longer than {MAX_ADHOC_BYTES} bytes"),
        ));
    }
    if text.trim().is_empty() {
        return Err(refuse(1, "empty expression"));
    }
    // One line, so that a column of the compiled file is a column of the expression (line
    // breaks are white space to the expression language).
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if let Some(at) = flat.find("'''") {
        return Err(refuse(
            flat[..at].chars().count() + 1,
            "three quotes in a row cannot appear in an expression",
        ));
    }
    let mut name = String::from("__adhoc_condition");
    while rules.node_by_name(&name).is_some() {
        name.push('_');
    }
    // The expression starts a line of its own: a multi-line literal string keeps every
    // character as written (no escapes), and the compiler skips the newline after `'''`.
    let prefix = format!("{source}\n\n[[segment]]\nname = \"{name}\"\nwhen = '''\n");
    let line = prefix.matches('\n').count() + 1;
    let synthetic = format!("{prefix}{flat}'''\n");
    let compiled = match RuleSet::compile(&synthetic, "<expression>") {
        Ok(compiled) => compiled,
        Err(errors) => {
            let e = errors
                .errors
                .iter()
                .find(|e| e.line == line)
                .or(errors.errors.first());
            return Err(match e {
                Some(e) if e.line == line => refuse(e.column, e.message.clone()),
                Some(e) => refuse(1, e.message.clone()),
                None => refuse(1, "invalid expression"),
            });
        }
    };
    // Every node of the rules in force keeps its id; anything else (an implicit tag added for
    // the expression) means the rules keep no state for it.
    let same_nodes = compiled.nodes.len() == rules.nodes.len() + 1
        && rules
            .nodes
            .iter()
            .zip(&compiled.nodes)
            .all(|(a, b)| a.name == b.name);
    if !same_nodes || compiled.aggregates.len() != rules.aggregates.len() {
        let extra: Vec<&str> = compiled
            .nodes
            .iter()
            .filter(|n| rules.node_by_name(&n.name).is_none() && *n.name != *name)
            .map(|n| &*n.name)
            .collect();
        return Err(refuse(
            1,
            format!(
                "the rules in force keep no state for {}: define it as a tag (or use it in a rule) to query it",
                extra.join(", ")
            ),
        ));
    }
    let node = compiled
        .segment_by_name(&name)
        .map(|s| s.node)
        .ok_or_else(|| refuse(1, "internal error: the expression was not compiled"))?;
    let NodeKind::Segment(expr) = &compiled.nodes[node].kind else {
        return Err(refuse(1, "internal error: the expression was not compiled"));
    };
    let mut required_segments = Vec::new();
    let mut pending = vec![expr];
    while let Some(e) = pending.pop() {
        match e {
            CExpr::And(a, b) => {
                pending.push(b);
                pending.push(a);
            }
            CExpr::Ref(id) => {
                if let Some(i) = rules.segments.iter().position(|s| s.node == *id) {
                    if !required_segments.contains(&i) {
                        required_segments.push(i);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(AdhocCondition {
        expr: expr.clone(),
        fingerprint: rules.fingerprint.clone(),
        required_segments,
    })
}

impl AdhocCondition {
    /// The condition's value given every node's value (from [`evaluate`]) at `now`.
    pub fn eval_values(&self, rules: &RuleSet, values: &[Value], now: Millis) -> Value {
        self.expr.eval(&Scope {
            values,
            now,
            zone: &rules.zone,
            event: None,
        })
    }

    /// Whether a user with `state` matches at engine time `now` (NULL does not match), as the
    /// segment `when = <expression>` would hold. `rules` must be the rule set the condition
    /// was compiled against.
    pub fn matches(&self, rules: &RuleSet, state: &UserState, now: Millis) -> bool {
        debug_assert_eq!(rules.fingerprint, self.fingerprint);
        let values = evaluate(rules, state, now);
        self.eval_values(rules, &values, now) == Value::Bool(true)
    }

    /// Names of the segments the expression requires (top-level conjuncts).
    pub fn required_segment_names<'r>(&self, rules: &'r RuleSet) -> Vec<&'r Arc<str>> {
        self.required_segments
            .iter()
            .map(|&i| &rules.segments[i].name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[tag]]
name = "spend"
kind = "sum"
event = "purchase"
property = "amount"

[[tag]]
name = "city"
kind = "profile"
property = "city"

[[segment]]
name = "buyer"
when = "spend > 0"
"#;

    fn rules() -> RuleSet {
        RuleSet::compile(RULES, "r.toml").unwrap()
    }

    #[test]
    fn compiles_against_the_nodes_in_force() {
        let r = rules();
        let c = compile_condition(
            &r,
            RULES,
            "buyer AND spend > 500 AND city IN ('Shanghai', 'Beijing')",
        )
        .unwrap();
        assert_eq!(c.required_segments, vec![0]);
        let c = compile_condition(&r, RULES, "buyer OR spend > 5").unwrap();
        assert!(c.required_segments.is_empty());
        compile_condition(&r, RULES, "last_purchase_ok = 1").unwrap_err();
    }

    #[test]
    fn errors_name_the_column_of_the_expression() {
        let r = rules();
        let e = compile_condition(&r, RULES, "spend > 1 AND nope = 2").unwrap_err();
        assert_eq!(e.column, 15, "{e}");
        assert!(e.message.contains("nope"), "{e}");
        let e = compile_condition(&r, RULES, "spend >").unwrap_err();
        assert!(e.column >= 7, "{e}");
        let e = compile_condition(&r, RULES, "spend + 1").unwrap_err();
        assert!(e.message.contains("condition"), "{e}");
        let e = compile_condition(&r, RULES, "city = 'a'''").unwrap_err();
        assert_eq!(e.column, 10, "{e}");
        // A quote at the very end does not close the file's string early.
        compile_condition(&r, RULES, "city = 'x'").unwrap();
    }

    #[test]
    fn state_the_rules_do_not_keep_is_refused() {
        let r = rules();
        let e = compile_condition(&r, RULES, "last_seen > now() - 7d").unwrap_err();
        assert!(e.message.contains("last_seen"), "{e}");
    }

    #[test]
    fn a_source_that_is_not_the_rules_is_refused() {
        let r = rules();
        assert!(compile_condition(&r, "x = 1", "spend > 1").is_err());
    }
}
