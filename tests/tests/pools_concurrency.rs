//! Provider pool limits under concurrency (issue 13): exact quota accounting with parallel
//! consumers, never more than `concurrent` leases, an rpm limit admits exactly its limit under
//! a burst, and abandoned leases expire (the background worker sweeps them).

use std::time::{Duration, Instant};

use pg_quota_e2e::pools::*;
use pg_quota_e2e::*;

fn int_of(body: &Value, field: &str) -> i64 {
    body[field]
        .as_i64()
        .unwrap_or_else(|| panic!("integer {field} in {body}"))
}

#[tokio::test]
async fn ten_parallel_consumers_of_1000_end_at_exactly_10000() {
    let _ctx = Ctx::new("pool_conc_quota").await;
    let pools = Pools::new();
    // Exactly room for the ten: 10 x 1000 = 10000 (equality admits).
    let (provider_id, account_id) = pools.single("conc_quota", 10_000, json!({})).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (pools, provider_id) = (pools.clone(), provider_id.clone());
        tasks.push(tokio::spawn(async move {
            let lease = pools.admitted(&provider_id, 1000).await;
            pools.release(&lease, 1000).await
        }));
    }
    for task in tasks {
        task.await.expect("consumer task");
    }
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (
            int_of(&status, "quota_used"),
            int_of(&status, "quota_held"),
            int_of(&status, "in_flight")
        ),
        (10_000, 0, 0),
        "{status}"
    );
    let account = pools.account_json(&account_id).await;
    assert_eq!(int_of(&account, "request_count"), 10, "{account}");
    // Full: the next one is refused.
    pools.acquire(&provider_id, 1).await.expect(429);
}

#[tokio::test]
async fn sixty_four_acquires_against_concurrent_10_admit_at_most_10_until_released() {
    let _ctx = Ctx::new("pool_conc_leases").await;
    let pools = Pools::new();
    let (provider_id, account_id) = pools
        .single("conc_leases", 0, json!({"concurrent": 10}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (pools, provider_id) = (pools.clone(), provider_id.clone());
        tasks.push(tokio::spawn(async move {
            pools
                .acquire_with(
                    &provider_id,
                    json!({"tokens_needed": 1, "lease_ttl_s": 600}),
                )
                .await
        }));
    }
    let mut leases = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let resp = task.await.expect("acquire task");
        match resp.status {
            200 => leases.push(resp.body),
            429 => {
                let body = resp.body.clone();
                assert_eq!(
                    body,
                    json!({"error": "rate_limit_exceeded", "message": "Rate limit exceeded", "retry_after": 1}),
                    "{}",
                    resp.text
                );
                assert_eq!(
                    resp.headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()),
                    Some("1"),
                    "{:?}",
                    resp.headers
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", resp.text),
        }
    }
    assert_eq!(leases.len(), 10, "admitted past the concurrency limit");
    assert_eq!(refused, 54);
    let status = pools.status(&provider_id).await;
    assert_eq!(int_of(&status, "in_flight"), 10, "{status}");
    // Still full.
    pools.acquire(&provider_id, 1).await.expect(429);
    // Releasing frees the slots: as many are admitted again, and no more.
    for lease in leases.drain(..5) {
        pools.release(&lease, 1).await;
    }
    for _ in 0..5 {
        leases.push(pools.admitted(&provider_id, 1).await);
    }
    pools.acquire(&provider_id, 1).await.expect(429);
    for lease in &leases {
        pools.release(lease, 1).await;
    }
    let status = pools.quota(&account_id).await;
    assert_eq!(int_of(&status, "in_flight"), 0, "{status}");
}

#[tokio::test]
async fn an_rpm_limit_admits_exactly_its_limit_under_a_burst() {
    let ctx = Ctx::new("pool_conc_rpm").await;
    let pools = Pools::new();
    const R: usize = 20;
    let (provider_id, _) = pools.single("conc_rpm", 0, json!({"rpm": R})).await;
    // The windows are fixed UTC minutes: keep the burst inside one.
    loop {
        let second: f64 = ctx
            .db
            .query_one("SELECT extract(second FROM now())::float8", &[])
            .await
            .unwrap()
            .get(0);
        if second < 40.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..3 * R {
        let (pools, provider_id) = (pools.clone(), provider_id.clone());
        tasks.push(tokio::spawn(
            async move { pools.acquire(&provider_id, 1).await },
        ));
    }
    let mut admitted = Vec::new();
    for task in tasks {
        let resp = task.await.expect("acquire task");
        match resp.status {
            200 => admitted.push(resp.body),
            429 => {
                assert_eq!(resp.body["error"], "rate_limit_exceeded", "{}", resp.text);
                let retry = resp.body["retry_after"].as_i64().unwrap();
                assert!((1..=60).contains(&retry), "{}", resp.text);
                assert_eq!(
                    resp.headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()),
                    Some(retry.to_string().as_str())
                );
            }
            other => panic!("unexpected {other}: {}", resp.text),
        }
    }
    assert_eq!(
        admitted.len(),
        R,
        "an rpm of {R} under a burst of {}",
        3 * R
    );
    for lease in &admitted {
        pools.release(lease, 1).await;
    }
}

#[tokio::test]
async fn abandoned_leases_expire_and_free_their_slot() {
    let _ctx = Ctx::new("pool_conc_expire").await;
    let pools = Pools::new();
    let (provider_id, account_id) = pools
        .single("conc_expire", 1000, json!({"concurrent": 1}))
        .await;
    let lease = pools
        .acquire_with(
            &provider_id,
            json!({"tokens_needed": 400, "lease_ttl_s": 1}),
        )
        .await
        .expect(200);
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (int_of(&status, "in_flight"), int_of(&status, "quota_held")),
        (1, 400),
        "{status}"
    );
    // Nobody releases it: the worker's sweep expires it (nothing else touches the account).
    let start = Instant::now();
    loop {
        let status = pools.status(&provider_id).await;
        if int_of(&status, "in_flight") == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the abandoned lease never expired: {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (int_of(&status, "in_flight"), int_of(&status, "quota_held")),
        (0, 0),
        "{status}"
    );
    // The slot is free again; a late release of the expired lease still records its usage.
    let next = pools.admitted(&provider_id, 1).await;
    let late = pools
        .release_with(
            &account_id,
            json!({"lease_id": lease["lease_id"], "output_tokens": 300}),
        )
        .await
        .expect(200);
    assert_eq!(late["lease_status"], "expired", "{late}");
    pools.release(&next, 1).await;
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (int_of(&status, "quota_used"), int_of(&status, "in_flight")),
        (301, 0),
        "{status}"
    );
}

/// 48 SQL sessions acquire at once from three accounts in random order (the `random` strategy:
/// every acquire tries them in its own order, each try locking the account it decides on). No
/// deadlock and no error; the token limit binds exactly (tpm 1000 per account, 100 tokens each:
/// 30 admitted), and after the releases every hold and slot is back (quota.verify()).
#[tokio::test]
async fn sql_acquires_in_random_order_never_deadlock_and_tpm_binds_exactly() {
    let ctx = Ctx::new("pool_conc_sql").await;
    let pools = Pools::new();
    let provider = pools
        .provider("conc_sql", "random", json!({"tpm": 1000}))
        .await;
    let provider_id = text(&provider, "provider_id");
    for k in 0..3 {
        pools
            .account(
                &provider_id,
                json!({"api_key": format!("sk-conc-sql-{k}")}),
                json!({"quota_limit": 0}),
            )
            .await;
    }
    // The windows are fixed UTC minutes: keep the burst inside one.
    loop {
        let second: f64 = ctx
            .db
            .query_one("SELECT extract(second FROM now())::float8", &[])
            .await
            .unwrap()
            .get(0);
        if second < 40.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let provider_id = provider_id.clone();
        tasks.push(tokio::spawn(async move {
            let db = connect_db().await;
            let row = db
                .query_one(
                    "SELECT quota.pool_acquire($1::text::uuid, 100)::text",
                    &[&provider_id],
                )
                .await
                .unwrap_or_else(|e| panic!("pool_acquire failed ({}): {e}", sqlstate(&e)));
            let answer: Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
            (db, answer)
        }));
    }
    let mut admitted = Vec::new();
    let mut sessions = Vec::new();
    for task in tasks {
        let (db, answer) = task.await.expect("acquire task");
        if answer["admitted"] == json!(true) {
            admitted.push(answer);
        } else {
            assert_eq!(answer["error"], "rate_limit_exceeded", "{answer}");
            assert_eq!(answer["limit_type"], "tpm", "{answer}");
        }
        sessions.push(db);
    }
    assert_eq!(admitted.len(), 30, "3 accounts x tpm 1000 / 100 tokens");
    let mut per_account = std::collections::HashMap::new();
    for a in &admitted {
        *per_account.entry(text(a, "account_id")).or_insert(0) += 1;
    }
    assert!(per_account.values().all(|&n| n == 10), "{per_account:?}");
    for a in &admitted {
        sessions[0]
            .query_one(
                "SELECT quota.pool_release($1::text::uuid, $2::text::uuid, '{\"output_tokens\": 100}')::text",
                &[&text(a, "account_id"), &text(a, "lease_id")],
            )
            .await
            .expect("pool_release");
    }
    assert_verify_clean(&ctx.db).await;
}
