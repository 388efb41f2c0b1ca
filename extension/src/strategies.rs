//! Recharge strategies (SPEC 6): CRUD with validation, and the scan that recharges matching
//! users exactly once per (strategy, user, fire time) in one set-based statement per strategy.
//!
//! The scan is driven by time given as an argument (`quota.scan(now)`), so tests run it
//! deterministically; the background worker only calls it.

use crate::condition::bind_params;
use crate::error::{raise, required, OrRaise};
use crate::gucs;
use crate::schedule;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use quota_core::condition;
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
        .into_iter()
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
    QuotaError::new(ErrorKind::Duplicate, format!("strategy name '{name}' already exists")).with("name", name)
}

#[pg_extern(volatile, parallel_unsafe)]
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
            .into_iter()
            .next()
            .and_then(|r| r.get::<i64>(1).or_raise())
            .expect("identity");
        JsonB(strategy_json(client, id, false).expect("just inserted"))
    })
}

#[pg_extern(volatile, parallel_unsafe)]
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

#[pg_extern(stable, parallel_safe)]
fn get_strategy(id: i64) -> JsonB {
    Spi::connect_mut(|client| JsonB(strategy_json(client, id, false).unwrap_or_else(|| raise(unknown_strategy(id)))))
}

#[pg_extern(stable, parallel_safe)]
fn list_strategies(status: default!(Option<bool>, "NULL")) -> JsonB {
    Spi::get_one_with_args::<JsonB>(
        "SELECT jsonb_build_object(
            'strategies', coalesce(jsonb_agg(quota._strategy_json(s) ORDER BY s.id), '[]'::jsonb),
            'total', count(*))
         FROM quota.strategies s WHERE $1::boolean IS NULL OR s.status = $1",
        &[status.into()],
    )
    .or_raise()
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

#[pg_extern(volatile, parallel_unsafe)]
fn enable_strategy(id: i64) -> JsonB {
    set_status(id, true)
}

#[pg_extern(volatile, parallel_unsafe)]
fn disable_strategy(id: i64) -> JsonB {
    set_status(id, false)
}

/// Deletes a strategy; its executions stay (they have no foreign key to it).
#[pg_extern(volatile, parallel_unsafe)]
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

#[pg_extern(stable, parallel_safe)]
fn strategy_executions(id: i64, limit: default!(i32, 50), offset: default!(i32, 0)) -> JsonB {
    if !(1..=1000).contains(&limit) || offset < 0 {
        raise(QuotaError::invalid(format!("limit must be 1 to 1000 and offset >= 0, got {limit} and {offset}")));
    }
    Spi::get_one_with_args::<JsonB>(
        "SELECT jsonb_build_object(
            'executions', coalesce((SELECT jsonb_agg(quota._execution_json(e) ORDER BY e.id DESC)
                                    FROM (SELECT * FROM quota.executions WHERE strategy_id = $1
                                          ORDER BY id DESC LIMIT $2 OFFSET $3) e), '[]'::jsonb),
            'total', (SELECT count(*) FROM quota.executions WHERE strategy_id = $1),
            'limit', $2, 'offset', $3)",
        &[id.into(), limit.into(), offset.into()],
    )
    .or_raise()
    .expect("one row")
}

/// `YYYYMMDDHHMMSS` in UTC.
fn batch_number(client: &mut SpiClient, at: TimestampWithTimeZone) -> String {
    client
        .update("SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')", Some(1), &[at.into()])
        .or_raise()
        .into_iter()
        .next()
        .and_then(|r| r.get::<String>(1).or_raise())
        .expect("one row")
}

/// Recharges, for one strategy and one fire, every matching user not yet recharged for it:
/// executions, ledger credits, wallet updates and outbox rows in one statement. The strategy
/// row is locked first, so a concurrent disable or update waits for the scan to end.
/// Returns the number of users recharged.
pub fn fire_strategy(
    client: &mut SpiClient,
    id: i64,
    fire_key: TimestampWithTimeZone,
    batch_at: TimestampWithTimeZone,
) -> i64 {
    let row = client
        .update(
            "SELECT name, amount, condition, max_exec_per_user FROM quota.strategies
             WHERE id = $1 AND status FOR UPDATE",
            Some(1),
            &[id.into()],
        )
        .or_raise();
    let Some(row) = row.into_iter().next() else {
        return 0; // deleted or disabled since it was picked
    };
    let name = row.get::<String>(1).or_raise().unwrap_or_default();
    let amount = row.get::<i64>(2).or_raise().unwrap_or(0);
    let condition_text = row.get::<String>(3).or_raise().unwrap_or_default();
    let max_exec = row.get::<i32>(4).or_raise().unwrap_or(0);
    let expr = condition::parse(&condition_text).map_err(QuotaError::from).or_raise();
    let batch = batch_number(client, batch_at);

    // $1..$8 are the strategy's values; the predicate's parameters follow.
    let (predicate, params) = condition::to_sql(&expr, 9);
    let sql = format!(
        "WITH cand AS (
            SELECT u.id AS user_id
            FROM quota.users u JOIN quota.wallets w ON w.user_id = u.id
            WHERE ({predicate})
              AND NOT EXISTS (SELECT 1 FROM quota.executions e
                              WHERE e.strategy_id = $1 AND e.user_id = u.id AND e.fire_key = $5)
              AND ($6 = 0 OR (SELECT count(*) FROM quota.executions e
                              WHERE e.strategy_id = $1 AND e.user_id = u.id) < $6)),
         ex AS (
            INSERT INTO quota.executions (strategy_id, strategy_name, user_id, batch_number, fire_key, amount, status)
            SELECT $1, $2, cand.user_id, $4, $5, $3,
                   CASE WHEN $8 THEN 'pending' ELSE 'completed' END FROM cand
            ON CONFLICT ON CONSTRAINT executions_once_key DO NOTHING
            RETURNING id, user_id),
         wal AS (
            UPDATE quota.wallets w
               SET balance = w.balance + $3, total_earned = w.total_earned + $3, updated_at = now()
              FROM ex WHERE w.user_id = ex.user_id
            RETURNING w.user_id, w.balance),
         led AS (
            INSERT INTO quota.ledger (operation_id, user_id, transaction_type, credits, balance_before,
                                      balance_after, description, metadata, request)
            SELECT 'recharge:' || ex.id, ex.user_id, 'recharge', $3, wal.balance - $3, wal.balance, $7,
                   jsonb_build_object('strategy_id', $1, 'execution_id', ex.id, 'batch_number', $4),
                   jsonb_build_object('strategy_id', $1, 'user_id', ex.user_id, 'fire_key', $5)
            FROM ex JOIN wal ON wal.user_id = ex.user_id
            RETURNING 1),
         ob AS (
            INSERT INTO quota.outbox (execution_id, consumer, value)
            SELECT ex.id, ex.user_id, $3 FROM ex WHERE $8
            RETURNING 1)
         SELECT (SELECT count(*) FROM ex), (SELECT count(*) FROM led), (SELECT count(*) FROM ob)"
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
    ];
    args.extend(bind_params(&params));
    let t = client.update(sql.as_str(), Some(1), &args).or_raise();
    let row = t.into_iter().next().expect("one row");
    let executions = row.get::<i64>(1).or_raise().unwrap_or(0);
    let credits = row.get::<i64>(2).or_raise().unwrap_or(0);
    let outbox = row.get::<i64>(3).or_raise().unwrap_or(0);
    // One statement wrote all three; they can only differ if a user lost its wallet mid-scan.
    if executions != credits || (relay && executions != outbox) {
        pgrx::error!("pg_quota: strategy {id}: {executions} executions, {credits} credits, {outbox} outbox rows");
    }
    client
        .update(
            "UPDATE quota.strategies SET last_fire_time = greatest(last_fire_time, $2) WHERE id = $1",
            None,
            &[id.into(), batch_at.into()],
        )
        .or_raise();
    if executions > 0 && relay {
        client.update("NOTIFY quota_outbox", None, &[]).or_raise();
    }
    executions
}

/// Runs every enabled strategy that is due at `now`: single strategies each time (they recharge
/// each user at most once, ever), periodic ones when a cron fire fell in (last fire, now] (the
/// latest such fire only: after downtime a missed fire runs once, without a burst of catch-ups).
///
/// `strategy_id` limits the scan to one strategy (a DBA running it by hand).
/// `single => false` runs only the periodic ones (the worker does that every tick, and the
/// single ones every `quota.scan_interval`).
#[pg_extern(volatile, parallel_unsafe)]
fn scan(
    now: default!(Option<TimestampWithTimeZone>, "NULL"),
    single: default!(Option<bool>, true),
    strategy_id: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(strategy_id, i64),
        name!(strategy_name, String),
        name!(fire_time, TimestampWithTimeZone),
        name!(recharged, i64),
    ),
> {
    let single = required(single, "single");
    let now = now.unwrap_or_else(|| {
        Spi::get_one::<TimestampWithTimeZone>("SELECT quota.now()").or_raise().expect("a clock")
    });
    let tz = schedule::timezone();
    let rows = Spi::connect_mut(|client| {
        let strategies: Vec<(i64, String, String, String, Option<TimestampWithTimeZone>, TimestampWithTimeZone)> =
            client
                .update(
                    "SELECT id, name, type, periodic_expr, last_fire_time, create_time
                     FROM quota.strategies WHERE status AND ($1::bigint IS NULL OR id = $1) ORDER BY id",
                    None,
                    &[strategy_id.into()],
                )
                .or_raise()
                .into_iter()
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
                .collect();
        let mut out = Vec::new();
        for (id, name, kind, expr, last_fire, created) in strategies {
            if kind == "single" && !single {
                continue;
            }
            let fire = if kind == "periodic" {
                // A periodic strategy fires for cron times after its last fire (or its creation).
                let from = last_fire.unwrap_or(created);
                match schedule::latest_fire(&expr, from, now, tz) {
                    Some(f) => f,
                    None => continue,
                }
            } else {
                now
            };
            let fire_key = if kind == "periodic" { fire } else { TimestampWithTimeZone::negative_infinity() };
            let n = fire_strategy(client, id, fire_key, fire);
            out.push((id, name, fire, n));
        }
        out
    });
    TableIterator::new(rows)
}
