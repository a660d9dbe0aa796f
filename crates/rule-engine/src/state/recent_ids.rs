//! The event ids a user had applied within the dedup window (SPEC §2), answering "was this id
//! applied at or after `horizon`?" in constant time however many events the user has.
//!
//! Heavy users matter here: in a day of e-commerce traffic a few users send thousands of
//! events, and the ids of a 7-day window are hundreds per user. Scanning them on every event
//! (and rewriting the list to drop expired ones) was linear in the window; now expired ids
//! leave from the front of an arrival-ordered queue, and a hash index, built once a user holds
//! more than a handful of ids, answers the membership question.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::Millis;

/// Ids up to this many are found by a scan, which beats hashing for so few; past it the
/// index is built.
const SCAN_AT_MOST: usize = 16;

/// Hashes of applied event ids with their event times, in the order they were applied.
///
/// Encoded exactly as a `Vec<(u64, Millis)>` in that order, so states written before the
/// index existed read back unchanged.
#[derive(Debug, Clone, Default)]
pub struct RecentIds {
    applied: VecDeque<(u64, Millis)>,
    /// Latest event time per id hash, over `applied`; present once `applied` outgrew a scan.
    index: Option<Box<FxHashMap<u64, Millis>>>,
}

impl RecentIds {
    /// Whether an id with this hash was applied with an event time at or after `horizon`.
    pub fn contains(&self, hash: u64, horizon: Millis) -> bool {
        match &self.index {
            Some(index) => index.get(&hash).is_some_and(|&ts| ts >= horizon),
            None => self
                .applied
                .iter()
                .any(|&(h, ts)| h == hash && ts >= horizon),
        }
    }

    /// Remembers an id applied with event time `ts`, and forgets ids older than `horizon`.
    ///
    /// `horizon` never decreases from one call to the next (it trails engine time), so an id
    /// older than it can never be a duplicate again: [`RecentIds::contains`] is the same with
    /// or without it. Expired ids leave from the front; one that arrived late (behind newer
    /// ones) waits for those, which bounds the list by the ids applied within the window.
    pub fn record(&mut self, hash: u64, ts: Millis, horizon: Millis) {
        while let Some(&(h, t)) = self.applied.front() {
            if t >= horizon {
                break;
            }
            self.applied.pop_front();
            if let Some(index) = &mut self.index {
                // Only when the latest time of this id is expired too: a newer one may remain.
                if index.get(&h).is_some_and(|&latest| latest < horizon) {
                    index.remove(&h);
                }
            }
        }
        if ts < horizon {
            return;
        }
        self.applied.push_back((hash, ts));
        match &mut self.index {
            Some(index) => {
                let latest = index.entry(hash).or_insert(ts);
                *latest = (*latest).max(ts);
            }
            None if self.applied.len() > SCAN_AT_MOST => self.index = Some(self.build_index()),
            None => {}
        }
    }

    /// Number of ids remembered (expired ones included until they reach the front).
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    fn build_index(&self) -> Box<FxHashMap<u64, Millis>> {
        let mut index = FxHashMap::default();
        index.reserve(self.applied.len());
        for &(h, ts) in &self.applied {
            let latest = index.entry(h).or_insert(ts);
            *latest = (*latest).max(ts);
        }
        Box::new(index)
    }

    fn from_applied(applied: Vec<(u64, Millis)>) -> RecentIds {
        let mut ids = RecentIds {
            applied: applied.into(),
            index: None,
        };
        if ids.applied.len() > SCAN_AT_MOST {
            ids.index = Some(ids.build_index());
        }
        ids
    }
}

/// Equal when the same ids were applied in the same order (the index follows from them).
impl PartialEq for RecentIds {
    fn eq(&self, other: &Self) -> bool {
        self.applied == other.applied
    }
}

impl Serialize for RecentIds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.applied)
    }
}

impl<'de> Deserialize<'de> for RecentIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<(u64, Millis)>::deserialize(deserializer).map(RecentIds::from_applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The list the engine kept before the index: every id, expired ones dropped on each record.
    #[derive(Default)]
    struct Scan(Vec<(u64, Millis)>);

    impl Scan {
        fn contains(&self, hash: u64, horizon: Millis) -> bool {
            self.0.iter().any(|&(h, ts)| h == hash && ts >= horizon)
        }
        fn record(&mut self, hash: u64, ts: Millis, horizon: Millis) {
            self.0.retain(|&(_, t)| t >= horizon);
            self.0.push((hash, ts));
        }
    }

    proptest! {
        /// Same answers as the plain scan, for ids that repeat, arrive late, or arrive already
        /// expired, on both sides of the index threshold; and a round trip through the encoding
        /// keeps them.
        #[test]
        fn answers_like_a_scan(steps in proptest::collection::vec((0u64..30, 0i64..60, 0i64..3, 0u64..30), 1..300)) {
            let (mut fast, mut scan) = (RecentIds::default(), Scan::default());
            let (mut now, window) = (0i64, 40i64);
            for (hash, back, advance, probe) in steps {
                now += advance;
                let horizon = now - window;
                prop_assert_eq!(fast.contains(probe, horizon), scan.contains(probe, horizon));
                let ts = now - back;
                fast.record(hash, ts, horizon);
                scan.record(hash, ts, horizon);
                prop_assert_eq!(fast.contains(hash, horizon), scan.contains(hash, horizon));
                let bytes = postcard::to_allocvec(&fast).unwrap();
                let back_again: RecentIds = postcard::from_bytes(&bytes).unwrap();
                prop_assert_eq!(back_again.contains(probe, horizon), scan.contains(probe, horizon));
                prop_assert_eq!(back_again.index.is_some(), back_again.len() > SCAN_AT_MOST);
            }
        }
    }

    #[test]
    fn encodes_as_the_plain_list() {
        let mut ids = RecentIds::default();
        for i in 0..20 {
            ids.record(i, 100 + i as Millis, 0);
        }
        let list: Vec<(u64, Millis)> = (0..20).map(|i| (i, 100 + i as Millis)).collect();
        assert_eq!(
            postcard::to_allocvec(&ids).unwrap(),
            postcard::to_allocvec(&list).unwrap()
        );
        assert!(ids.index.is_some());
        // Expired ids leave from the front and the index forgets them.
        ids.record(99, 200, 110);
        assert_eq!(ids.len(), 11);
        assert!(!ids.contains(5, 0));
        assert!(ids.contains(15, 110));
        assert!(ids.contains(99, 200));
    }
}
