//! Internal API for other services (X-Service-Token): check, calculate, charge, add, balance,
//! subscription update. Each handler is one quota.* call.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::shapes;
use super::JsonResult;
use crate::auth::ServiceAuth;
use crate::error::{self, AppError};
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery};
use crate::{db, AppState};

// The SQL functions return our rows; these statements shape them as seed 004's clients read
// them (`transaction_id` a string, `new_tier` / `new_balance` for the subscription change, the
// balance nested), keeping every column as well.
pub const SQL_CHECK: &str = "SELECT to_jsonb(r) FROM quota.check_credits($1::text, $2::int8) r";
pub const SQL_CALCULATE: &str =
    "SELECT to_jsonb(r) FROM quota.calculate_credits($1::float8, $2::text, $3::text) r";
pub const SQL_CHARGE: &str =
    "SELECT to_jsonb(c) || jsonb_build_object('transaction_id', c.transaction_id::text) \
     FROM quota.charge($1::text, $2::float8, $3::text, $4::text, $5::jsonb) c";
pub const SQL_ADD: &str =
    "SELECT to_jsonb(r) || jsonb_build_object('transaction_id', r.transaction_id::text) \
     FROM quota.add($1::text, $2::float8, $3::text, $4::text, $5::jsonb, $6::text) r";
pub const SQL_BONUS: &str =
    "SELECT to_jsonb(r) || jsonb_build_object('transaction_id', r.transaction_id::text) \
     FROM quota.bonus($1::text, $2::int8, $3::text, $4::text, $5::jsonb) r";
pub const SQL_REFUND: &str =
    "SELECT to_jsonb(r) || jsonb_build_object('transaction_id', r.transaction_id::text) \
     FROM quota.refund($1::text, $2::text, $3::text, $4::int8, $5::text) r";
pub const SQL_BALANCE: &str = "SELECT jsonb_build_object('user_id', r.user_id, \
         'subscription', jsonb_build_object('tier', r.subscription_tier, 'monthly_cost', r.monthly_cost, \
                                            'multiplier', r.multiplier, 'purchase_rate', r.purchase_rate), \
         'credits', jsonb_build_object('balance', r.balance, 'total_earned', r.total_earned, \
                                       'total_spent', r.total_spent)) \
     FROM quota.balance($1::text) r";
pub const SQL_UPDATE_SUBSCRIPTION: &str = "SELECT to_jsonb(r) || jsonb_build_object(\
         'transaction_id', r.transaction_id::text, 'new_tier', r.subscription_tier, 'new_balance', r.balance_after) \
     FROM quota.update_subscription($1::text, $2::text, $3::int8, $4::text) r";
pub const SQL_CONFIRM_PAYMENT: &str =
    "SELECT quota.confirm_payment($1::text, $2::text, $3::float8, $4::text, $5::jsonb)";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// Credits the caller is about to spend; without it, `sufficient` is true.
    #[serde(default, deserialize_with = "optional_param")]
    pub required_credits: Option<i64>,
}

/// Check whether a user has enough credits.
///
/// SQL: `quota.check_credits(user_id, required_credits)`.
#[utoipa::path(
    get, path = "/api/internal/credits/check/{user_id}", tag = "internal",
    operation_id = "internal_credits_check",
    params(("user_id" = String, Path, description = "the user"), CheckQuery),
    responses((status = 200, description = "the balance, whether it covers required_credits, and the plan", body = shapes::CheckResponse)),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_CHECK]))),
)]
pub async fn check(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CheckQuery>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_CHECK, &[&user_id, &query.required_credits])
        .await
        .map(Json)
}

/// The cost to convert, priced with the user's plan or the given tier.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CalculateBody {
    /// Cost in USD.
    pub cost_usd: f64,
    /// Price with this user's plan.
    pub user_id: Option<String>,
    /// Price with this plan tier.
    pub tier: Option<String>,
}

/// Convert a USD cost into credits.
///
/// SQL: `quota.calculate_credits(cost_usd, user_id, tier)`.
#[utoipa::path(
    post, path = "/api/internal/credits/calculate", tag = "internal",
    operation_id = "internal_credits_calculate",
    request_body = CalculateBody,
    responses((status = 200, description = "the credits the cost would be charged", body = shapes::CalculateResponse)),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_CALCULATE]))),
)]
pub async fn calculate(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CalculateBody>,
) -> JsonResult {
    db::call_json(
        &state.pool,
        SQL_CALCULATE,
        &[&body.cost_usd, &body.user_id, &body.tier],
    )
    .await
    .map(Json)
}

/// A charge, idempotent by operation_id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    /// The user to charge.
    pub user_id: String,
    /// Cost in USD, > 0.
    pub cost_usd: f64,
    /// Idempotency key, 1..255 visible characters, unique per user.
    pub operation_id: String,
    /// Ledger description.
    pub description: Option<String>,
    /// Stored with the ledger entry.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Charge credits for a USD cost.
///
/// Insufficient credits answer 200 `{success: false, error: "insufficient_credits", user_id,
/// required_credits, current_balance, deficit}` (seed 004) and record nothing.
/// SQL: `quota.charge(user_id, cost_usd, operation_id, description, metadata)`.
#[utoipa::path(
    post, path = "/api/internal/credits/charge", tag = "internal",
    operation_id = "internal_credits_charge",
    request_body = ChargeBody,
    responses((status = 200, description = "the charge (or its replay), or the insufficient-credits refusal", body = inline(ChargeAnswer))),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_CHARGE]))),
)]
pub async fn charge(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChargeBody>,
) -> JsonResult {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &body.user_id,
        &body.cost_usd,
        &body.operation_id,
        &body.description,
        &body.metadata,
    ];
    match db::call_json(&state.pool, SQL_CHARGE, &params).await {
        Ok(row) => Ok(Json(row)),
        Err(err) => match error::insufficient_credits_reply(&err) {
            Some(refusal) => {
                tracing::info!(user_id = %body.user_id, operation_id = %body.operation_id, "charge refused: insufficient credits");
                Ok(Json(refusal))
            }
            None => Err(err),
        },
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransactionType {
    #[default]
    Add,
    Bonus,
    Refund,
}

/// add needs amount_usd; bonus needs credits; refund needs charge_operation_id (credits
/// optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// The user to credit.
    pub user_id: String,
    /// Idempotency key, 1..255 visible characters, unique per user.
    pub operation_id: String,
    /// add (default) | bonus | refund.
    pub transaction_type: Option<TransactionType>,
    /// add: USD paid, converted with the plan's purchase_rate.
    pub amount_usd: Option<f64>,
    /// bonus: credits granted; refund: credits returned (default: all left).
    pub credits: Option<i64>,
    /// refund: operation_id of the charge to refund.
    pub charge_operation_id: Option<String>,
    /// Ledger description.
    pub description: Option<String>,
    /// add and bonus: stored with the ledger entry.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// add: where the money came from (seed 004); kept in the entry's metadata.
    pub source: Option<String>,
}

/// The SQL call an add body selects, with the arguments each kind takes.
#[derive(Debug, PartialEq)]
pub enum AddCall {
    Add {
        amount_usd: f64,
    },
    Bonus {
        credits: i64,
    },
    Refund {
        charge_operation_id: String,
        credits: Option<i64>,
    },
}

/// Which function the body is for, and whether it carries that function's arguments. This is
/// request-shape checking (a field another kind would take is refused rather than dropped);
/// amounts and ids are validated by the extension.
pub fn add_call(body: &AddBody) -> Result<AddCall, AppError> {
    let kind = body.transaction_type.unwrap_or_default();
    let refuse = |field: &str, what: &str| {
        AppError::InvalidBody(format!(
            "{field} is {what} when transaction_type is {}",
            kind_name(kind)
        ))
    };
    match kind {
        TransactionType::Add => {
            if body.credits.is_some() {
                return Err(refuse("credits", "not accepted"));
            }
            if body.charge_operation_id.is_some() {
                return Err(refuse("charge_operation_id", "not accepted"));
            }
            let amount_usd = body
                .amount_usd
                .ok_or_else(|| refuse("amount_usd", "required"))?;
            Ok(AddCall::Add { amount_usd })
        }
        TransactionType::Bonus => {
            if body.source.is_some() {
                return Err(refuse("source", "not accepted"));
            }
            if body.amount_usd.is_some() {
                return Err(refuse("amount_usd", "not accepted"));
            }
            if body.charge_operation_id.is_some() {
                return Err(refuse("charge_operation_id", "not accepted"));
            }
            let credits = body.credits.ok_or_else(|| refuse("credits", "required"))?;
            Ok(AddCall::Bonus { credits })
        }
        TransactionType::Refund => {
            if body.source.is_some() {
                return Err(refuse("source", "not accepted"));
            }
            if body.amount_usd.is_some() {
                return Err(refuse("amount_usd", "not accepted"));
            }
            // quota.refund takes no metadata; dropping it silently would lose the caller's data.
            if body.metadata.is_some() {
                return Err(refuse("metadata", "not accepted"));
            }
            let charge_operation_id = body
                .charge_operation_id
                .clone()
                .ok_or_else(|| refuse("charge_operation_id", "required"))?;
            Ok(AddCall::Refund {
                charge_operation_id,
                credits: body.credits,
            })
        }
    }
}

fn kind_name(kind: TransactionType) -> &'static str {
    match kind {
        TransactionType::Add => "add",
        TransactionType::Bonus => "bonus",
        TransactionType::Refund => "refund",
    }
}

/// Add, grant (bonus) or refund credits.
///
/// SQL: `quota.add`, `quota.bonus` or `quota.refund`, by transaction_type.
#[utoipa::path(
    post, path = "/api/internal/credits/add", tag = "internal",
    operation_id = "internal_credits_add",
    request_body = AddBody,
    responses((status = 200, description = "the ledger entry written (or replayed)", body = shapes::AddResponse)),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_ADD, SQL_BONUS, SQL_REFUND]))),
)]
pub async fn add(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AddBody>,
) -> JsonResult {
    let call = add_call(&body)?;
    let row = match &call {
        AddCall::Add { amount_usd } => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                &body.user_id,
                amount_usd,
                &body.operation_id,
                &body.description,
                &body.metadata,
                &body.source,
            ];
            db::call_json(&state.pool, SQL_ADD, &params).await?
        }
        AddCall::Bonus { credits } => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &body.user_id,
                credits,
                &body.operation_id,
                &body.description,
                &body.metadata,
            ];
            db::call_json(&state.pool, SQL_BONUS, &params).await?
        }
        AddCall::Refund {
            charge_operation_id,
            credits,
        } => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &body.user_id,
                charge_operation_id,
                &body.operation_id,
                credits,
                &body.description,
            ];
            db::call_json(&state.pool, SQL_REFUND, &params).await?
        }
    };
    Ok(Json(row))
}

/// A user's balance and totals.
///
/// SQL: `quota.balance(user_id)`.
#[utoipa::path(
    get, path = "/api/internal/credits/balance/{user_id}", tag = "internal",
    operation_id = "internal_credits_balance",
    params(("user_id" = String, Path, description = "the user")),
    responses((status = 200, description = "the user's balance, totals and plan", body = shapes::BalanceResponse)),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_BALANCE]))),
)]
pub async fn balance(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_BALANCE, &[&user_id])
        .await
        .map(Json)
}

/// A change of plan; the same tier again is 409.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionUpdateBody {
    /// The user.
    pub user_id: String,
    /// The new plan tier.
    pub subscription_tier: String,
    /// Credits granted with the change (>= 0).
    pub credits_to_add: i64,
    /// Idempotency key, 1..255 visible characters, unique per user.
    pub operation_id: String,
}

/// Change a user's subscription tier.
///
/// SQL: `quota.update_subscription(user_id, subscription_tier, credits_to_add, operation_id)`.
#[utoipa::path(
    post, path = "/api/internal/subscription/update", tag = "internal",
    operation_id = "internal_subscription_update",
    request_body = SubscriptionUpdateBody,
    responses((status = 200, description = "the change and the credits added", body = shapes::SubscriptionUpdateResponse)),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_UPDATE_SUBSCRIPTION]))),
)]
pub async fn subscription_update(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SubscriptionUpdateBody>,
) -> JsonResult {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
        &body.user_id,
        &body.subscription_tier,
        &body.credits_to_add,
        &body.operation_id,
    ];
    db::call_json(&state.pool, SQL_UPDATE_SUBSCRIPTION, &params)
        .await
        .map(Json)
}

/// A charge's answer: the charge, or the insufficient-credits refusal (both HTTP 200).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub enum ChargeAnswer {
    Charged(shapes::ChargeResponse),
    Refused(shapes::InsufficientCredits),
}

/// A payment the payment side confirmed: recorded once per (user, payment_id).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// The payment's id at the payment provider, 1..255 visible characters.
    pub payment_id: String,
    /// The user who paid.
    pub user_id: String,
    /// USD paid, > 0, at most 1,000,000.
    pub amount_usd: f64,
    /// The payment method; a purchase that names another one cannot use this payment.
    pub payment_method_id: Option<String>,
    /// Stored with the payment.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Record a confirmed payment, for one purchase to use.
///
/// The payment side calls this once the money is in; `POST /api/v1/credits/purchase` then adds
/// credits only against such a payment of the same user and amount, once. The same payment again
/// answers 200 with the recorded one (`created: false`); with another amount or method, 409.
/// SQL: `quota.confirm_payment(payment_id, user_id, amount_usd, payment_method_id, metadata)`.
#[utoipa::path(
    post, path = "/api/internal/payments", tag = "internal",
    operation_id = "internal_payments_confirm",
    request_body = PaymentBody,
    responses(
        (status = 201, description = "the payment, recorded", body = shapes::PaymentResponse),
        (status = 200, description = "the payment, already recorded (a replay)", body = shapes::PaymentResponse),
    ),
    security(("serviceToken" = [])),
    extensions(("x-sql" = json!([SQL_CONFIRM_PAYMENT]))),
)]
pub async fn confirm_payment(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PaymentBody>,
) -> Result<(axum::http::StatusCode, Json<Value>), AppError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &body.payment_id,
        &body.user_id,
        &body.amount_usd,
        &body.payment_method_id,
        &body.metadata,
    ];
    let row = db::call_json(&state.pool, SQL_CONFIRM_PAYMENT, &params).await?;
    let status = if row["created"] == Value::Bool(true) {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(row)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    fn call(text: &str) -> Result<AddCall, AppError> {
        add_call(&parse_json::<AddBody>(text.as_bytes())?)
    }

    #[test]
    fn add_body_selects_the_function() {
        assert_eq!(
            call(r#"{"user_id":"u","operation_id":"o","amount_usd":10}"#).unwrap(),
            AddCall::Add { amount_usd: 10.0 }
        );
        assert_eq!(
            call(r#"{"user_id":"u","operation_id":"o","transaction_type":"bonus","credits":500}"#)
                .unwrap(),
            AddCall::Bonus { credits: 500 }
        );
        assert_eq!(
            call(r#"{"user_id":"u","operation_id":"o","transaction_type":"refund","charge_operation_id":"c"}"#).unwrap(),
            AddCall::Refund { charge_operation_id: "c".into(), credits: None }
        );
    }

    #[test]
    fn add_body_missing_or_foreign_fields_are_invalid_body() {
        for text in [
            r#"{"user_id":"u","operation_id":"o"}"#,
            r#"{"user_id":"u","operation_id":"o","amount_usd":1,"credits":5}"#,
            r#"{"user_id":"u","operation_id":"o","transaction_type":"bonus"}"#,
            r#"{"user_id":"u","operation_id":"o","transaction_type":"bonus","credits":5,"amount_usd":1}"#,
            r#"{"user_id":"u","operation_id":"o","transaction_type":"refund"}"#,
            r#"{"user_id":"u","operation_id":"o","transaction_type":"refund","charge_operation_id":"c","metadata":{}}"#,
            r#"{"user_id":"u","operation_id":"o","transaction_type":"charge","amount_usd":1}"#,
        ] {
            assert!(
                matches!(call(text), Err(AppError::InvalidBody(_))),
                "{text}"
            );
        }
    }
}
