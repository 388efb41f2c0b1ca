//! Timestamp inputs (SPEC 1.4): `YYYY-MM-DD HH:MM:SS` (the seeds' format, read as UTC),
//! `YYYY-MM-DD` (midnight UTC) and RFC 3339. Normalized to RFC 3339 UTC text, which PostgreSQL
//! reads as `timestamptz` without depending on the session's TimeZone.

use crate::error::{QuotaError, Result};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

pub fn parse_timestamp(field: &str, text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(ndt) = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S") {
        return Ok(ndt.and_utc());
    }
    // PostgreSQL's own timestamptz output (`2024-05-01 08:00:00+08`, with optional fraction),
    // so a value read back from the database is accepted as input.
    for format in ["%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(t, format) {
            return Ok(dt.with_timezone(&Utc));
        }
    }
    if let Ok(ndt) = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f") {
        return Ok(ndt.and_utc());
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(QuotaError::invalid(format!(
        "{field} must be 'YYYY-MM-DD HH:MM:SS', 'YYYY-MM-DD' or RFC 3339, got '{}'",
        t.chars().take(64).collect::<String>()
    ))
    .with("field", field))
}

/// RFC 3339 with a `Z` suffix and microseconds only when present.
pub fn to_rfc3339(dt: &DateTime<Utc>) -> String {
    dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_formats() {
        let a = parse_timestamp("t", "2024-05-01 00:00:00").unwrap();
        let b = parse_timestamp("t", "2024-05-01").unwrap();
        let c = parse_timestamp("t", "2024-05-01T02:00:00+02:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(to_rfc3339(&a), "2024-05-01T00:00:00Z");
    }

    #[test]
    fn accepts_postgres_timestamptz_output() {
        let a = parse_timestamp("t", "2024-05-01 08:00:00+08").unwrap();
        let b = parse_timestamp("t", "2024-05-01 00:00:00+00").unwrap();
        let c = parse_timestamp("t", "2024-05-01 05:30:00.25+05:30").unwrap();
        assert_eq!(a, b);
        assert_eq!(to_rfc3339(&c), "2024-05-01T00:00:00.250Z");
    }

    #[test]
    fn rejects_garbage_with_the_field_name() {
        let e = parse_timestamp("register_time", "yesterday").unwrap_err();
        assert!(e.message.starts_with("register_time must be"));
        assert!(parse_timestamp("t", "2024-13-01").is_err());
    }
}
