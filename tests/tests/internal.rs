//! The internal API (X-Service-Token) of SPEC 2: check, calculate, charge, add / bonus / refund,
//! balance, subscription update; the idempotency contract of SPEC 1.1; validation; nothing written
//! on any failure.

use pg_quota_e2e::*;

const CHARGE: &str = "/api/internal/credits/charge";
const ADD: &str = "/api/internal/credits/add";
const CALCULATE: &str = "/api/internal/credits/calculate";
const SUBSCRIPTION_UPDATE: &str = "/api/internal/subscription/update";

/// A user on a fresh plan of multiplier 1.0 and purchase rate 1.0, holding exactly `credits`.
async fn funded_user(ctx: &Ctx, credits: i64) -> (String, String) {
    let plan = ctx
        .create_plan(json!({"multiplier": 1.0, "purchase_rate": 1.0}))
        .await;
    let tier = plan["tier"].as_str().unwrap().to_string();
    let user = ctx.create_user().await;
    ctx.subscribe(&user, &tier, credits).await;
    assert_eq!(ctx.balance(&user).await, credits);
    (user, tier)
}

// ---------------------------------------------------------------------------------------------
// charge

#[tokio::test]
async fn charge_returns_seed_shape_and_moves_balance() {
    let ctx = Ctx::new("charge_shape").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    let body = ctx.charge(&user, 0.0123, &op).await.expect(200);
    assert_fields(
        &body,
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
    assert_eq!(body["success"], true);
    assert_eq!(body["user_id"], user.as_str());
    assert_eq!(body["operation_id"], op.as_str());
    assert_eq!(num(&body, "cost_usd"), 0.0123);
    // multiplier 1.0, base rate 10000: round_half_even(123.0) = 123
    assert_eq!(int(&body, "credits_charged"), 123);
    assert_eq!(int(&body, "balance_before"), 10_000);
    assert_eq!(int(&body, "balance_after"), 10_000 - 123);
    assert!(int(&body, "transaction_id") > 0);
    assert_eq!(ctx.balance(&user).await, 10_000 - 123);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    let bal = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(int(&bal, "total_spent"), 123);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn charge_replay_returns_identical_response_and_charges_once() {
    let ctx = Ctx::new("charge_replay").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    let first = ctx.charge(&user, 0.05, &op).await.expect(200);
    assert_eq!(int(&first, "credits_charged"), 500);
    for _ in 0..3 {
        let again = ctx.charge(&user, 0.05, &op).await.expect(200);
        assert_eq!(
            again, first,
            "replay must return the first response field for field"
        );
    }
    assert_eq!(
        ctx.balance(&user).await,
        9_500,
        "the balance must move once"
    );
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    // A later charge does not change what the replay returns.
    ctx.charge(&user, 0.01, &ctx.id("op2")).await.expect(200);
    assert_eq!(ctx.charge(&user, 0.05, &op).await.expect(200), first);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn replay_with_other_amount_is_conflict() {
    let ctx = Ctx::new("replay_other_amount").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    ctx.charge(&user, 0.01, &op).await.expect(200);
    let before = ctx.balance(&user).await;
    ctx.charge(&user, 0.02, &op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&user).await, before);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    // Same amount but another user is another parameter too.
    let other = ctx.create_user().await;
    ctx.top_up_credits(&other, 10_000).await;
    ctx.charge(&other, 0.01, &op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&other).await, 10_000);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
}

#[tokio::test]
async fn replay_with_other_kind_is_conflict() {
    let ctx = Ctx::new("replay_other_kind").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let charge_op = ctx.id("charge");
    ctx.charge(&user, 0.01, &charge_op).await.expect(200);
    let before = ctx.balance(&user).await;
    // A charge's operation_id reused for an add, a bonus, a subscription update.
    ctx.api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "amount_usd": 0.01, "operation_id": charge_op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    ctx.api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "credits": 100, "transaction_type": "bonus", "operation_id": charge_op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    let plan = ctx.create_plan(json!({})).await;
    ctx.api
        .service(Method::POST, SUBSCRIPTION_UPDATE)
        .json(&json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": 100, "operation_id": charge_op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    // An add's operation_id reused for a charge.
    let add_op = ctx.id("add");
    ctx.api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "amount_usd": 0.01, "operation_id": add_op}))
        .send()
        .await
        .expect(200);
    let after_add = ctx.balance(&user).await;
    assert_eq!(after_add, before + 100);
    ctx.charge(&user, 0.01, &add_op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&user).await, after_add);
    assert_eq!(ctx.ledger_rows(&charge_op).await, 1);
    assert_eq!(ctx.ledger_rows(&add_op).await, 1);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn insufficient_credits_records_nothing_and_retry_after_top_up_succeeds() {
    let ctx = Ctx::new("insufficient").await;
    let (user, _) = funded_user(&ctx, 100).await;
    let op = ctx.id("op");
    // 0.05 USD = 500 credits, the wallet holds 100.
    for _ in 0..2 {
        let mut body = ctx.charge(&user, 0.05, &op).await.expect(200);
        // The seed's fields exactly; a human-readable "message" may accompany them.
        if let Some(m) = body.as_object_mut().unwrap().remove("message") {
            assert!(m.is_string(), "message must be text: {m}");
        }
        assert_eq!(
            body,
            json!({
                "success": false,
                "error": "insufficient_credits",
                "user_id": user,
                "required_credits": 500,
                "current_balance": 100,
                "deficit": 400,
            }),
            "insufficient-credits body"
        );
        ctx.assert_nothing_written(&user, 100, &op).await;
    }
    ctx.top_up_credits(&user, 400).await;
    let ok = ctx.charge(&user, 0.05, &op).await.expect(200);
    assert_eq!(ok["success"], true);
    assert_eq!(int(&ok, "credits_charged"), 500);
    assert_eq!(int(&ok, "balance_after"), 0);
    assert_eq!(ctx.balance(&user).await, 0);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    // The balance may reach exactly zero but not below.
    let body = ctx.charge(&user, 0.0001, &ctx.id("op2")).await.expect(200);
    assert_eq!(body["success"], false);
    assert_eq!(int(&body, "deficit"), 1);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn charge_rejects_invalid_amounts_and_writes_nothing() {
    let ctx = Ctx::new("charge_invalid_amount").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let cases = [
        json!(-0.01),
        json!(0),
        json!(0.0),
        json!(1e300),
        json!("NaN"),
        json!("0.01"),
        json!(null),
        json!(true),
        json!([0.01]),
    ];
    for cost in cases {
        let op = ctx.id("op");
        ctx.api
            .service(Method::POST, CHARGE)
            .json(&json!({"user_id": user, "cost_usd": cost, "operation_id": op}))
            .send()
            .await
            .expect_error(400, None);
        ctx.assert_nothing_written(&user, 10_000, &op).await;
    }
}

#[tokio::test]
async fn charge_rejects_missing_fields() {
    let ctx = Ctx::new("charge_missing_fields").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    let bodies = [
        json!({"cost_usd": 0.01, "operation_id": op}),
        json!({"user_id": user, "operation_id": op}),
        json!({"user_id": user, "cost_usd": 0.01}),
        json!({"user_id": user, "cost_usd": 0.01, "operation_id": ""}),
        json!({"user_id": 17, "cost_usd": 0.01, "operation_id": op}),
        json!({"user_id": user, "cost_usd": 0.01, "operation_id": 17}),
        json!([user, 0.01, op]),
    ];
    for b in bodies {
        ctx.api
            .service(Method::POST, CHARGE)
            .json(&b)
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.assert_nothing_written(&user, 10_000, &op).await;
}

#[tokio::test]
async fn malformed_json_is_bad_request() {
    let ctx = Ctx::new("malformed_json").await;
    let (user, tier) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    let truncated = format!(r#"{{"user_id": "{user}", "cost_usd": 0.01, "operation_id": "{op}""#);
    for path in [CHARGE, ADD, CALCULATE, SUBSCRIPTION_UPDATE] {
        for raw in [
            "{not json",
            "",
            "null",
            truncated.as_str(),
            "{\"user_id\": \"x\",}",
        ] {
            ctx.api
                .service(Method::POST, path)
                .raw_json(raw)
                .send()
                .await
                .expect_error(400, None);
        }
    }
    ctx.assert_nothing_written(&user, 10_000, &op).await;
    let bal = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(bal["subscription_tier"], tier.as_str());
}

#[tokio::test]
async fn nan_and_infinite_amounts_through_sql_are_invalid_parameter() {
    let ctx = Ctx::new("sql_nan").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    for (sql, what) in [
        (
            "SELECT * FROM quota.charge($1, 'NaN'::float8, $2)",
            "charge NaN",
        ),
        (
            "SELECT * FROM quota.charge($1, 'Infinity'::float8, $2)",
            "charge Infinity",
        ),
        (
            "SELECT * FROM quota.charge($1, '-0.01'::float8, $2)",
            "charge negative",
        ),
        (
            "SELECT * FROM quota.charge($1, 0::float8, $2)",
            "charge zero",
        ),
        (
            "SELECT * FROM quota.charge($1, 1e300::float8, $2)",
            "charge huge",
        ),
        ("SELECT * FROM quota.add($1, 'NaN'::float8, $2)", "add NaN"),
        (
            "SELECT * FROM quota.add($1, '-Infinity'::float8, $2)",
            "add -Infinity",
        ),
        (
            "SELECT * FROM quota.calculate_credits('NaN'::float8, $1) WHERE $2::text IS NOT NULL",
            "calculate NaN",
        ),
    ] {
        let op = ctx.id("op");
        let err = ctx.db.query(sql, &[&user, &op]).await.expect_err(what);
        assert_eq!(sqlstate(&err), "22023", "{what}: {err:?}");
        ctx.assert_nothing_written(&user, 10_000, &op).await;
    }
    // The literal case of the brief.
    let err = ctx
        .db
        .query("SELECT quota.charge($1, 'NaN'::float8, 'op')", &[&user])
        .await
        .expect_err("NaN");
    assert_eq!(sqlstate(&err), "22023");
}

#[tokio::test]
async fn sql_errors_carry_documented_sqlstates() {
    let ctx = Ctx::new("sql_states").await;
    let (user, _) = funded_user(&ctx, 100).await;
    let ghost = ctx.id("ghost");
    let err = ctx
        .db
        .query(
            "SELECT * FROM quota.charge($1, 0.01, $2)",
            &[&ghost, &ctx.id("op")],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "P0002", "unknown user: {err:?}");
    let op = ctx.id("op");
    let err = ctx
        .db
        .query("SELECT * FROM quota.charge($1, 0.05, $2)", &[&user, &op])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "23514", "insufficient: {err:?}");
    ctx.assert_nothing_written(&user, 100, &op).await;
    ctx.db
        .query("SELECT * FROM quota.charge($1, 0.001, $2)", &[&user, &op])
        .await
        .expect("charge 10 credits");
    let err = ctx
        .db
        .query("SELECT * FROM quota.charge($1, 0.002, $2)", &[&user, &op])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "23505", "replay with other amount: {err:?}");
    let long = "x".repeat(256);
    let err = ctx
        .db
        .query("SELECT * FROM quota.charge($1, 0.001, $2)", &[&user, &long])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "256-char operation id: {err:?}");
    assert_eq!(ctx.balance(&user).await, 90);
}

#[tokio::test]
async fn unknown_user_is_not_found_and_writes_nothing() {
    let ctx = Ctx::new("unknown_user").await;
    let ghost = ctx.id("ghost");
    let plan = ctx.create_plan(json!({})).await;
    let op = ctx.id("op");
    let api = &ctx.api;
    api.service(Method::POST, CHARGE)
        .json(&json!({"user_id": ghost, "cost_usd": 0.01, "operation_id": op}))
        .send()
        .await
        .expect_error(404, None);
    api.service(Method::POST, ADD)
        .json(&json!({"user_id": ghost, "amount_usd": 1.0, "operation_id": op}))
        .send()
        .await
        .expect_error(404, None);
    api.service(Method::POST, ADD)
        .json(&json!({"user_id": ghost, "credits": 5, "transaction_type": "bonus", "operation_id": op}))
        .send()
        .await
        .expect_error(404, None);
    api.service(Method::POST, SUBSCRIPTION_UPDATE)
        .json(&json!({"user_id": ghost, "subscription_tier": plan["tier"], "credits_to_add": 5, "operation_id": op}))
        .send()
        .await
        .expect_error(404, None);
    api.service(
        Method::GET,
        &format!("/api/internal/credits/balance/{ghost}"),
    )
    .send()
    .await
    .expect_error(404, None);
    api.service(
        Method::GET,
        &format!("/api/internal/credits/check/{ghost}?required_credits=1"),
    )
    .send()
    .await
    .expect_error(404, None);
    api.service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "user_id": ghost}))
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(ctx.ledger_rows(&op).await, 0);
    let n: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.ledger WHERE user_id = $1",
            &[&ghost],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn operation_id_of_255_chars_is_accepted_and_256_rejected() {
    let ctx = Ctx::new("op_id_length").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let prefix = ctx.id("op");
    let long = |n: usize| format!("{prefix}{}", "x".repeat(n - prefix.len()));
    let op256 = long(256);
    ctx.charge(&user, 0.01, &op256)
        .await
        .expect_error(400, None);
    ctx.assert_nothing_written(&user, 10_000, &op256).await;
    ctx.api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "amount_usd": 1.0, "operation_id": op256}))
        .send()
        .await
        .expect_error(400, None);
    ctx.assert_nothing_written(&user, 10_000, &op256).await;
    let op255 = long(255);
    let body = ctx.charge(&user, 0.01, &op255).await.expect(200);
    assert_eq!(body["operation_id"], op255.as_str());
    assert_eq!(ctx.ledger_rows(&op255).await, 1);
    assert_eq!(ctx.balance(&user).await, 9_900);
}

// ---------------------------------------------------------------------------------------------
// add / bonus / refund

#[tokio::test]
async fn add_credits_usd_and_replay_is_identical() {
    let ctx = Ctx::new("add_usd").await;
    let (user, _) = funded_user(&ctx, 1).await;
    let op = ctx.id("op");
    let req = json!({"user_id": user, "amount_usd": 2.5, "operation_id": op, "description": "top up", "metadata": {"k": "v"}});
    let first = ctx
        .api
        .service(Method::POST, ADD)
        .json(&req)
        .send()
        .await
        .expect(200);
    assert_fields(
        &first,
        &[
            "success",
            "transaction_id",
            "user_id",
            "transaction_type",
            "amount_usd",
            "credits_added",
            "balance_before",
            "balance_after",
            "operation_id",
        ],
    );
    assert_eq!(first["success"], true);
    assert_eq!(first["transaction_type"], "add");
    assert_eq!(num(&first, "amount_usd"), 2.5);
    assert_eq!(int(&first, "credits_added"), 25_000);
    assert_eq!(int(&first, "balance_before"), 1);
    assert_eq!(int(&first, "balance_after"), 25_001);
    let again = ctx
        .api
        .service(Method::POST, ADD)
        .json(&req)
        .send()
        .await
        .expect(200);
    assert_eq!(again, first);
    assert_eq!(ctx.balance(&user).await, 25_001);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    // Other amount under the same id: conflict.
    ctx.api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "amount_usd": 3.0, "operation_id": op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&user).await, 25_001);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn add_rejects_invalid_amounts_and_writes_nothing() {
    let ctx = Ctx::new("add_invalid").await;
    let (user, _) = funded_user(&ctx, 1).await;
    for amount in [
        json!(-1.0),
        json!(0),
        json!(1e300),
        json!("NaN"),
        json!("10"),
        json!(null),
    ] {
        let op = ctx.id("op");
        ctx.api
            .service(Method::POST, ADD)
            .json(&json!({"user_id": user, "amount_usd": amount, "operation_id": op}))
            .send()
            .await
            .expect_error(400, None);
        ctx.assert_nothing_written(&user, 1, &op).await;
    }
    // add without amount_usd, bonus without credits, bonus with bad credits, unknown type.
    let op = ctx.id("op");
    for body in [
        json!({"user_id": user, "operation_id": op}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus"}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": 0}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": -5}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": 1.5}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": "5"}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "gift", "amount_usd": 1.0}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "charge", "amount_usd": 1.0}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "refund"}),
    ] {
        ctx.api
            .service(Method::POST, ADD)
            .json(&body)
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.assert_nothing_written(&user, 1, &op).await;
}

#[tokio::test]
async fn bonus_grants_exact_credits_and_replays() {
    let ctx = Ctx::new("bonus").await;
    let (user, _) = funded_user(&ctx, 10).await;
    let op = ctx.id("op");
    let req =
        json!({"user_id": user, "credits": 777, "transaction_type": "bonus", "operation_id": op});
    let first = ctx
        .api
        .service(Method::POST, ADD)
        .json(&req)
        .send()
        .await
        .expect(200);
    assert_eq!(first["success"], true);
    assert_eq!(first["transaction_type"], "bonus");
    assert_eq!(int(&first, "credits_added"), 777);
    assert_eq!(int(&first, "balance_before"), 10);
    assert_eq!(int(&first, "balance_after"), 787);
    assert!(
        first["amount_usd"].is_null(),
        "bonus has no amount_usd: {first}"
    );
    assert_eq!(
        ctx.api
            .service(Method::POST, ADD)
            .json(&req)
            .send()
            .await
            .expect(200),
        first
    );
    ctx.api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "credits": 778, "transaction_type": "bonus", "operation_id": op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.balance(&user).await, 787);
    assert_eq!(ctx.ledger_rows(&op).await, 1);
}

async fn refund(ctx: &Ctx, user: &str, charge_op: &str, credits: Option<i64>, op: &str) -> Resp {
    let mut body = json!({"user_id": user, "transaction_type": "refund", "charge_operation_id": charge_op, "operation_id": op});
    if let Some(c) = credits {
        body["credits"] = json!(c);
    }
    ctx.api.service(Method::POST, ADD).json(&body).send().await
}

#[tokio::test]
async fn refund_never_exceeds_the_charge() {
    let ctx = Ctx::new("refund_limit").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let charge_op = ctx.id("charge");
    ctx.charge(&user, 0.1, &charge_op).await.expect(200); // 1000 credits
    assert_eq!(ctx.balance(&user).await, 9_000);
    let r1 = ctx.id("r1");
    let first = refund(&ctx, &user, &charge_op, Some(300), &r1)
        .await
        .expect(200);
    assert_eq!(first["transaction_type"], "refund");
    assert_eq!(int(&first, "credits_added"), 300);
    assert_eq!(int(&first, "balance_after"), 9_300);
    let r2 = ctx.id("r2");
    refund(&ctx, &user, &charge_op, Some(700), &r2)
        .await
        .expect(200);
    assert_eq!(ctx.balance(&user).await, 10_000);
    // Fully refunded: one more credit is a conflict and writes nothing.
    let r3 = ctx.id("r3");
    refund(&ctx, &user, &charge_op, Some(1), &r3)
        .await
        .expect_error(409, Some("refund_exceeds_charge"));
    ctx.assert_nothing_written(&user, 10_000, &r3).await;
    // The first refund still replays.
    assert_eq!(
        refund(&ctx, &user, &charge_op, Some(300), &r1)
            .await
            .expect(200),
        first
    );
    assert_eq!(ctx.balance(&user).await, 10_000);
    assert_eq!(ctx.ledger_rows(&r1).await, 1);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn refund_without_credits_returns_the_rest_and_over_refund_is_conflict() {
    let ctx = Ctx::new("refund_rest").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let charge_op = ctx.id("charge");
    ctx.charge(&user, 0.05, &charge_op).await.expect(200); // 500 credits
    let over = ctx.id("over");
    refund(&ctx, &user, &charge_op, Some(501), &over)
        .await
        .expect_error(409, Some("refund_exceeds_charge"));
    ctx.assert_nothing_written(&user, 9_500, &over).await;
    refund(&ctx, &user, &charge_op, Some(200), &ctx.id("r1"))
        .await
        .expect(200);
    let rest = refund(&ctx, &user, &charge_op, None, &ctx.id("rest"))
        .await
        .expect(200);
    assert_eq!(int(&rest, "credits_added"), 300);
    assert_eq!(ctx.balance(&user).await, 10_000);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn refund_of_unknown_or_foreign_charge_is_rejected() {
    let ctx = Ctx::new("refund_unknown").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("r");
    refund(&ctx, &user, &ctx.id("no_such_charge"), Some(1), &op)
        .await
        .expect_error(404, None);
    ctx.assert_nothing_written(&user, 10_000, &op).await;
    // A charge of another user cannot be refunded to this one.
    let (other, _) = funded_user(&ctx, 10_000).await;
    let charge_op = ctx.id("charge");
    ctx.charge(&other, 0.01, &charge_op).await.expect(200);
    let resp = refund(&ctx, &user, &charge_op, Some(1), &op).await;
    assert!(
        matches!(resp.status, 404 | 409),
        "refund of a foreign charge: {resp:?}"
    );
    ctx.assert_nothing_written(&user, 10_000, &op).await;
    // An add is not a charge.
    let add_op = ctx.add_usd(&user, 0.01).await["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = refund(&ctx, &user, &add_op, Some(1), &op).await;
    assert!(
        matches!(resp.status, 400 | 404 | 409),
        "refund of an add: {resp:?}"
    );
    ctx.assert_nothing_written(&user, 10_100, &op).await;
}

// ---------------------------------------------------------------------------------------------
// balance / check / calculate

#[tokio::test]
async fn balance_endpoint_reports_the_wallet() {
    let ctx = Ctx::new("balance").await;
    let (user, tier) = funded_user(&ctx, 1_000).await;
    ctx.charge(&user, 0.01, &ctx.id("op")).await.expect(200);
    let body = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(
        body,
        json!({"user_id": user, "balance": 900, "total_earned": 1000, "total_spent": 100, "subscription_tier": tier})
    );
    // A user without a subscription.
    let bare = ctx.create_user().await;
    let body = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{bare}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(int(&body, "balance"), 0);
    assert!(body["subscription_tier"].is_null(), "{body}");
}

#[tokio::test]
async fn check_endpoint_reports_sufficiency_and_deficit() {
    let ctx = Ctx::new("check").await;
    let (user, _) = funded_user(&ctx, 500).await;
    let path = format!("/api/internal/credits/check/{user}");
    let ok = ctx
        .api
        .service(Method::GET, &path)
        .query(&[("required_credits", "500".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(
        ok,
        json!({"user_id": user, "current_balance": 500, "required_credits": 500, "has_sufficient_credits": true, "deficit": 0})
    );
    let short = ctx
        .api
        .service(Method::GET, &path)
        .query(&[("required_credits", "501".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(short["has_sufficient_credits"], false);
    assert_eq!(int(&short, "deficit"), 1);
    for bad in ["-1", "abc", "1.5", "99999999999999999999999"] {
        ctx.api
            .service(Method::GET, &path)
            .query(&[("required_credits", bad.into())])
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.api
        .service(Method::GET, &path)
        .send()
        .await
        .expect_error(400, None);
    // Checking does not consume.
    assert_eq!(ctx.balance(&user).await, 500);
}

#[tokio::test]
async fn calculate_endpoint_shape_and_failures() {
    let ctx = Ctx::new("calculate").await;
    let plan = ctx.create_plan(json!({"multiplier": 2.0})).await;
    let tier = plan["tier"].as_str().unwrap().to_string();
    let user = ctx.create_user().await;
    ctx.subscribe(&user, &tier, 1).await;
    let body = ctx
        .api
        .service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "user_id": user}))
        .send()
        .await
        .expect(200);
    assert_fields(
        &body,
        &["cost_usd", "tier", "multiplier", "base_rate", "credits"],
    );
    assert_eq!(num(&body, "cost_usd"), 0.01);
    assert_eq!(body["tier"], tier.as_str());
    assert_eq!(num(&body, "multiplier"), 2.0);
    assert_eq!(int(&body, "base_rate"), DEFAULT_BASE_RATE);
    assert_eq!(int(&body, "credits"), 200);
    let by_tier = ctx
        .api
        .service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "tier": tier}))
        .send()
        .await
        .expect(200);
    assert_eq!(by_tier, body);
    ctx.api
        .service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "tier": ctx.id("no_tier")}))
        .send()
        .await
        .expect_error(404, None);
    for cost in [
        json!(-1),
        json!("NaN"),
        json!(1e300),
        json!("0.01"),
        json!(null),
    ] {
        ctx.api
            .service(Method::POST, CALCULATE)
            .json(&json!({"cost_usd": cost, "tier": tier}))
            .send()
            .await
            .expect_error(400, None);
    }
}

// ---------------------------------------------------------------------------------------------
// subscription update

#[tokio::test]
async fn subscription_update_adds_credits_and_same_tier_again_is_conflict() {
    let ctx = Ctx::new("sub_update").await;
    let basic = ctx.create_plan(json!({})).await;
    let pro = ctx.create_plan(json!({})).await;
    let user = ctx.create_user().await;
    let op = ctx.id("sub");
    let req = json!({"user_id": user, "subscription_tier": basic["tier"], "credits_to_add": 1100, "operation_id": op});
    let first = ctx
        .api
        .service(Method::POST, SUBSCRIPTION_UPDATE)
        .json(&req)
        .send()
        .await
        .expect(200);
    assert_eq!(
        first,
        json!({
            "success": true,
            "transaction_id": first["transaction_id"],
            "user_id": user,
            "previous_tier": null,
            "subscription_tier": basic["tier"],
            "credits_added": 1100,
            "balance_before": 0,
            "balance_after": 1100,
            "operation_id": op,
        })
    );
    assert!(int(&first, "transaction_id") > 0);
    // Replay with the same operation_id: identical, even though the tier is now the same.
    assert_eq!(
        ctx.api
            .service(Method::POST, SUBSCRIPTION_UPDATE)
            .json(&req)
            .send()
            .await
            .expect(200),
        first
    );
    assert_eq!(ctx.balance(&user).await, 1100);
    // Same tier under a new operation_id: 409, nothing written.
    let op2 = ctx.id("sub2");
    ctx.api
        .service(Method::POST, SUBSCRIPTION_UPDATE)
        .json(&json!({"user_id": user, "subscription_tier": basic["tier"], "credits_to_add": 1100, "operation_id": op2}))
        .send()
        .await
        .expect_error(409, None);
    ctx.assert_nothing_written(&user, 1100, &op2).await;
    // Switching tier adds its credits and reports the previous tier.
    let op3 = ctx.id("sub3");
    let switched = ctx
        .api
        .service(Method::POST, SUBSCRIPTION_UPDATE)
        .json(&json!({"user_id": user, "subscription_tier": pro["tier"], "credits_to_add": 50, "operation_id": op3}))
        .send()
        .await
        .expect(200);
    assert_eq!(switched["previous_tier"], basic["tier"]);
    assert_eq!(int(&switched, "balance_after"), 1150);
    let bal = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(bal["subscription_tier"], pro["tier"]);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn subscription_update_failures_write_nothing() {
    let ctx = Ctx::new("sub_update_fail").await;
    let plan = ctx.create_plan(json!({})).await;
    let user = ctx.create_user().await;
    let op = ctx.id("sub");
    ctx.api
        .service(Method::POST, SUBSCRIPTION_UPDATE)
        .json(&json!({"user_id": user, "subscription_tier": ctx.id("no_tier"), "credits_to_add": 10, "operation_id": op}))
        .send()
        .await
        .expect_error(404, None);
    ctx.assert_nothing_written(&user, 0, &op).await;
    for body in [
        json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": -1, "operation_id": op}),
        json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": "10", "operation_id": op}),
        json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": 10}),
        json!({"user_id": user, "credits_to_add": 10, "operation_id": op}),
        json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": 10, "operation_id": "y".repeat(256)}),
    ] {
        ctx.api
            .service(Method::POST, SUBSCRIPTION_UPDATE)
            .json(&body)
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.assert_nothing_written(&user, 0, &op).await;
    let bal = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    assert!(
        bal["subscription_tier"].is_null(),
        "a failed update changed the tier: {bal}"
    );
}
