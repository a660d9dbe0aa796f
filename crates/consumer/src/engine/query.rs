//! Read-only questions the HTTP API asks: a user's profile (a dump line), why a user is in or
//! out of a segment, and pages of a set of users.
//!
//! Everything reads committed state at the engine time of the user's partition, so an answer
//! equals what `tagstream dump` would print at that moment.

use roaring::RoaringBitmap;
use serde_json::Value as Json;
use tagstream_rules::engine::dump_line;
use tagstream_rules::event::Millis;
use tagstream_rules::explain::{dependencies, explain};
use tagstream_state::UserIds;

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
    /// is a user error.
    pub fn explain(&self, user: &str, segment: &str) -> Result<Option<Json>> {
        let seg = self.rules.segment_by_name(segment).ok_or_else(|| {
            ConsumerError::User(format!(
                "unknown segment {segment:?}; the segments are: {}",
                self.segment_names().join(", ")
            ))
        })?;
        Ok(self
            .user(user)?
            .map(|(state, now)| explain(&self.rules, seg, user, &state, now)))
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
