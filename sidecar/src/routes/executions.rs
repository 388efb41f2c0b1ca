//! Executions of recharge strategies (SPEC 6.1) that need an operator. Admin-authenticated.
//! - `failed` (the relay gave up on the AiGateway; its ledger credit stays) or `unknown` (sent,
//!   but the gateway never answered, and it does not deduplicate): queued for delivery again.
//! - `unknown`, after checking the gateway applied it: confirmed, i.e. marked `completed`
//!   without another delivery.

use axum::extract::State;
use axum::Json;

use super::JsonResult;
use crate::auth::AdminAuth;
use crate::extract::ApiPath;
use crate::openapi::{AuthKind, HttpMethod, RouteDoc};
use crate::{db, AppState};

pub const SQL_RETRY: &str = "SELECT quota.retry_execution($1::int8)";
pub const SQL_CONFIRM: &str = "SELECT quota.confirm_execution($1::int8)";

pub const RETRY: RouteDoc = RouteDoc {
    method: HttpMethod::Post,
    path: "/api/v1/executions/{id}/retry",
    auth: AuthKind::Admin,
    tag: "strategies",
    summary: "Queue a failed or unknown execution for delivery to the AiGateway again (404 \
              unknown id, 400 in another status)",
    query: &[],
    body: None,
    success_status: 200,
    response: "the execution object, status pending",
    sql: &[SQL_RETRY],
};

pub const CONFIRM: RouteDoc = RouteDoc {
    path: "/api/v1/executions/{id}/confirm",
    summary: "Mark an unknown execution delivered, after checking the AiGateway applied it (404 \
              unknown id, 400 not unknown)",
    response: "the execution object, status completed",
    sql: &[SQL_CONFIRM],
    ..RETRY
};

pub async fn retry(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_RETRY, &[&id])
        .await
        .map(Json)
}

pub async fn confirm(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_CONFIRM, &[&id])
        .await
        .map(Json)
}
