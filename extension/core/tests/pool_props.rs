//! Model test of the pool rules (quota_core::pool): random sequences of admit, release (of open
//! and of expired leases), expiry, consume, time steps and activation toggles on one account of a
//! provider with random limits, checked against a small model that keeps the admissions' times
//! and the leases instead of counters. After every step:
//! - quota_held is the sum of the open leases' tokens_needed and in_flight their number;
//! - quota_used and last_reset are the model's (lazy reset included);
//! - every admit and consume decides exactly as the model: availability (inactive, expired,
//!   quota with used + held + needed <= limit, equality admits), then concurrent, rpm, rph, rpd,
//!   tpm, tpd in that order with the window's retry_after; a limit of 0 never refuses;
//! - the warning fires exactly when usage crosses the threshold, once per quota window, and the
//!   exhausted alert once per window.

use proptest::prelude::*;
use quota_core::pool::{
    admit, consume, exhausted_alert, expire_lease, release, window_start, Account, Alert, LeaseEnd,
    LimitType, Limits, Refusal, DAY_US, HOUR_US, MINUTE_US,
};
use std::collections::HashMap;

/// 2026-01-01 23:58:00 UTC: minute, hour and day boundaries come soon.
const START: i64 = 1_767_311_880_000_000;

#[derive(Debug, Clone)]
enum Step {
    Admit {
        needed: i64,
    },
    Release {
        pick: usize,
        used: i64,
        success: bool,
    },
    Expire {
        pick: usize,
    },
    Consume {
        tokens: i64,
    },
    Advance {
        us: i64,
    },
    Toggle,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..150i64).prop_map(|needed| Step::Admit { needed }),
        3 => (0..64usize, 0..300i64, any::<bool>())
            .prop_map(|(pick, used, success)| Step::Release { pick, used, success }),
        1 => (0..64usize).prop_map(|pick| Step::Expire { pick }),
        1 => (0..400i64).prop_map(|tokens| Step::Consume { tokens }),
        3 => prop_oneof![
            0..5_000_000i64,
            0..(2 * MINUTE_US),
            0..(2 * HOUR_US),
            0..(30 * HOUR_US),
        ]
        .prop_map(|us| Step::Advance { us }),
        1 => Just(Step::Toggle),
    ]
}

fn limit() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 1..5i64]
}

fn token_limit() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 1..400i64]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LeaseState {
    Open,
    Expired,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    end: LeaseEnd,
    state: LeaseState,
}

#[derive(Debug, Clone)]
struct Model {
    limits: Limits,
    quota_limit: i64,
    period_us: i64,
    used: i64,
    last_reset: i64,
    active: bool,
    expires_at: Option<i64>,
    admissions: Vec<i64>,
    minute_tokens: HashMap<i64, i64>,
    day_tokens: HashMap<i64, i64>,
    leases: Vec<Lease>,
    /// Threshold as tenths (8 = 0.8).
    tenths: i64,
    warned: Option<i64>,
    exhausted: Option<i64>,
}

fn retry(unit: i64, now: i64) -> i64 {
    let end = window_start(now, unit) + unit;
    ((end - now) + 999_999) / 1_000_000
}

impl Model {
    /// The lazy reset; the model only keeps it when the account is written (as the account).
    fn refreshed(&self, now: i64) -> Model {
        let mut m = self.clone();
        if now >= m.last_reset + m.period_us {
            m.used = 0;
            m.last_reset = now;
        }
        m
    }

    fn held(&self) -> i64 {
        self.open().map(|l| l.end.tokens_needed).sum()
    }

    fn open(&self) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(|l| l.state == LeaseState::Open)
    }

    fn availability(&self, needed: i64, now: i64) -> Result<(), Refusal> {
        if !self.active {
            return Err(Refusal::Inactive);
        }
        if self.expires_at.is_some_and(|e| e <= now) {
            return Err(Refusal::Expired);
        }
        if self.quota_limit > 0 && self.used + self.held() + needed > self.quota_limit {
            return Err(Refusal::Quota {
                reset_at_us: self.last_reset + self.period_us,
            });
        }
        Ok(())
    }

    fn requests_in(&self, unit: i64, now: i64) -> i64 {
        let w = window_start(now, unit);
        self.admissions
            .iter()
            .filter(|&&t| window_start(t, unit) == w)
            .count() as i64
    }

    fn predict_admit(&self, needed: i64, now: i64) -> Result<(), Refusal> {
        self.availability(needed, now)?;
        let rate = |limit_type, retry_after_s| {
            Err(Refusal::Rate {
                limit_type,
                retry_after_s,
            })
        };
        let l = self.limits;
        if l.concurrent > 0 && self.open().count() as i64 + 1 > l.concurrent {
            return rate(LimitType::Concurrent, 1);
        }
        for (t, unit, limit) in [
            (LimitType::Rpm, MINUTE_US, l.rpm),
            (LimitType::Rph, HOUR_US, l.rph),
            (LimitType::Rpd, DAY_US, l.rpd),
        ] {
            if limit > 0 && self.requests_in(unit, now) + 1 > limit {
                return rate(t, retry(unit, now));
            }
        }
        let tm = self
            .minute_tokens
            .get(&window_start(now, MINUTE_US))
            .copied();
        if l.tpm > 0 && tm.unwrap_or(0) + needed > l.tpm {
            return rate(LimitType::Tpm, retry(MINUTE_US, now));
        }
        let td = self.day_tokens.get(&window_start(now, DAY_US)).copied();
        if l.tpd > 0 && td.unwrap_or(0) + needed > l.tpd {
            return rate(LimitType::Tpd, retry(DAY_US, now));
        }
        Ok(())
    }

    fn warns(&mut self, before: i64) -> bool {
        let past = |u: i64| u * 10 >= self.tenths * self.quota_limit;
        if self.quota_limit > 0
            && !past(before)
            && past(self.used)
            && self.warned != Some(self.last_reset)
        {
            self.warned = Some(self.last_reset);
            true
        } else {
            false
        }
    }

    fn window_release(map: &mut HashMap<i64, i64>, lease_start: i64, now_start: i64, delta: i64) {
        if lease_start == now_start {
            let v = map.entry(now_start).or_insert(0);
            *v = (*v + delta).max(0);
        } else {
            *map.entry(now_start).or_insert(0) += delta.max(0);
        }
    }
}

fn check(a: &Account, m: &Model, now: i64) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.quota_held, m.held(), "held vs open leases");
    prop_assert_eq!(
        a.in_flight,
        m.open().count() as i64,
        "in_flight vs open leases"
    );
    prop_assert_eq!(a.quota_used, m.used);
    prop_assert_eq!(a.last_reset_us, m.last_reset);
    let r = a.refreshed(now);
    let mr = m.refreshed(now);
    prop_assert_eq!(r.quota_used, mr.used);
    prop_assert_eq!(r.last_reset_us, mr.last_reset);
    prop_assert_eq!(r.minute_requests, m.requests_in(MINUTE_US, now));
    prop_assert_eq!(r.hour_requests, m.requests_in(HOUR_US, now));
    prop_assert_eq!(r.day_requests, m.requests_in(DAY_US, now));
    let tm = m.minute_tokens.get(&window_start(now, MINUTE_US)).copied();
    prop_assert_eq!(r.minute_tokens, tm.unwrap_or(0));
    let td = m.day_tokens.get(&window_start(now, DAY_US)).copied();
    prop_assert_eq!(r.day_tokens, td.unwrap_or(0));
    prop_assert!(a.quota_used >= 0 && a.quota_held >= 0 && a.in_flight >= 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn pool_account_follows_the_model(
        limits in (limit(), limit(), limit(), token_limit(), token_limit(), limit()).prop_map(
            |(rpm, rph, rpd, tpm, tpd, concurrent)| Limits { rpm, rph, rpd, tpm, tpd, concurrent }
        ),
        quota_limit in prop_oneof![Just(0i64), 1..1500i64],
        period_s in prop_oneof![Just(60i64), Just(3600i64), Just(86_400i64)],
        expires_in in proptest::option::of(0..(48 * HOUR_US)),
        tenths in 5..=10i64,
        initial_used in prop_oneof![Just(0i64), 0..2000i64],
        start_offset in 0..(3 * MINUTE_US),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut now = START + start_offset;
        let threshold = tenths as f64 / 10.0;
        let mut a = Account {
            quota_limit,
            quota_used: initial_used,
            period_s,
            last_reset_us: now,
            active: true,
            expires_at_us: expires_in.map(|d| now + d),
            ..Account::default()
        };
        let mut m = Model {
            limits,
            quota_limit,
            period_us: period_s * 1_000_000,
            used: initial_used,
            last_reset: now,
            active: true,
            expires_at: a.expires_at_us,
            admissions: Vec::new(),
            minute_tokens: HashMap::new(),
            day_tokens: HashMap::new(),
            leases: Vec::new(),
            tenths,
            warned: None,
            exhausted: None,
        };
        for s in steps {
            match s {
                Step::Admit { needed } => {
                    let mut n = m.refreshed(now);
                    let expected = n.predict_admit(needed, now);
                    match admit(&a, &limits, needed, now) {
                        Ok(ad) => {
                            prop_assert_eq!(expected, Ok(()));
                            let end = ad.lease_end(needed);
                            prop_assert_eq!(end.minute_start_us, window_start(now, MINUTE_US));
                            prop_assert_eq!(end.day_start_us, window_start(now, DAY_US));
                            a = ad.account;
                            n.admissions.push(now);
                            *n.minute_tokens.entry(end.minute_start_us).or_insert(0) += needed;
                            *n.day_tokens.entry(end.day_start_us).or_insert(0) += needed;
                            n.leases.push(Lease { end, state: LeaseState::Open });
                            m = n;
                        }
                        Err(refusal) => {
                            prop_assert_eq!(Err(refusal.clone()), expected);
                            if matches!(refusal, Refusal::Quota { .. }) {
                                let r = a.refreshed(now);
                                match exhausted_alert(&r) {
                                    Some(b) => {
                                        prop_assert_ne!(n.exhausted, Some(n.last_reset));
                                        n.exhausted = Some(n.last_reset);
                                        a = b;
                                        m = n;
                                    }
                                    None => prop_assert_eq!(n.exhausted, Some(n.last_reset)),
                                }
                            }
                        }
                    }
                }
                Step::Release { pick, used, success } if !m.leases.is_empty() => {
                    m = m.refreshed(now);
                    let lease = m.leases.remove(pick % m.leases.len());
                    let mut end = lease.end;
                    end.held = lease.state == LeaseState::Open;
                    let (b, alert) = release(&a, &end, used, success, threshold, now);
                    a = b;
                    let before = m.used;
                    m.used += used;
                    let delta = used - end.tokens_needed;
                    Model::window_release(
                        &mut m.minute_tokens,
                        end.minute_start_us,
                        window_start(now, MINUTE_US),
                        delta,
                    );
                    Model::window_release(
                        &mut m.day_tokens,
                        end.day_start_us,
                        window_start(now, DAY_US),
                        delta,
                    );
                    let warned = m.warns(before);
                    prop_assert_eq!(alert, warned.then_some(Alert::Warning));
                }
                Step::Expire { pick } => {
                    let open: Vec<usize> = (0..m.leases.len())
                        .filter(|&i| m.leases[i].state == LeaseState::Open)
                        .collect();
                    if !open.is_empty() {
                        let i = open[pick % open.len()];
                        a = expire_lease(&a, m.leases[i].end.tokens_needed);
                        m.leases[i].state = LeaseState::Expired;
                    }
                }
                Step::Consume { tokens } => {
                    let expected = m.refreshed(now).availability(tokens, now);
                    match consume(&a, tokens, threshold, now) {
                        Ok((b, alert)) => {
                            prop_assert_eq!(expected, Ok(()));
                            a = b;
                            m = m.refreshed(now);
                            let before = m.used;
                            m.used += tokens;
                            let warned = m.warns(before);
                            prop_assert_eq!(alert, warned.then_some(Alert::Warning));
                        }
                        Err(refusal) => prop_assert_eq!(Err(refusal), expected),
                    }
                }
                Step::Advance { us } => now += us,
                Step::Toggle => {
                    a.active = !a.active;
                    m.active = !m.active;
                }
                _ => {}
            }
            check(&a, &m, now)?;
        }
    }
}

/// Admitting with every limit at its value and needing exactly what is left admits; one more
/// request or token is refused by that limit.
#[test]
fn equality_admits_every_limit() {
    let now = START;
    for t in LimitType::ALL {
        let mut limits = Limits::default();
        limits.set(t, 3);
        let tokens = matches!(t, LimitType::Tpm | LimitType::Tpd);
        let a = Account {
            quota_limit: 300,
            quota_used: 297,
            period_s: 86_400,
            last_reset_us: now,
            active: true,
            ..Account::default()
        };
        let needed = if tokens { 3 } else { 1 };
        let n = if tokens { 1 } else { 3 };
        let mut b = a.clone();
        for _ in 0..n {
            b = admit(&b, &limits, needed, now)
                .expect("at the limit")
                .account;
        }
        assert_eq!(b.quota_held, 3, "{t:?}: used + held == limit admitted");
        let mut c = b.clone();
        c.quota_held = 0;
        c.quota_used = 0;
        match admit(&c, &limits, 1, now) {
            Err(Refusal::Rate { limit_type, .. }) => assert_eq!(limit_type, t),
            other => panic!("{t:?}: {other:?}"),
        }
        assert!(matches!(
            admit(&b, &Limits::default(), 1, now),
            Err(Refusal::Quota { .. })
        ));
    }
}
