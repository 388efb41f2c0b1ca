//! Internal subtransactions: run a piece of work so that an ERROR inside it rolls back only that
//! work and comes back as a value, the way a PL/pgSQL `EXCEPTION` block does
//! (`BeginInternalSubTransaction`, then `ReleaseCurrentSubTransaction` or
//! `RollbackAndReleaseCurrentSubTransaction`, restoring the memory context and resource owner).
//! The scan uses it so that one strategy's failure never aborts the others.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

/// An ERROR caught from a subtransaction: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

fn failure(e: &CaughtError) -> Failure {
    let report = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    let code = report.sql_error_code() as isize;
    // Decode PostgreSQL's packed SQLSTATE (6 bits per character, '0' based).
    let sqlstate: String = (0..5)
        .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect();
    Failure {
        sqlstate,
        message: report.message().to_string(),
    }
}

/// Runs `f` in a subtransaction: its writes are kept when it returns, rolled back when it raises
/// an ERROR (or panics), and the caller's transaction goes on either way.
pub fn run<R>(f: impl FnOnce() -> R) -> Result<R, Failure> {
    attempt(|| Ok::<R, std::convert::Infallible>(f())).map(|r| match r {
        Ok(value) => value,
        Err(never) => match never {},
    })
}

/// Runs `f` in a subtransaction that is kept when `f` returns Ok and rolled back when it returns
/// Err (or raises an ERROR, which comes back as the outer Err): a try that must leave nothing
/// behind when it declines, row locks included (a pool account refused by an acquire is unlocked
/// at once, so acquires trying accounts in different orders never deadlock).
pub fn attempt<R, E>(f: impl FnOnce() -> Result<R, E>) -> Result<Result<R, E>, Failure> {
    // SAFETY: as in run(): begun here, ended on every path below with the caller's memory
    // context and resource owner restored.
    let (old_context, old_owner) = unsafe {
        let saved = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(saved.0);
        saved
    };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        let value = f();
        // SAFETY: see above.
        unsafe {
            if value.is_ok() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
        }
        Ok(value)
    }))
    .catch_others(|e| {
        // SAFETY: see above; pgrx has already copied and flushed the error state.
        unsafe {
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
        }
        Err(failure(&e))
    })
    .execute()
}
