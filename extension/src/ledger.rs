//! The credit ledger (SPEC 2): charge, add, bonus, refund, purchase, subscription update, and
//! the read side (check, calculate, balance, transactions, verify).
//!
//! Idempotency (SPEC 1.1): the ledger row is the idempotency record. Its `operation_id` is
//! unique and its `request` column holds the canonical parameters of the first call, so
//! - same id, same kind and parameters: the stored row is returned (a replay leaves balances and
//!   the ledger as they were);
//! - same id, other kind or parameters: 23505 `idempotency_conflict`;
//! - same id racing on two connections: one applies; the other waits for it and then replays
//!   (a charge waits on the unique index, credit operations on the wallet lock) or, when it
//!   cannot tell yet, gets 40001 `in_progress` with its own writes rolled back; retrying replays.
//! A rejected call (validation, insufficient credits) raises before or instead of writing.

use crate::error::{raise, required, OrRaise};
use crate::settings;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData};
use pgrx::{JsonB, PgOid};
use quota_core::ids::{validate_free_text, validate_operation_id, validate_tier, validate_user_id};
use quota_core::pricing::{self, validate_credits};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Value};
use std::cell::OnceCell;

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
        transaction_id: row.get_by_name::<i64, _>("transaction_id")?.unwrap_or_default(),
        user_id: row.get_by_name::<String, _>("user_id")?.unwrap_or_default(),
        transaction_type: row.get_by_name::<String, _>("transaction_type")?.unwrap_or_default(),
        credits: row.get_by_name::<i64, _>("credits")?.unwrap_or_default(),
        balance_before: row.get_by_name::<i64, _>("balance_before")?.unwrap_or_default(),
        balance_after: row.get_by_name::<i64, _>("balance_after")?.unwrap_or_default(),
        cost_usd: row.get_by_name::<f64, _>("cost_usd")?,
        amount_usd: row.get_by_name::<f64, _>("amount_usd")?,
        metadata: row.get_by_name::<JsonB, _>("metadata")?.map(|j| j.0),
        request: row.get_by_name::<JsonB, _>("request")?.map(|j| j.0).unwrap_or(Value::Null),
        operation_id: row.get_by_name::<String, _>("operation_id")?.unwrap_or_default(),
    })
}

fn find_operation(client: &mut SpiClient, operation_id: &str) -> Option<LedgerRow> {
    let sql = format!("SELECT {LEDGER_COLUMNS} FROM quota.ledger WHERE operation_id = $1");
    let table = client.update(sql.as_str(), Some(1), &[operation_id.into()]).or_raise();
    table.into_iter().next().map(|r| read_ledger_row(&r).or_raise())
}

/// Replay or conflict for an operation_id that is already in the ledger.
fn replay(existing: LedgerRow, kind: &str, request: &Value) -> Result<LedgerRow, QuotaError> {
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
fn lost_race(client: &mut SpiClient, operation_id: &str, kind: &str, request: &Value) -> QuotaError {
    match find_operation(client, operation_id) {
        Some(existing) => match replay(existing, kind, request) {
            Ok(_) => QuotaError::new(
                ErrorKind::InProgress,
                format!("operation_id '{operation_id}' was applied by a concurrent call; retry to get its result"),
            )
            .with("operation_id", operation_id),
            Err(conflict) => conflict,
        },
        None => QuotaError::new(
            ErrorKind::InProgress,
            format!("operation_id '{operation_id}' is being applied by a concurrent call; retry"),
        )
        .with("operation_id", operation_id),
    }
}

fn unknown_user(user_id: &str) -> QuotaError {
    QuotaError::not_found(format!("user '{user_id}' not found")).with("user_id", user_id)
}

fn validate_common(user_id: &str, operation_id: &str, description: Option<&str>) -> Result<(), QuotaError> {
    validate_user_id(user_id)?;
    validate_operation_id(operation_id)?;
    if let Some(d) = description {
        validate_free_text("description", d)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// charge: the hot path. Two prepared statements: one read (wallet, price, prior operation) and
// one write (conditional wallet UPDATE + ledger INSERT in one statement).

/// The charge, in one statement on the common path: a conditional wallet UPDATE priced from the
/// row itself (`wallets.multiplier` caches the plan's; `quota.price_credits` is the formula; `$7`
/// is settings.base_rate, cached per backend by `settings::base_rate`) and the ledger INSERT,
/// whose unique operation_id is the idempotency check (ON CONFLICT DO NOTHING: a concurrent call
/// with the same id waits for the other transaction, then finds it taken). A row back is the
/// charge done. No row: either the wallet did not move (unknown user, short balance) or it moved
/// and the id was taken; the slow path (CHARGE_READ_SQL) tells which, puts a move back
/// (CHARGE_UNDO_SQL, same transaction), then replays or reports.
/// The request record (the idempotency key's parameters) is built here, not in Rust: `$6` is the
/// cost in its shortest round-trip decimal form, so the stored number is exactly `$2` whatever the
/// session's extra_float_digits.
const CHARGE_SQL: &str = "
WITH w AS (
    UPDATE quota.wallets
       SET balance = balance - quota.price_credits($2, multiplier, $7),
           total_spent = total_spent + quota.price_credits($2, multiplier, $7),
           updated_at = now()
     WHERE user_id = $1 AND balance >= quota.price_credits($2, multiplier, $7)
    RETURNING balance, quota.price_credits($2, multiplier, $7) AS credits)
INSERT INTO quota.ledger (operation_id, user_id, transaction_type, credits, balance_before,
                          balance_after, cost_usd, description, metadata, request)
SELECT $3, $1, 'charge', -w.credits, w.balance + w.credits, w.balance, $2, $4, $5,
       jsonb_build_object('user_id', $1, 'cost_usd', $6::numeric)
FROM w
ON CONFLICT (operation_id) DO NOTHING
RETURNING transaction_id, credits, balance_before, balance_after";

/// Puts back what CHARGE_SQL took when its operation_id turned out to be taken.
const CHARGE_UNDO_SQL: &str = "
UPDATE quota.wallets SET balance = balance + $2, total_spent = total_spent - $2 WHERE user_id = $1";

/// The slow path after a charge returned nothing: why (replay, unknown user, short balance)?
/// `w_xmin` and `w_cmin` say which transaction and command wrote the wallet's current version:
/// ours, during the charge statement, means the wallet moved and the id was taken.
const CHARGE_READ_SQL: &str = "
SELECT w.balance, w.multiplier, w.xmin::text AS w_xmin, w.cmin::text AS w_cmin,
       l.transaction_id, l.user_id, l.transaction_type, l.credits, l.balance_before,
       l.balance_after, l.cost_usd, l.amount_usd, l.metadata, l.request, l.operation_id
FROM (VALUES (1)) AS one (x)
LEFT JOIN quota.wallets w ON w.user_id = $1
LEFT JOIN quota.ledger l ON l.operation_id = $2";

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
    cell.with(|c| *c.get_or_init(|| Box::leak(Box::new(client.prepare_mut(sql, types).or_raise().keep()))))
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
    // Shortest decimal that reads back as exactly this f64 (the form serde_json writes).
    let cost_text = serde_json::Number::from_f64(cost_usd).expect("validated finite").to_string();

    Spi::connect_mut(|client| {
        let base_rate = settings::base_rate(client);
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
        // The commands the statement may write under (SPI advances the counter around it).
        // SAFETY: plain reads of the transaction state.
        let first_cid = unsafe { pg_sys::GetCurrentCommandId(false) };
        let t = client.update(stmt, Some(1), &args).or_raise();
        if let Some(row) = t.into_iter().next() {
            return Charged {
                transaction_id: row.get::<i64>(1).or_raise().unwrap_or_default(),
                cost_usd,
                credits_charged: -row.get::<i64>(2).or_raise().unwrap_or_default(),
                balance_before: row.get::<i64>(3).or_raise().unwrap_or_default(),
                balance_after: row.get::<i64>(4).or_raise().unwrap_or_default(),
            };
        }
        // SAFETY: as above.
        let (last_cid, xid) = unsafe { (pg_sys::GetCurrentCommandId(false), pg_sys::GetCurrentTransactionIdIfAny()) };

        // Nothing was written to the ledger: a replay, an unknown user, or not enough credits.
        let t = client
            .update(CHARGE_READ_SQL, Some(1), &[user_id.into(), operation_id.into()])
            .or_raise();
        let row = t.into_iter().next().expect("the VALUES row always exists");
        let balance = row.get_by_name::<i64, _>("balance").or_raise();
        let multiplier = row.get_by_name::<f64, _>("multiplier").or_raise().unwrap_or(1.0);
        let credits = || pricing::charge_credits(cost_usd, multiplier, base_rate).or_raise();
        if row.get_by_name::<i64, _>("transaction_id").or_raise().is_some() {
            // Did this statement move the wallet before the INSERT found the id taken? Only then
            // is the wallet's current version ours and written during the statement.
            let w_xmin = row.get_by_name::<String, _>("w_xmin").or_raise();
            let w_cmin = row.get_by_name::<String, _>("w_cmin").or_raise();
            let ours = xid != pg_sys::TransactionId::INVALID
                && w_xmin.as_deref() == Some(u32::from(xid).to_string().as_str())
                && w_cmin
                    .and_then(|c| c.parse::<u32>().ok())
                    .is_some_and(|c| (first_cid..=last_cid).contains(&c));
            if ours {
                client.update(CHARGE_UNDO_SQL, Some(0), &[user_id.into(), credits().into()]).or_raise();
            }
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
        let Some(balance) = balance else {
            raise(unknown_user(user_id));
        };
        raise(QuotaError::insufficient_credits(user_id, credits(), balance))
    })
}

/// The pricing formula of seed 004, `round_half_even(usd * rate * base_rate)` in IEEE double,
/// as SQL: the charge statement uses it, and callers may too.
#[pg_extern(immutable, strict, parallel_safe)]
fn price_credits(usd: f64, rate: f64, base_rate: i64) -> i64 {
    pricing::validate_base_rate(base_rate).or_raise();
    if !(rate.is_finite() && rate > 0.0) {
        raise(QuotaError::invalid(format!("rate must be a positive finite number, got {rate}")).with("field", "rate"));
    }
    pricing::charge_credits(usd, rate, base_rate)
        .map_err(|e| QuotaError { message: e.message.replace("cost_usd", "usd"), ..e })
        .or_raise()
}

// ---------------------------------------------------------------------------------------------
// Credits in (add, bonus, refund, purchase, subscription): not hot, so they lock the wallet row
// first. A concurrent call with the same operation_id then waits on that lock and replays.

/// What a credit operation needs once the wallet is locked.
pub struct Credit<'a> {
    pub user_id: &'a str,
    pub operation_id: &'a str,
    pub kind: &'static str,
    pub request: Value,
    pub description: Option<&'a str>,
    pub metadata: Option<Value>,
    pub amount_usd: Option<f64>,
    pub refund_of: Option<&'a str>,
}

/// Decides the credits once the wallet row is locked: `(credits, earned_delta, spent_delta)`.
type Decide<'a> = dyn FnMut(&mut SpiClient) -> Result<(i64, i64, i64, Option<Value>), QuotaError> + 'a;

pub fn apply_credit(c: Credit, decide: &mut Decide) -> LedgerRow {
    Spi::connect_mut(|client| {
        if let Some(existing) = find_operation(client, c.operation_id) {
            return replay(existing, c.kind, &c.request).or_raise();
        }
        let locked = client
            .update(
                "SELECT balance FROM quota.wallets WHERE user_id = $1 FOR UPDATE",
                Some(1),
                &[c.user_id.into()],
            )
            .or_raise();
        if locked.is_empty() {
            raise(unknown_user(c.user_id));
        }
        // A concurrent call with this operation_id for this user committed while we waited.
        if let Some(existing) = find_operation(client, c.operation_id) {
            return replay(existing, c.kind, &c.request).or_raise();
        }
        let (credits, earned, spent, extra_metadata) = decide(client).or_raise();
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
             INSERT INTO quota.ledger (operation_id, user_id, transaction_type, credits,
                    balance_before, balance_after, amount_usd, refund_of, description, metadata, request)
             SELECT $5, $1, $6, $2, w.balance - $2, w.balance, $7, $8, $9, $10, $11 FROM w
             ON CONFLICT (operation_id) DO NOTHING
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
                ],
            )
            .or_raise();
        match t.into_iter().next() {
            Some(row) => read_ledger_row(&row).or_raise(),
            // Another user's call holds this operation_id.
            None => raise(lost_race(client, c.operation_id, c.kind, &c.request)),
        }
    })
}

/// Plan rates for a user: (multiplier, purchase_rate, base_rate, tier).
fn rates_for_user(client: &mut SpiClient, user_id: &str) -> (f64, f64, i64, Option<String>) {
    let t = client
        .update(
            "SELECT coalesce(p.multiplier, 1.0::float8) AS multiplier,
                    coalesce(p.purchase_rate, 1.0::float8) AS purchase_rate,
                    st.base_rate, s.tier
             FROM quota.settings st
             LEFT JOIN quota.subscriptions s ON s.user_id = $1
             LEFT JOIN quota.plans p ON p.tier = s.tier",
            Some(1),
            &[user_id.into()],
        )
        .or_raise();
    let row = t.into_iter().next().expect("the settings row always exists");
    (
        row.get_by_name::<f64, _>("multiplier").or_raise().unwrap_or(1.0),
        row.get_by_name::<f64, _>("purchase_rate").or_raise().unwrap_or(1.0),
        row.get_by_name::<i64, _>("base_rate").or_raise().unwrap_or(10_000),
        row.get_by_name::<String, _>("tier").or_raise(),
    )
}

pub fn add_impl(
    user_id: &str,
    amount_usd: f64,
    operation_id: &str,
    description: Option<&str>,
    metadata: Option<Value>,
    payment_method_id: Option<&str>,
) -> LedgerRow {
    validate_common(user_id, operation_id, description).or_raise();
    pricing::validate_usd("amount_usd", amount_usd).or_raise();
    let mut request = json!({ "user_id": user_id, "amount_usd": amount_usd });
    let mut extra = None;
    if let Some(pm) = payment_method_id {
        validate_free_text("payment_method_id", pm).or_raise();
        request["payment_method_id"] = json!(pm);
        extra = Some(json!({ "source": "purchase", "payment_method_id": pm }));
    }
    let mut decide = |client: &mut SpiClient| {
        let (_, purchase_rate, base_rate, _) = rates_for_user(client, user_id);
        let credits = pricing::purchase_credits(amount_usd, purchase_rate, base_rate)?;
        Ok((credits, credits, 0, extra.clone()))
    };
    apply_credit(
        Credit {
            user_id,
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

pub fn bonus_impl(
    user_id: &str,
    credits: i64,
    operation_id: &str,
    description: Option<&str>,
    metadata: Option<Value>,
) -> LedgerRow {
    validate_common(user_id, operation_id, description).or_raise();
    validate_credits("credits", credits, false).or_raise();
    let request = json!({ "user_id": user_id, "credits": credits });
    let mut decide = |_: &mut SpiClient| Ok((credits, credits, 0, None));
    apply_credit(
        Credit {
            user_id,
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
    validate_operation_id(charge_operation_id)
        .map_err(|e| QuotaError::invalid(e.message.replace("operation_id", "charge_operation_id")))
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
                                   WHERE r.refund_of = c.operation_id AND r.transaction_type = 'refund'), 0)::bigint AS refunded
                 FROM quota.ledger c
                 WHERE c.operation_id = $1 AND c.transaction_type = 'charge' AND c.user_id = $2",
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
        let refunded = row.get_by_name::<i64, _>("refunded").or_raise().unwrap_or(0);
        let refundable = charged - refunded;
        let want = credits.unwrap_or(refundable);
        if want <= 0 || want > refundable {
            let message = if refundable == 0 {
                format!("charge '{charge_operation_id}' of {charged} credits is already fully refunded")
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
            .update("SELECT active FROM quota.plans WHERE tier = $1", Some(1), &[subscription_tier.into()])
            .or_raise();
        let Some(plan) = plan.into_iter().next() else {
            return Err(QuotaError::not_found(format!("plan '{subscription_tier}' not found"))
                .with("tier", subscription_tier));
        };
        if !plan.get_by_name::<bool, _>("active").or_raise().unwrap_or(false) {
            return Err(QuotaError::invalid(format!("plan '{subscription_tier}' is not active"))
                .with("tier", subscription_tier));
        }
        let current = client
            .update("SELECT tier FROM quota.subscriptions WHERE user_id = $1", Some(1), &[user_id.into()])
            .or_raise()
            .into_iter()
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
// SQL functions.

type CreditRow = (
    name!(success, bool),
    name!(transaction_id, i64),
    name!(user_id, String),
    name!(transaction_type, String),
    name!(amount_usd, Option<f64>),
    name!(credits_added, i64),
    name!(balance_before, i64),
    name!(balance_after, i64),
    name!(operation_id, String),
);

fn credit_row(r: LedgerRow) -> TableIterator<'static, CreditRow> {
    TableIterator::once((
        true,
        r.transaction_id,
        r.user_id,
        r.transaction_type,
        r.amount_usd,
        r.credits,
        r.balance_before,
        r.balance_after,
        r.operation_id,
    ))
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
VOLATILE PARALLEL UNSAFE
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

#[pg_extern(volatile, parallel_unsafe)]
fn add(
    user_id: Option<&str>,
    amount_usd: Option<f64>,
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
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let amount_usd = required(amount_usd, "amount_usd");
    let operation_id = required(operation_id, "operation_id");
    credit_row(add_impl(user_id, amount_usd, operation_id, description, metadata.map(|j| j.0), None))
}

#[pg_extern(volatile, parallel_unsafe)]
fn purchase(
    user_id: &str,
    amount_usd: f64,
    payment_method_id: &str,
    operation_id: &str,
) -> TableIterator<
    'static,
    (
        name!(success, bool),
        name!(transaction_id, i64),
        name!(user_id, String),
        name!(transaction_type, String),
        name!(amount_usd, Option<f64>),
        name!(credits_added, i64),
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    credit_row(add_impl(user_id, amount_usd, operation_id, Some("credit purchase"), None, Some(payment_method_id)))
}

#[pg_extern(volatile, parallel_unsafe)]
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
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let credits = required(credits, "credits");
    let operation_id = required(operation_id, "operation_id");
    credit_row(bonus_impl(user_id, credits, operation_id, description, metadata.map(|j| j.0)))
}

#[pg_extern(volatile, parallel_unsafe)]
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
        name!(balance_before, i64),
        name!(balance_after, i64),
        name!(operation_id, String),
    ),
> {
    let user_id = required(user_id, "user_id");
    let charge_operation_id = required(charge_operation_id, "charge_operation_id");
    let operation_id = required(operation_id, "operation_id");
    credit_row(refund_impl(user_id, charge_operation_id, operation_id, credits, description))
}

#[pg_extern(volatile, parallel_unsafe)]
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
        name!(operation_id, String),
    ),
> {
    let (r, previous) = update_subscription_impl(user_id, subscription_tier, credits_to_add, operation_id);
    let tier = r.request["subscription_tier"].as_str().unwrap_or(subscription_tier).to_string();
    TableIterator::once((
        true,
        r.transaction_id,
        r.user_id,
        previous,
        tier,
        r.credits,
        r.balance_before,
        r.balance_after,
        r.operation_id,
    ))
}

#[pg_extern(stable, parallel_safe)]
fn check_credits(
    user_id: &str,
    required_credits: i64,
) -> TableIterator<
    'static,
    (
        name!(user_id, String),
        name!(current_balance, i64),
        name!(required_credits, i64),
        name!(has_sufficient_credits, bool),
        name!(deficit, i64),
    ),
> {
    validate_user_id(user_id).or_raise();
    validate_credits("required_credits", required_credits, true).or_raise();
    let balance = Spi::get_one_with_args::<i64>(
        "SELECT balance FROM quota.wallets WHERE user_id = $1",
        &[user_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(unknown_user(user_id)));
    TableIterator::once((
        user_id.to_string(),
        balance,
        required_credits,
        balance >= required_credits,
        (required_credits - balance).max(0),
    ))
}

#[pg_extern(stable, parallel_safe)]
fn calculate_credits(
    cost_usd: Option<f64>,
    user_id: default!(Option<&str>, "NULL"),
    tier: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(cost_usd, f64),
        name!(tier, Option<String>),
        name!(multiplier, f64),
        name!(base_rate, i64),
        name!(credits, i64),
    ),
> {
    let cost_usd = required(cost_usd, "cost_usd");
    pricing::validate_usd("cost_usd", cost_usd).or_raise();
    let (multiplier, base_rate, tier) = Spi::connect_mut(|client| {
        if let Some(t) = tier {
            validate_tier(t).or_raise();
            let r = client
                .update(
                    "SELECT p.multiplier, st.base_rate FROM quota.plans p, quota.settings st WHERE p.tier = $1",
                    Some(1),
                    &[t.into()],
                )
                .or_raise();
            let row = r.into_iter().next().unwrap_or_else(|| {
                raise(QuotaError::not_found(format!("plan '{t}' not found")).with("tier", t))
            });
            (
                row.get_by_name::<f64, _>("multiplier").or_raise().unwrap_or(1.0),
                row.get_by_name::<i64, _>("base_rate").or_raise().unwrap_or(10_000),
                Some(t.to_string()),
            )
        } else if let Some(u) = user_id {
            validate_user_id(u).or_raise();
            let exists = client
                .update("SELECT 1 FROM quota.users WHERE id = $1", Some(1), &[u.into()])
                .or_raise();
            if exists.is_empty() {
                raise(unknown_user(u));
            }
            let (m, _, b, t) = rates_for_user(client, u);
            (m, b, t)
        } else {
            let b = client
                .update("SELECT base_rate FROM quota.settings", Some(1), &[])
                .or_raise()
                .into_iter()
                .next()
                .and_then(|r| r.get_by_name::<i64, _>("base_rate").or_raise())
                .unwrap_or(10_000);
            (1.0, b, None)
        }
    });
    let credits = pricing::charge_credits(cost_usd, multiplier, base_rate).or_raise();
    TableIterator::once((cost_usd, tier, multiplier, base_rate, credits))
}

#[pg_extern(stable, parallel_safe)]
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
    ),
> {
    validate_user_id(user_id).or_raise();
    let row = Spi::connect(|client| {
        let t = client
            .select(
                "SELECT w.balance, w.total_earned, w.total_spent, s.tier
                 FROM quota.wallets w LEFT JOIN quota.subscriptions s USING (user_id)
                 WHERE w.user_id = $1",
                Some(1),
                &[user_id.into()],
            )
            .or_raise();
        t.into_iter().next().map(|r| {
            (
                r.get_by_name::<i64, _>("balance").or_raise().unwrap_or(0),
                r.get_by_name::<i64, _>("total_earned").or_raise().unwrap_or(0),
                r.get_by_name::<i64, _>("total_spent").or_raise().unwrap_or(0),
                r.get_by_name::<String, _>("tier").or_raise(),
            )
        })
    });
    let (balance, earned, spent, tier) = row.unwrap_or_else(|| raise(unknown_user(user_id)));
    TableIterator::once((user_id.to_string(), balance, earned, spent, tier))
}

const TRANSACTION_TYPES: &[&str] = &[
    "charge", "add", "subscription", "bonus", "refund", "reserve", "settle", "release", "recharge", "adjust",
];

#[pg_extern(stable, parallel_safe)]
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
        raise(QuotaError::invalid(format!("limit must be between 1 and 100, got {limit}")).with("field", "limit"));
    }
    if !(0..=10_000_000).contains(&offset) {
        raise(QuotaError::invalid(format!("offset must be between 0 and 10000000, got {offset}")).with("field", "offset"));
    }
    if let Some(t) = transaction_type {
        if !TRANSACTION_TYPES.contains(&t) {
            raise(QuotaError::invalid(format!(
                "type must be one of {}, got '{t}'",
                TRANSACTION_TYPES.join(", ")
            ))
            .with("field", "type"));
        }
    }
    let result = Spi::get_one_with_args::<JsonB>(
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
        &[user_id.into(), limit.into(), offset.into(), transaction_type.into()],
    )
    .or_raise();
    result.unwrap_or_else(|| raise(unknown_user(user_id)))
}

#[pg_extern(stable, parallel_safe)]
fn subscription(user_id: &str) -> JsonB {
    validate_user_id(user_id).or_raise();
    Spi::get_one_with_args::<JsonB>(
        "SELECT jsonb_build_object(
                  'user_id', w.user_id, 'subscription_tier', s.tier, 'status', s.status,
                  'started_at', s.started_at,
                  'plan', (SELECT quota._plan_json(p) FROM quota.plans p WHERE p.tier = s.tier),
                  'balance', w.balance, 'total_earned', w.total_earned, 'total_spent', w.total_spent)
         FROM quota.wallets w LEFT JOIN quota.subscriptions s USING (user_id)
         WHERE w.user_id = $1",
        &[user_id.into()],
    )
    .or_raise()
    .unwrap_or_else(|| raise(unknown_user(user_id)))
}

#[pg_extern(stable, parallel_safe)]
fn verify() -> TableIterator<'static, (name!(subject, String), name!(problem, String))> {
    let rows = Spi::connect(|client| {
        client
            .select("SELECT subject, problem FROM quota.ledger_problems ORDER BY subject", None, &[])
            .or_raise()
            .into_iter()
            .map(|r| {
                (
                    r.get_by_name::<String, _>("subject").or_raise().unwrap_or_default(),
                    r.get_by_name::<String, _>("problem").or_raise().unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}
