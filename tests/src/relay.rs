//! Helpers for the end-to-end tests that make the AiGateway mock receive deltas: the mock's test
//! API, the advisory lock that serialises those tests (the mock's fault switch is global), and
//! reads of executions and recharge credits.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::{connect_db, env, int, Ctx};

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

impl Default for Mock {
    fn default() -> Self {
        Self::new()
    }
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
// A private sidecar process (E2E_SIDECAR_BIN), killed when dropped (also on panic)

/// The login role the shared sidecar uses when the extension ships its roles.
pub const SIDECAR_ROLE: &str = "quota_sidecar";

/// A database URL for a private sidecar: `database_url` with the user replaced by the
/// sidecar's least role (SIDECAR_ROLE) when the cluster has it, so private sidecars run with
/// the rights the shared one has.
pub async fn sidecar_database_url(database_url: &str) -> String {
    let db = connect_db().await;
    let has_role: bool = db
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1 AND rolcanlogin)",
            &[&SIDECAR_ROLE],
        )
        .await
        .expect("pg_roles")
        .get(0);
    if !has_role {
        return database_url.to_owned();
    }
    match database_url.split_once("://").and_then(|(scheme, rest)| {
        let (_user, host) = rest.split_once('@')?;
        Some(format!("{scheme}://{SIDECAR_ROLE}@{host}"))
    }) {
        Some(url) => url,
        None => database_url.to_owned(),
    }
}

pub struct PrivateSidecar {
    child: Option<Child>,
    pub listen: String,
    log: std::path::PathBuf,
    envs: Vec<(String, String)>,
}

impl PrivateSidecar {
    /// Starts a sidecar on a free port with the shared one's tokens and gateway (the mock),
    /// connected to `database_url` (see [`sidecar_database_url`]), plus `extra` variables (which
    /// override), and waits until its /health answers (any status when `any_health` is true,
    /// else a 2xx).
    pub async fn start(
        database_url: &str,
        extra: &[(&str, &str)],
        any_health: bool,
    ) -> PrivateSidecar {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind a free port")
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("e2e_private_sidecar_{port}.log"));
        let e = env();
        let mut envs: Vec<(String, String)> = vec![
            ("QUOTA_LISTEN".into(), listen.clone()),
            ("QUOTA_DATABASE_URL".into(), database_url.to_owned()),
            ("QUOTA_ADMIN_TOKEN".into(), e.admin_token.clone()),
            ("QUOTA_SERVICE_TOKEN".into(), e.service_token.clone()),
            ("QUOTA_AIGATEWAY_URL".into(), mock_url()),
            (
                "QUOTA_AIGATEWAY_CREDENTIAL".into(),
                std::env::var("E2E_AIGATEWAY_CREDENTIAL")
                    .expect("E2E_AIGATEWAY_CREDENTIAL is not set"),
            ),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (name, value) in extra {
            envs.retain(|(n, _)| n != name);
            envs.push(((*name).to_owned(), (*value).to_owned()));
        }
        let mut sidecar = PrivateSidecar {
            child: None,
            listen,
            log,
            envs,
        };
        sidecar.child = Some(sidecar.spawn());
        sidecar.wait_ready(any_health).await;
        sidecar
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn spawn(&self) -> Child {
        let bin = std::env::var("E2E_SIDECAR_BIN")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .expect("E2E_SIDECAR_BIN is not set (scripts/test.sh e2e sets it)");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("sidecar log file");
        let err = out.try_clone().expect("sidecar log file");
        let mut command = Command::new(bin);
        // Only what this sidecar is given: none of the shared one's QUOTA_* settings leak in.
        for (name, _) in std::env::vars() {
            if name.starts_with("QUOTA_") {
                command.env_remove(name);
            }
        }
        command
            .envs(self.envs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start the private sidecar")
    }

    async fn wait_ready(&mut self, any_health: bool) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = format!("{}/health", self.url());
        for _ in 0..300 {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the private sidecar exited ({status}); log {}:\n{}",
                        self.log.display(),
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            if let Ok(resp) = client.get(&url).send().await {
                if any_health || resp.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the private sidecar on {} did not become healthy in 30 s; log {}",
            self.listen,
            self.log.display()
        );
    }

    /// SIGKILL: no graceful shutdown, no release of claimed rows.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 the private sidecar");
            child.wait().expect("reap the private sidecar");
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.child = Some(self.spawn());
        self.wait_ready(false).await;
    }

    /// The sidecar's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PrivateSidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Keep the log for a failed test only.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("private sidecar log: {}", self.log.display());
        }
    }
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

/// A strategy for `users`, created DISABLED so no scan (the worker's or another test's) runs it
/// before this test enables and scans it in its own transaction.
pub async fn create_disabled_strategy(ctx: &Ctx, users: &[&str], amount: i64) -> i64 {
    let name = ctx.id("s");
    let quoted: Vec<String> = users.iter().map(|u| format!("\"{u}\"")).collect();
    let body = ctx
        .api
        .admin(Method::POST, STRATEGIES)
        .json(&json!({
            "name": name,
            "title": format!("{name} title"),
            "type": "single",
            "amount": amount,
            "model": "gpt-3.5-turbo",
            "condition": format!("match-user({})", quoted.join(", ")),
            "status": false,
        }))
        .send()
        .await
        .expect(201);
    assert_eq!(body["status"], false, "created strategy {body}");
    int(&body, "id")
}

/// Enables the strategy and scans it in one transaction; `then` runs SQL on the new outbox rows
/// (`$1` = strategy id) in the same transaction, before the commit makes them visible to relays.
/// Returns (users recharged, rows `then` touched).
pub async fn enable_and_scan(strategy_id: i64, then: &str) -> (i64, i64) {
    let mut db = connect_db().await;
    let tx = db.transaction().await.expect("begin");
    tx.execute(
        "UPDATE quota.strategies SET status = true, update_time = now() WHERE id = $1",
        &[&strategy_id],
    )
    .await
    .expect("enable the strategy");
    let recharged: i64 = tx
        .query(
            "SELECT recharged FROM quota.scan(NULL, true, $1)",
            &[&strategy_id],
        )
        .await
        .expect("quota.scan")
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .sum();
    let touched: i64 = tx
        .query_one(then, &[&strategy_id])
        .await
        .unwrap_or_else(|e| panic!("{then}: {e}"))
        .get(0);
    tx.commit().await.expect("commit");
    (recharged, touched)
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
