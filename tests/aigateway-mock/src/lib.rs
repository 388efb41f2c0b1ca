//! `aigateway-mock`: an in-memory stand-in for the AiGateway (the Higress ai-quota admin API)
//! that the relay delivers recharges to (SPEC 6.5), with hooks for tests.
//!
//! Gateway endpoints, under the admin path `{admin}` (default `/v1/chat/completions`), all with
//! `Authorization: Bearer <credential>`:
//!
//! | request                                                      | answer                                                   |
//! |--------------------------------------------------------------|----------------------------------------------------------|
//! | `POST {admin}/quota/delta`, form `consumer`, `value` (i64)   | 200 `{"code":200,"message":"success","consumer","quota"}` |
//! | `POST {admin}/quota/refresh`, form `consumer`, `quota` (i64) | 200 same shape; the quota is set                         |
//! | `GET {admin}/quota?consumer=`                                | 200 `{"quota": n, "consumer": "..."}` (0 when unknown)   |
//!
//! A request is checked in this order: bearer (401), parameters (400), injected fault, then it is
//! applied. So a 401 or 400 never consumes a fault's `count`.
//! Errors are JSON `{"code": <http status>, "message": "..."}`.
//!
//! Test hooks, without auth (the mock listens on loopback and holds nothing secret):
//! - `GET /health` -> `{"status":"ok"}`.
//! - `GET /mock/deltas[?consumer=]` -> `{"deltas":[{seq, consumer, value, quota_after,
//!   received_at, applied_at, idempotency_key, stalled}], "count", "dropped", "duplicate_keys"}`:
//!   every *applied* delta, oldest first. A faulted delta is not applied and not logged.
//!   `idempotency_key` is the `Idempotency-Key` header, else `X-Request-Id`, else null;
//!   `duplicate_keys` lists keys that were applied more than once (a double delivery).
//! - `DELETE /mock/deltas` clears the log, the counters and every quota (not the fault).
//! - `GET /mock/quotas` -> `{"quotas": {consumer: n}, "count"}`.
//! - `POST /mock/fault` JSON `{"mode":"ok"|"error"|"status"|"stall", "status", "count",
//!   "stall_ms", "retry_after_s"}`; `GET /mock/fault` reads it (see [`FaultRequest`]).
//!   Faults apply to the three gateway endpoints only.
//!   - `error`: 500, nothing applied.
//!   - `status`: the given status (200..=599), nothing applied; 429 and 503 carry
//!     `Retry-After` (`retry_after_s`, default 1). `status` 200 models a gateway that says yes
//!     and does nothing.
//!   - `stall`: waits `stall_ms` (default 30000), then answers normally **and applies the
//!     change even if the client has gone away** (it runs in its own task): this models the
//!     gateway applying a delta while the relay timed out, the case that makes a naive retry
//!     deliver twice.
//!   - `count` (>= 1): the fault covers that many requests, then the mode returns to `ok`;
//!     absent = until changed.
//!
//! Bounds: consumer names are 1..=256 characters; at most `max_deltas` (default 1,000,000)
//! entries are kept in the log, the oldest is dropped beyond that (`dropped` counts them: the
//! gateway itself must keep working, a 507 would only make the relay retry); at most
//! `max_consumers` (default 1,000,000) distinct consumers, a delta or refresh for a new
//! consumer beyond that answers 507 and changes nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use clap::builder::RangedU64ValueParser;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tower_http::trace::TraceLayer;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:1002";
pub const ADMIN_PATH_DEFAULT: &str = "/v1/chat/completions";
pub const MAX_DELTAS_DEFAULT: usize = 1_000_000;
pub const MAX_DELTAS_MAX: u64 = 100_000_000;
pub const MAX_CONSUMERS_DEFAULT: usize = 1_000_000;
pub const CONSUMER_CHARS_MAX: usize = 256;
pub const STALL_MS_DEFAULT: u64 = 30_000;
pub const STALL_MS_MAX: u64 = 3_600_000;
pub const RETRY_AFTER_S_DEFAULT: u64 = 1;

/// The expected bearer credential: never printed, compared in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Configuration, from the command line or the environment (`--help` lists both).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "aigateway-mock",
    version,
    about = "In-memory AiGateway (Higress ai-quota admin API) for pg_quota tests",
    long_about = "In-memory AiGateway (Higress ai-quota admin API) for pg_quota tests.\n\n\
        Endpoints: POST {admin}/quota/delta, POST {admin}/quota/refresh, GET {admin}/quota,\n\
        GET /health, GET|DELETE /mock/deltas, GET /mock/quotas, GET|POST /mock/fault"
)]
pub struct MockConfig {
    /// address:port to listen on
    #[arg(long, env = "AIGATEWAY_MOCK_LISTEN", default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// the bearer credential the admin endpoints expect (required)
    #[arg(long, env = "AIGATEWAY_MOCK_CREDENTIAL", hide_env_values = true, value_parser = credential)]
    pub credential: Secret,
    /// prefix of /quota, /quota/delta, /quota/refresh
    #[arg(long, env = "AIGATEWAY_MOCK_ADMIN_PATH", default_value = ADMIN_PATH_DEFAULT,
          value_parser = normalize_admin_path)]
    pub admin_path: String,
    /// deltas kept in the /mock/deltas log (oldest dropped beyond)
    #[arg(long, env = "AIGATEWAY_MOCK_MAX_DELTAS", default_value_t = MAX_DELTAS_DEFAULT,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_DELTAS_MAX))]
    pub max_deltas: usize,
    /// log line format (the filter is RUST_LOG, default info)
    #[arg(
        long,
        env = "AIGATEWAY_MOCK_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

fn credential(text: &str) -> Result<Secret, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the credential must not be empty".into());
    }
    Ok(Secret::new(text))
}

/// `/v1/chat/completions/` -> `/v1/chat/completions`; `/` -> `` (endpoints at `/quota...`).
/// Only plain path characters: `{`, `}`, `*`, `:` would be read as route captures.
pub fn normalize_admin_path(text: &str) -> Result<String, String> {
    let text = text.trim();
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c));
    if !text.starts_with('/') || !ok_chars || text.contains("//") {
        return Err(format!(
            "{text:?}: expected a path like /v1/chat/completions"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Logs to stdout: text or JSON lines, filtered by RUST_LOG (default info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("signal received, shutting down");
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    Ok,
    Error,
    Status,
    Stall,
}

/// Body of `POST /mock/fault`. Unknown fields are rejected.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    pub mode: FaultMode,
    /// Required for `status` (200..=599); ignored otherwise (`error` is always 500).
    pub status: Option<u16>,
    /// How many gateway requests the fault covers before the mode returns to `ok` (>= 1);
    /// absent = until changed.
    pub count: Option<u64>,
    /// For `stall`; default 30000, at most 3600000.
    pub stall_ms: Option<u64>,
    /// `Retry-After` seconds on 429 / 503 answers of `status`; default 1.
    pub retry_after_s: Option<u64>,
}

/// What `GET /mock/fault` reports.
#[derive(Clone, Debug, Serialize)]
pub struct FaultView {
    pub mode: FaultMode,
    pub status: Option<u16>,
    /// Requests the fault still covers; null = until changed.
    pub remaining: Option<u64>,
    pub stall_ms: Option<u64>,
    pub retry_after_s: Option<u64>,
    /// Gateway requests answered with a fault (error, status or stall) since start or reset.
    pub faulted: u64,
}

#[derive(Clone, Debug)]
struct Fault {
    mode: FaultMode,
    status: u16,
    remaining: Option<u64>,
    stall_ms: u64,
    retry_after_s: u64,
}

impl Fault {
    fn ok() -> Fault {
        Fault {
            mode: FaultMode::Ok,
            status: 200,
            remaining: None,
            stall_ms: STALL_MS_DEFAULT,
            retry_after_s: RETRY_AFTER_S_DEFAULT,
        }
    }
}

/// One applied delta, as `GET /mock/deltas` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeltaRecord {
    /// 1, 2, ... in order of application (restarts at 1 after `DELETE /mock/deltas`).
    pub seq: u64,
    pub consumer: String,
    pub value: i64,
    pub quota_after: i64,
    /// RFC 3339, when the request arrived.
    pub received_at: String,
    /// RFC 3339, when it was applied (later than received_at for a stalled one).
    pub applied_at: String,
    pub idempotency_key: Option<String>,
    pub stalled: bool,
}

struct Inner {
    quotas: HashMap<String, i64>,
    deltas: VecDeque<DeltaRecord>,
    dropped: u64,
    seq: u64,
    fault: Fault,
    faulted: u64,
}

struct Shared {
    credential: Secret,
    admin_path: String,
    max_deltas: usize,
    max_consumers: usize,
    inner: Mutex<Inner>,
}

#[derive(Clone)]
pub struct MockState {
    shared: Arc<Shared>,
}

enum Decision {
    Pass,
    Fail { status: u16, retry_after_s: u64 },
    Stall(Duration),
}

#[derive(Debug)]
enum ApplyError {
    TooManyConsumers,
    Overflow,
}

impl MockState {
    pub fn new(credential: &str, admin_path: &str) -> MockState {
        MockState::with_limits(
            credential,
            admin_path,
            MAX_DELTAS_DEFAULT,
            MAX_CONSUMERS_DEFAULT,
        )
    }

    pub fn from_config(config: &MockConfig) -> MockState {
        MockState::with_limits(
            config.credential.expose(),
            &config.admin_path,
            config.max_deltas,
            MAX_CONSUMERS_DEFAULT,
        )
    }

    /// `admin_path` is used as given (see [`normalize_admin_path`]); limits are at least 1.
    pub fn with_limits(
        credential: &str,
        admin_path: &str,
        max_deltas: usize,
        max_consumers: usize,
    ) -> MockState {
        MockState {
            shared: Arc::new(Shared {
                credential: Secret::new(credential),
                admin_path: admin_path.trim_end_matches('/').to_owned(),
                max_deltas: max_deltas.max(1),
                max_consumers: max_consumers.max(1),
                inner: Mutex::new(Inner {
                    quotas: HashMap::new(),
                    deltas: VecDeque::new(),
                    dropped: 0,
                    seq: 0,
                    fault: Fault::ok(),
                    faulted: 0,
                }),
            }),
        }
    }

    pub fn admin_path(&self) -> &str {
        &self.shared.admin_path
    }

    /// A poisoned lock still holds consistent data (every update is a single step).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn quota(&self, consumer: &str) -> i64 {
        self.lock().quotas.get(consumer).copied().unwrap_or(0)
    }

    pub fn deltas(&self) -> Vec<DeltaRecord> {
        self.lock().deltas.iter().cloned().collect()
    }

    pub fn fault(&self) -> FaultView {
        let inner = self.lock();
        fault_view(&inner)
    }

    /// Validates and installs a fault (what `POST /mock/fault` does).
    pub fn set_fault(&self, request: FaultRequest) -> Result<FaultView, String> {
        if request.count == Some(0) {
            return Err("count must be at least 1 (omit it for 'until changed')".into());
        }
        let mut fault = Fault::ok();
        fault.mode = request.mode;
        fault.remaining = request.count;
        match request.mode {
            FaultMode::Ok => fault.remaining = None,
            FaultMode::Error => fault.status = 500,
            FaultMode::Status => match request.status {
                Some(s) if (200..=599).contains(&s) => fault.status = s,
                Some(s) => return Err(format!("status {s} is not in 200..=599")),
                None => return Err("mode 'status' needs a status".into()),
            },
            FaultMode::Stall => {
                let ms = request.stall_ms.unwrap_or(STALL_MS_DEFAULT);
                if ms > STALL_MS_MAX {
                    return Err(format!("stall_ms must be at most {STALL_MS_MAX}"));
                }
                fault.stall_ms = ms;
            }
        }
        if let Some(s) = request.retry_after_s {
            if s > 86_400 {
                return Err("retry_after_s must be at most 86400".into());
            }
            fault.retry_after_s = s;
        }
        let mut inner = self.lock();
        inner.fault = fault;
        tracing::info!(fault = ?inner.fault, "fault set");
        Ok(fault_view(&inner))
    }

    /// Clears the log, the counters and every quota; the fault stays.
    pub fn reset(&self) -> usize {
        let mut inner = self.lock();
        let cleared = inner.deltas.len();
        inner.deltas.clear();
        inner.quotas.clear();
        inner.dropped = 0;
        inner.seq = 0;
        inner.faulted = 0;
        cleared
    }

    /// Consumes one unit of the fault, if any.
    fn take_fault(&self) -> Decision {
        let mut inner = self.lock();
        let fault = inner.fault.clone();
        let decision = match fault.mode {
            FaultMode::Ok => return Decision::Pass,
            FaultMode::Error | FaultMode::Status => Decision::Fail {
                status: fault.status,
                retry_after_s: fault.retry_after_s,
            },
            FaultMode::Stall => Decision::Stall(Duration::from_millis(fault.stall_ms)),
        };
        inner.faulted += 1;
        if let Some(left) = inner.fault.remaining {
            if left <= 1 {
                inner.fault = Fault::ok();
            } else {
                inner.fault.remaining = Some(left - 1);
            }
        }
        decision
    }

    fn apply_delta(
        &self,
        consumer: String,
        value: i64,
        received_at: String,
        idempotency_key: Option<String>,
        stalled: bool,
    ) -> Result<i64, ApplyError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let current = match inner.quotas.get(&consumer) {
            Some(q) => *q,
            None if inner.quotas.len() >= self.shared.max_consumers => {
                return Err(ApplyError::TooManyConsumers)
            }
            None => 0,
        };
        let after = current.checked_add(value).ok_or(ApplyError::Overflow)?;
        inner.quotas.insert(consumer.clone(), after);
        if inner.deltas.len() >= self.shared.max_deltas {
            inner.deltas.pop_front();
            inner.dropped += 1;
        }
        inner.seq += 1;
        let record = DeltaRecord {
            seq: inner.seq,
            consumer,
            value,
            quota_after: after,
            received_at,
            applied_at: now(),
            idempotency_key,
            stalled,
        };
        tracing::info!(
            consumer = %record.consumer,
            value,
            quota = after,
            seq = record.seq,
            key = record.idempotency_key.as_deref().unwrap_or(""),
            stalled,
            "delta applied"
        );
        inner.deltas.push_back(record);
        Ok(after)
    }

    fn apply_refresh(&self, consumer: String, quota: i64) -> Result<i64, ApplyError> {
        let mut inner = self.lock();
        if !inner.quotas.contains_key(&consumer) && inner.quotas.len() >= self.shared.max_consumers
        {
            return Err(ApplyError::TooManyConsumers);
        }
        tracing::info!(consumer = %consumer, quota, "quota refreshed");
        inner.quotas.insert(consumer, quota);
        Ok(quota)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer") && self.shared.credential.matches(token.trim())
    }
}

fn fault_view(inner: &Inner) -> FaultView {
    let f = &inner.fault;
    FaultView {
        mode: f.mode,
        status: match f.mode {
            FaultMode::Error | FaultMode::Status => Some(f.status),
            _ => None,
        },
        remaining: f.remaining,
        stall_ms: (f.mode == FaultMode::Stall).then_some(f.stall_ms),
        retry_after_s: (f.mode == FaultMode::Status).then_some(f.retry_after_s),
        faulted: inner.faulted,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

// ---------------------------------------------------------------------------------------------
// HTTP

pub fn router(state: MockState) -> Router {
    let admin = state.admin_path().to_owned();
    Router::new()
        .route("/health", get(health))
        .route(
            &format!("{admin}/quota/delta"),
            axum::routing::post(quota_delta),
        )
        .route(
            &format!("{admin}/quota/refresh"),
            axum::routing::post(quota_refresh),
        )
        .route(&format!("{admin}/quota"), get(quota_get))
        .route("/mock/deltas", get(deltas_get).delete(deltas_delete))
        .route("/mock/quotas", get(quotas_get))
        .route("/mock/fault", get(fault_get).post(fault_post))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"code": status.as_u16(), "message": message.into()});
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong Authorization: Bearer credential",
    )
}

fn faulted(status: u16, retry_after_s: u64) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::OK {
        // The lying gateway: 200 and nothing applied.
        return (status, Json(json!({"code": 200, "message": "success"}))).into_response();
    }
    let mut response = error(status, "injected fault");
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    }
    response
}

fn apply_error(err: ApplyError) -> Response {
    match err {
        ApplyError::TooManyConsumers => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "the mock holds its maximum number of consumers; DELETE /mock/deltas to reset",
        ),
        ApplyError::Overflow => error(StatusCode::BAD_REQUEST, "quota would overflow i64"),
    }
}

fn success(consumer: &str, quota: i64) -> Response {
    Json(json!({"code": 200, "message": "success", "consumer": consumer, "quota": quota}))
        .into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

/// A required, bounded consumer name.
fn consumer_param(value: Option<String>) -> Result<String, String> {
    match value {
        None => Err("consumer is required".into()),
        Some(c) if c.is_empty() => Err("consumer is required".into()),
        Some(c) if c.chars().count() > CONSUMER_CHARS_MAX => Err(format!(
            "consumer is longer than {CONSUMER_CHARS_MAX} characters"
        )),
        Some(c) => Ok(c),
    }
}

fn integer_param(name: &str, value: Option<String>) -> Result<i64, String> {
    let Some(text) = value else {
        return Err(format!("{name} is required"));
    };
    text.parse::<i64>()
        .map_err(|_| format!("{name} must be an integer, got {text:?}"))
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    ["idempotency-key", "x-request-id"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(256).collect())
    })
}

fn form_error(rejection: FormRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("bad form body: {}", rejection.body_text()),
    )
}

#[derive(Deserialize)]
struct DeltaForm {
    consumer: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct RefreshForm {
    consumer: Option<String>,
    quota: Option<String>,
}

#[derive(Deserialize)]
struct ConsumerQuery {
    consumer: Option<String>,
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn quota_delta(
    State(state): State<MockState>,
    headers: HeaderMap,
    form: Result<Form<DeltaForm>, FormRejection>,
) -> Response {
    let received_at = now();
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let Form(form) = match form {
        Ok(form) => form,
        Err(rejection) => return form_error(rejection),
    };
    let consumer = match consumer_param(form.consumer) {
        Ok(c) => c,
        Err(message) => return bad_request(message),
    };
    let value = match integer_param("value", form.value) {
        Ok(v) => v,
        Err(message) => return bad_request(message),
    };
    let key = idempotency_key(&headers);
    match state.take_fault() {
        Decision::Pass => match state.apply_delta(consumer.clone(), value, received_at, key, false)
        {
            Ok(quota) => success(&consumer, quota),
            Err(err) => apply_error(err),
        },
        Decision::Fail {
            status,
            retry_after_s,
        } => {
            tracing::info!(consumer = %consumer, value, status, "delta refused by injected fault");
            faulted(status, retry_after_s)
        }
        Decision::Stall(wait) => {
            tracing::info!(consumer = %consumer, value, ms = wait.as_millis() as u64, "delta stalled");
            // Its own task: the delta is applied after the stall even when the client has
            // given up and the connection (and this handler) is gone.
            let task_state = state.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                task_state
                    .apply_delta(consumer.clone(), value, received_at, key, true)
                    .map(|quota| (consumer, quota))
            });
            match task.await {
                Ok(Ok((consumer, quota))) => success(&consumer, quota),
                Ok(Err(err)) => apply_error(err),
                Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            }
        }
    }
}

async fn quota_refresh(
    State(state): State<MockState>,
    headers: HeaderMap,
    form: Result<Form<RefreshForm>, FormRejection>,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let Form(form) = match form {
        Ok(form) => form,
        Err(rejection) => return form_error(rejection),
    };
    let consumer = match consumer_param(form.consumer) {
        Ok(c) => c,
        Err(message) => return bad_request(message),
    };
    let quota = match integer_param("quota", form.quota) {
        Ok(v) => v,
        Err(message) => return bad_request(message),
    };
    match state.take_fault() {
        Decision::Pass => match state.apply_refresh(consumer.clone(), quota) {
            Ok(quota) => success(&consumer, quota),
            Err(err) => apply_error(err),
        },
        Decision::Fail {
            status,
            retry_after_s,
        } => faulted(status, retry_after_s),
        Decision::Stall(wait) => {
            let task_state = state.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                task_state
                    .apply_refresh(consumer.clone(), quota)
                    .map(|quota| (consumer, quota))
            });
            match task.await {
                Ok(Ok((consumer, quota))) => success(&consumer, quota),
                Ok(Err(err)) => apply_error(err),
                Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            }
        }
    }
}

async fn quota_get(
    State(state): State<MockState>,
    headers: HeaderMap,
    query: Result<Query<ConsumerQuery>, QueryRejection>,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let Query(query) = match query {
        Ok(q) => q,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}", rejection.body_text()),
            )
        }
    };
    let consumer = match consumer_param(query.consumer) {
        Ok(c) => c,
        Err(message) => return bad_request(message),
    };
    match state.take_fault() {
        Decision::Pass => {}
        Decision::Fail {
            status,
            retry_after_s,
        } => return faulted(status, retry_after_s),
        Decision::Stall(wait) => tokio::time::sleep(wait).await,
    }
    let quota = state.quota(&consumer);
    Json(json!({"quota": quota, "consumer": consumer})).into_response()
}

async fn deltas_get(
    State(state): State<MockState>,
    query: Result<Query<ConsumerQuery>, QueryRejection>,
) -> Response {
    let filter = match query {
        Ok(Query(q)) => q.consumer,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}", rejection.body_text()),
            )
        }
    };
    let inner = state.lock();
    let deltas: Vec<&DeltaRecord> = inner
        .deltas
        .iter()
        .filter(|d| filter.as_deref().is_none_or(|c| d.consumer == c))
        .collect();
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    for key in deltas.iter().filter_map(|d| d.idempotency_key.as_deref()) {
        if !seen.insert(key) && !duplicates.contains(&key) {
            duplicates.push(key);
        }
    }
    Json(json!({
        "deltas": deltas,
        "count": deltas.len(),
        "dropped": inner.dropped,
        "duplicate_keys": duplicates,
    }))
    .into_response()
}

async fn deltas_delete(State(state): State<MockState>) -> Json<Value> {
    let cleared = state.reset();
    tracing::info!(cleared, "log and quotas cleared");
    Json(json!({"cleared": cleared}))
}

async fn quotas_get(State(state): State<MockState>) -> Json<Value> {
    let inner = state.lock();
    Json(json!({"quotas": inner.quotas, "count": inner.quotas.len()}))
}

async fn fault_get(State(state): State<MockState>) -> Json<FaultView> {
    Json(state.fault())
}

async fn fault_post(
    State(state): State<MockState>,
    body: Result<Json<FaultRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad fault body: {}", rejection.body_text()),
            )
        }
    };
    match state.set_fault(request) {
        Ok(view) => Json(view).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `args` without reading the process environment.
    fn cfg(args: &[&str]) -> Result<MockConfig, clap::Error> {
        let command = MockConfig::command().mut_args(|arg| arg.env(None::<&str>));
        let argv = std::iter::once("aigateway-mock").chain(args.iter().copied());
        MockConfig::from_arg_matches(&command.try_get_matches_from(argv)?)
    }

    #[test]
    fn defaults_and_required_credential() {
        assert!(cfg(&[]).is_err());
        assert!(cfg(&["--credential", " "]).is_err());
        let c = cfg(&["--credential", "cred"]).unwrap();
        assert_eq!(c.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(c.admin_path, ADMIN_PATH_DEFAULT);
        assert_eq!(c.max_deltas, MAX_DELTAS_DEFAULT);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.credential.matches("cred"));
        assert!(!format!("{c:?}").contains("cred\""));
    }

    #[test]
    fn admin_path_is_normalised_and_checked() {
        assert_eq!(normalize_admin_path("/a/b/").unwrap(), "/a/b");
        assert_eq!(normalize_admin_path("/").unwrap(), "");
        for bad in ["a/b", "/a/{x}", "/a/*", "/a//b", "/a:b"] {
            assert!(normalize_admin_path(bad).is_err(), "{bad}");
        }
        assert!(cfg(&["--credential", "c", "--listen", "nope"]).is_err());
        assert!(cfg(&["--credential", "c", "--max-deltas", "0"]).is_err());
        assert!(cfg(&["--credential", "c", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn every_option_has_its_environment_variable() {
        let command = MockConfig::command();
        for arg in command.get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert!(env.starts_with("AIGATEWAY_MOCK_"), "{:?}", arg.get_id());
        }
    }
}
