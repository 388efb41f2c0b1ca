//! The AiGateway relay (SPEC 6.5): drains `quota.outbox` and delivers every recharge to the
//! AiGateway (the Higress ai-quota admin API) as `POST {url}{admin_path}/quota/delta`.
//!
//! How it works
//! - A recharge strategy's scan writes the ledger credit, a `pending` execution and one outbox
//!   row in one transaction, then `NOTIFY quota_outbox`.
//! - This task keeps a dedicated connection (not from the pool) in `LISTEN quota_outbox`; a
//!   notification, the earliest retry falling due, or the fallback poll (`QUOTA_RELAY_POLL_MS`)
//!   wakes it. The LISTEN connection is re-established when it drops; meanwhile the poll goes on.
//! - It claims due rows with `quota.outbox_claim(batch, lease_s)` (`FOR UPDATE SKIP LOCKED`; a
//!   claimed row is leased: its `next_attempt_at` moves `lease_s` ahead). Several sidecars can
//!   run at once: a row is never held by two of them, and the rows of a relay that died come
//!   back when their lease ends.
//! - Each row is delivered (at most [`CONCURRENCY`] at once) with a form body `consumer`,
//!   `value`, `Authorization: Bearer <credential>` and `Idempotency-Key: execution-<id>`, within
//!   `QUOTA_RELAY_TIMEOUT_MS`. Then:
//!   - 200: `quota.outbox_complete` (the execution is `completed`);
//!   - 408, 425, 429, 5xx, or a connection that could not be made (refused, DNS, connect
//!     timeout: the request was never sent): `quota.outbox_retry` after
//!     `min(max, base * 2^(attempts-1))` plus 0..50% jitter, and never before a `Retry-After`
//!     (seconds) of the gateway; after `QUOTA_RELAY_MAX_ATTEMPTS` deliveries, `quota.outbox_fail`;
//!   - no answer after the request was sent (a timeout, a connection reset or closed while
//!     waiting): the gateway may have applied it. With `QUOTA_AIGATEWAY_IDEMPOTENT=true` (the
//!     gateway drops a repeated `Idempotency-Key`) it is retried like the above. Otherwise
//!     (Higress) re-sending could apply it twice, so `quota.outbox_unknown` marks the execution
//!     `unknown` and removes its outbox row: an operator checks the gateway and either
//!     confirms it (`POST /api/v1/executions/{id}/confirm`, `quota.confirm_execution`) or
//!     queues it again (`POST /api/v1/executions/{id}/retry`, `quota.retry_execution`);
//!   - any other status (400, 401, 403, 404, 3xx, other 2xx): the request itself is wrong and
//!     would be wrong again, so `quota.outbox_fail` at once with the status and the start of the
//!     body. A failed execution keeps its ledger credit and is queued again by
//!     `POST /api/v1/executions/{id}/retry` (`quota.retry_execution`).
//! - A row is only delivered while its lease has at least a delivery timeout left, so a slow
//!   batch never delivers a row another relay may already have reclaimed.
//! - With no gateway configured (`QUOTA_AIGATEWAY_URL` unset) claimed rows are completed without
//!   a delivery: recharges complete in the ledger alone (logged once per batch).
//! - Database errors are logged and retried with backoff; the task never panics on them. On
//!   shutdown it stops claiming, lets the deliveries in flight finish (each bounded by the
//!   timeout), releases the rows it claimed but did not start, and returns.
//!
//! Pool alerts (issue 13) share the outbox, the claim, the lease and the retry policy: a row of
//! kind `alert` (its `payload` is the alert) is POSTed as JSON `{"type": "quota.warning" |
//! "quota.exhausted", "alert": payload}` with `Idempotency-Key: alert-<alert_id>` to every URL of
//! `QUOTA_ALERT_WEBHOOK_URLS`, concurrently. Every URL answering 2xx completes it; 408, 425, 429,
//! 5xx, a connection that could not be made, and also a request sent but not answered (the key
//! lets the receiver drop a repeat) are retried with the same backoff and jitter up to
//! `QUOTA_RELAY_MAX_ATTEMPTS`; any other status fails it. A URL that already took the alert is
//! not sent it again by this sidecar's retries. Without a URL alert rows complete at once. A
//! webhook never blocks anything: it runs here, after the acquire that raised it committed.
//!
//! The one unavoidable window: the gateway's 200 and `outbox_complete` are two systems, so a
//! crash (or a lost database connection) after the gateway applied the delta and before the row
//! is marked leaves the row leased; after the lease it is delivered again. Every delivery of an
//! execution carries the same `Idempotency-Key`, so a gateway that deduplicates on it applies the
//! delta once; the mock records such double deliveries in `duplicate_keys`. Higress itself does
//! not deduplicate, so the window is kept small: the mark is retried a few times before the row
//! is left to its lease. (A delivery that times out is no longer part of that window: see
//! `unknown` above.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_postgres::{AsyncMessage, NoTls};

use serde_json::{json, Value};

use crate::config::{AiGatewayConfig, Config, RelayConfig};
use crate::metrics::Metrics;

/// Deliveries in flight at once, per sidecar.
pub const CONCURRENCY: usize = 8;
/// The channel a scan notifies after writing outbox rows.
pub const CHANNEL: &str = "quota_outbox";
const SQL_LISTEN: &str = "LISTEN quota_outbox";
/// The idempotency header sent with every delivery.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Longest body excerpt kept in `last_error`.
pub const BODY_EXCERPT_CHARS: usize = 200;
/// A `Retry-After` beyond this is read as this (a gateway asking for a day is misconfigured).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// Marking a row after the delivery: attempts before the row is left to its lease.
pub const MARK_TRIES: u32 = 3;
/// Reconnect delays of the LISTEN connection and of a failing claim: 1 s doubling to 30 s.
pub const DB_RETRY_MIN: Duration = Duration::from_secs(1);
pub const DB_RETRY_MAX: Duration = Duration::from_secs(30);

pub const SQL_CLAIM: &str = "SELECT outbox_id, execution_id, consumer, value, attempts, \
     kind, payload FROM quota.outbox_claim($1::int4, $2::int4)";
/// Outbox row kinds.
pub const KIND_RECHARGE: &str = "recharge";
pub const KIND_ALERT: &str = "alert";
/// Rows of alerts this sidecar remembers per-URL successes for (a bound: the map is cleared when
/// it grows past this, which only costs a repeat that the Idempotency-Key absorbs).
pub const SENT_MEMORY_MAX: usize = 10_000;
pub const SQL_COMPLETE: &str = "SELECT quota.outbox_complete($1::int8)";
pub const SQL_RETRY: &str = "SELECT quota.outbox_retry($1::int8, $2::text, $3::int4)";
pub const SQL_FAIL: &str = "SELECT quota.outbox_fail($1::int8, $2::text)";
pub const SQL_UNKNOWN: &str = "SELECT quota.outbox_unknown($1::int8, $2::text)";

/// What this sidecar's relay has done since it started (in memory; /health reports it), and the
/// Prometheus counter of its deliveries.
pub struct RelayStats {
    last_delivery_at: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    deliveries: AtomicU64,
    unknown: AtomicU64,
    alerts_last_success_at: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    alerts_delivered: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Default for RelayStats {
    fn default() -> Self {
        RelayStats::new(Arc::new(Metrics::new()))
    }
}

impl std::fmt::Debug for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStats")
            .field("deliveries", &self.deliveries())
            .field("unknown", &self.unknown())
            .field("alerts_delivered", &self.alerts_delivered())
            .finish_non_exhaustive()
    }
}

fn now_into(slot: &Mutex<Option<chrono::DateTime<chrono::Utc>>>) {
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(chrono::Utc::now());
}

fn read_slot(
    slot: &Mutex<Option<chrono::DateTime<chrono::Utc>>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RelayStats {
    pub fn new(metrics: Arc<Metrics>) -> RelayStats {
        RelayStats {
            last_delivery_at: Mutex::new(None),
            deliveries: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            alerts_last_success_at: Mutex::new(None),
            alerts_delivered: AtomicU64::new(0),
            metrics,
        }
    }

    fn delivered(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        now_into(&self.last_delivery_at);
        self.metrics.relay_delivery(KIND_RECHARGE, "delivered");
    }

    fn outcome_unknown(&self) {
        self.unknown.fetch_add(1, Ordering::Relaxed);
        self.metrics.relay_delivery(KIND_RECHARGE, "unknown");
    }

    fn alert_delivered(&self) {
        self.alerts_delivered.fetch_add(1, Ordering::Relaxed);
        now_into(&self.alerts_last_success_at);
        self.metrics.relay_delivery(KIND_ALERT, "delivered");
    }

    /// When this sidecar last had an alert taken by every webhook.
    pub fn alerts_last_success_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        read_slot(&self.alerts_last_success_at)
    }

    /// Alerts delivered to every webhook by this sidecar since start.
    pub fn alerts_delivered(&self) -> u64 {
        self.alerts_delivered.load(Ordering::Relaxed)
    }

    /// When this sidecar last had a delivery confirmed by the gateway.
    pub fn last_delivery_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        read_slot(&self.last_delivery_at)
    }

    /// Deliveries confirmed by the gateway since start.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Deliveries this sidecar marked `unknown` since start.
    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }
}

/// One claimed outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub outbox_id: i64,
    pub execution_id: i64,
    pub consumer: String,
    pub value: i64,
    /// Deliveries including the one about to be made (1 on the first).
    pub attempts: i32,
}

impl Claimed {
    pub fn idempotency_key(&self) -> String {
        idempotency_key(self.execution_id)
    }
}

pub fn idempotency_key(execution_id: i64) -> String {
    format!("execution-{execution_id}")
}

/// One claimed outbox row of kind `alert`.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRow {
    pub outbox_id: i64,
    /// Deliveries including the one about to be made (1 on the first).
    pub attempts: i32,
    /// The alert as `quota.list_pool_alerts` shows it (alert_id, kind, account_id, ...).
    pub alert: Value,
}

impl AlertRow {
    /// `alert-<alert_id>` (the outbox id when the payload lacks one).
    pub fn idempotency_key(&self) -> String {
        let id = match self.alert.get("alert_id") {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => format!("outbox-{}", self.outbox_id),
        };
        format!("alert-{id}")
    }

    /// `{"type": "quota.<kind>", "alert": payload}`.
    pub fn webhook_body(&self) -> Value {
        let kind = self
            .alert
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("alert");
        json!({"type": format!("quota.{kind}"), "alert": self.alert})
    }
}

/// A claimed outbox row.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Recharge(Claimed),
    Alert(AlertRow),
}

impl Job {
    pub fn outbox_id(&self) -> i64 {
        match self {
            Job::Recharge(row) => row.outbox_id,
            Job::Alert(row) => row.outbox_id,
        }
    }

    /// For log lines: `execution 42`, `alert 7`.
    pub fn label(&self) -> String {
        match self {
            Job::Recharge(row) => format!("execution {}", row.execution_id),
            Job::Alert(row) => format!("alert outbox row {}", row.outbox_id),
        }
    }
}

/// What one delivery came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth another attempt; `retry_after` is the gateway's lower bound, if it gave one.
    Retryable {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The same request would fail again.
    Permanent {
        error: String,
    },
    /// Sent, but no answer: the gateway may or may not have applied it.
    Unknown {
        error: String,
    },
}

/// What to do with the outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Complete,
    Retry {
        error: String,
        delay: Duration,
    },
    Fail {
        error: String,
    },
    /// Not re-sent: the execution waits for an operator.
    MarkUnknown {
        error: String,
    },
}

/// The relay's reading of a gateway answer. Only 200 is success (SPEC 6.5).
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> Outcome {
    let error = || {
        let excerpt = excerpt(body);
        if excerpt.is_empty() {
            format!("AiGateway answered HTTP {status}")
        } else {
            format!("AiGateway answered HTTP {status}: {excerpt}")
        }
    };
    match status {
        200 => Outcome::Delivered,
        // Timeout, too early, too many requests, and every server-side error: try again.
        408 | 425 | 429 | 500..=599 => Outcome::Retryable {
            error: error(),
            retry_after,
        },
        // Bad request, bad credential, wrong path, redirects (not followed), and 2xx other than
        // 200 (accepted but not confirmed): resending the same request cannot fix them.
        _ => Outcome::Permanent { error: error() },
    }
}

/// The first [`BODY_EXCERPT_CHARS`] characters of a body, on one line.
pub fn excerpt(body: &str) -> String {
    let text: String = body
        .trim()
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.trim().chars().count() > BODY_EXCERPT_CHARS {
        format!("{text}...")
    } else {
        text
    }
}

/// `Retry-After` in seconds (the form gateways use; an HTTP date is ignored), capped at
/// [`RETRY_AFTER_MAX`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_MAX))
}

/// Delay before the next delivery after the `attempts`-th failed: `min(max, base * 2^(attempts-1))`
/// plus `jitter` (0.0..1.0) times half of it. So it lies in [d, 1.5 d] with d capped at max.
pub fn backoff(attempts: i32, base_ms: u64, max_ms: u64, jitter: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 40) as u32;
    let delay = base_ms.saturating_mul(1u64 << exponent).min(max_ms);
    let extra = (delay as f64 / 2.0 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(delay + extra)
}

/// The row's fate after a delivery, given the deliveries so far (this one included).
/// An unknown outcome is retried only when the gateway deduplicates by `Idempotency-Key`.
pub fn decide(outcome: Outcome, attempts: i32, config: &RelayConfig, jitter: f64) -> Action {
    let outcome = match outcome {
        Outcome::Unknown { error } if config.gateway_idempotent() => Outcome::Retryable {
            error,
            retry_after: None,
        },
        other => other,
    };
    match outcome {
        Outcome::Delivered => Action::Complete,
        Outcome::Permanent { error } => Action::Fail { error },
        Outcome::Unknown { error } => Action::MarkUnknown { error },
        Outcome::Retryable { error, .. } if attempts >= config.max_attempts as i32 => {
            Action::Fail {
                error: format!("gave up after {attempts} attempts: {error}"),
            }
        }
        Outcome::Retryable { error, retry_after } => {
            let delay = backoff(
                attempts,
                config.backoff_base_ms,
                config.backoff_max_ms,
                jitter,
            );
            Action::Retry {
                error,
                delay: retry_after.map_or(delay, |floor| delay.max(floor)),
            }
        }
    }
}

/// A webhook's answer: any 2xx takes the alert; 408, 425, 429 and 5xx are worth another
/// attempt; anything else (a redirect, another 4xx) would fail again.
pub fn classify_webhook_status(
    host: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
) -> Outcome {
    let error = || {
        let excerpt = excerpt(body);
        if excerpt.is_empty() {
            format!("webhook {host} answered HTTP {status}")
        } else {
            format!("webhook {host} answered HTTP {status}: {excerpt}")
        }
    };
    match status {
        200..=299 => Outcome::Delivered,
        408 | 425 | 429 | 500..=599 => Outcome::Retryable {
            error: error(),
            retry_after,
        },
        _ => Outcome::Permanent { error: error() },
    }
}

/// The outcome of an alert over all its webhooks: delivered when every one took it; else worth
/// a retry when any is (the longest Retry-After wins); else permanent.
pub fn combine(outcomes: Vec<Outcome>) -> Outcome {
    let mut retryable: Vec<String> = Vec::new();
    let mut permanent: Vec<String> = Vec::new();
    let mut floor: Option<Duration> = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Delivered => {}
            Outcome::Retryable { error, retry_after } => {
                floor = floor.max(retry_after);
                retryable.push(error);
            }
            Outcome::Unknown { error } => retryable.push(error),
            Outcome::Permanent { error } => permanent.push(error),
        }
    }
    if !retryable.is_empty() {
        retryable.extend(permanent);
        Outcome::Retryable {
            error: retryable.join("; "),
            retry_after: floor,
        }
    } else if !permanent.is_empty() {
        Outcome::Permanent {
            error: permanent.join("; "),
        }
    } else {
        Outcome::Delivered
    }
}

/// The row's fate after an alert's delivery. Unlike a recharge, an unknown outcome is retried:
/// the `Idempotency-Key` lets the receiver drop a repeat, and a lost alert is worse than a
/// repeated one.
pub fn decide_alert(outcome: Outcome, attempts: i32, config: &RelayConfig, jitter: f64) -> Action {
    let outcome = match outcome {
        Outcome::Unknown { error } => Outcome::Retryable {
            error,
            retry_after: None,
        },
        other => other,
    };
    decide(outcome, attempts, config, jitter)
}

/// 0.0..1.0, uniform: spreads the retries of many rows that failed together.
pub fn jitter() -> f64 {
    fastrand::f64()
}

// ---------------------------------------------------------------------------------------------
// The task

/// Starts the relay; it runs until `stop` turns true (or its sender is dropped).
pub fn spawn(
    pool: Pool,
    config: Arc<Config>,
    stats: Arc<RelayStats>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(pool, config, stats, stop))
}

/// How long the caller should wait for the task after signalling stop.
pub fn shutdown_budget(config: &RelayConfig) -> Duration {
    Duration::from_millis(config.timeout_ms) * 2 + Duration::from_secs(5)
}

struct Relay {
    pool: Pool,
    config: RelayConfig,
    http: Option<(reqwest::Client, AiGatewayConfig)>,
    /// The client of the alert webhooks (None: no URL configured).
    webhooks: Option<reqwest::Client>,
    /// The webhooks (by index in `config.alert_webhooks`) that took an alert, per outbox row, so
    /// a retry is sent only to those that did not.
    sent: Mutex<std::collections::HashMap<i64, Vec<usize>>>,
    stats: Arc<RelayStats>,
}

/// The HTTP client of the alert webhooks: no redirects, the delivery timeout, rustls with the web
/// PKI roots.
pub fn webhook_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .map_err(|e| e.to_string())
}

/// The host of a URL, for log lines and errors (a URL's path or query may carry a secret).
pub fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_else(|| "(invalid url)".to_owned())
}

/// The HTTP client of the relay: no redirects, the delivery timeout, rustls with the web PKI
/// roots plus the certificates of `QUOTA_AIGATEWAY_CA_FILE`.
pub fn http_client(
    gateway: &AiGatewayConfig,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(CONCURRENCY);
    if let Some(path) = &gateway.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("QUOTA_AIGATEWAY_CA_FILE={}: {e}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("QUOTA_AIGATEWAY_CA_FILE={}: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "QUOTA_AIGATEWAY_CA_FILE={}: no PEM certificate in it",
                path.display()
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

async fn run(
    pool: Pool,
    app_config: Arc<Config>,
    stats: Arc<RelayStats>,
    mut stop: watch::Receiver<bool>,
) {
    let config = app_config.relay.clone();
    let http = match &config.gateway {
        None => {
            tracing::warn!(
                "no AiGateway configured (QUOTA_AIGATEWAY_URL unset): recharges complete in the ledger alone"
            );
            None
        }
        Some(gateway) => {
            let client = http_client(gateway, Duration::from_millis(config.timeout_ms));
            match client {
                Ok(client) => {
                    tracing::info!(
                        url = %gateway.url,
                        admin_path = %gateway.admin_path,
                        idempotent = gateway.idempotent,
                        max_attempts = config.max_attempts,
                        timeout_ms = config.timeout_ms,
                        "AiGateway relay started"
                    );
                    Some((client, gateway.clone()))
                }
                Err(err) => {
                    // Completing without delivering would lose the deltas: leave them queued.
                    tracing::error!(%err, "cannot build the AiGateway HTTP client; relay not started");
                    return;
                }
            }
        }
    };
    let webhooks = if config.alert_webhooks.is_empty() {
        tracing::info!(
            "no alert webhooks configured (QUOTA_ALERT_WEBHOOK_URLS unset): alerts complete without delivery"
        );
        None
    } else {
        match webhook_client(Duration::from_millis(config.timeout_ms)) {
            Ok(client) => {
                let hosts: Vec<String> =
                    config.alert_webhooks.iter().map(|u| url_host(u)).collect();
                tracing::info!(webhooks = ?hosts, "alert webhooks configured");
                Some(client)
            }
            Err(err) => {
                tracing::error!(%err, "cannot build the alert webhook HTTP client; relay not started");
                return;
            }
        }
    };
    let pg_config = match listen_config(&app_config) {
        Ok(pg_config) => pg_config,
        Err(err) => {
            tracing::error!(%err, "relay not started");
            return;
        }
    };
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen_loop(pg_config, wake.clone(), stop.clone()));
    let relay = Arc::new(Relay {
        pool,
        config,
        http,
        webhooks,
        sent: Mutex::new(std::collections::HashMap::new()),
        stats,
    });

    let poll = Duration::from_millis(relay.config.poll_ms);
    let mut db_retry = DB_RETRY_MIN;
    loop {
        if *stop.borrow() {
            break;
        }
        let rows = match relay.claim().await {
            Ok(rows) => {
                db_retry = DB_RETRY_MIN;
                rows
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = db_retry.as_millis() as u64, "relay: cannot claim outbox rows");
                tokio::select! {
                    () = tokio::time::sleep(db_retry) => {}
                    () = stopped(&mut stop) => break,
                }
                db_retry = (db_retry * 2).min(DB_RETRY_MAX);
                continue;
            }
        };
        let full = rows.len() >= relay.config.batch as usize;
        let next_due = if rows.is_empty() {
            None
        } else {
            relay.clone().process(rows, stop.clone()).await
        };
        if full {
            continue; // more may be due right now
        }
        let wait = next_due.map_or(poll, |due| {
            due.saturating_duration_since(Instant::now()).min(poll)
        });
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => break,
        }
    }
    listener.abort();
    tracing::info!("AiGateway relay stopped");
}

/// Resolves once stop is signalled (or can no longer be).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Relay {
    async fn claim(&self) -> Result<Vec<Job>, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let statement = client.prepare_cached(SQL_CLAIM).await.map_err(db_text)?;
        let batch = self.config.batch as i32;
        let lease = self.config.lease_s as i32;
        let rows = client
            .query(&statement, &[&batch, &lease])
            .await
            .map_err(db_text)?;
        rows.iter()
            .map(|row| {
                let kind: Option<String> = row.try_get(5).map_err(db_text)?;
                let outbox_id: i64 = row.try_get(0).map_err(db_text)?;
                let attempts: i32 = row.try_get(4).map_err(db_text)?;
                if kind.as_deref() == Some(KIND_ALERT) {
                    let payload: Option<Value> = row.try_get(6).map_err(db_text)?;
                    return Ok(Job::Alert(AlertRow {
                        outbox_id,
                        attempts,
                        alert: payload.unwrap_or_else(|| json!({})),
                    }));
                }
                Ok(Job::Recharge(Claimed {
                    outbox_id,
                    execution_id: row.try_get(1).map_err(db_text)?,
                    consumer: row.try_get(2).map_err(db_text)?,
                    value: row.try_get(3).map_err(db_text)?,
                    attempts,
                }))
            })
            .collect()
    }

    /// Delivers a claimed batch; returns when the earliest retry it scheduled falls due.
    async fn process(
        self: Arc<Self>,
        rows: Vec<Job>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<Instant> {
        let claimed_at = Instant::now();
        // Deliver a row only while its lease outlasts a whole delivery.
        let deadline = Duration::from_secs(self.config.lease_s.into())
            .saturating_sub(Duration::from_millis(self.config.timeout_ms) + Duration::from_secs(1));
        let recharges = rows
            .iter()
            .filter(|job| matches!(job, Job::Recharge(_)))
            .count();
        if self.http.is_none() && recharges > 0 {
            tracing::info!(
                rows = recharges,
                "no AiGateway configured: completing recharges in the ledger alone"
            );
        }
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        let mut next_due: Option<Instant> = None;
        let mut rows = rows.into_iter();
        while let Some(row) = rows.next() {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
                () = stopped(&mut stop) => {
                    self.release(std::iter::once(row).chain(rows.by_ref())).await;
                    break;
                }
            };
            if claimed_at.elapsed() > deadline {
                // Its lease is nearly over: another relay may take it; leave it to the lease.
                tracing::debug!(
                    outbox_id = row.outbox_id(),
                    "relay: lease nearly over, row left for later"
                );
                continue;
            }
            let relay = self.clone();
            tasks.spawn(async move {
                let due = match row {
                    Job::Recharge(row) => relay.handle(row).await,
                    Job::Alert(row) => relay.handle_alert(row).await,
                };
                drop(permit);
                due
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Some(due)) => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                Ok(None) => {}
                Err(err) => tracing::error!(%err, "relay: delivery task failed"),
            }
        }
        next_due
    }

    /// One row: deliver, decide, mark. Returns when a scheduled retry falls due.
    async fn handle(&self, row: Claimed) -> Option<Instant> {
        let Some((client, gateway)) = &self.http else {
            self.mark_complete(&row).await;
            return None;
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let outcome = deliver(client, gateway, &row, timeout).await;
        match decide(outcome, row.attempts, &self.config, jitter()) {
            Action::Complete => {
                tracing::debug!(execution_id = row.execution_id, consumer = %row.consumer, value = row.value, "delta delivered");
                self.stats.delivered();
                self.mark_complete(&row).await;
                None
            }
            Action::MarkUnknown { error } => {
                tracing::warn!(
                    execution_id = row.execution_id,
                    attempts = row.attempts,
                    %error,
                    "delta sent but its outcome is unknown and the gateway does not deduplicate: \
                     execution marked unknown for an operator (confirm or retry it)"
                );
                self.stats.outcome_unknown();
                self.mark(&job_label(&row), SQL_UNKNOWN, &[&row.outbox_id, &error])
                    .await;
                None
            }
            Action::Retry { error, delay } => {
                tracing::info!(
                    execution_id = row.execution_id,
                    attempts = row.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    %error,
                    "delta not delivered, will retry"
                );
                let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
                self.stats.metrics.relay_delivery(KIND_RECHARGE, "retried");
                self.mark(&job_label(&row), SQL_RETRY, &[&row.outbox_id, &error, &ms])
                    .await;
                Some(Instant::now() + delay)
            }
            Action::Fail { error } => {
                tracing::warn!(
                    execution_id = row.execution_id,
                    attempts = row.attempts,
                    %error,
                    "delta not delivered, execution failed (its ledger credit stays)"
                );
                self.stats.metrics.relay_delivery(KIND_RECHARGE, "failed");
                self.mark(&job_label(&row), SQL_FAIL, &[&row.outbox_id, &error])
                    .await;
                None
            }
        }
    }

    async fn mark_complete(&self, row: &Claimed) {
        if self
            .mark(&job_label(row), SQL_COMPLETE, &[&row.outbox_id])
            .await
            == Some(false)
        {
            tracing::warn!(
                execution_id = row.execution_id,
                "outbox row was already gone when marked completed (its lease had run out)"
            );
        }
    }

    /// One alert: POST it to every webhook that has not taken it yet, decide, mark.
    async fn handle_alert(&self, row: AlertRow) -> Option<Instant> {
        let label = format!("alert outbox row {}", row.outbox_id);
        let Some(client) = &self.webhooks else {
            self.mark(&label, SQL_COMPLETE, &[&row.outbox_id]).await;
            return None;
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let done = self.sent_to(row.outbox_id);
        let mut tasks = JoinSet::new();
        for (index, url) in self.config.alert_webhooks.iter().enumerate() {
            if done.contains(&index) {
                continue;
            }
            let (client, url, row) = (client.clone(), url.clone(), row.clone());
            tasks.spawn(async move { (index, deliver_alert(&client, &url, &row, timeout).await) });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, outcome)) => {
                    if outcome == Outcome::Delivered {
                        self.remember_sent(row.outbox_id, index);
                    }
                    outcomes.push(outcome);
                }
                Err(err) => outcomes.push(Outcome::Retryable {
                    error: format!("webhook delivery task failed: {err}"),
                    retry_after: None,
                }),
            }
        }
        let key = row.idempotency_key();
        match decide_alert(combine(outcomes), row.attempts, &self.config, jitter()) {
            Action::Complete => {
                tracing::debug!(%key, "alert delivered to every webhook");
                self.stats.alert_delivered();
                self.forget_sent(row.outbox_id);
                self.mark(&label, SQL_COMPLETE, &[&row.outbox_id]).await;
                None
            }
            Action::Retry { error, delay } => {
                tracing::info!(
                    %key,
                    attempts = row.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    %error,
                    "alert not delivered to every webhook, will retry"
                );
                self.stats.metrics.relay_delivery(KIND_ALERT, "retried");
                let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
                self.mark(&label, SQL_RETRY, &[&row.outbox_id, &error, &ms])
                    .await;
                Some(Instant::now() + delay)
            }
            Action::Fail { error } | Action::MarkUnknown { error } => {
                tracing::warn!(
                    %key,
                    attempts = row.attempts,
                    %error,
                    "alert not delivered to every webhook, given up"
                );
                self.stats.metrics.relay_delivery(KIND_ALERT, "failed");
                self.forget_sent(row.outbox_id);
                self.mark(&label, SQL_FAIL, &[&row.outbox_id, &error]).await;
                None
            }
        }
    }

    fn sent_to(&self, outbox_id: i64) -> Vec<usize> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.get(&outbox_id).cloned().unwrap_or_default()
    }

    fn remember_sent(&self, outbox_id: i64, index: usize) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() >= SENT_MEMORY_MAX && !sent.contains_key(&outbox_id) {
            sent.clear();
        }
        sent.entry(outbox_id).or_default().push(index);
    }

    fn forget_sent(&self, outbox_id: i64) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.remove(&outbox_id);
    }

    /// Runs one of the outbox_* functions, retrying briefly; None when it could not be run
    /// (the row then comes back after its lease).
    async fn mark(
        &self,
        label: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Option<bool> {
        let mut last = String::new();
        for attempt in 0..MARK_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match self.mark_once(sql, params).await {
                Ok(done) => return Some(done),
                Err(err) => last = err,
            }
        }
        tracing::error!(
            row = label,
            error = %last,
            "relay: cannot record the delivery outcome; the row is retried after its lease"
        );
        None
    }

    async fn mark_once(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let statement = client.prepare_cached(sql).await.map_err(db_text)?;
        let row = client
            .query_one(&statement, params)
            .await
            .map_err(db_text)?;
        Ok(row
            .try_get::<_, Option<bool>>(0)
            .map_err(db_text)?
            .unwrap_or(false))
    }

    /// Shutdown: rows claimed but not attempted are made due again at once, so another sidecar
    /// (or this one after a restart) need not wait for their lease.
    async fn release(&self, rows: impl Iterator<Item = Job>) {
        let error = "relay stopped before this delivery; queued again".to_owned();
        let now: i32 = 0;
        for row in rows {
            let outbox_id = row.outbox_id();
            self.mark(&row.label(), SQL_RETRY, &[&outbox_id, &error, &now])
                .await;
        }
    }
}

/// One `POST {admin}/quota/delta`.
pub async fn deliver(
    client: &reqwest::Client,
    gateway: &AiGatewayConfig,
    row: &Claimed,
    timeout: Duration,
) -> Outcome {
    let value = row.value.to_string();
    let sent = client
        .post(gateway.delta_url())
        .bearer_auth(gateway.credential.expose())
        .header(IDEMPOTENCY_HEADER, row.idempotency_key())
        .form(&[
            ("consumer", row.consumer.as_str()),
            ("value", value.as_str()),
        ])
        .timeout(timeout)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(err) => return network_outcome(&err, timeout),
    };
    let status = response.status().as_u16();
    if status == 200 {
        return Outcome::Delivered;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // Only the start of the body matters (for last_error); never read an unbounded one.
    let mut body = Vec::new();
    while body.len() < 4 * BODY_EXCERPT_CHARS {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    classify_status(status, retry_after, &String::from_utf8_lossy(&body))
}

/// One alert to one webhook: `POST url` with the JSON body and `Idempotency-Key: alert-<id>`.
pub async fn deliver_alert(
    client: &reqwest::Client,
    url: &str,
    row: &AlertRow,
    timeout: Duration,
) -> Outcome {
    let host = url_host(url);
    let sent = client
        .post(url)
        .header(IDEMPOTENCY_HEADER, row.idempotency_key())
        .json(&row.webhook_body())
        .timeout(timeout)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        // Without the URL: its path or query may carry the receiver's secret.
        Err(err) => {
            return network_outcome_of(&format!("webhook {host}"), &err.without_url(), timeout)
        }
    };
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    while body.len() < 4 * BODY_EXCERPT_CHARS {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    classify_webhook_status(&host, status, retry_after, &String::from_utf8_lossy(&body))
}

/// A request that got no answer. A connection that was never made (refused, DNS, connect
/// timeout) means the gateway never saw it: retryable. Anything after that (a timeout while
/// waiting, a reset, the connection closed before an answer) leaves the outcome unknown.
fn network_outcome(err: &reqwest::Error, timeout: Duration) -> Outcome {
    network_outcome_of("AiGateway", err, timeout)
}

/// [`network_outcome`] for a named receiver (`AiGateway`, `webhook host:port`).
fn network_outcome_of(who: &str, err: &reqwest::Error, timeout: Duration) -> Outcome {
    // The chain names the cause (connection refused, reset...); no credential is in it.
    let chain = |mut text: String| {
        let mut source: Option<&dyn std::error::Error> = Some(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    };
    let error = if err.is_connect() {
        chain(format!("{who} unreachable"))
    } else if err.is_timeout() {
        format!("{who} did not answer within {} ms", timeout.as_millis())
    } else {
        chain(format!(
            "{who} connection failed after the request was sent"
        ))
    };
    if err.is_connect() {
        Outcome::Retryable {
            error,
            retry_after: None,
        }
    } else {
        Outcome::Unknown {
            error: format!("outcome unknown: {error}"),
        }
    }
}

fn job_label(row: &Claimed) -> String {
    format!("execution {}", row.execution_id)
}

fn db_text(err: tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// LISTEN

/// The connection settings of the LISTEN session: the pool's, with its own application name.
fn listen_config(config: &Config) -> Result<tokio_postgres::Config, String> {
    let mut pg_config: tokio_postgres::Config = config
        .database_url
        .expose()
        .parse()
        .map_err(|e| format!("QUOTA_DATABASE_URL is not a valid connection string: {e}"))?;
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(Duration::from_secs(crate::db::CONNECT_TIMEOUT_S));
    }
    pg_config.application_name("quota-sidecar-relay");
    Ok(pg_config)
}

/// Keeps a session in `LISTEN quota_outbox` and turns notifications into wake-ups; reconnects
/// with backoff when the session drops. Every (re)connection wakes the relay once, for what was
/// notified while no one listened.
async fn listen_loop(
    pg_config: tokio_postgres::Config,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = DB_RETRY_MIN;
    loop {
        match pg_config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let driver = async {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(err)) => return err.to_string(),
                            None => return "connection closed".to_owned(),
                        }
                    }
                };
                tokio::pin!(driver);
                let listen = client.batch_execute(SQL_LISTEN);
                let listening = tokio::select! {
                    result = listen => result.map_err(db_text),
                    error = &mut driver => Err(error),
                    () = stopped(&mut stop) => return,
                };
                match listening {
                    Ok(()) => {
                        tracing::debug!("relay: listening on {CHANNEL}");
                        delay = DB_RETRY_MIN;
                        wake.notify_one();
                        tokio::select! {
                            error = &mut driver => {
                                tracing::warn!(%error, "relay: LISTEN connection lost; reconnecting (polling meanwhile)");
                            }
                            () = stopped(&mut stop) => return,
                        }
                    }
                    Err(error) => tracing::warn!(%error, "relay: cannot LISTEN {CHANNEL}"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %db_text(err), "relay: cannot open the LISTEN connection (polling meanwhile)")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => return,
        }
        delay = (delay * 2).min(DB_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RelayConfig {
        RelayConfig {
            max_attempts: 4,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            ..RelayConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_adds_at_most_half() {
        let ms = |attempts, jitter| backoff(attempts, 100, 1000, jitter).as_millis() as u64;
        assert_eq!(
            (1..=6).map(|a| ms(a, 0.0)).collect::<Vec<_>>(),
            vec![100, 200, 400, 800, 1000, 1000]
        );
        assert_eq!(ms(1, 0.999_999), 149);
        assert_eq!(ms(3, 0.5), 500);
        assert_eq!(ms(10, 1.0), 1500);
        // Out-of-range inputs stay bounded.
        assert_eq!(ms(0, 0.0), 100);
        assert_eq!(ms(-3, 0.0), 100);
        assert_eq!(ms(i32::MAX, 2.0), 1500);
        assert_eq!(
            backoff(64, u64::MAX / 2, u64::MAX / 4, 0.0).as_millis() as u64,
            u64::MAX / 4
        );
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let samples: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        let low = samples.iter().filter(|j| **j < 0.5).count();
        assert!((300..=700).contains(&low), "{low} of 1000 below 0.5");
        for attempts in 1..=8 {
            for j in &samples[..50] {
                let d = backoff(attempts, 200, 30_000, *j).as_millis() as u64;
                let base = (200u64 << (attempts - 1)).min(30_000);
                assert!(d >= base && d <= base + base / 2, "{attempts}: {d}");
            }
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(200, None, "ok"), Outcome::Delivered);
        for status in [408, 425, 429, 500, 502, 503, 504, 507] {
            assert!(
                matches!(classify_status(status, None, ""), Outcome::Retryable { .. }),
                "{status}"
            );
        }
        for status in [201, 204, 301, 302, 400, 401, 403, 404, 409, 422] {
            assert!(
                matches!(classify_status(status, None, ""), Outcome::Permanent { .. }),
                "{status}"
            );
        }
        let Outcome::Permanent { error } =
            classify_status(401, None, r#"{"code":401,"message":"missing or wrong"}"#)
        else {
            panic!("401 is permanent")
        };
        assert!(
            error.contains("401") && error.contains("missing or wrong"),
            "{error}"
        );
        let long = "x".repeat(1000);
        let Outcome::Retryable { error, retry_after } =
            classify_status(503, Some(Duration::from_secs(2)), &long)
        else {
            panic!("503 is retryable")
        };
        assert!(error.len() < 260, "{error}");
        assert_eq!(retry_after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        assert_eq!(excerpt("  a\nb  "), "a b");
        let e = excerpt(&"é".repeat(300));
        assert_eq!(e.chars().count(), BODY_EXCERPT_CHARS + 3);
        assert!(e.ends_with("..."));
        assert_eq!(excerpt(""), "");
    }

    #[test]
    fn retry_after_is_parsed_in_seconds() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999999"), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn decisions_follow_attempts_and_retry_after() {
        let config = config();
        assert_eq!(
            decide(Outcome::Delivered, 4, &config, 0.0),
            Action::Complete
        );
        let retryable = |retry_after| Outcome::Retryable {
            error: "AiGateway answered HTTP 500".into(),
            retry_after,
        };
        assert_eq!(
            decide(retryable(None), 1, &config, 0.0),
            Action::Retry {
                error: "AiGateway answered HTTP 500".into(),
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(
            decide(retryable(None), 3, &config, 1.0),
            Action::Retry {
                error: "AiGateway answered HTTP 500".into(),
                delay: Duration::from_millis(600)
            }
        );
        // Retry-After is a lower bound, never a reason to retry sooner.
        let Action::Retry { delay, .. } =
            decide(retryable(Some(Duration::from_secs(2))), 1, &config, 0.0)
        else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(2));
        let Action::Retry { delay, .. } =
            decide(retryable(Some(Duration::from_millis(10))), 2, &config, 0.0)
        else {
            panic!()
        };
        assert_eq!(delay, Duration::from_millis(200));
        // The last attempt fails the execution.
        let Action::Fail { error } = decide(retryable(None), 4, &config, 0.0) else {
            panic!("fourth of four attempts must fail")
        };
        assert!(
            error.contains("4 attempts") && error.contains("HTTP 500"),
            "{error}"
        );
        assert!(matches!(
            decide(retryable(None), 9, &config, 0.0),
            Action::Fail { .. }
        ));
        // A permanent error fails at once, whatever the attempts.
        assert_eq!(
            decide(
                Outcome::Permanent {
                    error: "HTTP 401".into()
                },
                1,
                &config,
                0.0
            ),
            Action::Fail {
                error: "HTTP 401".into()
            }
        );
    }

    #[test]
    fn idempotency_key_names_the_execution() {
        let row = Claimed {
            outbox_id: 7,
            execution_id: 42,
            consumer: "u1".into(),
            value: 10,
            attempts: 1,
        };
        assert_eq!(row.idempotency_key(), "execution-42");
    }

    // --- deliver() against the in-process mock gateway ---

    use crate::config::Secret;
    use aigateway_mock::{router, FaultMode, FaultRequest, MockState};

    async fn mock_gateway() -> (MockState, AiGatewayConfig) {
        let state = MockState::new("gw-cred", "/v1/chat/completions");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let gateway = AiGatewayConfig {
            url: format!("http://{addr}"),
            admin_path: "/v1/chat/completions".into(),
            credential: Secret::new("gw-cred"),
            idempotent: false,
            ca_file: None,
        };
        (state, gateway)
    }

    fn fault(
        mode: FaultMode,
        status: Option<u16>,
        count: Option<u64>,
        stall_ms: Option<u64>,
    ) -> FaultRequest {
        FaultRequest {
            mode,
            status,
            count,
            stall_ms,
            retry_after_s: None,
        }
    }

    fn row(execution_id: i64) -> Claimed {
        Claimed {
            outbox_id: execution_id,
            execution_id,
            consumer: format!("user-{execution_id}"),
            value: 25,
            attempts: 1,
        }
    }

    /// An https gateway (rustls): a delivery reaches a TLS gateway whose certificate is signed by a
    /// private CA named in `QUOTA_AIGATEWAY_CA_FILE`; without that file the gateway is not trusted
    /// and nothing is delivered.
    #[tokio::test]
    async fn an_https_gateway_is_reached_through_its_ca_file() {
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let mock = MockState::new("gw-cred", "/v1/chat/completions");
        let app = router(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        let dir = std::env::temp_dir().join(format!("pq-relay-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let gateway = AiGatewayConfig {
            url: format!("https://localhost:{port}"),
            admin_path: "/v1/chat/completions".into(),
            credential: Secret::new("gw-cred"),
            idempotent: false,
            ca_file: Some(ca_file),
        };
        let timeout = Duration::from_secs(5);
        let trusted = http_client(&gateway, timeout).unwrap();
        assert_eq!(
            deliver(&trusted, &gateway, &row(7), timeout).await,
            Outcome::Delivered
        );
        assert_eq!(mock.deltas().len(), 1);
        let untrusted_gateway = AiGatewayConfig {
            ca_file: None,
            ..gateway.clone()
        };
        let untrusted = http_client(&untrusted_gateway, timeout).unwrap();
        let outcome = deliver(&untrusted, &untrusted_gateway, &row(8), timeout).await;
        assert!(!matches!(outcome, Outcome::Delivered), "{outcome:?}");
        assert_eq!(
            mock.deltas().len(),
            1,
            "nothing delivered to an untrusted gateway"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn deliver_sends_the_form_bearer_and_idempotency_key() {
        let (mock, gateway) = mock_gateway().await;
        let client = reqwest::Client::new();
        let timeout = Duration::from_secs(5);
        assert_eq!(
            deliver(&client, &gateway, &row(1), timeout).await,
            Outcome::Delivered
        );
        let deltas = mock.deltas();
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].consumer, "user-1");
        assert_eq!(deltas[0].value, 25);
        assert_eq!(deltas[0].idempotency_key.as_deref(), Some("execution-1"));

        // A wrong credential is permanent, and names the status.
        let wrong = AiGatewayConfig {
            credential: Secret::new("nope"),
            ..gateway.clone()
        };
        let Outcome::Permanent { error } = deliver(&client, &wrong, &row(2), timeout).await else {
            panic!("401 must be permanent")
        };
        assert!(error.contains("HTTP 401"), "{error}");
        // A wrong path too.
        let lost = AiGatewayConfig {
            admin_path: "/elsewhere".into(),
            ..gateway.clone()
        };
        assert!(matches!(
            deliver(&client, &lost, &row(3), timeout).await,
            Outcome::Permanent { .. }
        ));
        assert_eq!(mock.deltas().len(), 1);
    }

    #[tokio::test]
    async fn deliver_reports_retryable_faults() {
        let (mock, gateway) = mock_gateway().await;
        let client = reqwest::Client::new();
        let timeout = Duration::from_millis(500);

        mock.set_fault(fault(FaultMode::Error, None, Some(1), None))
            .unwrap();
        let Outcome::Retryable { error, retry_after } =
            deliver(&client, &gateway, &row(1), timeout).await
        else {
            panic!("500 must be retryable")
        };
        assert!(error.contains("HTTP 500"), "{error}");
        assert_eq!(retry_after, None);

        mock.set_fault(fault(FaultMode::Status, Some(429), Some(1), None))
            .unwrap();
        let Outcome::Retryable { retry_after, .. } =
            deliver(&client, &gateway, &row(1), timeout).await
        else {
            panic!("429 must be retryable")
        };
        assert_eq!(retry_after, Some(Duration::from_secs(1)));

        mock.set_fault(fault(FaultMode::Stall, None, Some(1), Some(1500)))
            .unwrap();
        let Outcome::Unknown { error } = deliver(&client, &gateway, &row(1), timeout).await else {
            panic!("a timeout after sending leaves the outcome unknown")
        };
        assert!(error.contains("500 ms"), "{error}");
        // Nothing applied yet; the stalled delta lands later: re-sending it (below, as an
        // idempotent-gateway config would) applies it twice at a gateway that does not
        // deduplicate, which is why a non-idempotent config marks it unknown instead.
        assert!(mock.deltas().is_empty());
        assert_eq!(
            deliver(&client, &gateway, &row(1), timeout).await,
            Outcome::Delivered
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let keys: Vec<_> = mock
            .deltas()
            .into_iter()
            .map(|d| d.idempotency_key)
            .collect();
        assert_eq!(keys, vec![Some("execution-1".to_owned()); 2]);

        // Nobody listening.
        let down = AiGatewayConfig {
            url: "http://127.0.0.1:9".into(),
            ..gateway.clone()
        };
        let Outcome::Retryable { error, .. } = deliver(&client, &down, &row(1), timeout).await
        else {
            panic!("a refused connection must be retryable")
        };
        assert!(error.starts_with("AiGateway unreachable"), "{error}");
        assert!(!error.contains("gw-cred"));
    }

    /// A gateway that reads the request and closes the connection without answering.
    async fn hang_up_gateway() -> AiGatewayConfig {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                drop(socket);
            }
        });
        AiGatewayConfig {
            url: format!("http://{addr}"),
            admin_path: "/v1/chat/completions".into(),
            credential: Secret::new("gw-cred"),
            idempotent: false,
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn a_connection_closed_after_sending_is_unknown_a_refused_one_retryable() {
        let client = reqwest::Client::new();
        let timeout = Duration::from_millis(2000);
        let gateway = hang_up_gateway().await;
        let Outcome::Unknown { error } = deliver(&client, &gateway, &row(5), timeout).await else {
            panic!("a connection closed while waiting for the answer leaves the outcome unknown")
        };
        assert!(error.contains("after the request was sent"), "{error}");

        // Refused: nothing was sent, so it is safe to send again.
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let refused = AiGatewayConfig {
            url: format!("http://127.0.0.1:{port}"),
            ..gateway
        };
        assert!(matches!(
            deliver(&client, &refused, &row(5), timeout).await,
            Outcome::Retryable { .. }
        ));
    }

    #[test]
    fn unknown_outcomes_are_retried_only_at_an_idempotent_gateway() {
        let unknown = || Outcome::Unknown {
            error: "outcome unknown: AiGateway did not answer within 500 ms".into(),
        };
        let gateway = AiGatewayConfig {
            url: "http://gw".into(),
            admin_path: String::new(),
            credential: Secret::new("c"),
            idempotent: false,
            ca_file: None,
        };
        let higress = RelayConfig {
            gateway: Some(gateway.clone()),
            ..config()
        };
        assert!(matches!(
            decide(unknown(), 1, &higress, 0.0),
            Action::MarkUnknown { .. }
        ));
        // Even on the last attempt it is not "failed": it may have been applied.
        assert!(matches!(
            decide(unknown(), 4, &higress, 0.0),
            Action::MarkUnknown { .. }
        ));
        let deduplicating = RelayConfig {
            gateway: Some(AiGatewayConfig {
                idempotent: true,
                ..gateway
            }),
            ..config()
        };
        assert!(matches!(
            decide(unknown(), 1, &deduplicating, 0.0),
            Action::Retry { .. }
        ));
        assert!(matches!(
            decide(unknown(), 4, &deduplicating, 0.0),
            Action::Fail { .. }
        ));
    }

    // --- alerts to webhooks ---

    fn alert_row(alert_id: Value, kind: &str) -> AlertRow {
        AlertRow {
            outbox_id: 9,
            attempts: 1,
            alert: json!({"alert_id": alert_id, "kind": kind, "account_id": "a", "usage_percent": 80.0}),
        }
    }

    #[test]
    fn webhook_body_and_key_name_the_alert() {
        let row = alert_row(json!(42), "warning");
        assert_eq!(row.idempotency_key(), "alert-42");
        assert_eq!(
            row.webhook_body(),
            json!({"type": "quota.warning", "alert": row.alert.clone()})
        );
        let row = alert_row(json!("0b9c6f1e-0000-4000-8000-000000000001"), "exhausted");
        assert_eq!(
            row.idempotency_key(),
            "alert-0b9c6f1e-0000-4000-8000-000000000001"
        );
        assert_eq!(row.webhook_body()["type"], "quota.exhausted");
        let bare = AlertRow {
            outbox_id: 5,
            attempts: 1,
            alert: json!({}),
        };
        assert_eq!(bare.idempotency_key(), "alert-outbox-5");
        assert_eq!(bare.webhook_body()["type"], "quota.alert");
    }

    #[test]
    fn webhook_statuses_and_combined_outcomes() {
        assert_eq!(
            classify_webhook_status("h", 204, None, ""),
            Outcome::Delivered
        );
        assert_eq!(
            classify_webhook_status("h", 202, None, ""),
            Outcome::Delivered
        );
        assert!(matches!(
            classify_webhook_status("h", 503, Some(Duration::from_secs(3)), "busy"),
            Outcome::Retryable { retry_after: Some(d), ref error } if d == Duration::from_secs(3) && error == "webhook h answered HTTP 503: busy"
        ));
        assert!(matches!(
            classify_webhook_status("h", 404, None, ""),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            classify_webhook_status("h", 301, None, ""),
            Outcome::Permanent { .. }
        ));
        let retry = |secs| Outcome::Retryable {
            error: format!("r{secs}"),
            retry_after: Some(Duration::from_secs(secs)),
        };
        let permanent = Outcome::Permanent { error: "p".into() };
        assert_eq!(combine(vec![]), Outcome::Delivered);
        assert_eq!(
            combine(vec![Outcome::Delivered, Outcome::Delivered]),
            Outcome::Delivered
        );
        assert_eq!(
            combine(vec![Outcome::Delivered, permanent.clone()]),
            Outcome::Permanent { error: "p".into() }
        );
        assert_eq!(
            combine(vec![retry(1), permanent, retry(4)]),
            Outcome::Retryable {
                error: "r1; r4; p".into(),
                retry_after: Some(Duration::from_secs(4))
            }
        );
        assert!(matches!(
            combine(vec![Outcome::Unknown { error: "u".into() }]),
            Outcome::Retryable { .. }
        ));
    }

    #[test]
    fn an_alert_of_unknown_outcome_is_retried_even_at_a_non_idempotent_gateway() {
        let unknown = || Outcome::Unknown {
            error: "webhook h did not answer within 500 ms".into(),
        };
        let config = config();
        assert!(!config.gateway_idempotent());
        assert!(matches!(
            decide_alert(unknown(), 1, &config, 0.0),
            Action::Retry { .. }
        ));
        assert!(matches!(
            decide_alert(unknown(), 4, &config, 0.0),
            Action::Fail { .. }
        ));
        assert_eq!(
            decide_alert(Outcome::Delivered, 1, &config, 0.0),
            Action::Complete
        );
    }

    #[test]
    fn hosts_are_shown_without_paths_or_queries() {
        assert_eq!(
            url_host("https://hooks.example/x/secret?k=1"),
            "hooks.example"
        );
        assert_eq!(url_host("http://127.0.0.1:9000/hook"), "127.0.0.1:9000");
        assert_eq!(url_host("nonsense"), "(invalid url)");
    }

    /// What a test receiver saw: (Idempotency-Key, body) per request.
    type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

    /// A receiver that records (Idempotency-Key, body) and answers the queued statuses, then 200.
    async fn receiver(statuses: Vec<u16>) -> (String, Seen) {
        use axum::http::{HeaderMap, StatusCode};
        let seen: Seen = Arc::default();
        let queue = Arc::new(Mutex::new(statuses));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let seen = seen.clone();
                move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                    let (seen, queue) = (seen.clone(), queue.clone());
                    async move {
                        let key = headers
                            .get(IDEMPOTENCY_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock().unwrap().push((key, body));
                        let mut queue = queue.lock().unwrap();
                        let status = if queue.is_empty() {
                            200
                        } else {
                            queue.remove(0)
                        };
                        StatusCode::from_u16(status).unwrap()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/hook"), seen)
    }

    #[tokio::test]
    async fn deliver_alert_posts_the_json_body_with_the_key() {
        let (url, seen) = receiver(vec![500, 410]).await;
        let client = webhook_client(Duration::from_secs(5)).unwrap();
        let row = alert_row(json!(7), "warning");
        let timeout = Duration::from_secs(5);
        assert!(matches!(
            deliver_alert(&client, &url, &row, timeout).await,
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            deliver_alert(&client, &url, &row, timeout).await,
            Outcome::Permanent { .. }
        ));
        assert_eq!(
            deliver_alert(&client, &url, &row, timeout).await,
            Outcome::Delivered
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        for (key, body) in seen {
            assert_eq!(key.as_deref(), Some("alert-7"));
            assert_eq!(body, row.webhook_body());
        }
        // Nobody listening: retryable, and the error names the host only.
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let Outcome::Retryable { error, .. } = deliver_alert(
            &client,
            &format!("http://127.0.0.1:{port}/hook?token=s3cret"),
            &row,
            timeout,
        )
        .await
        else {
            panic!("a refused connection must be retryable")
        };
        assert!(
            error.starts_with(&format!("webhook 127.0.0.1:{port} unreachable")),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[tokio::test]
    async fn a_stalled_webhook_is_an_unknown_outcome_then_retried() {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = webhook_client(Duration::from_millis(300)).unwrap();
        let outcome = deliver_alert(
            &client,
            &format!("http://{addr}/hook"),
            &alert_row(json!(1), "warning"),
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(outcome, Outcome::Unknown { .. }), "{outcome:?}");
        assert!(matches!(
            decide_alert(outcome, 1, &config(), 0.0),
            Action::Retry { .. }
        ));
    }

    #[test]
    fn relay_stats_count_into_the_metrics() {
        let metrics = Arc::new(Metrics::new());
        let stats = RelayStats::new(metrics.clone());
        stats.delivered();
        stats.alert_delivered();
        stats.alert_delivered();
        stats.outcome_unknown();
        assert_eq!(metrics.relay_deliveries(KIND_RECHARGE, "delivered"), 1);
        assert_eq!(metrics.relay_deliveries(KIND_RECHARGE, "unknown"), 1);
        assert_eq!(metrics.relay_deliveries(KIND_ALERT, "delivered"), 2);
        assert_eq!(stats.alerts_delivered(), 2);
        assert!(stats.alerts_last_success_at().is_some());
        assert!(stats.last_delivery_at().is_some());
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let gateway = |ca_file: Option<std::path::PathBuf>| AiGatewayConfig {
            url: "https://gw".into(),
            admin_path: String::new(),
            credential: Secret::new("c"),
            idempotent: false,
            ca_file,
        };
        let timeout = Duration::from_secs(1);
        assert!(http_client(&gateway(None), timeout).is_ok());
        let missing = http_client(&gateway(Some("/nonexistent/ca.pem".into())), timeout);
        assert!(missing.unwrap_err().contains("QUOTA_AIGATEWAY_CA_FILE"));
        let empty = std::env::temp_dir().join(format!("quota-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let result = http_client(&gateway(Some(empty.clone())), timeout);
        let _ = std::fs::remove_file(&empty);
        assert!(result.unwrap_err().contains("no PEM certificate"));
    }
}
