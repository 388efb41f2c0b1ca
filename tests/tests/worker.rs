//! The background worker (issue 9): one strategy's ERROR never restarts the worker nor stops the
//! other strategies; what its scans did shows in quota.worker_status().

use std::time::Duration;

use pg_quota_e2e::*;

async fn worker_status(db: &tokio_postgres::Client) -> Value {
    db.query_one("SELECT to_jsonb(w) FROM quota.worker_status() w", &[])
        .await
        .expect("worker_status")
        .get(0)
}

#[tokio::test]
async fn a_failing_strategy_does_not_stop_the_worker_or_the_others() {
    let ctx = Ctx::new("worker_isolation").await;
    let user = ctx.create_user().await;
    let before = worker_status(&ctx.db).await;
    assert_eq!(before["state"], "running", "{before}");
    let create = |name: String, condition: String| {
        let db = &ctx.db;
        async move {
            db.query_one(
                "SELECT (quota.create_strategy(jsonb_build_object(
                     'name', $1::text, 'type', 'periodic', 'amount', 3, 'periodic_expr', '* * * * * *',
                     'condition', $2::text, 'max_exec_per_user', 1)) ->> 'id')::bigint",
                &[&name, &condition],
            )
            .await
            .expect("create_strategy")
            .get::<_, i64>(0)
        }
    };
    // A broken strategy first (in id order), then a good one.
    let broken = create(ctx.id("broken"), format!("match-user({user})")).await;
    ctx.db
        .execute(
            "UPDATE quota.strategies SET condition = 'and(' WHERE id = $1",
            &[&broken],
        )
        .await
        .unwrap();
    let good = create(ctx.id("good"), format!("match-user({user})")).await;

    // The worker fires the good one within a few ticks (every second, per its cron).
    let mut recharged = false;
    for _ in 0..60 {
        let n: i64 = ctx
            .db
            .query_one(
                "SELECT count(*) FROM quota.executions WHERE strategy_id = $1 AND user_id = $2",
                &[&good, &user],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            recharged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = worker_status(&ctx.db).await;
    let broken_error: Option<String> = ctx
        .db
        .query_one(
            "SELECT last_error FROM quota.strategies WHERE id = $1",
            &[&broken],
        )
        .await
        .unwrap()
        .get(0);
    for id in [broken, good] {
        ctx.db
            .execute("SELECT quota.delete_strategy($1)", &[&id])
            .await
            .unwrap();
    }
    assert!(recharged, "the good strategy never ran: {after}");
    assert_eq!(ctx.balance(&user).await, 3);
    assert!(
        broken_error
            .as_deref()
            .is_some_and(|e| e.contains("invalid condition")),
        "the broken strategy's error is kept: {broken_error:?}"
    );
    // Same worker process, still running, and it counted the failures.
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(
        after["pid"], before["pid"],
        "the worker restarted: {before} -> {after}"
    );
    assert!(
        int(&after, "strategy_errors") > int(&before, "strategy_errors"),
        "{before} -> {after}"
    );
    assert!(int(&after, "recharged") >= 1, "{after}");
    ctx.assert_verify_clean().await;
}
