//! Scans racing each other and racing a disable, on real connections (SPEC 6.3, 6.4): two scans
//! at once never credit twice, and a strategy disabled while a scan waits for it is not run.

use pg_quota_e2e::relay::lock_mock;
use pg_quota_e2e::{assert_verify_clean, connect_db as connect_shared, unique_id};
use std::time::Duration;

/// A connection whose scans queue nothing for the relay (quota.relay = off): these tests are about
/// the scan, and deliveries to the shared mock would disturb the relay tests' fault counts.
async fn connect_db() -> tokio_postgres::Client {
    let db = connect_shared().await;
    db.batch_execute("SET quota.relay = off").await.unwrap();
    db
}

async fn user_and_strategy(db: &tokio_postgres::Client, tag: &str) -> (String, i64) {
    let user = unique_id(tag);
    db.execute("SELECT quota.create_user($1)", &[&user])
        .await
        .unwrap();
    let strategy = serde_json::json!({
        "name": unique_id(&format!("{tag}-s")),
        "type": "single",
        "amount": 7,
        "condition": format!("match-user(\"{user}\")"),
    });
    let id: i64 = db
        .query_one(
            "SELECT (quota.create_strategy($1) ->> 'id')::bigint",
            &[&strategy],
        )
        .await
        .unwrap()
        .get(0);
    (user, id)
}

async fn recharged_by(db: &tokio_postgres::Client, strategy: i64) -> i64 {
    db.query_one(
        "SELECT count(*) FROM quota.executions WHERE strategy_id = $1",
        &[&strategy],
    )
    .await
    .unwrap()
    .get(0)
}

/// What one `quota.scan()` call recharged for `strategy` (0 if it did not run it).
async fn scan_for(db: &tokio_postgres::Client, strategy: i64) -> i64 {
    db.query_opt(
        "SELECT recharged FROM quota.scan(NULL, true, $1)",
        &[&strategy],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
    .unwrap_or(0)
}

#[tokio::test]
async fn two_scans_at_once_credit_each_user_once() {
    let _lock = lock_mock().await;
    let setup = connect_db().await;
    let (user, strategy) = user_and_strategy(&setup, "twoscans").await;
    // The first scan holds its transaction open after running; the second waits on the strategy
    // row, then sees the first one's executions and recharges nobody.
    let first = connect_db().await;
    let second = connect_db().await;
    first.batch_execute("BEGIN").await.unwrap();
    // 1, or 0 if a scan of another test (POST /api/v1/strategies/scan runs every strategy) got
    // there first; either way this transaction now holds the strategy row.
    let by_first = scan_for(&first, strategy).await;
    let racing = tokio::spawn(async move {
        let n = scan_for(&second, strategy).await;
        (second, n)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !racing.is_finished(),
        "the second scan must wait for the first"
    );
    first.batch_execute("COMMIT").await.unwrap();
    let (_second, n) = tokio::time::timeout(Duration::from_secs(10), racing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the second scan recharged again");
    assert!(by_first <= 1);
    assert_eq!(recharged_by(&setup, strategy).await, 1);
    let balance: i64 = setup
        .query_one(
            "SELECT balance FROM quota.wallets WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 7);
    setup
        .execute("SELECT quota.disable_strategy($1)", &[&strategy])
        .await
        .unwrap();
    assert_verify_clean(&setup).await;
}

#[tokio::test]
async fn a_strategy_disabled_while_a_scan_waits_for_it_is_not_run() {
    let _lock = lock_mock().await;
    let setup = connect_db().await;
    let (_user, strategy) = user_and_strategy(&setup, "midscan").await;
    // The admin's disable holds the strategy row; the scan reaches it, waits, then sees it off.
    let admin = connect_db().await;
    admin.batch_execute("BEGIN").await.unwrap();
    admin
        .execute("SELECT quota.disable_strategy($1)", &[&strategy])
        .await
        .unwrap();
    let scanner = connect_db().await;
    let scan = tokio::spawn(async move { scan_for(&scanner, strategy).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.batch_execute("COMMIT").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), scan)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "a strategy disabled before its turn was run");
}

#[tokio::test]
async fn a_disable_issued_during_a_scan_takes_effect_when_that_scan_ends() {
    let _lock = lock_mock().await;
    let setup = connect_db().await;
    let (_user, strategy) = user_and_strategy(&setup, "afterscan").await;
    let scanner = connect_db().await;
    scanner.batch_execute("BEGIN").await.unwrap();
    assert!(scan_for(&scanner, strategy).await <= 1);
    // The disable waits for the scan holding the strategy; it is not lost.
    let admin = connect_db().await;
    let disable = tokio::spawn(async move {
        admin
            .execute("SELECT quota.disable_strategy($1)", &[&strategy])
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!disable.is_finished(), "the disable must wait for the scan");
    scanner.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), disable)
        .await
        .unwrap()
        .unwrap();
    let status: bool = setup
        .query_one(
            "SELECT status FROM quota.strategies WHERE id = $1",
            &[&strategy],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!status);
    // A user who comes to match later is not recharged by a disabled strategy.
    let late = unique_id("afterscan-late");
    setup
        .execute("SELECT quota.create_user($1)", &[&late])
        .await
        .unwrap();
    let patch = serde_json::json!({ "condition": format!("match-user(\"{late}\")") });
    setup
        .execute("SELECT quota.update_strategy($1, $2)", &[&strategy, &patch])
        .await
        .unwrap();
    assert_eq!(scan_for(&setup, strategy).await, 0);
    assert_eq!(recharged_by(&setup, strategy).await, 1);
}
