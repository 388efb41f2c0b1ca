//! The AiGateway mock (`aigateway-mock`): its router through tower's oneshot, and once over a
//! real socket with reqwest.

use std::time::Duration;

use aigateway_mock::{router, MockState};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const CRED: &str = "test-credential";
const ADMIN: &str = "/v1/chat/completions";
const FORM: &str = "application/x-www-form-urlencoded";

fn new_mock() -> (MockState, Router) {
    let state = MockState::new(CRED, ADMIN);
    let app = router(state.clone());
    (state, app)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
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

fn post_form(path: &str, auth: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("{ADMIN}{path}"))
        .header(header::CONTENT_TYPE, FORM);
    if let Some(token) = auth {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn delta(consumer: &str, value: i64) -> Request<Body> {
    post_form(
        "/quota/delta",
        Some(CRED),
        &format!("consumer={consumer}&value={value}"),
    )
}

fn get_quota(consumer: &str) -> Request<Body> {
    Request::builder()
        .uri(format!("{ADMIN}/quota?consumer={consumer}"))
        .header(header::AUTHORIZATION, format!("Bearer {CRED}"))
        .body(Body::empty())
        .unwrap()
}

fn plain(method: Method, uri: &str, json_body: Option<Value>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(uri);
    match json_body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

async fn set_fault(app: &Router, fault: Value) -> Value {
    let (status, _, body) = send(app, plain(Method::POST, "/mock/fault", Some(fault))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn quota_of(app: &Router, consumer: &str) -> i64 {
    let (status, _, body) = send(app, get_quota(consumer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["consumer"], consumer);
    body["quota"].as_i64().unwrap()
}

#[tokio::test]
async fn health_needs_no_auth() {
    let (_, app) = new_mock();
    let (status, _, body) = send(&app, plain(Method::GET, "/health", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test]
async fn missing_or_wrong_bearer_is_401() {
    let (state, app) = new_mock();
    for auth in [None, Some("wrong"), Some("")] {
        let (status, headers, body) =
            send(&app, post_form("/quota/delta", auth, "consumer=u1&value=5")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["code"], 401);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    // Other schemes are refused too.
    let request = Request::builder()
        .uri(format!("{ADMIN}/quota?consumer=u1"))
        .header(header::AUTHORIZATION, format!("Basic {CRED}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);
    let request = Request::builder()
        .uri(format!("{ADMIN}/quota?consumer=u1"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(
            &app,
            post_form("/quota/refresh", Some("nope"), "consumer=u1&quota=5")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(state.quota("u1"), 0);
    assert!(state.deltas().is_empty());
}

#[tokio::test]
async fn delta_then_get() {
    let (state, app) = new_mock();
    assert_eq!(
        quota_of(&app, "user_1").await,
        0,
        "unknown consumer reads 0"
    );
    let (status, _, body) = send(&app, delta("user_1", 100)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["code"], 200);
    assert_eq!(body["message"], "success");
    assert_eq!(body["quota"], 100);
    send(&app, delta("user_1", -30)).await;
    assert_eq!(quota_of(&app, "user_1").await, 70);
    assert_eq!(quota_of(&app, "user_2").await, 0);
    // The bearer scheme is case-insensitive, and the query string is URL-decoded.
    let request = post_form("/quota/delta", None, "consumer=a%20b%2Bc&value=%2B5");
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(
        header::AUTHORIZATION,
        format!("bearer {CRED}").parse().unwrap(),
    );
    let (status, _, body) = send(&app, Request::from_parts(parts, body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["consumer"], "a b+c");
    assert_eq!(state.quota("a b+c"), 5);
    let (_, _, body) = send(&app, get_quota("a%20b%2Bc")).await;
    assert_eq!(body, json!({"quota": 5, "consumer": "a b+c"}));
}

#[tokio::test]
async fn refresh_sets_the_quota() {
    let (_, app) = new_mock();
    send(&app, delta("u", 10)).await;
    let (status, _, body) = send(
        &app,
        post_form("/quota/refresh", Some(CRED), "consumer=u&quota=500"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["quota"], 500);
    assert_eq!(quota_of(&app, "u").await, 500);
    send(&app, delta("u", 1)).await;
    assert_eq!(quota_of(&app, "u").await, 501);
}

#[tokio::test]
async fn bad_forms_are_400() {
    let (state, app) = new_mock();
    for (path, body) in [
        ("/quota/delta", "value=5"),
        ("/quota/delta", "consumer=&value=5"),
        ("/quota/delta", "consumer=u"),
        ("/quota/delta", "consumer=u&value=abc"),
        ("/quota/delta", "consumer=u&value=1.5"),
        ("/quota/delta", "consumer=u&value=99999999999999999999"),
        ("/quota/delta", "consumer=u&consumer=v&value=1"),
        ("/quota/refresh", "consumer=u"),
        ("/quota/refresh", "quota=5"),
        ("/quota/refresh", "consumer=u&quota=x"),
    ] {
        let (status, _, json) = send(&app, post_form(path, Some(CRED), body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {json}");
        assert_eq!(json["code"], 400);
        assert!(json["message"].is_string());
    }
    let long = "x".repeat(257);
    let (status, _, _) = send(&app, delta(&long, 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(&app, delta(&"y".repeat(256), 1)).await;
    assert_eq!(status, StatusCode::OK, "256 characters are allowed");
    // Not a form at all.
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{ADMIN}/quota/delta"))
        .header(header::AUTHORIZATION, format!("Bearer {CRED}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"consumer":"u","value":1}"#))
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::BAD_REQUEST);
    // GET without consumer.
    let request = Request::builder()
        .uri(format!("{ADMIN}/quota"))
        .header(header::AUTHORIZATION, format!("Bearer {CRED}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(state.quota("u"), 0);
    assert_eq!(state.deltas().len(), 1);
}

#[tokio::test]
async fn fault_error_is_500_and_leaves_the_quota() {
    let (state, app) = new_mock();
    send(&app, delta("u", 10)).await;
    let view = set_fault(&app, json!({"mode": "error"})).await;
    assert_eq!(view["mode"], "error");
    assert_eq!(view["status"], 500);
    assert_eq!(view["remaining"], Value::Null);
    for _ in 0..3 {
        let (status, _, body) = send(&app, delta("u", 5)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], 500);
    }
    // Until changed; GET quota is faulted as well, /health and /mock/* are not.
    assert_eq!(
        send(&app, get_quota("u")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        send(&app, plain(Method::GET, "/health", None)).await.0,
        StatusCode::OK
    );
    let (_, _, fault) = send(&app, plain(Method::GET, "/mock/fault", None)).await;
    assert_eq!(fault["faulted"], 4);
    assert_eq!(state.quota("u"), 10);
    assert_eq!(state.deltas().len(), 1, "faulted deltas are not logged");
    // A 401 or a 400 does not reach the fault.
    assert_eq!(
        send(
            &app,
            post_form("/quota/delta", Some("bad"), "consumer=u&value=1")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app, post_form("/quota/delta", Some(CRED), "consumer=u"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    set_fault(&app, json!({"mode": "ok"})).await;
    assert_eq!(send(&app, delta("u", 5)).await.0, StatusCode::OK);
    assert_eq!(quota_of(&app, "u").await, 15);
}

#[tokio::test]
async fn fault_with_count_then_ok() {
    let (state, app) = new_mock();
    let view = set_fault(&app, json!({"mode": "error", "count": 2})).await;
    assert_eq!(view["remaining"], 2);
    assert_eq!(
        send(&app, delta("u", 7)).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let (_, _, fault) = send(&app, plain(Method::GET, "/mock/fault", None)).await;
    assert_eq!(fault["remaining"], 1);
    assert_eq!(
        send(&app, delta("u", 7)).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(state.quota("u"), 0);
    // The retry after the second failure is what applies it.
    assert_eq!(send(&app, delta("u", 7)).await.0, StatusCode::OK);
    assert_eq!(state.quota("u"), 7);
    let (_, _, fault) = send(&app, plain(Method::GET, "/mock/fault", None)).await;
    assert_eq!(fault["mode"], "ok");
    assert_eq!(fault["faulted"], 2);
    assert_eq!(state.deltas().len(), 1);
}

#[tokio::test]
async fn fault_status_429_has_retry_after() {
    let (state, app) = new_mock();
    set_fault(&app, json!({"mode": "status", "status": 429, "count": 1})).await;
    let (status, headers, body) = send(&app, delta("u", 3)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(body["code"], 429);
    assert_eq!(state.quota("u"), 0);
    assert_eq!(send(&app, delta("u", 3)).await.0, StatusCode::OK);
    assert_eq!(state.quota("u"), 3);

    set_fault(
        &app,
        json!({"mode": "status", "status": 503, "retry_after_s": 7}),
    )
    .await;
    let (status, headers, _) = send(&app, delta("u", 3)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "7");
    set_fault(&app, json!({"mode": "status", "status": 502})).await;
    let (status, headers, _) = send(&app, delta("u", 3)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers.get(header::RETRY_AFTER).is_none());
    assert_eq!(state.quota("u"), 3);
}

#[tokio::test]
async fn bad_fault_requests_are_400() {
    let (_, app) = new_mock();
    for body in [
        json!({"mode": "status"}),
        json!({"mode": "status", "status": 99}),
        json!({"mode": "status", "status": 600}),
        json!({"mode": "error", "count": 0}),
        json!({"mode": "explode"}),
        json!({"mode": "error", "colour": "red"}),
        json!({"mode": "stall", "stall_ms": 999_999_999u64}),
        json!({}),
    ] {
        let (status, _, json) =
            send(&app, plain(Method::POST, "/mock/fault", Some(body.clone()))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
    }
    let (_, _, fault) = send(&app, plain(Method::GET, "/mock/fault", None)).await;
    assert_eq!(fault["mode"], "ok");
}

#[tokio::test]
async fn delta_log_and_clear() {
    let (_, app) = new_mock();
    send(&app, delta("a", 1)).await;
    send(&app, delta("b", 2)).await;
    let mut keyed = delta("a", 3);
    keyed
        .headers_mut()
        .insert("idempotency-key", "exec-42".parse().unwrap());
    send(&app, keyed).await;
    let mut again = delta("a", 3);
    again
        .headers_mut()
        .insert("x-request-id", "exec-42".parse().unwrap());
    send(&app, again).await;

    let (status, _, body) = send(&app, plain(Method::GET, "/mock/deltas", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 4);
    assert_eq!(body["dropped"], 0);
    assert_eq!(body["duplicate_keys"], json!(["exec-42"]));
    let deltas = body["deltas"].as_array().unwrap();
    assert_eq!(deltas[0]["consumer"], "a");
    assert_eq!(deltas[0]["value"], 1);
    assert_eq!(deltas[0]["seq"], 1);
    assert_eq!(deltas[0]["idempotency_key"], Value::Null);
    assert!(deltas[0]["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(deltas[1]["consumer"], "b");
    assert_eq!(deltas[2]["idempotency_key"], "exec-42");
    assert_eq!(deltas[3]["quota_after"], 7);

    let (_, _, only_a) = send(&app, plain(Method::GET, "/mock/deltas?consumer=a", None)).await;
    assert_eq!(only_a["count"], 3);
    let (_, _, quotas) = send(&app, plain(Method::GET, "/mock/quotas", None)).await;
    assert_eq!(quotas["quotas"], json!({"a": 7, "b": 2}));

    let (status, _, cleared) = send(&app, plain(Method::DELETE, "/mock/deltas", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cleared["cleared"], 4);
    let (_, _, body) = send(&app, plain(Method::GET, "/mock/deltas", None)).await;
    assert_eq!(body["count"], 0);
    assert_eq!(quota_of(&app, "a").await, 0, "quotas are cleared too");
}

#[tokio::test]
async fn log_is_bounded_by_dropping_the_oldest() {
    let state = MockState::with_limits(CRED, ADMIN, 3, 2);
    let app = router(state.clone());
    for v in 1..=5 {
        assert_eq!(send(&app, delta("a", v)).await.0, StatusCode::OK);
    }
    let (_, _, body) = send(&app, plain(Method::GET, "/mock/deltas", None)).await;
    assert_eq!(body["count"], 3);
    assert_eq!(body["dropped"], 2);
    assert_eq!(body["deltas"][0]["value"], 3);
    assert_eq!(
        state.quota("a"),
        15,
        "dropping a log entry does not undo it"
    );
    // Consumer limit: a third consumer is refused with 507, known ones still work.
    assert_eq!(send(&app, delta("b", 1)).await.0, StatusCode::OK);
    let (status, _, body) = send(&app, delta("c", 1)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(state.quota("c"), 0);
    assert_eq!(send(&app, delta("b", 1)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn stalled_delta_applies_after_the_stall() {
    let (state, app) = new_mock();
    let view = set_fault(&app, json!({"mode": "stall", "stall_ms": 50, "count": 1})).await;
    assert_eq!(view["stall_ms"], 50);
    let started = std::time::Instant::now();
    let (status, _, body) = send(&app, delta("u", 9)).await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["quota"], 9);
    let deltas = state.deltas();
    assert_eq!(deltas.len(), 1);
    assert!(deltas[0].stalled);
    assert_eq!(state.fault().mode, aigateway_mock::FaultMode::Ok);

    // A client that gives up mid-stall: the gateway still applies the delta.
    set_fault(&app, json!({"mode": "stall", "stall_ms": 100})).await;
    let abandoned =
        tokio::time::timeout(Duration::from_millis(20), send(&app, delta("v", 4))).await;
    assert!(abandoned.is_err(), "the client timed out");
    assert_eq!(state.quota("v"), 0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        state.quota("v"),
        4,
        "applied although nobody waited for the answer"
    );
}

/// Over a real socket, as the relay will talk to it.
#[tokio::test]
async fn over_tcp_with_reqwest() {
    let (state, app) = new_mock();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest::Client::new();
    let health: Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    let response = client
        .post(format!("{base}{ADMIN}/quota/delta"))
        .form(&[("consumer", "user_1"), ("value", "25")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client
        .post(format!("{base}{ADMIN}/quota/delta"))
        .bearer_auth(CRED)
        .header("Idempotency-Key", "exec-1")
        .form(&[("consumer", "user_1"), ("value", "25")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let quota: Value = client
        .get(format!("{base}{ADMIN}/quota"))
        .query(&[("consumer", "user_1")])
        .bearer_auth(CRED)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(quota, json!({"quota": 25, "consumer": "user_1"}));

    // Stall past the client's timeout: the client errors, the delta lands anyway.
    let response = client
        .post(format!("{base}/mock/fault"))
        .json(&json!({"mode": "stall", "stall_ms": 300, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let timed_out = client
        .post(format!("{base}{ADMIN}/quota/delta"))
        .bearer_auth(CRED)
        .timeout(Duration::from_millis(100))
        .form(&[("consumer", "user_1"), ("value", "5")])
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(state.quota("user_1"), 30);

    let log: Value = client
        .get(format!("{base}/mock/deltas"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log["count"], 2);
    assert_eq!(log["deltas"][0]["idempotency_key"], "exec-1");
    assert_eq!(log["deltas"][1]["stalled"], true);
    server.abort();
}
