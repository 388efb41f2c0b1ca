//! Property tests of cron schedules against a brute-force reference: for random schedules, zones
//! and instants, `next_after(t)` is after `t`, matches the fields on the local wall clock, is the
//! earliest instant of its local time, and no instant strictly between fires.

use chrono::{DateTime, Duration, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use quota_core::schedule::{parse_schedule, Schedule};

const ZONES: &[Tz] = &[
    chrono_tz::UTC,
    chrono_tz::America::New_York,
    chrono_tz::Europe::London,
    chrono_tz::Asia::Shanghai,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Asia::Kathmandu,
    chrono_tz::Australia::Lord_Howe, // 30-minute DST
    chrono_tz::America::Santiago,    // southern hemisphere DST at midnight
];

const MONTHS: [&str; 12] = [
    "jan", "FEB", "Mar", "APR", "may", "JUN", "JUL", "aug", "SEP", "OCT", "NOV", "dec",
];
const DAYS: [&str; 7] = ["SUN", "mon", "TUE", "wed", "THU", "Fri", "SAT"];

/// One random item of a field with bounds lo..=hi (`names` spell values from `first`).
fn item(lo: u32, hi: u32, names: Option<(&'static [&'static str], u32)>) -> BoxedStrategy<String> {
    let val = move |v: u32| -> String {
        match names {
            Some((n, first))
                if v >= first && ((v - first) as usize) < n.len() && v.is_multiple_of(2) =>
            {
                n[(v - first) as usize].to_string()
            }
            _ => v.to_string(),
        }
    };
    prop_oneof![
        2 => Just("*".to_string()),
        3 => (lo..=hi).prop_map(val),
        2 => (lo..=hi, lo..=hi).prop_map(move |(a, b)| format!("{}-{}", val(a.min(b)), val(a.max(b)))),
        2 => (1..=hi.max(1)).prop_map(|n| format!("*/{n}")),
        1 => (lo..=hi, lo..=hi, 1..=hi.max(1))
            .prop_map(move |(a, b, n)| format!("{}-{}/{n}", val(a.min(b)), val(a.max(b)))),
        1 => (lo..=hi, 1..=hi.max(1)).prop_map(move |(a, n)| format!("{}/{n}", val(a))),
    ]
    .boxed()
}

fn field(lo: u32, hi: u32, names: Option<(&'static [&'static str], u32)>) -> BoxedStrategy<String> {
    prop::collection::vec(item(lo, hi, names), 1..=3)
        .prop_map(|v| {
            if v.iter().any(|s| s == "*") {
                "*".to_string()
            } else {
                v.join(",")
            }
        })
        .boxed()
}

/// 5-field schedules that fire often enough for a brute-force check over minutes: the hour and
/// day fields are biased towards `*`.
fn minute_schedule() -> impl Strategy<Value = String> {
    let dense = |lo, hi, names| prop_oneof![3 => Just("*".to_string()), 2 => field(lo, hi, names)];
    (
        field(0, 59, None),
        dense(0, 23, None),
        dense(1, 31, None),
        dense(1, 12, Some((&MONTHS, 1))),
        dense(0, 7, Some((&DAYS, 0))),
    )
        .prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}"))
}

/// 6-field schedules for a brute-force check over seconds: minutes and coarser mostly `*`.
fn second_schedule() -> impl Strategy<Value = String> {
    let dense = |lo, hi| prop_oneof![4 => Just("*".to_string()), 1 => field(lo, hi, None)];
    (field(0, 59, None), dense(0, 59), dense(0, 23))
        .prop_map(|(s, m, h)| format!("{s} {m} {h} * * *"))
}

/// Any valid schedule, including sparse ones (checked without brute force).
fn any_schedule() -> impl Strategy<Value = String> {
    (
        field(0, 59, None),
        field(0, 59, None),
        field(0, 23, None),
        field(1, 31, None),
        field(1, 12, Some((&MONTHS, 1))),
        field(0, 7, Some((&DAYS, 0))),
        any::<bool>(),
    )
        .prop_map(|(s, a, b, c, d, e, six)| {
            if six {
                format!("{s} {a} {b} {c} {d} {e}")
            } else {
                format!("{a} {b} {c} {d} {e}")
            }
        })
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1975..2090, to the second, sometimes with a fraction.
    (
        157_766_400i64..3_786_825_600i64,
        prop_oneof![3 => Just(0u32), 1 => 0u32..1_000_000_000],
    )
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

/// An instant within 36 hours of a DST transition, with its zone.
fn near_transition() -> impl Strategy<Value = (DateTime<Utc>, Tz)> {
    const T: &[(&str, Tz)] = &[
        ("2024-03-10T07:00:00Z", chrono_tz::America::New_York),
        ("2024-11-03T06:00:00Z", chrono_tz::America::New_York),
        ("2031-11-02T06:00:00Z", chrono_tz::America::New_York),
        ("2024-03-31T01:00:00Z", chrono_tz::Europe::London),
        ("2024-10-27T01:00:00Z", chrono_tz::Europe::London),
        ("2024-04-06T15:00:00Z", chrono_tz::Australia::Lord_Howe),
        ("2024-10-05T15:30:00Z", chrono_tz::Australia::Lord_Howe),
        ("2024-04-07T03:00:00Z", chrono_tz::America::Santiago),
        ("2024-09-08T04:00:00Z", chrono_tz::America::Santiago),
    ];
    (prop::sample::select(T), -129_600i64..129_600).prop_map(|((at, tz), d)| {
        (
            DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc)
                + Duration::seconds(d),
            tz,
        )
    })
}

fn zone() -> impl Strategy<Value = Tz> {
    prop::sample::select(ZONES)
}

/// Is `u` a fire time: its local time matches and `u` is that local time's earliest instant?
fn fires_at(s: &Schedule, u: DateTime<Utc>, tz: Tz) -> bool {
    let local = u.with_timezone(&tz).naive_local();
    if !s.matches_local(local) {
        return false;
    }
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t == u,
        LocalResult::Ambiguous(a, b) => a.min(b) == u,
        LocalResult::None => false,
    }
}

/// Checks `n = next_after(t)` against brute force over steps of `step` seconds (at most `cap`
/// steps; the fields of these schedules only name whole multiples of `step`).
fn check(s: &Schedule, t: DateTime<Utc>, tz: Tz, step: i64, cap: i64) -> Result<(), TestCaseError> {
    let n = s.next_after(t, tz);
    // The first grid point strictly after t.
    let mut u = DateTime::from_timestamp(t.timestamp().div_euclid(step) * step, 0).unwrap();
    if u <= t {
        u += Duration::seconds(step);
    }
    for _ in 0..cap {
        if let Some(n) = n {
            if u >= n {
                break;
            }
        }
        prop_assert!(
            !fires_at(s, u, tz),
            "{s} in {tz}: {u} fires but next_after({t}) = {n:?}"
        );
        u += Duration::seconds(step);
    }
    if let Some(n) = n {
        prop_assert!(n > t);
        prop_assert!(
            fires_at(s, n, tz),
            "{s} in {tz}: next_after({t}) = {n} does not match"
        );
        prop_assert_eq!(n.timestamp_subsec_nanos(), 0);
        // No fire in (t, n) means fires_between(t, n) is n, and nothing before it.
        prop_assert_eq!(s.fires_between(t, n, tz), Some(n));
        prop_assert_eq!(s.fires_between(t, n - Duration::milliseconds(1), tz), None);
        if step == 60 {
            prop_assert_eq!(n.timestamp() % 60, 0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn next_after_is_the_first_matching_minute(expr in minute_schedule(), t in instant(), tz in zone()) {
        let s = parse_schedule(&expr).unwrap();
        // Two months of minutes; sparser schedules are checked up to there.
        check(&s, t, tz, 60, 90_000)?;
    }

    #[test]
    fn next_after_is_the_first_matching_second(expr in second_schedule(), t in instant(), tz in zone()) {
        let s = parse_schedule(&expr).unwrap();
        check(&s, t, tz, 1, 30_000)?;
    }

    #[test]
    fn next_after_around_dst_transitions(expr in minute_schedule(), (t, tz) in near_transition()) {
        let s = parse_schedule(&expr).unwrap();
        check(&s, t, tz, 60, 20_000)?;
    }

    #[test]
    fn seconds_around_dst_transitions(expr in second_schedule(), (t, tz) in near_transition()) {
        let s = parse_schedule(&expr).unwrap();
        check(&s, t, tz, 1, 20_000)?;
    }

    #[test]
    fn sparse_schedules_are_consistent(expr in any_schedule(), t in instant(), tz in zone()) {
        let s = parse_schedule(&expr).unwrap();
        // Canonical text parses back to the same schedule.
        prop_assert_eq!(&parse_schedule(&s.to_string()).unwrap(), &s);
        if let Some(n) = s.next_after(t, tz) {
            prop_assert!(n > t);
            prop_assert!(fires_at(&s, n, tz), "{} in {}: {} does not match", s, tz, n);
            prop_assert_eq!(s.fires_between(t, n, tz), Some(n));
            prop_assert_eq!(s.fires_between(t, n - Duration::milliseconds(1), tz), None);
            // The latest fire up to a later point is a fire, and the next one is after that point.
            let to = n + Duration::days(40);
            let last = s.fires_between(t, to, tz).unwrap();
            prop_assert!(last >= n && last <= to && fires_at(&s, last, tz));
            prop_assert!(s.next_after(last, tz).is_none_or(|x| x > to));
        }
    }

    #[test]
    fn parser_never_panics(text in "[0-9A-Za-z*/,?@ \t-]{0,40}") {
        let _ = parse_schedule(&text);
    }

    #[test]
    fn parser_never_panics_on_any_text(text in ".{0,300}") {
        let _ = parse_schedule(&text);
    }
}
