//! Every GUC of pg_quota, with typed getters (SPEC 7). Names are `quota.*`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static WORKER_NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));
pub static SCAN_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
pub static SCHEDULER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static RELAY: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static NOW_OVERRIDE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SCAN_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static EXPIRE_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1_000);
pub static RATE_LIMIT_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(1_024);
pub static CREDENTIALS_KEY_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static WARNING_THRESHOLD: GucSetting<f64> = GucSetting::<f64>::new(0.8);
pub static LOG_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(90 * 86_400);
pub static POOL_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1_000);
pub static STATS_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);

pub fn init() {
    GucRegistry::define_string_guc(
        c"quota.database",
        c"Database the pg_quota background worker connects to.",
        c"The worker waits there until CREATE EXTENSION pg_quota has run. Restart to change.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.worker_naptime_ms",
        c"How long the pg_quota worker sleeps between ticks, in milliseconds.",
        c"Each tick refreshes the heartbeat shown by quota.worker_status() and runs due jobs.",
        &WORKER_NAPTIME_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"quota.timezone",
        c"Time zone in which cron expressions of periodic strategies are evaluated.",
        c"An IANA name such as UTC or Asia/Shanghai. Sessions may set it for quota.scan().",
        &TIMEZONE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.scan_interval",
        c"How often the worker scans single (one-time) recharge strategies.",
        c"Periodic strategies follow their cron expressions; single ones are scanned this often.",
        &SCAN_INTERVAL_S,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"quota.scheduler_enabled",
        c"Whether the background worker runs recharge strategies.",
        c"When off, the worker only keeps its heartbeat; quota.scan() still works by hand.",
        &SCHEDULER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"quota.relay",
        c"Whether recharges are queued for the AiGateway relay (the sidecar).",
        c"Off: executions complete in the ledger alone and no outbox rows are written.",
        &RELAY,
        // Superuser-only: a session turning it off would complete executions undelivered.
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"quota.now_override",
        c"Pins quota.now(), the clock of every time rule, for this session (tests only).",
        c"Superuser-only: any other role moving the clock could expire or fire things at will.",
        &NOW_OVERRIDE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.scan_batch_size",
        c"The most users the background worker recharges per strategy in one transaction.",
        c"A strategy with more due users continues in the next transaction at once.",
        &SCAN_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.expire_batch_size",
        c"The most expired reservations the background worker releases in one transaction.",
        c"More due continue in the next transaction at once; 0 turns expiry by the worker off.",
        &EXPIRE_BATCH_SIZE,
        0,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.rate_limit_entries",
        c"Tokens the rate limiter tracks at once (shared memory, about 16 KB each).",
        c"A token with a rate limit takes an entry on first use; an entry is reused once its admissions are all outside their windows. When every entry is live, verifications of new tokens are refused (limiter_full). Restart to change.",
        &RATE_LIMIT_ENTRIES,
        1,
        65_536,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"quota.credentials_key_file",
        c"File holding the AES-256-GCM key of pool account credentials (64 hex characters).",
        c"The key is never stored in the database. Unset: the environment variable QUOTA_CREDENTIALS_KEY of the server, else pool accounts cannot be created (55000 credentials_key_missing).",
        &CREDENTIALS_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_float_guc(
        c"quota.warning_threshold",
        c"Share of a pool account's quota at which a warning alert is raised (once per window).",
        c"0.8 = 80 %.",
        &WARNING_THRESHOLD,
        0.01,
        1.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.log_retention",
        c"How long pool request logs are kept; the background worker deletes older ones.",
        c"Daily stats are kept after their logs are gone. 0 keeps logs forever.",
        &LOG_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"quota.pool_batch_size",
        c"The most leases, account resets and old logs the background worker handles per transaction.",
        c"More due continue at the next tick.",
        &POOL_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"quota.stats_interval",
        c"How often the background worker aggregates pool request logs into daily stats.",
        c"Each time, every day from the last one aggregated (at least yesterday) is recomputed from the logs, so days the worker missed are caught up before retention deletes their logs.",
        &STATS_INTERVAL_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

pub fn database() -> String {
    DATABASE
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_else(|| "postgres".to_string())
}

pub fn worker_naptime_ms() -> u64 {
    WORKER_NAPTIME_MS.get().max(10) as u64
}

pub fn timezone_name() -> String {
    TIMEZONE
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "UTC".to_string())
}

pub fn scan_interval_s() -> i64 {
    SCAN_INTERVAL_S.get().max(1) as i64
}

pub fn scheduler_enabled() -> bool {
    SCHEDULER_ENABLED.get()
}

pub fn relay() -> bool {
    RELAY.get()
}

pub fn rate_limit_entries() -> usize {
    RATE_LIMIT_ENTRIES.get().max(1) as usize
}

/// Expired holds released per worker transaction; 0 = the worker does not expire holds.
pub fn expire_batch_size() -> i32 {
    EXPIRE_BATCH_SIZE.get().max(0)
}

pub fn scan_batch_size() -> i64 {
    SCAN_BATCH_SIZE.get().max(1) as i64
}

pub fn credentials_key_file() -> Option<String> {
    CREDENTIALS_KEY_FILE
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.trim().is_empty())
}

pub fn warning_threshold() -> f64 {
    WARNING_THRESHOLD.get().clamp(0.01, 1.0)
}

/// Seconds request logs are kept; 0 = forever.
pub fn log_retention_s() -> i64 {
    i64::from(LOG_RETENTION_S.get().max(0))
}

pub fn pool_batch_size() -> i64 {
    i64::from(POOL_BATCH_SIZE.get().max(1))
}

pub fn stats_interval_s() -> i64 {
    i64::from(STATS_INTERVAL_S.get().max(1))
}
