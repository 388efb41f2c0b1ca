//! Authentication of every endpoint group (SPEC 1.5): missing credential 401, wrong credential 403,
//! the open endpoints work without credentials, and a rejected call writes nothing.

use pg_quota_e2e::*;

/// (method, path, body) of every internal endpoint, against an existing user.
fn internal_endpoints(user: &str, op: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::GET,
            format!("/api/internal/credits/check/{user}?required_credits=1"),
            None,
        ),
        (
            Method::POST,
            "/api/internal/credits/calculate".into(),
            Some(json!({"cost_usd": 0.01, "user_id": user})),
        ),
        (
            Method::POST,
            "/api/internal/credits/charge".into(),
            Some(json!({"user_id": user, "cost_usd": 0.0001, "operation_id": format!("{op}_c")})),
        ),
        (
            Method::POST,
            "/api/internal/credits/add".into(),
            Some(json!({"user_id": user, "amount_usd": 1.0, "operation_id": format!("{op}_a")})),
        ),
        (
            Method::GET,
            format!("/api/internal/credits/balance/{user}"),
            None,
        ),
        (
            Method::POST,
            "/api/internal/subscription/update".into(),
            Some(
                json!({"user_id": user, "subscription_tier": "nonexistent", "credits_to_add": 1, "operation_id": format!("{op}_s")}),
            ),
        ),
    ]
}

fn public_endpoints(op: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/api/v1/subscription".into(), None),
        (Method::GET, "/api/v1/transactions".into(), None),
        (
            Method::POST,
            "/api/v1/credits/purchase".into(),
            Some(
                json!({"amount_usd": 1.0, "payment_method_id": "pm_e2e", "operation_id": format!("{op}_p")}),
            ),
        ),
    ]
}

fn admin_endpoints(user: &str, tier: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/api/admin/subscription-plans".into(),
            Some(
                json!({"tier": format!("{tier}x"), "name": format!("{tier}x"), "multiplier": 1.0, "purchase_rate": 1.0}),
            ),
        ),
        (Method::GET, "/api/admin/subscription-plans".into(), None),
        (
            Method::PUT,
            format!("/api/admin/subscription-plans/{tier}"),
            Some(json!({"name": format!("{tier} hacked")})),
        ),
        (
            Method::DELETE,
            format!("/api/admin/subscription-plans/{tier}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/admin/subscription-plans/{tier}/multiplier?multiplier=2.0"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/admin/subscription-plans/{tier}/purchase-rate?purchase_rate=2.0"),
            None,
        ),
        (
            Method::PATCH,
            "/api/admin/settings/exchange-rate?base_rate=1".into(),
            Some(json!({"base_rate": 1})),
        ),
        (Method::GET, "/api/admin/statistics".into(), None),
        (
            Method::POST,
            "/api/admin/users".into(),
            Some(json!({"id": format!("{user}_new")})),
        ),
        (Method::GET, "/api/admin/users".into(), None),
        (Method::GET, format!("/api/admin/users/{user}"), None),
        (
            Method::PUT,
            format!("/api/admin/users/{user}"),
            Some(json!({"name": "hacked"})),
        ),
        (
            Method::POST,
            "/api/admin/users/import".into(),
            Some(json!([{"id": format!("{user}_imp")}])),
        ),
        (
            Method::POST,
            format!("/api/admin/users/{user}/api-tokens"),
            Some(json!({"label": "x"})),
        ),
        (Method::DELETE, "/api/admin/api-tokens/1".into(), None),
    ]
}

fn with_body(req: Req, body: &Option<Value>) -> Req {
    match body {
        Some(b) => req.json(b),
        None => req,
    }
}

#[tokio::test]
async fn internal_endpoints_need_the_service_token() {
    let ctx = Ctx::new("auth_internal").await;
    let user = ctx.create_user().await;
    ctx.top_up_credits(&user, 1000).await;
    let op = ctx.id("op");
    for (m, path, body) in internal_endpoints(&user, &op) {
        with_body(ctx.api.anon(m.clone(), &path), &body)
            .send()
            .await
            .expect_error(401, None);
        with_body(
            ctx.api
                .anon(m.clone(), &path)
                .header("X-Service-Token", "wrong-token"),
            &body,
        )
        .send()
        .await
        .expect_error(403, None);
        // The admin token is not a service token.
        with_body(
            ctx.api
                .anon(m.clone(), &path)
                .header("X-Service-Token", &env().admin_token),
            &body,
        )
        .send()
        .await
        .expect_error(403, None);
    }
    for suffix in ["_c", "_a", "_s"] {
        assert_eq!(
            ctx.ledger_rows(&format!("{op}{suffix}")).await,
            0,
            "unauthenticated call wrote {op}{suffix}"
        );
    }
    assert_eq!(ctx.balance(&user).await, 1000);
}

#[tokio::test]
async fn public_endpoints_need_a_valid_user_token() {
    let ctx = Ctx::new("auth_public").await;
    let user = ctx.create_user().await;
    let op = ctx.id("op");
    for (m, path, body) in public_endpoints(&op) {
        with_body(ctx.api.anon(m.clone(), &path), &body)
            .send()
            .await
            .expect_error(401, None);
        let unknown = format!("pq_{}", "0".repeat(64));
        with_body(ctx.api.user(&unknown, m.clone(), &path), &body)
            .send()
            .await
            .expect_error(403, None);
        with_body(ctx.api.user("garbage", m.clone(), &path), &body)
            .send()
            .await
            .expect_error(403, None);
        // Neither the admin nor the service token is a user token.
        with_body(ctx.api.user(&env().admin_token, m.clone(), &path), &body)
            .send()
            .await
            .expect_error(403, None);
        with_body(ctx.api.user(&env().service_token, m.clone(), &path), &body)
            .send()
            .await
            .expect_error(403, None);
    }
    assert_eq!(ctx.ledger_rows(&format!("{op}_p")).await, 0);
    assert_eq!(ctx.balance(&user).await, 0);
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let ctx = Ctx::new("auth_admin").await;
    let user = ctx.create_user().await;
    let plan = ctx.create_plan(json!({})).await;
    let tier = plan["tier"].as_str().unwrap().to_string();
    for (m, path, body) in admin_endpoints(&user, &tier) {
        with_body(ctx.api.anon(m.clone(), &path), &body)
            .send()
            .await
            .expect_error(401, None);
        with_body(ctx.api.anon(m.clone(), &path).bearer("wrong-token"), &body)
            .send()
            .await
            .expect_error(403, None);
        with_body(
            ctx.api
                .anon(m.clone(), &path)
                .header("X-Admin-Token", "wrong-token"),
            &body,
        )
        .send()
        .await
        .expect_error(403, None);
        // The service token is not an admin token.
        with_body(
            ctx.api.anon(m.clone(), &path).bearer(&env().service_token),
            &body,
        )
        .send()
        .await
        .expect_error(403, None);
    }
    // Nothing changed: the plan is intact, the user still exists with its name unset.
    let plans = ctx
        .api
        .admin(Method::GET, "/api/admin/subscription-plans")
        .send()
        .await
        .expect(200);
    let mine: Vec<&Value> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["tier"] == tier.as_str())
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "plan deleted or duplicated by unauthenticated calls: {plans}"
    );
    assert_eq!(mine[0]["name"], plan["name"]);
    assert_eq!(mine[0]["multiplier"], plan["multiplier"]);
    let u = ctx
        .api
        .admin(Method::GET, &format!("/api/admin/users/{user}"))
        .send()
        .await
        .expect(200);
    assert_ne!(u["name"], "hacked");
    ctx.api
        .admin(Method::GET, &format!("/api/admin/users/{user}_new"))
        .send()
        .await
        .expect_error(404, None);
}

#[tokio::test]
async fn admin_token_is_accepted_in_x_admin_token() {
    let ctx = Ctx::new("auth_x_admin").await;
    let body = ctx
        .api
        .anon(Method::GET, "/api/admin/subscription-plans")
        .header("X-Admin-Token", &env().admin_token)
        .send()
        .await
        .expect(200);
    assert!(body["plans"].is_array(), "{body}");
    let input = ctx.plan_input(json!({}));
    let created = ctx
        .api
        .anon(Method::POST, "/api/admin/subscription-plans")
        .header("X-Admin-Token", &env().admin_token)
        .json(&input)
        .send()
        .await
        .expect(201);
    assert_eq!(created["success"], true, "{created}");
    assert_eq!(created["plan"]["tier"], input["tier"]);
}

#[tokio::test]
async fn open_endpoints_need_no_credentials() {
    let ctx = Ctx::new("auth_open").await;
    ctx.api
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect(200);
    ctx.api
        .anon(Method::GET, "/openapi.json")
        .send()
        .await
        .expect(200);
    ctx.api
        .anon(Method::GET, "/api/v1/subscription/plans")
        .send()
        .await
        .expect(200);
}

#[tokio::test]
async fn revoked_user_token_is_forbidden() {
    let ctx = Ctx::new("auth_revoked").await;
    let user = ctx.create_user().await;
    let (token_id, token) = ctx.issue_token(&user).await;
    let sub = ctx
        .api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    assert_eq!(sub["user_id"], user.as_str());
    let revoked = ctx
        .api
        .admin(Method::DELETE, &format!("/api/admin/api-tokens/{token_id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(revoked, json!({"token_id": token_id, "revoked": true}));
    ctx.api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect_error(403, None);
    ctx.api
        .user(&token, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect_error(403, None);
    // Revoking again changes nothing; an unknown token id is 404.
    let again = ctx
        .api
        .admin(Method::DELETE, &format!("/api/admin/api-tokens/{token_id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(again["revoked"], false);
    ctx.api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect_error(403, None);
    ctx.api
        .admin(Method::DELETE, "/api/admin/api-tokens/999999999999")
        .send()
        .await
        .expect_error(404, None);
}
