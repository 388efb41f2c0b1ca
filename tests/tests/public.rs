//! The public API (user API token as bearer) of SPEC 2: subscription, transactions, purchase, and
//! the open plan list, in seed 004's shapes.

use pg_quota_e2e::*;

const PURCHASE: &str = "/api/v1/credits/purchase";

/// The keys every transaction item has; `cost_usd`, `amount_usd` and `refund_of` come only with
/// the types they belong to.
const TRANSACTION_KEYS: &[&str] = &[
    "id",
    "type",
    "date",
    "credits",
    "balance_before",
    "balance_after",
    "description",
    "operation_id",
    "metadata",
];

fn transaction_id(item: &Value) -> i64 {
    item["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("id is not a string of digits in {item}"))
}

/// Asserts an item's keys: the common ones plus exactly the type's own.
fn assert_transaction_item(item: &Value) {
    let mut keys = TRANSACTION_KEYS.to_vec();
    match item["type"].as_str() {
        Some("charge") => keys.push("cost_usd"),
        Some("add") => keys.push("amount_usd"),
        Some("refund") => keys.push("refund_of"),
        _ => {}
    }
    assert_exact_keys(item, &keys);
    transaction_id(item);
    assert!(item["date"].is_string(), "{item}");
    assert_eq!(
        int(item, "balance_after") - int(item, "balance_before"),
        int(item, "credits"),
        "{item}"
    );
}

#[tokio::test]
async fn subscription_endpoint_shows_the_plan_and_wallet() {
    let ctx = Ctx::new("pub_subscription").await;
    let plan = ctx
        .create_plan(json!({"credits_included": 1000, "bonus_credits": 250, "multiplier": 1.5, "monthly_cost": 19.99}))
        .await;
    let tier = plan["tier"].as_str().unwrap().to_string();
    let (user, token) = ctx.create_user_with_token().await;

    // Before subscribing: no subscription, an empty wallet.
    let none = ctx
        .api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    assert_eq!(
        none,
        json!({"user_id": user, "subscription": null,
               "credits": {"balance": 0, "total_earned": 0, "total_spent": 0}})
    );

    ctx.subscribe(&user, &tier, 1250).await;
    ctx.charge(&user, 0.001, &ctx.id("op")).await.expect(200); // 15 credits at 1.5
    let body = ctx
        .api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    assert_exact_keys(&body, &["user_id", "subscription", "credits"]);
    assert_eq!(body["user_id"], user.as_str());
    // The plan as users see it, with the subscription's status and start.
    let sub = &body["subscription"];
    assert_exact_keys(sub, &[PUBLIC_PLAN_KEYS, &["status", "started_at"]].concat());
    assert_eq!(sub["tier"], tier.as_str());
    assert_eq!(sub["name"], plan["name"]);
    assert_eq!(num(sub, "monthly_cost"), 19.99);
    assert_eq!(int(sub, "credits_included"), 1000);
    assert_eq!(int(sub, "bonus_credits"), 250);
    assert_eq!(int(sub, "total_credits"), 1250);
    assert_eq!(num(sub, "multiplier"), 1.5);
    assert_eq!(num(sub, "purchase_rate"), 1.0);
    assert!(sub["status"].is_string(), "{body}");
    assert!(sub["started_at"].is_string(), "{body}");
    assert_eq!(
        body["credits"],
        json!({"balance": 1235, "total_earned": 1250, "total_spent": 15})
    );
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
    assert_exact_keys(&all, &["transactions", "total", "limit", "offset"]);
    assert_eq!(int(&all, "total"), 6);
    assert_eq!(int(&all, "limit"), 20, "the default limit");
    assert_eq!(int(&all, "offset"), 0);
    let txs = all["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 6);
    txs.iter().for_each(assert_transaction_item);
    let types: Vec<&str> = txs.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["add", "charge", "charge", "charge", "bonus", "subscription"],
        "newest first"
    );
    let ids: Vec<i64> = txs.iter().map(transaction_id).collect();
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
    assert_eq!(num(&txs[1], "cost_usd"), 0.001);
    assert_eq!(num(&txs[0], "amount_usd"), 0.01);
    assert_eq!(int(&txs[0], "credits"), 100);
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
        .map(transaction_id)
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

    // Limits are 1..100, offsets >= 0, types known: a refused value names its field (422); a
    // value that is not a number is a bad query (422).
    for (k, v, field) in [
        ("limit", "0", "limit"),
        ("limit", "101", "limit"),
        ("limit", "-1", "limit"),
        ("offset", "-1", "offset"),
        ("type", "gift", "type"),
    ] {
        let body = ctx
            .api
            .user(&token, Method::GET, "/api/v1/transactions")
            .query(&[(k, v.into())])
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], field, "{k}={v}: {body}");
    }
    for (k, v) in [("limit", "abc"), ("offset", "1.5")] {
        ctx.api
            .user(&token, Method::GET, "/api/v1/transactions")
            .query(&[(k, v.into())])
            .send()
            .await
            .expect_error(422, Some("invalid_query"));
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

/// Each item carries the amounts of its own type, rounded as seed 004 shows them: `cost_usd` to
/// 4 places on charges, `amount_usd` to 2 on adds, `refund_of` on refunds; none on others.
#[tokio::test]
async fn transaction_items_carry_the_amounts_of_their_type() {
    let ctx = Ctx::new("pub_tx_amounts").await;
    let (user, token) = ctx.create_user_with_token().await;
    ctx.top_up_credits(&user, 1000).await;
    let charge_op = ctx.id("c");
    // 0.00012345 USD at multiplier 1: round_half_even(1.2345) = 1 credit.
    let charged = ctx.charge(&user, 0.00012345, &charge_op).await.expect(200);
    assert_eq!(int(&charged, "credits_charged"), 1);
    // 0.01234 USD at purchase rate 1: round_half_even(123.4) = 123 credits.
    assert_eq!(
        int(&ctx.add_usd(&user, 0.01234).await, "credits_added"),
        123
    );
    let refund_op = ctx.id("r");
    ctx.api
        .service(Method::POST, "/api/internal/credits/add")
        .json(
            &json!({"user_id": user, "transaction_type": "refund", "charge_operation_id": charge_op,
                      "operation_id": refund_op}),
        )
        .send()
        .await
        .expect(200);
    let body = ctx
        .api
        .user(&token, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect(200);
    let items = body["transactions"].as_array().unwrap();
    items.iter().for_each(assert_transaction_item);
    let of = |t: &str| {
        items
            .iter()
            .find(|i| i["type"] == t)
            .unwrap_or_else(|| panic!("no {t} in {body}"))
    };
    assert_eq!(num(of("charge"), "cost_usd"), 0.0001);
    assert_eq!(int(of("charge"), "credits"), -1);
    assert_eq!(num(of("add"), "amount_usd"), 0.01);
    assert_eq!(int(of("add"), "credits"), 123);
    assert_eq!(of("refund")["refund_of"], charge_op.as_str());
    assert_eq!(of("refund")["operation_id"], refund_op.as_str());
    assert_eq!(int(of("refund"), "credits"), 1);
    assert_eq!(int(of("bonus"), "credits"), 1000);
    assert_eq!(ctx.balance(&user).await, 1000 + 123);
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

const PURCHASE_KEYS: &[&str] = &[
    "success",
    "transaction_id",
    "user_id",
    "transaction_type",
    "amount_usd",
    "credits_added",
    "purchase_rate",
    "balance_before",
    "balance_after",
    "new_balance",
    "operation_id",
];

async fn purchase(ctx: &Ctx, token: &str, body: Value) -> Resp {
    ctx.api
        .user(token, Method::POST, PURCHASE)
        .json(&body)
        .send()
        .await
}

/// The payment's status and the purchase that used it.
async fn payment_state(ctx: &Ctx, user: &str, payment_id: &str) -> (String, Option<String>) {
    let row = ctx
        .db
        .query_one(
            "SELECT status, operation_id FROM quota.payments WHERE user_id = $1 AND payment_id = $2",
            &[&user, &payment_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn purchase_adds_credits_at_the_plans_purchase_rate() {
    let ctx = Ctx::new("pub_purchase").await;
    let plan = ctx.create_plan(json!({"purchase_rate": 1.2})).await;
    let (user, token) = ctx.create_user_with_token().await;
    ctx.subscribe(&user, plan["tier"].as_str().unwrap(), 1)
        .await;
    let payment = ctx.confirm_payment(&user, 10.0, Some("pm_card_visa")).await;
    let body = purchase(
        &ctx,
        &token,
        json!({"amount_usd": 10.0, "payment_method_id": "pm_card_visa"}),
    )
    .await
    .expect(200);
    assert_exact_keys(&body, PURCHASE_KEYS);
    assert_eq!(body["success"], true);
    assert!(tx_id(&body) > 0);
    assert_eq!(body["user_id"], user.as_str());
    assert_eq!(body["transaction_type"], "add");
    assert_eq!(num(&body, "amount_usd"), 10.0);
    assert_eq!(num(&body, "purchase_rate"), 1.2);
    assert_eq!(int(&body, "credits_added"), 120_000);
    assert_eq!(int(&body, "balance_before"), 1);
    assert_eq!(int(&body, "balance_after"), 120_001);
    assert_eq!(int(&body, "new_balance"), 120_001);
    let op = body["operation_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("purchase gets an operation_id: {body}"))
        .to_string();
    assert_eq!(ctx.balance(&user).await, 120_001);
    // The payment is used by this purchase, and the ledger entry says which payment paid.
    assert_eq!(
        payment_state(&ctx, &user, &payment).await,
        ("used".into(), Some(op.clone()))
    );
    let metadata: Value = ctx
        .db
        .query_one(
            "SELECT metadata FROM quota.ledger WHERE user_id = $1 AND operation_id = $2",
            &[&user, &op],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(metadata["payment_id"], payment.as_str(), "{metadata}");
    assert_eq!(metadata["payment_method_id"], "pm_card_visa", "{metadata}");
    // The payment is spent: the same purchase again (no operation_id, so a new one) is 402.
    purchase(
        &ctx,
        &token,
        json!({"amount_usd": 10.0, "payment_method_id": "pm_card_visa"}),
    )
    .await
    .expect_error(402, Some("payment_required"));
    assert_eq!(ctx.balance(&user).await, 120_001);
    // A second payment pays for a second purchase, named by its payment_id.
    let second = ctx.confirm_payment(&user, 10.0, None).await;
    let again = purchase(
        &ctx,
        &token,
        json!({"amount_usd": 10.0, "payment_method_id": "pm_card_visa", "payment_id": second}),
    )
    .await
    .expect(200);
    assert_ne!(again["operation_id"], body["operation_id"]);
    assert_eq!(ctx.balance(&user).await, 240_001);
    assert_eq!(payment_state(&ctx, &user, &second).await.0, "used");
    // round_half_even(0.00005 * 1.2 * 10000) = round(0.6) = 1
    ctx.confirm_payment(&user, 0.00005, Some("pm_card_visa"))
        .await;
    let small = purchase(
        &ctx,
        &token,
        json!({"amount_usd": 0.00005, "payment_method_id": "pm_card_visa"}),
    )
    .await
    .expect(200);
    assert_eq!(int(&small, "credits_added"), 1);
    ctx.assert_verify_clean().await;
}

/// Without a confirmed, unused payment of this user, amount and method: 402 payment_required,
/// nothing written, and the payments that do not match stay unused.
#[tokio::test]
async fn purchase_without_a_matching_payment_is_payment_required() {
    let ctx = Ctx::new("pub_purchase_402").await;
    let (user, token) = ctx.create_user_with_token().await;
    let (other, _) = ctx.create_user_with_token().await;
    let others = ctx.confirm_payment(&other, 5.0, None).await;
    let card = ctx.confirm_payment(&user, 5.0, Some("pm_card")).await;
    for (body, why) in [
        (
            json!({"amount_usd": 7.0, "payment_method_id": "pm_card"}),
            "no payment of 7 USD",
        ),
        (
            json!({"amount_usd": 4.99, "payment_method_id": "pm_card"}),
            "another amount",
        ),
        (
            json!({"amount_usd": 5.0, "payment_method_id": "pm_other"}),
            "another method",
        ),
        (
            json!({"amount_usd": 5.0, "payment_method_id": "pm_card", "payment_id": others}),
            "another user's payment",
        ),
        (
            json!({"amount_usd": 5.0, "payment_method_id": "pm_card", "payment_id": ctx.id("nopay")}),
            "an unknown payment",
        ),
    ] {
        let op = ctx.id("buy");
        let mut body = body;
        body["operation_id"] = json!(op);
        let refused = purchase(&ctx, &token, body)
            .await
            .expect_error(402, Some("payment_required"));
        assert_eq!(refused["user_id"], user.as_str(), "{why}: {refused}");
        ctx.assert_nothing_written(&user, 0, &op).await;
    }
    assert_eq!(
        payment_state(&ctx, &user, &card).await,
        ("confirmed".into(), None)
    );
    assert_eq!(
        payment_state(&ctx, &other, &others).await,
        ("confirmed".into(), None)
    );
    assert_eq!(ctx.balance(&other).await, 0);
    // The matching purchase succeeds.
    let ok = purchase(
        &ctx,
        &token,
        json!({"amount_usd": 5.0, "payment_method_id": "pm_card"}),
    )
    .await
    .expect(200);
    assert_eq!(int(&ok, "credits_added"), 50_000);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn purchase_with_operation_id_replays() {
    let ctx = Ctx::new("pub_purchase_replay").await;
    let (user, token) = ctx.create_user_with_token().await;
    ctx.confirm_payment(&user, 1.0, Some("pm_1")).await;
    let op = ctx.id("buy");
    let req = json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": op});
    let first = purchase(&ctx, &token, req.clone()).await.expect(200);
    assert_eq!(first["operation_id"], op.as_str());
    let balance = ctx.balance(&user).await;
    assert_eq!(balance, int(&first, "credits_added"));
    assert_eq!(balance, 10_000);
    // The replay needs no second payment and returns the first body field for field.
    let again = purchase(&ctx, &token, req.clone()).await.expect(200);
    assert_eq!(again, first);
    assert_eq!(ctx.balance(&user).await, balance);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    purchase(
        &ctx,
        &token,
        json!({"amount_usd": 2.0, "payment_method_id": "pm_1", "operation_id": op}),
    )
    .await
    .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&user).await, balance);
    // The purchase id is in the user's own scope: a service's charge of this user with the same
    // id is another operation, applied (not a conflict, not a replay of the purchase).
    let charged = ctx.charge(&user, 0.01, &op).await.expect(200);
    assert_eq!(charged["success"], true, "{charged}");
    assert_eq!(int(&charged, "credits_charged"), 100);
    assert_eq!(ctx.balance(&user).await, balance - 100);
    assert_eq!(ctx.ledger_rows(&op).await, 2);
    // Both still replay as themselves.
    assert_eq!(purchase(&ctx, &token, req).await.expect(200), first);
    assert_eq!(ctx.charge(&user, 0.01, &op).await.expect(200), charged);
    assert_eq!(ctx.balance(&user).await, balance - 100);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn purchase_rejects_invalid_input_and_writes_nothing() {
    let ctx = Ctx::new("pub_purchase_invalid").await;
    let (user, token) = ctx.create_user_with_token().await;
    // A confirmed payment of 1 USD is there: the input is refused before any payment is used.
    let payment = ctx.confirm_payment(&user, 1.0, None).await;
    // Out of range (> 0, at most 1,000,000 USD): 422 naming amount_usd.
    for amount in [
        json!(-1.0),
        json!(0),
        json!(1_000_000.01),
        json!(1e9),
        json!(1e300),
    ] {
        let op = ctx.id("buy");
        let body = purchase(
            &ctx,
            &token,
            json!({"amount_usd": amount, "payment_method_id": "pm_1", "operation_id": op}),
        )
        .await
        .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "amount_usd", "{body}");
        ctx.assert_nothing_written(&user, 0, &op).await;
    }
    for amount in [json!("NaN"), json!("10")] {
        let op = ctx.id("buy");
        purchase(
            &ctx,
            &token,
            json!({"amount_usd": amount, "payment_method_id": "pm_1", "operation_id": op}),
        )
        .await
        .expect_error(422, Some("invalid_body"));
        ctx.assert_nothing_written(&user, 0, &op).await;
    }
    let op = ctx.id("buy");
    for body in [
        json!({"payment_method_id": "pm_1", "operation_id": op}),
        json!({"amount_usd": 1.0, "operation_id": op}),
        json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": op, "user_id": user}),
    ] {
        purchase(&ctx, &token, body)
            .await
            .expect_error(422, Some("invalid_body"));
    }
    for (body, field) in [
        (
            json!({"amount_usd": 1.0, "payment_method_id": "", "operation_id": op}),
            "payment_method_id",
        ),
        (
            json!({"amount_usd": 1.0, "payment_method_id": " pm_1", "operation_id": op}),
            "payment_method_id",
        ),
        (
            json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": "z".repeat(256)}),
            "operation_id",
        ),
        (
            json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": format!("{op}\u{200B}")}),
            "operation_id",
        ),
        (
            json!({"amount_usd": 1.0, "payment_method_id": "pm_1", "operation_id": op, "payment_id": format!("{payment} ")}),
            "payment_id",
        ),
    ] {
        let resp = purchase(&ctx, &token, body)
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(resp["field"], field, "{resp}");
    }
    ctx.api
        .user(&token, Method::POST, PURCHASE)
        .raw_json("{\"amount_usd\": ")
        .send()
        .await
        .expect_error(422, Some("invalid_json"));
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
    assert_eq!(
        payment_state(&ctx, &user, &payment).await,
        ("confirmed".into(), None)
    );
}

/// POST /api/internal/payments records a payment once: 201 created, 200 on a replay, 409 for the
/// same payment_id with another amount or method; invalid input is 422.
#[tokio::test]
async fn payment_confirmation_is_recorded_once() {
    let ctx = Ctx::new("pub_payment_confirm").await;
    let user = ctx.create_user().await;
    let payment_id = ctx.id("pay");
    let request = json!({"payment_id": payment_id, "user_id": user, "amount_usd": 12.5,
                         "payment_method_id": "pm_card", "metadata": {"invoice": "in_7"}});
    let created = ctx
        .api
        .service(Method::POST, "/api/internal/payments")
        .json(&request)
        .send()
        .await
        .expect(201);
    assert_eq!(created["payment_id"], payment_id.as_str());
    assert_eq!(created["user_id"], user.as_str());
    assert_eq!(num(&created, "amount_usd"), 12.5);
    assert_eq!(created["payment_method_id"], "pm_card");
    assert_eq!(created["status"], "confirmed");
    assert_eq!(created["created"], true);
    let replay = ctx
        .api
        .service(Method::POST, "/api/internal/payments")
        .json(&request)
        .send()
        .await
        .expect(200);
    assert_eq!(replay["created"], false, "{replay}");
    assert_eq!(replay["payment_id"], payment_id.as_str());
    assert_eq!(replay["status"], "confirmed");
    for other in [
        json!({"payment_id": payment_id, "user_id": user, "amount_usd": 12.0, "payment_method_id": "pm_card"}),
        json!({"payment_id": payment_id, "user_id": user, "amount_usd": 12.5, "payment_method_id": "pm_other"}),
    ] {
        ctx.api
            .service(Method::POST, "/api/internal/payments")
            .json(&other)
            .send()
            .await
            .expect_error(409, None);
    }
    // Invalid input: 422; an unknown user: 404; a user token cannot confirm.
    for (body, code) in [
        (
            json!({"payment_id": ctx.id("pay"), "user_id": user, "amount_usd": 0}),
            "invalid_parameter",
        ),
        (
            json!({"payment_id": ctx.id("pay"), "user_id": user, "amount_usd": 1_000_000.5}),
            "invalid_parameter",
        ),
        (
            json!({"payment_id": " ", "user_id": user, "amount_usd": 1.0}),
            "invalid_parameter",
        ),
        (
            json!({"payment_id": ctx.id("pay"), "user_id": user}),
            "invalid_body",
        ),
        (
            json!({"payment_id": ctx.id("pay"), "user_id": user, "amount_usd": "1"}),
            "invalid_body",
        ),
    ] {
        ctx.api
            .service(Method::POST, "/api/internal/payments")
            .json(&body)
            .send()
            .await
            .expect_error(422, Some(code));
    }
    ctx.api
        .service(Method::POST, "/api/internal/payments")
        .json(&json!({"payment_id": ctx.id("pay"), "user_id": ctx.id("ghost"), "amount_usd": 1.0}))
        .send()
        .await
        .expect_error(404, None);
    let (_, token) = ctx.issue_token(&user).await;
    ctx.api
        .user(&token, Method::POST, "/api/internal/payments")
        .json(&json!({"payment_id": ctx.id("pay"), "user_id": user, "amount_usd": 1.0}))
        .send()
        .await
        .expect_error(401, None);
    let n: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.payments WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "only the first confirmation is recorded");
}

#[tokio::test]
async fn open_plan_list_shows_active_plans_with_total_credits() {
    let ctx = Ctx::new("pub_plans").await;
    let active = ctx
        .create_plan(json!({"credits_included": 5000, "bonus_credits": 500, "monthly_cost": 9.99}))
        .await;
    let inactive = ctx.create_plan(json!({"active": false})).await;
    let body = ctx
        .api
        .anon(Method::GET, "/api/v1/subscription/plans")
        .send()
        .await
        .expect(200);
    assert_exact_keys(&body, &["plans", "total"]);
    let plans = body["plans"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan list in {body}"));
    assert_eq!(int(&body, "total"), plans.len() as i64, "{body}");
    for p in plans {
        assert_exact_keys(p, PUBLIC_PLAN_KEYS);
    }
    let mine: Vec<&Value> = plans
        .iter()
        .filter(|p| p["tier"] == active["tier"])
        .collect();
    assert_eq!(mine.len(), 1, "active plan missing from {body}");
    assert_eq!(int(mine[0], "total_credits"), 5500);
    assert_eq!(int(mine[0], "credits_included"), 5000);
    assert_eq!(int(mine[0], "bonus_credits"), 500);
    assert_eq!(num(mine[0], "monthly_cost"), 9.99);
    assert!(
        plans.iter().all(|p| p["tier"] != inactive["tier"]),
        "inactive plan listed: {body}"
    );
}
