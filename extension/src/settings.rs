//! `quota.settings.base_rate`, cached in each backend for the charge's hot path.
//!
//! A charge used to join the one-row settings table in its statement: a relation lock, a scan
//! and a join on every call, for a value that changes a few times a year. Now each backend keeps
//! the value, and triggers on quota.settings (`quota._settings_changed()`, after every INSERT,
//! UPDATE, DELETE and TRUNCATE, including a DBA's direct UPDATE) queue a relcache invalidation of
//! the table. PostgreSQL delivers it the way it delivers catalog changes: to the writing backend at
//! the end of the writing command (and again on rollback), to every other backend when the writer
//! commits, before their next transaction or lock. The callback registered here only forgets the
//! value; the next charge reads it again.
//!
//! A change is therefore seen by every charge that starts after the change commits, as with the
//! join (a charge running concurrently with the change may use either value, as before).

use crate::error::{raise, OrRaise};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
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
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0)) };
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

/// The base rate (credits per USD before multipliers), from the cache or the table.
pub fn base_rate(client: &SpiClient) -> i64 {
    let cached = BASE_RATE.load(Ordering::Relaxed);
    if cached > 0 {
        return cached;
    }
    let generation = GENERATION.load(Ordering::Relaxed);
    let row = client
        .select("SELECT 'quota.settings'::regclass::oid AS relid, base_rate FROM quota.settings", Some(1), &[])
        .or_raise()
        .into_iter()
        .next()
        .map(|r| (r.get::<pg_sys::Oid>(1).or_raise(), r.get::<i64>(2).or_raise()));
    let Some((Some(relid), Some(rate))) = row else {
        raise(QuotaError::not_found("quota.settings has no row: restore it with INSERT INTO quota.settings DEFAULT VALUES"));
    };
    SETTINGS_RELID.store(relid.to_u32(), Ordering::Relaxed);
    // An invalidation processed while the row was read (the scan's lock accepts them) may be
    // about a newer value than the one read: keep nothing then, read again next time.
    if GENERATION.load(Ordering::Relaxed) == generation {
        BASE_RATE.store(rate, Ordering::Relaxed);
    }
    rate
}

extension_sql!(
    r#"
CREATE FUNCTION quota._settings_changed() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'quota_settings_changed';
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
pub unsafe extern "C-unwind" fn quota_settings_changed(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
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
