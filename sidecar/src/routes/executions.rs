//! Executions of recharge strategies (SPEC 6.1): a `failed` execution (the relay gave up on the
//! AiGateway; its ledger credit stays) is queued for delivery again. Admin-authenticated.

use axum::extract::State;
use axum::Json;

use super::JsonResult;
use crate::auth::AdminAuth;
use crate::extract::ApiPath;
use crate::openapi::{AuthKind, HttpMethod, RouteDoc};
use crate::{db, AppState};

pub const SQL_RETRY: &str = "SELECT quota.retry_execution($1::int8)";

pub const RETRY: RouteDoc = RouteDoc {
    method: HttpMethod::Post,
    path: "/api/v1/executions/{id}/retry",
    auth: AuthKind::Admin,
    tag: "strategies",
    summary:
        "Queue a failed execution for delivery to the AiGateway again (404 unknown, 400 not failed)",
    query: &[],
    body: None,
    success_status: 200,
    response: "the execution object, status pending",
    sql: &[SQL_RETRY],
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
