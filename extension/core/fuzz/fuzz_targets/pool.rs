//! Fuzz the pool rules: bytes drive limits, an account and a sequence of admit / release /
//! expire / consume / time steps with arbitrary (also huge or negative) numbers. Never a panic or
//! an overflow; after every step quota_held is the sum of the open leases' tokens and in_flight
//! their number, nothing is below 0, and an admission never leaves a window past its limit or the
//! quota past used + held <= limit. `rank` returns each index exactly once; `pool_refusal` never
//! answers NoAccount when some candidate was refused for a rate or the quota. Any JSON text given
//! to `Limits::apply_json` either applies or is a 22023 error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quota_core::pool::{
    admit, consume, expire_lease, pool_refusal, rank, release, Account, LeaseEnd, Limits,
    PoolRefusal, Refusal, Strategy,
};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn i64(&mut self) -> i64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.u8();
        }
        i64::from_le_bytes(v)
    }
    /// Mostly small, sometimes anything.
    fn num(&mut self) -> i64 {
        match self.u8() % 4 {
            0 => 0,
            1 | 2 => i64::from(self.u8()),
            _ => self.i64(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            let mut l = Limits::default();
            if let Err(e) = l.apply_json(&v) {
                assert_eq!(e.kind.sqlstate(), "22023");
                assert_eq!(l, Limits::default());
            }
        }
    }

    let mut b = Bytes(data);
    let mut limits = Limits {
        rpm: b.num(),
        rph: b.num(),
        rpd: b.num(),
        tpm: b.num(),
        tpd: b.num(),
        concurrent: b.num(),
    };
    // Stored limits are never negative (apply_json refuses them).
    for v in [
        &mut limits.rpm,
        &mut limits.rph,
        &mut limits.rpd,
        &mut limits.tpm,
        &mut limits.tpd,
        &mut limits.concurrent,
    ] {
        *v = v.checked_abs().unwrap_or(i64::MAX);
    }
    let mut now = b.i64() >> 8;
    let mut a = Account {
        quota_limit: b.num().max(0),
        quota_used: b.num().max(0),
        period_s: 60 + (b.num() & 0x1FF_FFFF),
        last_reset_us: now,
        active: b.u8() % 8 != 0,
        expires_at_us: (b.u8() % 2 == 0).then(|| now.saturating_add(b.num())),
        ..Account::default()
    };
    let mut open: Vec<LeaseEnd> = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    let threshold = f64::from(b.u8()) / 200.0;
    // Holds saturate at i64::MAX (only reachable with unlimited quota): the exact sum is checked
    // until then.
    let mut saturated = false;

    while !b.0.is_empty() {
        match b.u8() % 5 {
            0 => {
                let needed = b.num();
                match admit(&a, &limits, needed, now) {
                    Ok(ad) => {
                        a = ad.account.clone();
                        let n = needed.max(0);
                        let w = |limit: i64, v: i64| limit == 0 || v <= limit;
                        assert!(w(limits.rpm, a.minute_requests));
                        assert!(w(limits.rph, a.hour_requests));
                        assert!(w(limits.rpd, a.day_requests));
                        assert!(w(limits.tpm, a.minute_tokens));
                        assert!(w(limits.tpd, a.day_tokens));
                        assert!(w(limits.concurrent, a.in_flight));
                        if a.quota_limit > 0 {
                            assert!(
                                i128::from(a.quota_used) + i128::from(a.quota_held)
                                    <= i128::from(a.quota_limit)
                            );
                        }
                        open.push(ad.lease_end(n));
                    }
                    Err(r) => {
                        if let Refusal::Rate { retry_after_s, .. } = r {
                            assert!((1..=86_400).contains(&retry_after_s));
                        }
                        refusals.push(r);
                    }
                }
            }
            1 if !open.is_empty() => {
                let i = usize::from(b.u8()) % open.len();
                let mut lease = open.remove(i);
                let expired = b.u8() % 3 == 0;
                if expired {
                    a = expire_lease(&a, lease.tokens_needed);
                    lease.held = false;
                }
                if !expired || b.u8() % 2 == 0 {
                    let used = b.num();
                    a = release(&a, &lease, used, b.u8() % 2 == 0, threshold, now).0;
                }
            }
            2 => {
                if let Ok((c, _)) = consume(&a, b.num(), threshold, now) {
                    a = c;
                }
            }
            3 => now = now.saturating_add(b.num().rem_euclid(1 << 40)),
            _ => a.active = !a.active,
        }
        let held: i128 = open.iter().map(|l| i128::from(l.tokens_needed)).sum();
        saturated |= held > i128::from(i64::MAX);
        if !saturated {
            assert_eq!(i128::from(a.quota_held), held);
        }
        assert_eq!(a.in_flight, open.len() as i64);
        assert!(a.quota_used >= 0 && a.quota_held >= 0);
        assert!(a.minute_tokens >= 0 && a.day_tokens >= 0);
    }

    let accounts = vec![a.clone(), a.refreshed(now), Account::default(), a];
    for s in [
        Strategy::LeastUsed,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Best,
    ] {
        let mut order = rank(s, &accounts, &limits, now as u64, now as u64, now);
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2, 3]);
    }
    let p = pool_refusal(&refusals);
    let blocking = refusals
        .iter()
        .any(|r| matches!(r, Refusal::Quota { .. } | Refusal::Rate { .. }));
    assert_eq!(p == PoolRefusal::NoAccount, !blocking);
});
