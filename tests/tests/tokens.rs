//! Access tokens over HTTP (issue 12, seed 001, SPEC 4): the seed's three scenarios and its
//! conversion matrix with the exact quota_type / total / remaining / expires_at each gives, the
//! quota operations, rate-limit fields left out or null, validation in the seed's envelope,
//! deactivation and expiry, consumption with request_id replays, the quota logs, the list, and
//! the RateLimit headers.

use std::time::{Duration, Instant};

use pg_quota_e2e::*;

/// The four fields the seed's document shows for each state.
fn quota_of(token: &Value) -> Value {
    json!({
        "quota_type": token["quota_type"],
        "total_quota": token["total_quota"],
        "remaining_quota": token["remaining_quota"],
        "expires_at": token["expires_at"],
    })
}

fn expected(
    quota_type: &str,
    total: Option<i64>,
    remaining: Option<i64>,
    expires_at: Option<&str>,
) -> Value {
    json!({
        "quota_type": quota_type,
        "total_quota": total,
        "remaining_quota": remaining,
        "expires_at": expires_at,
    })
}

fn token_of(data: &Value) -> String {
    data["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("access_token in {data}"))
        .to_string()
}

/// Consumes `units` through /flow/verify (200); returns the body.
async fn spend(ctx: &Ctx, token: &str, units: i64) -> Value {
    ctx.flow_verify(token, Some(json!({ "units": units })))
        .await
        .expect_valid()
        .clone()
}

/// Asserts the quota endpoint and the update answer agree on the four fields.
/// Updates the token with `body`; both the answer and the stored quota show `want`.
async fn converted(ctx: &Ctx, token: &str, body: Value, want: &Value) {
    let updated = ctx.flow_updated(token, body).await;
    assert_eq!(&quota_of(&updated), want, "{updated}");
    assert_quota(ctx, token, want).await;
}

async fn assert_quota(ctx: &Ctx, token: &str, want: &Value) {
    let quota = ctx.flow_quota(token).await;
    assert_eq!(&quota_of(&quota), want, "GET quota: {quota}");
    let total = quota["total_quota"].as_i64();
    let remaining = quota["remaining_quota"].as_i64();
    let consumed = total.map(|t| (t - remaining.unwrap_or(0)).max(0));
    assert_eq!(
        quota["consumed_quota"],
        json!(consumed),
        "consumed_quota: {quota}"
    );
}

// ---------------------------------------------------------------------------------------------
// The seed's scenarios

/// Scenario 1: a count token (1000 total, 500 left, no expiry) becomes a time token: the counts
/// are kept (no longer checked) and the expiry is set.
#[tokio::test]
async fn seed_scenario_1_count_to_time() {
    let ctx = Ctx::new("tok_scenario1").await;
    let data = ctx
        .flow_token(json!({"quota_type": "count", "total_quota": 1000}))
        .await;
    let token = token_of(&data);
    assert_eq!(
        quota_of(&data),
        expected("count", Some(1000), Some(1000), None)
    );
    let spent = spend(&ctx, &token, 500).await;
    assert_eq!(spent["remaining"], 500, "{spent}");
    assert_quota(
        &ctx,
        &token,
        &expected("count", Some(1000), Some(500), None),
    )
    .await;

    let updated = ctx
        .flow_updated(
            &token,
            json!({"operation": "set", "quota_type": "time", "specific_date": "2025-12-31 23:59:59"}),
        )
        .await;
    let want = expected("time", Some(1000), Some(500), Some("2025-12-31 23:59:59"));
    assert_eq!(quota_of(&updated), want, "{updated}");
    assert_eq!(updated["operation"], "set");
    assert_quota(&ctx, &token, &want).await;
    let quota = ctx.flow_quota(&token).await;
    assert!(
        quota["message"]
            .as_str()
            .is_some_and(|m| m.contains("time")),
        "a time token's quota says no count applies: {quota}"
    );
    // The seed's date is past (today is later): a time token past its expiry is refused.
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(403, "expired");
}

/// Scenario 2: a time token becomes a count token with `quota_operation: set` 1000 and
/// `operation: unlimited` (no expiry).
#[tokio::test]
async fn seed_scenario_2_time_to_count() {
    let ctx = Ctx::new("tok_scenario2").await;
    // A create refuses a past date; an update may set one (the seed's dates are past now).
    let refused = ctx
        .flow_create(&json!({"ws_id": ctx.id("ws"), "email": "a@example.com",
                             "operation": "set", "specific_date": "2025-12-31 23:59:59"}))
        .await;
    expect_envelope_error(refused, 400, Some("invalid_parameter"));
    let data = ctx
        .flow_token(json!({"operation": "set", "specific_date": D1}))
        .await;
    let token = token_of(&data);
    let data = ctx
        .flow_updated(
            &token,
            json!({"operation": "set", "specific_date": "2025-12-31 23:59:59"}),
        )
        .await;
    assert_eq!(
        quota_of(&data),
        expected("time", None, None, Some("2025-12-31 23:59:59")),
        "{data}"
    );
    let updated = ctx
        .flow_updated(
            &token,
            json!({"operation": "unlimited", "quota_type": "count", "quota_operation": "set", "quota_amount": 1000}),
        )
        .await;
    let want = expected("count", Some(1000), Some(1000), None);
    assert_eq!(quota_of(&updated), want, "{updated}");
    assert_eq!(updated["operation"], "unlimited");
    assert_quota(&ctx, &token, &want).await;
    // A count token ignores time: usable again, and counted.
    let body = spend(&ctx, &token, 1).await;
    assert_eq!(body["remaining"], 999, "{body}");
}

/// Scenario 3: a count token (5000, 3000 left) becomes hybrid with an expiry; its counts are kept.
#[tokio::test]
async fn seed_scenario_3_count_to_hybrid() {
    let ctx = Ctx::new("tok_scenario3").await;
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 5000}))
            .await,
    );
    spend(&ctx, &token, 2000).await;
    let want = expected(
        "hybrid",
        Some(5000),
        Some(3000),
        Some("2025-06-30 23:59:59"),
    );
    converted(
        &ctx,
        &token,
        json!({"operation": "set", "quota_type": "hybrid", "specific_date": "2025-06-30 23:59:59"}),
        &want,
    )
    .await;
    // Hybrid checks both: the date is past.
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(403, "expired");
}

/// The seed's test script: count 1000 -> time -> count with quota_operation set 500.
#[tokio::test]
async fn seed_test_script() {
    let ctx = Ctx::new("tok_script").await;
    let data = ctx
        .flow_token(json!({
            "ws_id": ctx.id("test_workspace"), "email": "test@example.com",
            "operation": "unlimited", "quota_type": "count", "total_quota": 1000
        }))
        .await;
    let token = token_of(&data);
    assert_quota(
        &ctx,
        &token,
        &expected("count", Some(1000), Some(1000), None),
    )
    .await;
    ctx.flow_updated(
        &token,
        json!({"operation": "set", "quota_type": "time", "specific_date": "2025-12-31 23:59:59"}),
    )
    .await;
    assert_quota(
        &ctx,
        &token,
        &expected("time", Some(1000), Some(1000), Some("2025-12-31 23:59:59")),
    )
    .await;
    ctx.flow_updated(
        &token,
        json!({"operation": "unlimited", "quota_type": "count", "quota_operation": "set", "quota_amount": 500}),
    )
    .await;
    // set: remaining = 500; the total (1000, not null) is kept.
    assert_quota(
        &ctx,
        &token,
        &expected("count", Some(1000), Some(500), None),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The conversion matrix

const D1: &str = "2031-01-15 10:00:00";
const D2: &str = "2032-06-30 23:59:59";

/// A time token expiring at D1 (no counts).
async fn time_token(ctx: &Ctx) -> String {
    let data = ctx
        .flow_token(json!({"operation": "set", "specific_date": D1}))
        .await;
    assert_eq!(
        quota_of(&data),
        expected("time", None, None, Some(D1)),
        "{data}"
    );
    token_of(&data)
}

/// A count token with 100, 70 left, no expiry.
async fn count_token(ctx: &Ctx) -> String {
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 100}))
            .await,
    );
    spend(ctx, &token, 30).await;
    assert_quota(ctx, &token, &expected("count", Some(100), Some(70), None)).await;
    token
}

/// A hybrid token with 100, 70 left, expiring at D1.
async fn hybrid_token(ctx: &Ctx) -> String {
    let token = token_of(
        &ctx.flow_token(json!({
            "operation": "set", "specific_date": D1, "quota_type": "hybrid", "total_quota": 100
        }))
        .await,
    );
    spend(ctx, &token, 30).await;
    assert_quota(
        ctx,
        &token,
        &expected("hybrid", Some(100), Some(70), Some(D1)),
    )
    .await;
    token
}

#[tokio::test]
async fn matrix_time_to_count_needs_a_quota() {
    let ctx = Ctx::new("tok_time_count").await;
    let token = time_token(&ctx).await;
    // No quota at all: 400, nothing changed.
    let refused = ctx
        .flow_update(
            &token,
            &json!({"operation": "unlimited", "quota_type": "count"}),
        )
        .await;
    expect_envelope_error(refused, 400, None);
    assert_quota(&ctx, &token, &expected("time", None, None, Some(D1))).await;

    let want = expected("count", Some(40), Some(40), None);
    converted(&ctx, &token, json!({"operation": "unlimited", "quota_type": "count", "quota_operation": "set", "quota_amount": 40}), &want).await;
    assert_eq!(spend(&ctx, &token, 1).await["remaining"], 39);
}

#[tokio::test]
async fn matrix_time_to_hybrid_keeps_the_time_and_sets_a_quota() {
    let ctx = Ctx::new("tok_time_hybrid").await;
    let token = time_token(&ctx).await;
    let refused = ctx
        .flow_update(
            &token,
            &json!({"operation": "set", "quota_type": "hybrid", "specific_date": D1}),
        )
        .await;
    expect_envelope_error(refused, 400, None);
    assert_quota(&ctx, &token, &expected("time", None, None, Some(D1))).await;

    let want = expected("hybrid", Some(40), Some(40), Some(D1));
    converted(
        &ctx,
        &token,
        json!({"operation": "set", "quota_type": "hybrid", "specific_date": D1,
                   "quota_operation": "set", "quota_amount": 40}),
        &want,
    )
    .await;
    assert_eq!(spend(&ctx, &token, 2).await["remaining"], 38);
}

#[tokio::test]
async fn matrix_count_to_time_sets_the_time_and_keeps_the_counts() {
    let ctx = Ctx::new("tok_count_time").await;
    let token = count_token(&ctx).await;
    let want = expected("time", Some(100), Some(70), Some(D2));
    converted(
        &ctx,
        &token,
        json!({"operation": "set", "quota_type": "time", "specific_date": D2}),
        &want,
    )
    .await;
    // A time token is not counted.
    let body = ctx.flow_verify(&token, Some(json!({"units": 500}))).await;
    body.expect_valid();
    assert_quota(&ctx, &token, &want).await;
}

#[tokio::test]
async fn matrix_count_to_hybrid_keeps_the_counts_and_sets_the_time() {
    let ctx = Ctx::new("tok_count_hybrid").await;
    let token = count_token(&ctx).await;
    // operation set and no quota_operation: the existing quota is kept (SPEC 4).
    let want = expected("hybrid", Some(100), Some(70), Some(D2));
    converted(
        &ctx,
        &token,
        json!({"operation": "set", "quota_type": "hybrid", "specific_date": D2}),
        &want,
    )
    .await;
    assert_eq!(spend(&ctx, &token, 5).await["remaining"], 65);
}

#[tokio::test]
async fn matrix_hybrid_to_time_keeps_the_time() {
    let ctx = Ctx::new("tok_hybrid_time").await;
    let token = hybrid_token(&ctx).await;
    let want = expected("time", Some(100), Some(70), Some(D1));
    converted(
        &ctx,
        &token,
        json!({"operation": "set", "quota_type": "time", "specific_date": D1}),
        &want,
    )
    .await;
    ctx.flow_verify(&token, Some(json!({"units": 1000})))
        .await
        .expect_valid();
    assert_quota(&ctx, &token, &want).await;
}

#[tokio::test]
async fn matrix_hybrid_to_count_keeps_the_counts_and_drops_the_time() {
    let ctx = Ctx::new("tok_hybrid_count").await;
    let token = hybrid_token(&ctx).await;
    let want = expected("count", Some(100), Some(70), None);
    converted(
        &ctx,
        &token,
        json!({"operation": "unlimited", "quota_type": "count"}),
        &want,
    )
    .await;
    assert_eq!(spend(&ctx, &token, 70).await["remaining"], 0);
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(429, "QuotaExceeded");
}

// ---------------------------------------------------------------------------------------------
// Quota operations and rate-limit fields

#[tokio::test]
async fn quota_operations_add_set_reset() {
    let ctx = Ctx::new("tok_quota_ops").await;
    let token = count_token(&ctx).await; // 100 / 70
    let op = |quota_operation: &str, amount: Option<i64>| {
        let mut body = json!({"operation": "unlimited", "quota_operation": quota_operation});
        if let Some(amount) = amount {
            body["quota_amount"] = json!(amount);
        }
        body
    };
    // add: both grow.
    let t = ctx.flow_updated(&token, op("add", Some(50))).await;
    assert_eq!(
        quota_of(&t),
        expected("count", Some(150), Some(120), None),
        "{t}"
    );
    // set: remaining = amount, the total (not null) is kept.
    let t = ctx.flow_updated(&token, op("set", Some(10))).await;
    assert_eq!(
        quota_of(&t),
        expected("count", Some(150), Some(10), None),
        "{t}"
    );
    assert_eq!(t["consumed_quota"], 140, "{t}");
    // set 0 is allowed (the seed's "reset to 0").
    let t = ctx.flow_updated(&token, op("set", Some(0))).await;
    assert_eq!(
        quota_of(&t),
        expected("count", Some(150), Some(0), None),
        "{t}"
    );
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(429, "QuotaExceeded");
    // reset without an amount: remaining = total.
    let t = ctx.flow_updated(&token, op("reset", None)).await;
    assert_eq!(
        quota_of(&t),
        expected("count", Some(150), Some(150), None),
        "{t}"
    );
    // reset with an amount: both = amount.
    let t = ctx.flow_updated(&token, op("reset", Some(80))).await;
    assert_eq!(
        quota_of(&t),
        expected("count", Some(80), Some(80), None),
        "{t}"
    );
    assert_quota(&ctx, &token, &expected("count", Some(80), Some(80), None)).await;

    // Invalid amounts and operations: 400, nothing changed.
    for body in [
        op("add", Some(0)),
        op("add", Some(-5)),
        op("add", None),
        op("set", Some(-1)),
        op("set", None),
        op("bogus", Some(5)),
        json!({"operation": "unlimited", "quota_amount": 5}),
        json!({"operation": "bogus"}),
        json!({"quota_operation": "add", "quota_amount": 5}),
        json!({"operation": "unlimited", "quota_type": "bogus"}),
        json!({"operation": "unlimited", "bogus_field": 1}),
        json!({"operation": "set", "specific_date": "2031-02-30 10:00:00"}),
    ] {
        let resp = ctx.flow_update(&token, &body).await;
        let err = expect_envelope_error(resp, 400, None);
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}: {err}"
        );
    }
    assert_quota(&ctx, &token, &expected("count", Some(80), Some(80), None)).await;
    // The recharges are in the logs.
    let logs = ctx
        .flow_logs(&token, &[("page_size", "100".into())])
        .await
        .expect(200);
    let logs = envelope_data(logs);
    let recharges = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "recharge")
        .count();
    assert_eq!(recharges, 5, "{logs}");
}

#[tokio::test]
async fn rate_limit_fields_absent_are_kept_null_resets_them() {
    let ctx = Ctx::new("tok_rl_fields").await;
    let data = ctx
        .flow_token(json!({
            "rate_limit_per_minute": 5, "rate_limit_burst": 3, "rate_limit_window_seconds": 30
        }))
        .await;
    let token = token_of(&data);
    let limits = |t: &Value| {
        json!([
            t["rate_limit_per_minute"],
            t["rate_limit_burst"],
            t["rate_limit_window_seconds"]
        ])
    };
    assert_eq!(limits(&data), json!([5, 3, 30]));
    // Absent: unchanged (the seed's code nulled them; SPEC 4 says not to copy that).
    let t = ctx
        .flow_updated(&token, json!({"operation": "unlimited"}))
        .await;
    assert_eq!(limits(&t), json!([5, 3, 30]), "{t}");
    let t = ctx
        .flow_updated(
            &token,
            json!({"operation": "unlimited", "rate_limit_burst": 4}),
        )
        .await;
    assert_eq!(limits(&t), json!([5, 4, 30]), "{t}");
    // Explicit null: burst back to 10, window to 60, per_minute to no limit.
    let t = ctx
        .flow_updated(
            &token,
            json!({"operation": "unlimited", "rate_limit_burst": null}),
        )
        .await;
    assert_eq!(limits(&t), json!([5, 10, 30]), "{t}");
    let t = ctx
        .flow_updated(
            &token,
            json!({"operation": "unlimited", "rate_limit_window_seconds": null}),
        )
        .await;
    assert_eq!(limits(&t), json!([5, 10, 60]), "{t}");
    let check = ctx.flow_verify(&token, None).await;
    check.expect_valid();
    assert_eq!(check.header_int("ratelimit-limit"), Some(5));
    let t = ctx
        .flow_updated(
            &token,
            json!({"operation": "unlimited", "rate_limit_per_minute": null}),
        )
        .await;
    assert_eq!(limits(&t), json!([null, 10, 60]), "{t}");
    let check = ctx.flow_verify(&token, None).await;
    check.expect_valid();
    assert_eq!(
        check.header_int("ratelimit-limit"),
        None,
        "{:?}",
        check.headers
    );
    assert_eq!(check.body["rate_limit"]["limit"], Value::Null);
    // Bad values: 400, unchanged.
    for bad in [
        json!({"operation": "unlimited", "rate_limit_per_minute": 0}),
        json!({"operation": "unlimited", "rate_limit_burst": -1}),
        json!({"operation": "unlimited", "rate_limit_window_seconds": 0}),
        json!({"operation": "unlimited", "rate_limit_per_minute": "5"}),
    ] {
        expect_envelope_error(ctx.flow_update(&token, &bad).await, 400, None);
    }
    let quota = ctx
        .flow_list(&[("ws_id", data["ws_id"].as_str().unwrap().into())])
        .await;
    assert_eq!(
        limits(&quota["tokens"][0]),
        json!([null, 10, 60]),
        "{quota}"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation, unknown tokens, deactivation, expiry

#[tokio::test]
async fn create_validation_errors_are_400_in_the_envelope_and_create_nothing() {
    let ctx = Ctx::new("tok_create_bad").await;
    let ws = ctx.id("ws");
    let email = "ok@example.com";
    let base = |extra: Value| {
        let mut body = json!({"ws_id": ws, "email": email, "operation": "unlimited"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let cases = [
        ("bad email", base(json!({"email": "not-an-email"}))),
        ("email without domain", base(json!({"email": "a@"}))),
        (
            "count without total_quota",
            base(json!({"quota_type": "count"})),
        ),
        (
            "hybrid without total_quota",
            base(json!({"quota_type": "hybrid", "operation": "add", "days": 3})),
        ),
        (
            "count with total 0",
            base(json!({"quota_type": "count", "total_quota": 0})),
        ),
        (
            "count with negative total",
            base(json!({"quota_type": "count", "total_quota": -3})),
        ),
        ("unknown quota_type", base(json!({"quota_type": "monthly"}))),
        ("unknown operation", base(json!({"operation": "forever"}))),
        (
            "quota_operation on create",
            base(json!({"quota_operation": "add", "quota_amount": 5})),
        ),
        (
            "unknown quota_operation",
            base(json!({"quota_operation": "bogus"})),
        ),
        ("days 0", base(json!({"operation": "add", "days": 0}))),
        (
            "days negative",
            base(json!({"operation": "add", "days": -1})),
        ),
        ("add without days", base(json!({"operation": "add"}))),
        ("set without date", base(json!({"operation": "set"}))),
        (
            "malformed specific_date",
            base(json!({"operation": "set", "specific_date": "2031-13-45 10:00:00"})),
        ),
        (
            "specific_date not a date",
            base(json!({"operation": "set", "specific_date": "soon"})),
        ),
        ("missing ws_id", base(json!({"ws_id": null}))),
        ("missing email", base(json!({"email": null}))),
        ("missing operation", base(json!({"operation": null}))),
        ("unknown field", base(json!({"colour": "blue"}))),
        (
            "wrong type",
            base(json!({"total_quota": "100", "quota_type": "count"})),
        ),
        ("unknown user", base(json!({"user_id": ctx.id("nobody")}))),
        ("rate limit 0", base(json!({"rate_limit_per_minute": 0}))),
    ];
    for (what, body) in cases {
        let resp = ctx.flow_create(&body).await;
        let status = if what == "unknown user" { 404 } else { 400 };
        let err = expect_envelope_error(resp, status, None);
        assert!(
            err["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {err}"
        );
    }
    // Malformed JSON too.
    let resp = ctx
        .api
        .admin(Method::POST, "/flow/tokens")
        .raw_json("{\"ws_id\":")
        .send()
        .await;
    expect_envelope_error(resp, 400, Some("invalid_json"));
    assert_eq!(
        ctx.flow_tokens_in(&ws).await,
        0,
        "a refused create wrote a token"
    );
    let listed = ctx.flow_list(&[("ws_id", ws.clone())]).await;
    assert_eq!(listed["total"], 0, "{listed}");
    assert_eq!(listed["tokens"], json!([]), "{listed}");
    // Without the admin token: 401 / 403 in the envelope.
    let resp = ctx
        .api
        .anon(Method::POST, "/flow/tokens")
        .json(&base(json!({})))
        .send()
        .await;
    expect_envelope_error(resp, 401, Some("unauthorized"));
    let resp = ctx
        .api
        .anon(Method::GET, "/flow/tokens")
        .bearer("wrong")
        .send()
        .await;
    expect_envelope_error(resp, 403, Some("forbidden"));
    assert_eq!(ctx.flow_tokens_in(&ws).await, 0);
}

#[tokio::test]
async fn create_answers_the_token_once_and_stores_only_its_hash() {
    let ctx = Ctx::new("tok_create_ok").await;
    let user = ctx.create_user().await;
    let data = ctx
        .flow_token(json!({"operation": "add", "days": 30, "user_id": user, "quota_type": "hybrid", "total_quota": 10}))
        .await;
    let token = token_of(&data);
    assert_eq!(data["user_id"], user.as_str());
    assert_eq!(data["active"], true);
    assert_eq!(data["unlimited"], false);
    assert_eq!(data["operation"], "add");
    assert_eq!(data["rate_limit_per_minute"], Value::Null);
    assert_eq!(data["rate_limit_burst"], 10);
    assert_eq!(data["rate_limit_window_seconds"], 60);
    // days 30 from now (within a minute of the database's clock).
    let in_30_days = ctx.flow_time_in(30 * 86_400).await;
    let expires = data["expires_at"].as_str().unwrap();
    assert_eq!(&expires[..13], &in_30_days[..13], "{data}");
    // Only the hash is stored; no other answer holds the token.
    let stored: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.tokens WHERE to_jsonb(tokens)::text LIKE '%' || $1 || '%'",
            &[&&token[5..]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "the plain token is stored");
    let listed = ctx
        .flow_list(&[("ws_id", data["ws_id"].as_str().unwrap().into())])
        .await;
    assert!(!listed.to_string().contains(&token[5..]), "{listed}");
    assert_eq!(listed["total"], 1);
    assert_fields(&listed["tokens"][0], FLOW_TOKEN_KEYS);
    // The owner user's unlimited flag is the default.
    let unlimited_user = ctx.create_user_with(None, json!({"unlimited": true})).await;
    let data = ctx
        .flow_token(
            json!({"user_id": unlimited_user["id"], "quota_type": "count", "total_quota": 1}),
        )
        .await;
    assert_eq!(data["unlimited"], true, "{data}");
    // An unlimited count token is not counted.
    let token = token_of(&data);
    for _ in 0..3 {
        let body = spend(&ctx, &token, 1).await;
        assert_eq!(body["remaining"], Value::Null, "{body}");
    }
}

#[tokio::test]
async fn unknown_tokens_are_404_on_admin_routes() {
    let ctx = Ctx::new("tok_unknown").await;
    for token in [UNKNOWN_FLOW_TOKEN, "flow_nope", "not-a-token"] {
        let resp = ctx
            .flow_update(token, &json!({"operation": "unlimited"}))
            .await;
        expect_envelope_error(resp, 404, Some("not_found"));
        for path in [
            format!("/flow/tokens/{token}/quota"),
            format!("/flow/tokens/{token}/quota/logs"),
        ] {
            let resp = ctx.api.admin(Method::GET, &path).send().await;
            expect_envelope_error(resp, 404, Some("not_found"));
        }
        let resp = ctx
            .api
            .admin(Method::DELETE, &format!("/flow/tokens/{token}"))
            .send()
            .await;
        expect_envelope_error(resp, 404, Some("not_found"));
        // The checks: 401 unknown_token.
        ctx.flow_verify(token, None)
            .await
            .expect_refused(401, "unknown_token");
        ctx.flow_consume(token, None)
            .await
            .expect_refused(401, "unknown_token");
    }
    // A bearer that is not a token at all, or none.
    let check = ctx
        .api
        .anon(Method::POST, "/flow/verify")
        .send_check()
        .await;
    check.expect_refused(401, "unknown_token");
    let check = ctx
        .api
        .admin(Method::POST, "/flow/verify")
        .send_check()
        .await;
    check.expect_refused(401, "unknown_token");
}

#[tokio::test]
async fn delete_deactivates_and_verify_is_403_inactive() {
    let ctx = Ctx::new("tok_delete").await;
    let data = ctx
        .flow_token(json!({"quota_type": "count", "total_quota": 5}))
        .await;
    let token = token_of(&data);
    spend(&ctx, &token, 1).await;
    let deleted = ctx
        .api
        .admin(Method::DELETE, &format!("/flow/tokens/{token}"))
        .send()
        .await
        .expect(200);
    let deleted = envelope_data(deleted);
    assert_eq!(deleted["active"], false, "{deleted}");
    assert_eq!(deleted["remaining_quota"], 4, "{deleted}");
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(403, "inactive");
    ctx.flow_consume(&token, Some(json!({"units": 1})))
        .await
        .expect_refused(403, "inactive");
    // Nothing was consumed by the refusals; the token is still listed, inactive.
    assert_quota(&ctx, &token, &expected("count", Some(5), Some(4), None)).await;
    let listed = ctx
        .flow_list(&[("ws_id", data["ws_id"].as_str().unwrap().into())])
        .await;
    assert_eq!(listed["tokens"][0]["active"], false, "{listed}");
}

#[tokio::test]
async fn expired_token_is_403_expired() {
    let ctx = Ctx::new("tok_expired").await;
    let token = token_of(
        &ctx.flow_token(
            json!({"operation": "add", "days": 1, "quota_type": "hybrid", "total_quota": 10}),
        )
        .await,
    );
    let soon = ctx.flow_time_in(3).await;
    let t = ctx
        .flow_updated(&token, json!({"operation": "set", "specific_date": soon}))
        .await;
    assert_eq!(t["expires_at"], soon.as_str());
    assert_eq!(spend(&ctx, &token, 1).await["remaining"], 9);
    let start = Instant::now();
    loop {
        let check = ctx.flow_verify(&token, None).await;
        if check.status == 403 {
            check.expect_refused(403, "expired");
            break;
        }
        check.expect_valid();
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "token expiring at {soon} still valid"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The refusal consumed nothing; extending the expiry makes it usable again.
    let remaining_before = ctx.flow_quota(&token).await["remaining_quota"].clone();
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(403, "expired");
    assert_eq!(
        ctx.flow_quota(&token).await["remaining_quota"],
        remaining_before
    );
    ctx.flow_updated(&token, json!({"operation": "set", "specific_date": D2}))
        .await;
    ctx.flow_verify(&token, None).await.expect_valid();
    // operation unlimited removes the expiry.
    let t = ctx
        .flow_updated(&token, json!({"operation": "unlimited"}))
        .await;
    assert_eq!(t["expires_at"], Value::Null, "{t}");
}

// ---------------------------------------------------------------------------------------------
// Consumption

#[tokio::test]
async fn verify_decrements_a_count_token_and_replays_a_request_id() {
    let ctx = Ctx::new("tok_verify_count").await;
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 5}))
            .await,
    );
    let first = ctx
        .flow_verify(&token, Some(json!({"request_id": "req-1"})))
        .await;
    let body = first.expect_valid();
    assert_eq!(body["remaining"], 4, "{body}");
    assert_eq!(body["replayed"], false, "{body}");
    assert_eq!(body["quota_type"], "count", "{body}");
    // The same request_id: the first answer, nothing consumed again (by either route).
    for _ in 0..2 {
        let again = ctx
            .flow_verify(&token, Some(json!({"request_id": "req-1"})))
            .await;
        let body = again.expect_valid();
        assert_eq!(body["remaining"], 4, "{body}");
        assert_eq!(body["replayed"], true, "{body}");
    }
    let body = ctx
        .flow_consume(&token, Some(json!({"request_id": "req-1"})))
        .await;
    assert_eq!(body.expect_valid()["remaining"], 4);
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 4);
    // Without request_id every check consumes; units > 1.
    assert_eq!(spend(&ctx, &token, 1).await["remaining"], 3);
    let body = ctx
        .flow_consume(&token, Some(json!({"units": 2, "request_id": "req-2"})))
        .await;
    assert_eq!(body.expect_valid()["remaining"], 1);
    // More than is left: 429 QuotaExceeded, nothing consumed.
    let refused = ctx.flow_verify(&token, Some(json!({"units": 2}))).await;
    let body = refused.expect_refused(429, "QuotaExceeded");
    assert_eq!(body["remaining"], 1, "{body}");
    assert_eq!(spend(&ctx, &token, 1).await["remaining"], 0);
    ctx.flow_verify(&token, None)
        .await
        .expect_refused(429, "QuotaExceeded");
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 0);
    // One consume log per applied check: req-1 once.
    let logs = envelope_data(ctx.flow_logs(&token, &[]).await.expect(200));
    let consumes: Vec<&Value> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "consume")
        .collect();
    assert_eq!(consumes.len(), 4, "{logs}");
    assert_eq!(
        consumes
            .iter()
            .filter(|l| l["request_id"] == "req-1")
            .count(),
        1,
        "{logs}"
    );
    let units: i64 = consumes.iter().map(|l| l["units"].as_i64().unwrap()).sum();
    assert_eq!(units, 5, "{logs}");
}

#[tokio::test]
async fn bad_units_and_request_ids_are_400() {
    let ctx = Ctx::new("tok_bad_units").await;
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 5}))
            .await,
    );
    for body in [
        json!({"units": 0}),
        json!({"units": -1}),
        json!({"units": 2_000_000_000i64}),
        json!({"request_id": ""}),
        json!({"request_id": "x".repeat(256)}),
        json!({"request_id": " padded"}),
    ] {
        let check = ctx.flow_verify(&token, Some(body.clone())).await;
        assert_eq!(check.status, 400, "{body}: {}", check.body);
        assert_eq!(check.body["valid"], false, "{body}: {}", check.body);
        assert_eq!(
            check.body["error"], "invalid_parameter",
            "{body}: {}",
            check.body
        );
        let check = ctx.flow_consume(&token, Some(body.clone())).await;
        assert_eq!(check.status, 400, "{body}: {}", check.body);
    }
    for body in [
        json!({"units": 1.5}),
        json!({"units": "1"}),
        json!({"unit": 1}),
    ] {
        let check = ctx.flow_verify(&token, Some(body.clone())).await;
        check.expect_refused(400, "invalid_body");
    }
    let check = ctx
        .api
        .anon(Method::POST, "/flow/verify")
        .bearer(&token)
        .raw_json("{\"units\":")
        .send_check()
        .await;
    check.expect_refused(400, "invalid_json");
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 5);
}

#[tokio::test]
async fn consume_takes_the_admin_or_the_service_token() {
    let ctx = Ctx::new("tok_consume_auth").await;
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 10}))
            .await,
    );
    let path = format!("/flow/tokens/{token}/consume");
    let body = ctx
        .api
        .admin(Method::POST, &path)
        .json(&json!({"units": 2}))
        .send_check()
        .await;
    assert_eq!(body.expect_valid()["remaining"], 8);
    assert_eq!(
        ctx.flow_consume(&token, None).await.expect_valid()["remaining"],
        7
    );
    // The token itself is not a credential for consume.
    let check = ctx
        .api
        .anon(Method::POST, &path)
        .bearer(&token)
        .send_check()
        .await;
    assert_eq!(check.status, 403, "{}", check.body);
    let check = ctx.api.anon(Method::POST, &path).send_check().await;
    assert_eq!(check.status, 401, "{}", check.body);
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 7);
}

// ---------------------------------------------------------------------------------------------
// Logs and list

#[tokio::test]
async fn quota_logs_page_and_filter_by_date() {
    let ctx = Ctx::new("tok_logs").await;
    let token = token_of(
        &ctx.flow_token(json!({"quota_type": "count", "total_quota": 10}))
            .await,
    );
    for i in 0..3 {
        ctx.flow_verify(&token, Some(json!({"request_id": format!("r{i}")})))
            .await
            .expect_valid();
    }
    ctx.flow_updated(
        &token,
        json!({"operation": "unlimited", "quota_operation": "add", "quota_amount": 5}),
    )
    .await;
    let all = envelope_data(ctx.flow_logs(&token, &[]).await.expect(200));
    assert_eq!(all["total"], 5, "{all}");
    assert_eq!(all["page"], 1);
    assert_eq!(all["page_size"], 20);
    let kinds: Vec<&str> = all["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(
        kinds,
        ["recharge", "consume", "consume", "consume", "init"],
        "{all}"
    );
    let recharge = &all["logs"][0];
    assert_fields(
        recharge,
        &[
            "id",
            "kind",
            "units",
            "remaining_after",
            "total_after",
            "request_id",
            "detail",
            "created_at",
        ],
    );
    assert_eq!(recharge["remaining_after"], 12, "{recharge}");
    assert_eq!(recharge["total_after"], 15, "{recharge}");
    let init = &all["logs"][4];
    assert_eq!(
        (
            init["remaining_after"].as_i64(),
            init["total_after"].as_i64()
        ),
        (Some(10), Some(10)),
        "{init}"
    );

    // Pages of 2: 2, 2, 1, then none.
    let mut seen = Vec::new();
    for (page, count) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
        let data = envelope_data(
            ctx.flow_logs(
                &token,
                &[("page", page.to_string()), ("page_size", "2".into())],
            )
            .await
            .expect(200),
        );
        assert_eq!(data["total"], 5, "{data}");
        assert_eq!(data["page"], page);
        assert_eq!(data["page_size"], 2);
        let logs = data["logs"].as_array().unwrap();
        assert_eq!(logs.len(), count, "page {page}: {data}");
        seen.extend(logs.iter().map(|l| l["id"].as_i64().unwrap()));
    }
    let ids: Vec<i64> = all["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, ids, "pages cover the logs once, in order");

    // Spread the rows over three days (a superuser's probe) and filter by date.
    ctx.db
        .execute(
            "UPDATE quota.token_logs SET created_at = CASE kind
                 WHEN 'init' THEN timestamptz '2026-01-01 12:00:00+00'
                 WHEN 'consume' THEN timestamptz '2026-02-01 12:00:00+00'
                 ELSE timestamptz '2026-03-01 12:00:00+00' END
             WHERE log_id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("spread the logs");
    let total = |data: &Value| data["total"].as_i64().unwrap();
    let filter = |start: Option<&str>, end: Option<&str>| {
        let mut q = Vec::new();
        if let Some(s) = start {
            q.push(("start_date", s.to_string()));
        }
        if let Some(e) = end {
            q.push(("end_date", e.to_string()));
        }
        q
    };
    for (start, end, want, kinds) in [
        (
            Some("2026-02-01"),
            None,
            4,
            vec!["recharge", "consume", "consume", "consume"],
        ),
        (None, Some("2026-02-01"), 1, vec!["init"]),
        (
            Some("2026-02-01 00:00:00"),
            Some("2026-03-01 00:00:00"),
            3,
            vec!["consume"; 3],
        ),
        (
            Some("2026-02-01T12:00:00Z"),
            Some("2026-02-01T12:00:01Z"),
            3,
            vec!["consume"; 3],
        ),
        (Some("2026-02-01T12:00:01Z"), Some("2026-03-01"), 0, vec![]),
        (
            Some("2025-01-01"),
            Some("2027-01-01"),
            5,
            vec!["recharge", "consume", "consume", "consume", "init"],
        ),
        (Some("2026-03-02"), None, 0, vec![]),
    ] {
        let data = envelope_data(ctx.flow_logs(&token, &filter(start, end)).await.expect(200));
        assert_eq!(total(&data), want, "{start:?}..{end:?}: {data}");
        let got: Vec<&str> = data["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["kind"].as_str().unwrap())
            .collect();
        assert_eq!(got, kinds, "{start:?}..{end:?}");
    }
    // Bad parameters: 400 in the envelope.
    for query in [
        vec![("start_date", "yesterday".to_string())],
        vec![("end_date", "2026-02-30".to_string())],
        vec![("page", "0".to_string())],
        vec![("page_size", "0".to_string())],
        vec![("page_size", "101".to_string())],
        vec![("page", "x".to_string())],
    ] {
        expect_envelope_error(ctx.flow_logs(&token, &query).await, 400, None);
    }
}

#[tokio::test]
async fn list_filters_by_workspace_and_email() {
    let ctx = Ctx::new("tok_list").await;
    let ws_a = ctx.id("wsa");
    let ws_b = ctx.id("wsb");
    let a = format!("{}@example.com", ctx.id("a").to_lowercase());
    let b = format!("{}@example.com", ctx.id("b").to_lowercase());
    let mut hints = Vec::new();
    for (ws, email) in [(&ws_a, &a), (&ws_a, &a), (&ws_a, &b), (&ws_b, &a)] {
        let data = ctx.flow_token(json!({"ws_id": ws, "email": email})).await;
        hints.push(data["access_token_hint"].clone());
    }
    let count = |data: &Value| {
        (
            data["total"].as_i64().unwrap(),
            data["tokens"].as_array().unwrap().len() as i64,
        )
    };
    assert_eq!(
        count(&ctx.flow_list(&[("ws_id", ws_a.clone())]).await),
        (3, 3)
    );
    assert_eq!(
        count(&ctx.flow_list(&[("ws_id", ws_b.clone())]).await),
        (1, 1)
    );
    let both = ctx
        .flow_list(&[("ws_id", ws_a.clone()), ("email", a.clone())])
        .await;
    assert_eq!(count(&both), (2, 2), "{both}");
    for token in both["tokens"].as_array().unwrap() {
        assert_eq!(
            (&token["ws_id"], &token["email"]),
            (&json!(ws_a), &json!(a))
        );
        assert!(token.get("access_token").is_none(), "{token}");
    }
    assert_eq!(both["tokens"][0]["access_token_hint"], hints[0]);
    assert_eq!(count(&ctx.flow_list(&[("email", a.clone())]).await), (3, 3));
    assert_eq!(
        count(
            &ctx.flow_list(&[("email", b.clone()), ("ws_id", ws_b.clone())])
                .await
        ),
        (0, 0)
    );
    // An empty parameter is absent; paging.
    let page = ctx
        .flow_list(&[
            ("ws_id", ws_a.clone()),
            ("email", String::new()),
            ("limit", "2".into()),
            ("offset", "2".into()),
        ])
        .await;
    assert_eq!(count(&page), (3, 1), "{page}");
    for bad in [("limit", "0"), ("offset", "-1"), ("limit", "x")] {
        let resp = ctx
            .api
            .admin(Method::GET, "/flow/tokens")
            .query(&[(bad.0, bad.1.to_string())])
            .send()
            .await;
        expect_envelope_error(resp, 400, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Headers

#[tokio::test]
async fn checks_carry_ratelimit_headers_and_retry_after_on_429() {
    let ctx = Ctx::new("tok_headers").await;
    let token = token_of(
        &ctx.flow_token(json!({
            "quota_type": "count", "total_quota": 100,
            "rate_limit_per_minute": 3, "rate_limit_burst": 10, "rate_limit_window_seconds": 60
        }))
        .await,
    );
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let check = if i == 1 {
            ctx.flow_consume(&token, None).await
        } else {
            ctx.flow_verify(&token, None).await
        };
        let body = check.expect_valid().clone();
        assert_eq!(
            check.header_int("ratelimit-limit"),
            Some(3),
            "{:?}",
            check.headers
        );
        assert_eq!(
            check.header_int("ratelimit-remaining"),
            Some(remaining),
            "{:?}",
            check.headers
        );
        let reset = check
            .header_int("ratelimit-reset")
            .expect("RateLimit-Reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
        assert_eq!(check.header_int("retry-after"), None);
        assert_eq!(
            body["rate_limit"],
            json!({"limit": 3, "remaining": remaining, "reset": reset}),
            "{body}"
        );
    }
    let denied = ctx.flow_verify(&token, None).await;
    let body = denied.expect_refused(429, "rate_limited").clone();
    assert_eq!(body["limit_type"], "window", "{body}");
    let retry_after = denied
        .header_int("retry-after")
        .expect("Retry-After on 429");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(body["retry_after"], retry_after);
    assert_eq!(denied.header_int("ratelimit-limit"), Some(3));
    assert_eq!(denied.header_int("ratelimit-remaining"), Some(0));
    assert!(denied.header_int("ratelimit-reset").is_some());
    // The denial consumed no quota.
    assert_eq!(ctx.flow_quota(&token).await["remaining_quota"], 97);

    // A token without a limit: no RateLimit headers; refusals neither.
    let free = token_of(&ctx.flow_token(json!({})).await);
    let check = ctx.flow_verify(&free, None).await;
    check.expect_valid();
    for name in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
    ] {
        assert!(
            !check.headers.contains_key(name),
            "{name}: {:?}",
            check.headers
        );
    }
    let check = ctx.flow_verify(UNKNOWN_FLOW_TOKEN, None).await;
    check.expect_refused(401, "unknown_token");
    assert!(!check.headers.contains_key("ratelimit-limit"));
}

#[tokio::test]
async fn flow_paths_are_documented() {
    let ctx = Ctx::new("tok_openapi").await;
    let doc = ctx
        .api
        .anon(Method::GET, "/openapi.json")
        .send()
        .await
        .expect(200);
    for (path, method) in [
        ("/flow/tokens", "post"),
        ("/flow/tokens", "get"),
        ("/flow/tokens/{token}", "put"),
        ("/flow/tokens/{token}", "delete"),
        ("/flow/tokens/{token}/quota", "get"),
        ("/flow/tokens/{token}/quota/logs", "get"),
        ("/flow/tokens/{token}/consume", "post"),
        ("/flow/verify", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} not documented");
        assert!(op["x-sql"].is_array(), "{method} {path} has no x-sql");
    }
}
