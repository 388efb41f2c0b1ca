//! Every GUC of pg_quota, with typed getters (SPEC 7). Names are `quota.*`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static WORKER_NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

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
