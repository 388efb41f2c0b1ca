//! The response bodies of the provider pool, stats and alert endpoints (issue 13, seed 002), for
//! the OpenAPI document. As in `shapes`, the handlers pass the JSON their SQL builds straight
//! through; these types only describe it.
#![allow(dead_code)] // documentation only

use serde_json::Value;
use utoipa::ToSchema;

/// The limits of a provider: only the limits that are set (a missing key or 0 is unlimited).
#[derive(ToSchema)]
pub struct Limits {
    /// Requests per minute (fixed UTC windows).
    rpm: Option<i64>,
    /// Requests per hour.
    rph: Option<i64>,
    /// Requests per day.
    rpd: Option<i64>,
    /// Tokens per minute.
    tpm: Option<i64>,
    /// Tokens per day.
    tpd: Option<i64>,
    /// Leases open at once per account.
    concurrent: Option<i64>,
}

/// A provider.
#[derive(ToSchema)]
pub struct Provider {
    provider_id: String,
    name: String,
    /// least_used | round_robin | random | best
    strategy: String,
    active: bool,
    limits: Limits,
    created_at: String,
    updated_at: String,
}

/// `GET /api/v1/admin/providers`.
#[derive(ToSchema)]
pub struct ProviderList {
    providers: Vec<Provider>,
    total: i64,
}

/// A pooled account. Its credentials are never shown (only acquire returns them).
#[derive(ToSchema)]
pub struct PoolAccount {
    account_id: String,
    provider_id: String,
    user_id: Option<String>,
    name: Option<String>,
    /// Tokens per period; 0 = unlimited.
    quota_limit: i64,
    quota_used: i64,
    /// Tokens held by open leases.
    quota_held: i64,
    /// The period in seconds (default 86400).
    period_s: i64,
    last_reset: String,
    /// last_reset + period_s.
    reset_at: String,
    active: bool,
    expires_at: Option<String>,
    /// Open leases.
    in_flight: i64,
    /// 100 * quota_used / quota_limit (0 when unlimited).
    usage_percent: f64,
    request_count: i64,
    success_count: i64,
    error_count: i64,
    last_used_at: Option<String>,
    created_at: String,
    updated_at: String,
}

/// `GET /api/v1/admin/providers/{provider_id}/accounts`.
#[derive(ToSchema)]
pub struct PoolAccountList {
    accounts: Vec<PoolAccount>,
    total: i64,
}

/// `DELETE /api/v1/admin/providers/{provider_id}`.
#[derive(ToSchema)]
pub struct ProviderDeleted {
    /// true
    deleted: bool,
    provider_id: String,
}

/// `DELETE /api/v1/admin/accounts/{account_id}`.
#[derive(ToSchema)]
pub struct PoolAccountDeleted {
    /// true
    deleted: bool,
    account_id: String,
}

/// An alert.
#[derive(ToSchema)]
pub struct PoolAlert {
    alert_id: Value,
    /// warning | exhausted
    kind: String,
    account_id: String,
    provider_id: String,
    quota_used: i64,
    quota_limit: i64,
    usage_percent: f64,
    /// The warning threshold in force (0..1).
    threshold: f64,
    created_at: String,
    /// pending | delivered | failed (webhooks)
    delivery_status: String,
}

/// `GET /api/v1/admin/alerts`.
#[derive(ToSchema)]
pub struct PoolAlertList {
    alerts: Vec<PoolAlert>,
    total: i64,
}

/// An admitted acquire: a lease on one account, with its credentials.
#[derive(ToSchema)]
pub struct Lease {
    /// true
    admitted: bool,
    lease_id: String,
    account_id: String,
    provider_id: String,
    /// The account's credentials (decrypted for this caller only).
    #[schema(value_type = Object)]
    credentials: Value,
    /// The strategy that picked the account.
    strategy: String,
    tokens_needed: i64,
    /// When the lease expires if never released.
    lease_expires_at: String,
    quota_limit: i64,
    quota_used: i64,
    reset_at: String,
}

/// 503: no account can serve (none, or every one inactive or expired). Exactly these keys.
#[derive(ToSchema)]
pub struct NoAccountAvailable {
    /// no_account_available
    error: String,
    /// Service temporarily unavailable
    message: String,
}

/// 429: the quota (exactly these keys), or a rate limit (with `retry_after` instead of
/// `reset_at`, and the `Retry-After` header).
#[derive(ToSchema)]
pub struct PoolRefused {
    /// quota_exceeded | rate_limit_exceeded
    error: String,
    /// Quota limit reached | Rate limit exceeded
    message: String,
    /// quota_exceeded: when the earliest candidate's window resets (RFC 3339).
    reset_at: Option<String>,
    /// rate_limit_exceeded: seconds until the limit's window ends (>= 1).
    retry_after: Option<i64>,
}

/// `POST /api/v1/pool/accounts/{account_id}/release`.
#[derive(ToSchema)]
pub struct Released {
    /// true
    released: bool,
    lease_id: String,
    account_id: String,
    /// released | expired (the lease had expired; its usage is still recorded)
    lease_status: String,
    /// input_tokens + output_tokens
    tokens: i64,
    quota_used: i64,
    quota_limit: i64,
    usage_percent: f64,
    request_log_id: Value,
}

/// One account in a pool status.
#[derive(ToSchema)]
pub struct PoolStatusAccount {
    account_id: String,
    name: Option<String>,
    active: bool,
    available: bool,
    /// Why not available: account inactive | account expired | quota exceeded | ...
    reason: Option<String>,
    usage_percent: f64,
    quota_used: i64,
    quota_limit: i64,
    in_flight: i64,
    reset_at: String,
    expires_at: Option<String>,
}

/// `GET /api/v1/pool/{provider_id}/status`.
#[derive(ToSchema)]
pub struct PoolStatus {
    provider_id: String,
    name: String,
    strategy: String,
    total_accounts: i64,
    active_accounts: i64,
    available_accounts: i64,
    total_quota: i64,
    used_quota: i64,
    usage_percent: f64,
    in_flight: i64,
    limits: Limits,
    accounts: Vec<PoolStatusAccount>,
}

/// `GET /api/v1/stats/usage`.
#[derive(ToSchema)]
pub struct UsageStats {
    /// null: every user.
    user_id: Option<String>,
    from: String,
    to: String,
    total_requests: i64,
    successful_requests: i64,
    failed_requests: i64,
    /// 0..1 (0 when there were no requests).
    success_rate: f64,
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
    estimated_cost: f64,
    avg_latency_ms: Option<f64>,
}

/// A model in a pool's statistics.
#[derive(ToSchema)]
pub struct TopModel {
    model: Option<String>,
    requests: i64,
    total_tokens: i64,
    estimated_cost: f64,
}

/// Failed requests grouped.
#[derive(ToSchema)]
pub struct ErrorGroup {
    status_code: Option<i64>,
    error: Option<String>,
    count: i64,
}

/// A day of a provider (aggregated by the background worker).
#[derive(ToSchema)]
pub struct DailyStats {
    day: String,
    requests: i64,
    successes: i64,
    failures: i64,
    input_tokens: i64,
    output_tokens: i64,
    estimated_cost: f64,
}

/// `GET /api/v1/stats/pool/{provider_id}`: the pool status plus its usage.
#[derive(ToSchema)]
pub struct PoolStats {
    provider_id: String,
    name: String,
    strategy: String,
    total_accounts: i64,
    active_accounts: i64,
    available_accounts: i64,
    total_quota: i64,
    used_quota: i64,
    usage_percent: f64,
    in_flight: i64,
    limits: Limits,
    accounts: Vec<PoolStatusAccount>,
    usage: UsageStats,
    /// The 10 models with the most requests.
    top_models: Vec<TopModel>,
    errors: Vec<ErrorGroup>,
    daily: Vec<DailyStats>,
}

/// `GET /api/v1/stats/quota/{account_id}`: an account's availability (a due reset shown, not
/// written).
#[derive(ToSchema)]
pub struct AccountStatus {
    account_id: String,
    provider_id: String,
    available: bool,
    reason: Option<String>,
    quota_limit: i64,
    quota_used: i64,
    quota_held: i64,
    /// null when unlimited.
    remaining: Option<i64>,
    usage_percent: f64,
    last_reset: String,
    reset_at: String,
    active: bool,
    expires_at: Option<String>,
    in_flight: i64,
}
