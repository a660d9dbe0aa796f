//! Segment size history (`GET /v1/segments/{name}/history`): the size of every segment in every
//! partition, sampled once a minute of engine time and kept for [`RETENTION_MS`] in
//! [`Cf::Meta`], written in the same atomic commit as the batch whose sizes it records.
//!
//! Every batch that moves a partition's engine time writes the sizes after it under the start of
//! the minute that engine time is in, replacing what an earlier batch of the same minute wrote:
//! a minute's point is the size at its last commit. A live service commits every second or so,
//! so every minute gets its point; a replay's large batches give one point per batch (the size
//! held from that point to the next). Once a day of engine time, samples older than the
//! retention are deleted, so the history stays bounded: at most 30 × 1440 points per segment
//! and partition.
//!
//! Key: `history/` + segment name + `0x00` + partition (`u32` BE) + minute (ordered `i64`);
//! value: the size (`u64` BE).

use std::collections::BTreeMap;

use tagstream_rules::event::Millis;
use tagstream_state::keys::{decode_i64_ordered, decode_u64_be, u64_be};
use tagstream_state::{Cf, WriteBatch};

use super::Engine;
use crate::error::{ConsumerError, Result};
use crate::schema::{history_series_prefix as series_prefix, sample_key};

const MINUTE_MS: Millis = 60_000;
const DAY_MS: Millis = 86_400_000;
/// How long samples are kept (engine time).
pub const RETENTION_MS: Millis = 30 * DAY_MS;

/// The minute of engine time `now` falls in.
fn minute_of(now: Millis) -> Millis {
    now - now.rem_euclid(MINUTE_MS)
}

/// Where sampling stands per partition: the last minute sampled (in memory only; after a restart
/// the first sample of a minute is simply written again).
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    last: BTreeMap<u32, Millis>,
}

impl Sampler {
    /// Stages, for each of `partitions`, a sample of every segment's size
    /// (`size(segment, partition)`, after the batch) at the minute of its engine time, and on
    /// the first sample of a day of engine time the deletion of samples past the retention.
    /// Returns the minutes to adopt with [`Sampler::adopt`] once the batch is committed.
    pub(crate) fn stage(
        &self,
        clocks: &BTreeMap<u32, Millis>,
        partitions: impl Iterator<Item = u32>,
        segments: &[&str],
        size: impl Fn(&str, u32) -> u64,
        batch: &mut WriteBatch,
    ) -> Vec<(u32, Millis)> {
        let mut sampled = Vec::new();
        for p in partitions {
            let Some(&now) = clocks.get(&p) else {
                continue;
            };
            let minute = minute_of(now);
            let last = self.last.get(&p).copied();
            if last.is_some_and(|l| l > minute) {
                continue;
            }
            let new_day = last.is_none_or(|l| l.div_euclid(DAY_MS) != minute.div_euclid(DAY_MS));
            for segment in segments {
                batch.put(
                    Cf::Meta,
                    sample_key(segment, p, minute),
                    u64_be(size(segment, p)).to_vec(),
                );
                if new_day {
                    batch.delete_range(
                        Cf::Meta,
                        series_prefix(segment, p),
                        sample_key(segment, p, minute.saturating_sub(RETENTION_MS)),
                    );
                }
            }
            sampled.push((p, minute));
        }
        sampled
    }

    pub(crate) fn adopt(&mut self, sampled: Vec<(u32, Millis)>) {
        self.last.extend(sampled);
    }
}

impl Engine {
    /// The size history of `segment` over the partitions this instance answers for, between
    /// `since` and `until` (inclusive, engine time): one point per minute that has a sample in
    /// any partition, the size summed over partitions, each partition counting with its latest
    /// sample at or before that minute.
    pub fn segment_history(
        &self,
        segment: &str,
        since: Millis,
        until: Millis,
    ) -> Result<Vec<(Millis, u64)>> {
        let mut series: Vec<Vec<(Millis, u64)>> = Vec::new();
        for &p in self.clocks.keys().filter(|p| self.owns(**p)) {
            let prefix = series_prefix(segment, p);
            // The sample before `since` gives the partition's size at `since`.
            let mut points = Vec::new();
            let mut earlier = None;
            let mut corrupt = None;
            self.store.for_each(
                Cf::Meta,
                &prefix,
                Some(&sample_key(segment, p, until.saturating_add(1))),
                &mut |k, v| {
                    match (
                        k.get(prefix.len()..).and_then(decode_i64_ordered),
                        decode_u64_be(v),
                    ) {
                        (Some(t), Some(size)) if t < since => earlier = Some((since, size)),
                        (Some(t), Some(size)) => points.push((t, size)),
                        _ => {
                            corrupt = Some(format!("segment history sample under key {k:?}"));
                            return false;
                        }
                    }
                    true
                },
            )?;
            if let Some(what) = corrupt {
                return Err(ConsumerError::Corrupt(what));
            }
            if let (Some(first), true) = (earlier, points.first().is_none_or(|(t, _)| *t > since)) {
                points.insert(0, first);
            }
            series.push(points);
        }
        Ok(sum_step_series(&series))
    }
}

/// Sums step functions given by their change points: at each instant any series has a point,
/// the sum of every series' latest value at or before it (a series with no point yet counts 0).
pub fn sum_step_series(series: &[Vec<(Millis, u64)>]) -> Vec<(Millis, u64)> {
    let mut instants: Vec<Millis> = series.iter().flatten().map(|(t, _)| *t).collect();
    instants.sort_unstable();
    instants.dedup();
    let mut cursor = vec![0usize; series.len()];
    let mut current = vec![0u64; series.len()];
    instants
        .into_iter()
        .map(|t| {
            for (i, s) in series.iter().enumerate() {
                while cursor[i] < s.len() && s[cursor[i]].0 <= t {
                    current[i] = s[cursor[i]].1;
                    cursor[i] += 1;
                }
            }
            (t, current.iter().sum())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_series_sum_with_the_latest_value_of_each() {
        let a = vec![(0, 5), (120_000, 7)];
        let b = vec![(60_000, 1), (120_000, 2), (180_000, 0)];
        assert_eq!(
            sum_step_series(&[a, b]),
            vec![(0, 5), (60_000, 6), (120_000, 9), (180_000, 7)]
        );
        assert!(sum_step_series(&[]).is_empty());
    }

    #[test]
    fn a_sample_per_commit_and_minute_and_a_prune_per_new_day() {
        let mut sampler = Sampler::default();
        let clocks: BTreeMap<u32, Millis> = [(0, 90_000), (1, 30_000)].into();
        let mut batch = WriteBatch::new();
        let sampled = sampler.stage(
            &clocks,
            [0, 1].into_iter(),
            &["s"],
            |_, p| u64::from(p) + 3,
            &mut batch,
        );
        assert_eq!(sampled, vec![(0, 60_000), (1, 0)]);
        // Two puts and, on the first sample of a day, two range deletions.
        assert_eq!(batch.len(), 4);
        sampler.adopt(sampled);
        // The same minute again: the samples are replaced, nothing is pruned.
        let mut again = WriteBatch::new();
        let sampled = sampler.stage(&clocks, [0, 1].into_iter(), &["s"], |_, _| 0, &mut again);
        assert_eq!(sampled.len(), 2);
        assert_eq!(again.len(), 2);
        sampler.adopt(sampled);
        // A day later: sample and prune.
        let later: BTreeMap<u32, Millis> = [(0, 90_000 + DAY_MS)].into();
        let mut next_day = WriteBatch::new();
        sampler.stage(&later, [0].into_iter(), &["s"], |_, _| 1, &mut next_day);
        assert_eq!(next_day.len(), 2);
    }
}
