//! The public API (user API token as bearer) of SPEC 2: subscription, transactions, purchase, and
//! the open plan list.

use pg_quota_e2e::*;

const PURCHASE: &str = "/api/v1/credits/purchase";

/// The plans of a plan-list body, whether it is `{"plans": [...]}` or a bare array.
fn plans_of(body: &Value) -> Vec<Value> {
    let list = if body.is_array() {
        body
    } else {
        &body["plans"]
    };
    list.as_array()
        .unwrap_or_else(|| panic!("no plan list in {body}"))
        .clone()
}

#[tokio::test]
async fn subscription_endpoint_shows_the_plan_and_wallet() {
    let ctx = Ctx::new("pub_subscription").await;
    let plan = ctx
        .create_plan(json!({"credits_included": 1000, "bonus_credits": 250, "multiplier": 1.5}))
        .await;
    let tier = plan["tier"].as_str().unwrap().to_string();
    let (user, token) = ctx.create_user_with_token().await;

    // Before subscribing: no tier, no plan.
    let none = ctx
        .api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    assert_eq!(none["user_id"], user.as_str());
    assert!(none["subscription_tier"].is_null(), "{none}");
    assert!(none["plan"].is_null(), "{none}");
    assert_eq!(int(&none, "balance"), 0);

    ctx.subscribe(&user, &tier, 1250).await;
    ctx.charge(&user, 0.001, &ctx.id("op")).await.expect(200); // 15 credits at 1.5
    let sub = ctx
        .api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    assert_fields(
        &sub,
        &[
            "user_id",
            "subscription_tier",
            "status",
            "started_at",
            "plan",
            "balance",
            "total_earned",
            "total_spent",
        ],
    );
    assert_eq!(sub["user_id"], user.as_str());
    assert_eq!(sub["subscription_tier"], tier.as_str());
    assert!(sub["status"].is_string(), "{sub}");
    assert!(sub["started_at"].is_string(), "{sub}");
    assert_eq!(sub["plan"]["tier"], tier.as_str());
    assert_eq!(int(&sub["plan"], "total_credits"), 1250);
    assert_eq!(num(&sub["plan"], "multiplier"), 1.5);
    assert_eq!(int(&sub, "balance"), 1235);
    assert_eq!(int(&sub, "total_earned"), 1250);
    assert_eq!(int(&sub, "total_spent"), 15);
}

#[tokio::test]
async fn transactions_are_newest_first_paged_and_filtered() {
    let ctx = Ctx::new("pub_transactions").await;
    let plan = ctx.create_plan(json!({})).await;
    let (user, token) = ctx.create_user_with_token().await;
    ctx.subscribe(&user, plan["tier"].as_str().unwrap(), 1000)
        .await;
    ctx.top_up_credits(&user, 100).await;
    let mut charge_ops = vec![];
    for _ in 0..3 {
        let op = ctx.id("c");
        ctx.charge(&user, 0.001, &op).await.expect(200);
        charge_ops.push(op);
    }
    ctx.add_usd(&user, 0.01).await;

    let all = ctx
        .api
        .user(&token, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect(200);
    assert_fields(&all, &["transactions", "total", "limit", "offset"]);
    assert_eq!(int(&all, "total"), 6);
    let txs = all["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 6);
    for t in txs {
        assert_fields(
            t,
            &[
                "transaction_id",
                "transaction_type",
                "credits",
                "balance_before",
                "balance_after",
                "cost_usd",
                "amount_usd",
                "description",
                "metadata",
                "operation_id",
                "created_at",
            ],
        );
        assert_eq!(
            int(t, "balance_after") - int(t, "balance_before"),
            int(t, "credits"),
            "{t}"
        );
    }
    let types: Vec<&str> = txs
        .iter()
        .map(|t| t["transaction_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["add", "charge", "charge", "charge", "bonus", "subscription"],
        "newest first"
    );
    let ids: Vec<i64> = txs.iter().map(|t| int(t, "transaction_id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "transaction ids not descending: {ids:?}"
    );
    assert_eq!(txs[1]["operation_id"], charge_ops[2].as_str());
    assert_eq!(
        int(&txs[1], "credits"),
        -10,
        "charges are negative: {}",
        txs[1]
    );
    assert_eq!(int(&txs[0], "balance_after"), 1000 + 100 - 30 + 100);

    // Paging.
    let page = ctx
        .api
        .user(&token, Method::GET, "/api/v1/transactions")
        .query(&[("limit", "2".into()), ("offset", "2".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(int(&page, "total"), 6);
    assert_eq!(int(&page, "limit"), 2);
    assert_eq!(int(&page, "offset"), 2);
    let page_ids: Vec<i64> = page["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| int(t, "transaction_id"))
        .collect();
    assert_eq!(page_ids, ids[2..4]);
    let past_end = ctx
        .api
        .user(&token, Method::GET, "/api/v1/transactions")
        .query(&[("offset", "100".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(past_end["transactions"].as_array().unwrap().len(), 0);

    // Filter by type.
    let charges = ctx
        .api
        .user(&token, Method::GET, "/api/v1/transactions")
        .query(&[("type", "charge".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(int(&charges, "total"), 3);
    let ops: Vec<&str> = charges["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["operation_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            charge_ops[2].as_str(),
            charge_ops[1].as_str(),
            charge_ops[0].as_str()
        ]
    );

    // Limits are 1..100.
    for (k, v) in [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-1"),
        ("limit", "abc"),
        ("offset", "-1"),
        ("type", "gift"),
    ] {
        ctx.api
            .user(&token, Method::GET, "/api/v1/transactions")
            .query(&[(k, v.into())])
            .send()
            .await
            .expect_error(400, None);
    }
    for v in ["1", "100"] {
        ctx.api
            .user(&token, Method::GET, "/api/v1/transactions")
            .query(&[("limit", v.into())])
            .send()
            .await
            .expect(200);
    }
}

#[tokio::test]
async fn transactions_show_only_the_token_owners_entries() {
    let ctx = Ctx::new("pub_tx_isolation").await;
    let (a, token_a) = ctx.create_user_with_token().await;
    let (b, _token_b) = ctx.create_user_with_token().await;
    ctx.top_up_credits(&a, 10).await;
    ctx.top_up_credits(&b, 20).await;
    ctx.top_up_credits(&b, 30).await;
    let body = ctx
        .api
        .user(&token_a, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect(200);
    assert_eq!(int(&body, "total"), 1);
    assert_eq!(int(&body["transactions"][0], "credits"), 10);
}

#[tokio::test]
async fn purchase_adds_credits_at_the_plans_purchase_rate() {
    let ctx = Ctx::new("pub_purchase").await;
    let plan = ctx.create_plan(json!({"purchase_rate": 1.2})).await;
    let (user, token) = ctx.create_user_with_token().await;
    ctx.subscribe(&user, plan["tier"].as_str().unwrap(), 1)
        .await;
    let body = ctx
        .api
        .user(&token, Method::POST, PURCHASE)
        .json(&json!({"amount_usd": 10.0, "payment_method_id": "pm_card_visa"}))
        .send()
        .await
        .expect(200);
    assert_eq!(body["success"], true);
    assert_eq!(body["user_id"], user.as_str());
    assert_eq!(body["transaction_type"], "add");
    assert_eq!(int(&body, "credits_added"), 120_000);
    assert_eq!(int(&body, "balance_after"), 120_001);
    assert!(
        body["operation_id"].as_str().is_some_and(|s| !s.is_empty()),
        "purchase gets an operation_id: {body}"
    );
    assert_eq!(ctx.balance(&user).await, 120_001);
    // Without an operation_id, two purchases are two purchases.
    ctx.api
        .user(&token, Method::POST, PURCHASE)
        .json(&json!({"amount_usd": 10.0, "payment_method_id": "pm_card_visa"}))
        .send()
        .await
        .expect(200);
    assert_eq!(ctx.balance(&user).await, 240_001);
    // round_half_even(0.00005 * 1.2 * 10000) = round(0.6) = 1
    let small = ctx
        .api
        .user(&token, Method::POST, PURCHASE)
        .json(&json!({"amount_usd": 0.00005, "payment_method_id": "pm_card_visa"}))
        .send()
        .await
        .expect(200);
    assert_eq!(int(&small, "credits_added"), 1);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn purchase_with_operation_id_replays() {
    let ctx = Ctx::new("pub_purchase_replay").await;
    let (user, token) = ctx.create_user_with_token().await;
    let op = ctx.id("buy");
    let req = json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": op});
    let first = ctx
        .api
        .user(&token, Method::POST, PURCHASE)
        .json(&req)
        .send()
        .await
        .expect(200);
    assert_eq!(first["operation_id"], op.as_str());
    let balance = ctx.balance(&user).await;
    assert_eq!(balance, int(&first, "credits_added"));
    assert!(balance > 0);
    let again = ctx
        .api
        .user(&token, Method::POST, PURCHASE)
        .json(&req)
        .send()
        .await
        .expect(200);
    assert_eq!(again, first);
    assert_eq!(ctx.balance(&user).await, balance);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    ctx.api
        .user(&token, Method::POST, PURCHASE)
        .json(&json!({"amount_usd": 2.0, "payment_method_id": "pm_1", "operation_id": op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&user).await, balance);
}

#[tokio::test]
async fn purchase_rejects_invalid_input_and_writes_nothing() {
    let ctx = Ctx::new("pub_purchase_invalid").await;
    let (user, token) = ctx.create_user_with_token().await;
    for amount in [
        json!(-1.0),
        json!(0),
        json!(1e300),
        json!("NaN"),
        json!("10"),
    ] {
        let op = ctx.id("buy");
        ctx.api
            .user(&token, Method::POST, PURCHASE)
            .json(&json!({"amount_usd": amount, "payment_method_id": "pm_1", "operation_id": op}))
            .send()
            .await
            .expect_error(400, None);
        ctx.assert_nothing_written(&user, 0, &op).await;
    }
    let op = ctx.id("buy");
    for body in [
        json!({"payment_method_id": "pm_1", "operation_id": op}),
        json!({"amount_usd": 1.0, "operation_id": op}),
        json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": "z".repeat(256)}),
    ] {
        ctx.api
            .user(&token, Method::POST, PURCHASE)
            .json(&body)
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.api
        .user(&token, Method::POST, PURCHASE)
        .raw_json("{\"amount_usd\": ")
        .send()
        .await
        .expect_error(400, None);
    ctx.assert_nothing_written(&user, 0, &op).await;
    let n: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.ledger WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn open_plan_list_shows_active_plans_with_total_credits() {
    let ctx = Ctx::new("pub_plans").await;
    let active = ctx
        .create_plan(json!({"credits_included": 5000, "bonus_credits": 500}))
        .await;
    let inactive = ctx.create_plan(json!({"active": false})).await;
    let body = ctx
        .api
        .anon(Method::GET, "/api/v1/subscription/plans")
        .send()
        .await
        .expect(200);
    let plans = plans_of(&body);
    let mine: Vec<&Value> = plans
        .iter()
        .filter(|p| p["tier"] == active["tier"])
        .collect();
    assert_eq!(mine.len(), 1, "active plan missing from {body}");
    assert_eq!(int(mine[0], "total_credits"), 5500);
    assert_eq!(int(mine[0], "credits_included"), 5000);
    assert_eq!(int(mine[0], "bonus_credits"), 500);
    assert!(
        plans.iter().all(|p| p["tier"] != inactive["tier"]),
        "inactive plan listed: {body}"
    );
    assert!(
        plans.iter().all(|p| p["active"] != false),
        "inactive plans listed: {body}"
    );
}
