//! Provider account pools over REST (issue 13, seed 002, SPEC 5): admin CRUD (credentials never
//! read back), acquire / release, availability at 100 / 1000 / 1100 of 1000, inactive, expired,
//! unlimited, lazy and manual reset, alerts, least_used, usage statistics, pool status and stats,
//! and bad input that changes nothing.

use pg_quota_e2e::pools::*;
use pg_quota_e2e::*;

fn int_of(body: &Value, field: &str) -> i64 {
    body[field]
        .as_i64()
        .unwrap_or_else(|| panic!("integer {field} in {body}"))
}

fn keys(body: &Value) -> Vec<String> {
    let mut keys: Vec<String> = body
        .as_object()
        .unwrap_or_else(|| panic!("object: {body}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn admin_crud_round_trip_never_shows_credentials() {
    let ctx = Ctx::new("pool_crud").await;
    let pools = Pools::new();
    let secret = format!("sk-secret-{}", ctx.id("cred"));
    let provider = pools
        .provider("crud", "round_robin", json!({"rpm": 60, "concurrent": 0}))
        .await;
    let provider_id = text(&provider, "provider_id");
    assert_eq!(provider["strategy"], "round_robin", "{provider}");
    assert_eq!(provider["limits"], json!({"rpm": 60}), "{provider}");

    // Get and list.
    let got = ctx
        .api
        .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(got["name"], provider["name"]);
    let list = ctx
        .api
        .admin(Method::GET, PROVIDERS)
        .send()
        .await
        .expect(200);
    assert!(
        list["providers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["provider_id"] == provider_id.as_str()),
        "{list}"
    );
    assert!(int_of(&list, "total") >= 1);

    // Update (partial), then a limit set and removed by its own route.
    let renamed = ctx.id("renamed");
    let updated = ctx
        .api
        .admin(Method::PUT, &format!("{PROVIDERS}/{provider_id}"))
        .json(&json!({"name": renamed, "strategy": "best", "limits": {"tpm": 5000}}))
        .send()
        .await
        .expect(200);
    assert_eq!(updated["name"], renamed.as_str(), "{updated}");
    assert_eq!(updated["strategy"], "best");
    assert_eq!(
        updated["limits"],
        json!({"rpm": 60, "tpm": 5000}),
        "{updated}"
    );
    let limited = ctx
        .api
        .admin(
            Method::PUT,
            &format!("{PROVIDERS}/{provider_id}/limits/concurrent"),
        )
        .json(&json!({"limit_value": 3}))
        .send()
        .await
        .expect(200);
    assert_eq!(limited["limits"]["concurrent"], 3, "{limited}");
    let removed = ctx
        .api
        .admin(
            Method::DELETE,
            &format!("{PROVIDERS}/{provider_id}/limits/rpm"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(
        removed["limits"],
        json!({"tpm": 5000, "concurrent": 3}),
        "{removed}"
    );

    // An account: its credentials are never read back, by any read or list.
    let account = pools
        .account(
            &provider_id,
            json!({"api_key": secret, "org": "acme"}),
            json!({"name": "primary", "quota_limit": 5000, "period_s": 3600, "user_id": "owner-1"}),
        )
        .await;
    let account_id = text(&account, "account_id");
    assert_eq!(account["quota_limit"], 5000, "{account}");
    assert_eq!(account["period_s"], 3600, "{account}");
    assert_eq!(account["name"], "primary");
    let updated_account = ctx
        .api
        .admin(Method::PUT, &format!("/api/v1/admin/accounts/{account_id}"))
        .json(&json!({"name": "renamed", "quota_limit": 7000}))
        .send()
        .await
        .expect(200);
    assert_eq!(updated_account["quota_limit"], 7000, "{updated_account}");
    assert_eq!(updated_account["name"], "renamed");
    let reads = [
        ctx.api
            .admin(Method::GET, &format!("/api/v1/admin/accounts/{account_id}"))
            .send()
            .await,
        ctx.api
            .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}/accounts"))
            .send()
            .await,
        ctx.api
            .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}"))
            .send()
            .await,
        ctx.api.admin(Method::GET, PROVIDERS).send().await,
        ctx.api
            .service(Method::GET, &format!("/api/v1/pool/{provider_id}/status"))
            .send()
            .await,
        ctx.api
            .service(Method::GET, &format!("/api/v1/stats/quota/{account_id}"))
            .send()
            .await,
        ctx.api
            .service(Method::GET, &format!("/api/v1/stats/pool/{provider_id}"))
            .send()
            .await,
        ctx.api
            .admin(Method::PUT, &format!("/api/v1/admin/accounts/{account_id}"))
            .json(&json!({"credentials": {"api_key": secret}}))
            .send()
            .await,
    ];
    for read in reads {
        assert_eq!(read.status, 200, "{}: {}", read.what, read.text);
        assert!(
            !read.text.contains(&secret) && !read.text.contains("\"credentials\""),
            "{} shows credentials: {}",
            read.what,
            read.text
        );
    }
    let listed = ctx
        .api
        .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}/accounts"))
        .send()
        .await
        .expect(200);
    assert_eq!(int_of(&listed, "total"), 1, "{listed}");
    // Nor in the database in clear.
    let in_clear: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.pool_accounts WHERE account_id = $1::text::uuid
               AND position(convert_to($2, 'UTF8') IN credentials) > 0",
            &[&account_id, &secret],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_clear, 0, "credentials stored in clear");

    // Delete: the provider is in use while it has accounts.
    ctx.api
        .admin(Method::DELETE, &format!("{PROVIDERS}/{provider_id}"))
        .send()
        .await
        .expect_error(409, Some("in_use"));
    let deleted = ctx
        .api
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/accounts/{account_id}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    ctx.api
        .admin(Method::GET, &format!("/api/v1/admin/accounts/{account_id}"))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    let deleted = ctx
        .api
        .admin(Method::DELETE, &format!("{PROVIDERS}/{provider_id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    ctx.api
        .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}"))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    // The admin API needs the admin token; the service token is not enough.
    ctx.api
        .service(Method::GET, PROVIDERS)
        .send()
        .await
        .expect_error(401, Some("unauthorized"));
    ctx.api
        .anon(Method::POST, &format!("/api/v1/pool/{provider_id}/acquire"))
        .json(&json!({"tokens_needed": 1}))
        .send()
        .await
        .expect_error(401, Some("unauthorized"));
}

#[tokio::test]
async fn acquire_returns_the_credentials_and_release_records_the_request() {
    let _ctx = Ctx::new("pool_happy").await;
    let pools = Pools::new();
    let provider = pools.provider("happy", "least_used", json!({})).await;
    let provider_id = text(&provider, "provider_id");
    let credentials = json!({"api_key": "sk-happy", "base_url": "https://upstream.example/v1"});
    let account = pools
        .account(
            &provider_id,
            credentials.clone(),
            json!({"quota_limit": 1000}),
        )
        .await;
    let account_id = text(&account, "account_id");

    let lease = pools
        .acquire_with(
            &provider_id,
            json!({"tokens_needed": 300, "model": "gpt-4o", "lease_ttl_s": 60}),
        )
        .await
        .expect(200);
    assert_eq!(lease["admitted"], true, "{lease}");
    assert_eq!(lease["credentials"], credentials, "{lease}");
    assert_eq!(lease["account_id"], account_id.as_str());
    assert_eq!(lease["provider_id"], provider_id.as_str());
    assert_eq!(lease["tokens_needed"], 300);
    assert!(
        lease["lease_id"].is_string() && lease["lease_expires_at"].is_string(),
        "{lease}"
    );
    // While held: 300 held, one in flight.
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (int_of(&status, "quota_held"), int_of(&status, "in_flight")),
        (300, 1),
        "{status}"
    );

    let released = pools
        .release_with(
            &account_id,
            json!({"lease_id": lease["lease_id"], "input_tokens": 120, "output_tokens": 80,
                   "status_code": 200, "latency_ms": 42, "success": true, "model": "gpt-4o",
                   "estimated_cost": 0.002, "method": "POST", "endpoint": "/v1/chat/completions"}),
        )
        .await
        .expect(200);
    assert_eq!(released["lease_status"], "released", "{released}");
    assert_eq!(released["tokens"], 200, "{released}");
    assert_eq!(released["quota_used"], 200, "{released}");
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (
            int_of(&status, "quota_used"),
            int_of(&status, "quota_held"),
            int_of(&status, "in_flight"),
            int_of(&status, "remaining")
        ),
        (200, 0, 0, 800),
        "{status}"
    );
    let account = pools.account_json(&account_id).await;
    assert_eq!(
        (
            int_of(&account, "request_count"),
            int_of(&account, "success_count")
        ),
        (1, 1),
        "{account}"
    );
}

/// SPEC 5: 100 of 1000 available, exactly 1000 admitted (equality), past it refused with the
/// exact 429 body; one warning when crossing 80 %, one exhausted alert on refusal.
#[tokio::test]
async fn availability_at_100_1000_1100_of_1000_with_alerts() {
    let ctx = Ctx::new("pool_avail").await;
    let pools = Pools::new();
    let (provider_id, account_id) = pools.single("avail", 1000, json!({})).await;

    pools.spend(&provider_id, 100).await;
    let status = pools.quota(&account_id).await;
    assert_eq!(status["available"], true, "{status}");
    assert_eq!(int_of(&status, "quota_used"), 100);
    assert!(
        pools.alerts(&account_id).await.is_empty(),
        "no alert at 10 %"
    );

    // 100 + 900 = 1000: equality is admitted.
    pools.spend(&provider_id, 900).await;
    let status = pools.quota(&account_id).await;
    assert_eq!(int_of(&status, "quota_used"), 1000, "{status}");
    assert_eq!(status["remaining"], 0, "{status}");
    let warnings = pools.alerts_of(&account_id, "warning").await;
    assert_eq!(warnings.len(), 1, "one warning crossing 80 %: {warnings:?}");
    assert_eq!(warnings[0]["quota_used"], 1000, "{warnings:?}");

    // One more token: 429 with exactly SPEC 5's keys.
    let refused = pools.acquire(&provider_id, 1).await;
    let body = refused.expect(429);
    assert_eq!(keys(&body), ["error", "message", "reset_at"], "{body}");
    assert_eq!(body["error"], "quota_exceeded");
    assert_eq!(body["message"], "Quota limit reached");
    let same: bool = ctx
        .db
        .query_one(
            "SELECT $1::text::timestamptz = $2::text::timestamptz",
            &[&text(&body, "reset_at"), &text(&status, "reset_at")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        same,
        "reset_at of the refusal and of the account: {body} vs {status}"
    );
    let exhausted = pools.alerts_of(&account_id, "exhausted").await;
    assert_eq!(exhausted.len(), 1, "{exhausted:?}");

    // 1100 of 1000: a release may pass the limit (the usage happened); reads say why.
    let lease = pools.admitted(&provider_id, 0).await;
    pools.release(&lease, 100).await;
    let status = pools.quota(&account_id).await;
    assert_eq!(int_of(&status, "quota_used"), 1100, "{status}");
    assert_eq!(status["available"], false, "{status}");
    assert_eq!(status["reason"], "quota exceeded", "{status}");
    assert_eq!(status["usage_percent"].as_f64(), Some(110.0), "{status}");
    pools.acquire(&provider_id, 1).await.expect(429);
    // Still one warning and one exhausted alert in this window.
    assert_eq!(pools.alerts_of(&account_id, "warning").await.len(), 1);
    assert_eq!(pools.alerts_of(&account_id, "exhausted").await.len(), 1);
}

#[tokio::test]
async fn inactive_and_expired_accounts_are_503_with_the_exact_body() {
    let ctx = Ctx::new("pool_inactive").await;
    let pools = Pools::new();
    let provider = pools.provider("inactive", "least_used", json!({})).await;
    let provider_id = text(&provider, "provider_id");
    // No account at all.
    let body = pools.acquire(&provider_id, 1).await.expect(503);
    assert_eq!(body, no_account_body());

    let account = pools
        .account(&provider_id, json!({"k": 1}), json!({"active": false}))
        .await;
    let account_id = text(&account, "account_id");
    let body = pools.acquire(&provider_id, 1).await.expect(503);
    assert_eq!(body, no_account_body());
    let status = pools.quota(&account_id).await;
    assert_eq!(
        (&status["available"], &status["reason"]),
        (&json!(false), &json!("account inactive")),
        "{status}"
    );

    // Active but expired (expires_at in the past).
    let yesterday: String = ctx
        .db
        .query_one(
            "SELECT to_char((now() - interval '1 day') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    ctx.api
        .admin(Method::PUT, &format!("/api/v1/admin/accounts/{account_id}"))
        .json(&json!({"active": true, "expires_at": yesterday}))
        .send()
        .await
        .expect(200);
    let body = pools.acquire(&provider_id, 1).await.expect(503);
    assert_eq!(body, no_account_body());
    let status = pools.quota(&account_id).await;
    assert_eq!(status["reason"], "account expired", "{status}");
    // Never expiring again: admitted.
    ctx.api
        .admin(Method::PUT, &format!("/api/v1/admin/accounts/{account_id}"))
        .json(&json!({"expires_at": null}))
        .send()
        .await
        .expect(200);
    pools.admitted(&provider_id, 1).await;
}

#[tokio::test]
async fn an_unlimited_account_admits_anything() {
    let _ctx = Ctx::new("pool_unlimited").await;
    let pools = Pools::new();
    let (provider_id, account_id) = pools.single("unlimited", 0, json!({})).await;
    let lease = pools.admitted(&provider_id, 1_000_000_000).await;
    pools.release(&lease, 5_000_000).await;
    let status = pools.quota(&account_id).await;
    assert_eq!(status["available"], true, "{status}");
    assert_eq!(status["remaining"], Value::Null, "{status}");
    assert_eq!(status["usage_percent"].as_f64(), Some(0.0), "{status}");
    assert_eq!(int_of(&status, "quota_used"), 5_000_000);
    assert!(pools.alerts(&account_id).await.is_empty());
}

/// The window is rolling from last_reset: an account whose window started 25 h ago starts a new
/// one on its next check (lazy reset); an admin reset starts one at once.
#[tokio::test]
async fn lazy_reset_after_25_hours_and_manual_reset() {
    let ctx = Ctx::new("pool_reset").await;
    let pools = Pools::new();
    let provider = pools.provider("reset", "least_used", json!({})).await;
    let provider_id = text(&provider, "provider_id");
    let long_ago: String = ctx
        .db
        .query_one(
            "SELECT to_char((now() - interval '25 hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let account = pools
        .account(
            &provider_id,
            json!({"k": 1}),
            json!({"quota_limit": 1000, "last_reset": long_ago}),
        )
        .await;
    let account_id = text(&account, "account_id");
    // The old window was used up (as if by requests 25 h ago).
    ctx.db
        .execute(
            "UPDATE quota.pool_accounts SET quota_used = 1000 WHERE account_id = $1::text::uuid",
            &[&account_id],
        )
        .await
        .unwrap();
    // A read shows the reset without writing it.
    let status = pools.quota(&account_id).await;
    assert_eq!(status["available"], true, "{status}");
    assert_eq!(int_of(&status, "quota_used"), 0, "{status}");
    // The acquire writes it: the whole quota is there again.
    let lease = pools.admitted(&provider_id, 1000).await;
    pools.release(&lease, 1000).await;
    let account = pools.account_json(&account_id).await;
    assert_eq!(int_of(&account, "quota_used"), 1000, "{account}");
    let fresh: bool = ctx
        .db
        .query_one(
            "SELECT last_reset > now() - interval '5 minutes' FROM quota.pool_accounts
              WHERE account_id = $1::text::uuid",
            &[&account_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(fresh, "last_reset moved to now: {account}");
    pools.acquire(&provider_id, 1).await.expect(429);

    // Manual reset.
    let reset = ctx
        .api
        .admin(
            Method::POST,
            &format!("/api/v1/admin/accounts/{account_id}/reset"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(int_of(&reset, "quota_used"), 0, "{reset}");
    pools.admitted(&provider_id, 1000).await;
}

#[tokio::test]
async fn least_used_picks_the_account_with_the_most_room() {
    let _ctx = Ctx::new("pool_least").await;
    let pools = Pools::new();
    let provider = pools.provider("least", "least_used", json!({})).await;
    let provider_id = text(&provider, "provider_id");
    let a = text(
        &pools
            .account(
                &provider_id,
                json!({"n": "a"}),
                json!({"quota_limit": 1000, "name": "a"}),
            )
            .await,
        "account_id",
    );
    let b = text(
        &pools
            .account(
                &provider_id,
                json!({"n": "b"}),
                json!({"quota_limit": 1000, "name": "b"}),
            )
            .await,
        "account_id",
    );
    let first = pools.spend(&provider_id, 500).await;
    let used = text(&first, "account_id");
    let other = if used == a { b.clone() } else { a.clone() };
    // The other one has the most room now, and is picked until it has less.
    let second = pools.spend(&provider_id, 100).await;
    assert_eq!(
        text(&second, "account_id"),
        other,
        "least_used after 500 on {used}"
    );
    let third = pools.admitted(&provider_id, 10).await;
    assert_eq!(text(&third, "account_id"), other, "100 < 500: {third}");
    assert_eq!(
        third["credentials"]["n"],
        if other == a { "a" } else { "b" }
    );
    // An explicit strategy per request is accepted too.
    let best = pools
        .acquire_with(
            &provider_id,
            json!({"tokens_needed": 1, "strategy": "best"}),
        )
        .await
        .expect(200);
    assert_eq!(best["strategy"], "best", "{best}");
}

/// Seed 002's tracker: the success rate of a user's requests (2 of 3), as the user reads it with
/// their API token and as an operator reads it by user_id.
#[tokio::test]
async fn usage_stats_success_rate_two_of_three() {
    let ctx = Ctx::new("pool_usage").await;
    let pools = Pools::new();
    let (user, token) = ctx.create_user_with_token().await;
    let (provider_id, _) = pools.single("usage", 0, json!({})).await;
    for (status_code, output) in [(200, 100), (200, 50), (500, 0)] {
        let lease = pools
            .acquire_with(
                &provider_id,
                json!({"tokens_needed": 10, "user_id": user, "model": "m"}),
            )
            .await
            .expect(200);
        pools
            .release_with(
                &text(&lease, "account_id"),
                json!({"lease_id": lease["lease_id"], "input_tokens": 10, "output_tokens": output,
                       "status_code": status_code, "latency_ms": 30, "user_id": user,
                       "estimated_cost": 0.5}),
            )
            .await
            .expect(200);
    }
    let check = |body: &Value| {
        assert_eq!(body["user_id"], user.as_str(), "{body}");
        assert_eq!(
            (
                int_of(body, "total_requests"),
                int_of(body, "successful_requests"),
                int_of(body, "failed_requests")
            ),
            (3, 2, 1),
            "{body}"
        );
        let rate = body["success_rate"].as_f64().unwrap();
        assert!((rate - 2.0 / 3.0).abs() < 0.001, "{body}");
        assert_eq!(int_of(body, "input_tokens"), 30, "{body}");
        assert_eq!(int_of(body, "output_tokens"), 150, "{body}");
        assert_eq!(int_of(body, "total_tokens"), 180, "{body}");
        assert!(
            (body["estimated_cost"].as_f64().unwrap() - 1.5).abs() < 1e-9,
            "{body}"
        );
    };
    let own = ctx
        .api
        .user(&token, Method::GET, "/api/v1/stats/usage")
        .send()
        .await
        .expect(200);
    check(&own);
    let by_admin = ctx
        .api
        .admin(Method::GET, "/api/v1/stats/usage")
        .query(&[("user_id", user.clone())])
        .send()
        .await
        .expect(200);
    check(&by_admin);
    let by_service = ctx
        .api
        .service(Method::GET, "/api/v1/stats/usage")
        .query(&[
            ("user_id", user.clone()),
            ("from", "2020-01-01".into()),
            ("to", "2999-01-01 00:00:00".into()),
        ])
        .send()
        .await
        .expect(200);
    check(&by_service);
    // A user reads only their own usage.
    ctx.api
        .user(&token, Method::GET, "/api/v1/stats/usage")
        .query(&[("user_id", "someone-else".into())])
        .send()
        .await
        .expect_error(403, Some("forbidden"));
    // A period that ends before the requests: none.
    let before = ctx
        .api
        .user(&token, Method::GET, "/api/v1/stats/usage")
        .query(&[
            ("from", "2020-01-01T00:00:00Z".into()),
            ("to", "2020-02-01".into()),
        ])
        .send()
        .await
        .expect(200);
    assert_eq!(int_of(&before, "total_requests"), 0, "{before}");
    assert_eq!(before["success_rate"].as_f64(), Some(0.0), "{before}");
    // Bad dates, and a period backwards: 400.
    ctx.api
        .user(&token, Method::GET, "/api/v1/stats/usage")
        .query(&[("from", "last week".into())])
        .send()
        .await
        .expect_error(400, Some("invalid_query"));
    ctx.api
        .admin(Method::GET, "/api/v1/stats/usage")
        .query(&[("from", "2026-02-01".into()), ("to", "2026-01-01".into())])
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .user("pq_not_a_token", Method::GET, "/api/v1/stats/usage")
        .send()
        .await
        .expect_error(403, None);
}

#[tokio::test]
async fn pool_status_and_stats_show_accounts_top_models_and_errors() {
    let _ctx = Ctx::new("pool_stats").await;
    let pools = Pools::new();
    let provider = pools
        .provider("stats", "least_used", json!({"rpm": 1000}))
        .await;
    let provider_id = text(&provider, "provider_id");
    let a = text(
        &pools
            .account(&provider_id, json!({"n": 1}), json!({"quota_limit": 10000}))
            .await,
        "account_id",
    );
    let off = text(
        &pools
            .account(
                &provider_id,
                json!({"n": 2}),
                json!({"quota_limit": 10000, "active": false}),
            )
            .await,
        "account_id",
    );
    for (model, status_code, error) in [
        ("model-a", 200, None),
        ("model-a", 200, None),
        ("model-a", 429, Some("upstream rate limited")),
        ("model-b", 500, Some("upstream error")),
    ] {
        let lease = pools
            .acquire_with(&provider_id, json!({"tokens_needed": 10, "model": model}))
            .await
            .expect(200);
        let mut usage = json!({"lease_id": lease["lease_id"], "input_tokens": 5, "output_tokens": 5,
                               "status_code": status_code, "model": model, "latency_ms": 20});
        if let Some(error) = error {
            usage["error"] = json!(error);
        }
        pools.release_with(&a, usage).await.expect(200);
    }
    let held = pools.admitted(&provider_id, 10).await;

    let status = pools.status(&provider_id).await;
    assert_eq!(status["provider_id"], provider_id.as_str(), "{status}");
    assert_eq!(
        (
            int_of(&status, "total_accounts"),
            int_of(&status, "active_accounts"),
            int_of(&status, "available_accounts"),
            int_of(&status, "in_flight")
        ),
        (2, 1, 1, 1),
        "{status}"
    );
    assert_eq!(status["limits"], json!({"rpm": 1000}), "{status}");
    let accounts = status["accounts"].as_array().unwrap();
    let inactive = accounts
        .iter()
        .find(|x| x["account_id"] == off.as_str())
        .unwrap();
    assert_eq!(inactive["available"], false, "{inactive}");
    assert_eq!(inactive["reason"], "account inactive", "{inactive}");

    let stats = pools
        .api
        .admin(Method::GET, &format!("/api/v1/stats/pool/{provider_id}"))
        .send()
        .await
        .expect(200);
    let top = stats["top_models"].as_array().unwrap();
    assert_eq!(top[0]["model"], "model-a", "{stats}");
    assert_eq!(top[0]["requests"], 3, "{stats}");
    assert_eq!(top[1]["model"], "model-b", "{stats}");
    let errors = stats["errors"].as_array().unwrap();
    for (code, error) in [(429, "upstream rate limited"), (500, "upstream error")] {
        assert!(
            errors
                .iter()
                .any(|e| e["status_code"] == code && e["error"] == error && e["count"] == 1),
            "{code} {error} in {stats}"
        );
    }
    assert_eq!(int_of(&stats["usage"], "total_requests"), 4, "{stats}");
    assert_eq!(int_of(&stats["usage"], "successful_requests"), 2, "{stats}");
    assert!(stats["daily"].is_array(), "{stats}");
    pools.release(&held, 10).await;
}

/// Bad input: a clear 4xx, and nothing changed.
#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let ctx = Ctx::new("pool_bad").await;
    let pools = Pools::new();
    let (provider_id, account_id) = pools.single("bad", 1000, json!({"rpm": 100})).await;
    let lease = pools.admitted(&provider_id, 100).await;
    let lease_id = text(&lease, "lease_id");
    let before = account_state(&pools, &account_id).await;
    let provider_before = pools
        .api
        .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}"))
        .send()
        .await
        .expect(200);

    // Unknown provider, account, lease: 404.
    pools
        .acquire(UNKNOWN_ID, 1)
        .await
        .expect_error(404, Some("not_found"));
    pools
        .release_with(
            UNKNOWN_ID,
            json!({"lease_id": lease_id, "output_tokens": 1}),
        )
        .await
        .expect_error(404, Some("not_found"));
    pools
        .release_with(
            &account_id,
            json!({"lease_id": UNKNOWN_ID, "output_tokens": 1}),
        )
        .await
        .expect_error(404, Some("not_found"));
    pools
        .api
        .service(Method::GET, &format!("/api/v1/stats/quota/{UNKNOWN_ID}"))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    pools
        .api
        .service(Method::GET, &format!("/api/v1/pool/{UNKNOWN_ID}/status"))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    pools
        .api
        .admin(Method::POST, &format!("{PROVIDERS}/{UNKNOWN_ID}/accounts"))
        .json(&json!({"credentials": {"k": 1}}))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    // Not a uuid: 400.
    pools.acquire("not-a-uuid", 1).await.expect_error(400, None);
    // Negative tokens, unknown strategy, ttl out of range, wrong types, unknown fields: 400.
    pools
        .acquire(&provider_id, -1)
        .await
        .expect_error(400, None);
    pools
        .acquire_with(
            &provider_id,
            json!({"tokens_needed": 1, "strategy": "cheapest"}),
        )
        .await
        .expect_error(400, None);
    pools
        .acquire_with(&provider_id, json!({"tokens_needed": 1, "lease_ttl_s": 0}))
        .await
        .expect_error(400, None);
    pools
        .acquire_with(&provider_id, json!({"tokens_needed": "1"}))
        .await
        .expect_error(400, Some("invalid_body"));
    pools
        .acquire_with(&provider_id, json!({"tokens_needed": 1, "priority": 1}))
        .await
        .expect_error(400, Some("invalid_body"));
    pools
        .api
        .service(Method::POST, &format!("/api/v1/pool/{provider_id}/acquire"))
        .raw_json("{\"tokens_needed\": ")
        .send()
        .await
        .expect_error(400, Some("invalid_json"));
    pools
        .release_with(
            &account_id,
            json!({"lease_id": lease_id, "output_tokens": -5}),
        )
        .await
        .expect_error(400, None);
    pools
        .release_with(
            &account_id,
            json!({"lease_id": lease_id, "status_code": 99}),
        )
        .await
        .expect_error(400, None);
    pools
        .release_with(&account_id, json!({"lease_id": lease_id, "tokens": 5}))
        .await
        .expect_error(400, Some("invalid_body"));
    // Unknown limit type, negative limit, unknown strategy or field on a provider, bad account
    // options: 400 (the code where the sidecar refuses before SQL).
    let limits = format!("{PROVIDERS}/{provider_id}/limits");
    let provider = format!("{PROVIDERS}/{provider_id}");
    let accounts = format!("{provider}/accounts");
    let cases: Vec<(Method, String, Value, Option<&str>)> = vec![
        (
            Method::PUT,
            format!("{limits}/rps"),
            json!({"limit_value": 5}),
            None,
        ),
        (
            Method::PUT,
            format!("{limits}/rpm"),
            json!({"limit_value": -5}),
            None,
        ),
        (
            Method::PUT,
            provider.clone(),
            json!({"strategy": "cheapest"}),
            None,
        ),
        (Method::PUT, provider.clone(), json!({"color": "red"}), None),
        (
            Method::POST,
            PROVIDERS.to_string(),
            json!({"name": ctx.id("p"), "strategy": "cheapest"}),
            None,
        ),
        (
            Method::POST,
            PROVIDERS.to_string(),
            json!({"name": ctx.id("p"), "limits": {"rps": 1}}),
            None,
        ),
        (
            Method::POST,
            accounts.clone(),
            json!({"quota_limit": 5}),
            Some("invalid_body"),
        ),
        (
            Method::POST,
            accounts,
            json!({"credentials": {"k": 1}, "period_s": 5}),
            None,
        ),
    ];
    for (method, path, body, code) in cases {
        pools
            .api
            .admin(method, &path)
            .json(&body)
            .send()
            .await
            .expect_error(400, code);
    }
    pools
        .api
        .admin(Method::GET, "/api/v1/admin/alerts")
        .query(&[("since", "soon".into())])
        .send()
        .await
        .expect_error(400, Some("invalid_query"));
    // A duplicate provider name: 409.
    pools
        .api
        .admin(Method::POST, PROVIDERS)
        .json(&json!({"name": provider_before["name"]}))
        .send()
        .await
        .expect_error(409, None);

    assert_eq!(
        account_state(&pools, &account_id).await,
        before,
        "refusals changed the account"
    );
    let provider_after = pools
        .api
        .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(provider_after["limits"], provider_before["limits"]);
    assert_eq!(provider_after["strategy"], provider_before["strategy"]);
    let accounts = pools
        .api
        .admin(Method::GET, &format!("{PROVIDERS}/{provider_id}/accounts"))
        .send()
        .await
        .expect(200);
    assert_eq!(
        int_of(&accounts, "total"),
        1,
        "no account was created: {accounts}"
    );

    // Released once: fine; twice: 409 lease_not_held, nothing counted twice.
    pools.release(&lease, 50).await;
    let after_release = account_state(&pools, &account_id).await;
    assert_eq!(int_of(&after_release, "quota_used"), 50, "{after_release}");
    pools
        .release_with(
            &account_id,
            json!({"lease_id": lease_id, "output_tokens": 50}),
        )
        .await
        .expect_error(409, Some("lease_not_held"));
    assert_eq!(account_state(&pools, &account_id).await, after_release);
    // A lease of another account: 404.
    let (_, other_account) = pools.single("bad_other", 1000, json!({})).await;
    let lease = pools.admitted(&provider_id, 1).await;
    pools
        .release_with(
            &other_account,
            json!({"lease_id": lease["lease_id"], "output_tokens": 1}),
        )
        .await
        .expect_error(404, Some("not_found"));
    pools.release(&lease, 1).await;
}
