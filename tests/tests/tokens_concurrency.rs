//! Access tokens under concurrency (issue 12, seed 001): concurrent checks over HTTP never
//! consume more than a count token holds, a rate limit of R per window admits exactly R of a
//! burst of 3R, a burst limit B < R admits exactly B within its second, and a denied request
//! does not use up the window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_quota_e2e::*;
use tokio::sync::Barrier;

fn token_of(data: &Value) -> String {
    data["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("access_token in {data}"))
        .to_string()
}

/// `n` concurrent checks of `token`, released together; half through /flow/verify, half through
/// consume with the service token when `mixed`. Returns the answers and how long the batch took.
async fn burst_of_checks(token: &str, n: usize, mixed: bool) -> (Vec<Check>, Duration) {
    let api = Api::new();
    // Warm the connection pool so the batch is not spread by connection set-up.
    api.anon(Method::GET, "/health").send().await;
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        let api = api.clone();
        let barrier = barrier.clone();
        let token = token.to_string();
        tasks.spawn(async move {
            barrier.wait().await;
            if mixed && i % 2 == 1 {
                api.service(Method::POST, &format!("/flow/tokens/{token}/consume"))
                    .send_check()
                    .await
            } else {
                flow_verify(&api, &token, None).await
            }
        });
    }
    let mut answers = Vec::with_capacity(n);
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("check task"));
    }
    (answers, start.elapsed())
}

fn count_by<'a>(answers: &'a [Check], f: impl Fn(&'a Check) -> bool) -> usize {
    answers.iter().filter(|a| f(a)).count()
}

fn is_valid(check: &Check) -> bool {
    check.status == 200 && check.body["valid"] == true
}

/// (a) 32 concurrent checks of a count token with 20 left: exactly 20 pass, 12 are
/// QuotaExceeded, nothing below zero, one consume log per pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn count_token_is_never_overspent() {
    let ctx = Ctx::new("tokc_count").await;
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 20}))
            .await,
    );
    let (answers, _) = burst_of_checks(&token, 32, true).await;
    let valid = count_by(&answers, is_valid);
    let exceeded = count_by(&answers, |a| {
        a.status == 429 && a.body["error"] == "QuotaExceeded"
    });
    assert_eq!(
        (valid, exceeded),
        (20, 12),
        "{:?}",
        answers
            .iter()
            .map(|a| (a.status, &a.body))
            .collect::<Vec<_>>()
    );
    // Each pass saw a distinct remaining value, 19 down to 0.
    let mut remaining: Vec<i64> = answers
        .iter()
        .filter(|a| is_valid(a))
        .map(|a| a.body["remaining"].as_i64().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..20).collect::<Vec<_>>());
    let quota = ctx.flow_quota(&token).await;
    assert_eq!(quota["remaining_quota"], 0, "{quota}");
    assert_eq!(quota["consumed_quota"], 20, "{quota}");
    let consumes: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.token_logs l JOIN quota.tokens t USING (token_id)
              WHERE t.token_sha256 = sha256(convert_to($1, 'UTF8')) AND l.kind = 'consume'",
            &[&token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(consumes, 20);
    ctx.assert_verify_clean().await;
}

/// (a') A count token with a rate limit above its quota: exactly 20 pass; a check refused for
/// its quota gives its rate-limit slot back, so once the batch is over the window has R - 20
/// left (in flight, a check may have been refused by the window because of slots that checks
/// later refused for quota still held: those refusals are rate_limited, never a pass too many).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_refusals_do_not_use_up_the_window() {
    const R: i64 = 25;
    let ctx = Ctx::new("tokc_count_rl").await;
    let token = token_of(
        &ctx.flow_token(json!({
            "quota_type": "count", "total_quota": 20,
            "rate_limit_per_minute": R, "rate_limit_burst": 100, "rate_limit_window_seconds": 600
        }))
        .await,
    );
    let (answers, _) = burst_of_checks(&token, 32, false).await;
    let valid = count_by(&answers, is_valid);
    let refused = count_by(&answers, |a| {
        a.status == 429
            && (a.body["error"] == "QuotaExceeded"
                || (a.body["error"] == "rate_limited" && a.body["limit_type"] == "window"))
    });
    assert_eq!(
        (valid, refused),
        (20, 12),
        "{:?}",
        answers
            .iter()
            .map(|a| (a.status, &a.body))
            .collect::<Vec<_>>()
    );
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 0);
    let after = ctx.flow_verify(&token, None).await;
    after.expect_refused(429, "QuotaExceeded");
    assert_eq!(
        after.header_int("ratelimit-remaining"),
        Some(R - 20),
        "{:?}",
        after.headers
    );
    // Room again: exactly the 5 slots left pass, then the window refuses.
    ctx.flow_updated(
        &token,
        json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": 100}),
    )
    .await;
    let (answers, _) = burst_of_checks(&token, 10, true).await;
    assert_eq!(count_by(&answers, is_valid), (R - 20) as usize);
    assert_eq!(
        count_by(&answers, |a| a.status == 429
            && a.body["limit_type"] == "window"),
        10 - (R - 20) as usize
    );
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 95);
}

/// (b) R per window under a concurrent burst of 3R (burst limit above R): exactly R admitted,
/// the rest refused by the window with a Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_limit_admits_exactly_r() {
    const R: i64 = 10;
    let ctx = Ctx::new("tokc_window").await;
    let token = token_of(
        &ctx.flow_token(json!({
            "rate_limit_per_minute": R, "rate_limit_burst": 2 * R, "rate_limit_window_seconds": 60
        }))
        .await,
    );
    let (answers, _) = burst_of_checks(&token, 3 * R as usize, true).await;
    let admitted = count_by(&answers, is_valid);
    assert_eq!(
        admitted,
        R as usize,
        "{:?}",
        answers
            .iter()
            .map(|a| (a.status, &a.body))
            .collect::<Vec<_>>()
    );
    for denied in answers.iter().filter(|a| !is_valid(a)) {
        let body = denied.expect_refused(429, "rate_limited");
        assert_eq!(body["limit_type"], "window", "{body}");
        let retry_after = denied.header_int("retry-after").expect("Retry-After");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(denied.header_int("ratelimit-limit"), Some(R));
        assert_eq!(denied.header_int("ratelimit-remaining"), Some(0));
    }
    // Every admitted answer reported a distinct number of slots left: R-1 down to 0.
    let mut left: Vec<i64> = answers
        .iter()
        .filter(|a| is_valid(a))
        .map(|a| a.header_int("ratelimit-remaining").unwrap())
        .collect();
    left.sort_unstable();
    assert_eq!(left, (0..R).collect::<Vec<_>>());
}

/// (b') A burst limit B below R: a concurrent burst admits exactly B within its second, refused
/// as `burst`. (A batch slower than a second may spread over two bursts: it is retried.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_limit_admits_exactly_b_per_second() {
    const R: i64 = 30;
    const B: i64 = 5;
    let ctx = Ctx::new("tokc_burst").await;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let token = token_of(
            &ctx.flow_token(json!({
                "rate_limit_per_minute": R, "rate_limit_burst": B, "rate_limit_window_seconds": 60
            }))
            .await,
        );
        let (answers, took) = burst_of_checks(&token, 3 * B as usize, true).await;
        let admitted = count_by(&answers, is_valid);
        if took < Duration::from_millis(900) {
            assert_eq!(
                admitted,
                B as usize,
                "{:?}",
                answers
                    .iter()
                    .map(|a| (a.status, &a.body))
                    .collect::<Vec<_>>()
            );
            for denied in answers.iter().filter(|a| !is_valid(a)) {
                let body = denied.expect_refused(429, "rate_limited");
                assert_eq!(body["limit_type"], "burst", "{body}");
                assert_eq!(denied.header_int("retry-after"), Some(1), "{body}");
                // Nothing more may pass right now.
                assert_eq!(denied.header_int("ratelimit-remaining"), Some(0));
            }
            // A second later the burst has room again; the window counted only the admitted
            // (R - B left before this check), not the refusals.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let check = ctx.flow_verify(&token, None).await;
            check.expect_valid();
            assert_eq!(check.header_int("ratelimit-remaining"), Some(R - B - 1));
            return;
        }
        attempts.push((took, admitted));
    }
    panic!("every batch of checks took more than 900 ms: {attempts:?}");
}

/// (c) A denied request does not use up the window: R = 2 per 2 s; after 2 admissions, denials
/// at 0.5 s, 1.0 s and 1.5 s; once the first admissions leave the window (after the last
/// denial's Retry-After) a check is admitted again. Had the denials been counted, two of them
/// would still be in the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denials_do_not_use_up_the_window() {
    let ctx = Ctx::new("tokc_denied").await;
    let token = token_of(
        &ctx.flow_token(json!({
            "rate_limit_per_minute": 2, "rate_limit_burst": 10, "rate_limit_window_seconds": 2
        }))
        .await,
    );
    ctx.flow_verify(&token, None).await.expect_valid();
    ctx.flow_verify(&token, None).await.expect_valid();
    let admitted_at = Instant::now();
    let mut retry_after = 0;
    for at_ms in [500, 1000, 1500] {
        let wait = Duration::from_millis(at_ms).saturating_sub(admitted_at.elapsed());
        tokio::time::sleep(wait).await;
        let denied = ctx.flow_verify(&token, None).await;
        let body = denied.expect_refused(429, "rate_limited");
        assert_eq!(body["limit_type"], "window", "{body}");
        retry_after = denied.header_int("retry-after").expect("Retry-After");
        assert!((1..=2).contains(&retry_after), "{retry_after}");
    }
    tokio::time::sleep(Duration::from_secs(retry_after as u64) + Duration::from_millis(100)).await;
    let check = ctx.flow_verify(&token, None).await;
    check.expect_valid();
    assert_eq!(
        check.header_int("ratelimit-remaining"),
        Some(1),
        "{:?}",
        check.headers
    );
    ctx.flow_verify(&token, None).await.expect_valid();
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(429, "rate_limited");
}
