//! Unit tests: every seed 000 example, each function, precedence, errors and bounds, SQL text.

use super::*;
use chrono::{TimeZone, Utc};

fn ts(s: &str) -> chrono::DateTime<Utc> {
    crate::time::parse_timestamp("t", s).unwrap()
}

fn user(id: &str) -> UserFacts {
    UserFacts {
        id: id.into(),
        ..Default::default()
    }
}

fn check(cond: &str, u: &UserFacts) -> bool {
    let e = parse(cond).unwrap_or_else(|e| panic!("{cond}: {e}"));
    // Every check also goes through the canonical form.
    let again = parse(&e.to_string()).unwrap_or_else(|err| panic!("{e}: {err}"));
    assert_eq!(again, e, "round trip of {cond}");
    eval(&e, u)
}

fn err(cond: &str) -> ConditionError {
    match parse(cond) {
        Ok(e) => panic!("{cond:?} parsed as {e}"),
        Err(e) => e,
    }
}

// ---- seed 000 examples ----------------------------------------------------------------------

#[test]
fn seed_github_star_zgsm() {
    let cond = "github-star(\"zgsm\")";
    let mut u = user("u1");
    u.github_star = vec!["zgsm".into(), "other".into()];
    assert!(check(cond, &u));
    u.github_star = vec!["other".into()];
    assert!(!check(cond, &u));
    u.github_star = vec!["ZGSM".into(), "zgsm-ai".into()]; // exact, case-sensitive
    assert!(!check(cond, &u));
    assert_eq!(parse(cond).unwrap().to_string(), "github-star(\"zgsm\")");
}

#[test]
fn seed_the_create_example_as_json_text() {
    // The seed's curl body: "condition": "github-star(\"zgsm\")" -- the JSON string decodes to
    // github-star("zgsm").
    let v: serde_json::Value =
        serde_json::from_str(r#"{"condition": "github-star(\"zgsm\")"}"#).unwrap();
    let cond = v["condition"].as_str().unwrap();
    assert_eq!(parse(cond).unwrap(), Expr::GithubStar("zgsm".into()));
}

#[test]
fn seed_vip_and_recently_active() {
    let cond = "and(is-vip(1), access-after(\"2024-05-01 00:00:00\"))";
    let mut u = user("u1");
    u.vip = 1;
    u.access_time = Some(ts("2024-05-02 08:00:00"));
    assert!(check(cond, &u));
    u.access_time = Some(ts("2024-05-01 00:00:00")); // strict
    assert!(!check(cond, &u));
    u.access_time = Some(ts("2024-05-01 00:00:01"));
    assert!(check(cond, &u));
    u.vip = 0;
    assert!(!check(cond, &u));
    u.vip = 3;
    u.access_time = None;
    assert!(!check(cond, &u));
    assert_eq!(
        parse(cond).unwrap().to_string(),
        "and(is-vip(1), access-after(\"2024-05-01 00:00:00\"))"
    );
}

#[test]
fn seed_early_registered_or_vip() {
    let cond = "or(register-before(\"2023-01-01 00:00:00\"), is-vip(2))";
    let mut u = user("u1");
    u.register_time = Some(ts("2022-06-01 00:00:00"));
    assert!(check(cond, &u));
    u.register_time = Some(ts("2023-01-01 00:00:00")); // inclusive
    assert!(check(cond, &u));
    u.register_time = Some(ts("2023-01-01 00:00:01"));
    assert!(!check(cond, &u));
    u.vip = 2;
    assert!(check(cond, &u));
    u.vip = 1;
    u.register_time = None;
    assert!(!check(cond, &u));
}

#[test]
fn seed_function_list_each_function() {
    let mut u = user("user_001");
    u.vip = 2;
    u.org = Some("org001".into());
    u.github_star = vec!["zgsm".into()];
    u.register_time = Some(ts("2023-03-01 00:00:00"));
    u.access_time = Some(ts("2024-06-01 00:00:00"));
    u.balance = 50;
    // match-user(user)
    assert!(check("match-user(\"user_001\")", &u));
    assert!(check("match-user(user_001)", &u));
    assert!(check("match-user(\"x\", \"user_001\")", &u));
    assert!(!check("match-user(\"user_002\")", &u));
    assert!(!check("match-user(\"USER_001\")", &u));
    // register-before(timestamp)
    assert!(check("register-before(\"2023-03-01 00:00:00\")", &u));
    assert!(!check("register-before(\"2023-02-28 23:59:59\")", &u));
    // access-after(timestamp)
    assert!(check("access-after(\"2024-05-31 23:59:59\")", &u));
    assert!(!check("access-after(\"2024-06-01 00:00:00\")", &u));
    // github-star(project)
    assert!(check("github-star(zgsm)", &u));
    assert!(!check("github-star(\"zgs\")", &u));
    // quota-le(model, amount)
    assert!(check("quota-le(\"gpt-3.5-turbo\", 50)", &u));
    assert!(check("quota-le(gpt-4, 51)", &u));
    assert!(!check("quota-le(\"gpt-3.5-turbo\", 49)", &u));
    assert!(check("quota-le(\"any\", \"50\")", &u)); // a quoted integer is accepted
                                                     // is-vip(level)
    assert!(check("is-vip(2)", &u));
    assert!(check("is-vip(0)", &u));
    assert!(!check("is-vip(3)", &u));
    // belong-to(org)
    assert!(check("belong-to(\"org001\")", &u));
    assert!(check("belong-to(org002, org001)", &u));
    assert!(!check("belong-to(\"ORG001\")", &u));
    u.org = None;
    assert!(!check("belong-to(\"org001\")", &u));
    assert!(check("not(belong-to(\"org001\"))", &u));
    // and / or / not
    assert!(check("and(true(), true(), is-vip(1))", &u));
    assert!(!check("and(true(), false())", &u));
    assert!(check("or(false(), false(), true())", &u));
    assert!(!check("or(false(), false())", &u));
    assert!(check("not(false())", &u));
    assert!(!check("not(true())", &u));
}

#[test]
fn nested_logic() {
    let mut u = user("a");
    u.vip = 1;
    u.github_star = vec!["zgsm".into()];
    let cond = "and(or(is-vip(3), github-star(\"zgsm\")), not(match-user(b, c)))";
    assert!(check(cond, &u));
    u.id = "b".into();
    assert!(!check(cond, &u));
}

// ---- infix, parentheses, whitespace ---------------------------------------------------------

#[test]
fn infix_and_binds_tighter_than_or() {
    let e = parse("true() or false() and false()").unwrap();
    assert_eq!(
        e,
        Expr::Or(vec![Expr::True, Expr::And(vec![Expr::False, Expr::False])])
    );
    assert!(eval(&e, &user("x")));
    let e = parse("(true() or false()) and false()").unwrap();
    assert_eq!(
        e,
        Expr::And(vec![Expr::Or(vec![Expr::True, Expr::False]), Expr::False])
    );
    assert!(!eval(&e, &user("x")));
}

#[test]
fn infix_chains_flatten_and_mix_with_functions() {
    assert_eq!(
        parse("is-vip(1) and github-star(zgsm) and is-vip(2)")
            .unwrap()
            .to_string(),
        "and(is-vip(1), github-star(\"zgsm\"), is-vip(2))"
    );
    assert_eq!(
        parse("and(is-vip(1) or is-vip(2), not (true()) )")
            .unwrap()
            .to_string(),
        "and(or(is-vip(1), is-vip(2)), not(true()))"
    );
    assert_eq!(
        parse("a() or b()").unwrap_err().message,
        "unknown function 'a'"
    );
    assert_eq!(
        parse("not(true()) and or(false(), true())")
            .unwrap()
            .to_string(),
        "and(not(true()), or(false(), true()))"
    );
    assert_eq!(
        parse("true()and(false())").unwrap().to_string(),
        "and(true(), false())"
    );
    assert_eq!(parse("(((true())))").unwrap(), Expr::True);
}

#[test]
fn whitespace_is_insignificant_outside_strings() {
    let a = parse("and(is-vip(1),github-star(\"zgsm\"))").unwrap();
    let b = parse(" \n and ( is-vip ( 1 ) ,\n\t github-star ( \"zgsm\" ) ) \r\n").unwrap();
    assert_eq!(a, b);
    assert_eq!(
        parse("github-star(\" zgsm\")").unwrap(),
        Expr::GithubStar(" zgsm".into())
    );
}

#[test]
fn strings_escapes_and_bare_words() {
    assert_eq!(
        parse(r#"github-star("a\"b\\c\nd\te\u00e9\/")"#).unwrap(),
        Expr::GithubStar("a\"b\\c\nd\te\u{e9}/".into())
    );
    assert_eq!(
        parse(r#"github-star("\ud83d\ude00")"#).unwrap(),
        Expr::GithubStar("\u{1f600}".into())
    );
    assert_eq!(
        parse("github-star(zgsm-ai/costrict)").unwrap(),
        Expr::GithubStar("zgsm-ai/costrict".into())
    );
    assert_eq!(
        parse("github-star(\"\")").unwrap(),
        Expr::GithubStar(String::new())
    );
    let e = parse(r#"github-star("q\"\\\n\t\u0001é")"#).unwrap();
    assert_eq!(e.to_string(), r#"github-star("q\"\\\n\t\u0001é")"#);
    assert_eq!(
        parse(r#"match-user("a,b", "c)")"#).unwrap(),
        Expr::MatchUser(vec!["a,b".into(), "c)".into()])
    );
}

#[test]
fn timestamps_in_three_formats() {
    let a = parse("register-before(\"2024-05-01 00:00:00\")").unwrap();
    assert_eq!(parse("register-before(\"2024-05-01\")").unwrap(), a);
    assert_eq!(parse("register-before(2024-05-01)").unwrap(), a);
    assert_eq!(
        parse("register-before(\"2024-05-01T02:00:00+02:00\")").unwrap(),
        a
    );
    assert_eq!(parse("register-before(2024-05-01T00:00:00Z)").unwrap(), a);
    assert_eq!(
        a,
        Expr::RegisterBefore(Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap())
    );
    // Fractions are kept to the microsecond (timestamptz precision) and printed in RFC 3339.
    let f = parse("access-after(\"2024-05-01T00:00:00.1234567Z\")").unwrap();
    assert_eq!(
        f.to_string(),
        "access-after(\"2024-05-01T00:00:00.123456Z\")"
    );
    assert_eq!(parse(&f.to_string()).unwrap(), f);
    // A leap second is the start of the next second, as in PostgreSQL.
    assert_eq!(
        parse("register-before(\"2016-12-31T23:59:60Z\")").unwrap(),
        parse("register-before(\"2017-01-01 00:00:00\")").unwrap()
    );
    assert_eq!(
        parse("register-before(\"2016-12-31T23:59:60.5Z\")")
            .unwrap()
            .to_string(),
        "register-before(\"2017-01-01T00:00:00.500000Z\")"
    );
}

#[test]
fn canonical_form() {
    assert_eq!(
        parse("is-vip(1) and github-star(zgsm)")
            .unwrap()
            .normalize(),
        "and(is-vip(1), github-star(\"zgsm\"))"
    );
    assert_eq!(
        normalize("quota-le(gpt-4,  \"10\")").unwrap(),
        "quota-le(\"gpt-4\", 10)"
    );
    assert_eq!(
        normalize("belong-to(a,b)").unwrap(),
        "belong-to(\"a\", \"b\")"
    );
    assert_eq!(normalize("is-vip(+3)").unwrap(), "is-vip(3)");
    assert_eq!(normalize("quota-le(m, -5)").unwrap(), "quota-le(\"m\", -5)");
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn empty_condition_suggests_true() {
    for s in ["", "   ", "\n\t "] {
        let e = err(s);
        assert!(e.message.contains("true()"), "{e}");
    }
}

#[test]
fn errors_name_position_and_expectation() {
    let e = err("and(is-vip(1) github-star(\"zgsm\"))");
    assert_eq!(e.position, 14);
    assert_eq!(e.expected, "'and', 'or', ',' or ')'");
    assert_eq!(
        e.to_string(),
        "at 14: expected 'and', 'or', ',' or ')', found 'github-star'"
    );

    let e = err("is-vip(1");
    assert_eq!((e.position, e.expected.as_str()), (8, "',' or ')'"));
    assert!(e.to_string().ends_with("found end of input"), "{e}");

    let e = err("is-vip(1) xyz");
    assert_eq!(e.position, 10);
    assert_eq!(
        e.to_string(),
        "at 10: expected 'and', 'or' or end of input, found 'xyz'"
    );

    let e = err("is-vip(1))");
    assert_eq!(e.position, 9);
    assert!(e.message.contains("unbalanced ')'"));

    let e = err("(is-vip(1)");
    assert_eq!(
        (e.position, e.expected.as_str()),
        (10, "'and', 'or' or ')'")
    );

    let e = err("github-star(\"zgsm)");
    assert_eq!(e.position, 12);
    assert!(e.message.contains("unterminated string"));

    let e = err("and(true(), )");
    assert_eq!(e.position, 12);
    assert!(e.message.starts_with("expected a condition"), "{e}");

    let e = err("x\n  and(true(),, false())");
    assert_eq!((e.line, e.column), (1, 1));
    // After an infix keyword, `(` opens a group: `true() and (a,, b)` fails at the first ','.
    let e = err("true()\n  and(true(),, false())");
    assert_eq!(
        (e.position, e.line, e.column, e.expected.as_str()),
        (19, 2, 13, "'and', 'or' or ')'")
    );
    // In operand position, `and(` is the function.
    let e = err("true() or\n and(true(),, false())");
    assert_eq!((e.position, e.line, e.column), (22, 2, 13));
    assert!(
        e.to_string()
            .starts_with("at 22 (line 2, column 13): expected a condition"),
        "{e}"
    );
}

#[test]
fn unknown_and_miscased_functions() {
    let e = err("is-gold(1)");
    assert_eq!(e.position, 0);
    assert_eq!(e.message, "unknown function 'is-gold'");
    assert!(e.expected.contains("match-user"));
    let e = err("true() and Is-Vip(1)");
    assert_eq!(e.position, 11);
    assert!(e.message.contains("did you mean 'is-vip'"), "{e}");
    assert!(err("is_vip(1)").message.contains("did you mean 'is-vip'"));
    assert!(err("AND(true(), true())")
        .message
        .contains("did you mean 'and'"));
    let e = err("true");
    assert_eq!(e.position, 4);
    assert!(e.message.contains("write true()"), "{e}");
    let e = err("true() AND false()");
    assert_eq!(e.position, 7);
    assert!(
        e.message
            .ends_with("found 'AND' (the infix keywords are lowercase: and, or)"),
        "{e}"
    );
    let e = err("(true() Or false())");
    assert_eq!(e.position, 8);
    assert!(e.message.contains("keywords are lowercase"), "{e}");
}

#[test]
fn arity_and_argument_types() {
    let e = err("is-vip(\"x\")");
    assert_eq!((e.position, e.expected.as_str()), (7, "an integer"));
    assert!(e.message.contains("is-vip level must be an integer"), "{e}");
    let e = err("is-vip(1.5)");
    assert_eq!(e.expected, "an integer");
    let e = err("is-vip(99999999999)");
    assert!(e.message.contains("out of range"), "{e}");
    let e = err("quota-le(\"gpt\", lots)");
    assert_eq!((e.position, e.expected.as_str()), (16, "an integer"));
    let e = err("quota-le(100)");
    assert_eq!(e.position, 12);
    assert!(
        e.message.contains("quota-le takes exactly 2 arguments"),
        "{e}"
    );
    let e = err("is-vip(1, 2)");
    assert_eq!(e.position, 10);
    assert!(e.message.contains("is-vip takes exactly 1 argument"), "{e}");
    let e = err("is-vip()");
    assert_eq!(e.position, 7);
    assert!(e.message.contains("is-vip(level)"), "{e}");
    let e = err("true(1)");
    assert!(e.message.contains("true() takes no arguments"), "{e}");
    let e = err("and(true())");
    assert!(e.message.contains("and takes 2 to 100 arguments"), "{e}");
    assert_eq!(e.position, 10);
    let e = err("not(true(), false())");
    assert_eq!(e.position, 12);
    let e = err("register-before(\"yesterday\")");
    assert_eq!(
        (e.position, e.expected.as_str()),
        (16, "a timestamp \"YYYY-MM-DD HH:MM:SS\"")
    );
    let e = err("register-before(\"2024-13-01 00:00:00\")");
    assert_eq!(e.position, 16);
    let e = err("access-after(\"12024-01-01 00:00:00\")");
    assert_eq!(e.position, 13);
    let e = err("register-before(\" 2024-01-01\")");
    assert_eq!(e.position, 16);
    let e = err("github-star(a b)");
    assert_eq!((e.position, e.expected.as_str()), (14, "',' or ')'"));
    let e = err("github-star(is-vip(1))");
    assert_eq!(e.position, 18);
    let e = err("github-star('zgsm')");
    assert_eq!(
        (e.position, e.expected.as_str()),
        (12, "a quoted string or a bare word")
    );
    let e = err("is-vip(1) and");
    assert_eq!(e.position, 13);
    let e = err("and(is-vip(1), not())");
    assert_eq!(e.position, 19);
}

#[test]
fn bad_strings() {
    let e = err(r#"github-star("a\qb")"#);
    assert_eq!(e.position, 14);
    assert!(e.message.contains("invalid escape '\\q'"), "{e}");
    assert!(err(r#"github-star("\u00")"#)
        .message
        .contains("4 hex digits"));
    assert!(err(r#"github-star("\ud800")"#)
        .message
        .contains("surrogate"));
    assert!(err(r#"github-star("\udc00")"#)
        .message
        .contains("surrogate"));
    assert!(err(r#"github-star("\u0000")"#).message.contains("U+0000"));
    let e = err("github-star(\"a\nb\")");
    assert_eq!(e.position, 14);
    assert!(e.message.contains("control character"), "{e}");
    assert!(err("github-star(\"\\").message.contains("unterminated"));
}

#[test]
fn bounds_are_errors_not_crashes() {
    // Length.
    let long = format!("github-star(\"{}\")", "a".repeat(MAX_LEN));
    let e = err(&long);
    assert!(e.message.contains("at most 4096"), "{e}");
    assert_eq!(e.position, MAX_LEN);
    // Strings.
    assert!(parse(&format!("github-star(\"{}\")", "é".repeat(MAX_STRING))).is_ok());
    let e = err(&format!("github-star(\"{}\")", "é".repeat(MAX_STRING + 1)));
    assert!(e.message.contains("longer than 256"), "{e}");
    assert_eq!(e.position, 12);
    assert!(err(&format!("github-star({})", "a".repeat(MAX_STRING + 1)))
        .message
        .contains("longer than 256"));
    // Depth: 32 levels parse, 33 do not.
    let nest = |n: usize| format!("{}true(){}", "not(".repeat(n - 1), ")".repeat(n - 1));
    assert_eq!(parse(&nest(MAX_DEPTH)).unwrap().depth(), MAX_DEPTH);
    let e = err(&nest(MAX_DEPTH + 1));
    assert!(e.message.contains("deeper than 32"), "{e}");
    assert_eq!(e.position, 4 * MAX_DEPTH + 4); // the '(' of the innermost true()
    let e = err(&format!("{}true(){}", "(".repeat(40), ")".repeat(40)));
    assert!(e.message.contains("deeper than 32"), "{e}");
    // Far deeper than any stack could take: still a plain error.
    let e = err(&"(".repeat(4000));
    assert!(e.message.contains("deeper than 32"), "{e}");
    let e = err(&"not(".repeat(1000));
    assert!(e.message.contains("deeper than 32"), "{e}");
    // Arguments.
    let ids = |n: usize| (0..n).map(|k| k.to_string()).collect::<Vec<_>>().join(",");
    assert!(parse(&format!("match-user({})", ids(MAX_ARGS))).is_ok());
    let e = err(&format!("match-user({})", ids(MAX_ARGS + 1)));
    assert!(e.message.contains("at most 100"), "{e}");
    let chain = |n: usize| vec!["true()"; n].join(" or ");
    assert!(parse(&chain(MAX_ARGS)).is_ok());
    let e = err(&chain(MAX_ARGS + 1));
    assert!(e.message.contains("more than 100 operands"), "{e}");
    assert_eq!(e.position, 100 * 10 - 3);
    // Nodes: the densest text, `true()` repeated, gets under 600 functions into 4096 bytes, so
    // the 1000-node bound is a second line of defence (tested on the counter in parser.rs).
    let group = |n: usize| format!("or({})", vec!["true()"; n].join(","));
    let dense = format!("or({})", vec![group(70); 7].join(","));
    assert!(dense.len() <= MAX_LEN, "{}", dense.len());
    assert_eq!(parse(&dense).unwrap().node_count(), 1 + 7 * 71);
}

#[test]
fn normalized_form_is_held_to_the_length_bound() {
    // 19 groups of 100 one-letter bare ids: about 4,000 bytes of input, ~10 KB normalized.
    let g = format!("match-user({})", vec!["a"; 100].join(","));
    let src = format!("or({})", vec![g; 19].join(","));
    assert!(src.len() <= MAX_LEN, "{}", src.len());
    let e = err(&src);
    assert!(e.message.contains("normalized condition would be"), "{e}");
}

#[test]
fn into_quota_error() {
    let e: crate::QuotaError = err("is-vip(x)").into();
    assert_eq!(e.kind.sqlstate(), "22023");
    assert_eq!(
        e.message,
        "invalid condition at 7: is-vip level must be an integer, found \"x\""
    );
    let d: serde_json::Value = serde_json::from_str(&e.detail_json()).unwrap();
    assert_eq!(d["position"], 7);
    assert_eq!(d["expected"], "an integer");
    assert_eq!(d["field"], "condition");
    assert_eq!(d["error"], "invalid_parameter");
}

// ---- NULL semantics -------------------------------------------------------------------------

#[test]
fn missing_facts_never_match_and_not_is_plain_negation() {
    let u = user("x");
    for c in [
        "register-before(\"2099-01-01\")",
        "access-after(\"1970-01-01\")",
        "belong-to(a)",
    ] {
        assert!(!check(c, &u), "{c}");
        assert!(check(&format!("not({c})"), &u), "{c}");
    }
    assert!(check("quota-le(m, 0)", &u)); // no wallet: balance 0
}

// ---- SQL ------------------------------------------------------------------------------------

#[test]
fn sql_of_each_function() {
    let cases: &[(&str, &str, Vec<SqlParam>)] = &[
        (
            "match-user(a, \"b\")",
            "u.id = ANY($1::text[])",
            vec![SqlParam::TextArray(vec!["a".into(), "b".into()])],
        ),
        (
            "register-before(\"2023-01-01 00:00:00\")",
            "u.register_time <= $1::timestamptz",
            vec![SqlParam::Timestamp(ts("2023-01-01"))],
        ),
        (
            "access-after(\"2024-05-01 00:00:00\")",
            "u.access_time > $1::timestamptz",
            vec![SqlParam::Timestamp(ts("2024-05-01"))],
        ),
        (
            "github-star(\"zgsm\")",
            "u.github_star @> ARRAY[$1::text]",
            vec![SqlParam::Text("zgsm".into())],
        ),
        (
            "quota-le(\"gpt-4\", 10)",
            "coalesce(w.balance, 0) <= $1::bigint",
            vec![SqlParam::Int(10)],
        ),
        ("is-vip(1)", "u.vip >= $1::integer", vec![SqlParam::Int(1)]),
        (
            "belong-to(o1, o2)",
            "u.org = ANY($1::text[])",
            vec![SqlParam::TextArray(vec!["o1".into(), "o2".into()])],
        ),
        ("true()", "true", vec![]),
        ("false()", "false", vec![]),
        (
            "not(is-vip(2))",
            "((u.vip >= $1::integer) IS NOT TRUE)",
            vec![SqlParam::Int(2)],
        ),
    ];
    for (c, sql, params) in cases {
        let (s, p) = to_sql(&parse(c).unwrap(), 1);
        assert_eq!(&s, sql, "{c}");
        assert_eq!(&p, params, "{c}");
    }
}

#[test]
fn sql_of_seed_examples_and_numbering() {
    let e = parse("and(is-vip(1), github-star(\"zgsm\"))").unwrap();
    let (s, p) = to_sql(&e, 3);
    assert_eq!(
        s,
        "(u.vip >= $3::integer AND u.github_star @> ARRAY[$4::text])"
    );
    assert_eq!(p, vec![SqlParam::Int(1), SqlParam::Text("zgsm".into())]);
    assert!(!e.uses_balance());
    let e = parse("or(register-before(\"2023-01-01 00:00:00\"), is-vip(2))").unwrap();
    assert_eq!(
        to_sql(&e, 1).0,
        "(u.register_time <= $1::timestamptz OR u.vip >= $2::integer)"
    );
    let e = parse("not(is-vip(1) or quota-le(m, 5))").unwrap();
    assert_eq!(
        to_sql(&e, 1).0,
        "((u.vip >= $1::integer OR coalesce(w.balance, 0) <= $2::bigint) IS NOT TRUE)"
    );
    assert!(e.uses_balance());
}

#[test]
fn samples_are_deterministic_and_parse() {
    assert_eq!(sample_expressions(7, 50), sample_expressions(7, 50));
    assert_ne!(sample_expressions(7, 50), sample_expressions(8, 50));
    assert_eq!(sample_users(7, 30), sample_users(7, 30));
    for s in sample_expressions(1, 500) {
        parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let users = sample_users(1, 200);
    let ids: std::collections::HashSet<_> = users.iter().map(|u| &u.id).collect();
    assert_eq!(ids.len(), 200);
}
