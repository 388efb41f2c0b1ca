//! The router end to end without a database: auth, body/query parsing, error bodies, request
//! ids, the OpenAPI document. The pool points at a socket directory that does not exist, so any
//! request that gets as far as SQL fails fast with 503.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use quota_sidecar::config::Config;
use quota_sidecar::{app, AppState};
use serde_json::Value;
use tower::ServiceExt;

const ADMIN: &str = "test-admin-token";
const SERVICE: &str = "test-service-token";

fn config(pairs: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = HashMap::from([(
        "QUOTA_DATABASE_URL".into(),
        "host=/nonexistent/pg_quota_test port=5 user=nobody dbname=none connect_timeout=1".into(),
    )]);
    for (k, v) in pairs {
        env.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|name| env.get(name).cloned()).unwrap()
}

fn test_app() -> Router {
    app(AppState::new(config(&[
        ("QUOTA_ADMIN_TOKEN", ADMIN),
        ("QUOTA_SERVICE_TOKEN", SERVICE),
    ]))
    .unwrap())
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, headers, body)
}

fn request(method: Method, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn service_post(uri: &str, body: &str) -> Request<Body> {
    request(
        Method::POST,
        uri,
        &[
            ("x-service-token", SERVICE),
            ("content-type", "application/json"),
        ],
        body,
    )
}

/// Seed 004's routes answer 422 for invalid input, as its FastAPI service does; the others 400.
#[tokio::test]
async fn malformed_json_is_invalid_json_with_request_id() {
    let (status, headers, body) = send(
        test_app(),
        service_post("/api/internal/credits/charge", "{\"user_id\": "),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "invalid_json");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let request_id = headers["x-request-id"].to_str().unwrap();
    assert!(!request_id.is_empty());
    assert_eq!(body["request_id"], request_id);
    // Not a seed 004 route (seed 000's strategies): 400.
    let (status, _, body) = send(
        test_app(),
        request(
            Method::POST,
            "/api/v1/strategies",
            &[
                ("x-admin-token", ADMIN),
                ("content-type", "application/json"),
            ],
            "{\"name\": ",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_json");
}

#[tokio::test]
async fn wrong_json_types_are_422_invalid_body_naming_the_field() {
    for (uri, text, field) in [
        (
            "/api/internal/credits/charge",
            r#"{"user_id":"u1","cost_usd":"0.5","operation_id":"o"}"#,
            "cost_usd",
        ),
        (
            "/api/internal/credits/charge",
            r#"{"user_id":"u1","operation_id":"o"}"#,
            "cost_usd",
        ),
        (
            "/api/internal/credits/calculate",
            r#"{"cost_usd":1,"tierr":"basic"}"#,
            "tierr",
        ),
        (
            "/api/internal/credits/add",
            r#"{"user_id":"u1","operation_id":"o","transaction_type":"bonus","credits":1.5}"#,
            "credits",
        ),
        (
            "/api/internal/credits/add",
            r#"{"user_id":"u1","operation_id":"o"}"#,
            "amount_usd",
        ),
        (
            "/api/internal/subscription/update",
            r#"{"user_id":"u1","subscription_tier":"basic","operation_id":"o"}"#,
            "credits_to_add",
        ),
    ] {
        let (status, _, body) = send(test_app(), service_post(uri, text)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {text}");
        assert_eq!(body["error"], "invalid_body", "{uri} {text}");
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{uri} {text}: {body}"
        );
    }
}

#[tokio::test]
async fn empty_body_and_non_object_are_rejected_on_admin_routes() {
    let admin = [("authorization", "Bearer test-admin-token")];
    let (status, _, body) = send(
        test_app(),
        request(Method::POST, "/api/admin/subscription-plans", &admin, ""),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_json"))
    );
    let (status, _, body) = send(
        test_app(),
        request(Method::POST, "/api/admin/subscription-plans", &admin, "[1]"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
    );
}

/// Reservations and organizations are not seed 004 routes: their invalid input is 400.
#[tokio::test]
async fn reservation_and_organization_input_errors_are_400() {
    let cases = [
        (
            "/api/internal/reservations",
            r#"{"operation_id":"o","user_id":"u1","credits":5,"hold":1}"#,
            "hold",
        ),
        (
            "/api/internal/reservations",
            r#"{"operation_id":"o","user_id":"u1","credits":"5"}"#,
            "credits",
        ),
        (
            "/api/internal/reservations/7/settle",
            r#"{"operation_id":"o"}"#,
            "actual_credits",
        ),
        (
            "/api/internal/reservations/7/release",
            r#"{"operation_id":"o","credits":1}"#,
            "credits",
        ),
        (
            "/api/internal/consume",
            r#"{"operation_id":"o","user_id":"u1","ttl_s":5}"#,
            "ttl_s",
        ),
    ];
    for (uri, text, field) in cases {
        let (status, _, body) = send(test_app(), service_post(uri, text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {text}");
        assert_eq!(body["error"], "invalid_body", "{uri} {text}");
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{uri} {text}: {body}"
        );
    }
    let (status, _, body) = send(
        test_app(),
        service_post(
            "/api/internal/reservations/x7/settle",
            r#"{"actual_credits":1,"operation_id":"o"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_path");
    let admin = [("authorization", "Bearer test-admin-token")];
    for (uri, text) in [
        ("/api/admin/organizations", r#"{"name":"no id"}"#),
        ("/api/admin/organizations", r#"{"id":"a","org_id":"a"}"#),
        ("/api/admin/organizations/acme/quota", r#"{"credits":1}"#),
        (
            "/api/admin/organizations/acme/quota",
            r#"{"credits":1,"operation_id":"o","note":"x"}"#,
        ),
    ] {
        let (status, _, body) = send(test_app(), request(Method::POST, uri, &admin, text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {text}");
        assert_eq!(body["error"], "invalid_body", "{uri} {text}");
    }
}

#[tokio::test]
async fn client_request_id_is_kept_and_echoed() {
    let req = request(
        Method::POST,
        "/api/internal/credits/charge",
        &[("x-service-token", SERVICE), ("x-request-id", "req-123")],
        "nope",
    );
    let (status, headers, body) = send(test_app(), req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers["x-request-id"], "req-123");
    assert_eq!(body["request_id"], "req-123");
}

#[tokio::test]
async fn unacceptable_request_ids_are_replaced_by_a_generated_one() {
    let too_long = "r".repeat(129);
    let longest = "r".repeat(128);
    for (sent, kept) in [
        (too_long.as_str(), false),
        ("has space", false),
        ("", false),
        (longest.as_str(), true),
        ("trace-0af7651916cd43dd", true),
    ] {
        let req = request(
            Method::POST,
            "/api/internal/credits/charge",
            &[("x-service-token", SERVICE), ("x-request-id", sent)],
            "nope",
        );
        let (status, headers, body) = send(test_app(), req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let echoed = headers["x-request-id"].to_str().unwrap();
        assert_eq!(body["request_id"], echoed, "{sent:?}");
        if kept {
            assert_eq!(echoed, sent);
        } else {
            assert_ne!(echoed, sent);
            assert_eq!(
                echoed.len(),
                36,
                "a generated UUID replaces {sent:?}: {echoed}"
            );
        }
    }
    // Two ids: neither is trusted.
    let mut req = request(Method::GET, "/api/nowhere", &[("x-request-id", "a")], "");
    req.headers_mut()
        .append("x-request-id", "b".parse().unwrap());
    let (_, headers, _) = send(test_app(), req).await;
    assert_eq!(headers.get_all("x-request-id").iter().count(), 1);
    assert_eq!(headers["x-request-id"].len(), 36);
}

/// A database that accepts connections and never answers: the request times out.
#[tokio::test]
async fn a_request_past_its_deadline_is_503_timeout_json() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let url = format!("host=127.0.0.1 port={port} user=nobody dbname=none connect_timeout=10");
    let app = app(AppState::new(config(&[
        ("QUOTA_SERVICE_TOKEN", SERVICE),
        ("QUOTA_DATABASE_URL", &url),
        ("QUOTA_REQUEST_TIMEOUT_MS", "300"),
    ]))
    .unwrap());
    let started = std::time::Instant::now();
    let (status, headers, body) = send(
        app,
        service_post(
            "/api/internal/credits/charge",
            r#"{"user_id":"u1","cost_usd":0.5,"operation_id":"op-1"}"#,
        ),
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "timeout", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("same operation_id"), "{message}");
    assert_eq!(
        body["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    drop(hole);
}

#[tokio::test]
async fn missing_credentials_are_401_and_wrong_ones_403() {
    type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        (Method::GET, "/api/internal/credits/balance/u1", &[], 401),
        (
            Method::GET,
            "/api/internal/credits/balance/u1",
            &[("x-service-token", "wrong")],
            403,
        ),
        (Method::GET, "/api/admin/subscription-plans", &[], 401),
        (
            Method::GET,
            "/api/admin/subscription-plans",
            &[("authorization", "Bearer wrong")],
            403,
        ),
        (
            Method::GET,
            "/api/admin/subscription-plans",
            &[("x-admin-token", "wrong")],
            403,
        ),
        // The service token is not an admin token.
        (
            Method::GET,
            "/api/admin/subscription-plans",
            &[("authorization", "Bearer test-service-token")],
            403,
        ),
        (Method::GET, "/api/v1/subscription", &[], 401),
        (
            Method::GET,
            "/api/v1/transactions",
            &[("authorization", "Basic dTpw")],
            401,
        ),
    ];
    for (method, uri, headers, expected) in cases {
        let (status, response_headers, body) =
            send(test_app(), request(method.clone(), uri, headers, "")).await;
        assert_eq!(
            status.as_u16(),
            *expected,
            "{method} {uri} {headers:?}: {body}"
        );
        let code = if *expected == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        assert_eq!(body["error"], code);
        assert!(!body.to_string().contains(ADMIN) && !body.to_string().contains(SERVICE));
        if *expected == 401 {
            assert_eq!(response_headers["www-authenticate"], "Bearer");
        }
    }
}

#[tokio::test]
async fn auth_is_checked_before_the_body() {
    let req = request(
        Method::POST,
        "/api/internal/credits/charge",
        &[],
        "{not json",
    );
    let (status, _, _) = send(test_app(), req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unconfigured_tokens_disable_their_api_with_403() {
    let app = app(AppState::new(config(&[])).unwrap());
    let (status, _, body) = send(
        app.clone(),
        request(
            Method::GET,
            "/api/admin/statistics",
            &[("x-admin-token", "x")],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["message"].as_str().unwrap().contains("not configured"),
        "{body}"
    );
    let (status, _, _) = send(
        app,
        request(Method::GET, "/api/internal/credits/balance/u1", &[], ""),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_query_parameters_are_invalid_query() {
    let service = [("x-service-token", SERVICE)];
    let admin = [("x-admin-token", ADMIN)];
    for (method, uri, headers) in [
        (
            Method::GET,
            "/api/internal/credits/check/u1?required_credits=lots",
            &service,
        ),
        (
            Method::GET,
            "/api/internal/credits/check/u1?required_credits=1.5",
            &service,
        ),
        (
            Method::GET,
            "/api/admin/subscription-plans?active_only=maybe",
            &admin,
        ),
        (
            Method::PATCH,
            "/api/admin/subscription-plans/basic/multiplier",
            &admin,
        ),
        (
            Method::PATCH,
            "/api/admin/subscription-plans/basic/multiplier?multiplier=x",
            &admin,
        ),
        (
            Method::PATCH,
            "/api/admin/settings/exchange-rate?base_rate=1.5",
            &admin,
        ),
        (Method::PATCH, "/api/admin/settings/exchange-rate", &admin),
        (Method::GET, "/api/admin/users?limit=ten", &admin),
    ] {
        let (status, _, body) = send(test_app(), request(method.clone(), uri, headers, "")).await;
        // 422 on seed 004's routes, 400 on the admin user API.
        let expected = if uri.starts_with("/api/admin/users") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_eq!(status, expected, "{method} {uri}: {body}");
        assert_eq!(body["error"], "invalid_query", "{method} {uri}");
    }
}

#[tokio::test]
async fn bad_path_parameter_is_400_invalid_path() {
    let req = request(
        Method::DELETE,
        "/api/admin/api-tokens/abc",
        &[("x-admin-token", ADMIN)],
        "",
    );
    let (status, _, body) = send(test_app(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_path");
}

#[tokio::test]
async fn exchange_rate_body_must_hold_an_integer() {
    let req = request(
        Method::PATCH,
        "/api/admin/settings/exchange-rate",
        &[("x-admin-token", ADMIN)],
        r#"{"base_rate": 1.5}"#,
    );
    let (status, _, body) = send(test_app(), req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "invalid_body");
}

#[tokio::test]
async fn unknown_route_and_method_get_json_errors() {
    let (status, _, body) = send(test_app(), request(Method::GET, "/api/nowhere", &[], "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    let (status, _, body) = send(
        test_app(),
        request(Method::DELETE, "/api/internal/credits/charge", &[], ""),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
}

#[tokio::test]
async fn unreachable_database_is_503_without_internal_details() {
    let body_text = r#"{"user_id":"u1","cost_usd":0.5,"operation_id":"op-1"}"#;
    let (status, _, body) = send(
        test_app(),
        service_post("/api/internal/credits/charge", body_text),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "database_unavailable");
    assert!(!body.to_string().contains("nonexistent"), "{body}");

    let (status, _, body) = send(test_app(), request(Method::GET, "/health", &[], "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["database"], "error");
    assert_eq!(body["extension"], Value::Null);
}

/// SPEC section 2 and the contract's extra endpoints, as a client would call them.
const CONTRACT_ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/api/internal/credits/check/{user_id}"),
    ("post", "/api/internal/credits/calculate"),
    ("post", "/api/internal/credits/charge"),
    ("post", "/api/internal/credits/add"),
    ("post", "/api/internal/payments"),
    ("get", "/api/internal/credits/balance/{user_id}"),
    ("post", "/api/internal/subscription/update"),
    ("get", "/api/v1/subscription"),
    ("get", "/api/v1/transactions"),
    ("post", "/api/v1/credits/purchase"),
    ("get", "/api/v1/subscription/plans"),
    ("post", "/api/admin/subscription-plans"),
    ("put", "/api/admin/subscription-plans/{tier}"),
    ("delete", "/api/admin/subscription-plans/{tier}"),
    ("get", "/api/admin/subscription-plans"),
    ("patch", "/api/admin/subscription-plans/{tier}/multiplier"),
    (
        "patch",
        "/api/admin/subscription-plans/{tier}/purchase-rate",
    ),
    ("patch", "/api/admin/settings/exchange-rate"),
    ("get", "/api/admin/statistics"),
    ("get", "/health"),
    ("get", "/openapi.json"),
    ("post", "/api/admin/users"),
    ("get", "/api/admin/users"),
    ("get", "/api/admin/users/{user_id}"),
    ("put", "/api/admin/users/{user_id}"),
    ("delete", "/api/admin/users/{user_id}"),
    ("post", "/api/admin/users/import"),
    ("post", "/api/admin/users/{user_id}/api-tokens"),
    ("delete", "/api/admin/api-tokens/{token_id}"),
    // Organizations and reservations (issue 11, seed 003).
    ("post", "/api/admin/organizations"),
    ("get", "/api/admin/organizations"),
    ("get", "/api/admin/organizations/{org_id}"),
    ("put", "/api/admin/organizations/{org_id}"),
    ("delete", "/api/admin/organizations/{org_id}"),
    ("get", "/api/admin/organizations/{org_id}/users"),
    ("post", "/api/admin/organizations/{org_id}/quota"),
    ("post", "/api/internal/reservations"),
    ("get", "/api/internal/reservations/{reservation_id}"),
    ("post", "/api/internal/reservations/{reservation_id}/settle"),
    (
        "post",
        "/api/internal/reservations/{reservation_id}/release",
    ),
    ("post", "/api/internal/consume"),
    // Access tokens (issue 12, seed 001) at the seed's paths.
    ("post", "/flow/tokens"),
    ("get", "/flow/tokens"),
    ("put", "/flow/tokens/{token}"),
    ("delete", "/flow/tokens/{token}"),
    ("get", "/flow/tokens/{token}/quota"),
    ("get", "/flow/tokens/{token}/quota/logs"),
    ("post", "/flow/tokens/{token}/consume"),
    ("post", "/flow/verify"),
    // Recharge strategies (SPEC 6.6).
    ("post", "/api/v1/strategies"),
    ("get", "/api/v1/strategies"),
    ("post", "/api/v1/strategies/scan"),
    ("get", "/api/v1/strategies/{id}"),
    ("put", "/api/v1/strategies/{id}"),
    ("delete", "/api/v1/strategies/{id}"),
    ("post", "/api/v1/strategies/{id}/enable"),
    ("post", "/api/v1/strategies/{id}/disable"),
    ("get", "/api/v1/strategies/{id}/executions"),
    ("post", "/api/v1/conditions/preview"),
    ("post", "/api/v1/executions/{id}/retry"),
    ("post", "/api/v1/executions/{id}/confirm"),
    // Provider account pools (issue 13, seed 002, SPEC 5).
    ("post", "/api/v1/admin/providers"),
    ("get", "/api/v1/admin/providers"),
    ("get", "/api/v1/admin/providers/{provider_id}"),
    ("put", "/api/v1/admin/providers/{provider_id}"),
    ("delete", "/api/v1/admin/providers/{provider_id}"),
    (
        "put",
        "/api/v1/admin/providers/{provider_id}/limits/{limit_type}",
    ),
    (
        "delete",
        "/api/v1/admin/providers/{provider_id}/limits/{limit_type}",
    ),
    ("post", "/api/v1/admin/providers/{provider_id}/accounts"),
    ("get", "/api/v1/admin/providers/{provider_id}/accounts"),
    ("get", "/api/v1/admin/accounts/{account_id}"),
    ("put", "/api/v1/admin/accounts/{account_id}"),
    ("delete", "/api/v1/admin/accounts/{account_id}"),
    ("post", "/api/v1/admin/accounts/{account_id}/reset"),
    ("get", "/api/v1/admin/alerts"),
    ("post", "/api/v1/pool/{provider_id}/acquire"),
    ("post", "/api/v1/pool/accounts/{account_id}/release"),
    ("get", "/api/v1/pool/{provider_id}/status"),
    ("get", "/api/v1/stats/usage"),
    ("get", "/api/v1/stats/pool/{provider_id}"),
    ("get", "/api/v1/stats/quota/{account_id}"),
    ("get", "/metrics"),
];

/// Open endpoints (SPEC 1.5); every other one needs a credential.
const OPEN_ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/openapi.json"),
    ("get", "/api/v1/subscription/plans"),
];

/// Open unless configured otherwise: `/metrics` (QUOTA_METRICS_TOKEN); its security lists the
/// empty requirement beside the bearer.
const OPTIONAL_CREDENTIAL: &[(&str, &str)] = &[("get", "/metrics")];

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

/// Every (method, path) of the served document.
async fn documented_operations() -> (Value, Vec<(String, String)>) {
    let (status, _, document) =
        send(test_app(), request(Method::GET, "/openapi.json", &[], "")).await;
    assert_eq!(status, StatusCode::OK);
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.clone(), path.clone()));
        }
    }
    (document, operations)
}

#[tokio::test]
async fn openapi_document_covers_every_route_and_the_contract() {
    let (document, operations) = documented_operations().await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    for scheme in ["adminBearer", "adminToken", "serviceToken", "userBearer"] {
        assert!(
            document["components"]["securitySchemes"][scheme].is_object(),
            "security scheme {scheme}"
        );
    }
    for (method, path) in &operations {
        let operation = &document["paths"][path][method];
        for param in path_params(path) {
            let declared = operation["parameters"]
                .as_array()
                .is_some_and(|all| all.iter().any(|p| p["name"] == param && p["in"] == "path"));
            assert!(declared, "{method} {path} lacks path parameter {param}");
        }
        let open = OPEN_ENDPOINTS.contains(&(method.as_str(), path.as_str()));
        let optional = OPTIONAL_CREDENTIAL.contains(&(method.as_str(), path.as_str()));
        let security = operation["security"].as_array().map_or(0, Vec::len);
        assert_eq!(
            security == 0,
            open,
            "{method} {path}: security {}",
            operation["security"]
        );
        if optional {
            assert!(
                operation["security"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|r| r == &serde_json::json!({}))),
                "{method} {path}: the credential should be optional: {}",
                operation["security"]
            );
        }
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{method} {path}: no success response"
        );
        if !open {
            for status in ["401", "403"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: no {status}"
                );
            }
        }
        if path.starts_with("/api/") {
            for status in ["400", "404", "409", "500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: no {status}"
                );
            }
            assert!(operation["x-sql"].is_array(), "{method} {path}: no x-sql");
        }
    }
    for (method, path) in CONTRACT_ENDPOINTS {
        assert!(
            document["paths"][*path][*method].is_object(),
            "contract endpoint {method} {path} not documented"
        );
    }
    assert_eq!(
        operations.len(),
        CONTRACT_ENDPOINTS.len(),
        "documented {operations:?}"
    );
    // Request bodies come from the handlers' types.
    let charge = &document["paths"]["/api/internal/credits/charge"]["post"]["requestBody"];
    let schema = charge["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("charge body schema: {charge}"));
    let name = schema.rsplit('/').next().unwrap();
    let body = &document["components"]["schemas"][name];
    let required: Vec<&str> = body["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["user_id", "cost_usd", "operation_id"], "{body}");
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
}

/// Every documented operation is really mounted: a request to it never reaches the fallback,
/// and one without a credential is 401 unless the endpoint is open.
#[tokio::test]
async fn every_documented_operation_is_mounted() {
    let (_, operations) = documented_operations().await;
    for (method, path) in operations {
        if path == "/health" || path == "/metrics" {
            continue; // /health needs the database to answer 200; /metrics is text (below)
        }
        let uri = path
            .replace("{user_id}", "u1")
            .replace("{tier}", "basic")
            .replace("{token_id}", "7")
            .replace("{org_id}", "acme")
            .replace("{reservation_id}", "7")
            .replace("{token}", "flow_0123")
            .replace("{id}", "7")
            .replace("{provider_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{account_id}", "00000000-0000-0000-0000-000000000002")
            .replace("{limit_type}", "rpm");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, _, body) = send(test_app(), request(method.clone(), &uri, &[], "")).await;
        assert_ne!(body["error"], "not_found", "{method} {uri} is not mounted");
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        let open = OPEN_ENDPOINTS
            .iter()
            .chain(OPTIONAL_CREDENTIAL)
            .any(|(m, p)| m.eq_ignore_ascii_case(method.as_str()) && *p == path);
        assert_eq!(
            status == StatusCode::UNAUTHORIZED,
            !open,
            "{method} {uri}: {status}"
        );
    }
}

#[tokio::test]
async fn oversized_body_is_413_but_import_takes_more() {
    let big = format!(
        r#"{{"user_id":"u1","cost_usd":0.5,"operation_id":"o","description":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, _, body) = send(
        test_app(),
        service_post("/api/internal/credits/charge", &big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "payload_too_large");

    // Past the body limit the import reaches the database (503 here), proving the larger limit.
    let users = format!(
        r#"[{{"id":"u1","name":"{}"}}]"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let req = request(
        Method::POST,
        "/api/admin/users/import",
        &[("x-admin-token", ADMIN)],
        &users,
    );
    let (status, _, _) = send(test_app(), req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn missing_query_parameter_message_names_it() {
    let req = request(
        Method::PATCH,
        "/api/admin/subscription-plans/basic/multiplier",
        &[("x-admin-token", ADMIN)],
        "",
    );
    let (_, _, body) = send(test_app(), req).await;
    assert!(
        body["message"].as_str().unwrap().contains("multiplier"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Access tokens (seed 001): the envelope of the admin API, the token checks.

const FLOW_TOKEN: &str = "flow_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The admin token API answers its errors in seed 001's envelope, with the usual fields.
#[tokio::test]
async fn flow_admin_errors_come_in_the_envelope() {
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            request(Method::POST, "/flow/tokens", &[], "{}"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            request(
                Method::GET,
                "/flow/tokens",
                &[("authorization", "Bearer wrong")],
                "",
            ),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            request(
                Method::POST,
                "/flow/tokens",
                &[("x-admin-token", ADMIN)],
                "{\"ws_id\": ",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            request(
                Method::PUT,
                &format!("/flow/tokens/{FLOW_TOKEN}"),
                &[("x-admin-token", ADMIN)],
                "[1]",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            request(
                Method::GET,
                &format!("/flow/tokens/{FLOW_TOKEN}/quota/logs?page=x"),
                &[("x-admin-token", ADMIN)],
                "",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        // Past validation the database is unreachable here: still the envelope.
        (
            request(
                Method::DELETE,
                &format!("/flow/tokens/{FLOW_TOKEN}"),
                &[("x-admin-token", ADMIN)],
                "",
            ),
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        ),
    ];
    for (req, status, error) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, headers, body) = send(test_app(), req).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["success"], false, "{what}: {body}");
        assert!(
            body.get("data").is_some_and(Value::is_null),
            "{what}: {body}"
        );
        assert_eq!(body["error"], error, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap(),
            "{what}"
        );
    }
    // Other routes keep their plain error body.
    let (_, _, body) = send(
        test_app(),
        request(Method::GET, "/api/admin/users", &[], ""),
    )
    .await;
    assert!(body.get("success").is_none(), "{body}");
}

/// /flow/verify takes the token itself as bearer; without one that can be a token it answers 401
/// unknown_token without asking the database (which is unreachable here: a 503 would show it
/// was asked).
#[tokio::test]
async fn verify_without_a_token_is_401_unknown_token_without_sql() {
    for headers in [
        vec![],
        vec![("authorization", "Bearer test-admin-token")],
        vec![("authorization", "Basic Zmxvd186eA==")],
        vec![("x-admin-token", ADMIN)],
        vec![("x-service-token", SERVICE)],
        vec![("authorization", "Bearer FLOW_00")],
    ] {
        let (status, response_headers, body) = send(
            test_app(),
            request(Method::POST, "/flow/verify", &headers, "{\"units\": 0}"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}: {body}");
        assert_eq!(body["valid"], false, "{headers:?}: {body}");
        assert_eq!(body["error"], "unknown_token", "{headers:?}: {body}");
        assert!(
            response_headers.contains_key("www-authenticate"),
            "{headers:?}"
        );
        assert!(
            !response_headers.contains_key("ratelimit-limit"),
            "{headers:?}"
        );
    }
    let long = format!("Bearer flow_{}", "a".repeat(600));
    let (status, _, body) = send(
        test_app(),
        request(
            Method::POST,
            "/flow/verify",
            &[("authorization", &long)],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// A bearer that may be a token reaches SQL (503 here), with or without a body; a bad body is
/// 400 with `valid: false`.
#[tokio::test]
async fn verify_with_a_candidate_token_asks_sql() {
    let bearer = format!("Bearer {FLOW_TOKEN}");
    for body in ["", "{}", "{\"units\": 2, \"request_id\": \"r-1\"}"] {
        let (status, _, answer) = send(
            test_app(),
            request(
                Method::POST,
                "/flow/verify",
                &[("authorization", &bearer)],
                body,
            ),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{body:?}: {answer}"
        );
        assert_eq!(answer["valid"], false, "{answer}");
    }
    for (body, error) in [
        ("{\"units\": 1.5}", "invalid_body"),
        ("{\"unit\": 1}", "invalid_body"),
        ("{\"units\": ", "invalid_json"),
    ] {
        let (status, _, answer) = send(
            test_app(),
            request(
                Method::POST,
                "/flow/verify",
                &[("authorization", &bearer)],
                body,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["valid"], false, "{answer}");
        assert_eq!(answer["error"], error, "{answer}");
    }
}

/// Consume on a caller's behalf takes the admin or the service token.
#[tokio::test]
async fn consume_takes_admin_or_service_credentials() {
    let uri = format!("/flow/tokens/{FLOW_TOKEN}/consume");
    let admin_bearer = format!("Bearer {ADMIN}");
    for (headers, status) in [
        (vec![], StatusCode::UNAUTHORIZED),
        (vec![("x-service-token", "nope")], StatusCode::FORBIDDEN),
        (
            vec![("authorization", "Bearer nope")],
            StatusCode::FORBIDDEN,
        ),
        (
            vec![("x-service-token", SERVICE)],
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            vec![("x-admin-token", ADMIN)],
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            vec![("authorization", admin_bearer.as_str())],
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        let (got, _, body) = send(test_app(), request(Method::POST, &uri, &headers, "")).await;
        assert_eq!(got, status, "{headers:?}: {body}");
        assert_eq!(body["valid"], false, "{headers:?}: {body}");
    }
    // Auth before the body.
    let (got, _, _) = send(test_app(), request(Method::POST, &uri, &[], "{")).await;
    assert_eq!(got, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn flow_operations_are_documented_with_their_shapes() {
    let (document, _) = documented_operations().await;
    let create = &document["paths"]["/flow/tokens"]["post"];
    assert_eq!(create["tags"][0], "tokens");
    assert!(create["x-sql"][0]
        .as_str()
        .unwrap()
        .contains("quota.create_token"));
    // Shared errors of the envelope routes use the envelope's schema.
    let conflict = create["responses"]["409"]["$ref"].as_str().unwrap();
    assert!(conflict.ends_with("FlowError409"), "{conflict}");
    assert!(document["components"]["schemas"]["FlowErrorBody"].is_object());
    let verify = &document["paths"]["/flow/verify"]["post"];
    assert_eq!(
        verify["security"][0],
        serde_json::json!({"accessToken": []})
    );
    for status in ["200", "400", "401", "403", "429"] {
        assert!(verify["responses"][status].is_object(), "verify {status}");
    }
    assert!(document["components"]["securitySchemes"]["accessToken"].is_object());
}

// ---------------------------------------------------------------------------------------------
// GET /metrics (issue 13): open or behind QUOTA_METRICS_TOKEN; route templates, never raw paths.

async fn scrape(app: Router, headers: &[(&str, &str)]) -> (StatusCode, String, String) {
    let response = app
        .oneshot(request(Method::GET, "/metrics", headers, ""))
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_errors_by_code() {
    let app = test_app();
    // A pool status without a credential: 401 unauthorized, on its route template.
    let id = "00000000-0000-0000-0000-00000000abcd";
    let (status, _, body) = send(
        app.clone(),
        request(Method::GET, &format!("/api/v1/pool/{id}/status"), &[], ""),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    // A malformed acquire body: 400 invalid_body.
    let (status, _, body) = send(
        app.clone(),
        service_post(
            &format!("/api/v1/pool/{id}/acquire"),
            r#"{"tokens_needed":"x"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_body");
    // No route.
    let (status, _, _) = send(app.clone(), request(Method::GET, "/nowhere/123", &[], "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, content_type, text) = scrape(app.clone(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    // No database here: the sidecar's own metrics are still served.
    assert!(text.contains("quota_database_up 0"), "{text}");
    assert!(
        text.contains(
            "http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/pool/{provider_id}/status\",status=\"401\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/pool/{provider_id}/acquire\",status=\"400\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"unmatched\",status=\"404\""),
        "{text}"
    );
    assert!(
        !text.contains(id) && !text.contains("nowhere"),
        "raw paths leaked: {text}"
    );
    assert!(
        text.contains("quota_refusals_total{error=\"unauthorized\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("quota_refusals_total{error=\"invalid_body\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("quota_refusals_total{error=\"not_found\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_token_when_configured() {
    let app = app(AppState::new(config(&[("QUOTA_METRICS_TOKEN", "scrape-me")])).unwrap());
    let (status, _, _) = scrape(app.clone(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = scrape(app.clone(), &[("authorization", "Bearer nope")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, text) = scrape(app.clone(), &[("authorization", "Bearer scrape-me")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("quota_refusals_total{error=\"forbidden\"} 1"),
        "{text}"
    );
    assert!(!text.contains("scrape-me"));
}

/// Acquire refusals are SPEC 5's exact bodies; unknown fields and wrong types are 400 before SQL.
#[tokio::test]
async fn pool_bodies_are_checked_before_sql() {
    let id = "00000000-0000-0000-0000-000000000001";
    for (uri, body) in [
        (
            format!("/api/v1/pool/{id}/acquire"),
            r#"{"tokens_needed":1,"bogus":1}"#,
        ),
        (
            format!("/api/v1/pool/{id}/acquire"),
            r#"{"tokens_needed":"1"}"#,
        ),
        (
            format!("/api/v1/pool/accounts/{id}/release"),
            r#"{"lease_id":"x","input_tokens":-1.5}"#,
        ),
        (
            format!("/api/v1/pool/accounts/{id}/release"),
            r#"{"input_tokens":1}"#,
        ),
    ] {
        let (status, _, answer) = send(test_app(), service_post(&uri, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {answer}");
        assert_eq!(answer["error"], "invalid_body", "{uri} {body}: {answer}");
    }
    let (status, _, answer) = send(
        test_app(),
        service_post(&format!("/api/v1/pool/{id}/acquire"), "{"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "invalid_json");
    // Bad dates are 400 naming the parameter, before any SQL.
    let (status, _, answer) = send(
        test_app(),
        request(
            Method::GET,
            "/api/v1/stats/usage?from=yesterday",
            &[("x-service-token", SERVICE)],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_query");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("from must be"),
        "{answer}"
    );
    // A user token reaching the database: 503 here (no database), proving it is not refused
    // as a credential before.
    let (status, _, _) = send(
        test_app(),
        request(
            Method::GET,
            "/api/v1/stats/usage",
            &[("authorization", "Bearer pq_not_checked_here")],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
