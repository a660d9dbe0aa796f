//! Read-only questions the HTTP API asks: a user's profile (a dump line), why a user is in or
//! out of a segment, and pages of a set of users.
//!
//! Everything reads committed state at the engine time of the user's partition, so an answer
//! equals what `tagstream dump` would print at that moment.

use roaring::RoaringBitmap;
use serde_json::Value as Json;
use tagstream_rules::engine::dump_line;
use tagstream_rules::event::Millis;
use tagstream_rules::explain::{dependencies, explain_bounded, TooLarge, MAX_TREE_NODES};
use tagstream_rules::state::UserState;
use tagstream_state::bitmaps::PRESENT;
use tagstream_state::{Cf, UserIds};

use super::Engine;
use crate::error::{ConsumerError, Result};

/// One page of users, in the stable order of their internal ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub members: Vec<String>,
    /// The last internal id on this page when more may follow: pass it back as `after`.
    pub next: Option<u32>,
}

/// A segment as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub name: String,
    pub description: String,
    pub size: u64,
    /// Some tag the segment reads started empty at a rules reload and its window is not full
    /// yet: until this engine time the segment may miss users.
    pub warming_until: Option<Millis>,
    /// Some lifetime tag the segment reads was added by a rules reload: it counts only events
    /// since this engine time.
    pub history_since: Option<Millis>,
}

impl Engine {
    /// Every segment in force, in file order, with its live size and warming state.
    pub fn segment_summaries(&self) -> Vec<SegmentSummary> {
        let now = self.clocks.values().copied().max().unwrap_or(Millis::MIN);
        let warming = self.warming();
        self.rules
            .segments
            .iter()
            .map(|seg| {
                let reads: Vec<&str> = dependencies(&self.rules, seg.node)
                    .into_iter()
                    .map(|id| &*self.rules.nodes[id].name)
                    .collect();
                let mine = warming.iter().filter(|(tag, _)| reads.contains(&&**tag));
                let mut warming_until = None;
                let mut history_since = None;
                for (_, w) in mine {
                    match w.until {
                        Some(until) if until > now => {
                            warming_until = warming_until.max(Some(until));
                        }
                        Some(_) => {}
                        None => history_since = history_since.max(Some(w.since)),
                    }
                }
                SegmentSummary {
                    name: seg.name.to_string(),
                    description: seg.description.clone(),
                    size: self.segment_size(&seg.name),
                    warming_until,
                    history_since,
                }
            })
            .collect()
    }

    /// The user's dump line (SPEC §5); None for an unknown user.
    pub fn profile(&self, user: &str) -> Result<Option<Json>> {
        Ok(self
            .user(user)?
            .map(|(state, now)| dump_line(&self.rules, user, &state, now)))
    }

    /// Why `user` is in or out of `segment`; Ok(None) for an unknown user. An unknown segment
    /// is a user error; an explanation over [`MAX_TREE_NODES`] nodes is refused (the inner
    /// error), never built.
    pub fn explain(
        &self,
        user: &str,
        segment: &str,
    ) -> Result<Option<std::result::Result<Json, TooLarge>>> {
        let seg = self.rules.segment_by_name(segment).ok_or_else(|| {
            ConsumerError::User(format!(
                "unknown segment {segment:?}; the segments are: {}",
                self.segment_names().join(", ")
            ))
        })?;
        Ok(self.user(user)?.map(|(state, now)| {
            explain_bounded(&self.rules, seg, user, &state, now, MAX_TREE_NODES)
        }))
    }

    /// Names of the segments in force, in file order.
    pub fn segment_names(&self) -> Vec<&str> {
        self.rules.segments.iter().map(|s| &*s.name).collect()
    }

    /// Members of a segment (owned partitions), or None for a segment not in the rules.
    pub fn segment_bitmap(&self, segment: &str) -> Option<RoaringBitmap> {
        self.rules
            .segment_by_name(segment)
            .map(|s| self.bitmaps.union_where(&s.name, |p| self.owns(p)))
    }

    /// Number of members of a segment (owned partitions).
    pub fn segment_size(&self, segment: &str) -> u64 {
        self.bitmaps.len_where(segment, |p| self.owns(p))
    }

    /// Every user in state (owned partitions).
    pub fn all_users(&self) -> RoaringBitmap {
        self.bitmaps
            .union_where(tagstream_state::bitmaps::PRESENT, |p| self.owns(p))
    }

    /// Up to `limit` users of `set` with internal ids above `after`, by id.
    pub fn page(&self, set: &RoaringBitmap, after: Option<u32>, limit: usize) -> Result<Page> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let ids: Vec<u32> = match after {
            Some(u32::MAX) => Vec::new(),
            _ => set.range(start..).take(limit).collect(),
        };
        let next = match ids.last() {
            Some(&last)
                if ids.len() == limit && set.range(last.saturating_add(1)..).next().is_some() =>
            {
                Some(last)
            }
            _ => None,
        };
        let names = UserIds::names_of(self.store.as_ref(), &ids)?;
        let members = names
            .into_iter()
            .zip(&ids)
            .map(|(name, id)| {
                name.ok_or_else(|| ConsumerError::Corrupt(format!("user id {id} has no name")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { members, next })
    }
}

/// The state of one user read for an ad-hoc condition: internal id, state, engine time of its
/// partition.
pub type StateAt = (u32, UserState, Millis);

impl Engine {
    /// The rules source in force (as stored with the state).
    pub fn rules_source(&self) -> Result<String> {
        Engine::stored_rules(self.store.as_ref())?
            .ok_or_else(|| ConsumerError::Corrupt("the state holds no rules source".into()))
    }

    /// Users (owned partitions) in every one of `segments` (everyone when empty): the only
    /// users a condition whose top-level conjuncts are these segments can match.
    pub fn candidates(&self, segments: &[&str]) -> RoaringBitmap {
        let mut sets: Vec<RoaringBitmap> = segments
            .iter()
            .map(|name| self.segment_bitmap(name).unwrap_or_default())
            .collect();
        if sets.is_empty() {
            return self.all_users();
        }
        sets.sort_by_key(RoaringBitmap::len);
        let mut sets = sets.into_iter();
        let mut acc = sets.next().unwrap_or_default();
        for s in sets {
            acc &= s;
        }
        acc
    }

    /// Committed states of the users `ids` (owned partitions), with the engine time of each
    /// one's partition; ids of users no longer in state are left out.
    pub fn states_of(&self, ids: &[u32]) -> Result<Vec<StateAt>> {
        let partitions: Vec<(u32, Millis, &RoaringBitmap)> = self
            .clocks
            .iter()
            .filter(|(p, _)| self.owns(**p))
            .filter_map(|(&p, &now)| self.bitmaps.get(PRESENT, p).map(|b| (p, now, b)))
            .collect();
        let located: Vec<(u32, u32, Millis)> = ids
            .iter()
            .filter_map(|&id| {
                partitions
                    .iter()
                    .find(|(_, _, b)| b.contains(id))
                    .map(|&(p, now, _)| (id, p, now))
            })
            .collect();
        let just_ids: Vec<u32> = located.iter().map(|(id, _, _)| *id).collect();
        let names = UserIds::names_of(self.store.as_ref(), &just_ids)?;
        let keys: Vec<Vec<u8>> = located
            .iter()
            .zip(&names)
            .map(|((_, p, _), name)| {
                crate::schema::user_key(*p, name.as_deref().unwrap_or_default())
            })
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let values = self.store.multi_get(Cf::Users, &refs)?;
        let mut out = Vec::with_capacity(located.len());
        for (((id, _, now), name), value) in located.into_iter().zip(names).zip(values) {
            if let (Some(_), Some(bytes)) = (name, value) {
                let state = UserState::decode(&bytes).map_err(ConsumerError::Corrupt)?;
                out.push((id, state, now));
            }
        }
        Ok(out)
    }
}

/// A page of users in (partition, internal id) order — the order several instances can merge
/// their answers in, since each partition is owned by one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyedPage {
    /// (partition, internal id, user id).
    pub members: Vec<(u32, u32, String)>,
    /// Whether more members follow the last one.
    pub more: bool,
}

impl Engine {
    /// Up to `limit` users of `set` (owned partitions) after the key `after`, in
    /// (partition, internal id) order.
    pub fn page_by_partition(
        &self,
        set: &RoaringBitmap,
        after: Option<(u32, u32)>,
        limit: usize,
    ) -> Result<KeyedPage> {
        let mut keys: Vec<(u32, u32)> = Vec::new();
        let mut more = false;
        for &p in self.clocks.keys().filter(|p| self.owns(**p)) {
            let start = match after {
                Some((ap, _)) if p < ap => continue,
                Some((ap, id)) if p == ap => match id.checked_add(1) {
                    Some(s) => s,
                    None => continue,
                },
                _ => 0,
            };
            let Some(present) = self.bitmaps.get(PRESENT, p) else {
                continue;
            };
            // Walk the smaller of the two sets, testing membership in the other.
            let (walk, test) = if set.len() < present.len() {
                (set, present)
            } else {
                (present, set)
            };
            for id in walk.range(start..).filter(|id| test.contains(*id)) {
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push((p, id));
            }
            if more {
                break;
            }
        }
        let ids: Vec<u32> = keys.iter().map(|k| k.1).collect();
        let names = UserIds::names_of(self.store.as_ref(), &ids)?;
        let members = keys
            .into_iter()
            .zip(names)
            .map(|((p, id), name)| {
                name.map(|n| (p, id, n))
                    .ok_or_else(|| ConsumerError::Corrupt(format!("user id {id} has no name")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyedPage { members, more })
    }
}
