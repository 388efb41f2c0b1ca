//! The rate limiter's table in shared memory (issue 12): `quota.rate_limit_entries` entries of
//! `quota_core::ratelimit::Entry` (about 16 KB each) in up to 16 partitions by token id, each
//! behind its own LWLock, so a limit is exact across every backend without writing WAL and checks
//! of different tokens rarely wait for each other. The decisions (and the partitioning) are
//! `quota_core::ratelimit`'s.
//!
//! What a restart forgets: the table lives in shared memory only, so after a restart (or a crash)
//! every window starts empty; in the window that spans the restart a token may be admitted up to
//! its limit again. An admission whose transaction later aborts stays counted (the table is not
//! transactional): the limiter errs on the side of refusing.

use crate::gucs;
use pgrx::prelude::*;
use pgrx::shmem::{PGRXSharedMemory, PgSharedMemoryInitialization};
use pgrx::{pg_shmem_init, pg_sys};
use quota_core::ratelimit::{shard_layout, shard_of, Entry};
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const NAME: &CStr = c"pg_quota_rate_limiter";

#[repr(C)]
struct Header {
    locks: *mut pg_sys::LWLockPadded,
    shards: usize,
    per_shard: usize,
    /// Verifications since the server started, by outcome (VERDICTS order): lock-free counters
    /// for /metrics, so SQL callers are counted too and nothing is written per request.
    verdicts: [AtomicU64; VERDICTS.len()],
}

/// The outcomes of quota.verify_token that quota.token_verifications() counts.
pub const VERDICTS: [&str; 8] = [
    "valid",
    "unknown_token",
    "inactive",
    "expired",
    "burst",
    "window",
    "limiter_full",
    "quota_exceeded",
];

pub struct RateTable {
    header: UnsafeCell<*mut Header>,
}

// SAFETY: the pointer is set once per process in the shmem startup hook (before any query) and
// only read afterwards; the memory it points to is guarded by the LWLock.
unsafe impl Sync for RateTable {}

pub static RATE_TABLE: RateTable = RateTable {
    header: UnsafeCell::new(std::ptr::null_mut()),
};

static PRELOADED: AtomicBool = AtomicBool::new(false);

// Layout: the header, the keys (one i64 per entry, a compact index), then the entries; partition
// s owns keys and entries [s * per_shard, (s + 1) * per_shard).
fn size(entries: usize) -> usize {
    let (shards, per_shard) = shard_layout(entries);
    let n = shards * per_shard;
    std::mem::size_of::<Header>()
        + n * std::mem::size_of::<i64>()
        + n * std::mem::size_of::<Entry>()
}

/// A marker value type for pg_shmem_init! (the table is zeroed in place, never built on a stack).
#[derive(Clone, Copy, Default)]
pub struct Zeroed;

// SAFETY: a unit marker; nothing is shared through it.
unsafe impl PGRXSharedMemory for Zeroed {}

impl PgSharedMemoryInitialization for RateTable {
    type Value = Zeroed;

    unsafe fn on_shmem_request(&'static self) {
        // SAFETY: called from the shmem_request_hook (pg_shmem_init!), where these are allowed.
        unsafe {
            pg_sys::RequestAddinShmemSpace(size(gucs::rate_limit_entries()));
            let (shards, _) = shard_layout(gucs::rate_limit_entries());
            pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), shards as i32);
        }
    }

    unsafe fn on_shmem_startup(&'static self, _value: Zeroed) {
        // SAFETY: called from the shmem_startup_hook: AddinShmemInitLock serializes the
        // initialisation; the region is ours (named) and sized as requested; an all-zero Entry
        // is a free entry.
        unsafe {
            let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let entries = gucs::rate_limit_entries();
            let mut found = false;
            let header =
                pg_sys::ShmemInitStruct(NAME.as_ptr(), size(entries), &mut found).cast::<Header>();
            if !found {
                std::ptr::write_bytes(header.cast::<u8>(), 0, size(entries));
                let (shards, per_shard) = shard_layout(entries);
                (*header).locks = pg_sys::GetNamedLWLockTranche(NAME.as_ptr());
                (*header).shards = shards;
                (*header).per_shard = per_shard;
            }
            *self.header.get() = header;
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

pub fn init_preloaded() {
    pg_shmem_init!(RATE_TABLE = Zeroed);
    PRELOADED.store(true, Ordering::Relaxed);
}

struct Held(*mut pg_sys::LWLock);

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: we hold this lock (acquired below); an ERROR would release it in abort
        // processing instead, but nothing between acquire and drop raises one.
        unsafe { pg_sys::LWLockRelease(self.0) }
    }
}

/// Runs `f` on the partition that holds `key` (its key index and its entries) under the
/// partition's exclusive lock; None when the library was not preloaded (no shared memory: rate
/// limits cannot be enforced).
pub fn with_table<R>(key: i64, f: impl FnOnce(&mut [i64], &mut [Entry]) -> R) -> Option<R> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: set by the startup hook in the postmaster and inherited by every backend.
    let header = unsafe { *RATE_TABLE.header.get() };
    if header.is_null() {
        return None;
    }
    // SAFETY: the header was initialised by the startup hook; the keys and then the entries
    // follow it in the same region (8-byte aligned); a partition's keys and entries are only
    // touched under its exclusive lock, taken here (one lock per partition in the tranche).
    unsafe {
        let (shards, per) = ((*header).shards, (*header).per_shard);
        let s = shard_of(key, shards);
        let lock = &raw mut (*(*header).locks.add(s)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let _held = Held(lock);
        let keys_at = header.add(1).cast::<i64>();
        let keys = std::slice::from_raw_parts_mut(keys_at.add(s * per), per);
        let entries_at = keys_at.add(shards * per).cast::<Entry>();
        let entries = std::slice::from_raw_parts_mut(entries_at.add(s * per), per);
        Some(f(keys, entries))
    }
}

/// Microseconds of the real clock (the limiter's time; quota.now_override does not move it).
pub fn now_us() -> i64 {
    // SAFETY: a plain read of the current time.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Counts one verification outcome (a code of VERDICTS; others are ignored).
pub fn count_verdict(code: &str) {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: set by the startup hook in the postmaster and inherited by every backend.
    let header = unsafe { *RATE_TABLE.header.get() };
    if let (false, Some(i)) = (header.is_null(), VERDICTS.iter().position(|&c| c == code)) {
        // SAFETY: the header lives in shared memory for the server's life; the counters are
        // atomics, read and written without the partition locks.
        unsafe { (*header).verdicts[i].fetch_add(1, Ordering::Relaxed) };
    }
}

/// Verifications since the server started, by outcome (zeros when not preloaded).
#[pg_extern(volatile, parallel_safe)]
pub fn token_verifications() -> TableIterator<'static, (name!(outcome, String), name!(count, i64))>
{
    // SAFETY: as in count_verdict.
    let header = if PRELOADED.load(Ordering::Relaxed) {
        unsafe { *RATE_TABLE.header.get() }
    } else {
        std::ptr::null_mut()
    };
    let rows: Vec<(String, i64)> = VERDICTS
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let n = if header.is_null() {
                0
            } else {
                // SAFETY: as in count_verdict.
                unsafe { (*header).verdicts[i].load(Ordering::Relaxed) }
            };
            (code.to_string(), n.min(i64::MAX as u64) as i64)
        })
        .collect();
    TableIterator::new(rows)
}
