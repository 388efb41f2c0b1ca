//! Property tests of the condition language:
//! - canonical text round trip: parse(display(e)) == e;
//! - any surface (infix, bare words, extra parentheses, whitespace) parses to the intended AST;
//! - algebraic laws of the evaluator (double negation, de Morgan, identities);
//! - the SQL predicate agrees with the evaluator on every user, checked with an independent
//!   interpreter of the generated SQL that follows PostgreSQL's three-valued logic (NULL
//!   columns, a missing wallet row), as a WHERE clause would;
//! - no condition value ever reaches the SQL text (only `$n` placeholders do).

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use quota_core::condition::{
    eval, parse, sample_expressions, sample_users, to_sql, Expr, SqlParam, UserFacts, MAX_LEN,
};

// ---------------------------------------------------------------------------------------------
// Generators

/// Strings that make SQL injection and escaping hard: quotes, backslashes, placeholders,
/// comments, control characters, non-ASCII. Never U+0000 (PostgreSQL text cannot hold it).
fn nasty_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("$1".to_string()),
        Just(";--".to_string()),
        Just("'; DROP TABLE quota.users; --".to_string()),
        Just("\n".to_string()),
        Just("\u{1}".to_string()),
        Just("\u{85}".to_string()),
        Just("é漢😀".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just(" and ".to_string()),
        "[a-z0-9_-]{1,6}",
        any::<char>()
            .prop_filter("no NUL", |c| *c != '\0')
            .prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|v| v.concat())
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["zgsm", "ZGSM", "u1", "u2", "org-a", "gpt-4"]).prop_map(String::from),
        1 => nasty_string(),
    ]
}

fn pool_ts() -> Vec<DateTime<Utc>> {
    vec![
        Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 1).unwrap(),
        Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap() + chrono::Duration::microseconds(1),
    ]
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        3 => prop::sample::select(pool_ts()),
        // Anywhere in years 1..=9999, microsecond precision.
        1 => (-62_135_596_800i64..253_402_300_799i64, 0u32..1_000_000u32)
            .prop_map(|(s, us)| Utc.timestamp_opt(s, us * 1000).unwrap()),
    ]
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        prop::collection::vec(word(), 1..4).prop_map(Expr::MatchUser),
        timestamp().prop_map(Expr::RegisterBefore),
        timestamp().prop_map(Expr::AccessAfter),
        word().prop_map(Expr::GithubStar),
        (word(), prop_oneof![3 => 0i64..200, 1 => any::<i64>()])
            .prop_map(|(model, amount)| Expr::QuotaLe { model, amount }),
        prop_oneof![3 => 0i32..5, 1 => any::<i32>()].prop_map(Expr::IsVip),
        prop::collection::vec(word(), 1..3).prop_map(Expr::BelongTo),
        Just(Expr::True),
        Just(Expr::False),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::Or),
            inner.prop_map(|x| Expr::Not(Box::new(x))),
        ]
    })
}

fn user() -> impl Strategy<Value = (UserFacts, bool)> {
    (
        prop::sample::select(vec!["u1", "u2", "u3", "'; --"]),
        0i32..5,
        prop::option::of(prop::sample::select(vec!["org-a", "org-b", "ORG-A"])),
        prop::collection::btree_set(
            prop::sample::select(vec!["zgsm", "ZGSM", "costrict", "'\"\\"]),
            0..3,
        ),
        prop::option::of(prop::sample::select(pool_ts())),
        prop::option::of(prop::sample::select(pool_ts())),
        prop::option::of(prop_oneof![Just(0i64), Just(5), Just(100), Just(199)]),
    )
        .prop_map(|(id, vip, org, stars, reg, acc, wallet)| {
            let u = UserFacts {
                id: id.to_string(),
                vip,
                org: org.map(String::from),
                github_star: stars.into_iter().map(String::from).collect(),
                register_time: reg,
                access_time: acc,
                // A user without a wallet row has balance 0 for the evaluator; in SQL the
                // LEFT JOIN gives NULL.
                balance: wallet.unwrap_or(0),
            };
            (u, wallet.is_some())
        })
}

// ---------------------------------------------------------------------------------------------
// Surface renderer: the same AST in a random but equivalent text.

#[derive(Debug, Clone)]
struct Style(Vec<u8>);

impl Style {
    fn next(&mut self) -> u8 {
        let b = self.0.pop().unwrap_or(0);
        self.0.insert(0, b.wrapping_mul(31).wrapping_add(7));
        b
    }
    fn ws(&mut self) -> &'static str {
        match self.next() % 6 {
            0 => "",
            1 => " ",
            2 => "\n\t ",
            3 => "  ",
            _ => "",
        }
    }
}

fn is_bare(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "_-.:/@+".contains(c))
}

fn render_str(s: &str, st: &mut Style) -> String {
    if is_bare(s) && st.next().is_multiple_of(2) {
        s.to_string()
    } else {
        quoted_alt(s, st)
    }
}

/// A quoted literal using other (equally valid) escapes than the canonical form.
fn quoted_alt(s: &str, st: &mut Style) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if st.next().is_multiple_of(2) => out.push_str("\\/"),
            c if c.is_control() || (st.next().is_multiple_of(8) && c != ' ') => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04X}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render_ts(t: &DateTime<Utc>, st: &mut Style) -> String {
    if t.timestamp_subsec_nanos() != 0 {
        return format!(
            "\"{}\"",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
    match st.next() % 3 {
        0 => format!("\"{}\"", t.format("%Y-%m-%d %H:%M:%S")),
        1 => format!(
            "\"{}\"",
            t.with_timezone(&chrono::FixedOffset::west_opt(5 * 3600).unwrap())
                .to_rfc3339()
        ),
        _ => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

fn call(name: &str, args: Vec<String>, st: &mut Style) -> String {
    let mut s = format!("{name}{}(", st.ws());
    for (k, a) in args.into_iter().enumerate() {
        if k > 0 {
            s.push(',');
        }
        s.push_str(st.ws());
        s.push_str(&a);
        s.push_str(st.ws());
    }
    s.push(')');
    s
}

/// Renders `e`; the bool says whether the text is a bare infix chain.
fn render(e: &Expr, st: &mut Style) -> (String, bool) {
    let (s, infix) = match e {
        Expr::MatchUser(v) => (
            call(
                "match-user",
                v.iter().map(|x| render_str(x, st)).collect(),
                st,
            ),
            false,
        ),
        Expr::BelongTo(v) => (
            call(
                "belong-to",
                v.iter().map(|x| render_str(x, st)).collect(),
                st,
            ),
            false,
        ),
        Expr::RegisterBefore(t) => (call("register-before", vec![render_ts(t, st)], st), false),
        Expr::AccessAfter(t) => (call("access-after", vec![render_ts(t, st)], st), false),
        Expr::GithubStar(p) => (call("github-star", vec![render_str(p, st)], st), false),
        Expr::QuotaLe { model, amount } => {
            let a = if st.next().is_multiple_of(4) {
                format!("\"{amount}\"")
            } else {
                amount.to_string()
            };
            (call("quota-le", vec![render_str(model, st), a], st), false)
        }
        Expr::IsVip(l) => (call("is-vip", vec![l.to_string()], st), false),
        Expr::True => (call("true", vec![], st), false),
        Expr::False => (call("false", vec![], st), false),
        Expr::Not(x) => {
            let inner = render(x, st).0;
            (call("not", vec![inner], st), false)
        }
        Expr::And(v) | Expr::Or(v) => {
            let op = if matches!(e, Expr::And(_)) {
                "and"
            } else {
                "or"
            };
            if st.next().is_multiple_of(2) {
                (
                    call(op, v.iter().map(|x| render(x, st).0).collect(), st),
                    false,
                )
            } else {
                let parts: Vec<String> = v
                    .iter()
                    .map(|x| {
                        let (s, infix) = render(x, st);
                        // A nested chain needs parentheses to stay one operand (and an `or`
                        // chain inside `and` needs them for precedence too).
                        if infix {
                            format!("({s})")
                        } else {
                            s
                        }
                    })
                    .collect();
                let sep = format!(
                    "{}{op}{}",
                    [" ", "\n"][(st.next() % 2) as usize],
                    [" ", "  "][(st.next() % 2) as usize]
                );
                (parts.join(&sep), true)
            }
        }
    };
    if st.next().is_multiple_of(10) {
        (format!("({}{s}{})", st.ws(), st.ws()), false)
    } else {
        (s, infix)
    }
}

// ---------------------------------------------------------------------------------------------
// An independent interpreter of the generated SQL, with PostgreSQL's three-valued logic.

#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
    TextArr(Vec<String>),
    Ts(DateTime<Utc>),
}

struct Row<'a> {
    u: &'a UserFacts,
    has_wallet: bool,
}

struct Sql<'a> {
    toks: Vec<String>,
    pos: usize,
    params: &'a [SqlParam],
    first: usize,
    row: &'a Row<'a>,
}

fn tokenize(sql: &str) -> Vec<String> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut k = 0;
    while k < b.len() {
        let c = b[k];
        if c == ' ' {
            k += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' {
            let s = k;
            while k < b.len()
                && (b[k].is_ascii_alphanumeric() || b[k] == '_' || b[k] == '.' || b[k] == '$')
            {
                k += 1;
            }
            // `$n::type` and `$n::type[]` as one token.
            if k + 1 < b.len() && b[k] == ':' && b[k + 1] == ':' {
                k += 2;
                while k < b.len() && b[k].is_ascii_alphabetic() {
                    k += 1;
                }
                if k + 1 < b.len() && b[k] == '[' && b[k + 1] == ']' {
                    k += 2;
                }
            }
            out.push(b[s..k].iter().collect());
        } else if k + 1 < b.len() && matches!((c, b[k + 1]), ('<', '=') | ('>', '=') | ('@', '>')) {
            out.push(b[k..k + 2].iter().collect());
            k += 2;
        } else if "()[],>=".contains(c) {
            out.push(c.to_string());
            k += 1;
        } else {
            panic!("unexpected character {c:?} in SQL {sql}");
        }
    }
    out
}

impl Sql<'_> {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(String::as_str)
    }
    fn eat(&mut self, t: &str) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn want(&mut self, t: &str) {
        assert!(
            self.eat(t),
            "expected {t} at token {} of {:?}",
            self.pos,
            self.toks
        );
    }
    fn or_e(&mut self) -> V {
        let mut v = self.and_e();
        while self.eat("OR") {
            let r = self.and_e();
            v = match (v, r) {
                (V::Bool(true), _) | (_, V::Bool(true)) => V::Bool(true),
                (V::Bool(false), V::Bool(false)) => V::Bool(false),
                _ => V::Null,
            };
        }
        v
    }
    fn and_e(&mut self) -> V {
        let mut v = self.is_e();
        while self.eat("AND") {
            let r = self.is_e();
            v = match (v, r) {
                (V::Bool(false), _) | (_, V::Bool(false)) => V::Bool(false),
                (V::Bool(true), V::Bool(true)) => V::Bool(true),
                _ => V::Null,
            };
        }
        v
    }
    fn is_e(&mut self) -> V {
        if self.eat("NOT") {
            // Kleene NOT (the compiler does not emit it; here so a NULL leak would be caught).
            return match self.is_e() {
                V::Bool(b) => V::Bool(!b),
                _ => V::Null,
            };
        }
        let v = self.cmp_e();
        if self.eat("IS") {
            self.want("NOT");
            self.want("TRUE");
            return V::Bool(v != V::Bool(true));
        }
        v
    }
    fn cmp_e(&mut self) -> V {
        let l = self.primary();
        let op = match self.peek() {
            Some(o @ ("<=" | ">=" | ">" | "=" | "@>")) => o.to_string(),
            _ => return l,
        };
        self.pos += 1;
        if op == "=" && self.eat("ANY") {
            self.want("(");
            let arr = self.primary();
            self.want(")");
            return match (l, arr) {
                (V::Null, _) | (_, V::Null) => V::Null,
                (V::Text(x), V::TextArr(a)) => V::Bool(a.contains(&x)),
                other => panic!("= ANY on {other:?}"),
            };
        }
        let r = self.primary();
        match (op.as_str(), l, r) {
            (_, V::Null, _) | (_, _, V::Null) => V::Null,
            ("<=", V::Int(a), V::Int(b)) => V::Bool(a <= b),
            (">=", V::Int(a), V::Int(b)) => V::Bool(a >= b),
            ("<=", V::Ts(a), V::Ts(b)) => V::Bool(a <= b),
            (">", V::Ts(a), V::Ts(b)) => V::Bool(a > b),
            ("@>", V::TextArr(a), V::TextArr(b)) => V::Bool(b.iter().all(|x| a.contains(x))),
            other => panic!("unsupported comparison {other:?}"),
        }
    }
    fn param(&self, tok: &str) -> V {
        let (n, ty) = tok[1..]
            .split_once("::")
            .expect("placeholders carry a cast");
        let n: usize = n.parse().unwrap();
        let p = &self.params[n - self.first];
        match (ty, p) {
            ("text", SqlParam::Text(s)) => V::Text(s.clone()),
            ("text[]", SqlParam::TextArray(v)) => V::TextArr(v.clone()),
            ("bigint", SqlParam::Int(i)) => V::Int(*i),
            ("integer", SqlParam::Int(i)) => V::Int(i64::from(
                i32::try_from(*i).expect("an integer parameter fits in 32 bits"),
            )),
            ("timestamptz", SqlParam::Timestamp(t)) => V::Ts(*t),
            other => panic!("cast and parameter disagree: {other:?}"),
        }
    }
    fn primary(&mut self) -> V {
        let t = self.toks[self.pos].clone();
        self.pos += 1;
        let u = self.row.u;
        match t.as_str() {
            "(" => {
                let v = self.or_e();
                self.want(")");
                v
            }
            "true" => V::Bool(true),
            "false" => V::Bool(false),
            "u.id" => V::Text(u.id.clone()),
            "u.vip" => V::Int(i64::from(u.vip)),
            "u.org" => u.org.clone().map_or(V::Null, V::Text),
            "u.github_star" => V::TextArr(u.github_star.clone()),
            "u.register_time" => u.register_time.map_or(V::Null, V::Ts),
            "u.access_time" => u.access_time.map_or(V::Null, V::Ts),
            "coalesce" => {
                self.want("(");
                self.want("w.balance");
                self.want(",");
                self.want("0");
                self.want(")");
                V::Int(if self.row.has_wallet { u.balance } else { 0 })
            }
            "ARRAY" => {
                self.want("[");
                let t = self.toks[self.pos].clone();
                self.pos += 1;
                self.want("]");
                match self.param(&t) {
                    V::Text(s) => V::TextArr(vec![s]),
                    other => panic!("ARRAY[{other:?}]"),
                }
            }
            p if p.starts_with('$') => self.param(p),
            other => panic!("unexpected token {other}"),
        }
    }
}

/// What a `WHERE <predicate>` does with the row: keep it only when the predicate is TRUE.
fn sql_keeps(
    sql: &str,
    params: &[SqlParam],
    first: usize,
    u: &UserFacts,
    has_wallet: bool,
) -> bool {
    let row = Row { u, has_wallet };
    let mut s = Sql {
        toks: tokenize(sql),
        pos: 0,
        params,
        first,
        row: &row,
    };
    let v = s.or_e();
    assert_eq!(s.pos, s.toks.len(), "trailing tokens in {sql}");
    v == V::Bool(true)
}

/// The SQL text is made of fixed fragments and placeholders only; the placeholders are exactly
/// $first .. $first+len-1.
fn assert_sql_clean(sql: &str, params: &[SqlParam], first: usize) {
    assert!(
        sql.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.,()[]$:<>=@".contains(c)),
        "unexpected character in {sql}"
    );
    let mut seen: Vec<usize> = sql
        .split('$')
        .skip(1)
        .map(|s| s.split("::").next().unwrap().parse::<usize>().unwrap())
        .collect();
    seen.sort();
    let want: Vec<usize> = (first..first + params.len()).collect();
    assert_eq!(seen, want, "placeholders of {sql}");
}

fn not(e: Expr) -> Expr {
    Expr::Not(Box::new(e))
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn canonical_text_round_trips(e in expr()) {
        let text = e.to_string();
        prop_assume!(text.len() <= MAX_LEN);
        let back = parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn any_surface_parses_to_the_same_tree(e in expr(), style in prop::collection::vec(any::<u8>(), 1..64)) {
        let mut st = Style(style);
        let text = render(&e, &mut st).0;
        prop_assume!(text.len() <= MAX_LEN && e.to_string().len() <= MAX_LEN);
        let back = parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
        prop_assert_eq!(back, e, "{}", text);
    }

    #[test]
    fn evaluator_laws(a in expr(), b in expr(), (u, _) in user()) {
        let ev = |e: &Expr| eval(e, &u);
        prop_assert_eq!(ev(&not(not(a.clone()))), ev(&a));
        prop_assert_eq!(
            ev(&not(Expr::And(vec![a.clone(), b.clone()]))),
            ev(&Expr::Or(vec![not(a.clone()), not(b.clone())]))
        );
        prop_assert_eq!(
            ev(&not(Expr::Or(vec![a.clone(), b.clone()]))),
            ev(&Expr::And(vec![not(a.clone()), not(b.clone())]))
        );
        prop_assert_eq!(ev(&Expr::And(vec![a.clone(), Expr::True])), ev(&a));
        prop_assert_eq!(ev(&Expr::Or(vec![a.clone(), Expr::False])), ev(&a));
        prop_assert!(!ev(&Expr::And(vec![a.clone(), Expr::False])));
        prop_assert!(ev(&Expr::Or(vec![a.clone(), Expr::True])));
        prop_assert!(ev(&Expr::Or(vec![a.clone(), not(a.clone())])));
        prop_assert_eq!(ev(&Expr::And(vec![a.clone(), b.clone()])), ev(&a) && ev(&b));
        prop_assert_eq!(ev(&Expr::Or(vec![a.clone(), b.clone()])), ev(&a) || ev(&b));
    }

    #[test]
    fn sql_agrees_with_the_evaluator(e in expr(), users in prop::collection::vec(user(), 1..8), first in 1usize..5) {
        let (sql, params) = to_sql(&e, first);
        assert_sql_clean(&sql, &params, first);
        for (u, has_wallet) in &users {
            prop_assert_eq!(
                sql_keeps(&sql, &params, first, u, *has_wallet),
                eval(&e, u),
                "{} | {} | {:?}", e, sql, u
            );
            // not(e) too: the case where a NULL could leak.
            let ne = not(e.clone());
            let (nsql, nparams) = to_sql(&ne, first);
            prop_assert_eq!(sql_keeps(&nsql, &nparams, first, u, *has_wallet), eval(&ne, u), "{}", nsql);
        }
    }

    #[test]
    fn values_never_reach_the_sql_text(s in nasty_string(), n in any::<i64>()) {
        prop_assume!(!s.is_empty());
        for e in [
            Expr::MatchUser(vec![s.clone()]),
            Expr::GithubStar(s.clone()),
            Expr::BelongTo(vec![s.clone(), "x".into()]),
            Expr::QuotaLe { model: s.clone(), amount: n },
        ] {
            let text = e.to_string();
            let parsed = parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
            let (sql, params) = to_sql(&parsed, 1);
            assert_sql_clean(&sql, &params, 1);
            if s.chars().any(|c| "'\"\\;-".contains(c)) {
                prop_assert!(!sql.contains(&s), "{} in {}", s, sql);
            }
            // The value travels only as a parameter, verbatim.
            let carried = params.iter().any(|p| match p {
                SqlParam::Text(t) => *t == s,
                SqlParam::TextArray(v) => v.contains(&s),
                SqlParam::Int(i) => *i == n,
                SqlParam::Timestamp(_) => false,
            });
            prop_assert!(carried);
        }
    }
}

#[test]
fn samples_agree_between_sql_and_evaluator() {
    for seed in 0..4u64 {
        let exprs = sample_expressions(seed, 300);
        let users = sample_users(seed, 60);
        let mut matched = 0usize;
        let mut total = 0usize;
        for text in &exprs {
            let e = parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            let (sql, params) = to_sql(&e, 1);
            assert_sql_clean(&sql, &params, 1);
            for (k, u) in users.iter().enumerate() {
                let has_wallet = k % 5 != 0 || u.balance != 0;
                let want = eval(&e, u);
                assert_eq!(
                    sql_keeps(&sql, &params, 1, u, has_wallet),
                    want,
                    "{text} | {sql} | {u:?}"
                );
                matched += want as usize;
                total += 1;
            }
        }
        // The pools are meant to make conditions match often, but not always.
        let ratio = matched as f64 / total as f64;
        assert!((0.15..0.85).contains(&ratio), "seed {seed}: {ratio}");
    }
}

#[test]
fn seed_examples_agree_between_sql_and_evaluator() {
    let users = sample_users(42, 200);
    for text in [
        "github-star(\"zgsm\")",
        "and(is-vip(1), access-after(\"2024-05-01 00:00:00\"))",
        "or(register-before(\"2023-01-01 00:00:00\"), is-vip(2))",
        "not(or(register-before(\"2023-01-01 00:00:00\"), belong-to(\"org-a\")))",
    ] {
        let e = parse(text).unwrap();
        let (sql, params) = to_sql(&e, 1);
        let mut hits = 0;
        for u in &users {
            let want = eval(&e, u);
            assert_eq!(sql_keeps(&sql, &params, 1, u, true), want, "{text} {u:?}");
            hits += want as usize;
        }
        assert!(hits > 0 && hits < users.len(), "{text}: {hits}");
    }
}
