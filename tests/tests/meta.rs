//! /health and /openapi.json.

use pg_quota_e2e::*;

#[tokio::test]
async fn health_reports_database_extension_and_worker() {
    let ctx = Ctx::new("health").await;
    let body = ctx
        .api
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect(200);
    assert_healthy(&body);
    assert_eq!(body["database"], "ok", "{body}");
    assert!(body["extension"].is_string(), "extension version in {body}");
    // The library loads (a call into it answered) and says its version.
    assert_eq!(body["library"]["status"], "ok", "{body}");
    assert!(body["library"]["version"].is_string(), "{body}");
    // The relay: this sidecar's memory and the outbox counts.
    let relay = &body["relay"];
    assert_eq!(relay["gateway"], true, "{body}");
    for field in ["backlog", "due", "unknown", "failed", "deliveries"] {
        assert!(
            relay[field].is_i64() || relay[field].is_u64(),
            "relay.{field} in {body}"
        );
    }
    assert!(
        relay["last_delivery_at"].is_null() || relay["last_delivery_at"].is_string(),
        "{body}"
    );
    // The alert webhook deliverer (none configured on the shared sidecar).
    let webhooks = &body["webhooks"];
    assert_eq!(webhooks["configured"], false, "{body}");
    for field in ["backlog", "failed", "deliveries"] {
        assert!(
            webhooks[field].is_i64() || webhooks[field].is_u64(),
            "webhooks.{field} in {body}"
        );
    }
    assert!(
        relay.get("alert_backlog").is_none(),
        "alert counts belong to webhooks: {body}"
    );
    let worker = &body["worker"];
    assert!(worker.is_object(), "worker object in {body}");
    let state = worker["state"]
        .as_str()
        .unwrap_or_else(|| panic!("worker.state in {body}"));
    assert!(
        [
            "not_preloaded",
            "starting",
            "waiting_for_extension",
            "running",
            "stopped"
        ]
        .contains(&state),
        "unknown worker state {state}"
    );
    // The e2e cluster preloads the extension: its worker reaches `running` and keeps a heartbeat
    // (allow it a few naptimes to notice the extension).
    let mut last = body.clone();
    for _ in 0..30 {
        if last["worker"]["state"] == "running" && last["worker"]["ticks"].as_i64().unwrap_or(0) > 0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        last = ctx
            .api
            .anon(Method::GET, "/health")
            .send()
            .await
            .expect(200);
    }
    assert_eq!(
        last["worker"]["state"], "running",
        "worker never reached running: {last}"
    );
    assert!(
        int(&last["worker"], "ticks") > 0,
        "worker heartbeat does not tick: {last}"
    );
    // The same row as SQL reports.
    let sql_state: String = ctx
        .db
        .query_one("SELECT state FROM quota.worker_status()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sql_state, "running");
}

/// `ok`, or `degraded` only because a concurrent test (relay_unknown.rs) holds an execution whose
/// delivery outcome is unknown: that needs an operator, and keeps HTTP 200.
fn assert_healthy(body: &Value) {
    if body["status"] == "ok" {
        assert_eq!(body["problems"], json!([]), "{body}");
        return;
    }
    assert_eq!(body["status"], "degraded", "{body}");
    let problems = body["problems"].as_array().expect("problems array");
    assert!(
        !problems.is_empty()
            && problems.iter().all(|p| p
                .as_str()
                .is_some_and(|p| p.contains("unknown delivery outcome"))),
        "{body}"
    );
}

/// Every path the end-to-end tests call, as templates.
const PATHS: &[&str] = &[
    "/health",
    "/api/internal/credits/check/{user_id}",
    "/api/internal/credits/calculate",
    "/api/internal/credits/charge",
    "/api/internal/credits/add",
    "/api/internal/credits/balance/{user_id}",
    "/api/internal/subscription/update",
    "/api/internal/payments",
    "/api/v1/subscription",
    "/api/v1/transactions",
    "/api/v1/credits/purchase",
    "/api/v1/subscription/plans",
    "/api/admin/subscription-plans",
    "/api/admin/subscription-plans/{tier}",
    "/api/admin/subscription-plans/{tier}/multiplier",
    "/api/admin/subscription-plans/{tier}/purchase-rate",
    "/api/admin/settings/exchange-rate",
    "/api/admin/statistics",
    "/api/admin/users",
    "/api/admin/users/{user_id}",
    "/api/admin/users/import",
    "/api/admin/users/{user_id}/api-tokens",
    "/api/admin/api-tokens/{token_id}",
    "/api/admin/organizations",
    "/api/admin/organizations/{org_id}",
    "/api/admin/organizations/{org_id}/users",
    "/api/admin/organizations/{org_id}/quota",
    "/api/internal/reservations",
    "/api/internal/reservations/{reservation_id}",
    "/api/internal/reservations/{reservation_id}/settle",
    "/api/internal/reservations/{reservation_id}/release",
    "/api/internal/consume",
    "/api/v1/executions/{execution_id}/retry",
    "/api/v1/executions/{execution_id}/confirm",
    "/flow/tokens",
    "/flow/tokens/{token}",
    "/flow/tokens/{token}/quota",
    "/flow/tokens/{token}/quota/logs",
    "/flow/tokens/{token}/consume",
    "/flow/verify",
    "/api/v1/admin/providers",
    "/api/v1/admin/providers/{provider_id}",
    "/api/v1/admin/providers/{provider_id}/limits/{limit_type}",
    "/api/v1/admin/providers/{provider_id}/accounts",
    "/api/v1/admin/accounts/{account_id}",
    "/api/v1/admin/accounts/{account_id}/reset",
    "/api/v1/admin/alerts",
    "/api/v1/pool/{provider_id}/acquire",
    "/api/v1/pool/accounts/{account_id}/release",
    "/api/v1/pool/{provider_id}/status",
    "/api/v1/stats/usage",
    "/api/v1/stats/pool/{provider_id}",
    "/api/v1/stats/quota/{account_id}",
    "/metrics",
];

/// A path template with its parameter names erased: `/a/{x}/b` -> `/a/{}/b`.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('{');
            }
            '}' => {
                in_param = false;
                out.push('}');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn openapi_describes_every_endpoint() {
    let ctx = Ctx::new("openapi").await;
    let resp = ctx.api.anon(Method::GET, "/openapi.json").send().await;
    let text = resp.text.clone();
    let doc = resp.expect(200);
    assert!(
        doc.is_object(),
        "/openapi.json is not a JSON object: {text}"
    );
    assert!(doc["openapi"].is_string(), "no openapi version field");
    let paths = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("no paths object in /openapi.json"));
    let shapes: Vec<String> = paths.keys().map(|k| shape(k)).collect();
    let missing: Vec<&&str> = PATHS
        .iter()
        .filter(|p| !shapes.contains(&shape(p)))
        .collect();
    assert!(
        missing.is_empty(),
        "/openapi.json lacks {missing:?}; it has {:?}",
        paths.keys().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn unknown_route_is_not_found_with_json_error() {
    let ctx = Ctx::new("unknown_route").await;
    ctx.api
        .service(Method::GET, "/api/internal/credits/nope")
        .send()
        .await
        .expect_error(404, None);
    ctx.api
        .anon(Method::GET, "/no/such/route")
        .send()
        .await
        .expect_error(404, None);
}

/// Every error body carries the request id: a seed 004 route's 422 and another route's 400 alike.
#[tokio::test]
async fn error_bodies_carry_a_request_id() {
    let ctx = Ctx::new("request_id").await;
    let seed004 = ctx
        .api
        .service(Method::POST, "/api/internal/credits/charge")
        .raw_json("{")
        .send()
        .await
        .expect_error(422, Some("invalid_json"));
    let other = ctx
        .api
        .admin(Method::POST, "/api/admin/users")
        .raw_json("{")
        .send()
        .await
        .expect_error(400, Some("invalid_json"));
    for body in [seed004, other] {
        assert!(
            body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "request_id in {body}"
        );
    }
}
