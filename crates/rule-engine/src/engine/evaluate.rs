//! Node values at an instant: from scratch ([`evaluate`]), or from the values at an earlier
//! instant of the same state, re-evaluating only what an event or the passing of time can have
//! changed ([`evaluate_since`]).

use std::sync::Arc;

use crate::cexpr::Scope;
use crate::event::Millis;
use crate::rules::{NodeKind, RuleSet};
use crate::state::{AggState, Pending, UserState};
use crate::time::BucketsAt;
use crate::value::Value;

/// Values of every tag and segment of `rules` (indexed by node id) at engine time `now`.
pub fn evaluate(rules: &RuleSet, state: &UserState, now: Millis) -> Vec<Value> {
    let at = BucketsAt::new(&rules.zone, now);
    let mut values = Vec::with_capacity(rules.nodes.len());
    for id in 0..rules.nodes.len() {
        let v = evaluate_node(rules, state, id, &values, now, &at);
        values.push(v);
    }
    values
}

/// Values of the nodes segments depend on (others are left NULL): the event and timer path.
pub(super) fn evaluate_needed(rules: &RuleSet, state: &UserState, now: Millis) -> Vec<Value> {
    let at = BucketsAt::new(&rules.zone, now);
    let mut values = Vec::with_capacity(rules.nodes.len());
    for id in 0..rules.nodes.len() {
        let v = if rules.needed[id] {
            evaluate_node(rules, state, id, &values, now, &at)
        } else {
            Value::Null
        };
        values.push(v);
    }
    values
}

/// What an event changed in a user's state, for [`evaluate_since`].
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Aggregate slots that took the event (bit i = slot i); `all` past 128 aggregates.
    aggs: u128,
    all: bool,
    pub(super) profile: bool,
}

impl Touched {
    /// Nothing touched yet; `profile`: the event set profile attributes.
    pub(super) fn new(profile: bool) -> Touched {
        Touched {
            profile,
            ..Touched::default()
        }
    }

    pub(super) fn agg(&mut self, slot: usize) {
        match 1u128.checked_shl(slot as u32) {
            Some(bit) if slot < 128 => self.aggs |= bit,
            _ => self.all = true,
        }
    }

    fn has_agg(&self, slot: usize) -> bool {
        self.all || (slot < 128 && self.aggs & (1u128 << slot) != 0)
    }
}

/// The values of [`evaluate_needed`] at `now`, computed from the values `before` held at an
/// earlier instant of the same state, changed only by what `touched` names: a node is
/// evaluated again only when it reads `now()` (for a node constant between breakpoints: only
/// once `before`'s quiet bound has passed), an aggregate it reads took the event or lost a
/// bucket to the window, or a node it reads changed value. Equal to a full evaluation by
/// construction: every input of a skipped node is unchanged.
pub(super) fn evaluate_since(
    rules: &RuleSet,
    state: &UserState,
    now: Millis,
    before: Pending,
    touched: &Touched,
) -> Vec<Value> {
    let at = BucketsAt::new(&rules.zone, now);
    let then = BucketsAt::new(&rules.zone, before.since);
    // Before the quiet bound no probe changed outcome: a node whose value time moves only
    // through its decisions (constant between breakpoints) is as it was, unless a node it
    // reads changed.
    let no_decision_moved = before.quiet_until.is_some_and(|quiet| now < quiet);
    let mut values = before.values;
    let mut changed = ChangedNodes::new(rules.nodes.len());
    for id in 0..rules.nodes.len() {
        if !rules.needed[id] {
            continue;
        }
        let dirty = match &rules.nodes[id].kind {
            NodeKind::Aggregate(slot) => {
                touched.has_agg(*slot)
                    || rules.aggregates[*slot].window.is_some_and(|w| {
                        lost_a_bucket(&state.aggs[*slot], then.oldest(w), at.oldest(w))
                    })
            }
            NodeKind::Profile(_) => touched.profile,
            _ => {
                let time_moved_it =
                    rules.reads_now[id] && !(no_decision_moved && rules.nodes[id].shape.is_const());
                time_moved_it || rules.node_deps[id].iter().any(|&d| changed.has(d))
            }
        };
        if dirty {
            let v = evaluate_node(rules, state, id, &values, now, &at);
            if v != values[id] {
                values[id] = v;
                changed.set(id);
            }
        }
    }
    values
}

/// The nodes whose value changed, as bits: inline for rule sets of up to 256 nodes, so that
/// evaluating after an event allocates nothing for them.
struct ChangedNodes {
    inline: [u64; 4],
    more: Vec<u64>,
}

impl ChangedNodes {
    fn new(nodes: usize) -> ChangedNodes {
        let words = nodes.div_ceil(64);
        ChangedNodes {
            inline: [0; 4],
            more: vec![0; words.saturating_sub(4)],
        }
    }

    fn word(&mut self, id: usize) -> &mut u64 {
        match id / 64 {
            w @ 0..4 => &mut self.inline[w],
            w => &mut self.more[w - 4],
        }
    }

    fn set(&mut self, id: usize) {
        *self.word(id) |= 1 << (id % 64);
    }

    fn has(&self, id: usize) -> bool {
        let word = match id / 64 {
            w @ 0..4 => self.inline[w],
            w => self.more[w - 4],
        };
        word & (1 << (id % 64)) != 0
    }
}

/// Whether an aggregate the window moved over (its oldest bucket from `before` to `after`) lost
/// a bucket: its value is a function of its buckets from the oldest one on, so when every
/// bucket it held at `before` is still in the window, the value is unchanged.
fn lost_a_bucket(agg: &AggState, before: i64, after: i64) -> bool {
    if after <= before {
        return after != before;
    }
    agg.oldest_live_bucket(before)
        .is_some_and(|first| first < after)
}

pub(crate) fn evaluate_node(
    rules: &RuleSet,
    state: &UserState,
    id: usize,
    values: &[Value],
    now: Millis,
    at: &BucketsAt,
) -> Value {
    let scope = Scope {
        values,
        now,
        zone: &rules.zone,
        event: None,
    };
    match &rules.nodes[id].kind {
        NodeKind::Aggregate(slot) => match state.aggs.get(*slot) {
            Some(agg) => agg.value_at(&rules.aggregates[*slot], at),
            None => Value::Null,
        },
        NodeKind::Profile(attr) => state
            .profile
            .get(&**attr)
            .map_or(Value::Null, |(_, v)| v.to_value()),
        NodeKind::Expr(e) => e.eval(&scope),
        NodeKind::Case { cases, otherwise } => {
            for (when, value) in cases {
                if *when.operand(&scope) == Value::Bool(true) {
                    return value.eval(&scope);
                }
            }
            otherwise.eval(&scope)
        }
        NodeKind::Tier { of, tiers } => match *of.operand(&scope) {
            Value::Num(x) => tiers
                .iter()
                .rev()
                .find(|(min, _)| *min <= x)
                .map_or(Value::Null, |(_, label)| Value::Str(label.clone())),
            _ => Value::Null,
        },
        NodeKind::Nearest {
            features,
            centroids,
        } => {
            let mut point = Vec::with_capacity(features.len());
            for f in features {
                match values[*f] {
                    Value::Num(x) => point.push(x),
                    _ => return Value::Null,
                }
            }
            let mut best: Option<(f64, &Arc<str>)> = None;
            for (name, centre) in centroids {
                let d: f64 = point
                    .iter()
                    .zip(centre)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                if best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, name));
                }
            }
            best.map_or(Value::Null, |(_, n)| Value::Str(n.clone()))
        }
        NodeKind::Segment(e) => Value::Bool(*e.operand(&scope) == Value::Bool(true)),
    }
}

/// Recomputes, in `scratch`, the nodes that move continuously with time at instant `t`. Every
/// other entry of `scratch` keeps its value at the start of the interval (valid while no
/// breakpoint lies between that instant and `t`).
pub(super) fn moved(
    rules: &RuleSet,
    state: &UserState,
    moving: &[usize],
    scratch: &mut [Value],
    t: Millis,
) {
    if moving.is_empty() {
        return;
    }
    let at = BucketsAt::new(&rules.zone, t);
    for &id in moving {
        scratch[id] = evaluate_node(rules, state, id, scratch, t, &at);
    }
}

#[cfg(test)]
mod tests {
    use super::ChangedNodes;

    #[test]
    fn changed_nodes_past_the_inline_words() {
        let mut changed = ChangedNodes::new(600);
        let set = [0, 63, 64, 255, 256, 300, 599];
        for id in set {
            changed.set(id);
        }
        for id in 0..600 {
            assert_eq!(changed.has(id), set.contains(&id), "node {id}");
        }
    }
}
