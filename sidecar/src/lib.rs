//! quota-sidecar: the REST face of the pg_quota extension.
//!
//! Every endpoint is one call to a `quota.*` SQL function; the rules live in the extension so
//! that SQL callers and HTTP callers get the same behaviour. This crate does authentication,
//! JSON parsing, the SQL call, the SQLSTATE -> HTTP mapping (error.rs), logging and shutdown.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod request_id;
pub mod routes;
pub mod serve;
pub mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::config::Config;
use crate::error::AppError;

#[derive(Clone)]
pub struct AppState {
    pub pool: deadpool_postgres::Pool,
    pub config: Arc<Config>,
    /// What this sidecar's relay has done (for /health).
    pub relay: Arc<relay::RelayStats>,
    /// The sidecar's own Prometheus registry (GET /metrics); the relay counts into it too.
    pub metrics: Arc<metrics::Metrics>,
}

impl AppState {
    /// The pool connects lazily, so this succeeds without a reachable database.
    pub fn new(config: Config) -> Result<AppState, config::ConfigError> {
        let pool = db::build_pool(&config)?;
        let metrics = Arc::new(metrics::Metrics::new());
        Ok(AppState {
            pool,
            config: Arc::new(config),
            relay: Arc::new(relay::RelayStats::new(metrics.clone())),
            metrics,
        })
    }
}

/// The whole HTTP service: routes from routes::router(), plus request id, tracing and timeout.
pub fn app(state: AppState) -> Router {
    let request_timeout = state.config.request_timeout;
    let metrics = state.metrics.clone();
    let (router, _) = routes::router().split_for_parts();
    router
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Routes that need more (the user import) set their own limit, which takes precedence.
        .layer(DefaultBodyLimit::max(routes::BODY_BYTES_MAX))
        .layer(
            // Outermost first: the id is checked and exists before the span is made, and the
            // deadline covers everything the handler does.
            // The metrics see every answer, its matched route (routing ran before these
            // layers, which wrap each route) and its whole latency.
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(metrics, metrics::track))
                .layer(middleware::map_request(request_id::drop_unacceptable))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(logging::trace_layer())
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::from_fn(request_id::scope_request_id))
                .layer(middleware::from_fn_with_state(request_timeout, deadline)),
        )
        .with_state(state)
}

/// The request timeout. tower-http's TimeoutLayer answers with an empty body; this one answers
/// our JSON error. Dropping the handler's future at the deadline cancels its SQL statement
/// (db::call_opt), so a timed-out charge does not commit later.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::Timeout(timeout).into_response(),
    }
}
