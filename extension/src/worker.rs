//! The pg_quota background worker (registered when the library is in shared_preload_libraries).
//! It connects to `quota.database`, waits for the extension to be installed there, keeps a
//! heartbeat in shared memory, and exits cleanly on SIGTERM. Later features give it jobs; each
//! job is a SQL-callable function so tests can drive it without the worker (pg_cron's lesson).

use crate::error::OrRaise;
use crate::gucs;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Copy, Clone, Default, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum WorkerPhase {
    #[default]
    NotStarted = 0,
    Starting = 1,
    WaitingForExtension = 2,
    Running = 3,
    Stopped = 4,
}

impl WorkerPhase {
    fn name(self) -> &'static str {
        match self {
            WorkerPhase::NotStarted => "not_started",
            WorkerPhase::Starting => "starting",
            WorkerPhase::WaitingForExtension => "waiting_for_extension",
            WorkerPhase::Running => "running",
            WorkerPhase::Stopped => "stopped",
        }
    }
}

#[derive(Copy, Clone, Default)]
pub struct WorkerState {
    pid: i32,
    phase: WorkerPhase,
    started_at: pg_sys::TimestampTz,
    heartbeat_at: pg_sys::TimestampTz,
    ticks: i64,
    /// Since the worker started: users recharged, users skipped (balance limit), strategy fires
    /// that raised an ERROR (the others went on), ticks that raised one (the worker went on).
    recharged: i64,
    skipped: i64,
    strategy_errors: i64,
    tick_errors: i64,
    /// Reservations whose hold the worker released at expiry (seed 003).
    expired: i64,
    last_scan_at: pg_sys::TimestampTz,
}

unsafe impl PGRXSharedMemory for WorkerState {}

// SAFETY: the lock is initialised once by pg_shmem_init! in _PG_init (preload) before any use.
static WORKER: PgLwLock<WorkerState> = unsafe { PgLwLock::new(c"pg_quota_worker_state") };

/// Set in _PG_init in the postmaster; backends inherit it through fork.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// When the worker last aggregated daily pool stats (its own process only).
static POOL_STATS_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn init_preloaded() {
    pg_shmem_init!(WORKER);
    PRELOADED.store(true, Ordering::Relaxed);
    BackgroundWorkerBuilder::new("pg_quota worker")
        .set_type("pg_quota worker")
        .set_library("pg_quota")
        .set_function("pg_quota_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // Restart after a crash (or a FATAL such as a missing database) like pg_cron's launcher.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the clock; no arguments, no state.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn set_phase(phase: WorkerPhase) {
    let mut s = WORKER.exclusive();
    s.phase = phase;
    s.heartbeat_at = now();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_quota_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    {
        let mut s = WORKER.exclusive();
        *s = WorkerState {
            // SAFETY: a plain read of this process's pid global.
            pid: unsafe { pg_sys::MyProcPid },
            phase: WorkerPhase::Starting,
            started_at: now(),
            heartbeat_at: now(),
            ticks: 0,
            ..Default::default()
        };
    }
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("pg_quota worker started in database \"{database}\"");

    // When single strategies were last scanned (0 = never since start: scan on the first tick).
    let mut single_scanned_at: pg_sys::TimestampTz = 0;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration on SIGHUP, as every background worker does.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // One tick: never an ERROR out of it (that would restart the worker and, before this,
        // stopped every strategy when one failed). The scan isolates strategies from each
        // other; anything else is logged, its transaction aborted, and the next tick comes.
        let outcome: Result<(bool, bool), String> =
            PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
                Ok(tick(&mut single_scanned_at))
            }))
            .catch_others(|e| {
                // SAFETY: the failed tick's transaction is still open; abort it as pg_cron's
                // launcher does after an error (pgrx has copied and flushed the error state).
                unsafe { pg_sys::AbortCurrentTransaction() };
                Err(match &e {
                    CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                        r.message().to_string()
                    }
                    CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
                })
            })
            .execute();
        let (installed, more) = match outcome {
            Ok(t) => t,
            Err(message) => {
                warning!("pg_quota worker: tick failed, going on: {message}");
                WORKER.exclusive().tick_errors += 1;
                (true, false)
            }
        };
        {
            let mut s = WORKER.exclusive();
            s.phase = if installed {
                WorkerPhase::Running
            } else {
                WorkerPhase::WaitingForExtension
            };
            s.heartbeat_at = now();
            s.ticks += 1;
        }
        // A strategy with users left for its fire (bounded batch) continues at once.
        let nap = if more { 0 } else { gucs::worker_naptime_ms() };
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(nap))) {
            break; // SIGTERM or postmaster death
        }
    }
    set_phase(WorkerPhase::Stopped);
    log!("pg_quota worker stopped");
}

/// One tick: is the extension installed; if so (and scheduling is on) run what is due, at most
/// `quota.scan_batch_size` users per strategy. Returns (installed, more work due now).
fn tick(single_scanned_at: &mut pg_sys::TimestampTz) -> (bool, bool) {
    let installed = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT 1 FROM pg_extension WHERE extname = 'pg_quota'",
                Some(1),
                &[],
            )
            .map(|t| !t.is_empty())
            .unwrap_or(false)
        })
    });
    if !installed {
        return (false, false);
    }
    // Holds past their TTL, at most quota.expire_batch_size per transaction.
    let expire_batch = gucs::expire_batch_size();
    let mut expire_more = false;
    if expire_batch > 0 {
        let (expired, more) =
            BackgroundWorker::transaction(move || crate::reservations::expire_impl(expire_batch));
        if expired > 0 {
            log!("pg_quota worker: expired {expired} reservations");
            WORKER.exclusive().expired += i64::from(expired);
        }
        expire_more = more;
    }
    // Pool leases past expiry, due quota resets, daily stats every quota.stats_interval, log
    // retention (issue 13), at most quota.pool_batch_size rows of each per tick.
    let pool_batch = gucs::pool_batch_size();
    let at = now();
    let last = POOL_STATS_AT.load(Ordering::Relaxed);
    let aggregate = last == 0 || at - last >= gucs::stats_interval_s() * 1_000_000;
    let (leases, resets, deleted) =
        BackgroundWorker::transaction(move || crate::pools::sweep_impl(pool_batch, aggregate));
    if aggregate {
        POOL_STATS_AT.store(at, Ordering::Relaxed);
    }
    if leases + resets + deleted > 0 {
        log!("pg_quota worker: pools: {leases} leases expired, {resets} quotas reset, {deleted} old request logs deleted");
    }
    let expire_more = expire_more || leases >= pool_batch || deleted >= pool_batch;
    if !gucs::scheduler_enabled() {
        return (installed, expire_more);
    }
    // Periodic strategies every tick; single ones every quota.scan_interval.
    let now = now();
    let single =
        *single_scanned_at == 0 || now - *single_scanned_at >= gucs::scan_interval_s() * 1_000_000;
    let batch = gucs::scan_batch_size();
    let (recharged, skipped, errors, more) = BackgroundWorker::transaction(move || {
        Spi::connect_mut(|c| {
            let t = c
                .update(
                    "SELECT coalesce(sum(recharged), 0)::bigint, coalesce(sum(skipped), 0)::bigint,
                            count(*) FILTER (WHERE error IS NOT NULL), coalesce(bool_or(more), false)
                     FROM quota.scan(NULL, $1, NULL, $2)",
                    Some(1),
                    &[single.into(), batch.into()],
                )
                .or_raise();
            let row = t.first();
            (
                row.get::<i64>(1).or_raise().unwrap_or(0),
                row.get::<i64>(2).or_raise().unwrap_or(0),
                row.get::<i64>(3).or_raise().unwrap_or(0),
                row.get::<bool>(4).or_raise().unwrap_or(false),
            )
        })
    });
    // A single scan that ran out of batch is not done: it goes on next tick (at once).
    if single && !more {
        *single_scanned_at = now;
    }
    if recharged > 0 {
        log!("pg_quota worker: recharged {recharged} users");
    }
    let mut s = WORKER.exclusive();
    s.recharged += recharged;
    s.skipped += skipped;
    s.strategy_errors += errors;
    s.last_scan_at = now;
    (installed, more || expire_more)
}

fn timestamp(ts: pg_sys::TimestampTz) -> Option<TimestampWithTimeZone> {
    if ts == 0 {
        None
    } else {
        TimestampWithTimeZone::try_from(ts).ok()
    }
}

#[pg_extern(volatile, parallel_safe)]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(state, String),
        name!(database, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_heartbeat, Option<TimestampWithTimeZone>),
        name!(ticks, i64),
        name!(last_scan_at, Option<TimestampWithTimeZone>),
        name!(recharged, i64),
        name!(skipped, i64),
        name!(strategy_errors, i64),
        name!(tick_errors, i64),
        name!(expired, i64),
    ),
> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return TableIterator::once((
            None,
            "not_preloaded".to_string(),
            gucs::database(),
            None,
            None,
            0,
            None,
            0,
            0,
            0,
            0,
            0,
        ));
    }
    let s = *WORKER.share();
    TableIterator::once((
        (s.pid != 0).then_some(s.pid),
        s.phase.name().to_string(),
        gucs::database(),
        timestamp(s.started_at),
        timestamp(s.heartbeat_at),
        s.ticks,
        timestamp(s.last_scan_at),
        s.recharged,
        s.skipped,
        s.strategy_errors,
        s.tick_errors,
        s.expired,
    ))
}

/// The version of the loaded library (`pg_quota.so`); /health calls it to prove the library
/// loads, which reading pg_extension (a catalog) does not.
#[pg_extern(stable, parallel_safe)]
fn library_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
