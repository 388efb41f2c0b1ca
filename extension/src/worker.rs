//! The pg_quota background worker (registered when the library is in shared_preload_libraries).
//! It connects to `quota.database`, waits for the extension to be installed there, keeps a
//! heartbeat in shared memory, and exits cleanly on SIGTERM. Later features give it jobs; each
//! job is a SQL-callable function so tests can drive it without the worker (pg_cron's lesson).

use crate::gucs;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
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
}

unsafe impl PGRXSharedMemory for WorkerState {}

static WORKER: PgLwLock<WorkerState> = unsafe { PgLwLock::new(c"pg_quota_worker_state") };

/// Set in _PG_init in the postmaster; backends inherit it through fork.
static PRELOADED: AtomicBool = AtomicBool::new(false);

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
            pid: unsafe { pg_sys::MyProcPid },
            phase: WorkerPhase::Starting,
            started_at: now(),
            heartbeat_at: now(),
            ticks: 0,
        };
    }
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("pg_quota worker started in database \"{database}\"");

    // When single strategies were last scanned (0 = never since start: scan on the first tick).
    let mut single_scanned_at: pg_sys::TimestampTz = 0;
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let installed = BackgroundWorker::transaction(|| {
            Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_quota')")
                .ok()
                .flatten()
                .unwrap_or(false)
        });
        if installed && gucs::scheduler_enabled() {
            // Periodic strategies every tick; single ones every quota.scan_interval. An ERROR here
            // ends the worker, which the postmaster restarts (pg_cron's launcher does the same).
            let now = now();
            let single = single_scanned_at == 0 || now - single_scanned_at >= gucs::scan_interval_s() * 1_000_000;
            let recharged = BackgroundWorker::transaction(move || {
                Spi::get_one_with_args::<i64>(
                    "SELECT coalesce(sum(recharged), 0)::bigint FROM quota.scan(NULL, $1)",
                    &[single.into()],
                )
                .ok()
                .flatten()
                .unwrap_or(0)
            });
            if single {
                single_scanned_at = now;
            }
            if recharged > 0 {
                log!("pg_quota worker: recharged {recharged} users");
            }
        }
        {
            let mut s = WORKER.exclusive();
            s.phase = if installed { WorkerPhase::Running } else { WorkerPhase::WaitingForExtension };
            s.heartbeat_at = now();
            s.ticks += 1;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(gucs::worker_naptime_ms()))) {
            break; // SIGTERM or postmaster death
        }
    }
    set_phase(WorkerPhase::Stopped);
    log!("pg_quota worker stopped");
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
    ),
> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return TableIterator::once((None, "not_preloaded".to_string(), gucs::database(), None, None, 0));
    }
    let s = *WORKER.share();
    TableIterator::once((
        (s.pid != 0).then_some(s.pid),
        s.phase.name().to_string(),
        gucs::database(),
        timestamp(s.started_at),
        timestamp(s.heartbeat_at),
        s.ticks,
    ))
}
