//! Time zone, bucket and window arithmetic (SPEC §3 "Time").
//!
//! Buckets are identified by a contiguous integer index so that "the N buckets ending with the
//! one holding `now`" is simply the index range `(idx(now) - N, idx(now)]`:
//! * day buckets: the local calendar date, as days since 1970-01-01 (23 or 25 hours long
//!   across a daylight-saving change);
//! * hour and minute buckets: real hours/minutes aligned to local clock boundaries, i.e.
//!   `floor((t + (utc_offset(t) mod unit)) / unit)`; for zones whose offset is a whole number
//!   of hours this is the plain UTC hour.

use chrono::{Datelike, LocalResult, NaiveDate, Offset, TimeZone as _, Timelike};
use std::sync::Arc;

use chrono_tz::Tz;

use crate::event::Millis;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// The largest instant the engine reasons about (year ~2262 would overflow nanos; we stay in ms).
pub const FAR_FUTURE: Millis = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// The rules' IANA time zone, with a fast path for UTC and a precomputed table of offset
/// changes (chrono-tz lookups are far too slow for the per-event path).
#[derive(Debug, Clone)]
pub struct Zone {
    tz: Tz,
    utc: bool,
    table: Arc<OffsetTable>,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.tz == other.tz
    }
}

impl Eq for Zone {}

/// Offsets between [`TABLE_START`] and [`TABLE_END`]: `offsets[i]` holds from `starts[i]` on.
#[derive(Debug, Default)]
struct OffsetTable {
    starts: Vec<Millis>,
    offsets: Vec<i64>,
}

const TABLE_START: Millis = 0; // 1970-01-01
const TABLE_END: Millis = 4_102_444_800_000; // 2100-01-01

impl OffsetTable {
    /// One table per zone per process (building one takes a few milliseconds).
    fn shared(tz: &Tz) -> Arc<OffsetTable> {
        static TABLES: std::sync::OnceLock<
            std::sync::Mutex<std::collections::HashMap<Tz, Arc<OffsetTable>>>,
        > = std::sync::OnceLock::new();
        let tables = TABLES.get_or_init(Default::default);
        let mut tables = tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tables
            .entry(*tz)
            .or_insert_with(|| Arc::new(OffsetTable::build(tz)))
            .clone()
    }

    fn build(tz: &Tz) -> OffsetTable {
        let slow = |t: Millis| slow_offset(tz, t);
        let mut table = OffsetTable {
            starts: vec![TABLE_START],
            offsets: vec![slow(TABLE_START)],
        };
        // Offsets change at most a few times a year: sample every 6 hours, then bisect each
        // change down to the millisecond.
        let step = 6 * HOUR_MS;
        let mut t = TABLE_START;
        let mut current = table.offsets[0];
        while t < TABLE_END {
            let next = t + step;
            let o = slow(next);
            if o != current {
                let (mut lo, mut hi) = (t, next);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if slow(mid) == current {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                table.starts.push(hi);
                table.offsets.push(o);
                current = o;
            }
            t = next;
        }
        table
    }

    fn lookup(&self, t: Millis) -> Option<i64> {
        if !(TABLE_START..TABLE_END).contains(&t) {
            return None;
        }
        // Zones without daylight saving (most of Asia) last changed decades ago: instants past
        // the final change need no search.
        if let (Some(&last_start), Some(&last_offset)) = (self.starts.last(), self.offsets.last()) {
            if t >= last_start {
                return Some(last_offset);
            }
        }
        let i = self.starts.partition_point(|&s| s <= t);
        Some(self.offsets[i - 1])
    }
}

fn slow_offset(tz: &Tz, t: Millis) -> i64 {
    match chrono::DateTime::from_timestamp_millis(t) {
        Some(dt) => {
            i64::from(
                tz.offset_from_utc_datetime(&dt.naive_utc())
                    .fix()
                    .local_minus_utc(),
            ) * 1000
        }
        None => 0,
    }
}

impl Zone {
    pub fn utc() -> Zone {
        Zone {
            tz: Tz::UTC,
            utc: true,
            table: Arc::default(),
        }
    }

    /// Parses an IANA zone name (`Asia/Shanghai`, `UTC`).
    pub fn parse(name: &str) -> Option<Zone> {
        let tz: Tz = name.parse().ok()?;
        let utc = matches!(
            tz,
            Tz::UTC | Tz::Etc__UTC | Tz::Etc__UCT | Tz::UCT | Tz::Zulu | Tz::Etc__Zulu
        );
        let table = if utc {
            Arc::default()
        } else {
            OffsetTable::shared(&tz)
        };
        Some(Zone { tz, utc, table })
    }

    pub fn name(&self) -> &'static str {
        self.tz.name()
    }

    /// UTC offset in milliseconds at instant `t`.
    pub fn offset_ms(&self, t: Millis) -> i64 {
        if self.utc {
            return 0;
        }
        self.table
            .lookup(t)
            .unwrap_or_else(|| slow_offset(&self.tz, t))
    }

    /// The local calendar date holding `t`, as days since 1970-01-01.
    pub fn local_day(&self, t: Millis) -> i64 {
        (t + self.offset_ms(t)).div_euclid(DAY_MS)
    }

    /// The first instant of local date `day` (days since 1970-01-01). When local midnight does
    /// not exist (a daylight-saving gap at midnight) the day starts at the first valid instant.
    pub fn day_start(&self, day: i64) -> Millis {
        if self.utc {
            return day * DAY_MS;
        }
        // Fast path: local midnight exists and is found from the offset table.
        let local_midnight = day * DAY_MS;
        let guess = local_midnight - self.offset_ms(local_midnight);
        let t = local_midnight - self.offset_ms(guess);
        if self.local_day(t) == day
            && self.local_day(t - 1) == day - 1
            && t + self.offset_ms(t) == local_midnight
        {
            return t;
        }
        let Some(date) = NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|d| d.checked_add_signed(chrono::Duration::days(day)))
        else {
            return day * DAY_MS;
        };
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight is a valid time");
        match self.tz.from_local_datetime(&midnight) {
            LocalResult::Single(dt) => dt.timestamp_millis(),
            LocalResult::Ambiguous(earliest, _) => earliest.timestamp_millis(),
            LocalResult::None => {
                // A gap: the day begins at the instant the clock jumps past midnight. Find it by
                // bisecting between an instant certainly before and one certainly after.
                let guess = day * DAY_MS;
                let (mut lo, mut hi) = (guess - 2 * DAY_MS, guess + 2 * DAY_MS);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.local_day(mid) >= day {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi
            }
        }
    }

    /// Local hour of day, 0–23.
    pub fn hour_of_day(&self, t: Millis) -> i64 {
        let local = t + self.offset_ms(t);
        local.rem_euclid(DAY_MS) / HOUR_MS
    }

    /// Local day of week, 1 = Monday … 7 = Sunday.
    pub fn day_of_week(&self, t: Millis) -> i64 {
        // 1970-01-01 was a Thursday (4).
        (self.local_day(t) + 3).rem_euclid(7) + 1
    }

    /// Index of the hour or minute bucket holding `t` (see the module docs).
    pub fn sub_day_bucket(&self, t: Millis, unit: i64) -> i64 {
        let shift = self.offset_ms(t).rem_euclid(unit);
        (t + shift).div_euclid(unit)
    }

    /// First instant of sub-day bucket `idx`.
    pub fn sub_day_bucket_start(&self, idx: i64, unit: i64) -> Millis {
        let approx = idx.saturating_mul(unit);
        let shift = self.offset_ms(approx).rem_euclid(unit);
        approx - shift
    }

    /// Formats an instant as local RFC 3339 (used in explanations and logs).
    pub fn format(&self, t: Millis) -> String {
        match chrono::DateTime::from_timestamp_millis(t) {
            Some(dt) => {
                let local = dt.with_timezone(&self.tz);
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    local.year(),
                    local.month(),
                    local.day(),
                    local.hour(),
                    local.minute(),
                    local.second()
                )
            }
            None => t.to_string(),
        }
    }
}

/// The bucket size a window counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Minute,
    Hour,
    Day,
}

/// The bucket index of one instant in every unit, from a single zone-offset lookup: what
/// evaluating every windowed aggregate at that instant needs. The day is worked out up front
/// (most windows count days); hours and minutes when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketsAt {
    t: Millis,
    offset: i64,
    day: i64,
}

impl BucketsAt {
    pub fn new(zone: &Zone, t: Millis) -> BucketsAt {
        let offset = zone.offset_ms(t);
        BucketsAt {
            t,
            offset,
            day: (t + offset).div_euclid(DAY_MS),
        }
    }

    pub fn of(&self, unit: Unit) -> i64 {
        match unit {
            Unit::Day => self.day,
            Unit::Hour => (self.t + self.offset.rem_euclid(HOUR_MS)).div_euclid(HOUR_MS),
            Unit::Minute => (self.t + self.offset.rem_euclid(MINUTE_MS)).div_euclid(MINUTE_MS),
        }
    }

    /// The oldest bucket `window` holds at this instant.
    pub fn oldest(&self, window: Window) -> i64 {
        self.of(window.unit) - window.buckets + 1
    }
}

/// `window = "30d"`: the N buckets ending with the one that holds `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub unit: Unit,
    pub buckets: i64,
}

impl Window {
    /// Parses `15m`, `24h`, `30d`, `4w` (weeks are 7 day buckets each).
    pub fn parse(text: &str) -> Result<Window, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let hint = "a window is a positive whole number followed by m, h, d or w, like \"30d\"";
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("invalid window {text:?}: {hint}"))?;
        if n <= 0 {
            return Err(format!(
                "invalid window {text:?}: it must be at least one bucket; {hint}"
            ));
        }
        let (unit, buckets) = match unit {
            "m" => (Unit::Minute, n),
            "h" => (Unit::Hour, n),
            "d" => (Unit::Day, n),
            "w" => (
                Unit::Day,
                n.checked_mul(7)
                    .ok_or_else(|| format!("window {text:?} is too long"))?,
            ),
            _ => return Err(format!("invalid window unit in {text:?}: {hint}")),
        };
        if buckets > 100_000 {
            return Err(format!(
                "window {text:?} is too long: at most 100000 buckets"
            ));
        }
        Ok(Window { unit, buckets })
    }

    /// Index of the bucket holding `t`.
    pub fn bucket_of(&self, zone: &Zone, t: Millis) -> i64 {
        match self.unit {
            Unit::Day => zone.local_day(t),
            Unit::Hour => zone.sub_day_bucket(t, HOUR_MS),
            Unit::Minute => zone.sub_day_bucket(t, MINUTE_MS),
        }
    }

    /// First instant of bucket `idx`.
    pub fn bucket_start(&self, zone: &Zone, idx: i64) -> Millis {
        match self.unit {
            Unit::Day => zone.day_start(idx),
            Unit::Hour => zone.sub_day_bucket_start(idx, HOUR_MS),
            Unit::Minute => zone.sub_day_bucket_start(idx, MINUTE_MS),
        }
    }

    /// Oldest bucket index still inside the window at `now`.
    pub fn oldest_bucket(&self, zone: &Zone, now: Millis) -> i64 {
        self.bucket_of(zone, now) - self.buckets + 1
    }

    /// The instant at which bucket `idx` leaves the window: the start of bucket `idx + N`.
    pub fn drop_instant(&self, zone: &Zone, idx: i64) -> Millis {
        self.bucket_start(zone, idx + self.buckets)
    }
}

/// Parses a duration literal as used in the rules file (`90s`, `15m`, `12h`, `7d`, `2w`, `0d`).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let hint = "a duration is a whole number followed by s, m, h, d or w, like \"7d\"";
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: {hint}"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => return Err(format!("invalid duration unit in {text:?}: {hint}")),
    };
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn local_days_in_shanghai() {
        let z = Zone::parse("Asia/Shanghai").unwrap();
        // 2024-11-19T16:00:00Z is local midnight of 2024-11-20.
        let before = ms("2024-11-19T15:59:59.999Z");
        let after = ms("2024-11-19T16:00:00Z");
        assert_eq!(z.local_day(after) - z.local_day(before), 1);
        assert_eq!(z.day_start(z.local_day(after)), after);
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let z = Zone::parse("Europe/Berlin").unwrap();
        let d = z.local_day(ms("2024-03-31T12:00:00Z"));
        assert_eq!(z.day_start(d + 1) - z.day_start(d), 23 * HOUR_MS);
        let d = z.local_day(ms("2024-10-27T12:00:00Z"));
        assert_eq!(z.day_start(d + 1) - z.day_start(d), 25 * HOUR_MS);
    }

    #[test]
    fn midnight_gap_starts_day_at_first_valid_instant() {
        // America/Santiago skipped 2024-09-08 00:00 local (clocks went to 01:00).
        let z = Zone::parse("America/Santiago").unwrap();
        let t = ms("2024-09-08T12:00:00Z");
        let d = z.local_day(t);
        let start = z.day_start(d);
        assert_eq!(z.local_day(start), d);
        assert_eq!(z.local_day(start - 1), d - 1);
    }

    #[test]
    fn window_drop_instant_is_local_midnight() {
        let z = Zone::parse("Asia/Shanghai").unwrap();
        let w = Window::parse("30d").unwrap();
        let t = ms("2024-11-01T10:00:00+08:00");
        let b = w.bucket_of(&z, t);
        assert_eq!(w.drop_instant(&z, b), ms("2024-12-01T00:00:00+08:00"));
        assert_eq!(w.oldest_bucket(&z, ms("2024-11-30T23:59:59.999+08:00")), b);
        assert_eq!(w.oldest_bucket(&z, ms("2024-12-01T00:00:00+08:00")), b + 1);
    }

    #[test]
    fn hour_buckets_follow_half_hour_zones() {
        let z = Zone::parse("Asia/Kolkata").unwrap();
        let w = Window::parse("1h").unwrap();
        let a = ms("2024-11-19T10:59:59.999+05:30");
        let b = ms("2024-11-19T11:00:00+05:30");
        assert_eq!(w.bucket_of(&z, b) - w.bucket_of(&z, a), 1);
        assert_eq!(w.bucket_start(&z, w.bucket_of(&z, b)), b);
    }

    #[test]
    fn weeks_are_day_buckets() {
        assert_eq!(
            Window::parse("4w").unwrap(),
            Window {
                unit: Unit::Day,
                buckets: 28
            }
        );
        assert!(Window::parse("0d").is_err());
        assert!(Window::parse("30x").is_err());
        assert!(Window::parse("d").is_err());
    }

    #[test]
    fn local_clock_functions() {
        let z = Zone::parse("Asia/Shanghai").unwrap();
        let t = ms("2024-11-18T23:30:00+08:00"); // a Monday
        assert_eq!(z.hour_of_day(t), 23);
        assert_eq!(z.day_of_week(t), 1);
        assert_eq!(Zone::utc().day_of_week(0), 4);
    }

    #[test]
    fn offset_table_matches_chrono_tz() {
        for name in [
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
            "America/Santiago",
            "Asia/Shanghai",
        ] {
            let z = Zone::parse(name).unwrap();
            let tz: Tz = name.parse().unwrap();
            let mut t = 0i64;
            while t < 4_000_000_000_000 {
                assert_eq!(z.offset_ms(t), slow_offset(&tz, t), "{name} at {t}");
                assert_eq!(
                    z.offset_ms(t + 1),
                    slow_offset(&tz, t + 1),
                    "{name} at {}",
                    t + 1
                );
                t += 7_777_777_777;
            }
            // Around every change, both sides agree to the millisecond.
            for &start in &z.table.starts[1..] {
                for d in [-1, 0, 1] {
                    assert_eq!(
                        z.offset_ms(start + d),
                        slow_offset(&tz, start + d),
                        "{name} at {}",
                        start + d
                    );
                }
            }
            for day in (0..60_000).step_by(37) {
                let s = z.day_start(day);
                assert_eq!(z.local_day(s), day, "{name} day {day}");
                assert_eq!(z.local_day(s - 1), day - 1, "{name} day {day}");
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * DAY_MS);
        assert_eq!(parse_duration("0d").unwrap(), 0);
        assert_eq!(parse_duration("2w").unwrap(), 14 * DAY_MS);
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("-7d").is_err());
    }
}
