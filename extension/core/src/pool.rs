//! Provider account pools (seed 002, SPEC 5): whether an account can take a request now, the
//! provider's rate limits enforced per account, leases (acquire / release / expiry), quota
//! alerts, and the order in which a strategy tries the accounts of a provider. Pure: the caller
//! reads the stored row into an [`Account`], calls [`admit`], [`release`], [`expire_lease`] or
//! [`consume`] under the row's lock, and stores the result.
//!
//! Time is microseconds since the Unix epoch (`_us`), durations in seconds are `_s`.
//!
//! Quota: `quota_limit` tokens per `period_s` (0 = unlimited). The period is a rolling window from
//! `last_reset_us`; it resets lazily: when `now >= last_reset + period`, `quota_used` = 0 and
//! `last_reset` = now before anything is decided ([`Account::refreshed`]). `quota_held` (the
//! tokens of open leases) is not reset: those leases still hold. Availability (SPEC 5, in this
//! order): inactive, expired (`expires_at <= now`), quota (`used + held + needed > limit`;
//! equality admits).
//!
//! Rate limits: fixed windows aligned to the UTC clock (minute, hour, day; as Envoy's rate-limit
//! service): `start = now - now mod unit`. A stored window whose start is not the current one is
//! read as empty (also when the clock went back: the counts then start again). rpm/rph/rpd count
//! admissions; tpm/tpd count tokens (an admission adds its `tokens_needed`; the release corrects
//! by `actual - needed` while the windows are still those of the admission, else adds only what
//! was used beyond the estimate to the current ones); `concurrent` bounds the open leases. A
//! limit of 0 is no limit.
//!
//! Token amounts are validated by the caller ([`validate_tokens`]); a negative amount reaching
//! these functions anyway is read as 0, so the invariants (held = the open leases' tokens,
//! in_flight = the open leases, nothing below 0) hold whatever the input. Sums saturate.

use crate::error::{QuotaError, Result};
use crate::ids::validate_id;
use serde_json::{Map, Value};

pub const MINUTE_US: i64 = 60_000_000;
pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 86_400_000_000;
const SECOND_US: i64 = 1_000_000;

pub const PERIOD_S_MIN: i64 = 60;
pub const PERIOD_S_MAX: i64 = 31_536_000;
pub const PERIOD_S_DEFAULT: i64 = 86_400;
pub const LEASE_TTL_S_MIN: i64 = 1;
pub const LEASE_TTL_S_MAX: i64 = 86_400;
pub const LEASE_TTL_S_DEFAULT: i64 = 300;
pub const NAME_LEN_MAX: usize = 100;

/// The start of the fixed window of `unit_us` that holds `now_us` (aligned to the epoch, so to
/// the UTC clock for minutes, hours and days).
pub fn window_start(now_us: i64, unit_us: i64) -> i64 {
    now_us - now_us.rem_euclid(unit_us)
}

/// Seconds until `window_end_us`, rounded up, at least 1.
fn retry_after_s(window_end_us: i64, now_us: i64) -> i64 {
    let d = window_end_us.saturating_sub(now_us).max(0);
    (d / SECOND_US + i64::from(d % SECOND_US != 0)).max(1)
}

fn invalid(field: &str, message: impl Into<String>) -> QuotaError {
    QuotaError::invalid(message).with("field", field)
}

/// A provider rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitType {
    Rpm,
    Rph,
    Rpd,
    Tpm,
    Tpd,
    Concurrent,
}

impl LimitType {
    pub const ALL: [LimitType; 6] = [
        LimitType::Rpm,
        LimitType::Rph,
        LimitType::Rpd,
        LimitType::Tpm,
        LimitType::Tpd,
        LimitType::Concurrent,
    ];

    pub fn parse(s: &str) -> Result<Self> {
        LimitType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                invalid(
                    "limit_type",
                    format!("unknown limit type '{s}' (rpm, rph, rpd, tpm, tpd, concurrent)"),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitType::Rpm => "rpm",
            LimitType::Rph => "rph",
            LimitType::Rpd => "rpd",
            LimitType::Tpm => "tpm",
            LimitType::Tpd => "tpd",
            LimitType::Concurrent => "concurrent",
        }
    }
}

/// A provider's limits; 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: i64,
    pub rph: i64,
    pub rpd: i64,
    pub tpm: i64,
    pub tpd: i64,
    pub concurrent: i64,
}

impl Limits {
    pub fn get(&self, t: LimitType) -> i64 {
        match t {
            LimitType::Rpm => self.rpm,
            LimitType::Rph => self.rph,
            LimitType::Rpd => self.rpd,
            LimitType::Tpm => self.tpm,
            LimitType::Tpd => self.tpd,
            LimitType::Concurrent => self.concurrent,
        }
    }

    pub fn set(&mut self, t: LimitType, v: i64) {
        let slot = match t {
            LimitType::Rpm => &mut self.rpm,
            LimitType::Rph => &mut self.rph,
            LimitType::Rpd => &mut self.rpd,
            LimitType::Tpm => &mut self.tpm,
            LimitType::Tpd => &mut self.tpd,
            LimitType::Concurrent => &mut self.concurrent,
        };
        *slot = v;
    }

    /// The non-zero limits as a JSON object (`{"rpm": 60, ...}`), keys in [`LimitType::ALL`]
    /// order.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for t in LimitType::ALL {
            let v = self.get(t);
            if v != 0 {
                m.insert(t.as_str().to_string(), Value::from(v));
            }
        }
        Value::Object(m)
    }

    /// Applies a limits object of create_provider or of a patch: keys rpm..concurrent, values
    /// non-negative integers; null removes the limit (0). Keys left out are unchanged. Unknown
    /// keys, negatives and non-integers are 22023 errors naming the key (field `limits.<key>`);
    /// on an error nothing is changed.
    pub fn apply_json(&mut self, v: &Value) -> Result<()> {
        let Some(obj) = v.as_object() else {
            return Err(invalid("limits", "limits must be a JSON object"));
        };
        let mut next = *self;
        for (key, value) in obj {
            let t = LimitType::parse(key).map_err(|_| {
                invalid(
                    &format!("limits.{key}"),
                    format!("unknown limit '{key}' (rpm, rph, rpd, tpm, tpd, concurrent)"),
                )
            })?;
            let n = match value {
                Value::Null => 0,
                Value::Number(n) => match n.as_i64() {
                    Some(n) if n >= 0 => n,
                    Some(n) => {
                        return Err(invalid(
                            &format!("limits.{key}"),
                            format!("limit {key} must be at least 0, got {n}"),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            &format!("limits.{key}"),
                            format!("limit {key} must be an integer, got {n}"),
                        ))
                    }
                },
                other => {
                    return Err(invalid(
                        &format!("limits.{key}"),
                        format!("limit {key} must be an integer or null, got {other}"),
                    ))
                }
            };
            next.set(t, n);
        }
        *self = next;
        Ok(())
    }
}

/// How a pool picks an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    LeastUsed,
    RoundRobin,
    Random,
    Best,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "least_used" => Ok(Strategy::LeastUsed),
            "round_robin" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            "best" => Ok(Strategy::Best),
            other => Err(invalid(
                "strategy",
                format!("unknown strategy '{other}' (least_used, round_robin, random, best)"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastUsed => "least_used",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Best => "best",
        }
    }
}

/// The stored state of one pool account that the rules read and write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Account {
    pub quota_limit: i64,
    pub quota_used: i64,
    pub quota_held: i64,
    pub period_s: i64,
    pub last_reset_us: i64,
    pub active: bool,
    pub expires_at_us: Option<i64>,
    pub in_flight: i64,
    pub minute_start_us: i64,
    pub minute_requests: i64,
    pub minute_tokens: i64,
    pub hour_start_us: i64,
    pub hour_requests: i64,
    pub day_start_us: i64,
    pub day_requests: i64,
    pub day_tokens: i64,
    pub request_count: i64,
    pub success_count: i64,
    pub error_count: i64,
    /// The `last_reset_us` of the window in which the warning alert was raised.
    pub warned_reset_us: Option<i64>,
    /// The `last_reset_us` of the window in which the exhausted alert was raised.
    pub exhausted_reset_us: Option<i64>,
}

/// Why one account cannot take a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Inactive,
    Expired,
    Quota {
        reset_at_us: i64,
    },
    Rate {
        limit_type: LimitType,
        retry_after_s: i64,
    },
}

impl Refusal {
    /// SPEC 5's reason text.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Inactive => "account inactive",
            Refusal::Expired => "account expired",
            Refusal::Quota { .. } => "quota exceeded",
            Refusal::Rate { .. } => "rate limit exceeded",
        }
    }
}

impl Account {
    /// The end of the quota window: `last_reset + period_s` (saturating).
    pub fn reset_at_us(&self) -> i64 {
        self.last_reset_us
            .saturating_add(self.period_s.saturating_mul(SECOND_US))
    }

    /// The state as of `now_us`: a due quota reset applied (`quota_used` = 0, `last_reset` =
    /// now; a `period_s` <= 0, never stored, never resets) and the rate windows moved to the
    /// current ones (counts 0 when the stored start is not the current start). Idempotent for a
    /// given `now_us`.
    pub fn refreshed(&self, now_us: i64) -> Account {
        let mut a = self.clone();
        if a.period_s > 0 && now_us >= a.reset_at_us() {
            a.quota_used = 0;
            a.last_reset_us = now_us;
        }
        let minute = window_start(now_us, MINUTE_US);
        if a.minute_start_us != minute {
            a.minute_start_us = minute;
            a.minute_requests = 0;
            a.minute_tokens = 0;
        }
        let hour = window_start(now_us, HOUR_US);
        if a.hour_start_us != hour {
            a.hour_start_us = hour;
            a.hour_requests = 0;
        }
        let day = window_start(now_us, DAY_US);
        if a.day_start_us != day {
            a.day_start_us = day;
            a.day_requests = 0;
            a.day_tokens = 0;
        }
        a
    }

    /// SPEC 5's availability for `needed` tokens, decided on the state refreshed to `now_us`
    /// (the method refreshes; passing an already refreshed state is the same): inactive, expired
    /// (`expires_at <= now`), quota (`limit > 0 && used + held + needed > limit`; equality
    /// admits). The quota refusal carries the refreshed window's `reset_at`.
    pub fn availability(&self, needed: i64, now_us: i64) -> std::result::Result<(), Refusal> {
        let a = self.refreshed(now_us);
        if !a.active {
            return Err(Refusal::Inactive);
        }
        if a.expires_at_us.is_some_and(|e| e <= now_us) {
            return Err(Refusal::Expired);
        }
        if a.quota_limit > 0 {
            let total = i128::from(a.quota_used.max(0))
                + i128::from(a.quota_held.max(0))
                + i128::from(needed.max(0));
            if total > i128::from(a.quota_limit) {
                return Err(Refusal::Quota {
                    reset_at_us: a.reset_at_us(),
                });
            }
        }
        Ok(())
    }

    /// 100 * used / limit; 0 when unlimited.
    pub fn usage_percent(&self) -> f64 {
        if self.quota_limit > 0 {
            100.0 * self.quota_used as f64 / self.quota_limit as f64
        } else {
            0.0
        }
    }

    /// limit - used - held (at least 0); None when unlimited.
    pub fn remaining(&self) -> Option<i64> {
        (self.quota_limit > 0).then(|| {
            let r = i128::from(self.quota_limit)
                - i128::from(self.quota_used)
                - i128::from(self.quota_held);
            r.clamp(0, i128::from(i64::MAX)) as i64
        })
    }
}

/// An admission: the account as it is to be stored and the windows of the admission (kept in
/// the lease so the release can correct the token windows).
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub account: Account,
    pub minute_start_us: i64,
    pub day_start_us: i64,
}

impl Admitted {
    /// The lease end of this admission while the lease is open.
    pub fn lease_end(&self, tokens_needed: i64) -> LeaseEnd {
        LeaseEnd {
            tokens_needed,
            minute_start_us: self.minute_start_us,
            day_start_us: self.day_start_us,
            held: true,
        }
    }
}

/// Checks one request limit: `count + 1 <= limit` (0 = none).
fn check_requests(
    limit_type: LimitType,
    limit: i64,
    count: i64,
    window_end_us: i64,
    now_us: i64,
) -> std::result::Result<(), Refusal> {
    if limit > 0 && i128::from(count) + 1 > i128::from(limit) {
        return Err(Refusal::Rate {
            limit_type,
            retry_after_s: retry_after_s(window_end_us, now_us),
        });
    }
    Ok(())
}

/// Checks one token limit: `tokens + needed <= limit` (0 = none). A request needing more than
/// the limit itself can never pass; it is refused like any other, with the window's
/// retry_after (the caller sees a rate limit, not an error: the estimate is the caller's).
fn check_tokens(
    limit_type: LimitType,
    limit: i64,
    tokens: i64,
    needed: i64,
    window_end_us: i64,
    now_us: i64,
) -> std::result::Result<(), Refusal> {
    if limit > 0 && i128::from(tokens) + i128::from(needed) > i128::from(limit) {
        return Err(Refusal::Rate {
            limit_type,
            retry_after_s: retry_after_s(window_end_us, now_us),
        });
    }
    Ok(())
}

/// Availability, then every limit (concurrent, rpm, rph, rpd, tpm, tpd: the first refusal is
/// returned), then records the admission: requests +1 in the minute, hour and day windows,
/// `needed` into the minute and day tokens, in_flight +1, quota_held += needed,
/// request_count +1.
pub fn admit(
    a: &Account,
    limits: &Limits,
    needed: i64,
    now_us: i64,
) -> std::result::Result<Admitted, Refusal> {
    let needed = needed.max(0);
    let mut r = a.refreshed(now_us);
    r.availability(needed, now_us)?;
    if limits.concurrent > 0 && i128::from(r.in_flight) + 1 > i128::from(limits.concurrent) {
        return Err(Refusal::Rate {
            limit_type: LimitType::Concurrent,
            retry_after_s: 1,
        });
    }
    let minute_end = r.minute_start_us.saturating_add(MINUTE_US);
    let hour_end = r.hour_start_us.saturating_add(HOUR_US);
    let day_end = r.day_start_us.saturating_add(DAY_US);
    check_requests(
        LimitType::Rpm,
        limits.rpm,
        r.minute_requests,
        minute_end,
        now_us,
    )?;
    check_requests(
        LimitType::Rph,
        limits.rph,
        r.hour_requests,
        hour_end,
        now_us,
    )?;
    check_requests(LimitType::Rpd, limits.rpd, r.day_requests, day_end, now_us)?;
    check_tokens(
        LimitType::Tpm,
        limits.tpm,
        r.minute_tokens,
        needed,
        minute_end,
        now_us,
    )?;
    check_tokens(
        LimitType::Tpd,
        limits.tpd,
        r.day_tokens,
        needed,
        day_end,
        now_us,
    )?;

    r.minute_requests = r.minute_requests.saturating_add(1);
    r.hour_requests = r.hour_requests.saturating_add(1);
    r.day_requests = r.day_requests.saturating_add(1);
    r.minute_tokens = r.minute_tokens.saturating_add(needed);
    r.day_tokens = r.day_tokens.saturating_add(needed);
    r.in_flight = r.in_flight.saturating_add(1);
    r.quota_held = r.quota_held.saturating_add(needed);
    r.request_count = r.request_count.saturating_add(1);
    Ok(Admitted {
        minute_start_us: r.minute_start_us,
        day_start_us: r.day_start_us,
        account: r,
    })
}

/// What the release of a lease needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseEnd {
    pub tokens_needed: i64,
    pub minute_start_us: i64,
    pub day_start_us: i64,
    /// false: the lease already expired (its in_flight and hold were freed then).
    pub held: bool,
}

/// A quota alert to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    Warning,
    Exhausted,
}

/// Whether `used * 1e6 >= round(threshold * 1e6) * limit`: the threshold is read to a millionth
/// (so 0.8 is exactly 80%, which a binary f64 is not) and the comparison is exact integer
/// arithmetic. A threshold that is not finite never matches.
fn at_or_past(used: i64, limit: i64, threshold: f64) -> bool {
    let t_ppm = (threshold.clamp(0.0, 1e6) * 1e6).round() as i128;
    i128::from(used) * 1_000_000 >= t_ppm * i128::from(limit)
}

/// The warning rule: `limit > 0`, `before < threshold * limit <= after` (a jump from below the
/// threshold to past 100% crosses it too), and no warning yet in this quota window.
fn warn(a: &mut Account, before: i64, threshold: f64) -> Option<Alert> {
    if a.quota_limit <= 0 || !threshold.is_finite() {
        return None;
    }
    let crossed = !at_or_past(before, a.quota_limit, threshold)
        && at_or_past(a.quota_used, a.quota_limit, threshold);
    if crossed && a.warned_reset_us != Some(a.last_reset_us) {
        a.warned_reset_us = Some(a.last_reset_us);
        Some(Alert::Warning)
    } else {
        None
    }
}

/// Ends a lease with `used` tokens: frees the hold and in_flight (if the lease was still held),
/// quota_used += used in the window refreshed to `now_us`, the token windows corrected (by
/// `used - needed` if still the admission's windows, not below 0; else `max(used - needed, 0)`
/// is added to the current ones), success or error counted, and `Some(Warning)` when the usage
/// crosses `threshold` of the limit for the first time in this window.
pub fn release(
    a: &Account,
    lease: &LeaseEnd,
    used: i64,
    success: bool,
    threshold: f64,
    now_us: i64,
) -> (Account, Option<Alert>) {
    let used = used.max(0);
    let needed = lease.tokens_needed.max(0);
    let mut r = a.refreshed(now_us);
    if lease.held {
        r.quota_held = r.quota_held.saturating_sub(needed).max(0);
        r.in_flight = r.in_flight.saturating_sub(1).max(0);
    }
    let before = r.quota_used;
    r.quota_used = r.quota_used.saturating_add(used);
    let delta = used - needed;
    r.minute_tokens = if r.minute_start_us == lease.minute_start_us {
        r.minute_tokens.saturating_add(delta).max(0)
    } else {
        r.minute_tokens.saturating_add(delta.max(0))
    };
    r.day_tokens = if r.day_start_us == lease.day_start_us {
        r.day_tokens.saturating_add(delta).max(0)
    } else {
        r.day_tokens.saturating_add(delta.max(0))
    };
    if success {
        r.success_count = r.success_count.saturating_add(1);
    } else {
        r.error_count = r.error_count.saturating_add(1);
    }
    let alert = warn(&mut r, before, threshold);
    (r, alert)
}

/// Expires an open lease: frees its hold and its in_flight only (not below 0).
pub fn expire_lease(a: &Account, tokens_needed: i64) -> Account {
    let mut r = a.clone();
    r.quota_held = r.quota_held.saturating_sub(tokens_needed.max(0)).max(0);
    r.in_flight = r.in_flight.saturating_sub(1).max(0);
    r
}

/// The seed's ConsumeQuota made atomic: availability for `tokens` on the refreshed state (the
/// open leases' holds count), then quota_used += tokens, with the warning rule of [`release`].
/// No rate window counts it.
pub fn consume(
    a: &Account,
    tokens: i64,
    threshold: f64,
    now_us: i64,
) -> std::result::Result<(Account, Option<Alert>), Refusal> {
    let tokens = tokens.max(0);
    let mut r = a.refreshed(now_us);
    r.availability(tokens, now_us)?;
    let before = r.quota_used;
    r.quota_used = r.quota_used.saturating_add(tokens);
    let alert = warn(&mut r, before, threshold);
    Ok((r, alert))
}

/// Some(updated) when a refusal for quota should raise the exhausted alert: once per quota
/// window (`exhausted_reset_us != Some(last_reset_us)`; call it on the refreshed state).
pub fn exhausted_alert(a: &Account) -> Option<Account> {
    (a.exhausted_reset_us != Some(a.last_reset_us)).then(|| {
        let mut r = a.clone();
        r.exhausted_reset_us = Some(a.last_reset_us);
        r
    })
}

/// (used + held, limit) as a fraction for exact comparison; unlimited is 0/1.
fn usage_fraction(a: &Account) -> (i128, i128) {
    if a.quota_limit > 0 {
        (
            i128::from(a.quota_used.max(0)) + i128::from(a.quota_held.max(0)),
            i128::from(a.quota_limit),
        )
    } else {
        (0, 1)
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The order in which to try the candidates (indices into `accounts`, each exactly once; the
/// same inputs give the same order). Accounts are read as refreshed to `now_us`.
/// - least_used: lowest usage fraction (used + held) / limit (unlimited = 0, compared exactly),
///   then fewest in_flight, then fewest requests, then index;
/// - round_robin: the index order rotated to start at `cursor % n`;
/// - random: a Fisher-Yates permutation driven by splitmix64 from `seed`;
/// - best: highest [`score`] first, ties by index.
pub fn rank(
    strategy: Strategy,
    accounts: &[Account],
    limits: &Limits,
    cursor: u64,
    seed: u64,
    now_us: i64,
) -> Vec<usize> {
    let n = accounts.len();
    let mut order: Vec<usize> = (0..n).collect();
    if n == 0 {
        return order;
    }
    match strategy {
        Strategy::LeastUsed => {
            let keyed: Vec<((i128, i128), i64, i64)> = accounts
                .iter()
                .map(|a| {
                    let r = a.refreshed(now_us);
                    (usage_fraction(&r), r.in_flight, r.request_count)
                })
                .collect();
            order.sort_by(|&i, &j| {
                let ((ni, di), fi, ci) = keyed[i];
                let ((nj, dj), fj, cj) = keyed[j];
                // ni/di vs nj/dj with positive denominators; products fit in i128.
                (ni * dj)
                    .cmp(&(nj * di))
                    .then(fi.cmp(&fj))
                    .then(ci.cmp(&cj))
                    .then(i.cmp(&j))
            });
        }
        Strategy::RoundRobin => {
            order.rotate_left((cursor % n as u64) as usize);
        }
        Strategy::Random => {
            let mut state = seed;
            for i in (1..n).rev() {
                let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        Strategy::Best => {
            let scores: Vec<f64> = accounts.iter().map(|a| score(a, limits, now_us)).collect();
            order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
        }
    }
    order
}

/// `best`'s score in [0, 1] (seed 002 names `best` without a formula; this one is ours), on the
/// state refreshed to `now_us`, each term clamped to [0, 1]:
///
/// `0.6 * quota headroom (1 - (used + held) / limit, 1 if unlimited)`
/// `+ 0.3 * success rate (success / (success + error), 1 when none yet)`
/// `+ 0.1 * concurrency headroom (1 - in_flight / concurrent, 1 if unlimited)`.
pub fn score(a: &Account, limits: &Limits, now_us: i64) -> f64 {
    let r = a.refreshed(now_us);
    let quota = if r.quota_limit > 0 {
        let (used, limit) = usage_fraction(&r);
        1.0 - used as f64 / limit as f64
    } else {
        1.0
    };
    let (s, e) = (r.success_count.max(0), r.error_count.max(0));
    let success = if s == 0 && e == 0 {
        1.0
    } else {
        s as f64 / (s as f64 + e as f64)
    };
    let concurrency = if limits.concurrent > 0 {
        1.0 - r.in_flight.max(0) as f64 / limits.concurrent as f64
    } else {
        1.0
    };
    let s = 0.6 * quota.clamp(0.0, 1.0)
        + 0.3 * success.clamp(0.0, 1.0)
        + 0.1 * concurrency.clamp(0.0, 1.0);
    s.clamp(0.0, 1.0)
}

/// Why a pool as a whole refused an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRefusal {
    NoAccount,
    Quota {
        reset_at_us: i64,
    },
    Rate {
        limit_type: LimitType,
        retry_after_s: i64,
    },
}

/// The pool's answer from its candidates' refusals: none, or only inactive / expired ones ->
/// NoAccount; else any rate refusal -> the one with the smallest retry_after (the first of
/// equals); else Quota with the earliest reset_at.
pub fn pool_refusal(refusals: &[Refusal]) -> PoolRefusal {
    let rate = refusals
        .iter()
        .filter_map(|r| match *r {
            Refusal::Rate {
                limit_type,
                retry_after_s,
            } => Some((retry_after_s, limit_type)),
            _ => None,
        })
        .min_by_key(|&(retry_after_s, _)| retry_after_s);
    if let Some((retry_after_s, limit_type)) = rate {
        return PoolRefusal::Rate {
            limit_type,
            retry_after_s,
        };
    }
    refusals
        .iter()
        .filter_map(|r| match *r {
            Refusal::Quota { reset_at_us } => Some(reset_at_us),
            _ => None,
        })
        .min()
        .map_or(PoolRefusal::NoAccount, |reset_at_us| PoolRefusal::Quota {
            reset_at_us,
        })
}

/// A token amount (tokens_needed, tokens): at least 0.
pub fn validate_tokens(field: &str, v: i64) -> Result<i64> {
    if v < 0 {
        return Err(invalid(
            field,
            format!("{field} must be at least 0, got {v}"),
        ));
    }
    Ok(v)
}

/// An account's quota period: 60 s to 365 days.
pub fn validate_period_s(v: i64) -> Result<i64> {
    if !(PERIOD_S_MIN..=PERIOD_S_MAX).contains(&v) {
        return Err(invalid(
            "period_s",
            format!("period_s must be between {PERIOD_S_MIN} and {PERIOD_S_MAX}, got {v}"),
        ));
    }
    Ok(v)
}

/// A lease's time to live: 1 s to 1 day.
pub fn validate_lease_ttl_s(v: i64) -> Result<i64> {
    if !(LEASE_TTL_S_MIN..=LEASE_TTL_S_MAX).contains(&v) {
        return Err(invalid(
            "lease_ttl_s",
            format!("lease_ttl_s must be between {LEASE_TTL_S_MIN} and {LEASE_TTL_S_MAX}, got {v}"),
        ));
    }
    Ok(v)
}

/// A provider or account name: 1 to 100 visible characters (the rules of [`validate_id`]: no
/// control or invisible characters, no leading or trailing whitespace).
pub fn validate_name(field: &str, v: &str) -> Result<String> {
    validate_id(field, v, NAME_LEN_MAX)?;
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-02 00:00:00 UTC: a day boundary.
    const T0: i64 = 1_767_312_000 * SECOND_US;
    const S: i64 = SECOND_US;

    fn acct(limit: i64, used: i64) -> Account {
        Account {
            quota_limit: limit,
            quota_used: used,
            period_s: 86_400,
            last_reset_us: T0,
            active: true,
            ..Account::default()
        }
        .refreshed(T0)
    }

    fn quota_refused(a: &Account, needed: i64, now: i64) -> bool {
        matches!(a.availability(needed, now), Err(Refusal::Quota { .. }))
    }

    #[test]
    fn t0_is_a_day_boundary() {
        assert_eq!(window_start(T0, DAY_US), T0);
        assert_eq!(window_start(T0 + 90 * S, MINUTE_US), T0 + 60 * S);
        assert_eq!(window_start(-1, MINUTE_US), -MINUTE_US);
    }

    #[test]
    fn availability_of_a_1000_limit() {
        let now = T0 + 10 * S;
        assert_eq!(acct(1000, 100).availability(0, now), Ok(()));
        assert_eq!(acct(1000, 100).availability(900, now), Ok(()));
        assert!(quota_refused(&acct(1000, 100), 901, now));
        assert_eq!(acct(1000, 1000).availability(0, now), Ok(()), "equality");
        assert_eq!(
            acct(1000, 1000).availability(100, now),
            Err(Refusal::Quota {
                reset_at_us: T0 + DAY_US
            })
        );
        assert!(quota_refused(&acct(1000, 1100), 0, now));
        // Held tokens count.
        let mut a = acct(1000, 500);
        a.quota_held = 400;
        assert_eq!(a.availability(100, now), Ok(()));
        assert!(quota_refused(&a, 101, now));
        assert_eq!(Refusal::Quota { reset_at_us: 0 }.reason(), "quota exceeded");
    }

    #[test]
    fn inactive_then_expired_then_quota() {
        let now = T0 + S;
        let mut a = acct(1000, 2000);
        a.active = false;
        a.expires_at_us = Some(now);
        assert_eq!(a.availability(0, now), Err(Refusal::Inactive));
        assert_eq!(Refusal::Inactive.reason(), "account inactive");
        a.active = true;
        assert_eq!(
            a.availability(0, now),
            Err(Refusal::Expired),
            "expires_at <= now"
        );
        assert_eq!(Refusal::Expired.reason(), "account expired");
        a.expires_at_us = Some(now + 1);
        assert!(quota_refused(&a, 0, now));
        a.quota_used = 0;
        assert_eq!(a.availability(0, now), Ok(()));
    }

    #[test]
    fn unlimited_quota() {
        let a = acct(0, i64::MAX / 2);
        assert_eq!(a.availability(i64::MAX, T0), Ok(()));
        assert_eq!(a.usage_percent(), 0.0);
        assert_eq!(a.remaining(), None);
        let (c, alert) = consume(&a, 1_000_000, 0.8, T0).unwrap();
        assert_eq!(alert, None);
        assert_eq!(c.quota_used, i64::MAX / 2 + 1_000_000);
    }

    #[test]
    fn lazy_reset_after_25_hours() {
        let mut a = acct(1000, 1000);
        a.quota_held = 100;
        assert!(quota_refused(&a, 1, T0 + 23 * 3600 * S));
        let now = T0 + 25 * 3600 * S;
        let r = a.refreshed(now);
        assert_eq!((r.quota_used, r.last_reset_us, r.quota_held), (0, now, 100));
        assert_eq!(r.reset_at_us(), now + DAY_US);
        assert_eq!(a.availability(900, now), Ok(()));
        assert!(quota_refused(&a, 901, now));
        // Exactly at reset_at the window is over.
        assert_eq!(a.refreshed(T0 + DAY_US).quota_used, 0);
        assert_eq!(a.refreshed(T0 + DAY_US - 1).quota_used, 1000);
        assert_eq!(r.refreshed(now), r, "idempotent");
    }

    #[test]
    fn usage_and_remaining() {
        let mut a = acct(1000, 250);
        a.quota_held = 100;
        assert_eq!(a.usage_percent(), 25.0);
        assert_eq!(a.remaining(), Some(650));
        a.quota_used = 1100;
        assert_eq!(a.remaining(), Some(0));
    }

    #[test]
    fn warning_once_per_window_at_80_percent() {
        let now = T0 + S;
        let a = acct(1000, 0);
        let (a, w) = consume(&a, 799, 0.8, now).unwrap();
        assert_eq!(w, None);
        let (a, w) = consume(&a, 1, 0.8, now).unwrap();
        assert_eq!(w, Some(Alert::Warning), "exactly 80%");
        assert_eq!(a.warned_reset_us, Some(T0));
        let (a, w) = consume(&a, 100, 0.8, now).unwrap();
        assert_eq!(w, None, "already past");
        // After a reset it fires again, once.
        let later = T0 + DAY_US + S;
        let (b, w) = consume(&a, 900, 0.8, later).unwrap();
        assert_eq!(w, Some(Alert::Warning));
        assert_eq!(b.warned_reset_us, Some(later));
        let (_, w) = consume(&b, 10, 0.8, later).unwrap();
        assert_eq!(w, None);
    }

    #[test]
    fn warning_on_a_release_jumping_past_100_percent() {
        let now = T0 + S;
        let limits = Limits::default();
        let ad = admit(&acct(1000, 100), &limits, 50, now).unwrap();
        let lease = ad.lease_end(50);
        let (a, w) = release(&ad.account, &lease, 5000, true, 0.8, now);
        assert_eq!(w, Some(Alert::Warning));
        assert_eq!(a.quota_used, 5100);
        assert_eq!((a.quota_held, a.in_flight), (0, 0));
        // Once per window, also through release.
        let ad = admit(&acct(1000, 100), &limits, 0, now).unwrap();
        let mut b = ad.account.clone();
        b.warned_reset_us = Some(b.last_reset_us);
        let (_, w) = release(&b, &ad.lease_end(0), 900, true, 0.8, now);
        assert_eq!(w, None);
    }

    #[test]
    fn warning_needs_a_limit_and_a_crossing() {
        let a = acct(0, 0);
        assert_eq!(consume(&a, 10, 0.8, T0).unwrap().1, None);
        let a = acct(1000, 900);
        assert_eq!(consume(&a, 10, 0.8, T0).unwrap().1, None, "before was past");
        assert_eq!(consume(&acct(1000, 0), 999, 1.0, T0).unwrap().1, None);
        assert_eq!(
            consume(&acct(1000, 0), 1000, 1.0, T0).unwrap().1,
            Some(Alert::Warning)
        );
        assert_eq!(consume(&acct(1000, 0), 1000, f64::NAN, T0).unwrap().1, None);
        // 0.8 read to a millionth: 80% of 10 is 8.
        assert_eq!(
            consume(&acct(10, 7), 1, 0.8, T0).unwrap().1,
            Some(Alert::Warning)
        );
    }

    #[test]
    fn exhausted_once_per_window() {
        let a = acct(1000, 1000);
        let b = exhausted_alert(&a).expect("first refusal alerts");
        assert_eq!(b.exhausted_reset_us, Some(T0));
        assert_eq!(exhausted_alert(&b), None);
        let later = b.refreshed(T0 + DAY_US);
        assert!(exhausted_alert(&later).is_some());
    }

    #[test]
    fn consume_refuses_atomically() {
        let mut a = acct(1000, 900);
        a.quota_held = 50;
        assert!(matches!(
            consume(&a, 51, 0.8, T0),
            Err(Refusal::Quota { .. })
        ));
        let (c, _) = consume(&a, 50, 0.8, T0).unwrap();
        assert_eq!(
            (c.quota_used, c.minute_tokens, c.request_count),
            (950, 0, 0)
        );
        a.active = false;
        assert_eq!(consume(&a, 0, 0.8, T0), Err(Refusal::Inactive));
    }

    /// Admits `n` requests of `needed` tokens at `now`, returning the state.
    fn admit_n(a: &Account, limits: &Limits, n: usize, needed: i64, now: i64) -> Account {
        let mut a = a.clone();
        for i in 0..n {
            a = admit(&a, limits, needed, now)
                .unwrap_or_else(|e| panic!("admission {i}: {e:?}"))
                .account;
        }
        a
    }

    fn rate(t: LimitType, retry_after_s: i64) -> Refusal {
        Refusal::Rate {
            limit_type: t,
            retry_after_s,
        }
    }

    #[test]
    fn request_limits_refuse_at_limit_plus_one() {
        let now = T0 + 3600 * S + 10 * S + 1; // 01:00:10.000001
        let a = acct(0, 0);
        for (t, retry) in [
            (LimitType::Rpm, 50),             // to 01:01:00
            (LimitType::Rph, 3590),           // to 02:00:00
            (LimitType::Rpd, 23 * 3600 - 10), // to the next day
        ] {
            let mut limits = Limits::default();
            limits.set(t, 3);
            let b = admit_n(&a, &limits, 3, 7, now);
            assert_eq!(admit(&b, &limits, 7, now), Err(rate(t, retry)), "{t:?}");
        }
        // The next minute frees rpm but not rph.
        let limits = Limits {
            rpm: 2,
            rph: 3,
            ..Limits::default()
        };
        let b = admit_n(&a, &limits, 2, 0, now);
        assert_eq!(admit(&b, &limits, 0, now), Err(rate(LimitType::Rpm, 50)));
        let next = window_start(now, MINUTE_US) + MINUTE_US;
        let c = admit(&b, &limits, 0, next).unwrap().account;
        assert_eq!(c.minute_requests, 1);
        assert_eq!(c.hour_requests, 3);
        assert_eq!(admit(&c, &limits, 0, next), Err(rate(LimitType::Rph, 3540)));
    }

    #[test]
    fn token_limits_refuse_past_the_limit() {
        let now = T0 + 30 * S + 500_000; // 00:00:30.5
        let a = acct(0, 0);
        let limits = Limits {
            tpm: 100,
            ..Limits::default()
        };
        let b = admit(&a, &limits, 60, now).unwrap().account;
        let c = admit(&b, &limits, 40, now).unwrap().account;
        assert_eq!(c.minute_tokens, 100, "equality admits");
        assert_eq!(admit(&b, &limits, 41, now), Err(rate(LimitType::Tpm, 30)));
        // More than the limit alone: refused with the window's retry_after.
        assert_eq!(admit(&a, &limits, 101, now), Err(rate(LimitType::Tpm, 30)));
        let limits = Limits {
            tpd: 100,
            ..Limits::default()
        };
        let b = admit(&a, &limits, 100, now).unwrap().account;
        assert_eq!(
            admit(&b, &limits, 1, now),
            Err(rate(LimitType::Tpd, 86_370))
        );
        assert_eq!(admit(&b, &limits, 0, now).map(|_| ()), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_s(T0 + MINUTE_US, T0 + MINUTE_US - 1), 1);
        assert_eq!(retry_after_s(T0 + MINUTE_US, T0), 60);
        assert_eq!(retry_after_s(T0 + MINUTE_US, T0 + 1), 60);
        assert_eq!(retry_after_s(T0, T0 + 5), 1);
    }

    #[test]
    fn release_corrects_the_token_windows() {
        let now = T0 + 10 * S;
        let limits = Limits {
            tpm: 1000,
            tpd: 10_000,
            ..Limits::default()
        };
        let ad = admit(&acct(0, 0), &limits, 300, now).unwrap();
        assert_eq!(
            (ad.account.minute_tokens, ad.account.day_tokens),
            (300, 300)
        );
        // Same windows: corrected by actual - needed.
        let (a, _) = release(&ad.account, &ad.lease_end(300), 100, true, 0.8, now + S);
        assert_eq!((a.minute_tokens, a.day_tokens), (100, 100));
        assert_eq!((a.quota_used, a.success_count, a.error_count), (100, 1, 0));
        // The minute changed: only the excess goes to the current minute; the day still corrects.
        let later = now + MINUTE_US;
        let (a, _) = release(&ad.account, &ad.lease_end(300), 100, false, 0.8, later);
        assert_eq!((a.minute_tokens, a.day_tokens), (0, 100));
        assert_eq!(a.error_count, 1);
        let (a, _) = release(&ad.account, &ad.lease_end(300), 500, true, 0.8, later);
        assert_eq!((a.minute_tokens, a.day_tokens), (200, 500));
    }

    #[test]
    fn concurrency_frees_on_release_and_expiry() {
        let now = T0 + S;
        let limits = Limits {
            concurrent: 2,
            ..Limits::default()
        };
        let a = acct(1000, 0);
        let first = admit(&a, &limits, 10, now).unwrap();
        let second = admit(&first.account, &limits, 20, now).unwrap();
        let b = second.account.clone();
        assert_eq!((b.in_flight, b.quota_held), (2, 30));
        assert_eq!(
            admit(&b, &limits, 0, now),
            Err(rate(LimitType::Concurrent, 1))
        );
        let (c, _) = release(&b, &first.lease_end(10), 5, true, 0.8, now);
        assert_eq!((c.in_flight, c.quota_held, c.quota_used), (1, 20, 5));
        assert!(admit(&c, &limits, 0, now).is_ok());
        let d = expire_lease(&b, 20);
        assert_eq!((d.in_flight, d.quota_held), (1, 10));
        assert!(admit(&d, &limits, 0, now).is_ok());
        // Releasing an expired lease records usage but frees nothing twice.
        let mut gone = second.lease_end(20);
        gone.held = false;
        let (e, _) = release(&d, &gone, 7, true, 0.8, now);
        assert_eq!((e.in_flight, e.quota_held, e.quota_used), (1, 10, 7));
        // Never below 0.
        let z = expire_lease(&acct(1000, 0), 50);
        assert_eq!((z.in_flight, z.quota_held), (0, 0));
    }

    #[test]
    fn admit_checks_availability_first_and_records() {
        let now = T0 + S;
        let limits = Limits {
            concurrent: 1,
            rpm: 1,
            ..Limits::default()
        };
        let mut a = acct(100, 100);
        a.in_flight = 5;
        assert!(matches!(
            admit(&a, &limits, 1, now),
            Err(Refusal::Quota { .. })
        ));
        a.quota_used = 0;
        assert_eq!(
            admit(&a, &limits, 1, now),
            Err(rate(LimitType::Concurrent, 1))
        );
        a.in_flight = 0;
        let ad = admit(&a, &limits, 40, now).unwrap();
        let b = &ad.account;
        assert_eq!(
            (b.minute_requests, b.hour_requests, b.day_requests),
            (1, 1, 1)
        );
        assert_eq!((b.in_flight, b.quota_held, b.request_count), (1, 40, 1));
        assert_eq!(ad.minute_start_us, window_start(now, MINUTE_US));
        assert_eq!(ad.day_start_us, T0);
    }

    fn with(used: i64, held: i64, in_flight: i64, requests: i64) -> Account {
        let mut a = acct(1000, used);
        a.quota_held = held;
        a.in_flight = in_flight;
        a.request_count = requests;
        a
    }

    #[test]
    fn least_used_order() {
        let l = Limits::default();
        let accounts = vec![
            with(500, 0, 0, 0),
            with(100, 100, 0, 0), // 20%
            with(200, 0, 1, 0),   // 20%, busier
            acct(0, 999_999),     // unlimited: 0
            with(200, 0, 0, 5),   // 20%, more requests
            with(200, 0, 0, 5),   // same: by index
        ];
        assert_eq!(
            rank(Strategy::LeastUsed, &accounts, &l, 0, 0, T0),
            vec![3, 1, 4, 5, 2, 0]
        );
        // A due reset counts: account 0 is empty after its period.
        let later = T0 + DAY_US;
        assert_eq!(
            rank(Strategy::LeastUsed, &accounts, &l, 0, 0, later),
            [0, 3, 4, 5, 2, 1]
        );
    }

    #[test]
    fn round_robin_rotates() {
        let accounts = vec![acct(0, 0); 3];
        let l = Limits::default();
        assert_eq!(
            rank(Strategy::RoundRobin, &accounts, &l, 0, 0, T0),
            [0, 1, 2]
        );
        assert_eq!(
            rank(Strategy::RoundRobin, &accounts, &l, 1, 0, T0),
            [1, 2, 0]
        );
        assert_eq!(
            rank(Strategy::RoundRobin, &accounts, &l, 5, 0, T0),
            [2, 0, 1]
        );
        assert_eq!(
            rank(Strategy::RoundRobin, &accounts, &l, u64::MAX, 0, T0),
            [0, 1, 2]
        );
        assert!(rank(Strategy::RoundRobin, &[], &l, 7, 0, T0).is_empty());
    }

    #[test]
    fn random_is_a_deterministic_permutation() {
        let accounts = vec![acct(0, 0); 10];
        let l = Limits::default();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50u64 {
            let p = rank(Strategy::Random, &accounts, &l, 0, seed, T0);
            let mut s = p.clone();
            s.sort_unstable();
            assert_eq!(s, (0..10).collect::<Vec<_>>());
            assert_eq!(p, rank(Strategy::Random, &accounts, &l, 0, seed, T0));
            seen.insert(p);
        }
        assert!(seen.len() > 40, "seeds give different orders");
        assert_eq!(rank(Strategy::Random, &accounts[..1], &l, 0, 9, T0), [0]);
    }

    #[test]
    fn best_prefers_headroom_and_success() {
        let l = Limits {
            concurrent: 4,
            ..Limits::default()
        };
        let fresh = acct(1000, 0);
        assert!((score(&fresh, &l, T0) - 1.0).abs() < 1e-12);
        let mut half = acct(1000, 500);
        half.success_count = 1;
        let mut failing = acct(1000, 0);
        failing.success_count = 1;
        failing.error_count = 3;
        // half: 0.6*0.5 + 0.3 + 0.1 = 0.7; failing: 0.6 + 0.3*0.25 + 0.1 = 0.775
        assert!((score(&half, &l, T0) - 0.7).abs() < 1e-12);
        assert!((score(&failing, &l, T0) - 0.775).abs() < 1e-12);
        let mut busy = acct(1000, 0);
        busy.in_flight = 4;
        assert!((score(&busy, &l, T0) - 0.9).abs() < 1e-12);
        let over = acct(1000, 5000);
        assert!((0.0..=1.0).contains(&score(&over, &l, T0)));
        let accounts = vec![half, failing, over, fresh.clone(), busy, fresh];
        assert_eq!(
            rank(Strategy::Best, &accounts, &l, 0, 0, T0),
            vec![3, 5, 4, 1, 0, 2]
        );
    }

    #[test]
    fn pool_refusal_precedence() {
        let q = |t| Refusal::Quota { reset_at_us: t };
        assert_eq!(pool_refusal(&[]), PoolRefusal::NoAccount);
        assert_eq!(
            pool_refusal(&[Refusal::Inactive, Refusal::Expired]),
            PoolRefusal::NoAccount
        );
        assert_eq!(
            pool_refusal(&[Refusal::Inactive, q(30), q(20), Refusal::Expired]),
            PoolRefusal::Quota { reset_at_us: 20 }
        );
        assert_eq!(
            pool_refusal(&[
                q(5),
                rate(LimitType::Rpd, 900),
                rate(LimitType::Rpm, 12),
                rate(LimitType::Tpm, 12),
                Refusal::Inactive
            ]),
            PoolRefusal::Rate {
                limit_type: LimitType::Rpm,
                retry_after_s: 12
            }
        );
    }

    #[test]
    fn limits_json() {
        let mut l = Limits::default();
        l.apply_json(&serde_json::json!({"rpm": 60, "tpd": 100000, "concurrent": 0}))
            .unwrap();
        assert_eq!(l.to_json(), serde_json::json!({"rpm": 60, "tpd": 100000}));
        l.apply_json(&serde_json::json!({"rpm": null, "rph": 7}))
            .unwrap();
        assert_eq!(l.to_json(), serde_json::json!({"rph": 7, "tpd": 100000}));
        for (bad, key) in [
            (serde_json::json!({"rps": 1}), "rps"),
            (serde_json::json!({"rpm": -1}), "rpm"),
            (serde_json::json!({"rpm": 1.5}), "rpm"),
            (serde_json::json!({"tpm": "10"}), "tpm"),
            (serde_json::json!({"tpm": 18446744073709551615u64}), "tpm"),
        ] {
            let before = l;
            let e = l.apply_json(&bad).unwrap_err();
            assert_eq!(e.kind.sqlstate(), "22023");
            assert!(e.message.contains(key), "{}", e.message);
            assert_eq!(e.fields["field"], format!("limits.{key}"));
            assert_eq!(l, before, "unchanged on error");
        }
        assert!(l.apply_json(&serde_json::json!([1])).is_err());
        for t in LimitType::ALL {
            assert_eq!(LimitType::parse(t.as_str()).unwrap(), t);
        }
        assert_eq!(
            LimitType::parse("RPM").unwrap_err().kind.sqlstate(),
            "22023"
        );
    }

    #[test]
    fn strategies_parse() {
        for s in [
            Strategy::LeastUsed,
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::Best,
        ] {
            assert_eq!(Strategy::parse(s.as_str()).unwrap(), s);
        }
        let e = Strategy::parse("fastest").unwrap_err();
        assert_eq!(
            e.message,
            "unknown strategy 'fastest' (least_used, round_robin, random, best)"
        );
        assert_eq!(e.kind.sqlstate(), "22023");
    }

    #[test]
    fn validation() {
        assert_eq!(validate_tokens("tokens_needed", 0).unwrap(), 0);
        let e = validate_tokens("tokens_needed", -1).unwrap_err();
        assert_eq!(e.message, "tokens_needed must be at least 0, got -1");
        assert_eq!(e.fields["field"], "tokens_needed");
        assert_eq!(validate_period_s(60).unwrap(), 60);
        assert_eq!(validate_period_s(31_536_000).unwrap(), 31_536_000);
        assert!(validate_period_s(59).is_err());
        assert!(validate_period_s(31_536_001).is_err());
        assert_eq!(validate_lease_ttl_s(1).unwrap(), 1);
        assert_eq!(validate_lease_ttl_s(86_400).unwrap(), 86_400);
        assert!(validate_lease_ttl_s(0).is_err());
        assert_eq!(
            validate_lease_ttl_s(86_401).unwrap_err().fields["field"],
            "lease_ttl_s"
        );
        assert_eq!(validate_name("name", "openai-main").unwrap(), "openai-main");
        assert!(validate_name("name", &"é".repeat(100)).is_ok());
        for bad in [
            "",
            " ",
            "a\u{0}b",
            "a\nb",
            " x",
            "\u{200B}",
            &"x".repeat(101),
        ] {
            let e = validate_name("name", bad).unwrap_err();
            assert_eq!(e.kind.sqlstate(), "22023", "{bad:?}");
            assert_eq!(e.fields["field"], "name");
        }
    }
}
