//! Prepared SPI statements kept for the life of the backend, keyed by their (constant) SQL text:
//! the reservation functions run about ten statements per call, and parsing and planning each
//! from text every time costs more than executing it. Plans are kept with SPI_keepplan (leaked
//! once per statement and backend); the plan cache revalidates them after DDL. Parameter types
//! come from the first call's arguments, so a statement must always be called with arguments of
//! the same types (true for the constant statements of this crate).

use crate::error::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static PLANS: RefCell<HashMap<(&'static str, bool), &'static OwnedPreparedStatement>> =
        RefCell::new(HashMap::new());
}

fn plan(
    client: &SpiClient,
    sql: &'static str,
    mutating: bool,
    args: &[DatumWithOid],
) -> &'static OwnedPreparedStatement {
    if let Some(p) = PLANS.with(|m| m.borrow().get(&(sql, mutating)).copied()) {
        return p;
    }
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    let prepared = if mutating {
        client.prepare_mut(sql, &types)
    } else {
        client.prepare(sql, &types)
    };
    let p: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared.or_raise().keep()));
    PLANS.with(|m| m.borrow_mut().insert((sql, mutating), p));
    p
}

/// `client.update(sql, ...)` through a kept plan (read-write: sees what committed since the
/// statement began, may write).
pub fn update<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> SpiResult<SpiTupleTable<'conn>> {
    let p = plan(client, sql, true, args);
    client.update(p, limit, args)
}

/// `client.select(sql, ...)` through a kept plan (read-only, the statement's snapshot).
pub fn select<'conn>(
    client: &SpiClient<'conn>,
    sql: &'static str,
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> SpiResult<SpiTupleTable<'conn>> {
    let p = plan(client, sql, false, args);
    client.select(p, limit, args)
}

/// Runs `f` with `search_path` pinned to `pg_catalog, quota, pg_temp` (what the `SET` clause of
/// a SECURITY DEFINER function does for its whole call, here only around the SQL that needs
/// it): for a hot path that usually runs no SQL at all (`verify_token` on a cached time token),
/// where saving and restoring the setting on every call would cost more than the check. An
/// ERROR inside unwinds the GUC nest level with the (sub)transaction, as for the SET clause.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level opened here and closed below on the success path (abort
    // processing closes it on an ERROR); search_path is a plain user setting.
    unsafe {
        let level = pgrx::pg_sys::NewGUCNestLevel();
        pgrx::pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, quota, pg_temp".as_ptr(),
            pgrx::pg_sys::GucContext::PGC_USERSET,
            pgrx::pg_sys::GucSource::PGC_S_SESSION,
            pgrx::pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let r = f();
        pgrx::pg_sys::AtEOXact_GUC(true, level);
        r
    }
}
