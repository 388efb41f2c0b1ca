//! The bridge from typed domain errors (`quota_core::QuotaError`) to PostgreSQL ERRORs: the
//! SQLSTATE comes from the error kind, the DETAIL is the error's JSON object (read by the sidecar).

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use quota_core::{ErrorKind, QuotaError};

fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
    match kind {
        ErrorKind::InvalidParameter => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::NotFound => PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
        ErrorKind::Duplicate | ErrorKind::IdempotencyConflict => {
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
        }
        ErrorKind::InUse => PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
        ErrorKind::InsufficientCredits
        | ErrorKind::RefundExceedsCharge
        | ErrorKind::PaymentRequired => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
        ErrorKind::InProgress => PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        ErrorKind::BalanceLimit => PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        ErrorKind::PermissionDenied => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        ErrorKind::InsufficientUserQuota
        | ErrorKind::InsufficientOrgQuota
        | ErrorKind::InsufficientTokenQuota
        | ErrorKind::PoolQuotaExceeded => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
        ErrorKind::OrgDisabled
        | ErrorKind::ReservationNotHeld
        | ErrorKind::TokenUnusable
        | ErrorKind::LeaseNotHeld
        | ErrorKind::CredentialsKeyMissing => {
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        }
    }
}

/// Raises the error as a PostgreSQL ERROR; the transaction (and anything this call wrote) is
/// rolled back.
pub fn raise(e: QuotaError) -> ! {
    ErrorReport::new(sqlstate(e.kind), e.message.clone(), "pg_quota")
        .set_detail(e.detail_json())
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// Unwraps a result or raises its error. SPI errors (a bug, not bad input) are internal errors.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, QuotaError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::SpiError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| pgrx::error!("pg_quota: SPI failure: {e}"))
    }
}

/// A required argument of a function that also has optional ones (so it cannot be STRICT):
/// SQL NULL is 22023 naming the argument, not an internal error.
pub fn required<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| {
        raise(QuotaError::invalid(format!("{name} must not be null")).with("field", name))
    })
}
