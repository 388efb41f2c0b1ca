//! Access tokens (seed 001, SPEC 4): the rules of creating a token, of updating it (expiry, quota
//! type, quota operations, rate limits) and of whether it can be used now. Pure: the caller reads
//! the stored row into a [`TokenState`], calls [`create`] or [`update`], and stores the result.
//!
//! Quota types: `time` checks only the expiry, `count` only the remaining quota, `hybrid` both.
//! A token keeps its `total_quota` and `remaining_quota` across type changes (the seed's rule:
//! a count token turned into a time token keeps its numbers, unchecked, and gets them checked
//! again if it is turned back).
//!
//! Expiry (`operation`): on create, `add` sets it `days` from now, `set` to `specific_date`
//! (which must be in the future), `unlimited` removes it. On update only `set` and `unlimited`
//! exist, and `set` accepts a date in the past (an admin may expire a token at once; the seed's
//! own examples use dates that are past by now).
//!
//! Quota operations on update (`quota_operation`, `quota_amount`):
//! - `add` (amount > 0): remaining and total both grow by the amount (null counts as 0);
//! - `set` (amount >= 0): remaining = amount; total = amount when it was null or 0, else the
//!   larger of total and amount (so remaining never exceeds total);
//! - `reset`: without an amount remaining = total (a null total is an error); with an amount
//!   (>= 0) total = remaining = amount.
//!
//! A token that becomes `count` or `hybrid` must have a quota: a null `total_quota` after the
//! update is an error, and so is a time token turned into count or hybrid without a
//! `quota_operation` while its total is 0 (the seed's time tokens carry 0 for "no quota", see its
//! scenario 2; its conversion matrix says time to count needs a quota set).
//!
//! Rate limits: `rate_limit_per_minute` (null = no limit; admissions per window),
//! `rate_limit_burst` (admissions per second, default 10) and `rate_limit_window_seconds`
//! (default 60). On update a field left out is unchanged and an explicit null goes back to the
//! default (no limit, 10, 60). The limiter itself is [`crate::ratelimit`].

use crate::error::{QuotaError, Result};
use crate::ids::{is_invisible, validate_id, validate_user_id};
use crate::plan::from_json;
use crate::time::parse_timestamp;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer};

pub const RATE_LIMIT_BURST_DEFAULT: i32 = 10;
pub const RATE_LIMIT_WINDOW_S_DEFAULT: i32 = 60;
/// The largest `rate_limit_per_minute` and `rate_limit_burst` (the limiter's ring size).
pub const RATE_LIMIT_MAX: i32 = 1000;
pub const RATE_LIMIT_WINDOW_S_MAX: i32 = 86_400;
/// The largest `total_quota`, `remaining_quota` and `quota_amount`.
pub const QUOTA_MAX: i64 = 1_000_000_000_000_000;
/// The largest `days` of `operation: add` (100 years).
pub const DAYS_MAX: i64 = 36_500;
/// The largest number of units one consume or refund moves.
pub const UNITS_MAX: i64 = 1_000_000_000;
pub const WS_ID_LEN_MAX: usize = 255;
pub const EMAIL_LEN_MAX: usize = 254;

const _: () = assert!(RATE_LIMIT_MAX as usize <= crate::ratelimit::RING_MAX);

fn invalid(field: &str, message: impl Into<String>) -> QuotaError {
    QuotaError::invalid(message).with("field", field)
}

fn needs_date() -> QuotaError {
    invalid("specific_date", "operation 'set' needs specific_date")
}

/// What a token checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaType {
    /// Expiry only (a subscription with no count).
    Time,
    /// Remaining quota only (a prepaid pack that never expires).
    Count,
    /// Both.
    Hybrid,
}

impl QuotaType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "time" => Ok(QuotaType::Time),
            "count" => Ok(QuotaType::Count),
            "hybrid" => Ok(QuotaType::Hybrid),
            other => Err(invalid(
                "quota_type",
                format!("quota_type must be 'time', 'count' or 'hybrid', got '{other}'"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaType::Time => "time",
            QuotaType::Count => "count",
            QuotaType::Hybrid => "hybrid",
        }
    }

    /// Whether consumption checks and debits `remaining_quota`.
    pub fn checks_count(self) -> bool {
        matches!(self, QuotaType::Count | QuotaType::Hybrid)
    }

    /// Whether `expires_at` refuses the token once passed.
    pub fn checks_expiry(self) -> bool {
        matches!(self, QuotaType::Time | QuotaType::Hybrid)
    }
}

/// How the expiry was last given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `days` from now (create only).
    Add,
    /// A `specific_date`.
    Set,
    /// No expiry.
    Unlimited,
}

impl Operation {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "add" => Ok(Operation::Add),
            "set" => Ok(Operation::Set),
            "unlimited" => Ok(Operation::Unlimited),
            other => Err(invalid(
                "operation",
                format!("operation must be 'add', 'set' or 'unlimited', got '{other}'"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Set => "set",
            Operation::Unlimited => "unlimited",
        }
    }
}

/// A change of the quota numbers on update (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOperation {
    Add,
    Set,
    Reset,
}

impl QuotaOperation {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "add" => Ok(QuotaOperation::Add),
            "set" => Ok(QuotaOperation::Set),
            "reset" => Ok(QuotaOperation::Reset),
            other => Err(invalid(
                "quota_operation",
                format!("quota_operation must be 'add', 'set' or 'reset', got '{other}'"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaOperation::Add => "add",
            QuotaOperation::Set => "set",
            QuotaOperation::Reset => "reset",
        }
    }
}

/// The stored state of a token (what the `quota.tokens` row holds, minus ids and timestamps of
/// record).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenState {
    pub ws_id: String,
    pub email: String,
    pub user_id: Option<String>,
    pub quota_type: QuotaType,
    pub total_quota: Option<i64>,
    pub remaining_quota: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub operation: Operation,
    pub active: bool,
    pub unlimited: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub rate_limit_burst: i32,
    pub rate_limit_window_seconds: i32,
}

/// `POST /flow/tokens` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub ws_id: String,
    pub email: String,
    pub operation: String,
    pub days: Option<i64>,
    pub specific_date: Option<String>,
    pub quota_type: Option<String>,
    pub total_quota: Option<i64>,
    pub user_id: Option<String>,
    pub unlimited: Option<bool>,
    pub rate_limit_per_minute: Option<i32>,
    pub rate_limit_burst: Option<i32>,
    pub rate_limit_window_seconds: Option<i32>,
}

/// `PUT /flow/tokens/:token` body. The rate-limit fields tell a field left out (`None`:
/// unchanged) from an explicit JSON null (`Some(None)`: back to the default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUpdate {
    pub operation: String,
    pub quota_type: Option<String>,
    pub quota_operation: Option<String>,
    pub quota_amount: Option<i64>,
    pub specific_date: Option<String>,
    pub unlimited: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limit_per_minute: Option<Option<i32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limit_burst: Option<Option<i32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limit_window_seconds: Option<Option<i32>>,
}

/// A present field, null or not (a missing one stays `None` through `#[serde(default)]`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?))
}

fn validate_range_i32(field: &str, v: i32, max: i32) -> Result<()> {
    if !(1..=max).contains(&v) {
        return Err(invalid(
            field,
            format!("{field} must be between 1 and {max}, got {v}"),
        ));
    }
    Ok(())
}

fn validate_per_minute(v: i32) -> Result<()> {
    validate_range_i32("rate_limit_per_minute", v, RATE_LIMIT_MAX)
}

fn validate_burst(v: i32) -> Result<()> {
    validate_range_i32("rate_limit_burst", v, RATE_LIMIT_MAX)
}

fn validate_window(v: i32) -> Result<()> {
    validate_range_i32("rate_limit_window_seconds", v, RATE_LIMIT_WINDOW_S_MAX)
}

/// A quota number in `min..=QUOTA_MAX`.
fn validate_quota(field: &str, v: i64, min: i64) -> Result<()> {
    if !(min..=QUOTA_MAX).contains(&v) {
        return Err(invalid(
            field,
            format!("{field} must be between {min} and {QUOTA_MAX}, got {v}"),
        ));
    }
    Ok(())
}

impl TokenCreate {
    pub fn parse(v: serde_json::Value) -> Result<Self> {
        let req: TokenCreate = from_json("token", v)?;
        req.validate()?;
        Ok(req)
    }

    /// Every rule that needs neither the clock nor the owner. [`create`] applies it again, so a
    /// request built in code is held to the same rules.
    pub fn validate(&self) -> Result<()> {
        validate_id("ws_id", &self.ws_id, WS_ID_LEN_MAX)?;
        validate_email(&self.email)?;
        if let Some(u) = &self.user_id {
            validate_user_id(u)?;
        }
        let operation = Operation::parse(&self.operation)?;
        match operation {
            Operation::Add => {
                let Some(days) = self.days else {
                    return Err(invalid("days", "operation 'add' needs days (1 or more)"));
                };
                if !(1..=DAYS_MAX).contains(&days) {
                    return Err(invalid(
                        "days",
                        format!("days must be between 1 and {DAYS_MAX}, got {days}"),
                    ));
                }
                if self.specific_date.is_some() {
                    return Err(invalid(
                        "specific_date",
                        "specific_date goes with operation 'set', not 'add'",
                    ));
                }
            }
            Operation::Set => {
                let Some(date) = &self.specific_date else {
                    return Err(needs_date());
                };
                parse_timestamp("specific_date", date)?;
                if self.days.is_some() {
                    return Err(invalid("days", "days goes with operation 'add', not 'set'"));
                }
            }
            Operation::Unlimited => {
                if self.days.is_some() {
                    return Err(invalid(
                        "days",
                        "operation 'unlimited' has no expiry: days is not allowed",
                    ));
                }
                if self.specific_date.is_some() {
                    return Err(invalid(
                        "specific_date",
                        "operation 'unlimited' has no expiry: specific_date is not allowed",
                    ));
                }
            }
        }
        let quota_type = match &self.quota_type {
            Some(t) => QuotaType::parse(t)?,
            None => QuotaType::Time,
        };
        match (quota_type.checks_count(), self.total_quota) {
            (true, None) => {
                return Err(invalid(
                    "total_quota",
                    format!(
                        "a {} token needs total_quota (1 to {QUOTA_MAX})",
                        quota_type.as_str()
                    ),
                ))
            }
            (true, Some(t)) => validate_quota("total_quota", t, 1)?,
            (false, Some(t)) => validate_quota("total_quota", t, 0)?,
            (false, None) => {}
        }
        if let Some(v) = self.rate_limit_per_minute {
            validate_per_minute(v)?;
        }
        if let Some(v) = self.rate_limit_burst {
            validate_burst(v)?;
        }
        if let Some(v) = self.rate_limit_window_seconds {
            validate_window(v)?;
        }
        Ok(())
    }
}

impl TokenUpdate {
    pub fn parse(v: serde_json::Value) -> Result<Self> {
        let req: TokenUpdate = from_json("token", v)?;
        req.validate()?;
        Ok(req)
    }

    /// Every rule that needs neither the clock nor the current state. [`update`] applies it again.
    pub fn validate(&self) -> Result<()> {
        match Operation::parse(&self.operation)? {
            Operation::Add => {
                return Err(invalid(
                    "operation",
                    "operation 'add' is for create only; an update takes 'set' or 'unlimited'",
                ))
            }
            Operation::Set => {
                let Some(date) = &self.specific_date else {
                    return Err(needs_date());
                };
                parse_timestamp("specific_date", date)?;
            }
            Operation::Unlimited => {
                if self.specific_date.is_some() {
                    return Err(invalid(
                        "specific_date",
                        "operation 'unlimited' has no expiry: specific_date is not allowed",
                    ));
                }
            }
        }
        if let Some(t) = &self.quota_type {
            QuotaType::parse(t)?;
        }
        match (&self.quota_operation, self.quota_amount) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(invalid(
                    "quota_operation",
                    "quota_amount needs a quota_operation ('add', 'set' or 'reset')",
                ))
            }
            (Some(op), amount) => match (QuotaOperation::parse(op)?, amount) {
                (QuotaOperation::Add, Some(a)) => validate_quota("quota_amount", a, 1)?,
                (QuotaOperation::Set | QuotaOperation::Reset, Some(a)) => {
                    validate_quota("quota_amount", a, 0)?
                }
                (QuotaOperation::Reset, None) => {}
                (q @ (QuotaOperation::Add | QuotaOperation::Set), None) => {
                    return Err(invalid(
                        "quota_amount",
                        format!("quota_operation '{}' needs quota_amount", q.as_str()),
                    ))
                }
            },
        }
        if let Some(Some(v)) = self.rate_limit_per_minute {
            validate_per_minute(v)?;
        }
        if let Some(Some(v)) = self.rate_limit_burst {
            validate_burst(v)?;
        }
        if let Some(Some(v)) = self.rate_limit_window_seconds {
            validate_window(v)?;
        }
        Ok(())
    }
}

/// The new token. `owner_unlimited`: the owner user's `unlimited` flag, when there is an owner
/// (a token of an unlimited user defaults to unlimited; `unlimited` in the request wins).
pub fn create(
    req: &TokenCreate,
    now: DateTime<Utc>,
    owner_unlimited: Option<bool>,
) -> Result<TokenState> {
    req.validate()?;
    let operation = Operation::parse(&req.operation)?;
    let expires_at = match operation {
        Operation::Add => {
            let days = req
                .days
                .ok_or_else(|| invalid("days", "operation 'add' needs days (1 or more)"))?;
            Some(
                now.checked_add_signed(Duration::days(days))
                    .ok_or_else(|| invalid("days", format!("now + {days} days is out of range")))?,
            )
        }
        Operation::Set => {
            let text = req.specific_date.as_deref().ok_or_else(needs_date)?;
            let at = parse_timestamp("specific_date", text)?;
            if at <= now {
                return Err(invalid(
                    "specific_date",
                    format!("specific_date is in the past: '{text}'"),
                ));
            }
            Some(at)
        }
        Operation::Unlimited => None,
    };
    let quota_type = match &req.quota_type {
        Some(t) => QuotaType::parse(t)?,
        None => QuotaType::Time,
    };
    Ok(TokenState {
        ws_id: req.ws_id.clone(),
        email: req.email.clone(),
        user_id: req.user_id.clone(),
        quota_type,
        total_quota: req.total_quota,
        remaining_quota: req.total_quota,
        expires_at,
        operation,
        active: true,
        unlimited: req.unlimited.or(owner_unlimited).unwrap_or(false),
        rate_limit_per_minute: req.rate_limit_per_minute,
        rate_limit_burst: req.rate_limit_burst.unwrap_or(RATE_LIMIT_BURST_DEFAULT),
        rate_limit_window_seconds: req
            .rate_limit_window_seconds
            .unwrap_or(RATE_LIMIT_WINDOW_S_DEFAULT),
    })
}

/// `a + b` bounded by [`QUOTA_MAX`], for `quota_operation: add`.
fn grown(field: &str, current: Option<i64>, amount: i64) -> Result<i64> {
    let v = i128::from(current.unwrap_or(0)) + i128::from(amount);
    if v > i128::from(QUOTA_MAX) {
        return Err(invalid(
            "quota_amount",
            format!("{field} would be {v}, at most {QUOTA_MAX}"),
        ));
    }
    Ok(v as i64)
}

/// The state after an update (pure: the caller stores it). Errors are 22023 naming the field.
/// `now` is not used by the rules today (an update may set a past expiry); it is taken so the
/// signature matches [`create`] and a clock-dependent rule needs no change of callers.
pub fn update(current: &TokenState, req: &TokenUpdate, now: DateTime<Utc>) -> Result<TokenState> {
    let _ = now;
    req.validate()?;
    let mut next = current.clone();

    next.operation = Operation::parse(&req.operation)?;
    next.expires_at = match next.operation {
        Operation::Set => Some(parse_timestamp(
            "specific_date",
            req.specific_date.as_deref().ok_or_else(needs_date)?,
        )?),
        _ => None,
    };

    if let Some(t) = &req.quota_type {
        next.quota_type = QuotaType::parse(t)?;
    }

    let quota_operation = req
        .quota_operation
        .as_deref()
        .map(QuotaOperation::parse)
        .transpose()?;
    match (quota_operation, req.quota_amount) {
        (None, _) => {}
        (Some(QuotaOperation::Add), Some(a)) => {
            next.total_quota = Some(grown("total_quota", current.total_quota, a)?);
            next.remaining_quota = Some(grown("remaining_quota", current.remaining_quota, a)?);
        }
        (Some(QuotaOperation::Set), Some(a)) => {
            next.remaining_quota = Some(a);
            next.total_quota = Some(match current.total_quota {
                None | Some(0) => a,
                Some(t) => t.max(a),
            });
        }
        (Some(QuotaOperation::Reset), Some(a)) => {
            next.total_quota = Some(a);
            next.remaining_quota = Some(a);
        }
        (Some(QuotaOperation::Reset), None) => {
            let Some(t) = current.total_quota else {
                return Err(invalid(
                    "quota_operation",
                    "quota_operation 'reset' without quota_amount needs a total_quota to reset to, and it is null",
                ));
            };
            next.remaining_quota = Some(t);
        }
        (Some(q @ (QuotaOperation::Add | QuotaOperation::Set)), None) => {
            return Err(invalid(
                "quota_amount",
                format!("quota_operation '{}' needs quota_amount", q.as_str()),
            ))
        }
    }

    if next.quota_type.checks_count() {
        let turned_from_time = !current.quota_type.checks_count();
        let no_quota = match next.total_quota {
            None => true,
            Some(0) => turned_from_time && quota_operation.is_none(),
            Some(_) => false,
        };
        if no_quota {
            return Err(invalid(
                "quota_operation",
                format!(
                    "a {} token needs a quota: this token has none; give quota_operation 'set' or 'add' with quota_amount",
                    next.quota_type.as_str()
                ),
            ));
        }
        if next.remaining_quota.is_none() {
            // A total without a remaining count (only from a hand-edited row): nothing consumed.
            next.remaining_quota = next.total_quota;
        }
    }

    if let Some(u) = req.unlimited {
        next.unlimited = u;
    }
    if let Some(v) = req.rate_limit_per_minute {
        next.rate_limit_per_minute = v;
    }
    if let Some(v) = req.rate_limit_burst {
        next.rate_limit_burst = v.unwrap_or(RATE_LIMIT_BURST_DEFAULT);
    }
    if let Some(v) = req.rate_limit_window_seconds {
        next.rate_limit_window_seconds = v.unwrap_or(RATE_LIMIT_WINDOW_S_DEFAULT);
    }
    Ok(next)
}

/// `max(total - remaining, 0)`, None when total is None (a null remaining counts as 0).
pub fn consumed(s: &TokenState) -> Option<i64> {
    s.total_quota
        .map(|t| t.saturating_sub(s.remaining_quota.unwrap_or(0)).max(0))
}

/// Why a token cannot be used now, before rate limits and quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Deactivated (deleted). HTTP 403 `inactive`.
    Inactive,
    /// A time or hybrid token whose `expires_at` has come. HTTP 403 `expired`.
    Expired,
}

impl Refusal {
    /// The `code` of `quota.verify_token`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Inactive => "inactive",
            Refusal::Expired => "expired",
        }
    }
}

/// Why a token cannot be used now (before rate limits and quota): None if usable. Inactive is
/// checked first; a token expires at `expires_at` (a token whose `expires_at` is exactly now is
/// expired), and only when its type checks expiry.
pub fn usable(s: &TokenState, now: DateTime<Utc>) -> Option<Refusal> {
    if !s.active {
        return Some(Refusal::Inactive);
    }
    if s.quota_type.checks_expiry() && s.expires_at.is_some_and(|at| at <= now) {
        return Some(Refusal::Expired);
    }
    None
}

/// Units of one consume or refund: 1 to [`UNITS_MAX`].
pub fn validate_units(units: i64) -> Result<()> {
    if !(1..=UNITS_MAX).contains(&units) {
        return Err(invalid(
            "units",
            format!("units must be between 1 and {UNITS_MAX}, got {units}"),
        ));
    }
    Ok(())
}

/// A plausible address: at most [`EMAIL_LEN_MAX`] characters, exactly one `@`, a non-empty local
/// part, a domain of non-empty dot-separated labels with at least one dot, and no whitespace,
/// control or invisible characters. (Deliverability is not ours to check.)
pub fn validate_email(email: &str) -> Result<()> {
    let shown: String = email.chars().take(64).collect();
    let bad = |why: &str| Err(invalid("email", format!("email '{shown}' {why}")));
    let n = email.chars().count();
    if n == 0 {
        return Err(invalid("email", "email must not be empty"));
    }
    if n > EMAIL_LEN_MAX {
        return Err(invalid(
            "email",
            format!("email must be at most {EMAIL_LEN_MAX} characters, got {n}"),
        ));
    }
    if let Some(c) = email
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || is_invisible(c))
    {
        return Err(invalid(
            "email",
            format!(
                "email must not contain spaces, control or invisible characters, found U+{:04X}",
                c as u32
            ),
        ));
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return bad("is not an address: it needs exactly one '@'");
    };
    if local.is_empty() {
        return bad("is not an address: nothing before '@'");
    }
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return bad("is not an address: the domain needs dot-separated names, like example.com");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn at(s: &str) -> DateTime<Utc> {
        parse_timestamp("t", s).unwrap()
    }

    /// A clock in 2025, when the seed was written.
    fn now() -> DateTime<Utc> {
        at("2025-01-15 12:00:00")
    }

    /// The SQLSTATE and `field` of an error.
    fn field_of(e: QuotaError) -> (String, String) {
        (
            e.kind.sqlstate().to_string(),
            e.fields
                .get("field")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    }

    fn assert_invalid<T: std::fmt::Debug>(r: Result<T>, field: &str) {
        let e = r.expect_err(&format!("must be refused (field {field})"));
        assert_eq!(
            field_of(e.clone()),
            ("22023".to_string(), field.to_string()),
            "{}",
            e.message
        );
    }

    fn state(
        quota_type: QuotaType,
        total: Option<i64>,
        remaining: Option<i64>,
        expires: Option<&str>,
    ) -> TokenState {
        TokenState {
            ws_id: "ws".into(),
            email: "a@example.com".into(),
            user_id: None,
            quota_type,
            total_quota: total,
            remaining_quota: remaining,
            expires_at: expires.map(at),
            operation: if expires.is_some() {
                Operation::Set
            } else {
                Operation::Unlimited
            },
            active: true,
            unlimited: false,
            rate_limit_per_minute: None,
            rate_limit_burst: RATE_LIMIT_BURST_DEFAULT,
            rate_limit_window_seconds: RATE_LIMIT_WINDOW_S_DEFAULT,
        }
    }

    fn upd(current: &TokenState, body: Value) -> Result<TokenState> {
        update(current, &TokenUpdate::parse(body)?, now())
    }

    fn new(body: Value) -> Result<TokenState> {
        create(&TokenCreate::parse(body)?, now(), None)
    }

    /// The seed's view of a token: its four quota fields.
    fn shown(s: &TokenState) -> Value {
        json!({
            "quota_type": s.quota_type.as_str(),
            "total_quota": s.total_quota,
            "remaining_quota": s.remaining_quota,
            "expires_at": s.expires_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
        })
    }

    // ---- The seed's three scenarios, exactly as its document shows them. ----

    #[test]
    fn scenario_1_count_to_time() {
        let before = state(QuotaType::Count, Some(1000), Some(500), None);
        let after = upd(
            &before,
            json!({"operation": "set", "quota_type": "time", "specific_date": "2025-12-31 23:59:59"}),
        )
        .unwrap();
        assert_eq!(
            shown(&after),
            json!({"quota_type": "time", "total_quota": 1000, "remaining_quota": 500,
                   "expires_at": "2025-12-31 23:59:59"})
        );
        assert_eq!(after.operation, Operation::Set);
    }

    #[test]
    fn scenario_2_time_to_count() {
        let before = state(
            QuotaType::Time,
            Some(0),
            Some(0),
            Some("2025-12-31 23:59:59"),
        );
        let after = upd(
            &before,
            json!({"operation": "unlimited", "quota_type": "count",
                   "quota_operation": "set", "quota_amount": 1000}),
        )
        .unwrap();
        assert_eq!(
            shown(&after),
            json!({"quota_type": "count", "total_quota": 1000, "remaining_quota": 1000,
                   "expires_at": null})
        );
        assert_eq!(after.operation, Operation::Unlimited);
    }

    #[test]
    fn scenario_3_count_to_hybrid_keeps_the_quota() {
        let before = state(QuotaType::Count, Some(5000), Some(3000), None);
        let after = upd(
            &before,
            json!({"operation": "set", "quota_type": "hybrid", "specific_date": "2025-06-30 23:59:59"}),
        )
        .unwrap();
        assert_eq!(
            shown(&after),
            json!({"quota_type": "hybrid", "total_quota": 5000, "remaining_quota": 3000,
                   "expires_at": "2025-06-30 23:59:59"})
        );
    }

    #[test]
    fn scenarios_hold_after_their_dates_have_passed() {
        // The seed's dates are in 2025; an update may set a past expiry (the token is expired).
        let later = at("2026-12-01 00:00:00");
        let before = state(QuotaType::Count, Some(5000), Some(3000), None);
        let req = TokenUpdate::parse(json!({"operation": "set", "quota_type": "hybrid",
                                            "specific_date": "2025-06-30 23:59:59"}))
        .unwrap();
        let after = update(&before, &req, later).unwrap();
        assert_eq!(after.expires_at, Some(at("2025-06-30 23:59:59")));
        assert_eq!(usable(&after, later), Some(Refusal::Expired));
    }

    #[test]
    fn the_seed_script_creates_then_converts_twice() {
        let t = new(
            json!({"ws_id": "test_workspace", "email": "test@example.com",
                           "operation": "unlimited", "quota_type": "count", "total_quota": 1000}),
        )
        .unwrap();
        assert_eq!(
            shown(&t),
            json!({"quota_type": "count", "total_quota": 1000, "remaining_quota": 1000,
                   "expires_at": null})
        );
        let t = upd(
            &t,
            json!({"operation": "set", "quota_type": "time", "specific_date": "2025-12-31 23:59:59"}),
        )
        .unwrap();
        assert_eq!(t.quota_type, QuotaType::Time);
        assert_eq!((t.total_quota, t.remaining_quota), (Some(1000), Some(1000)));
        let t = upd(
            &t,
            json!({"operation": "unlimited", "quota_type": "count",
                   "quota_operation": "set", "quota_amount": 500}),
        )
        .unwrap();
        // set: remaining = 500, total keeps the larger 1000.
        assert_eq!(
            shown(&t),
            json!({"quota_type": "count", "total_quota": 1000, "remaining_quota": 500,
                   "expires_at": null})
        );
        assert_eq!(consumed(&t), Some(500));
    }

    #[test]
    fn the_seed_count_to_time_step_2_zeroes_the_quota() {
        let t = state(
            QuotaType::Time,
            Some(1000),
            Some(500),
            Some("2025-12-31 23:59:59"),
        );
        let t = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "set", "quota_amount": 0}),
        )
        .unwrap();
        assert_eq!(t.quota_type, QuotaType::Time);
        assert_eq!(t.remaining_quota, Some(0));
        assert_eq!(t.expires_at, None);
    }

    // ---- The conversion matrix. ----

    #[test]
    fn matrix_time_to_count_needs_a_quota() {
        let created = state(QuotaType::Time, None, None, Some("2025-12-31 23:59:59"));
        let seed_like = state(
            QuotaType::Time,
            Some(0),
            Some(0),
            Some("2025-12-31 23:59:59"),
        );
        for before in [&created, &seed_like] {
            assert_invalid(
                upd(
                    before,
                    json!({"operation": "unlimited", "quota_type": "count"}),
                ),
                "quota_operation",
            );
        }
        let after = upd(
            &created,
            json!({"operation": "unlimited", "quota_type": "count",
                   "quota_operation": "add", "quota_amount": 300}),
        )
        .unwrap();
        assert_eq!(
            (
                after.quota_type,
                after.total_quota,
                after.remaining_quota,
                after.expires_at
            ),
            (QuotaType::Count, Some(300), Some(300), None)
        );
        // A time token that kept a quota from before (scenario 1) gets it checked again.
        let kept = state(
            QuotaType::Time,
            Some(1000),
            Some(500),
            Some("2025-12-31 23:59:59"),
        );
        let after = upd(
            &kept,
            json!({"operation": "unlimited", "quota_type": "count"}),
        )
        .unwrap();
        assert_eq!(
            (after.total_quota, after.remaining_quota),
            (Some(1000), Some(500))
        );
    }

    #[test]
    fn matrix_time_to_hybrid_keeps_the_time_and_needs_a_quota() {
        let before = state(QuotaType::Time, None, None, Some("2025-12-31 23:59:59"));
        assert_invalid(
            upd(
                &before,
                json!({"operation": "set", "quota_type": "hybrid",
                       "specific_date": "2025-12-31 23:59:59"}),
            ),
            "quota_operation",
        );
        let after = upd(
            &before,
            json!({"operation": "set", "quota_type": "hybrid", "specific_date": "2025-12-31 23:59:59",
                   "quota_operation": "set", "quota_amount": 200}),
        )
        .unwrap();
        assert_eq!(
            shown(&after),
            json!({"quota_type": "hybrid", "total_quota": 200, "remaining_quota": 200,
                   "expires_at": "2025-12-31 23:59:59"})
        );
    }

    #[test]
    fn matrix_count_to_time_sets_a_time() {
        let before = state(QuotaType::Count, Some(1000), Some(10), None);
        assert_invalid(
            upd(&before, json!({"operation": "set", "quota_type": "time"})),
            "specific_date",
        );
        let after = upd(
            &before,
            json!({"operation": "set", "quota_type": "time", "specific_date": "2025-03-01"}),
        )
        .unwrap();
        assert_eq!(after.quota_type, QuotaType::Time);
        assert_eq!(after.expires_at, Some(at("2025-03-01 00:00:00")));
        assert_eq!(
            (after.total_quota, after.remaining_quota),
            (Some(1000), Some(10))
        );
    }

    #[test]
    fn matrix_count_to_hybrid_keeps_the_quota_and_sets_a_time() {
        let before = state(QuotaType::Count, Some(5000), Some(3000), None);
        let after = upd(
            &before,
            json!({"operation": "set", "quota_type": "hybrid", "specific_date": "2025-06-30T23:59:59Z"}),
        )
        .unwrap();
        assert_eq!(after.quota_type, QuotaType::Hybrid);
        assert_eq!(
            (after.total_quota, after.remaining_quota),
            (Some(5000), Some(3000))
        );
        assert_eq!(after.expires_at, Some(at("2025-06-30 23:59:59")));
    }

    #[test]
    fn matrix_hybrid_to_time_keeps_the_time() {
        let before = state(
            QuotaType::Hybrid,
            Some(100),
            Some(40),
            Some("2025-12-31 23:59:59"),
        );
        let after = upd(
            &before,
            json!({"operation": "set", "quota_type": "time", "specific_date": "2025-12-31 23:59:59"}),
        )
        .unwrap();
        assert_eq!(after.quota_type, QuotaType::Time);
        assert_eq!(after.expires_at, before.expires_at);
        assert_eq!(
            (after.total_quota, after.remaining_quota),
            (Some(100), Some(40))
        );
        // The operation given is followed: unlimited removes the time limit.
        let after = upd(
            &before,
            json!({"operation": "unlimited", "quota_type": "time"}),
        )
        .unwrap();
        assert_eq!(after.expires_at, None);
        assert_eq!(after.operation, Operation::Unlimited);
    }

    #[test]
    fn matrix_hybrid_to_count_keeps_the_quota_and_drops_the_time() {
        let before = state(
            QuotaType::Hybrid,
            Some(100),
            Some(40),
            Some("2025-12-31 23:59:59"),
        );
        let after = upd(
            &before,
            json!({"operation": "unlimited", "quota_type": "count"}),
        )
        .unwrap();
        assert_eq!(
            shown(&after),
            json!({"quota_type": "count", "total_quota": 100, "remaining_quota": 40,
                   "expires_at": null})
        );
    }

    #[test]
    fn a_count_token_of_zero_stays_a_count_token() {
        // Only a time token's 0 means "no quota"; a count token reset to 0 is a quota of 0.
        let before = state(QuotaType::Count, Some(0), Some(0), None);
        let after = upd(
            &before,
            json!({"operation": "unlimited", "quota_type": "hybrid"}),
        );
        assert!(after.is_ok());
        assert_invalid(
            upd(
                &state(QuotaType::Count, None, None, None),
                json!({"operation": "unlimited"}),
            ),
            "quota_operation",
        );
    }

    // ---- Quota operations. ----

    #[test]
    fn quota_add_grows_both_and_null_counts_as_zero() {
        let t = state(QuotaType::Count, Some(100), Some(30), None);
        let a = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": 50}),
        )
        .unwrap();
        assert_eq!((a.total_quota, a.remaining_quota), (Some(150), Some(80)));
        let t = state(QuotaType::Time, None, None, None);
        let a = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": 7}),
        )
        .unwrap();
        assert_eq!((a.total_quota, a.remaining_quota), (Some(7), Some(7)));
        for bad in [0, -1] {
            assert_invalid(
                upd(
                    &t,
                    json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": bad}),
                ),
                "quota_amount",
            );
        }
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "quota_operation": "add"}),
            ),
            "quota_amount",
        );
    }

    #[test]
    fn quota_add_is_bounded() {
        let t = state(QuotaType::Count, Some(QUOTA_MAX - 1), Some(5), None);
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": 2}),
            ),
            "quota_amount",
        );
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "quota_operation": "set",
                       "quota_amount": QUOTA_MAX + 1}),
            ),
            "quota_amount",
        );
        let a = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": 1}),
        )
        .unwrap();
        assert_eq!(a.total_quota, Some(QUOTA_MAX));
    }

    #[test]
    fn quota_set_rules() {
        let set = |t: &TokenState, amount: i64| {
            upd(
                t,
                json!({"operation": "unlimited", "quota_operation": "set", "quota_amount": amount}),
            )
            .map(|s| (s.total_quota, s.remaining_quota))
        };
        // total null or 0: total = amount.
        assert_eq!(
            set(&state(QuotaType::Count, None, None, None), 40).unwrap(),
            (Some(40), Some(40))
        );
        assert_eq!(
            set(&state(QuotaType::Count, Some(0), Some(0), None), 40).unwrap(),
            (Some(40), Some(40))
        );
        // Otherwise total = max(total, amount).
        assert_eq!(
            set(&state(QuotaType::Count, Some(100), Some(10), None), 40).unwrap(),
            (Some(100), Some(40))
        );
        assert_eq!(
            set(&state(QuotaType::Count, Some(100), Some(10), None), 400).unwrap(),
            (Some(400), Some(400))
        );
        assert_eq!(
            set(&state(QuotaType::Count, Some(100), Some(10), None), 0).unwrap(),
            (Some(100), Some(0))
        );
        assert_invalid(
            set(&state(QuotaType::Count, Some(100), Some(10), None), -1),
            "quota_amount",
        );
        assert_invalid(
            upd(
                &state(QuotaType::Count, Some(1), Some(1), None),
                json!({"operation": "unlimited", "quota_operation": "set"}),
            ),
            "quota_amount",
        );
    }

    #[test]
    fn quota_reset_rules() {
        let t = state(QuotaType::Count, Some(100), Some(10), None);
        let a = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "reset"}),
        )
        .unwrap();
        assert_eq!((a.total_quota, a.remaining_quota), (Some(100), Some(100)));
        let a = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "reset", "quota_amount": 25}),
        )
        .unwrap();
        assert_eq!((a.total_quota, a.remaining_quota), (Some(25), Some(25)));
        let a = upd(
            &t,
            json!({"operation": "unlimited", "quota_operation": "reset", "quota_amount": 0}),
        )
        .unwrap();
        assert_eq!((a.total_quota, a.remaining_quota), (Some(0), Some(0)));
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "quota_operation": "reset", "quota_amount": -5}),
            ),
            "quota_amount",
        );
        assert_invalid(
            upd(
                &state(QuotaType::Time, None, None, None),
                json!({"operation": "unlimited", "quota_operation": "reset"}),
            ),
            "quota_operation",
        );
    }

    #[test]
    fn quota_amount_needs_an_operation_and_operations_are_known() {
        let t = state(QuotaType::Count, Some(100), Some(10), None);
        assert_invalid(
            upd(&t, json!({"operation": "unlimited", "quota_amount": 5})),
            "quota_operation",
        );
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "quota_operation": "double", "quota_amount": 5}),
            ),
            "quota_operation",
        );
        let same = upd(&t, json!({"operation": "unlimited"})).unwrap();
        assert_eq!(same, t);
    }

    // ---- Expiry operations on update. ----

    #[test]
    fn update_operations() {
        let t = state(QuotaType::Time, None, None, None);
        assert_invalid(upd(&t, json!({"operation": "add"})), "operation");
        assert_invalid(upd(&t, json!({"operation": "renew"})), "operation");
        assert_invalid(upd(&t, json!({"quota_type": "time"})), "token");
        assert_invalid(upd(&t, json!({"operation": "set"})), "specific_date");
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "specific_date": "2025-12-31 23:59:59"}),
            ),
            "specific_date",
        );
        assert_eq!(
            field_of(upd(&t, json!({"operation": "set", "specific_date": "someday"})).unwrap_err())
                .1,
            "specific_date"
        );
        assert_invalid(
            upd(
                &t,
                json!({"operation": "set", "quota_type": "weekly",
                           "specific_date": "2025-12-31"}),
            ),
            "quota_type",
        );
        let a = upd(
            &t,
            json!({"operation": "set", "specific_date": "2025-12-31 23:59:59"}),
        )
        .unwrap();
        assert_eq!(a.expires_at, Some(at("2025-12-31 23:59:59")));
        assert_eq!(a.operation, Operation::Set);
    }

    #[test]
    fn update_unlimited_flag_is_set_only_when_given() {
        let t = state(QuotaType::Count, Some(1), Some(1), None);
        let a = upd(&t, json!({"operation": "unlimited", "unlimited": true})).unwrap();
        assert!(a.unlimited);
        let b = upd(&a, json!({"operation": "unlimited"})).unwrap();
        assert!(b.unlimited);
        let c = upd(&b, json!({"operation": "unlimited", "unlimited": false})).unwrap();
        assert!(!c.unlimited);
    }

    #[test]
    fn update_refuses_unknown_fields() {
        let t = state(QuotaType::Count, Some(1), Some(1), None);
        assert_invalid(
            upd(&t, json!({"operation": "unlimited", "expires_at": null})),
            "token",
        );
        assert_invalid(upd(&t, json!("set")), "token");
    }

    // ---- Rate-limit fields on update: absent, null, value. ----

    #[test]
    fn rate_limits_absent_are_unchanged_and_null_goes_back_to_the_default() {
        let mut t = state(QuotaType::Count, Some(1), Some(1), None);
        t.rate_limit_per_minute = Some(30);
        t.rate_limit_burst = 5;
        t.rate_limit_window_seconds = 10;

        let req = TokenUpdate::parse(json!({"operation": "unlimited"})).unwrap();
        assert_eq!(
            (
                req.rate_limit_per_minute,
                req.rate_limit_burst,
                req.rate_limit_window_seconds
            ),
            (None, None, None)
        );
        let same = update(&t, &req, now()).unwrap();
        assert_eq!(
            (
                same.rate_limit_per_minute,
                same.rate_limit_burst,
                same.rate_limit_window_seconds
            ),
            (Some(30), 5, 10)
        );

        let req = TokenUpdate::parse(json!({"operation": "unlimited",
            "rate_limit_per_minute": null, "rate_limit_burst": null,
            "rate_limit_window_seconds": null}))
        .unwrap();
        assert_eq!(
            (
                req.rate_limit_per_minute,
                req.rate_limit_burst,
                req.rate_limit_window_seconds
            ),
            (Some(None), Some(None), Some(None))
        );
        let reset = update(&t, &req, now()).unwrap();
        assert_eq!(
            (
                reset.rate_limit_per_minute,
                reset.rate_limit_burst,
                reset.rate_limit_window_seconds
            ),
            (None, RATE_LIMIT_BURST_DEFAULT, RATE_LIMIT_WINDOW_S_DEFAULT)
        );

        let changed = upd(
            &t,
            json!({"operation": "unlimited", "rate_limit_per_minute": 1000,
                   "rate_limit_burst": 1, "rate_limit_window_seconds": 86_400}),
        )
        .unwrap();
        assert_eq!(
            (
                changed.rate_limit_per_minute,
                changed.rate_limit_burst,
                changed.rate_limit_window_seconds
            ),
            (Some(1000), 1, 86_400)
        );
    }

    #[test]
    fn rate_limits_are_bounded_on_update() {
        let t = state(QuotaType::Count, Some(1), Some(1), None);
        for (field, v) in [
            ("rate_limit_per_minute", 0i64),
            ("rate_limit_per_minute", 1001),
            ("rate_limit_burst", 0),
            ("rate_limit_burst", -3),
            ("rate_limit_burst", 1001),
            ("rate_limit_window_seconds", 0),
            ("rate_limit_window_seconds", 86_401),
        ] {
            let mut body = json!({"operation": "unlimited"});
            body[field] = json!(v);
            assert_invalid(upd(&t, body), field);
        }
        // Not an integer: refused by the parser.
        assert_invalid(
            upd(
                &t,
                json!({"operation": "unlimited", "rate_limit_burst": "5"}),
            ),
            "token",
        );
    }

    // ---- Create. ----

    #[test]
    fn create_defaults() {
        let t =
            new(json!({"ws_id": "w1", "email": "a@b.co", "operation": "add", "days": 30})).unwrap();
        assert_eq!(
            t,
            TokenState {
                ws_id: "w1".into(),
                email: "a@b.co".into(),
                user_id: None,
                quota_type: QuotaType::Time,
                total_quota: None,
                remaining_quota: None,
                expires_at: Some(now() + Duration::days(30)),
                operation: Operation::Add,
                active: true,
                unlimited: false,
                rate_limit_per_minute: None,
                rate_limit_burst: 10,
                rate_limit_window_seconds: 60,
            }
        );
        assert_eq!(consumed(&t), None);
    }

    #[test]
    fn create_every_operation_and_type() {
        let t = new(json!({"ws_id": "w", "email": "a@b.co", "operation": "set",
                           "specific_date": "2025-02-01", "quota_type": "hybrid",
                           "total_quota": 10, "user_id": "u1",
                           "rate_limit_per_minute": 5, "rate_limit_burst": 2,
                           "rate_limit_window_seconds": 30}))
        .unwrap();
        assert_eq!(t.expires_at, Some(at("2025-02-01 00:00:00")));
        assert_eq!(t.operation, Operation::Set);
        assert_eq!((t.total_quota, t.remaining_quota), (Some(10), Some(10)));
        assert_eq!(t.user_id.as_deref(), Some("u1"));
        assert_eq!(
            (
                t.rate_limit_per_minute,
                t.rate_limit_burst,
                t.rate_limit_window_seconds
            ),
            (Some(5), 2, 30)
        );
        let t = new(
            json!({"ws_id": "w", "email": "a@b.co", "operation": "unlimited",
                           "quota_type": "count", "total_quota": 3}),
        )
        .unwrap();
        assert_eq!(t.expires_at, None);
        assert_eq!(t.quota_type, QuotaType::Count);
        // A time token may carry a quota (stored, not checked), even 0.
        let t = new(
            json!({"ws_id": "w", "email": "a@b.co", "operation": "unlimited",
                           "total_quota": 0}),
        )
        .unwrap();
        assert_eq!((t.total_quota, t.remaining_quota), (Some(0), Some(0)));
        assert_eq!(consumed(&t), Some(0));
    }

    #[test]
    fn create_unlimited_follows_the_owner_unless_given() {
        let req = TokenCreate::parse(
            json!({"ws_id": "w", "email": "a@b.co", "operation": "unlimited", "user_id": "u"}),
        )
        .unwrap();
        assert!(create(&req, now(), Some(true)).unwrap().unlimited);
        assert!(!create(&req, now(), Some(false)).unwrap().unlimited);
        assert!(!create(&req, now(), None).unwrap().unlimited);
        let mut req = req;
        req.unlimited = Some(false);
        assert!(!create(&req, now(), Some(true)).unwrap().unlimited);
        req.unlimited = Some(true);
        assert!(create(&req, now(), None).unwrap().unlimited);
    }

    #[test]
    fn create_validation_errors() {
        let base = json!({"ws_id": "w", "email": "a@b.co", "operation": "unlimited"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v;
            }
            new(b)
        };
        assert!(new(base.clone()).is_ok());
        assert_invalid(with("email", json!("not-an-address")), "email");
        assert_invalid(with("ws_id", json!("")), "ws_id");
        assert_invalid(with("ws_id", json!(" w")), "ws_id");
        assert_invalid(with("user_id", json!("u\n1")), "user_id");
        assert_invalid(with("operation", json!("forever")), "operation");
        assert_invalid(with("quota_type", json!("monthly")), "quota_type");
        assert_invalid(with("quota_type", json!("count")), "total_quota");
        assert_invalid(with("total_quota", json!(-1)), "total_quota");
        assert_invalid(with("total_quota", json!(QUOTA_MAX + 1)), "total_quota");
        assert_invalid(with("days", json!(3)), "days");
        assert_invalid(with("specific_date", json!("2030-01-01")), "specific_date");
        assert_invalid(
            with("rate_limit_per_minute", json!(0)),
            "rate_limit_per_minute",
        );
        assert_invalid(with("rate_limit_burst", json!(1001)), "rate_limit_burst");
        assert_invalid(
            with("rate_limit_window_seconds", json!(86_401)),
            "rate_limit_window_seconds",
        );
        assert_invalid(with("expires_at", json!("2030-01-01")), "token");
        assert_invalid(with("ws_id", Value::Null), "token");
        assert_invalid(with("email", Value::Null), "token");

        let count = |total: Value| {
            new(
                json!({"ws_id": "w", "email": "a@b.co", "operation": "unlimited",
                       "quota_type": "count", "total_quota": total}),
            )
        };
        assert_invalid(count(json!(0)), "total_quota");
        assert_invalid(count(Value::Null), "total_quota");
        assert_invalid(
            new(
                json!({"ws_id": "w", "email": "a@b.co", "operation": "unlimited",
                       "quota_type": "hybrid"}),
            ),
            "total_quota",
        );
    }

    #[test]
    fn create_expiry_errors() {
        let add = |days: Value| {
            new(json!({"ws_id": "w", "email": "a@b.co", "operation": "add", "days": days}))
        };
        assert_invalid(add(json!(0)), "days");
        assert_invalid(add(json!(-1)), "days");
        assert_invalid(add(json!(DAYS_MAX + 1)), "days");
        assert_invalid(add(Value::Null), "days");
        assert!(add(json!(DAYS_MAX)).is_ok());
        assert_invalid(
            new(
                json!({"ws_id": "w", "email": "a@b.co", "operation": "add", "days": 1,
                       "specific_date": "2030-01-01"}),
            ),
            "specific_date",
        );

        let set = |date: Option<&str>| {
            let mut b = json!({"ws_id": "w", "email": "a@b.co", "operation": "set"});
            if let Some(d) = date {
                b["specific_date"] = json!(d);
            }
            new(b)
        };
        assert_invalid(set(None), "specific_date");
        let e = set(Some("2025-01-15 12:00:00")).unwrap_err();
        assert!(e.message.contains("in the past"), "{}", e.message);
        assert_invalid(set(Some("2024-12-31")), "specific_date");
        assert_eq!(
            field_of(set(Some("tomorrow")).unwrap_err()).1,
            "specific_date"
        );
        assert!(set(Some("2025-01-15 12:00:01")).is_ok());
        assert_invalid(
            new(
                json!({"ws_id": "w", "email": "a@b.co", "operation": "set", "days": 3,
                       "specific_date": "2030-01-01"}),
            ),
            "days",
        );
    }

    #[test]
    fn emails() {
        for good in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "用户@例子.中国",
            "x_y-z@a-b.c",
        ] {
            assert!(validate_email(good).is_ok(), "{good}");
        }
        let long = format!("{}@example.com", "a".repeat(EMAIL_LEN_MAX - 12 + 1));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@@b.co",
            "a@b@c.co",
            "a b@c.co",
            " a@b.co",
            "a@b.co\n",
            "a\u{200B}@b.co",
            "a@.b.co",
            "a@b.co.",
            "a@b..co",
            long.as_str(),
        ] {
            assert_invalid(validate_email(bad), "email");
        }
        assert!(validate_email(&format!("{}@example.com", "a".repeat(EMAIL_LEN_MAX - 12))).is_ok());
    }

    // ---- Units, usability, consumed, names. ----

    #[test]
    fn units_are_bounded() {
        assert!(validate_units(1).is_ok());
        assert!(validate_units(UNITS_MAX).is_ok());
        for bad in [0, -1, i64::MIN, UNITS_MAX + 1] {
            assert_invalid(validate_units(bad), "units");
        }
    }

    #[test]
    fn usable_by_type() {
        let past = Some("2025-01-01 00:00:00");
        let future = Some("2025-12-31 23:59:59");
        for (qt, expired_when_past) in [
            (QuotaType::Time, true),
            (QuotaType::Count, false),
            (QuotaType::Hybrid, true),
        ] {
            assert_eq!(usable(&state(qt, Some(1), Some(1), future), now()), None);
            assert_eq!(usable(&state(qt, Some(1), Some(1), None), now()), None);
            assert_eq!(
                usable(&state(qt, Some(1), Some(1), past), now()),
                expired_when_past.then_some(Refusal::Expired),
                "{qt:?}"
            );
            // Inactive comes first.
            let mut off = state(qt, Some(1), Some(1), past);
            off.active = false;
            assert_eq!(usable(&off, now()), Some(Refusal::Inactive));
            // Expired at exactly expires_at; the quota is not usable()'s business.
            let edge = state(qt, Some(1), Some(0), Some("2025-01-15 12:00:00"));
            assert_eq!(
                usable(&edge, now()),
                expired_when_past.then_some(Refusal::Expired)
            );
        }
        assert_eq!(Refusal::Expired.code(), "expired");
        assert_eq!(Refusal::Inactive.code(), "inactive");
    }

    #[test]
    fn consumed_is_never_negative() {
        assert_eq!(
            consumed(&state(QuotaType::Count, Some(10), Some(3), None)),
            Some(7)
        );
        assert_eq!(
            consumed(&state(QuotaType::Count, Some(10), Some(12), None)),
            Some(0)
        );
        assert_eq!(
            consumed(&state(QuotaType::Count, Some(10), None, None)),
            Some(10)
        );
        assert_eq!(consumed(&state(QuotaType::Time, None, Some(5), None)), None);
    }

    #[test]
    fn names_round_trip_and_types_check_what_they_say() {
        for qt in [QuotaType::Time, QuotaType::Count, QuotaType::Hybrid] {
            assert_eq!(QuotaType::parse(qt.as_str()).unwrap(), qt);
        }
        for op in [Operation::Add, Operation::Set, Operation::Unlimited] {
            assert_eq!(Operation::parse(op.as_str()).unwrap(), op);
        }
        for q in [
            QuotaOperation::Add,
            QuotaOperation::Set,
            QuotaOperation::Reset,
        ] {
            assert_eq!(QuotaOperation::parse(q.as_str()).unwrap(), q);
        }
        assert_invalid(QuotaType::parse("Time"), "quota_type");
        assert_invalid(Operation::parse(""), "operation");
        assert!(!QuotaType::Time.checks_count() && QuotaType::Time.checks_expiry());
        assert!(QuotaType::Count.checks_count() && !QuotaType::Count.checks_expiry());
        assert!(QuotaType::Hybrid.checks_count() && QuotaType::Hybrid.checks_expiry());
    }
}
