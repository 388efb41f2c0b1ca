//! Typed domain errors. Each kind maps to one SQLSTATE (documented in the README) and carries a
//! machine-readable JSON detail whose `error` field names the kind, so the sidecar can build its
//! HTTP body without parsing messages.

use serde_json::{json, Map, Value};
use std::fmt;

/// The kinds of rejection. The SQLSTATE of each is fixed here, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad argument: out of range, wrong length, unknown field, wrong type. SQLSTATE 22023.
    InvalidParameter,
    /// An unknown user, tier, operation or token. SQLSTATE P0002.
    NotFound,
    /// A duplicate key (plan tier or name, user id) or the same subscription tier again. 23505.
    Duplicate,
    /// An operation_id reused with another kind or other parameters. SQLSTATE 23505.
    IdempotencyConflict,
    /// Something still refers to the subject (a plan with subscribers). SQLSTATE 23503.
    InUse,
    /// Not enough credits for a charge. SQLSTATE 23514.
    InsufficientCredits,
    /// A refund larger than what is left of its charge. SQLSTATE 23514.
    RefundExceedsCharge,
    /// The same operation_id is being applied by a concurrent call; retrying replays it. 40001.
    InProgress,
    /// A purchase without a confirmed, unused payment of that user and amount. SQLSTATE 23514
    /// (the rule "credits are bought with a payment" is violated); HTTP 402.
    PaymentRequired,
    /// A wallet would pass its balance or lifetime limit. SQLSTATE 22003.
    BalanceLimit,
    /// The caller's role may not do this (a test hook used by a non-superuser). SQLSTATE 42501.
    PermissionDenied,
    /// A limited user's wallet cannot hold a reservation (seed 003). SQLSTATE 23514; HTTP 403.
    InsufficientUserQuota,
    /// An organization has no room for a reservation (seed 003). SQLSTATE 23514; HTTP 403.
    InsufficientOrgQuota,
    /// The user's organization is disabled (seed 003). SQLSTATE 55000; HTTP 403.
    OrgDisabled,
    /// A settle or release of a reservation that is no longer held (settled, released or
    /// expired). SQLSTATE 55000; HTTP 409.
    ReservationNotHeld,
    /// A limited access token cannot hold a reservation. SQLSTATE 23514; HTTP 403.
    InsufficientTokenQuota,
    /// A reservation with an access token that is inactive or expired. SQLSTATE 55000; HTTP 403.
    TokenUnusable,
    /// A pool lease released twice (or ended otherwise). SQLSTATE 55000; HTTP 409.
    LeaseNotHeld,
    /// Pool account credentials cannot be encrypted or decrypted: no key configured, or not
    /// the key they were sealed with. SQLSTATE 55000; HTTP 503.
    CredentialsKeyMissing,
    /// A pool account's quota would be passed (pool_consume). SQLSTATE 23514; HTTP 429.
    PoolQuotaExceeded,
}

impl ErrorKind {
    pub fn sqlstate(self) -> &'static str {
        match self {
            ErrorKind::InvalidParameter => "22023",
            ErrorKind::NotFound => "P0002",
            ErrorKind::Duplicate | ErrorKind::IdempotencyConflict => "23505",
            ErrorKind::InUse => "23503",
            ErrorKind::InsufficientCredits | ErrorKind::RefundExceedsCharge => "23514",
            ErrorKind::InProgress => "40001",
            ErrorKind::PaymentRequired => "23514",
            ErrorKind::BalanceLimit => "22003",
            ErrorKind::PermissionDenied => "42501",
            ErrorKind::InsufficientUserQuota | ErrorKind::InsufficientOrgQuota => "23514",
            ErrorKind::OrgDisabled | ErrorKind::ReservationNotHeld => "55000",
            ErrorKind::InsufficientTokenQuota => "23514",
            ErrorKind::TokenUnusable => "55000",
            ErrorKind::LeaseNotHeld | ErrorKind::CredentialsKeyMissing => "55000",
            ErrorKind::PoolQuotaExceeded => "23514",
        }
    }

    /// The `error` code in the JSON detail and in REST bodies.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidParameter => "invalid_parameter",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Duplicate => "duplicate",
            ErrorKind::IdempotencyConflict => "idempotency_conflict",
            ErrorKind::InUse => "in_use",
            ErrorKind::InsufficientCredits => "insufficient_credits",
            ErrorKind::RefundExceedsCharge => "refund_exceeds_charge",
            ErrorKind::InProgress => "in_progress",
            ErrorKind::PaymentRequired => "payment_required",
            ErrorKind::BalanceLimit => "balance_limit",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::InsufficientUserQuota => "insufficient_user_quota",
            ErrorKind::InsufficientOrgQuota => "insufficient_org_quota",
            ErrorKind::OrgDisabled => "org_disabled",
            ErrorKind::ReservationNotHeld => "reservation_not_held",
            ErrorKind::InsufficientTokenQuota => "insufficient_token_quota",
            ErrorKind::TokenUnusable => "token_unusable",
            ErrorKind::LeaseNotHeld => "lease_not_held",
            ErrorKind::CredentialsKeyMissing => "credentials_key_missing",
            ErrorKind::PoolQuotaExceeded => "pool_quota_exceeded",
        }
    }
}

/// A domain error: a kind, a message naming the subject and the numbers, and detail fields.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaError {
    pub kind: ErrorKind,
    pub message: String,
    pub fields: Map<String, Value>,
}

impl QuotaError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        QuotaError {
            kind,
            message: message.into(),
            fields: Map::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameter, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Adds one machine-readable field to the detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// The JSON object put in the SQL error's DETAIL: `{"error": code, ...fields}`.
    pub fn detail_json(&self) -> String {
        let mut m = Map::new();
        m.insert("error".into(), json!(self.kind.code()));
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m).to_string()
    }

    pub fn insufficient_credits(user_id: &str, required: i64, balance: i64) -> Self {
        QuotaError::new(
            ErrorKind::InsufficientCredits,
            format!("user '{user_id}' has {balance} credits, {required} required"),
        )
        .with("user_id", user_id)
        .with("required_credits", required)
        .with("current_balance", balance)
        .with("deficit", (required - balance).max(0))
    }
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QuotaError {}

pub type Result<T> = std::result::Result<T, QuotaError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insufficient_credits_detail_names_the_numbers() {
        let e = QuotaError::insufficient_credits("u1", 55, 40);
        assert_eq!(e.message, "user 'u1' has 40 credits, 55 required");
        let v: Value = serde_json::from_str(&e.detail_json()).unwrap();
        assert_eq!(v["error"], "insufficient_credits");
        assert_eq!(v["deficit"], 15);
        assert_eq!(e.kind.sqlstate(), "23514");
    }

    #[test]
    fn every_kind_has_a_five_char_sqlstate() {
        use ErrorKind::*;
        for k in [
            InvalidParameter,
            NotFound,
            Duplicate,
            IdempotencyConflict,
            InUse,
            InsufficientCredits,
            RefundExceedsCharge,
            InProgress,
            PaymentRequired,
            BalanceLimit,
            PermissionDenied,
            InsufficientUserQuota,
            InsufficientOrgQuota,
            OrgDisabled,
            ReservationNotHeld,
            InsufficientTokenQuota,
            TokenUnusable,
            LeaseNotHeld,
            CredentialsKeyMissing,
            PoolQuotaExceeded,
        ] {
            assert_eq!(k.sqlstate().len(), 5);
            assert!(!k.code().is_empty());
        }
    }
}
