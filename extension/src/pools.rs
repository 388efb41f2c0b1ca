//! Provider account pools (issue 13, seed 002, SPEC 5): the SQL functions. The rules
//! (availability, fixed windows, selection, alerts) are `quota_core::pool`'s; this module reads
//! accounts, runs the rules under row locks and writes the result.
//!
//! Admission (`pool_acquire`) tries the candidates in the strategy's order. Each try runs in a
//! subtransaction that locks the account (FOR UPDATE), decides, and is kept only when it admits:
//! a refused account is unlocked at once, so concurrent acquires trying accounts in different
//! orders wait for each other but never deadlock, and no limit is passed (the decision is made
//! on the locked row). Refusals are answers, not errors, so their alert rows and hit counters
//! commit.

use crate::crypto;
use crate::error::{raise, required, OrRaise};
use crate::{audit, gucs, spi_cache, subxact};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};
use quota_core::pool::{
    self, Account, LeaseEnd, LimitType, Limits, PoolRefusal, Refusal, Strategy,
};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Map, Value};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

fn to_us(t: TimestampWithTimeZone) -> i64 {
    pg_sys::TimestampTz::from(t) + PG_EPOCH_US
}

fn to_ts(us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us - PG_EPOCH_US)
        .unwrap_or_else(|_| pgrx::error!("pg_quota: timestamp out of range: {us}"))
}

fn rfc3339(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, micros * 1000)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The clock (quota.now(): quota.now_override pins it for tests), in Unix microseconds.
fn now_us(client: &SpiClient) -> i64 {
    let pinned = gucs::NOW_OVERRIDE
        .get()
        .is_some_and(|c| !c.as_bytes().is_empty());
    if !pinned {
        // SAFETY: a plain read of the current transaction's start time (what now() returns).
        return unsafe { pg_sys::GetCurrentTransactionStartTimestamp() } + PG_EPOCH_US;
    }
    let t = spi_cache::select(client, "SELECT quota.now()", Some(1), &[])
        .or_raise()
        .first()
        .get_one::<TimestampWithTimeZone>()
        .or_raise()
        .expect("quota.now() is never NULL");
    to_us(t)
}

fn uuid_text(u: &Uuid) -> String {
    u.to_string()
}

macro_rules! account_cols {
    () => {
        "quota_limit, quota_used, quota_held, period_s, last_reset, active, expires_at, in_flight,
         minute_start, minute_requests, minute_tokens, hour_start, hour_requests, day_start,
         day_requests, day_tokens, request_count, success_count, error_count, warned_reset,
         exhausted_reset, account_id, provider_id, credentials"
    };
}

/// One account row as read: the core's state, its ids, its sealed credentials.
struct Row {
    account: Account,
    account_id: Uuid,
    provider_id: Uuid,
    credentials: Vec<u8>,
}

fn ts_at(row: &pgrx::spi::SpiHeapTupleData, i: usize) -> Option<i64> {
    row.get::<TimestampWithTimeZone>(i).or_raise().map(to_us)
}

fn int_at(row: &pgrx::spi::SpiHeapTupleData, i: usize) -> i64 {
    row.get::<i64>(i).or_raise().unwrap_or(0)
}

fn read_row(row: &pgrx::spi::SpiHeapTupleData) -> Row {
    let account = Account {
        quota_limit: int_at(row, 1),
        quota_used: int_at(row, 2),
        quota_held: int_at(row, 3),
        period_s: i64::from(row.get::<i32>(4).or_raise().unwrap_or(86_400)),
        last_reset_us: ts_at(row, 5).unwrap_or(0),
        active: row.get::<bool>(6).or_raise().unwrap_or(false),
        expires_at_us: ts_at(row, 7),
        in_flight: int_at(row, 8),
        minute_start_us: ts_at(row, 9).unwrap_or(0),
        minute_requests: int_at(row, 10),
        minute_tokens: int_at(row, 11),
        hour_start_us: ts_at(row, 12).unwrap_or(0),
        hour_requests: int_at(row, 13),
        day_start_us: ts_at(row, 14).unwrap_or(0),
        day_requests: int_at(row, 15),
        day_tokens: int_at(row, 16),
        request_count: int_at(row, 17),
        success_count: int_at(row, 18),
        error_count: int_at(row, 19),
        warned_reset_us: ts_at(row, 20),
        exhausted_reset_us: ts_at(row, 21),
    };
    Row {
        account,
        account_id: row.get::<Uuid>(22).or_raise().expect("account_id"),
        provider_id: row.get::<Uuid>(23).or_raise().expect("provider_id"),
        credentials: row.get::<Vec<u8>>(24).or_raise().unwrap_or_default(),
    }
}

macro_rules! write_account_sql {
    () => {
        "UPDATE quota.pool_accounts SET
            quota_used = $2, quota_held = $3, last_reset = $4, in_flight = $5,
            minute_start = $6, minute_requests = $7, minute_tokens = $8,
            hour_start = $9, hour_requests = $10, day_start = $11, day_requests = $12, day_tokens = $13,
            request_count = $14, success_count = $15, error_count = $16,
            warned_reset = $17, exhausted_reset = $18,
            last_used_at = CASE WHEN $19 THEN now() ELSE last_used_at END, updated_at = now()
          WHERE account_id = $1"
    };
}

const WRITE_ACCOUNT_SQL: &str = write_account_sql!();

/// The same write, only if the row is still the version that was read (its xmin): the
/// optimistic admission of pool_acquire.
const CAS_ACCOUNT_SQL: &str = concat!(
    write_account_sql!(),
    " AND xmin = $20::text::xid RETURNING 1"
);

fn account_args(id: Uuid, a: &Account, used_now: bool) -> Vec<DatumWithOid<'static>> {
    vec![
        id.into(),
        a.quota_used.into(),
        a.quota_held.into(),
        to_ts(a.last_reset_us).into(),
        a.in_flight.into(),
        to_ts(a.minute_start_us).into(),
        a.minute_requests.into(),
        a.minute_tokens.into(),
        to_ts(a.hour_start_us).into(),
        a.hour_requests.into(),
        to_ts(a.day_start_us).into(),
        a.day_requests.into(),
        a.day_tokens.into(),
        a.request_count.into(),
        a.success_count.into(),
        a.error_count.into(),
        a.warned_reset_us.map(to_ts).into(),
        a.exhausted_reset_us.map(to_ts).into(),
        used_now.into(),
    ]
}

fn write_account(client: &mut SpiClient, id: Uuid, a: &Account, used_now: bool) {
    spi_cache::update(
        client,
        WRITE_ACCOUNT_SQL,
        None,
        &account_args(id, a, used_now),
    )
    .or_raise();
}

const LOCK_ACCOUNT_SQL: &str = concat!(
    "SELECT ",
    account_cols!(),
    " FROM quota.pool_accounts WHERE account_id = $1 FOR UPDATE"
);

/// The account, locked for this transaction; P0002 when unknown.
fn lock_account(client: &mut SpiClient, id: Uuid) -> Row {
    let t = spi_cache::update(client, LOCK_ACCOUNT_SQL, Some(1), &[id.into()]).or_raise();
    match t.into_iter().next() {
        Some(row) => read_row(&row),
        None => raise(account_not_found(id)),
    }
}

fn account_not_found(id: Uuid) -> QuotaError {
    QuotaError::not_found(format!("pool account {id} not found")).with("account_id", uuid_text(&id))
}

fn provider_not_found(id: Uuid) -> QuotaError {
    QuotaError::not_found(format!("provider {id} not found")).with("provider_id", uuid_text(&id))
}

struct Provider {
    strategy: Strategy,
    active: bool,
    limits: Limits,
}

const PROVIDER_SQL: &str = "SELECT strategy, active, rpm, rph, rpd, tpm, tpd, concurrent
                              FROM quota.providers WHERE provider_id = $1";

fn read_provider(client: &SpiClient, id: Uuid) -> Provider {
    let t = spi_cache::select(client, PROVIDER_SQL, Some(1), &[id.into()]).or_raise();
    let Some(row) = t.into_iter().next() else {
        raise(provider_not_found(id));
    };
    let mut limits = Limits::default();
    for (i, lt) in LimitType::ALL.iter().enumerate() {
        limits.set(*lt, int_at(&row, 3 + i));
    }
    Provider {
        strategy: Strategy::parse(&row.get::<String>(1).or_raise().unwrap_or_default()).or_raise(),
        active: row.get::<bool>(2).or_raise().unwrap_or(false),
        limits,
    }
}

/// The JSON of one row (the first column of `sql`, keyed by `$1`), or the not-found error.
fn row_json(client: &SpiClient, sql: &str, id: Uuid, missing: fn(Uuid) -> QuotaError) -> Value {
    let t = client.select(sql, Some(1), &[id.into()]).or_raise();
    match t.into_iter().next() {
        Some(row) => row
            .get::<JsonB>(1)
            .or_raise()
            .map(|j| j.0)
            .unwrap_or(Value::Null),
        None => raise(missing(id)),
    }
}

fn account_json(client: &SpiClient, id: Uuid) -> Value {
    row_json(
        client,
        "SELECT quota._pool_account_json(a) FROM quota.pool_accounts a WHERE a.account_id = $1",
        id,
        account_not_found,
    )
}

fn provider_json(client: &SpiClient, id: Uuid) -> Value {
    row_json(
        client,
        "SELECT quota._provider_json(p) FROM quota.providers p WHERE p.provider_id = $1",
        id,
        provider_not_found,
    )
}

/// An audit row of an admin change, by the calling role.
fn record(
    client: &mut SpiClient,
    action: &str,
    subject: &str,
    before: Option<Value>,
    after: Option<Value>,
) {
    audit::record(
        client,
        &audit::actor_or_role(None),
        action,
        subject,
        before,
        after,
    );
}

fn object<'a>(v: &'a Value, what: &str) -> &'a Map<String, Value> {
    v.as_object().unwrap_or_else(|| {
        raise(QuotaError::invalid(format!("{what} must be a JSON object")).with("field", what))
    })
}

fn check_keys(m: &Map<String, Value>, allowed: &[&str], what: &str) {
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        raise(
            QuotaError::invalid(format!(
                "unknown field '{k}' in {what} (allowed: {})",
                allowed.join(", ")
            ))
            .with("field", k.as_str()),
        );
    }
}

fn int_field(m: &Map<String, Value>, key: &str) -> Option<i64> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().unwrap_or_else(|| {
            raise(QuotaError::invalid(format!("{key} must be an integer")).with("field", key))
        })),
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_str().unwrap_or_else(|| {
            raise(QuotaError::invalid(format!("{key} must be a string")).with("field", key))
        })),
    }
}

fn bool_field(m: &Map<String, Value>, key: &str) -> Option<bool> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_bool().unwrap_or_else(|| {
            raise(QuotaError::invalid(format!("{key} must be true or false")).with("field", key))
        })),
    }
}

/// A timestamp field (RFC 3339, `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD`, read by PostgreSQL in
/// UTC unless it names an offset), as Unix microseconds.
fn time_field(m: &Map<String, Value>, key: &str) -> Option<i64> {
    let text = str_field(m, key)?;
    let t = quota_core::time::parse_timestamp(key, text).or_raise();
    Some(t.timestamp_micros())
}

// ---------------------------------------------------------------------------------------------
// Providers

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_provider(
    name: Option<&str>,
    strategy: default!(Option<&str>, "'least_used'"),
    limits: default!(Option<JsonB>, "'{}'"),
) -> JsonB {
    let name = pool::validate_name("name", required(name, "name")).or_raise();
    let strategy = Strategy::parse(strategy.unwrap_or("least_used")).or_raise();
    let mut l = Limits::default();
    l.apply_json(&limits.map(|j| j.0).unwrap_or_else(|| json!({})))
        .or_raise();
    Spi::connect_mut(|client| {
        let t = client
            .update(
                "INSERT INTO quota.providers (name, strategy, rpm, rph, rpd, tpm, tpd, concurrent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT ON CONSTRAINT providers_name_key DO NOTHING
                 RETURNING provider_id",
                Some(1),
                &[
                    name.as_str().into(),
                    strategy.as_str().into(),
                    l.rpm.into(),
                    l.rph.into(),
                    l.rpd.into(),
                    l.tpm.into(),
                    l.tpd.into(),
                    l.concurrent.into(),
                ],
            )
            .or_raise();
        let Some(id) = t
            .into_iter()
            .next()
            .and_then(|r| r.get::<Uuid>(1).or_raise())
        else {
            raise(
                QuotaError::new(
                    ErrorKind::Duplicate,
                    format!("a provider named '{name}' already exists"),
                )
                .with("field", "name")
                .with("name", name.as_str()),
            );
        };
        let j = provider_json(client, id);
        record(
            client,
            "create_provider",
            &format!("provider:{id}"),
            None,
            Some(j.clone()),
        );
        JsonB(j)
    })
}

fn save_provider(
    client: &mut SpiClient,
    id: Uuid,
    name: &str,
    strategy: Strategy,
    active: bool,
    l: &Limits,
) {
    let t = client
        .update(
            "UPDATE quota.providers SET name = $2, strategy = $3, active = $4, rpm = $5, rph = $6,
                    rpd = $7, tpm = $8, tpd = $9, concurrent = $10, updated_at = now()
              WHERE provider_id = $1
                AND NOT EXISTS (SELECT 1 FROM quota.providers o WHERE o.name = $2 AND o.provider_id <> $1)
             RETURNING provider_id",
            Some(1),
            &[
                id.into(),
                name.into(),
                strategy.as_str().into(),
                active.into(),
                l.rpm.into(),
                l.rph.into(),
                l.rpd.into(),
                l.tpm.into(),
                l.tpd.into(),
                l.concurrent.into(),
            ],
        )
        .or_raise();
    if t.is_empty() {
        raise(
            QuotaError::new(
                ErrorKind::Duplicate,
                format!("a provider named '{name}' already exists"),
            )
            .with("field", "name")
            .with("name", name),
        );
    }
}

/// The provider locked for a change: (name, strategy, active, limits).
fn lock_provider(client: &mut SpiClient, id: Uuid) -> (String, Strategy, bool, Limits) {
    let t = client
        .update(
            "SELECT name, strategy, active, rpm, rph, rpd, tpm, tpd, concurrent
               FROM quota.providers WHERE provider_id = $1 FOR UPDATE",
            Some(1),
            &[id.into()],
        )
        .or_raise();
    let Some(row) = t.into_iter().next() else {
        raise(provider_not_found(id));
    };
    let mut l = Limits::default();
    for (i, lt) in LimitType::ALL.iter().enumerate() {
        l.set(*lt, int_at(&row, 4 + i));
    }
    (
        row.get::<String>(1).or_raise().unwrap_or_default(),
        Strategy::parse(&row.get::<String>(2).or_raise().unwrap_or_default()).or_raise(),
        row.get::<bool>(3).or_raise().unwrap_or(true),
        l,
    )
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_provider(provider_id: Option<Uuid>, patch: Option<JsonB>) -> JsonB {
    let id = required(provider_id, "provider_id");
    let patch = required(patch, "patch").0;
    let m = object(&patch, "patch").clone();
    check_keys(
        &m,
        &["name", "strategy", "active", "limits"],
        "a provider patch",
    );
    change_provider(id, &m, "update_provider")
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn set_provider_limit(
    provider_id: Option<Uuid>,
    limit_type: Option<&str>,
    limit_value: Option<i64>,
) -> JsonB {
    let id = required(provider_id, "provider_id");
    let lt = LimitType::parse(required(limit_type, "limit_type")).or_raise();
    let mut limits = Map::new();
    limits.insert(
        lt.as_str().to_string(),
        limit_value.map_or(Value::Null, Value::from),
    );
    let mut m = Map::new();
    m.insert("limits".to_string(), Value::Object(limits));
    change_provider(id, &m, "set_provider_limit")
}

/// Applies a provider patch (name, strategy, active, limits) to the locked provider; audited.
fn change_provider(id: Uuid, m: &Map<String, Value>, action: &str) -> JsonB {
    Spi::connect_mut(|client| {
        let before = provider_json(client, id);
        let (mut name, mut strategy, mut active, mut l) = lock_provider(client, id);
        if let Some(n) = m.get("name") {
            let n = n.as_str().unwrap_or_else(|| {
                raise(QuotaError::invalid("name must be a string").with("field", "name"))
            });
            name = pool::validate_name("name", n).or_raise();
        }
        if let Some(s) = str_field(m, "strategy") {
            strategy = Strategy::parse(s).or_raise();
        }
        if let Some(a) = bool_field(m, "active") {
            active = a;
        }
        if let Some(lj) = m.get("limits") {
            l.apply_json(lj).or_raise();
        }
        save_provider(client, id, &name, strategy, active, &l);
        let j = provider_json(client, id);
        record(
            client,
            action,
            &format!("provider:{id}"),
            Some(before),
            Some(j.clone()),
        );
        JsonB(j)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_provider(provider_id: Option<Uuid>) -> JsonB {
    let id = required(provider_id, "provider_id");
    Spi::connect_mut(|client| {
        let before = provider_json(client, id);
        lock_provider(client, id);
        let accounts = before["accounts"].as_i64().unwrap_or(0);
        if accounts > 0 {
            raise(
                QuotaError::new(
                    ErrorKind::InUse,
                    format!(
                        "provider {id} still has {accounts} pool account(s); delete them first"
                    ),
                )
                .with("provider_id", uuid_text(&id))
                .with("accounts", accounts),
            );
        }
        client
            .update(
                "DELETE FROM quota.providers WHERE provider_id = $1",
                None,
                &[id.into()],
            )
            .or_raise();
        record(
            client,
            "delete_provider",
            &format!("provider:{id}"),
            Some(before),
            None,
        );
        JsonB(json!({"deleted": true, "provider_id": uuid_text(&id)}))
    })
}

// ---------------------------------------------------------------------------------------------
// Accounts

const ACCOUNT_OPTIONS: &[&str] = &[
    "user_id",
    "name",
    "quota_limit",
    "period_s",
    "active",
    "expires_at",
    "last_reset",
];

/// Validated account options (None = not given).
#[derive(Default)]
struct AccountOptions {
    user_id: Option<Option<String>>,
    name: Option<Option<String>>,
    quota_limit: Option<i64>,
    period_s: Option<i64>,
    active: Option<bool>,
    expires_at: Option<Option<i64>>,
    last_reset: Option<i64>,
}

fn account_options(m: &Map<String, Value>) -> AccountOptions {
    let text = |key: &str| -> Option<Option<String>> {
        m.get(key).map(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(pool::validate_name(key, s).or_raise()),
            _ => raise(QuotaError::invalid(format!("{key} must be a string")).with("field", key)),
        })
    };
    AccountOptions {
        user_id: text("user_id"),
        name: text("name"),
        quota_limit: int_field(m, "quota_limit")
            .map(|v| pool::validate_tokens("quota_limit", v).or_raise()),
        period_s: int_field(m, "period_s").map(|v| pool::validate_period_s(v).or_raise()),
        active: bool_field(m, "active"),
        expires_at: m.get("expires_at").map(|v| match v {
            Value::Null => None,
            _ => time_field(m, "expires_at"),
        }),
        last_reset: time_field(m, "last_reset"),
    }
}

fn seal(account_id: Uuid, credentials: &Value) -> Vec<u8> {
    if !credentials.is_object() {
        raise(
            QuotaError::invalid("credentials must be a JSON object").with("field", "credentials"),
        );
    }
    crypto::encrypt(&uuid_text(&account_id), credentials.to_string().as_bytes()).or_raise()
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_pool_account(
    provider_id: Option<Uuid>,
    credentials: Option<JsonB>,
    options: default!(Option<JsonB>, "'{}'"),
) -> JsonB {
    let provider_id = required(provider_id, "provider_id");
    let credentials = required(credentials, "credentials").0;
    let options = options.map(|j| j.0).unwrap_or_else(|| json!({}));
    let m = object(&options, "options").clone();
    check_keys(&m, ACCOUNT_OPTIONS, "account options");
    Spi::connect_mut(|client| {
        let o = account_options(&m);
        // The provider must exist (and stays while this transaction runs).
        let t = client
            .update(
                "SELECT 1 FROM quota.providers WHERE provider_id = $1 FOR KEY SHARE",
                Some(1),
                &[provider_id.into()],
            )
            .or_raise();
        if t.is_empty() {
            raise(provider_not_found(provider_id));
        }
        let id = client
            .update("SELECT gen_random_uuid()", Some(1), &[])
            .or_raise()
            .first()
            .get_one::<Uuid>()
            .or_raise()
            .expect("uuid");
        let sealed = seal(id, &credentials);
        let now = now_us(client);
        client
            .update(
                "INSERT INTO quota.pool_accounts (account_id, provider_id, user_id, name, credentials,
                        quota_limit, period_s, active, expires_at, last_reset)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                None,
                &[
                    id.into(),
                    provider_id.into(),
                    o.user_id.flatten().into(),
                    o.name.flatten().into(),
                    sealed.into(),
                    o.quota_limit.unwrap_or(0).into(),
                    (o.period_s.unwrap_or(pool::PERIOD_S_DEFAULT) as i32).into(),
                    o.active.unwrap_or(true).into(),
                    o.expires_at.flatten().map(to_ts).into(),
                    to_ts(o.last_reset.unwrap_or(now)).into(),
                ],
            )
            .or_raise();
        let j = account_json(client, id);
        record(
            client,
            "create_pool_account",
            &format!("pool_account:{id}"),
            None,
            Some(j.clone()),
        );
        JsonB(j)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_pool_account(account_id: Option<Uuid>, patch: Option<JsonB>) -> JsonB {
    let id = required(account_id, "account_id");
    let patch = required(patch, "patch").0;
    let m = object(&patch, "patch").clone();
    let mut allowed = ACCOUNT_OPTIONS.to_vec();
    allowed.push("credentials");
    check_keys(&m, &allowed, "an account patch");
    Spi::connect_mut(|client| {
        let o = account_options(&m);
        lock_account(client, id);
        let before = account_json(client, id);
        let sealed = m.get("credentials").map(|c| seal(id, c));
        client
            .update(
                "UPDATE quota.pool_accounts SET
                    user_id = CASE WHEN $2 THEN $3 ELSE user_id END,
                    name = CASE WHEN $4 THEN $5 ELSE name END,
                    quota_limit = coalesce($6, quota_limit),
                    period_s = coalesce($7, period_s),
                    active = coalesce($8, active),
                    expires_at = CASE WHEN $9 THEN $10 ELSE expires_at END,
                    last_reset = coalesce($11, last_reset),
                    credentials = coalesce($12, credentials),
                    updated_at = now()
                  WHERE account_id = $1",
                None,
                &[
                    id.into(),
                    o.user_id.is_some().into(),
                    o.user_id.clone().flatten().into(),
                    o.name.is_some().into(),
                    o.name.clone().flatten().into(),
                    o.quota_limit.into(),
                    o.period_s.map(|p| p as i32).into(),
                    o.active.into(),
                    o.expires_at.is_some().into(),
                    o.expires_at.flatten().map(to_ts).into(),
                    o.last_reset.map(to_ts).into(),
                    sealed.into(),
                ],
            )
            .or_raise();
        let j = account_json(client, id);
        let mut audited = j.clone();
        if m.contains_key("credentials") {
            audited["credentials_changed"] = json!(true);
        }
        record(
            client,
            "update_pool_account",
            &format!("pool_account:{id}"),
            Some(before),
            Some(audited),
        );
        JsonB(j)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_pool_account(account_id: Option<Uuid>) -> JsonB {
    let id = required(account_id, "account_id");
    Spi::connect_mut(|client| {
        lock_account(client, id);
        let before = account_json(client, id);
        client
            .update(
                "DELETE FROM quota.pool_accounts WHERE account_id = $1",
                None,
                &[id.into()],
            )
            .or_raise();
        record(
            client,
            "delete_pool_account",
            &format!("pool_account:{id}"),
            Some(before),
            None,
        );
        JsonB(json!({"deleted": true, "account_id": uuid_text(&id)}))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn reset_pool_account(account_id: Option<Uuid>) -> JsonB {
    let id = required(account_id, "account_id");
    Spi::connect_mut(|client| {
        let row = lock_account(client, id);
        let before = account_json(client, id);
        let now = now_us(client);
        let mut a = row.account.refreshed(now);
        a.quota_used = 0;
        a.last_reset_us = now;
        write_account(client, id, &a, false);
        let j = account_json(client, id);
        record(
            client,
            "reset_pool_account",
            &format!("pool_account:{id}"),
            Some(before),
            Some(j.clone()),
        );
        JsonB(j)
    })
}

// ---------------------------------------------------------------------------------------------
// Status

fn status_json(row: &Row, now: i64, needed: i64) -> Value {
    let a = row.account.refreshed(now);
    let refusal = a.availability(needed, now).err();
    json!({
        "account_id": uuid_text(&row.account_id),
        "provider_id": uuid_text(&row.provider_id),
        "available": refusal.is_none(),
        "reason": refusal.as_ref().map(Refusal::reason),
        "quota_limit": a.quota_limit,
        "quota_used": a.quota_used,
        "quota_held": a.quota_held,
        "remaining": a.remaining(),
        "usage_percent": (a.usage_percent() * 100.0).round() / 100.0,
        "last_reset": rfc3339(a.last_reset_us),
        "reset_at": rfc3339(a.reset_at_us()),
        "active": a.active,
        "expires_at": a.expires_at_us.map(rfc3339),
        "in_flight": a.in_flight,
    })
}

const READ_ACCOUNT_SQL: &str = concat!(
    "SELECT ",
    account_cols!(),
    " FROM quota.pool_accounts WHERE account_id = $1"
);

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_account_status(account_id: Option<Uuid>) -> JsonB {
    let id = required(account_id, "account_id");
    Spi::connect(|client| {
        let t = client
            .select(READ_ACCOUNT_SQL, Some(1), &[id.into()])
            .or_raise();
        let Some(row) = t.into_iter().next().map(|r| read_row(&r)) else {
            raise(account_not_found(id));
        };
        let now = now_us(client);
        JsonB(status_json(&row, now, 0))
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_status(provider_id: Option<Uuid>) -> JsonB {
    let id = required(provider_id, "provider_id");
    Spi::connect(|client| JsonB(pool_status_json(client, id)))
}

fn pool_status_json(client: &SpiClient, id: Uuid) -> Value {
    let p = provider_json(client, id);
    let now = now_us(client);
    let t = client
        .select(
            concat!(
                "SELECT ",
                account_cols!(),
                ", name FROM quota.pool_accounts WHERE provider_id = $1 ORDER BY created_at, account_id"
            ),
            None,
            &[id.into()],
        )
        .or_raise();
    let (mut total, mut active, mut available, mut quota, mut used, mut in_flight) =
        (0i64, 0i64, 0i64, 0i64, 0i64, 0i64);
    let mut accounts = Vec::new();
    for r in t {
        let row = read_row(&r);
        let name = r.get::<String>(25).or_raise();
        let a = row.account.refreshed(now);
        let refusal = a.availability(0, now).err();
        total += 1;
        active += i64::from(a.active);
        available += i64::from(refusal.is_none());
        quota = quota.saturating_add(a.quota_limit);
        used = used.saturating_add(a.quota_used);
        in_flight += a.in_flight;
        accounts.push(json!({
            "account_id": uuid_text(&row.account_id),
            "name": name,
            "active": a.active,
            "available": refusal.is_none(),
            "reason": refusal.as_ref().map(Refusal::reason),
            "usage_percent": (a.usage_percent() * 100.0).round() / 100.0,
            "quota_used": a.quota_used,
            "quota_limit": a.quota_limit,
            "in_flight": a.in_flight,
            "reset_at": rfc3339(a.reset_at_us()),
            "expires_at": a.expires_at_us.map(rfc3339),
        }));
    }
    let usage = if quota > 0 {
        ((used as f64) * 10000.0 / (quota as f64)).round() / 100.0
    } else {
        0.0
    };
    json!({
        "provider_id": uuid_text(&id),
        "name": p["name"],
        "strategy": p["strategy"],
        "active": p["active"],
        "limits": p["limits"],
        "total_accounts": total,
        "active_accounts": active,
        "available_accounts": available,
        "total_quota": quota,
        "used_quota": used,
        "usage_percent": usage,
        "in_flight": in_flight,
        "accounts": accounts,
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_stats(
    provider_id: Option<Uuid>,
    from_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    to_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> JsonB {
    let id = required(provider_id, "provider_id");
    Spi::connect(|client| {
        let mut j = pool_status_json(client, id);
        let t = client
            .select(
                "WITH period AS (SELECT p[1] AS f, p[2] AS t FROM quota._period($2, $3) p)
                 SELECT period.f, quota._usage(NULL, $1, period.f, period.t),
                        (SELECT coalesce(jsonb_agg(x), '[]') FROM (
                            SELECT coalesce(model, '') AS model, count(*) AS requests,
                                   sum(input_tokens + output_tokens) AS total_tokens,
                                   sum(estimated_cost) AS estimated_cost
                              FROM quota.pool_request_logs
                             WHERE provider_id = $1 AND created_at >= period.f AND created_at < period.t
                             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10) x),
                        (SELECT coalesce(jsonb_agg(x), '[]') FROM (
                            SELECT status_code, coalesce(error, '') AS error, count(*) AS count
                              FROM quota.pool_request_logs
                             WHERE provider_id = $1 AND created_at >= period.f AND created_at < period.t AND NOT success
                             GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 50) x),
                        (SELECT coalesce(jsonb_agg(x ORDER BY x.day), '[]') FROM (
                            SELECT day, sum(requests) AS requests, sum(successes) AS successes,
                                   sum(failures) AS failures, sum(input_tokens) AS input_tokens,
                                   sum(output_tokens) AS output_tokens, sum(estimated_cost) AS estimated_cost
                              FROM quota.pool_daily_stats
                             WHERE provider_id = $1 AND day >= (period.f AT TIME ZONE 'UTC')::date
                               AND day <= (period.t AT TIME ZONE 'UTC')::date
                             GROUP BY day) x)
                 FROM period",
                Some(1),
                &[id.into(), from_at.into(), to_at.into()],
            )
            .or_raise();
        let row = t.first();
        let get = |i: usize| {
            row.get::<JsonB>(i)
                .or_raise()
                .map(|j| j.0)
                .unwrap_or(Value::Null)
        };
        j["usage"] = get(2);
        j["top_models"] = get(3);
        j["errors"] = get(4);
        j["daily"] = get(5);
        JsonB(j)
    })
}

// ---------------------------------------------------------------------------------------------
// Admission

/// Expires the account's held leases past their expiry (the account is locked by the caller);
/// returns the account with their holds and in_flight freed.
fn expire_account_leases(client: &mut SpiClient, id: Uuid, mut a: Account, now: i64) -> Account {
    let t = spi_cache::update(
        client,
        "UPDATE quota.pool_leases SET status = 'expired', ended_at = $2
          WHERE account_id = $1 AND status = 'held' AND expires_at <= $2
         RETURNING tokens_needed",
        None,
        &[id.into(), to_ts(now).into()],
    )
    .or_raise();
    for row in t {
        a = pool::expire_lease(&a, int_at(&row, 1));
    }
    a
}

struct Lease {
    lease_id: Uuid,
    expires_at_us: i64,
}

/// An admission: the account row as read (its sealed credentials), its new state, the lease.
struct Admission(Row, Account, Lease);

/// What an admission writes besides the account: its lease.
struct LeaseSpec<'a> {
    provider_id: Uuid,
    needed: i64,
    model: Option<&'a str>,
    user_id: Option<&'a str>,
    ttl_s: i64,
    now: i64,
}

fn insert_lease(
    client: &mut SpiClient,
    id: Uuid,
    spec: &LeaseSpec,
    admitted: &pool::Admitted,
) -> Lease {
    let expires = spec.now + spec.ttl_s * 1_000_000;
    let lease_id = spi_cache::update(
        client,
        "INSERT INTO quota.pool_leases (account_id, provider_id, tokens_needed, model, user_id,
                minute_start, day_start, acquired_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING lease_id",
        Some(1),
        &[
            id.into(),
            spec.provider_id.into(),
            spec.needed.into(),
            spec.model.into(),
            spec.user_id.into(),
            to_ts(admitted.minute_start_us).into(),
            to_ts(admitted.day_start_us).into(),
            to_ts(spec.now).into(),
            to_ts(expires).into(),
        ],
    )
    .or_raise()
    .first()
    .get_one::<Uuid>()
    .or_raise()
    .expect("lease id");
    Lease {
        lease_id,
        expires_at_us: expires,
    }
}

/// The locked try (in a subtransaction, by the caller): the account locked, its leases past
/// expiry expired when it is at its concurrency limit, then the decision on the locked row.
fn try_account(id: Uuid, limits: &Limits, spec: &LeaseSpec) -> Result<Admission, Refusal> {
    Spi::connect_mut(|client| {
        let row = lock_account(client, id);
        let mut a = row.account.clone();
        if !a.active {
            return Err(Refusal::Inactive);
        }
        if limits.concurrent > 0 && a.in_flight >= limits.concurrent {
            a = expire_account_leases(client, id, a, spec.now);
        }
        let admitted = pool::admit(&a, limits, spec.needed, spec.now)?;
        write_account(client, id, &admitted.account, true);
        let lease = insert_lease(client, id, spec, &admitted);
        Ok(Admission(row, admitted.account, lease))
    })
}

const REREAD_SQL: &str = concat!(
    "SELECT ",
    account_cols!(),
    ", xmin::text FROM quota.pool_accounts WHERE account_id = $1"
);

/// Optimistic tries before the locked one.
const CAS_TRIES: usize = 16;

/// The optimistic try: decide on the row as read and write it only if it is still that version
/// (xmin); when another transaction changed it first, read it again and decide again. A refused
/// account is never locked. None: take the locked path (the account is at its concurrency limit,
/// where leases past expiry must be expired under the lock first, or it kept changing).
fn try_optimistic(
    mut row: Row,
    mut xmin: String,
    limits: &Limits,
    spec: &LeaseSpec,
) -> Option<Result<Admission, Refusal>> {
    let id = row.account_id;
    Spi::connect_mut(|client| {
        for _ in 0..CAS_TRIES {
            match pool::admit(&row.account, limits, spec.needed, spec.now) {
                Ok(admitted) => {
                    let mut args = account_args(id, &admitted.account, true);
                    args.push(xmin.as_str().into());
                    let written = !spi_cache::update(client, CAS_ACCOUNT_SQL, Some(1), &args)
                        .or_raise()
                        .is_empty();
                    if written {
                        let lease = insert_lease(client, id, spec, &admitted);
                        return Some(Ok(Admission(row, admitted.account, lease)));
                    }
                    // Changed since it was read (the write waited for that transaction and
                    // found another version): read the latest committed version.
                    let t = spi_cache::update(client, REREAD_SQL, Some(1), &[id.into()]).or_raise();
                    let Some(r) = t.into_iter().next() else {
                        return Some(Err(Refusal::Inactive));
                    };
                    xmin = r.get::<String>(25).or_raise().unwrap_or_default();
                    row = read_row(&r);
                }
                Err(Refusal::Rate {
                    limit_type: LimitType::Concurrent,
                    ..
                }) => return None,
                Err(refusal) => return Some(Err(refusal)),
            }
        }
        None
    })
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: pg_strong_random writes exactly `len` bytes into the buffer we own.
    unsafe { pg_sys::pg_strong_random(b.as_mut_ptr().cast(), b.len()) };
    u64::from_le_bytes(b)
}

const CANDIDATES_SQL: &str = concat!(
    "SELECT ",
    account_cols!(),
    ", xmin::text FROM quota.pool_accounts WHERE provider_id = $1 AND active
       AND (expires_at IS NULL OR expires_at > $2) ORDER BY account_id"
);

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_acquire(
    provider_id: Option<Uuid>,
    tokens_needed: Option<i64>,
    model: default!(Option<&str>, "NULL"),
    strategy: default!(Option<&str>, "NULL"),
    lease_ttl_s: default!(Option<i32>, "300"),
    user_id: default!(Option<&str>, "NULL"),
) -> JsonB {
    let provider_id = required(provider_id, "provider_id");
    let needed =
        pool::validate_tokens("tokens_needed", required(tokens_needed, "tokens_needed")).or_raise();
    let ttl_s = pool::validate_lease_ttl_s(i64::from(lease_ttl_s.unwrap_or(300))).or_raise();
    let asked = strategy.map(|s| Strategy::parse(s).or_raise());
    let (provider, now, candidates, cursor) = Spi::connect_mut(|client| {
        let provider = read_provider(client, provider_id);
        let now = now_us(client);
        let strategy = asked.unwrap_or(provider.strategy);
        let candidates: Vec<(Row, String)> = if provider.active {
            spi_cache::select(
                client,
                CANDIDATES_SQL,
                None,
                &[provider_id.into(), to_ts(now).into()],
            )
            .or_raise()
            .map(|r| {
                (
                    read_row(&r),
                    r.get::<String>(25).or_raise().unwrap_or_default(),
                )
            })
            .collect()
        } else {
            Vec::new()
        };
        let cursor = if strategy == Strategy::RoundRobin && !candidates.is_empty() {
            spi_cache::update(
                client,
                "UPDATE quota.providers SET rr_cursor = rr_cursor + 1 WHERE provider_id = $1 RETURNING rr_cursor - 1",
                Some(1),
                &[provider_id.into()],
            )
            .or_raise()
            .first()
            .get_one::<i64>()
            .or_raise()
            .unwrap_or(0) as u64
        } else {
            0
        };
        (provider, now, candidates, cursor)
    });
    let strategy = asked.unwrap_or(provider.strategy);
    let states: Vec<Account> = candidates.iter().map(|(r, _)| r.account.clone()).collect();
    let seed = if strategy == Strategy::Random {
        random_u64()
    } else {
        0
    };
    let order = pool::rank(strategy, &states, &provider.limits, cursor, seed, now);
    let mut refusals = Vec::new();
    let mut exhausted = Vec::new();
    let spec = LeaseSpec {
        provider_id,
        needed,
        model,
        user_id,
        ttl_s,
        now,
    };
    let mut candidates: Vec<Option<(Row, String)>> = candidates.into_iter().map(Some).collect();
    for i in order {
        let (row, xmin) = candidates[i].take().expect("each candidate is tried once");
        let id = row.account_id;
        let attempt = match try_optimistic(row, xmin, &provider.limits, &spec) {
            Some(result) => Ok(result),
            None => subxact::attempt(|| try_account(id, &provider.limits, &spec)),
        };
        match attempt {
            Ok(Ok(Admission(row, account, lease))) => {
                let credentials = crypto::decrypt(&uuid_text(&id), &row.credentials).or_raise();
                let credentials: Value =
                    serde_json::from_slice(&credentials).unwrap_or(Value::Null);
                return JsonB(json!({
                    "admitted": true,
                    "lease_id": uuid_text(&lease.lease_id),
                    "account_id": uuid_text(&id),
                    "provider_id": uuid_text(&provider_id),
                    "credentials": credentials,
                    "strategy": strategy.as_str(),
                    "tokens_needed": needed,
                    "lease_expires_at": rfc3339(lease.expires_at_us),
                    "quota_limit": account.quota_limit,
                    "quota_used": account.quota_used,
                    "reset_at": rfc3339(account.reset_at_us()),
                }));
            }
            Ok(Err(refusal)) => {
                if matches!(refusal, Refusal::Quota { .. }) {
                    exhausted.push(id);
                }
                refusals.push((id, refusal));
            }
            Err(failure) => {
                pgrx::error!("pg_quota: pool_acquire failed on account {id}: {failure}")
            }
        }
    }
    Spi::connect_mut(|client| refuse(client, provider_id, &refusals, exhausted, needed, now))
}

/// The pool's refusal: hit counters, exhausted alerts (once per window), the SPEC 5 body.
fn refuse(
    client: &mut SpiClient,
    provider_id: Uuid,
    refusals: &[(Uuid, Refusal)],
    mut exhausted: Vec<Uuid>,
    needed: i64,
    now: i64,
) -> JsonB {
    let only: Vec<Refusal> = refusals.iter().map(|(_, r)| r.clone()).collect();
    let answer = pool::pool_refusal(&only);
    let account_of = |pred: &dyn Fn(&Refusal) -> bool| {
        refusals
            .iter()
            .find(|(_, r)| pred(r))
            .map(|(id, _)| uuid_text(id))
    };
    let (label, body) = match &answer {
        PoolRefusal::NoAccount => (
            "no_account",
            json!({"admitted": false, "error": "no_account_available", "message": "Service temporarily unavailable"}),
        ),
        PoolRefusal::Quota { reset_at_us } => (
            "quota",
            json!({"admitted": false, "error": "quota_exceeded", "message": "Quota limit reached",
                   "reset_at": rfc3339(*reset_at_us),
                   "account_id": account_of(&|r| matches!(r, Refusal::Quota { reset_at_us: x } if x == reset_at_us))}),
        ),
        PoolRefusal::Rate {
            limit_type,
            retry_after_s,
        } => (
            limit_type.as_str(),
            json!({"admitted": false, "error": "rate_limit_exceeded", "message": "Rate limit exceeded",
                   "retry_after": retry_after_s, "limit_type": limit_type.as_str(),
                   "account_id": account_of(&|r| matches!(r, Refusal::Rate { limit_type: l, .. } if l == limit_type))}),
        ),
    };
    spi_cache::update(
        client,
        "SELECT quota._count_pool($1, 'refused', $2)",
        None,
        &[provider_id.into(), label.into()],
    )
    .or_raise();
    // Exhausted alerts, once per quota window, in account order (a stable lock order).
    exhausted.sort_by_key(uuid_text);
    let threshold = gucs::warning_threshold();
    for id in exhausted {
        let row = lock_account(client, id);
        let a = row.account.refreshed(now);
        if !matches!(a.availability(needed, now), Err(Refusal::Quota { .. })) {
            continue;
        }
        if let Some(marked) = pool::exhausted_alert(&a) {
            write_account(client, id, &marked, false);
            client
                .update(
                    "SELECT quota._raise_pool_alert('exhausted', $1, $2)",
                    None,
                    &[id.into(), threshold.into()],
                )
                .or_raise();
        }
    }
    JsonB(body)
}

const LEASE_SQL: &str = "SELECT tokens_needed, minute_start, day_start, status
                           FROM quota.pool_leases WHERE lease_id = $1 AND account_id = $2 FOR UPDATE";

const RELEASE_KEYS: &[&str] = &[
    "input_tokens",
    "output_tokens",
    "status_code",
    "latency_ms",
    "success",
    "error",
    "model",
    "estimated_cost",
    "method",
    "endpoint",
    "user_id",
];

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_release(
    account_id: Option<Uuid>,
    lease_id: Option<Uuid>,
    usage: default!(Option<JsonB>, "'{}'"),
) -> JsonB {
    let id = required(account_id, "account_id");
    let lease_id = required(lease_id, "lease_id");
    let usage = usage.map(|j| j.0).unwrap_or_else(|| json!({}));
    let m = object(&usage, "usage").clone();
    check_keys(&m, RELEASE_KEYS, "a release");
    let input = pool::validate_tokens("input_tokens", int_field(&m, "input_tokens").unwrap_or(0))
        .or_raise();
    let output =
        pool::validate_tokens("output_tokens", int_field(&m, "output_tokens").unwrap_or(0))
            .or_raise();
    let status_code = int_field(&m, "status_code").unwrap_or(200);
    if !(100..=599).contains(&status_code) {
        raise(
            QuotaError::invalid(format!(
                "status_code must be between 100 and 599, got {status_code}"
            ))
            .with("field", "status_code"),
        );
    }
    let latency_ms =
        pool::validate_tokens("latency_ms", int_field(&m, "latency_ms").unwrap_or(0)).or_raise();
    let success = bool_field(&m, "success").unwrap_or(status_code < 400);
    let cost = match m.get("estimated_cost") {
        None | Some(Value::Null) => 0.0,
        Some(v) => match v.as_f64() {
            Some(c) if c.is_finite() && c >= 0.0 => c,
            _ => raise(
                QuotaError::invalid("estimated_cost must be a non-negative number")
                    .with("field", "estimated_cost"),
            ),
        },
    };
    let text = |k: &str| str_field(&m, k).map(|s| s.chars().take(1000).collect::<String>());
    let used = input.saturating_add(output);
    Spi::connect_mut(|client| {
        let row = lock_account(client, id);
        let t =
            spi_cache::update(client, LEASE_SQL, Some(1), &[lease_id.into(), id.into()]).or_raise();
        let Some(l) = t.into_iter().next() else {
            raise(
                QuotaError::not_found(format!("lease {lease_id} of pool account {id} not found"))
                    .with("lease_id", uuid_text(&lease_id))
                    .with("account_id", uuid_text(&id)),
            );
        };
        let needed = int_at(&l, 1);
        let minute_start = ts_at(&l, 2).unwrap_or(0);
        let day_start = ts_at(&l, 3).unwrap_or(0);
        let status = l.get::<String>(4).or_raise().unwrap_or_default();
        if status == "released" {
            raise(
                QuotaError::new(
                    ErrorKind::LeaseNotHeld,
                    format!("lease {lease_id} was already released"),
                )
                .with("lease_id", uuid_text(&lease_id))
                .with("status", status.as_str()),
            );
        }
        let held = status == "held";
        let now = now_us(client);
        let lease = LeaseEnd {
            tokens_needed: needed,
            minute_start_us: minute_start,
            day_start_us: day_start,
            held,
        };
        let (a, alert) = pool::release(
            &row.account,
            &lease,
            used,
            success,
            gucs::warning_threshold(),
            now,
        );
        write_account(client, id, &a, false);
        // The lease ends, its request is logged and counted: one statement.
        let log_id = spi_cache::update(
            client,
            "WITH l AS (
                UPDATE quota.pool_leases SET status = 'released', ended_at = $13
                 WHERE lease_id = $1
                RETURNING lease_id, provider_id, account_id, model, user_id),
             r AS (
                INSERT INTO quota.pool_request_logs (lease_id, provider_id, account_id, model, user_id, method,
                        endpoint, status_code, latency_ms, input_tokens, output_tokens, success, error,
                        estimated_cost, created_at)
                SELECT l.lease_id, l.provider_id, l.account_id, coalesce($2, l.model), coalesce($3, l.user_id),
                       $4, $5, $6, $7, $8, $9, $10, $11, $12::float8::numeric, $13
                  FROM l
                RETURNING log_id, provider_id),
             c AS (
                INSERT INTO quota.pool_counters AS c (provider_id, name, label, value)
                SELECT provider_id, 'requests', CASE WHEN $10 THEN 'true' ELSE 'false' END, 1 FROM r
                ON CONFLICT (provider_id, name, label) DO UPDATE SET value = c.value + 1)
             SELECT log_id FROM r",
            Some(1),
            &[
                lease_id.into(),
                text("model").into(),
                text("user_id").into(),
                text("method").into(),
                text("endpoint").into(),
                (status_code as i32).into(),
                latency_ms.into(),
                input.into(),
                output.into(),
                success.into(),
                text("error").into(),
                cost.into(),
                to_ts(now).into(),
            ],
        )
        .or_raise()
        .first()
        .get_one::<i64>()
        .or_raise();
        if alert.is_some() {
            client
                .update(
                    "SELECT quota._raise_pool_alert('warning', $1, $2)",
                    None,
                    &[id.into(), gucs::warning_threshold().into()],
                )
                .or_raise();
        }
        JsonB(json!({
            "released": true,
            "lease_id": uuid_text(&lease_id),
            "account_id": uuid_text(&id),
            "lease_status": if held { "released" } else { "expired" },
            "tokens": used,
            "quota_used": a.quota_used,
            "quota_limit": a.quota_limit,
            "usage_percent": (a.usage_percent() * 100.0).round() / 100.0,
            "request_log_id": log_id,
        }))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_check_availability(account_id: Option<Uuid>, tokens_needed: Option<i64>) -> JsonB {
    let id = required(account_id, "account_id");
    let needed =
        pool::validate_tokens("tokens_needed", required(tokens_needed, "tokens_needed")).or_raise();
    Spi::connect_mut(|client| {
        let row = lock_account(client, id);
        let now = now_us(client);
        let a = row.account.refreshed(now);
        if a != row.account {
            write_account(client, id, &a, false);
        }
        let refusal = a.availability(needed, now).err();
        JsonB(json!({
            "account_id": uuid_text(&id),
            "available": refusal.is_none(),
            "reason": refusal.as_ref().map(Refusal::reason),
            "reset_at": rfc3339(a.reset_at_us()),
            "quota_limit": a.quota_limit,
            "quota_used": a.quota_used,
            "remaining": a.remaining(),
        }))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_consume(account_id: Option<Uuid>, tokens: Option<i64>) -> JsonB {
    let id = required(account_id, "account_id");
    let tokens = pool::validate_tokens("tokens", required(tokens, "tokens")).or_raise();
    Spi::connect_mut(|client| {
        let row = lock_account(client, id);
        let now = now_us(client);
        match pool::consume(&row.account, tokens, gucs::warning_threshold(), now) {
            Ok((a, alert)) => {
                write_account(client, id, &a, true);
                if alert.is_some() {
                    client
                        .update(
                            "SELECT quota._raise_pool_alert('warning', $1, $2)",
                            None,
                            &[id.into(), gucs::warning_threshold().into()],
                        )
                        .or_raise();
                }
                let row = lock_account(client, id);
                JsonB(status_json(&row, now, 0))
            }
            Err(refusal) => {
                let a = row.account.refreshed(now);
                let e = match refusal {
                    Refusal::Quota { reset_at_us } => QuotaError::new(
                        ErrorKind::PoolQuotaExceeded,
                        format!(
                            "pool account {id} has used {} of {} tokens ({} held), {tokens} more would pass its limit",
                            a.quota_used, a.quota_limit, a.quota_held
                        ),
                    )
                    .with("reset_at", rfc3339(reset_at_us)),
                    other => QuotaError::new(
                        ErrorKind::PoolQuotaExceeded,
                        format!("pool account {id} is not available: {}", other.reason()),
                    )
                    .with("reason", other.reason()),
                };
                raise(e.with("account_id", uuid_text(&id)))
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The background worker's part: leases past expiry, due quota resets, daily stats, retention.

/// One sweep (each step at most `batch` rows): returns (leases expired, accounts reset, logs deleted).
pub(crate) fn sweep_impl(batch: i64, aggregate: bool) -> (i64, i64, i64) {
    Spi::connect_mut(|client| {
        let now = now_us(client);
        // Leases past expiry, by account (locked in id order, skipping busy ones: next tick).
        let t = client
            .update(
                "SELECT DISTINCT l.account_id FROM quota.pool_leases l
                  WHERE l.status = 'held' AND l.expires_at <= $1
                  ORDER BY 1 LIMIT $2",
                None,
                &[to_ts(now).into(), batch.into()],
            )
            .or_raise();
        let ids: Vec<Uuid> = t
            .into_iter()
            .filter_map(|r| r.get::<Uuid>(1).ok().flatten())
            .collect();
        let mut expired = 0;
        for id in ids {
            let t = client
                .update(
                    concat!(
                        "SELECT ",
                        account_cols!(),
                        " FROM quota.pool_accounts WHERE account_id = $1 FOR UPDATE SKIP LOCKED"
                    ),
                    Some(1),
                    &[id.into()],
                )
                .or_raise();
            let Some(row) = t.into_iter().next().map(|r| read_row(&r)) else {
                continue;
            };
            let before = row.account.clone();
            let a = expire_account_leases(client, id, row.account, now);
            expired += before.in_flight - a.in_flight;
            if a != before {
                write_account(client, id, &a, false);
            }
        }
        // Quota windows that ended (the lazy reset, done ahead for the status and the metrics).
        let t = client
            .update(
                concat!(
                    "SELECT ",
                    account_cols!(),
                    " FROM quota.pool_accounts
                      WHERE quota_used > 0 AND last_reset + make_interval(secs => period_s) <= $1
                      ORDER BY account_id LIMIT $2 FOR UPDATE SKIP LOCKED"
                ),
                None,
                &[to_ts(now).into(), batch.into()],
            )
            .or_raise();
        let rows: Vec<Row> = t.into_iter().map(|r| read_row(&r)).collect();
        let mut reset = 0;
        for row in rows {
            let a = row.account.refreshed(now);
            if a != row.account {
                write_account(client, row.account_id, &a, false);
                reset += 1;
            }
        }
        if aggregate {
            client
                .update(
                    "INSERT INTO quota.pool_daily_stats AS s (day, provider_id, model, requests, successes, failures,
                            input_tokens, output_tokens, estimated_cost, latency_ms_sum, updated_at)
                     SELECT (created_at AT TIME ZONE 'UTC')::date, provider_id, coalesce(model, ''), count(*),
                            count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
                            sum(input_tokens), sum(output_tokens), sum(estimated_cost), sum(latency_ms), now()
                       FROM quota.pool_request_logs
                      WHERE created_at >= (least(($1 AT TIME ZONE 'UTC')::date - 1,
                                                 coalesce((SELECT max(day) FROM quota.pool_daily_stats),
                                                          (SELECT min(created_at) FROM quota.pool_request_logs)
                                                              AT TIME ZONE 'UTC')::date))::timestamp
                                           AT TIME ZONE 'UTC'
                      GROUP BY 1, 2, 3
                     ON CONFLICT (day, provider_id, model) DO UPDATE SET
                        requests = excluded.requests, successes = excluded.successes, failures = excluded.failures,
                        input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
                        estimated_cost = excluded.estimated_cost, latency_ms_sum = excluded.latency_ms_sum,
                        updated_at = now()",
                    None,
                    &[to_ts(now).into()],
                )
                .or_raise();
        }
        let mut deleted = 0;
        let retention = gucs::log_retention_s();
        if retention > 0 {
            let cutoff = to_ts(now - retention * 1_000_000);
            deleted = client
                .update(
                    "WITH old AS (SELECT log_id FROM quota.pool_request_logs WHERE created_at < $1
                                   ORDER BY created_at LIMIT $2)
                     DELETE FROM quota.pool_request_logs l USING old WHERE l.log_id = old.log_id",
                    None,
                    &[cutoff.into(), batch.into()],
                )
                .or_raise()
                .len() as i64;
            client
                .update(
                    "WITH old AS (SELECT lease_id FROM quota.pool_leases WHERE status <> 'held' AND ended_at < $1
                                   ORDER BY ended_at LIMIT $2)
                     DELETE FROM quota.pool_leases l USING old WHERE l.lease_id = old.lease_id",
                    None,
                    &[cutoff.into(), batch.into()],
                )
                .or_raise();
        }
        (expired, reset, deleted)
    })
}

/// The worker's pool sweep by hand (tests, or a DBA with the worker off): expires leases, applies
/// due quota resets, aggregates daily stats and enforces log retention.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn pool_sweep(
    max_count: default!(Option<i32>, "1000"),
) -> TableIterator<
    'static,
    (
        name!(leases_expired, i64),
        name!(accounts_reset, i64),
        name!(logs_deleted, i64),
    ),
> {
    let batch = i64::from(max_count.unwrap_or(1000)).clamp(1, 1_000_000);
    let (a, b, c) = sweep_impl(batch, true);
    TableIterator::once((a, b, c))
}
