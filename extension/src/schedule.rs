//! SQL-side glue for cron schedules of periodic strategies; the parsing and the fire-time
//! arithmetic are pure Rust in `quota_core::schedule`.

use crate::condition::{from_pg_timestamp, to_pg_timestamp};
use crate::error::{required, OrRaise};
use crate::gucs;
use chrono_tz::Tz;
use pgrx::prelude::*;
use quota_core::schedule::{parse_schedule, parse_timezone};
use quota_core::QuotaError;

/// Validates a cron expression (used when a strategy is created or updated).
pub fn check_cron(expr: &str) -> Result<(), QuotaError> {
    parse_schedule(expr).map(|_| ())
}

/// The time zone of `quota.timezone`; an unknown name is an error (22023).
pub fn timezone() -> Tz {
    parse_timezone(&gucs::timezone_name()).or_raise()
}

/// The latest fire of `expr` in (from, to], if any.
pub fn latest_fire(
    expr: &str,
    from: TimestampWithTimeZone,
    to: TimestampWithTimeZone,
    tz: Tz,
) -> Option<TimestampWithTimeZone> {
    let schedule = parse_schedule(expr).or_raise();
    let (from, to) = (from_pg_timestamp(from)?, from_pg_timestamp(to)?);
    schedule
        .fires_between(from, to, tz)
        .map(|t| to_pg_timestamp(&t))
}

/// The next fire of a cron expression strictly after `after`, in `quota.timezone`
/// (or `timezone` when given): a DBA's check of a schedule before using it.
#[pg_extern(stable, parallel_safe)]
fn next_fire(
    periodic_expr: Option<&str>,
    after: Option<TimestampWithTimeZone>,
    timezone: default!(Option<&str>, "NULL"),
) -> Option<TimestampWithTimeZone> {
    let periodic_expr = required(periodic_expr, "periodic_expr");
    let after = required(after, "after");
    let tz = match timezone {
        Some(name) => parse_timezone(name).or_raise(),
        None => self::timezone(),
    };
    let schedule = parse_schedule(periodic_expr).or_raise();
    schedule
        .next_after(from_pg_timestamp(after)?, tz)
        .map(|t| to_pg_timestamp(&t))
}
