//! Cron schedules of periodic recharge strategies (SPEC 6.3): parsing and next-fire computation,
//! in pure Rust (no PostgreSQL).
//!
//! # Syntax
//! - 5 fields `minute hour day-of-month month day-of-week`, or 6 fields with `second` first
//!   (`0 0 8 * * *` = every day at 08:00:00). A 5-field expression fires at second 0.
//! - Each field is a comma-separated list of items; an item is `*`, a value `a`, a range `a-b`, or
//!   one of those followed by a step `/n`: `*/n`, `a-b/n`, and `a/n` (= `a-max/n`, as in the
//!   Go cron libraries). Values: second 0-59, minute 0-59, hour 0-23, day-of-month 1-31,
//!   month 1-12 or `JAN`-`DEC`, day-of-week 0-7 (0 and 7 are Sunday) or `SUN`-`SAT`. Names are
//!   case-insensitive. `?` is accepted as `*` in the two day fields.
//! - Descriptors (case-insensitive): `@yearly` / `@annually` (`0 0 0 1 1 *`), `@monthly`
//!   (`0 0 0 1 * *`), `@weekly` (`0 0 0 * * 0`), `@daily` / `@midnight` (`0 0 0 * * *`),
//!   `@hourly` (`0 0 * * * *`). `@reboot` and `@every` are rejected.
//! - Rejected with SQLSTATE 22023 (`field: "periodic_expr"`, the byte `position` of the offending
//!   text, the `cron_field` and `value`): empty input or fields, wrong field count, out-of-range
//!   values, step 0 or a step above the field's maximum, reversed ranges (`5-1`, `FRI-MON`),
//!   unknown names, non-ASCII text, input longer than [`MAX_EXPR_LEN`] bytes.
//!
//! # Day matching (Vixie cron / pg_cron)
//! A day-of-month or day-of-week field whose text starts with `*` (or `?`) is *unrestricted*;
//! this includes `*/2`, exactly as in Vixie cron and pg_cron. When both day fields are restricted
//! a day matches if EITHER matches (`0 0 1 * MON` = the 1st of every month and every Monday);
//! otherwise both must match (`0 0 */2 * MON` = Mondays with an odd day of month).
//!
//! # Time zones and DST
//! Fields are matched against the wall clock of the given zone. Candidate local times are mapped
//! to instants with `from_local_datetime`:
//! - a local time that occurs once maps to that instant;
//! - a local time that occurs twice (fall back) maps to the EARLIER instant only, so a job fires
//!   once: `30 1 * * *` in America/New_York on 2024-11-03 fires at 01:30 EDT (05:30 UTC) and not
//!   again at 01:30 EST. A consequence: sub-hourly schedules do not fire during the repeated hour
//!   (the second 01:00-01:59), since those local times already fired;
//! - a local time that does not exist (spring forward gap) is skipped: `30 2 * * *` in
//!   America/New_York does not fire on 2024-03-10.
//!
//! # Search bound
//! [`Schedule::next_after`] searches at most [`HORIZON_YEARS`] (400) calendar years ahead: the
//! Gregorian calendar (leap years and weekdays) repeats every 400 years, so `None` means the
//! schedule never fires (`0 0 30 2 *`). The search skips by field (month, then day, hour, minute,
//! second), so an impossible schedule costs about a thousand steps, not a scan of every second.
//!
//! # Canonical text
//! `Display` gives the expression as written, normalized: fields separated by one space, letters
//! upper-cased (`jan` -> `JAN`); 5-field expressions stay 5-field. Descriptors are shown in
//! lower case under their primary name (`@annually` -> `@yearly`, `@midnight` -> `@daily`).
//! The canonical text parses back to an equal schedule.

use crate::error::QuotaError;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use std::fmt;

/// Longest accepted expression, in bytes.
pub const MAX_EXPR_LEN: usize = 256;
/// Longest accepted time zone name, in bytes.
pub const MAX_TZ_LEN: usize = 64;
/// How far ahead [`Schedule::next_after`] looks, in calendar years (one Gregorian cycle).
pub const HORIZON_YEARS: i32 = 400;

const FIELD: &str = "periodic_expr";

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The six cron fields, in 6-field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Second => "second",
            Kind::Minute => "minute",
            Kind::Hour => "hour",
            Kind::DayOfMonth => "day-of-month",
            Kind::Month => "month",
            Kind::DayOfWeek => "day-of-week",
        }
    }

    fn bounds(self) -> (u32, u32) {
        match self {
            Kind::Second | Kind::Minute => (0, 59),
            Kind::Hour => (0, 23),
            Kind::DayOfMonth => (1, 31),
            Kind::Month => (1, 12),
            Kind::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            Kind::Month => Some((&MONTH_NAMES, 1)),
            Kind::DayOfWeek => Some((&DAY_NAMES, 0)),
            _ => None,
        }
    }
}

/// A parsed cron schedule. Equality compares what it matches (and the Vixie day flags), not the
/// text: `@daily == "0 0 * * *" == "0 0 0 * * *"`.
#[derive(Debug, Clone)]
pub struct Schedule {
    seconds: u64, // bits 0..=59
    minutes: u64, // bits 0..=59
    hours: u32,   // bits 0..=23
    dom: u32,     // bits 1..=31
    months: u16,  // bits 1..=12
    dow: u8,      // bits 0..=6 (Sunday = 0; 7 folded into 0)
    dom_star: bool,
    dow_star: bool,
    six_fields: bool,
    text: String,
}

impl PartialEq for Schedule {
    fn eq(&self, o: &Self) -> bool {
        (
            self.seconds,
            self.minutes,
            self.hours,
            self.dom,
            self.months,
            self.dow,
        ) == (o.seconds, o.minutes, o.hours, o.dom, o.months, o.dow)
            && self.dom_star == o.dom_star
            && self.dow_star == o.dow_star
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Schedule {
    type Err = QuotaError;
    fn from_str(s: &str) -> Result<Self, QuotaError> {
        parse_schedule(s)
    }
}

fn err(position: usize, kind: Option<Kind>, value: &str, message: impl Into<String>) -> QuotaError {
    let message = message.into();
    let full = match kind {
        Some(k) => format!(
            "invalid periodic_expr: {} field: {message} (at {position})",
            k.name()
        ),
        None => format!("invalid periodic_expr: {message} (at {position})"),
    };
    let mut e = QuotaError::invalid(full)
        .with("field", FIELD)
        .with("position", position);
    if let Some(k) = kind {
        e = e.with("cron_field", k.name());
    }
    e.with("value", value.chars().take(64).collect::<String>())
}

/// Parses a cron expression (see the module documentation for the syntax).
pub fn parse_schedule(expr: &str) -> Result<Schedule, QuotaError> {
    if expr.len() > MAX_EXPR_LEN {
        return Err(err(
            MAX_EXPR_LEN,
            None,
            "",
            format!("longer than {MAX_EXPR_LEN} bytes ({} bytes)", expr.len()),
        ));
    }
    if let Some((pos, c)) = expr
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || (c.is_ascii_control() && !c.is_ascii_whitespace()))
    {
        return Err(err(
            pos,
            None,
            &c.to_string(),
            format!("unexpected character {c:?}"),
        ));
    }
    // Tokens with their byte offsets.
    let mut tokens: Vec<(usize, &str)> = Vec::new();
    let mut start = None;
    for (i, c) in expr.char_indices() {
        match (c.is_ascii_whitespace(), start) {
            (true, Some(s)) => {
                tokens.push((s, &expr[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        tokens.push((s, &expr[s..]));
    }
    if tokens.is_empty() {
        return Err(err(
            0,
            None,
            "",
            "empty cron expression (expected 5 or 6 fields or a descriptor like @daily)",
        ));
    }

    if tokens[0].1.starts_with('@') {
        let (pos, word) = tokens[0];
        if tokens.len() > 1 {
            let (p, extra) = tokens[1];
            return Err(err(
                p,
                None,
                extra,
                format!("unexpected text after descriptor {word}"),
            ));
        }
        let (canon, six) = match word.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => ("@yearly", "0 0 0 1 1 *"),
            "@monthly" => ("@monthly", "0 0 0 1 * *"),
            "@weekly" => ("@weekly", "0 0 0 * * 0"),
            "@daily" | "@midnight" => ("@daily", "0 0 0 * * *"),
            "@hourly" => ("@hourly", "0 0 * * * *"),
            "@reboot" => return Err(err(pos, None, word, "@reboot is not supported")),
            _ => {
                return Err(err(
                    pos,
                    None,
                    word,
                    format!(
                        "unknown descriptor {word} (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
                    ),
                ))
            }
        };
        let mut s = parse_schedule(six).expect("built-in descriptor parses");
        s.text = canon.to_string();
        s.six_fields = false;
        return Ok(s);
    }

    let kinds: &[Kind] = match tokens.len() {
        5 => &[
            Kind::Minute,
            Kind::Hour,
            Kind::DayOfMonth,
            Kind::Month,
            Kind::DayOfWeek,
        ],
        6 => &[
            Kind::Second,
            Kind::Minute,
            Kind::Hour,
            Kind::DayOfMonth,
            Kind::Month,
            Kind::DayOfWeek,
        ],
        n => {
            let (p, v) = if n > 6 { tokens[6] } else { (expr.len(), "") };
            return Err(err(
                p,
                None,
                v,
                format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), got {n}"
                ),
            ));
        }
    };

    let mut s = Schedule {
        seconds: 1,
        minutes: 0,
        hours: 0,
        dom: 0,
        months: 0,
        dow: 0,
        dom_star: false,
        dow_star: false,
        six_fields: tokens.len() == 6,
        text: String::new(),
    };
    for (&(pos, tok), &kind) in tokens.iter().zip(kinds) {
        let bits = parse_field(tok, pos, kind)?;
        let star = tok.starts_with('*') || tok.starts_with('?');
        match kind {
            Kind::Second => s.seconds = bits,
            Kind::Minute => s.minutes = bits,
            Kind::Hour => s.hours = bits as u32,
            Kind::DayOfMonth => {
                s.dom = bits as u32;
                s.dom_star = star;
            }
            Kind::Month => s.months = bits as u16,
            Kind::DayOfWeek => {
                let folded = (bits & 0x7f) | ((bits >> 7) & 1);
                s.dow = folded as u8;
                s.dow_star = star;
            }
        }
    }
    s.text = tokens
        .iter()
        .map(|(_, t)| t.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(s)
}

/// One field: a comma-separated list. Returns the set of values as bits.
fn parse_field(tok: &str, pos: usize, kind: Kind) -> Result<u64, QuotaError> {
    let mut bits = 0u64;
    let mut off = 0;
    for item in tok.split(',') {
        let ipos = pos + off;
        off += item.len() + 1;
        if item.is_empty() {
            return Err(err(
                ipos,
                Some(kind),
                tok,
                format!("empty list item in '{tok}'"),
            ));
        }
        bits |= parse_item(item, ipos, kind)?;
    }
    Ok(bits)
}

fn parse_item(item: &str, pos: usize, kind: Kind) -> Result<u64, QuotaError> {
    let (lo_b, hi_b) = kind.bounds();
    let (range, step) = match item.split_once('/') {
        Some((r, st)) => {
            let spos = pos + r.len() + 1;
            if st.is_empty() {
                return Err(err(
                    spos,
                    Some(kind),
                    item,
                    format!("missing step after '/' in '{item}'"),
                ));
            }
            if !st.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    spos,
                    Some(kind),
                    st,
                    format!("step '{st}' is not a number"),
                ));
            }
            let n = st.parse::<u32>().unwrap_or(u32::MAX);
            if n == 0 || n > hi_b {
                return Err(err(
                    spos,
                    Some(kind),
                    st,
                    format!("step {st} out of range 1-{hi_b}"),
                ));
            }
            (r, Some(n))
        }
        None => (item, None),
    };
    let (lo, hi) =
        if range == "*" || (range == "?" && matches!(kind, Kind::DayOfMonth | Kind::DayOfWeek)) {
            (lo_b, hi_b)
        } else if range.is_empty() {
            return Err(err(
                pos,
                Some(kind),
                item,
                format!("missing value before '/' in '{item}'"),
            ));
        } else {
            match range.split_once('-') {
                Some((a, b)) => {
                    let bpos = pos + a.len() + 1;
                    let x = parse_value(a, pos, kind)?;
                    let y = parse_value(b, bpos, kind)?;
                    if x > y {
                        return Err(err(
                            pos,
                            Some(kind),
                            range,
                            format!("reversed range '{range}' ({x} > {y})"),
                        ));
                    }
                    (x, y)
                }
                // `a/n` runs from a to the maximum; a bare `a` is one value.
                None => {
                    let x = parse_value(range, pos, kind)?;
                    (x, if step.is_some() { hi_b } else { x })
                }
            }
        };
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1 << v;
        v += step;
    }
    Ok(bits)
}

fn parse_value(s: &str, pos: usize, kind: Kind) -> Result<u32, QuotaError> {
    let (lo, hi) = kind.bounds();
    if s.is_empty() {
        return Err(err(pos, Some(kind), s, "missing value".to_string()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let v = s.parse::<u32>().unwrap_or(u32::MAX);
        if v < lo || v > hi {
            return Err(err(
                pos,
                Some(kind),
                s,
                format!("value {s} out of range {lo}-{hi}"),
            ));
        }
        return Ok(v);
    }
    if let Some((names, first)) = kind.names() {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(first + i as u32);
        }
        let expected = if kind == Kind::Month {
            "a number 1-12 or JAN-DEC"
        } else {
            "a number 0-7 or SUN-SAT"
        };
        return Err(err(
            pos,
            Some(kind),
            s,
            format!("unknown value '{s}' (expected {expected})"),
        ));
    }
    Err(err(
        pos,
        Some(kind),
        s,
        format!("'{s}' is not a number in {lo}-{hi}"),
    ))
}

/// Parses an IANA time zone name (`Asia/Shanghai`, `UTC`); an exact match first, then
/// case-insensitively. Unknown names are 22023 with `field: "timezone"`.
pub fn parse_timezone(name: &str) -> Result<Tz, QuotaError> {
    let n = name.trim();
    let bad = || {
        QuotaError::invalid(format!(
            "unknown time zone '{}' (expected an IANA name such as 'UTC' or 'Asia/Shanghai')",
            n.chars().take(MAX_TZ_LEN).collect::<String>()
        ))
        .with("field", "timezone")
    };
    if n.is_empty() || n.len() > MAX_TZ_LEN {
        return Err(bad());
    }
    if let Ok(tz) = n.parse::<Tz>() {
        return Ok(tz);
    }
    chrono_tz::TZ_VARIANTS
        .iter()
        .copied()
        .find(|tz| tz.name().eq_ignore_ascii_case(n))
        .ok_or_else(bad)
}

/// The smallest set bit >= `from`, if any.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let m = bits & (!0u64 << from);
    (m != 0).then(|| m.trailing_zeros())
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    match (
        NaiveDate::from_ymd_opt(ny, nm, 1),
        NaiveDate::from_ymd_opt(year, month, 1),
    ) {
        (Some(a), Some(b)) => (a - b).num_days() as u32,
        _ => 28,
    }
}

impl Schedule {
    /// True for 6-field expressions (with seconds); descriptors and 5-field ones fire at second 0.
    pub fn has_seconds(&self) -> bool {
        self.six_fields
    }

    /// Does the day match (month, day-of-month and day-of-week, with the Vixie OR rule)?
    pub fn matches_date(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom_ok = self.dom & (1 << d.day()) != 0;
        let dow_ok = self.dow & (1 << d.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            dom_ok && dow_ok
        } else {
            dom_ok || dow_ok
        }
    }

    /// Does this wall-clock time match every field? (Fractions of a second are ignored.)
    pub fn matches_local(&self, t: NaiveDateTime) -> bool {
        self.matches_date(t.date())
            && self.hours & (1 << t.hour()) != 0
            && self.minutes & (1 << t.minute()) != 0
            && self.seconds & (1 << t.second()) != 0
    }

    /// The first matching wall-clock time at or after `start` (whole seconds), searching up to
    /// the end of local year `last_year`.
    fn next_local_match(&self, start: NaiveDateTime, last_year: i32) -> Option<NaiveDateTime> {
        let mut date = start.date();
        let (mut h, mut m, mut s) = (start.hour(), start.minute(), start.second());
        // Each pass either returns or moves (date, h, m, s) strictly forward.
        loop {
            if date.year() > last_year {
                return None;
            }
            if self.months & (1 << date.month()) == 0 {
                let (y, mo) = match next_bit(self.months as u64, date.month() + 1) {
                    Some(mo) => (date.year(), mo),
                    None => (date.year() + 1, self.months.trailing_zeros()),
                };
                date = NaiveDate::from_ymd_opt(y, mo, 1)?;
                (h, m, s) = (0, 0, 0);
                continue;
            }
            if !self.matches_date(date) {
                // Next day. When both day fields must match (one is unrestricted), jump straight
                // to the next day-of-month in the set.
                let dim = days_in_month(date.year(), date.month());
                let next_day = if self.dom_star || self.dow_star {
                    next_bit(self.dom as u64, date.day() + 1).filter(|&d| d <= dim)
                } else {
                    Some(date.day() + 1).filter(|&d| d <= dim)
                };
                date = match next_day {
                    Some(d) => date.with_day(d)?,
                    None => {
                        let first = date.with_day(1)?;
                        first.checked_add_months(chrono::Months::new(1))?
                    }
                };
                (h, m, s) = (0, 0, 0);
                continue;
            }
            let Some(nh) = next_bit(self.hours as u64, h) else {
                date = date.succ_opt()?;
                (h, m, s) = (0, 0, 0);
                continue;
            };
            if nh != h {
                (h, m, s) = (nh, 0, 0);
            }
            let Some(nm) = next_bit(self.minutes, m) else {
                (h, m, s) = (h + 1, 0, 0);
                if h == 24 {
                    date = date.succ_opt()?;
                    h = 0;
                }
                continue;
            };
            if nm != m {
                (m, s) = (nm, 0);
            }
            let Some(ns) = next_bit(self.seconds, s) else {
                (m, s) = (m + 1, 0);
                if m == 60 {
                    (h, m) = (h + 1, 0);
                    if h == 24 {
                        date = date.succ_opt()?;
                        h = 0;
                    }
                }
                continue;
            };
            return Some(date.and_time(NaiveTime::from_hms_opt(h, nm, ns)?));
        }
    }

    /// The first fire time strictly after `after`, with the fields read on the wall clock of `tz`
    /// (DST rules in the module documentation). `None` if nothing fires within
    /// [`HORIZON_YEARS`] years, which means never.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let utc = after.naive_utc();
        let local = utc
            .checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())?
            .with_nanosecond(0)?;
        let last_year = local.year().checked_add(HORIZON_YEARS)?;
        let mut cand = local;
        loop {
            let l = self.next_local_match(cand, last_year)?;
            let t = match tz.from_local_datetime(&l) {
                LocalResult::Single(t) => Some(t),
                LocalResult::Ambiguous(a, b) => Some(a.min(b)),
                LocalResult::None => None,
            };
            if let Some(t) = t {
                let t = t.with_timezone(&Utc);
                if t > after {
                    return Some(t);
                }
            }
            // A skipped local time (a gap), or one whose instant is not after `after` (the
            // second pass of a repeated hour): try the next second on.
            cand = l.checked_add_signed(Duration::seconds(1))?;
        }
    }

    /// The LATEST fire time in `(from_exclusive, to_inclusive]`, or `None`. After downtime the
    /// scheduler runs this one fire once instead of a burst of catch-ups. Cost: one
    /// [`Schedule::next_after`] plus a binary search over the interval (about 20 calls for a
    /// gap of days, at most about 40 for centuries).
    pub fn fires_between(
        &self,
        from_exclusive: DateTime<Utc>,
        to_inclusive: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        if to_inclusive <= from_exclusive {
            return None;
        }
        // The calendar repeats every 400 years: a fire in the interval, if any, lies in its last
        // 401 years.
        let mut lo = match to_inclusive.checked_sub_signed(Duration::days(401 * 366)) {
            Some(floor) if floor > from_exclusive => floor,
            _ => from_exclusive,
        };
        let first = self.next_after(lo, tz)?;
        if first > to_inclusive {
            return None;
        }
        // Invariant: next_after(lo) <= to < next_after(hi). Fires are whole seconds apart, so
        // once hi - lo <= 1 s, next_after(lo) is the latest fire <= to.
        let mut best = first;
        let mut hi = to_inclusive;
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            match self.next_after(mid, tz) {
                Some(f) if f <= to_inclusive => {
                    lo = mid;
                    best = f;
                }
                _ => hi = mid,
            }
        }
        Some(best)
    }
}

/// Validates a `periodic_expr`: the check a strategy runs on create and update.
pub fn check_periodic_expr(expr: &str) -> Result<(), QuotaError> {
    parse_schedule(expr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_bit_works() {
        assert_eq!(next_bit(0b1010, 0), Some(1));
        assert_eq!(next_bit(0b1010, 2), Some(3));
        assert_eq!(next_bit(0b1010, 4), None);
        assert_eq!(next_bit(u64::MAX, 64), None);
    }

    #[test]
    fn days_in_month_handles_leap_years() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2025, 12), 31);
        assert_eq!(days_in_month(2025, 4), 30);
    }
}
