//! The condition grammar, written with nom 8 combinators.
//!
//! ```text
//! condition := ws or_expr ws EOF
//! or_expr   := and_expr ("or" and_expr)*         -- left-assoc, a chain becomes one n-ary Or
//! and_expr  := primary ("and" primary)*          -- binds tighter than or
//! primary   := "(" or_expr ")" | call
//! call      := name "(" args? ")"
//! args      := or_expr ("," or_expr)*            -- for and / or / not
//!            | value ("," value)*                -- for the leaf functions
//! value     := '"' (char | escape)* '"' | bare   -- bare: letters, digits and _ - . : / @ +
//! ```
//!
//! Every bound is checked before recursing, so no input can overflow the stack: input length,
//! parenthesis nesting, node count, arguments per function, string length. Errors carry the
//! byte position and what was expected there.

use super::ast::Expr;
use super::ConditionError;
use chrono::{DateTime, Datelike, Utc};
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::char as nom_char;
use nom::combinator::cut;
use nom::error::{ErrorKind, ParseError};
use nom::multi::{many_m_n, separated_list1};
use nom::sequence::preceded;
use nom::{IResult, Parser};
use std::cell::Cell;

/// Longest accepted condition text, in bytes (the normalized form is held to it too).
pub const MAX_LEN: usize = 4096;
/// Deepest parenthesis nesting (`not(not(...))`, groups and argument lists all count).
pub const MAX_DEPTH: usize = 32;
/// Most functions (nodes) in one condition.
pub const MAX_NODES: usize = 1000;
/// Most arguments of one function, and most operands of one infix chain.
pub const MAX_ARGS: usize = 100;
/// Longest string argument (quoted or bare), in characters, after unescaping.
pub const MAX_STRING: usize = 256;

// ---------------------------------------------------------------------------------------------
// Errors inside the parser

/// nom error: where, what was expected there, and an optional full message.
#[derive(Debug)]
pub(crate) struct PErr<'a> {
    at: &'a str,
    expected: &'static str,
    message: Option<String>,
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        PErr {
            at: input,
            expected: "",
            message: None,
        }
    }
    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }
    fn or(self, other: Self) -> Self {
        // Keep the error that got furthest.
        if other.at.len() <= self.at.len() {
            other
        } else {
            self
        }
    }
}

type Res<'a, T> = IResult<&'a str, T, PErr<'a>>;
type NomErr<'a> = nom::Err<PErr<'a>>;

fn failure<'a>(at: &'a str, expected: &'static str, message: impl Into<String>) -> NomErr<'a> {
    nom::Err::Failure(PErr {
        at,
        expected,
        message: Some(message.into()),
    })
}

/// Runs `p`; a plain error of it is relabelled "expected `expected`" at the input's start.
fn expect<'a, O, P>(mut p: P, expected: &'static str) -> impl FnMut(&'a str) -> Res<'a, O>
where
    P: Parser<&'a str, Output = O, Error = PErr<'a>>,
{
    move |i: &'a str| {
        p.parse(i).map_err(|e| match e {
            nom::Err::Error(_) => nom::Err::Error(PErr {
                at: i,
                expected,
                message: None,
            }),
            other => other,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Lexical layer

fn ws(i: &str) -> Res<'_, &str> {
    take_while(char::is_whitespace).parse(i)
}

/// One punctuation character after optional whitespace.
fn punct<'a>(c: char, expected: &'static str) -> impl FnMut(&'a str) -> Res<'a, char> {
    move |i: &'a str| preceded(ws, expect(nom_char(c), expected)).parse(i)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn is_bare_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '@' | '+')
}

/// An infix keyword (`and`, `or`) after optional whitespace, not followed by a name character.
/// Returns the input from the keyword on (its position: errors measure positions by the length
/// of what remains).
fn keyword<'a>(kw: &'static str) -> impl FnMut(&'a str) -> Res<'a, &'a str> {
    move |i: &'a str| {
        let (i, _) = ws(i)?;
        let (rest, _) = tag(kw).parse(i)?;
        if rest.starts_with(is_name_char) {
            return Err(nom::Err::Error(PErr {
                at: i,
                expected: kw,
                message: None,
            }));
        }
        Ok((rest, i))
    }
}

/// A string argument: quoted (with escapes) or bare.
#[derive(Debug)]
enum Val<'a> {
    Quoted(String),
    Bare(&'a str),
}

impl Val<'_> {
    fn text(&self) -> &str {
        match self {
            Val::Quoted(s) => s,
            Val::Bare(s) => s,
        }
    }
    fn into_string(self) -> String {
        match self {
            Val::Quoted(s) => s,
            Val::Bare(s) => s.to_string(),
        }
    }
}

fn hex4(i: &str) -> Option<u32> {
    let h = i.get(..4)?;
    if h.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(h, 16).ok()
    } else {
        None
    }
}

const ESCAPES: &str = "an escape: \\\" \\\\ \\/ \\n \\t \\r \\b \\f or \\uXXXX";

/// `"..."` with backslash escapes. Raw control characters must be escaped.
fn quoted(i: &str) -> Res<'_, Val<'_>> {
    let start = i;
    let (mut i, _) = nom_char('"').parse(i)?;
    let mut out = String::new();
    let mut chars = 0usize;
    loop {
        let (r, run) = take_while(|c: char| c != '"' && c != '\\' && !c.is_control()).parse(i)?;
        out.push_str(run);
        chars += run.chars().count();
        i = r;
        let Some(c) = i.chars().next() else {
            return Err(failure(
                start,
                "'\"'",
                "unterminated string: expected a closing '\"'",
            ));
        };
        match c {
            '"' => {
                i = &i[1..];
                break;
            }
            '\\' => {
                let esc = i;
                let Some(e) = i[1..].chars().next() else {
                    return Err(failure(esc, ESCAPES, "unterminated string after '\\'"));
                };
                i = &i[1 + e.len_utf8()..];
                let decoded = match e {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'u' => {
                        let Some(hi) = hex4(i) else {
                            return Err(failure(
                                esc,
                                "\\u followed by 4 hex digits",
                                "invalid \\u escape: expected 4 hex digits",
                            ));
                        };
                        i = &i[4..];
                        let code = if (0xD800..0xDC00).contains(&hi) {
                            // A surrogate pair: \uD83D\uDE00.
                            let lo = i
                                .strip_prefix("\\u")
                                .and_then(hex4)
                                .filter(|lo| (0xDC00..0xE000).contains(lo));
                            let Some(lo) = lo else {
                                return Err(failure(
                                    esc,
                                    "a low surrogate \\uDC00-\\uDFFF",
                                    "invalid \\u escape: unpaired surrogate",
                                ));
                            };
                            i = &i[6..];
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        } else {
                            hi
                        };
                        match char::from_u32(code) {
                            Some('\0') => {
                                return Err(failure(
                                    esc,
                                    "a character other than U+0000",
                                    "strings cannot contain U+0000",
                                ));
                            }
                            Some(c) => c,
                            None => {
                                return Err(failure(
                                    esc,
                                    "a Unicode scalar value",
                                    "invalid \\u escape: unpaired surrogate",
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(failure(esc, ESCAPES, format!("invalid escape '\\{e}'")));
                    }
                };
                out.push(decoded);
                chars += 1;
            }
            c => {
                return Err(failure(
                    i,
                    ESCAPES,
                    format!("control character U+{:04X} in a string: write it as an escape (\\n, \\t, \\uXXXX)", c as u32),
                ));
            }
        }
        if chars > MAX_STRING {
            return Err(failure(
                start,
                "a shorter string",
                format!("string longer than {MAX_STRING} characters"),
            ));
        }
    }
    if chars > MAX_STRING {
        return Err(failure(
            start,
            "a shorter string",
            format!("string longer than {MAX_STRING} characters"),
        ));
    }
    Ok((i, Val::Quoted(out)))
}

fn bare(i: &str) -> Res<'_, Val<'_>> {
    let (r, w) = take_while1(is_bare_char).parse(i)?;
    if w.chars().count() > MAX_STRING {
        return Err(failure(
            i,
            "a shorter word",
            format!("word longer than {MAX_STRING} characters"),
        ));
    }
    Ok((r, Val::Bare(w)))
}

/// A value argument after optional whitespace, with its position.
fn value(i: &str) -> Res<'_, (&str, Val<'_>)> {
    let (i, _) = ws(i)?;
    let (r, v) = if i.starts_with('"') {
        quoted(i)?
    } else {
        expect(bare, "a quoted string or a bare word").parse(i)?
    };
    Ok((r, (i, v)))
}

// ---------------------------------------------------------------------------------------------
// Functions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    MatchUser,
    RegisterBefore,
    AccessAfter,
    GithubStar,
    QuotaLe,
    IsVip,
    BelongTo,
    True,
    False,
    And,
    Or,
    Not,
}

const FUNCS: [Func; 12] = [
    Func::MatchUser,
    Func::RegisterBefore,
    Func::AccessAfter,
    Func::GithubStar,
    Func::QuotaLe,
    Func::IsVip,
    Func::BelongTo,
    Func::True,
    Func::False,
    Func::And,
    Func::Or,
    Func::Not,
];

const FUNCTION_LIST: &str =
    "a function: match-user, register-before, access-after, github-star, quota-le, is-vip, belong-to, true, false, and, or, not";

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::MatchUser => "match-user",
            Func::RegisterBefore => "register-before",
            Func::AccessAfter => "access-after",
            Func::GithubStar => "github-star",
            Func::QuotaLe => "quota-le",
            Func::IsVip => "is-vip",
            Func::BelongTo => "belong-to",
            Func::True => "true",
            Func::False => "false",
            Func::And => "and",
            Func::Or => "or",
            Func::Not => "not",
        }
    }

    fn lookup(name: &str) -> Option<Func> {
        FUNCS.iter().copied().find(|f| f.name() == name)
    }

    /// (min, max) argument count.
    fn arity(self) -> (usize, usize) {
        match self {
            Func::MatchUser | Func::BelongTo => (1, MAX_ARGS),
            Func::RegisterBefore | Func::AccessAfter | Func::GithubStar | Func::IsVip => (1, 1),
            Func::QuotaLe => (2, 2),
            Func::True | Func::False => (0, 0),
            Func::And | Func::Or => (2, MAX_ARGS),
            Func::Not => (1, 1),
        }
    }

    fn signature(self) -> &'static str {
        match self {
            Func::MatchUser => "match-user(id, ...)",
            Func::RegisterBefore => "register-before(\"YYYY-MM-DD HH:MM:SS\")",
            Func::AccessAfter => "access-after(\"YYYY-MM-DD HH:MM:SS\")",
            Func::GithubStar => "github-star(project)",
            Func::QuotaLe => "quota-le(model, amount)",
            Func::IsVip => "is-vip(level)",
            Func::BelongTo => "belong-to(org, ...)",
            Func::True => "true()",
            Func::False => "false()",
            Func::And => "and(a, b, ...)",
            Func::Or => "or(a, b, ...)",
            Func::Not => "not(a)",
        }
    }

    fn arity_text(self) -> String {
        match self.arity() {
            (0, 0) => "no arguments".into(),
            (1, 1) => "exactly 1 argument".into(),
            (a, b) if a == b => format!("exactly {a} arguments"),
            (1, b) => format!("1 to {b} arguments"),
            (a, b) => format!("{a} to {b} arguments"),
        }
    }

    fn is_logical(self) -> bool {
        matches!(self, Func::And | Func::Or | Func::Not)
    }
}

fn unknown_function(name: &str) -> String {
    let folded = name.to_ascii_lowercase().replace('_', "-");
    match Func::lookup(&folded) {
        Some(f) if f.name() != name => {
            format!("unknown function '{name}': function names are lowercase with '-', did you mean '{}'?", f.name())
        }
        _ => format!("unknown function '{name}'"),
    }
}

// ---------------------------------------------------------------------------------------------
// Structure

struct Ctx {
    nodes: Cell<usize>,
}

impl Ctx {
    fn node<'a>(&self, at: &'a str) -> Result<(), NomErr<'a>> {
        let n = self.nodes.get() + 1;
        if n > MAX_NODES {
            return Err(failure(
                at,
                "a smaller condition",
                format!("condition has more than {MAX_NODES} functions"),
            ));
        }
        self.nodes.set(n);
        Ok(())
    }
}

/// Opening a parenthesis at `at` when `depth` are already open.
fn open(at: &str, depth: usize) -> Result<(), NomErr<'_>> {
    if depth >= MAX_DEPTH {
        return Err(failure(
            at,
            "a shallower condition",
            format!("condition nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}

type Operand = for<'a, 'c> fn(&'a str, &'c Ctx, usize) -> Res<'a, Expr>;

/// `operand (kw operand)*`, flattened into one n-ary node.
fn chain<'a>(
    i: &'a str,
    cx: &Ctx,
    depth: usize,
    kw: &'static str,
    operand: Operand,
    make: fn(Vec<Expr>) -> Expr,
) -> Res<'a, Expr> {
    let (i, first) = operand(i, cx, depth)?;
    let (i, rest) = many_m_n(
        0,
        MAX_ARGS - 1,
        preceded(keyword(kw), cut(|j| operand(j, cx, depth))),
    )
    .parse(i)?;
    if rest.is_empty() {
        return Ok((i, first));
    }
    if let Ok((_, at)) = keyword(kw)(i) {
        return Err(failure(
            at,
            "fewer operands",
            format!("more than {MAX_ARGS} operands joined by '{kw}'"),
        ));
    }
    cx.node(i)?;
    let mut all = Vec::with_capacity(rest.len() + 1);
    all.push(first);
    all.extend(rest);
    Ok((i, make(all)))
}

fn or_expr<'a>(i: &'a str, cx: &Ctx, depth: usize) -> Res<'a, Expr> {
    chain(i, cx, depth, "or", and_expr, Expr::Or)
}

fn and_expr<'a>(i: &'a str, cx: &Ctx, depth: usize) -> Res<'a, Expr> {
    chain(i, cx, depth, "and", primary, Expr::And)
}

fn primary<'a>(i: &'a str, cx: &Ctx, depth: usize) -> Res<'a, Expr> {
    let (i, _) = ws(i)?;
    if let Some(inner) = i.strip_prefix('(') {
        open(i, depth)?;
        let (r, e) = or_expr(inner, cx, depth + 1)?;
        let (r, _) = cut(punct(')', "'and', 'or' or ')'")).parse(r)?;
        return Ok((r, e));
    }
    call(i, cx, depth)
}

const A_CONDITION: &str = "a condition, e.g. is-vip(1), true() or '('";

fn call<'a>(i: &'a str, cx: &Ctx, depth: usize) -> Res<'a, Expr> {
    let start = i;
    let (i, name) = expect(take_while1(is_name_char), A_CONDITION).parse(i)?;
    let Some(f) = Func::lookup(name) else {
        return Err(failure(start, FUNCTION_LIST, unknown_function(name)));
    };
    let (i, _) = ws(i)?;
    if !i.starts_with('(') {
        let hint = match f {
            Func::True | Func::False => format!(" (write {name}())"),
            _ => format!(" (write {})", f.signature()),
        };
        return Err(failure(
            i,
            "'('",
            format!("expected '(' after '{name}'{hint}"),
        ));
    }
    open(i, depth)?;
    cx.node(start)?;
    let depth = depth + 1;
    let (min, max) = f.arity();
    let (inner, _) = ws(&i[1..])?;
    if let Some(r) = inner.strip_prefix(')') {
        return match f {
            Func::True => Ok((r, Expr::True)),
            Func::False => Ok((r, Expr::False)),
            _ => Err(failure(
                inner,
                if f.is_logical() {
                    A_CONDITION
                } else {
                    "an argument"
                },
                format!("{name} takes {}: {}", f.arity_text(), f.signature()),
            )),
        };
    }
    if max == 0 {
        return Err(failure(
            inner,
            "')'",
            format!("{name}() takes no arguments"),
        ));
    }

    let too_many = |at: &'a str| -> NomErr<'a> {
        if max == MAX_ARGS {
            failure(
                at,
                "')'",
                format!("too many arguments: {name} takes at most {MAX_ARGS}"),
            )
        } else {
            failure(
                at,
                "')'",
                format!("{name} takes {}: {}", f.arity_text(), f.signature()),
            )
        }
    };
    let too_few = |at: &'a str| -> NomErr<'a> {
        failure(
            at,
            "','",
            format!("{name} takes {}: {}", f.arity_text(), f.signature()),
        )
    };

    if f.is_logical() {
        let arg = |j: &'a str| -> Res<'a, (&'a str, Expr)> {
            let (j, _) = ws(j)?;
            let (r, e) = or_expr(j, cx, depth)?;
            Ok((r, (j, e)))
        };
        let (r, mut args) = separated_list1(punct(',', "','"), cut(arg)).parse(inner)?;
        let (r, _) = ws(r)?;
        let close = r;
        let (r, _) = cut(punct(')', "'and', 'or', ',' or ')'")).parse(r)?;
        if args.len() > max {
            return Err(too_many(args[max].0));
        }
        if args.len() < min {
            return Err(too_few(close));
        }
        let e = match f {
            Func::Not => Expr::Not(Box::new(args.pop().expect("one argument").1)),
            Func::And => Expr::And(args.into_iter().map(|a| a.1).collect()),
            _ => Expr::Or(args.into_iter().map(|a| a.1).collect()),
        };
        return Ok((r, e));
    }

    let (r, args) = separated_list1(punct(',', "','"), cut(value)).parse(inner)?;
    let (r, _) = ws(r)?;
    let close = r;
    let (r, _) = cut(punct(')', "',' or ')'")).parse(r)?;
    if args.len() > max {
        return Err(too_many(args[max].0));
    }
    if args.len() < min {
        return Err(too_few(close));
    }
    let e = match f {
        Func::MatchUser => Expr::MatchUser(args.into_iter().map(|a| a.1.into_string()).collect()),
        Func::BelongTo => Expr::BelongTo(args.into_iter().map(|a| a.1.into_string()).collect()),
        Func::GithubStar => Expr::GithubStar(
            args.into_iter()
                .next()
                .expect("one argument")
                .1
                .into_string(),
        ),
        Func::RegisterBefore | Func::AccessAfter => {
            let (at, v) = &args[0];
            let ts = timestamp(name, at, v)?;
            if f == Func::RegisterBefore {
                Expr::RegisterBefore(ts)
            } else {
                Expr::AccessAfter(ts)
            }
        }
        Func::IsVip => {
            let (at, v) = &args[0];
            let level = integer::<i32>(at, v, "is-vip level")?;
            Expr::IsVip(level)
        }
        Func::QuotaLe => {
            let mut it = args.into_iter();
            let (_, model) = it.next().expect("two arguments");
            let (at, amount) = it.next().expect("two arguments");
            let amount = integer::<i64>(at, &amount, "quota-le amount")?;
            Expr::QuotaLe {
                model: model.into_string(),
                amount,
            }
        }
        Func::True | Func::False | Func::And | Func::Or | Func::Not => {
            unreachable!("handled above")
        }
    };
    Ok((r, e))
}

fn integer<'a, T: std::str::FromStr>(
    at: &'a str,
    v: &Val<'_>,
    what: &str,
) -> Result<T, NomErr<'a>> {
    let t = v.text();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(failure(
            at,
            "an integer",
            format!("{what} must be an integer, found {}", shown(t)),
        ));
    }
    t.parse::<T>().map_err(|_| {
        failure(
            at,
            "an integer in range",
            format!("{what} {t} is out of range"),
        )
    })
}

/// A timestamp argument: `YYYY-MM-DD HH:MM:SS` (UTC), `YYYY-MM-DD` or RFC 3339, years 1 to 9999,
/// truncated to microseconds (the precision of PostgreSQL's timestamptz).
fn timestamp<'a>(name: &str, at: &'a str, v: &Val<'_>) -> Result<DateTime<Utc>, NomErr<'a>> {
    let t = v.text();
    let bad = || {
        failure(
            at,
            "a timestamp \"YYYY-MM-DD HH:MM:SS\"",
            format!("{name} expects a timestamp \"YYYY-MM-DD HH:MM:SS\" (UTC), \"YYYY-MM-DD\" or RFC 3339, found {}", shown(t)),
        )
    };
    if t.trim() != t || t.is_empty() {
        return Err(bad());
    }
    let ts = crate::time::parse_timestamp(name, t).map_err(|_| bad())?;
    // Through microseconds since the epoch: truncates to timestamptz precision, and a leap
    // second (23:59:60) becomes the next second's start, as PostgreSQL reads it.
    let ts = DateTime::<Utc>::from_timestamp_micros(ts.timestamp_micros()).ok_or_else(bad)?;
    if !(1..=9999).contains(&ts.year()) {
        return Err(failure(
            at,
            "a year between 1 and 9999",
            format!("{name}: timestamp {} is out of range", shown(t)),
        ));
    }
    Ok(ts)
}

fn shown(t: &str) -> String {
    let cut: String = t.chars().take(40).collect();
    let ell = if cut.len() < t.len() { "..." } else { "" };
    format!("{}{ell}", super::ast::quote(&cut))
}

// ---------------------------------------------------------------------------------------------
// Entry point

/// What stands at `at`, for "found ..." in messages.
fn found(at: &str) -> String {
    if at.is_empty() {
        return "end of input".into();
    }
    let first = at.chars().next().expect("non-empty");
    let snippet: String = if is_name_char(first) || is_bare_char(first) {
        at.chars()
            .take_while(|c| is_bare_char(*c))
            .take(24)
            .collect()
    } else {
        first.to_string()
    };
    format!("'{}'", snippet.escape_debug())
}

/// A hint for `AND` / `Or` where a lowercase keyword was expected.
fn keyword_hint(at: &str) -> &'static str {
    let word: String = at.chars().take_while(|c| is_name_char(*c)).collect();
    if (word.eq_ignore_ascii_case("and") || word.eq_ignore_ascii_case("or"))
        && word != "and"
        && word != "or"
    {
        " (the infix keywords are lowercase: and, or)"
    } else {
        ""
    }
}

fn to_error(src: &str, e: PErr<'_>) -> ConditionError {
    let position = src.len() - e.at.len();
    let expected = if e.expected.is_empty() {
        A_CONDITION
    } else {
        e.expected
    };
    let message = e.message.unwrap_or_else(|| {
        format!(
            "expected {expected}, found {}{}",
            found(e.at),
            keyword_hint(e.at)
        )
    });
    ConditionError::new(src, position, expected, message)
}

/// Parses a condition. Errors name the byte position and what was expected there.
pub fn parse(src: &str) -> Result<Expr, ConditionError> {
    if src.len() > MAX_LEN {
        let mut pos = MAX_LEN;
        while !src.is_char_boundary(pos) {
            pos -= 1;
        }
        return Err(ConditionError::new(
            src,
            pos,
            "a shorter condition",
            format!("condition is {} bytes, at most {MAX_LEN}", src.len()),
        ));
    }
    if src.trim().is_empty() {
        return Err(ConditionError::new(
            src,
            src.len(),
            "a condition",
            "empty condition: write true() to match every user (or false() to match none)",
        ));
    }
    let cx = Ctx {
        nodes: Cell::new(0),
    };
    let (rest, expr) = match or_expr(src, &cx, 0) {
        Ok(ok) => ok,
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => return Err(to_error(src, e)),
        Err(nom::Err::Incomplete(_)) => {
            return Err(ConditionError::new(
                src,
                src.len(),
                A_CONDITION,
                "unexpected end of input",
            ))
        }
    };
    let rest = rest.trim_start();
    if !rest.is_empty() {
        let message = if rest.starts_with(')') {
            "unbalanced ')': expected 'and', 'or' or end of input".to_string()
        } else {
            format!(
                "expected 'and', 'or' or end of input, found {}{}",
                found(rest),
                keyword_hint(rest)
            )
        };
        return Err(ConditionError::new(
            src,
            src.len() - rest.len(),
            "'and', 'or' or end of input",
            message,
        ));
    }
    let canonical_len = expr.to_string().len();
    if canonical_len > MAX_LEN {
        return Err(ConditionError::new(
            src,
            0,
            "a shorter condition",
            format!("the normalized condition would be {canonical_len} bytes, at most {MAX_LEN}"),
        ));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_counter_stops_at_the_bound() {
        let cx = Ctx {
            nodes: Cell::new(0),
        };
        let src = "true()";
        for _ in 0..MAX_NODES {
            assert!(cx.node(src).is_ok());
        }
        let Err(nom::Err::Failure(e)) = cx.node(src) else {
            panic!("node {} accepted", MAX_NODES + 1)
        };
        let e = to_error(src, e);
        assert_eq!(
            e.message,
            format!("condition has more than {MAX_NODES} functions")
        );
    }
}
