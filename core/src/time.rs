//! Calendar math without a clock: RFC 3339 timestamps and budget windows.
//!
//! Time is always an argument (milliseconds since the Unix epoch) so callers decide where it comes
//! from: Envoy's clock in the filter, the system clock in the control plane, a constant in tests.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day count since the epoch (inverse of [`days_from_civil`], day dropped).
fn year_month_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, d| acc.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

/// Parses an RFC 3339 timestamp (`2027-01-31T23:59:59Z`, fractional seconds and `±hh:mm`
/// offsets allowed) or a bare date (`2027-01-31`, meaning its start in UTC) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let date = b.get(..10)?;
    if date.get(4) != Some(&b'-') || date.get(7) != Some(&b'-') {
        return None;
    }
    let year = i64::from(digits(date.get(..4)?)?);
    let month = digits(date.get(5..7)?)?;
    let day = digits(date.get(8..10)?)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let rest = b.get(10..)?;
    if rest.is_empty() {
        return Some(days * SECS_PER_DAY);
    }
    if !matches!(rest.first(), Some(b'T' | b't' | b' ')) || rest.len() < 9 {
        return None;
    }
    let hour = i64::from(digits(rest.get(1..3)?)?);
    let minute = i64::from(digits(rest.get(4..6)?)?);
    let second = i64::from(digits(rest.get(7..9)?)?);
    if rest.get(3) != Some(&b':') || rest.get(6) != Some(&b':') || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut tail = rest.get(9..)?;
    if tail.first() == Some(&b'.') {
        let frac_len = tail.iter().skip(1).take_while(|c| c.is_ascii_digit()).count();
        if frac_len == 0 {
            return None;
        }
        tail = tail.get(1 + frac_len..)?;
    }
    let offset = match tail {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(digits(&[*h1, *h2])?);
            let m = i64::from(digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    Some(days * SECS_PER_DAY + hour * 3600 + minute * 60 + second - offset)
}

/// Formats Unix milliseconds as RFC 3339 in UTC with millisecond precision
/// (`2026-11-22T10:00:00.000Z`), the inverse of [`parse_rfc3339`] for whole seconds.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(SECS_PER_DAY);
    let rem = secs.rem_euclid(SECS_PER_DAY);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

const WEEK_SECS: u64 = 7 * 86_400;
/// 1969-12-29, the Monday before the epoch, is this long before it.
const MONDAY_BEFORE_EPOCH_SECS: u64 = 3 * 86_400;

/// The longest budget duration, `4294967295w` (the longest one ever accepted): its window
/// bounds in milliseconds still fit a u64.
const MAX_DURATION_SECS: u64 = u32::MAX as u64 * 7 * 86_400;

/// How often a budget's spend resets (LiteLLM's `budget_duration`), on LiteLLM's calendar:
/// `1d` at 00:00 UTC, `7d` (any whole number of weeks) on Monday at 00:00 UTC, `30d` and `1mo`
/// on the 1st of the month at 00:00 UTC; any other duration in windows aligned to the Unix
/// epoch (days at midnight). Every window is a pure function of time: every worker and every
/// replica agrees on it without talking. (LiteLLM rolls sub-day durations forward from the
/// moment of the reset instead, and takes a `timezone`; Sluice's calendar is UTC.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetDuration {
    Seconds(u64),
    /// Resets at 00:00 UTC on the first day of each month (`1mo`).
    CalendarMonth,
}

impl BudgetDuration {
    /// Parses `30s`, `30m`, `1h`, `1d`, `7d`, `30d`, `1mo` (LiteLLM's duration syntax; `30d`
    /// is LiteLLM's month, as `1mo`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "1mo" || s == "30d" {
            return Some(Self::CalendarMonth);
        }
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        // The count as a u64, not a u32: every duration this accepts must print as one it
        // accepts again (`613566757w` prints as `4294967299d`).
        let n: u64 = s.get(..split)?.parse().ok()?;
        let unit = match s.get(split..)? {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return None,
        };
        match n.checked_mul(unit)? {
            0 => None,
            secs if secs > MAX_DURATION_SECS => None,
            secs => Some(Self::Seconds(secs)),
        }
    }

    /// How long before the epoch windows of `len` seconds start: whole weeks start on Mondays
    /// (the epoch was a Thursday), anything else at the epoch.
    const fn lead_secs(len: u64) -> u64 {
        if len.is_multiple_of(WEEK_SECS) { MONDAY_BEFORE_EPOCH_SECS } else { 0 }
    }

    /// Index of the window containing `now_ms`; spend resets when it changes.
    pub fn period(&self, now_ms: u64) -> u64 {
        let secs = now_ms / 1000;
        match self {
            Self::Seconds(len) => (secs + Self::lead_secs(*len)) / (*len).max(1),
            Self::CalendarMonth => {
                let (year, month) = year_month_from_days((secs / 86_400) as i64);
                (year.max(0) as u64) * 12 + u64::from(month - 1)
            }
        }
    }

    /// Unix seconds at which the window containing `now_ms` began.
    pub fn period_start_secs(&self, now_ms: u64) -> u64 {
        match self {
            Self::Seconds(len) => {
                self.period(now_ms).saturating_mul((*len).max(1)).saturating_sub(Self::lead_secs(*len))
            }
            Self::CalendarMonth => {
                let p = self.period(now_ms);
                let (year, month) = ((p / 12) as i64, (p % 12) as u32 + 1);
                (days_from_civil(year, month, 1).max(0) as u64) * 86_400
            }
        }
    }

    /// Unix seconds at which the window containing `now_ms` ends.
    pub fn period_end_secs(&self, now_ms: u64) -> u64 {
        match self {
            Self::Seconds(len) => {
                (self.period(now_ms) + 1).saturating_mul((*len).max(1)).saturating_sub(Self::lead_secs(*len))
            }
            Self::CalendarMonth => {
                let next = self.period(now_ms) + 1;
                let (year, month) = ((next / 12) as i64, (next % 12) as u32 + 1);
                (days_from_civil(year, month, 1).max(0) as u64) * 86_400
            }
        }
    }

    fn to_config_string(self) -> String {
        match self {
            Self::CalendarMonth => "1mo".to_owned(),
            // `30d` reads as LiteLLM's month: thirty days of seconds (`720h`) print as hours.
            Self::Seconds(s) if s % 86_400 == 0 && s != 30 * 86_400 => format!("{}d", s / 86_400),
            Self::Seconds(s) if s % 3600 == 0 => format!("{}h", s / 3600),
            Self::Seconds(s) if s % 60 == 0 => format!("{}m", s / 60),
            Self::Seconds(s) => format!("{s}s"),
        }
    }
}

impl Serialize for BudgetDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_config_string())
    }
}

impl<'de> Deserialize<'de> for BudgetDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid budget_duration {s:?}: use a number and a unit (30s, 10m, 1h, 1d, 7d, 30d) or 1mo"
            ))
        })
    }
}

/// An RFC 3339 expiry, kept as Unix seconds and its original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    pub unix_secs: i64,
    text: String,
}

impl Timestamp {
    pub fn parse(s: &str) -> Option<Self> {
        Some(Self { unix_secs: parse_rfc3339(s)?, text: s.trim().to_owned() })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid timestamp {s:?}: use RFC 3339, e.g. 2027-01-31T00:00:00Z"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_litellms_calendar() {
        let at = |t: &str| u64::try_from(parse_rfc3339(t).unwrap()).unwrap() * 1000;
        let window = |d: &str, t: &str| {
            let d = BudgetDuration::parse(d).unwrap();
            (d.period_start_secs(at(t)) * 1000, d.period_end_secs(at(t)) * 1000)
        };
        // 2026-12-10 is a Thursday.
        assert_eq!(window("1d", "2026-12-10T15:00:00Z"), (at("2026-12-10"), at("2026-12-11")));
        assert_eq!(window("7d", "2026-12-10T15:00:00Z"), (at("2026-12-07"), at("2026-12-14")), "Monday to Monday");
        assert_eq!(window("7d", "2026-12-07T00:00:00Z"), (at("2026-12-07"), at("2026-12-14")));
        assert_eq!(window("7d", "2026-12-06T23:59:59Z"), (at("2026-11-30"), at("2026-12-07")));
        assert_eq!(window("2w", "2026-12-10T15:00:00Z").0 % (7 * 86_400_000), at("2026-12-07") % (7 * 86_400_000));
        assert_eq!(window("30d", "2026-12-10T15:00:00Z"), (at("2026-12-01"), at("2027-01-01")), "a month");
        assert_eq!(window("1h", "2026-12-10T15:20:00Z"), (at("2026-12-10T15:00:00Z"), at("2026-12-10T16:00:00Z")));
        // The first windows near the epoch do not underflow.
        let week = BudgetDuration::parse("7d").unwrap();
        assert_eq!((week.period_start_secs(0), week.period_end_secs(0)), (0, 4 * 86_400));
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00Z"), Some(1_795_341_600));
        assert_eq!(parse_rfc3339("2026-11-22T12:00:00+02:00"), Some(1_795_341_600));
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00.123456Z"), Some(1_795_341_600));
        assert_eq!(parse_rfc3339("2026-11-22"), Some(1_795_305_600));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    }

    #[test]
    fn rfc3339_formatting_round_trips() {
        for secs in [0i64, 951_868_800, 1_709_164_800, 1_795_341_600, 4_102_444_799, -86_400] {
            let text = format_rfc3339_ms(secs * 1000 + 7);
            assert_eq!(parse_rfc3339(&text), Some(secs), "{text}");
        }
        assert_eq!(format_rfc3339_ms(1_795_341_600_250), "2026-11-22T10:00:00.250Z");
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-30",
            "2023-02-29",
            "2026-11-22T25:00:00Z",
            "2026-11-22T10:00:00",
            "2026-11-22T10:00:00+0200",
            "2026-11-22T10:00:00.Z",
            "２０２６-11-22",
            "2026-11-22T10:00:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(BudgetDuration::parse("30d"), Some(BudgetDuration::CalendarMonth), "LiteLLM's month");
        // Thirty days given in another unit stay thirty days, and read back so.
        let hours = BudgetDuration::parse("720h").unwrap();
        assert_eq!(hours, BudgetDuration::Seconds(30 * 86_400));
        assert_eq!(BudgetDuration::parse(&hours.to_config_string()), Some(hours));
        assert_eq!(BudgetDuration::parse("1h"), Some(BudgetDuration::Seconds(3600)));
        assert_eq!(BudgetDuration::parse("1mo"), Some(BudgetDuration::CalendarMonth));
        for bad in ["", "d", "0d", "1y", "-1d", "1.5d", "99999999999999999999d"] {
            assert_eq!(BudgetDuration::parse(bad), None, "{bad}");
        }
        assert_eq!(BudgetDuration::Seconds(7 * 86_400).to_config_string(), "7d");
    }

    /// Found by the property tests: `613566757w` was accepted but printed as `4294967299d`,
    /// which did not read back (the count was read as a u32), so a config the control plane
    /// accepted would not load in the filter.
    #[test]
    fn every_accepted_duration_reads_back_as_printed() {
        let d = BudgetDuration::parse("613566757w").unwrap();
        assert_eq!(d.to_config_string(), "4294967299d");
        assert_eq!(BudgetDuration::parse(&d.to_config_string()), Some(d));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<BudgetDuration>(&json).unwrap(), d);
        // No longer than before: the window bounds in ms must fit a u64.
        let longest = BudgetDuration::parse("4294967295w").unwrap();
        assert_eq!(BudgetDuration::parse(&longest.to_config_string()), Some(longest));
        assert_eq!(BudgetDuration::parse("2597596220016001s"), None, "one second longer");
        assert_eq!(BudgetDuration::parse("18446744073709551615m"), None, "overflows");
    }

    #[test]
    fn fixed_windows_reset_once_per_window() {
        let d = BudgetDuration::Seconds(86_400);
        let day = 86_400_000u64;
        assert_eq!(d.period(5 * day), d.period(6 * day - 1));
        assert_ne!(d.period(6 * day - 1), d.period(6 * day));
        assert_eq!(d.period_end_secs(5 * day + 7), 6 * 86_400);
    }

    #[test]
    fn calendar_month_windows() {
        let d = BudgetDuration::CalendarMonth;
        let jan31 = parse_rfc3339("2027-01-31T23:59:59Z").unwrap() as u64 * 1000;
        let feb1 = parse_rfc3339("2027-02-01T00:00:00Z").unwrap() as u64 * 1000;
        let dec31 = parse_rfc3339("2026-12-31T12:00:00Z").unwrap() as u64 * 1000;
        assert_ne!(d.period(jan31), d.period(feb1));
        assert_eq!(d.period(dec31) + 1, d.period(jan31));
        assert_eq!(d.period_end_secs(jan31), feb1 / 1000);
        assert_eq!(d.period_end_secs(dec31), parse_rfc3339("2027-01-01T00:00:00Z").unwrap() as u64);
    }
}
