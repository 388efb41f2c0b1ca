//! GET /metrics (issue 13): parsed with a Prometheus text parser; the database's gauges and
//! counters (quota.metrics()) and the sidecar's own move with traffic. Token protection and the
//! webhook deliverer are in pools_webhooks.rs (a private sidecar).

use pg_quota_e2e::pools::*;
use pg_quota_e2e::*;
use prometheus_parse::{Scrape, Value as Sample};

pub async fn scrape(api: &Api) -> Scrape {
    let resp = api.anon(Method::GET, "/metrics").send().await;
    assert_eq!(resp.status, 200, "/metrics: {}", resp.text);
    let content_type = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Scrape::parse(resp.text.lines().map(|l| Ok(parsable(l)))).expect("Prometheus text format")
}

/// prometheus-parse reads a sample's labels with `\{[^}]+\}`, so it drops (silently) every
/// line whose label values hold a brace, which route templates do (`/pool/{provider_id}/...`,
/// valid in the text format). Braces inside quoted label values become parentheses here, so the
/// parser keeps those lines: `route="/api/v1/pool/(provider_id)/acquire"`.
fn parsable(line: &str) -> String {
    if line.starts_with('#') {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len());
    let (mut in_labels, mut in_quotes, mut escaped) = (false, false, false);
    for c in line.chars() {
        let c = match c {
            _ if escaped => {
                escaped = false;
                c
            }
            '\\' if in_quotes => {
                escaped = true;
                c
            }
            '"' if in_labels => {
                in_quotes = !in_quotes;
                c
            }
            '{' if in_quotes => '(',
            '}' if in_quotes => ')',
            '{' => {
                in_labels = true;
                c
            }
            '}' => {
                in_labels = false;
                c
            }
            _ => c,
        };
        out.push(c);
    }
    out
}

/// A route template as [`parsable`] shows it.
fn route(template: &str) -> String {
    template.replace('{', "(").replace('}', ")")
}

fn number(value: &Sample) -> f64 {
    match value {
        Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
        other => panic!("not a number: {other:?}"),
    }
}

/// The sum of a metric's samples whose labels include all of `labels` (0 when none).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| number(&s.value))
        .sum()
}

fn present(scrape: &Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == metric)
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let ctx = Ctx::new("metrics").await;
    let pools = Pools::new();
    let (provider_id, account_id) = pools.single("metrics", 1000, json!({})).await;
    let before = scrape(&ctx.api).await;
    assert_eq!(value(&before, "quota_database_up", &[]), 1.0);
    let http_before = value(&before, "http_request_duration_seconds_count", &[]);
    let hits_before = value(
        &before,
        "rate_limit_hits_total",
        &[("provider_id", &provider_id), ("limit_type", "quota")],
    );
    let refusals_before = value(
        &before,
        "quota_refusals_total",
        &[("error", "quota_exceeded")],
    );
    let requests_before = value(
        &before,
        "quota_pool_requests_total",
        &[("provider_id", &provider_id)],
    );

    // 850 of 1000 used.
    pools.spend(&provider_id, 850).await;
    let after = scrape(&ctx.api).await;
    let percent = value(
        &after,
        "quota_usage_percent",
        &[("account_id", &account_id), ("provider_id", &provider_id)],
    );
    assert!(
        (percent - 85.0).abs() < 1e-6,
        "quota_usage_percent {percent}"
    );
    assert_eq!(
        value(
            &after,
            "quota_pool_in_flight",
            &[("account_id", &account_id)]
        ),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "quota_pool_requests_total",
            &[("provider_id", &provider_id)]
        ) - requests_before,
        1.0
    );
    assert!(
        value(&after, "http_request_duration_seconds_count", &[]) >= http_before + 3.0,
        "the latency histogram counts requests"
    );
    // The route label is the template, never a path with ids.
    assert!(
        value(
            &after,
            "http_request_duration_seconds_count",
            &[
                ("route", &route("/api/v1/pool/{provider_id}/acquire")),
                ("method", "POST"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        !after
            .samples
            .iter()
            .filter(|s| s.metric.starts_with("http_request_duration_seconds"))
            .any(|s| s
                .labels
                .get("route")
                .is_some_and(|r| r.contains(&provider_id))),
        "a raw path in a route label"
    );

    // A refusal for quota moves rate_limit_hits_total{limit_type="quota"} and the refusals.
    pools.acquire(&provider_id, 500).await.expect(429);
    let refused = scrape(&ctx.api).await;
    assert_eq!(
        value(
            &refused,
            "rate_limit_hits_total",
            &[("provider_id", &provider_id), ("limit_type", "quota")]
        ) - hits_before,
        1.0
    );
    assert!(
        value(
            &refused,
            "quota_refusals_total",
            &[("error", "quota_exceeded")]
        ) >= refusals_before + 1.0
    );
    // Every counter family quota.metrics() has rows for is rendered (read just before a scrape:
    // counters only grow, so none can vanish in between).
    let counters: Vec<String> = ctx
        .db
        .query(
            "SELECT DISTINCT name FROM quota.metrics() WHERE kind = 'counter'",
            &[],
        )
        .await
        .expect("quota.metrics()")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        counters.iter().any(|n| n == "quota_pool_alerts_total"),
        "{counters:?}"
    );
    let full = scrape(&ctx.api).await;
    for metric in &counters {
        assert!(present(&full, metric), "{metric} missing from /metrics");
    }
    // A warning was raised crossing 80 %.
    assert!(
        value(&refused, "quota_pool_alerts_total", &[("kind", "warning")]) >= 1.0,
        "quota_pool_alerts_total"
    );
    // An rpm refusal names its limit type.
    let provider = pools
        .provider("metrics_rpm", "least_used", json!({"rpm": 1}))
        .await;
    let rpm_provider = provider["provider_id"].as_str().unwrap().to_owned();
    pools
        .account(&rpm_provider, json!({"k": 1}), json!({}))
        .await;
    let lease = pools.admitted(&rpm_provider, 1).await;
    let refused = pools.acquire(&rpm_provider, 1).await;
    if refused.status == 200 {
        // The minute turned between the two: the window is new; refuse again within it.
        pools.release(&refused.body, 1).await;
        pools.acquire(&rpm_provider, 1).await.expect(429);
    } else {
        refused.expect(429);
    }
    pools.release(&lease, 1).await;
    let last = scrape(&ctx.api).await;
    assert!(
        value(
            &last,
            "rate_limit_hits_total",
            &[("provider_id", &rpm_provider), ("limit_type", "rpm")]
        ) >= 1.0
    );
}

#[test]
fn braces_in_label_values_survive_the_parser() {
    let text = "# TYPE h histogram\n\
                h_count{method=\"GET\",route=\"/a/{id}/b\"} 3\n\
                g{x=\"q\\\"{\"} 1\n\
                plain 2";
    let scrape = Scrape::parse(text.lines().map(|l| Ok(parsable(l)))).unwrap();
    assert_eq!(
        value(&scrape, "h_count", &[("route", &route("/a/{id}/b"))]),
        3.0
    );
    assert_eq!(value(&scrape, "plain", &[]), 2.0);
    assert_eq!(value(&scrape, "g", &[]), 1.0);
}

/// quota_token_verifications_total{outcome} counts every verification, SQL callers included (the
/// counters live in shared memory, not in the sidecar): one valid over REST, one valid and one
/// unknown_token over SQL.
#[tokio::test]
async fn token_verifications_are_counted_for_sql_and_rest_callers() {
    let ctx = Ctx::new("metrics_verify").await;
    let token = ctx.flow_token(json!({}));
    let token = token.await["access_token"].as_str().unwrap().to_string();
    let before = scrape(&ctx.api).await;
    let valid_before = value(
        &before,
        "quota_token_verifications_total",
        &[("outcome", "valid")],
    );
    let unknown_before = value(
        &before,
        "quota_token_verifications_total",
        &[("outcome", "unknown_token")],
    );
    ctx.flow_verify(&token, None).await.expect_valid();
    let row = ctx
        .db
        .query_one("SELECT valid FROM quota.verify_token($1)", &[&token])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let row = ctx
        .db
        .query_one("SELECT code FROM quota.verify_token('flow_nope')", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("unknown_token")
    );
    let after = scrape(&ctx.api).await;
    // Other tests verify tokens concurrently: at least ours moved the counters.
    assert!(
        value(
            &after,
            "quota_token_verifications_total",
            &[("outcome", "valid")]
        ) >= valid_before + 2.0
    );
    assert!(
        value(
            &after,
            "quota_token_verifications_total",
            &[("outcome", "unknown_token")]
        ) >= unknown_before + 1.0
    );
}
