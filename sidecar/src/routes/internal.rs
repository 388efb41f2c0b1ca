//! Internal API for other services (X-Service-Token): check, calculate, charge, add, balance,
//! subscription update. Each handler is one quota.* call.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::JsonResult;
use crate::auth::ServiceAuth;
use crate::error::{self, AppError};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::{
    optional, required, AuthKind, BodyDoc, BodySchema, FieldType as T, HttpMethod, RouteDoc,
};
use crate::{db, AppState};

pub const SQL_CHECK: &str = "SELECT to_jsonb(r) FROM quota.check_credits($1::text, $2::int8) r";
pub const SQL_CALCULATE: &str =
    "SELECT to_jsonb(r) FROM quota.calculate_credits($1::float8, $2::text, $3::text) r";
pub const SQL_CHARGE: &str =
    "SELECT to_jsonb(quota.charge($1::text, $2::float8, $3::text, $4::text, $5::jsonb))";
pub const SQL_ADD: &str =
    "SELECT to_jsonb(r) FROM quota.add($1::text, $2::float8, $3::text, $4::text, $5::jsonb) r";
pub const SQL_BONUS: &str =
    "SELECT to_jsonb(r) FROM quota.bonus($1::text, $2::int8, $3::text, $4::text, $5::jsonb) r";
pub const SQL_REFUND: &str =
    "SELECT to_jsonb(r) FROM quota.refund($1::text, $2::text, $3::text, $4::int8, $5::text) r";
pub const SQL_BALANCE: &str = "SELECT to_jsonb(r) FROM quota.balance($1::text) r";
pub const SQL_UPDATE_SUBSCRIPTION: &str =
    "SELECT to_jsonb(r) FROM quota.update_subscription($1::text, $2::text, $3::int8, $4::text) r";

const fn internal(method: HttpMethod, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc {
        method,
        path,
        auth: AuthKind::Service,
        tag: "internal",
        summary,
        query: &[],
        body: None,
        success_status: 200,
        response: "",
        sql: &[],
    }
}

pub const CHECK: RouteDoc = RouteDoc {
    query: &[required(
        "required_credits",
        T::Integer,
        "credits the caller is about to spend",
    )],
    response: "{user_id, current_balance, required_credits, has_sufficient_credits, deficit}",
    sql: &[SQL_CHECK],
    ..internal(
        HttpMethod::Get,
        "/api/internal/credits/check/{user_id}",
        "Check whether a user has enough credits",
    )
};

pub const CALCULATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "the cost to convert, priced with the user's plan or the given tier",
        schema: BodySchema::Fields(&[
            required("cost_usd", T::Number, "cost in USD"),
            optional("user_id", T::String, "price with this user's plan"),
            optional("tier", T::String, "price with this plan tier"),
        ]),
    }),
    response: "{cost_usd, tier, multiplier, base_rate, credits}",
    sql: &[SQL_CALCULATE],
    ..internal(
        HttpMethod::Post,
        "/api/internal/credits/calculate",
        "Convert a USD cost into credits",
    )
};

pub const CHARGE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "idempotent by operation_id",
        schema: BodySchema::Fields(&[
            required("user_id", T::String, "user to charge"),
            required("cost_usd", T::Number, "cost in USD, > 0"),
            required("operation_id", T::String, "idempotency key, 1..255 chars"),
            optional("description", T::String, "ledger description"),
            optional("metadata", T::Any, "stored with the ledger entry"),
        ]),
    }),
    response: "{success, transaction_id, user_id, cost_usd, credits_charged, balance_before, balance_after, \
               operation_id}; insufficient credits: 200 {success:false, error:\"insufficient_credits\", \
               user_id, required_credits, current_balance, deficit}",
    sql: &[SQL_CHARGE],
    ..internal(HttpMethod::Post, "/api/internal/credits/charge", "Charge credits for a USD cost")
};

pub const ADD: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "add needs amount_usd; bonus needs credits; refund needs charge_operation_id (credits optional)",
        schema: BodySchema::Fields(&[
            required("user_id", T::String, "user to credit"),
            required("operation_id", T::String, "idempotency key, 1..255 chars"),
            optional("transaction_type", T::String, "add (default) | bonus | refund"),
            optional("amount_usd", T::Number, "add: USD paid, converted with the plan's purchase_rate"),
            optional("credits", T::Integer, "bonus: credits granted; refund: credits returned (default: all left)"),
            optional("charge_operation_id", T::String, "refund: operation_id of the charge to refund"),
            optional("description", T::String, "ledger description"),
            optional("metadata", T::Any, "add and bonus: stored with the ledger entry"),
        ]),
    }),
    response: "{success, transaction_id, user_id, transaction_type, amount_usd, credits_added, balance_before, \
               balance_after, operation_id}",
    sql: &[SQL_ADD, SQL_BONUS, SQL_REFUND],
    ..internal(HttpMethod::Post, "/api/internal/credits/add", "Add, grant (bonus) or refund credits")
};

pub const BALANCE: RouteDoc = RouteDoc {
    response: "{user_id, balance, total_earned, total_spent, subscription_tier}",
    sql: &[SQL_BALANCE],
    ..internal(
        HttpMethod::Get,
        "/api/internal/credits/balance/{user_id}",
        "A user's balance and totals",
    )
};

pub const SUBSCRIPTION_UPDATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "same tier again is 409",
        schema: BodySchema::Fields(&[
            required("user_id", T::String, "user"),
            required("subscription_tier", T::String, "new plan tier"),
            required("credits_to_add", T::Integer, "credits granted with the change (>= 0)"),
            required("operation_id", T::String, "idempotency key, 1..255 chars"),
        ]),
    }),
    response: "{success, transaction_id, user_id, previous_tier, subscription_tier, credits_added, balance_before, \
               balance_after, operation_id}",
    sql: &[SQL_UPDATE_SUBSCRIPTION],
    ..internal(HttpMethod::Post, "/api/internal/subscription/update", "Change a user's subscription tier")
};

#[derive(Debug, Deserialize)]
pub struct CheckQuery {
    pub required_credits: i64,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalculateBody {
    pub cost_usd: f64,
    pub user_id: Option<String>,
    pub tier: Option<String>,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    pub user_id: String,
    pub cost_usd: f64,
    pub operation_id: String,
    pub description: Option<String>,
    pub metadata: Option<Value>,
}

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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionType {
    #[default]
    Add,
    Bonus,
    Refund,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    pub user_id: String,
    pub operation_id: String,
    pub transaction_type: Option<TransactionType>,
    pub amount_usd: Option<f64>,
    pub credits: Option<i64>,
    pub charge_operation_id: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<Value>,
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

pub async fn add(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AddBody>,
) -> JsonResult {
    let call = add_call(&body)?;
    let row = match &call {
        AddCall::Add { amount_usd } => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &body.user_id,
                amount_usd,
                &body.operation_id,
                &body.description,
                &body.metadata,
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

pub async fn balance(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_BALANCE, &[&user_id])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionUpdateBody {
    pub user_id: String,
    pub subscription_tier: String,
    pub credits_to_add: i64,
    pub operation_id: String,
}

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
