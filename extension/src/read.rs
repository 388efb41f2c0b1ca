//! Read-only SPI for the functions that only read (issue 9, "reads are reads").
//!
//! pgrx's `Spi::get_one*` and `SpiClient::update` mark the transaction mutable, which assigns a
//! transaction id: a read function built on them burns an xid per call, fails on a hot standby
//! and in a parallel worker. Everything here goes through `Spi::connect` + `select`, which runs
//! SPI read-only under the query's snapshot while the transaction has no xid.

use crate::error::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row, or None (no row, or SQL NULL).
pub fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    Spi::connect(|client| {
        let table = client.select(sql, Some(1), args).or_raise();
        if table.is_empty() {
            return None;
        }
        table.first().get_one::<T>().or_raise()
    })
}

/// Whether the query returns a row.
pub fn exists(sql: &str, args: &[DatumWithOid]) -> bool {
    Spi::connect(|client| !client.select(sql, Some(1), args).or_raise().is_empty())
}
