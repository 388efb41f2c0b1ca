//! Pure logic of pg_quota: everything that needs no PostgreSQL.
//!
//! The pgrx layer (`extension/src`) only moves values between SQL and these functions and runs
//! SPI. Keeping the rules here means plain `cargo test -p pg_quota_core` (and a fuzzer) reach them.

pub mod condition;
pub mod error;
pub mod ids;
pub mod plan;
pub mod pool;
pub mod pricing;
pub mod ratelimit;
pub mod reservation;
pub mod schedule;
pub mod strategy;
pub mod time;
pub mod token;
pub mod user;

pub use error::{ErrorKind, QuotaError};
