//! Two-phase consumption (seed 003, SPEC 3): reserve, settle, release, consume, and the expiry of
//! holds the caller abandoned. The arithmetic is `quota_core::reservation`; this is the glue.
//!
//! Atomicity and locks: a reserve locks the user's wallet, then the organization, checks both and
//! writes the reservation, the wallet's hold and the organization's hold with their ledger rows,
//! or raises before writing. A settle, release or expiry locks the reservation row first (so its
//! status leaves `held` exactly once), then the wallet, then the organization: one order
//! everywhere, so holds cannot deadlock with each other.
//!
//! Idempotency (SPEC 1.1): the reserve's, settle's and release's operation ids are keys of the
//! user's ledger (scope service), like a charge's; a replay returns the first answer field for
//! field (the reserve's from the reservation row, which never changes those columns; a settle's
//! or release's from the outcome stored on the reservation). Expiry and the settle half of a
//! consume use ids of the system scope (`expire:<id>`, `settle:<id>`), which callers cannot write.

use crate::error::{raise, required, OrRaise};
use crate::ledger::{find_operation, replay, Scope};
use crate::{read, settings, spi_cache};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use quota_core::ids::{validate_operation_id, validate_user_id};
use quota_core::pricing;
use quota_core::reservation::{
    self as rules, check_org_hold, check_user_hold, settle_split, Amount, Billing, Org, Split,
};
use quota_core::{ErrorKind, QuotaError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn unknown_user(user_id: &str) -> QuotaError {
    QuotaError::not_found(format!("user '{user_id}' not found")).with("user_id", user_id)
}

fn unknown_reservation(reservation_id: i64) -> QuotaError {
    QuotaError::not_found(format!("reservation {reservation_id} not found"))
        .with("reservation_id", reservation_id)
}

fn in_progress(operation_id: &str) -> QuotaError {
    QuotaError::new(
        ErrorKind::InProgress,
        format!("operation_id '{operation_id}' is being applied by a concurrent call; retry"),
    )
    .with("operation_id", operation_id)
}

/// The request record of a reserve (or of a consume): what its operation_id stands for.
fn reserve_request(user_id: &str, amount: Amount, ttl_s: Option<i32>) -> Value {
    let mut r = json!({ "user_id": user_id });
    match amount {
        Amount::Credits(c) => r["credits"] = json!(c),
        Amount::Usd(u) => r["cost_usd"] = json!(u),
    }
    match ttl_s {
        Some(t) => r["ttl_s"] = json!(t),
        None => r["consume"] = json!(true),
    }
    r
}

fn get<T: FromDatum + IntoDatum>(row: &pgrx::spi::SpiHeapTupleData, name: &str) -> Option<T> {
    row.get_by_name::<T, _>(name).or_raise()
}

/// Locks an organization and reads its counters.
fn lock_org(client: &mut SpiClient, org_id: &str) -> Org {
    let t = spi_cache::update(
        client,
        "SELECT status, billing_type, quota, used_quota, held_quota, overdraft_limit
             FROM quota.organizations WHERE id = $1 FOR UPDATE",
        Some(1),
        &[org_id.into()],
    )
    .or_raise();
    let Some(row) = t.into_iter().next() else {
        // users.org is a foreign key: an organization that is gone has no users left.
        raise(
            QuotaError::not_found(format!("organization '{org_id}' not found")).with("org", org_id),
        );
    };
    Org {
        billing: Billing::parse(&get::<String>(&row, "billing_type").unwrap_or_default())
            .or_raise(),
        enabled: get::<String>(&row, "status").as_deref() == Some("enabled"),
        quota: get(&row, "quota").unwrap_or_default(),
        used_quota: get(&row, "used_quota").unwrap_or_default(),
        held_quota: get(&row, "held_quota").unwrap_or_default(),
        overdraft_limit: get(&row, "overdraft_limit").unwrap_or_default(),
    }
}

/// Writes one change of an organization's counters and its org_ledger row; returns
/// (quota, used_quota, held_quota) after it.
#[allow(clippy::too_many_arguments)]
fn move_org(
    client: &mut SpiClient,
    org_id: &str,
    scope: &str,
    operation_id: &str,
    entry_type: &str,
    (quota, used, held): (i64, i64, i64),
    reservation_id: Option<i64>,
    user_id: Option<&str>,
    description: Option<&str>,
    request: Value,
) -> (i64, i64, i64) {
    let t = spi_cache::update(
        client,
        "WITH o AS (
                UPDATE quota.organizations
                   SET quota = quota + $6, used_quota = used_quota + $7, held_quota = held_quota + $8,
                       updated_at = now()
                 WHERE id = $1
                RETURNING quota, used_quota, held_quota),
             l AS (
                INSERT INTO quota.org_ledger (org_id, scope, operation_id, entry_type, quota_change,
                       used_change, held_change, quota_after, used_quota_after, held_quota_after,
                       reservation_id, user_id, description, request)
                SELECT $1, $2, $3, $4, $6, $7, $8, o.quota, o.used_quota, o.held_quota, $5, $9,
                       $10, $11
                FROM o
                ON CONFLICT ON CONSTRAINT org_ledger_operation_key DO NOTHING
                RETURNING entry_id)
             SELECT o.quota, o.used_quota, o.held_quota, l.entry_id FROM o LEFT JOIN l ON true",
            Some(1),
            &[
                org_id.into(),
                scope.into(),
                operation_id.into(),
                entry_type.into(),
                reservation_id.into(),
                quota.into(),
                used.into(),
                held.into(),
                user_id.into(),
                description.into(),
                JsonB(request).into(),
            ],
        )
        .or_raise();
    let row = t.into_iter().next().unwrap_or_else(|| {
        raise(
            QuotaError::not_found(format!("organization '{org_id}' not found")).with("org", org_id),
        )
    });
    if get::<i64>(&row, "entry_id").is_none() {
        // The key is taken: a concurrent call with the same id (only possible for top-ups,
        // whose id the caller chose; system ids name a reservation whose row we hold locked).
        raise(in_progress(operation_id));
    }
    (
        get(&row, "quota").unwrap_or_default(),
        get(&row, "used_quota").unwrap_or_default(),
        get(&row, "held_quota").unwrap_or_default(),
    )
}

/// The wallet side of a reservation step: the wallet's counters move and one ledger row is
/// written. Returns (balance, held_credits, used_quota, request_count) after it.
#[allow(clippy::too_many_arguments)]
fn move_wallet(
    client: &mut SpiClient,
    user_id: &str,
    scope: Scope,
    operation_id: &str,
    kind: &str,
    charged: i64,
    held_change: i64,
    used: i64,
    requests: i64,
    cost_usd: Option<f64>,
    metadata: Value,
    request: Value,
) -> (i64, i64, i64, i64) {
    let t = spi_cache::update(
        client,
        "WITH w AS (
                UPDATE quota.wallets
                   SET balance = balance - $5, total_spent = total_spent + $5,
                       held_credits = held_credits + $6, used_quota = used_quota + $7,
                       request_count = request_count + $8, updated_at = now()
                 WHERE user_id = $1
                RETURNING balance, held_credits, used_quota, request_count),
             l AS (
                INSERT INTO quota.ledger (user_id, scope, operation_id, transaction_type, credits,
                       balance_before, balance_after, held_change, cost_usd, metadata, request)
                SELECT $1, $2, $3, $4, -$5, w.balance + $5, w.balance, $6, $9, $10, $11 FROM w
                ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING
                RETURNING transaction_id)
             SELECT w.balance, w.held_credits, w.used_quota, w.request_count, l.transaction_id
             FROM w LEFT JOIN l ON true",
        Some(1),
        &[
            user_id.into(),
            scope.as_str().into(),
            operation_id.into(),
            kind.into(),
            charged.into(),
            held_change.into(),
            used.into(),
            requests.into(),
            cost_usd.into(),
            JsonB(metadata).into(),
            JsonB(request).into(),
        ],
    )
    .or_raise();
    let row = t
        .into_iter()
        .next()
        .unwrap_or_else(|| raise(unknown_user(user_id)));
    if get::<i64>(&row, "transaction_id").is_none() {
        // Unreachable while the wallet (reserve) or reservation (end) lock is held.
        raise(in_progress(operation_id));
    }
    (
        get(&row, "balance").unwrap_or_default(),
        get(&row, "held_credits").unwrap_or_default(),
        get(&row, "used_quota").unwrap_or_default(),
        get(&row, "request_count").unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------
// reserve

/// Reserves, or finds the reservation an identical earlier call made: (reservation_id, replayed).
fn reserve_impl(
    client: &mut SpiClient,
    operation_id: &str,
    user_id: &str,
    amount: Amount,
    ttl_s: Option<i32>,
    token_id: Option<i64>,
) -> (i64, bool) {
    let kind = "reserve";
    let mut request = reserve_request(user_id, amount, ttl_s);
    if let Some(t) = token_id {
        request["token_id"] = json!(t);
    }
    let replayed = |client: &mut SpiClient, existing| -> (i64, bool) {
        replay(existing, kind, &request).or_raise();
        let id = spi_cache::update(
            client,
            "SELECT reservation_id FROM quota.reservations
             WHERE user_id = $1 AND operation_id = $2",
            Some(1),
            &[user_id.into(), operation_id.into()],
        )
        .or_raise()
        .next()
        .and_then(|r| get::<i64>(&r, "reservation_id"))
        .unwrap_or_else(|| raise(in_progress(operation_id)));
        (id, true)
    };
    let t = spi_cache::update(
        client,
        "SELECT w.balance, w.held_credits, w.multiplier, u.unlimited, u.org
             FROM quota.wallets w JOIN quota.users u ON u.id = w.user_id
             WHERE w.user_id = $1 FOR UPDATE OF w",
        Some(1),
        &[user_id.into()],
    )
    .or_raise();
    let Some(wallet) = t.into_iter().next() else {
        raise(unknown_user(user_id));
    };
    let balance: i64 = get(&wallet, "balance").unwrap_or_default();
    let held: i64 = get(&wallet, "held_credits").unwrap_or_default();
    let multiplier: f64 = get(&wallet, "multiplier").unwrap_or(1.0);
    let unlimited: bool = get(&wallet, "unlimited").unwrap_or(false);
    let org: Option<String> = get(&wallet, "org");
    // A replay, or a concurrent call with this operation_id that committed while we waited for
    // the wallet (read with a fresh snapshot).
    if let Some(existing) = find_operation(client, user_id, Scope::Service, operation_id, true) {
        return replayed(client, existing);
    }
    let (credits, cost_usd) = match amount {
        Amount::Credits(c) => (c, None),
        Amount::Usd(u) => (
            pricing::charge_credits(u, multiplier, settings::base_rate()).or_raise(),
            Some(u),
        ),
    };
    let user_hold = if unlimited { 0 } else { credits };
    if !unlimited {
        check_user_hold(user_id, balance, held, credits).or_raise();
    }
    let org_hold = match &org {
        Some(o) => {
            check_org_hold(o, &lock_org(client, o), credits).or_raise();
            credits
        }
        None => 0,
    };
    // Lock order: wallet, organization, token.
    let (token_limited, token_hold) = match token_id {
        Some(t) => lock_token_for_hold(client, t, user_id, credits),
        None => (false, 0),
    };
    let ttl = ttl_s.unwrap_or(rules::TTL_S_DEFAULT);
    let reservation_id = spi_cache::update(
        client,
        "INSERT INTO quota.reservations (user_id, org, unlimited, operation_id, credits_held,
                    user_credits_held, org_credits_held, cost_usd, created_at, expires_at,
                    token_id, token_limited, token_credits_held)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, quota.now(),
                     quota.now() + make_interval(secs => $9), $10, $11, $12)
             RETURNING reservation_id",
        Some(1),
        &[
            user_id.into(),
            org.as_deref().into(),
            unlimited.into(),
            operation_id.into(),
            credits.into(),
            user_hold.into(),
            org_hold.into(),
            cost_usd.into(),
            f64::from(ttl).into(),
            token_id.into(),
            token_limited.into(),
            token_hold.into(),
        ],
    )
    .or_raise()
    .first()
    .get_one::<i64>()
    .or_raise()
    .expect("identity");
    move_wallet(
        client,
        user_id,
        Scope::Service,
        operation_id,
        kind,
        0,
        user_hold,
        0,
        0,
        cost_usd,
        json!({ "reservation_id": reservation_id }),
        request,
    );
    if let Some(o) = &org {
        move_org(
            client,
            o,
            "system",
            &format!("reserve:{reservation_id}"),
            "reserve",
            (0, 0, org_hold),
            Some(reservation_id),
            Some(user_id),
            None,
            json!({ "reservation_id": reservation_id, "credits": credits }),
        );
    }
    if let Some(t) = token_id {
        move_token(client, t, 0, token_hold, None);
    }
    (reservation_id, false)
}

/// Locks an access token for a hold by `user_id` and checks it: it must be the user's, active
/// and not expired; a limited one (count or hybrid, not unlimited) must have `credits` free.
/// Returns (limited, hold).
fn lock_token_for_hold(
    client: &mut SpiClient,
    token_id: i64,
    user_id: &str,
    credits: i64,
) -> (bool, i64) {
    let t = spi_cache::update(
        client,
        "SELECT user_id, active, unlimited, quota_type, remaining_quota, held_quota,
                expires_at IS NOT NULL AND expires_at <= quota.now() AS expired
         FROM quota.tokens WHERE token_id = $1 FOR UPDATE",
        Some(1),
        &[token_id.into()],
    )
    .or_raise();
    let Some(r) = t.into_iter().next() else {
        raise(QuotaError::not_found("access token not found").with("field", "access_token"));
    };
    if get::<String>(&r, "user_id").as_deref() != Some(user_id) {
        raise(
            QuotaError::invalid(format!(
                "the access token does not belong to user '{user_id}'"
            ))
            .with("field", "access_token"),
        );
    }
    let quota_type = get::<String>(&r, "quota_type").unwrap_or_default();
    let unusable = |why: &str| {
        raise(
            QuotaError::new(
                ErrorKind::TokenUnusable,
                format!("the access token is {why}"),
            )
            .with("field", "access_token")
            .with("reason", why),
        )
    };
    if !get::<bool>(&r, "active").unwrap_or(false) {
        unusable("inactive");
    }
    if get::<bool>(&r, "expired").unwrap_or(false) && quota_type != "count" {
        unusable("expired");
    }
    let limited = !get::<bool>(&r, "unlimited").unwrap_or(false) && quota_type != "time";
    if !limited {
        return (false, 0);
    }
    let remaining: i64 = get(&r, "remaining_quota").unwrap_or_default();
    let held: i64 = get(&r, "held_quota").unwrap_or_default();
    if remaining - held < credits {
        raise(
            QuotaError::new(
                ErrorKind::InsufficientTokenQuota,
                format!(
                    "the access token has {} credits available ({remaining} remaining, {held} held), {credits} required",
                    remaining - held
                ),
            )
            .with("required_credits", credits)
            .with("available_credits", remaining - held),
        );
    }
    (true, credits)
}

/// Moves a token's remaining and held quota (a settle's charge, a hold or its end) and logs a
/// charge as a consumption. Returns remaining_quota after.
fn move_token(
    client: &mut SpiClient,
    token_id: i64,
    charged: i64,
    held_change: i64,
    reservation_id: Option<i64>,
) -> Option<i64> {
    let t = spi_cache::update(
        client,
        "WITH t AS (
            UPDATE quota.tokens
               SET remaining_quota = remaining_quota - $2, held_quota = held_quota + $3
             WHERE token_id = $1
            RETURNING remaining_quota, total_quota),
         l AS (
            INSERT INTO quota.token_logs (token_id, kind, units, remaining_after, total_after, detail)
            SELECT $1, 'consume', $2, t.remaining_quota, t.total_quota,
                   jsonb_build_object('reservation_id', $4::int8)
            FROM t WHERE $4::int8 IS NOT NULL)
         SELECT remaining_quota FROM t",
        Some(1),
        &[
            token_id.into(),
            charged.into(),
            held_change.into(),
            reservation_id.into(),
        ],
    )
    .or_raise();
    t.into_iter()
        .next()
        .and_then(|r| get::<i64>(&r, "remaining_quota"))
}

fn reserve_args(
    operation_id: Option<&str>,
    user_id: Option<&str>,
    credits: Option<i64>,
    cost_usd: Option<f64>,
) -> (String, String, Amount) {
    let operation_id = required(operation_id, "operation_id");
    let user_id = required(user_id, "user_id");
    validate_operation_id(operation_id).or_raise();
    validate_user_id(user_id).or_raise();
    let amount = rules::amount(credits, cost_usd).or_raise();
    (operation_id.to_string(), user_id.to_string(), amount)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn reserve(
    operation_id: Option<&str>,
    user_id: Option<&str>,
    credits: default!(Option<i64>, "NULL"),
    cost_usd: default!(Option<f64>, "NULL"),
    ttl_s: default!(Option<i32>, 300),
    access_token: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(reservation_id, i64),
        name!(status, String),
        name!(user_id, String),
        name!(org, Option<String>),
        name!(unlimited, bool),
        name!(credits_held, i64),
        name!(user_credits_held, i64),
        name!(org_credits_held, i64),
        name!(cost_usd, Option<f64>),
        name!(expires_at, TimestampWithTimeZone),
        name!(created_at, TimestampWithTimeZone),
        name!(operation_id, String),
        name!(token_credits_held, i64),
    ),
> {
    let (operation_id, user_id, amount) = reserve_args(operation_id, user_id, credits, cost_usd);
    let ttl_s = required(ttl_s, "ttl_s");
    rules::validate_ttl(ttl_s).or_raise();
    let token_id = access_token.map(crate::tokens::token_id_of);
    Spi::connect_mut(|client| {
        let (id, _) = reserve_impl(
            client,
            &operation_id,
            &user_id,
            amount,
            Some(ttl_s),
            token_id,
        );
        // The first answer, also on a replay: these columns never change after the reserve.
        let t = spi_cache::update(
            client,
            "SELECT reservation_id, user_id, org, unlimited, credits_held, user_credits_held,
                        org_credits_held, cost_usd, expires_at, created_at, operation_id,
                        token_credits_held
                 FROM quota.reservations WHERE reservation_id = $1",
            Some(1),
            &[id.into()],
        )
        .or_raise();
        let r = t.into_iter().next().expect("just written or found");
        TableIterator::once((
            id,
            "held".to_string(),
            get(&r, "user_id").unwrap_or_default(),
            get(&r, "org"),
            get(&r, "unlimited").unwrap_or_default(),
            get(&r, "credits_held").unwrap_or_default(),
            get(&r, "user_credits_held").unwrap_or_default(),
            get(&r, "org_credits_held").unwrap_or_default(),
            get(&r, "cost_usd"),
            get(&r, "expires_at").expect("not null"),
            get(&r, "created_at").expect("not null"),
            get(&r, "operation_id").unwrap_or_default(),
            get(&r, "token_credits_held").unwrap_or_default(),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// settle, release, expiry

/// How a hold ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Settle(i64),
    Release,
    Expire,
}

/// What settle, release and consume return; stored on the reservation for replays.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    reservation_id: i64,
    status: String,
    user_id: String,
    org: Option<String>,
    unlimited: bool,
    credits_held: i64,
    actual_credits: i64,
    charged_credits: i64,
    returned_credits: i64,
    uncollected_credits: i64,
    org_charged_credits: i64,
    org_uncollected_credits: i64,
    balance_after: i64,
    held_credits_after: i64,
    used_quota_after: i64,
    request_count_after: i64,
    org_quota_after: Option<i64>,
    org_used_quota_after: Option<i64>,
    operation_id: String,
    #[serde(default)]
    token_charged_credits: i64,
    #[serde(default)]
    token_uncollected_credits: i64,
    #[serde(default)]
    token_remaining_after: Option<i64>,
}

type OutcomeRow = (
    i64,
    String,
    String,
    Option<String>,
    bool,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    i64,
    Option<i64>,
);

impl Outcome {
    fn row(self) -> OutcomeRow {
        (
            self.reservation_id,
            self.status,
            self.user_id,
            self.org,
            self.unlimited,
            self.credits_held,
            self.actual_credits,
            self.charged_credits,
            self.returned_credits,
            self.uncollected_credits,
            self.org_charged_credits,
            self.org_uncollected_credits,
            self.balance_after,
            self.held_credits_after,
            self.used_quota_after,
            self.request_count_after,
            self.org_quota_after,
            self.org_used_quota_after,
            self.operation_id,
            self.token_charged_credits,
            self.token_uncollected_credits,
            self.token_remaining_after,
        )
    }
}

fn stored_outcome(client: &mut SpiClient, reservation_id: i64, operation_id: &str) -> Outcome {
    let t = spi_cache::update(
        client,
        "SELECT outcome FROM quota.reservations WHERE reservation_id = $1",
        Some(1),
        &[reservation_id.into()],
    )
    .or_raise();
    t.into_iter()
        .next()
        .and_then(|r| get::<JsonB>(&r, "outcome"))
        .and_then(|j| serde_json::from_value(j.0).ok())
        .unwrap_or_else(|| raise(in_progress(operation_id)))
}

/// Ends a held reservation. `caller_op`: the settle's or release's operation id (scope service,
/// replayable); None for an expiry or the settle half of a consume (scope system).
fn end_impl(
    client: &mut SpiClient,
    reservation_id: i64,
    end: End,
    caller_op: Option<&str>,
    reported_op: &str,
) -> Outcome {
    let (kind, request) = match end {
        End::Settle(actual) => (
            "settle",
            json!({ "reservation_id": reservation_id, "actual_credits": actual }),
        ),
        End::Release => ("release", json!({ "reservation_id": reservation_id })),
        End::Expire => (
            "release",
            json!({ "reservation_id": reservation_id, "expired": true }),
        ),
    };
    let t = spi_cache::update(
        client,
        "SELECT user_id, org, unlimited, credits_held, user_credits_held, org_credits_held, status,
                    token_id, token_limited, token_credits_held,
                    expires_at <= quota.now() AS past_expiry, expires_at::text AS expires_at
             FROM quota.reservations WHERE reservation_id = $1 FOR UPDATE",
        Some(1),
        &[reservation_id.into()],
    )
    .or_raise();
    let r = t
        .into_iter()
        .next()
        .unwrap_or_else(|| raise(unknown_reservation(reservation_id)));
    let user_id: String = get(&r, "user_id").unwrap_or_default();
    if let Some(op) = caller_op {
        // A replay, or the same operation_id committed by a concurrent call while we waited
        // for the row (read with a fresh snapshot).
        if let Some(existing) = find_operation(client, &user_id, Scope::Service, op, true) {
            replay(existing, kind, &request).or_raise();
            return stored_outcome(client, reservation_id, op);
        }
    }
    let org: Option<String> = get(&r, "org");
    let unlimited: bool = get(&r, "unlimited").unwrap_or_default();
    let credits_held: i64 = get(&r, "credits_held").unwrap_or_default();
    let user_hold: i64 = get(&r, "user_credits_held").unwrap_or_default();
    let org_hold: i64 = get(&r, "org_credits_held").unwrap_or_default();
    let mut status: String = get(&r, "status").unwrap_or_default();
    let past_expiry: bool = get(&r, "past_expiry").unwrap_or_default();
    if status == "held" && past_expiry && end != End::Expire {
        status = "expired".into();
    }
    if status != "held" {
        let expires_at: String = get(&r, "expires_at").unwrap_or_default();
        let why = if status == "expired" {
            format!(" (it expired at {expires_at} and its hold was returned)")
        } else {
            String::new()
        };
        raise(
            QuotaError::new(
                ErrorKind::ReservationNotHeld,
                format!("reservation {reservation_id} is {status}, not held{why}"),
            )
            .with("reservation_id", reservation_id)
            .with("status", status.as_str()),
        );
    }

    // Lock order: reservation, wallet, organization.
    let t = spi_cache::update(
        client,
        "SELECT balance, held_credits FROM quota.wallets WHERE user_id = $1 FOR UPDATE",
        Some(1),
        &[user_id.as_str().into()],
    )
    .or_raise();
    let w = t
        .into_iter()
        .next()
        .unwrap_or_else(|| raise(unknown_user(&user_id)));
    let balance: i64 = get(&w, "balance").unwrap_or_default();
    let held: i64 = get(&w, "held_credits").unwrap_or_default();
    let org_state = org.as_deref().map(|o| lock_org(client, o));
    let token_id: Option<i64> = get(&r, "token_id");
    let token_limited: bool = get(&r, "token_limited").unwrap_or(false);
    let token_hold: i64 = get(&r, "token_credits_held").unwrap_or_default();
    let token_free = match token_id {
        Some(t) => {
            let tt = spi_cache::update(
                client,
                "SELECT coalesce(remaining_quota, 0) - held_quota AS free
                 FROM quota.tokens WHERE token_id = $1 FOR UPDATE",
                Some(1),
                &[t.into()],
            )
            .or_raise();
            tt.into_iter()
                .next()
                .and_then(|r| get::<i64>(&r, "free"))
                .unwrap_or(0)
        }
        None => 0,
    };

    let release = |hold: i64| Split {
        charged: 0,
        returned: hold,
        uncollected: 0,
    };
    let (actual, user_split, org_split) = match end {
        End::Settle(actual) => (
            actual,
            if unlimited {
                Split {
                    charged: 0,
                    returned: 0,
                    uncollected: 0,
                }
            } else {
                settle_split(user_hold, actual, balance - held)
            },
            org_state
                .map(|o| settle_split(org_hold, actual, o.available()))
                .unwrap_or(release(0)),
        ),
        End::Release | End::Expire => (0, release(user_hold), release(org_hold)),
    };
    let token_split = match end {
        End::Settle(actual) if token_limited => settle_split(token_hold, actual, token_free),
        _ => release(token_hold),
    };
    let settled = matches!(end, End::Settle(_));
    let (scope, wallet_op) = match (end, caller_op) {
        (End::Expire, _) => (Scope::System, format!("expire:{reservation_id}")),
        (_, Some(op)) => (Scope::Service, op.to_string()),
        (_, None) => (Scope::System, format!("settle:{reservation_id}")),
    };
    let (balance_after, held_after, used_after, requests_after) = move_wallet(
        client,
        &user_id,
        scope,
        &wallet_op,
        kind,
        user_split.charged,
        -user_hold,
        actual,
        i64::from(settled),
        None,
        json!({ "reservation_id": reservation_id }),
        request.clone(),
    );
    let (org_quota_after, org_used_after) = match (&org, org_state) {
        (Some(o), Some(state)) => {
            let entry = match end {
                End::Settle(_) => "settle",
                End::Release => "release",
                End::Expire => "expire",
            };
            let (q, u, _) = move_org(
                client,
                o,
                "system",
                &format!("{entry}:{reservation_id}"),
                entry,
                state.settle_changes(org_hold, org_split.charged),
                Some(reservation_id),
                Some(&user_id),
                None,
                request,
            );
            (Some(q), Some(u))
        }
        _ => (None, None),
    };
    let token_remaining_after = match token_id {
        Some(t) => move_token(
            client,
            t,
            token_split.charged,
            -token_hold,
            (token_split.charged > 0).then_some(reservation_id),
        ),
        None => None,
    };
    let status = match end {
        End::Settle(_) => "settled",
        End::Release => "released",
        End::Expire => "expired",
    };
    let outcome = Outcome {
        reservation_id,
        status: status.to_string(),
        user_id: user_id.clone(),
        org: org.clone(),
        unlimited,
        credits_held,
        actual_credits: actual,
        charged_credits: user_split.charged,
        returned_credits: user_split.returned,
        uncollected_credits: user_split.uncollected,
        org_charged_credits: org_split.charged,
        org_uncollected_credits: org_split.uncollected,
        balance_after,
        held_credits_after: held_after,
        used_quota_after: used_after,
        request_count_after: requests_after,
        org_quota_after,
        org_used_quota_after: org_used_after,
        operation_id: reported_op.to_string(),
        token_charged_credits: token_split.charged,
        token_uncollected_credits: token_split.uncollected,
        token_remaining_after,
    };
    spi_cache::update(
        client,
        "UPDATE quota.reservations
                SET status = $2, ended_at = quota.now(), end_operation_id = $3, actual_credits = $4,
                    charged_credits = $5, returned_credits = $6, uncollected_credits = $7,
                    org_charged_credits = $8, org_uncollected_credits = $9, outcome = $10,
                    token_charged_credits = $11
              WHERE reservation_id = $1",
        None,
        &[
            reservation_id.into(),
            status.into(),
            reported_op.into(),
            (if settled { Some(actual) } else { None }).into(),
            user_split.charged.into(),
            user_split.returned.into(),
            user_split.uncollected.into(),
            org_split.charged.into(),
            org_split.uncollected.into(),
            JsonB(serde_json::to_value(&outcome).expect("plain data")).into(),
            token_split.charged.into(),
        ],
    )
    .or_raise();
    outcome
}

fn end_args(reservation_id: Option<i64>, operation_id: Option<&str>) -> (i64, String) {
    let reservation_id = required(reservation_id, "reservation_id");
    let operation_id = required(operation_id, "operation_id");
    rules::validate_reservation_id(reservation_id).or_raise();
    validate_operation_id(operation_id).or_raise();
    (reservation_id, operation_id.to_string())
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn settle(
    reservation_id: Option<i64>,
    actual_credits: Option<i64>,
    operation_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(reservation_id, i64),
        name!(status, String),
        name!(user_id, String),
        name!(org, Option<String>),
        name!(unlimited, bool),
        name!(credits_held, i64),
        name!(actual_credits, i64),
        name!(charged_credits, i64),
        name!(returned_credits, i64),
        name!(uncollected_credits, i64),
        name!(org_charged_credits, i64),
        name!(org_uncollected_credits, i64),
        name!(balance_after, i64),
        name!(held_credits_after, i64),
        name!(used_quota_after, i64),
        name!(request_count_after, i64),
        name!(org_quota_after, Option<i64>),
        name!(org_used_quota_after, Option<i64>),
        name!(operation_id, String),
        name!(token_charged_credits, i64),
        name!(token_uncollected_credits, i64),
        name!(token_remaining_after, Option<i64>),
    ),
> {
    let (reservation_id, operation_id) = end_args(reservation_id, operation_id);
    let actual = required(actual_credits, "actual_credits");
    rules::validate_actual(actual).or_raise();
    let o = Spi::connect_mut(|client| {
        end_impl(
            client,
            reservation_id,
            End::Settle(actual),
            Some(&operation_id),
            &operation_id,
        )
    });
    TableIterator::once(o.row())
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn release(
    reservation_id: Option<i64>,
    operation_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(reservation_id, i64),
        name!(status, String),
        name!(user_id, String),
        name!(org, Option<String>),
        name!(unlimited, bool),
        name!(credits_held, i64),
        name!(actual_credits, i64),
        name!(charged_credits, i64),
        name!(returned_credits, i64),
        name!(uncollected_credits, i64),
        name!(org_charged_credits, i64),
        name!(org_uncollected_credits, i64),
        name!(balance_after, i64),
        name!(held_credits_after, i64),
        name!(used_quota_after, i64),
        name!(request_count_after, i64),
        name!(org_quota_after, Option<i64>),
        name!(org_used_quota_after, Option<i64>),
        name!(operation_id, String),
        name!(token_charged_credits, i64),
        name!(token_uncollected_credits, i64),
        name!(token_remaining_after, Option<i64>),
    ),
> {
    let (reservation_id, operation_id) = end_args(reservation_id, operation_id);
    let o = Spi::connect_mut(|client| {
        end_impl(
            client,
            reservation_id,
            End::Release,
            Some(&operation_id),
            &operation_id,
        )
    });
    TableIterator::once(o.row())
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn consume(
    operation_id: Option<&str>,
    user_id: Option<&str>,
    credits: default!(Option<i64>, "NULL"),
    cost_usd: default!(Option<f64>, "NULL"),
    access_token: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(reservation_id, i64),
        name!(status, String),
        name!(user_id, String),
        name!(org, Option<String>),
        name!(unlimited, bool),
        name!(credits_held, i64),
        name!(actual_credits, i64),
        name!(charged_credits, i64),
        name!(returned_credits, i64),
        name!(uncollected_credits, i64),
        name!(org_charged_credits, i64),
        name!(org_uncollected_credits, i64),
        name!(balance_after, i64),
        name!(held_credits_after, i64),
        name!(used_quota_after, i64),
        name!(request_count_after, i64),
        name!(org_quota_after, Option<i64>),
        name!(org_used_quota_after, Option<i64>),
        name!(operation_id, String),
        name!(token_charged_credits, i64),
        name!(token_uncollected_credits, i64),
        name!(token_remaining_after, Option<i64>),
    ),
> {
    let (operation_id, user_id, amount) = reserve_args(operation_id, user_id, credits, cost_usd);
    let token_id = access_token.map(crate::tokens::token_id_of);
    let o = Spi::connect_mut(|client| {
        let (id, replayed) = reserve_impl(client, &operation_id, &user_id, amount, None, token_id);
        if replayed {
            return stored_outcome(client, id, &operation_id);
        }
        let held = spi_cache::update(
            client,
            "SELECT credits_held FROM quota.reservations WHERE reservation_id = $1",
            Some(1),
            &[id.into()],
        )
        .or_raise()
        .first()
        .get_one::<i64>()
        .or_raise()
        .expect("not null");
        end_impl(client, id, End::Settle(held), None, &operation_id)
    });
    TableIterator::once(o.row())
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn get_reservation(reservation_id: i64) -> JsonB {
    rules::validate_reservation_id(reservation_id).or_raise();
    read::one::<JsonB>(
        "SELECT quota._reservation_json(r) FROM quota.reservations r WHERE r.reservation_id = $1",
        &[reservation_id.into()],
    )
    .unwrap_or_else(|| raise(unknown_reservation(reservation_id)))
}

/// Releases up to `max_count` holds past their expiry (oldest first), each exactly once: rows
/// another transaction holds (a settle in flight) are skipped and left to that transaction or
/// the next call. `more`: some may be left.
pub fn expire_impl(max_count: i32) -> (i32, bool) {
    Spi::connect_mut(|client| {
        let ids: Vec<i64> = spi_cache::update(
            client,
            "SELECT reservation_id FROM quota.reservations
                 WHERE status = 'held' AND expires_at <= quota.now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
            None,
            &[max_count.into()],
        )
        .or_raise()
        .map(|r| r.get::<i64>(1).or_raise().expect("primary key"))
        .collect();
        // One transaction ends holds of many users, so it takes their wallets, then their
        // organizations, each in id order, before ending any: a reserve or settle takes one
        // wallet and then its organization, so it cannot wait in a cycle with this batch.
        for sql in [
            "SELECT 1 FROM quota.wallets WHERE user_id IN
                (SELECT user_id FROM quota.reservations WHERE reservation_id = ANY($1))
             ORDER BY user_id FOR UPDATE",
            "SELECT 1 FROM quota.organizations WHERE id IN
                (SELECT org FROM quota.reservations WHERE reservation_id = ANY($1))
             ORDER BY id FOR UPDATE",
        ] {
            spi_cache::update(client, sql, None, &[ids.clone().into()]).or_raise();
        }
        for id in &ids {
            end_impl(client, *id, End::Expire, None, &format!("expire:{id}"));
        }
        let n = ids.len() as i32;
        (n, n == max_count)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn expire_reservations(
    max_count: default!(i32, 1000),
) -> TableIterator<'static, (name!(expired, i32), name!(more, bool))> {
    rules::validate_expire_batch(max_count).or_raise();
    TableIterator::once(expire_impl(max_count))
}
