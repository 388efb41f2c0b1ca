//! Request extractors whose rejections are AppError, so a bad body, query or path gets our JSON
//! error body (`{"error":"invalid_json"|"invalid_body"|"invalid_query"|"invalid_path",...}`)
//! instead of axum's plain-text default.

use std::fmt::Display;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;

use crate::error::AppError;

/// A JSON body. The Content-Type header is not required: clients such as `curl -d` send
/// form content types with JSON bodies, and the body is JSON or it is rejected anyway.
pub struct ApiJson<T>(pub T);

/// A JSON body that may be absent (empty): used where parameters may come by query instead.
pub struct OptionalJson<T>(pub Option<T>);

pub struct ApiQuery<T>(pub T);

pub struct ApiPath<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        if is_blank(&bytes) {
            return Err(AppError::InvalidJson(
                "request body is empty; a JSON document is required".into(),
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        if is_blank(&bytes) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|value| OptionalJson(Some(value)))
    }
}

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| AppError::InvalidQuery(rejection.body_text()))
    }
}

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            // A 5xx path rejection means the route and the handler disagree: our bug.
            Err(rejection) if rejection.status().is_server_error() => {
                Err(AppError::Internal(rejection.body_text()))
            }
            Err(rejection) => Err(AppError::InvalidPath(rejection.body_text())),
        }
    }
}

fn body_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge(rejection.body_text())
    } else {
        AppError::InvalidJson(rejection.body_text())
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Syntax errors are `invalid_json`; well-formed JSON of the wrong shape is `invalid_body`.
/// The message names the offending field (`cost_usd: invalid type: string "x", expected f64`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        match inner.classify() {
            Category::Data => AppError::InvalidBody(message),
            Category::Syntax | Category::Eof | Category::Io => AppError::InvalidJson(message),
        }
    })?;
    deserializer
        .end()
        .map_err(|err| AppError::InvalidJson(err.to_string()))?;
    Ok(value)
}

/// An optional query parameter parsed with FromStr; an empty value (`?tier=`) counts as absent,
/// as an HTML form or a client that always sends every key produces one.
pub fn optional_param<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => text.parse::<T>().map(Some).map_err(D::Error::custom),
    }
}

/// A date of a query string (`?from=`, `?since=`): RFC 3339, `YYYY-MM-DD` (midnight UTC) or
/// `YYYY-MM-DD HH:MM:SS` (UTC), read by the extension's own parser (`quota_core::time`), so
/// REST and SQL agree on what a date is. Absent or empty: None; anything else: 400
/// `invalid_query` naming the parameter.
pub fn query_timestamp(
    name: &str,
    text: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, AppError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => quota_core::time::parse_timestamp(name, text)
            .map(Some)
            .map_err(|err| AppError::InvalidQuery(err.message)),
    }
}

/// A boolean query parameter in the spellings clients use (FastAPI accepts the same set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag(pub bool);

impl FromStr for Flag {
    type Err = String;

    fn from_str(text: &str) -> Result<Flag, String> {
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Flag(true)),
            "false" | "0" | "no" | "off" => Ok(Flag(false)),
            _ => Err(format!("expected true or false, got {text:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        user_id: String,
        cost_usd: f64,
        credits: Option<i64>,
    }

    fn parse(text: &str) -> Result<Body, AppError> {
        parse_json(text.as_bytes())
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        for text in [
            "{",
            "{\"user_id\": }",
            "not json",
            "{\"user_id\":\"u\",\"cost_usd\":1} trailing",
            "1e999",
        ] {
            assert!(
                matches!(parse(text), Err(AppError::InvalidJson(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn shape_errors_are_invalid_body_and_name_the_field() {
        let cases = [
            (r#"{"user_id":"u","cost_usd":"0.1"}"#, "cost_usd"),
            (r#"{"user_id":"u"}"#, "cost_usd"),
            (r#"{"user_id":"u","cost_usd":0.1,"credits":1.5}"#, "credits"),
            (
                r#"{"user_id":"u","cost_usd":0.1,"credits":9223372036854775808}"#,
                "credits",
            ),
            (r#"{"user_id":"u","cost_usd":0.1,"bogus":1}"#, "bogus"),
            (r#"[1,2]"#, ""),
        ];
        for (text, field) in cases {
            match parse(text) {
                Err(AppError::InvalidBody(message)) => {
                    assert!(message.contains(field), "{text}: {message}")
                }
                other => panic!("{text}: expected invalid_body, got {other:?}"),
            }
        }
    }

    #[test]
    fn well_formed_body_parses() {
        let body = parse(r#"{"user_id":"u1","cost_usd":0.0123,"credits":null}"#).unwrap();
        assert_eq!(body.user_id, "u1");
        assert_eq!(body.cost_usd, 0.0123);
        assert_eq!(body.credits, None);
    }

    #[test]
    fn query_timestamps_take_the_three_formats() {
        let day = query_timestamp("from", Some("2026-01-02"))
            .unwrap()
            .unwrap();
        let seconds = query_timestamp("from", Some("2026-01-02 00:00:00"))
            .unwrap()
            .unwrap();
        let rfc = query_timestamp("from", Some("2026-01-02T01:00:00+01:00"))
            .unwrap()
            .unwrap();
        assert_eq!(day, seconds);
        assert_eq!(day, rfc);
        assert_eq!(day.to_rfc3339(), "2026-01-02T00:00:00+00:00");
        assert_eq!(query_timestamp("from", None).unwrap(), None);
        assert_eq!(query_timestamp("from", Some(" ")).unwrap(), None);
        match query_timestamp("to", Some("yesterday")) {
            Err(AppError::InvalidQuery(message)) => {
                assert!(message.starts_with("to must be"), "{message}")
            }
            other => panic!("expected invalid_query, got {other:?}"),
        }
    }

    #[test]
    fn flag_accepts_common_spellings() {
        for (text, value) in [
            ("true", true),
            ("1", true),
            ("YES", true),
            ("false", false),
            ("0", false),
            ("off", false),
        ] {
            assert_eq!(text.parse::<Flag>(), Ok(Flag(value)), "{text}");
        }
        assert!("maybe".parse::<Flag>().is_err());
    }
}
