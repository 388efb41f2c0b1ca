//! The admin API of SPEC 2 and the contract: plans, multiplier, purchase rate, statistics, users,
//! user API tokens, and the audit log of admin changes.

use pg_quota_e2e::*;

const PLANS: &str = "/api/admin/subscription-plans";

fn tier_of(plan: &Value) -> String {
    plan["tier"]
        .as_str()
        .unwrap_or_else(|| panic!("tier in {plan}"))
        .to_string()
}

fn assert_admin_plan(plan: &Value) {
    assert_exact_keys(plan, ADMIN_PLAN_KEYS);
}

async fn list_plans(ctx: &Ctx, active_only: Option<bool>) -> Vec<Value> {
    let mut req = ctx.api.admin(Method::GET, PLANS);
    if let Some(a) = active_only {
        req = req.query(&[("active_only", a.to_string())]);
    }
    let body = req.send().await.expect(200);
    let plans = body["plans"]
        .as_array()
        .unwrap_or_else(|| panic!("plans in {body}"))
        .clone();
    assert_eq!(
        int(&body, "total"),
        plans.len() as i64,
        "plan list total: {body}"
    );
    plans.iter().for_each(assert_admin_plan);
    plans
}

async fn find_plan(ctx: &Ctx, tier: &str) -> Option<Value> {
    list_plans(ctx, None)
        .await
        .into_iter()
        .find(|p| p["tier"] == tier)
}

// ---------------------------------------------------------------------------------------------
// plans

#[tokio::test]
async fn create_plan_returns_201_and_the_plan_object() {
    let ctx = Ctx::new("plan_create").await;
    let input = ctx.plan_input(json!({
        "monthly_cost": 19.5, "fixed_cost": 2.25, "credits_included": 3000, "bonus_credits": 700,
        "multiplier": 1.25, "purchase_rate": 1.1
    }));
    let body = ctx
        .api
        .admin(Method::POST, PLANS)
        .json(&input)
        .send()
        .await
        .expect(201);
    // Seed 004: `{success, plan}`, the plan as the admin list shows it.
    assert_fields(&body, &["success", "plan"]);
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["success"], true);
    let plan = body["plan"].clone();
    assert_admin_plan(&plan);
    assert_eq!(plan["tier"], input["tier"]);
    assert_eq!(plan["name"], input["name"]);
    // Costs are JSON numbers.
    assert!(plan["monthly_cost"].is_number(), "{plan}");
    assert_eq!(num(&plan, "monthly_cost"), 19.5);
    assert_eq!(num(&plan, "fixed_cost"), 2.25);
    assert_eq!(int(&plan, "credits_included"), 3000);
    assert_eq!(int(&plan, "bonus_credits"), 700);
    assert_eq!(num(&plan, "multiplier"), 1.25);
    assert_eq!(num(&plan, "purchase_rate"), 1.1);
    assert_eq!(plan["active"], true);
    assert_eq!(int(&plan, "users_count"), 0);
    assert!(
        plan["created_at"].is_string() && plan["updated_at"].is_string(),
        "{plan}"
    );
    assert_eq!(find_plan(&ctx, &tier_of(&plan)).await.as_ref(), Some(&plan));
    // users_count counts the plan's subscribers.
    let user = ctx.create_user().await;
    ctx.subscribe(&user, &tier_of(&plan), 10).await;
    let listed = find_plan(&ctx, &tier_of(&plan)).await.unwrap();
    assert_eq!(int(&listed, "users_count"), 1, "{listed}");
}

#[tokio::test]
async fn duplicate_plan_tier_or_name_is_conflict() {
    let ctx = Ctx::new("plan_dup").await;
    let plan = ctx.create_plan(json!({})).await;
    let same_tier = ctx.plan_input(json!({"tier": plan["tier"]}));
    ctx.api
        .admin(Method::POST, PLANS)
        .json(&same_tier)
        .send()
        .await
        .expect_error(409, None);
    let same_name = ctx.plan_input(json!({"name": plan["name"]}));
    ctx.api
        .admin(Method::POST, PLANS)
        .json(&same_name)
        .send()
        .await
        .expect_error(409, None);
    assert!(find_plan(&ctx, same_name["tier"].as_str().unwrap())
        .await
        .is_none());
    assert_eq!(
        find_plan(&ctx, &tier_of(&plan)).await.unwrap()["name"],
        plan["name"]
    );
}

#[tokio::test]
async fn invalid_plan_input_is_unprocessable_and_creates_nothing() {
    let ctx = Ctx::new("plan_invalid").await;
    // Each refused value is 422 invalid_parameter naming its field (the body as a whole, `plan`,
    // for a wrong type or an unknown field). Bounds: multiplier 0.001..1000, purchase_rate 1..1000.
    let cases = [
        (json!({"multiplier": 0}), "multiplier"),
        (json!({"multiplier": -1.0}), "multiplier"),
        (json!({"multiplier": 0.0009}), "multiplier"),
        (json!({"multiplier": 1e-320}), "multiplier"),
        (json!({"multiplier": 1000.5}), "multiplier"),
        (json!({"multiplier": "abc"}), "plan"),
        (json!({"purchase_rate": 0.5}), "purchase_rate"),
        (json!({"purchase_rate": 0.99}), "purchase_rate"),
        (json!({"purchase_rate": 1000.5}), "purchase_rate"),
        (json!({"purchase_rate": "NaN"}), "plan"),
        (json!({"monthly_cost": -1}), "monthly_cost"),
        (json!({"fixed_cost": -0.01}), "fixed_cost"),
        (json!({"credits_included": -1}), "credits_included"),
        (json!({"bonus_credits": -5}), "bonus_credits"),
        (json!({"credits_included": 1.5}), "plan"),
        (json!({"name": ""}), "name"),
        (json!({"name": "n".repeat(256)}), "name"),
        (json!({"active": "yes"}), "plan"),
        (json!({"total_credits": 5}), "plan"),
    ];
    for (overrides, field) in cases {
        let input = ctx.plan_input(overrides.clone());
        let body = ctx
            .api
            .admin(Method::POST, PLANS)
            .json(&input)
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], field, "{overrides}: {body}");
        assert!(
            find_plan(&ctx, input["tier"].as_str().unwrap())
                .await
                .is_none(),
            "invalid plan {overrides} was created"
        );
    }
    // Tier missing, empty, longer than 64 chars, padded, or holding an invisible character.
    let mut no_tier = ctx.plan_input(json!({}));
    no_tier.as_object_mut().unwrap().remove("tier");
    ctx.api
        .admin(Method::POST, PLANS)
        .json(&no_tier)
        .send()
        .await
        .expect_error(422, Some("invalid_parameter"));
    let long = format!("{}{}", ctx.id("t"), "x".repeat(64));
    for tier in [
        String::new(),
        long.clone(),
        format!(" {}", ctx.id("t")),
        format!("{}\u{200B}", ctx.id("t")),
    ] {
        let body = ctx
            .api
            .admin(Method::POST, PLANS)
            .json(&ctx.plan_input(json!({ "tier": tier })))
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "tier", "{tier:?}: {body}");
        assert!(find_plan(&ctx, &tier).await.is_none());
    }
    ctx.api
        .admin(Method::POST, PLANS)
        .raw_json("{\"tier\": ")
        .send()
        .await
        .expect_error(422, Some("invalid_json"));
    // The bounds themselves are valid.
    let low = ctx
        .create_plan(json!({"purchase_rate": 1.0, "multiplier": 0.001}))
        .await;
    assert_eq!(num(&low, "multiplier"), 0.001);
    let high = ctx
        .create_plan(json!({"purchase_rate": 1000.0, "multiplier": 1000.0}))
        .await;
    assert_eq!(num(&high, "purchase_rate"), 1000.0);
}

#[tokio::test]
async fn update_plan_is_partial() {
    let ctx = Ctx::new("plan_update").await;
    let plan = ctx
        .create_plan(json!({"credits_included": 1000, "bonus_credits": 100, "multiplier": 1.5}))
        .await;
    let tier = tier_of(&plan);
    let path = format!("{PLANS}/{tier}");
    let new_name = format!("{tier} renamed");
    let body = ctx
        .api
        .admin(Method::PUT, &path)
        .json(&json!({"name": new_name, "bonus_credits": 400}))
        .send()
        .await
        .expect(200);
    assert_eq!(body["success"], true, "{body}");
    let updated = body["plan"].clone();
    assert_admin_plan(&updated);
    assert_eq!(updated["name"], new_name.as_str());
    assert_eq!(int(&updated, "bonus_credits"), 400);
    for f in [
        "tier",
        "monthly_cost",
        "fixed_cost",
        "credits_included",
        "multiplier",
        "purchase_rate",
        "active",
        "created_at",
    ] {
        assert_eq!(updated[f], plan[f], "field {f} changed by a partial update");
    }
    assert_eq!(find_plan(&ctx, &tier).await.as_ref(), Some(&updated));
    // Invalid values, another tier, unknown fields: 422 naming the field; a taken name: 409;
    // an unknown tier: 404.
    for (patch, field) in [
        (json!({"multiplier": 0}), "multiplier"),
        (json!({"multiplier": 1001}), "multiplier"),
        (json!({"purchase_rate": 0.5}), "purchase_rate"),
        (json!({"credits_included": -1}), "credits_included"),
        (json!({"name": ""}), "name"),
        (json!({"tier": format!("{tier}_other")}), "tier"),
        (json!({"total_credits": 1400}), "plan update"),
    ] {
        let body = ctx
            .api
            .admin(Method::PUT, &path)
            .json(&patch)
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], field, "{patch}: {body}");
    }
    ctx.api
        .admin(Method::PUT, &path)
        .raw_json("{\"name\": ")
        .send()
        .await
        .expect_error(422, Some("invalid_json"));
    let other = ctx.create_plan(json!({})).await;
    ctx.api
        .admin(Method::PUT, &path)
        .json(&json!({"name": other["name"]}))
        .send()
        .await
        .expect_error(409, None);
    ctx.api
        .admin(Method::PUT, &format!("{PLANS}/{}", ctx.id("no_tier")))
        .json(&json!({"name": ctx.id("n")}))
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(
        find_plan(&ctx, &tier).await.as_ref(),
        Some(&updated),
        "a rejected update changed the plan"
    );
}

#[tokio::test]
async fn list_plans_filters_active_only() {
    let ctx = Ctx::new("plan_list").await;
    let active = ctx.create_plan(json!({})).await;
    let inactive = ctx.create_plan(json!({"active": false})).await;
    let all = list_plans(&ctx, None).await;
    assert!(all.iter().any(|p| p["tier"] == active["tier"]));
    assert!(all.iter().any(|p| p["tier"] == inactive["tier"]));
    let all_false = list_plans(&ctx, Some(false)).await;
    assert!(all_false.iter().any(|p| p["tier"] == inactive["tier"]));
    let only = list_plans(&ctx, Some(true)).await;
    assert!(only.iter().any(|p| p["tier"] == active["tier"]));
    assert!(!only.iter().any(|p| p["tier"] == inactive["tier"]));
    assert!(only.iter().all(|p| p["active"] == true));
    // Deactivating through PUT removes it from the active list.
    ctx.api
        .admin(Method::PUT, &format!("{PLANS}/{}", tier_of(&active)))
        .json(&json!({"active": false}))
        .send()
        .await
        .expect(200);
    assert!(!list_plans(&ctx, Some(true))
        .await
        .iter()
        .any(|p| p["tier"] == active["tier"]));
}

#[tokio::test]
async fn multiplier_patch_validates_and_applies() {
    let ctx = Ctx::new("plan_multiplier").await;
    let plan = ctx.create_plan(json!({"multiplier": 1.0})).await;
    let tier = tier_of(&plan);
    let path = format!("{PLANS}/{tier}/multiplier");
    let updated = ctx
        .api
        .admin(Method::PATCH, &path)
        .query(&[("multiplier", "1.5".into())])
        .send()
        .await
        .expect(200);
    assert_fields(
        &updated,
        &[
            "success",
            "tier",
            "old_multiplier",
            "new_multiplier",
            "updated_at",
            "plan",
        ],
    );
    assert_eq!(updated["success"], true);
    assert_eq!(updated["tier"], tier.as_str());
    assert_eq!(num(&updated, "old_multiplier"), 1.0);
    assert_eq!(num(&updated, "new_multiplier"), 1.5);
    assert!(updated["updated_at"].is_string(), "{updated}");
    assert_admin_plan(&updated["plan"]);
    assert_eq!(num(&updated["plan"], "multiplier"), 1.5);
    assert_eq!(ctx.calculate_for_tier(0.0123, &tier).await, 184);
    // The bounds are accepted, and old_multiplier is the value it replaced.
    for (value, old) in [("0.001", 1.5), ("1000", 0.001), ("1.5", 1000.0)] {
        let body = ctx
            .api
            .admin(Method::PATCH, &path)
            .query(&[("multiplier", value.into())])
            .send()
            .await
            .expect(200);
        assert_eq!(num(&body, "old_multiplier"), old, "{body}");
        assert_eq!(
            num(&body, "new_multiplier"),
            value.parse::<f64>().unwrap(),
            "{body}"
        );
    }
    // Out of range or not finite: 422 naming the field; not a number or absent: 422 invalid_query.
    for bad in ["0", "-1", "0.0009", "1000.01", "1e-320", "NaN", "inf"] {
        let body = ctx
            .api
            .admin(Method::PATCH, &path)
            .query(&[("multiplier", bad.into())])
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "multiplier", "{bad}: {body}");
    }
    for bad in ["abc", ""] {
        ctx.api
            .admin(Method::PATCH, &path)
            .query(&[("multiplier", bad.into())])
            .send()
            .await
            .expect_error(422, Some("invalid_query"));
    }
    ctx.api
        .admin(Method::PATCH, &path)
        .send()
        .await
        .expect_error(422, Some("invalid_query"));
    assert_eq!(
        num(&find_plan(&ctx, &tier).await.unwrap(), "multiplier"),
        1.5
    );
    ctx.api
        .admin(
            Method::PATCH,
            &format!("{PLANS}/{}/multiplier", ctx.id("no_tier")),
        )
        .query(&[("multiplier", "2".into())])
        .send()
        .await
        .expect_error(404, None);
}

#[tokio::test]
async fn purchase_rate_patch_validates_and_applies() {
    let ctx = Ctx::new("plan_purchase_rate").await;
    let plan = ctx.create_plan(json!({"purchase_rate": 1.0})).await;
    let tier = tier_of(&plan);
    let path = format!("{PLANS}/{tier}/purchase-rate");
    let updated = ctx
        .api
        .admin(Method::PATCH, &path)
        .query(&[("purchase_rate", "1.2".into())])
        .send()
        .await
        .expect(200);
    assert_fields(
        &updated,
        &[
            "success",
            "tier",
            "old_purchase_rate",
            "new_purchase_rate",
            "updated_at",
            "plan",
        ],
    );
    assert_eq!(updated["success"], true);
    assert_eq!(updated["tier"], tier.as_str());
    assert_eq!(num(&updated, "old_purchase_rate"), 1.0);
    assert_eq!(num(&updated, "new_purchase_rate"), 1.2);
    assert!(updated["updated_at"].is_string(), "{updated}");
    assert_admin_plan(&updated["plan"]);
    assert_eq!(num(&updated["plan"], "purchase_rate"), 1.2);
    let user = ctx.create_user().await;
    ctx.subscribe(&user, &tier, 1).await;
    assert_eq!(
        int(&ctx.add_usd(&user, 10.0).await, "credits_added"),
        120_000
    );
    // The upper bound is accepted; beyond the bounds, 422 naming the field.
    let top = ctx
        .api
        .admin(Method::PATCH, &path)
        .query(&[("purchase_rate", "1000".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(num(&top, "old_purchase_rate"), 1.2);
    assert_eq!(num(&top, "new_purchase_rate"), 1000.0);
    ctx.api
        .admin(Method::PATCH, &path)
        .query(&[("purchase_rate", "1.2".into())])
        .send()
        .await
        .expect(200);
    for bad in ["0.5", "0.99", "0", "-2", "1000.5", "NaN", "inf"] {
        let body = ctx
            .api
            .admin(Method::PATCH, &path)
            .query(&[("purchase_rate", bad.into())])
            .send()
            .await
            .expect_error(422, Some("invalid_parameter"));
        assert_eq!(body["field"], "purchase_rate", "{bad}: {body}");
    }
    ctx.api
        .admin(Method::PATCH, &path)
        .query(&[("purchase_rate", "abc".into())])
        .send()
        .await
        .expect_error(422, Some("invalid_query"));
    assert_eq!(
        num(&find_plan(&ctx, &tier).await.unwrap(), "purchase_rate"),
        1.2
    );
    ctx.api
        .admin(
            Method::PATCH,
            &format!("{PLANS}/{}/purchase-rate", ctx.id("no_tier")),
        )
        .query(&[("purchase_rate", "1.5".into())])
        .send()
        .await
        .expect_error(404, None);
}

#[tokio::test]
async fn delete_plan_with_subscribers_is_conflict_then_deleted_then_not_found() {
    let ctx = Ctx::new("plan_delete").await;
    let plan = ctx.create_plan(json!({})).await;
    let other = ctx.create_plan(json!({})).await;
    let tier = tier_of(&plan);
    let user = ctx.create_user().await;
    ctx.subscribe(&user, &tier, 10).await;
    let path = format!("{PLANS}/{tier}");
    ctx.api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect_error(409, None);
    assert!(find_plan(&ctx, &tier).await.is_some());
    // Once nobody is subscribed, it can go.
    ctx.subscribe(&user, &tier_of(&other), 10).await;
    let body = ctx
        .api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect(200);
    assert_eq!(
        body,
        json!({"success": true, "message": "plan deleted", "tier": tier})
    );
    assert!(find_plan(&ctx, &tier).await.is_none());
    ctx.api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect_error(404, None);
    ctx.api
        .admin(Method::PUT, &path)
        .json(&json!({"name": ctx.id("n")}))
        .send()
        .await
        .expect_error(404, None);
    // Nobody can subscribe to it any more; the tier can be created again.
    let op = ctx.id("sub");
    ctx.api
        .service(Method::POST, "/api/internal/subscription/update")
        .json(&json!({"user_id": user, "subscription_tier": tier, "credits_to_add": 5, "operation_id": op}))
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(ctx.ledger_rows(&op).await, 0);
    ctx.api
        .admin(Method::POST, PLANS)
        .json(&ctx.plan_input(json!({"tier": tier})))
        .send()
        .await
        .expect(201);
}

#[tokio::test]
async fn admin_changes_are_written_to_the_audit_log() {
    let ctx = Ctx::new("audit_log").await;
    let plan = ctx.create_plan(json!({})).await;
    let tier = tier_of(&plan);
    let path = format!("{PLANS}/{tier}");
    assert!(
        ctx.audit_rows_mentioning(&tier).await >= 1,
        "plan creation not audited"
    );
    ctx.api
        .admin(Method::PUT, &path)
        .json(&json!({"bonus_credits": 4242}))
        .send()
        .await
        .expect(200);
    ctx.api
        .admin(Method::PATCH, &format!("{path}/multiplier"))
        .query(&[("multiplier", "3.5".into())])
        .send()
        .await
        .expect(200);
    ctx.api
        .admin(Method::PATCH, &format!("{path}/purchase-rate"))
        .query(&[("purchase_rate", "2.5".into())])
        .send()
        .await
        .expect(200);
    ctx.api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect(200);
    assert!(
        ctx.audit_rows_mentioning(&tier).await >= 5,
        "not every admin change on {tier} is audited"
    );
    // The rows say what happened and when, with old and new values.
    let rows = ctx
        .db
        .query(
            "SELECT a.action::text, a.created_at IS NOT NULL, to_jsonb(a)::text FROM quota.audit_log a \
             WHERE to_jsonb(a)::text LIKE '%' || $1 || '%' ORDER BY a.created_at",
            &[&tier],
        )
        .await
        .expect("audit_log has action and created_at");
    for r in &rows {
        let action: Option<String> = r.get(0);
        assert!(
            action.is_some_and(|a| !a.is_empty()),
            "audit row without action: {}",
            r.get::<_, String>(2)
        );
        assert!(r.get::<_, bool>(1));
    }
    let texts: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert!(
        texts.iter().any(|t| t.contains("4242")),
        "new bonus_credits not in the audit log: {texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("3.5")),
        "new multiplier not in the audit log: {texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("2.5")),
        "new purchase_rate not in the audit log: {texts:?}"
    );
    // Rejected changes are not audited.
    let before = ctx.audit_rows_mentioning(&tier).await;
    ctx.api
        .admin(Method::PATCH, &format!("{path}/multiplier"))
        .query(&[("multiplier", "9.75".into())])
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(ctx.audit_rows_mentioning(&tier).await, before);
}

// ---------------------------------------------------------------------------------------------
// statistics

async fn statistics(ctx: &Ctx, params: &[(&str, String)]) -> Value {
    let body = ctx
        .api
        .admin(Method::GET, "/api/admin/statistics")
        .query(params)
        .send()
        .await
        .expect(200);
    // Seed 004's nesting.
    assert_fields(
        &body,
        &[
            "period",
            "tier",
            "total_users",
            "subscriptions",
            "credits",
            "transactions",
        ],
    );
    assert_fields(&body["period"], &["start", "end"]);
    assert_fields(&body["subscriptions"], &["subscriptions", "total"]);
    assert!(body["subscriptions"]["subscriptions"].is_object(), "{body}");
    assert_fields(
        &body["credits"],
        &["total_earned", "total_spent", "current_balance"],
    );
    assert_fields(
        &body["transactions"],
        &[
            "total",
            "charges",
            "additions",
            "subscriptions",
            "bonuses",
            "refunds",
            "recharges",
        ],
    );
    // The per-tier counts add up to the total of subscriptions.
    let per_tier: i64 = body["subscriptions"]["subscriptions"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_i64().unwrap_or_else(|| panic!("a count in {body}")))
        .sum();
    assert_eq!(per_tier, int(&body["subscriptions"], "total"), "{body}");
    body
}

fn sub_count(stats: &Value, tier: &str) -> i64 {
    stats["subscriptions"]["subscriptions"]
        .get(tier)
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn statistics_count_own_activity_for_a_tier() {
    let ctx = Ctx::new("statistics_tier").await;
    let plan = ctx.create_plan(json!({"multiplier": 1.0})).await;
    let tier = tier_of(&plan);
    let by_tier = [("tier", tier.clone())];
    let before = statistics(&ctx, &by_tier).await;
    let global_before = statistics(&ctx, &[]).await;
    assert_eq!(before["tier"], tier.as_str());
    assert_eq!(sub_count(&before, &tier), 0);
    assert_eq!(int(&before, "total_users"), 0, "{before}");
    assert_eq!(int(&before["transactions"], "total"), 0);

    let a = ctx.create_user().await;
    let b = ctx.create_user().await;
    ctx.subscribe(&a, &tier, 1000).await;
    ctx.subscribe(&b, &tier, 1000).await;
    ctx.charge(&a, 0.01, &ctx.id("op")).await.expect(200); // 100 credits

    let after = statistics(&ctx, &by_tier).await;
    assert_eq!(sub_count(&after, &tier), 2, "{after}");
    assert_eq!(
        after["subscriptions"]["subscriptions"],
        json!({ tier.as_str(): 2 }),
        "only the tier's users are counted: {after}"
    );
    assert_eq!(int(&after["subscriptions"], "total"), 2, "{after}");
    assert_eq!(int(&after, "total_users"), 2, "{after}");
    assert_eq!(int(&after["credits"], "total_earned"), 2000, "{after}");
    assert_eq!(int(&after["credits"], "total_spent"), 100, "{after}");
    assert_eq!(int(&after["credits"], "current_balance"), 1900, "{after}");
    let tx = &after["transactions"];
    assert_eq!(
        (
            int(tx, "total"),
            int(tx, "charges"),
            int(tx, "subscriptions"),
            int(tx, "additions")
        ),
        (3, 1, 2, 0),
        "{after}"
    );
    assert_eq!(
        (int(tx, "bonuses"), int(tx, "refunds"), int(tx, "recharges")),
        (0, 0, 0),
        "{after}"
    );

    // Unfiltered counts include this activity (other tests run at the same time: at least).
    let global_after = statistics(&ctx, &[]).await;
    assert!(global_after["tier"].is_null(), "{global_after}");
    assert!(int(&global_after, "total_users") >= int(&global_before, "total_users") + 2);
    assert!(
        int(&global_after["transactions"], "charges")
            > int(&global_before["transactions"], "charges")
    );
    assert!(
        int(&global_after["transactions"], "subscriptions")
            >= int(&global_before["transactions"], "subscriptions") + 2
    );
    assert!(
        int(&global_after["subscriptions"], "total")
            >= int(&global_before["subscriptions"], "total") + 2
    );
    assert_eq!(sub_count(&global_after, &tier), 2);

    // A period in the future has no transactions.
    let future = statistics(
        &ctx,
        &[
            ("tier", tier.clone()),
            ("start_date", "2999-01-01 00:00:00".into()),
            ("end_date", "2999-12-31".into()),
        ],
    )
    .await;
    assert_eq!(int(&future["transactions"], "total"), 0, "{future}");
    assert!(
        future["period"]["start"].is_string(),
        "the period is echoed: {future}"
    );
    assert!(
        future["period"]["end"].is_string(),
        "the period is echoed: {future}"
    );
    // The users and the balance are not bounded by the period.
    assert_eq!(int(&future, "total_users"), 2, "{future}");
    assert_eq!(int(&future["credits"], "current_balance"), 1900, "{future}");
    // RFC 3339 bounds around now include them.
    let period = statistics(
        &ctx,
        &[
            ("tier", tier.clone()),
            ("start_date", "2000-01-01T00:00:00Z".into()),
            ("end_date", "2999-01-01T00:00:00Z".into()),
        ],
    )
    .await;
    assert_eq!(int(&period["transactions"], "total"), 3, "{period}");
}

#[tokio::test]
async fn statistics_reject_bad_dates() {
    let ctx = Ctx::new("statistics_bad").await;
    // A period that ends before it starts names the field: 422 on this seed 004 route.
    let body = ctx
        .api
        .admin(Method::GET, "/api/admin/statistics")
        .query(&[
            ("start_date", "2024-02-01".into()),
            ("end_date", "2024-01-01".into()),
        ])
        .send()
        .await
        .expect_error(422, Some("invalid_parameter"));
    assert_eq!(body["field"], "start_date", "{body}");
    // An unknown tier is 404.
    ctx.api
        .admin(Method::GET, "/api/admin/statistics")
        .query(&[("tier", ctx.id("no_tier"))])
        .send()
        .await
        .expect_error(404, None);
    // Not a date: a bad query value, 422 on this seed 004 route like every other bad query value.
    for (k, v) in [
        ("start_date", "not-a-date"),
        ("end_date", "2024-13-45"),
        ("start_date", "2024-02-30 10:00:00"),
    ] {
        ctx.api
            .admin(Method::GET, "/api/admin/statistics")
            .query(&[(k, v.into())])
            .send()
            .await
            .expect_error(422, None);
    }
}

// ---------------------------------------------------------------------------------------------
// users

const USER_FIELDS: &[&str] = &[
    "id",
    "name",
    "github_username",
    "email",
    "phone",
    "github_star",
    "vip",
    "org",
    "register_time",
    "access_time",
    "created_at",
    "updated_at",
    "balance",
    "total_earned",
    "total_spent",
    "subscription_tier",
    // Issue 11 (seed 003).
    "unlimited",
    "used_quota",
    "request_count",
    "held_credits",
];

#[tokio::test]
async fn create_and_get_user() {
    let ctx = Ctx::new("user_create").await;
    let id = ctx.id("u");
    // A user's org must be an existing organization (issue 11).
    let org = ctx.create_org(json!({"name": "Acme"})).await;
    let created = ctx
        .api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({
            "id": id, "name": "Ada", "github_username": "ada", "email": "ada@example.com", "phone": "+100",
            "github_star": ["repo-a", "repo-b"], "vip": 2, "org": org, "register_time": "2024-01-02 03:04:05",
            "access_time": "2024-02-03"
        }))
        .send()
        .await
        .expect(201);
    assert_fields(&created, USER_FIELDS);
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["name"], "Ada");
    assert_eq!(created["github_star"], json!(["repo-a", "repo-b"]));
    assert_eq!(int(&created, "vip"), 2);
    assert_eq!(created["org"], org.as_str());
    assert_eq!(int(&created, "balance"), 0);
    assert!(created["subscription_tier"].is_null());
    let got = ctx
        .api
        .admin(Method::GET, &format!("/api/admin/users/{id}"))
        .send()
        .await
        .expect(200);
    assert_eq!(got, created);
    // Duplicate id: 409. Unknown user: 404.
    ctx.api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"id": id}))
        .send()
        .await
        .expect_error(409, None);
    ctx.api
        .admin(
            Method::GET,
            &format!("/api/admin/users/{}", ctx.id("ghost")),
        )
        .send()
        .await
        .expect_error(404, None);
    // A comma-separated github_star string is split.
    let id2 = ctx.id("u");
    let u2 = ctx
        .api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"id": id2, "github_star": "x,y"}))
        .send()
        .await
        .expect(201);
    assert_eq!(u2["github_star"], json!(["x", "y"]));
}

#[tokio::test]
async fn invalid_user_input_is_bad_request() {
    let ctx = Ctx::new("user_invalid").await;
    let id = ctx.id("u");
    for extra in [
        json!({"vip": -1}),
        json!({"vip": "gold"}),
        json!({"register_time": "yesterday"}),
        json!({"access_time": "2024-13-01"}),
        json!({"no_such_field": 1}),
        json!({"github_star": 5}),
    ] {
        let mut body = json!({"id": id});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ctx.api
            .admin(Method::POST, "/api/admin/users")
            .json(&body)
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"name": "no id"}))
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"id": ""}))
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"id": "u".repeat(256)}))
        .send()
        .await
        .expect_error(400, None);
    // Padded or invisible ids are refused too; the admin user API is not a seed 004 route, so
    // such a refusal stays 400.
    for bad in [
        format!("{id} "),
        format!("{id}\u{200B}"),
        format!("{id}\u{00A0}x"),
    ] {
        let body = ctx
            .api
            .admin(Method::POST, "/api/admin/users")
            .json(&json!({ "id": bad }))
            .send()
            .await
            .expect_error(400, Some("invalid_parameter"));
        assert_eq!(body["field"], "user_id", "{bad:?}: {body}");
    }
    ctx.api
        .admin(Method::POST, "/api/admin/users")
        .raw_json("{\"id\": ")
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::GET, &format!("/api/admin/users/{id}"))
        .send()
        .await
        .expect_error(404, None);
}

#[tokio::test]
async fn update_user_is_partial() {
    let ctx = Ctx::new("user_update").await;
    let id = ctx.id("u");
    let created = ctx
        .api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"id": id, "name": "Bob", "email": "bob@example.com", "vip": 1}))
        .send()
        .await
        .expect(201);
    let path = format!("/api/admin/users/{id}");
    let updated = ctx
        .api
        .admin(Method::PUT, &path)
        .json(&json!({"name": "Robert", "vip": 3}))
        .send()
        .await
        .expect(200);
    assert_eq!(updated["name"], "Robert");
    assert_eq!(int(&updated, "vip"), 3);
    assert_eq!(updated["email"], created["email"]);
    assert_eq!(updated["created_at"], created["created_at"]);
    for patch in [
        json!({"vip": -1}),
        json!({"no_such_field": true}),
        json!({"register_time": "soon"}),
    ] {
        ctx.api
            .admin(Method::PUT, &path)
            .json(&patch)
            .send()
            .await
            .expect_error(400, None);
    }
    let got = ctx.api.admin(Method::GET, &path).send().await.expect(200);
    assert_eq!(got["name"], "Robert");
    assert_eq!(int(&got, "vip"), 3);
    ctx.api
        .admin(
            Method::PUT,
            &format!("/api/admin/users/{}", ctx.id("ghost")),
        )
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect_error(404, None);
    // Creation and the one accepted update are audited, with the new value.
    let texts: Vec<String> = ctx
        .db
        .query(
            "SELECT to_jsonb(a)::text FROM quota.audit_log a WHERE to_jsonb(a)::text LIKE '%' || $1 || '%'",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        texts.len() >= 2,
        "user create/update not audited: {texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("Robert")),
        "new name not in the audit log: {texts:?}"
    );
}

#[tokio::test]
async fn list_users_is_paged() {
    let ctx = Ctx::new("user_list").await;
    for _ in 0..3 {
        ctx.create_user().await;
    }
    let page = ctx
        .api
        .admin(Method::GET, "/api/admin/users")
        .query(&[("limit", "2".into()), ("offset", "0".into())])
        .send()
        .await
        .expect(200);
    assert_fields(&page, &["users", "total", "limit", "offset"]);
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    assert!(int(&page, "total") >= 3);
    assert_eq!(int(&page, "limit"), 2);
    let next = ctx
        .api
        .admin(Method::GET, "/api/admin/users")
        .query(&[("limit", "2".into()), ("offset", "1".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(int(&next, "offset"), 1);
    for (k, v) in [
        ("limit", "0"),
        ("limit", "1001"),
        ("offset", "-1"),
        ("limit", "x"),
    ] {
        ctx.api
            .admin(Method::GET, "/api/admin/users")
            .query(&[(k, v.into())])
            .send()
            .await
            .expect_error(400, None);
    }
}

#[tokio::test]
async fn import_users_upserts_all_or_nothing() {
    let ctx = Ctx::new("user_import").await;
    let existing = ctx.create_user().await;
    let (a, b) = (ctx.id("imp"), ctx.id("imp"));
    let body = ctx
        .api
        .admin(Method::POST, "/api/admin/users/import")
        .json(&json!([
            {"id": a, "name": "A", "vip": 1},
            {"id": b, "github_star": "r1,r2"},
            {"id": existing, "name": "renamed"}
        ]))
        .send()
        .await
        .expect(200);
    assert_eq!(int(&body, "created"), 2, "{body}");
    assert_eq!(int(&body, "updated"), 1, "{body}");
    let got = ctx
        .api
        .admin(Method::GET, &format!("/api/admin/users/{existing}"))
        .send()
        .await
        .expect(200);
    assert_eq!(got["name"], "renamed");
    let got = ctx
        .api
        .admin(Method::GET, &format!("/api/admin/users/{b}"))
        .send()
        .await
        .expect(200);
    assert_eq!(got["github_star"], json!(["r1", "r2"]));
    // One bad row: nothing imported.
    let c = ctx.id("imp");
    ctx.api
        .admin(Method::POST, "/api/admin/users/import")
        .json(&json!([{"id": c}, {"id": a, "vip": -1}]))
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::GET, &format!("/api/admin/users/{c}"))
        .send()
        .await
        .expect_error(404, None);
    assert_eq!(
        int(
            &ctx.api
                .admin(Method::GET, &format!("/api/admin/users/{a}"))
                .send()
                .await
                .expect(200),
            "vip"
        ),
        1
    );
    // A row without id, and a body that is not an array.
    ctx.api
        .admin(Method::POST, "/api/admin/users/import")
        .json(&json!([{"name": "x"}]))
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::POST, "/api/admin/users/import")
        .json(&json!({"id": c}))
        .send()
        .await
        .expect_error(400, None);
    ctx.api
        .admin(Method::GET, &format!("/api/admin/users/{c}"))
        .send()
        .await
        .expect_error(404, None);
}

// ---------------------------------------------------------------------------------------------
// user API tokens

#[tokio::test]
async fn issued_api_token_works_as_bearer_and_is_stored_hashed() {
    let ctx = Ctx::new("api_token").await;
    let user = ctx.create_user().await;
    let body = ctx
        .api
        .admin(Method::POST, &format!("/api/admin/users/{user}/api-tokens"))
        .json(&json!({"label": "ci"}))
        .send()
        .await
        .expect(201);
    assert_fields(
        &body,
        &["token_id", "user_id", "token", "label", "created_at"],
    );
    assert_eq!(body["user_id"], user.as_str());
    assert_eq!(body["label"], "ci");
    let token = body["token"].as_str().unwrap().to_string();
    assert!(
        token.len() == 67
            && token.starts_with("pq_")
            && token[3..].chars().all(|c| c.is_ascii_hexdigit()),
        "token format pq_ + 64 hex: {token}"
    );
    let sub = ctx
        .api
        .user(&token, Method::GET, "/api/v1/subscription")
        .send()
        .await
        .expect(200);
    assert_eq!(sub["user_id"], user.as_str());
    // The plaintext token is stored nowhere in the quota schema.
    let tables = ctx
        .db
        .query("SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'quota' AND table_type = 'BASE TABLE'", &[])
        .await
        .unwrap();
    for t in tables {
        let table: String = t.get(0);
        let sql = format!(
            "SELECT count(*) FROM quota.{table} x WHERE to_jsonb(x)::text LIKE '%' || $1 || '%'"
        );
        let n: i64 = ctx
            .db
            .query_one(&sql, &[&&token[3..]])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the plaintext token is stored in quota.{table}");
    }
    // A second token works too, independently.
    let (id2, token2) = ctx.issue_token(&user).await;
    ctx.api
        .user(&token2, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect(200);
    ctx.api
        .admin(Method::DELETE, &format!("/api/admin/api-tokens/{id2}"))
        .send()
        .await
        .expect(200);
    ctx.api
        .user(&token2, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect_error(403, None);
    ctx.api
        .user(&token, Method::GET, "/api/v1/transactions")
        .send()
        .await
        .expect(200);
    // No token for an unknown user.
    ctx.api
        .admin(
            Method::POST,
            &format!("/api/admin/users/{}/api-tokens", ctx.id("ghost")),
        )
        .json(&json!({}))
        .send()
        .await
        .expect_error(404, None);
    ctx.api
        .admin(Method::DELETE, "/api/admin/api-tokens/not-a-number")
        .send()
        .await
        .expect_error(400, None);
    // Issuing and revoking are audited (without the token itself, checked above).
    assert!(
        ctx.audit_rows_mentioning(&user).await >= 3,
        "token issue/revoke not audited"
    );
}
