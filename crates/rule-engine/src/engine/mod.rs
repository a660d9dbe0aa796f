//! The per-user engine: how one event or the passing of time changes a user's state, which
//! transitions that emits, and when the user's segments can next change with time alone.
//!
//! Pure functions over ([`RuleSet`], [`UserState`], engine time). The caller owns engine time:
//! it must call [`catch_up`] (firing every timer due up to `now`) before [`apply`].

use std::sync::Arc;

use crate::cexpr::{EventView, Scope};
use crate::event::{Event, EventBody, Millis, ProfileOp};
use crate::rules::RuleSet;
use crate::state::{Pending, UserState};
use crate::time::FAR_FUTURE;
use crate::transition::{Cause, Transition};
use crate::value::{Scalar, Value};

mod evaluate;
mod timers;

pub use evaluate::evaluate;
#[cfg(test)]
pub(crate) use evaluate::evaluate_node;
use evaluate::{evaluate_needed, evaluate_since, Touched};
pub use timers::next_change;
use timers::{quiet_until, TIMER_LOOKAHEAD};

/// Compares segment values with stored membership and records transitions.
pub(crate) fn transitions(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &mut UserState,
    values: &[Value],
    now: Millis,
    cause: Cause,
    out: &mut Vec<Transition>,
) {
    for (i, seg) in rules.segments.iter().enumerate() {
        let member = values[seg.node] == Value::Bool(true);
        let st = &mut state.segments[i];
        if st.member != member {
            st.member = member;
            st.seq += 1;
            let seq = st.seq;
            out.push(transition(
                rules, user, state, i, member, seq, values, now, cause,
            ));
        }
    }
}

/// The transition of segment `i` (with the tags its expression names, from `values`).
#[allow(clippy::too_many_arguments)]
fn transition(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &UserState,
    i: usize,
    enter: bool,
    seq: u32,
    values: &[Value],
    now: Millis,
    cause: Cause,
) -> Transition {
    let seg = &rules.segments[i];
    Transition {
        user_id: user.clone(),
        segment: seg.name.clone(),
        enter,
        seq,
        ts: now,
        cause,
        tags: seg
            .direct_tags
            .iter()
            .map(|&t| (rules.nodes[t].name.clone(), values[t].clone()))
            .collect(),
        incarnation: state.incarnation,
    }
}

/// Fires every timer of this user due at or before `now`, each at its own instant.
pub fn catch_up(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &mut UserState,
    now: Millis,
    out: &mut Vec<Transition>,
) -> usize {
    let mut fired = 0;
    // After an event the timer is left pending: only the interval since then is searched.
    while let Some(mut p) = state.pending.take() {
        // Most events of a user come minutes apart, long before any window rolls or any
        // `now()` comparison flips: a cheap bound proves nothing can have changed.
        let quiet = *p
            .quiet_until
            .get_or_insert_with(|| quiet_until(rules, state, &p.values, p.since));
        if now < quiet {
            state.pending = Some(p);
            return fired;
        }
        let Some(due) = next_change(
            rules,
            state,
            &p.values,
            p.since,
            TIMER_LOOKAHEAD,
            now.saturating_add(1),
        ) else {
            state.pending = Some(p);
            return fired;
        };
        fired += 1;
        let values = evaluate_since(rules, state, due, p, &Touched::default());
        transitions(rules, user, state, &values, due, Cause::Timer, out);
        state.pending = Some(Pending::new(due, values));
    }
    while let Some(due) = state.next_timer.filter(|t| *t <= now) {
        fired += 1;
        let values = evaluate_needed(rules, state, due);
        transitions(rules, user, state, &values, due, Cause::Timer, out);
        state.next_timer = next_change(rules, state, &values, due, TIMER_LOOKAHEAD, FAR_FUTURE);
    }
    fired
}

/// Marks the state as changed at `now` (with the node `values` at `now`) and computes its
/// next timer from there.
pub(crate) fn settle_after_change(
    rules: &RuleSet,
    state: &mut UserState,
    now: Millis,
    values: Vec<Value>,
) {
    state.next_timer = None;
    state.pending = Some(Pending::new(now, values));
    settle(rules, state);
}

/// Computes a pending timer (see [`UserState::pending`]); call before storing a state.
pub fn settle(rules: &RuleSet, state: &mut UserState) {
    if let Some(p) = state.pending.take() {
        state.next_timer = next_change(rules, state, &p.values, p.since, 1, FAR_FUTURE);
    }
}

fn id_hash(id: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `event` repeats an event id already applied to this user within the dedup window,
/// judged at the engine time `now` the event would be applied at.
pub fn is_duplicate(
    rules: &RuleSet,
    state: Option<&UserState>,
    event: &Event,
    now: Millis,
) -> bool {
    let (Some(state), Some(id)) = (state, event.event_id.as_deref()) else {
        return false;
    };
    if rules.dedup_window_ms <= 0 {
        return false;
    }
    let h = id_hash(id);
    let horizon = now.saturating_sub(rules.dedup_window_ms);
    state.dedup.contains(h, horizon)
}

/// Applies a track or profile event at engine time `now` (timers must already be caught up) and
/// records the transitions it causes. Returns the user's state afterwards.
pub fn apply(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &mut UserState,
    event: &Event,
    now: Millis,
    out: &mut Vec<Transition>,
) {
    if let (Some(id), true) = (event.event_id.as_deref(), rules.dedup_window_ms > 0) {
        let horizon = now.saturating_sub(rules.dedup_window_ms);
        state.dedup.record(id_hash(id), event.ts, horizon);
    }
    // Values before the event (at the last instant they were computed, within this batch):
    // only what the event or the passing of time can have changed is evaluated again.
    let before = state.pending.take();
    let mut touched = Touched::new(matches!(event.body, EventBody::Profile { .. }));
    match &event.body {
        EventBody::Track { name, properties } => {
            let view = EventView { name, properties };
            for slot in rules.aggregates_for(name) {
                let agg = &rules.aggregates[slot];
                if let Some(filter) = &agg.filter {
                    let scope = Scope {
                        values: &[],
                        now,
                        zone: &rules.zone,
                        event: Some(view),
                    };
                    if filter.eval(&scope) != Value::Bool(true) {
                        continue;
                    }
                }
                // An event the filter drops leaves the accumulator as it was.
                touched.agg(slot);
                let property = agg.property.as_ref().and_then(|p| properties.get(&**p));
                state.aggs[slot].add(agg, &rules.zone, now, event.ts, property);
            }
        }
        EventBody::Profile { op, properties } => {
            for (key, value) in properties {
                let current = state.profile.get(key);
                let write = match op {
                    // Only where there is no value yet; an explicit null recorded later in event
                    // time still wins over it, as for any profile value.
                    ProfileOp::SetOnce => {
                        current.is_none_or(|(t, v)| v.is_null() && event.ts >= *t)
                    }
                    // An increment or append computes its result from the current value, and
                    // that result competes by event time like any value: a late one (older than
                    // the current value) loses and changes nothing.
                    ProfileOp::Set
                    | ProfileOp::Unset
                    | ProfileOp::Increment
                    | ProfileOp::Append => current.is_none_or(|(t, _)| event.ts >= *t),
                };
                if write {
                    let value: Scalar = op.value(current.map(|(_, v)| v), value);
                    state.profile.insert(key.clone(), (event.ts, value));
                }
            }
        }
        EventBody::Delete => {}
    }
    let values = match before {
        Some(p) => evaluate_since(rules, state, now, p, &touched),
        None => evaluate_needed(rules, state, now),
    };
    transitions(rules, user, state, &values, now, Cause::Event, out);
    state.next_timer = None;
    state.pending = Some(Pending::new(now, values));
}

/// Erases a user at engine time `now`: exits for every segment it is in, with cause `delete`.
pub fn delete(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &UserState,
    now: Millis,
    out: &mut Vec<Transition>,
) {
    let all: Vec<usize> = (0..rules.segments.len()).collect();
    exit_segments(rules, user, state, &all, now, Cause::Delete, out);
}

/// Exits from those of `segments` (indices into `rules.segments`) the user is a member of, as
/// one last transition of each sequence (a delete, a segment removed by a rules reload).
pub(crate) fn exit_segments(
    rules: &RuleSet,
    user: &Arc<str>,
    state: &UserState,
    segments: &[usize],
    now: Millis,
    cause: Cause,
    out: &mut Vec<Transition>,
) {
    if !segments.iter().any(|&i| state.segments[i].member) {
        return;
    }
    let values = evaluate(rules, state, now);
    for &i in segments {
        let st = state.segments[i];
        if st.member {
            out.push(transition(
                rules,
                user,
                state,
                i,
                false,
                st.seq + 1,
                &values,
                now,
                cause,
            ));
        }
    }
}

/// One line of the state dump (SPEC §5): every defined tag and the sorted segments, at `now`.
pub fn dump_line(rules: &RuleSet, user: &str, state: &UserState, now: Millis) -> serde_json::Value {
    let values = evaluate(rules, state, now);
    let tags: serde_json::Map<String, serde_json::Value> = rules
        .tags
        .iter()
        .map(|&id| (rules.nodes[id].name.to_string(), values[id].to_json()))
        .collect();
    let mut segments: Vec<&str> = rules
        .segments
        .iter()
        .filter(|s| values[s.node] == Value::Bool(true))
        .map(|s| &*s.name)
        .collect();
    segments.sort_unstable();
    serde_json::json!({ "user_id": user, "tags": tags, "segments": segments })
}
