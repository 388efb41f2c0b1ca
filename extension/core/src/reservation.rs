//! Organizations and two-phase consumption (seed 003, SPEC 3): the arithmetic of holds, of the
//! room an organization has, and of a settle whose actual amount differs from its hold.
//!
//! Subjects: a user's wallet (`balance`, `held_credits`) and an organization (`quota`,
//! `used_quota`, `held_quota`, `overdraft_limit`). A hold does not move a balance; it reserves
//! part of it, so what a subject can still promise is its balance minus everything held.
//!
//! Settle policy (documented in the README): the actual amount is charged in full when the
//! subject can pay it from this hold plus what is free beyond all holds; otherwise the subject
//! is charged what it can pay (its floor is never crossed and other holds stay covered) and the
//! rest is `uncollected`, recorded on the reservation and returned to the caller.

use crate::error::{ErrorKind, QuotaError, Result};
use crate::ids::validate_free_text;
use crate::plan::from_json;
use crate::pricing::{show, BALANCE_MAX, CREDITS_PER_OPERATION_MAX};
use serde::Deserialize;

pub const TTL_S_DEFAULT: i32 = 300;
pub const TTL_S_MIN: i32 = 1;
pub const TTL_S_MAX: i32 = 86_400;
pub const ORG_NAME_LEN_MAX: usize = 255;
/// Expired holds released per call of `quota.expire_reservations` by default (and per worker tick).
pub const EXPIRE_BATCH_DEFAULT: i32 = 1000;
pub const EXPIRE_BATCH_MAX: i32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// Spends `quota`: what is left.
    Prepaid,
    /// Accrues `used_quota` up to `quota + overdraft_limit`.
    Postpaid,
}

impl Billing {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "prepaid" => Ok(Billing::Prepaid),
            "postpaid" => Ok(Billing::Postpaid),
            other => Err(QuotaError::invalid(format!(
                "billing_type must be 'prepaid' or 'postpaid', got '{other}'"
            ))
            .with("field", "billing_type")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Prepaid => "prepaid",
            Billing::Postpaid => "postpaid",
        }
    }
}

pub fn validate_status(s: &str) -> Result<()> {
    match s {
        "enabled" | "disabled" => Ok(()),
        other => Err(QuotaError::invalid(format!(
            "status must be 'enabled' or 'disabled', got '{other}'"
        ))
        .with("field", "status")),
    }
}

/// An organization's counters, as locked for a reserve or settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Org {
    pub billing: Billing,
    pub enabled: bool,
    pub quota: i64,
    pub used_quota: i64,
    pub held_quota: i64,
    pub overdraft_limit: i64,
}

impl Org {
    /// What the organization can still promise: prepaid `quota - held`, postpaid
    /// `quota + overdraft_limit - used - held`. Negative only after an inconsistent edit.
    pub fn available(&self) -> i64 {
        let limit = match self.billing {
            Billing::Prepaid => self.quota as i128,
            Billing::Postpaid => {
                self.quota as i128 + self.overdraft_limit as i128 - self.used_quota as i128
            }
        };
        clamp_i64(limit - self.held_quota as i128)
    }

    /// The changes of (quota, used_quota, held_quota) when a hold of `hold` ends having charged
    /// `charged`: the organization is charged the full amount collected (not a delta).
    pub fn settle_changes(&self, hold: i64, charged: i64) -> (i64, i64, i64) {
        match self.billing {
            Billing::Prepaid => (-charged, charged, -hold),
            Billing::Postpaid => (0, charged, -hold),
        }
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Refuses a hold of `credits` on an organization: disabled (55000), or no room (23514).
pub fn check_org_hold(org_id: &str, org: &Org, credits: i64) -> Result<()> {
    if !org.enabled {
        return Err(QuotaError::new(
            ErrorKind::OrgDisabled,
            format!("organization '{org_id}' is disabled"),
        )
        .with("org", org_id));
    }
    let available = org.available();
    if available < credits {
        return Err(QuotaError::new(
            ErrorKind::InsufficientOrgQuota,
            format!(
                "organization '{org_id}' has {available} credits available ({} {}), {credits} required",
                org.billing.as_str(),
                match org.billing {
                    Billing::Prepaid => format!("quota {}, {} held", org.quota, org.held_quota),
                    Billing::Postpaid => format!(
                        "quota {} + overdraft {}, {} used, {} held",
                        org.quota, org.overdraft_limit, org.used_quota, org.held_quota
                    ),
                }
            ),
        )
        .with("org", org_id)
        .with("required_credits", credits)
        .with("available_credits", available));
    }
    Ok(())
}

/// Refuses a hold of `credits` on a limited user's wallet without that much free (23514).
pub fn check_user_hold(user_id: &str, balance: i64, held: i64, credits: i64) -> Result<()> {
    let available = balance.saturating_sub(held);
    if available < credits {
        return Err(QuotaError::new(
            ErrorKind::InsufficientUserQuota,
            format!(
                "user '{user_id}' has {available} credits available ({balance} balance, {held} held), {credits} required"
            ),
        )
        .with("user_id", user_id)
        .with("required_credits", credits)
        .with("current_balance", balance)
        .with("available_credits", available));
    }
    Ok(())
}

/// How one subject's hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Debited from the subject.
    pub charged: i64,
    /// The part of the hold not charged (given back to what the subject can spend).
    pub returned: i64,
    /// Actual usage the subject could not pay (above its hold and its free room).
    pub uncollected: i64,
}

/// Ends a hold of `hold` for `actual` credits when the subject has `free` beyond all its holds
/// (this one included). It pays from this hold and then from `free`, never from other holds and
/// never below its floor (a negative `free`, left by an inconsistent edit, shrinks what it pays).
pub fn settle_split(hold: i64, actual: i64, free: i64) -> Split {
    debug_assert!(hold >= 0 && actual >= 0);
    let payable = clamp_i64(hold as i128 + free as i128).max(0);
    let charged = actual.min(payable);
    Split {
        charged,
        returned: (hold - charged).max(0),
        uncollected: actual - charged,
    }
}

/// What a reservation is for: credits, or a USD cost priced like a charge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Credits(i64),
    Usd(f64),
}

/// Exactly one of `credits` (0..=1e15) and `cost_usd` (validated as a charge's cost).
pub fn amount(credits: Option<i64>, cost_usd: Option<f64>) -> Result<Amount> {
    match (credits, cost_usd) {
        (Some(c), None) => {
            crate::pricing::validate_credits("credits", c, true)?;
            Ok(Amount::Credits(c))
        }
        (None, Some(usd)) => {
            crate::pricing::validate_usd("cost_usd", usd)?;
            Ok(Amount::Usd(usd))
        }
        (Some(c), Some(usd)) => Err(QuotaError::invalid(format!(
            "give credits or cost_usd, not both (got {c} credits and {} USD)",
            show(usd)
        ))
        .with("field", "credits")),
        (None, None) => {
            Err(QuotaError::invalid("credits or cost_usd is required").with("field", "credits"))
        }
    }
}

pub fn validate_ttl(ttl_s: i32) -> Result<()> {
    if !(TTL_S_MIN..=TTL_S_MAX).contains(&ttl_s) {
        return Err(QuotaError::invalid(format!(
            "ttl_s must be between {TTL_S_MIN} and {TTL_S_MAX} seconds, got {ttl_s}"
        ))
        .with("field", "ttl_s"));
    }
    Ok(())
}

pub fn validate_actual(actual_credits: i64) -> Result<()> {
    crate::pricing::validate_credits("actual_credits", actual_credits, true)
}

pub fn validate_reservation_id(reservation_id: i64) -> Result<()> {
    if reservation_id < 1 {
        return Err(QuotaError::invalid(format!(
            "reservation_id must be a positive integer, got {reservation_id}"
        ))
        .with("field", "reservation_id"));
    }
    Ok(())
}

pub fn validate_expire_batch(max_count: i32) -> Result<()> {
    if !(1..=EXPIRE_BATCH_MAX).contains(&max_count) {
        return Err(QuotaError::invalid(format!(
            "max_count must be between 1 and {EXPIRE_BATCH_MAX}, got {max_count}"
        ))
        .with("field", "max_count"));
    }
    Ok(())
}

fn validate_org_credits(field: &str, v: i64) -> Result<()> {
    if !(0..=BALANCE_MAX).contains(&v) {
        return Err(QuotaError::invalid(format!(
            "{field} must be between 0 and {BALANCE_MAX}, got {v}"
        ))
        .with("field", field));
    }
    Ok(())
}

/// Organization fields for create (absent = default) and update (absent = unchanged).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgInput {
    pub id: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub billing_type: Option<String>,
    pub quota: Option<i64>,
    pub overdraft_limit: Option<i64>,
}

impl OrgInput {
    pub fn parse(value: serde_json::Value) -> Result<Self> {
        let o: OrgInput = from_json("organization", value)?;
        if let Some(name) = &o.name {
            let n = name.chars().count();
            if n == 0 || n > ORG_NAME_LEN_MAX || name.trim().is_empty() {
                return Err(QuotaError::invalid(format!(
                    "name must be 1 to {ORG_NAME_LEN_MAX} visible characters"
                ))
                .with("field", "name"));
            }
            validate_free_text("name", name)?;
        }
        if let Some(s) = &o.status {
            validate_status(s)?;
        }
        if let Some(b) = &o.billing_type {
            Billing::parse(b)?;
        }
        if let Some(q) = o.quota {
            validate_org_credits("quota", q)?;
        }
        if let Some(d) = o.overdraft_limit {
            validate_org_credits("overdraft_limit", d)?;
        }
        Ok(o)
    }
}

/// After an admin edit, the organization must still cover what it holds (and, postpaid, what it
/// has used): otherwise holds already promised could not be collected.
pub fn check_org_edit(org_id: &str, org: &Org) -> Result<()> {
    if org.available() < 0 {
        return Err(QuotaError::invalid(format!(
            "organization '{org_id}' holds {} and has used {} credits: its {} limit cannot go below what it holds{}",
            org.held_quota,
            org.used_quota,
            org.billing.as_str(),
            if org.billing == Billing::Postpaid { " plus what it used" } else { "" }
        ))
        .with("field", "quota"));
    }
    Ok(())
}

/// Validates a top-up of an organization's quota.
pub fn validate_org_top_up(credits: i64) -> Result<()> {
    crate::pricing::validate_credits("credits", credits, false)
}

// One top-up always fits in an empty quota.
const _: () = assert!(CREDITS_PER_OPERATION_MAX <= BALANCE_MAX);

/// Whether a top-up keeps the quota within [`BALANCE_MAX`].
pub fn check_org_room(org_id: &str, quota: i64, credits: i64) -> Result<()> {
    if quota.checked_add(credits).is_some_and(|q| q <= BALANCE_MAX) {
        return Ok(());
    }
    Err(QuotaError::new(
        ErrorKind::BalanceLimit,
        format!(
            "organization '{org_id}' has a quota of {quota}; {credits} more would pass the limit of {BALANCE_MAX}"
        ),
    )
    .with("org", org_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn org(billing: Billing, quota: i64, used: i64, held: i64, overdraft: i64) -> Org {
        Org {
            billing,
            enabled: true,
            quota,
            used_quota: used,
            held_quota: held,
            overdraft_limit: overdraft,
        }
    }

    #[test]
    fn available_by_billing_type() {
        assert_eq!(org(Billing::Prepaid, 100, 50, 30, 1000).available(), 70);
        assert_eq!(org(Billing::Postpaid, 100, 50, 30, 40).available(), 60);
        assert_eq!(org(Billing::Postpaid, 0, 0, 0, 0).available(), 0);
        let huge = org(Billing::Postpaid, i64::MAX, 0, 0, i64::MAX);
        assert_eq!(huge.available(), i64::MAX);
    }

    #[test]
    fn org_holds_are_refused_by_name() {
        let mut o = org(Billing::Prepaid, 100, 0, 60, 0);
        assert!(check_org_hold("o", &o, 40).is_ok());
        let e = check_org_hold("o", &o, 41).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InsufficientOrgQuota);
        assert!(e
            .message
            .contains("organization 'o' has 40 credits available"));
        o.enabled = false;
        assert_eq!(
            check_org_hold("o", &o, 0).unwrap_err().kind,
            ErrorKind::OrgDisabled
        );
    }

    #[test]
    fn user_holds_count_what_is_already_held() {
        assert!(check_user_hold("u", 100, 60, 40).is_ok());
        let e = check_user_hold("u", 100, 60, 41).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InsufficientUserQuota);
        assert_eq!(
            e.message,
            "user 'u' has 40 credits available (100 balance, 60 held), 41 required"
        );
    }

    #[test]
    fn settle_below_at_and_above_the_hold() {
        // below: the rest of the hold goes back
        assert_eq!(
            settle_split(100, 30, 0),
            Split {
                charged: 30,
                returned: 70,
                uncollected: 0
            }
        );
        assert_eq!(
            settle_split(100, 100, 0),
            Split {
                charged: 100,
                returned: 0,
                uncollected: 0
            }
        );
        // above, covered by free room
        assert_eq!(
            settle_split(100, 150, 50),
            Split {
                charged: 150,
                returned: 0,
                uncollected: 0
            }
        );
        // above, partly covered: the rest is uncollected
        assert_eq!(
            settle_split(100, 150, 20),
            Split {
                charged: 120,
                returned: 0,
                uncollected: 30
            }
        );
        // free room negative (an inconsistent edit): only the hold is payable
        assert_eq!(settle_split(100, 150, -20).charged, 80);
        assert_eq!(settle_split(10, 150, -20).charged, 0);
    }

    #[test]
    fn settle_split_never_crosses_the_floor() {
        // Exhaustive over a small grid: the subject pays at most hold + max(free, 0), the split
        // adds up, and nothing is negative.
        for hold in 0..12 {
            for actual in 0..30 {
                for free in -15..15 {
                    let s = settle_split(hold, actual, free);
                    assert!(s.charged >= 0 && s.returned >= 0 && s.uncollected >= 0);
                    assert_eq!(s.charged + s.uncollected, actual);
                    assert!(s.charged <= (hold + free).max(0));
                    if s.uncollected > 0 {
                        assert_eq!(s.charged, (hold + free).max(0));
                    }
                    if actual <= hold && free >= 0 {
                        assert_eq!(s.returned, hold - actual);
                    }
                }
            }
        }
        let big = settle_split(i64::MAX, i64::MAX, i64::MAX);
        assert_eq!(big.charged, i64::MAX);
    }

    #[test]
    fn org_is_charged_the_full_amount() {
        let pre = org(Billing::Prepaid, 100, 0, 50, 0);
        assert_eq!(pre.settle_changes(50, 70), (-70, 70, -50));
        let post = org(Billing::Postpaid, 100, 0, 50, 10);
        assert_eq!(post.settle_changes(50, 70), (0, 70, -50));
    }

    #[test]
    fn amounts_and_bounds() {
        assert_eq!(amount(Some(5), None).unwrap(), Amount::Credits(5));
        assert_eq!(amount(None, Some(0.5)).unwrap(), Amount::Usd(0.5));
        assert!(amount(Some(5), Some(0.5)).is_err());
        assert!(amount(None, None).is_err());
        assert!(amount(Some(-1), None).is_err());
        assert!(amount(None, Some(f64::NAN)).is_err());
        assert!(amount(None, Some(-1.0)).is_err());
        assert!(validate_ttl(0).is_err());
        assert!(validate_ttl(1).is_ok());
        assert!(validate_ttl(86_400).is_ok());
        assert!(validate_ttl(86_401).is_err());
        assert!(validate_actual(-1).is_err());
        assert!(validate_reservation_id(0).is_err());
        assert!(validate_expire_batch(0).is_err());
    }

    #[test]
    fn org_input() {
        let o = OrgInput::parse(json!({"name": "Acme", "billing_type": "postpaid",
                                       "quota": 10, "overdraft_limit": 5}))
        .unwrap();
        assert_eq!(o.billing_type.as_deref(), Some("postpaid"));
        assert!(OrgInput::parse(json!({"billing_type": "credit"})).is_err());
        assert!(OrgInput::parse(json!({"status": "paused"})).is_err());
        assert!(OrgInput::parse(json!({"quota": -1})).is_err());
        assert!(OrgInput::parse(json!({"overdraft_limit": -1})).is_err());
        assert!(OrgInput::parse(json!({"name": " "})).is_err());
        assert!(OrgInput::parse(json!({"plan": "x"})).is_err());
        assert!(OrgInput::parse(json!([])).is_err());
    }

    #[test]
    fn edits_keep_holds_covered() {
        assert!(check_org_edit("o", &org(Billing::Prepaid, 50, 0, 50, 0)).is_ok());
        assert!(check_org_edit("o", &org(Billing::Prepaid, 49, 0, 50, 0)).is_err());
        assert!(check_org_edit("o", &org(Billing::Postpaid, 0, 40, 10, 50)).is_ok());
        assert!(check_org_edit("o", &org(Billing::Postpaid, 0, 40, 10, 49)).is_err());
        assert!(check_org_room("o", BALANCE_MAX - 1, 1).is_ok());
        assert!(check_org_room("o", BALANCE_MAX, 1).is_err());
    }
}
