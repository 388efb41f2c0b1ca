//! Public API for the front end: the caller is the user owning the bearer API token.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{shapes, JsonResult};
use crate::auth::UserAuth;
use crate::extract::{optional_param, ApiJson, ApiQuery};
use crate::{db, AppState};

pub const SQL_SUBSCRIPTION: &str = "SELECT quota.subscription($1::text)";
pub const SQL_TRANSACTIONS: &str =
    "SELECT quota.transactions($1::text, $2::int4, $3::int4, $4::text)";
/// The purchase row shaped as seed 004 answers it (`transaction_id` a string, `new_balance`).
pub const SQL_PURCHASE: &str = "SELECT to_jsonb(r) || jsonb_build_object(\
         'transaction_id', r.transaction_id::text, 'new_balance', r.balance_after) \
     FROM quota.purchase($1::text, $2::float8, $3::text, $4::text, $5::text) r";
pub const SQL_PUBLIC_PLANS: &str = "SELECT quota.subscription_plans()";

pub const TRANSACTIONS_LIMIT_DEFAULT: i32 = 20;
pub const TRANSACTIONS_OFFSET_DEFAULT: i32 = 0;

/// The caller's subscription and balance.
///
/// SQL: `quota.subscription(user_id)`.
#[utoipa::path(
    get, path = "/api/v1/subscription", tag = "public",
    operation_id = "public_subscription",
    responses((status = 200, description = "the caller's plan and credits", body = shapes::SubscriptionResponse)),
    security(("userBearer" = [])),
    extensions(("x-sql" = json!([SQL_SUBSCRIPTION]))),
)]
pub async fn subscription(user: UserAuth, State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_SUBSCRIPTION, &[&user.user_id])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionsQuery {
    /// 1..100, default 20.
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    /// Default 0.
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
    /// charge | add | subscription | bonus | refund | purchase | recharge.
    #[serde(default, rename = "type", deserialize_with = "optional_param")]
    pub transaction_type: Option<String>,
}

/// The caller's ledger entries, newest first.
///
/// SQL: `quota.transactions(user_id, limit, offset, type)`.
#[utoipa::path(
    get, path = "/api/v1/transactions", tag = "public",
    operation_id = "public_transactions",
    params(TransactionsQuery),
    responses((status = 200, description = "the caller's ledger entries, newest first", body = shapes::TransactionsResponse)),
    security(("userBearer" = [])),
    extensions(("x-sql" = json!([SQL_TRANSACTIONS]))),
)]
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

/// A purchase: credits = round_half_even(amount_usd * purchase_rate * base_rate), against a
/// payment the payment side confirmed (`POST /api/internal/payments`) for this user and amount.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    /// USD paid, > 0, at most 1,000,000.
    pub amount_usd: f64,
    /// The payment method the payment was made with.
    pub payment_method_id: String,
    /// The confirmed payment to use; without it, the oldest unused one of this amount.
    pub payment_id: Option<String>,
    /// Idempotency key in the caller's own scope; generated (purchase-<uuid>) when absent.
    pub operation_id: Option<String>,
}

/// A purchase without a key still needs one for the ledger; a random one makes it a new
/// purchase every time, which is what a client that sent none asked for.
pub fn purchase_operation_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| format!("purchase-{}", uuid::Uuid::new_v4()))
}

/// Buy credits with a confirmed payment.
///
/// Without a confirmed, unused payment of this user and amount: 402 `payment_required`, nothing
/// written. SQL: `quota.purchase(user_id, amount_usd, payment_method_id, operation_id, payment_id)`.
#[utoipa::path(
    post, path = "/api/v1/credits/purchase", tag = "public",
    operation_id = "public_credits_purchase",
    request_body = PurchaseBody,
    responses(
        (status = 200, description = "the purchase and the credits added", body = shapes::PurchaseResponse),
        (status = 402, description = "no confirmed, unused payment of this user and amount (payment_required); nothing written", body = crate::openapi::ErrorBody),
    ),
    security(("userBearer" = [])),
    extensions(("x-sql" = json!([SQL_PURCHASE]))),
)]
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
            &body.payment_id,
        ],
    )
    .await
    .map(Json)
}

/// Active subscription plans (open), as users see them: 9 keys each.
///
/// SQL: `quota.subscription_plans()`.
#[utoipa::path(
    get, path = "/api/v1/subscription/plans", tag = "public",
    operation_id = "public_subscription_plans",
    responses((status = 200, description = "the active plans", body = shapes::PublicPlans)),
    extensions(("x-sql" = json!([SQL_PUBLIC_PLANS]))),
)]
pub async fn plans(State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_PUBLIC_PLANS, &[])
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
