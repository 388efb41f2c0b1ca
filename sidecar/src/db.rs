//! The connection pool and the one way handlers call SQL: a cached prepared statement, one row,
//! one column, with the 40001 retry of concurrent same-operation_id calls.
//!
//! A call that is dropped before it finishes (the request's deadline passed, lib.rs) cancels its
//! statement on the server (a cancel request) and takes its connection out of the pool, so the
//! statement cannot commit later and the cancel cannot hit the next request's statement. Every
//! pooled connection also runs with `statement_timeout` = the request timeout + 1 s, a backstop
//! for a cancel request that got lost.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::NoTls;

use crate::config::{Config, ConfigError};
use crate::error::{AppError, SQLSTATE_SERIALIZATION_FAILURE};

/// How long a request waits for a pooled connection, and for a new one to be made, before 503.
pub const POOL_WAIT_TIMEOUT_S: u64 = 5;
pub const CONNECT_TIMEOUT_S: u64 = 5;
/// 40001 means another transaction is applying the same operation_id right now; once it commits
/// a retry replays its result. Retries after the first attempt, then 409 in_progress.
pub const SERIALIZATION_RETRIES_MAX: u32 = 3;
pub const SERIALIZATION_RETRY_BASE_MS: u64 = 20;

/// Builds the pool without connecting: connections are made on first use, so the sidecar starts
/// (and /health reports 503) while the database is still down.
pub fn build_pool(config: &Config) -> Result<Pool, ConfigError> {
    let mut pg_config: tokio_postgres::Config =
        config.database_url.expose().parse().map_err(|e| {
            ConfigError(format!(
                "QUOTA_DATABASE_URL is not a valid connection string: {e}"
            ))
        })?;
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_S));
    }
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("quota-sidecar");
    }
    // A startup option, not a SET: no round trip, and a plain user may set it.
    let statement_timeout = format!(
        "-c statement_timeout={}",
        config.statement_timeout().as_millis()
    );
    let options = match pg_config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {statement_timeout}"),
        _ => statement_timeout,
    };
    pg_config.options(&options);
    let manager = Manager::from_config(
        pg_config,
        NoTls,
        // Fast: a broken connection shows up as an error on use and is then dropped; checking
        // every checkout would cost a round trip per request.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Some(Duration::from_secs(POOL_WAIT_TIMEOUT_S));
    Pool::builder(manager)
        .max_size(config.db_pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .recycle_timeout(wait)
        .build()
        .map_err(|e| ConfigError(format!("cannot build the connection pool: {e}")))
}

/// First column of the (at most one) row, or None for no row or SQL NULL.
pub async fn call_opt<T>(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<T>, AppError>
where
    T: for<'a> FromSql<'a>,
{
    let call = CancelOnDrop(Some(pool.get().await?));
    let result = query_opt(call.client(), sql, params).await;
    call.finish();
    result
}

async fn query_opt<T>(
    client: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<T>, AppError>
where
    T: for<'a> FromSql<'a>,
{
    let statement = client.prepare_cached(sql).await?;
    let mut retries = 0;
    loop {
        match client.query_opt(&statement, params).await {
            Ok(None) => return Ok(None),
            Ok(Some(row)) => return Ok(row.try_get::<_, Option<T>>(0)?),
            Err(err) if is_serialization_failure(&err) => {
                if retries == SERIALIZATION_RETRIES_MAX {
                    return Err(AppError::InProgress);
                }
                retries += 1;
                tracing::debug!(retries, "serialization failure, retrying");
                tokio::time::sleep(serialization_retry_delay(retries)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// A pooled connection in use by a call. Finished: back to the pool. Dropped unfinished: its
/// statement is cancelled and the connection leaves the pool (closed once the cancel is sent).
struct CancelOnDrop(Option<Object>);

impl CancelOnDrop {
    fn client(&self) -> &Object {
        self.0.as_ref().expect("present until finished or dropped")
    }

    fn finish(mut self) {
        drop(self.0.take());
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        let token = client.cancel_token();
        let client = Object::take(client);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: closing the connection ends the session
        };
        runtime.spawn(async move {
            match token.cancel_query(NoTls).await {
                Ok(()) => tracing::debug!("statement of an abandoned call cancelled"),
                Err(err) => tracing::warn!(
                    error = %err,
                    "cannot cancel the statement of an abandoned call; statement_timeout will end it"
                ),
            }
            drop(client);
        });
    }
}

/// Every row of a set-returning call (GET /metrics), with the same cancel-on-drop as
/// [`call_opt`].
pub async fn query_rows(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, AppError> {
    let call = CancelOnDrop(Some(pool.get().await?));
    let result = async {
        let statement = call.client().prepare_cached(sql).await?;
        Ok::<_, AppError>(call.client().query(&statement, params).await?)
    }
    .await;
    call.finish();
    result
}

/// For the functions that always return a value: a missing row is a broken contract with the
/// extension, not a client error.
pub async fn call_json(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Value, AppError> {
    call_opt::<Value>(pool, sql, params)
        .await?
        .ok_or_else(|| AppError::Internal(format!("no result from: {sql}")))
}

fn is_serialization_failure(err: &tokio_postgres::Error) -> bool {
    err.as_db_error()
        .is_some_and(|db| db.code().code() == SQLSTATE_SERIALIZATION_FAILURE)
}

/// 20 ms, 40 ms, 80 ms: long enough for the competing transaction to commit in the usual case.
pub fn serialization_retry_delay(retry: u32) -> Duration {
    Duration::from_millis(SERIALIZATION_RETRY_BASE_MS << retry.saturating_sub(1).min(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_short() {
        let delays: Vec<u64> = (1..=SERIALIZATION_RETRIES_MAX)
            .map(|retry| serialization_retry_delay(retry).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![20, 40, 80]);
    }
}
