//! `GET /metrics` (Prometheus text format, the `prometheus` crate).
//!
//! Two sources, rendered together per scrape:
//! - the database's counters and gauges, read from `quota.metrics()` at every scrape (never kept
//!   twice: the DBA can query the same function), turned into metric families by name
//!   ([`db_families`]);
//! - this sidecar's own registry ([`Metrics`]): `http_request_duration_seconds{method, route,
//!   status}` (the matched route template, never a raw path), `quota_refusals_total{error}` (the
//!   `error` code of every 4xx/5xx answer, read from the [`ErrorCode`] response extension that
//!   `AppError` and the other error answers attach) and `quota_relay_deliveries_total{kind,
//!   outcome}` (the relay's deliveries: recharges and alerts).

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec};
use prometheus::{Opts, Registry, TextEncoder};
use serde_json::{Map, Value};

pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const REFUSALS: &str = "quota_refusals_total";
pub const RELAY_DELIVERIES: &str = "quota_relay_deliveries_total";
/// 1 when this scrape read `quota.metrics()`, 0 when it could not (the rest is still served).
pub const DATABASE_UP: &str = "quota_database_up";
/// The route label of a request no route matched (a 404 of the fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Error codes longer than this are cut (the label set must stay small and bounded).
pub const ERROR_CODE_MAX: usize = 64;
/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `error` code of an error answer, attached to the response for [`track`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub String);

/// Attaches the `error` code of an error answer to it.
pub fn tag_error(response: &mut Response, code: &str) {
    response.extensions_mut().insert(ErrorCode(code.to_owned()));
}

/// The sidecar's own metrics.
pub struct Metrics {
    registry: Registry,
    http_duration: HistogramVec,
    refusals: IntCounterVec,
    relay_deliveries: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_DURATION,
                "HTTP request latency in seconds, by method, matched route template and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid histogram");
        let refusals = IntCounterVec::new(
            Opts::new(
                REFUSALS,
                "Error answers (4xx and 5xx) of the sidecar, by their error code",
            ),
            &["error"],
        )
        .expect("valid counter");
        let relay_deliveries = IntCounterVec::new(
            Opts::new(
                RELAY_DELIVERIES,
                "Relay deliveries by kind (recharge, alert) and outcome (delivered, retried, \
                 failed, unknown)",
            ),
            &["kind", "outcome"],
        )
        .expect("valid counter");
        for collector in [
            Box::new(http_duration.clone()) as Box<dyn Collector>,
            Box::new(refusals.clone()),
            Box::new(relay_deliveries.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            http_duration,
            refusals,
            relay_deliveries,
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_duration
            .with_label_values(&[method_label(method), route, &status.to_string()])
            .observe(seconds);
    }

    pub fn refusal(&self, code: &str) {
        let code: String = code.chars().take(ERROR_CODE_MAX).collect();
        self.refusals.with_label_values(&[&code]).inc();
    }

    /// `kind` recharge | alert; `outcome` delivered | retried | failed | unknown.
    pub fn relay_delivery(&self, kind: &str, outcome: &str) {
        self.relay_deliveries
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// The current value of `quota_relay_deliveries_total{kind, outcome}` (for tests and /health).
    pub fn relay_deliveries(&self, kind: &str, outcome: &str) -> u64 {
        self.relay_deliveries
            .with_label_values(&[kind, outcome])
            .get()
    }

    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

/// A method as a label: the standard ones as they are, anything else `other` (a client must not
/// be able to grow the label set).
fn method_label(method: &str) -> &str {
    match method {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
        _ => "other",
    }
}

/// Middleware (outermost, on every route and the fallbacks): the request's latency by method,
/// route template and status, and the error code of every error answer.
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    metrics.observe_request(
        &method,
        &route,
        status.as_u16(),
        start.elapsed().as_secs_f64(),
    );
    if status.is_client_error() || status.is_server_error() {
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map_or("unknown", |code| code.0.as_str());
        metrics.refusal(code);
    }
    response
}

/// One row of `quota.metrics()`.
#[derive(Clone, Debug, PartialEq)]
pub struct DbMetric {
    pub name: String,
    /// counter | gauge (anything else is rendered as a gauge).
    pub kind: String,
    pub help: String,
    /// A JSON object of strings (other JSON values are rendered as their JSON text).
    pub labels: Map<String, Value>,
    pub value: f64,
}

fn label_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The database's rows as metric families: one family per name (its kind and help from its first
/// row), labelled by the union of its rows' label keys (a key a row lacks is ""). A name that
/// the sidecar's own registry uses (`reserved`), an invalid name or label, or a negative or
/// non-finite counter value is skipped with a warning rather than failing the scrape.
pub fn db_families(rows: &[DbMetric], reserved: &BTreeSet<String>) -> Vec<MetricFamily> {
    let registry = Registry::new();
    let mut names: Vec<&str> = Vec::new();
    for row in rows {
        if !names.contains(&row.name.as_str()) {
            names.push(&row.name);
        }
    }
    for name in names {
        if reserved.contains(name) {
            tracing::warn!(
                name,
                "metrics: quota.metrics() row shadows a sidecar metric; skipped"
            );
            continue;
        }
        let family: Vec<&DbMetric> = rows.iter().filter(|r| r.name == name).collect();
        let first = family[0];
        let keys: BTreeSet<&str> = family
            .iter()
            .flat_map(|r| r.labels.keys().map(String::as_str))
            .collect();
        let keys: Vec<&str> = keys.into_iter().collect();
        let help = if first.help.trim().is_empty() {
            name.to_owned()
        } else {
            first.help.clone()
        };
        let values = |row: &DbMetric| -> Vec<String> {
            keys.iter()
                .map(|k| row.labels.get(*k).map(label_text).unwrap_or_default())
                .collect()
        };
        let opts = Opts::new(name, help);
        let registered = if first.kind == "counter" {
            CounterVec::new(opts, &keys).and_then(|vec| {
                for row in &family {
                    if !(row.value.is_finite() && row.value >= 0.0) {
                        tracing::warn!(name, value = row.value, "metrics: counter value skipped");
                        continue;
                    }
                    let labels = values(row);
                    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                    vec.get_metric_with_label_values(&labels)?.inc_by(row.value);
                }
                registry.register(Box::new(vec))
            })
        } else {
            GaugeVec::new(opts, &keys).and_then(|vec| {
                for row in &family {
                    let labels = values(row);
                    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                    vec.get_metric_with_label_values(&labels)?.set(row.value);
                }
                registry.register(Box::new(vec))
            })
        };
        if let Err(err) = registered {
            tracing::warn!(name, %err, "metrics: quota.metrics() family skipped");
        }
    }
    registry.gather()
}

/// `quota_database_up`: whether this scrape could read the database's metrics.
pub fn database_up(up: bool) -> Vec<MetricFamily> {
    let registry = Registry::new();
    let gauge = GaugeVec::new(
        Opts::new(
            DATABASE_UP,
            "1 when this scrape read quota.metrics() from the database, else 0",
        ),
        &[],
    )
    .expect("valid gauge");
    gauge
        .with_label_values(&[] as &[&str])
        .set(if up { 1.0 } else { 0.0 });
    registry.register(Box::new(gauge)).expect("one gauge");
    registry.gather()
}

/// The text format of these families.
pub fn render(families: &[MetricFamily]) -> String {
    let mut buffer = Vec::new();
    if let Err(err) = TextEncoder::new().encode(families, &mut buffer) {
        tracing::error!(%err, "metrics: cannot encode");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// The whole scrape: the database's families (None: the database could not be read), the up
/// gauge and the sidecar's own registry.
pub fn scrape(metrics: &Metrics, rows: Option<&[DbMetric]>) -> String {
    let own = metrics.gather();
    let reserved: BTreeSet<String> = own
        .iter()
        .map(|f| f.name().to_owned())
        .chain([DATABASE_UP.to_owned()])
        .collect();
    let mut families = match rows {
        Some(rows) => db_families(rows, &reserved),
        None => Vec::new(),
    };
    families.extend(database_up(rows.is_some()));
    families.extend(own);
    render(&families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(name: &str, kind: &str, labels: Value, value: f64) -> DbMetric {
        DbMetric {
            name: name.into(),
            kind: kind.into(),
            help: format!("help of {name}"),
            labels: labels.as_object().cloned().unwrap_or_default(),
            value,
        }
    }

    #[test]
    fn database_rows_render_as_families_by_name() {
        let rows = vec![
            row(
                "quota_usage_percent",
                "gauge",
                json!({"account_id": "a1", "provider_id": "p1"}),
                82.5,
            ),
            row(
                "rate_limit_hits_total",
                "counter",
                json!({"provider_id": "p1", "limit_type": "rpm"}),
                3.0,
            ),
            row(
                "quota_usage_percent",
                "gauge",
                json!({"account_id": "a2", "provider_id": "p1"}),
                0.0,
            ),
            row("quota_token_consumptions_total", "counter", json!({}), 7.0),
            // A row lacking a label gets "" for it.
            row(
                "quota_outbox_backlog",
                "gauge",
                json!({"kind": "alert"}),
                1.0,
            ),
            row("quota_outbox_backlog", "gauge", json!({}), 2.0),
        ];
        let text = render(&db_families(&rows, &BTreeSet::new()));
        for line in [
            "# HELP quota_usage_percent help of quota_usage_percent",
            "# TYPE quota_usage_percent gauge",
            "quota_usage_percent{account_id=\"a1\",provider_id=\"p1\"} 82.5",
            "quota_usage_percent{account_id=\"a2\",provider_id=\"p1\"} 0",
            "# TYPE rate_limit_hits_total counter",
            "rate_limit_hits_total{limit_type=\"rpm\",provider_id=\"p1\"} 3",
            "quota_token_consumptions_total 7",
            "quota_outbox_backlog{kind=\"alert\"} 1",
            "quota_outbox_backlog{kind=\"\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        // One HELP/TYPE per family.
        assert_eq!(text.matches("# TYPE quota_usage_percent").count(), 1);
    }

    #[test]
    fn bad_rows_are_skipped_not_fatal() {
        let rows = vec![
            row("bad name!", "gauge", json!({}), 1.0),
            row("negative_total", "counter", json!({}), -1.0),
            row("nan_total", "counter", json!({}), f64::NAN),
            row("bad_label", "gauge", json!({"0x": "v"}), 1.0),
            row(REFUSALS, "counter", json!({"error": "x"}), 5.0),
            row("good", "gauge", json!({"n": 1}), 4.0),
        ];
        let reserved: BTreeSet<String> = [REFUSALS.to_owned()].into();
        let text = render(&db_families(&rows, &reserved));
        assert!(text.contains("good{n=\"1\"} 4"), "{text}");
        assert!(!text.contains("bad name"), "{text}");
        assert!(!text.contains("bad_label"), "{text}");
        assert!(!text.contains(REFUSALS), "{text}");
        assert!(!text.contains("negative_total "), "{text}");
    }

    #[test]
    fn own_metrics_and_the_up_gauge() {
        let metrics = Metrics::new();
        metrics.observe_request("GET", "/api/v1/pool/{provider_id}/status", 200, 0.012);
        metrics.observe_request("BREW", "/x", 404, 0.001);
        metrics.refusal("quota_exceeded");
        metrics.refusal("quota_exceeded");
        metrics.relay_delivery("alert", "retried");
        assert_eq!(metrics.relay_deliveries("alert", "retried"), 1);
        let text = scrape(&metrics, None);
        assert!(text.contains("quota_database_up 0"), "{text}");
        assert!(
            text.contains(
                "http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/pool/{provider_id}/status\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_count{method=\"other\",route=\"/x\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("quota_refusals_total{error=\"quota_exceeded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("quota_relay_deliveries_total{kind=\"alert\",outcome=\"retried\"} 1"),
            "{text}"
        );
        let rows = vec![row(
            "quota_pool_alerts_total",
            "counter",
            json!({"kind": "warning"}),
            1.0,
        )];
        let text = scrape(&metrics, Some(&rows));
        assert!(text.contains("quota_database_up 1"), "{text}");
        assert!(
            text.contains("quota_pool_alerts_total{kind=\"warning\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn long_error_codes_are_cut() {
        let metrics = Metrics::new();
        metrics.refusal(&"x".repeat(500));
        let text = scrape(&metrics, None);
        assert!(text.contains(&format!("error=\"{}\"", "x".repeat(ERROR_CODE_MAX))));
        assert!(!text.contains(&"x".repeat(ERROR_CODE_MAX + 1)));
    }
}
