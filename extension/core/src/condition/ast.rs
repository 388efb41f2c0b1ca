//! The condition AST and its canonical text form.
//!
//! `Display` prints the canonical form: function syntax only (infix `a and b` becomes
//! `and(a, b)`), every string quoted with escapes, integers bare, timestamps quoted as
//! `"YYYY-MM-DD HH:MM:SS"` (UTC; RFC 3339 with microseconds when there is a fraction), arguments
//! separated by `", "`. Parsing the canonical form gives back an equal AST.

use chrono::{DateTime, Utc};
use std::fmt::{self, Write};

/// One parsed condition. Leaves read one user fact; `And`/`Or` have at least two operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `match-user(id, ...)`: the user's id is one of these.
    MatchUser(Vec<String>),
    /// `register-before(ts)`: register_time <= ts (inclusive); no register_time: false.
    RegisterBefore(DateTime<Utc>),
    /// `access-after(ts)`: access_time > ts (strict); no access_time: false.
    AccessAfter(DateTime<Utc>),
    /// `github-star(project)`: the project is in the user's github_star set (exact, case-sensitive).
    GithubStar(String),
    /// `quota-le(model, amount)`: balance <= amount. The model is kept for display only.
    QuotaLe { model: String, amount: i64 },
    /// `is-vip(level)`: vip >= level.
    IsVip(i32),
    /// `belong-to(org, ...)`: the user's org is one of these; no org: false.
    BelongTo(Vec<String>),
    /// `true()`.
    True,
    /// `false()`.
    False,
    /// `and(a, b, ...)` or `a and b and ...`.
    And(Vec<Expr>),
    /// `or(a, b, ...)` or `a or b or ...`.
    Or(Vec<Expr>),
    /// `not(a)`.
    Not(Box<Expr>),
}

impl Expr {
    /// The canonical text (same as `to_string()`).
    pub fn normalize(&self) -> String {
        self.to_string()
    }

    /// The function name of this node, as written in the language.
    pub fn function_name(&self) -> &'static str {
        match self {
            Expr::MatchUser(_) => "match-user",
            Expr::RegisterBefore(_) => "register-before",
            Expr::AccessAfter(_) => "access-after",
            Expr::GithubStar(_) => "github-star",
            Expr::QuotaLe { .. } => "quota-le",
            Expr::IsVip(_) => "is-vip",
            Expr::BelongTo(_) => "belong-to",
            Expr::True => "true",
            Expr::False => "false",
            Expr::And(_) => "and",
            Expr::Or(_) => "or",
            Expr::Not(_) => "not",
        }
    }

    /// Number of nodes (functions, leaves included).
    pub fn node_count(&self) -> usize {
        match self {
            Expr::And(v) | Expr::Or(v) => 1 + v.iter().map(Expr::node_count).sum::<usize>(),
            Expr::Not(x) => 1 + x.node_count(),
            _ => 1,
        }
    }

    /// Nesting depth of the canonical form (a leaf is 1, `not(leaf)` is 2).
    pub fn depth(&self) -> usize {
        match self {
            Expr::And(v) | Expr::Or(v) => 1 + v.iter().map(Expr::depth).max().unwrap_or(0),
            Expr::Not(x) => 1 + x.depth(),
            _ => 1,
        }
    }

    /// Whether the condition reads the wallet balance (`quota-le`), i.e. whether the SQL
    /// predicate needs the wallets join `w`.
    pub fn uses_balance(&self) -> bool {
        match self {
            Expr::QuotaLe { .. } => true,
            Expr::And(v) | Expr::Or(v) => v.iter().any(Expr::uses_balance),
            Expr::Not(x) => x.uses_balance(),
            _ => false,
        }
    }
}

/// Writes `s` as a double-quoted string literal with backslash escapes.
pub fn write_quoted(out: &mut impl Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\t' => out.write_str("\\t")?,
            '\r' => out.write_str("\\r")?,
            c if c.is_control() => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// `s` as a quoted literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_quoted(&mut out, s).expect("writing to a String cannot fail");
    out
}

/// The canonical timestamp text (without quotes): the seed's `YYYY-MM-DD HH:MM:SS` (UTC) when
/// there is no fractional second, else RFC 3339 UTC with microseconds.
pub fn format_timestamp(ts: &DateTime<Utc>) -> String {
    if ts.timestamp_subsec_nanos() == 0 {
        ts.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, name: &str, items: &[String]) -> fmt::Result {
    f.write_str(name)?;
    f.write_char('(')?;
    for (k, s) in items.iter().enumerate() {
        if k > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, s)?;
    }
    f.write_char(')')
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.function_name();
        match self {
            Expr::MatchUser(ids) => write_list(f, name, ids),
            Expr::BelongTo(orgs) => write_list(f, name, orgs),
            Expr::RegisterBefore(ts) | Expr::AccessAfter(ts) => {
                f.write_str(name)?;
                f.write_char('(')?;
                write_quoted(f, &format_timestamp(ts))?;
                f.write_char(')')
            }
            Expr::GithubStar(p) => {
                f.write_str(name)?;
                f.write_char('(')?;
                write_quoted(f, p)?;
                f.write_char(')')
            }
            Expr::QuotaLe { model, amount } => {
                f.write_str(name)?;
                f.write_char('(')?;
                write_quoted(f, model)?;
                write!(f, ", {amount})")
            }
            Expr::IsVip(level) => write!(f, "{name}({level})"),
            Expr::True | Expr::False => write!(f, "{name}()"),
            Expr::And(v) | Expr::Or(v) => {
                f.write_str(name)?;
                f.write_char('(')?;
                for (k, x) in v.iter().enumerate() {
                    if k > 0 {
                        f.write_str(", ")?;
                    }
                    fmt::Display::fmt(x, f)?;
                }
                f.write_char(')')
            }
            Expr::Not(x) => write!(f, "not({x})"),
        }
    }
}
