//! The route table: every endpoint with its description and handler. `crate::app` builds the
//! router from it and `crate::openapi` the document, so the two always agree.

pub mod admin;
pub mod executions;
pub mod health;
pub mod internal;
pub mod public;
pub mod strategies;
pub mod users;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, Uri};
use axum::routing::{on, MethodRouter};
use axum::Json;
use serde_json::Value;

use crate::error::AppError;
use crate::openapi::RouteDoc;
use crate::AppState;

pub type JsonResult = Result<Json<Value>, AppError>;

/// Request bodies are small JSON documents; only the user import carries many records.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

pub struct Route {
    pub doc: RouteDoc,
    pub method_router: MethodRouter<AppState>,
}

/// The method filter comes from the description, so the router and the document cannot differ.
fn route<H, T>(doc: RouteDoc, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        doc,
        method_router: on(doc.method.filter(), handler),
    }
}

impl Route {
    fn body_limit(mut self, bytes_max: usize) -> Route {
        self.method_router = self.method_router.layer(DefaultBodyLimit::max(bytes_max));
        self
    }
}

pub fn table() -> Vec<Route> {
    vec![
        route(health::HEALTH, health::health),
        route(health::OPENAPI, health::openapi_json),
        // Internal API (X-Service-Token), SPEC 2.
        route(internal::CHECK, internal::check),
        route(internal::CALCULATE, internal::calculate),
        route(internal::CHARGE, internal::charge),
        route(internal::ADD, internal::add),
        route(internal::BALANCE, internal::balance),
        route(internal::SUBSCRIPTION_UPDATE, internal::subscription_update),
        // Public API (user bearer), SPEC 2.
        route(public::SUBSCRIPTION, public::subscription),
        route(public::TRANSACTIONS, public::transactions),
        route(public::PURCHASE, public::purchase),
        route(public::PLANS, public::plans),
        // Admin API, SPEC 2.
        route(admin::PLAN_CREATE, admin::plan_create),
        route(admin::PLAN_UPDATE, admin::plan_update),
        route(admin::PLAN_DELETE, admin::plan_delete),
        route(admin::PLAN_LIST, admin::plan_list),
        route(admin::PLAN_MULTIPLIER, admin::plan_multiplier),
        route(admin::PLAN_PURCHASE_RATE, admin::plan_purchase_rate),
        route(admin::EXCHANGE_RATE, admin::exchange_rate),
        route(admin::STATISTICS, admin::statistics),
        // Admin users and API tokens (contract).
        route(users::CREATE, users::create),
        route(users::LIST, users::list),
        route(users::GET, users::get),
        route(users::UPDATE, users::update),
        route(users::IMPORT, users::import).body_limit(users::IMPORT_BODY_BYTES_MAX),
        route(users::TOKEN_ISSUE, users::token_issue),
        route(users::TOKEN_REVOKE, users::token_revoke),
        // Recharge strategies (seed 000, SPEC 6.6).
        route(strategies::CREATE, strategies::create),
        route(strategies::LIST, strategies::list),
        route(strategies::SCAN, strategies::scan),
        route(strategies::GET, strategies::get),
        route(strategies::UPDATE, strategies::update),
        route(strategies::DELETE, strategies::delete),
        route(strategies::ENABLE, strategies::enable),
        route(strategies::DISABLE, strategies::disable),
        route(strategies::EXECUTIONS, strategies::executions),
        route(strategies::PREVIEW, strategies::preview),
        route(executions::RETRY, executions::retry),
        route(executions::CONFIRM, executions::confirm),
    ]
}

pub async fn not_found(method: Method, uri: Uri) -> AppError {
    AppError::RouteNotFound(format!("no route for {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
