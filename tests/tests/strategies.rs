//! Recharge strategies end to end (SPEC 6, seed 000): the seed's API script flow over HTTP, the
//! exactly-once guarantee, and the AiGateway relay against the mock gateway under faults (500,
//! 429, a stall past the relay timeout, a gateway that never recovers, then the retry endpoint).
//!
//! The mock is shared by every test (and its fault switch is global), so every test here that
//! makes deliveries holds the advisory lock `MOCK_LOCK` for its whole life, sets the fault to ok
//! first and last, and reads the mock's delta log filtered by its own consumers (user ids). The
//! strategies match only the test's own users (`match-user`), and are disabled and deleted at the
//! end, so a scan by another test never recharges anyone else.

use std::time::{Duration, Instant};

use pg_quota_e2e::relay::*;
use pg_quota_e2e::*;

/// Waits until the strategy has `n` executions, none of them pending; returns them.
async fn settled(
    db: &tokio_postgres::Client,
    strategy_id: i64,
    n: usize,
    limit: Duration,
) -> Vec<Execution> {
    eventually(
        &format!("{n} settled executions of strategy {strategy_id}"),
        limit,
        || async move {
            let rows = executions(db, strategy_id).await;
            (rows.len() == n && rows.iter().all(|e| e.status != "pending")).then_some(rows)
        },
    )
    .await
}

fn match_users(users: &[&str]) -> String {
    let quoted: Vec<String> = users.iter().map(|u| format!("\"{u}\"")).collect();
    format!("match-user({})", quoted.join(", "))
}

async fn create_strategy(ctx: &Ctx, users: &[&str], amount: i64, status: bool) -> Value {
    let name = ctx.id("s");
    let body = ctx
        .api
        .admin(Method::POST, STRATEGIES)
        .json(&json!({
            "name": name,
            "title": format!("{name} title"),
            "type": "single",
            "amount": amount,
            "model": "gpt-3.5-turbo",
            "condition": match_users(users),
            "status": status,
        }))
        .send()
        .await
        .expect(201);
    assert_eq!(body["name"], name.as_str(), "created strategy {body}");
    assert_eq!(body["status"], status, "created strategy {body}");
    body
}

async fn scan(ctx: &Ctx) -> Value {
    let body = ctx
        .api
        .admin(Method::POST, &format!("{STRATEGIES}/scan"))
        .send()
        .await
        .expect(200);
    assert_eq!(body["message"], "strategy scan completed", "scan {body}");
    assert!(body["strategies"].is_array(), "scan {body}");
    body
}

async fn listed(ctx: &Ctx, status: &str, id: i64) -> Option<Value> {
    let body = ctx
        .api
        .admin(Method::GET, STRATEGIES)
        .query(&[("status", status.to_string())])
        .send()
        .await
        .expect(200);
    let list = body["strategies"]
        .as_array()
        .unwrap_or_else(|| panic!("strategies in {body}"));
    assert_eq!(int(&body, "total"), list.len() as i64, "total of {body}");
    list.iter().find(|s| s["id"] == id).cloned()
}

/// Asserts the mock holds exactly one delta for `user` with `value`, keyed by the execution.
async fn assert_one_delta(mock: &Mock, user: &str, value: i64, execution_id: i64) {
    let deltas = mock.deltas(user).await;
    assert_eq!(int(&deltas, "count"), 1, "deltas of {user}: {deltas}");
    let delta = &deltas["deltas"][0];
    assert_eq!(delta["value"], value, "delta of {user}: {deltas}");
    assert_eq!(
        delta["idempotency_key"],
        format!("execution-{execution_id}"),
        "delta of {user}: {deltas}"
    );
    assert_eq!(
        deltas["duplicate_keys"],
        json!([]),
        "deltas of {user}: {deltas}"
    );
}

/// One user, one enabled strategy for them, scanned with the mock in `fault`; waits until the
/// execution settles. Returns (strategy id, user id, execution).
async fn recharge_under_fault(
    ctx: &Ctx,
    mock: &Mock,
    fault: Value,
    amount: i64,
    limit: Duration,
) -> (i64, String, Execution) {
    let user = ctx.create_user().await;
    let strategy = create_strategy(ctx, &[&user], amount, true).await;
    let id = int(&strategy, "id");
    mock.set_fault(fault).await;
    scan(ctx).await;
    let rows = settled(&ctx.db, id, 1, limit).await;
    (id, user, rows[0].clone())
}

// ---------------------------------------------------------------------------------------------
// Seed 000's API script flow

#[tokio::test]
async fn seed_api_flow_create_disabled_enable_scan_disable_update_delete() {
    let ctx = Ctx::new("strat_flow").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;
    let u1 = ctx.create_user().await;
    let u2 = ctx.create_user().await;
    let outsider = ctx.create_user().await;

    // Created disabled: status false is honoured, and the lists by status agree.
    let strategy = create_strategy(&ctx, &[&u1, &u2], 10, false).await;
    let id = int(&strategy, "id");
    for field in [
        "id",
        "name",
        "title",
        "type",
        "amount",
        "model",
        "condition",
        "status",
        "max_exec_per_user",
        "create_time",
        "update_time",
    ] {
        assert!(
            strategy.get(field).is_some(),
            "field {field} missing in {strategy}"
        );
    }
    assert_eq!(strategy["type"], "single");
    assert_eq!(strategy["amount"], 10);
    for status in ["disabled", "false"] {
        assert!(
            listed(&ctx, status, id).await.is_some(),
            "?status={status} lacks {id}"
        );
    }
    for status in ["enabled", "true"] {
        assert!(
            listed(&ctx, status, id).await.is_none(),
            "?status={status} has disabled {id}"
        );
    }

    // A scan leaves a disabled strategy alone.
    scan(&ctx).await;
    assert!(
        executions(&ctx.db, id).await.is_empty(),
        "a disabled strategy ran"
    );

    let body = ctx
        .api
        .admin(Method::POST, &format!("{STRATEGIES}/{id}/enable"))
        .send()
        .await
        .expect(200);
    assert_eq!(body["message"], "strategy enabled successfully");
    assert_eq!(
        listed(&ctx, "enabled", id).await.expect("enabled")["status"],
        true
    );

    // Scan: both matching users are credited, their executions complete once the relay has
    // delivered one delta each to the gateway.
    scan(&ctx).await;
    let rows = settled(&ctx.db, id, 2, Duration::from_secs(20)).await;
    let mut expected_users = vec![u1.clone(), u2.clone()];
    expected_users.sort();
    assert_eq!(
        rows.iter().map(|e| e.user_id.clone()).collect::<Vec<_>>(),
        expected_users
    );
    for execution in &rows {
        assert_eq!(execution.status, "completed", "{execution:?}");
        assert_eq!(execution.amount, 10);
        assert!(execution.attempts >= 1, "{execution:?}");
        assert_eq!(execution.last_error, None, "{execution:?}");
        assert_eq!(
            recharges(&ctx.db, &execution.user_id).await,
            vec![(10, execution.id)]
        );
        assert_eq!(ctx.balance(&execution.user_id).await, 10);
        assert_one_delta(&mock, &execution.user_id, 10, execution.id).await;
    }
    assert!(
        recharges(&ctx.db, &outsider).await.is_empty(),
        "the outsider was recharged"
    );
    assert_eq!(mock.delta_count(&outsider).await, 0);

    // The executions endpoint shows them (newest first).
    let body = ctx
        .api
        .admin(Method::GET, &format!("{STRATEGIES}/{id}/executions"))
        .send()
        .await
        .expect(200);
    assert_eq!(int(&body, "total"), 2, "{body}");
    for execution in body["executions"].as_array().expect("executions") {
        assert_eq!(execution["status"], "completed", "{body}");
        assert_eq!(execution["strategy_id"], id, "{body}");
        assert!(
            execution["batch_number"]
                .as_str()
                .is_some_and(|b| b.len() == 14),
            "{body}"
        );
    }

    // Disable, update, list by status.
    let body = ctx
        .api
        .admin(Method::POST, &format!("{STRATEGIES}/{id}/disable"))
        .send()
        .await
        .expect(200);
    assert_eq!(body["message"], "strategy disabled successfully");
    let updated = ctx
        .api
        .admin(Method::PUT, &format!("{STRATEGIES}/{id}"))
        .json(&json!({"title": "updated title", "amount": 20}))
        .send()
        .await
        .expect(200);
    assert_eq!(updated["title"], "updated title");
    assert_eq!(updated["amount"], 20);
    assert_eq!(
        updated["status"], false,
        "an update keeps the status: {updated}"
    );
    assert_eq!(updated["name"], strategy["name"]);
    ctx.api
        .admin(Method::PUT, &format!("{STRATEGIES}/{id}"))
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::PUT, &format!("{STRATEGIES}/{}", i64::MAX))
        .json(&json!({"title": "x"}))
        .send()
        .await
        .expect_error(404, None);
    let disabled = listed(&ctx, "disabled", id)
        .await
        .expect("listed as disabled");
    assert_eq!(disabled["amount"], 20);
    assert!(listed(&ctx, "enabled", id).await.is_none());
    // Updating through PUT {"status": false} is the seed's other way to disable.
    let body = ctx
        .api
        .admin(Method::PUT, &format!("{STRATEGIES}/{id}"))
        .json(&json!({"status": false}))
        .send()
        .await
        .expect(200);
    assert_eq!(body["status"], false);

    // Delete: gone from the API, its executions kept.
    let body = ctx
        .api
        .admin(Method::DELETE, &format!("{STRATEGIES}/{id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(body["message"], "strategy deleted successfully");
    ctx.api
        .admin(Method::GET, &format!("{STRATEGIES}/{id}"))
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(
        executions(&ctx.db, id).await.len(),
        2,
        "executions were not kept"
    );
    assert!(listed(&ctx, "disabled", id).await.is_none());

    // Without the admin credential, nothing.
    ctx.api
        .anon(Method::GET, STRATEGIES)
        .send()
        .await
        .expect_error(401, None);
    ctx.assert_verify_clean().await;
    mock.ok().await;
}

// ---------------------------------------------------------------------------------------------
// Exactly once

#[tokio::test]
async fn scanning_again_recharges_no_one_twice_and_the_gateway_gets_one_delta_each() {
    let ctx = Ctx::new("strat_once").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;
    let u1 = ctx.create_user().await;
    let u2 = ctx.create_user().await;
    let strategy = create_strategy(&ctx, &[&u1, &u2], 7, true).await;
    let id = int(&strategy, "id");

    scan(&ctx).await;
    let first = settled(&ctx.db, id, 2, Duration::from_secs(20)).await;
    for _ in 0..3 {
        scan(&ctx).await;
    }
    // Give a wrongful second delivery time to show up before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = executions(&ctx.db, id).await;
    assert_eq!(
        again.iter().map(|e| e.id).collect::<Vec<_>>(),
        first.iter().map(|e| e.id).collect::<Vec<_>>(),
        "a rescan created executions"
    );
    for execution in &again {
        assert_eq!(execution.status, "completed", "{execution:?}");
        assert_eq!(
            recharges(&ctx.db, &execution.user_id).await,
            vec![(7, execution.id)]
        );
        assert_eq!(ctx.balance(&execution.user_id).await, 7);
        assert_one_delta(&mock, &execution.user_id, 7, execution.id).await;
    }
    let outbox: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.outbox o JOIN quota.executions e ON e.id = o.execution_id
             WHERE e.strategy_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0, "delivered rows stay in the outbox");

    // Retrying an execution that is not failed is refused; an unknown one is 404.
    let path = format!("/api/v1/executions/{}/retry", again[0].id);
    ctx.api
        .admin(Method::POST, &path)
        .send()
        .await
        .expect_error(400, Some("invalid_parameter"));
    ctx.api
        .admin(
            Method::POST,
            &format!("/api/v1/executions/{}/retry", i64::MAX),
        )
        .send()
        .await
        .expect_error(404, None);
    ctx.api
        .anon(Method::POST, &path)
        .send()
        .await
        .expect_error(401, None);
    retire(&ctx, id).await;
    ctx.assert_verify_clean().await;
}

// ---------------------------------------------------------------------------------------------
// Gateway faults

#[tokio::test]
async fn gateway_500_twice_then_ok_delivers_once() {
    let ctx = Ctx::new("strat_500").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;
    let (id, user, execution) = recharge_under_fault(
        &ctx,
        &mock,
        json!({"mode": "error", "count": 2}),
        11,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(execution.status, "completed", "{execution:?}");
    assert!(
        execution.attempts >= 3,
        "two 500s then a 200 take three attempts: {execution:?}"
    );
    assert_eq!(
        execution.last_error, None,
        "completion clears last_error: {execution:?}"
    );
    assert_one_delta(&mock, &user, 11, execution.id).await;
    assert_eq!(recharges(&ctx.db, &user).await, vec![(11, execution.id)]);
    mock.ok().await;
    retire(&ctx, id).await;
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn gateway_429_then_ok_delivers_once_after_retry_after() {
    let ctx = Ctx::new("strat_429").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;
    let start = Instant::now();
    let (id, user, execution) = recharge_under_fault(
        &ctx,
        &mock,
        json!({"mode": "status", "status": 429, "count": 2, "retry_after_s": 1}),
        12,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(execution.status, "completed", "{execution:?}");
    assert!(
        execution.attempts >= 3,
        "two 429s then a 200 take three attempts: {execution:?}"
    );
    // Retry-After: 1 is a lower bound for each of the two retries.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured: {:?}",
        start.elapsed()
    );
    assert_one_delta(&mock, &user, 12, execution.id).await;
    mock.ok().await;
    retire(&ctx, id).await;
    ctx.assert_verify_clean().await;
}

/// A delivery that stalls past the relay timeout has an unknown outcome: the gateway may apply
/// it late. With a gateway that does not deduplicate (QUOTA_AIGATEWAY_IDEMPOTENT=false, the e2e
/// sidecar's setting, like Higress) the relay does not send it again: the execution becomes
/// `unknown`, exactly one delta reaches the gateway, and an operator confirms it over REST.
/// (relay_unknown.rs covers the idempotent-gateway mode, where it is retried.)
#[tokio::test]
async fn gateway_stall_past_the_timeout_marks_the_execution_unknown_and_delivers_once() {
    let ctx = Ctx::new("strat_stall").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;
    // Longer than the relay's delivery timeout (QUOTA_RELAY_TIMEOUT_MS, 5000 by default).
    let stall_ms = 6000;
    let (id, user, execution) = recharge_under_fault(
        &ctx,
        &mock,
        json!({"mode": "stall", "count": 1, "stall_ms": stall_ms}),
        13,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(execution.status, "unknown", "{execution:?}");
    assert_eq!(execution.attempts, 1, "sent once: {execution:?}");
    assert!(
        execution
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("outcome unknown")),
        "{execution:?}"
    );
    // The stalled request lands at most stall_ms after it was sent: wait for it, bounded.
    eventually(
        "the stalled delta to land",
        Duration::from_millis(stall_ms + 5000),
        || {
            let mock = &mock;
            let user = &user;
            async move { (mock.delta_count(user).await >= 1).then_some(()) }
        },
    )
    .await;
    // Give a wrongful second delivery time to show up, then count: exactly one delta, the
    // stalled one, under the execution's key, and no duplicate key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deltas = mock.deltas(&user).await;
    assert_eq!(int(&deltas, "count"), 1, "delivered again: {deltas}");
    let delta = &deltas["deltas"][0];
    assert_eq!(delta["stalled"], true, "{deltas}");
    assert_eq!(delta["value"], 13, "{deltas}");
    assert_eq!(
        delta["idempotency_key"],
        format!("execution-{}", execution.id),
        "{deltas}"
    );
    assert_eq!(deltas["duplicate_keys"], json!([]), "{deltas}");
    // Still unknown (nobody decided for the operator), the credit kept once in the ledger.
    let rows = executions(&ctx.db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "unknown", "{rows:?}");
    assert_eq!(recharges(&ctx.db, &user).await, vec![(13, execution.id)]);
    assert_eq!(ctx.balance(&user).await, 13);
    let health = ctx
        .api
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect(200);
    assert!(int(&health["relay"], "unknown") >= 1, "{health}");

    // The operator saw the delta at the gateway and confirms: completed, nothing re-sent.
    let confirm = format!("/api/v1/executions/{}/confirm", execution.id);
    let body = ctx
        .api
        .admin(Method::POST, &confirm)
        .send()
        .await
        .expect(200);
    assert_eq!(body["id"], execution.id, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    let rows = executions(&ctx.db, id).await;
    assert_eq!(rows[0].status, "completed", "{rows:?}");
    // Only an unknown execution can be confirmed.
    ctx.api
        .admin(Method::POST, &confirm)
        .send()
        .await
        .expect_error(400, None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mock.delta_count(&user).await, 1);
    assert_eq!(recharges(&ctx.db, &user).await, vec![(13, execution.id)]);
    mock.ok().await;
    retire(&ctx, id).await;
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn gateway_down_for_good_fails_the_execution_keeps_the_credit_and_retry_delivers() {
    let ctx = Ctx::new("strat_fail").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;
    let (id, user, execution) = recharge_under_fault(
        &ctx,
        &mock,
        json!({"mode": "error"}),
        14,
        Duration::from_secs(60),
    )
    .await;
    mock.ok().await;
    assert_eq!(execution.status, "failed", "{execution:?}");
    assert!(execution.attempts >= 1, "{execution:?}");
    let error = execution.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("500"),
        "last_error names the status: {execution:?}"
    );
    // The credit stays: the ledger and the balance have it, the books balance, nothing arrived.
    assert_eq!(recharges(&ctx.db, &user).await, vec![(14, execution.id)]);
    assert_eq!(ctx.balance(&user).await, 14);
    assert_eq!(mock.delta_count(&user).await, 0);
    ctx.assert_verify_clean().await;

    // The retry endpoint queues it again; it is delivered once.
    let body = ctx
        .api
        .admin(
            Method::POST,
            &format!("/api/v1/executions/{}/retry", execution.id),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(body["id"], execution.id, "{body}");
    assert!(
        body["status"] == "pending" || body["status"] == "completed",
        "retried execution {body}"
    );
    let rows = settled(&ctx.db, id, 1, Duration::from_secs(20)).await;
    assert_eq!(rows[0].status, "completed", "{:?}", rows[0]);
    assert_eq!(rows[0].last_error, None, "{:?}", rows[0]);
    assert_one_delta(&mock, &user, 14, execution.id).await;
    // Still one credit, and the balance did not move.
    assert_eq!(recharges(&ctx.db, &user).await, vec![(14, execution.id)]);
    assert_eq!(ctx.balance(&user).await, 14);
    retire(&ctx, id).await;
    ctx.assert_verify_clean().await;
}
