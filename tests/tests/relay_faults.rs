//! The AiGateway relay when a sidecar dies mid-relay (SPEC 6.5): a claimed outbox row is leased,
//! so a relay that dies after claiming leaves it untouched until the lease ends, and then another
//! relay (or the restarted one) delivers it, with the same Idempotency-Key.
//!
//! 1. Protocol level: this test claims its rows itself, exactly as a relay does (lease 5 s), and
//!    never completes them (the relay "died"). While the lease holds nothing is delivered; after it
//!    the shared e2e sidecar delivers one delta per user.
//! 2. Process level: a private sidecar (E2E_SIDECAR_BIN) with a short lease is killed with SIGKILL
//!    while its delivery hangs in the stalled mock, then restarted; the recharge completes, the
//!    gateway saw one or two deltas (two is the documented window: the stalled one is applied late)
//!    all under the execution's key, and the ledger holds one credit.
//!
//! Like strategies.rs, the test holds `MOCK_LOCK` for its whole life and sets the mock fault to ok
//! first and last; its strategies match only its own users and are retired at the end.

use std::time::{Duration, Instant};

use pg_quota_e2e::relay::*;
use pg_quota_e2e::*;

/// The lease this test's "relays" take (the private sidecar's QUOTA_RELAY_LEASE_S too).
const LEASE_S: i32 = 5;

/// A private sidecar with a short lease and fast polling (see `PrivateSidecar`).
async fn start_private_sidecar() -> PrivateSidecar {
    let url = sidecar_database_url(&env().database_url).await;
    let lease = LEASE_S.to_string();
    PrivateSidecar::start(
        &url,
        &[
            ("QUOTA_RELAY_TIMEOUT_MS", "2000"),
            ("QUOTA_RELAY_LEASE_S", &lease),
            ("QUOTA_RELAY_POLL_MS", "100"),
            ("QUOTA_RELAY_BACKOFF_BASE_MS", "100"),
            ("QUOTA_RELAY_BACKOFF_MAX_MS", "500"),
            // The stalled delivery below is re-sent after the lease: the documented window of a
            // gateway that deduplicates by Idempotency-Key.
            ("QUOTA_AIGATEWAY_IDEMPOTENT", "true"),
        ],
        false,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Leases the strategy's outbox rows exactly as `quota.outbox_claim` does (attempts + 1 on the row
/// and its execution, next_attempt_at = now() + lease), but only this test's rows, so other tests'
/// deliveries are not held up.
const CLAIM_OWN_ROWS: &str = "
    WITH claimed AS (
        UPDATE quota.outbox o
           SET attempts = o.attempts + 1,
               next_attempt_at = now() + make_interval(secs => 5)
         WHERE o.execution_id IN (SELECT id FROM quota.executions WHERE strategy_id = $1)
        RETURNING o.execution_id),
    counted AS (
        UPDATE quota.executions e SET attempts = e.attempts + 1, update_time = now()
          FROM claimed WHERE e.id = claimed.execution_id
        RETURNING e.id)
    SELECT count(*) FROM counted";

/// Defers the strategy's outbox rows by 1.5 s with `quota.outbox_retry` (a protocol call), so they
/// fall due between polls: the private sidecar (100 ms poll) most likely claims them before the
/// shared one (1 s poll).
const DEFER_OWN_ROWS: &str = "
    SELECT count(*) FILTER (WHERE quota.outbox_retry(o.id, 'e2e: deferred', 1500))
    FROM quota.outbox o
    WHERE o.execution_id IN (SELECT id FROM quota.executions WHERE strategy_id = $1)";

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn relay_killed_mid_delivery_leaves_the_row_to_its_lease_and_delivers_once_after_restart() {
    let ctx = Ctx::new("relay_kill").await;
    let _lock = lock_mock().await;
    let mock = Mock::new();
    mock.ok().await;

    // ---- 1. A relay dies right after claiming: the lease holds the rows, then they come back.
    let u1 = ctx.create_user().await;
    let u2 = ctx.create_user().await;
    let amount = 7;
    let sid = create_disabled_strategy(&ctx, &[&u1, &u2], amount).await;
    // A delivery now would succeed at once: only the lease may hold it back.
    let (recharged, claimed) = enable_and_scan(sid, CLAIM_OWN_ROWS).await;
    assert_eq!(recharged, 2, "scan of strategy {sid}");
    assert_eq!(claimed, 2, "claimed outbox rows of strategy {sid}");
    let claimed_at = Instant::now();

    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in [&u1, &u2] {
        let deltas = mock.deltas(user).await;
        assert_eq!(
            int(&deltas, "count"),
            0,
            "a leased row was delivered: {deltas}"
        );
    }
    let rows = executions(&ctx.db, sid).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for e in &rows {
        assert_eq!(e.status, "pending", "{e:?}");
        assert_eq!(e.attempts, 1, "{e:?}");
    }
    // The lease still held when the mock was read (so "no delta" proves the lease did its job).
    let leased: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.outbox WHERE next_attempt_at > now() AND attempts = 1
               AND execution_id IN (SELECT id FROM quota.executions WHERE strategy_id = $1)",
            &[&sid],
        )
        .await
        .expect("leased rows")
        .get(0);
    assert_eq!(leased, 2, "the rows should still be leased");

    // After the lease the shared sidecar's relay takes them over.
    let rows = eventually(
        "the shared relay to deliver the abandoned rows",
        Duration::from_secs(15 + LEASE_S as u64),
        || async {
            let rows = executions(&ctx.db, sid).await;
            rows.iter().all(|e| e.status == "completed").then_some(rows)
        },
    )
    .await;
    assert!(
        claimed_at.elapsed() >= Duration::from_secs(LEASE_S as u64 - 1),
        "delivered after {:?}, before the {LEASE_S} s lease ended",
        claimed_at.elapsed()
    );
    for e in &rows {
        assert!(e.attempts >= 2, "{e:?}");
        assert_eq!(e.amount, amount);
        let deltas = mock.deltas(&e.user_id).await;
        assert_eq!(
            int(&deltas, "count"),
            1,
            "deltas of {}: {deltas}",
            e.user_id
        );
        assert_eq!(deltas["deltas"][0]["value"], amount, "{deltas}");
        assert_eq!(
            deltas["deltas"][0]["idempotency_key"],
            format!("execution-{}", e.id),
            "{deltas}"
        );
        assert_eq!(deltas["duplicate_keys"], json!([]), "{deltas}");
        assert_eq!(recharges(&ctx.db, &e.user_id).await, vec![(amount, e.id)]);
        assert_eq!(ctx.balance(&e.user_id).await, amount);
    }
    let left: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.outbox
              WHERE execution_id IN (SELECT id FROM quota.executions WHERE strategy_id = $1)",
            &[&sid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "outbox rows left behind");
    ctx.assert_verify_clean().await;
    retire(&ctx, sid).await;

    // ---- 2. A real sidecar killed (SIGKILL) while its delivery hangs, then restarted.
    let mut sidecar = start_private_sidecar().await;
    let user = ctx.create_user().await;
    let amount = 11;
    let stall_ms: u64 = 6000;
    let sid = create_disabled_strategy(&ctx, &[&user], amount).await;
    mock.set_fault(json!({"mode": "stall", "count": 1, "stall_ms": stall_ms}))
        .await;
    let faulted_before = mock.faulted().await;
    let (recharged, deferred) = enable_and_scan(sid, DEFER_OWN_ROWS).await;
    assert_eq!((recharged, deferred), (1, 1), "scan of strategy {sid}");
    let execution_id = executions(&ctx.db, sid).await[0].id;

    // Wait until a relay's delivery hangs in the mock.
    eventually(
        "a delivery to stall in the mock",
        Duration::from_secs(15),
        || async { (mock.faulted().await > faulted_before).then_some(()) },
    )
    .await;
    // Whose lease is it? The private sidecar leases for LEASE_S s, the shared one for 60 s.
    let lease_left: f64 = ctx
        .db
        .query_one(
            "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM quota.outbox
              WHERE execution_id = $1",
            &[&execution_id],
        )
        .await
        .expect("the outbox row is still there while its delivery stalls")
        .get(0);
    let private_claimed = lease_left <= LEASE_S as f64 + 1.0;
    eprintln!(
        "relay_faults: the stalled delivery belongs to the {} sidecar (lease left {lease_left:.1} s)",
        if private_claimed { "private" } else { "shared" }
    );

    sidecar.kill9();
    mock.ok().await;
    sidecar.restart().await;

    let key = format!("execution-{execution_id}");
    // Completed, and the stalled request has landed (it lands stall_ms after it was sent). When
    // the shared sidecar held the stalled delivery, it timed out there, and the shared sidecar
    // (QUOTA_AIGATEWAY_IDEMPOTENT unset: a gateway that does not deduplicate) marked it
    // `unknown` instead of sending it again: an operator confirms it.
    let confirmed = std::cell::Cell::new(false);
    let deltas = eventually(
        "the execution to complete and the stalled delta to land",
        Duration::from_secs(25),
        || async {
            let rows = executions(&ctx.db, sid).await;
            if rows.len() == 1 && rows[0].status == "unknown" && !private_claimed {
                let body = ctx
                    .api
                    .admin(
                        Method::POST,
                        &format!("/api/v1/executions/{execution_id}/confirm"),
                    )
                    .send()
                    .await
                    .expect(200);
                assert_eq!(body["status"], "completed", "{body}");
                confirmed.set(true);
                return None;
            }
            if rows.len() != 1 || rows[0].status != "completed" {
                return None;
            }
            let deltas = mock.deltas(&user).await;
            let stalled_landed = deltas["deltas"]
                .as_array()
                .is_some_and(|all| all.iter().any(|d| d["stalled"] == true));
            stalled_landed.then_some(deltas)
        },
    )
    .await;
    let n = int(&deltas, "count");
    assert!((1..=2).contains(&n), "deltas of {user}: {deltas}");
    if confirmed.get() {
        assert_eq!(n, 1, "an unknown delivery is never re-sent: {deltas}");
    }
    for d in deltas["deltas"].as_array().unwrap() {
        assert_eq!(d["idempotency_key"], key.as_str(), "{deltas}");
        assert_eq!(d["value"], amount, "{deltas}");
    }
    let expected_dups = if n == 2 { json!([key]) } else { json!([]) };
    assert_eq!(deltas["duplicate_keys"], expected_dups, "{deltas}");
    if private_claimed {
        // The killed relay never marked its row: it was delivered again after the lease.
        assert!(
            executions(&ctx.db, sid).await[0].attempts >= 2,
            "{:?}",
            executions(&ctx.db, sid).await
        );
    }
    assert_eq!(
        recharges(&ctx.db, &user).await,
        vec![(amount, execution_id)]
    );
    assert_eq!(ctx.balance(&user).await, amount);
    ctx.assert_verify_clean().await;

    retire(&ctx, sid).await;
    drop(sidecar);
    mock.ok().await;
}
