//! The request id (`x-request-id`): bounded, generated when absent or unacceptable, and made
//! available to error bodies.
//!
//! A client's id is kept only when it is 1 to [`REQUEST_ID_BYTES_MAX`] bytes of visible ASCII
//! (no space or control character); anything else is dropped by [`drop_unacceptable`] before
//! tower-http's SetRequestIdLayer, which then generates a UUID. So what the sidecar echoes in the
//! response header, the error body and the logs is always short and printable.
//!
//! SetRequestIdLayer puts the id on the request; [`scope_request_id`] keeps a copy in a
//! task-local for the duration of the handler, so `AppError::into_response`, which has no access
//! to the request, can still echo the id in the body.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longer ids are replaced (a UUID is 36; trace ids of common tracers fit in 64).
pub const REQUEST_ID_BYTES_MAX: usize = 128;

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

/// 1 to 128 bytes, each visible ASCII (`!` to `~`).
pub fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= REQUEST_ID_BYTES_MAX
        && bytes.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// Removes a client's `x-request-id` unless it is exactly one acceptable value, so that a fresh
/// id is generated instead.
pub async fn drop_unacceptable(mut request: Request) -> Request {
    let values = request.headers().get_all(&REQUEST_ID_HEADER);
    let mut iter = values.iter();
    let keep = match (iter.next(), iter.next()) {
        (None, _) => true,
        (Some(value), None) => is_acceptable(value),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        tracing::debug!("x-request-id replaced: not 1..128 bytes of visible ASCII");
        request.headers_mut().remove(&REQUEST_ID_HEADER);
    }
    request
}

pub async fn scope_request_id(request: Request, next: Next) -> Response {
    let request_id = from_request(&request).to_owned();
    REQUEST_ID.scope(request_id, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptable_ids_are_short_visible_ascii() {
        for good in [
            "a",
            "req-123",
            "00-0af7651916cd43dd8448eb211c80319c-01",
            "!~{}\"'",
        ] {
            assert!(is_acceptable(&HeaderValue::from_static(good)), "{good}");
        }
        let longest = "x".repeat(REQUEST_ID_BYTES_MAX);
        assert!(is_acceptable(&HeaderValue::from_str(&longest).unwrap()));
        let too_long = "x".repeat(REQUEST_ID_BYTES_MAX + 1);
        assert!(!is_acceptable(&HeaderValue::from_str(&too_long).unwrap()));
        for bad in ["", "a b", "a\tb"] {
            assert!(
                !is_acceptable(&HeaderValue::from_str(bad).unwrap()),
                "{bad:?}"
            );
        }
        let non_ascii = HeaderValue::from_bytes("é".as_bytes()).unwrap();
        assert!(!is_acceptable(&non_ascii));
    }
}
