//! Reservations over HTTP (issue 11): seed 003's checklist ("测试检查清单") and the two-phase
//! rules of reserve / settle / release / consume with expiring holds.
//!
//! Seed 003's checklist, line by line:
//! - 无限用户调用 API,用户额度不减少 (an unlimited user's wallet does not drop):
//!   `unlimited_user_spends_org_quota_not_wallet`
//! - 无限用户调用 API,`UsedQuota` 正常累加 (its used_quota grows): same test
//! - 无限用户调用 API,组织额度正常扣除 (its organization's quota drops): same test
//! - 无限用户创建 token,默认勾选无限 / 无限用户的有限 token,额度正常扣除 (tokens of an unlimited
//!   user, and limited tokens): `an_unlimited_users_tokens_default_to_unlimited_and_a_limited_one_is_debited`
//!   (access tokens of issue 12).
//! - 组织用户创建时,默认勾选无限 / 非组织用户创建时,默认不勾选无限 (defaults on create):
//!   organizations.rs `users_in_an_organization_are_unlimited_by_default`
//! - 用户从有限切换到无限 / 从无限切换到有限,计费逻辑正确 (switching):
//!   `switching_unlimited_applies_to_the_next_reservation`
//! - 用户列表正确显示"无限额度"标签 (the list shows the flag): organizations.rs, same test as
//!   the defaults.

use std::time::Duration;

use pg_quota_e2e::*;

fn id_of(v: &Value) -> i64 {
    int(v, "reservation_id")
}

/// A hold's answer: exactly its keys, status held.
fn assert_held(v: &Value) {
    assert_exact_keys(v, RESERVATION_HELD_KEYS);
    assert_eq!(v["status"], "held", "{v}");
}

/// A settle / release / consume answer: exactly its keys.
fn assert_ended(v: &Value, status: &str) {
    assert_exact_keys(v, RESERVATION_ENDED_KEYS);
    assert_eq!(v["status"], status, "{v}");
}

async fn user_id_in(ctx: &Ctx, org: Option<&str>, fields: Value) -> String {
    ctx.create_user_with(org, fields).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn unlimited_user_spends_org_quota_not_wallet() {
    let ctx = Ctx::new("rsv_unlimited").await;
    let org = ctx.create_org(json!({"quota": 10000})).await;
    let user = ctx.create_user_with(Some(&org), json!({})).await;
    assert_eq!(user["unlimited"], true);
    let user = user["id"].as_str().unwrap().to_string();
    ctx.top_up_credits(&user, 500).await;

    let op = ctx.id("rsv");
    let hold = ctx
        .reserve(json!({"operation_id": op, "user_id": user, "credits": 300}))
        .await
        .expect(201);
    assert_held(&hold);
    assert_eq!(hold["user_id"], user.as_str());
    assert_eq!(hold["org"], org.as_str());
    assert_eq!(hold["unlimited"], true);
    assert_eq!(hold["operation_id"], op.as_str());
    assert_eq!(int(&hold, "credits_held"), 300);
    assert_eq!(int(&hold, "user_credits_held"), 0, "no wallet hold: {hold}");
    assert_eq!(int(&hold, "org_credits_held"), 300);
    assert!(hold["cost_usd"].is_null());
    assert!(hold["expires_at"].is_string() && hold["created_at"].is_string());
    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 500);
    assert_eq!(int(&user_now, "held_credits"), 0);
    let org_now = ctx.org(&org).await;
    assert_eq!(int(&org_now, "held_quota"), 300);
    assert_eq!(int(&org_now, "available_quota"), 9700);
    assert_eq!(int(&org_now, "open_reservations"), 1);

    let settled = ctx
        .settle(id_of(&hold), 250, &ctx.id("set"))
        .await
        .expect(200);
    assert_ended(&settled, "settled");
    assert_eq!(int(&settled, "actual_credits"), 250);
    assert_eq!(
        int(&settled, "charged_credits"),
        0,
        "the wallet pays nothing"
    );
    assert_eq!(int(&settled, "uncollected_credits"), 0);
    assert_eq!(int(&settled, "balance_after"), 500);
    assert_eq!(int(&settled, "held_credits_after"), 0);
    assert_eq!(int(&settled, "used_quota_after"), 250);
    assert_eq!(int(&settled, "request_count_after"), 1);
    assert_eq!(int(&settled, "org_charged_credits"), 250);
    assert_eq!(int(&settled, "org_uncollected_credits"), 0);
    assert_eq!(int(&settled, "org_quota_after"), 9750);

    // 用户额度不减少, UsedQuota 正常累加, 组织额度正常扣除.
    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 500);
    assert_eq!(int(&user_now, "used_quota"), 250);
    assert_eq!(int(&user_now, "request_count"), 1);
    let org_now = ctx.org(&org).await;
    assert_eq!(int(&org_now, "quota"), 9750);
    assert_eq!(int(&org_now, "held_quota"), 0);
    assert_eq!(int(&org_now, "open_reservations"), 0);
    assert_eq!(reservation_ends(&ctx.db, id_of(&hold)).await, (1, 1));

    // An unlimited user with an empty wallet spends too (the organization pays).
    let empty = user_id_in(&ctx, Some(&org), json!({})).await;
    let consumed = ctx
        .consume(json!({"operation_id": ctx.id("con"), "user_id": empty, "credits": 100}))
        .await
        .expect(200);
    assert_ended(&consumed, "settled");
    assert_eq!(int(&consumed, "charged_credits"), 0);
    assert_eq!(int(&consumed, "balance_after"), 0);
    assert_eq!(int(&consumed, "used_quota_after"), 100);
    assert_eq!(int(&consumed, "org_quota_after"), 9650);
    assert_eq!(int(&ctx.org(&org).await, "quota"), 9650);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn limited_user_in_an_organization_pays_wallet_and_organization() {
    let ctx = Ctx::new("rsv_limited_org").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 500).await;
    let hold = ctx.hold(&user, 200).await;
    assert_held(&hold);
    assert_eq!(hold["unlimited"], false);
    assert_eq!(int(&hold, "user_credits_held"), 200);
    assert_eq!(int(&hold, "org_credits_held"), 200);
    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 500, "a hold is not a charge");
    assert_eq!(int(&user_now, "held_credits"), 200);

    let settled = ctx
        .settle(id_of(&hold), 150, &ctx.id("set"))
        .await
        .expect(200);
    assert_ended(&settled, "settled");
    assert_eq!(int(&settled, "charged_credits"), 150);
    assert_eq!(int(&settled, "returned_credits"), 50);
    assert_eq!(int(&settled, "balance_after"), 350);
    assert_eq!(int(&settled, "held_credits_after"), 0);
    assert_eq!(int(&settled, "used_quota_after"), 150);
    assert_eq!(int(&settled, "request_count_after"), 1);
    assert_eq!(int(&settled, "org_charged_credits"), 150);
    assert_eq!(int(&settled, "org_quota_after"), 850);
    assert_eq!(ctx.balance(&user).await, 350);
    assert_eq!(int(&ctx.org(&org).await, "quota"), 850);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn switching_unlimited_applies_to_the_next_reservation() {
    let ctx = Ctx::new("rsv_switch").await;
    let org = ctx.create_org(json!({"quota": 10000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({})).await;
    ctx.top_up_credits(&user, 1000).await;

    // Unlimited -> limited: the hold made before settles under the unlimited rule.
    let a = ctx.hold(&user, 100).await;
    assert_eq!(a["unlimited"], true);
    assert_eq!(
        ctx.update_user(&user, json!({"unlimited": false})).await["unlimited"],
        false
    );
    let b = ctx.hold(&user, 100).await;
    assert_eq!(b["unlimited"], false);
    assert_eq!(int(&b, "user_credits_held"), 100);
    let settled_a = ctx.settle(id_of(&a), 100, &ctx.id("set")).await.expect(200);
    assert_eq!(settled_a["unlimited"], true);
    assert_eq!(int(&settled_a, "charged_credits"), 0);
    assert_eq!(int(&settled_a, "balance_after"), 1000);
    let settled_b = ctx.settle(id_of(&b), 100, &ctx.id("set")).await.expect(200);
    assert_eq!(int(&settled_b, "charged_credits"), 100);
    assert_eq!(int(&settled_b, "balance_after"), 900);

    // Limited -> unlimited: the limited hold still pays from the wallet.
    let c = ctx.hold(&user, 200).await;
    assert_eq!(c["unlimited"], false);
    assert_eq!(
        ctx.update_user(&user, json!({"unlimited": true})).await["unlimited"],
        true
    );
    let d = ctx.hold(&user, 200).await;
    assert_eq!(d["unlimited"], true);
    assert_eq!(int(&d, "user_credits_held"), 0);
    let settled_c = ctx.settle(id_of(&c), 200, &ctx.id("set")).await.expect(200);
    assert_eq!(int(&settled_c, "charged_credits"), 200);
    assert_eq!(int(&settled_c, "balance_after"), 700);
    let settled_d = ctx.settle(id_of(&d), 200, &ctx.id("set")).await.expect(200);
    assert_eq!(int(&settled_d, "charged_credits"), 0);
    assert_eq!(int(&settled_d, "balance_after"), 700);

    // Every request counted, the organization paid for all four.
    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 700);
    assert_eq!(int(&user_now, "used_quota"), 600);
    assert_eq!(int(&user_now, "request_count"), 4);
    assert_eq!(int(&ctx.org(&org).await, "quota"), 9400);

    // Limited again with an empty wallet: refused.
    let poor = user_id_in(&ctx, Some(&org), json!({})).await;
    ctx.consume(json!({"operation_id": ctx.id("con"), "user_id": poor, "credits": 50}))
        .await
        .expect(200);
    ctx.update_user(&poor, json!({"unlimited": false})).await;
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": poor, "credits": 50}))
        .await
        .expect_error(403, Some("insufficient_user_quota"));
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn refused_reservations_write_nothing() {
    let ctx = Ctx::new("rsv_refused").await;
    let org = ctx.create_org(json!({"quota": 100})).await;

    // A limited user's wallet.
    let limited = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&limited, 50).await;
    let before = ctx.money_state(&limited, Some(&org)).await;
    for extra in [json!({"credits": 80}), json!({"credits": 80, "ttl_s": 60})] {
        let mut body = json!({"operation_id": ctx.id("rsv"), "user_id": limited});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let refused = ctx
            .reserve(body)
            .await
            .expect_error(403, Some("insufficient_user_quota"));
        assert!(refused["request_id"].is_string());
    }
    ctx.consume(json!({"operation_id": ctx.id("con"), "user_id": limited, "credits": 80}))
        .await
        .expect_error(403, Some("insufficient_user_quota"));
    assert_eq!(ctx.money_state(&limited, Some(&org)).await, before);

    // The organization's room (an unlimited user's wallet is not asked).
    let unlimited = user_id_in(&ctx, Some(&org), json!({})).await;
    let before = ctx.money_state(&unlimited, Some(&org)).await;
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": unlimited, "credits": 200}))
        .await
        .expect_error(403, Some("insufficient_org_quota"));
    ctx.consume(json!({"operation_id": ctx.id("con"), "user_id": unlimited, "credits": 101}))
        .await
        .expect_error(403, Some("insufficient_org_quota"));
    assert_eq!(ctx.money_state(&unlimited, Some(&org)).await, before);

    // Holds take room: what another hold holds is not available.
    let hold = ctx.hold(&unlimited, 80).await;
    let before = ctx.money_state(&unlimited, Some(&org)).await;
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": unlimited, "credits": 30}))
        .await
        .expect_error(403, Some("insufficient_org_quota"));
    assert_eq!(ctx.money_state(&unlimited, Some(&org)).await, before);
    let alone = user_id_in(&ctx, None, json!({})).await;
    ctx.top_up_credits(&alone, 100).await;
    let alone_hold = ctx.hold(&alone, 80).await;
    let before = ctx.money_state(&alone, None).await;
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": alone, "credits": 30}))
        .await
        .expect_error(403, Some("insufficient_user_quota"));
    assert_eq!(ctx.money_state(&alone, None).await, before);
    ctx.release(id_of(&alone_hold), &ctx.id("rel"))
        .await
        .expect(200);

    // A disabled organization refuses everything new; its open hold can still be released.
    ctx.api
        .admin(Method::PUT, &format!("/api/admin/organizations/{org}"))
        .json(&json!({"status": "disabled"}))
        .send()
        .await
        .expect(200);
    let before = ctx.money_state(&unlimited, Some(&org)).await;
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": unlimited, "credits": 1}))
        .await
        .expect_error(403, Some("org_disabled"));
    ctx.consume(json!({"operation_id": ctx.id("con"), "user_id": unlimited, "credits": 1}))
        .await
        .expect_error(403, Some("org_disabled"));
    assert_eq!(ctx.money_state(&unlimited, Some(&org)).await, before);
    ctx.release(id_of(&hold), &ctx.id("rel")).await.expect(200);
    ctx.api
        .admin(Method::PUT, &format!("/api/admin/organizations/{org}"))
        .json(&json!({"status": "enabled"}))
        .send()
        .await
        .expect(200);
    let again = ctx.hold(&unlimited, 100).await;
    assert_eq!(int(&again, "org_credits_held"), 100);
    ctx.release(id_of(&again), &ctx.id("rel")).await.expect(200);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn settle_below_equal_and_above_the_hold() {
    let ctx = Ctx::new("rsv_settle").await;
    let user = user_id_in(&ctx, None, json!({})).await;
    ctx.top_up_credits(&user, 1000).await;

    // Below: the rest returns.
    let hold = ctx.hold(&user, 300).await;
    assert!(hold["org"].is_null());
    assert_eq!(int(&hold, "org_credits_held"), 0);
    let below = ctx
        .settle(id_of(&hold), 200, &ctx.id("set"))
        .await
        .expect(200);
    assert_ended(&below, "settled");
    assert_eq!(int(&below, "charged_credits"), 200);
    assert_eq!(int(&below, "returned_credits"), 100);
    assert_eq!(int(&below, "uncollected_credits"), 0);
    assert_eq!(int(&below, "balance_after"), 800);
    assert!(below["org_quota_after"].is_null(), "{below}");
    // Equal.
    let hold = ctx.hold(&user, 300).await;
    let equal = ctx
        .settle(id_of(&hold), 300, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&equal, "charged_credits"), 300);
    assert_eq!(int(&equal, "returned_credits"), 0);
    assert_eq!(int(&equal, "balance_after"), 500);
    // Above, with room in the wallet: charged in full.
    let hold = ctx.hold(&user, 100).await;
    let above = ctx
        .settle(id_of(&hold), 250, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&above, "charged_credits"), 250);
    assert_eq!(int(&above, "uncollected_credits"), 0);
    assert_eq!(int(&above, "balance_after"), 250);
    // Above without room: what is there (not what another hold holds), the rest uncollected.
    let hold = ctx.hold(&user, 100).await;
    let other = ctx.hold(&user, 100).await;
    let short = ctx
        .settle(id_of(&hold), 400, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&short, "actual_credits"), 400);
    assert_eq!(int(&short, "charged_credits"), 150, "{short}");
    assert_eq!(int(&short, "uncollected_credits"), 250);
    assert_eq!(int(&short, "balance_after"), 100);
    assert_eq!(int(&short, "held_credits_after"), 100);
    let last = ctx
        .settle(id_of(&other), 500, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&last, "charged_credits"), 100);
    assert_eq!(int(&last, "uncollected_credits"), 400);
    assert_eq!(int(&last, "balance_after"), 0, "never below 0");
    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 0);
    assert_eq!(int(&user_now, "held_credits"), 0);
    // used_quota counts what the requests cost.
    assert_eq!(int(&user_now, "used_quota"), 200 + 300 + 250 + 400 + 500);
    assert_eq!(int(&user_now, "request_count"), 5);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn settle_above_the_hold_stops_at_the_organization_bound() {
    let ctx = Ctx::new("rsv_org_bound").await;
    // Prepaid: the quota is what is left; it never goes below 0.
    let prepaid = ctx.create_org(json!({"quota": 500})).await;
    let user = user_id_in(&ctx, Some(&prepaid), json!({})).await;
    let hold = ctx.hold(&user, 100).await;
    let settled = ctx
        .settle(id_of(&hold), 700, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&settled, "org_charged_credits"), 500, "{settled}");
    assert_eq!(int(&settled, "org_uncollected_credits"), 200);
    assert_eq!(int(&settled, "org_quota_after"), 0);
    assert_eq!(int(&settled, "used_quota_after"), 700);
    let org_now = ctx.org(&prepaid).await;
    assert_eq!(int(&org_now, "quota"), 0);
    assert_eq!(int(&org_now, "available_quota"), 0);
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": user, "credits": 1}))
        .await
        .expect_error(403, Some("insufficient_org_quota"));

    // Postpaid: used_quota may reach quota + overdraft_limit, and no further.
    let postpaid = ctx
        .create_org(json!({"quota": 1000, "billing_type": "postpaid", "overdraft_limit": 500}))
        .await;
    let user = user_id_in(&ctx, Some(&postpaid), json!({})).await;
    let hold = ctx.hold(&user, 100).await;
    let first = ctx
        .settle(id_of(&hold), 1400, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&first, "org_charged_credits"), 1400, "{first}");
    assert_eq!(int(&first, "org_uncollected_credits"), 0);
    assert_eq!(int(&first, "org_used_quota_after"), 1400);
    assert_eq!(int(&first, "org_quota_after"), 1000);
    let hold = ctx.hold(&user, 50).await;
    let second = ctx
        .settle(id_of(&hold), 200, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&second, "org_charged_credits"), 100, "{second}");
    assert_eq!(int(&second, "org_uncollected_credits"), 100);
    assert_eq!(int(&second, "org_used_quota_after"), 1500);
    let org_now = ctx.org(&postpaid).await;
    assert_eq!(int(&org_now, "used_quota"), 1500);
    assert_eq!(int(&org_now, "available_quota"), 0);
    ctx.reserve(json!({"operation_id": ctx.id("rsv"), "user_id": user, "credits": 1}))
        .await
        .expect_error(403, Some("insufficient_org_quota"));
    // A top-up makes room again.
    ctx.add_org_quota(&postpaid, 100).await;
    ctx.hold(&user, 100).await;
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn release_returns_the_hold() {
    let ctx = Ctx::new("rsv_release").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 500).await;
    let hold = ctx.hold(&user, 300).await;
    assert_eq!(int(&ctx.org(&org).await, "held_quota"), 300);
    let op = ctx.id("rel");
    let released = ctx.release(id_of(&hold), &op).await.expect(200);
    assert_ended(&released, "released");
    assert_eq!(int(&released, "charged_credits"), 0);
    assert_eq!(int(&released, "returned_credits"), 300);
    assert_eq!(int(&released, "balance_after"), 500);
    assert_eq!(int(&released, "held_credits_after"), 0);
    assert_eq!(int(&released, "used_quota_after"), 0);
    assert_eq!(int(&released, "request_count_after"), 0);
    assert_eq!(int(&released, "org_charged_credits"), 0);
    assert_eq!(int(&released, "org_quota_after"), 1000);
    assert_eq!(released["operation_id"], op.as_str());
    let org_now = ctx.org(&org).await;
    assert_eq!(int(&org_now, "held_quota"), 0);
    assert_eq!(int(&org_now, "quota"), 1000);
    let record = ctx.reservation(id_of(&hold)).await.expect(200);
    assert_eq!(record["status"], "released");
    assert_eq!(record["end_operation_id"], op.as_str());
    assert!(record["ended_at"].is_string(), "{record}");
    assert_eq!(record["operation_id"], hold["operation_id"]);
    assert_eq!(reservation_ends(&ctx.db, id_of(&hold)).await, (1, 1));
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn get_reservation_shows_every_column() {
    let ctx = Ctx::new("rsv_get").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({})).await;
    let hold = ctx.hold(&user, 120).await;
    let record = ctx.reservation(id_of(&hold)).await.expect(200);
    assert_exact_keys(
        &record,
        &[
            "reservation_id",
            "status",
            "user_id",
            "org",
            "unlimited",
            "credits_held",
            "user_credits_held",
            "org_credits_held",
            "cost_usd",
            "expires_at",
            "created_at",
            "ended_at",
            "operation_id",
            "end_operation_id",
            "actual_credits",
            "charged_credits",
            "returned_credits",
            "uncollected_credits",
            "org_charged_credits",
            "org_uncollected_credits",
            "token_id",
            "token_limited",
            "token_credits_held",
            "token_charged_credits",
        ],
    );
    assert_eq!(record["status"], "held");
    assert!(record["ended_at"].is_null());
    for key in [
        "reservation_id",
        "user_id",
        "org",
        "unlimited",
        "credits_held",
    ] {
        assert_eq!(record[key], hold[key], "{key}");
    }
    let settle_op = ctx.id("set");
    ctx.settle(id_of(&hold), 90, &settle_op).await.expect(200);
    let record = ctx.reservation(id_of(&hold)).await.expect(200);
    assert_eq!(record["status"], "settled");
    assert_eq!(record["end_operation_id"], settle_op.as_str());
    assert_eq!(int(&record, "actual_credits"), 90);
    assert_eq!(int(&record, "org_charged_credits"), 90);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn replays_return_identical_answers() {
    let ctx = Ctx::new("rsv_replay").await;
    let org = ctx.create_org(json!({"quota": 5000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 2000).await;

    let reserve_body =
        json!({"operation_id": ctx.id("rsv"), "user_id": user, "credits": 300, "ttl_s": 600});
    let first = ctx.reserve(reserve_body.clone()).await.expect(201);
    let state = ctx.money_state(&user, Some(&org)).await;
    let replay = ctx.reserve(reserve_body.clone()).await.expect(201);
    assert_eq!(replay, first);
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);

    let settle_op = ctx.id("set");
    let settled = ctx.settle(id_of(&first), 250, &settle_op).await.expect(200);
    let state = ctx.money_state(&user, Some(&org)).await;
    assert_eq!(
        ctx.settle(id_of(&first), 250, &settle_op).await.expect(200),
        settled
    );
    // The reserve replays its first answer (held) even after the settle.
    assert_eq!(ctx.reserve(reserve_body).await.expect(201), first);
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);

    let hold = ctx.hold(&user, 100).await;
    let release_op = ctx.id("rel");
    let released = ctx.release(id_of(&hold), &release_op).await.expect(200);
    let state = ctx.money_state(&user, Some(&org)).await;
    assert_eq!(
        ctx.release(id_of(&hold), &release_op).await.expect(200),
        released
    );
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);

    let consume_body = json!({"operation_id": ctx.id("con"), "user_id": user, "credits": 75});
    let consumed = ctx.consume(consume_body.clone()).await.expect(200);
    assert_ended(&consumed, "settled");
    let state = ctx.money_state(&user, Some(&org)).await;
    assert_eq!(ctx.consume(consume_body).await.expect(200), consumed);
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);

    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 2000 - 250 - 75);
    assert_eq!(int(&user_now, "request_count"), 2);
    for id in [id_of(&first), id_of(&hold), id_of(&consumed)] {
        assert_eq!(
            reservation_ends(&ctx.db, id).await,
            (1, 1),
            "reservation {id}"
        );
    }
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn reused_operation_id_with_other_parameters_is_a_conflict() {
    let ctx = Ctx::new("rsv_conflict").await;
    let org = ctx.create_org(json!({"quota": 5000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 2000).await;

    let op = ctx.id("rsv");
    let hold = ctx
        .reserve(json!({"operation_id": op, "user_id": user, "credits": 100}))
        .await
        .expect(201);
    let settle_op = ctx.id("set");
    ctx.settle(id_of(&hold), 50, &settle_op).await.expect(200);
    let other = ctx.hold(&user, 100).await;
    let consume_op = ctx.id("con");
    ctx.consume(json!({"operation_id": consume_op, "user_id": user, "credits": 10}))
        .await
        .expect(200);
    let charge_op = ctx.id("chg");
    assert_eq!(
        ctx.charge(&user, 0.001, &charge_op).await.expect(200)["success"],
        true
    );

    let state = ctx.money_state(&user, Some(&org)).await;
    for body in [
        json!({"operation_id": op, "user_id": user, "credits": 200}),
        json!({"operation_id": op, "user_id": user, "cost_usd": 0.01}),
        // A charge's id is the user's too.
        json!({"operation_id": charge_op, "user_id": user, "credits": 100}),
        json!({"operation_id": settle_op, "user_id": user, "credits": 100}),
    ] {
        let conflict = ctx
            .reserve(body)
            .await
            .expect_error(409, Some("idempotency_conflict"));
        assert!(conflict["message"].is_string());
    }
    ctx.settle(id_of(&hold), 60, &settle_op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    // The settle's id on another reservation, and on a release.
    ctx.settle(id_of(&other), 50, &settle_op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    ctx.release(id_of(&other), &settle_op)
        .await
        .expect_error(409, Some("idempotency_conflict"));
    ctx.consume(json!({"operation_id": consume_op, "user_id": user, "credits": 11}))
        .await
        .expect_error(409, Some("idempotency_conflict"));
    ctx.consume(json!({"operation_id": op, "user_id": user, "credits": 100}))
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);
    ctx.release(id_of(&other), &ctx.id("rel")).await.expect(200);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn ended_reservation_is_not_held() {
    let ctx = Ctx::new("rsv_not_held").await;
    let org = ctx.create_org(json!({"quota": 5000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 2000).await;

    let released = ctx.hold(&user, 100).await;
    ctx.release(id_of(&released), &ctx.id("rel"))
        .await
        .expect(200);
    let settled = ctx.hold(&user, 100).await;
    ctx.settle(id_of(&settled), 100, &ctx.id("set"))
        .await
        .expect(200);

    let state = ctx.money_state(&user, Some(&org)).await;
    let refused = ctx
        .settle(id_of(&released), 50, &ctx.id("set"))
        .await
        .expect_error(409, Some("reservation_not_held"));
    assert_eq!(refused["status"], "released", "{refused}");
    assert_eq!(int(&refused, "reservation_id"), id_of(&released));
    for resp in [
        ctx.release(id_of(&settled), &ctx.id("rel")).await,
        ctx.settle(id_of(&settled), 10, &ctx.id("set")).await,
    ] {
        let refused = resp.expect_error(409, Some("reservation_not_held"));
        assert_eq!(refused["status"], "settled", "{refused}");
    }
    ctx.release(id_of(&released), &ctx.id("rel"))
        .await
        .expect_error(409, Some("reservation_not_held"));
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);
    for id in [id_of(&released), id_of(&settled)] {
        assert_eq!(
            reservation_ends(&ctx.db, id).await,
            (1, 1),
            "reservation {id}"
        );
    }
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn expired_hold_is_returned_by_the_worker() {
    let ctx = Ctx::new("rsv_expiry").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 500).await;
    let hold = ctx
        .reserve(
            json!({"operation_id": ctx.id("rsv"), "user_id": user, "credits": 200, "ttl_s": 1}),
        )
        .await
        .expect(201);
    assert_held(&hold);
    assert_eq!(int(&ctx.user_json(&user).await, "held_credits"), 200);
    assert_eq!(int(&ctx.org(&org).await, "held_quota"), 200);

    // The background worker expires it (the e2e cluster runs it, ticking every second).
    ctx.wait_reservation_status(id_of(&hold), "expired", Duration::from_secs(20))
        .await;
    let record = ctx.reservation(id_of(&hold)).await.expect(200);
    assert_eq!(record["status"], "expired");
    assert!(record["ended_at"].is_string(), "{record}");
    let state = ctx.money_state(&user, Some(&org)).await;
    let refused = ctx
        .settle(id_of(&hold), 200, &ctx.id("set"))
        .await
        .expect_error(409, Some("reservation_not_held"));
    assert_eq!(refused["status"], "expired", "{refused}");
    let refused = ctx
        .release(id_of(&hold), &ctx.id("rel"))
        .await
        .expect_error(409, Some("reservation_not_held"));
    assert_eq!(refused["status"], "expired", "{refused}");
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);

    // Everything held came back; nothing was charged.
    let user_now = ctx.user_json(&user).await;
    assert_eq!(int(&user_now, "balance"), 500);
    assert_eq!(int(&user_now, "held_credits"), 0);
    assert_eq!(int(&user_now, "used_quota"), 0);
    assert_eq!(int(&user_now, "request_count"), 0);
    let org_now = ctx.org(&org).await;
    assert_eq!(int(&org_now, "quota"), 1000);
    assert_eq!(int(&org_now, "held_quota"), 0);
    assert_eq!(int(&org_now, "open_reservations"), 0);
    assert_eq!(reservation_ends(&ctx.db, id_of(&hold)).await, (1, 1));
    let expired: i64 = ctx
        .db
        .query_one("SELECT expired FROM quota.worker_status()", &[])
        .await
        .expect("worker_status().expired")
        .get(0);
    assert!(expired >= 1, "the worker counts what it expired: {expired}");
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn cost_usd_is_priced_like_a_charge() {
    let ctx = Ctx::new("rsv_cost").await;
    let plan = ctx.create_plan(json!({"multiplier": 1.5})).await;
    let tier = plan["tier"].as_str().unwrap();
    let user = user_id_in(&ctx, None, json!({})).await;
    ctx.subscribe(&user, tier, 100000).await;
    let calculated = ctx
        .api
        .service(Method::POST, "/api/internal/credits/calculate")
        .json(&json!({"cost_usd": 0.0123, "user_id": user}))
        .send()
        .await
        .expect(200);
    let credits = int(&calculated, "credits_to_charge");
    assert_eq!(credits, 184, "0.0123 x 1.5 x 10000 rounds half to even");

    let hold = ctx
        .reserve(json!({"operation_id": ctx.id("rsv"), "user_id": user, "cost_usd": 0.0123}))
        .await
        .expect(201);
    assert_eq!(int(&hold, "credits_held"), credits);
    assert_eq!(num(&hold, "cost_usd"), 0.0123);
    let settled = ctx
        .settle(id_of(&hold), credits, &ctx.id("set"))
        .await
        .expect(200);
    assert_eq!(int(&settled, "charged_credits"), credits);
    let consumed = ctx
        .consume(json!({"operation_id": ctx.id("con"), "user_id": user, "cost_usd": 0.0123}))
        .await
        .expect(200);
    assert_eq!(int(&consumed, "credits_held"), credits);
    assert_eq!(int(&consumed, "actual_credits"), credits);
    assert_eq!(int(&consumed, "charged_credits"), credits);
    assert_eq!(ctx.balance(&user).await, 100000 - 2 * credits);

    // An unlimited user in an organization: the organization pays the priced credits.
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let member = user_id_in(&ctx, Some(&org), json!({})).await;
    let consumed = ctx
        .consume(json!({"operation_id": ctx.id("con"), "user_id": member, "cost_usd": 0.00035}))
        .await
        .expect(200);
    assert_eq!(int(&consumed, "org_charged_credits"), 4);
    assert_eq!(int(&ctx.org(&org).await, "quota"), 996);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn consume_spends_in_one_step() {
    let ctx = Ctx::new("rsv_consume").await;
    let user = user_id_in(&ctx, None, json!({})).await;
    ctx.top_up_credits(&user, 500).await;
    let op = ctx.id("con");
    let consumed = ctx
        .consume(json!({"operation_id": op, "user_id": user, "credits": 120}))
        .await
        .expect(200);
    assert_ended(&consumed, "settled");
    assert_eq!(int(&consumed, "credits_held"), 120);
    assert_eq!(int(&consumed, "actual_credits"), 120);
    assert_eq!(int(&consumed, "charged_credits"), 120);
    assert_eq!(int(&consumed, "returned_credits"), 0);
    assert_eq!(int(&consumed, "balance_after"), 380);
    assert_eq!(int(&consumed, "held_credits_after"), 0);
    assert_eq!(int(&consumed, "used_quota_after"), 120);
    assert_eq!(int(&consumed, "request_count_after"), 1);
    assert_eq!(consumed["operation_id"], op.as_str());
    let record = ctx.reservation(id_of(&consumed)).await.expect(200);
    assert_eq!(record["status"], "settled");
    assert_eq!(reservation_ends(&ctx.db, id_of(&consumed)).await, (1, 0));
    // Past the balance: refused, nothing written.
    let state = ctx.money_state(&user, None).await;
    ctx.consume(json!({"operation_id": ctx.id("con"), "user_id": user, "credits": 381}))
        .await
        .expect_error(403, Some("insufficient_user_quota"));
    assert_eq!(ctx.money_state(&user, None).await, state);
    // Zero credits is a request that cost nothing.
    let free = ctx
        .consume(json!({"operation_id": ctx.id("con"), "user_id": user, "credits": 0}))
        .await
        .expect(200);
    assert_eq!(int(&free, "charged_credits"), 0);
    assert_eq!(int(&free, "request_count_after"), 2);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let ctx = Ctx::new("rsv_bad_input").await;
    let org = ctx.create_org(json!({"quota": 5000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({"unlimited": false})).await;
    ctx.top_up_credits(&user, 1000).await;
    let hold = ctx.hold(&user, 100).await;
    let state = ctx.money_state(&user, Some(&org)).await;

    let op = ctx.id("bad");
    let reserve_cases = [
        (
            json!({"operation_id": op, "user_id": user, "credits": 5, "cost_usd": 0.01}),
            400,
        ),
        (json!({"operation_id": op, "user_id": user}), 400),
        (
            json!({"operation_id": op, "user_id": user, "credits": -1}),
            400,
        ),
        (
            json!({"operation_id": op, "user_id": user, "cost_usd": -0.5}),
            400,
        ),
        (
            json!({"operation_id": op, "user_id": user, "credits": 5, "ttl_s": 0}),
            400,
        ),
        (
            json!({"operation_id": op, "user_id": user, "credits": 5, "ttl_s": 100000}),
            400,
        ),
        (
            json!({"operation_id": op, "user_id": user, "credits": 5, "ttl_s": -3}),
            400,
        ),
        (
            json!({"operation_id": "", "user_id": user, "credits": 5}),
            400,
        ),
        (
            json!({"operation_id": "   ", "user_id": user, "credits": 5}),
            400,
        ),
        (
            json!({"operation_id": format!(" {op}"), "user_id": user, "credits": 5}),
            400,
        ),
        (
            json!({"operation_id": op, "user_id": user, "credits": 5, "note": "x"}),
            400,
        ),
        (
            json!({"operation_id": op, "user_id": user, "credits": "5"}),
            400,
        ),
    ];
    for (body, status) in reserve_cases {
        ctx.reserve(body).await.expect_error(status, None);
    }
    let consume_cases = [
        json!({"operation_id": op, "user_id": user, "credits": 5, "cost_usd": 0.01}),
        json!({"operation_id": op, "user_id": user}),
        json!({"operation_id": op, "user_id": user, "credits": -1}),
        json!({"operation_id": "", "user_id": user, "credits": 5}),
        json!({"operation_id": op, "user_id": user, "credits": 5, "ttl_s": 10}),
    ];
    for body in consume_cases {
        ctx.consume(body).await.expect_error(400, None);
    }
    let id = id_of(&hold);
    ctx.settle(id, -1, &ctx.id("set"))
        .await
        .expect_error(400, None);
    ctx.settle(id, 10, "").await.expect_error(400, None);
    ctx.settle(id, 10, " x ").await.expect_error(400, None);
    ctx.release(id, "").await.expect_error(400, None);
    ctx.api
        .service(
            Method::POST,
            &format!("/api/internal/reservations/{id}/settle"),
        )
        .json(&json!({"actual_credits": 1.5, "operation_id": ctx.id("set")}))
        .send()
        .await
        .expect_error(400, Some("invalid_body"));
    ctx.api
        .service(Method::POST, "/api/internal/reservations/abc/settle")
        .json(&json!({"actual_credits": 1, "operation_id": ctx.id("set")}))
        .send()
        .await
        .expect_error(400, Some("invalid_path"));
    ctx.api
        .service(Method::POST, "/api/internal/reservations")
        .raw_json("{")
        .send()
        .await
        .expect_error(400, Some("invalid_json"));
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);
    assert_eq!(ctx.ledger_rows(&op).await, 0);

    // Unknown user and reservation: 404.
    let ghost = ctx.id("ghost");
    ctx.reserve(json!({"operation_id": op, "user_id": ghost, "credits": 5}))
        .await
        .expect_error(404, Some("not_found"));
    ctx.consume(json!({"operation_id": op, "user_id": ghost, "credits": 5}))
        .await
        .expect_error(404, Some("not_found"));
    let unknown = i64::MAX - 7;
    ctx.settle(unknown, 5, &ctx.id("set"))
        .await
        .expect_error(404, Some("not_found"));
    ctx.release(unknown, &ctx.id("rel"))
        .await
        .expect_error(404, Some("not_found"));
    ctx.reservation(unknown)
        .await
        .expect_error(404, Some("not_found"));
    assert_eq!(ctx.ledger_rows(&op).await, 0);
    assert_eq!(ctx.money_state(&user, Some(&org)).await, state);

    // Without the service token: 401 / 403.
    ctx.api
        .anon(Method::POST, "/api/internal/reservations")
        .json(&json!({"operation_id": op, "user_id": user, "credits": 5}))
        .send()
        .await
        .expect_error(401, None);
    ctx.api
        .anon(Method::GET, &format!("/api/internal/reservations/{id}"))
        .header("X-Service-Token", "wrong-token")
        .send()
        .await
        .expect_error(403, None);
    ctx.release(id, &ctx.id("rel")).await.expect(200);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn an_unlimited_users_tokens_default_to_unlimited_and_a_limited_one_is_debited() {
    let ctx = Ctx::new("rsv_token").await;
    let org = ctx.create_org(json!({"quota": 10000})).await;
    let user = user_id_in(&ctx, Some(&org), json!({})).await;
    let ws = ctx.id("ws");
    let default_token = ctx
        .api
        .admin(Method::POST, "/flow/tokens")
        .json(
            &json!({"ws_id": ws, "email": "t@example.com", "operation": "unlimited",
                      "user_id": user}),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(default_token["data"]["unlimited"], true, "{default_token}");
    let created = ctx
        .api
        .admin(Method::POST, "/flow/tokens")
        .json(
            &json!({"ws_id": ws, "email": "t@example.com", "operation": "unlimited",
                      "user_id": user, "unlimited": false, "quota_type": "count",
                      "total_quota": 100}),
        )
        .send()
        .await
        .expect(200);
    let token = created["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let hold = ctx
        .api
        .service(Method::POST, "/api/internal/reservations")
        .json(
            &json!({"operation_id": ctx.id("op"), "user_id": user, "credits": 30,
                      "access_token": token}),
        )
        .send()
        .await
        .expect(201);
    assert_held(&hold);
    assert_eq!(hold["token_credits_held"], 30);
    let settled = ctx
        .api
        .service(
            Method::POST,
            &format!("/api/internal/reservations/{}/settle", id_of(&hold)),
        )
        .json(&json!({"actual_credits": 40, "operation_id": ctx.id("end")}))
        .send()
        .await
        .expect(200);
    assert_ended(&settled, "settled");
    assert_eq!(
        settled["charged_credits"], 0,
        "an unlimited user's wallet is not debited"
    );
    assert_eq!(settled["token_charged_credits"], 40);
    assert_eq!(settled["token_remaining_after"], 60);
    assert_eq!(settled["org_charged_credits"], 40);
    ctx.api
        .service(Method::POST, "/api/internal/reservations")
        .json(
            &json!({"operation_id": ctx.id("op"), "user_id": user, "credits": 61,
                      "access_token": token}),
        )
        .send()
        .await
        .expect_error(403, Some("insufficient_token_quota"));
    let consumed = ctx
        .api
        .service(Method::POST, "/api/internal/consume")
        .json(
            &json!({"operation_id": ctx.id("op"), "user_id": user, "credits": 60,
                      "access_token": token}),
        )
        .send()
        .await
        .expect(200);
    assert_eq!(consumed["token_remaining_after"], 0);
    ctx.assert_verify_clean().await;
}
