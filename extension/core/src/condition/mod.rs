//! The condition language of recharge strategies (SPEC 6.2).
//!
//! ```text
//! and(is-vip(1), github-star("zgsm"))
//! register-before("2023-01-01 00:00:00") or is-vip(2)
//! ```
//!
//! - [`parse`]: text to [`Expr`], with the byte position and what was expected on error.
//! - [`Expr`]'s `Display` / [`Expr::normalize`]: the canonical text; `parse(e.to_string()) == e`.
//! - [`eval`]: the per-user evaluator over [`UserFacts`].
//! - [`to_sql`]: the same condition as a parameterized SQL predicate over `users u` (and
//!   `wallets w`); it gives the same two-valued answer as [`eval`] for every user.
//! - [`sample_expressions`] / [`sample_users`]: deterministic random inputs for agreement tests
//!   (plain tests here, and in-database tests comparing [`to_sql`] with [`eval`]).

pub mod ast;
pub mod eval;
pub mod parser;
pub mod sample;
pub mod sql;

#[cfg(test)]
mod tests;

pub use ast::Expr;
pub use eval::{eval, UserFacts};
pub use parser::{parse, MAX_ARGS, MAX_DEPTH, MAX_LEN, MAX_NODES, MAX_STRING};
pub use sample::{sample_expressions, sample_users};
pub use sql::{to_sql, SqlParam};

use crate::error::QuotaError;
use std::fmt;

/// A condition that does not parse: where (byte offset into the text, plus 1-based line and
/// column in characters), what was expected there, and a full message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    pub position: usize,
    pub line: usize,
    pub column: usize,
    pub expected: String,
    pub message: String,
}

impl ConditionError {
    pub(crate) fn new(
        src: &str,
        position: usize,
        expected: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_column(src, position);
        ConditionError {
            position,
            line,
            column,
            expected: expected.to_string(),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `pos` in `src`.
pub fn line_column(src: &str, pos: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (k, c) in src.char_indices() {
        if k >= pos {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 1 {
            write!(
                f,
                "at {} (line {}, column {}): {}",
                self.position, self.line, self.column, self.message
            )
        } else {
            write!(f, "at {}: {}", self.position, self.message)
        }
    }
}

impl std::error::Error for ConditionError {}

impl From<ConditionError> for QuotaError {
    fn from(e: ConditionError) -> Self {
        QuotaError::invalid(format!("invalid condition {e}"))
            .with("field", "condition")
            .with("position", e.position)
            .with("line", e.line)
            .with("column", e.column)
            .with("expected", e.expected)
    }
}

/// Parses and returns the canonical text, the form to store and show.
pub fn normalize(src: &str) -> Result<String, ConditionError> {
    parse(src).map(|e| e.to_string())
}
