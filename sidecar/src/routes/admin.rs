//! Admin API for plans, settings and statistics. Changes pass ADMIN_ACTOR so the extension's
//! audit log records who made them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{shapes, JsonResult};
use crate::auth::{AdminAuth, ADMIN_ACTOR};
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery, Flag, OptionalJson};
use crate::{db, AppState};

pub const SQL_PLAN_CREATE: &str = "SELECT quota.create_plan($1::jsonb, $2::text)";
pub const SQL_PLAN_UPDATE: &str = "SELECT quota.update_plan($1::text, $2::jsonb, $3::text)";
pub const SQL_PLAN_DELETE: &str = "SELECT quota.delete_plan($1::text, $2::text)";
pub const SQL_PLAN_LIST: &str = "SELECT quota.list_plans($1::bool)";
pub const SQL_PLAN_MULTIPLIER: &str =
    "SELECT quota.set_plan_multiplier($1::text, $2::float8, $3::text)";
pub const SQL_PLAN_PURCHASE_RATE: &str =
    "SELECT quota.set_plan_purchase_rate($1::text, $2::float8, $3::text)";
pub const SQL_EXCHANGE_RATE: &str = "SELECT quota.set_exchange_rate($1::int8, $2::text)";
/// Dates travel as text and are cast in SQL, so Postgres' own parser (and its 22007/22008 for
/// bad input, mapped to 400) decides what a date is.
pub const SQL_STATISTICS: &str =
    "SELECT quota.statistics($1::text::timestamptz, $2::text::timestamptz, $3::text)";

/// The plan fields of a create body or an update patch (the extension validates them).
pub const PLAN_FIELDS: &str = "plan fields: tier (1..64 chars), name (1..255), monthly_cost, \
     fixed_cost (>= 0), credits_included, bonus_credits (>= 0), multiplier (> 0), purchase_rate \
     (>= 1), active";

/// Create a plan (409 on a duplicate tier or name).
///
/// SQL: `quota.create_plan(plan, actor)`.
#[utoipa::path(
    post, path = "/api/admin/subscription-plans", tag = "admin",
    operation_id = "admin_plan_create",
    request_body(content = Object, description = PLAN_FIELDS),
    responses((status = 201, description = "the plan", body = shapes::PlanResponse)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PLAN_CREATE]))),
)]
pub async fn plan_create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(plan): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let plan = Value::Object(plan);
    let row = db::call_json(&state.pool, SQL_PLAN_CREATE, &[&plan, &ADMIN_ACTOR]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Update a plan (partial: only the given fields change).
///
/// SQL: `quota.update_plan(tier, patch, actor)`.
#[utoipa::path(
    put, path = "/api/admin/subscription-plans/{tier}", tag = "admin",
    operation_id = "admin_plan_update",
    params(("tier" = String, Path, description = "the plan tier")),
    request_body(content = Object, description = PLAN_FIELDS),
    responses((status = 200, description = "the plan", body = shapes::PlanResponse)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PLAN_UPDATE]))),
)]
pub async fn plan_update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(tier): ApiPath<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_PLAN_UPDATE, &[&tier, &patch, &ADMIN_ACTOR])
        .await
        .map(Json)
}

/// Delete a plan (409 while users are subscribed).
///
/// SQL: `quota.delete_plan(tier, actor)`.
#[utoipa::path(
    delete, path = "/api/admin/subscription-plans/{tier}", tag = "admin",
    operation_id = "admin_plan_delete",
    params(("tier" = String, Path, description = "the plan tier")),
    responses((status = 200, description = "the plan is deleted", body = shapes::PlanDeleted)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PLAN_DELETE]))),
)]
pub async fn plan_delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(tier): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_PLAN_DELETE, &[&tier, &ADMIN_ACTOR])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlanListQuery {
    /// Only active plans; default false.
    #[serde(default, deserialize_with = "optional_param")]
    #[param(value_type = Option<bool>)]
    pub active_only: Option<Flag>,
}

/// List plans.
///
/// SQL: `quota.list_plans(active_only)`.
#[utoipa::path(
    get, path = "/api/admin/subscription-plans", tag = "admin",
    operation_id = "admin_plan_list",
    params(PlanListQuery),
    responses((status = 200, description = "the plans", body = shapes::AdminPlans)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PLAN_LIST]))),
)]
pub async fn plan_list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PlanListQuery>,
) -> JsonResult {
    let active_only = query.active_only.is_some_and(|Flag(on)| on);
    db::call_json(&state.pool, SQL_PLAN_LIST, &[&active_only])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MultiplierQuery {
    /// > 0; or the JSON body.
    #[serde(default, deserialize_with = "optional_param")]
    pub multiplier: Option<f64>,
}

/// The alternative to the query parameter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiplierBody {
    /// > 0.
    pub multiplier: f64,
}

/// Set a plan's charge multiplier (`?multiplier=` or a JSON body).
///
/// SQL: `quota.set_plan_multiplier(tier, multiplier, actor)`.
#[utoipa::path(
    patch, path = "/api/admin/subscription-plans/{tier}/multiplier", tag = "admin",
    operation_id = "admin_plan_multiplier",
    params(("tier" = String, Path, description = "the plan tier"), MultiplierQuery),
    request_body(content = Option<MultiplierBody>),
    responses((status = 200, description = "the old and new multiplier", body = shapes::MultiplierResponse)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PLAN_MULTIPLIER]))),
)]
pub async fn plan_multiplier(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(tier): ApiPath<String>,
    ApiQuery(query): ApiQuery<MultiplierQuery>,
    OptionalJson(body): OptionalJson<MultiplierBody>,
) -> JsonResult {
    let multiplier = query_or_body(query.multiplier, body.map(|b| b.multiplier), "multiplier")?;
    db::call_json(
        &state.pool,
        SQL_PLAN_MULTIPLIER,
        &[&tier, &multiplier, &ADMIN_ACTOR],
    )
    .await
    .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PurchaseRateQuery {
    /// >= 1; or the JSON body.
    #[serde(default, deserialize_with = "optional_param")]
    pub purchase_rate: Option<f64>,
}

/// The alternative to the query parameter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRateBody {
    /// >= 1.
    pub purchase_rate: f64,
}

/// Set a plan's purchase rate (`?purchase_rate=` or a JSON body).
///
/// SQL: `quota.set_plan_purchase_rate(tier, purchase_rate, actor)`.
#[utoipa::path(
    patch, path = "/api/admin/subscription-plans/{tier}/purchase-rate", tag = "admin",
    operation_id = "admin_plan_purchase_rate",
    params(("tier" = String, Path, description = "the plan tier"), PurchaseRateQuery),
    request_body(content = Option<PurchaseRateBody>),
    responses((status = 200, description = "the old and new purchase rate", body = shapes::PurchaseRateResponse)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PLAN_PURCHASE_RATE]))),
)]
pub async fn plan_purchase_rate(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(tier): ApiPath<String>,
    ApiQuery(query): ApiQuery<PurchaseRateQuery>,
    OptionalJson(body): OptionalJson<PurchaseRateBody>,
) -> JsonResult {
    let purchase_rate = query_or_body(
        query.purchase_rate,
        body.map(|b| b.purchase_rate),
        "purchase_rate",
    )?;
    db::call_json(
        &state.pool,
        SQL_PLAN_PURCHASE_RATE,
        &[&tier, &purchase_rate, &ADMIN_ACTOR],
    )
    .await
    .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExchangeRateQuery {
    /// Credits per USD; or the JSON body.
    #[serde(default, deserialize_with = "optional_param")]
    pub base_rate: Option<i64>,
}

/// The alternative to the query parameter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRateBody {
    /// Credits per USD, > 0.
    pub base_rate: i64,
}

/// Set the base rate, credits per USD (`?base_rate=` or a JSON body).
///
/// SQL: `quota.set_exchange_rate(base_rate, actor)`.
#[utoipa::path(
    patch, path = "/api/admin/settings/exchange-rate", tag = "admin",
    operation_id = "admin_exchange_rate",
    params(ExchangeRateQuery),
    request_body(content = Option<ExchangeRateBody>),
    responses((status = 200, description = "the old and new base rate", body = shapes::ExchangeRateResponse)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_EXCHANGE_RATE]))),
)]
pub async fn exchange_rate(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ExchangeRateQuery>,
    OptionalJson(body): OptionalJson<ExchangeRateBody>,
) -> JsonResult {
    let base_rate = query_or_body(query.base_rate, body.map(|b| b.base_rate), "base_rate")?;
    db::call_json(&state.pool, SQL_EXCHANGE_RATE, &[&base_rate, &ADMIN_ACTOR])
        .await
        .map(Json)
}

/// The seed passes these values as query parameters; JSON bodies are accepted too. Both at once
/// with different values is ambiguous, so it is refused.
pub fn query_or_body<V: PartialEq + Copy>(
    from_query: Option<V>,
    from_body: Option<V>,
    name: &str,
) -> Result<V, AppError> {
    match (from_query, from_body) {
        (Some(q), Some(b)) if q != b => Err(AppError::InvalidQuery(format!(
            "{name} given in both the query and the body with different values"
        ))),
        (Some(value), _) | (None, Some(value)) => Ok(value),
        (None, None) => Err(AppError::InvalidQuery(format!(
            "{name} is required: ?{name}=<value> or JSON body {{\"{name}\": <value>}}"
        ))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatisticsQuery {
    /// Period start (inclusive): `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS` or RFC 3339.
    #[serde(default, deserialize_with = "optional_param")]
    pub start_date: Option<String>,
    /// Period end (exclusive), same formats.
    #[serde(default, deserialize_with = "optional_param")]
    pub end_date: Option<String>,
    /// Only users of this tier.
    #[serde(default, deserialize_with = "optional_param")]
    pub tier: Option<String>,
}

/// Usage statistics for a period.
///
/// SQL: `quota.statistics(start_date, end_date, tier)`.
#[utoipa::path(
    get, path = "/api/admin/statistics", tag = "admin",
    operation_id = "admin_statistics",
    params(StatisticsQuery),
    responses((status = 200, description = "users, subscriptions, credits and transactions of the period", body = shapes::StatisticsResponse)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_STATISTICS]))),
)]
pub async fn statistics(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<StatisticsQuery>,
) -> JsonResult {
    db::call_json(
        &state.pool,
        SQL_STATISTICS,
        &[&query.start_date, &query.end_date, &query.tier],
    )
    .await
    .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_or_body_prefers_either_and_refuses_none_or_conflict() {
        assert_eq!(query_or_body(Some(2.0), None, "multiplier").unwrap(), 2.0);
        assert_eq!(query_or_body(None, Some(3.0), "multiplier").unwrap(), 3.0);
        assert_eq!(query_or_body(Some(4), Some(4), "base_rate").unwrap(), 4);
        assert!(matches!(
            query_or_body(Some(4), Some(5), "base_rate"),
            Err(AppError::InvalidQuery(_))
        ));
        assert!(matches!(
            query_or_body::<i64>(None, None, "base_rate"),
            Err(AppError::InvalidQuery(_))
        ));
    }
}
