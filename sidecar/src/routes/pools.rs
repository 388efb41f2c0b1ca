//! Provider account pools (issue 13, seed 002, SPEC 5): the admin API of providers, their limits,
//! accounts and alerts (admin token), and the admission pair acquire / release plus the pool
//! status (service token, or the admin token). Each handler is one quota.* call; availability,
//! limits, leases, encryption and alerts are in the extension.
//!
//! Ids are UUIDs, cast in SQL (`$1::text::uuid`): a malformed one is 400 (22P02), an unknown one
//! 404 (P0002). Credentials are returned by acquire only.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use utoipa::{IntoParams, ToSchema};

use super::{pool_shapes, JsonResult};
use crate::auth::{AdminAuth, AdminOrServiceAuth};
use crate::error::AppError;
use crate::extract::{optional_param, query_timestamp, ApiJson, ApiPath, ApiQuery};
use crate::{db, AppState};

pub const SQL_PROVIDER_CREATE: &str = "SELECT quota.create_provider($1::text, \
     coalesce($2::text, 'least_used'), coalesce($3::jsonb, '{}'::jsonb))";
pub const SQL_PROVIDER_LIST: &str = "SELECT quota.list_providers()";
pub const SQL_PROVIDER_GET: &str = "SELECT quota.get_provider($1::text::uuid)";
pub const SQL_PROVIDER_UPDATE: &str = "SELECT quota.update_provider($1::text::uuid, $2::jsonb)";
pub const SQL_PROVIDER_DELETE: &str = "SELECT quota.delete_provider($1::text::uuid)";
pub const SQL_PROVIDER_LIMIT: &str =
    "SELECT quota.set_provider_limit($1::text::uuid, $2::text, $3::int8)";
pub const SQL_ACCOUNT_CREATE: &str =
    "SELECT quota.create_pool_account($1::text::uuid, $2::jsonb, $3::jsonb)";
pub const SQL_ACCOUNT_LIST: &str = "SELECT quota.list_pool_accounts($1::text::uuid)";
pub const SQL_ACCOUNT_GET: &str = "SELECT quota.get_pool_account($1::text::uuid)";
pub const SQL_ACCOUNT_UPDATE: &str = "SELECT quota.update_pool_account($1::text::uuid, $2::jsonb)";
pub const SQL_ACCOUNT_DELETE: &str = "SELECT quota.delete_pool_account($1::text::uuid)";
pub const SQL_ACCOUNT_RESET: &str = "SELECT quota.reset_pool_account($1::text::uuid)";
pub const SQL_ALERTS: &str = "SELECT quota.list_pool_alerts($1::text::uuid, $2::timestamptz, \
     coalesce($3::int4, 100))";
/// Without `lease_ttl_s` the function's own default applies (the sidecar does not restate it).
pub const SQL_ACQUIRE: &str = "SELECT quota.pool_acquire($1::text::uuid, $2::int8, $3::text, \
     $4::text, $5::int4, $6::text)";
pub const SQL_ACQUIRE_DEFAULT_TTL: &str = "SELECT quota.pool_acquire($1::text::uuid, $2::int8, \
     model => $3::text, strategy => $4::text, user_id => $5::text)";
pub const SQL_RELEASE: &str =
    "SELECT quota.pool_release($1::text::uuid, $2::text::uuid, $3::jsonb)";
pub const SQL_STATUS: &str = "SELECT quota.pool_status($1::text::uuid)";

/// SPEC 5's refusal bodies.
pub const NO_ACCOUNT_AVAILABLE: &str = "no_account_available";
pub const NO_ACCOUNT_MESSAGE: &str = "Service temporarily unavailable";
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
pub const QUOTA_EXCEEDED_MESSAGE: &str = "Quota limit reached";
pub const RATE_LIMIT_EXCEEDED: &str = "rate_limit_exceeded";
pub const RATE_LIMIT_MESSAGE: &str = "Rate limit exceeded";

const PROVIDER_PATCH_FIELDS: &str = "any of name, strategy (least_used | round_robin | random | \
     best), active, limits (object of rpm, rph, rpd, tpm, tpd, concurrent: a non-negative integer \
     sets one, null removes one, a key left out is unchanged); unknown fields are 400";
const ACCOUNT_PATCH_FIELDS: &str = "any of credentials (object, replaces them), user_id, name, \
     quota_limit (tokens per period, 0 = unlimited), period_s (60..31536000), active, expires_at \
     (null = never), last_reset; unknown fields are 400";
const NOT_HELD_409: &str = "lease_not_held: the lease was already released";

// ---------------------------------------------------------------------------------------------
// Providers

/// A new provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderBody {
    /// Unique, 1..100 visible characters.
    pub name: String,
    /// The default pick: least_used (default) | round_robin | random | best.
    pub strategy: Option<String>,
    /// `{rpm, rph, rpd, tpm, tpd, concurrent}`: non-negative integers; absent or 0 = unlimited.
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Map<String, Value>>,
}

/// Create a provider (409 `duplicate` on a taken name).
///
/// SQL: `quota.create_provider(name, strategy, limits)`.
#[utoipa::path(
    post, path = "/api/v1/admin/providers", tag = "pools-admin",
    operation_id = "admin_provider_create",
    request_body = ProviderBody,
    responses((status = 201, description = "the provider", body = pool_shapes::Provider)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_CREATE]))),
)]
pub async fn provider_create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ProviderBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let limits = body.limits.map(Value::Object);
    let params: [&(dyn ToSql + Sync); 3] = [&body.name, &body.strategy, &limits];
    let row = db::call_json(&state.pool, SQL_PROVIDER_CREATE, &params).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Every provider.
///
/// SQL: `quota.list_providers()`.
#[utoipa::path(
    get, path = "/api/v1/admin/providers", tag = "pools-admin",
    operation_id = "admin_provider_list",
    responses((status = 200, description = "{providers: [...], total}", body = pool_shapes::ProviderList)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_LIST]))),
)]
pub async fn provider_list(_: AdminAuth, State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_PROVIDER_LIST, &[])
        .await
        .map(Json)
}

/// One provider.
///
/// SQL: `quota.get_provider(provider_id)`.
#[utoipa::path(
    get, path = "/api/v1/admin/providers/{provider_id}", tag = "pools-admin",
    operation_id = "admin_provider_get",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    responses((status = 200, description = "the provider", body = pool_shapes::Provider)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_GET]))),
)]
pub async fn provider_get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_PROVIDER_GET, &[&provider_id])
        .await
        .map(Json)
}

/// Update a provider (partial).
///
/// SQL: `quota.update_provider(provider_id, patch)`.
#[utoipa::path(
    put, path = "/api/v1/admin/providers/{provider_id}", tag = "pools-admin",
    operation_id = "admin_provider_update",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    request_body(content = Object, description = PROVIDER_PATCH_FIELDS),
    responses((status = 200, description = "the provider", body = pool_shapes::Provider)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_UPDATE]))),
)]
pub async fn provider_update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_PROVIDER_UPDATE, &[&provider_id, &patch])
        .await
        .map(Json)
}

/// Delete a provider; 409 `in_use` while it has accounts.
///
/// SQL: `quota.delete_provider(provider_id)`.
#[utoipa::path(
    delete, path = "/api/v1/admin/providers/{provider_id}", tag = "pools-admin",
    operation_id = "admin_provider_delete",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    responses((status = 200, description = "{deleted: true, provider_id}", body = pool_shapes::ProviderDeleted)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_DELETE]))),
)]
pub async fn provider_delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_PROVIDER_DELETE, &[&provider_id])
        .await
        .map(Json)
}

/// A limit's value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// A non-negative integer; 0 = unlimited.
    pub limit_value: i64,
}

/// Set one limit of a provider (`limit_type`: rpm, rph, rpd, tpm, tpd, concurrent; another is
/// 400).
///
/// SQL: `quota.set_provider_limit(provider_id, limit_type, limit_value)`.
#[utoipa::path(
    put, path = "/api/v1/admin/providers/{provider_id}/limits/{limit_type}", tag = "pools-admin",
    operation_id = "admin_provider_limit_set",
    params(
        ("provider_id" = String, Path, description = "the provider (uuid)"),
        ("limit_type" = String, Path, description = "rpm | rph | rpd | tpm | tpd | concurrent"),
    ),
    request_body = LimitBody,
    responses((status = 200, description = "the provider", body = pool_shapes::Provider)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_LIMIT]))),
)]
pub async fn provider_limit_set(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath((provider_id, limit_type)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<LimitBody>,
) -> JsonResult {
    let value = Some(body.limit_value);
    let params: [&(dyn ToSql + Sync); 3] = [&provider_id, &limit_type, &value];
    db::call_json(&state.pool, SQL_PROVIDER_LIMIT, &params)
        .await
        .map(Json)
}

/// Remove one limit of a provider (it becomes unlimited).
///
/// SQL: `quota.set_provider_limit(provider_id, limit_type, NULL)`.
#[utoipa::path(
    delete, path = "/api/v1/admin/providers/{provider_id}/limits/{limit_type}", tag = "pools-admin",
    operation_id = "admin_provider_limit_remove",
    params(
        ("provider_id" = String, Path, description = "the provider (uuid)"),
        ("limit_type" = String, Path, description = "rpm | rph | rpd | tpm | tpd | concurrent"),
    ),
    responses((status = 200, description = "the provider", body = pool_shapes::Provider)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_PROVIDER_LIMIT]))),
)]
pub async fn provider_limit_remove(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath((provider_id, limit_type)): ApiPath<(String, String)>,
) -> JsonResult {
    let value: Option<i64> = None;
    let params: [&(dyn ToSql + Sync); 3] = [&provider_id, &limit_type, &value];
    db::call_json(&state.pool, SQL_PROVIDER_LIMIT, &params)
        .await
        .map(Json)
}

// ---------------------------------------------------------------------------------------------
// Accounts

/// A new account of a provider. Every field but `credentials` is optional.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    /// Any JSON object (an API key, an endpoint...): encrypted at rest, returned by acquire only.
    #[schema(value_type = Object)]
    #[serde(skip_serializing)]
    pub credentials: Map<String, Value>,
    /// The user the account belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tokens per period; 0 (default) = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_limit: Option<i64>,
    /// The period in seconds (60..31536000, default 86400).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_s: Option<i64>,
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// When the account stops serving (RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`);
    /// absent = never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The start of the current window (default now): an account migrated from elsewhere keeps
    /// its window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<String>,
}

impl AccountBody {
    /// (credentials, options) as `quota.create_pool_account` takes them.
    pub fn split(self) -> (Value, Value) {
        let options = serde_json::to_value(&self).unwrap_or_else(|_| Value::Object(Map::new()));
        (Value::Object(self.credentials), options)
    }
}

/// Add an account to a provider. The answer never shows the credentials; without a credentials
/// key configured in the database: 503 `credentials_key_missing`.
///
/// SQL: `quota.create_pool_account(provider_id, credentials, options)`.
#[utoipa::path(
    post, path = "/api/v1/admin/providers/{provider_id}/accounts", tag = "pools-admin",
    operation_id = "admin_pool_account_create",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    request_body = AccountBody,
    responses((status = 201, description = "the account (without credentials)", body = pool_shapes::PoolAccount)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACCOUNT_CREATE]))),
)]
pub async fn account_create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
    ApiJson(body): ApiJson<AccountBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (credentials, options) = body.split();
    let params: [&(dyn ToSql + Sync); 3] = [&provider_id, &credentials, &options];
    let row = db::call_json(&state.pool, SQL_ACCOUNT_CREATE, &params).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// A provider's accounts (never their credentials).
///
/// SQL: `quota.list_pool_accounts(provider_id)`.
#[utoipa::path(
    get, path = "/api/v1/admin/providers/{provider_id}/accounts", tag = "pools-admin",
    operation_id = "admin_pool_account_list",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    responses((status = 200, description = "{accounts: [...], total}", body = pool_shapes::PoolAccountList)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACCOUNT_LIST]))),
)]
pub async fn account_list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_ACCOUNT_LIST, &[&provider_id])
        .await
        .map(Json)
}

/// One account (never its credentials).
///
/// SQL: `quota.get_pool_account(account_id)`.
#[utoipa::path(
    get, path = "/api/v1/admin/accounts/{account_id}", tag = "pools-admin",
    operation_id = "admin_pool_account_get",
    params(("account_id" = String, Path, description = "the account (uuid)")),
    responses((status = 200, description = "the account", body = pool_shapes::PoolAccount)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACCOUNT_GET]))),
)]
pub async fn account_get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_ACCOUNT_GET, &[&account_id])
        .await
        .map(Json)
}

/// Update an account (partial).
///
/// SQL: `quota.update_pool_account(account_id, patch)`.
#[utoipa::path(
    put, path = "/api/v1/admin/accounts/{account_id}", tag = "pools-admin",
    operation_id = "admin_pool_account_update",
    params(("account_id" = String, Path, description = "the account (uuid)")),
    request_body(content = Object, description = ACCOUNT_PATCH_FIELDS),
    responses((status = 200, description = "the account", body = pool_shapes::PoolAccount)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACCOUNT_UPDATE]))),
)]
pub async fn account_update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_ACCOUNT_UPDATE, &[&account_id, &patch])
        .await
        .map(Json)
}

/// Delete an account (its request logs stay).
///
/// SQL: `quota.delete_pool_account(account_id)`.
#[utoipa::path(
    delete, path = "/api/v1/admin/accounts/{account_id}", tag = "pools-admin",
    operation_id = "admin_pool_account_delete",
    params(("account_id" = String, Path, description = "the account (uuid)")),
    responses((status = 200, description = "{deleted: true, account_id}", body = pool_shapes::PoolAccountDeleted)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACCOUNT_DELETE]))),
)]
pub async fn account_delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_ACCOUNT_DELETE, &[&account_id])
        .await
        .map(Json)
}

/// Reset an account's window now (manual reset): quota_used 0, last_reset now.
///
/// SQL: `quota.reset_pool_account(account_id)`.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{account_id}/reset", tag = "pools-admin",
    operation_id = "admin_pool_account_reset",
    params(("account_id" = String, Path, description = "the account (uuid)")),
    responses((status = 200, description = "the account", body = pool_shapes::PoolAccount)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACCOUNT_RESET]))),
)]
pub async fn account_reset(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_ACCOUNT_RESET, &[&account_id])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Only this account's alerts (uuid).
    #[serde(default, deserialize_with = "optional_param")]
    pub account_id: Option<String>,
    /// Only alerts raised at or after this time (RFC 3339, `YYYY-MM-DD` or
    /// `YYYY-MM-DD HH:MM:SS`).
    #[serde(default, deserialize_with = "optional_param")]
    pub since: Option<String>,
    /// At most this many, newest first (default 100).
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
}

/// Pool alerts (warning at the threshold, exhausted on a refusal for quota) and their webhook
/// delivery status.
///
/// SQL: `quota.list_pool_alerts(account_id, since, max_rows)`.
#[utoipa::path(
    get, path = "/api/v1/admin/alerts", tag = "pools-admin",
    operation_id = "admin_pool_alerts",
    params(AlertsQuery),
    responses((status = 200, description = "{alerts: [...], total}", body = pool_shapes::PoolAlertList)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ALERTS]))),
)]
pub async fn alerts(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AlertsQuery>,
) -> JsonResult {
    let since = query_timestamp("since", query.since.as_deref())?;
    let params: [&(dyn ToSql + Sync); 3] = [&query.account_id, &since, &query.limit];
    db::call_json(&state.pool, SQL_ALERTS, &params)
        .await
        .map(Json)
}

// ---------------------------------------------------------------------------------------------
// Admission

/// What a request needs from the pool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Tokens the request may use (>= 0): held against the account's quota and the TPM/TPD
    /// windows until the release.
    pub tokens_needed: i64,
    /// The model (recorded with the lease).
    pub model: Option<String>,
    /// This request's pick, instead of the provider's: least_used | round_robin | random | best.
    pub strategy: Option<String>,
    /// Seconds until an unreleased lease expires (1..86400, default 300).
    pub lease_ttl_s: Option<i32>,
    /// The user the request is made for.
    pub user_id: Option<String>,
}

/// Acquire an account: pick one (by the strategy), check its quota and every limit of the
/// provider, record the request in every window and take a lease, in one step.
///
/// Refusals answer exactly SPEC 5's bodies: 503 `no_account_available`, 429 `quota_exceeded`
/// (with `reset_at`) or 429 `rate_limit_exceeded` (with `retry_after` and `Retry-After`).
/// SQL: `quota.pool_acquire(provider_id, tokens_needed, model, strategy, lease_ttl_s, user_id)`.
#[utoipa::path(
    post, path = "/api/v1/pool/{provider_id}/acquire", tag = "pools",
    operation_id = "pool_acquire",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    request_body = AcquireBody,
    responses(
        (status = 200, description = "admitted: the lease and the account's credentials", body = pool_shapes::Lease),
        (status = 429, description = "quota_exceeded {error, message, reset_at} or rate_limit_exceeded {error, message, retry_after} (and Retry-After)", body = pool_shapes::PoolRefused,
            headers(("Retry-After" = i64, description = "rate_limit_exceeded: seconds until the window ends"))),
        (status = 503, description = "no_account_available {error, message}; also database_unavailable, timeout, credentials_key_missing", body = pool_shapes::NoAccountAvailable),
    ),
    security(("serviceToken" = []), ("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ACQUIRE, SQL_ACQUIRE_DEFAULT_TTL]))),
)]
pub async fn acquire(
    _: AdminOrServiceAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Response, AppError> {
    let row = match body.lease_ttl_s {
        Some(ttl) => {
            let params: [&(dyn ToSql + Sync); 6] = [
                &provider_id,
                &body.tokens_needed,
                &body.model,
                &body.strategy,
                &ttl,
                &body.user_id,
            ];
            db::call_json(&state.pool, SQL_ACQUIRE, &params).await?
        }
        None => {
            let params: [&(dyn ToSql + Sync); 5] = [
                &provider_id,
                &body.tokens_needed,
                &body.model,
                &body.strategy,
                &body.user_id,
            ];
            db::call_json(&state.pool, SQL_ACQUIRE_DEFAULT_TTL, &params).await?
        }
    };
    Ok(acquire_reply(row))
}

/// A refusal of `quota.pool_acquire` (`admitted: false`) as SPEC 5's status, exact body and
/// header.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<i64>,
}

/// The refusal in an acquire's answer, None when it admitted. The body has exactly SPEC 5's keys
/// (what else the SQL answer carries, such as `account_id` or `limit_type`, stays out).
pub fn refusal(row: &Value) -> Option<Refusal> {
    if row.get("admitted") != Some(&Value::Bool(false)) {
        return None;
    }
    let error = row.get("error").and_then(Value::as_str).unwrap_or("");
    let mut body = Map::new();
    let (status, retry_after) = match error {
        QUOTA_EXCEEDED => {
            body.insert("error".into(), QUOTA_EXCEEDED.into());
            body.insert("message".into(), QUOTA_EXCEEDED_MESSAGE.into());
            body.insert(
                "reset_at".into(),
                row.get("reset_at").cloned().unwrap_or(Value::Null),
            );
            (StatusCode::TOO_MANY_REQUESTS, None)
        }
        RATE_LIMIT_EXCEEDED => {
            let seconds = row
                .get("retry_after")
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.ceil() as i64)))
                .unwrap_or(1)
                .max(1);
            body.insert("error".into(), RATE_LIMIT_EXCEEDED.into());
            body.insert("message".into(), RATE_LIMIT_MESSAGE.into());
            body.insert("retry_after".into(), seconds.into());
            (StatusCode::TOO_MANY_REQUESTS, Some(seconds))
        }
        // no_account_available, and whatever a later extension may add: the pool cannot serve.
        _ => {
            body.insert("error".into(), NO_ACCOUNT_AVAILABLE.into());
            body.insert("message".into(), NO_ACCOUNT_MESSAGE.into());
            (StatusCode::SERVICE_UNAVAILABLE, None)
        }
    };
    Some(Refusal {
        status,
        body: Value::Object(body),
        retry_after,
    })
}

/// 200 with the SQL answer when admitted (`admitted: true` kept), else the refusal.
pub fn acquire_reply(row: Value) -> Response {
    let Some(refused) = refusal(&row) else {
        return (StatusCode::OK, Json(row)).into_response();
    };
    let code = refused.body["error"].as_str().unwrap_or("").to_owned();
    let mut response = (refused.status, Json(refused.body)).into_response();
    if let Some(seconds) = refused.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    crate::metrics::tag_error(&mut response, &code);
    response
}

/// What the request did. Fields left out take the extension's defaults.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The lease of the acquire.
    #[serde(skip_serializing)]
    pub lease_id: String,
    /// >= 0, default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<i64>,
    /// >= 0, default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<i64>,
    /// The upstream answer's status (100..599, default 200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// >= 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// Default: status_code < 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// >= 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl ReleaseBody {
    /// The `usage` object of `quota.pool_release` (every field but lease_id, absent ones left
    /// out).
    pub fn usage(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// Release a lease with what the request used: its tokens count against the account's quota and
/// the TPM/TPD windows, the lease is freed and the request is logged. A lease that had already
/// expired still records its usage (`lease_status: expired`); released twice: 409.
///
/// SQL: `quota.pool_release(account_id, lease_id, usage)`.
#[utoipa::path(
    post, path = "/api/v1/pool/accounts/{account_id}/release", tag = "pools",
    operation_id = "pool_release",
    params(("account_id" = String, Path, description = "the account of the lease (uuid)")),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "the lease ended and the request logged", body = pool_shapes::Released),
        (status = 409, description = NOT_HELD_409, body = crate::openapi::ErrorBody),
    ),
    security(("serviceToken" = []), ("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_RELEASE]))),
)]
pub async fn release(
    _: AdminOrServiceAuth,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> JsonResult {
    let usage = body.usage();
    let params: [&(dyn ToSql + Sync); 3] = [&account_id, &body.lease_id, &usage];
    db::call_json(&state.pool, SQL_RELEASE, &params)
        .await
        .map(Json)
}

/// A provider's pool: totals, limits and each account's availability.
///
/// SQL: `quota.pool_status(provider_id)`.
#[utoipa::path(
    get, path = "/api/v1/pool/{provider_id}/status", tag = "pools",
    operation_id = "pool_status",
    params(("provider_id" = String, Path, description = "the provider (uuid)")),
    responses((status = 200, description = "the pool's status", body = pool_shapes::PoolStatus)),
    security(("serviceToken" = []), ("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_STATUS]))),
)]
pub async fn status(
    _: AdminOrServiceAuth,
    State(state): State<AppState>,
    ApiPath(provider_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_STATUS, &[&provider_id])
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;
    use serde_json::json;

    #[test]
    fn refusals_have_exactly_spec_5_keys() {
        let quota = refusal(&json!({
            "admitted": false, "error": "quota_exceeded", "message": "Quota limit reached",
            "reset_at": "2026-01-02T00:00:00Z", "account_id": "a"
        }))
        .unwrap();
        assert_eq!(quota.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            quota.body,
            json!({"error": "quota_exceeded", "message": "Quota limit reached", "reset_at": "2026-01-02T00:00:00Z"})
        );
        assert_eq!(quota.retry_after, None);

        let rate = refusal(&json!({
            "admitted": false, "error": "rate_limit_exceeded", "message": "Rate limit exceeded",
            "retry_after": 17, "limit_type": "rpm", "account_id": "a"
        }))
        .unwrap();
        assert_eq!(rate.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            rate.body,
            json!({"error": "rate_limit_exceeded", "message": "Rate limit exceeded", "retry_after": 17})
        );
        assert_eq!(rate.retry_after, Some(17));
        // A fractional or missing retry_after is rounded up, at least 1.
        let rate = refusal(
            &json!({"admitted": false, "error": "rate_limit_exceeded", "retry_after": 0.2}),
        )
        .unwrap();
        assert_eq!(rate.retry_after, Some(1));

        let none = refusal(&json!({
            "admitted": false, "error": "no_account_available",
            "message": "Service temporarily unavailable"
        }))
        .unwrap();
        assert_eq!(none.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            none.body,
            json!({"error": "no_account_available", "message": "Service temporarily unavailable"})
        );
        assert!(refusal(&json!({"admitted": true, "lease_id": "l"})).is_none());
    }

    #[tokio::test]
    async fn acquire_reply_sets_status_retry_after_and_keeps_admitted() {
        let response = acquire_reply(
            json!({"admitted": false, "error": "rate_limit_exceeded", "retry_after": 5}),
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            response.extensions().get::<crate::metrics::ErrorCode>(),
            Some(&crate::metrics::ErrorCode("rate_limit_exceeded".into()))
        );
        let response = acquire_reply(json!({"admitted": true, "lease_id": "l"}));
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, json!({"admitted": true, "lease_id": "l"}));
    }

    #[test]
    fn release_usage_leaves_out_the_lease_and_absent_fields() {
        let body: ReleaseBody = parse_json(
            br#"{"lease_id":"l","input_tokens":10,"output_tokens":1000,"status_code":200,"latency_ms":35,"success":true,"model":"gpt-4o"}"#,
        )
        .unwrap();
        assert_eq!(
            body.usage(),
            json!({"input_tokens": 10, "output_tokens": 1000, "status_code": 200, "latency_ms": 35, "success": true, "model": "gpt-4o"})
        );
        for bad in [
            r#"{"lease_id":"l","bogus":1}"#,
            r#"{"lease_id":"l","input_tokens":"10"}"#,
            r#"{"input_tokens":1}"#,
            r#"{"lease_id":"l","success":"yes"}"#,
        ] {
            assert!(
                matches!(
                    parse_json::<ReleaseBody>(bad.as_bytes()),
                    Err(AppError::InvalidBody(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn account_body_splits_credentials_from_options() {
        let body: AccountBody = parse_json(
            br#"{"credentials":{"api_key":"sk-1"},"quota_limit":1000,"name":"a","last_reset":"2026-01-01 00:00:00"}"#,
        )
        .unwrap();
        let (credentials, options) = body.split();
        assert_eq!(credentials, json!({"api_key": "sk-1"}));
        assert_eq!(
            options,
            json!({"quota_limit": 1000, "name": "a", "last_reset": "2026-01-01 00:00:00"})
        );
        assert!(!options.to_string().contains("sk-1"));
        for bad in [
            r#"{"quota_limit":1}"#,
            r#"{"credentials":"sk-1"}"#,
            r#"{"credentials":{},"quota":1}"#,
        ] {
            assert!(
                matches!(
                    parse_json::<AccountBody>(bad.as_bytes()),
                    Err(AppError::InvalidBody(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn acquire_and_provider_bodies_refuse_unknown_fields_and_wrong_types() {
        let body: AcquireBody =
            parse_json(br#"{"tokens_needed":100,"strategy":"best","lease_ttl_s":1}"#).unwrap();
        assert_eq!(body.tokens_needed, 100);
        for bad in [
            r#"{"tokens_needed":"100"}"#,
            r#"{"tokens":100}"#,
            r#"{"tokens_needed":1.5}"#,
            r#"{}"#,
        ] {
            assert!(
                matches!(
                    parse_json::<AcquireBody>(bad.as_bytes()),
                    Err(AppError::InvalidBody(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_json::<ProviderBody>(br#"{"name":"p","limits":[1]}"#),
            Err(AppError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<LimitBody>(br#"{"limit_value":null}"#),
            Err(AppError::InvalidBody(_))
        ));
    }
}
