//! Model test of the reservation arithmetic (quota_core::reservation): random sequences of
//! reserve, settle, release and expiry on limited and unlimited users of one prepaid or postpaid
//! organization, applied the way the extension applies them. After every step: no wallet below
//! 0, no hold uncovered, a prepaid quota never below 0, a postpaid organization never past
//! quota + overdraft_limit, held amounts equal the open holds, and a settle splits its actual
//! amount into charged + uncollected.

use proptest::prelude::*;
use quota_core::reservation::{check_org_hold, check_user_hold, settle_split, Billing, Org};

#[derive(Debug, Clone)]
enum Step {
    Reserve { user: usize, credits: i64 },
    Settle { pick: usize, actual: i64 },
    Release { pick: usize },
    Switch { user: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..4usize, 0..80i64).prop_map(|(user, credits)| Step::Reserve { user, credits }),
        (0..64usize, 0..200i64).prop_map(|(pick, actual)| Step::Settle { pick, actual }),
        (0..64usize).prop_map(|pick| Step::Release { pick }),
        (0..4usize).prop_map(|user| Step::Switch { user }),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Wallet {
    balance: i64,
    held: i64,
    unlimited: bool,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    user: usize,
    unlimited: bool,
    user_hold: i64,
    org_hold: i64,
}

fn check(org: &Org, wallets: &[Wallet], holds: &[Hold]) {
    for (i, w) in wallets.iter().enumerate() {
        assert!(w.balance >= 0, "wallet {i} below 0: {w:?}");
        assert!(
            w.held >= 0 && w.held <= w.balance,
            "wallet {i} hold uncovered: {w:?}"
        );
        let open: i64 = holds
            .iter()
            .filter(|h| h.user == i)
            .map(|h| h.user_hold)
            .sum();
        assert_eq!(w.held, open, "wallet {i} held vs open holds");
    }
    assert_eq!(
        org.held_quota,
        holds.iter().map(|h| h.org_hold).sum::<i64>()
    );
    assert!(org.quota >= 0 && org.used_quota >= 0 && org.held_quota >= 0);
    assert!(
        org.available() >= 0,
        "organization promised more than it has: {org:?}"
    );
    if org.billing == Billing::Postpaid {
        assert!(org.used_quota <= org.quota + org.overdraft_limit);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn holds_never_overdraw(
        postpaid in any::<bool>(),
        quota in 0..300i64,
        overdraft in 0..100i64,
        balances in proptest::collection::vec(0..150i64, 4),
        unlimited in proptest::collection::vec(any::<bool>(), 4),
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let mut org = Org {
            billing: if postpaid { Billing::Postpaid } else { Billing::Prepaid },
            enabled: true,
            quota,
            used_quota: 0,
            held_quota: 0,
            overdraft_limit: if postpaid { overdraft } else { 0 },
        };
        let mut wallets: Vec<Wallet> = balances
            .iter()
            .zip(&unlimited)
            .map(|(&balance, &unlimited)| Wallet { balance, held: 0, unlimited })
            .collect();
        let mut holds: Vec<Hold> = Vec::new();
        for s in steps {
            match s {
                Step::Reserve { user, credits } => {
                    let w = wallets[user];
                    let user_ok = w.unlimited || check_user_hold("u", w.balance, w.held, credits).is_ok();
                    let org_ok = check_org_hold("o", &org, credits).is_ok();
                    if user_ok && org_ok {
                        let user_hold = if w.unlimited { 0 } else { credits };
                        wallets[user].held += user_hold;
                        org.held_quota += credits;
                        holds.push(Hold { user, unlimited: w.unlimited, user_hold, org_hold: credits });
                    }
                }
                Step::Settle { pick, actual } if !holds.is_empty() => {
                    let h = holds.remove(pick % holds.len());
                    let w = &mut wallets[h.user];
                    if !h.unlimited {
                        let split = settle_split(h.user_hold, actual, w.balance - w.held);
                        prop_assert_eq!(split.charged + split.uncollected, actual);
                        w.balance -= split.charged;
                    }
                    w.held -= h.user_hold;
                    let split = settle_split(h.org_hold, actual, org.available());
                    prop_assert_eq!(split.charged + split.uncollected, actual);
                    let (q, u, held) = org.settle_changes(h.org_hold, split.charged);
                    org.quota += q;
                    org.used_quota += u;
                    org.held_quota += held;
                }
                Step::Release { pick } if !holds.is_empty() => {
                    let h = holds.remove(pick % holds.len());
                    wallets[h.user].held -= h.user_hold;
                    org.held_quota -= h.org_hold;
                }
                Step::Switch { user } => wallets[user].unlimited = !wallets[user].unlimited,
                _ => {}
            }
            check(&org, &wallets, &holds);
        }
    }
}
