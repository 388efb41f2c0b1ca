//! The response bodies of the endpoints (seed 004's and later ones), for the OpenAPI document.
//! The handlers pass the JSON their SQL builds straight through (the shapes are made in SQL, so
//! SQL and REST callers see one rendering); these types describe it, and the e2e contract test
//! (tests/tests/seed004_contract.rs) checks seed 004's bodies against its key lists.
#![allow(dead_code)] // documentation only

use serde_json::Value;
use utoipa::ToSchema;

/// `POST /api/internal/credits/charge`.
#[derive(ToSchema)]
pub struct ChargeResponse {
    success: bool,
    /// The ledger entry, as a string (seed 004).
    transaction_id: String,
    user_id: String,
    cost_usd: f64,
    credits_charged: i64,
    balance_before: i64,
    balance_after: i64,
    operation_id: String,
}

/// The refusal of a charge the balance does not cover: HTTP 200 (seed 004); nothing recorded.
#[derive(ToSchema)]
pub struct InsufficientCredits {
    /// false
    success: bool,
    /// insufficient_credits
    error: String,
    user_id: String,
    required_credits: i64,
    current_balance: i64,
    deficit: i64,
    message: String,
}

/// `POST /api/internal/credits/add` (add, bonus or refund).
#[derive(ToSchema)]
pub struct AddResponse {
    success: bool,
    transaction_id: String,
    user_id: String,
    /// add | bonus | refund
    transaction_type: String,
    amount_usd: Option<f64>,
    credits_added: i64,
    /// The plan's purchase rate (add).
    purchase_rate: Option<f64>,
    balance_before: i64,
    balance_after: i64,
    operation_id: String,
}

/// `POST /api/internal/credits/calculate`.
#[derive(ToSchema)]
pub struct CalculateResponse {
    user_id: Option<String>,
    cost_usd: f64,
    credits_to_charge: i64,
    multiplier: f64,
    /// With a user: their balance, what it would be after, and whether it suffices.
    current_balance: Option<i64>,
    balance_after: Option<i64>,
    sufficient: Option<bool>,
    tier: Option<String>,
    base_rate: i64,
}

/// `GET /api/internal/credits/check/{user_id}`.
#[derive(ToSchema)]
pub struct CheckResponse {
    user_id: String,
    has_subscription: bool,
    subscription_tier: Option<String>,
    balance: i64,
    /// true when required_credits is absent.
    sufficient: bool,
    multiplier: f64,
    required_credits: Option<i64>,
    deficit: i64,
}

#[derive(ToSchema)]
pub struct BalanceSubscription {
    tier: Option<String>,
    monthly_cost: Option<f64>,
    multiplier: f64,
    purchase_rate: f64,
}

#[derive(ToSchema)]
pub struct Credits {
    balance: i64,
    total_earned: i64,
    total_spent: i64,
}

/// `GET /api/internal/credits/balance/{user_id}`.
#[derive(ToSchema)]
pub struct BalanceResponse {
    user_id: String,
    subscription: BalanceSubscription,
    credits: Credits,
}

/// `POST /api/internal/subscription/update`.
#[derive(ToSchema)]
pub struct SubscriptionUpdateResponse {
    success: bool,
    user_id: String,
    previous_tier: Option<String>,
    new_tier: String,
    credits_added: i64,
    new_balance: i64,
    multiplier: f64,
    purchase_rate: f64,
    transaction_id: String,
    operation_id: String,
}

/// `POST /api/internal/payments`: a payment the payment side confirmed.
#[derive(ToSchema)]
pub struct PaymentResponse {
    payment_id: String,
    user_id: String,
    amount_usd: f64,
    payment_method_id: Option<String>,
    /// confirmed | used
    status: String,
    /// The purchase that used it.
    operation_id: Option<String>,
    confirmed_at: String,
    used_at: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// false when the same payment was already recorded (a replay).
    created: bool,
}

/// `POST /api/v1/credits/purchase`.
#[derive(ToSchema)]
pub struct PurchaseResponse {
    success: bool,
    transaction_id: String,
    amount_usd: f64,
    credits_added: i64,
    new_balance: i64,
    operation_id: String,
}

/// A plan as users see it (exactly these 9 keys).
#[derive(ToSchema)]
pub struct PublicPlan {
    tier: String,
    name: String,
    monthly_cost: f64,
    fixed_cost: f64,
    credits_included: i64,
    bonus_credits: i64,
    multiplier: f64,
    purchase_rate: f64,
    total_credits: i64,
}

/// `GET /api/v1/subscription/plans`.
#[derive(ToSchema)]
pub struct PublicPlans {
    plans: Vec<PublicPlan>,
    total: i64,
}

/// `GET /api/v1/subscription`: the plan (null without one) and the credits.
#[derive(ToSchema)]
pub struct SubscriptionResponse {
    user_id: String,
    /// The 9 plan fields, plus status and started_at.
    subscription: Option<PublicPlan>,
    credits: Credits,
}

/// One ledger entry of `GET /api/v1/transactions`.
#[derive(ToSchema)]
pub struct TransactionItem {
    id: String,
    /// charge | add | subscription | bonus | refund | recharge | ...
    r#type: String,
    date: String,
    credits: i64,
    balance_before: i64,
    balance_after: i64,
    description: Option<String>,
    operation_id: String,
    /// Charges: rounded to 4 places.
    cost_usd: Option<f64>,
    /// Adds: rounded to 2 places.
    amount_usd: Option<f64>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// `GET /api/v1/transactions`.
#[derive(ToSchema)]
pub struct TransactionsResponse {
    transactions: Vec<TransactionItem>,
    total: i64,
    limit: i32,
    offset: i32,
}

/// A plan as the admin API shows it (exactly these 12 keys).
#[derive(ToSchema)]
pub struct AdminPlan {
    tier: String,
    name: String,
    monthly_cost: f64,
    fixed_cost: f64,
    credits_included: i64,
    bonus_credits: i64,
    multiplier: f64,
    purchase_rate: f64,
    active: bool,
    users_count: i64,
    created_at: String,
    updated_at: String,
}

/// `GET /api/admin/subscription-plans`.
#[derive(ToSchema)]
pub struct AdminPlans {
    plans: Vec<AdminPlan>,
    total: i64,
}

/// `POST` / `PUT /api/admin/subscription-plans[/{tier}]`.
#[derive(ToSchema)]
pub struct PlanResponse {
    success: bool,
    plan: AdminPlan,
}

/// `DELETE /api/admin/subscription-plans/{tier}`.
#[derive(ToSchema)]
pub struct PlanDeleted {
    success: bool,
    message: String,
    tier: String,
}

/// `PATCH /api/admin/settings/exchange-rate`.
#[derive(ToSchema)]
pub struct ExchangeRateResponse {
    success: bool,
    old_base_rate: i64,
    new_base_rate: i64,
    updated_at: String,
}

/// `PATCH /api/admin/subscription-plans/{tier}/multiplier`.
#[derive(ToSchema)]
pub struct MultiplierResponse {
    success: bool,
    tier: String,
    old_multiplier: f64,
    new_multiplier: f64,
    updated_at: String,
    plan: AdminPlan,
}

/// `PATCH /api/admin/subscription-plans/{tier}/purchase-rate`.
#[derive(ToSchema)]
pub struct PurchaseRateResponse {
    success: bool,
    tier: String,
    old_purchase_rate: f64,
    new_purchase_rate: f64,
    updated_at: String,
    plan: AdminPlan,
}

#[derive(ToSchema)]
pub struct Period {
    start: Option<String>,
    end: Option<String>,
}

#[derive(ToSchema)]
pub struct SubscriptionCounts {
    /// Users per tier.
    #[schema(value_type = Object)]
    subscriptions: Value,
    total: i64,
}

#[derive(ToSchema)]
pub struct CreditTotals {
    total_earned: i64,
    total_spent: i64,
    current_balance: i64,
}

#[derive(ToSchema)]
pub struct TransactionCounts {
    total: i64,
    charges: i64,
    additions: i64,
    subscriptions: i64,
    bonuses: i64,
    refunds: i64,
    recharges: i64,
}

/// `GET /api/admin/statistics`.
#[derive(ToSchema)]
pub struct StatisticsResponse {
    period: Period,
    tier: Option<String>,
    total_users: i64,
    subscriptions: SubscriptionCounts,
    credits: CreditTotals,
    transactions: TransactionCounts,
}

// ---------------------------------------------------------------------------------------------
// Organizations, users' deletion and reservations (issue 11, seed 003).

/// An organization (`quota.get_organization`).
#[derive(ToSchema)]
pub struct Organization {
    id: String,
    name: String,
    /// enabled | disabled
    status: String,
    /// prepaid | postpaid
    billing_type: String,
    /// Credits granted to the organization (its ledger's sum).
    quota: i64,
    /// Credits its users have spent (limited and unlimited users alike).
    used_quota: i64,
    /// Credits held by open reservations of its users.
    held_quota: i64,
    /// How far past its quota a postpaid organization may spend.
    overdraft_limit: i64,
    /// prepaid: quota - held_quota; postpaid: quota + overdraft_limit - used_quota - held_quota.
    available_quota: i64,
    users_count: i64,
    open_reservations: i64,
    created_at: String,
    updated_at: String,
}

/// `GET /api/admin/organizations`.
#[derive(ToSchema)]
pub struct OrganizationList {
    organizations: Vec<Organization>,
    total: i64,
    limit: i32,
    offset: i32,
}

/// `DELETE /api/admin/organizations/{org_id}`.
#[derive(ToSchema)]
pub struct OrganizationDeleted {
    /// true
    deleted: bool,
    organization: Organization,
}

/// `GET /api/admin/organizations/{org_id}/users`: user objects as `GET /api/admin/users` lists
/// them (with unlimited, used_quota, request_count, held_credits).
#[derive(ToSchema)]
pub struct OrganizationUsers {
    #[schema(value_type = Vec<Object>)]
    users: Vec<Value>,
    total: i64,
    limit: i32,
    offset: i32,
}

/// `POST /api/admin/organizations/{org_id}/quota` (or its replay).
#[derive(ToSchema)]
pub struct OrganizationQuotaAdded {
    org_id: String,
    operation_id: String,
    credits: i64,
    quota_after: i64,
    used_quota_after: i64,
    held_quota_after: i64,
    /// The organization ledger's entry.
    entry_id: i64,
}

/// `DELETE /api/admin/users/{user_id}`.
#[derive(ToSchema)]
pub struct UserDeleted {
    /// true
    deleted: bool,
    /// The user as it was.
    #[schema(value_type = Object)]
    user: Value,
}

/// `POST /api/internal/reservations` (or its replay): a hold.
#[derive(ToSchema)]
pub struct ReservationHeld {
    reservation_id: i64,
    /// held
    status: String,
    user_id: String,
    /// The user's organization, if any.
    org: Option<String>,
    /// Whether the user was unlimited when the hold was made (the rule it settles under).
    unlimited: bool,
    credits_held: i64,
    /// Held in the user's wallet (0 for an unlimited user).
    user_credits_held: i64,
    /// Held in the organization (0 without one).
    org_credits_held: i64,
    /// When the hold was priced from a USD cost.
    cost_usd: Option<f64>,
    /// Past this, the worker expires the hold and returns it.
    expires_at: String,
    created_at: String,
    operation_id: String,
}

/// `POST /api/internal/reservations/{reservation_id}/settle`, `.../release` and
/// `POST /api/internal/consume`: how a reservation ended.
#[derive(ToSchema)]
pub struct ReservationEnded {
    reservation_id: i64,
    /// settled | released
    status: String,
    user_id: String,
    org: Option<String>,
    unlimited: bool,
    credits_held: i64,
    actual_credits: Option<i64>,
    /// Taken from the user's wallet.
    charged_credits: i64,
    /// Hold returned unspent.
    returned_credits: i64,
    /// What the wallet could not pay of actual_credits (it never goes below 0).
    uncollected_credits: i64,
    org_charged_credits: i64,
    org_uncollected_credits: i64,
    balance_after: i64,
    held_credits_after: i64,
    used_quota_after: i64,
    request_count_after: i64,
    /// null without an organization.
    org_quota_after: Option<i64>,
    org_used_quota_after: Option<i64>,
    /// The settle's, release's or consume's own operation_id.
    operation_id: String,
}

/// `GET /api/internal/reservations/{reservation_id}`.
#[derive(ToSchema)]
pub struct Reservation {
    reservation_id: i64,
    /// held | settled | released | expired (a hold past expires_at shows expired)
    status: String,
    user_id: String,
    org: Option<String>,
    unlimited: bool,
    credits_held: i64,
    user_credits_held: i64,
    org_credits_held: i64,
    cost_usd: Option<f64>,
    expires_at: String,
    created_at: String,
    ended_at: Option<String>,
    operation_id: String,
    end_operation_id: Option<String>,
    actual_credits: Option<i64>,
    charged_credits: Option<i64>,
    returned_credits: Option<i64>,
    uncollected_credits: Option<i64>,
    org_charged_credits: Option<i64>,
    org_uncollected_credits: Option<i64>,
}
