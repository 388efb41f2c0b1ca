//! Compiles a condition to a parameterized SQL predicate.
//!
//! The predicate reads `u` (`quota.users`) and, for `quota-le` only, `w` (`quota.wallets`,
//! expected as `LEFT JOIN quota.wallets w ON w.user_id = u.id`; no wallet counts as balance 0).
//! Every value from the condition is a bound parameter with an explicit cast; the SQL text holds
//! only fixed fragments and `$n` placeholders.
//!
//! | condition | SQL |
//! | --- | --- |
//! | `match-user(a, b)` | `u.id = ANY($n::text[])` |
//! | `register-before(ts)` | `u.register_time <= $n::timestamptz` |
//! | `access-after(ts)` | `u.access_time > $n::timestamptz` |
//! | `github-star(p)` | `u.github_star @> ARRAY[$n::text]` (GIN-indexable) |
//! | `quota-le(m, n)` | `coalesce(w.balance, 0) <= $n::bigint` |
//! | `is-vip(l)` | `u.vip >= $n::integer` |
//! | `belong-to(a, b)` | `u.org = ANY($n::text[])` |
//! | `true()` / `false()` | `true` / `false` |
//! | `and(a, b)` / `or(a, b)` | `(a AND b)` / `(a OR b)` |
//! | `not(a)` | `((a) IS NOT TRUE)` (no inner parentheses when `a` is an and/or) |
//!
//! NULL semantics. A leaf over a NULL column (no register_time, access_time or org) is NULL in
//! SQL where the evaluator says false. Under AND/OR alone that is harmless: a Kleene AND/OR
//! formula is TRUE exactly when it is true with every NULL read as false, and a WHERE clause
//! keeps only TRUE rows. Only negation would let NULL through, so `not(a)` compiles to
//! `(a IS NOT TRUE)`, which is two-valued and equals the evaluator's `!eval(a)`. Leaves stay
//! bare so indexes (GIN on github_star, btree on id, vip, org, times) remain usable.
//!
//! Use the predicate in a WHERE clause (or as `(predicate) IS TRUE` where a boolean value is
//! needed): the top-level value may be NULL where the evaluator says false.

use super::ast::Expr;
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// One bound parameter, in placeholder order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    /// Bound as `text` (`$n::text`).
    Text(String),
    /// Bound as `text[]` (`$n::text[]`).
    TextArray(Vec<String>),
    /// Bound as `bigint` (`$n::bigint`, or `$n::integer` for is-vip, whose level fits in 32 bits).
    Int(i64),
    /// Bound as `timestamptz` (`$n::timestamptz`).
    Timestamp(DateTime<Utc>),
}

impl SqlParam {
    /// The PostgreSQL type to bind the parameter as (the SQL text casts it to the same type,
    /// except `is-vip`'s `$n::integer`, an exact cast from bigint).
    pub fn pg_type(&self) -> &'static str {
        match self {
            SqlParam::Text(_) => "text",
            SqlParam::TextArray(_) => "text[]",
            SqlParam::Int(_) => "bigint",
            SqlParam::Timestamp(_) => "timestamptz",
        }
    }
}

/// The predicate text and its parameters; placeholders start at `$first_param` (1-based) and
/// are numbered in order, one per parameter.
pub fn to_sql(expr: &Expr, first_param: usize) -> (String, Vec<SqlParam>) {
    let mut c = Compiler {
        sql: String::new(),
        params: Vec::new(),
        first: first_param,
    };
    c.expr(expr);
    (c.sql, c.params)
}

struct Compiler {
    sql: String,
    params: Vec<SqlParam>,
    first: usize,
}

impl Compiler {
    /// Adds a parameter and returns its placeholder number.
    fn param(&mut self, p: SqlParam) -> usize {
        self.params.push(p);
        self.first + self.params.len() - 1
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::MatchUser(ids) => {
                let n = self.param(SqlParam::TextArray(ids.clone()));
                let _ = write!(self.sql, "u.id = ANY(${n}::text[])");
            }
            Expr::BelongTo(orgs) => {
                let n = self.param(SqlParam::TextArray(orgs.clone()));
                let _ = write!(self.sql, "u.org = ANY(${n}::text[])");
            }
            Expr::RegisterBefore(ts) => {
                let n = self.param(SqlParam::Timestamp(*ts));
                let _ = write!(self.sql, "u.register_time <= ${n}::timestamptz");
            }
            Expr::AccessAfter(ts) => {
                let n = self.param(SqlParam::Timestamp(*ts));
                let _ = write!(self.sql, "u.access_time > ${n}::timestamptz");
            }
            Expr::GithubStar(p) => {
                let n = self.param(SqlParam::Text(p.clone()));
                let _ = write!(self.sql, "u.github_star @> ARRAY[${n}::text]");
            }
            Expr::QuotaLe { amount, .. } => {
                let n = self.param(SqlParam::Int(*amount));
                let _ = write!(self.sql, "coalesce(w.balance, 0) <= ${n}::bigint");
            }
            Expr::IsVip(level) => {
                let n = self.param(SqlParam::Int(i64::from(*level)));
                let _ = write!(self.sql, "u.vip >= ${n}::integer");
            }
            Expr::True => self.sql.push_str("true"),
            Expr::False => self.sql.push_str("false"),
            Expr::And(v) => self.list(v, " AND "),
            Expr::Or(v) => self.list(v, " OR "),
            Expr::Not(x) => {
                // And/Or are already parenthesized; a leaf gets its own parentheses.
                let wrap = !matches!(**x, Expr::And(_) | Expr::Or(_));
                self.sql.push_str(if wrap { "((" } else { "(" });
                self.expr(x);
                self.sql.push_str(if wrap {
                    ") IS NOT TRUE)"
                } else {
                    " IS NOT TRUE)"
                });
            }
        }
    }

    fn list(&mut self, v: &[Expr], op: &str) {
        self.sql.push('(');
        for (k, x) in v.iter().enumerate() {
            if k > 0 {
                self.sql.push_str(op);
            }
            self.expr(x);
        }
        self.sql.push(')');
    }
}
