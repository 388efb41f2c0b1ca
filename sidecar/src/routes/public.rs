//! Public API for the front end: the caller is the user owning the bearer API token.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::JsonResult;
use crate::auth::UserAuth;
use crate::extract::{optional_param, ApiJson, ApiQuery};
use crate::openapi::{
    optional, required, AuthKind, BodyDoc, BodySchema, FieldType as T, HttpMethod, RouteDoc,
};
use crate::{db, AppState};

pub const SQL_SUBSCRIPTION: &str = "SELECT quota.subscription($1::text)";
pub const SQL_TRANSACTIONS: &str =
    "SELECT quota.transactions($1::text, $2::int4, $3::int4, $4::text)";
pub const SQL_PURCHASE: &str =
    "SELECT to_jsonb(r) FROM quota.purchase($1::text, $2::float8, $3::text, $4::text) r";
pub const SQL_LIST_PLANS: &str = "SELECT quota.list_plans($1::bool)";

pub const TRANSACTIONS_LIMIT_DEFAULT: i32 = 20;
pub const TRANSACTIONS_OFFSET_DEFAULT: i32 = 0;

const fn public(method: HttpMethod, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc {
        method,
        path,
        auth: AuthKind::User,
        tag: "public",
        summary,
        query: &[],
        body: None,
        success_status: 200,
        response: "",
        sql: &[],
    }
}

pub const SUBSCRIPTION: RouteDoc = RouteDoc {
    response:
        "{user_id, subscription_tier, status, started_at, plan, balance, total_earned, total_spent}",
    sql: &[SQL_SUBSCRIPTION],
    ..public(
        HttpMethod::Get,
        "/api/v1/subscription",
        "The caller's subscription and balance",
    )
};

pub const TRANSACTIONS: RouteDoc = RouteDoc {
    query: &[
        optional("limit", T::Integer, "1..100, default 20"),
        optional("offset", T::Integer, "default 0"),
        optional(
            "type",
            T::String,
            "charge | add | subscription | bonus | refund",
        ),
    ],
    response: "{transactions: [...], total, limit, offset}, newest first",
    sql: &[SQL_TRANSACTIONS],
    ..public(
        HttpMethod::Get,
        "/api/v1/transactions",
        "The caller's ledger entries",
    )
};

pub const PURCHASE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "credits = round_half_even(amount_usd * purchase_rate * base_rate)",
        schema: BodySchema::Fields(&[
            required("amount_usd", T::Number, "USD paid, > 0"),
            required("payment_method_id", T::String, "payment method reference"),
            optional("operation_id", T::String, "idempotency key; generated (purchase-<uuid>) when absent"),
        ]),
    }),
    response: "{success, transaction_id, user_id, transaction_type, amount_usd, credits_added, balance_before, \
               balance_after, operation_id}",
    sql: &[SQL_PURCHASE],
    ..public(HttpMethod::Post, "/api/v1/credits/purchase", "Buy credits")
};

pub const PLANS: RouteDoc = RouteDoc {
    auth: AuthKind::Open,
    response: "{plans: [active plan objects with total_credits], total}",
    sql: &[SQL_LIST_PLANS],
    ..public(
        HttpMethod::Get,
        "/api/v1/subscription/plans",
        "Active subscription plans (open)",
    )
};

pub async fn subscription(user: UserAuth, State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_SUBSCRIPTION, &[&user.user_id])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
pub struct TransactionsQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
    #[serde(default, rename = "type", deserialize_with = "optional_param")]
    pub transaction_type: Option<String>,
}

pub async fn transactions(
    user: UserAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TransactionsQuery>,
) -> JsonResult {
    // quota.transactions validates the limit (1..100), offset and type: one rule, in the extension.
    let limit = query.limit.unwrap_or(TRANSACTIONS_LIMIT_DEFAULT);
    let offset = query.offset.unwrap_or(TRANSACTIONS_OFFSET_DEFAULT);
    db::call_json(
        &state.pool,
        SQL_TRANSACTIONS,
        &[&user.user_id, &limit, &offset, &query.transaction_type],
    )
    .await
    .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    pub amount_usd: f64,
    pub payment_method_id: String,
    pub operation_id: Option<String>,
}

/// A purchase without a key still needs one for the ledger; a random one makes it a new
/// purchase every time, which is what a client that sent none asked for.
pub fn purchase_operation_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| format!("purchase-{}", uuid::Uuid::new_v4()))
}

pub async fn purchase(
    user: UserAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PurchaseBody>,
) -> JsonResult {
    let operation_id = purchase_operation_id(body.operation_id);
    db::call_json(
        &state.pool,
        SQL_PURCHASE,
        &[
            &user.user_id,
            &body.amount_usd,
            &body.payment_method_id,
            &operation_id,
        ],
    )
    .await
    .map(Json)
}

pub async fn plans(State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_LIST_PLANS, &[&true])
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purchase_operation_id_is_kept_or_generated() {
        assert_eq!(purchase_operation_id(Some("op-7".into())), "op-7");
        let generated = purchase_operation_id(None);
        assert!(
            generated.starts_with("purchase-") && generated.len() == "purchase-".len() + 36,
            "{generated}"
        );
        assert_ne!(generated, purchase_operation_id(None));
    }
}
