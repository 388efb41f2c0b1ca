//! Exact rate limits (seed 001, issue 12): at most `burst` admissions in any 1 second and at most
//! `per_window` in any `window` seconds, under any concurrency (the caller holds the table's lock
//! while it decides and records).
//!
//! Exactness needs the times of the last admissions: a sliding log. A [`Ring`] keeps the last
//! `limit` admission times in order, so "fewer than `limit` admissions in (now - window, now]"
//! is "the ring is not full, or its oldest time is at or before now - window": O(1). A denied
//! request is not recorded. An admission can be taken back ([`Entry::undo`]) when a later check
//! (the quota) refuses the request, so it does not use up the window either.
//!
//! The table ([`find_slot`]) is a fixed array, partitioned by [`shard_of`] with each partition
//! behind its own lock (a partition that is full refuses even when another has room; sequential
//! ids fill them evenly): an entry is claimed for a token on first use and may be reused for another token once none of its admissions is inside its windows any more
//! (nothing is forgotten then). When every entry holds live admissions, the request is refused
//! ([`Decision::Full`]): the limiter never admits past a limit to make room.

/// The largest `per_window` and `burst` a ring can hold (the table's memory is sized by it).
pub const RING_MAX: usize = 1000;
pub const BURST_WINDOW_US: i64 = 1_000_000;

/// The last admission times (microseconds, non-decreasing), oldest at `head`.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ring {
    pub len: u32,
    pub head: u32,
    pub times: [i64; RING_MAX],
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            len: 0,
            head: 0,
            times: [0; RING_MAX],
        }
    }
}

/// What to put back when an admission is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The ring grew by one.
    Grew,
    /// The ring was full: its oldest time (this value) was overwritten.
    Replaced(i64),
}

impl Ring {
    fn at(&self, i: u32, limit: u32) -> i64 {
        self.times[((self.head + i) % limit) as usize]
    }

    /// The newest admission time, if any.
    pub fn newest(&self, limit: u32) -> Option<i64> {
        (self.len > 0).then(|| self.at(self.len - 1, limit))
    }

    /// None if one more admission at `now` fits in (now - window, now]; else the microseconds
    /// until the oldest admission in the window leaves it.
    pub fn wait_us(&self, limit: u32, window_us: i64, now: i64) -> Option<i64> {
        if self.len < limit {
            return None;
        }
        let oldest = self.at(0, limit);
        let frees_at = oldest.saturating_add(window_us);
        (frees_at > now).then_some(frees_at - now)
    }

    /// The logical index of the first admission after `since` (`len` when none): the times are
    /// non-decreasing in logical order, so a binary search, O(log limit) under the table's lock.
    fn first_after(&self, limit: u32, since: i64) -> u32 {
        let (mut lo, mut hi) = (0u32, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid, limit) > since {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// Admissions in (now - window, now].
    pub fn in_window(&self, limit: u32, window_us: i64, now: i64) -> u32 {
        self.len - self.first_after(limit, now.saturating_sub(window_us))
    }

    /// Microseconds until the oldest admission in the window leaves it (0 when none is in it).
    pub fn reset_us(&self, limit: u32, window_us: i64, now: i64) -> i64 {
        let i = self.first_after(limit, now.saturating_sub(window_us));
        if i < self.len {
            self.at(i, limit) + window_us - now
        } else {
            0
        }
    }

    pub fn push(&mut self, limit: u32, now: i64) -> Pushed {
        if self.len < limit {
            let i = ((self.head + self.len) % limit) as usize;
            self.times[i] = now;
            self.len += 1;
            Pushed::Grew
        } else {
            let i = self.head as usize;
            let old = self.times[i];
            self.times[i] = now;
            self.head = (self.head + 1) % limit;
            Pushed::Replaced(old)
        }
    }

    /// Takes back the newest admission (the one `push` returned `pushed` for).
    pub fn undo(&mut self, limit: u32, pushed: Pushed) {
        match pushed {
            Pushed::Grew => self.len = self.len.saturating_sub(1),
            Pushed::Replaced(old) => {
                self.head = (self.head + limit - 1) % limit;
                self.times[self.head as usize] = old;
            }
        }
    }
}

/// A token's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_window: u32,
    pub window_us: i64,
    pub burst: u32,
}

impl Limits {
    /// The limits of a token's settings, within what a ring holds.
    pub fn new(per_window: i32, window_s: i32, burst: i32) -> Limits {
        let clamp = |v: i32| (v.max(1) as u32).min(RING_MAX as u32);
        Limits {
            per_window: clamp(per_window),
            window_us: i64::from(window_s.max(1)) * 1_000_000,
            burst: clamp(burst),
        }
    }
}

/// One token's state in the table. `key` 0 = free.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Entry {
    pub key: i64,
    pub limits_per_window: u32,
    pub limits_burst: u32,
    pub limits_window_us: i64,
    pub window: Ring,
    pub burst: Ring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: `remaining` admissions left in the window, `reset_us` until a slot frees.
    Admit {
        remaining: u32,
        reset_us: i64,
        undo: (Pushed, Pushed),
    },
    /// More than `burst` in the last second.
    Burst { retry_after_us: i64, reset_us: i64 },
    /// More than `per_window` in the window.
    Window { retry_after_us: i64, reset_us: i64 },
    /// The table has no entry to give this token.
    Full,
}

impl Entry {
    fn limits(&self) -> Limits {
        Limits {
            per_window: self.limits_per_window,
            window_us: self.limits_window_us,
            burst: self.limits_burst,
        }
    }

    /// Claims the entry for `key` with `limits`; a change of limits starts the entry afresh
    /// (the rings are sized by them).
    pub fn claim(&mut self, key: i64, limits: Limits) {
        if self.key != key || self.limits() != limits {
            self.key = key;
            self.limits_per_window = limits.per_window;
            self.limits_burst = limits.burst;
            self.limits_window_us = limits.window_us;
            self.window.len = 0;
            self.window.head = 0;
            self.burst.len = 0;
            self.burst.head = 0;
        }
    }

    /// True when none of its admissions is inside its windows (it can be given to another key
    /// without forgetting anything).
    pub fn stale(&self, now: i64) -> bool {
        self.key == 0 || {
            let l = self.limits();
            let w = self.window.newest(l.per_window.max(1));
            let b = self.burst.newest(l.burst.max(1));
            w.is_none_or(|t| t <= now - l.window_us) && b.is_none_or(|t| t <= now - BURST_WINDOW_US)
        }
    }

    /// Burst first, then the window; records the admission in both, or nothing.
    pub fn admit(&mut self, now: i64) -> Decision {
        let l = self.limits();
        // Times never go backwards inside a ring (a clock step back is read as no time passing).
        let now = [self.window.newest(l.per_window), self.burst.newest(l.burst)]
            .into_iter()
            .flatten()
            .fold(now, i64::max);
        let reset_us = self.window.reset_us(l.per_window, l.window_us, now);
        if let Some(wait) = self.burst.wait_us(l.burst, BURST_WINDOW_US, now) {
            return Decision::Burst {
                retry_after_us: wait,
                reset_us,
            };
        }
        if let Some(wait) = self.window.wait_us(l.per_window, l.window_us, now) {
            return Decision::Window {
                retry_after_us: wait,
                reset_us,
            };
        }
        let b = self.burst.push(l.burst, now);
        let w = self.window.push(l.per_window, now);
        let used = self.window.in_window(l.per_window, l.window_us, now);
        Decision::Admit {
            remaining: l.per_window.saturating_sub(used),
            reset_us: self.window.reset_us(l.per_window, l.window_us, now),
            undo: (b, w),
        }
    }

    /// What is left in the window and when a slot frees, without admitting anything (for the
    /// headers of an answer that never reached the limiter).
    pub fn peek(&self, now: i64) -> (u32, i64) {
        let l = self.limits();
        let used = self.window.in_window(l.per_window, l.window_us, now);
        (
            l.per_window.saturating_sub(used),
            self.window.reset_us(l.per_window, l.window_us, now),
        )
    }

    /// Takes back an admission (a later check refused the request).
    pub fn undo(&mut self, undo: (Pushed, Pushed)) {
        let l = self.limits();
        self.window.undo(l.per_window, undo.1);
        self.burst.undo(l.burst, undo.0);
    }
}

/// The entry for `key`: its own, else a free or stale one (any stale entry holds nothing), else
/// None (the table is full of live entries). `keys[i]` mirrors `entries[i].key` in a compact
/// array, so the common look-up scans 8 bytes per entry instead of touching every entry (each is
/// about 16 KB); the caller keeps it in step when it claims an entry.
pub fn find_slot(keys: &[i64], entries: &[Entry], key: i64, now: i64) -> Option<usize> {
    if let Some(i) = keys.iter().position(|&k| k == key) {
        return Some(i);
    }
    keys.iter()
        .position(|&k| k == 0)
        .or_else(|| entries.iter().position(|e| e.stale(now)))
}

/// Partitions of the shared table, each behind its own lock, so checks of different tokens do not
/// wait for each other (at most this many; fewer when the table has fewer entries).
pub const SHARDS_MAX: usize = 16;

/// How many partitions a table of `entries` has, and how many entries each holds (the last
/// partitions may get one more entry's worth of rounding: every partition has the same size, the
/// total is at least `entries`).
pub fn shard_layout(entries: usize) -> (usize, usize) {
    let entries = entries.max(1);
    let shards = SHARDS_MAX.min(entries);
    (shards, entries.div_ceil(shards))
}

/// The partition of a key: ids are sequential, so the remainder spreads them evenly.
pub fn shard_of(key: i64, shards: usize) -> usize {
    key.rem_euclid(shards.max(1) as i64) as usize
}

/// Seconds for a header: microseconds rounded up.
pub fn ceil_s(us: i64) -> i32 {
    (us.max(0).saturating_add(999_999) / 1_000_000).min(i64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn entry(per_window: i32, window_s: i32, burst: i32) -> Box<Entry> {
        let mut e: Box<Entry> = Box::default();
        e.claim(7, Limits::new(per_window, window_s, burst));
        e
    }

    fn admitted(d: Decision) -> bool {
        matches!(d, Decision::Admit { .. })
    }

    #[test]
    fn shards_cover_the_table_and_spread_sequential_ids() {
        assert_eq!(shard_layout(1), (1, 1));
        assert_eq!(shard_layout(1024), (16, 64));
        assert_eq!(shard_layout(1000), (16, 63));
        assert_eq!(shard_layout(5), (5, 1));
        for n in 1..200 {
            let (shards, per) = shard_layout(n);
            assert!(shards * per >= n && shards <= SHARDS_MAX);
        }
        let mut count = [0usize; SHARDS_MAX];
        for id in 1..=1600 {
            count[shard_of(id, SHARDS_MAX)] += 1;
        }
        assert!(count.iter().all(|&c| c == 100));
        assert!(shard_of(-3, 16) < 16);
    }

    #[test]
    fn window_admits_exactly_its_limit_in_any_window() {
        let mut e = entry(5, 60, 100);
        for i in 0..5 {
            assert!(admitted(e.admit(i * S)), "admission {i}");
        }
        match e.admit(10 * S) {
            Decision::Window { retry_after_us, .. } => assert_eq!(retry_after_us, 50 * S),
            d => panic!("{d:?}"),
        }
        // the first admission (t=0) leaves the window at t=60: one more fits, not two
        assert!(admitted(e.admit(60 * S)));
        assert!(!admitted(e.admit(60 * S)));
        assert!(admitted(e.admit(61 * S)));
    }

    #[test]
    fn burst_is_per_second_and_checked_first() {
        let mut e = entry(100, 60, 3);
        for _ in 0..3 {
            assert!(admitted(e.admit(S)));
        }
        assert!(matches!(e.admit(S + 10), Decision::Burst { .. }));
        assert!(admitted(e.admit(2 * S)));
    }

    #[test]
    fn denied_requests_are_not_counted_and_undo_gives_back() {
        let mut e = entry(2, 10, 10);
        assert!(admitted(e.admit(0)));
        let Decision::Admit { undo, .. } = e.admit(S) else {
            panic!()
        };
        for t in 2..9 {
            assert!(!admitted(e.admit(t * S)));
        }
        e.undo(undo);
        assert!(admitted(e.admit(9 * S)));
        assert_eq!(e.peek(9 * S), (0, S));
        // after the first leaves (t=10) one more fits
        assert!(admitted(e.admit(10 * S)));
        assert!(!admitted(e.admit(10 * S)));
    }

    #[test]
    fn undo_of_a_full_ring_restores_the_oldest() {
        let mut e = entry(2, 10, 10);
        assert!(admitted(e.admit(0)));
        assert!(admitted(e.admit(S)));
        let Decision::Admit { undo, .. } = e.admit(11 * S) else {
            panic!()
        };
        e.undo(undo);
        // back to {0, 1}: at 10.5 s only the admission at 0 has left
        assert!(admitted(e.admit(10 * S + S / 2)));
        assert!(!admitted(e.admit(10 * S + S / 2)));
    }

    #[test]
    fn a_model_check_against_the_definition() {
        // Random-ish times; the ring's decision equals counting admissions in the window.
        let mut e = entry(4, 3, 2);
        let mut log: Vec<i64> = Vec::new();
        let mut t = 0i64;
        for step in 0..2000u64 {
            t += ((step * 7919) % 900_000) as i64;
            let in_window = log.iter().filter(|&&x| x > t - 3 * S).count();
            let in_second = log.iter().filter(|&&x| x > t - S).count();
            let want = in_window < 4 && in_second < 2;
            let got = admitted(e.admit(t));
            assert_eq!(got, want, "step {step} at {t}");
            if got {
                log.push(t);
            }
        }
    }

    #[test]
    fn remaining_and_reset_match_counting_the_log() {
        // The binary search over the ring (wrapped many times) agrees with a linear count of the
        // admissions in the window and with the oldest of them.
        let limit = 7u32;
        let window = 5 * S;
        let mut ring = Ring::default();
        let mut log: Vec<i64> = Vec::new();
        let mut t = 0i64;
        for step in 0..3000u64 {
            t += ((step * 104_729) % 1_700_000) as i64;
            if step % 3 != 0 {
                ring.push(limit, t);
                log.push(t);
                if log.len() > limit as usize {
                    log.remove(0);
                }
            }
            let since = t - window;
            let inside: Vec<i64> = log.iter().copied().filter(|&x| x > since).collect();
            assert_eq!(
                ring.in_window(limit, window, t),
                inside.len() as u32,
                "step {step}"
            );
            let want_reset = inside.first().map_or(0, |&x| x + window - t);
            assert_eq!(ring.reset_us(limit, window, t), want_reset, "step {step}");
        }
    }

    #[test]
    fn slots_are_reused_only_when_stale() {
        let mut entries: Vec<Entry> = vec![Entry::default(); 2];
        let mut keys = vec![0i64; 2];
        let l = Limits::new(1, 10, 1);
        for key in [1, 2] {
            let i = find_slot(&keys, &entries, key, 0).unwrap();
            entries[i].claim(key, l);
            keys[i] = key;
            assert!(admitted(entries[i].admit(0)));
        }
        assert_eq!(
            find_slot(&keys, &entries, 3, 5 * S),
            None,
            "both live: full"
        );
        let i = find_slot(&keys, &entries, 3, 11 * S).expect("stale after the window");
        entries[i].claim(3, l);
        keys[i] = 3;
        assert!(admitted(entries[i].admit(11 * S)));
        assert_eq!(find_slot(&keys, &entries, 2, 11 * S), Some(1));
    }

    #[test]
    fn limits_are_bounded_and_changes_start_afresh() {
        let l = Limits::new(5000, 0, 0);
        assert_eq!(l.per_window, RING_MAX as u32);
        assert_eq!(l.burst, 1);
        assert_eq!(l.window_us, S);
        let mut e = entry(1, 60, 1);
        assert!(admitted(e.admit(0)));
        assert!(!admitted(e.admit(S)));
        e.claim(7, Limits::new(2, 60, 1));
        assert!(admitted(e.admit(2 * S)));
        assert_eq!(ceil_s(1), 1);
        assert_eq!(ceil_s(S), 1);
        assert_eq!(ceil_s(S + 1), 2);
        assert_eq!(ceil_s(-5), 0);
    }
}
