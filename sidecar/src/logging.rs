//! Log output (text or JSON lines) and the per-request span and access log line.

use std::io::IsTerminal;

use axum::body::Body;
use axum::http::Request;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{
    DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnResponse, MakeSpan, TraceLayer,
};
use tower_http::LatencyUnit;
use tracing::{Level, Span};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;
use crate::request_id;

pub const RUST_LOG_DEFAULT: &str = "info";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(RUST_LOG_DEFAULT));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Colour codes only for a terminal: log files and CI output stay plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
    }
}

/// Every line logged while a request is handled carries its method, path and request id. Only
/// the path is recorded: query strings are the caller's data.
#[derive(Clone, Copy)]
pub struct RequestSpan;

impl MakeSpan<Body> for RequestSpan {
    fn make_span(&mut self, request: &Request<Body>) -> Span {
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %redact_path(request.uri().path()),
            request_id = %request_id::from_request(request),
        )
    }
}

/// Shown of an access token in a logged path: `flow_` and 8 hex digits, as its hint.
pub const ACCESS_TOKEN_SHOWN: usize = 13;

/// The path as logged: an access token in it (seed 001's `/flow/tokens/{token}` paths carry one)
/// is cut to its hint (`flow_1a2b3c4d...`), so logs never hold a usable token.
pub fn redact_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(crate::auth::ACCESS_TOKEN_PREFIX) {
        return std::borrow::Cow::Borrowed(path);
    }
    let segments: Vec<String> = path
        .split('/')
        .map(|segment| {
            if segment.starts_with(crate::auth::ACCESS_TOKEN_PREFIX)
                && segment.len() > ACCESS_TOKEN_SHOWN
            {
                let cut = segment
                    .char_indices()
                    .map(|(i, _)| i)
                    .take_while(|i| *i <= ACCESS_TOKEN_SHOWN)
                    .last()
                    .unwrap_or(0);
                format!("{}...", &segment[..cut])
            } else {
                segment.to_owned()
            }
        })
        .collect();
    std::borrow::Cow::Owned(segments.join("/"))
}

/// One INFO line per response (status, latency in ms); 5xx also logged as failures.
pub type RequestTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    (),
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    DefaultOnFailure,
>;

pub fn trace_layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .latency_unit(LatencyUnit::Millis),
        )
        .on_failure(DefaultOnFailure::new().level(Level::ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_in_paths_are_cut_to_their_hint() {
        let token = format!("flow_{}", "0123456789abcdef".repeat(4));
        assert_eq!(
            redact_path(&format!("/flow/tokens/{token}/quota")),
            "/flow/tokens/flow_01234567.../quota"
        );
        assert_eq!(redact_path("/flow/tokens"), "/flow/tokens");
        assert_eq!(redact_path("/flow/tokens/flow_ab"), "/flow/tokens/flow_ab");
        assert_eq!(redact_path("/api/admin/users/u1"), "/api/admin/users/u1");
    }
}
