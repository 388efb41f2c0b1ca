//! A delivery whose outcome is unknown (issue 9, section 3): the mock's stall fault applies a
//! delta after the relay gave up waiting.
//!
//! 1. The shared sidecar (QUOTA_AIGATEWAY_IDEMPOTENT unset: a gateway that does not deduplicate,
//!    like Higress) marks the execution `unknown` instead of sending it again: the gateway
//!    receives it once, /health shows it, and an operator confirms it over REST.
//! 2. A private sidecar with QUOTA_AIGATEWAY_IDEMPOTENT=true retries it: the gateway receives it
//!    twice under one Idempotency-Key (which such a gateway drops) and the execution completes.
//!
//! Holds MOCK_LOCK for its whole life (the mock's fault switch is global) and sets the fault to ok
//! first and last; its strategies match only its own users and are retired at the end.

use std::time::Duration;

use pg_quota_e2e::relay::*;
use pg_quota_e2e::*;

/// Defers the strategy's outbox rows by 1.5 s (a protocol call), so they fall due between polls
/// and the relay that polls fastest claims them.
const DEFER_OWN_ROWS: &str = "
    SELECT count(*) FILTER (WHERE quota.outbox_retry(o.id, 'e2e: deferred', 1500))
    FROM quota.outbox o
    WHERE o.execution_id IN (SELECT id FROM quota.executions WHERE strategy_id = $1)";

const COUNT_OWN_EXECUTIONS: &str = "SELECT count(*) FROM quota.executions WHERE strategy_id = $1";

async fn outbox_rows(db: &tokio_postgres::Client, execution_id: i64) -> i64 {
    db.query_one(
        "SELECT count(*) FROM quota.outbox WHERE execution_id = $1",
        &[&execution_id],
    )
    .await
    .expect("outbox rows")
    .get(0)
}

#[tokio::test]
async fn an_unknown_delivery_is_not_resent_unless_the_gateway_is_idempotent() {
    let ctx = Ctx::new("relay_unknown").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;

    // ---- 1. Not idempotent (the shared sidecar, 5 s delivery timeout): unknown, sent once.
    let user = ctx.create_user().await;
    let amount = 9;
    let sid = create_disabled_strategy(&ctx, &[&user], amount).await;
    let stall_ms = 8000;
    mock.set_fault(json!({"mode": "stall", "count": 1, "stall_ms": stall_ms}))
        .await;
    let (recharged, _) = enable_and_scan(sid, COUNT_OWN_EXECUTIONS).await;
    assert_eq!(recharged, 1, "scan of strategy {sid}");
    let execution = eventually(
        "the stalled delivery to be marked unknown",
        Duration::from_secs(20),
        || async {
            let rows = executions(&ctx.db, sid).await;
            (rows.len() == 1 && rows[0].status == "unknown").then(|| rows[0].clone())
        },
    )
    .await;
    let last_error = execution.last_error.clone().unwrap_or_default();
    assert!(last_error.contains("outcome unknown"), "{execution:?}");
    assert_eq!(
        outbox_rows(&ctx.db, execution.id).await,
        0,
        "an unknown execution leaves the outbox"
    );

    // The gateway applies the stalled delta late; nobody sends it again.
    eventually(
        "the stalled delta to land",
        Duration::from_secs(15),
        || async {
            let deltas = mock.deltas(&user).await;
            (int(&deltas, "count") >= 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deltas = mock.deltas(&user).await;
    assert_eq!(int(&deltas, "count"), 1, "delivered twice: {deltas}");
    assert_eq!(deltas["deltas"][0]["stalled"], true, "{deltas}");
    assert_eq!(deltas["duplicate_keys"], json!([]), "{deltas}");
    assert_eq!(executions(&ctx.db, sid).await[0].status, "unknown");
    // The ledger credit stays.
    assert_eq!(
        recharges(&ctx.db, &user).await,
        vec![(amount, execution.id)]
    );

    // /health shows it: degraded for an operator, still 200 for a load balancer.
    let health = ctx
        .api
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect(200);
    assert!(int(&health["relay"], "unknown") >= 1, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    let problems = health["problems"].to_string();
    assert!(problems.contains("unknown delivery outcome"), "{health}");

    // The operator checked the gateway: confirm. Only an unknown execution can be confirmed.
    let confirm = format!("/api/v1/executions/{}/confirm", execution.id);
    let body = ctx
        .api
        .admin(Method::POST, &confirm)
        .send()
        .await
        .expect(200);
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(executions(&ctx.db, sid).await[0].status, "completed");
    ctx.api
        .admin(Method::POST, &confirm)
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .service(Method::POST, &confirm)
        .send()
        .await
        .expect_error(401, None);
    ctx.api
        .admin(Method::POST, "/api/v1/executions/999999999/confirm")
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(mock.delta_count(&user).await, 1);
    retire(&ctx, sid).await;

    // ---- 2. Idempotent (a private sidecar, 1 s delivery timeout, polling every 20 ms): the
    // unknown outcome is retried. The shared sidecar (1 s poll) may win the claim instead; then
    // its 5 s timeout outlasts the 3 s stall, the execution completes in one attempt, and the
    // round is run again.
    let url = sidecar_database_url(&env().database_url).await;
    let sidecar = PrivateSidecar::start(
        &url,
        &[
            ("QUOTA_AIGATEWAY_IDEMPOTENT", "true"),
            ("QUOTA_RELAY_TIMEOUT_MS", "1000"),
            ("QUOTA_RELAY_LEASE_S", "5"),
            ("QUOTA_RELAY_POLL_MS", "20"),
            ("QUOTA_RELAY_BACKOFF_BASE_MS", "100"),
            ("QUOTA_RELAY_BACKOFF_MAX_MS", "200"),
        ],
        false,
    )
    .await;
    let mut retried = false;
    for round in 1..=3 {
        mock.ok().await;
        let user = ctx.create_user().await;
        let sid = create_disabled_strategy(&ctx, &[&user], amount).await;
        mock.set_fault(json!({"mode": "stall", "count": 1, "stall_ms": 3000}))
            .await;
        let (recharged, deferred) = enable_and_scan(sid, DEFER_OWN_ROWS).await;
        assert_eq!((recharged, deferred), (1, 1), "scan of strategy {sid}");
        let execution = eventually(
            "the execution to complete",
            Duration::from_secs(20),
            || async {
                let rows = executions(&ctx.db, sid).await;
                assert!(
                    rows.iter().all(|e| e.status != "unknown"),
                    "an idempotent gateway's delivery was marked unknown: {rows:?}"
                );
                (rows.len() == 1 && rows[0].status == "completed").then(|| rows[0].clone())
            },
        )
        .await;
        // The stalled first delivery lands 3 s after it was sent.
        let deltas = eventually(
            "the stalled delta to land",
            Duration::from_secs(10),
            || async {
                let deltas = mock.deltas(&user).await;
                let stalled = deltas["deltas"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|d| d["stalled"] == true));
                stalled.then_some(deltas)
            },
        )
        .await;
        retire(&ctx, sid).await;
        if execution.attempts == 1 {
            eprintln!("relay_unknown: round {round}: the shared sidecar delivered it; again");
            assert_eq!(int(&deltas, "count"), 1, "{deltas}");
            continue;
        }
        // Timed out after 1 s, retried, delivered; then the stalled one landed too: the gateway
        // saw the key twice, which an idempotent gateway drops.
        let key = format!("execution-{}", execution.id);
        assert_eq!(int(&deltas, "count"), 2, "{deltas}");
        assert_eq!(deltas["duplicate_keys"], json!([key]), "{deltas}");
        assert_eq!(
            recharges(&ctx.db, &user).await,
            vec![(amount, execution.id)]
        );
        retried = true;
        break;
    }
    assert!(
        retried,
        "the private (idempotent) sidecar never won the claim in 3 rounds; its log:\n{}",
        sidecar.log_text()
    );
    drop(sidecar);
    mock.ok().await;
    ctx.assert_verify_clean().await;
}
