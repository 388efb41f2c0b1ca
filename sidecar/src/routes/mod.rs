//! Every endpoint, registered once with utoipa-axum: `routes::router()` yields both the axum
//! router (`crate::app`) and the OpenAPI document (`crate::openapi`), so the two always agree.

pub mod admin;
pub mod executions;
pub mod flow;
pub mod health;
pub mod internal;
pub mod organizations;
pub mod pool_shapes;
pub mod pools;
pub mod public;
pub mod reservations;
pub mod shapes;
pub mod stats;
pub mod strategies;
pub mod users;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::Json;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::AppError;
use crate::openapi::ApiDoc;
use crate::AppState;

pub type JsonResult = Result<Json<Value>, AppError>;

/// Request bodies are small JSON documents; only the user import carries many records.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    // Seed 004's routes answer 422 for invalid input (see `error::seed004_statuses`).
    let seed004 = || axum::middleware::from_fn(crate::error::seed004_statuses);
    // Seed 001's token API answers in its envelope, errors too; the token checks answer
    // `valid: false` (see `error::ErrorShape`).
    let envelope = || axum::middleware::from_fn(crate::error::flow_envelope);
    let checks = || axum::middleware::from_fn(crate::error::verify_shape);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::openapi_json))
        .routes(routes!(stats::metrics))
        // Seed 004's credit API (SPEC 2): internal (X-Service-Token), public (user bearer) and
        // admin. Its validation failures answer 422, as seed 004's service does.
        .routes(routes!(internal::check).layer(seed004()))
        .routes(routes!(internal::calculate).layer(seed004()))
        .routes(routes!(internal::charge).layer(seed004()))
        .routes(routes!(internal::add).layer(seed004()))
        .routes(routes!(internal::balance).layer(seed004()))
        .routes(routes!(internal::subscription_update).layer(seed004()))
        .routes(routes!(internal::confirm_payment).layer(seed004()))
        .routes(routes!(public::subscription).layer(seed004()))
        .routes(routes!(public::transactions).layer(seed004()))
        .routes(routes!(public::purchase).layer(seed004()))
        .routes(routes!(public::plans).layer(seed004()))
        .routes(routes!(admin::plan_create, admin::plan_list).layer(seed004()))
        .routes(routes!(admin::plan_update, admin::plan_delete).layer(seed004()))
        .routes(routes!(admin::plan_multiplier).layer(seed004()))
        .routes(routes!(admin::plan_purchase_rate).layer(seed004()))
        .routes(routes!(admin::exchange_rate).layer(seed004()))
        .routes(routes!(admin::statistics).layer(seed004()))
        // Admin users and API tokens.
        .routes(routes!(users::create, users::list))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(users::import).layer(DefaultBodyLimit::max(users::IMPORT_BODY_BYTES_MAX)))
        .routes(routes!(users::token_issue))
        .routes(routes!(users::token_revoke))
        // Organizations and reservations (issue 11, seed 003). Not seed 004 routes: invalid
        // input is 400; the quota's refusals are 403 (`error::QUOTA_REFUSALS`).
        .routes(routes!(organizations::create, organizations::list))
        .routes(routes!(
            organizations::get,
            organizations::update,
            organizations::delete
        ))
        .routes(routes!(organizations::users))
        .routes(routes!(organizations::add_quota))
        .routes(routes!(reservations::reserve))
        .routes(routes!(reservations::get))
        .routes(routes!(reservations::settle))
        .routes(routes!(reservations::release))
        .routes(routes!(reservations::consume))
        // Access tokens (issue 12, seed 001, SPEC 4) at the seed's paths.
        .routes(routes!(flow::create, flow::list).layer(envelope()))
        .routes(routes!(flow::update, flow::delete).layer(envelope()))
        .routes(routes!(flow::quota).layer(envelope()))
        .routes(routes!(flow::quota_logs).layer(envelope()))
        .routes(routes!(flow::consume).layer(checks()))
        .routes(routes!(flow::verify).layer(checks()))
        // Recharge strategies (seed 000, SPEC 6.6) and their executions.
        .routes(routes!(strategies::create, strategies::list))
        .routes(routes!(strategies::scan))
        .routes(routes!(
            strategies::get,
            strategies::update,
            strategies::delete
        ))
        .routes(routes!(strategies::enable))
        .routes(routes!(strategies::disable))
        .routes(routes!(strategies::executions))
        .routes(routes!(strategies::preview))
        .routes(routes!(executions::retry))
        .routes(routes!(executions::confirm))
        // Provider account pools (issue 13, seed 002, SPEC 5): admin, admission, statistics.
        .routes(routes!(pools::provider_create, pools::provider_list))
        .routes(routes!(
            pools::provider_get,
            pools::provider_update,
            pools::provider_delete
        ))
        .routes(routes!(
            pools::provider_limit_set,
            pools::provider_limit_remove
        ))
        .routes(routes!(pools::account_create, pools::account_list))
        .routes(routes!(
            pools::account_get,
            pools::account_update,
            pools::account_delete
        ))
        .routes(routes!(pools::account_reset))
        .routes(routes!(pools::alerts))
        .routes(routes!(pools::acquire))
        .routes(routes!(pools::release))
        .routes(routes!(pools::status))
        .routes(routes!(stats::usage))
        .routes(routes!(stats::pool))
        .routes(routes!(stats::quota))
}

pub async fn not_found(method: Method, uri: Uri) -> AppError {
    AppError::RouteNotFound(format!("no route for {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
