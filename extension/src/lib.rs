//! pg_quota: quota, credit and rate-limit management for AI API platforms, inside PostgreSQL.
//!
//! The rules live in `pg_quota_core` (pure Rust); this crate is the glue: SQL functions that
//! validate with the core, run SPI, and raise typed errors; GUCs; the background worker.

// pgrx needs a function's row type spelled out in its signature (a type alias is not expanded by
// the #[pg_extern] macro), so TableIterator<(name!(..), ...)> types are long by necessity.
#![allow(clippy::type_complexity)]

use pgrx::prelude::*;

/// The `pg_finfo_<symbol>` record that marks a hand-written C-language function (`LANGUAGE c AS
/// 'MODULE_PATHNAME', '<symbol>'`) as fmgr version 1: `fmgr_v1!(pg_finfo_quota_charge);`.
macro_rules! fmgr_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1_API: ::pgrx::pg_sys::Pg_finfo_record =
                ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1_API
        }
    };
}

mod audit;
mod condition;
mod crypto;
mod error;
mod gucs;
mod ledger;
mod organizations;
mod plans;
mod pools;
mod ratelimit;
mod read;
mod reservations;
mod schedule;
mod settings;
mod spi_cache;
mod strategies;
mod subxact;
mod tokens;
mod users;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/strategies.sql",
    name = "strategies",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/reservations.sql",
    name = "reservations",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/tokens.sql",
    name = "tokens",
    requires = ["reservations", "settings_changed"]
);
extension_sql_file!(
    "../sql/pools.sql",
    name = "pools",
    requires = ["strategies", "tokens", ratelimit::token_verifications]
);
extension_sql_file!(
    "../sql/outbox.sql",
    name = "outbox",
    requires = ["strategies", "pools"]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    settings::init();
    tokens::init();
    // SAFETY: a plain read of a global the postmaster sets while loading preloaded libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::init_preloaded();
        ratelimit::init_preloaded();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_quota'",
            "quota.database = 'pgrx_tests'",
            "quota.worker_naptime_ms = 100",
        ]
    }
}
