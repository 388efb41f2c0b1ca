//! AppError and the SQLSTATE -> HTTP mapping: the only place that decides a status code for a
//! failure. Handlers return `Result<_, AppError>`; extractors reject with AppError.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use crate::request_id;

#[derive(Debug)]
pub enum AppError {
    /// Body is not JSON at all (syntax error, empty, truncated).
    InvalidJson(String),
    /// Body is JSON but not the expected shape (missing field, wrong type, unknown field).
    InvalidBody(String),
    InvalidQuery(String),
    InvalidPath(String),
    PayloadTooLarge(String),
    /// Credential missing or not in the expected form: 401.
    Unauthorized(String),
    /// Credential present but wrong, or the API is not configured: 403.
    Forbidden(String),
    RouteNotFound(String),
    MethodNotAllowed(String),
    /// The same operation_id kept failing with 40001 after our retries.
    InProgress,
    /// An ERROR raised by SQL (the extension's domain errors and everything else).
    Sql(SqlError),
    /// The request ran out of time (QUOTA_REQUEST_TIMEOUT_S); its statement was cancelled, but
    /// it may have committed just before: 503, outcome unknown.
    Timeout(std::time::Duration),
    /// Database unreachable, pool exhausted: 503, details logged only.
    Unavailable(String),
    /// Our bug or an unexpected database answer: 500, details logged only.
    Internal(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub code: String,
    pub message: String,
    /// DETAIL when it is a JSON object (the extension's domain errors), else None.
    pub detail: Option<Map<String, Value>>,
    /// DETAIL as sent, kept for the log of 5xx errors.
    pub detail_text: Option<String>,
}

/// What a SQLSTATE means to an HTTP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlClass {
    BadRequest,
    NotFound,
    Conflict,
    /// 40001: the same operation is being applied concurrently; the db layer retries it.
    Retry,
    Unavailable,
    Internal,
}

pub const SQLSTATE_SERIALIZATION_FAILURE: &str = "40001";
pub const SQLSTATE_CHECK_VIOLATION: &str = "23514";
/// object_not_in_prerequisite_state: the subject is not in a state that allows the call (a
/// reservation no longer held: 409; a disabled organization: 403, see [`QUOTA_REFUSALS`]).
pub const SQLSTATE_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// The DETAIL `error` codes of a reservation (or consume) that the quota refuses: the caller may
/// not spend this, HTTP 403 (seed 003), whatever their SQLSTATE (23514 or 55000).
pub const QUOTA_REFUSALS: &[&str] = &[
    "insufficient_user_quota",
    "insufficient_org_quota",
    "org_disabled",
    "insufficient_token_quota",
    "token_unusable",
];

/// The DETAIL `error` codes of provider pools (issue 13) whose status is not their SQLSTATE's:
/// a lease released twice (55000) stays 409; no credentials key configured (55000) is the
/// server's state, 503; `quota.pool_consume` past the limit (23514) is 429, as an acquire refused
/// for quota is.
pub const POOL_STATUSES: &[(&str, StatusCode)] = &[
    ("lease_not_held", StatusCode::CONFLICT),
    ("credentials_key_missing", StatusCode::SERVICE_UNAVAILABLE),
    ("pool_quota_exceeded", StatusCode::TOO_MANY_REQUESTS),
];

/// The status [`POOL_STATUSES`] gives this SQL error, if any (only for the domain classes whose
/// body carries DETAIL).
fn pool_status(sql: &SqlError) -> Option<StatusCode> {
    if !matches!(
        sql.class(),
        SqlClass::BadRequest | SqlClass::NotFound | SqlClass::Conflict
    ) {
        return None;
    }
    let code = sql.detail_error()?;
    POOL_STATUSES
        .iter()
        .find(|(name, _)| *name == code)
        .map(|(_, status)| *status)
}

/// The contract's table. Class 22 (data exception) is a bad argument as a whole, not only the
/// listed 22023/22P02/22007/22008: pgrx raises 22000 for a plain `Err`, and an out-of-range
/// number (22003) is the caller's input too.
pub fn classify_sqlstate(code: &str) -> SqlClass {
    match code {
        "P0002" => SqlClass::NotFound,
        "23505" | "23503" | SQLSTATE_CHECK_VIOLATION | SQLSTATE_NOT_IN_PREREQUISITE_STATE => {
            SqlClass::Conflict
        }
        SQLSTATE_SERIALIZATION_FAILURE => SqlClass::Retry,
        _ if code.starts_with("22") => SqlClass::BadRequest,
        _ if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") => {
            SqlClass::Unavailable
        }
        _ => SqlClass::Internal,
    }
}

impl SqlClass {
    pub fn status(self) -> StatusCode {
        match self {
            SqlClass::BadRequest => StatusCode::BAD_REQUEST,
            SqlClass::NotFound => StatusCode::NOT_FOUND,
            SqlClass::Conflict | SqlClass::Retry => StatusCode::CONFLICT,
            SqlClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            SqlClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The `error` code used when DETAIL carries none (errors not raised by our extension).
fn default_error_code(code: &str) -> &'static str {
    match code {
        "22007" | "22008" => "invalid_datetime",
        "23505" => "duplicate",
        "23503" => "in_use",
        _ => match classify_sqlstate(code) {
            SqlClass::BadRequest => "invalid_parameter",
            SqlClass::NotFound => "not_found",
            SqlClass::Conflict => "conflict",
            SqlClass::Retry => "in_progress",
            SqlClass::Unavailable => "database_unavailable",
            SqlClass::Internal => "internal_error",
        },
    }
}

impl SqlError {
    pub fn class(&self) -> SqlClass {
        classify_sqlstate(&self.code)
    }

    /// The `error` field of DETAIL, when the extension sent one.
    pub fn detail_error(&self) -> Option<&str> {
        self.detail.as_ref()?.get("error")?.as_str()
    }

    /// A refusal of the quota (user wallet, organization, disabled organization): 403.
    pub fn is_quota_refusal(&self) -> bool {
        self.class() == SqlClass::Conflict
            && self
                .detail_error()
                .is_some_and(|code| QUOTA_REFUSALS.contains(&code))
    }
}

tokio::task_local! {
    /// Set while a seed 004 route runs (see [`seed004_statuses`]).
    static SEED004_ROUTE: ();
}

/// Middleware of the seed 004 routes (internal, public and admin credit API): inside it, a
/// request that fails validation answers 422, as seed 004's FastAPI service does (malformed or
/// mistyped JSON, a missing or unknown field, a bad query or path value, and an out-of-range
/// field value that the extension names with `field`). Elsewhere (seed 000's strategies, the
/// admin user API) such a request is 400.
pub async fn seed004_statuses(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    SEED004_ROUTE.scope((), next.run(request)).await
}

fn in_seed004_route() -> bool {
    SEED004_ROUTE.try_with(|_| ()).is_ok()
}

/// The status of a request that failed validation: 422 on seed 004's routes, else 400.
fn invalid_input_status() -> StatusCode {
    if in_seed004_route() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// How an error body is shaped beyond `{error, message, request_id, ...detail}`, by route family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// Seed 001's admin token API (`/flow/tokens...`): the `{"success": false, "data": null,
    /// "message"}` envelope around the usual fields.
    Envelope,
    /// A token check (`/flow/verify`, `/flow/tokens/{token}/consume`): `"valid": false` beside
    /// the usual fields, as its refusals carry.
    Verify,
}

tokio::task_local! {
    /// Set while a route of a family with its own error shape runs (see [`ErrorShape`]).
    static ERROR_SHAPE: ErrorShape;
}

/// Middleware of seed 001's admin token routes: their errors come in its envelope.
pub async fn flow_envelope(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    ERROR_SHAPE
        .scope(ErrorShape::Envelope, next.run(request))
        .await
}

/// Middleware of the token checks: their errors carry `"valid": false`.
pub async fn verify_shape(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    ERROR_SHAPE
        .scope(ErrorShape::Verify, next.run(request))
        .await
}

fn current_error_shape() -> Option<ErrorShape> {
    ERROR_SHAPE.try_with(|shape| *shape).ok()
}

/// Adds the fields of `shape` to an error body.
pub fn shape_error_body(body: &mut Map<String, Value>, shape: Option<ErrorShape>) {
    match shape {
        None => {}
        Some(ErrorShape::Envelope) => {
            body.insert("success".into(), Value::Bool(false));
            body.insert("data".into(), Value::Null);
        }
        Some(ErrorShape::Verify) => {
            body.insert("valid".into(), Value::Bool(false));
        }
    }
}

/// The `error` code of a purchase without a confirmed payment: HTTP 402 (seed 004).
pub const PAYMENT_REQUIRED: &str = "payment_required";

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::InvalidJson(_)
            | AppError::InvalidBody(_)
            | AppError::InvalidQuery(_)
            | AppError::InvalidPath(_) => invalid_input_status(),
            AppError::Sql(sql) if sql.detail_error() == Some(PAYMENT_REQUIRED) => {
                StatusCode::PAYMENT_REQUIRED
            }
            AppError::Sql(sql) if sql.is_quota_refusal() => StatusCode::FORBIDDEN,
            AppError::Sql(sql) if pool_status(sql).is_some() => {
                pool_status(sql).unwrap_or(StatusCode::CONFLICT)
            }
            // A field the extension found invalid, or a request value PostgreSQL could not read
            // (the sidecar passes dates and numbers of query strings as text to cast in SQL), is
            // a validation failure of the request.
            AppError::Sql(sql)
                if sql.class() == SqlClass::BadRequest
                    && (sql.detail.as_ref().is_some_and(|d| d.contains_key("field"))
                        || matches!(sql.code.as_str(), "22007" | "22008" | "22P02")) =>
            {
                invalid_input_status()
            }
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::InProgress => StatusCode::CONFLICT,
            AppError::Sql(sql) => sql.class().status(),
            AppError::Timeout(_) | AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body without `request_id` (added at response time). 5xx bodies never carry
    /// the internal message: it may name tables, functions or connection details.
    pub fn body(&self) -> Map<String, Value> {
        let simple = |error: &str, message: &str| {
            let mut body = Map::new();
            body.insert("error".into(), Value::from(error));
            body.insert("message".into(), Value::from(message));
            body
        };
        match self {
            AppError::InvalidJson(m) => simple("invalid_json", m),
            AppError::InvalidBody(m) => simple("invalid_body", m),
            AppError::InvalidQuery(m) => simple("invalid_query", m),
            AppError::InvalidPath(m) => simple("invalid_path", m),
            AppError::PayloadTooLarge(m) => simple("payload_too_large", m),
            AppError::Unauthorized(m) => simple("unauthorized", m),
            AppError::Forbidden(m) => simple("forbidden", m),
            AppError::RouteNotFound(m) => simple("not_found", m),
            AppError::MethodNotAllowed(m) => simple("method_not_allowed", m),
            AppError::InProgress => simple(
                "in_progress",
                "an operation with this operation_id is being applied concurrently; retry later",
            ),
            AppError::Sql(sql) => match sql.class() {
                SqlClass::Unavailable => simple("database_unavailable", "database unavailable"),
                SqlClass::Internal => simple("internal_error", "internal error"),
                SqlClass::Retry => AppError::InProgress.body(),
                SqlClass::BadRequest | SqlClass::NotFound | SqlClass::Conflict => {
                    let mut body = sql.detail.clone().unwrap_or_default();
                    if !matches!(body.get("error"), Some(Value::String(_))) {
                        body.insert("error".into(), Value::from(default_error_code(&sql.code)));
                    }
                    body.insert("message".into(), Value::from(sql.message.as_str()));
                    body
                }
            },
            AppError::Timeout(after) => simple(
                "timeout",
                &format!(
                    "the request did not complete within {} ms and its statement was cancelled, \
                     but the outcome is unknown: retry with the same operation_id (a money-moving \
                     call applies at most once: the retry replays it or applies it)",
                    after.as_millis()
                ),
            ),
            AppError::Unavailable(_) => simple("database_unavailable", "database unavailable"),
            AppError::Internal(_) => simple("internal_error", "internal error"),
        }
    }

    fn log(&self) {
        match self {
            AppError::Unavailable(cause) => tracing::warn!(%cause, "database unavailable"),
            AppError::Timeout(after) => tracing::warn!(
                timeout_ms = after.as_millis() as u64,
                "request timed out; its statement was cancelled"
            ),
            AppError::Internal(cause) => tracing::error!(%cause, "internal error"),
            AppError::Sql(sql) => match sql.class() {
                SqlClass::Unavailable => tracing::warn!(
                    sqlstate = %sql.code, message = %sql.message, "database unavailable"
                ),
                SqlClass::Internal => tracing::error!(
                    sqlstate = %sql.code,
                    message = %sql.message,
                    detail = sql.detail_text.as_deref().unwrap_or(""),
                    "unexpected SQL error"
                ),
                _ => {
                    tracing::debug!(sqlstate = %sql.code, message = %sql.message, "request refused by SQL")
                }
            },
            other => tracing::debug!(error = ?other, "request refused"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let mut body = self.body();
        body.insert(
            "request_id".into(),
            request_id::current()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        shape_error_body(&mut body, current_error_shape());
        let code = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let mut response = (status, Json(Value::Object(body))).into_response();
        crate::metrics::tag_error(&mut response, &code);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The charge endpoint's contract (seed 004): a refusal for insufficient credits is not an HTTP
/// error but `200 {"success":false,"error":"insufficient_credits",...}` carrying DETAIL's numbers.
/// Returns that body when `err` is such a refusal.
pub fn insufficient_credits_reply(err: &AppError) -> Option<Value> {
    let AppError::Sql(sql) = err else { return None };
    if sql.code != SQLSTATE_CHECK_VIOLATION || sql.detail_error() != Some("insufficient_credits") {
        return None;
    }
    let mut body = Map::new();
    body.insert("success".into(), Value::Bool(false));
    for (key, value) in sql.detail.iter().flatten() {
        body.insert(key.clone(), value.clone());
    }
    body.insert("message".into(), Value::from(sql.message.as_str()));
    Some(Value::Object(body))
}

impl From<tokio_postgres::Error> for AppError {
    fn from(err: tokio_postgres::Error) -> AppError {
        if let Some(db) = err.as_db_error() {
            let detail_text = db.detail().map(str::to_owned);
            let detail = detail_text
                .as_deref()
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .and_then(|value| match value {
                    Value::Object(map) => Some(map),
                    _ => None,
                });
            return AppError::Sql(SqlError {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail,
                detail_text,
            });
        }
        // No SQLSTATE: either the connection is gone (503) or the driver could not convert a
        // value, which is a mismatch between this binary and the extension (500).
        let is_io =
            std::error::Error::source(&err).is_some_and(|source| source.is::<std::io::Error>());
        if err.is_closed() || is_io {
            AppError::Unavailable(err.to_string())
        } else {
            AppError::Internal(err.to_string())
        }
    }
}

impl From<deadpool_postgres::PoolError> for AppError {
    fn from(err: deadpool_postgres::PoolError) -> AppError {
        use deadpool_postgres::PoolError;
        match err {
            PoolError::Backend(pg) => AppError::from(pg),
            PoolError::Timeout(kind) => AppError::Unavailable(format!(
                "timed out waiting for a database connection ({kind:?})"
            )),
            PoolError::Closed => AppError::Unavailable("connection pool closed".into()),
            other => AppError::Internal(format!("connection pool: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sql_error(code: &str, message: &str, detail: Option<Value>) -> AppError {
        AppError::Sql(SqlError {
            code: code.into(),
            message: message.into(),
            detail: detail.as_ref().and_then(|d| d.as_object().cloned()),
            detail_text: detail.map(|d| d.to_string()),
        })
    }

    #[test]
    fn sqlstate_table_matches_the_contract() {
        let table: &[(&str, u16)] = &[
            ("22023", 400),
            ("22P02", 400),
            ("22007", 400),
            ("22008", 400),
            ("22003", 400),
            ("P0002", 404),
            ("23505", 409),
            ("23503", 409),
            ("23514", 409),
            ("55000", 409),
            ("40001", 409),
            ("08006", 503),
            ("08001", 503),
            ("53300", 503),
            ("57P01", 503),
            ("57P03", 503),
            ("XX000", 500),
            ("42883", 500),
            ("P0001", 500),
            ("40P01", 500),
            ("57014", 500),
            ("55P03", 500),
            ("55006", 500),
        ];
        for (code, status) in table {
            assert_eq!(
                classify_sqlstate(code).status().as_u16(),
                *status,
                "SQLSTATE {code}"
            );
        }
    }

    #[test]
    fn domain_error_body_carries_detail_fields_and_sql_message() {
        let err = sql_error(
            "23505",
            "operation 'op-1' was already used for a charge of 0.5",
            Some(json!({"error": "idempotency_conflict", "operation_id": "op-1"})),
        );
        assert_eq!(err.status(), StatusCode::CONFLICT);
        let body = err.body();
        assert_eq!(body["error"], "idempotency_conflict");
        assert_eq!(body["operation_id"], "op-1");
        assert_eq!(
            body["message"],
            "operation 'op-1' was already used for a charge of 0.5"
        );
    }

    #[test]
    fn error_without_json_detail_gets_a_code_from_its_sqlstate() {
        let err = sql_error("P0002", "user 'u9' does not exist", None);
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert_eq!(err.body()["error"], "not_found");
        let err = sql_error(
            "22007",
            "invalid input syntax for type timestamp with time zone",
            None,
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.body()["error"], "invalid_datetime");
    }

    #[test]
    fn internal_errors_hide_their_message() {
        let err = sql_error("42883", "function quota.charge(text) does not exist", None);
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = Value::Object(err.body()).to_string();
        assert!(!body.contains("quota.charge"), "{body}");
        assert_eq!(err.body()["error"], "internal_error");

        let err = AppError::Unavailable("error connecting to server: /tmp/.s.PGSQL.5432".into());
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!Value::Object(err.body()).to_string().contains("PGSQL"));
    }

    #[test]
    fn insufficient_credits_becomes_a_200_body() {
        let err = sql_error(
            "23514",
            "user 'u1' has 40 credits, 55 required",
            Some(json!({
                "error": "insufficient_credits",
                "user_id": "u1",
                "required_credits": 55,
                "current_balance": 40,
                "deficit": 15
            })),
        );
        let body = insufficient_credits_reply(&err).expect("a refusal body");
        assert_eq!(body["success"], false);
        assert_eq!(body["error"], "insufficient_credits");
        assert_eq!(body["user_id"], "u1");
        assert_eq!(body["required_credits"], 55);
        assert_eq!(body["current_balance"], 40);
        assert_eq!(body["deficit"], 15);
    }

    #[test]
    fn other_check_violations_stay_errors() {
        let err = sql_error(
            "23514",
            "refund of 10 exceeds the 5 credits left of charge 'op-1'",
            Some(json!({"error": "refund_exceeds_charge"})),
        );
        assert!(insufficient_credits_reply(&err).is_none());
        assert_eq!(err.status(), StatusCode::CONFLICT);
        assert_eq!(err.body()["error"], "refund_exceeds_charge");
        assert!(insufficient_credits_reply(&AppError::InProgress).is_none());
    }

    #[test]
    fn timeout_is_503_and_says_to_retry_with_the_same_operation_id() {
        let err = AppError::Timeout(std::time::Duration::from_millis(1500));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = err.body();
        assert_eq!(body["error"], "timeout");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("1500 ms"), "{message}");
        assert!(message.contains("outcome is unknown"), "{message}");
        assert!(message.contains("same operation_id"), "{message}");
    }

    #[test]
    fn quota_refusals_are_403_with_their_detail() {
        for (code, error) in [
            ("23514", "insufficient_user_quota"),
            ("23514", "insufficient_org_quota"),
            ("55000", "org_disabled"),
        ] {
            let err = sql_error(
                code,
                "refused",
                Some(
                    json!({"error": error, "user_id": "u1", "required_credits": 50, "available_credits": 10}),
                ),
            );
            assert_eq!(err.status(), StatusCode::FORBIDDEN, "{code} {error}");
            let body = err.body();
            assert_eq!(body["error"], error);
            assert_eq!(body["user_id"], "u1");
            assert_eq!(body["required_credits"], 50);
            assert_eq!(body["available_credits"], 10);
            assert_eq!(body["message"], "refused");
            // Not the charge's 200 refusal.
            assert!(insufficient_credits_reply(&err).is_none());
        }
    }

    #[test]
    fn reservation_not_held_is_409_naming_its_status() {
        let err = sql_error(
            "55000",
            "reservation 7 is settled, not held",
            Some(
                json!({"error": "reservation_not_held", "reservation_id": 7, "status": "settled"}),
            ),
        );
        assert_eq!(err.status(), StatusCode::CONFLICT);
        let body = err.body();
        assert_eq!(body["error"], "reservation_not_held");
        assert_eq!(body["reservation_id"], 7);
        assert_eq!(body["status"], "settled");
        assert_eq!(body["message"], "reservation 7 is settled, not held");
        // 55000 without our DETAIL: still 409, with a generic code.
        let err = sql_error("55000", "not in state", None);
        assert_eq!(err.status(), StatusCode::CONFLICT);
        assert_eq!(err.body()["error"], "conflict");
    }

    #[tokio::test]
    async fn quota_refusal_stays_403_on_seed004_routes() {
        let err = sql_error(
            "23514",
            "no room",
            Some(json!({"error": "insufficient_org_quota", "field": "org"})),
        );
        let status = SEED004_ROUTE.scope((), async { err.status() }).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn in_progress_is_409() {
        assert_eq!(AppError::InProgress.status(), StatusCode::CONFLICT);
        assert_eq!(AppError::InProgress.body()["error"], "in_progress");
    }

    #[tokio::test]
    async fn flow_errors_come_in_their_shape() {
        let err = || sql_error("P0002", "token flow_1234abcd... does not exist", None);
        let plain = err().into_response();
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);
        let envelope = ERROR_SHAPE
            .scope(ErrorShape::Envelope, async { err().into_response() })
            .await;
        assert_eq!(envelope.status(), StatusCode::NOT_FOUND);
        let bytes = axum::body::to_bytes(envelope.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["data"], Value::Null);
        assert_eq!(body["error"], "not_found");
        assert_eq!(body["message"], "token flow_1234abcd... does not exist");
        let verify = ERROR_SHAPE
            .scope(ErrorShape::Verify, async {
                sql_error(
                    "22023",
                    "units must be >= 1",
                    Some(json!({"error": "invalid_parameter", "field": "units"})),
                )
                .into_response()
            })
            .await;
        assert_eq!(verify.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(verify.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["valid"], false);
        assert_eq!(body["field"], "units");
        assert!(body.get("success").is_none());
    }

    #[test]
    fn pool_errors_have_their_own_statuses() {
        let err = |code: &str, error: &str| {
            sql_error(
                code,
                "m",
                Some(json!({"error": error, "lease_id": "00000000-0000-0000-0000-000000000001"})),
            )
        };
        assert_eq!(
            err("55000", "lease_not_held").status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            err("55000", "credentials_key_missing").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            err("23514", "pool_quota_exceeded").status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        // The body keeps the DETAIL's code (a 503 from the extension is not "database_unavailable").
        let body = err("55000", "credentials_key_missing").body();
        assert_eq!(body["error"], "credentials_key_missing");
        let body = err("55000", "lease_not_held").body();
        assert_eq!(body["lease_id"], "00000000-0000-0000-0000-000000000001");
        // Other 55000 errors are untouched.
        assert_eq!(
            err("55000", "reservation_not_held").status(),
            StatusCode::CONFLICT
        );
    }

    #[tokio::test]
    async fn error_responses_carry_their_code_for_the_metrics() {
        let response =
            sql_error("23514", "m", Some(json!({"error": "pool_quota_exceeded"}))).into_response();
        assert_eq!(
            response.extensions().get::<crate::metrics::ErrorCode>(),
            Some(&crate::metrics::ErrorCode("pool_quota_exceeded".into()))
        );
        let response = AppError::Unauthorized("no".into()).into_response();
        assert_eq!(
            response.extensions().get::<crate::metrics::ErrorCode>(),
            Some(&crate::metrics::ErrorCode("unauthorized".into()))
        );
    }

    #[tokio::test]
    async fn unauthorized_response_asks_for_bearer() {
        let response =
            AppError::Unauthorized("missing Authorization header".into()).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
