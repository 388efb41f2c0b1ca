//! `quota.settings.base_rate`, cached in each backend for the charge's hot path.
//!
//! A charge used to join the one-row settings table in its statement: a relation lock, a scan
//! and a join on every call, for a value that changes a few times a year. Now each backend keeps
//! the value. The rules that keep it right:
//! - Invalidation. Triggers on quota.settings (`quota._settings_changed()`, after every INSERT,
//!   UPDATE, DELETE and TRUNCATE, including a DBA's direct UPDATE) queue a relcache invalidation
//!   of the table. PostgreSQL delivers it to the writing backend at the end of the writing command
//!   (and again on rollback) and to every other backend after the writer commits. Every read of
//!   the cache first calls `AcceptInvalidationMessages()` (a check of one shared flag when there
//!   is nothing new), so a change committed before a charge starts is seen by that charge, also
//!   in the middle of a long transaction that takes no new locks.
//! - Freshness. The value is read like catalog data, with the latest snapshot, never with the
//!   transaction's: a REPEATABLE READ transaction that began before a change would otherwise
//!   fill the cache with the old rate for every later transaction of the backend. In a parallel
//!   worker (no latest snapshot there) the value is read with the query's snapshot and not kept.
//! - No lost invalidation. An invalidation that arrives while the value is being read may be
//!   about a newer value than the one read: the value is used once and not kept.
//!
//! A change is therefore seen by every charge that starts after the change commits (a charge
//! running concurrently with the change may use either value, as with a join).

use crate::error::raise;
use pgrx::prelude::*;
use quota_core::QuotaError;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// The cached base_rate; 0 = not cached (the table's CHECK keeps real values >= 1).
static BASE_RATE: AtomicI64 = AtomicI64::new(0);
/// quota.settings' OID once known (0 = not yet), so the callback can ignore other relations.
static SETTINGS_RELID: AtomicU32 = AtomicU32::new(0);
/// Bumped by every invalidation that may concern the table: a read that overlaps one is not kept.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Called from `_PG_init` (once per process; a preloaded library's callback is inherited by fork).
pub fn init() {
    // SAFETY: registering a callback with a static function; no arguments to keep alive.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0))
    };
}

/// Relcache invalidation callback: it must not touch the database, only forget.
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let known = SETTINGS_RELID.load(Ordering::Relaxed);
    let relid = relid.to_u32();
    if relid == 0 || known == 0 || relid == known {
        GENERATION.fetch_add(1, Ordering::Relaxed);
        BASE_RATE.store(0, Ordering::Relaxed);
    }
}

const SETTINGS_SQL: &std::ffi::CStr =
    c"SELECT 'quota.settings'::regclass::oid, base_rate FROM quota.settings";

/// Reads (relid, base_rate) read-only; with the latest snapshot when `latest`.
fn read_settings(latest: bool) -> Option<(pg_sys::Oid, i64)> {
    Spi::connect(|_client| {
        // SAFETY: inside an SPI connection; the pushed snapshot is popped before returning (an
        // ERROR aborts the transaction, which resets the snapshot stack). SPI_execute with
        // read_only = true runs under the active snapshot and takes no transaction id.
        unsafe {
            if latest {
                pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
            }
            let rc = pg_sys::SPI_execute(SETTINGS_SQL.as_ptr(), true, 1);
            if latest {
                pg_sys::PopActiveSnapshot();
            }
            if rc != pg_sys::SPI_OK_SELECT as i32 {
                pgrx::error!("pg_quota: reading quota.settings failed (SPI code {rc})");
            }
            let table = pg_sys::SPI_tuptable;
            if table.is_null() || pg_sys::SPI_processed == 0 {
                return None;
            }
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            let mut null = false;
            let relid = pg_sys::SPI_getbinval(tuple, desc, 1, &mut null);
            let relid = if null {
                None
            } else {
                pg_sys::Oid::from_datum(relid, false)
            };
            let rate = pg_sys::SPI_getbinval(tuple, desc, 2, &mut null);
            let rate = if null {
                None
            } else {
                i64::from_datum(rate, false)
            };
            relid.zip(rate)
        }
    })
}

/// The base rate (credits per USD before multipliers), from the cache or the table. With no row
/// in quota.settings every pricing function refuses (P0002): one rule for charge and calculate.
pub fn base_rate() -> i64 {
    // SAFETY: processing pending invalidations is what every lock acquisition does; we are not
    // in the middle of a catalog scan.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let cached = BASE_RATE.load(Ordering::Relaxed);
    if cached > 0 {
        return cached;
    }
    let generation = GENERATION.load(Ordering::Relaxed);
    // SAFETY: reads a flag of the transaction state.
    let parallel = unsafe { pg_sys::IsInParallelMode() };
    let Some((relid, rate)) = read_settings(!parallel) else {
        raise(QuotaError::not_found(
            "quota.settings has no row: restore it with INSERT INTO quota.settings DEFAULT VALUES",
        ));
    };
    SETTINGS_RELID.store(relid.to_u32(), Ordering::Relaxed);
    // An invalidation processed while the row was read (the scan's lock accepts them) may be
    // about a newer value than the one read: keep nothing then, read again next time.
    if !parallel && GENERATION.load(Ordering::Relaxed) == generation {
        BASE_RATE.store(rate, Ordering::Relaxed);
    }
    rate
}

extension_sql!(
    r#"
CREATE FUNCTION quota._settings_changed() RETURNS trigger
LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'quota_settings_changed';
-- A row trigger, not a statement one: an UPDATE ... RETURNING that its caller stops reading
-- after the first row (SPI with a row limit) never fires AFTER STATEMENT triggers.
CREATE TRIGGER settings_changed
    AFTER INSERT OR UPDATE OR DELETE ON quota.settings
    FOR EACH ROW EXECUTE FUNCTION quota._settings_changed();
CREATE TRIGGER settings_truncated
    AFTER TRUNCATE ON quota.settings
    FOR EACH STATEMENT EXECUTE FUNCTION quota._settings_changed();
-- Also under session_replication_role = replica (logical replication, some restores).
ALTER TABLE quota.settings ENABLE ALWAYS TRIGGER settings_changed;
ALTER TABLE quota.settings ENABLE ALWAYS TRIGGER settings_truncated;
"#,
    name = "settings_changed",
    requires = ["schema"]
);

fmgr_v1!(pg_finfo_quota_settings_changed);

/// `quota._settings_changed()`: the trigger function of quota.settings. Queues a relcache
/// invalidation of the table (sent at commit, dropped on rollback), which clears every backend's
/// cached base_rate.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn quota_settings_changed(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the fmgr passes a valid fcinfo; context is checked to be TriggerData before use.
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "quota._settings_changed() is a trigger function"
            );
        }
        let trigger = context.cast::<pg_sys::TriggerData>();
        pg_sys::CacheInvalidateRelcacheByRelid((*(*trigger).tg_relation).rd_id);
        pg_sys::Datum::from(0usize)
    }
}
