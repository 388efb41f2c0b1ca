//! The request id (`x-request-id`) made available to error bodies.
//!
//! tower-http's SetRequestIdLayer puts the id on the request; this middleware keeps a copy in a
//! task-local for the duration of the handler, so `AppError::into_response`, which has no access
//! to the request, can still echo the id in the body.

use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::Response;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, when called inside `scope_request_id`.
pub fn current() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.clone())
        .ok()
        .filter(|id| !id.is_empty())
}

pub fn from_request<B>(request: &axum::http::Request<B>) -> &str {
    request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

pub async fn scope_request_id(request: Request, next: Next) -> Response {
    let request_id = from_request(&request).to_owned();
    REQUEST_ID.scope(request_id, next.run(request)).await
}
