//! Usage statistics of provider pools (issue 13, seed 002's tracker) and `GET /metrics`.
//!
//! `?from&to` take RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (UTC), read by the
//! extension's parser (`quota_core::time`, through `extract::query_timestamp`).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use utoipa::IntoParams;

use super::{pool_shapes, JsonResult};
use crate::auth::{check_metrics, AdminOrServiceAuth, StatsCaller};
use crate::error::AppError;
use crate::extract::{optional_param, query_timestamp, ApiPath, ApiQuery};
use crate::metrics::{self, DbMetric};
use crate::{db, AppState};

/// The period's defaults (30 days up to now) are `quota.usage_stats`'s, as `quota.pool_stats`'s.
pub const SQL_USAGE: &str = "SELECT quota.usage_stats($1::text, $2::timestamptz, $3::timestamptz)";
pub const SQL_POOL_STATS: &str =
    "SELECT quota.pool_stats($1::text::uuid, $2::timestamptz, $3::timestamptz)";
pub const SQL_QUOTA: &str = "SELECT quota.pool_account_status($1::text::uuid)";
pub const SQL_METRICS: &str = "SELECT name, kind, help, labels, value FROM quota.metrics()";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Period start (inclusive): RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (UTC); default
    /// 30 days before `to`.
    #[serde(default, deserialize_with = "optional_param")]
    pub from: Option<String>,
    /// Period end (exclusive), same formats; default now.
    #[serde(default, deserialize_with = "optional_param")]
    pub to: Option<String>,
    /// Admin or service token only: one user's usage (default: every user's). A user token may
    /// name only its own user.
    #[serde(default, deserialize_with = "optional_param")]
    pub user_id: Option<String>,
}

/// Whose usage a caller may read: a user their own (naming another is 403), an operator anyone's
/// or everyone's (None).
pub fn usage_subject(
    caller: StatsCaller,
    asked: Option<String>,
) -> Result<Option<String>, AppError> {
    match (caller, asked) {
        (StatsCaller::Operator, asked) => Ok(asked),
        (StatsCaller::User(user_id), Some(asked)) if asked != user_id => Err(AppError::Forbidden(
            "a user API token reads its own usage only".into(),
        )),
        (StatsCaller::User(user_id), _) => Ok(Some(user_id)),
    }
}

/// Usage of the pools over a period: requests, success rate, tokens, cost, average latency.
///
/// With a user API token: that user's requests. With the admin or service token: every user's,
/// or `?user_id=`'s. SQL: `quota.usage_stats(user_id, from, to)`.
#[utoipa::path(
    get, path = "/api/v1/stats/usage", tag = "stats",
    operation_id = "stats_usage",
    params(UsageQuery),
    responses((status = 200, description = "the usage of the period", body = pool_shapes::UsageStats)),
    security(("userBearer" = []), ("serviceToken" = []), ("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USAGE]))),
)]
pub async fn usage(
    caller: StatsCaller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> JsonResult {
    let user_id = usage_subject(caller, query.user_id)?;
    let from = query_timestamp("from", query.from.as_deref())?;
    let to = query_timestamp("to", query.to.as_deref())?;
    let params: [&(dyn ToSql + Sync); 3] = [&user_id, &from, &to];
    db::call_json(&state.pool, SQL_USAGE, &params)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// Period start (inclusive): RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (UTC).
    #[serde(default, deserialize_with = "optional_param")]
    pub from: Option<String>,
    /// Period end (exclusive), same formats.
    #[serde(default, deserialize_with = "optional_param")]
    pub to: Option<String>,
}

/// A provider's pool status with its usage over the period, top models, error breakdown and
/// daily aggregates.
///
/// SQL: `quota.pool_stats(provider_id, from, to)`.
#[utoipa::path(
    get, path = "/api/v1/stats/pool/{provider_id}", tag = "stats",
    operation_id = "stats_pool",
    params(("provider_id" = String, Path, description = "the provider (uuid)"), PeriodQuery),
    responses((status = 200, description = "the pool's statistics", body = pool_shapes::PoolStats)),
    security(("serviceToken" = []), ("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_POOL_STATS]))),
)]
pub async fn pool(
    _: AdminOrServiceAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> JsonResult {
    let from = query_timestamp("from", query.from.as_deref())?;
    let to = query_timestamp("to", query.to.as_deref())?;
    let params: [&(dyn ToSql + Sync); 3] = [&provider_id, &from, &to];
    db::call_json(&state.pool, SQL_POOL_STATS, &params)
        .await
        .map(Json)
}

/// An account's quota: availability (with its reason), used, held, remaining, window.
///
/// SQL: `quota.pool_account_status(account_id)`.
#[utoipa::path(
    get, path = "/api/v1/stats/quota/{account_id}", tag = "stats",
    operation_id = "stats_quota",
    params(("account_id" = String, Path, description = "the account (uuid)")),
    responses((status = 200, description = "the account's quota", body = pool_shapes::AccountStatus)),
    security(("serviceToken" = []), ("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_QUOTA]))),
)]
pub async fn quota(
    _: AdminOrServiceAuth,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_QUOTA, &[&account_id])
        .await
        .map(Json)
}

/// A row of `quota.metrics()`, or why it cannot be one.
fn db_metric(row: &tokio_postgres::Row) -> Result<DbMetric, tokio_postgres::Error> {
    let labels: Option<Value> = row.try_get(3)?;
    Ok(DbMetric {
        name: row.try_get(0)?,
        kind: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        help: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        labels: match labels {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        },
        value: row.try_get::<_, Option<f64>>(4)?.unwrap_or(f64::NAN),
    })
}

/// Prometheus metrics (text format 0.0.4): the database's counters and gauges
/// (`quota.metrics()`, read at every scrape) and the sidecar's own (HTTP latency per route,
/// refusals by error code, relay deliveries). Open unless `QUOTA_METRICS_TOKEN` is set (then
/// `Authorization: Bearer <it>`). When the database cannot be read, the sidecar's own metrics
/// are still served, with `quota_database_up 0`.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)),
    security((), ("metricsBearer" = [])),
    extensions(("x-sql" = json!([SQL_METRICS]))),
)]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    check_metrics(&headers, state.config.metrics_token.as_ref())?;
    let rows = match db::query_rows(&state.pool, SQL_METRICS, &[]).await {
        Ok(rows) => {
            let mut metrics = Vec::with_capacity(rows.len());
            for row in &rows {
                match db_metric(row) {
                    Ok(metric) => metrics.push(metric),
                    Err(err) => tracing::warn!(%err, "metrics: quota.metrics() row skipped"),
                }
            }
            Some(metrics)
        }
        Err(err) => {
            tracing::warn!(error = ?err, "metrics: cannot read quota.metrics()");
            None
        }
    };
    let text = metrics::scrape(&state.metrics, rows.as_deref());
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_read_their_own_usage_operators_anyones() {
        assert_eq!(usage_subject(StatsCaller::Operator, None).unwrap(), None);
        assert_eq!(
            usage_subject(StatsCaller::Operator, Some("u2".into())).unwrap(),
            Some("u2".into())
        );
        assert_eq!(
            usage_subject(StatsCaller::User("u1".into()), None).unwrap(),
            Some("u1".into())
        );
        assert_eq!(
            usage_subject(StatsCaller::User("u1".into()), Some("u1".into())).unwrap(),
            Some("u1".into())
        );
        let err = usage_subject(StatsCaller::User("u1".into()), Some("u2".into())).unwrap_err();
        assert_eq!(err.status().as_u16(), 403);
    }
}
