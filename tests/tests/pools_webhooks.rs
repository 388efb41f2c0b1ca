//! Alert webhooks through the relay's outbox (issue 13), and /metrics behind a token, on a
//! private sidecar (E2E_SIDECAR_BIN) with QUOTA_ALERT_WEBHOOK_URLS pointing at a receiver in this
//! process. The private sidecar uses a database of its own (IsolatedDb) so that the shared
//! sidecar's relay, which has no webhook configured and would complete alert rows at once,
//! never claims this test's alerts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use pg_quota_e2e::pools::*;
use pg_quota_e2e::relay::{eventually, PrivateSidecar};
use pg_quota_e2e::*;

const METRICS_TOKEN: &str = "e2e-metrics-token";

/// What the receiver saw: (Idempotency-Key, body) per request.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A webhook receiver on 127.0.0.1:0 answering the queued statuses, then 200.
async fn receiver(statuses: Vec<u16>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let queue = Arc::new(Mutex::new(statuses));
    let handler = {
        let seen = seen.clone();
        move |headers: HeaderMap, body: String| {
            let (seen, queue) = (seen.clone(), queue.clone());
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
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
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test]
async fn a_warning_reaches_the_webhook_after_a_500_with_its_idempotency_key() {
    let _ctx = Ctx::new("pool_webhooks").await;
    let (url, seen) = receiver(vec![500]).await;
    let db = IsolatedDb::create("pgq_hooks").await;
    let sidecar_url = db.sidecar_url().await;
    let sidecar = PrivateSidecar::start(
        &sidecar_url,
        &[
            ("QUOTA_ALERT_WEBHOOK_URLS", &url),
            ("QUOTA_METRICS_TOKEN", METRICS_TOKEN),
            ("QUOTA_RELAY_POLL_MS", "100"),
            ("QUOTA_RELAY_BACKOFF_BASE_MS", "100"),
            ("QUOTA_RELAY_BACKOFF_MAX_MS", "500"),
            ("QUOTA_RELAY_TIMEOUT_MS", "2000"),
            ("QUOTA_RELAY_LEASE_S", "5"),
        ],
        false,
    )
    .await;
    let pools = Pools::at(&sidecar.url());
    let health = pools
        .api
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect(200);
    assert_eq!(health["webhooks"]["configured"], true, "{health}");
    assert_eq!(health["webhooks"]["urls"], 1, "{health}");

    // 900 of 1000: past the 80 % threshold, one warning.
    let (provider_id, account_id) = pools.single("hooks", 1000, json!({})).await;
    pools.spend(&provider_id, 900).await;
    let alerts = pools.alerts_of(&account_id, "warning").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert_id = alerts[0]["alert_id"].clone();
    let key = format!(
        "alert-{}",
        alert_id.as_i64().map_or_else(
            || alert_id.as_str().unwrap_or_default().to_owned(),
            |n| n.to_string()
        )
    );

    // The first delivery is answered 500, the retry 200: two requests, one key, one body.
    let requests = eventually("the webhook retry", Duration::from_secs(30), || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().unwrap().clone();
            (seen.len() >= 2).then_some(seen)
        }
    })
    .await;
    for (got_key, body) in &requests {
        assert_eq!(got_key.as_deref(), Some(key.as_str()), "{body}");
        assert_eq!(body["type"], "quota.warning", "{body}");
        assert_eq!(body["alert"]["account_id"], account_id.as_str(), "{body}");
        assert_eq!(body["alert"]["alert_id"], alert_id, "{body}");
        assert_eq!(body["alert"]["kind"], "warning", "{body}");
    }
    let delivered = eventually("delivery_status delivered", Duration::from_secs(15), || {
        let pools = pools.clone();
        let account_id = account_id.clone();
        async move {
            let alerts = pools.alerts_of(&account_id, "warning").await;
            (alerts[0]["delivery_status"] == "delivered").then(|| alerts[0].clone())
        }
    })
    .await;
    assert_eq!(delivered["alert_id"], alert_id);
    // Delivered: no third request.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "delivered alerts are not sent again"
    );

    // An exhausted alert on a refusal is delivered too (at once: the queue is empty).
    pools.acquire(&provider_id, 200).await.expect(429);
    eventually("the exhausted alert", Duration::from_secs(15), || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().unwrap().clone();
            seen.iter()
                .any(|(_, body)| body["type"] == "quota.exhausted")
                .then_some(())
        }
    })
    .await;

    // /health: the deliverer's last success and the database's alert counts.
    let health = pools
        .api
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect(200);
    let webhooks = &health["webhooks"];
    assert!(webhooks["last_success_at"].is_string(), "{health}");
    assert!(
        webhooks["deliveries"].as_u64().unwrap_or(0) >= 1,
        "{health}"
    );
    assert!(webhooks["backlog"].is_i64(), "{health}");
    assert_eq!(webhooks["failed"], 0, "{health}");

    // /metrics behind its token; the relay counted the retry and the deliveries.
    pools
        .api
        .anon(Method::GET, "/metrics")
        .send()
        .await
        .expect_error(401, Some("unauthorized"));
    pools
        .api
        .anon(Method::GET, "/metrics")
        .bearer("wrong-token")
        .send()
        .await
        .expect_error(403, Some("forbidden"));
    let metrics = pools
        .api
        .anon(Method::GET, "/metrics")
        .bearer(METRICS_TOKEN)
        .send()
        .await;
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    let scrape = prometheus_parse::Scrape::parse(metrics.text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let count = |kind: &str, outcome: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == "quota_relay_deliveries_total"
                    && s.labels.get("kind") == Some(kind)
                    && s.labels.get("outcome") == Some(outcome)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(count("alert", "retried"), 1.0, "{}", metrics.text);
    assert!(count("alert", "delivered") >= 2.0, "{}", metrics.text);
    assert!(
        metrics
            .text
            .contains("quota_refusals_total{error=\"unauthorized\"}"),
        "{}",
        metrics.text
    );

    drop(sidecar);
    db.drop_db().await;
}
