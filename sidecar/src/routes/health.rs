//! Open operational endpoints: /health and /openapi.json.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::openapi::{self, AuthKind, HttpMethod, RouteDoc};
use crate::AppState;

pub const SQL_EXTENSION_VERSION: &str =
    "SELECT extversion FROM pg_extension WHERE extname = 'pg_quota'";
pub const SQL_WORKER_STATUS: &str = "SELECT to_jsonb(w) FROM quota.worker_status() w LIMIT 1";

pub const HEALTH: RouteDoc = RouteDoc {
    method: HttpMethod::Get,
    path: "/health",
    auth: AuthKind::Open,
    tag: "system",
    summary: "Database, extension and worker state (503 when the database is unreachable)",
    query: &[],
    body: None,
    success_status: 200,
    response: "{status: ok|degraded, database: ok|error, extension: <version>|null, worker: {pid, state, database, \
               started_at, last_heartbeat, ticks}|null}",
    sql: &[SQL_EXTENSION_VERSION, SQL_WORKER_STATUS],
};

pub const OPENAPI: RouteDoc = RouteDoc {
    path: "/openapi.json",
    summary: "This API as an OpenAPI 3.0 document",
    response: "the OpenAPI document",
    sql: &[],
    ..HEALTH
};

/// `status` is "ok" when the database answers and the extension is installed; the worker state
/// is reported but does not make the sidecar unhealthy (the worker needs
/// shared_preload_libraries, which a SQL-only deployment may not have).
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let unreachable = |cause: String| {
        tracing::warn!(%cause, "health: database unreachable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "degraded", "database": "error", "extension": null, "worker": null}),
            ),
        )
    };
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(err) => return unreachable(err.to_string()),
    };
    let extension: Option<String> = match client.query_opt(SQL_EXTENSION_VERSION, &[]).await {
        Ok(row) => row.and_then(|row| row.try_get(0).ok().flatten()),
        Err(err) => return unreachable(err.to_string()),
    };
    let worker: Option<Value> = match &extension {
        None => None,
        Some(_) => match client.query_opt(SQL_WORKER_STATUS, &[]).await {
            Ok(row) => row.and_then(|row| row.try_get(0).ok().flatten()),
            Err(err) => {
                tracing::warn!(error = %err, "health: quota.worker_status() failed");
                None
            }
        },
    };
    let status = if extension.is_some() {
        "ok"
    } else {
        "degraded"
    };
    (
        StatusCode::OK,
        Json(json!({"status": status, "database": "ok", "extension": extension, "worker": worker})),
    )
}

pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_text(),
    )
}
