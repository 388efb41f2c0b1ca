//! Reservations (issue 11, seed 003) for other services (X-Service-Token): hold credits before a
//! request, settle what it cost (or release it) after, or consume in one step. Each handler is
//! one quota.* call; the rules (unlimited users, organization quota, expiry, idempotency) are in
//! the extension.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use utoipa::ToSchema;

use super::{shapes, JsonResult};
use crate::auth::ServiceAuth;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiPath};
use crate::{db, AppState};

/// Without `ttl_s` the function's own default applies (the sidecar does not restate it).
pub const SQL_RESERVE: &str = "SELECT to_jsonb(r) \
     FROM quota.reserve($1::text, $2::text, $3::int8, $4::float8, $5::int4, $6::text) r";
pub const SQL_RESERVE_DEFAULT_TTL: &str = "SELECT to_jsonb(r) \
     FROM quota.reserve($1::text, $2::text, $3::int8, $4::float8, access_token => $5::text) r";
pub const SQL_SETTLE: &str = "SELECT to_jsonb(r) FROM quota.settle($1::int8, $2::int8, $3::text) r";
pub const SQL_RELEASE: &str = "SELECT to_jsonb(r) FROM quota.release($1::int8, $2::text) r";
pub const SQL_GET: &str = "SELECT quota.get_reservation($1::int8)";
pub const SQL_CONSUME: &str =
    "SELECT to_jsonb(r) FROM quota.consume($1::text, $2::text, $3::int8, $4::float8, $5::text) r";

/// What the quota refuses, and what a reservation no longer held answers.
const REFUSED_403: &str = "the quota refuses it: insufficient_user_quota (a limited user's \
     wallet), insufficient_org_quota (the organization has no room), org_disabled; nothing written";
const NOT_HELD_409: &str = "reservation_not_held (with its status: settled, released or \
     expired), idempotency_conflict (the operation_id was used with other parameters), in_progress";

/// A hold: `credits`, or `cost_usd` priced like a charge (exactly one of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// Idempotency key, 1..255 visible characters, unique per user.
    pub operation_id: String,
    /// The user.
    pub user_id: String,
    /// Credits to hold (>= 0).
    pub credits: Option<i64>,
    /// Or a USD cost, priced with the user's plan as a charge would be.
    pub cost_usd: Option<f64>,
    /// Seconds until an unsettled hold expires and is returned (1..86400; default 300).
    pub ttl_s: Option<i32>,
    /// The user's access token (flow_...): a limited token is held and debited too.
    pub access_token: Option<String>,
}

/// Hold credits for a request: from the wallet of a limited user, and from the organization of
/// a user who has one (unlimited users too).
///
/// A replay (same operation_id and parameters) answers the first hold field for field.
/// SQL: `quota.reserve(operation_id, user_id, credits, cost_usd, ttl_s)`.
#[utoipa::path(
    post, path = "/api/internal/reservations", tag = "reservations",
    operation_id = "internal_reservation_create",
    request_body = ReserveBody,
    responses(
        (status = 201, description = "the hold (or its replay)", body = shapes::ReservationHeld),
        (status = 403, description = REFUSED_403, body = crate::openapi::ErrorBody),
        (status = 409, description = NOT_HELD_409, body = crate::openapi::ErrorBody),
    ),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_RESERVE, SQL_RESERVE_DEFAULT_TTL]))),
)]
pub async fn reserve(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let row = match &body.ttl_s {
        Some(ttl_s) => {
            let params: [&(dyn ToSql + Sync); 6] = [
                &body.operation_id,
                &body.user_id,
                &body.credits,
                &body.cost_usd,
                ttl_s,
                &body.access_token,
            ];
            db::call_json(&state.pool, SQL_RESERVE, &params).await?
        }
        None => {
            let params: [&(dyn ToSql + Sync); 5] = [
                &body.operation_id,
                &body.user_id,
                &body.credits,
                &body.cost_usd,
                &body.access_token,
            ];
            db::call_json(&state.pool, SQL_RESERVE_DEFAULT_TTL, &params).await?
        }
    };
    Ok((StatusCode::CREATED, Json(row)))
}

/// The request's real cost.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    /// Credits the request really cost (>= 0; may exceed the hold).
    pub actual_credits: i64,
    /// Idempotency key of the settle.
    pub operation_id: String,
}

/// Settle a hold at its real cost: below the hold the rest is returned; above it the wallet pays
/// what it can (never below 0, the rest is `uncollected_credits`) and a postpaid organization
/// may go up to quota + overdraft_limit.
///
/// SQL: `quota.settle(reservation_id, actual_credits, operation_id)`.
#[utoipa::path(
    post, path = "/api/internal/reservations/{reservation_id}/settle", tag = "reservations",
    operation_id = "internal_reservation_settle",
    params(("reservation_id" = i64, Path, description = "the reservation")),
    request_body = SettleBody,
    responses(
        (status = 200, description = "how the reservation ended (or its replay)", body = shapes::ReservationEnded),
        (status = 409, description = NOT_HELD_409, body = crate::openapi::ErrorBody),
    ),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_SETTLE]))),
)]
pub async fn settle(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(reservation_id): ApiPath<i64>,
    ApiJson(body): ApiJson<SettleBody>,
) -> JsonResult {
    let params: [&(dyn ToSql + Sync); 3] =
        [&reservation_id, &body.actual_credits, &body.operation_id];
    db::call_json(&state.pool, SQL_SETTLE, &params)
        .await
        .map(Json)
}

/// The release's idempotency key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// Idempotency key of the release.
    pub operation_id: String,
}

/// Release a hold: nothing is charged, the whole hold returns.
///
/// SQL: `quota.release(reservation_id, operation_id)`.
#[utoipa::path(
    post, path = "/api/internal/reservations/{reservation_id}/release", tag = "reservations",
    operation_id = "internal_reservation_release",
    params(("reservation_id" = i64, Path, description = "the reservation")),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "how the reservation ended (or its replay)", body = shapes::ReservationEnded),
        (status = 409, description = NOT_HELD_409, body = crate::openapi::ErrorBody),
    ),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_RELEASE]))),
)]
pub async fn release(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(reservation_id): ApiPath<i64>,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> JsonResult {
    let params: [&(dyn ToSql + Sync); 2] = [&reservation_id, &body.operation_id];
    db::call_json(&state.pool, SQL_RELEASE, &params)
        .await
        .map(Json)
}

/// A reservation and how it ended.
///
/// SQL: `quota.get_reservation(reservation_id)`.
#[utoipa::path(
    get, path = "/api/internal/reservations/{reservation_id}", tag = "reservations",
    operation_id = "internal_reservation_get",
    params(("reservation_id" = i64, Path, description = "the reservation")),
    responses((status = 200, description = "the reservation", body = shapes::Reservation)),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_GET]))),
)]
pub async fn get(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(reservation_id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_GET, &[&reservation_id])
        .await
        .map(Json)
}

/// A reservation settled at once: `credits`, or `cost_usd` priced like a charge (exactly one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeBody {
    /// Idempotency key, 1..255 visible characters, unique per user.
    pub operation_id: String,
    /// The user.
    pub user_id: String,
    /// Credits to spend (>= 0).
    pub credits: Option<i64>,
    /// Or a USD cost, priced with the user's plan as a charge would be.
    pub cost_usd: Option<f64>,
    /// The user's access token (flow_...): a limited token is debited too.
    pub access_token: Option<String>,
}

/// Spend in one step (a hold settled at its own amount), under the same rules as a reservation.
///
/// SQL: `quota.consume(operation_id, user_id, credits, cost_usd)`.
#[utoipa::path(
    post, path = "/api/internal/consume", tag = "reservations",
    operation_id = "internal_consume",
    request_body = ConsumeBody,
    responses(
        (status = 200, description = "what was spent (or its replay)", body = shapes::ReservationEnded),
        (status = 403, description = REFUSED_403, body = crate::openapi::ErrorBody),
        (status = 409, description = NOT_HELD_409, body = crate::openapi::ErrorBody),
    ),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_CONSUME]))),
)]
pub async fn consume(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ConsumeBody>,
) -> JsonResult {
    let params: [&(dyn ToSql + Sync); 5] = [
        &body.operation_id,
        &body.user_id,
        &body.credits,
        &body.cost_usd,
        &body.access_token,
    ];
    db::call_json(&state.pool, SQL_CONSUME, &params)
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    #[test]
    fn bodies_take_credits_or_cost_and_refuse_unknown_fields() {
        let body: ReserveBody =
            parse_json(br#"{"operation_id":"o","user_id":"u","credits":5,"ttl_s":1}"#).unwrap();
        assert_eq!(body.credits, Some(5));
        assert_eq!(body.cost_usd, None);
        assert_eq!(body.ttl_s, Some(1));
        // Both or neither reach SQL, which decides (22023): the rule lives in one place.
        let body: ReserveBody =
            parse_json(br#"{"operation_id":"o","user_id":"u","credits":5,"cost_usd":0.1}"#)
                .unwrap();
        assert_eq!((body.credits, body.cost_usd), (Some(5), Some(0.1)));
        for text in [
            r#"{"operation_id":"o","user_id":"u","credits":5,"hold":1}"#,
            r#"{"operation_id":"o","user_id":"u","credits":"5"}"#,
            r#"{"user_id":"u","credits":5}"#,
        ] {
            assert!(
                matches!(
                    parse_json::<ReserveBody>(text.as_bytes()),
                    Err(AppError::InvalidBody(_))
                ),
                "{text}"
            );
        }
        assert!(matches!(
            parse_json::<SettleBody>(br#"{"operation_id":"o"}"#),
            Err(AppError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<ReleaseBody>(br#"{"operation_id":"o","credits":1}"#),
            Err(AppError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<ConsumeBody>(br#"{"operation_id":"o","user_id":"u","ttl_s":5}"#),
            Err(AppError::InvalidBody(_))
        ));
    }
}
