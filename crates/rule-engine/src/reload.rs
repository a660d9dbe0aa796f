//! Changing rules under live state: how a user's stored state carries over to a new rule set.
//!
//! What can be recomputed and what cannot:
//! * An aggregate whose definition is unchanged (same kind, events, property, `where`, window
//!   and `k`, and for a windowed one the same time zone) keeps its accumulator, whatever its
//!   name: its value stays exact.
//! * A new or changed aggregate starts empty at the reload: events applied before it are not
//!   replayed (the input may be long gone). A windowed one is complete again once its whole
//!   window lies after the reload ([`Migration::warming`] says when); a lifetime one only counts
//!   events since the reload.
//! * Profile attributes, remembered event ids and derived tags (expr, case, tier, nearest) need
//!   no history: they are always exact.
//! * Segments are matched by name and keep their transition `seq`. Every segment of the new
//!   rules is evaluated at the reload instant; a membership that differs from the stored one
//!   emits an enter or exit with cause `rules`. A segment that no longer exists emits an exit
//!   for each member.

use std::sync::Arc;

use crate::engine::{catch_up, evaluate, exit_segments, settle, settle_after_change, transitions};
use crate::event::Millis;
use crate::rules::RuleSet;
use crate::state::{SegmentState, UserState};
use crate::transition::{Cause, Transition};
use crate::value::Value;

/// How state built with `old` rules maps onto `new` rules.
#[derive(Debug, Clone)]
pub struct Migration {
    /// For each new aggregate slot, the old slot whose accumulator it keeps.
    aggregates: Vec<Option<usize>>,
    /// For each new segment, the old segment of the same name.
    segments: Vec<Option<usize>>,
    /// Old segments with no namesake in the new rules.
    pub removed_segments: Vec<usize>,
}

/// A new aggregate that starts empty: from when it counts, and (windowed) when its window is
/// full again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warming {
    pub tag: Arc<str>,
    pub since: Millis,
    /// None for a lifetime aggregate: it never sees the events before `since`.
    pub until: Option<Millis>,
}

/// One user carried over by [`Migration::carry`].
#[derive(Debug, Clone)]
pub struct Carried {
    /// Transitions of the timers that were due under the old rules (cause `timer`).
    pub caught_up: Vec<Transition>,
    /// How many timers fired while catching up.
    pub timers_fired: usize,
    /// Transitions the change of rules causes (cause `rules`).
    pub migrated: Vec<Transition>,
    /// The state under the new rules, its next timer not yet computed (see
    /// [`crate::engine::settle`]).
    pub next: UserState,
}

impl Migration {
    pub fn plan(old: &RuleSet, new: &RuleSet) -> Migration {
        let same_zone = old.zone == new.zone;
        let aggregates = new
            .aggregates
            .iter()
            .map(|a| {
                old.aggregates
                    .iter()
                    .position(|o| o.signature == a.signature && (a.window.is_none() || same_zone))
            })
            .collect();
        let segments = new
            .segments
            .iter()
            .map(|s| old.segments.iter().position(|o| o.name == s.name))
            .collect();
        let removed_segments = (0..old.segments.len())
            .filter(|&i| new.segment_by_name(&old.segments[i].name).is_none())
            .collect();
        Migration {
            aggregates,
            segments,
            removed_segments,
        }
    }

    /// The old segment index a new segment continues, if any.
    pub fn old_segment(&self, new_index: usize) -> Option<usize> {
        self.segments[new_index]
    }

    /// New aggregates that start empty when the reload happens at `at`.
    pub fn warming(&self, new: &RuleSet, at: Millis) -> Vec<Warming> {
        self.aggregates
            .iter()
            .enumerate()
            .filter(|(_, old)| old.is_none())
            .map(|(slot, _)| {
                let agg = &new.aggregates[slot];
                Warming {
                    tag: agg.name.clone(),
                    since: at,
                    until: agg
                        .window
                        .map(|w| w.bucket_start(&new.zone, w.bucket_of(&new.zone, at) + w.buckets)),
                }
            })
            .collect()
    }

    /// Whether the new rules start any aggregate empty.
    pub fn resets_aggregates(&self) -> bool {
        self.aggregates.iter().any(Option::is_none)
    }

    /// The whole carry-over of one stored user, as a reload does it and as a preview
    /// (`dry_run`) computes it without writing: the user is first caught up to `now` under
    /// `old` (timers due fire, cause `timer`), then carried over to `new` with
    /// [`Migration::migrate`] (cause `rules`). Pure: `state` is consumed, nothing is written.
    pub fn carry(
        &self,
        old: &RuleSet,
        new: &RuleSet,
        user: &Arc<str>,
        mut state: UserState,
        now: Millis,
    ) -> Carried {
        let mut caught_up = Vec::new();
        let timers_fired = catch_up(old, user, &mut state, now, &mut caught_up);
        settle(old, &mut state);
        let mut migrated = Vec::new();
        let next = self.migrate(old, new, user, &state, now, &mut migrated);
        Carried {
            caught_up,
            timers_fired,
            migrated,
            next,
        }
    }

    /// Carries `state` (built with `old`, caught up to `now`) over to `new`, records the
    /// transitions that causes (cause `rules`), and leaves the next timer to compute with
    /// [`crate::engine::settle`].
    pub fn migrate(
        &self,
        old: &RuleSet,
        new: &RuleSet,
        user: &Arc<str>,
        state: &UserState,
        now: Millis,
        out: &mut Vec<Transition>,
    ) -> UserState {
        exit_segments(
            old,
            user,
            state,
            &self.removed_segments,
            now,
            Cause::Rules,
            out,
        );
        let fresh = UserState::new(&new.aggregates, new.segments.len());
        let mut next = UserState {
            aggs: fresh
                .aggs
                .into_iter()
                .zip(&self.aggregates)
                .map(|(empty, old_slot)| match old_slot {
                    Some(i) => state.aggs[*i].clone(),
                    None => empty,
                })
                .collect(),
            profile: state.profile.clone(),
            dedup: state.dedup.clone(),
            segments: self
                .segments
                .iter()
                .map(|old_index| match old_index {
                    Some(i) => state.segments[*i],
                    None => SegmentState::default(),
                })
                .collect(),
            next_timer: None,
            pending: None,
            incarnation: state.incarnation,
        };
        let values: Vec<Value> = evaluate(new, &next, now);
        transitions(new, user, &mut next, &values, now, Cause::Rules, out);
        settle_after_change(new, &mut next, now, values);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{apply, catch_up, settle};
    use crate::event::{decode, DecodeOptions};

    const OLD: &str = r#"
[[tag]]
name = "orders"
kind = "count"
event = "purchase"

[[tag]]
name = "spend_7d"
kind = "sum"
event = "purchase"
property = "amount"
window = "7d"

[[segment]]
name = "buyer"
when = "orders >= 1"

[[segment]]
name = "big"
when = "spend_7d >= 100"

[[segment]]
name = "gone_soon"
when = "orders >= 2"
"#;

    fn built(rules: &RuleSet) -> (UserState, Millis) {
        let user: Arc<str> = Arc::from("u1");
        let mut state = UserState::new(&rules.aggregates, rules.segments.len());
        let mut now = 0;
        for (ts, amount) in [(1_700_000_000_000i64, 80), (1_700_000_100_000, 50)] {
            let line = format!(
                r#"{{"user_id":"u1","event":"purchase","ts":{ts},"properties":{{"amount":{amount}}}}}"#
            );
            let event = decode(line.as_bytes(), &DecodeOptions::default()).unwrap();
            now = ts;
            let mut out = Vec::new();
            catch_up(rules, &user, &mut state, now, &mut out);
            apply(rules, &user, &mut state, &event, now, &mut out);
        }
        settle(rules, &mut state);
        (state, now)
    }

    #[test]
    fn keeps_unchanged_aggregates_and_emits_rules_transitions() {
        let old = RuleSet::compile(OLD, "old.toml").unwrap();
        // orders renamed (same definition), spend window changed, a segment added, one removed,
        // one changed.
        let new = RuleSet::compile(
            r#"
[[tag]]
name = "purchases"
kind = "count"
event = "purchase"

[[tag]]
name = "spend_30d"
kind = "sum"
event = "purchase"
property = "amount"
window = "30d"

[[segment]]
name = "buyer"
when = "purchases >= 2"

[[segment]]
name = "big"
when = "spend_30d >= 100"

[[segment]]
name = "repeat"
when = "purchases >= 2"
"#,
            "new.toml",
        )
        .unwrap();
        let (state, now) = built(&old);
        assert!(state.segments.iter().all(|s| s.member));
        let m = Migration::plan(&old, &new);
        assert_eq!(m.removed_segments, vec![2]);
        let user: Arc<str> = Arc::from("u1");
        let mut out = Vec::new();
        let next = m.migrate(&old, &new, &user, &state, now, &mut out);
        let got: Vec<(String, bool, u32)> = out
            .iter()
            .map(|t| (t.segment.to_string(), t.enter, t.seq))
            .collect();
        // gone_soon exits (removed); big exits (its new 30d sum starts empty); repeat enters
        // (orders carried over as purchases = 2); buyer stays in.
        assert_eq!(
            got,
            vec![
                ("gone_soon".to_string(), false, 2),
                ("big".to_string(), false, 2),
                ("repeat".to_string(), true, 1),
            ]
        );
        assert!(out.iter().all(|t| t.cause == Cause::Rules && t.ts == now));
        let values = evaluate(&new, &next, now);
        assert_eq!(
            values[new.node_by_name("purchases").unwrap()],
            Value::Num(2.0)
        );
        assert_eq!(
            values[new.node_by_name("spend_30d").unwrap()],
            Value::Num(0.0)
        );
        let warming = m.warming(&new, now);
        assert_eq!(warming.len(), 1);
        assert_eq!(&*warming[0].tag, "spend_30d");
        assert!(warming[0].until.unwrap() > now + 29 * 86_400_000);
        assert!(warming[0].until.unwrap() <= now + 30 * 86_400_000);
    }

    #[test]
    fn identical_rules_change_nothing() {
        let old = RuleSet::compile(OLD, "old.toml").unwrap();
        let new = RuleSet::compile(OLD, "old.toml").unwrap();
        let (state, now) = built(&old);
        let m = Migration::plan(&old, &new);
        assert!(!m.resets_aggregates());
        let mut out = Vec::new();
        let next = m.migrate(&old, &new, &Arc::from("u1"), &state, now, &mut out);
        assert!(out.is_empty());
        assert_eq!(next, state);
    }

    #[test]
    fn a_windowed_aggregate_in_another_zone_starts_empty() {
        let old = RuleSet::compile(OLD, "old.toml").unwrap();
        let new =
            RuleSet::compile(&format!("time_zone = \"Asia/Shanghai\"\n{OLD}"), "new.toml").unwrap();
        let m = Migration::plan(&old, &new);
        let warming = m.warming(&new, 0);
        assert_eq!(warming.len(), 1);
        assert_eq!(&*warming[0].tag, "spend_7d");
    }
}
