//! Access tokens (issue 12, seed 001, SPEC 4) at the seed's paths: the admin API under
//! `/flow/tokens` answering in the seed's `{"success", "data", "message"}` envelope (errors too,
//! see `error::flow_envelope`), and the check of a token, `POST /flow/verify` with the token
//! itself as bearer, or `POST /flow/tokens/{token}/consume` on a caller's behalf.
//!
//! Each handler is one quota.* call; the envelope of a success is built in the same statement.
//! The check's refusals are rows, not errors (`quota.verify_token` never raises for one): this
//! module maps their `code` to a status, a body and the RateLimit headers.

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;
use utoipa::{IntoParams, ToSchema};

use super::JsonResult;
use crate::auth::{AccessTokenBearer, AdminAuth, AdminOrServiceAuth, ADMIN_ACTOR};
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::{db, request_id, AppState};

pub const SQL_CREATE: &str = "SELECT jsonb_build_object('success', true, \
     'data', quota.create_token($1::jsonb, $2::text), 'message', 'token created')";
pub const SQL_UPDATE: &str = "SELECT jsonb_build_object('success', true, \
     'data', quota.update_token($1::text, $2::jsonb, $3::text), 'message', 'token updated')";
pub const SQL_QUOTA: &str = "SELECT jsonb_build_object('success', true, \
     'data', quota.token_quota($1::text), 'message', 'token quota')";
pub const SQL_QUOTA_LOGS: &str = "SELECT jsonb_build_object('success', true, \
     'data', quota.token_quota_logs($1::text, $2::int4, $3::int4, $4::text, $5::text), \
     'message', 'token quota logs')";
pub const SQL_DELETE: &str = "SELECT jsonb_build_object('success', true, \
     'data', quota.delete_token($1::text, $2::text), 'message', 'token deactivated')";
pub const SQL_LIST: &str = "SELECT jsonb_build_object('success', true, \
     'data', quota.list_tokens($1::text, $2::text, $3::int4, $4::int4), 'message', 'tokens')";
pub const SQL_VERIFY: &str =
    "SELECT to_jsonb(v) FROM quota.verify_token($1::text, $2::int8, $3::text) v";

/// The defaults of `quota.token_quota_logs` and `quota.list_tokens`.
pub const LOGS_PAGE_DEFAULT: i32 = 1;
pub const LOGS_PAGE_SIZE_DEFAULT: i32 = 20;
pub const LIST_LIMIT_DEFAULT: i32 = 100;
pub const LIST_OFFSET_DEFAULT: i32 = 0;
/// A check consumes one unit unless the body says otherwise.
pub const UNITS_DEFAULT: i64 = 1;

/// The IETF draft's rate-limit headers (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

const ENVELOPE_ERRORS: &str = "{\"success\": false, \"data\": null, \"message\", \"error\", \
     \"request_id\", ...detail}";

// ---------------------------------------------------------------------------------------------
// Shapes (documentation: the JSON is built in SQL)

/// A token as every admin answer shows it (`quota._token_json`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenInfo {
    /// The plain token, only in the answer of the create (it is stored hashed).
    access_token: Option<String>,
    /// `flow_` + the first 8 hex digits + `...`.
    access_token_hint: String,
    ws_id: String,
    email: String,
    user_id: Option<String>,
    /// time | count | hybrid
    quota_type: String,
    total_quota: Option<i64>,
    remaining_quota: Option<i64>,
    /// max(total - remaining, 0); null when total is null.
    consumed_quota: Option<i64>,
    /// `YYYY-MM-DD HH:MM:SS` (UTC) or null.
    expires_at: Option<String>,
    /// add | set | unlimited
    operation: String,
    active: bool,
    unlimited: bool,
    /// null: no rate limit.
    rate_limit_per_minute: Option<i32>,
    rate_limit_burst: i32,
    rate_limit_window_seconds: i32,
    created_at: String,
    updated_at: String,
}

/// `{"success": true, "data": <token>, "message"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenEnvelope {
    success: bool,
    data: TokenInfo,
    message: String,
}

/// A token's quota.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenQuota {
    quota_type: String,
    total_quota: Option<i64>,
    remaining_quota: Option<i64>,
    consumed_quota: Option<i64>,
    expires_at: Option<String>,
    /// Time tokens: that no count quota applies.
    message: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenQuotaEnvelope {
    success: bool,
    data: TokenQuota,
    message: String,
}

/// One change of a token's quota.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenLog {
    id: i64,
    /// init | consume | refund | recharge | update
    kind: String,
    units: Option<i64>,
    remaining_after: Option<i64>,
    total_after: Option<i64>,
    request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    detail: Option<Value>,
    created_at: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenLogs {
    logs: Vec<TokenLog>,
    total: i64,
    page: i32,
    page_size: i32,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenLogsEnvelope {
    success: bool,
    data: TokenLogs,
    message: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenList {
    tokens: Vec<TokenInfo>,
    total: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenListEnvelope {
    success: bool,
    data: TokenList,
    message: String,
}

/// The rate limit after a check (all null when the token has none).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RateLimitState {
    /// Requests per window; null: no limit.
    limit: Option<i64>,
    /// Left in the current window.
    remaining: Option<i64>,
    /// Seconds until a slot frees.
    reset: Option<i64>,
}

/// A token that may be used (and has been charged `units`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VerifyValid {
    /// true
    valid: bool,
    /// Count quota left after this check; null for time or unlimited tokens.
    remaining: Option<i64>,
    rate_limit: RateLimitState,
    quota_type: Option<String>,
    /// The request_id was seen before: this is the first answer, nothing charged again.
    replayed: bool,
}

/// A refused check: unknown_token (401), inactive or expired (403), QuotaExceeded or
/// rate_limited (429), limiter_full (503: the rate limiter cannot track one more token now).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VerifyRefusal {
    /// false
    valid: bool,
    /// unknown_token | inactive | expired | QuotaExceeded | rate_limited; invalid_json,
    /// invalid_body, invalid_parameter (400) for a bad body
    error: String,
    /// rate_limited: burst | window
    limit_type: Option<String>,
    /// rate_limited: seconds until a retry may be admitted (also the Retry-After header).
    retry_after: Option<i64>,
    /// QuotaExceeded: what is left.
    remaining: Option<i64>,
    message: String,
    request_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Admin API

/// The fields of a create (the extension validates them; an unknown one is 400).
pub const CREATE_FIELDS: &str = "{ws_id, email (a valid address), operation: add (needs days > 0: \
     expires in days) | set (needs specific_date, YYYY-MM-DD HH:MM:SS, YYYY-MM-DD or RFC 3339) | \
     unlimited (no expiry), quota_type?: time (default) | count | hybrid, total_quota? (> 0, \
     required for count and hybrid), user_id? (an existing user), unlimited? (default: the \
     user's), rate_limit_per_minute? (null: none), rate_limit_burst? (default 10), \
     rate_limit_window_seconds? (default 60)}";

/// The fields of an update.
pub const UPDATE_FIELDS: &str = "{operation: set (specific_date) | unlimited (no expiry) \
     (required), quota_type?: time | count | hybrid, quota_operation?: add (quota_amount > 0: \
     remaining and total grow) | set (quota_amount >= 0: remaining = amount; total = amount when \
     it was null) | reset (no amount: remaining = total; with one: both = amount), quota_amount?, \
     specific_date?, unlimited?, rate_limit_per_minute?, rate_limit_burst?, \
     rate_limit_window_seconds? (absent: unchanged; null: per_minute none, burst 10, window 60)}";

/// Create an access token; the answer holds the plain token, shown this once.
///
/// SQL: `quota.create_token(request, actor)`.
#[utoipa::path(
    post, path = "/flow/tokens", tag = "tokens",
    operation_id = "flow_token_create",
    request_body(content = Object, description = CREATE_FIELDS),
    responses(
        (status = 200, description = "{success: true, data: <token with access_token>, message: \"token created\"}", body = TokenEnvelope),
        (status = 400, description = ENVELOPE_ERRORS, body = crate::openapi::FlowErrorBody),
    ),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_CREATE]))),
)]
pub async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let request = Value::Object(request);
    db::call_json(&state.pool, SQL_CREATE, &[&request, &ADMIN_ACTOR])
        .await
        .map(Json)
}

/// Update a token: its expiry, quota type and amounts, rate limits (seed 001's conversions).
///
/// SQL: `quota.update_token(access_token, request, actor)`.
#[utoipa::path(
    put, path = "/flow/tokens/{token}", tag = "tokens",
    operation_id = "flow_token_update",
    params(("token" = String, Path, description = "the access token (flow_...)")),
    request_body(content = Object, description = UPDATE_FIELDS),
    responses(
        (status = 200, description = "{success: true, data: <token>, message: \"token updated\"}", body = TokenEnvelope),
        (status = 400, description = ENVELOPE_ERRORS, body = crate::openapi::FlowErrorBody),
        (status = 404, description = "unknown token", body = crate::openapi::FlowErrorBody),
    ),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_UPDATE]))),
)]
pub async fn update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    ApiJson(request): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let request = Value::Object(request);
    db::call_json(&state.pool, SQL_UPDATE, &[&token, &request, &ADMIN_ACTOR])
        .await
        .map(Json)
}

/// A token's quota: type, total, remaining, consumed, expiry.
///
/// SQL: `quota.token_quota(access_token)`.
#[utoipa::path(
    get, path = "/flow/tokens/{token}/quota", tag = "tokens",
    operation_id = "flow_token_quota",
    params(("token" = String, Path, description = "the access token (flow_...)")),
    responses(
        (status = 200, description = "{success: true, data: {quota_type, total_quota, remaining_quota, consumed_quota, expires_at, message?}, message}", body = TokenQuotaEnvelope),
        (status = 404, description = "unknown token", body = crate::openapi::FlowErrorBody),
    ),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_QUOTA]))),
)]
pub async fn quota(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_QUOTA, &[&token])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// >= 1, default 1.
    #[serde(default, deserialize_with = "optional_param")]
    pub page: Option<i32>,
    /// 1..100, default 20.
    #[serde(default, deserialize_with = "optional_param")]
    pub page_size: Option<i32>,
    /// From (inclusive): `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS` or RFC 3339.
    #[serde(default, deserialize_with = "optional_param")]
    pub start_date: Option<String>,
    /// To (exclusive), same formats.
    #[serde(default, deserialize_with = "optional_param")]
    pub end_date: Option<String>,
}

/// A token's quota history (init, consume, refund, recharge, update), newest first.
///
/// SQL: `quota.token_quota_logs(access_token, page, page_size, start_date, end_date)`.
#[utoipa::path(
    get, path = "/flow/tokens/{token}/quota/logs", tag = "tokens",
    operation_id = "flow_token_quota_logs",
    params(("token" = String, Path, description = "the access token (flow_...)"), LogsQuery),
    responses(
        (status = 200, description = "{success: true, data: {logs, total, page, page_size}, message}", body = TokenLogsEnvelope),
        (status = 400, description = ENVELOPE_ERRORS, body = crate::openapi::FlowErrorBody),
        (status = 404, description = "unknown token", body = crate::openapi::FlowErrorBody),
    ),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_QUOTA_LOGS]))),
)]
pub async fn quota_logs(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> JsonResult {
    let page = query.page.unwrap_or(LOGS_PAGE_DEFAULT);
    let page_size = query.page_size.unwrap_or(LOGS_PAGE_SIZE_DEFAULT);
    let params: [&(dyn ToSql + Sync); 5] = [
        &token,
        &page,
        &page_size,
        &query.start_date,
        &query.end_date,
    ];
    db::call_json(&state.pool, SQL_QUOTA_LOGS, &params)
        .await
        .map(Json)
}

/// Deactivate a token (it stays listed, with `active: false`; a check answers 403 inactive).
///
/// SQL: `quota.delete_token(access_token, actor)`.
#[utoipa::path(
    delete, path = "/flow/tokens/{token}", tag = "tokens",
    operation_id = "flow_token_delete",
    params(("token" = String, Path, description = "the access token (flow_...)")),
    responses(
        (status = 200, description = "{success: true, data: <token, active false>, message: \"token deactivated\"}", body = TokenEnvelope),
        (status = 404, description = "unknown token", body = crate::openapi::FlowErrorBody),
    ),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_DELETE]))),
)]
pub async fn delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_DELETE, &[&token, &ADMIN_ACTOR])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this workspace.
    #[serde(default, deserialize_with = "optional_param")]
    pub ws_id: Option<String>,
    /// Only this email.
    #[serde(default, deserialize_with = "optional_param")]
    pub email: Option<String>,
    /// Default 100.
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    /// Default 0.
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
}

/// List tokens, by workspace and / or email.
///
/// SQL: `quota.list_tokens(ws_id, email, limit, offset)`.
#[utoipa::path(
    get, path = "/flow/tokens", tag = "tokens",
    operation_id = "flow_token_list",
    params(ListQuery),
    responses(
        (status = 200, description = "{success: true, data: {tokens, total}, message}", body = TokenListEnvelope),
        (status = 400, description = ENVELOPE_ERRORS, body = crate::openapi::FlowErrorBody),
    ),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_LIST]))),
)]
pub async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> JsonResult {
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    let offset = query.offset.unwrap_or(LIST_OFFSET_DEFAULT);
    let params: [&(dyn ToSql + Sync); 4] = [&query.ws_id, &query.email, &limit, &offset];
    db::call_json(&state.pool, SQL_LIST, &params)
        .await
        .map(Json)
}

// ---------------------------------------------------------------------------------------------
// Checks

/// What a check consumes. Both optional; the body itself may be absent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Units to consume (1..1e9, default 1).
    pub units: Option<i64>,
    /// Idempotency key (1..255 visible characters): the same id again answers the first check
    /// and consumes nothing.
    pub request_id: Option<String>,
}

/// One row of `quota.verify_token`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct VerifyRow {
    pub valid: bool,
    pub code: Option<String>,
    pub token_id: Option<i64>,
    pub quota_type: Option<String>,
    pub remaining: Option<i64>,
    pub rate_limit_limit: Option<i64>,
    pub rate_limit_remaining: Option<i64>,
    pub rate_limit_reset_s: Option<i64>,
    pub retry_after_s: Option<i64>,
    pub replayed: Option<bool>,
}

/// The answer of a check: status, body, headers.
#[derive(Debug, PartialEq)]
pub struct VerifyAnswer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl VerifyAnswer {
    /// No token, or one that cannot be ours: 401 without a database call.
    pub fn not_a_token() -> VerifyAnswer {
        let row = VerifyRow {
            code: Some("unknown_token".into()),
            ..VerifyRow::default()
        };
        verify_answer(&row).expect("unknown_token is a known code")
    }
}

impl IntoResponse for VerifyAnswer {
    fn into_response(self) -> Response {
        let code = (self.status.is_client_error() || self.status.is_server_error())
            .then(|| {
                self.body
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .flatten();
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(code) = code {
            crate::metrics::tag_error(&mut response, &code);
        }
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

fn refusal(error: &str, message: String) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("valid".into(), Value::Bool(false));
    body.insert("error".into(), Value::from(error));
    body.insert("message".into(), Value::from(message));
    body.insert(
        "request_id".into(),
        request_id::current()
            .map(Value::String)
            .unwrap_or(Value::Null),
    );
    body
}

/// Maps a row of `quota.verify_token` to the HTTP answer (the contract's table).
pub fn verify_answer(row: &VerifyRow) -> Result<VerifyAnswer, AppError> {
    let mut headers = Vec::new();
    if let Some(limit) = row.rate_limit_limit {
        headers.push((RATELIMIT_LIMIT, HeaderValue::from(limit)));
        if let Some(remaining) = row.rate_limit_remaining {
            headers.push((RATELIMIT_REMAINING, HeaderValue::from(remaining)));
        }
        if let Some(reset) = row.rate_limit_reset_s {
            headers.push((RATELIMIT_RESET, HeaderValue::from(reset)));
        }
    }
    let (status, body) = match (row.valid, row.code.as_deref()) {
        (true, None) => {
            let body = json!({
                "valid": true,
                "remaining": row.remaining,
                "rate_limit": {
                    "limit": row.rate_limit_limit,
                    "remaining": row.rate_limit_limit.and(row.rate_limit_remaining),
                    "reset": row.rate_limit_limit.and(row.rate_limit_reset_s),
                },
                "quota_type": row.quota_type,
                "replayed": row.replayed.unwrap_or(false),
            });
            (StatusCode::OK, body)
        }
        (false, Some("unknown_token")) => {
            headers.push((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            ));
            let body = refusal("unknown_token", "unknown access token".into());
            (StatusCode::UNAUTHORIZED, Value::Object(body))
        }
        (false, Some(code @ ("inactive" | "expired"))) => {
            let message = format!("the access token is {code}");
            (StatusCode::FORBIDDEN, Value::Object(refusal(code, message)))
        }
        (false, Some(limit_type @ ("burst" | "window"))) => {
            let mut body = refusal(
                "rate_limited",
                match row.retry_after_s {
                    Some(s) => format!("rate limit ({limit_type}) reached: retry after {s} s"),
                    None => format!("rate limit ({limit_type}) reached"),
                },
            );
            body.insert("limit_type".into(), Value::from(limit_type));
            body.insert("retry_after".into(), json!(row.retry_after_s));
            if let Some(seconds) = row.retry_after_s {
                headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
            }
            (StatusCode::TOO_MANY_REQUESTS, Value::Object(body))
        }
        (false, Some("quota_exceeded")) => {
            let message = match row.remaining {
                Some(left) => format!("quota exceeded: {left} left"),
                None => "quota exceeded".into(),
            };
            let mut body = refusal("QuotaExceeded", message);
            body.insert("remaining".into(), json!(row.remaining));
            if let Some(seconds) = row.retry_after_s {
                body.insert("retry_after".into(), Value::from(seconds));
                headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
            }
            (StatusCode::TOO_MANY_REQUESTS, Value::Object(body))
        }
        (false, Some("limiter_full")) => {
            // The rate limiter's table (shared memory) has no free entry for this token: the
            // server cannot count its requests right now, so it refuses rather than guess.
            let mut body = refusal(
                "limiter_full",
                "the rate limiter is full: retry shortly".into(),
            );
            body.insert("retry_after".into(), json!(row.retry_after_s));
            if let Some(seconds) = row.retry_after_s {
                headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
            }
            (StatusCode::SERVICE_UNAVAILABLE, Value::Object(body))
        }
        (valid, code) => {
            return Err(AppError::Internal(format!(
                "quota.verify_token answered valid = {valid} with code {code:?}"
            )))
        }
    };
    Ok(VerifyAnswer {
        status,
        body,
        headers,
    })
}

async fn check(
    state: &AppState,
    token: &str,
    body: Option<VerifyBody>,
) -> Result<VerifyAnswer, AppError> {
    let body = body.unwrap_or_default();
    let units = body.units.unwrap_or(UNITS_DEFAULT);
    let params: [&(dyn ToSql + Sync); 3] = [&token, &units, &body.request_id];
    let row = db::call_json(&state.pool, SQL_VERIFY, &params).await?;
    let row: VerifyRow = serde_json::from_value(row)
        .map_err(|e| AppError::Internal(format!("quota.verify_token row: {e}")))?;
    verify_answer(&row)
}

const VERIFY_200: &str = "valid: the token may be used, `units` were consumed (count and hybrid \
     tokens); RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset headers when the token has \
     a rate limit";
const VERIFY_400: &str = "a bad body: invalid_json, invalid_body, invalid_parameter (units \
     outside 1..1e9, a request_id that is not 1..255 visible characters); {valid: false, error, \
     message, request_id, ...detail}";
const VERIFY_401: &str = "{valid: false, error: \"unknown_token\"}: no bearer, or no such token";
const VERIFY_403: &str = "{valid: false, error: \"inactive\" | \"expired\"}";
const VERIFY_429: &str = "{valid: false, error: \"QuotaExceeded\", remaining} or {valid: false, \
     error: \"rate_limited\", limit_type: \"burst\" | \"window\", retry_after} with Retry-After; \
     a refused check consumes nothing and does not count against the rate limit";
const VERIFY_503: &str =
    "{valid: false, error: \"limiter_full\", retry_after} with Retry-After: the \
     rate limiter's shared table has no room for this token right now; or database_unavailable";

/// Check a token and consume from it: the caller presents the token itself
/// (`Authorization: Bearer flow_...`). Active and not expired, then the rate limit (burst per
/// second, then per window), then the quota (count and hybrid tokens), atomically; idempotent by
/// `request_id`.
///
/// SQL: `quota.verify_token(access_token, units, request_id)`.
#[utoipa::path(
    post, path = "/flow/verify", tag = "token-checks",
    operation_id = "flow_verify",
    request_body(content = Option<VerifyBody>, description = "optional: {units?, request_id?}"),
    responses(
        (status = 200, description = VERIFY_200, body = VerifyValid),
        (status = 400, description = VERIFY_400, body = VerifyRefusal),
        (status = 401, description = VERIFY_401, body = VerifyRefusal),
        (status = 403, description = VERIFY_403, body = VerifyRefusal),
        (status = 429, description = VERIFY_429, body = VerifyRefusal),
        (status = 503, description = VERIFY_503, body = VerifyRefusal),
    ),
    security(("accessToken" = [])),
    extensions(("x-sql" = json!([SQL_VERIFY]))),
)]
pub async fn verify(
    State(state): State<AppState>,
    bearer: AccessTokenBearer,
    request: Request,
) -> Result<VerifyAnswer, AppError> {
    // The credential first, then the body (as for every authenticated route).
    let AccessTokenBearer::Candidate(token) = bearer else {
        return Ok(VerifyAnswer::not_a_token());
    };
    let OptionalJson(body) = OptionalJson::<VerifyBody>::from_request(request, &state).await?;
    check(&state, &token, body).await
}

/// Check a token and consume from it on behalf of its caller (a gateway holding the admin or
/// the service token): the same answers as `POST /flow/verify`.
///
/// SQL: `quota.verify_token(access_token, units, request_id)`.
#[utoipa::path(
    post, path = "/flow/tokens/{token}/consume", tag = "token-checks",
    operation_id = "flow_token_consume",
    params(("token" = String, Path, description = "the access token (flow_...)")),
    request_body(content = Option<VerifyBody>, description = "optional: {units?, request_id?}"),
    responses(
        (status = 200, description = VERIFY_200, body = VerifyValid),
        (status = 400, description = VERIFY_400, body = VerifyRefusal),
        (status = 401, description = "no admin or service credential (error unauthorized), or \
             {valid: false, error: \"unknown_token\"}", body = VerifyRefusal),
        (status = 403, description = "a wrong admin or service credential (error forbidden), or \
             {valid: false, error: \"inactive\" | \"expired\"}", body = VerifyRefusal),
        (status = 429, description = VERIFY_429, body = VerifyRefusal),
        (status = 503, description = VERIFY_503, body = VerifyRefusal),
    ),
    security(("adminBearer" = []), ("adminToken" = []), ("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_VERIFY]))),
)]
pub async fn consume(
    _: AdminOrServiceAuth,
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    OptionalJson(body): OptionalJson<VerifyBody>,
) -> Result<VerifyAnswer, AppError> {
    check(&state, &token, body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    fn row(code: Option<&str>) -> VerifyRow {
        VerifyRow {
            valid: code.is_none(),
            code: code.map(str::to_owned),
            ..VerifyRow::default()
        }
    }

    fn header<'a>(answer: &'a VerifyAnswer, name: &HeaderName) -> Option<&'a str> {
        answer
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn codes_map_to_the_contract_statuses() {
        for (code, status, error) in [
            ("unknown_token", 401, "unknown_token"),
            ("inactive", 403, "inactive"),
            ("expired", 403, "expired"),
            ("burst", 429, "rate_limited"),
            ("window", 429, "rate_limited"),
            ("quota_exceeded", 429, "QuotaExceeded"),
            ("limiter_full", 503, "limiter_full"),
        ] {
            let answer = verify_answer(&row(Some(code))).unwrap();
            assert_eq!(answer.status.as_u16(), status, "{code}");
            assert_eq!(answer.body["valid"], false, "{code}");
            assert_eq!(answer.body["error"], error, "{code}");
        }
        assert!(matches!(
            verify_answer(&row(Some("bogus"))),
            Err(AppError::Internal(_))
        ));
        let bad = VerifyRow {
            valid: false,
            ..VerifyRow::default()
        };
        assert!(matches!(verify_answer(&bad), Err(AppError::Internal(_))));
    }

    #[test]
    fn valid_answer_carries_remaining_and_rate_limit() {
        let answer = verify_answer(&VerifyRow {
            valid: true,
            quota_type: Some("count".into()),
            remaining: Some(19),
            rate_limit_limit: Some(60),
            rate_limit_remaining: Some(59),
            rate_limit_reset_s: Some(60),
            ..VerifyRow::default()
        })
        .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.body,
            json!({"valid": true, "remaining": 19, "quota_type": "count", "replayed": false,
                   "rate_limit": {"limit": 60, "remaining": 59, "reset": 60}})
        );
        assert_eq!(header(&answer, &RATELIMIT_LIMIT), Some("60"));
        assert_eq!(header(&answer, &RATELIMIT_REMAINING), Some("59"));
        assert_eq!(header(&answer, &RATELIMIT_RESET), Some("60"));
        assert_eq!(header(&answer, &header::RETRY_AFTER), None);
    }

    #[test]
    fn no_limit_no_headers() {
        let answer = verify_answer(&VerifyRow {
            valid: true,
            rate_limit_remaining: Some(3),
            ..VerifyRow::default()
        })
        .unwrap();
        assert!(answer.headers.is_empty(), "{:?}", answer.headers);
        assert_eq!(
            answer.body["rate_limit"],
            json!({"limit": null, "remaining": null, "reset": null})
        );
        assert_eq!(answer.body["remaining"], Value::Null);
    }

    #[test]
    fn rate_limited_sets_retry_after() {
        let answer = verify_answer(&VerifyRow {
            valid: false,
            code: Some("burst".into()),
            rate_limit_limit: Some(10),
            rate_limit_remaining: Some(7),
            rate_limit_reset_s: Some(1),
            retry_after_s: Some(1),
            ..VerifyRow::default()
        })
        .unwrap();
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.body["limit_type"], "burst");
        assert_eq!(answer.body["retry_after"], 1);
        assert_eq!(header(&answer, &header::RETRY_AFTER), Some("1"));
        assert_eq!(header(&answer, &RATELIMIT_REMAINING), Some("7"));
    }

    #[test]
    fn not_a_token_is_401_asking_for_a_bearer() {
        let answer = VerifyAnswer::not_a_token();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.body["error"], "unknown_token");
        assert!(header(&answer, &header::WWW_AUTHENTICATE).is_some());
    }

    #[test]
    fn verify_row_reads_the_function_row() {
        let row: VerifyRow = serde_json::from_value(json!({
            "valid": true, "code": null, "token_id": 7, "quota_type": "hybrid", "remaining": 4,
            "rate_limit_limit": null, "rate_limit_remaining": null, "rate_limit_reset_s": null,
            "retry_after_s": null, "replayed": true
        }))
        .unwrap();
        assert_eq!(row.token_id, Some(7));
        assert_eq!(row.replayed, Some(true));
    }

    #[test]
    fn verify_body_is_optional_fields_only() {
        let body: VerifyBody = parse_json(br#"{"units":3,"request_id":"r1"}"#).unwrap();
        assert_eq!(
            (body.units, body.request_id.as_deref()),
            (Some(3), Some("r1"))
        );
        for text in [r#"{"units":1.5}"#, r#"{"unit":1}"#, r#"{"units":"1"}"#] {
            assert!(
                matches!(
                    parse_json::<VerifyBody>(text.as_bytes()),
                    Err(AppError::InvalidBody(_))
                ),
                "{text}"
            );
        }
    }
}
