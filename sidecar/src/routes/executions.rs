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
use crate::{db, AppState};

pub const SQL_RETRY: &str = "SELECT quota.retry_execution($1::int8)";
pub const SQL_CONFIRM: &str = "SELECT quota.confirm_execution($1::int8)";

/// Queue a failed or unknown execution for delivery to the AiGateway again (400 in another
/// status).
///
/// SQL: `quota.retry_execution(id)`.
#[utoipa::path(
    post, path = "/api/v1/executions/{id}/retry", tag = "strategies",
    operation_id = "execution_retry",
    params(("id" = i64, Path, description = "the execution id")),
    responses((status = 200, description = "the execution, status pending", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_RETRY]))),
)]
pub async fn retry(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_RETRY, &[&id])
        .await
        .map(Json)
}

/// Mark an unknown execution delivered, after checking the AiGateway applied it (400 when it is
/// not unknown).
///
/// SQL: `quota.confirm_execution(id)`.
#[utoipa::path(
    post, path = "/api/v1/executions/{id}/confirm", tag = "strategies",
    operation_id = "execution_confirm",
    params(("id" = i64, Path, description = "the execution id")),
    responses((status = 200, description = "the execution, status completed", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_CONFIRM]))),
)]
pub async fn confirm(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_CONFIRM, &[&id])
        .await
        .map(Json)
}
