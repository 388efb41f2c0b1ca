//! Recharge strategies (seed 000, SPEC 6.6): the seed's paths and shapes, admin-authenticated
//! (SPEC 1.5). Every rule (validation, scheduling, exactly-once) is in the extension.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::JsonResult;
use crate::auth::AdminAuth;
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery};
use crate::{db, AppState};

pub const SQL_CREATE: &str = "SELECT quota.create_strategy($1::jsonb)";
pub const SQL_LIST: &str = "SELECT quota.list_strategies($1::bool)";
pub const SQL_GET: &str = "SELECT quota.get_strategy($1::int8)";
pub const SQL_UPDATE: &str = "SELECT quota.update_strategy($1::int8, $2::jsonb)";
pub const SQL_DELETE: &str = "SELECT quota.delete_strategy($1::int8)";
pub const SQL_ENABLE: &str = "SELECT quota.enable_strategy($1::int8)";
pub const SQL_DISABLE: &str = "SELECT quota.disable_strategy($1::int8)";
pub const SQL_EXECUTIONS: &str = "SELECT quota.strategy_executions($1::int8, $2::int4, $3::int4)";
pub const SQL_SCAN: &str = "SELECT jsonb_build_object(
        'message', 'strategy scan completed',
        'strategies', coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.strategy_id), '[]'::jsonb),
        'recharged', coalesce(sum(r.recharged), 0))
    FROM quota.scan() r";
/// At most 1000 user ids in a preview; `total` counts them all.
pub const SQL_PREVIEW: &str = "SELECT jsonb_build_object(
        'condition', quota.parse_condition($1::text),
        'users', coalesce((SELECT jsonb_agg(m) FROM (SELECT m FROM quota.match_users($1::text) m LIMIT 1000) x), '[]'::jsonb),
        'total', (SELECT count(*) FROM quota.match_users($1::text)))";

/// The fields of a strategy (the extension validates them).
pub const STRATEGY_FIELDS: &str = "name (unique), title, type single|periodic, amount (> 0), \
     model, periodic_expr (cron, 5 or 6 fields or @daily..., periodic only), condition, status \
     (default true), max_exec_per_user (0 = no cap)";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// enabled | true | disabled | false.
    #[serde(default)]
    pub status: Option<String>,
}

/// Create a strategy (status false is honoured).
///
/// SQL: `quota.create_strategy(strategy)`.
#[utoipa::path(
    post, path = "/api/v1/strategies", tag = "strategies",
    operation_id = "strategy_create",
    request_body(content = Object, description = STRATEGY_FIELDS),
    responses((status = 201, description = "the strategy", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_CREATE]))),
)]
pub async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let body = Value::Object(body);
    let row = db::call_json(&state.pool, SQL_CREATE, &[&body]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List strategies.
///
/// SQL: `quota.list_strategies(status)`.
#[utoipa::path(
    get, path = "/api/v1/strategies", tag = "strategies",
    operation_id = "strategy_list",
    params(ListQuery),
    responses((status = 200, description = "{strategies: [...], total}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_LIST]))),
)]
pub async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> JsonResult {
    let status: Option<bool> = match query.status.as_deref() {
        None | Some("") => None,
        Some("enabled") | Some("true") => Some(true),
        Some("disabled") | Some("false") => Some(false),
        Some(other) => {
            return Err(AppError::InvalidQuery(format!(
                "status must be enabled, true, disabled or false, got {other:?}"
            )))
        }
    };
    db::call_json(&state.pool, SQL_LIST, &[&status])
        .await
        .map(Json)
}

/// One strategy.
///
/// SQL: `quota.get_strategy(id)`.
#[utoipa::path(
    get, path = "/api/v1/strategies/{id}", tag = "strategies",
    operation_id = "strategy_get",
    params(("id" = i64, Path, description = "the strategy id")),
    responses((status = 200, description = "the strategy", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_GET]))),
)]
pub async fn get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_GET, &[&id]).await.map(Json)
}

/// Update a strategy (partial; unknown fields are 400).
///
/// SQL: `quota.update_strategy(id, patch)`.
#[utoipa::path(
    put, path = "/api/v1/strategies/{id}", tag = "strategies",
    operation_id = "strategy_update",
    params(("id" = i64, Path, description = "the strategy id")),
    request_body(content = Object, description = STRATEGY_FIELDS),
    responses((status = 200, description = "the strategy", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_UPDATE]))),
)]
pub async fn update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_UPDATE, &[&id, &patch])
        .await
        .map(Json)
}

/// Delete a strategy (its executions are kept).
///
/// SQL: `quota.delete_strategy(id)`.
#[utoipa::path(
    delete, path = "/api/v1/strategies/{id}", tag = "strategies",
    operation_id = "strategy_delete",
    params(("id" = i64, Path, description = "the strategy id")),
    responses((status = 200, description = "{message: \"strategy deleted successfully\"}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_DELETE]))),
)]
pub async fn delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_DELETE, &[&id])
        .await
        .map(Json)
}

/// Enable a strategy.
///
/// SQL: `quota.enable_strategy(id)`.
#[utoipa::path(
    post, path = "/api/v1/strategies/{id}/enable", tag = "strategies",
    operation_id = "strategy_enable",
    params(("id" = i64, Path, description = "the strategy id")),
    responses((status = 200, description = "{message: \"strategy enabled successfully\"}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ENABLE]))),
)]
pub async fn enable(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_ENABLE, &[&id])
        .await
        .map(Json)
}

/// Disable a strategy.
///
/// SQL: `quota.disable_strategy(id)`.
#[utoipa::path(
    post, path = "/api/v1/strategies/{id}/disable", tag = "strategies",
    operation_id = "strategy_disable",
    params(("id" = i64, Path, description = "the strategy id")),
    responses((status = 200, description = "{message: \"strategy disabled successfully\"}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_DISABLE]))),
)]
pub async fn disable(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_DISABLE, &[&id])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionsQuery {
    /// 1..1000, default 50.
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    /// >= 0, default 0.
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
}

/// A strategy's executions, newest first.
///
/// SQL: `quota.strategy_executions(id, limit, offset)`.
#[utoipa::path(
    get, path = "/api/v1/strategies/{id}/executions", tag = "strategies",
    operation_id = "strategy_executions",
    params(("id" = i64, Path, description = "the strategy id"), ExecutionsQuery),
    responses((status = 200, description = "{executions: [...], total, limit, offset}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_EXECUTIONS]))),
)]
pub async fn executions(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<ExecutionsQuery>,
) -> JsonResult {
    let (limit, offset) = (query.limit.unwrap_or(50), query.offset.unwrap_or(0));
    db::call_json(&state.pool, SQL_EXECUTIONS, &[&id, &limit, &offset])
        .await
        .map(Json)
}

/// Run the due strategies now.
///
/// SQL: `quota.scan()`.
#[utoipa::path(
    post, path = "/api/v1/strategies/scan", tag = "strategies",
    operation_id = "strategy_scan",
    responses((status = 200, description = "{message, strategies: [{strategy_id, strategy_name, fire_time, recharged}], recharged}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_SCAN]))),
)]
pub async fn scan(_: AdminAuth, State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_SCAN, &[]).await.map(Json)
}

/// A condition to dry-run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// A condition expression, e.g. `and(is-vip(1), github-star("zgsm"))`.
    pub condition: String,
}

/// The users a condition matches (a dry run).
///
/// SQL: `quota.parse_condition(condition)`, `quota.match_users(condition)`.
#[utoipa::path(
    post, path = "/api/v1/conditions/preview", tag = "strategies",
    operation_id = "condition_preview",
    request_body = PreviewBody,
    responses((status = 200, description = "{condition (canonical), users (up to 1000 ids), total}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PREVIEW]))),
)]
pub async fn preview(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PreviewBody>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_PREVIEW, &[&body.condition])
        .await
        .map(Json)
}
