//! Open operational endpoints: /health and /openapi.json.
//!
//! /health answers 503 (status "degraded") when the sidecar cannot serve: the database is
//! unreachable, or the extension is installed but its library cannot be loaded (a missing or
//! unreadable `pg_quota.so`: every call would fail with 58P01 although the catalog says the
//! extension is there). Conditions that need an operator but not a load balancer (executions
//! whose delivery outcome is unknown, the extension not installed) answer 200 with status
//! "degraded" and the reasons in `problems`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::openapi;
use crate::AppState;

pub const SQL_EXTENSION_VERSION: &str =
    "SELECT extversion FROM pg_extension WHERE extname = 'pg_quota'";
/// A function of the shared library: calling it proves the library loads.
pub const SQL_LIBRARY_VERSION: &str = "SELECT quota.library_version()";
pub const SQL_WORKER_STATUS: &str = "SELECT to_jsonb(w) FROM quota.worker_status() w LIMIT 1";
pub const SQL_RELAY_STATUS: &str = "SELECT to_jsonb(r) FROM quota.relay_status() r LIMIT 1";

/// Database, extension library, worker, relay and alert webhook state.
///
/// 503 when the database is unreachable or the extension's library cannot be loaded; 200 with
/// status "degraded" for what needs an operator (executions with an unknown delivery outcome,
/// the extension not installed).
#[utoipa::path(
    get, path = "/health", tag = "system",
    operation_id = "health",
    responses(
        (status = 200, description = "serving (status ok, or degraded with its problems)", body = Object),
        (status = 503, description = "not serving: database unreachable or library unavailable", body = Object),
    ),
    extensions(("x-sql" = json!([SQL_EXTENSION_VERSION, SQL_LIBRARY_VERSION, SQL_WORKER_STATUS, SQL_RELAY_STATUS]))),
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let unreachable = |cause: String| {
        tracing::warn!(%cause, "health: database unreachable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "degraded",
                "database": "error",
                "extension": null,
                "library": null,
                "worker": null,
                "relay": relay_memory(&state),
                "webhooks": webhooks_memory(&state),
                "problems": ["the database is unreachable"],
            })),
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
    let mut problems: Vec<String> = Vec::new();
    let mut status = StatusCode::OK;
    let mut relay = relay_memory(&state);
    let mut webhooks = webhooks_memory(&state);
    let (library, worker) = if extension.is_none() {
        problems.push("the pg_quota extension is not installed in this database".into());
        (Value::Null, Value::Null)
    } else {
        let library = match client.query_one(SQL_LIBRARY_VERSION, &[]).await {
            Ok(row) => {
                json!({"status": "ok", "version": row.try_get::<_, Option<String>>(0).ok().flatten()})
            }
            Err(err) => {
                let sqlstate = err.as_db_error().map(|db| db.code().code().to_owned());
                // The message names the library file; it is logged, not served.
                tracing::error!(error = %err, "health: the extension's library cannot be loaded");
                status = StatusCode::SERVICE_UNAVAILABLE;
                problems.push(
                    "the extension's library cannot be loaded: every quota.* call fails".into(),
                );
                json!({"status": "unavailable", "version": null, "sqlstate": sqlstate})
            }
        };
        let worker = read_json(&client, SQL_WORKER_STATUS, "quota.worker_status()").await;
        if let Some(Value::Object(mut counts)) =
            read_json(&client, SQL_RELAY_STATUS, "quota.relay_status()").await
        {
            // The alert rows' counts belong to the webhook deliverer.
            if let Value::Object(webhooks) = &mut webhooks {
                for (from, to) in [
                    ("alert_backlog", "backlog"),
                    ("alert_failed", "failed"),
                    ("alerts_last_delivered_at", "last_delivered_at"),
                ] {
                    if let Some(value) = counts.remove(from) {
                        webhooks.insert(to.into(), value);
                    }
                }
            }
            let unknown = counts.get("unknown").and_then(Value::as_i64).unwrap_or(0);
            if unknown > 0 {
                problems.push(format!(
                    "{unknown} recharge execution(s) have an unknown delivery outcome: check the \
                     AiGateway, then confirm or retry each (POST /api/v1/executions/{{id}}/confirm \
                     or /retry)"
                ));
            }
            if let Value::Object(relay) = &mut relay {
                relay.extend(counts);
            }
        }
        (library, worker.unwrap_or(Value::Null))
    };
    let body = json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "database": "ok",
        "extension": extension,
        "library": library,
        "worker": worker,
        "relay": relay,
        "webhooks": webhooks,
        "problems": problems,
    });
    (status, Json(body))
}

/// What this sidecar's relay knows without the database.
fn relay_memory(state: &AppState) -> Value {
    let gateway = state.config.relay.gateway.as_ref();
    json!({
        "gateway": gateway.is_some(),
        "idempotent": gateway.is_some_and(|g| g.idempotent),
        "last_delivery_at": state.relay.last_delivery_at(),
        "deliveries": state.relay.deliveries(),
        "marked_unknown": state.relay.unknown(),
    })
}

/// What this sidecar's alert webhook deliverer knows without the database (the database adds
/// `backlog`, `failed` and `last_delivered_at` from `quota.relay_status()`).
fn webhooks_memory(state: &AppState) -> Value {
    let urls = state.config.relay.alert_webhooks.len();
    json!({
        "configured": urls > 0,
        "urls": urls,
        "last_success_at": state.relay.alerts_last_success_at(),
        "deliveries": state.relay.alerts_delivered(),
        "backlog": null,
        "failed": null,
        "last_delivered_at": null,
    })
}

/// A one-row JSON read; a failure is logged and reported as absent (the worker and relay
/// counts are information, not a reason to take the sidecar out of service).
async fn read_json(client: &deadpool_postgres::Object, sql: &str, what: &str) -> Option<Value> {
    match client.query_opt(sql, &[]).await {
        Ok(row) => row.and_then(|row| row.try_get(0).ok().flatten()),
        Err(err) => {
            tracing::warn!(error = %err, "health: {what} failed");
            None
        }
    }
}

/// This API as an OpenAPI 3.1 document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "system",
    operation_id = "openapi",
    responses((status = 200, description = "the OpenAPI document", body = Object)),
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_text(),
    )
}
