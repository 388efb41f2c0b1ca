//! The request timeout (issue 9, section 3): a charge that outlives its request is cancelled in
//! the database and answered with a JSON 503 that says the outcome is unknown; retrying with the
//! same operation_id applies it exactly once.
//!
//! A private sidecar (QUOTA_REQUEST_TIMEOUT_MS=1000, the shared sidecar's database role) serves
//! the charge while another session holds the user's wallet row locked, so the charge's
//! statement waits on the lock past the deadline.

use std::time::{Duration, Instant};

use pg_quota_e2e::relay::{eventually, sidecar_database_url, PrivateSidecar};
use pg_quota_e2e::*;

const TIMEOUT_MS: u64 = 1000;

/// Backends blocked by the session with backend pid `holder`.
async fn blocked_by(db: &tokio_postgres::Client, holder: i32) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        &[&holder],
    )
    .await
    .expect("pg_blocking_pids")
    .get(0)
}

#[tokio::test]
async fn a_charge_past_the_request_timeout_is_cancelled_and_a_retry_applies_it_once() {
    let ctx = Ctx::new("timeout").await;
    let user = ctx.create_user().await;
    ctx.top_up_credits(&user, 1_000_000).await;
    let balance_before = ctx.balance(&user).await;

    let url = sidecar_database_url(&env().database_url).await;
    let timeout = TIMEOUT_MS.to_string();
    let sidecar =
        PrivateSidecar::start(&url, &[("QUOTA_REQUEST_TIMEOUT_MS", &timeout)], false).await;
    let private = Api {
        client: ctx.api.client.clone(),
        base: sidecar.url(),
    };

    // Another session holds the wallet row: the charge's UPDATE waits for it.
    let mut locker = connect_db().await;
    let holder: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = locker.transaction().await.expect("begin");
    tx.query(
        "SELECT 1 FROM quota.wallets WHERE user_id = $1 FOR UPDATE",
        &[&user],
    )
    .await
    .expect("lock the wallet row");

    let operation_id = ctx.id("op");
    let charge = json!({"user_id": user, "cost_usd": 0.01, "operation_id": operation_id});
    let sent = Instant::now();
    let resp = private
        .service(Method::POST, "/api/internal/credits/charge")
        .json(&charge)
        .send()
        .await;
    let answered_after = sent.elapsed();
    assert_eq!(resp.status, 503, "{}: {}", resp.what, resp.text);
    assert_eq!(resp.body["error"], "timeout", "{}", resp.text);
    let message = resp.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("outcome is unknown") && message.contains("same operation_id"),
        "{message}"
    );
    assert!(
        resp.body["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{}",
        resp.text
    );
    assert!(
        answered_after >= Duration::from_millis(TIMEOUT_MS - 50)
            && answered_after < Duration::from_millis(TIMEOUT_MS + 2000),
        "answered after {answered_after:?}"
    );

    // The statement was cancelled at once (a cancel request), well before its statement_timeout
    // backstop (the request timeout + 1 s) would have ended it.
    eventually(
        "the timed-out charge to stop waiting for the lock",
        Duration::from_millis(800),
        || async { (blocked_by(&ctx.db, holder).await == 0).then_some(()) },
    )
    .await;

    // Releasing the lock does not let it commit later.
    tx.rollback().await.expect("release the wallet row");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ctx.ledger_rows(&operation_id).await,
        0,
        "the timed-out charge committed"
    );
    assert_eq!(ctx.balance(&user).await, balance_before);

    // The retry the error body asks for applies it once; another replays it.
    let first = private
        .service(Method::POST, "/api/internal/credits/charge")
        .json(&charge)
        .send()
        .await
        .expect(200);
    assert_eq!(first["success"], true, "{first}");
    let again = ctx
        .api
        .service(Method::POST, "/api/internal/credits/charge")
        .json(&charge)
        .send()
        .await
        .expect(200);
    assert_eq!(again, first, "a replay answers the first response");
    assert_eq!(ctx.ledger_rows(&operation_id).await, 1);
    let charged = int(&first, "credits_charged");
    assert_eq!(ctx.balance(&user).await, balance_before - charged);

    // The private sidecar's pool still works after dropping the cancelled connection.
    private
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    ctx.assert_verify_clean().await;
    drop(sidecar);
}
