//! SQL glue for the condition language of recharge strategies (SPEC 6.2). The language itself
//! (parser, evaluator, SQL compiler) is pure Rust in `quota_core::condition`.

use crate::error::{raise, OrRaise};
use chrono::{DateTime, Utc};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use quota_core::condition::{self, Expr, SqlParam, UserFacts};
use quota_core::ids::validate_user_id;
use quota_core::QuotaError;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

fn parse(text: &str) -> Expr {
    condition::parse(text).map_err(QuotaError::from).or_raise()
}

pub fn from_pg_timestamp(ts: TimestampWithTimeZone) -> Option<DateTime<Utc>> {
    if !ts.is_finite() {
        return None;
    }
    DateTime::from_timestamp_micros(pg_sys::TimestampTz::from(ts) + PG_EPOCH_OFFSET_US)
}

pub fn to_pg_timestamp(ts: &DateTime<Utc>) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(ts.timestamp_micros() - PG_EPOCH_OFFSET_US).unwrap_or_else(
        |_| {
            raise(QuotaError::invalid(format!(
                "timestamp {ts} is out of range"
            )))
        },
    )
}

/// Binds compiled parameters as datums of the types the predicate casts them to.
pub fn bind_params(params: &[SqlParam]) -> Vec<DatumWithOid<'static>> {
    params
        .iter()
        .map(|p| match p {
            SqlParam::Text(s) => s.clone().into(),
            SqlParam::TextArray(v) => v.clone().into(),
            SqlParam::Int(i) => (*i).into(),
            SqlParam::Timestamp(t) => to_pg_timestamp(t).into(),
        })
        .collect()
}

/// The facts a condition reads about one user, or None if there is no such user.
pub fn user_facts(user_id: &str) -> Option<UserFacts> {
    Spi::connect(|client| {
        let t = client
            .select(
                "SELECT u.id, u.vip, u.org, u.github_star, u.register_time, u.access_time,
                        coalesce(w.balance, 0) AS balance
                 FROM quota.users u LEFT JOIN quota.wallets w ON w.user_id = u.id
                 WHERE u.id = $1",
                Some(1),
                &[user_id.into()],
            )
            .or_raise();
        t.into_iter().next().map(|r| UserFacts {
            id: r.get::<String>(1).or_raise().unwrap_or_default(),
            vip: r.get::<i32>(2).or_raise().unwrap_or(0),
            org: r.get::<String>(3).or_raise(),
            github_star: r.get::<Vec<String>>(4).or_raise().unwrap_or_default(),
            register_time: r
                .get::<TimestampWithTimeZone>(5)
                .or_raise()
                .and_then(from_pg_timestamp),
            access_time: r
                .get::<TimestampWithTimeZone>(6)
                .or_raise()
                .and_then(from_pg_timestamp),
            balance: r.get::<i64>(7).or_raise().unwrap_or(0),
        })
    })
}

/// The ids of the users matching a condition, by its compiled SQL predicate (set-based).
pub fn matching_user_ids(expr: &Expr) -> Vec<String> {
    let (predicate, params) = condition::to_sql(expr, 1);
    let sql = format!(
        "SELECT u.id FROM quota.users u LEFT JOIN quota.wallets w ON w.user_id = u.id
         WHERE {predicate} ORDER BY u.id"
    );
    let args = bind_params(&params);
    Spi::connect(|client| {
        client
            .select(sql.as_str(), None, &args)
            .or_raise()
            .filter_map(|r| r.get::<String>(1).or_raise())
            .collect()
    })
}

#[pg_extern(immutable, strict, parallel_safe)]
fn parse_condition(condition: &str) -> String {
    parse(condition).normalize()
}

#[pg_extern(stable, strict, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn eval_condition(condition: &str, user_id: &str) -> bool {
    let expr = parse(condition);
    validate_user_id(user_id).or_raise();
    let facts = user_facts(user_id).unwrap_or_else(|| {
        raise(QuotaError::not_found(format!("user '{user_id}' not found")).with("user_id", user_id))
    });
    condition::eval(&expr, &facts)
}

#[pg_extern(stable, strict, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn match_users(condition: &str) -> SetOfIterator<'static, String> {
    SetOfIterator::new(matching_user_ids(&parse(condition)))
}
