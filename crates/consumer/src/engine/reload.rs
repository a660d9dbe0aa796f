//! Rules reload: swaps the rule set under live state, in chunks of bounded memory.
//!
//! Every stored user is first caught up under the old rules (timers due by its partition's
//! engine time fire, cause `timer`), then carried over with [`Migration`] (membership changes
//! emit cause `rules`), and its next timer recomputed. Users are migrated in store key order,
//! [`EngineOptions::reload_chunk`] at a time, each chunk in ONE atomic commit: its user states,
//! timer index entries, segment bitmaps, outbox entries and a `reloading` record (the new rules
//! and the first user key not yet migrated). The last chunk also stores the new rules and the
//! warming record and removes the `reloading` record. Memory holds one chunk, not every user.
//!
//! The engine lock is held for the whole migration, so no batch sees a mix of layouts. A crash
//! (or a failed commit) between chunks leaves a `reloading` record: the next
//! [`Engine::open`] finishes the migration from where it stopped before anything else, so the
//! state is never left half on the new rules. A failed commit mid-reload marks the engine
//! unusable until that restart (every batch then fails: the pipeline stops with exit 2).
//!
//! A preview ([`Engine::preview`], `POST /v1/rules/reload?dry_run=true`, `tagstream check
//! --preview`) runs the same carry-over ([`carry_user`]) over every stored user of the owned
//! partitions and only counts: it writes nothing and emits nothing.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tagstream_rules::event::Millis;
use tagstream_rules::reload::Migration;
use tagstream_rules::rules::RuleSet;
use tagstream_rules::state::UserState;
use tagstream_rules::transition::Transition;
use tagstream_state::{Cf, StateStore};

use super::{BatchReport, Engine, EngineOptions, Run, Slot};
use crate::error::{ConsumerError, Result};
use crate::schema::{user_of_key, META_RELOADING, META_RULES, META_RULES_HASH, META_WARMING};

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

/// One stored user carried over to new rules: what [`Engine::reload`] writes and what
/// [`Engine::preview`] counts. Both go through this one function.
pub(super) struct CarriedUser {
    /// Transitions of the timers due under the old rules (cause `timer`).
    pub caught_up: Vec<Transition>,
    pub timers_fired: u64,
    /// Transitions the new rules cause (cause `rules`).
    pub migrated: Vec<Transition>,
    pub next: UserState,
    /// The stored next timer (to replace in the timer index).
    pub stored_timer: Option<Millis>,
    /// For each new segment, whether the stored state (as the bitmaps hold it) was a member.
    pub was: Vec<bool>,
}

/// Carries one stored user (its encoded state) over from `old` to `new` at `now`, the engine
/// time of its partition.
pub(super) fn carry_user(
    old: &RuleSet,
    new: &RuleSet,
    migration: &Migration,
    user: &Arc<str>,
    bytes: &[u8],
    now: Millis,
) -> Result<CarriedUser> {
    let state = UserState::decode(bytes).map_err(ConsumerError::Corrupt)?;
    let stored_timer = state.next_timer;
    let stored_members: Vec<bool> = state.segments.iter().map(|s| s.member).collect();
    let carried = migration.carry(old, new, user, state, now);
    let was: Vec<bool> = (0..new.segments.len())
        .map(|j| {
            migration
                .old_segment(j)
                .is_some_and(|i| stored_members.get(i).copied().unwrap_or(false))
        })
        .collect();
    Ok(CarriedUser {
        caught_up: carried.caught_up,
        timers_fired: carried.timers_fired as u64,
        migrated: carried.migrated,
        next: carried.next,
        stored_timer,
        was,
    })
}

/// A segment in a reload preview: its size now and after the reload, and the transitions the
/// reload would emit for it (timers due and rules changes alike). A segment only one of the
/// two rule sets has shows 0 on the other side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewSegment {
    pub name: String,
    pub size_before: u64,
    pub size_after: u64,
    pub enters: u64,
    pub exits: u64,
}

/// What a reload to other rules would do, computed without writing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewReport {
    /// False when the new rules are identical to those in force (a reload would do nothing).
    pub changed: bool,
    /// Stored users of the owned partitions that were evaluated.
    pub users: u64,
    /// The new rules' segments in file order, then the segments the new rules remove.
    pub segments: Vec<PreviewSegment>,
    /// Tags that would start empty.
    pub warming: Vec<String>,
}

/// A preview in progress: the users are visited in store key order, a chunk at a time, so a
/// caller can release the engine between chunks (see [`Engine::preview_step`]).
pub struct Preview {
    old: Arc<RuleSet>,
    new: Arc<RuleSet>,
    migration: Migration,
    report: PreviewReport,
    index: HashMap<Arc<str>, usize>,
    /// The first user key not visited yet; None when done.
    resume: Option<Vec<u8>>,
}

impl std::fmt::Debug for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preview")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Preview {
    /// Whether every user has been visited.
    pub fn done(&self) -> bool {
        self.resume.is_none()
    }

    /// The answer (complete once [`Preview::done`]).
    pub fn finish(self) -> PreviewReport {
        self.report
    }

    fn count(&mut self, transitions: &[Transition]) {
        for t in transitions {
            if let Some(&i) = self.index.get(&t.segment) {
                let seg = &mut self.report.segments[i];
                if t.enter {
                    seg.enters += 1;
                } else {
                    seg.exits += 1;
                }
            }
        }
    }
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

/// A reload whose chunks are not all committed (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    /// The new rules' source.
    source: String,
    /// The warming record the new rules take over with.
    warming: Vec<WarmingEntry>,
    /// The first user key not migrated yet.
    resume: Vec<u8>,
}

/// Finishes a reload interrupted by a crash or a failed commit, if the store holds one: the
/// remaining users are migrated to the rules it records, which then take over. Called by
/// [`Engine::open`] before anything else reads the state.
pub(super) fn finish_pending(store: &Arc<dyn StateStore>, options: &EngineOptions) -> Result<()> {
    let Some(bytes) = store.get(Cf::Meta, META_RELOADING)? else {
        return Ok(());
    };
    let pending: Pending = serde_json::from_slice(&bytes)
        .map_err(|e| ConsumerError::Corrupt(format!("interrupted reload record: {e}")))?;
    let stored = Engine::stored_rules(store.as_ref())?
        .ok_or_else(|| ConsumerError::Corrupt("rules hash without rules source".into()))?;
    let compile = |source: &str, what: &str| {
        RuleSet::compile(source, what).map(Arc::new).map_err(|e| {
            ConsumerError::User(format!(
                "a rules reload was interrupted and cannot be finished: {what} no longer compile: {e}"
            ))
        })
    };
    let old = compile(&stored, "<rules stored in the state dir>")?;
    let new = compile(&pending.source, "<rules of the interrupted reload>")?;
    let mut engine = Engine::open_current(
        store.clone(),
        old.clone(),
        EngineOptions {
            reload_on_open: false,
            ..options.clone()
        },
    )?;
    tracing::warn!("the last rules reload was interrupted: migrating the remaining users to its rules before starting");
    let migration = Migration::plan(&old, &new);
    engine.rules = new;
    let (report, users) = engine
        .migrate_chunks(&old, &migration, pending, false)
        .map_err(|(e, _)| e)?;
    tracing::info!(
        users,
        transitions = report.transitions,
        "finished the interrupted rules reload"
    );
    Ok(())
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
    /// Starts a preview of a reload to `rules` (see [`Engine::preview`]).
    pub fn preview_start(&self, rules: Arc<RuleSet>) -> Preview {
        let old = self.rules.clone();
        let migration = Migration::plan(&old, &rules);
        let changed = rules.fingerprint != old.fingerprint;
        let at = self.clocks.values().copied().max().unwrap_or(Millis::MIN);
        let mut segments: Vec<PreviewSegment> = rules
            .segments
            .iter()
            .enumerate()
            .map(|(j, seg)| {
                let before = migration
                    .old_segment(j)
                    .map_or(0, |i| self.segment_size(&old.segments[i].name));
                PreviewSegment {
                    name: seg.name.to_string(),
                    size_before: before,
                    // Identical rules: a reload changes nothing.
                    size_after: if changed { 0 } else { before },
                    enters: 0,
                    exits: 0,
                }
            })
            .collect();
        for &i in &migration.removed_segments {
            segments.push(PreviewSegment {
                name: old.segments[i].name.to_string(),
                size_before: self.segment_size(&old.segments[i].name),
                size_after: 0,
                enters: 0,
                exits: 0,
            });
        }
        let index = segments
            .iter()
            .enumerate()
            .map(|(i, s)| (Arc::from(s.name.as_str()), i))
            .collect();
        let warming = if changed {
            migration
                .warming(&rules, at)
                .into_iter()
                .map(|w| w.tag.to_string())
                .collect()
        } else {
            Vec::new()
        };
        Preview {
            old,
            new: rules,
            migration,
            report: PreviewReport {
                changed,
                users: 0,
                segments,
                warming,
            },
            index,
            resume: changed.then(Vec::new),
        }
    }

    /// Carries up to `max_users` more stored users over, counting what a reload would do;
    /// returns true when every user has been visited. Reads only. The rules in force must
    /// not have changed since [`Engine::preview_start`].
    pub fn preview_step(&self, preview: &mut Preview, max_users: usize) -> Result<bool> {
        let Some(start) = preview.resume.take() else {
            return Ok(true);
        };
        if self.rules.fingerprint != preview.old.fingerprint {
            return Err(ConsumerError::User(
                "the rules in force changed during the preview; ask again".into(),
            ));
        }
        let rows = self.store.scan(Cf::Users, &start, None, max_users.max(1))?;
        let full = rows.len() >= max_users.max(1);
        let (old, new) = (preview.old.clone(), preview.new.clone());
        for (key, bytes) in &rows {
            let (partition, user) = user_of_key(key)?;
            // As the reload: a partition without engine time holds no state to carry.
            let Some(now) = self.clocks.get(&partition).copied() else {
                continue;
            };
            if !self.owns(partition) {
                continue;
            }
            let carried = carry_user(&old, &new, &preview.migration, &user, bytes, now)?;
            preview.report.users += 1;
            preview.count(&carried.caught_up);
            preview.count(&carried.migrated);
            for (j, seg) in carried.next.segments.iter().enumerate() {
                if seg.member {
                    preview.report.segments[j].size_after += 1;
                }
            }
        }
        preview.resume = match rows.last() {
            Some((key, _)) if full => {
                let mut next = key.clone();
                next.push(0);
                Some(next)
            }
            _ => None,
        };
        Ok(preview.resume.is_none())
    }

    /// What reloading `rules` would do to the owned partitions — segment sizes before and
    /// after, enters and exits, tags that would start empty — computed by the reload's own
    /// carry-over without writing or emitting anything.
    pub fn preview(&self, rules: Arc<RuleSet>) -> Result<PreviewReport> {
        let mut preview = self.preview_start(rules);
        while !self.preview_step(&mut preview, 4096)? {}
        Ok(preview.finish())
    }

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
        self.check_usable()?;
        if rules.fingerprint == self.rules.fingerprint {
            return Ok(ReloadReport::default());
        }
        // Only the partitions owned here are carried over (see the `ownership` module).
        self.drop_not_owned()?;
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
        self.rules = rules.clone();
        let pending = Pending {
            source: rules_source.to_owned(),
            warming,
            resume: Vec::new(),
        };
        match self.migrate_chunks(&old, &migration, pending, true) {
            Ok((report, users)) => Ok(ReloadReport {
                changed: true,
                users,
                report,
                warming: new_warming
                    .into_iter()
                    .map(|w| (w.tag.to_string(), w.since, w.until))
                    .collect(),
            }),
            Err((e, false)) => {
                // Nothing was committed (the failed batch rolled bitmaps and ids back).
                self.rules = old;
                Err(e)
            }
            Err((e, true)) => {
                tracing::error!(error = %e, "a rules reload failed after some of its chunks were committed: stopping; the next start finishes it");
                self.reload_unfinished = true;
                Err(e)
            }
        }
    }

    /// Migrates the stored users from `pending.resume` on, a chunk per commit, to the rules in
    /// force (already the new ones); `first`: this is the reload's first chunk (the removed
    /// segments' bitmaps go with it). Returns what was emitted and the users visited, or the
    /// error and whether some chunk was committed.
    fn migrate_chunks(
        &mut self,
        old: &Arc<RuleSet>,
        migration: &Migration,
        mut pending: Pending,
        first: bool,
    ) -> std::result::Result<(BatchReport, u64), (ConsumerError, bool)> {
        let new = self.rules.clone();
        let chunk = self.options.reload_chunk.max(1);
        let mut committed = !first;
        let mut total = BatchReport::default();
        let mut users = 0u64;
        loop {
            let rows = self
                .store
                .scan(Cf::Users, &pending.resume, None, chunk)
                .map_err(|e| (e.into(), committed))?;
            let last = rows.len() < chunk;
            users += rows.len() as u64;
            if let Some((key, _)) = rows.last() {
                pending.resume = key.clone();
                pending.resume.push(0);
            }
            let mut run = Run::new(self);
            if !committed {
                for &i in &migration.removed_segments {
                    run.engine
                        .bitmaps
                        .drop_segment(&old.segments[i].name, &mut run.extra);
                }
            }
            for (key, bytes) in rows {
                let (partition, user) = user_of_key(&key).map_err(|e| (e, committed))?;
                let Some(now) = run.clocks.get(&partition).copied() else {
                    continue;
                };
                let carried = carry_user(old, &new, migration, &user, &bytes, now)
                    .map_err(|e| (e, committed))?;
                run.report.timers_fired += carried.timers_fired;
                run.emit(partition, carried.caught_up, usize::MAX, 0);
                run.emit(partition, carried.migrated, usize::MAX, 0);
                run.users.insert(
                    (partition, user),
                    Slot {
                        state: Some(carried.next),
                        id: None,
                        stored_timer: carried.stored_timer,
                        stored_members: carried.was,
                        existed: true,
                        dirty: true,
                    },
                );
            }
            if last {
                run.extra.put(
                    Cf::Meta,
                    META_RULES_HASH,
                    new.fingerprint.as_bytes().to_vec(),
                );
                run.extra
                    .put(Cf::Meta, META_RULES, pending.source.as_bytes().to_vec());
                run.extra.put(
                    Cf::Meta,
                    META_WARMING,
                    serde_json::to_vec(&pending.warming).expect("warming record serialises"),
                );
                run.extra.delete(Cf::Meta, META_RELOADING);
            } else {
                run.extra.put(
                    Cf::Meta,
                    META_RELOADING,
                    serde_json::to_vec(&pending).expect("reload record serialises"),
                );
            }
            let report = run.commit(&[]).map_err(|e| (e, committed))?;
            committed = true;
            total.merge(&report);
            if last {
                self.warming = pending.warming;
                return Ok((total, users));
            }
        }
    }
}
