//! Access tokens (seed 001, SPEC 4): create, update (the type conversions and quota operations of
//! `quota_core::token`), read, list, logs, deactivate, and the hot path `quota.verify_token`:
//! exists and active, not expired, rate limit (shared memory, `crate::ratelimit`), then the
//! count quota in one conditional UPDATE with its log row.

use crate::error::{raise, required, OrRaise};
use crate::ratelimit::{now_us, with_table};
use crate::{audit, read, spi_cache};
use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use pgrx::JsonB;
use quota_core::ids::{validate_id, validate_page};
use quota_core::ratelimit::{ceil_s, find_slot, Decision, Limits, Pushed};
use quota_core::time::parse_timestamp;
use quota_core::token::{
    self as rules, Operation, QuotaType, TokenCreate, TokenState, TokenUpdate,
};
use quota_core::QuotaError;
use serde_json::{json, Value};

const TOKEN_PREFIX: &str = "flow_";
const TOKEN_HEX_LEN: usize = 64;
const REQUEST_ID_LEN_MAX: usize = 255;

/// Whether a string can be a token at all (anything else is unknown without a lookup).
fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_PREFIX.len() + TOKEN_HEX_LEN
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

fn unknown_token() -> QuotaError {
    QuotaError::not_found("access token not found").with("field", "access_token")
}

const TOKEN_COLUMNS: &str =
    "token_id, ws_id, email, user_id, quota_type, total_quota, remaining_quota, \
     (extract(epoch FROM expires_at) * 1000000)::int8 AS expires_at_us, operation, active, unlimited, rate_limit_per_minute, \
     rate_limit_burst, rate_limit_window_seconds";

fn ts(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.and_then(DateTime::<Utc>::from_timestamp_micros)
}

fn state_of(row: &SpiHeapTupleData) -> (i64, TokenState) {
    let get_s = |n: &str| row.get_by_name::<String, _>(n).or_raise();
    let get_i = |n: &str| row.get_by_name::<i64, _>(n).or_raise();
    let get_i32 = |n: &str| row.get_by_name::<i32, _>(n).or_raise();
    let get_b = |n: &str| row.get_by_name::<bool, _>(n).or_raise().unwrap_or(false);
    let id = get_i("token_id").unwrap_or_default();
    (
        id,
        TokenState {
            ws_id: get_s("ws_id").unwrap_or_default(),
            email: get_s("email").unwrap_or_default(),
            user_id: get_s("user_id"),
            quota_type: QuotaType::parse(&get_s("quota_type").unwrap_or_default()).or_raise(),
            total_quota: get_i("total_quota"),
            remaining_quota: get_i("remaining_quota"),
            expires_at: ts(get_i("expires_at_us")),
            operation: Operation::parse(&get_s("operation").unwrap_or_default()).or_raise(),
            active: get_b("active"),
            unlimited: get_b("unlimited"),
            rate_limit_per_minute: get_i32("rate_limit_per_minute"),
            rate_limit_burst: get_i32("rate_limit_burst").unwrap_or(10),
            rate_limit_window_seconds: get_i32("rate_limit_window_seconds").unwrap_or(60),
        },
    )
}

/// The token row (locked for update when `lock`), or 404.
fn load(client: &mut SpiClient, token: &str, lock: bool) -> (i64, TokenState) {
    if !well_formed(token) {
        raise(unknown_token());
    }
    let sql = format!(
        "SELECT {TOKEN_COLUMNS} FROM quota.tokens WHERE token_sha256 = sha256(convert_to($1, 'UTF8')){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let t = client
        .update(sql.as_str(), Some(1), &[token.into()])
        .or_raise();
    let Some(row) = t.into_iter().next() else {
        raise(unknown_token());
    };
    state_of(&row)
}

fn token_json(client: &mut SpiClient, token_id: i64) -> Value {
    spi_cache::update(
        client,
        "SELECT quota._token_json(t) FROM quota.tokens t WHERE t.token_id = $1",
        Some(1),
        &[token_id.into()],
    )
    .or_raise()
    .first()
    .get_one::<JsonB>()
    .or_raise()
    .map(|j| j.0)
    .unwrap_or(Value::Null)
}

fn now_utc(client: &mut SpiClient) -> DateTime<Utc> {
    let micros = client
        .update(
            "SELECT (extract(epoch FROM quota.now()) * 1000000)::int8",
            Some(1),
            &[],
        )
        .or_raise()
        .first()
        .get_one::<i64>()
        .or_raise()
        .unwrap_or_default();
    DateTime::<Utc>::from_timestamp_micros(micros).expect("a valid clock")
}

fn write_state(client: &mut SpiClient, token_id: i64, s: &TokenState) {
    client
        .update(
            "UPDATE quota.tokens SET ws_id = $2, email = $3, user_id = $4, quota_type = $5,
                    total_quota = $6, remaining_quota = $7, expires_at = $8::timestamptz,
                    operation = $9, active = $10, unlimited = $11, rate_limit_per_minute = $12,
                    rate_limit_burst = $13, rate_limit_window_seconds = $14, updated_at = now()
              WHERE token_id = $1",
            None,
            &[
                token_id.into(),
                s.ws_id.as_str().into(),
                s.email.as_str().into(),
                s.user_id.as_deref().into(),
                s.quota_type.as_str().into(),
                s.total_quota.into(),
                s.remaining_quota.into(),
                s.expires_at.map(|t| t.to_rfc3339()).into(),
                s.operation.as_str().into(),
                s.active.into(),
                s.unlimited.into(),
                s.rate_limit_per_minute.into(),
                s.rate_limit_burst.into(),
                s.rate_limit_window_seconds.into(),
            ],
        )
        .or_raise();
}

fn log(
    client: &mut SpiClient,
    token_id: i64,
    kind: &str,
    units: Option<i64>,
    s: &TokenState,
    detail: Option<Value>,
) {
    client
        .update(
            "INSERT INTO quota.token_logs (token_id, kind, units, remaining_after, total_after, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
            None,
            &[
                token_id.into(),
                kind.into(),
                units.into(),
                s.remaining_quota.into(),
                s.total_quota.into(),
                detail.map(JsonB).into(),
            ],
        )
        .or_raise();
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_token(request: Option<JsonB>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let request = required(request, "request");
    let req = TokenCreate::parse(request.0).or_raise();
    let actor = audit::actor_or_role(actor);
    let token = crate::users::random_token(TOKEN_PREFIX);
    Spi::connect_mut(|client| {
        let owner_unlimited = match &req.user_id {
            Some(u) => {
                let t = client
                    .update(
                        "SELECT unlimited FROM quota.users WHERE id = $1 FOR KEY SHARE",
                        Some(1),
                        &[u.as_str().into()],
                    )
                    .or_raise();
                let Some(row) = t.into_iter().next() else {
                    raise(
                        QuotaError::not_found(format!("user '{u}' not found"))
                            .with("field", "user_id")
                            .with("user_id", u.as_str()),
                    );
                };
                Some(row.get::<bool>(1).or_raise().unwrap_or(false))
            }
            None => None,
        };
        let now = now_utc(client);
        let s = rules::create(&req, now, owner_unlimited).or_raise();
        let hint = format!("{}...", &token[..TOKEN_PREFIX.len() + 8]);
        let token_id = client
            .update(
                "INSERT INTO quota.tokens (token_sha256, token_hint, ws_id, email, operation)
                 VALUES (sha256(convert_to($1, 'UTF8')), $2, $3, $4, $5) RETURNING token_id",
                Some(1),
                &[
                    token.as_str().into(),
                    hint.as_str().into(),
                    s.ws_id.as_str().into(),
                    s.email.as_str().into(),
                    s.operation.as_str().into(),
                ],
            )
            .or_raise()
            .first()
            .get_one::<i64>()
            .or_raise()
            .expect("identity");
        write_state(client, token_id, &s);
        log(client, token_id, "init", s.total_quota, &s, None);
        let mut j = token_json(client, token_id);
        audit::record(
            client,
            &actor,
            "create_token",
            &format!("token:{token_id}"),
            None,
            Some(j.clone()),
        );
        j["access_token"] = json!(token);
        JsonB(j)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_token(
    access_token: Option<&str>,
    request: Option<JsonB>,
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let token = required(access_token, "access_token");
    let request = required(request, "request");
    let req = TokenUpdate::parse(request.0.clone()).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let (token_id, current) = load(client, token, true);
        let now = now_utc(client);
        let next = rules::update(&current, &req, now).or_raise();
        let old = token_json(client, token_id);
        write_state(client, token_id, &next);
        let quota_changed = next.total_quota != current.total_quota
            || next.remaining_quota != current.remaining_quota;
        let kind = if quota_changed { "recharge" } else { "update" };
        let units = match (next.remaining_quota, current.remaining_quota) {
            (Some(a), b) => Some(a - b.unwrap_or(0)),
            _ => None,
        };
        log(client, token_id, kind, units, &next, Some(request.0));
        let new = token_json(client, token_id);
        audit::record(
            client,
            &actor,
            "update_token",
            &format!("token:{token_id}"),
            Some(old),
            Some(new.clone()),
        );
        JsonB(new)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_token(access_token: Option<&str>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let token = required(access_token, "access_token");
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let (token_id, mut s) = load(client, token, true);
        let old = token_json(client, token_id);
        if s.active {
            s.active = false;
            write_state(client, token_id, &s);
            log(
                client,
                token_id,
                "update",
                None,
                &s,
                Some(json!({ "active": false })),
            );
        }
        let new = token_json(client, token_id);
        audit::record(
            client,
            &actor,
            "delete_token",
            &format!("token:{token_id}"),
            Some(old),
            Some(new.clone()),
        );
        JsonB(new)
    })
}

pub(crate) fn token_id_of(token: &str) -> i64 {
    if !well_formed(token) {
        raise(unknown_token());
    }
    read::one::<i64>(
        "SELECT token_id FROM quota.tokens WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
        &[token.into()],
    )
    .unwrap_or_else(|| raise(unknown_token()))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn token_quota(access_token: &str) -> JsonB {
    let id = token_id_of(access_token);
    read::one::<JsonB>(
        "SELECT jsonb_build_object('quota_type', t.quota_type, 'total_quota', t.total_quota,
                'remaining_quota', t.remaining_quota,
                'consumed_quota', CASE WHEN t.total_quota IS NULL THEN NULL
                                       ELSE greatest(t.total_quota - coalesce(t.remaining_quota, 0), 0) END,
                'expires_at', quota._seed_time(t.expires_at), 'unlimited', t.unlimited, 'active', t.active)
             || CASE WHEN t.quota_type = 'time'
                     THEN jsonb_build_object('message', 'time tokens have no count quota; only expires_at applies')
                     ELSE '{}' END
         FROM quota.tokens t WHERE t.token_id = $1",
        &[id.into()],
    )
    .expect("exists")
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn token_quota_logs(
    access_token: Option<&str>,
    page: default!(Option<i32>, 1),
    page_size: default!(Option<i32>, 20),
    start_date: default!(Option<&str>, "NULL"),
    end_date: default!(Option<&str>, "NULL"),
) -> JsonB {
    let access_token = required(access_token, "access_token");
    let page = required(page, "page");
    let page_size = required(page_size, "page_size");
    if page < 1 {
        raise(
            QuotaError::invalid(format!("page must be at least 1, got {page}"))
                .with("field", "page"),
        );
    }
    if !(1..=100).contains(&page_size) {
        raise(
            QuotaError::invalid(format!(
                "page_size must be between 1 and 100, got {page_size}"
            ))
            .with("field", "page_size"),
        );
    }
    let start = start_date.map(|d| parse_timestamp("start_date", d).or_raise().to_rfc3339());
    let end = end_date.map(|d| parse_timestamp("end_date", d).or_raise().to_rfc3339());
    let id = token_id_of(access_token);
    read::one::<JsonB>(
        "WITH l AS (SELECT * FROM quota.token_logs
                    WHERE token_id = $1
                      AND ($2::timestamptz IS NULL OR created_at >= $2::timestamptz)
                      AND ($3::timestamptz IS NULL OR created_at < $3::timestamptz))
         SELECT jsonb_build_object(
            'logs', coalesce((SELECT jsonb_agg(quota._token_log_json(p) ORDER BY p.created_at DESC, p.log_id DESC)
                              FROM (SELECT * FROM l ORDER BY created_at DESC, log_id DESC
                                    LIMIT $5 OFFSET ($4 - 1) * $5) p), '[]'::jsonb),
            'total', (SELECT count(*) FROM l), 'page', $4, 'page_size', $5)",
        &[
            id.into(),
            start.into(),
            end.into(),
            page.into(),
            page_size.into(),
        ],
    )
    .expect("one row")
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn list_tokens(
    ws_id: default!(Option<&str>, "NULL"),
    email: default!(Option<&str>, "NULL"),
    limit: default!(Option<i32>, 100),
    offset: default!(Option<i32>, 0),
) -> JsonB {
    let limit = required(limit, "limit");
    let offset = required(offset, "offset");
    validate_page(limit, offset).or_raise();
    read::one::<JsonB>(
        "WITH t AS (SELECT * FROM quota.tokens
                    WHERE ($1::text IS NULL OR ws_id = $1) AND ($2::text IS NULL OR email = $2))
         SELECT jsonb_build_object(
            'tokens', coalesce((SELECT jsonb_agg(quota._token_json(p) ORDER BY p.token_id)
                                FROM (SELECT * FROM t ORDER BY token_id LIMIT $3 OFFSET $4) p), '[]'::jsonb),
            'total', (SELECT count(*) FROM t))",
        &[ws_id.into(), email.into(), limit.into(), offset.into()],
    )
    .expect("one row")
}

// ---------------------------------------------------------------------------------------------
// The per-backend cache of what a verification reads of a token (not its count).
//
// The same rules as the base_rate cache (settings.rs): triggers on quota.tokens queue a relcache
// invalidation of the table for any change of a cached column; every look-up first calls
// AcceptInvalidationMessages(), so a change committed before a verification starts is seen by
// it; the row is read with the latest snapshot (never an older transaction snapshot), and a read
// that overlaps an invalidation is used once and not kept.

/// What a verification needs of a token besides its count.
#[derive(Debug, Clone, Copy)]
struct Meta {
    token_id: i64,
    quota_type: QuotaType,
    active: bool,
    unlimited: bool,
    expires_at: Option<pg_sys::TimestampTz>,
    per_minute: Option<i32>,
    burst: i32,
    window_s: i32,
}

const META_CACHE_MAX: usize = 10_000;

thread_local! {
    static META: std::cell::RefCell<(u64, std::collections::HashMap<String, Meta>)> =
        std::cell::RefCell::new((0, std::collections::HashMap::new()));
}
static TOKENS_RELID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static META_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Called from `_PG_init`.
pub fn init() {
    // SAFETY: registering a callback with a static function; no arguments to keep alive.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(tokens_changed), pg_sys::Datum::from(0)) };
}

/// Relcache invalidation callback: it must not touch the database, only forget.
unsafe extern "C-unwind" fn tokens_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    use std::sync::atomic::Ordering;
    let known = TOKENS_RELID.load(Ordering::Relaxed);
    let relid = relid.to_u32();
    if relid == 0 || known == 0 || relid == known {
        META_GENERATION.fetch_add(1, Ordering::Relaxed);
    }
}

/// The cached meta of a token, or None (not cached).
fn cached_meta(token: &str) -> Option<Meta> {
    use std::sync::atomic::Ordering;
    // SAFETY: processing pending invalidations is what every lock acquisition does; we are not
    // in the middle of a catalog scan.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let generation = META_GENERATION.load(Ordering::Relaxed);
    META.with(|m| {
        let mut m = m.borrow_mut();
        if m.0 != generation {
            m.0 = generation;
            m.1.clear();
        }
        m.1.get(token).copied()
    })
}

/// A token's meta by the SHA-256 of the token (a parameter; planned once per backend).
const READ_META_SQL: &str = "
SELECT token_id, quota_type, remaining_quota, active, unlimited, expires_at, rate_limit_per_minute,
       rate_limit_burst, rate_limit_window_seconds, 'quota.tokens'::regclass::oid AS relid
  FROM quota.tokens WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))";

/// Reads a token's meta (and its remaining count) with the latest snapshot, and caches the meta
/// unless an invalidation arrived meanwhile.
fn read_meta(token: &str) -> Option<(Meta, Option<i64>)> {
    use std::sync::atomic::Ordering;
    debug_assert!(well_formed(token));
    let generation = META_GENERATION.load(Ordering::Relaxed);
    let found = Spi::connect(|client| {
        // SAFETY: inside an SPI connection; the pushed snapshot is popped before returning (an
        // ERROR aborts the transaction, which resets the snapshot stack). A read-only SPI query
        // runs under the active snapshot and takes no transaction id.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
        let t = spi_cache::select(client, READ_META_SQL, Some(1), &[token.into()]);
        let out = t.ok().and_then(|t| {
            t.into_iter().next().map(|row| {
                let meta = Meta {
                    token_id: row.get::<i64>(1).or_raise().unwrap_or_default(),
                    quota_type: QuotaType::parse(
                        &row.get::<String>(2).or_raise().unwrap_or_default(),
                    )
                    .or_raise(),
                    active: row.get::<bool>(4).or_raise().unwrap_or(false),
                    unlimited: row.get::<bool>(5).or_raise().unwrap_or(false),
                    expires_at: row
                        .get::<TimestampWithTimeZone>(6)
                        .or_raise()
                        .map(pg_sys::TimestampTz::from),
                    per_minute: row.get::<i32>(7).or_raise(),
                    burst: row.get::<i32>(8).or_raise().unwrap_or(10),
                    window_s: row.get::<i32>(9).or_raise().unwrap_or(60),
                };
                let relid = row.get::<pg_sys::Oid>(10).or_raise();
                (meta, row.get::<i64>(3).or_raise(), relid)
            })
        });
        // SAFETY: pops the snapshot pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
        out
    });
    let (meta, remaining, relid) = found?;
    if let Some(r) = relid {
        TOKENS_RELID.store(r.to_u32(), Ordering::Relaxed);
    }
    if META_GENERATION.load(Ordering::Relaxed) == generation {
        META.with(|m| {
            let mut m = m.borrow_mut();
            if m.0 == generation {
                if m.1.len() >= META_CACHE_MAX {
                    m.1.clear();
                }
                m.1.insert(token.to_string(), meta);
            }
        });
    }
    Some((meta, remaining))
}

// ---------------------------------------------------------------------------------------------
// verify: the hot path

/// What a verification answers (one row; refusals are rows too, not errors).
struct Verdict {
    valid: bool,
    code: Option<&'static str>,
    token_id: Option<i64>,
    quota_type: Option<String>,
    remaining: Option<i64>,
    limit: Option<i32>,
    limit_remaining: Option<i32>,
    reset_s: Option<i32>,
    retry_after_s: Option<i32>,
    replayed: bool,
}

impl Verdict {
    fn refused(code: &'static str) -> Verdict {
        Verdict {
            valid: false,
            code: Some(code),
            token_id: None,
            quota_type: None,
            remaining: None,
            limit: None,
            limit_remaining: None,
            reset_s: None,
            retry_after_s: None,
            replayed: false,
        }
    }
}

/// Whether a superuser pinned the clock with quota.now_override.
fn clock_pinned() -> bool {
    crate::gucs::NOW_OVERRIDE
        .get()
        .is_some_and(|c| !c.as_bytes().is_empty())
}

/// quota.now() without a SQL call on the hot path: the transaction's start (now()), unless a
/// superuser pinned the clock with quota.now_override (then it is asked for, as SQL does).
fn clock(client: &SpiClient) -> pg_sys::TimestampTz {
    if clock_pinned() {
        let t = spi_cache::select(client, "SELECT quota.now()", Some(1), &[])
            .or_raise()
            .first()
            .get_one::<TimestampWithTimeZone>()
            .or_raise();
        if let Some(t) = t {
            return t.into();
        }
    }
    // SAFETY: a plain read of the current transaction's start time.
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

const VERIFY_REPLAY_SQL: &str = "SELECT remaining_after, kind, units FROM quota.token_logs
     WHERE token_id = $1 AND request_id = $2";

/// A request_id already recorded: the same verification (kind consume, same units) replays its
/// answer; anything else is a conflict (23505).
fn replayed_remaining(r: &SpiHeapTupleData, request_id: &str, units: i64) -> Option<i64> {
    let kind = r.get::<String>(2).or_raise().unwrap_or_default();
    let was = r.get::<i64>(3).or_raise();
    if kind != "consume" || was != Some(units) {
        raise(
            QuotaError::new(
                quota_core::ErrorKind::IdempotencyConflict,
                format!(
                    "request_id '{request_id}' was already used for a {kind} of {} units on this token",
                    was.unwrap_or_default()
                ),
            )
            .with("request_id", request_id),
        );
    }
    r.get::<i64>(1).or_raise()
}

/// The count decrement and its log row, in one statement: `moved` says the UPDATE took the
/// units, `log_id` that the log row (with its idempotency key) was written.
const VERIFY_CONSUME_SQL: &str = "
WITH t AS (
    UPDATE quota.tokens SET remaining_quota = remaining_quota - $2
     WHERE token_id = $1 AND remaining_quota >= $2
    RETURNING remaining_quota, total_quota),
l AS (
    INSERT INTO quota.token_logs (token_id, kind, units, remaining_after, total_after, request_id)
    SELECT $1, 'consume', $2, t.remaining_quota, t.total_quota, $3 FROM t
    ON CONFLICT ON CONSTRAINT token_logs_request_key DO NOTHING
    RETURNING log_id)
SELECT t.remaining_quota, l.log_id FROM t LEFT JOIN l ON true";

const VERIFY_UNDO_SQL: &str =
    "UPDATE quota.tokens SET remaining_quota = remaining_quota + $2 WHERE token_id = $1";

fn take_back(token_id: i64, undo: Option<(Pushed, Pushed)>) {
    if let Some(u) = undo {
        with_table(token_id, |keys, entries| {
            if let Some(i) = keys.iter().position(|&k| k == token_id) {
                entries[i].undo(u);
            }
        });
    }
}

fn verify_impl(token: &str, units: i64, request_id: Option<&str>) -> Verdict {
    if !well_formed(token) {
        return Verdict::refused("unknown_token");
    }
    // The token's meta from the backend's cache, else read (then its count is known too).
    let (meta, remaining) = match cached_meta(token) {
        Some(m) => (m, None),
        None => match spi_cache::with_pinned_search_path(|| read_meta(token)) {
            Some((m, r)) => (m, r),
            None => return Verdict::refused("unknown_token"),
        },
    };
    // SQL runs only for a count, or to read a pinned clock; a time token whose meta is cached
    // is decided without any (no SPI connection, no search_path change).
    let counts = meta.quota_type.checks_count() && !meta.unlimited;
    if counts || clock_pinned() {
        spi_cache::with_pinned_search_path(|| {
            Spi::connect_mut(|client| decide(meta, remaining, units, request_id, Some(client)))
        })
    } else {
        decide(meta, remaining, units, request_id, None)
    }
}

/// The verification of a token whose meta is known: `client` is an SPI connection when the
/// token counts or the clock is pinned (the caller opens one exactly then).
fn decide(
    meta: Meta,
    remaining: Option<i64>,
    units: i64,
    request_id: Option<&str>,
    client: Option<&mut SpiClient>,
) -> Verdict {
    let Meta {
        token_id,
        quota_type,
        active,
        unlimited,
        expires_at,
        per_minute,
        burst,
        window_s,
    } = meta;
    {
        let now = match client.as_deref() {
            Some(c) => clock(c),
            // SAFETY: a plain read of the current transaction's start time.
            None => unsafe { pg_sys::GetCurrentTransactionStartTimestamp() },
        };
        let expired = expires_at.is_some_and(|e| e <= now);
        let mut v = Verdict {
            valid: false,
            code: None,
            token_id: Some(token_id),
            quota_type: Some(quota_type.as_str().to_string()),
            remaining: None,
            limit: per_minute,
            limit_remaining: None,
            reset_s: None,
            retry_after_s: None,
            replayed: false,
        };
        // Refusals before the limiter still report its state (the RateLimit-* headers).
        let peek = |v: &mut Verdict| {
            if let Some(pm) = per_minute {
                let now = now_us();
                let (left, reset_us) = with_table(token_id, |keys, entries| {
                    match keys.iter().position(|&k| k == token_id) {
                        Some(i) => entries[i].peek(now),
                        None => (Limits::new(pm, window_s, burst).per_window, 0),
                    }
                })
                .unwrap_or((pm.max(0) as u32, 0));
                v.limit_remaining = Some(left as i32);
                v.reset_s = Some(ceil_s(reset_us));
            }
        };
        if !active {
            v.code = Some("inactive");
            peek(&mut v);
            return v;
        }
        if expired && quota_type.checks_expiry() {
            v.code = Some("expired");
            peek(&mut v);
            return v;
        }
        let counts = quota_type.checks_count() && !unlimited;
        if counts {
            if let Some(rid) = request_id {
                let t = spi_cache::select(
                    client
                        .as_deref()
                        .expect("a counting token has an SPI connection"),
                    VERIFY_REPLAY_SQL,
                    Some(1),
                    &[token_id.into(), rid.into()],
                )
                .or_raise();
                if let Some(r) = t.into_iter().next() {
                    v.valid = true;
                    v.replayed = true;
                    v.remaining = replayed_remaining(&r, rid, units);
                    return v;
                }
            }
            // Not enough left: refused without taking a rate-limit slot (a slot taken and given
            // back a moment later could still refuse a concurrent request for the window).
            if remaining.is_some_and(|r| r < units) {
                v.code = Some("quota_exceeded");
                v.remaining = remaining.map(|r| r.max(0));
                peek(&mut v);
                return v;
            }
        }
        // The rate limit: burst, then the window. A refusal is not recorded.
        let mut undo = None;
        if let Some(pm) = per_minute {
            let limits = Limits::new(pm, window_s, burst);
            let now = now_us();
            let decision = with_table(token_id, |keys, entries| {
                match find_slot(keys, entries, token_id, now) {
                    None => Decision::Full,
                    Some(i) => {
                        entries[i].claim(token_id, limits);
                        keys[i] = token_id;
                        entries[i].admit(now)
                    }
                }
            });
            match decision {
                None => {}
                Some(Decision::Admit {
                    remaining,
                    reset_us,
                    undo: u,
                }) => {
                    undo = Some(u);
                    v.limit_remaining = Some(remaining as i32);
                    v.reset_s = Some(ceil_s(reset_us));
                }
                Some(Decision::Burst {
                    retry_after_us,
                    reset_us,
                }) => {
                    v.code = Some("burst");
                    v.retry_after_s = Some(ceil_s(retry_after_us));
                    v.limit_remaining = Some(0);
                    v.reset_s = Some(ceil_s(reset_us));
                    return v;
                }
                Some(Decision::Window {
                    retry_after_us,
                    reset_us,
                }) => {
                    v.code = Some("window");
                    v.retry_after_s = Some(ceil_s(retry_after_us));
                    v.limit_remaining = Some(0);
                    v.reset_s = Some(ceil_s(reset_us));
                    return v;
                }
                Some(Decision::Full) => {
                    v.code = Some("limiter_full");
                    v.retry_after_s = Some(1);
                    return v;
                }
            }
        }
        if !counts {
            v.valid = true;
            v.remaining = if unlimited { None } else { remaining };
            return v;
        }
        let client = client.expect("a counting token has an SPI connection");
        let t = spi_cache::update(
            client,
            VERIFY_CONSUME_SQL,
            Some(1),
            &[token_id.into(), units.into(), request_id.into()],
        )
        .or_raise();
        match t.into_iter().next() {
            Some(r) if r.get::<i64>(2).or_raise().is_some() => {
                v.valid = true;
                v.remaining = r.get::<i64>(1).or_raise();
                v
            }
            Some(_) => {
                // A concurrent verification with this request_id wrote its row first: put the
                // units back and answer what it answered.
                spi_cache::update(
                    client,
                    VERIFY_UNDO_SQL,
                    None,
                    &[token_id.into(), units.into()],
                )
                .or_raise();
                take_back(token_id, undo);
                let t = spi_cache::update(
                    client,
                    VERIFY_REPLAY_SQL,
                    Some(1),
                    &[token_id.into(), request_id.into()],
                )
                .or_raise();
                v.valid = true;
                v.replayed = true;
                v.remaining = t
                    .into_iter()
                    .next()
                    .and_then(|r| r.get::<i64>(1).or_raise());
                v
            }
            None => {
                take_back(token_id, undo);
                v.code = Some("quota_exceeded");
                // What is left now (a concurrent verification may have taken it since the read).
                v.remaining = spi_cache::update(
                    client,
                    "SELECT remaining_quota FROM quota.tokens WHERE token_id = $1",
                    Some(1),
                    &[token_id.into()],
                )
                .or_raise()
                .next()
                .and_then(|r| r.get::<i64>(1).or_raise())
                .or(remaining)
                .map(|r| r.max(0));
                if let Some(lr) = v.limit_remaining.as_mut() {
                    *lr += 1;
                }
                v
            }
        }
    }
}

fn validate_request_id(request_id: Option<&str>) {
    if let Some(r) = request_id {
        validate_id("request_id", r, REQUEST_ID_LEN_MAX).or_raise();
    }
}

// SECURITY DEFINER without a SET search_path clause, on purpose: the gateway calls this on every
// request, and saving and restoring search_path around each call cost more than the whole check
// of a time token. Every statement it runs is run under `with_pinned_search_path` (the same
// pinned path); a cached time token runs none. pg_test roles lists this exception.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
fn verify_token(
    access_token: Option<&str>,
    units: default!(Option<i64>, 1),
    request_id: default!(Option<&str>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> pgrx::composite_type!('static, "quota.verify_result") {
    let token = required(access_token, "access_token");
    let units = required(units, "units");
    rules::validate_units(units).or_raise();
    validate_request_id(request_id);
    let v = verify_impl(token, units, request_id);
    crate::ratelimit::count_verdict(v.code.unwrap_or("valid"));
    // SAFETY: fcinfo is this call's; the declared result type is the row type quota.verify_result,
    // whose descriptor comes from the type cache (a copy, owned by the tuple built below).
    unsafe {
        let typoid = pg_sys::get_fn_expr_rettype((*fcinfo).flinfo);
        let desc = pgrx::PgTupleDesc::for_composite_type_by_oid(typoid)
            .unwrap_or_else(|| pgrx::error!("pg_quota: quota.verify_result is not a row type"));
        PgHeapTuple::from_datums(
            desc,
            [
                v.valid.into_datum(),
                v.code.and_then(IntoDatum::into_datum),
                v.token_id.and_then(IntoDatum::into_datum),
                v.quota_type.and_then(IntoDatum::into_datum),
                v.remaining.and_then(IntoDatum::into_datum),
                v.limit.and_then(IntoDatum::into_datum),
                v.limit_remaining.and_then(IntoDatum::into_datum),
                v.reset_s.and_then(IntoDatum::into_datum),
                v.retry_after_s.and_then(IntoDatum::into_datum),
                v.replayed.into_datum(),
            ],
        )
        .unwrap_or_else(|e| pgrx::error!("pg_quota: cannot build a verify_result: {e}"))
    }
}

/// Gives units back to a count token (never above its total), idempotent by request_id.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn refund_token(access_token: Option<&str>, units: Option<i64>, request_id: Option<&str>) -> JsonB {
    let token = required(access_token, "access_token");
    let units = required(units, "units");
    let request_id = required(request_id, "request_id");
    rules::validate_units(units).or_raise();
    validate_request_id(Some(request_id));
    Spi::connect_mut(|client| {
        let (token_id, s) = load(client, token, true);
        let existing = client
            .update(
                "SELECT kind, units, remaining_after FROM quota.token_logs WHERE token_id = $1 AND request_id = $2",
                Some(1),
                &[token_id.into(), request_id.into()],
            )
            .or_raise();
        if let Some(e) = existing.into_iter().next() {
            let kind = e.get::<String>(1).or_raise().unwrap_or_default();
            let was = e.get::<i64>(2).or_raise();
            if kind != "refund" || was != Some(units) {
                raise(
                    QuotaError::new(
                        quota_core::ErrorKind::IdempotencyConflict,
                        format!(
                            "request_id '{request_id}' was already used for a {kind} of this token"
                        ),
                    )
                    .with("request_id", request_id),
                );
            }
            return JsonB(
                json!({ "refunded": units, "remaining_quota": e.get::<i64>(3).or_raise(), "replayed": true }),
            );
        }
        let (Some(total), Some(rem)) = (s.total_quota, s.remaining_quota) else {
            raise(
                QuotaError::invalid("this token has no count quota to refund to")
                    .with("field", "access_token"),
            );
        };
        let after = (rem + units).min(total);
        let mut next = s.clone();
        next.remaining_quota = Some(after);
        write_state(client, token_id, &next);
        client
            .update(
                "INSERT INTO quota.token_logs (token_id, kind, units, remaining_after, total_after, request_id)
                 VALUES ($1, 'refund', $2, $3, $4, $5)",
                None,
                &[
                    token_id.into(),
                    units.into(),
                    after.into(),
                    total.into(),
                    request_id.into(),
                ],
            )
            .or_raise();
        JsonB(json!({ "refunded": units, "remaining_quota": after, "replayed": false }))
    })
}
