//! The credit ledger (SPEC 2): charge, add, bonus, refund, purchase (against a confirmed payment),
//! subscription update, payments, and the read side (check, calculate, balance, transactions,
//! verify).
//!
//! Idempotency (SPEC 1.1): the ledger row is the idempotency record. Its key is
//! (user_id, scope, operation_id) (see `Scope`) and its `request` column holds the canonical
//! parameters of the first call, so
//! - same id, same kind and parameters: the stored row is returned (a replay leaves balances and
//!   the ledger as they were);
//! - same id, other kind or parameters: 23505 `idempotency_conflict`;
//! - same id racing on two connections: one applies; the other waits for it and then replays
//!   (a charge waits on the wallet row, credit operations on the wallet lock) or, when it
//!   cannot tell yet, gets 40001 `in_progress` with its own writes rolled back; retrying replays.
//!
//! A rejected call (validation, insufficient credits, no payment) raises before or instead of
//! writing.
//!
//! Every function here is SECURITY DEFINER with a pinned search_path (callers hold EXECUTE, never
//! table rights); the read functions use read-only SPI (`crate::read`) and take no transaction id.

use crate::error::{raise, required, OrRaise};
use crate::{read, settings, spi_cache};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData};
use pgrx::{JsonB, PgOid};
use quota_core::ids::{
    validate_free_text, validate_id, validate_metadata, validate_metadata_size,
    validate_operation_id, validate_payment_id, validate_tier, validate_user_id,
    OPERATION_ID_LEN_MAX, PAYMENT_ID_LEN_MAX,
};
use quota_core::pricing::{self, validate_credits};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Value};
use std::cell::OnceCell;

/// The idempotency scope of an operation id (the ledger's `scope` column). Keys are unique per
/// (user, scope, id): per user, so one user can neither block nor probe another's operations;
/// per scope, so an end user cannot take an id that a service will later use to charge them,
/// and no caller can take an id that pg_quota generates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Ids chosen by services and SQL callers: charge, add, bonus, refund, subscription.
    Service,
    /// Ids an end user chose through the public API: purchases.
    User,
    /// Ids pg_quota generates (recharges): no function lets a caller write them.
    System,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Service => "service",
            Scope::User => "user",
            Scope::System => "system",
        }
    }
}

/// One ledger row, as read back for responses and replays.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub transaction_id: i64,
    pub user_id: String,
    pub transaction_type: String,
    pub credits: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub cost_usd: Option<f64>,
    pub amount_usd: Option<f64>,
    pub metadata: Option<Value>,
    pub request: Value,
    pub operation_id: String,
}

const LEDGER_COLUMNS: &str = "transaction_id, user_id, transaction_type, credits, balance_before, \
     balance_after, cost_usd, amount_usd, metadata, request, operation_id";

fn read_ledger_row(row: &SpiHeapTupleData) -> Result<LedgerRow, pgrx::spi::SpiError> {
    Ok(LedgerRow {
        transaction_id: row
            .get_by_name::<i64, _>("transaction_id")?
            .unwrap_or_default(),
        user_id: row.get_by_name::<String, _>("user_id")?.unwrap_or_default(),
        transaction_type: row
            .get_by_name::<String, _>("transaction_type")?
            .unwrap_or_default(),
        credits: row.get_by_name::<i64, _>("credits")?.unwrap_or_default(),
        balance_before: row
            .get_by_name::<i64, _>("balance_before")?
            .unwrap_or_default(),
        balance_after: row
            .get_by_name::<i64, _>("balance_after")?
            .unwrap_or_default(),
        cost_usd: row.get_by_name::<f64, _>("cost_usd")?,
        amount_usd: row.get_by_name::<f64, _>("amount_usd")?,
        metadata: row.get_by_name::<JsonB, _>("metadata")?.map(|j| j.0),
        request: row
            .get_by_name::<JsonB, _>("request")?
            .map(|j| j.0)
            .unwrap_or(Value::Null),
        operation_id: row
            .get_by_name::<String, _>("operation_id")?
            .unwrap_or_default(),
    })
}

const FIND_OPERATION_SQL: &str =
    "SELECT transaction_id, user_id, transaction_type, credits, balance_before, \
     balance_after, cost_usd, amount_usd, metadata, request, operation_id \
     FROM quota.ledger WHERE user_id = $1 AND scope = $2 AND operation_id = $3";

/// The ledger row of an operation id in a user's scope. `fresh` reads with a new snapshot (a
/// read-write SPI call: in READ COMMITTED it sees what committed since the statement began),
/// for use after waiting on a lock.
pub(crate) fn find_operation(
    client: &mut SpiClient,
    user_id: &str,
    scope: Scope,
    operation_id: &str,
    fresh: bool,
) -> Option<LedgerRow> {
    let args = [user_id.into(), scope.as_str().into(), operation_id.into()];
    let table = if fresh {
        spi_cache::update(client, FIND_OPERATION_SQL, Some(1), &args).or_raise()
    } else {
        spi_cache::select(client, FIND_OPERATION_SQL, Some(1), &args).or_raise()
    };
    table
        .into_iter()
        .next()
        .map(|r| read_ledger_row(&r).or_raise())
}

/// Replay or conflict for an operation_id that is already in the ledger.
pub(crate) fn replay(
    existing: LedgerRow,
    kind: &str,
    request: &Value,
) -> Result<LedgerRow, QuotaError> {
    if existing.transaction_type == kind && existing.request == *request {
        return Ok(existing);
    }
    Err(QuotaError::new(
        ErrorKind::IdempotencyConflict,
        format!(
            "operation_id '{}' was already used for a {} with other parameters",
            existing.operation_id, existing.transaction_type
        ),
    )
    .with("operation_id", existing.operation_id.as_str())
    .with("transaction_type", existing.transaction_type.as_str()))
}

/// After a write found the operation_id taken by a concurrent call: conflict or in progress.
fn lost_race(client: &mut SpiClient, c: &Credit) -> QuotaError {
    match find_operation(client, c.user_id, c.scope, c.operation_id, true) {
        Some(existing) => match replay(existing, c.kind, &c.request) {
            Ok(_) => QuotaError::new(
                ErrorKind::InProgress,
                format!(
                    "operation_id '{}' was applied by a concurrent call; retry to get its result",
                    c.operation_id
                ),
            )
            .with("operation_id", c.operation_id),
            Err(conflict) => conflict,
        },
        None => QuotaError::new(
            ErrorKind::InProgress,
            format!(
                "operation_id '{}' is being applied by a concurrent call; retry",
                c.operation_id
            ),
        )
        .with("operation_id", c.operation_id),
    }
}

fn unknown_user(user_id: &str) -> QuotaError {
    QuotaError::not_found(format!("user '{user_id}' not found")).with("user_id", user_id)
}

fn validate_common(
    user_id: &str,
    operation_id: &str,
    description: Option<&str>,
) -> Result<(), QuotaError> {
    validate_user_id(user_id)?;
    validate_operation_id(operation_id)?;
    if let Some(d) = description {
        validate_free_text("description", d)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// charge: the hot path. One prepared statement on the common path.

/// The charge, in one statement: a conditional wallet UPDATE priced from the row itself
/// (`wallets.multiplier` caches the plan's; `quota.price_credits` is the formula; `$7` is
/// settings.base_rate, cached per backend by `settings::base_rate`) and the ledger INSERT, whose
/// unique (user_id, scope, operation_id) key is the idempotency check (ON CONFLICT DO NOTHING: a
/// concurrent call with the same id waits on the wallet row, then finds it taken).
///
/// The statement says what it did, in one row: `moved` is the credits the UPDATE took (no row:
/// the wallet did not move: unknown user, short balance, or a replay of a charge the balance no
/// longer covers) and `transaction_id` the ledger row it wrote (NULL: the wallet moved but the id
/// was taken). Then the slow path puts the move back (CHARGE_UNDO_SQL, same transaction) and
/// replays or reports. Nothing is inferred from system columns, so a caller's own writes to the
/// wallet in the same statement cannot fool it.
///
/// The request record (the idempotency key's parameters) is built here, not in Rust: `$6` is the
/// cost in its shortest round-trip decimal form, so the stored number is exactly `$2` whatever the
/// session's extra_float_digits.
const CHARGE_SQL: &str = "
WITH w AS (
    UPDATE quota.wallets
       SET balance = balance - quota.price_credits($2, multiplier, $7),
           total_spent = total_spent + quota.price_credits($2, multiplier, $7),
           updated_at = now()
     WHERE user_id = $1 AND balance - held_credits >= quota.price_credits($2, multiplier, $7)
    RETURNING balance, quota.price_credits($2, multiplier, $7) AS credits),
l AS (
    INSERT INTO quota.ledger (user_id, scope, operation_id, transaction_type, credits, balance_before,
                              balance_after, cost_usd, description, metadata, request)
    SELECT $1, 'service', $3, 'charge', -w.credits, w.balance + w.credits, w.balance, $2, $4, $5,
           jsonb_build_object('user_id', $1, 'cost_usd', $6::numeric)
    FROM w
    ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING
    RETURNING transaction_id, credits, balance_before, balance_after)
SELECT w.credits AS moved, l.transaction_id, l.credits, l.balance_before, l.balance_after
FROM w LEFT JOIN l ON true";

/// Puts back what CHARGE_SQL took when its operation_id turned out to be taken.
const CHARGE_UNDO_SQL: &str = "
UPDATE quota.wallets SET balance = balance + $2, total_spent = total_spent - $2 WHERE user_id = $1";

/// The slow path after a charge wrote no ledger row: why (replay, unknown user, short balance)?
const CHARGE_READ_SQL: &str = "
SELECT w.balance - w.held_credits AS balance, w.multiplier,
       l.transaction_id, l.user_id, l.transaction_type, l.credits, l.balance_before,
       l.balance_after, l.cost_usd, l.amount_usd, l.metadata, l.request, l.operation_id
FROM (VALUES (1)) AS one (x)
LEFT JOIN quota.wallets w ON w.user_id = $1
LEFT JOIN quota.ledger l ON l.user_id = $1 AND l.scope = 'service' AND l.operation_id = $2";

thread_local! {
    // Plans kept for the life of the backend (SPI_keepplan, leaked once); the plan cache
    // revalidates them after DDL, so they stay correct across ALTER EXTENSION.
    static CHARGE: OnceCell<&'static OwnedPreparedStatement> = const { OnceCell::new() };
}

fn oid(o: pg_sys::Oid) -> PgOid {
    PgOid::from(o)
}

fn statement(
    cell: &'static std::thread::LocalKey<OnceCell<&'static OwnedPreparedStatement>>,
    client: &SpiClient,
    sql: &str,
    types: &[PgOid],
) -> &'static OwnedPreparedStatement {
    cell.with(|c| {
        *c.get_or_init(|| Box::leak(Box::new(client.prepare_mut(sql, types).or_raise().keep())))
    })
}

/// What a charge returns: the row it wrote, or the one an identical earlier call wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charged {
    pub transaction_id: i64,
    pub cost_usd: f64,
    /// Credits taken (positive).
    pub credits_charged: i64,
    pub balance_before: i64,
    pub balance_after: i64,
}

/// The charge. `metadata` is a jsonb datum passed through untouched (or NULL).
pub fn charge_impl(
    user_id: &str,
    cost_usd: f64,
    operation_id: &str,
    description: Option<&str>,
    metadata: Option<pg_sys::Datum>,
) -> Charged {
    validate_common(user_id, operation_id, description).or_raise();
    pricing::validate_usd("cost_usd", cost_usd).or_raise();
    if let Some(d) = metadata {
        // SAFETY: the datum is the caller's non-null jsonb argument (a varlena), valid for this
        // call; toast_raw_datum_size reads its header (its size once detoasted).
        let bytes = unsafe { pg_sys::toast_raw_datum_size(d) };
        validate_metadata_size(bytes).or_raise();
    }
    // Shortest decimal that reads back as exactly this f64 (the form serde_json writes).
    let cost_text = serde_json::Number::from_f64(cost_usd)
        .expect("validated finite")
        .to_string();
    let base_rate = settings::base_rate();

    Spi::connect_mut(|client| {
        let types = [
            oid(pg_sys::TEXTOID),
            oid(pg_sys::FLOAT8OID),
            oid(pg_sys::TEXTOID),
            oid(pg_sys::TEXTOID),
            oid(pg_sys::JSONBOID),
            oid(pg_sys::TEXTOID),
            oid(pg_sys::INT8OID),
        ];
        let stmt = statement(&CHARGE, client, CHARGE_SQL, &types);
        let metadata_arg = match metadata {
            // SAFETY: the datum is the caller's jsonb argument, valid for this call.
            Some(d) => unsafe { pgrx::datum::DatumWithOid::new(d, pg_sys::JSONBOID) },
            None => pgrx::datum::DatumWithOid::null_oid(pg_sys::JSONBOID),
        };
        let args = [
            user_id.into(),
            cost_usd.into(),
            operation_id.into(),
            description.into(),
            metadata_arg,
            cost_text.as_str().into(),
            base_rate.into(),
        ];
        let t = client.update(stmt, Some(1), &args).or_raise();
        if let Some(row) = t.into_iter().next() {
            let moved = row.get::<i64>(1).or_raise().unwrap_or_default();
            if let Some(transaction_id) = row.get::<i64>(2).or_raise() {
                return Charged {
                    transaction_id,
                    cost_usd,
                    credits_charged: -row.get::<i64>(3).or_raise().unwrap_or_default(),
                    balance_before: row.get::<i64>(4).or_raise().unwrap_or_default(),
                    balance_after: row.get::<i64>(5).or_raise().unwrap_or_default(),
                };
            }
            // The wallet moved but the operation_id was taken: put the move back first.
            client
                .update(CHARGE_UNDO_SQL, None, &[user_id.into(), moved.into()])
                .or_raise();
        }

        // No ledger row was written: a replay, an unknown user, or not enough credits. A fresh
        // snapshot (read-write SPI), so a concurrent call that committed the id is seen.
        let t = client
            .update(
                CHARGE_READ_SQL,
                Some(1),
                &[user_id.into(), operation_id.into()],
            )
            .or_raise();
        let row = t.into_iter().next().expect("the VALUES row always exists");
        if row
            .get_by_name::<i64, _>("transaction_id")
            .or_raise()
            .is_some()
        {
            let request = json!({ "user_id": user_id, "cost_usd": cost_usd });
            let r = replay(read_ledger_row(&row).or_raise(), "charge", &request).or_raise();
            return Charged {
                transaction_id: r.transaction_id,
                cost_usd: r.cost_usd.unwrap_or(cost_usd),
                credits_charged: -r.credits,
                balance_before: r.balance_before,
                balance_after: r.balance_after,
            };
        }
        let Some(balance) = row.get_by_name::<i64, _>("balance").or_raise() else {
            raise(unknown_user(user_id));
        };
        let multiplier = row
            .get_by_name::<f64, _>("multiplier")
            .or_raise()
            .unwrap_or(1.0);
        let credits = pricing::charge_credits(cost_usd, multiplier, base_rate).or_raise();
        raise(QuotaError::insufficient_credits(user_id, credits, balance))
    })
}

/// The pricing formula of seed 004, `round_half_even(usd * rate * base_rate)` in IEEE double,
/// as SQL: the charge statement uses it, and callers may too.
#[pg_extern(immutable, strict, parallel_safe)]
fn price_credits(usd: f64, rate: f64, base_rate: i64) -> i64 {
    pricing::validate_base_rate(base_rate).or_raise();
    if !(rate.is_finite() && rate > 0.0) {
        raise(
            QuotaError::invalid(format!("rate must be a positive finite number, got {rate}"))
                .with("field", "rate"),
        );
    }
    pricing::charge_credits(usd, rate, base_rate)
        .map_err(|e| QuotaError {
            message: e.message.replace("cost_usd", "usd"),
            ..e
        })
        .or_raise()
}

// ---------------------------------------------------------------------------------------------
// Credits in (add, bonus, refund, purchase, subscription): not hot, so they lock the wallet row
// first. A concurrent call with the same operation_id then waits on that lock and replays.

/// What a credit operation needs once the wallet is locked.
pub struct Credit<'a> {
    pub user_id: &'a str,
    pub scope: Scope,
    pub operation_id: &'a str,
    pub kind: &'static str,
    pub request: Value,
    pub description: Option<&'a str>,
    pub metadata: Option<Value>,
    pub amount_usd: Option<f64>,
    pub refund_of: Option<&'a str>,
}

/// Decides the credits once the wallet row is locked: `(credits, earned_delta, spent_delta)`.
type Decide<'a> =
    dyn FnMut(&mut SpiClient) -> Result<(i64, i64, i64, Option<Value>), QuotaError> + 'a;

pub fn apply_credit(c: Credit, decide: &mut Decide) -> LedgerRow {
    Spi::connect_mut(|client| {
        if let Some(existing) = find_operation(client, c.user_id, c.scope, c.operation_id, false) {
            return replay(existing, c.kind, &c.request).or_raise();
        }
        let locked = client
            .update(
                "SELECT balance, total_earned FROM quota.wallets WHERE user_id = $1 FOR UPDATE",
                Some(1),
                &[c.user_id.into()],
            )
            .or_raise();
        let Some(wallet) = locked.into_iter().next() else {
            raise(unknown_user(c.user_id));
        };
        let balance = wallet.get::<i64>(1).or_raise().unwrap_or_default();
        let total_earned = wallet.get::<i64>(2).or_raise().unwrap_or_default();
        // A concurrent call with this operation_id for this user committed while we waited.
        if let Some(existing) = find_operation(client, c.user_id, c.scope, c.operation_id, true) {
            return replay(existing, c.kind, &c.request).or_raise();
        }
        let (credits, earned, spent, extra_metadata) = decide(client).or_raise();
        pricing::check_room(c.user_id, balance, total_earned, credits, earned).or_raise();
        let metadata = match (c.metadata.clone(), extra_metadata) {
            (None, m) | (m, None) => m,
            (Some(Value::Object(mut a)), Some(Value::Object(b))) => {
                a.extend(b);
                Some(Value::Object(a))
            }
            (Some(a), Some(_)) => Some(a),
        };
        let sql = format!(
            "WITH w AS (
                UPDATE quota.wallets
                   SET balance = balance + $2, total_earned = total_earned + $3,
                       total_spent = total_spent + $4, updated_at = now()
                 WHERE user_id = $1
                RETURNING balance)
             INSERT INTO quota.ledger (user_id, scope, operation_id, transaction_type, credits,
                    balance_before, balance_after, amount_usd, refund_of, description, metadata, request)
             SELECT $1, $12, $5, $6, $2, w.balance - $2, w.balance, $7, $8, $9, $10, $11 FROM w
             ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING
             RETURNING {LEDGER_COLUMNS}"
        );
        let t = client
            .update(
                sql.as_str(),
                Some(1),
                &[
                    c.user_id.into(),
                    credits.into(),
                    earned.into(),
                    spent.into(),
                    c.operation_id.into(),
                    c.kind.into(),
                    c.amount_usd.into(),
                    c.refund_of.into(),
                    c.description.into(),
                    metadata.map(JsonB).into(),
                    JsonB(c.request.clone()).into(),
                    c.scope.as_str().into(),
                ],
            )
            .or_raise();
        match t.into_iter().next() {
            Some(row) => read_ledger_row(&row).or_raise(),
            // Unreachable while the wallet lock is held; kept as a clear answer rather than a panic.
            None => raise(lost_race(client, &c)),
        }
    })
}

/// Plan rates for a user: (multiplier, purchase_rate, tier).
fn plan_rates(client: &SpiClient, user_id: &str) -> (f64, f64, Option<String>) {
    let t = client
        .select(
            "SELECT coalesce(p.multiplier, 1.0::float8) AS multiplier,
                    coalesce(p.purchase_rate, 1.0::float8) AS purchase_rate, s.tier
             FROM (VALUES (1)) AS one (x)
             LEFT JOIN quota.subscriptions s ON s.user_id = $1
             LEFT JOIN quota.plans p ON p.tier = s.tier",
            Some(1),
            &[user_id.into()],
        )
        .or_raise();
    let row = t.into_iter().next().expect("the VALUES row always exists");
    (
        row.get_by_name::<f64, _>("multiplier")
            .or_raise()
            .unwrap_or(1.0),
        row.get_by_name::<f64, _>("purchase_rate")
            .or_raise()
            .unwrap_or(1.0),
        row.get_by_name::<String, _>("tier").or_raise(),
    )
}

/// An add: credits bought at the plan's purchase rate. `source` (seed 004's field: where the
/// money came from) is recorded in the entry's metadata; it is not part of the idempotency key.
pub fn add_impl(
    user_id: &str,
    amount_usd: f64,
    operation_id: &str,
    description: Option<&str>,
    metadata: Option<Value>,
    source: Option<&str>,
) -> LedgerRow {
    validate_common(user_id, operation_id, description).or_raise();
    pricing::validate_usd("amount_usd", amount_usd).or_raise();
    validate_metadata(metadata.as_ref()).or_raise();
    if let Some(s) = source {
        validate_free_text("source", s).or_raise();
    }
    let request = json!({ "user_id": user_id, "amount_usd": amount_usd });
    let extra = source.map(|s| json!({ "source": s }));
    let mut decide = |client: &mut SpiClient| {
        let (_, purchase_rate, _) = plan_rates(client, user_id);
        let credits = pricing::purchase_credits(amount_usd, purchase_rate, settings::base_rate())?;
        Ok((credits, credits, 0, extra.clone()))
    };
    apply_credit(
        Credit {
            user_id,
            scope: Scope::Service,
            operation_id,
            kind: "add",
            request,
            description,
            metadata,
            amount_usd: Some(amount_usd),
            refund_of: None,
        },
        &mut decide,
    )
}

fn payment_required(user_id: &str, message: String) -> QuotaError {
    QuotaError::new(ErrorKind::PaymentRequired, message).with("user_id", user_id)
}

/// A purchase (the public API's "buy credits"): an add in the user's own idempotency scope, only
/// against a payment the payment side confirmed (`confirm_payment`) for this user and amount and
/// that no purchase used yet. `payment_id` names it; without one, the oldest such payment of
/// this amount (and payment method, when the payment recorded one) is used. No payment: 23514
/// `payment_required` (HTTP 402), nothing written.
pub fn purchase_impl(
    user_id: &str,
    amount_usd: f64,
    payment_method_id: &str,
    operation_id: &str,
    payment_id: Option<&str>,
) -> LedgerRow {
    validate_common(user_id, operation_id, None).or_raise();
    pricing::validate_usd("amount_usd", amount_usd).or_raise();
    validate_id("payment_method_id", payment_method_id, PAYMENT_ID_LEN_MAX).or_raise();
    if let Some(p) = payment_id {
        validate_payment_id(p).or_raise();
    }
    let request = json!({
        "user_id": user_id, "amount_usd": amount_usd,
        "payment_method_id": payment_method_id, "payment_id": payment_id,
    });
    let mut decide = |client: &mut SpiClient| {
        let found = match payment_id {
            Some(p) => client.update(
                "SELECT payment_id, amount_usd, payment_method_id, status, operation_id
                 FROM quota.payments WHERE user_id = $1 AND payment_id = $2 FOR UPDATE",
                Some(1),
                &[user_id.into(), p.into()],
            ),
            None => client.update(
                "SELECT payment_id, amount_usd, payment_method_id, status, operation_id
                 FROM quota.payments
                 WHERE user_id = $1 AND status = 'confirmed' AND amount_usd = $2
                   AND (payment_method_id IS NULL OR payment_method_id = $3)
                 ORDER BY confirmed_at, payment_id LIMIT 1 FOR UPDATE",
                Some(1),
                &[user_id.into(), amount_usd.into(), payment_method_id.into()],
            ),
        }
        .or_raise();
        let Some(row) = found.into_iter().next() else {
            return Err(payment_required(
                user_id,
                match payment_id {
                    Some(p) => format!("no payment '{p}' was confirmed for user '{user_id}'"),
                    None => format!(
                        "no confirmed, unused payment of {amount_usd} USD for user '{user_id}'"
                    ),
                },
            )
            .with("amount_usd", amount_usd));
        };
        let pid = row
            .get_by_name::<String, _>("payment_id")
            .or_raise()
            .unwrap_or_default();
        let paid = row
            .get_by_name::<f64, _>("amount_usd")
            .or_raise()
            .unwrap_or_default();
        let method = row.get_by_name::<String, _>("payment_method_id").or_raise();
        if row.get_by_name::<String, _>("status").or_raise().as_deref() != Some("confirmed") {
            let by = row
                .get_by_name::<String, _>("operation_id")
                .or_raise()
                .unwrap_or_default();
            return Err(payment_required(
                user_id,
                format!("payment '{pid}' was already used by purchase '{by}'"),
            )
            .with("payment_id", pid.as_str()));
        }
        if paid != amount_usd {
            return Err(payment_required(
                user_id,
                format!("payment '{pid}' is of {paid} USD, not {amount_usd} USD"),
            )
            .with("payment_id", pid.as_str())
            .with("amount_usd", amount_usd)
            .with("payment_amount_usd", paid));
        }
        if method.as_deref().is_some_and(|m| m != payment_method_id) {
            return Err(payment_required(
                user_id,
                format!("payment '{pid}' was made with another payment method"),
            )
            .with("payment_id", pid.as_str()));
        }
        client
            .update(
                "UPDATE quota.payments SET status = 'used', used_at = now(), operation_id = $3
                 WHERE user_id = $1 AND payment_id = $2",
                None,
                &[user_id.into(), pid.as_str().into(), operation_id.into()],
            )
            .or_raise();
        let (_, purchase_rate, _) = plan_rates(client, user_id);
        let credits = pricing::purchase_credits(amount_usd, purchase_rate, settings::base_rate())?;
        let extra = json!({ "source": "purchase", "payment_method_id": payment_method_id, "payment_id": pid });
        Ok((credits, credits, 0, Some(extra)))
    };
    apply_credit(
        Credit {
            user_id,
            scope: Scope::User,
            operation_id,
            kind: "add",
            request,
            description: Some("credit purchase"),
            metadata: None,
            amount_usd: Some(amount_usd),
            refund_of: None,
        },
        &mut decide,
    )
}

pub fn bonus_impl(
    user_id: &str,
    credits: i64,
    operation_id: &str,
    description: Option<&str>,
    metadata: Option<Value>,
) -> LedgerRow {
    validate_common(user_id, operation_id, description).or_raise();
    validate_credits("credits", credits, false).or_raise();
    validate_metadata(metadata.as_ref()).or_raise();
    let request = json!({ "user_id": user_id, "credits": credits });
    let mut decide = |_: &mut SpiClient| Ok((credits, credits, 0, None));
    apply_credit(
        Credit {
            user_id,
            scope: Scope::Service,
            operation_id,
            kind: "bonus",
            request,
            description,
            metadata,
            amount_usd: None,
            refund_of: None,
        },
        &mut decide,
    )
}

pub fn refund_impl(
    user_id: &str,
    charge_operation_id: &str,
    operation_id: &str,
    credits: Option<i64>,
    description: Option<&str>,
) -> LedgerRow {
    validate_common(user_id, operation_id, description).or_raise();
    validate_id(
        "charge_operation_id",
        charge_operation_id,
        OPERATION_ID_LEN_MAX,
    )
    .or_raise();
    if let Some(c) = credits {
        validate_credits("credits", c, false).or_raise();
    }
    let request = json!({ "user_id": user_id, "charge_operation_id": charge_operation_id, "credits": credits });
    let mut decide = |client: &mut SpiClient| {
        // The wallet lock serializes refunds of one user, so this sum is current.
        let t = client
            .update(
                "SELECT -c.credits AS charged,
                        coalesce((SELECT sum(r.credits) FROM quota.ledger r
                                   WHERE r.user_id = c.user_id AND r.refund_of = c.operation_id
                                     AND r.transaction_type = 'refund'), 0)::bigint AS refunded
                 FROM quota.ledger c
                 WHERE c.user_id = $2 AND c.scope = 'service' AND c.operation_id = $1
                   AND c.transaction_type = 'charge'",
                Some(1),
                &[charge_operation_id.into(), user_id.into()],
            )
            .or_raise();
        let Some(row) = t.into_iter().next() else {
            return Err(QuotaError::not_found(format!(
                "no charge with operation_id '{charge_operation_id}' for user '{user_id}'"
            ))
            .with("charge_operation_id", charge_operation_id));
        };
        let charged = row.get_by_name::<i64, _>("charged").or_raise().unwrap_or(0);
        let refunded = row
            .get_by_name::<i64, _>("refunded")
            .or_raise()
            .unwrap_or(0);
        let refundable = charged - refunded;
        let want = credits.unwrap_or(refundable);
        if want <= 0 || want > refundable {
            let message = if refundable == 0 {
                format!(
                    "charge '{charge_operation_id}' of {charged} credits is already fully refunded"
                )
            } else {
                format!("charge '{charge_operation_id}' of {charged} credits has {refundable} left to refund, {want} requested")
            };
            return Err(QuotaError::new(ErrorKind::RefundExceedsCharge, message)
                .with("charge_operation_id", charge_operation_id)
                .with("charged_credits", charged)
                .with("refunded_credits", refunded)
                .with("requested_credits", want));
        }
        // A refund gives back spending: it lowers total_spent rather than raising total_earned.
        Ok((want, 0, -want, None))
    };
    apply_credit(
        Credit {
            user_id,
            scope: Scope::Service,
            operation_id,
            kind: "refund",
            request,
            description,
            metadata: None,
            amount_usd: None,
            refund_of: Some(charge_operation_id),
        },
        &mut decide,
    )
}

pub fn update_subscription_impl(
    user_id: &str,
    subscription_tier: &str,
    credits_to_add: i64,
    operation_id: &str,
) -> (LedgerRow, Option<String>) {
    validate_common(user_id, operation_id, None).or_raise();
    validate_tier(subscription_tier).or_raise();
    validate_credits("credits_to_add", credits_to_add, true).or_raise();
    let request = json!({ "user_id": user_id, "subscription_tier": subscription_tier, "credits_to_add": credits_to_add });
    let mut decide = |client: &mut SpiClient| {
        let plan = client
            .update(
                "SELECT active FROM quota.plans WHERE tier = $1",
                Some(1),
                &[subscription_tier.into()],
            )
            .or_raise();
        let Some(plan) = plan.into_iter().next() else {
            return Err(
                QuotaError::not_found(format!("plan '{subscription_tier}' not found"))
                    .with("tier", subscription_tier),
            );
        };
        if !plan
            .get_by_name::<bool, _>("active")
            .or_raise()
            .unwrap_or(false)
        {
            return Err(
                QuotaError::invalid(format!("plan '{subscription_tier}' is not active"))
                    .with("tier", subscription_tier),
            );
        }
        let current = client
            .update(
                "SELECT tier FROM quota.subscriptions WHERE user_id = $1",
                Some(1),
                &[user_id.into()],
            )
            .or_raise()
            .next()
            .and_then(|r| r.get_by_name::<String, _>("tier").or_raise());
        if current.as_deref() == Some(subscription_tier) {
            return Err(QuotaError::new(
                ErrorKind::Duplicate,
                format!("user '{user_id}' is already subscribed to '{subscription_tier}'"),
            )
            .with("user_id", user_id)
            .with("subscription_tier", subscription_tier));
        }
        client
            .update(
                "INSERT INTO quota.subscriptions (user_id, tier) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE
                    SET tier = excluded.tier, status = 'active', started_at = now(), updated_at = now()",
                None,
                &[user_id.into(), subscription_tier.into()],
            )
            .or_raise();
        let extra = json!({ "previous_tier": current, "subscription_tier": subscription_tier });
        Ok((credits_to_add, credits_to_add, 0, Some(extra)))
    };
    let row = apply_credit(
        Credit {
            user_id,
            scope: Scope::Service,
            operation_id,
            kind: "subscription",
            request,
            description: None,
            metadata: None,
            amount_usd: None,
            refund_of: None,
        },
        &mut decide,
    );
    let previous = row
        .metadata
        .as_ref()
        .and_then(|m| m.get("previous_tier"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    (row, previous)
}

// ---------------------------------------------------------------------------------------------
// Payments: confirmed by the payment side, used up by purchases.

/// Records a payment the payment side confirmed, once: the same payment id again with the same
/// amount and method is a replay (`created` false), with others a 23505 conflict.
pub fn confirm_payment_impl(
    payment_id: &str,
    user_id: &str,
    amount_usd: f64,
    payment_method_id: Option<&str>,
    metadata: Option<Value>,
) -> Value {
    validate_payment_id(payment_id).or_raise();
    validate_user_id(user_id).or_raise();
    pricing::validate_usd("amount_usd", amount_usd).or_raise();
    validate_metadata(metadata.as_ref()).or_raise();
    if let Some(m) = payment_method_id {
        validate_id("payment_method_id", m, PAYMENT_ID_LEN_MAX).or_raise();
    }
    Spi::connect_mut(|client| {
        let exists = !client
            .update(
                "SELECT 1 FROM quota.users WHERE id = $1 FOR KEY SHARE",
                Some(1),
                &[user_id.into()],
            )
            .or_raise()
            .is_empty();
        if !exists {
            raise(unknown_user(user_id));
        }
        let inserted = client
            .update(
                "INSERT INTO quota.payments (user_id, payment_id, amount_usd, payment_method_id, metadata)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, payment_id) DO NOTHING
                 RETURNING quota._payment_json(payments) AS j",
                Some(1),
                &[
                    user_id.into(),
                    payment_id.into(),
                    amount_usd.into(),
                    payment_method_id.into(),
                    metadata.map(JsonB).into(),
                ],
            )
            .or_raise()
            .next()
            .and_then(|r| r.get::<JsonB>(1).or_raise());
        if let Some(JsonB(mut j)) = inserted {
            j["created"] = json!(true);
            return j;
        }
        let t = client
            .update(
                "SELECT quota._payment_json(p) AS j, p.amount_usd, p.payment_method_id
                 FROM quota.payments p WHERE p.user_id = $1 AND p.payment_id = $2",
                Some(1),
                &[user_id.into(), payment_id.into()],
            )
            .or_raise();
        let row = t.into_iter().next().unwrap_or_else(|| {
            raise(QuotaError::new(
                ErrorKind::InProgress,
                format!("payment '{payment_id}' is being recorded by a concurrent call; retry"),
            ))
        });
        let paid = row
            .get_by_name::<f64, _>("amount_usd")
            .or_raise()
            .unwrap_or_default();
        let method = row.get_by_name::<String, _>("payment_method_id").or_raise();
        if paid != amount_usd || method.as_deref() != payment_method_id {
            raise(
                QuotaError::new(
                    ErrorKind::IdempotencyConflict,
                    format!("payment '{payment_id}' of user '{user_id}' was already confirmed with other parameters"),
                )
                .with("payment_id", payment_id)
                .with("amount_usd", paid),
            );
        }
        let mut j = row.get_by_name::<JsonB, _>("j").or_raise().expect("json").0;
        j["created"] = json!(false);
        j
    })
}

// ---------------------------------------------------------------------------------------------
// SQL functions. Money-moving ones return one row; `transaction_id` is the ledger row.

/// The row of every credit function (pgrx needs the tuple spelled out in each signature).
type CreditRow = (
    bool,
    i64,
    String,
    String,
    Option<f64>,
    i64,
    Option<f64>,
    i64,
    i64,
    String,
);

/// The purchase rate that priced an add (credits / (amount_usd * base_rate) is not exact after
/// rounding, so it is read from the plan the user had: the wallet lock held it still).
fn credit_row(r: LedgerRow, purchase_rate: Option<f64>) -> TableIterator<'static, CreditRow> {
    TableIterator::once((
        true,
        r.transaction_id,
        r.user_id,
        r.transaction_type,
        r.amount_usd,
        r.credits,
        purchase_rate,
        r.balance_before,
        r.balance_after,
        r.operation_id,
    ))
}

/// The purchase rate in force for a user now (after the operation, in its transaction).
fn current_purchase_rate(user_id: &str) -> Option<f64> {
    Spi::connect(|client| Some(plan_rates(client, user_id).1))
}

// quota.charge is the hot path, so it is a C-language function written against the fmgr ABI
// directly: it returns one composite row (quota.charge_result) instead of a set, so the caller's
// plan needs no function scan or tuplestore, its metadata argument goes to the INSERT as the same
// jsonb datum, and a NULL in a required argument is a 22023 naming it. Everything else is
// charge_impl, as for any other function.
extension_sql!(
    r#"
CREATE TYPE quota.charge_result AS (
    success boolean,
    transaction_id bigint,
    user_id text,
    cost_usd double precision,
    credits_charged bigint,
    balance_before bigint,
    balance_after bigint,
    operation_id text
);
CREATE FUNCTION quota.charge(
    user_id text,
    cost_usd double precision,
    operation_id text,
    description text DEFAULT NULL,
    metadata jsonb DEFAULT NULL
) RETURNS quota.charge_result
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'quota_charge';
"#,
    name = "charge",
    requires = ["schema"]
);

fmgr_v1!(pg_finfo_quota_charge);

/// A required argument: NULL is 22023 naming it.
unsafe fn required_arg<T: FromDatum>(fcinfo: pg_sys::FunctionCallInfo, n: usize, name: &str) -> T {
    // SAFETY: n is within the function's declared arguments.
    match unsafe { pgrx::fcinfo::pg_getarg::<T>(fcinfo, n) } {
        Some(v) => v,
        None => raise(QuotaError::invalid(format!("{name} must not be null")).with("field", name)),
    }
}

/// The blessed row type of quota.charge_result, looked up once per call site (fn_extra).
unsafe fn result_tupdesc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    // SAFETY: fcinfo and its flinfo are valid for the call; fn_extra belongs to this function.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if (*flinfo).fn_extra.is_null() {
            let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
            let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
            let class = pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc);
            if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || tupdesc.is_null() {
                pg_sys::MemoryContextSwitchTo(old);
                pgrx::error!("quota.charge must return quota.charge_result");
            }
            (*flinfo).fn_extra = pg_sys::BlessTupleDesc(tupdesc).cast();
            pg_sys::MemoryContextSwitchTo(old);
        }
        (*flinfo).fn_extra.cast()
    }
}

/// `quota.charge(user_id, cost_usd, operation_id, description, metadata) -> quota.charge_result`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn quota_charge(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: called by the fmgr with the five arguments quota.charge declares.
    unsafe {
        let user_id: &str = required_arg(fcinfo, 0, "user_id");
        let cost_usd: f64 = required_arg(fcinfo, 1, "cost_usd");
        let operation_id: &str = required_arg(fcinfo, 2, "operation_id");
        let description: Option<&str> = pgrx::fcinfo::pg_getarg(fcinfo, 3);
        let metadata = if pgrx::fcinfo::pg_arg_is_null(fcinfo, 4) {
            None
        } else {
            Some(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 4))
        };
        let c = charge_impl(user_id, cost_usd, operation_id, description, metadata);
        let tupdesc = result_tupdesc(fcinfo);
        let mut values = [
            true.into_datum().unwrap(),
            c.transaction_id.into_datum().unwrap(),
            user_id.into_datum().unwrap(),
            c.cost_usd.into_datum().unwrap(),
            c.credits_charged.into_datum().unwrap(),
            c.balance_before.into_datum().unwrap(),
            c.balance_after.into_datum().unwrap(),
            operation_id.into_datum().unwrap(),
        ];
        let mut nulls = [false; 8];
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn add(
    user_id: Option<&str>,
    amount_usd: Option<f64>,
    operation_id: Option<&str>,
    description: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    source: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(success, bool),
        name!(transaction_id, i64),
        name!(user_id, String),
        name!(transaction_type, String),
        name!(amount_usd, Option<f64>),
        name!(credits_added, i64),
        name!(purchase_rate, Option<f64>),
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let amount_usd = required(amount_usd, "amount_usd");
    let operation_id = required(operation_id, "operation_id");
    let r = add_impl(
        user_id,
        amount_usd,
        operation_id,
        description,
        metadata.map(|j| j.0),
        source,
    );
    credit_row(r, current_purchase_rate(user_id))
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn purchase(
    user_id: Option<&str>,
    amount_usd: Option<f64>,
    payment_method_id: Option<&str>,
    operation_id: Option<&str>,
    payment_id: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(success, bool),
        name!(transaction_id, i64),
        name!(user_id, String),
        name!(transaction_type, String),
        name!(amount_usd, Option<f64>),
        name!(credits_added, i64),
        name!(purchase_rate, Option<f64>),
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let amount_usd = required(amount_usd, "amount_usd");
    let payment_method_id = required(payment_method_id, "payment_method_id");
    let operation_id = required(operation_id, "operation_id");
    let r = purchase_impl(
        user_id,
        amount_usd,
        payment_method_id,
        operation_id,
        payment_id,
    );
    credit_row(r, current_purchase_rate(user_id))
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn confirm_payment(
    payment_id: Option<&str>,
    user_id: Option<&str>,
    amount_usd: Option<f64>,
    payment_method_id: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> JsonB {
    let payment_id = required(payment_id, "payment_id");
    let user_id = required(user_id, "user_id");
    let amount_usd = required(amount_usd, "amount_usd");
    JsonB(confirm_payment_impl(
        payment_id,
        user_id,
        amount_usd,
        payment_method_id,
        metadata.map(|j| j.0),
    ))
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn bonus(
    user_id: Option<&str>,
    credits: Option<i64>,
    operation_id: Option<&str>,
    description: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(success, bool),
        name!(transaction_id, i64),
        name!(user_id, String),
        name!(transaction_type, String),
        name!(amount_usd, Option<f64>),
        name!(credits_added, i64),
        name!(purchase_rate, Option<f64>),
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let credits = required(credits, "credits");
    let operation_id = required(operation_id, "operation_id");
    credit_row(
        bonus_impl(
            user_id,
            credits,
            operation_id,
            description,
            metadata.map(|j| j.0),
        ),
        None,
    )
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn refund(
    user_id: Option<&str>,
    charge_operation_id: Option<&str>,
    operation_id: Option<&str>,
    credits: default!(Option<i64>, "NULL"),
    description: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(success, bool),
        name!(transaction_id, i64),
        name!(user_id, String),
        name!(transaction_type, String),
        name!(amount_usd, Option<f64>),
        name!(credits_added, i64),
        name!(purchase_rate, Option<f64>),
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let charge_operation_id = required(charge_operation_id, "charge_operation_id");
    let operation_id = required(operation_id, "operation_id");
    credit_row(
        refund_impl(
            user_id,
            charge_operation_id,
            operation_id,
            credits,
            description,
        ),
        None,
    )
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_subscription(
    user_id: &str,
    subscription_tier: &str,
    credits_to_add: i64,
    operation_id: &str,
) -> TableIterator<
    'static,
    (
        name!(success, bool),
        name!(transaction_id, i64),
        name!(user_id, String),
        name!(previous_tier, Option<String>),
        name!(subscription_tier, String),
        name!(credits_added, i64),
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(multiplier, f64),
        name!(purchase_rate, f64),
        name!(operation_id, String),
    ),
> {
    let (r, previous) =
        update_subscription_impl(user_id, subscription_tier, credits_to_add, operation_id);
    let tier = r.request["subscription_tier"]
        .as_str()
        .unwrap_or(subscription_tier)
        .to_string();
    let (multiplier, purchase_rate) = Spi::connect(|client| {
        let t = client
            .select(
                "SELECT multiplier, purchase_rate FROM quota.plans WHERE tier = $1",
                Some(1),
                &[tier.as_str().into()],
            )
            .or_raise();
        t.into_iter()
            .next()
            .map(|row| {
                (
                    row.get::<f64>(1).or_raise().unwrap_or(1.0),
                    row.get::<f64>(2).or_raise().unwrap_or(1.0),
                )
            })
            .unwrap_or((1.0, 1.0))
    });
    TableIterator::once((
        true,
        r.transaction_id,
        r.user_id,
        previous,
        tier,
        r.credits,
        r.balance_before,
        r.balance_after,
        multiplier,
        purchase_rate,
        r.operation_id,
    ))
}

/// Whether a user's balance covers `required_credits` (always true when it is NULL), with the
/// subscription that prices their charges. Reads only.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn check_credits(
    user_id: Option<&str>,
    required_credits: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(user_id, String),
        name!(has_subscription, bool),
        name!(subscription_tier, Option<String>),
        name!(balance, i64),
        name!(multiplier, f64),
        name!(required_credits, Option<i64>),
        name!(sufficient, bool),
        name!(deficit, i64),
    ),
> {
    let user_id = required(user_id, "user_id");
    validate_user_id(user_id).or_raise();
    if let Some(r) = required_credits {
        validate_credits("required_credits", r, true).or_raise();
    }
    let row = Spi::connect(|client| {
        let t = client
            .select(
                "SELECT w.balance, w.multiplier, s.tier FROM quota.wallets w
                 LEFT JOIN quota.subscriptions s ON s.user_id = w.user_id WHERE w.user_id = $1",
                Some(1),
                &[user_id.into()],
            )
            .or_raise();
        t.into_iter().next().map(|r| {
            (
                r.get::<i64>(1).or_raise().unwrap_or(0),
                r.get::<f64>(2).or_raise().unwrap_or(1.0),
                r.get::<String>(3).or_raise(),
            )
        })
    });
    let (balance, multiplier, tier) = row.unwrap_or_else(|| raise(unknown_user(user_id)));
    let need = required_credits.unwrap_or(0);
    TableIterator::once((
        user_id.to_string(),
        tier.is_some(),
        tier,
        balance,
        multiplier,
        required_credits,
        balance >= need,
        (need - balance).max(0),
    ))
}

/// The credits a cost would be charged (the charge's own formula and base rate: with no row in
/// quota.settings it refuses, as the charge does), at a tier's multiplier, a user's plan, or
/// multiplier 1; with a user, whether their balance covers it. Reads only.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn calculate_credits(
    cost_usd: Option<f64>,
    user_id: default!(Option<&str>, "NULL"),
    tier: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(user_id, Option<String>),
        name!(cost_usd, f64),
        name!(tier, Option<String>),
        name!(multiplier, f64),
        name!(base_rate, i64),
        name!(credits_to_charge, i64),
        name!(current_balance, Option<i64>),
        name!(balance_after, Option<i64>),
        name!(sufficient, Option<bool>),
    ),
> {
    let cost_usd = required(cost_usd, "cost_usd");
    pricing::validate_usd("cost_usd", cost_usd).or_raise();
    if let Some(t) = tier {
        validate_tier(t).or_raise();
    }
    if let Some(u) = user_id {
        validate_user_id(u).or_raise();
    }
    let base_rate = settings::base_rate();
    let (multiplier, tier, balance) = Spi::connect(|client| {
        let balance = match user_id {
            None => None,
            Some(u) => {
                let t = client
                    .select(
                        "SELECT balance, multiplier FROM quota.wallets WHERE user_id = $1",
                        Some(1),
                        &[u.into()],
                    )
                    .or_raise();
                let row = t
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| raise(unknown_user(u)));
                Some((
                    row.get::<i64>(1).or_raise().unwrap_or(0),
                    row.get::<f64>(2).or_raise().unwrap_or(1.0),
                ))
            }
        };
        if let Some(t) = tier {
            let r = client
                .select(
                    "SELECT multiplier FROM quota.plans WHERE tier = $1",
                    Some(1),
                    &[t.into()],
                )
                .or_raise();
            let row = r.into_iter().next().unwrap_or_else(|| {
                raise(QuotaError::not_found(format!("plan '{t}' not found")).with("tier", t))
            });
            (
                row.get::<f64>(1).or_raise().unwrap_or(1.0),
                Some(t.to_string()),
                balance.map(|b| b.0),
            )
        } else if let (Some(u), Some((b, m))) = (user_id, balance) {
            // The wallet's multiplier is the one a charge prices with (kept equal to the plan's).
            let t = client
                .select(
                    "SELECT tier FROM quota.subscriptions WHERE user_id = $1",
                    Some(1),
                    &[u.into()],
                )
                .or_raise()
                .next()
                .and_then(|r| r.get::<String>(1).or_raise());
            (m, t, Some(b))
        } else {
            (1.0, None, None)
        }
    });
    let credits = pricing::charge_credits(cost_usd, multiplier, base_rate).or_raise();
    TableIterator::once((
        user_id.map(str::to_string),
        cost_usd,
        tier,
        multiplier,
        base_rate,
        credits,
        balance,
        balance.map(|b| b - credits),
        balance.map(|b| b >= credits),
    ))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn balance(
    user_id: &str,
) -> TableIterator<
    'static,
    (
        name!(user_id, String),
        name!(balance, i64),
        name!(total_earned, i64),
        name!(total_spent, i64),
        name!(subscription_tier, Option<String>),
        name!(monthly_cost, Option<f64>),
        name!(multiplier, f64),
        name!(purchase_rate, f64),
    ),
> {
    validate_user_id(user_id).or_raise();
    let row = Spi::connect(|client| {
        let t = client
            .select(
                "SELECT w.balance, w.total_earned, w.total_spent, s.tier, p.monthly_cost::float8,
                        coalesce(p.multiplier, 1.0::float8), coalesce(p.purchase_rate, 1.0::float8)
                 FROM quota.wallets w
                 LEFT JOIN quota.subscriptions s ON s.user_id = w.user_id
                 LEFT JOIN quota.plans p ON p.tier = s.tier
                 WHERE w.user_id = $1",
                Some(1),
                &[user_id.into()],
            )
            .or_raise();
        t.into_iter().next().map(|r| {
            (
                r.get::<i64>(1).or_raise().unwrap_or(0),
                r.get::<i64>(2).or_raise().unwrap_or(0),
                r.get::<i64>(3).or_raise().unwrap_or(0),
                r.get::<String>(4).or_raise(),
                r.get::<f64>(5).or_raise(),
                r.get::<f64>(6).or_raise().unwrap_or(1.0),
                r.get::<f64>(7).or_raise().unwrap_or(1.0),
            )
        })
    });
    let (balance, earned, spent, tier, monthly_cost, multiplier, purchase_rate) =
        row.unwrap_or_else(|| raise(unknown_user(user_id)));
    TableIterator::once((
        user_id.to_string(),
        balance,
        earned,
        spent,
        tier,
        monthly_cost,
        multiplier,
        purchase_rate,
    ))
}

const TRANSACTION_TYPES: &[&str] = &[
    "charge",
    "add",
    "subscription",
    "bonus",
    "refund",
    "reserve",
    "settle",
    "release",
    "recharge",
    "adjust",
];

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn transactions(
    user_id: Option<&str>,
    limit: default!(Option<i32>, 20),
    offset: default!(Option<i32>, 0),
    transaction_type: default!(Option<&str>, "NULL"),
) -> JsonB {
    let user_id = required(user_id, "user_id");
    let limit = required(limit, "limit");
    let offset = required(offset, "offset");
    validate_user_id(user_id).or_raise();
    if !(1..=100).contains(&limit) {
        raise(
            QuotaError::invalid(format!("limit must be between 1 and 100, got {limit}"))
                .with("field", "limit"),
        );
    }
    if !(0..=10_000_000).contains(&offset) {
        raise(
            QuotaError::invalid(format!(
                "offset must be between 0 and 10000000, got {offset}"
            ))
            .with("field", "offset"),
        );
    }
    if let Some(t) = transaction_type {
        if !TRANSACTION_TYPES.contains(&t) {
            raise(
                QuotaError::invalid(format!(
                    "type must be one of {}, got '{t}'",
                    TRANSACTION_TYPES.join(", ")
                ))
                .with("field", "type"),
            );
        }
    }
    let result = read::one::<JsonB>(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM quota.users WHERE id = $1) THEN NULL ELSE
           jsonb_build_object(
             'transactions', coalesce((
                SELECT jsonb_agg(quota._transaction_json(l) ORDER BY l.transaction_id DESC)
                FROM (SELECT * FROM quota.ledger
                      WHERE user_id = $1 AND ($4::text IS NULL OR transaction_type = $4)
                      ORDER BY transaction_id DESC LIMIT $2 OFFSET $3) l), '[]'::jsonb),
             'total', (SELECT count(*) FROM quota.ledger
                       WHERE user_id = $1 AND ($4::text IS NULL OR transaction_type = $4)),
             'limit', $2, 'offset', $3)
         END",
        &[
            user_id.into(),
            limit.into(),
            offset.into(),
            transaction_type.into(),
        ],
    );
    result.unwrap_or_else(|| raise(unknown_user(user_id)))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn subscription(user_id: &str) -> JsonB {
    validate_user_id(user_id).or_raise();
    // Seed 004's shape: the plan as users see it (null without one), with the subscription's
    // status and start, and the wallet.
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
                  'user_id', w.user_id,
                  'subscription', CASE WHEN p.tier IS NULL THEN NULL ELSE
                      quota._public_plan_json(p) || jsonb_build_object('status', s.status, 'started_at', s.started_at) END,
                  'credits', jsonb_build_object(
                      'balance', w.balance, 'total_earned', w.total_earned, 'total_spent', w.total_spent))
         FROM quota.wallets w
         LEFT JOIN quota.subscriptions s ON s.user_id = w.user_id
         LEFT JOIN quota.plans p ON p.tier = s.tier
         WHERE w.user_id = $1",
        &[user_id.into()],
    )
    .unwrap_or_else(|| raise(unknown_user(user_id)))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn verify() -> TableIterator<'static, (name!(subject, String), name!(problem, String))> {
    let rows = Spi::connect(|client| {
        client
            .select(
                "SELECT subject, problem FROM quota.ledger_problems
                 UNION ALL SELECT subject, problem FROM quota.reservation_problems
                 UNION ALL SELECT subject, problem FROM quota.token_problems
                 UNION ALL SELECT subject, problem FROM quota.pool_problems
                 ORDER BY subject",
                None,
                &[],
            )
            .or_raise()
            .map(|r| {
                (
                    r.get_by_name::<String, _>("subject")
                        .or_raise()
                        .unwrap_or_default(),
                    r.get_by_name::<String, _>("problem")
                        .or_raise()
                        .unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}
