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
use chrono_tz::Tz;

use crate::event::Millis;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// The largest instant the engine reasons about (year ~2262 would overflow nanos; we stay in ms).
pub const FAR_FUTURE: Millis = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// The rules' IANA time zone, with a fast path for UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone {
    tz: Tz,
    utc: bool,
}

impl Zone {
    pub fn utc() -> Zone {
        Zone {
            tz: Tz::UTC,
            utc: true,
        }
    }

    /// Parses an IANA zone name (`Asia/Shanghai`, `UTC`).
    pub fn parse(name: &str) -> Option<Zone> {
        let tz: Tz = name.parse().ok()?;
        let utc = matches!(
            tz,
            Tz::UTC | Tz::Etc__UTC | Tz::Etc__UCT | Tz::UCT | Tz::Zulu | Tz::Etc__Zulu
        );
        Some(Zone { tz, utc })
    }

    pub fn name(&self) -> &'static str {
        self.tz.name()
    }

    /// UTC offset in milliseconds at instant `t`.
    pub fn offset_ms(&self, t: Millis) -> i64 {
        if self.utc {
            return 0;
        }
        match chrono::DateTime::from_timestamp_millis(t) {
            Some(dt) => {
                i64::from(
                    self.tz
                        .offset_from_utc_datetime(&dt.naive_utc())
                        .fix()
                        .local_minus_utc(),
                ) * 1000
            }
            None => 0,
        }
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
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * DAY_MS);
        assert_eq!(parse_duration("0d").unwrap(), 0);
        assert_eq!(parse_duration("2w").unwrap(), 14 * DAY_MS);
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("-7d").is_err());
    }
}
