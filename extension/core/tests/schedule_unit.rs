//! Cron schedules: syntax, Vixie day rule, time zones, DST, bounds, catch-up (SPEC 6.3).

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use quota_core::schedule::{parse_schedule, parse_timezone, Schedule, MAX_EXPR_LEN};
use std::time::{Duration, Instant};

fn utc(s: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
}

fn sched(s: &str) -> Schedule {
    parse_schedule(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The next `n` fire times after `from` (UTC texts).
fn fires(expr: &str, from: &str, tz: Tz, n: usize) -> Vec<String> {
    let s = sched(expr);
    let mut t = utc(from);
    let mut out = Vec::new();
    for _ in 0..n {
        t = s
            .next_after(t, tz)
            .unwrap_or_else(|| panic!("{expr} stops after {t}"));
        out.push(t.format("%Y-%m-%d %H:%M:%S").to_string());
    }
    out
}

const UTC: Tz = chrono_tz::UTC;
const NY: Tz = chrono_tz::America::New_York;

#[test]
fn every_minute_and_strictly_after() {
    assert_eq!(
        fires("* * * * *", "2024-05-01 12:00:30", UTC, 2),
        ["2024-05-01 12:01:00", "2024-05-01 12:02:00"]
    );
    // Exactly on a fire time: the next one, never the same.
    assert_eq!(
        fires("* * * * *", "2024-05-01 12:00:00", UTC, 1),
        ["2024-05-01 12:01:00"]
    );
    // Fractions of a second.
    let s = sched("* * * * *");
    let t = utc("2024-05-01 12:00:00") + chrono::Duration::milliseconds(1);
    assert_eq!(s.next_after(t, UTC), Some(utc("2024-05-01 12:01:00")));
    let t = utc("2024-05-01 12:00:59") + chrono::Duration::milliseconds(999);
    assert_eq!(s.next_after(t, UTC), Some(utc("2024-05-01 12:01:00")));
}

#[test]
fn numbers_ranges_steps_lists() {
    assert_eq!(
        fires("5 4 * * *", "2024-05-01 04:05:00", UTC, 2),
        ["2024-05-02 04:05:00", "2024-05-03 04:05:00"]
    );
    assert_eq!(
        fires("0 22-23,0-1 * * *", "2024-05-01 12:00:00", UTC, 5),
        [
            "2024-05-01 22:00:00",
            "2024-05-01 23:00:00",
            "2024-05-02 00:00:00",
            "2024-05-02 01:00:00",
            "2024-05-02 22:00:00"
        ]
    );
    assert_eq!(
        fires("*/15 * * * *", "2024-05-01 12:07:00", UTC, 5),
        [
            "2024-05-01 12:15:00",
            "2024-05-01 12:30:00",
            "2024-05-01 12:45:00",
            "2024-05-01 13:00:00",
            "2024-05-01 13:15:00"
        ]
    );
    assert_eq!(
        fires("0 8-18/4 * * *", "2024-05-01 00:00:00", UTC, 4),
        [
            "2024-05-01 08:00:00",
            "2024-05-01 12:00:00",
            "2024-05-01 16:00:00",
            "2024-05-02 08:00:00"
        ]
    );
    // `a/n` = `a-max/n`.
    assert_eq!(sched("5/20 * * * *"), sched("5,25,45 * * * *"));
    assert_eq!(
        fires("0 0 1,15,28 * *", "2024-02-10 00:00:00", UTC, 4),
        [
            "2024-02-15 00:00:00",
            "2024-02-28 00:00:00",
            "2024-03-01 00:00:00",
            "2024-03-15 00:00:00"
        ]
    );
    // Leading zeros, a single-value range, a step larger than the range.
    assert_eq!(sched("05 08 * * *"), sched("5 8 * * *"));
    assert_eq!(sched("3-3 * * * *"), sched("3 * * * *"));
    assert_eq!(sched("10-20/30 * * * *"), sched("10 * * * *"));
    assert_eq!(sched("*/1 * * * *"), sched("* * * * *"));
}

#[test]
fn month_and_day_names_case_insensitive() {
    assert_eq!(sched("0 0 1 jan,Jul *"), sched("0 0 1 1,7 *"));
    assert_eq!(sched("0 0 1 JAN-mar *"), sched("0 0 1 1-3 *"));
    assert_eq!(sched("0 0 * * mon-FRI"), sched("0 0 * * 1-5"));
    assert_eq!(sched("0 0 * * sun,Sat"), sched("0 0 * * 0,6"));
    assert_eq!(sched("0 0 1 Dec *").to_string(), "0 0 1 DEC *");
    // 2024-05-04 is a Saturday.
    assert_eq!(
        fires("0 9 * * MON-FRI", "2024-05-03 10:00:00", UTC, 2),
        ["2024-05-06 09:00:00", "2024-05-07 09:00:00"]
    );
}

#[test]
fn day_of_week_seven_is_sunday() {
    assert_eq!(sched("0 0 * * 7"), sched("0 0 * * 0"));
    assert_eq!(sched("0 0 * * 7"), sched("0 0 * * SUN"));
    assert_eq!(sched("0 0 * * 5-7"), sched("0 0 * * 0,5,6"));
    assert_eq!(sched("0 0 * * */7"), sched("0 0 * * */7"));
    // 2024-05-05 is a Sunday.
    assert_eq!(
        fires("0 0 * * 7", "2024-05-01 00:00:00", UTC, 2),
        ["2024-05-05 00:00:00", "2024-05-12 00:00:00"]
    );
}

#[test]
fn six_fields_with_seconds() {
    // The shape the strategies use: "0 0 8 * * *" = every day at 08:00:00.
    let s = sched("0 0 8 * * *");
    assert!(s.has_seconds());
    assert_eq!(s, sched("0 8 * * *"));
    assert_eq!(
        fires("0 0 8 * * *", "2024-05-01 08:00:00", UTC, 2),
        ["2024-05-02 08:00:00", "2024-05-03 08:00:00"]
    );
    assert_eq!(
        fires("*/20 * * * * *", "2024-05-01 12:00:05", UTC, 4),
        [
            "2024-05-01 12:00:20",
            "2024-05-01 12:00:40",
            "2024-05-01 12:01:00",
            "2024-05-01 12:01:20"
        ]
    );
    assert_eq!(
        fires("30 15 10 * * *", "2024-05-01 10:15:30", UTC, 1),
        ["2024-05-02 10:15:30"]
    );
    assert_eq!(
        fires("59 59 23 31 12 *", "2024-05-01 00:00:00", UTC, 1),
        ["2024-12-31 23:59:59"]
    );
    assert!(!sched("0 8 * * *").has_seconds());
}

#[test]
fn seed_expressions() {
    // Seed 000 strategies ("0 0 8 * * *") and the cron jobs of seed 002.
    for (expr, from, next) in [
        ("0 0 8 * * *", "2024-05-01 09:00:00", "2024-05-02 08:00:00"),
        ("0 0 * * *", "2024-05-01 09:00:00", "2024-05-02 00:00:00"),
        ("0 2 * * *", "2024-05-01 01:00:00", "2024-05-01 02:00:00"),
        ("0 1 * * *", "2024-05-01 01:00:00", "2024-05-02 01:00:00"),
    ] {
        assert_eq!(fires(expr, from, UTC, 1), [next], "{expr}");
    }
}

#[test]
fn descriptors() {
    for (d, canon, eq) in [
        ("@yearly", "@yearly", "0 0 1 1 *"),
        ("@annually", "@yearly", "0 0 1 1 *"),
        ("@monthly", "@monthly", "0 0 1 * *"),
        ("@weekly", "@weekly", "0 0 * * 0"),
        ("@daily", "@daily", "0 0 * * *"),
        ("@midnight", "@daily", "0 0 * * *"),
        ("@hourly", "@hourly", "0 * * * *"),
        ("  @DAILY ", "@daily", "0 0 * * *"),
        ("@Hourly", "@hourly", "0 * * * *"),
    ] {
        let s = sched(d);
        assert_eq!(s.to_string(), canon, "{d}");
        assert_eq!(s, sched(eq), "{d}");
        assert!(!s.has_seconds());
    }
    assert_eq!(
        fires("@yearly", "2024-05-01 00:00:00", UTC, 2),
        ["2025-01-01 00:00:00", "2026-01-01 00:00:00"]
    );
    assert_eq!(
        fires("@monthly", "2024-05-01 00:00:00", UTC, 1),
        ["2024-06-01 00:00:00"]
    );
    assert_eq!(
        fires("@weekly", "2024-05-01 00:00:00", UTC, 1),
        ["2024-05-05 00:00:00"]
    );
    assert_eq!(
        fires("@hourly", "2024-05-01 00:00:00", UTC, 1),
        ["2024-05-01 01:00:00"]
    );
    for bad in [
        "@reboot",
        "@every 1h",
        "@every",
        "@fortnightly",
        "@daily *",
        "@",
    ] {
        let e = parse_schedule(bad).unwrap_err();
        assert_eq!(e.kind.sqlstate(), "22023", "{bad}");
    }
}

#[test]
fn question_mark_in_day_fields() {
    assert_eq!(sched("0 0 ? * MON"), sched("0 0 * * MON"));
    assert_eq!(sched("0 0 8 1 * ?"), sched("0 0 8 1 * *"));
    assert!(parse_schedule("? * * * *").is_err());
}

#[test]
fn whitespace_and_canonical_text() {
    let s = sched("  0\t0   8 *  *\t* ");
    assert_eq!(s.to_string(), "0 0 8 * * *");
    assert_eq!(
        sched("*/15 9-17 * jan-jun mon-fri").to_string(),
        "*/15 9-17 * JAN-JUN MON-FRI"
    );
    for e in [
        "*/15 9-17 * jan-jun mon-fri",
        "0 0 8 * * *",
        "@midnight",
        "0 0 1,15 * 1-5",
        "5/20 * ? * *",
    ] {
        let s = sched(e);
        assert_eq!(sched(&s.to_string()), s, "{e}");
        assert_eq!(sched(&s.to_string()).to_string(), s.to_string(), "{e}");
    }
    let parsed: Schedule = "0 12 * * *".parse().unwrap();
    assert_eq!(parsed, sched("0 12 * * *"));
}

#[test]
fn vixie_day_of_month_or_day_of_week() {
    // Both restricted: the 1st of the month OR a Monday. 2024-04-01 is a Monday.
    assert_eq!(
        fires("0 0 1 * MON", "2024-04-01 00:00:00", UTC, 6),
        [
            "2024-04-08 00:00:00",
            "2024-04-15 00:00:00",
            "2024-04-22 00:00:00",
            "2024-04-29 00:00:00",
            "2024-05-01 00:00:00",
            "2024-05-06 00:00:00"
        ]
    );
    assert_eq!(
        fires("0 0 13 * FRI", "2024-05-01 00:00:00", UTC, 3),
        [
            "2024-05-03 00:00:00",
            "2024-05-10 00:00:00",
            "2024-05-13 00:00:00"
        ]
    );
    // Day-of-month `*`: only the day of week counts.
    assert_eq!(
        fires("0 0 * * MON", "2024-05-01 00:00:00", UTC, 2),
        ["2024-05-06 00:00:00", "2024-05-13 00:00:00"]
    );
    // Day-of-week `*`: only the day of month counts.
    assert_eq!(
        fires("0 0 13 * *", "2024-05-01 00:00:00", UTC, 2),
        ["2024-05-13 00:00:00", "2024-06-13 00:00:00"]
    );
    // A field starting with `*` counts as unrestricted, as in Vixie cron and pg_cron: both must
    // match. Mondays with an odd day of the month: 2024-05-13, 2024-05-27, 2024-06-03.
    assert_eq!(
        fires("0 0 */2 * MON", "2024-05-01 00:00:00", UTC, 3),
        [
            "2024-05-13 00:00:00",
            "2024-05-27 00:00:00",
            "2024-06-03 00:00:00"
        ]
    );
    // A restricted field that happens to cover everything is still restricted (Vixie): OR.
    assert_eq!(
        fires("0 0 1-31 * MON", "2024-05-01 00:00:00", UTC, 2),
        ["2024-05-02 00:00:00", "2024-05-03 00:00:00"]
    );
}

#[test]
fn daily_in_shanghai_fires_at_16_utc() {
    let tz = parse_timezone("Asia/Shanghai").unwrap();
    assert_eq!(
        fires("@daily", "2024-05-01 00:00:00", tz, 3),
        [
            "2024-05-01 16:00:00",
            "2024-05-02 16:00:00",
            "2024-05-03 16:00:00"
        ]
    );
    assert_eq!(
        fires("0 0 8 * * *", "2024-05-01 00:00:00", tz, 1),
        ["2024-05-02 00:00:00"]
    );
    // Day fields are read in local time: Monday 00:00 in Shanghai is Sunday 16:00 UTC.
    assert_eq!(
        fires("0 0 * * MON", "2024-05-01 00:00:00", tz, 1),
        ["2024-05-05 16:00:00"]
    );
}

#[test]
fn dst_spring_forward_skips_the_missing_time() {
    // 2024-03-10 02:00 EST -> 03:00 EDT: 02:30 does not exist that day.
    assert_eq!(
        fires("30 2 * * *", "2024-03-08 12:00:00", NY, 3),
        [
            "2024-03-09 07:30:00",
            "2024-03-11 06:30:00",
            "2024-03-12 06:30:00"
        ]
    );
    // Times outside the gap are unaffected; hourly fires keep coming, one per real hour.
    assert_eq!(
        fires("0 * * * *", "2024-03-10 05:30:00", NY, 3),
        [
            "2024-03-10 06:00:00",
            "2024-03-10 07:00:00",
            "2024-03-10 08:00:00"
        ]
    );
    let s = sched("30 2 * * *");
    let t = s.next_after(utc("2024-03-09 07:30:00"), NY).unwrap();
    assert_eq!(t.with_timezone(&NY).to_string(), "2024-03-11 02:30:00 EDT");
}

#[test]
fn dst_fall_back_fires_once() {
    // 2024-11-03 02:00 EDT -> 01:00 EST: 01:30 happens twice; the job fires at the first only.
    assert_eq!(
        fires("30 1 * * *", "2024-11-02 12:00:00", NY, 3),
        [
            "2024-11-03 05:30:00",
            "2024-11-04 06:30:00",
            "2024-11-05 06:30:00"
        ]
    );
    // Asked from inside the repeated hour (01:10 EST, after the first 01:30): tomorrow.
    assert_eq!(
        fires("30 1 * * *", "2024-11-03 06:10:00", NY, 1),
        ["2024-11-04 06:30:00"]
    );
    // 02:30 occurs once on that day.
    assert_eq!(
        fires("30 2 * * *", "2024-11-02 12:00:00", NY, 2),
        ["2024-11-03 07:30:00", "2024-11-04 07:30:00"]
    );
    // Documented consequence: local times of the repeated hour fire on their first pass only.
    assert_eq!(
        fires("0,30 * * * *", "2024-11-03 04:00:00", NY, 4),
        [
            "2024-11-03 04:30:00",
            "2024-11-03 05:00:00",
            "2024-11-03 05:30:00",
            "2024-11-03 07:00:00"
        ]
    );
    let s = sched("30 1 * * *");
    assert_eq!(
        s.next_after(utc("2024-11-02 12:00:00"), NY)
            .unwrap()
            .with_timezone(&NY)
            .to_string(),
        "2024-11-03 01:30:00 EDT"
    );
}

#[test]
fn feb_29() {
    assert_eq!(
        fires("0 0 29 2 *", "2025-01-01 00:00:00", UTC, 2),
        ["2028-02-29 00:00:00", "2032-02-29 00:00:00"]
    );
    // 2100 is not a leap year: eight years between fires.
    assert_eq!(
        fires("0 0 29 2 *", "2096-03-01 00:00:00", UTC, 1),
        ["2104-02-29 00:00:00"]
    );
    // Feb 29 on a Sunday (day-of-week `*/7` is unrestricted, so both must match): 2004, 2032.
    assert_eq!(
        fires("0 0 29 2 */7", "2004-03-01 00:00:00", UTC, 1),
        ["2032-02-29 00:00:00"]
    );
    // Both restricted: Feb 29 OR a Sunday in February.
    assert_eq!(
        fires("0 0 29 2 0", "2025-01-01 00:00:00", UTC, 1),
        ["2025-02-02 00:00:00"]
    );
}

#[test]
fn impossible_schedules_return_none_quickly() {
    for e in [
        "0 0 30 2 *",
        "0 0 31 2 *",
        "0 0 31 4,6,9,11 *",
        "59 59 23 31 2,4 */2",
        "* * 30-31 2 *",
    ] {
        let s = sched(e);
        let start = Instant::now();
        assert_eq!(s.next_after(utc("2024-01-01 00:00:00"), NY), None, "{e}");
        assert_eq!(
            s.fires_between(utc("2000-01-01 00:00:00"), utc("2100-01-01 00:00:00"), NY),
            None,
            "{e}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{e} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn fires_between_returns_only_the_latest_missed_fire() {
    let s = sched("0 0 8 * * *");
    // Down for three days: one catch-up, the latest.
    assert_eq!(
        s.fires_between(utc("2024-05-01 08:00:00"), utc("2024-05-04 09:00:00"), UTC),
        Some(utc("2024-05-04 08:00:00"))
    );
    // `to` is inclusive, `from` exclusive.
    assert_eq!(
        s.fires_between(utc("2024-05-01 08:00:00"), utc("2024-05-02 08:00:00"), UTC),
        Some(utc("2024-05-02 08:00:00"))
    );
    assert_eq!(
        s.fires_between(utc("2024-05-01 08:00:00"), utc("2024-05-02 07:59:59"), UTC),
        None
    );
    assert_eq!(
        s.fires_between(utc("2024-05-02 08:00:00"), utc("2024-05-02 08:00:00"), UTC),
        None
    );
    assert_eq!(
        s.fires_between(utc("2024-05-03 00:00:00"), utc("2024-05-02 00:00:00"), UTC),
        None
    );
    // Every 15 minutes, a week of downtime.
    let q = sched("*/15 * * * *");
    assert_eq!(
        q.fires_between(utc("2024-05-01 00:00:00"), utc("2024-05-08 10:44:59"), UTC),
        Some(utc("2024-05-08 10:30:00"))
    );
    // In a time zone, across the fall-back.
    let ny = sched("30 1 * * *");
    assert_eq!(
        ny.fires_between(utc("2024-11-02 12:00:00"), utc("2024-11-03 06:45:00"), NY),
        Some(utc("2024-11-03 05:30:00"))
    );
    // Every second over a century: still fast.
    let sec = sched("* * * * * *");
    let start = Instant::now();
    assert_eq!(
        sec.fires_between(utc("2000-01-01 00:00:00"), utc("2099-12-31 23:59:59"), NY),
        Some(utc("2099-12-31 23:59:59"))
    );
    assert_eq!(
        sched("@yearly").fires_between(utc("1990-06-01 00:00:00"), utc("2024-06-01 00:00:00"), UTC),
        Some(utc("2024-01-01 00:00:00"))
    );
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn extreme_instants_do_not_panic() {
    let s = sched("* * * * * *");
    assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC, UTC), None);
    assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC, NY), None);
    assert!(s.next_after(DateTime::<Utc>::MIN_UTC, UTC).is_some());
    let y = sched("@yearly");
    let _ = y.next_after(DateTime::<Utc>::MAX_UTC - chrono::Duration::days(400), NY);
    let _ = y.fires_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, NY);
    let _ =
        sched("0 0 30 2 *").fires_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, UTC);
}

fn rejects(expr: &str, cron_field: Option<&str>, position: usize, words: &[&str]) {
    let e = parse_schedule(expr)
        .err()
        .unwrap_or_else(|| panic!("{expr:?} was accepted"));
    assert_eq!(e.kind.sqlstate(), "22023", "{expr}");
    assert_eq!(e.fields["field"], "periodic_expr", "{expr}");
    assert_eq!(e.fields["position"], position, "{expr}: {}", e.message);
    match cron_field {
        Some(f) => assert_eq!(e.fields["cron_field"], f, "{expr}: {}", e.message),
        None => assert!(
            !e.fields.contains_key("cron_field"),
            "{expr}: {}",
            e.message
        ),
    }
    for w in words {
        assert!(e.message.contains(w), "{expr}: '{}' lacks '{w}'", e.message);
    }
}

#[test]
fn rejects_bad_expressions_naming_field_and_value() {
    rejects("", None, 0, &["empty"]);
    rejects("   ", None, 0, &["empty"]);
    rejects("* * * *", None, 7, &["got 4"]);
    rejects("* * * * * * *", None, 12, &["got 7"]);
    rejects("60 * * * *", Some("minute"), 0, &["60", "0-59"]);
    rejects("0 24 * * *", Some("hour"), 2, &["24", "0-23"]);
    rejects("0 0 0 * *", Some("day-of-month"), 4, &["0", "1-31"]);
    rejects("0 0 32 * *", Some("day-of-month"), 4, &["32"]);
    rejects("0 0 * 13 *", Some("month"), 6, &["13", "1-12"]);
    rejects("0 0 * 0 *", Some("month"), 6, &["0"]);
    rejects("0 0 * * 8", Some("day-of-week"), 8, &["8", "0-7"]);
    rejects("60 0 0 * * *", Some("second"), 0, &["60"]);
    rejects("*/0 * * * *", Some("minute"), 2, &["step 0"]);
    rejects("*/60 * * * *", Some("minute"), 2, &["step 60"]);
    rejects("0 0 * * */8", Some("day-of-week"), 10, &["step 8"]);
    rejects("5-1 * * * *", Some("minute"), 0, &["reversed", "5-1"]);
    rejects("0 0 * * FRI-MON", Some("day-of-week"), 8, &["reversed"]);
    rejects("1,,2 * * * *", Some("minute"), 2, &["empty"]);
    rejects("1, * * * *", Some("minute"), 2, &["empty"]);
    rejects(",1 * * * *", Some("minute"), 0, &["empty"]);
    rejects("a * * * *", Some("minute"), 0, &["'a'"]);
    rejects("0 0 * FOO *", Some("month"), 6, &["FOO", "JAN-DEC"]);
    rejects(
        "0 0 * * MONDAY",
        Some("day-of-week"),
        8,
        &["MONDAY", "SUN-SAT"],
    );
    rejects("0 0 JAN * *", Some("day-of-month"), 4, &["JAN"]);
    rejects("*/ * * * *", Some("minute"), 2, &["step"]);
    rejects("/5 * * * *", Some("minute"), 0, &["missing value"]);
    rejects("*/x * * * *", Some("minute"), 2, &["'x'"]);
    rejects("1-2-3 * * * *", Some("minute"), 2, &["2-3"]);
    rejects("1- * * * *", Some("minute"), 2, &["missing value"]);
    rejects("-1 * * * *", Some("minute"), 0, &["missing value"]);
    rejects("*/5/2 * * * *", Some("minute"), 2, &["5/2"]);
    rejects("*-5 * * * *", Some("minute"), 0, &["'*'"]);
    rejects(
        "99999999999999999999 * * * *",
        Some("minute"),
        0,
        &["out of range"],
    );
    rejects(
        "*/99999999999999999999 * * * *",
        Some("minute"),
        2,
        &["out of range"],
    );
    rejects("0 0 L * *", Some("day-of-month"), 4, &["'L'"]);
    rejects("0 0 * * 1#2", Some("day-of-week"), 8, &["1#2"]);
    rejects("0 0 * * ５", None, 8, &["unexpected character"]);
    rejects("0 0 *\u{0} * *", None, 5, &["unexpected character"]);
    rejects("@bogus", None, 0, &["unknown descriptor"]);
    rejects("@daily 0", None, 7, &["after descriptor"]);
}

#[test]
fn length_is_bounded() {
    let ok = format!("0 0 * * *{}", " ".repeat(MAX_EXPR_LEN - 9));
    assert_eq!(ok.len(), MAX_EXPR_LEN);
    assert!(parse_schedule(&ok).is_ok());
    let long = format!("0 0 * * *{}", " ".repeat(MAX_EXPR_LEN - 8));
    let e = parse_schedule(&long).unwrap_err();
    assert!(e.message.contains("longer than 256"), "{}", e.message);
    let huge = format!("0 {} * * *", "1,".repeat(100_000));
    assert!(parse_schedule(&huge).is_err());
}

#[test]
fn time_zones() {
    assert_eq!(
        parse_timezone("Asia/Shanghai").unwrap(),
        chrono_tz::Asia::Shanghai
    );
    assert_eq!(parse_timezone("UTC").unwrap(), chrono_tz::UTC);
    assert_eq!(parse_timezone(" utc ").unwrap(), chrono_tz::UTC);
    assert_eq!(parse_timezone("america/new_york").unwrap(), NY);
    for bad in [
        "",
        "Mars/Olympus",
        "+08:00",
        "Asia/Shanghai/x",
        &"A".repeat(1000),
    ] {
        let e = parse_timezone(bad).unwrap_err();
        assert_eq!(e.kind.sqlstate(), "22023");
        assert_eq!(e.fields["field"], "timezone");
    }
    // A half-hour zone.
    let tz = parse_timezone("Asia/Kolkata").unwrap();
    assert_eq!(
        fires("0 9 * * *", "2024-05-01 00:00:00", tz, 1),
        ["2024-05-01 03:30:00"]
    );
    let _ = UTC.from_utc_datetime(&utc("2024-01-01 00:00:00").naive_utc());
}
