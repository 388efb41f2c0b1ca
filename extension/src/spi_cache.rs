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
