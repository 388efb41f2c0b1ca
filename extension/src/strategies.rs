//! Recharge strategies (SPEC 6): CRUD with validation, and the scan that recharges matching
//! users exactly once per (strategy, user, fire time) in one set-based statement per strategy.
//!
//! The scan is driven by time given as an argument (`quota.scan(now)`), so tests run it
//! deterministically; the background worker only calls it.

use crate::condition::bind_params;
use crate::error::{raise, required, OrRaise};
use crate::ledger::Scope;
use crate::schedule;
use crate::{audit, gucs, read, subxact};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use quota_core::condition;
use quota_core::pricing;
use quota_core::strategy::{Strategy, StrategyType};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Value};

fn unknown_strategy(id: i64) -> QuotaError {
    QuotaError::not_found(format!("strategy {id} not found")).with("strategy_id", id)
}

fn strategy_json(client: &mut SpiClient, id: i64, lock: bool) -> Option<Value> {
    let sql = if lock {
        "SELECT quota._strategy_json(s) AS j FROM quota.strategies s WHERE s.id = $1 FOR UPDATE"
    } else {
        "SELECT quota._strategy_json(s) AS j FROM quota.strategies s WHERE s.id = $1"
    };
    client
        .update(sql, Some(1), &[id.into()])
        .or_raise()
        .next()
        .and_then(|r| r.get::<JsonB>(1).or_raise())
        .map(|j| j.0)
}

/// The stored strategy as the validated core type (for partial updates).
fn stored(v: &Value) -> Strategy {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Strategy {
        name: text("name"),
        title: text("title"),
        kind: StrategyType::parse(&text("type")).or_raise(),
        amount: v["amount"].as_i64().unwrap_or(1),
        model: text("model"),
        periodic_expr: text("periodic_expr"),
        condition: text("condition"),
        status: v["status"].as_bool().unwrap_or(false),
        max_exec_per_user: v["max_exec_per_user"].as_i64().unwrap_or(0) as i32,
    }
}

fn name_taken(client: &mut SpiClient, name: &str, other_than: Option<i64>) -> bool {
    !client
        .update(
            "SELECT 1 FROM quota.strategies WHERE name = $1 AND id IS DISTINCT FROM $2",
            Some(1),
            &[name.into(), other_than.into()],
        )
        .or_raise()
        .is_empty()
}

fn duplicate_name(name: &str) -> QuotaError {
    QuotaError::new(
        ErrorKind::Duplicate,
        format!("strategy name '{name}' already exists"),
    )
    .with("name", name)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_strategy(strategy: JsonB) -> JsonB {
    let s = Strategy::create(strategy.0, schedule::check_cron).or_raise();
    Spi::connect_mut(|client| {
        if name_taken(client, &s.name, None) {
            raise(duplicate_name(&s.name));
        }
        let id = client
            .update(
                "INSERT INTO quota.strategies (name, title, type, amount, model, periodic_expr, condition,
                                               status, max_exec_per_user)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                Some(1),
                &[
                    s.name.as_str().into(),
                    s.title.as_str().into(),
                    s.kind.as_str().into(),
                    s.amount.into(),
                    s.model.as_str().into(),
                    s.periodic_expr.as_str().into(),
                    s.condition.as_str().into(),
                    s.status.into(),
                    s.max_exec_per_user.into(),
                ],
            )
            .or_raise()
            .next()
            .and_then(|r| r.get::<i64>(1).or_raise())
            .expect("identity");
        JsonB(strategy_json(client, id, false).expect("just inserted"))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_strategy(id: i64, patch: JsonB) -> JsonB {
    Spi::connect_mut(|client| {
        let old = strategy_json(client, id, true).unwrap_or_else(|| raise(unknown_strategy(id)));
        let s = stored(&old).apply(patch.0, schedule::check_cron).or_raise();
        if name_taken(client, &s.name, Some(id)) {
            raise(duplicate_name(&s.name));
        }
        client
            .update(
                "UPDATE quota.strategies SET name = $2, title = $3, type = $4, amount = $5, model = $6,
                        periodic_expr = $7, condition = $8, status = $9, max_exec_per_user = $10,
                        update_time = now()
                 WHERE id = $1",
                None,
                &[
                    id.into(),
                    s.name.as_str().into(),
                    s.title.as_str().into(),
                    s.kind.as_str().into(),
                    s.amount.into(),
                    s.model.as_str().into(),
                    s.periodic_expr.as_str().into(),
                    s.condition.as_str().into(),
                    s.status.into(),
                    s.max_exec_per_user.into(),
                ],
            )
            .or_raise();
        JsonB(strategy_json(client, id, false).expect("exists"))
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn get_strategy(id: i64) -> JsonB {
    read::one::<JsonB>(
        "SELECT quota._strategy_json(s) FROM quota.strategies s WHERE s.id = $1",
        &[id.into()],
    )
    .unwrap_or_else(|| raise(unknown_strategy(id)))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn list_strategies(status: default!(Option<bool>, "NULL")) -> JsonB {
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'strategies', coalesce(jsonb_agg(quota._strategy_json(s) ORDER BY s.id), '[]'::jsonb),
            'total', count(*))
         FROM quota.strategies s WHERE $1::boolean IS NULL OR s.status = $1",
        &[status.into()],
    )
    .expect("an aggregate returns one row")
}

fn set_status(id: i64, status: bool) -> JsonB {
    let n = Spi::get_one_with_args::<i64>(
        "WITH u AS (UPDATE quota.strategies SET status = $2, update_time = now() WHERE id = $1 RETURNING 1)
         SELECT count(*) FROM u",
        &[id.into(), status.into()],
    )
    .or_raise()
    .unwrap_or(0);
    if n == 0 {
        raise(unknown_strategy(id));
    }
    let word = if status { "enabled" } else { "disabled" };
    JsonB(json!({ "message": format!("strategy {word} successfully") }))
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn enable_strategy(id: i64) -> JsonB {
    set_status(id, true)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn disable_strategy(id: i64) -> JsonB {
    set_status(id, false)
}

/// Deletes a strategy; its executions stay (they have no foreign key to it).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_strategy(id: i64) -> JsonB {
    let n = Spi::get_one_with_args::<i64>(
        "WITH d AS (DELETE FROM quota.strategies WHERE id = $1 RETURNING 1) SELECT count(*) FROM d",
        &[id.into()],
    )
    .or_raise()
    .unwrap_or(0);
    if n == 0 {
        raise(unknown_strategy(id));
    }
    JsonB(json!({ "message": "strategy deleted successfully" }))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn strategy_executions(id: i64, limit: default!(i32, 50), offset: default!(i32, 0)) -> JsonB {
    if !(1..=1000).contains(&limit) || offset < 0 {
        raise(QuotaError::invalid(format!(
            "limit must be 1 to 1000 and offset >= 0, got {limit} and {offset}"
        )));
    }
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'executions', coalesce((SELECT jsonb_agg(quota._execution_json(e) ORDER BY e.id DESC)
                                    FROM (SELECT * FROM quota.executions WHERE strategy_id = $1
                                          ORDER BY id DESC LIMIT $2 OFFSET $3) e), '[]'::jsonb),
            'total', (SELECT count(*) FROM quota.executions WHERE strategy_id = $1),
            'limit', $2, 'offset', $3)",
        &[id.into(), limit.into(), offset.into()],
    )
    .expect("one row")
}

/// `YYYYMMDDHHMMSS` in UTC.
fn batch_number(client: &SpiClient, at: TimestampWithTimeZone) -> String {
    client
        .select(
            "SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')",
            Some(1),
            &[at.into()],
        )
        .or_raise()
        .next()
        .and_then(|r| r.get::<String>(1).or_raise())
        .expect("one row")
}

/// What one fire of one strategy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// Users credited (execution, ledger credit and, with the relay, an outbox row each).
    pub recharged: i64,
    /// Users that matched but could not be credited (their balance would pass its limit): an
    /// execution with status `skipped` says so, and they are not tried again for this fire.
    pub skipped: i64,
    /// The batch was full: more users may be due for this fire (the worker comes back at once).
    pub more: bool,
}

/// Recharges, for one strategy and one fire, the matching users not yet recharged for it (at
/// most `batch_users` of them, or all): executions, ledger credits, wallet updates and outbox rows
/// in one statement. The strategy row is locked first, so a concurrent disable or update waits
/// for the scan to end. A user whose balance (or lifetime total) would pass its limit is not
/// credited: its execution is `skipped`, and the others are credited as usual.
pub fn fire_strategy(
    client: &mut SpiClient,
    id: i64,
    fire_key: TimestampWithTimeZone,
    batch_at: TimestampWithTimeZone,
    batch_users: Option<i64>,
) -> Fired {
    let row = client
        .update(
            "SELECT name, amount, condition, max_exec_per_user FROM quota.strategies
             WHERE id = $1 AND status FOR UPDATE",
            Some(1),
            &[id.into()],
        )
        .or_raise();
    let Some(row) = row.into_iter().next() else {
        return Fired::default(); // deleted or disabled since it was picked
    };
    let name = row.get::<String>(1).or_raise().unwrap_or_default();
    let amount = row.get::<i64>(2).or_raise().unwrap_or(0);
    let condition_text = row.get::<String>(3).or_raise().unwrap_or_default();
    let max_exec = row.get::<i32>(4).or_raise().unwrap_or(0);
    let expr = condition::parse(&condition_text)
        .map_err(QuotaError::from)
        .or_raise();
    let batch = batch_number(client, batch_at);

    // $1..$11 are the strategy's values and bounds; the predicate's parameters follow.
    let (predicate, params) = condition::to_sql(&expr, 12);
    let sql = format!(
        "WITH cand AS (
            SELECT u.id AS user_id, (w.balance <= $9 - $3 AND w.total_earned <= $10 - $3) AS fits
            FROM quota.users u JOIN quota.wallets w ON w.user_id = u.id
            WHERE ({predicate})
              AND NOT EXISTS (SELECT 1 FROM quota.executions e
                              WHERE e.strategy_id = $1 AND e.user_id = u.id AND e.fire_key = $5)
              AND ($6 = 0 OR (SELECT count(*) FROM quota.executions e
                              WHERE e.strategy_id = $1 AND e.user_id = u.id AND e.status <> 'skipped') < $6)
            LIMIT $11),
         ex AS (
            INSERT INTO quota.executions (strategy_id, strategy_name, user_id, batch_number, fire_key, amount,
                                          status, last_error)
            SELECT $1, $2, cand.user_id, $4, $5, $3,
                   CASE WHEN NOT cand.fits THEN 'skipped' WHEN $8 THEN 'pending' ELSE 'completed' END,
                   CASE WHEN NOT cand.fits THEN 'not credited: the balance would pass its limit' END
            FROM cand
            ON CONFLICT ON CONSTRAINT executions_once_key DO NOTHING
            RETURNING id, user_id, status),
         wal AS (
            UPDATE quota.wallets w
               SET balance = w.balance + $3, total_earned = w.total_earned + $3, updated_at = now()
              FROM ex WHERE w.user_id = ex.user_id AND ex.status <> 'skipped'
            RETURNING w.user_id, w.balance),
         led AS (
            INSERT INTO quota.ledger (user_id, scope, operation_id, transaction_type, credits, balance_before,
                                      balance_after, description, metadata, request)
            SELECT ex.user_id, '{system}', 'recharge:' || ex.id, 'recharge', $3, wal.balance - $3, wal.balance, $7,
                   jsonb_build_object('strategy_id', $1, 'execution_id', ex.id, 'batch_number', $4),
                   jsonb_build_object('strategy_id', $1, 'user_id', ex.user_id, 'fire_key', $5)
            FROM ex JOIN wal ON wal.user_id = ex.user_id
            RETURNING 1),
         ob AS (
            INSERT INTO quota.outbox (execution_id, consumer, value)
            SELECT ex.id, ex.user_id, $3 FROM ex WHERE $8 AND ex.status <> 'skipped'
            RETURNING 1)
         SELECT (SELECT count(*) FROM cand),
                (SELECT count(*) FROM ex WHERE status <> 'skipped'),
                (SELECT count(*) FROM ex WHERE status = 'skipped'),
                (SELECT count(*) FROM led), (SELECT count(*) FROM ob)",
        // Recharge ids live in the system scope, which no caller can write (a constant).
        system = Scope::System.as_str(),
    );
    let description = format!("recharge by strategy '{name}'");
    // Without the relay (quota.relay = off) executions complete in the ledger alone.
    let relay = gucs::relay();
    let mut args: Vec<DatumWithOid> = vec![
        id.into(),
        name.as_str().into(),
        amount.into(),
        batch.as_str().into(),
        fire_key.into(),
        max_exec.into(),
        description.as_str().into(),
        relay.into(),
        pricing::BALANCE_MAX.into(),
        pricing::TOTAL_MAX.into(),
        batch_users.into(),
    ];
    args.extend(bind_params(&params));
    let t = client.update(sql.as_str(), Some(1), &args).or_raise();
    let row = t.into_iter().next().expect("one row");
    let candidates = row.get::<i64>(1).or_raise().unwrap_or(0);
    let executions = row.get::<i64>(2).or_raise().unwrap_or(0);
    let skipped = row.get::<i64>(3).or_raise().unwrap_or(0);
    let credits = row.get::<i64>(4).or_raise().unwrap_or(0);
    let outbox = row.get::<i64>(5).or_raise().unwrap_or(0);
    // One statement wrote all three; they can only differ if a user lost its wallet mid-scan.
    if executions != credits || (relay && executions != outbox) {
        pgrx::error!("pg_quota: strategy {id}: {executions} executions, {credits} credits, {outbox} outbox rows");
    }
    let more = batch_users.is_some_and(|b| candidates >= b);
    if !more {
        // The fire is done. A scan at a time other than now (a superuser's test hook) never moves
        // last_fire_time past the real clock, so periodic strategies keep firing afterwards.
        client
            .update(
                "UPDATE quota.strategies SET last_fire_time = greatest(last_fire_time, least($2, now())) WHERE id = $1",
                None,
                &[id.into(), batch_at.into()],
            )
            .or_raise();
    }
    if executions > 0 && relay {
        client.update("NOTIFY quota_outbox", None, &[]).or_raise();
    }
    if skipped > 0 {
        warning!("pg_quota: strategy {id} ('{name}') skipped {skipped} users whose balance would pass its limit");
    }
    Fired {
        recharged: executions,
        skipped,
        more,
    }
}

/// The most users one scan statement handles per strategy when a batch is asked for.
pub const BATCH_USERS_MAX: i64 = 1_000_000;

/// Runs every enabled strategy that is due at `now`: single strategies each time (they recharge
/// each user at most once, ever), periodic ones when a cron fire fell in (last fire, now] (the
/// latest such fire only: after downtime a missed fire runs once, without a burst of catch-ups).
///
/// - `now` other than the current time is a test hook for superusers (42501 otherwise).
/// - `single => false` runs only the periodic ones (the worker does that every tick, and the
///   single ones every `quota.scan_interval`).
/// - `strategy_id` limits the scan to one strategy (a DBA running it by hand).
/// - `batch_users` bounds the users handled per strategy (the worker passes
///   `quota.scan_batch_size`); `more` then says a strategy has users left for the same fire.
///
/// Each strategy runs in its own subtransaction: one that fails (its row shows `error`, and the
/// strategy's `last_error`) does not stop the others.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn scan(
    now: default!(Option<TimestampWithTimeZone>, "NULL"),
    single: default!(Option<bool>, true),
    strategy_id: default!(Option<i64>, "NULL"),
    batch_users: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(strategy_id, i64),
        name!(strategy_name, String),
        name!(fire_time, TimestampWithTimeZone),
        name!(recharged, i64),
        name!(skipped, i64),
        name!(more, bool),
        name!(error, Option<String>),
    ),
> {
    let single = required(single, "single");
    if now.is_some() && !audit::caller_is_superuser() {
        raise(QuotaError::new(
            ErrorKind::PermissionDenied,
            "quota.scan(now => ...) at a time other than the current one is a test hook for superusers; call quota.scan() to scan now",
        ));
    }
    if let Some(b) = batch_users {
        if !(1..=BATCH_USERS_MAX).contains(&b) {
            raise(
                QuotaError::invalid(format!(
                    "batch_users must be between 1 and {BATCH_USERS_MAX}, got {b}"
                ))
                .with("field", "batch_users"),
            );
        }
    }
    let now = now.unwrap_or_else(|| {
        read::one::<TimestampWithTimeZone>("SELECT quota.now()", &[]).expect("a clock")
    });
    let tz = schedule::timezone();
    let strategies: Vec<(
        i64,
        String,
        String,
        String,
        Option<TimestampWithTimeZone>,
        TimestampWithTimeZone,
    )> = Spi::connect(|client| {
        client
                .select(
                    "SELECT id, name, type, periodic_expr, last_fire_time, create_time
                     FROM quota.strategies WHERE status AND ($1::bigint IS NULL OR id = $1) ORDER BY id",
                    None,
                    &[strategy_id.into()],
                )
                .or_raise()
                .map(|r| {
                    (
                        r.get::<i64>(1).or_raise().unwrap_or(0),
                        r.get::<String>(2).or_raise().unwrap_or_default(),
                        r.get::<String>(3).or_raise().unwrap_or_default(),
                        r.get::<String>(4).or_raise().unwrap_or_default(),
                        r.get::<TimestampWithTimeZone>(5).or_raise(),
                        r.get::<TimestampWithTimeZone>(6).or_raise().expect("not null"),
                    )
                })
                .collect()
    });
    let mut out = Vec::new();
    for (id, name, kind, expr, last_fire, created) in strategies {
        if kind == "single" && !single {
            continue;
        }
        let fire = if kind == "periodic" {
            // A periodic strategy fires for cron times after its last fire (or its creation).
            let from = last_fire.unwrap_or(created);
            let found = subxact::run(|| schedule::latest_fire(&expr, from, now, tz));
            match found {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    out.push(strategy_failed(id, name, now, e));
                    continue;
                }
            }
        } else {
            now
        };
        let fire_key = if kind == "periodic" {
            fire
        } else {
            TimestampWithTimeZone::negative_infinity()
        };
        match subxact::run(|| {
            Spi::connect_mut(|client| fire_strategy(client, id, fire_key, fire, batch_users))
        }) {
            Ok(f) => {
                Spi::connect_mut(|client| {
                    client
                        .update(
                            "UPDATE quota.strategies SET last_error = NULL, last_error_time = NULL
                             WHERE id = $1 AND last_error IS NOT NULL",
                            None,
                            &[id.into()],
                        )
                        .or_raise();
                });
                out.push((id, name, fire, f.recharged, f.skipped, f.more, None));
            }
            Err(e) => out.push(strategy_failed(id, name, fire, e)),
        }
    }
    TableIterator::new(out)
}

type ScanRow = (
    i64,
    String,
    TimestampWithTimeZone,
    i64,
    i64,
    bool,
    Option<String>,
);

/// A strategy whose fire raised an ERROR: its writes are rolled back, the error is kept on the
/// strategy (`last_error`) and logged, and the scan goes on with the next one.
fn strategy_failed(
    id: i64,
    name: String,
    fire: TimestampWithTimeZone,
    e: subxact::Failure,
) -> ScanRow {
    warning!("pg_quota: strategy {id} ('{name}') failed, the others go on: {e}");
    let error = e.to_string();
    Spi::connect_mut(|client| {
        client
            .update(
                "UPDATE quota.strategies SET last_error = left($2, 1000), last_error_time = now() WHERE id = $1",
                None,
                &[id.into(), error.as_str().into()],
            )
            .or_raise();
    });
    (id, name, fire, 0, 0, false, Some(error))
}
