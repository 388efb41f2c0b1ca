//! The per-user evaluator. Two-valued: a missing fact never matches a leaf that reads it, and
//! `not` is plain negation of that answer (the SQL compiler produces the same).

use super::ast::Expr;
use chrono::{DateTime, Utc};

/// What a condition can read about one user (`quota.users` plus the wallet balance; a user with
/// no wallet has balance 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFacts {
    pub id: String,
    pub vip: i32,
    pub org: Option<String>,
    pub github_star: Vec<String>,
    pub register_time: Option<DateTime<Utc>>,
    pub access_time: Option<DateTime<Utc>>,
    pub balance: i64,
}

/// Whether `user` satisfies `expr`.
pub fn eval(expr: &Expr, user: &UserFacts) -> bool {
    match expr {
        Expr::MatchUser(ids) => ids.contains(&user.id),
        Expr::RegisterBefore(ts) => user.register_time.is_some_and(|t| t <= *ts),
        Expr::AccessAfter(ts) => user.access_time.is_some_and(|t| t > *ts),
        Expr::GithubStar(p) => user.github_star.iter().any(|s| s == p),
        Expr::QuotaLe { amount, .. } => user.balance <= *amount,
        Expr::IsVip(level) => user.vip >= *level,
        Expr::BelongTo(orgs) => user
            .org
            .as_ref()
            .is_some_and(|o| orgs.iter().any(|x| x == o)),
        Expr::True => true,
        Expr::False => false,
        Expr::And(v) => v.iter().all(|x| eval(x, user)),
        Expr::Or(v) => v.iter().any(|x| eval(x, user)),
        Expr::Not(x) => !eval(x, user),
    }
}
