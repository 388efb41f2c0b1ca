//! Deterministic random conditions and users, for tests that compare the evaluator with the
//! SQL predicate (here against an interpreter, in the database against PostgreSQL itself).
//!
//! The values are drawn from small shared pools so conditions often match: user ids `cu000`,
//! `cu001`, ... (some carry quotes, backslashes, `$1` and `;--`), a few orgs and starred projects
//! (case variants included), timestamps on exact boundaries (inclusive / strict checks), balances
//! and levels around the amounts used. Every generated text parses; the surface varies: function
//! or infix syntax, quoted or bare arguments, timestamps in the three accepted formats, extra
//! parentheses and whitespace.

use super::ast::quote;
use super::eval::UserFacts;
use chrono::{DateTime, TimeZone, Utc};

/// xorshift64* (no external RNG crate).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so seeds 0, 1, 2 ... start far apart; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
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
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// The id of sample user `k` (unique per k).
pub fn sample_user_id(k: usize) -> String {
    if k % 7 == 3 {
        format!("cu{k:03} o'q\"\\$1;--")
    } else {
        format!("cu{k:03}")
    }
}

const ORGS: [&str; 5] = ["org-a", "org-b", "Org-A", "zgsm.ai", "o'rg \"x\"\\"];
const STARS: [&str; 6] = [
    "zgsm",
    "ZGSM",
    "costrict",
    "zgsm-ai/costrict",
    "st'ar\"\\;--",
    "ünï",
];
const MODELS: [&str; 3] = ["gpt-4", "deepseek-v3", "m\"o'del"];
const VIPS: [i32; 5] = [0, 1, 2, 3, 4];
const LEVELS: [i32; 6] = [0, 1, 2, 3, 4, 5];
const BALANCES: [i64; 5] = [0, 5, 10, 100, 1000];
const AMOUNTS: [i64; 6] = [0, 5, 10, 99, 100, 1000];
/// Ids referred to by match-user: the first users, and some that no user has.
const ID_POOL: usize = 44;

fn times() -> [DateTime<Utc>; 6] {
    let t = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
    [
        t(2022, 12, 31, 23, 59, 59),
        t(2023, 1, 1, 0, 0, 0),
        t(2023, 6, 15, 12, 0, 0),
        t(2024, 5, 1, 0, 0, 0),
        t(2024, 5, 1, 0, 0, 1),
        t(2025, 1, 1, 0, 0, 0),
    ]
}

/// `n` users; user `k` has id [`sample_user_id`]`(k)`. Stars are sorted and distinct, vip and
/// balance non-negative (as `quota.users` / `quota.wallets` store them).
pub fn sample_users(seed: u64, n: usize) -> Vec<UserFacts> {
    let mut r = Rng::new(seed ^ 0x5553_4552);
    let ts = times();
    (0..n)
        .map(|k| {
            let mut github_star: Vec<String> = STARS
                .iter()
                .filter(|_| r.chance(30))
                .map(|s| s.to_string())
                .collect();
            github_star.sort();
            UserFacts {
                id: sample_user_id(k),
                vip: *r.pick(&VIPS),
                org: if r.chance(25) {
                    None
                } else {
                    Some(r.pick(&ORGS).to_string())
                },
                github_star,
                register_time: if r.chance(20) {
                    None
                } else {
                    Some(*r.pick(&ts))
                },
                access_time: if r.chance(20) {
                    None
                } else {
                    Some(*r.pick(&ts))
                },
                balance: *r.pick(&BALANCES),
            }
        })
        .collect()
}

/// `n` condition texts (depth at most 5, all parse).
pub fn sample_expressions(seed: u64, n: usize) -> Vec<String> {
    let mut r = Rng::new(seed ^ 0x4558_5052);
    (0..n).map(|_| Gen { r: &mut r }.expr(4).0).collect()
}

struct Gen<'a> {
    r: &'a mut Rng,
}

impl Gen<'_> {
    fn ws(&mut self) -> &'static str {
        match self.r.below(10) {
            0 => "\n  ",
            1 => "\t",
            2..=4 => " ",
            _ => "",
        }
    }

    /// A string argument: bare when it can be and the dice say so, else quoted.
    fn text(&mut self, s: &str) -> String {
        let bare_ok = !s.is_empty()
            && s.chars().all(|c| {
                c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '@' | '+')
            });
        if bare_ok && self.r.chance(40) {
            s.to_string()
        } else {
            quote(s)
        }
    }

    fn timestamp(&mut self) -> String {
        let ts = *self.r.pick(&times());
        match self.r.below(6) {
            0 => quote(&ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            1 => {
                // Same instant, written in +02:00.
                let off = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
                quote(&ts.with_timezone(&off).to_rfc3339())
            }
            2 if ts.format("%H:%M:%S").to_string() == "00:00:00" => {
                ts.format("%Y-%m-%d").to_string()
            }
            _ => quote(&ts.format("%Y-%m-%d %H:%M:%S").to_string()),
        }
    }

    fn call(&mut self, name: &str, args: &[String]) -> String {
        let mut s = String::from(name);
        s.push_str(self.ws());
        s.push('(');
        for (k, a) in args.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            s.push_str(self.ws());
            s.push_str(a);
            s.push_str(self.ws());
        }
        s.push(')');
        s
    }

    fn leaf(&mut self) -> String {
        match self.r.below(11) {
            0 => {
                let k = 1 + self.r.below(3);
                let ids: Vec<String> = (0..k)
                    .map(|_| {
                        let id = sample_user_id(self.r.below(ID_POOL));
                        self.text(&id)
                    })
                    .collect();
                self.call("match-user", &ids)
            }
            1 => {
                let t = self.timestamp();
                self.call("register-before", &[t])
            }
            2 => {
                let t = self.timestamp();
                self.call("access-after", &[t])
            }
            3 | 4 => {
                let s = self.r.pick(&STARS).to_string();
                let s = self.text(&s);
                self.call("github-star", &[s])
            }
            5 => {
                let m = self.r.pick(&MODELS).to_string();
                let m = self.text(&m);
                let a = *self.r.pick(&AMOUNTS);
                let a = if self.r.chance(20) {
                    quote(&a.to_string())
                } else {
                    a.to_string()
                };
                self.call("quota-le", &[m, a])
            }
            6 | 7 => {
                let l = *self.r.pick(&LEVELS);
                self.call("is-vip", &[l.to_string()])
            }
            8 => {
                let k = 1 + self.r.below(2);
                let orgs: Vec<String> = (0..k)
                    .map(|_| {
                        let o = self.r.pick(&ORGS).to_string();
                        self.text(&o)
                    })
                    .collect();
                self.call("belong-to", &orgs)
            }
            9 => self.call("true", &[]),
            _ => self.call("false", &[]),
        }
    }

    /// A condition text and whether its top is an infix chain (needs parentheses as an operand).
    fn expr(&mut self, depth: usize) -> (String, bool) {
        if depth == 0 || self.r.chance(35) {
            let leaf = self.leaf();
            return if self.r.chance(5) {
                (format!("({leaf})"), false)
            } else {
                (leaf, false)
            };
        }
        match self.r.below(5) {
            0 => {
                let (a, _) = self.expr(depth - 1);
                (self.call("not", &[a]), false)
            }
            k => {
                let op = if k <= 2 { "and" } else { "or" };
                let n = 2 + self.r.below(3);
                let items: Vec<(String, bool)> = (0..n).map(|_| self.expr(depth - 1)).collect();
                if self.r.chance(50) {
                    let args: Vec<String> = items.into_iter().map(|x| x.0).collect();
                    (self.call(op, &args), false)
                } else {
                    let mut s = String::new();
                    for (k, (x, infix)) in items.into_iter().enumerate() {
                        if k > 0 {
                            let sep = if self.r.chance(80) { " " } else { "\n" };
                            s.push_str(sep);
                            s.push_str(op);
                            s.push_str(sep);
                        }
                        if infix {
                            s.push('(');
                            s.push_str(&x);
                            s.push(')');
                        } else {
                            s.push_str(&x);
                        }
                    }
                    (s, true)
                }
            }
        }
    }
}
