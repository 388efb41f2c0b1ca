//! Helpers for the end-to-end tests that make the AiGateway mock receive deltas: the mock's test
//! API, the advisory lock that serialises those tests (the mock's fault switch is global), and
//! reads of executions and recharge credits.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::{connect_db, int, Ctx};

/// The strategies REST collection.
pub const STRATEGIES: &str = "/api/v1/strategies";

/// Advisory lock serialising the tests that make the mock gateway receive deltas.
pub const MOCK_LOCK: i64 = 4242;

// ---------------------------------------------------------------------------------------------
// The mock gateway

/// The mock's base URL (E2E_AIGATEWAY_URL, set by scripts/test.sh).
pub fn mock_url() -> String {
    std::env::var("E2E_AIGATEWAY_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "E2E_AIGATEWAY_URL is not set: scripts/test.sh e2e starts the aigateway-mock and \
                 sets it (and passes QUOTA_AIGATEWAY_URL to the sidecar)"
            )
        })
        .trim_end_matches('/')
        .to_string()
}

pub struct Mock {
    client: reqwest::Client,
    base: String,
}

impl Mock {
    pub fn new() -> Mock {
        Mock {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            base: mock_url(),
        }
    }

    pub async fn set_fault(&self, fault: Value) {
        let resp = self
            .client
            .post(format!("{}/mock/fault", self.base))
            .json(&fault)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /mock/fault {fault}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "POST /mock/fault {fault}: {text}");
    }

    pub async fn ok(&self) {
        self.set_fault(json!({"mode": "ok"})).await;
    }

    /// `GET /mock/deltas?consumer=`: the deltas applied for one consumer, and its duplicate keys.
    pub async fn deltas(&self, consumer: &str) -> Value {
        let resp = self
            .client
            .get(format!("{}/mock/deltas", self.base))
            .query(&[("consumer", consumer)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /mock/deltas: {e}"));
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.expect("deltas JSON")
    }

    /// How many requests the mock's faults have hit so far.
    pub async fn faulted(&self) -> i64 {
        let resp = self
            .client
            .get(format!("{}/mock/fault", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /mock/fault: {e}"));
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.expect("fault JSON");
        int(&body, "faulted")
    }

    pub async fn delta_count(&self, consumer: &str) -> i64 {
        int(&self.deltas(consumer).await, "count")
    }
}

/// Holds `MOCK_LOCK` until dropped (the session ends with the test's runtime).
pub async fn lock_mock() -> tokio_postgres::Client {
    let db = connect_db().await;
    db.execute("SELECT pg_advisory_lock($1)", &[&MOCK_LOCK])
        .await
        .expect("mock advisory lock");
    db
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Polls `probe` every 100 ms until it returns Some, for at most `limit`; panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Clone)]
pub struct Execution {
    pub id: i64,
    pub user_id: String,
    pub status: String,
    pub amount: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn executions(db: &tokio_postgres::Client, strategy_id: i64) -> Vec<Execution> {
    db.query(
        "SELECT id, user_id, status, amount, attempts, last_error FROM quota.executions
         WHERE strategy_id = $1 ORDER BY user_id",
        &[&strategy_id],
    )
    .await
    .expect("executions")
    .iter()
    .map(|r| Execution {
        id: r.get(0),
        user_id: r.get(1),
        status: r.get(2),
        amount: r.get(3),
        attempts: r.get(4),
        last_error: r.get(5),
    })
    .collect()
}

/// Recharge ledger rows of a user: (credits, execution_id).
pub async fn recharges(db: &tokio_postgres::Client, user_id: &str) -> Vec<(i64, i64)> {
    db.query(
        "SELECT credits, (metadata->>'execution_id')::int8 FROM quota.ledger
         WHERE user_id = $1 AND transaction_type = 'recharge' ORDER BY transaction_id",
        &[&user_id],
    )
    .await
    .expect("ledger rows")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Disables then deletes a test's strategy, so later scans of other tests never run it.
pub async fn retire(ctx: &Ctx, id: i64) {
    ctx.api
        .admin(Method::POST, &format!("{STRATEGIES}/{id}/disable"))
        .send()
        .await
        .expect(200);
    ctx.api
        .admin(Method::DELETE, &format!("{STRATEGIES}/{id}"))
        .send()
        .await
        .expect(200);
}
