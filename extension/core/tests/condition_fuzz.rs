//! A stable-Rust fuzz loop for the condition parser (the cargo-fuzz target in `fuzz/` needs a
//! nightly toolchain): ~200,000 deterministic pseudo-random inputs built from grammar tokens,
//! raw bytes, and mutations of the seed examples. For each: no panic; an error names a position
//! inside the input on a character boundary; a success round-trips through the canonical text,
//! compiles to SQL and evaluates.

use quota_core::condition::{eval, parse, to_sql, UserFacts, MAX_LEN};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: [&str; 8] = [
    "github-star(\"zgsm\")",
    "and(is-vip(1), access-after(\"2024-05-01 00:00:00\"))",
    "or(register-before(\"2023-01-01 00:00:00\"), is-vip(2))",
    "match-user(user_001, \"user_002\") or not(belong-to(org-a)) and quota-le(gpt-4, 10)",
    "(true() and (false() or is-vip(+3)))",
    "github-star(\"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\")",
    "register-before(2024-05-01T02:00:00+02:00)",
    "not(not(not(true())))",
];

const TOKENS: [&str; 44] = [
    "and",
    "or",
    "not",
    "(",
    ")",
    ",",
    "\"",
    "\\",
    "\\u",
    "\\ud83d",
    "\\u0000",
    " ",
    "\n",
    "\t",
    "true()",
    "false()",
    "is-vip",
    "github-star",
    "match-user",
    "belong-to",
    "quota-le",
    "register-before",
    "access-after",
    "true",
    "false",
    "1",
    "-1",
    "99999999999999999999",
    "zgsm",
    "2024-05-01 00:00:00",
    "2024-05-01",
    "T",
    "Z",
    "+",
    ":",
    "é",
    "😀",
    "\u{0}",
    "\u{85}",
    "'",
    "$1",
    ";--",
    "((((",
    "))))",
];

/// Checks one input; true when it parsed.
fn check(input: &str) -> bool {
    match parse(input) {
        Ok(e) => {
            let text = e.to_string();
            let back = parse(&text).unwrap_or_else(|err| panic!("{input:?} -> {text:?}: {err}"));
            assert_eq!(back, e, "{input:?}");
            assert_eq!(back.to_string(), text);
            let (sql, params) = to_sql(&e, 1);
            assert!(
                !sql.contains('\'') && !sql.contains('"') && !sql.contains(';'),
                "{sql}"
            );
            assert_eq!(sql.matches('$').count(), params.len());
            let _ = eval(&e, &UserFacts::default());
            true
        }
        Err(err) => {
            assert!(err.position <= input.len(), "{input:?}: {err:?}");
            assert!(input.is_char_boundary(err.position), "{input:?}: {err:?}");
            assert!(
                !err.message.is_empty() && !err.expected.is_empty(),
                "{input:?}: {err:?}"
            );
            false
        }
    }
}

fn mutate(r: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + r.below(4) {
        let at = if v.is_empty() {
            0
        } else {
            r.below(v.len() + 1)
        };
        match r.below(6) {
            0 if !v.is_empty() && at < v.len() => {
                v.remove(at);
            }
            1 => v.insert(at, r.next() as u8),
            2 => {
                let t = TOKENS[r.below(TOKENS.len())].as_bytes();
                v.splice(at..at, t.iter().copied());
            }
            3 if at < v.len() => v[at] = r.next() as u8,
            4 if !v.is_empty() => {
                // Duplicate a slice (nesting, long chains).
                let a = r.below(v.len());
                let b = (a + 1 + r.below(16)).min(v.len());
                let piece = v[a..b].to_vec();
                v.splice(at..at, piece);
            }
            _ => {
                let s = SEEDS[r.below(SEEDS.len())].as_bytes();
                v.splice(at..at, s.iter().copied());
            }
        }
    }
    v
}

#[test]
fn parser_survives_pseudo_random_inputs() {
    let mut r = Rng(0x000C_0FFE_E0DD_BA11_u64);
    let mut parsed = 0usize;
    let rounds = 200_000;
    for k in 0..rounds {
        let bytes: Vec<u8> = match k % 5 {
            0 => (0..r.below(40)).map(|_| r.next() as u8).collect(),
            1 => (0..r.below(30))
                .flat_map(|_| TOKENS[r.below(TOKENS.len())].bytes())
                .collect(),
            2 => {
                // Valid compositions of the seeds, sometimes lightly mutated.
                let a = SEEDS[r.below(SEEDS.len())];
                let b = SEEDS[r.below(SEEDS.len())];
                let op = ["and", "or"][r.below(2)];
                let text = match r.below(3) {
                    0 => format!("{a} {op} ({b})"),
                    1 => format!("not({a}) {op}\n{b}"),
                    _ => format!("{op}({a},{b})"),
                };
                if r.below(2) == 0 {
                    text.into_bytes()
                } else {
                    mutate(&mut r, text.as_bytes())
                }
            }
            _ => {
                let base = SEEDS[r.below(SEEDS.len())];
                mutate(&mut r, base.as_bytes())
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        if check(&text) {
            parsed += 1;
        }
    }
    // The mutations keep a good share of inputs valid, so the success path is exercised too.
    assert!(
        parsed > rounds / 50,
        "only {parsed} of {rounds} inputs parsed"
    );
}

#[test]
fn pathological_inputs() {
    let cases = [
        "(".repeat(MAX_LEN),
        ")".repeat(MAX_LEN),
        "not(".repeat(MAX_LEN / 4),
        "\"".repeat(MAX_LEN),
        "\\".repeat(MAX_LEN),
        format!("github-star(\"{}", "\\u".repeat(100)),
        vec!["true()"; 600].join(" and "),
        vec!["true()"; 600].join(","),
        format!("and({})", vec!["true()"; 400].join(",")),
        format!("match-user({})", vec!["a"; 2000].join(",")),
        "é".repeat(MAX_LEN / 2 + 1),
        "true() ".repeat(MAX_LEN / 7),
        format!("{}true(){}", "(".repeat(32), ")".repeat(32)),
        format!("{}true(){}", "(".repeat(31), ")".repeat(31)),
    ];
    for c in &cases {
        check(c);
    }
    // The nesting bound is the same for parentheses and functions.
    assert!(parse(&format!("{}true(){}", "(".repeat(31), ")".repeat(31))).is_ok());
    assert!(parse(&format!("{}true(){}", "(".repeat(32), ")".repeat(32))).is_err());
}
