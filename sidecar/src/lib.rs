//! quota-sidecar: the REST face of the pg_quota extension.
//!
//! Every endpoint is one call to a `quota.*` SQL function; the rules live in the extension so
//! that SQL callers and HTTP callers get the same behaviour. This crate does authentication,
//! JSON parsing, the SQL call, the SQLSTATE -> HTTP mapping (error.rs), logging and shutdown.

pub mod aigateway_mock;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod logging;
pub mod openapi;
pub mod relay;
pub mod shutdown;
pub mod request_id;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{middleware, Router};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;

use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub pool: deadpool_postgres::Pool,
    pub config: Arc<Config>,
}

impl AppState {
    /// The pool connects lazily, so this succeeds without a reachable database.
    pub fn new(config: Config) -> Result<AppState, config::ConfigError> {
        let pool = db::build_pool(&config)?;
        Ok(AppState {
            pool,
            config: Arc::new(config),
        })
    }
}

/// The whole HTTP service: routes from routes::table(), plus request id, tracing and timeout.
pub fn app(state: AppState) -> Router {
    let request_timeout = Duration::from_secs(state.config.request_timeout_s);
    let mut router = Router::new();
    for route in routes::table() {
        router = router.route(route.doc.path, route.method_router);
    }
    router
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Routes that need more (the user import) set their own limit, which takes precedence.
        .layer(DefaultBodyLimit::max(routes::BODY_BYTES_MAX))
        .layer(
            // Outermost first: the id exists before the span is made, and the timeout covers
            // everything the handler does.
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(logging::trace_layer())
                .layer(PropagateRequestIdLayer::x_request_id())
                // 503, not 408: a request that ran out of time was waiting on the database,
                // not on a slow client.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    request_timeout,
                ))
                .layer(middleware::from_fn(request_id::scope_request_id)),
        )
        .with_state(state)
}
