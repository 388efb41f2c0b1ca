//! Admin API for plans, settings and statistics. Changes pass ADMIN_ACTOR so the extension's
//! audit log records who made them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::JsonResult;
use crate::auth::{AdminAuth, ADMIN_ACTOR};
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery, Flag, OptionalJson};
use crate::openapi::{
    optional, required, AuthKind, BodyDoc, BodySchema, FieldType as T, HttpMethod, RouteDoc,
};
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

const fn admin(method: HttpMethod, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc {
        method,
        path,
        auth: AuthKind::Admin,
        tag: "admin",
        summary,
        query: &[],
        body: None,
        success_status: 200,
        response: "the plan object",
        sql: &[],
    }
}

const PLAN_FIELDS: &str = "plan fields: tier (1..64 chars), name (1..255), monthly_cost, fixed_cost (>= 0), \
                           credits_included, bonus_credits (>= 0), multiplier (> 0), purchase_rate (>= 1), active";

pub const PLAN_CREATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: PLAN_FIELDS,
        schema: BodySchema::AnyObject,
    }),
    success_status: 201,
    sql: &[SQL_PLAN_CREATE],
    ..admin(
        HttpMethod::Post,
        "/api/admin/subscription-plans",
        "Create a plan (409 on duplicate tier or name)",
    )
};

pub const PLAN_UPDATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "partial: only the given fields change",
        schema: BodySchema::AnyObject,
    }),
    sql: &[SQL_PLAN_UPDATE],
    ..admin(
        HttpMethod::Put,
        "/api/admin/subscription-plans/{tier}",
        "Update a plan",
    )
};

pub const PLAN_DELETE: RouteDoc = RouteDoc {
    response: "{message: \"plan deleted\", tier}",
    sql: &[SQL_PLAN_DELETE],
    ..admin(
        HttpMethod::Delete,
        "/api/admin/subscription-plans/{tier}",
        "Delete a plan (409 while users are subscribed)",
    )
};

pub const PLAN_LIST: RouteDoc = RouteDoc {
    query: &[optional(
        "active_only",
        T::Boolean,
        "only active plans; default false",
    )],
    response: "{plans: [...], total}",
    sql: &[SQL_PLAN_LIST],
    ..admin(
        HttpMethod::Get,
        "/api/admin/subscription-plans",
        "List plans",
    )
};

pub const PLAN_MULTIPLIER: RouteDoc = RouteDoc {
    query: &[optional(
        "multiplier",
        T::Number,
        "> 0; or JSON body {\"multiplier\": n}",
    )],
    body: Some(BodyDoc {
        required: false,
        about: "alternative to the query parameter",
        schema: BodySchema::Fields(&[required("multiplier", T::Number, "> 0")]),
    }),
    sql: &[SQL_PLAN_MULTIPLIER],
    ..admin(
        HttpMethod::Patch,
        "/api/admin/subscription-plans/{tier}/multiplier",
        "Set a plan's charge multiplier",
    )
};

pub const PLAN_PURCHASE_RATE: RouteDoc = RouteDoc {
    query: &[optional(
        "purchase_rate",
        T::Number,
        ">= 1; or JSON body {\"purchase_rate\": n}",
    )],
    body: Some(BodyDoc {
        required: false,
        about: "alternative to the query parameter",
        schema: BodySchema::Fields(&[required("purchase_rate", T::Number, ">= 1")]),
    }),
    sql: &[SQL_PLAN_PURCHASE_RATE],
    ..admin(
        HttpMethod::Patch,
        "/api/admin/subscription-plans/{tier}/purchase-rate",
        "Set a plan's purchase rate",
    )
};

pub const EXCHANGE_RATE: RouteDoc = RouteDoc {
    query: &[optional(
        "base_rate",
        T::Integer,
        "credits per USD; or JSON body {\"base_rate\": n}",
    )],
    body: Some(BodyDoc {
        required: false,
        about: "alternative to the query parameter",
        schema: BodySchema::Fields(&[required("base_rate", T::Integer, "credits per USD, > 0")]),
    }),
    response: "{base_rate, previous_base_rate, updated_at}",
    sql: &[SQL_EXCHANGE_RATE],
    ..admin(
        HttpMethod::Patch,
        "/api/admin/settings/exchange-rate",
        "Set the base rate (credits per USD)",
    )
};

pub const STATISTICS: RouteDoc = RouteDoc {
    query: &[
        optional("start_date", T::DateTime, "period start (inclusive)"),
        optional("end_date", T::DateTime, "period end"),
        optional("tier", T::String, "only users of this tier"),
    ],
    response: "{period, tier, users, subscriptions, credits, transactions}",
    sql: &[SQL_STATISTICS],
    ..admin(
        HttpMethod::Get,
        "/api/admin/statistics",
        "Usage statistics for a period",
    )
};

pub async fn plan_create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(plan): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let plan = Value::Object(plan);
    let row = db::call_json(&state.pool, SQL_PLAN_CREATE, &[&plan, &ADMIN_ACTOR]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

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

pub async fn plan_delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(tier): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_PLAN_DELETE, &[&tier, &ADMIN_ACTOR])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
pub struct PlanListQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub active_only: Option<Flag>,
}

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

#[derive(Debug, Deserialize)]
pub struct MultiplierQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub multiplier: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiplierBody {
    pub multiplier: f64,
}

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

#[derive(Debug, Deserialize)]
pub struct PurchaseRateQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub purchase_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRateBody {
    pub purchase_rate: f64,
}

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

#[derive(Debug, Deserialize)]
pub struct ExchangeRateQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub base_rate: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRateBody {
    pub base_rate: i64,
}

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

#[derive(Debug, Deserialize)]
pub struct StatisticsQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub start_date: Option<String>,
    #[serde(default, deserialize_with = "optional_param")]
    pub end_date: Option<String>,
    #[serde(default, deserialize_with = "optional_param")]
    pub tier: Option<String>,
}

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
