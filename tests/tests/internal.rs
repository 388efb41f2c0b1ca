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
    assert!(tx_id(&body) > 0);
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
    assert_eq!(int(&bal["credits"], "total_spent"), 123);
    assert_eq!(int(&bal["credits"], "balance"), 10_000 - 123);
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
}

/// Idempotency keys are scoped per user (issue 9): the same operation_id for another user is
/// another operation. It applies (no 409, no replay of the first user's body), and each user's
/// replay and conflict rules stay within their own scope.
#[tokio::test]
async fn same_operation_id_for_another_user_is_another_operation() {
    let ctx = Ctx::new("op_id_per_user").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    let first = ctx.charge(&user, 0.01, &op).await.expect(200);
    assert_eq!(int(&first, "credits_charged"), 100);
    let other = ctx.create_user().await;
    ctx.top_up_credits(&other, 10_000).await;
    // Same id and amount, another user: applied to that user, with its own ledger entry.
    let theirs = ctx.charge(&other, 0.01, &op).await.expect(200);
    assert_eq!(theirs["success"], true, "{theirs}");
    assert_eq!(theirs["user_id"], other.as_str());
    assert_eq!(theirs["operation_id"], op.as_str());
    assert_eq!(int(&theirs, "credits_charged"), 100);
    assert_eq!(int(&theirs, "balance_before"), 10_000);
    assert_eq!(int(&theirs, "balance_after"), 9_900);
    assert_ne!(
        tx_id(&theirs),
        tx_id(&first),
        "a replay of the other user's charge"
    );
    assert_eq!(ctx.balance(&other).await, 9_900);
    assert_eq!(ctx.balance(&user).await, 9_900);
    assert_eq!(ctx.ledger_rows(&op).await, 2, "one entry per user");
    // Each user's replay returns their own first body.
    assert_eq!(ctx.charge(&user, 0.01, &op).await.expect(200), first);
    assert_eq!(ctx.charge(&other, 0.01, &op).await.expect(200), theirs);
    // Other parameters under the id stay a conflict within each user's scope.
    ctx.charge(&other, 0.02, &op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    // A third user may use the id with another amount: still no conflict.
    let third = ctx.create_user().await;
    ctx.top_up_credits(&third, 10_000).await;
    let third_body = ctx.charge(&third, 0.02, &op).await.expect(200);
    assert_eq!(int(&third_body, "credits_charged"), 200);
    assert_eq!(ctx.balance(&user).await, 9_900);
    assert_eq!(ctx.balance(&other).await, 9_900);
    assert_eq!(ctx.balance(&third).await, 9_800);
    assert_eq!(ctx.ledger_rows(&op).await, 3);
    ctx.assert_verify_clean().await;
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
    // A number the extension refuses names its field: 422 invalid_parameter (seed 004's status).
    for cost in [json!(-0.01), json!(0), json!(0.0), json!(1e300)] {
        let op = ctx.id("op");
        let body = ctx
            .api
            .service(Method::POST, CHARGE)
            .json(&json!({"user_id": user, "cost_usd": cost, "operation_id": op}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "cost_usd", "{body}");
        ctx.assert_nothing_written(&user, 10_000, &op).await;
    }
    // Not a number at all: the body is refused before SQL, 422 invalid_body.
    for cost in [
        json!("NaN"),
        json!("0.01"),
        json!(null),
        json!(true),
        json!([0.01]),
    ] {
        let op = ctx.id("op");
        ctx.api
            .service(Method::POST, CHARGE)
            .json(&json!({"user_id": user, "cost_usd": cost, "operation_id": op}))
            .send()
            .await
            .expect_error(422, Some("invalid_body"));
        ctx.assert_nothing_written(&user, 10_000, &op).await;
    }
}

#[tokio::test]
async fn charge_rejects_missing_fields() {
    let ctx = Ctx::new("charge_missing_fields").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    // Missing, mistyped or unknown fields, or not an object: 422 invalid_body.
    let bodies = [
        json!({"cost_usd": 0.01, "operation_id": op}),
        json!({"user_id": user, "operation_id": op}),
        json!({"user_id": user, "cost_usd": 0.01}),
        json!({"user_id": 17, "cost_usd": 0.01, "operation_id": op}),
        json!({"user_id": user, "cost_usd": 0.01, "operation_id": 17}),
        json!({"user_id": user, "cost_usd": 0.01, "operation_id": op, "bogus": 1}),
        json!([user, 0.01, op]),
    ];
    for b in bodies {
        ctx.api
            .service(Method::POST, CHARGE)
            .json(&b)
            .send()
            .await
            .expect_error(422, Some("invalid_body"));
    }
    // An empty operation_id is a refused value of that field.
    let body = ctx
        .api
        .service(Method::POST, CHARGE)
        .json(&json!({"user_id": user, "cost_usd": 0.01, "operation_id": ""}))
        .send()
        .await
        .expect_error(422, Some("invalid_parameter"));
    assert_eq!(body["field"], "operation_id", "{body}");
    ctx.assert_nothing_written(&user, 10_000, &op).await;
}

#[tokio::test]
async fn malformed_json_is_unprocessable() {
    let ctx = Ctx::new("malformed_json").await;
    let (user, tier) = funded_user(&ctx, 10_000).await;
    let op = ctx.id("op");
    // Cut off after a field every one of these bodies has (a field another body does not know
    // would be refused as invalid_body before the parser reaches the end).
    let truncated = format!(r#"{{"user_id": "{user}""#);
    for path in [CHARGE, ADD, CALCULATE, SUBSCRIPTION_UPDATE] {
        for raw in [
            "{not json",
            "",
            "null",
            truncated.as_str(),
            "{\"user_id\": \"x\",}",
        ] {
            // Not JSON at all: invalid_json; JSON that is not an object (`null`): invalid_body.
            let code = if raw == "null" {
                "invalid_body"
            } else {
                "invalid_json"
            };
            ctx.api
                .service(Method::POST, path)
                .raw_json(raw)
                .send()
                .await
                .expect_error(422, Some(code));
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
    assert_eq!(bal["subscription"]["tier"], tier.as_str());
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
    let body = ctx
        .charge(&user, 0.01, &op256)
        .await
        .expect_error(422, Some("invalid_parameter"));
    assert_eq!(body["field"], "operation_id", "{body}");
    ctx.assert_nothing_written(&user, 10_000, &op256).await;
    let body = ctx
        .api
        .service(Method::POST, ADD)
        .json(&json!({"user_id": user, "amount_usd": 1.0, "operation_id": op256}))
        .send()
        .await
        .expect_error(422, Some("invalid_parameter"));
    assert_eq!(body["field"], "operation_id", "{body}");
    ctx.assert_nothing_written(&user, 10_000, &op256).await;
    let op255 = long(255);
    let body = ctx.charge(&user, 0.01, &op255).await.expect(200);
    assert_eq!(body["operation_id"], op255.as_str());
    assert_eq!(ctx.ledger_rows(&op255).await, 1);
    assert_eq!(ctx.balance(&user).await, 9_900);
}

/// Ids are visible text (issue 9): blank, padded with whitespace, or holding a control or
/// invisible character (zero-width, bidi control, NBSP, BOM), an operation_id or user_id is
/// refused with 422 naming the field, before anything is looked up or written.
#[tokio::test]
async fn ids_with_padding_or_invisible_characters_are_refused() {
    let ctx = Ctx::new("id_visible").await;
    let (user, tier) = funded_user(&ctx, 10_000).await;
    let base = ctx.id("op");
    let bad_ids = [
        " ".to_string(),
        format!(" {base}"),
        format!("{base} "),
        format!("{base}\t"),
        format!("{base}\u{0007}x"),
        format!("{base}\u{00A0}x"),
        format!("{base}\u{200B}x"),
        format!("\u{FEFF}{base}"),
        format!("{base}\u{202E}x"),
        format!("{base}\u{2066}x"),
    ];
    for bad in &bad_ids {
        let body = ctx
            .charge(&user, 0.01, bad)
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "operation_id", "{bad:?}: {body}");
        ctx.assert_nothing_written(&user, 10_000, bad).await;
        let body = ctx
            .api
            .service(Method::POST, ADD)
            .json(&json!({"user_id": user, "amount_usd": 1.0, "operation_id": bad}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "operation_id", "{bad:?}: {body}");
        let body = ctx
            .api
            .service(Method::POST, SUBSCRIPTION_UPDATE)
            .json(&json!({"user_id": user, "subscription_tier": tier, "credits_to_add": 1, "operation_id": bad}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "operation_id", "{bad:?}: {body}");
        ctx.assert_nothing_written(&user, 10_000, bad).await;
    }
    // The same for the user id: refused as invalid, not looked up as an unknown user (404).
    for padded in [
        format!("{user} "),
        format!("{user}\u{200B}"),
        format!("\u{00A0}{user}"),
    ] {
        let op = ctx.id("op");
        let body = ctx
            .charge(&padded, 0.01, &op)
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "user_id", "{padded:?}: {body}");
        ctx.assert_nothing_written(&user, 10_000, &op).await;
        let body = ctx
            .api
            .service(Method::POST, CALCULATE)
            .json(&json!({"cost_usd": 0.01, "user_id": padded}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "user_id", "{padded:?}: {body}");
    }
    // In a path too: a trailing zero-width space (percent-encoded) or space.
    for suffix in ["%E2%80%8B", "%20"] {
        for path in ["balance", "check"] {
            let body = ctx
                .api
                .service(
                    Method::GET,
                    &format!("/api/internal/credits/{path}/{user}{suffix}"),
                )
                .send()
                .await
                .expect_error(422, Some("invalid_parameter"));
            assert_eq!(body["field"], "user_id", "{path} {suffix}: {body}");
        }
    }
    // Visible non-ASCII text and inner ASCII spaces are fine.
    let op = format!("{base} é ✓");
    let ok = ctx.charge(&user, 0.01, &op).await.expect(200);
    assert_eq!(ok["operation_id"], op.as_str());
    assert_eq!(ctx.ledger_rows(&op).await, 1);
    assert_eq!(ctx.balance(&user).await, 9_900);
    ctx.assert_verify_clean().await;
}

// ---------------------------------------------------------------------------------------------
// add / bonus / refund

#[tokio::test]
async fn add_credits_usd_and_replay_is_identical() {
    let ctx = Ctx::new("add_usd").await;
    let (user, _) = funded_user(&ctx, 1).await;
    let op = ctx.id("op");
    let req = json!({"user_id": user, "amount_usd": 2.5, "source": "stripe", "operation_id": op, "description": "top up", "metadata": {"k": "v"}});
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
            "purchase_rate",
            "balance_before",
            "balance_after",
            "operation_id",
        ],
    );
    assert_eq!(first["success"], true);
    assert!(tx_id(&first) > 0);
    assert_eq!(first["user_id"], user.as_str());
    assert_eq!(first["operation_id"], op.as_str());
    assert_eq!(first["transaction_type"], "add");
    assert_eq!(num(&first, "amount_usd"), 2.5);
    assert_eq!(num(&first, "purchase_rate"), 1.0);
    assert_eq!(int(&first, "credits_added"), 25_000);
    assert_eq!(int(&first, "balance_before"), 1);
    assert_eq!(int(&first, "balance_after"), 25_001);
    // The source is recorded in the ledger entry's metadata, beside the caller's own keys.
    let metadata: Value = ctx
        .db
        .query_one(
            "SELECT metadata FROM quota.ledger WHERE user_id = $1 AND operation_id = $2",
            &[&user, &op],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(metadata["source"], "stripe", "{metadata}");
    assert_eq!(metadata["k"], "v", "{metadata}");
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
    // Out of range (> 0, at most 1,000,000 USD): 422 invalid_parameter naming amount_usd.
    for amount in [json!(-1.0), json!(0), json!(1_000_000.01), json!(1e300)] {
        let op = ctx.id("op");
        let body = ctx
            .api
            .service(Method::POST, ADD)
            .json(&json!({"user_id": user, "amount_usd": amount, "operation_id": op}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "amount_usd", "{body}");
        ctx.assert_nothing_written(&user, 1, &op).await;
    }
    // Not a number, or absent: 422 invalid_body.
    for amount in [json!("NaN"), json!("10"), json!(null)] {
        let op = ctx.id("op");
        ctx.api
            .service(Method::POST, ADD)
            .json(&json!({"user_id": user, "amount_usd": amount, "operation_id": op}))
            .send()
            .await
            .expect_error(422, Some("invalid_body"));
        ctx.assert_nothing_written(&user, 1, &op).await;
    }
    // add without amount_usd, bonus without credits, bonus with mistyped credits, unknown type,
    // fields that do not belong to the type (source only goes with add): 422 invalid_body.
    let op = ctx.id("op");
    for body in [
        json!({"user_id": user, "operation_id": op}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus"}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": 1.5}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": "5"}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": 5, "source": "stripe"}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "gift", "amount_usd": 1.0}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "charge", "amount_usd": 1.0}),
        json!({"user_id": user, "operation_id": op, "transaction_type": "refund"}),
        json!({"user_id": user, "operation_id": op, "amount_usd": 1.0, "credits": 5}),
        json!({"user_id": user, "operation_id": op, "amount_usd": 1.0, "bogus": true}),
    ] {
        ctx.api
            .service(Method::POST, ADD)
            .json(&body)
            .send()
            .await
            .expect_error(422, Some("invalid_body"));
    }
    // A bonus of no or negative credits: 422 invalid_parameter naming credits.
    for credits in [0, -5] {
        let body = ctx
            .api
            .service(Method::POST, ADD)
            .json(&json!({"user_id": user, "operation_id": op, "transaction_type": "bonus", "credits": credits}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "credits", "{body}");
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
    assert!(
        first["purchase_rate"].is_null(),
        "bonus has no purchase_rate: {first}"
    );
    assert!(tx_id(&first) > 0);
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
    assert!(tx_id(&first) > 0);
    assert!(
        first["purchase_rate"].is_null(),
        "refund has no purchase_rate: {first}"
    );
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
    // A charge of another user cannot be refunded to this one: operation ids are scoped per
    // user, so this user has no charge of that id.
    let (other, _) = funded_user(&ctx, 10_000).await;
    let charge_op = ctx.id("charge");
    ctx.charge(&other, 0.01, &charge_op).await.expect(200);
    refund(&ctx, &user, &charge_op, Some(1), &op)
        .await
        .expect_error(404, None);
    ctx.assert_nothing_written(&user, 10_000, &op).await;
    assert_eq!(ctx.balance(&other).await, 9_900);
    // An add is not a charge.
    let add_op = ctx.add_usd(&user, 0.01).await["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    refund(&ctx, &user, &add_op, Some(1), &op)
        .await
        .expect_error(404, None);
    ctx.assert_nothing_written(&user, 10_100, &op).await;
}

/// The charge a refund names is an id like any other: empty, too long or padded, it is a refused
/// value of `charge_operation_id`, 422 on this seed 004 route, and nothing is written.
#[tokio::test]
async fn refund_with_an_invalid_charge_operation_id_is_unprocessable() {
    let ctx = Ctx::new("refund_bad_charge_id").await;
    let (user, _) = funded_user(&ctx, 10_000).await;
    let charge_op = ctx.id("charge");
    ctx.charge(&user, 0.01, &charge_op).await.expect(200);
    for bad in [
        String::new(),
        "x".repeat(256),
        format!("{charge_op} "),
        format!("{charge_op}\u{200B}"),
    ] {
        let op = ctx.id("r");
        let body = refund(&ctx, &user, &bad, Some(1), &op)
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "charge_operation_id", "{bad:?}: {body}");
        ctx.assert_nothing_written(&user, 9_900, &op).await;
    }
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
    // Seed 004's nesting: the plan under subscription, the wallet under credits.
    assert_fields(&body, &["user_id", "subscription", "credits"]);
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    assert_eq!(body["user_id"], user.as_str());
    assert_eq!(
        body["credits"],
        json!({"balance": 900, "total_earned": 1000, "total_spent": 100})
    );
    let sub = &body["subscription"];
    assert_eq!(sub.as_object().unwrap().len(), 4, "{body}");
    assert_eq!(sub["tier"], tier.as_str());
    assert_eq!(num(sub, "monthly_cost"), 9.99);
    assert_eq!(num(sub, "multiplier"), 1.0);
    assert_eq!(num(sub, "purchase_rate"), 1.0);
    // SQL's quota.balance has the same values as flat columns.
    let row = ctx
        .db
        .query_one(
            "SELECT user_id, balance, total_earned, total_spent, subscription_tier, monthly_cost,
                    multiplier, purchase_rate FROM quota.balance($1)",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), user);
    assert_eq!(
        (
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        (900, 1000, 100)
    );
    assert_eq!(
        row.get::<_, Option<String>>(4).as_deref(),
        Some(tier.as_str())
    );
    assert_eq!(row.get::<_, Option<f64>>(5), Some(9.99));
    assert_eq!((row.get::<_, f64>(6), row.get::<_, f64>(7)), (1.0, 1.0));
    // A user without a subscription: no tier, no monthly cost, multiplier and purchase rate 1.
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
    assert_eq!(
        body["credits"],
        json!({"balance": 0, "total_earned": 0, "total_spent": 0}),
        "{body}"
    );
    let sub = &body["subscription"];
    assert!(sub["tier"].is_null(), "{body}");
    assert!(sub["monthly_cost"].is_null(), "{body}");
    assert_eq!(num(sub, "multiplier"), 1.0);
    assert_eq!(num(sub, "purchase_rate"), 1.0);
}

#[tokio::test]
async fn check_endpoint_reports_sufficiency_and_deficit() {
    let ctx = Ctx::new("check").await;
    let (user, tier) = funded_user(&ctx, 500).await;
    let path = format!("/api/internal/credits/check/{user}");
    // The body without its multiplier (a float, compared as a number).
    let check = |query: Option<&'static str>| {
        let (api, path) = (ctx.api.clone(), path.clone());
        async move {
            let mut req = api.service(Method::GET, &path);
            if let Some(q) = query {
                req = req.query(&[("required_credits", q.into())]);
            }
            let mut body = req.send().await.expect(200);
            assert_eq!(num(&body, "multiplier"), 1.0, "{body}");
            body.as_object_mut().unwrap().remove("multiplier");
            body
        }
    };
    assert_eq!(
        check(Some("500")).await,
        json!({"user_id": user, "has_subscription": true, "subscription_tier": tier, "balance": 500,
               "required_credits": 500, "sufficient": true, "deficit": 0})
    );
    assert_eq!(
        check(Some("501")).await,
        json!({"user_id": user, "has_subscription": true, "subscription_tier": tier, "balance": 500,
               "required_credits": 501, "sufficient": false, "deficit": 1})
    );
    // Without required_credits: sufficient, nothing required, no deficit.
    assert_eq!(
        check(None).await,
        json!({"user_id": user, "has_subscription": true, "subscription_tier": tier, "balance": 500,
               "required_credits": null, "sufficient": true, "deficit": 0})
    );
    // A negative count is a refused value of the field; a non-integer is a bad query value.
    let body = ctx
        .api
        .service(Method::GET, &path)
        .query(&[("required_credits", "-1".into())])
        .send()
        .await
        .expect_error(422, Some("invalid_parameter"));
    assert_eq!(body["field"], "required_credits", "{body}");
    for bad in ["abc", "1.5", "99999999999999999999999"] {
        ctx.api
            .service(Method::GET, &path)
            .query(&[("required_credits", bad.into())])
            .send()
            .await
            .expect_error(422, Some("invalid_query"));
    }
    // SQL's quota.check_credits has the same columns.
    let row = ctx
        .db
        .query_one(
            "SELECT user_id, has_subscription, subscription_tier, balance, multiplier,
                    required_credits, sufficient, deficit FROM quota.check_credits($1, 600)",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), user);
    assert!(row.get::<_, bool>(1));
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some(tier.as_str())
    );
    assert_eq!(row.get::<_, i64>(3), 500);
    assert_eq!(row.get::<_, f64>(4), 1.0);
    assert_eq!(row.get::<_, Option<i64>>(5), Some(600));
    assert!(!row.get::<_, bool>(6));
    assert_eq!(row.get::<_, i64>(7), 100);
    // A user without a plan.
    let bare = ctx.create_user().await;
    ctx.top_up_credits(&bare, 5).await;
    let body = ctx
        .api
        .service(Method::GET, &format!("/api/internal/credits/check/{bare}"))
        .query(&[("required_credits", "5".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(body["has_subscription"], false, "{body}");
    assert!(body["subscription_tier"].is_null(), "{body}");
    assert_eq!(num(&body, "multiplier"), 1.0);
    assert_eq!(body["sufficient"], true, "{body}");
    // Checking does not consume.
    assert_eq!(ctx.balance(&user).await, 500);
    assert_eq!(ctx.balance(&bare).await, 5);
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
    const KEYS: &[&str] = &[
        "user_id",
        "cost_usd",
        "tier",
        "multiplier",
        "base_rate",
        "credits_to_charge",
        "current_balance",
        "balance_after",
        "sufficient",
    ];
    assert_fields(&body, KEYS);
    assert_eq!(body.as_object().unwrap().len(), KEYS.len(), "{body}");
    assert_eq!(body["user_id"], user.as_str());
    assert_eq!(num(&body, "cost_usd"), 0.01);
    assert_eq!(body["tier"], tier.as_str());
    assert_eq!(num(&body, "multiplier"), 2.0);
    assert_eq!(int(&body, "base_rate"), DEFAULT_BASE_RATE);
    assert_eq!(int(&body, "credits_to_charge"), 200);
    // The user holds 1 credit: not enough, and the balance it would leave says by how much.
    assert_eq!(int(&body, "current_balance"), 1);
    assert_eq!(int(&body, "balance_after"), 1 - 200);
    assert_eq!(body["sufficient"], false);
    // By tier: the same price, and no user to compare with.
    let by_tier = ctx
        .api
        .service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "tier": tier}))
        .send()
        .await
        .expect(200);
    assert_eq!(by_tier.as_object().unwrap().len(), KEYS.len(), "{by_tier}");
    for k in [
        "cost_usd",
        "tier",
        "multiplier",
        "base_rate",
        "credits_to_charge",
    ] {
        assert_eq!(by_tier[k], body[k], "{k}: {by_tier} vs {body}");
    }
    for k in ["user_id", "current_balance", "balance_after", "sufficient"] {
        assert!(by_tier[k].is_null(), "{k} without a user: {by_tier}");
    }
    // A user who can afford it.
    ctx.top_up_credits(&user, 199).await;
    let enough = ctx
        .api
        .service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "user_id": user}))
        .send()
        .await
        .expect(200);
    assert_eq!(int(&enough, "current_balance"), 200);
    assert_eq!(int(&enough, "balance_after"), 0);
    assert_eq!(enough["sufficient"], true);
    // Calculating does not consume.
    assert_eq!(ctx.balance(&user).await, 200);
    ctx.api
        .service(Method::POST, CALCULATE)
        .json(&json!({"cost_usd": 0.01, "tier": ctx.id("no_tier")}))
        .send()
        .await
        .expect_error(404, None);
    for cost in [json!(-1), json!(0), json!(1e300)] {
        let body = ctx
            .api
            .service(Method::POST, CALCULATE)
            .json(&json!({"cost_usd": cost, "tier": tier}))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "cost_usd", "{body}");
    }
    for cost in [json!("NaN"), json!("0.01"), json!(null)] {
        ctx.api
            .service(Method::POST, CALCULATE)
            .json(&json!({"cost_usd": cost, "tier": tier}))
            .send()
            .await
            .expect_error(422, Some("invalid_body"));
    }
}

// ---------------------------------------------------------------------------------------------
// subscription update

#[tokio::test]
async fn subscription_update_adds_credits_and_same_tier_again_is_conflict() {
    let ctx = Ctx::new("sub_update").await;
    let basic = ctx.create_plan(json!({})).await;
    let pro = ctx
        .create_plan(json!({"multiplier": 1.5, "purchase_rate": 1.2}))
        .await;
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
    // The new plan's rates are floats: compared as numbers, then the rest field for field.
    let mut fields = first.clone();
    let object = fields.as_object_mut().unwrap();
    assert_eq!(
        object.remove("multiplier").and_then(|v| v.as_f64()),
        Some(1.0),
        "{first}"
    );
    assert_eq!(
        object.remove("purchase_rate").and_then(|v| v.as_f64()),
        Some(1.0),
        "{first}"
    );
    assert_eq!(
        fields,
        json!({
            "success": true,
            "transaction_id": first["transaction_id"],
            "user_id": user,
            "previous_tier": null,
            "subscription_tier": basic["tier"],
            "new_tier": basic["tier"],
            "credits_added": 1100,
            "balance_before": 0,
            "balance_after": 1100,
            "new_balance": 1100,
            "operation_id": op,
        })
    );
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
    assert_eq!(switched["new_tier"], pro["tier"]);
    assert_eq!(switched["subscription_tier"], pro["tier"]);
    assert_eq!(int(&switched, "balance_after"), 1150);
    assert_eq!(int(&switched, "new_balance"), 1150);
    assert_eq!(
        num(&switched, "multiplier"),
        1.5,
        "the new plan's: {switched}"
    );
    assert_eq!(
        num(&switched, "purchase_rate"),
        1.2,
        "the new plan's: {switched}"
    );
    assert!(tx_id(&switched) > tx_id(&first));
    let bal = ctx
        .api
        .service(
            Method::GET,
            &format!("/api/internal/credits/balance/{user}"),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(bal["subscription"]["tier"], pro["tier"]);
    assert_eq!(num(&bal["subscription"], "multiplier"), 1.5);
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
    // Refused values name their field: 422 invalid_parameter.
    for (body, field) in [
        (
            json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": -1, "operation_id": op}),
            "credits_to_add",
        ),
        (
            json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": 10, "operation_id": "y".repeat(256)}),
            "operation_id",
        ),
        (
            json!({"user_id": user, "subscription_tier": format!("{} ", plan["tier"].as_str().unwrap()), "credits_to_add": 10, "operation_id": op}),
            "tier",
        ),
    ] {
        let resp = ctx
            .api
            .service(Method::POST, SUBSCRIPTION_UPDATE)
            .json(&body)
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(resp["field"], field, "{resp}");
    }
    // Mistyped or missing fields: 422 invalid_body.
    for body in [
        json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": "10", "operation_id": op}),
        json!({"user_id": user, "subscription_tier": plan["tier"], "credits_to_add": 10}),
        json!({"user_id": user, "credits_to_add": 10, "operation_id": op}),
    ] {
        ctx.api
            .service(Method::POST, SUBSCRIPTION_UPDATE)
            .json(&body)
            .send()
            .await
            .expect_error(422, Some("invalid_body"));
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
        bal["subscription"]["tier"].is_null(),
        "a failed update changed the tier: {bal}"
    );
}
