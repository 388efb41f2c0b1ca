//! Seed 004's clients work unchanged (issue 10): every body a service written against seed 004's
//! origin implementation reads has the keys it reads (extra keys are fine, except in the two
//! plan lists, whose keys seed 004's own tests count), `transaction_id` is a JSON string, and the
//! status codes are seed 004's (403 wrong token, 404 unknown user / tier / plan, 409 conflict,
//! 402 no payment, 422 invalid body).

use std::collections::BTreeSet;

use pg_quota_e2e::*;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {v}"))
        .keys()
        .cloned()
        .collect()
}

/// `v` has at least these keys.
fn has_keys(what: &str, v: &Value, expected: &[&str]) {
    let have = keys(v);
    let missing: Vec<&&str> = expected.iter().filter(|k| !have.contains(**k)).collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?} in {v}");
}

/// `v` has exactly these keys.
fn exact_keys(what: &str, v: &Value, expected: &[&str]) {
    let want: BTreeSet<String> = expected.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys(v), want, "{what}: {v}");
}

fn string_id(what: &str, v: &Value) {
    assert!(
        v["transaction_id"]
            .as_str()
            .is_some_and(|s| s.parse::<i64>().is_ok()),
        "{what}: transaction_id must be a JSON string: {v}"
    );
}

#[tokio::test]
async fn seed_004_bodies_have_the_seed_keys() {
    let ctx = Ctx::new("seed004_shapes").await;
    let api = &ctx.api;

    // Admin: plans.
    let input = ctx.plan_input(json!({"multiplier": 1.5, "purchase_rate": 1.2}));
    let tier = input["tier"].as_str().unwrap().to_string();
    let created = api
        .admin(Method::POST, "/api/admin/subscription-plans")
        .json(&input)
        .send()
        .await
        .expect(201);
    has_keys("create plan", &created, &["success", "plan"]);
    assert_eq!(created["success"], true);
    has_keys(
        "created plan",
        &created["plan"],
        &[
            &PUBLIC_PLAN_KEYS[..8],
            &["active", "created_at", "updated_at"],
        ]
        .concat(),
    );
    let admin_list = api
        .admin(Method::GET, "/api/admin/subscription-plans")
        .send()
        .await
        .expect(200);
    let plans = admin_list["plans"].as_array().expect("plans");
    assert!(!plans.is_empty());
    for p in plans {
        exact_keys("admin plan", p, ADMIN_PLAN_KEYS);
    }
    let public_list = api
        .anon(Method::GET, "/api/v1/subscription/plans")
        .send()
        .await
        .expect(200);
    let plans = public_list["plans"].as_array().expect("plans");
    assert!(plans.iter().any(|p| p["tier"] == tier.as_str()));
    for p in plans {
        exact_keys("public plan", p, PUBLIC_PLAN_KEYS);
    }
    let m = api
        .admin(
            Method::PATCH,
            &format!("/api/admin/subscription-plans/{tier}/multiplier?multiplier=1.5"),
        )
        .send()
        .await
        .expect(200);
    has_keys(
        "multiplier",
        &m,
        &[
            "success",
            "tier",
            "old_multiplier",
            "new_multiplier",
            "updated_at",
        ],
    );
    let r = api
        .admin(
            Method::PATCH,
            &format!("/api/admin/subscription-plans/{tier}/purchase-rate?purchase_rate=1.2"),
        )
        .send()
        .await
        .expect(200);
    has_keys(
        "purchase rate",
        &r,
        &[
            "success",
            "tier",
            "old_purchase_rate",
            "new_purchase_rate",
            "updated_at",
        ],
    );
    // The same rate again: nothing changes for the other tests.
    let x = api
        .admin(
            Method::PATCH,
            &format!("/api/admin/settings/exchange-rate?base_rate={DEFAULT_BASE_RATE}"),
        )
        .send()
        .await
        .expect(200);
    has_keys(
        "exchange rate",
        &x,
        &["success", "old_base_rate", "new_base_rate", "updated_at"],
    );

    // Internal: a user's life.
    let (user, token) = ctx.create_user_with_token().await;
    let sub = api
        .service(Method::POST, "/api/internal/subscription/update")
        .json(
            &json!({"user_id": user, "subscription_tier": tier, "credits_to_add": 1100,
                      "operation_id": ctx.id("sub")}),
        )
        .send()
        .await
        .expect(200);
    has_keys(
        "subscription update",
        &sub,
        &[
            "success",
            "user_id",
            "previous_tier",
            "new_tier",
            "credits_added",
            "new_balance",
            "multiplier",
            "purchase_rate",
        ],
    );
    assert_eq!(sub["new_tier"], tier.as_str());
    assert_eq!(int(&sub, "new_balance"), 1100);

    let add_op = ctx.id("add");
    let add = api
        .service(Method::POST, "/api/internal/credits/add")
        .json(
            &json!({"user_id": user, "amount_usd": 10.0, "source": "stripe", "operation_id": add_op,
                      "description": "top up", "metadata": {"invoice": "in_1"}}),
        )
        .send()
        .await
        .expect(200);
    has_keys(
        "add",
        &add,
        &[
            "success",
            "transaction_id",
            "user_id",
            "amount_usd",
            "credits_added",
            "purchase_rate",
            "balance_before",
            "balance_after",
            "operation_id",
        ],
    );
    string_id("add", &add);
    assert_eq!(int(&add, "credits_added"), 120_000);
    let source: Option<String> = ctx
        .db
        .query_one(
            "SELECT metadata ->> 'source' FROM quota.ledger WHERE user_id = $1 AND operation_id = $2",
            &[&user, &add_op],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(source.as_deref(), Some("stripe"), "source is recorded");

    let calc = api
        .service(Method::POST, "/api/internal/credits/calculate")
        .json(&json!({"user_id": user, "cost_usd": 0.0123}))
        .send()
        .await
        .expect(200);
    has_keys(
        "calculate",
        &calc,
        &[
            "user_id",
            "cost_usd",
            "credits_to_charge",
            "multiplier",
            "current_balance",
            "balance_after",
            "sufficient",
        ],
    );
    assert_eq!(int(&calc, "credits_to_charge"), 184);

    for query in ["?required_credits=5", ""] {
        let check = api
            .service(
                Method::GET,
                &format!("/api/internal/credits/check/{user}{query}"),
            )
            .send()
            .await
            .expect(200);
        has_keys(
            "check",
            &check,
            &[
                "user_id",
                "has_subscription",
                "subscription_tier",
                "balance",
                "sufficient",
                "multiplier",
            ],
        );
        assert_eq!(check["sufficient"], true, "{check}");
        assert_eq!(check["has_subscription"], true);
    }

    let balance = api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    has_keys("balance", &balance, &["user_id", "subscription", "credits"]);
    has_keys(
        "balance.subscription",
        &balance["subscription"],
        &["tier", "monthly_cost", "multiplier", "purchase_rate"],
    );
    has_keys(
        "balance.credits",
        &balance["credits"],
        &["balance", "total_earned", "total_spent"],
    );

    let charge = ctx.charge(&user, 0.0123, &ctx.id("c")).await.expect(200);
    has_keys(
        "charge",
        &charge,
        &[
            "success",
            "transaction_id",
            "user_id",
            "cost_usd",
            "credits_charged",
            "balance_before",
            "balance_after",
            "operation_id",
        ],
    );
    string_id("charge", &charge);

    // Public: the user's view.
    let s = api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    has_keys("subscription", &s, &["subscription", "credits"]);
    has_keys(
        "subscription.subscription",
        &s["subscription"],
        PUBLIC_PLAN_KEYS,
    );
    has_keys(
        "subscription.credits",
        &s["credits"],
        &["balance", "total_earned", "total_spent"],
    );
    let tx = api
        .user(&token, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect(200);
    let items = tx["transactions"].as_array().expect("transactions");
    assert_eq!(items.len(), 3);
    for item in items {
        has_keys(
            "transaction",
            item,
            &[
                "id",
                "type",
                "date",
                "credits",
                "balance_after",
                "description",
                "operation_id",
            ],
        );
    }
    let charged = items
        .iter()
        .find(|i| i["type"] == "charge")
        .expect("a charge");
    assert_eq!(num(charged, "cost_usd"), 0.0123);
    let added = items.iter().find(|i| i["type"] == "add").expect("an add");
    assert_eq!(num(added, "amount_usd"), 10.0);

    // A purchase against a payment the payment side confirmed.
    let payment = ctx.id("pay");
    let confirmed = api
        .service(Method::POST, "/api/internal/payments")
        .json(
            &json!({"payment_id": payment, "user_id": user, "amount_usd": 5.0,
                      "payment_method_id": "pm_card_visa"}),
        )
        .send()
        .await
        .expect(201);
    assert_eq!(confirmed["status"], "confirmed", "{confirmed}");
    let bought = api
        .user(&token, Method::POST, "/api/v1/credits/purchase")
        .json(&json!({"amount_usd": 5.0, "payment_method_id": "pm_card_visa"}))
        .send()
        .await
        .expect(200);
    has_keys(
        "purchase",
        &bought,
        &[
            "success",
            "transaction_id",
            "amount_usd",
            "credits_added",
            "new_balance",
        ],
    );
    string_id("purchase", &bought);

    let stats = api
        .admin(Method::GET, "/api/admin/statistics")
        .send()
        .await
        .expect(200);
    has_keys(
        "statistics",
        &stats,
        &[
            "period",
            "total_users",
            "subscriptions",
            "credits",
            "transactions",
        ],
    );
    has_keys("statistics.period", &stats["period"], &["start", "end"]);
    assert!(
        stats["subscriptions"]["subscriptions"].is_object(),
        "{stats}"
    );
    has_keys(
        "statistics.credits",
        &stats["credits"],
        &["total_earned", "total_spent", "current_balance"],
    );
    has_keys(
        "statistics.transactions",
        &stats["transactions"],
        &["total", "charges", "additions"],
    );
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn seed_004_status_codes() {
    let ctx = Ctx::new("seed004_status").await;
    let api = &ctx.api;
    let (user, _token) = ctx.create_user_with_token().await;
    // 403 for a wrong admin, service or user token.
    api.anon(Method::GET, "/api/admin/subscription-plans")
        .bearer("wrong")
        .send()
        .await
        .expect_error(403, None);
    api.anon(
        Method::GET,
        &format!("/api/internal/credits/balance/{user}"),
    )
    .header("X-Service-Token", "wrong")
    .send()
    .await
    .expect_error(403, None);
    api.user("pq_wrong", Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect_error(403, None);
    // 404 for an unknown user, tier or plan.
    api.service(Method::GET, "/api/internal/credits/balance/nobody-at-all")
        .send()
        .await
        .expect_error(404, None);
    api.service(Method::POST, "/api/internal/subscription/update")
        .json(
            &json!({"user_id": user, "subscription_tier": "no-such-tier", "credits_to_add": 0,
                      "operation_id": ctx.id("s")}),
        )
        .send()
        .await
        .expect_error(404, None);
    api.admin(Method::PUT, "/api/admin/subscription-plans/no-such-tier")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect_error(404, None);
    // 409 for a conflict (a duplicate plan, an operation id reused with other parameters).
    let plan = ctx.create_plan(json!({})).await;
    api.admin(Method::POST, "/api/admin/subscription-plans")
        .json(&ctx.plan_input(json!({"tier": plan["tier"]})))
        .send()
        .await
        .expect_error(409, None);
    ctx.top_up_credits(&user, 1000).await;
    let op = ctx.id("c");
    ctx.charge(&user, 0.01, &op).await.expect(200);
    ctx.charge(&user, 0.02, &op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    // 402 for a purchase without a confirmed payment; nothing written.
    let (_, token) = ctx.issue_token(&user).await;
    let before = ctx.balance(&user).await;
    api.user(&token, Method::POST, "/api/v1/credits/purchase")
        .json(&json!({"amount_usd": 1000000000.0, "payment_method_id": ""}))
        .send()
        .await
        .expect_error(422, None);
    api.user(&token, Method::POST, "/api/v1/credits/purchase")
        .json(&json!({"amount_usd": 10.0, "payment_method_id": "pm_card"}))
        .send()
        .await
        .expect_error(402, Some("payment_required"));
    assert_eq!(ctx.balance(&user).await, before);
    // 422 for invalid bodies: malformed JSON, a missing field, a wrong type, an unknown field.
    for body in [
        "{",
        r#"{"user_id":"u"}"#,
        r#"{"user_id":"u","cost_usd":"x","operation_id":"o"}"#,
        r#"{"user_id":"u","cost_usd":0.1,"operation_id":"o","bogus":1}"#,
    ] {
        api.service(Method::POST, "/api/internal/credits/charge")
            .raw_json(body)
            .send()
            .await
            .expect_error(422, None);
    }
    api.admin(Method::POST, "/api/admin/subscription-plans")
        .raw_json(r#"{"tier": 5}"#)
        .send()
        .await
        .expect_error(422, None);
}
