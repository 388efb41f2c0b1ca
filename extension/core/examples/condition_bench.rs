//! Throughput of the condition language, for `scripts/bench.sh` (a benchmark prints figures; tests
//! never time anything). `cargo run --release -p pg_quota_core --example condition_bench`
//! prints parses per second of the seed 000 examples and per-user evaluations per second.

use quota_core::condition::{eval, parse, sample_users};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SEED_EXAMPLES: [&str; 4] = [
    r#"github-star("zgsm")"#,
    r#"and(is-vip(1), access-after("2024-05-01 00:00:00"))"#,
    r#"or(register-before("2023-01-01 00:00:00"), is-vip(2))"#,
    r#"and(is-vip(1), github-star("zgsm"))"#,
];

/// Runs `f` in batches until `budget` has passed; returns calls per second.
fn rate(budget: Duration, batch: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < budget {
        for k in 0..batch {
            f(calls + k);
        }
        calls += batch;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = Duration::from_millis(1500);
    let parses = rate(budget, 1000, |k| {
        black_box(parse(black_box(SEED_EXAMPLES[k % SEED_EXAMPLES.len()])).unwrap());
    });
    let expr = parse(SEED_EXAMPLES[3]).unwrap();
    let users = sample_users(1, 10_000);
    let evals = rate(budget, 10_000, |k| {
        black_box(eval(&expr, &users[k % users.len()]));
    });
    println!("| condition language (release) | per second |");
    println!("|---|---:|");
    println!("| parse, seed 000 examples | {:.0} |", parses);
    println!(
        "| per-user eval, and(is-vip(1), github-star(\"zgsm\")) | {:.0} |",
        evals
    );
}
