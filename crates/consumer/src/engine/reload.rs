//! Rules reload: swaps the rule set under live state in ONE atomic commit.
//!
//! Every stored user is first caught up under the old rules (timers due by its partition's
//! engine time fire, cause `timer`), then carried over with [`Migration`] (membership changes
//! emit cause `rules`), and its next timer recomputed. User states, the timer index, segment
//! bitmaps (a removed segment's are dropped), the outbox entries, the new rules source and the
//! warming record are written together: a crash leaves either the old rules with the old state
//! or the new rules with the new state, never a mix.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tagstream_rules::engine as core;
use tagstream_rules::event::Millis;
use tagstream_rules::reload::Migration;
use tagstream_rules::rules::RuleSet;
use tagstream_rules::state::UserState;
use tagstream_state::keys::split_prefixed;
use tagstream_state::{Cf, StateStore};

use super::{
    BatchReport, Engine, EngineOptions, Run, Slot, META_RULES, META_RULES_HASH, META_WARMING,
};
use crate::error::{ConsumerError, Result};

/// An aggregate that started empty at a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmingEntry {
    /// The aggregate's definition (see `Aggregate::signature`); the tag name may change later.
    pub signature: String,
    /// Events count from this engine time on.
    pub since: Millis,
    /// Windowed aggregates: from this engine time the whole window lies after `since`. None for
    /// lifetime aggregates, which never see the events before `since`.
    pub until: Option<Millis>,
}

/// What a reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// False when the new rules are identical to those in force (nothing was written).
    pub changed: bool,
    pub users: u64,
    pub report: BatchReport,
    /// Tags that start empty with this reload: (tag name, since, until).
    pub warming: Vec<(String, Millis, Option<Millis>)>,
}

pub(super) fn load_warming(store: &dyn StateStore) -> Result<Vec<WarmingEntry>> {
    match store.get(Cf::Meta, META_WARMING)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| ConsumerError::Corrupt(format!("warming record: {e}"))),
        None => Ok(Vec::new()),
    }
}

/// Opens a store built with other rules and carries its state over to `rules`.
pub(super) fn open_with_new_rules(
    store: Arc<dyn StateStore>,
    rules: Arc<RuleSet>,
    rules_source: &str,
    options: EngineOptions,
) -> Result<Engine> {
    let stored = Engine::stored_rules(store.as_ref())?
        .ok_or_else(|| ConsumerError::Corrupt("rules hash without rules source".into()))?;
    let old = RuleSet::compile(&stored, "<rules stored in the state dir>").map_err(|e| {
        ConsumerError::User(format!(
            "the rules stored in the state dir no longer compile, so its state cannot be carried over to the new rules: {e}"
        ))
    })?;
    let mut engine = Engine::open(
        store,
        Arc::new(old),
        &stored,
        EngineOptions {
            reload_on_open: false,
            ..options
        },
    )?;
    let report = engine.reload(rules, rules_source)?;
    tracing::info!(
        users = report.users,
        transitions = report.report.transitions,
        "rules changed since the last run: state carried over to the new rules"
    );
    Ok(engine)
}

impl Engine {
    /// Aggregates started empty by reloads and still present in the rules in force, with the
    /// tag name they have now.
    pub fn warming(&self) -> Vec<(Arc<str>, &WarmingEntry)> {
        self.warming
            .iter()
            .filter_map(|w| {
                self.rules
                    .aggregates
                    .iter()
                    .find(|a| a.signature == w.signature)
                    .map(|a| (a.name.clone(), w))
            })
            .collect()
    }

    /// Replaces the rules in force (validated by the caller: `rules` is compiled). Atomic: on
    /// error nothing is applied and the old rules stay in force.
    pub fn reload(&mut self, rules: Arc<RuleSet>, rules_source: &str) -> Result<ReloadReport> {
        if rules.fingerprint == self.rules.fingerprint {
            return Ok(ReloadReport::default());
        }
        let old = self.rules.clone();
        let migration = Migration::plan(&old, &rules);
        let at = self.clocks.values().copied().max().unwrap_or(Millis::MIN);
        let mut warming: Vec<WarmingEntry> = self
            .warming
            .iter()
            .filter(|w| rules.aggregates.iter().any(|a| a.signature == w.signature))
            .cloned()
            .collect();
        let new_warming = migration.warming(&rules, at);
        for w in &new_warming {
            let agg = rules
                .aggregates
                .iter()
                .find(|a| a.name == w.tag)
                .expect("warming names a new aggregate");
            warming.retain(|e| e.signature != agg.signature);
            warming.push(WarmingEntry {
                signature: agg.signature.clone(),
                since: w.since,
                until: w.until,
            });
        }
        // Cached states are in the old layout.
        self.cache.clear();
        let mut rows = Vec::new();
        self.store.for_each(Cf::Users, &[], None, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })?;
        let users = rows.len() as u64;
        self.rules = rules.clone();
        let result = self.migrate_all(&old, &migration, rows, rules_source, &warming);
        match result {
            Ok(report) => {
                self.warming = warming;
                Ok(ReloadReport {
                    changed: true,
                    users,
                    report,
                    warming: new_warming
                        .into_iter()
                        .map(|w| (w.tag.to_string(), w.since, w.until))
                        .collect(),
                })
            }
            Err(e) => {
                self.rules = old;
                // The in-memory bitmaps may hold staged changes: reload them from the store.
                self.bitmaps = tagstream_state::SegmentBitmaps::load(self.store.as_ref())?;
                Err(e)
            }
        }
    }

    fn migrate_all(
        &mut self,
        old: &Arc<RuleSet>,
        migration: &Migration,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        rules_source: &str,
        warming: &[WarmingEntry],
    ) -> Result<BatchReport> {
        let new = self.rules.clone();
        let mut run = Run::new(self);
        for &i in &migration.removed_segments {
            run.engine
                .bitmaps
                .drop_segment(&old.segments[i].name, &mut run.extra);
        }
        for (key, bytes) in rows {
            let (partition, user) =
                split_prefixed(&key).ok_or_else(|| ConsumerError::Corrupt("user key".into()))?;
            let user: Arc<str> = Arc::from(
                std::str::from_utf8(user).map_err(|_| ConsumerError::Corrupt("user key".into()))?,
            );
            let Some(now) = run.clocks.get(&partition).copied() else {
                continue;
            };
            let mut state = UserState::decode(&bytes).map_err(ConsumerError::Corrupt)?;
            let stored_timer = state.next_timer;
            let stored_members: Vec<bool> = state.segments.iter().map(|s| s.member).collect();
            let mut out = Vec::new();
            run.report.timers_fired += core::catch_up(old, &user, &mut state, now, &mut out) as u64;
            core::settle(old, &mut state);
            run.emit(out, usize::MAX, 0);
            let mut out = Vec::new();
            let next = migration.migrate(old, &new, &user, &state, now, &mut out);
            run.emit(out, usize::MAX, 0);
            let was: Vec<bool> = (0..new.segments.len())
                .map(|j| {
                    migration
                        .old_segment(j)
                        .is_some_and(|i| stored_members.get(i).copied().unwrap_or(false))
                })
                .collect();
            run.users.insert(
                (partition, user),
                Slot {
                    state: Some(next),
                    id: None,
                    stored_timer,
                    stored_members: was,
                    existed: true,
                    dirty: true,
                },
            );
        }
        run.extra.put(
            Cf::Meta,
            META_RULES_HASH,
            new.fingerprint.as_bytes().to_vec(),
        );
        run.extra
            .put(Cf::Meta, META_RULES, rules_source.as_bytes().to_vec());
        run.extra.put(
            Cf::Meta,
            META_WARMING,
            serde_json::to_vec(warming).expect("warming record serialises"),
        );
        run.commit(&[])
    }
}
