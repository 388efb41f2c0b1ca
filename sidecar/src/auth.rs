//! Credentials of the three API families, as extractors that run before the body is read.
//! Missing credential: 401. Wrong credential, or the API disabled by configuration: 403.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use crate::config::Secret;
use crate::error::{AppError, SqlClass};
use crate::{db, AppState};

/// Recorded as the actor of admin changes in quota.audit_log.
pub const ADMIN_ACTOR: &str = "admin-api";
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";
/// Longer credentials are refused without a database round trip (`pq_` + 64 hex is 67).
pub const TOKEN_BYTES_MAX: usize = 512;

pub const SQL_RESOLVE_API_TOKEN: &str = "SELECT quota.resolve_api_token($1::text)";

/// Proof that the request carried the admin token.
pub struct AdminAuth;

/// Proof that the request carried the service token (internal API).
pub struct ServiceAuth;

/// The user owning the presented API token (public API).
pub struct UserAuth {
    pub user_id: String,
}

/// Proof that the request carried the admin token or the service token (a token consume on
/// behalf of a caller).
pub struct AdminOrServiceAuth;

/// Who asks for usage statistics (`GET /api/v1/stats/usage`): an operator (the admin or the
/// service token: every user, or one named by `?user_id=`), or a user by their API token (their
/// own usage only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsCaller {
    Operator,
    User(String),
}

/// Seed 001's access tokens start with this (`flow_` + 64 hex).
pub const ACCESS_TOKEN_PREFIX: &str = "flow_";

/// The access token a caller presents as `Authorization: Bearer flow_...` (`/flow/verify`). Never
/// rejects: a request without one is answered by the handler (401 `unknown_token`).
pub enum AccessTokenBearer {
    /// Could be one of our tokens: the extension decides (it may still be unknown).
    Candidate(String),
    /// No bearer credential, or one that cannot be an access token (another prefix, over
    /// [`TOKEN_BYTES_MAX`], not text): refused without a database call.
    NotAToken,
}

impl AccessTokenBearer {
    pub fn from_headers(headers: &HeaderMap) -> AccessTokenBearer {
        match bearer_token(headers) {
            Ok(Some(token))
                if token.starts_with(ACCESS_TOKEN_PREFIX) && token.len() <= TOKEN_BYTES_MAX =>
            {
                AccessTokenBearer::Candidate(token.to_owned())
            }
            _ => AccessTokenBearer::NotAToken,
        }
    }
}

/// The text of a header, None when absent. A header that is not visible ASCII cannot be a
/// token we issued, so it is reported as malformed.
fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AppError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim())),
            Ok(_) => Err(AppError::Unauthorized(format!("{name} header is empty"))),
            Err(_) => Err(AppError::Unauthorized(format!(
                "{name} header is not valid text"
            ))),
        },
    }
}

/// `Authorization: Bearer <token>`: None when the header is absent, 401 when it is present but
/// not a bearer credential (the scheme is case-insensitive, RFC 7235).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AppError> {
    let Some(value) = header_text(headers, header::AUTHORIZATION.as_str())? else {
        return Ok(None);
    };
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AppError::Unauthorized(
            "Authorization header must be 'Bearer <token>'".into(),
        )),
    }
}

/// Checks a shared secret. `what` names the API in messages (never the secret).
fn check_shared_secret(
    presented: Option<&str>,
    expected: Option<&Secret>,
    what: &str,
    how: &str,
) -> Result<(), AppError> {
    let Some(expected) = expected else {
        return Err(AppError::Forbidden(format!("{what} is not configured")));
    };
    let Some(presented) = presented else {
        return Err(AppError::Unauthorized(format!("{what} requires {how}")));
    };
    if presented.len() <= TOKEN_BYTES_MAX && expected.matches(presented) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!("invalid {what} token")))
    }
}

/// Admin: `X-Admin-Token` when present, else `Authorization: Bearer`.
pub fn check_admin(headers: &HeaderMap, expected: Option<&Secret>) -> Result<(), AppError> {
    let presented = match header_text(headers, ADMIN_TOKEN_HEADER)? {
        Some(token) => Some(token),
        None => bearer_token(headers)?,
    };
    check_shared_secret(
        presented,
        expected,
        "admin API",
        "Authorization: Bearer <admin token> or X-Admin-Token",
    )
}

pub fn check_service(headers: &HeaderMap, expected: Option<&Secret>) -> Result<(), AppError> {
    let presented = header_text(headers, SERVICE_TOKEN_HEADER)?;
    check_shared_secret(presented, expected, "internal API", "X-Service-Token")
}

/// The service token when `X-Service-Token` is present, else the admin token. Missing both: 401.
pub fn check_admin_or_service(
    headers: &HeaderMap,
    admin: Option<&Secret>,
    service: Option<&Secret>,
) -> Result<(), AppError> {
    if headers.contains_key(SERVICE_TOKEN_HEADER) {
        return check_service(headers, service);
    }
    let has_admin_credential =
        headers.contains_key(ADMIN_TOKEN_HEADER) || headers.contains_key(header::AUTHORIZATION);
    if !has_admin_credential {
        return Err(AppError::Unauthorized(
            "requires Authorization: Bearer <admin token>, X-Admin-Token or X-Service-Token".into(),
        ));
    }
    check_admin(headers, admin)
}

/// `GET /metrics`: open when no token is configured, else `Authorization: Bearer <token>`
/// (missing 401, wrong 403, compared in constant time).
pub fn check_metrics(headers: &HeaderMap, expected: Option<&Secret>) -> Result<(), AppError> {
    if expected.is_none() {
        return Ok(());
    }
    check_shared_secret(
        bearer_token(headers)?,
        expected,
        "metrics endpoint",
        "Authorization: Bearer <metrics token>",
    )
}

/// The user owning an API token, or 403.
async fn resolve_user(state: &AppState, token: &str) -> Result<String, AppError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(AppError::Forbidden("invalid API token".into()));
    }
    match db::call_opt::<String>(&state.pool, SQL_RESOLVE_API_TOKEN, &[&token]).await {
        Ok(Some(user_id)) => Ok(user_id),
        Ok(None) => Err(AppError::Forbidden("invalid or revoked API token".into())),
        // A token the extension finds malformed is a wrong credential, not a bad request.
        Err(AppError::Sql(sql)) if sql.class() == SqlClass::BadRequest => {
            Err(AppError::Forbidden("invalid API token".into()))
        }
        Err(other) => Err(other),
    }
}

/// How a stats request authenticates, decided from its headers alone: `X-Service-Token` or
/// `X-Admin-Token` is an operator (checked as such); a bearer equal to the admin token is an
/// operator; any other bearer is a user API token (resolved in the database).
#[derive(Debug, PartialEq, Eq)]
pub enum StatsCredential<'h> {
    Operator,
    UserToken(&'h str),
}

pub fn stats_credential<'h>(
    headers: &'h HeaderMap,
    admin: Option<&Secret>,
    service: Option<&Secret>,
) -> Result<StatsCredential<'h>, AppError> {
    if headers.contains_key(SERVICE_TOKEN_HEADER) {
        return check_service(headers, service).map(|()| StatsCredential::Operator);
    }
    if headers.contains_key(ADMIN_TOKEN_HEADER) {
        return check_admin(headers, admin).map(|()| StatsCredential::Operator);
    }
    let token = bearer_token(headers)?.ok_or_else(|| {
        AppError::Unauthorized(
            "requires Authorization: Bearer <api token or admin token>, X-Admin-Token or \
             X-Service-Token"
                .into(),
        )
    })?;
    if admin.is_some_and(|admin| token.len() <= TOKEN_BYTES_MAX && admin.matches(token)) {
        return Ok(StatsCredential::Operator);
    }
    Ok(StatsCredential::UserToken(token))
}

impl FromRequestParts<AppState> for StatsCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        match stats_credential(
            &parts.headers,
            state.config.admin_token.as_ref(),
            state.config.service_token.as_ref(),
        )? {
            StatsCredential::Operator => Ok(StatsCaller::Operator),
            StatsCredential::UserToken(token) => {
                let token = token.to_owned();
                resolve_user(state, &token).await.map(StatsCaller::User)
            }
        }
    }
}

impl FromRequestParts<AppState> for AdminOrServiceAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        check_admin_or_service(
            &parts.headers,
            state.config.admin_token.as_ref(),
            state.config.service_token.as_ref(),
        )
        .map(|()| AdminOrServiceAuth)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AccessTokenBearer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(AccessTokenBearer::from_headers(&parts.headers))
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        check_admin(&parts.headers, state.config.admin_token.as_ref()).map(|()| AdminAuth)
    }
}

impl FromRequestParts<AppState> for ServiceAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        check_service(&parts.headers, state.config.service_token.as_ref()).map(|()| ServiceAuth)
    }
}

impl FromRequestParts<AppState> for UserAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer_token(&parts.headers)?.ok_or_else(|| {
            AppError::Unauthorized("requires Authorization: Bearer <api token>".into())
        })?;
        let token = token.to_owned();
        resolve_user(state, &token)
            .await
            .map(|user_id| UserAuth { user_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn status(result: Result<(), AppError>) -> u16 {
        match result {
            Ok(()) => 200,
            Err(err) => err.status().as_u16(),
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers(&[])).unwrap(), None);
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer  abc ")])).unwrap(),
            Some("abc")
        );
        for bad in ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "abc", ""] {
            let err = bearer_token(&headers(&[("authorization", bad)])).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
        }
    }

    #[test]
    fn admin_missing_is_401_wrong_is_403_right_is_ok() {
        let admin = Some(Secret::new("adm-secret"));
        let admin = admin.as_ref();
        assert_eq!(status(check_admin(&headers(&[]), admin)), 401);
        assert_eq!(
            status(check_admin(
                &headers(&[("authorization", "Bearer nope")]),
                admin
            )),
            403
        );
        assert_eq!(
            status(check_admin(&headers(&[("x-admin-token", "nope")]), admin)),
            403
        );
        assert_eq!(
            status(check_admin(
                &headers(&[("authorization", "Bearer adm-secret")]),
                admin
            )),
            200
        );
        assert_eq!(
            status(check_admin(
                &headers(&[("x-admin-token", "adm-secret")]),
                admin
            )),
            200
        );
        assert_eq!(
            status(check_admin(
                &headers(&[("authorization", "Token adm-secret")]),
                admin
            )),
            401
        );
    }

    #[test]
    fn unconfigured_api_is_403_even_with_a_credential() {
        assert_eq!(status(check_admin(&headers(&[]), None)), 403);
        assert_eq!(
            status(check_admin(&headers(&[("x-admin-token", "x")]), None)),
            403
        );
        assert_eq!(
            status(check_service(&headers(&[("x-service-token", "x")]), None)),
            403
        );
    }

    #[test]
    fn service_token_is_only_read_from_its_header() {
        let service = Some(Secret::new("svc"));
        let service = service.as_ref();
        assert_eq!(status(check_service(&headers(&[]), service)), 401);
        assert_eq!(
            status(check_service(
                &headers(&[("authorization", "Bearer svc")]),
                service
            )),
            401
        );
        assert_eq!(
            status(check_service(
                &headers(&[("x-service-token", "svc2")]),
                service
            )),
            403
        );
        assert_eq!(
            status(check_service(
                &headers(&[("x-service-token", "svc")]),
                service
            )),
            200
        );
    }

    #[test]
    fn admin_or_service_takes_either() {
        let admin = Some(Secret::new("adm"));
        let service = Some(Secret::new("svc"));
        let check = |pairs: &[(&'static str, &'static str)]| {
            status(check_admin_or_service(
                &headers(pairs),
                admin.as_ref(),
                service.as_ref(),
            ))
        };
        assert_eq!(check(&[]), 401);
        assert_eq!(check(&[("x-service-token", "svc")]), 200);
        assert_eq!(check(&[("authorization", "Bearer adm")]), 200);
        assert_eq!(check(&[("x-admin-token", "adm")]), 200);
        assert_eq!(check(&[("x-service-token", "adm")]), 403);
        assert_eq!(check(&[("authorization", "Bearer svc")]), 403);
        assert_eq!(
            check(&[
                ("authorization", "Bearer flow_0123"),
                ("x-service-token", "svc")
            ]),
            200
        );
    }

    #[test]
    fn access_token_bearer_keeps_only_what_can_be_a_token() {
        let candidate =
            |pairs: &[(&'static str, &'static str)]| match AccessTokenBearer::from_headers(
                &headers(pairs),
            ) {
                AccessTokenBearer::Candidate(token) => Some(token),
                AccessTokenBearer::NotAToken => None,
            };
        assert_eq!(candidate(&[]), None);
        assert_eq!(candidate(&[("authorization", "Bearer adm")]), None);
        assert_eq!(candidate(&[("authorization", "Basic Zmxvd186eA==")]), None);
        assert_eq!(candidate(&[("authorization", "Bearer FLOW_ab")]), None);
        assert_eq!(
            candidate(&[("authorization", "bearer flow_ab")]).as_deref(),
            Some("flow_ab")
        );
        let long: &'static str =
            Box::leak(format!("Bearer flow_{}", "a".repeat(600)).into_boxed_str());
        assert_eq!(candidate(&[("authorization", long)]), None);
    }

    #[test]
    fn metrics_are_open_unless_a_token_is_configured() {
        assert_eq!(status(check_metrics(&headers(&[]), None)), 200);
        assert_eq!(
            status(check_metrics(
                &headers(&[("authorization", "Bearer x")]),
                None
            )),
            200
        );
        let token = Some(Secret::new("scrape"));
        let token = token.as_ref();
        assert_eq!(status(check_metrics(&headers(&[]), token)), 401);
        assert_eq!(
            status(check_metrics(
                &headers(&[("authorization", "Bearer nope")]),
                token
            )),
            403
        );
        assert_eq!(
            status(check_metrics(
                &headers(&[("x-admin-token", "scrape")]),
                token
            )),
            401
        );
        assert_eq!(
            status(check_metrics(
                &headers(&[("authorization", "Bearer scrape")]),
                token
            )),
            200
        );
    }

    #[test]
    fn stats_callers_are_operators_or_user_tokens() {
        let admin = Some(Secret::new("adm"));
        let service = Some(Secret::new("svc"));
        let credential = |pairs: &[(&'static str, &'static str)]| {
            let map = headers(pairs);
            stats_credential(&map, admin.as_ref(), service.as_ref())
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(credential(&[]), Err(401));
        assert_eq!(
            credential(&[("x-service-token", "svc")]),
            Ok("Operator".into())
        );
        assert_eq!(credential(&[("x-service-token", "nope")]), Err(403));
        assert_eq!(
            credential(&[("x-admin-token", "adm")]),
            Ok("Operator".into())
        );
        assert_eq!(credential(&[("x-admin-token", "nope")]), Err(403));
        assert_eq!(
            credential(&[("authorization", "Bearer adm")]),
            Ok("Operator".into())
        );
        assert_eq!(
            credential(&[("authorization", "Bearer pq_user")]),
            Ok("UserToken(\"pq_user\")".into())
        );
        assert_eq!(credential(&[("authorization", "Basic x")]), Err(401));
    }

    #[test]
    fn messages_never_echo_the_secret() {
        let admin = Some(Secret::new("adm-secret"));
        let err =
            check_admin(&headers(&[("x-admin-token", "adm-secreT")]), admin.as_ref()).unwrap_err();
        let body = serde_json::Value::Object(err.body()).to_string();
        assert!(
            !body.contains("adm-secret") && !body.contains("adm-secreT"),
            "{body}"
        );
    }
}
