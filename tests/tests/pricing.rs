//! Pricing (SPEC 2): the worked cases of the formulas, over HTTP and SQL, and the global exchange
//! rate. The exchange-rate test holds the base-rate advisory lock exclusively (every other test
//! holds it shared), changes the rate, and restores it.

use pg_quota_e2e::*;

const CALCULATE: &str = "/api/internal/credits/calculate";

async fn calculate(ctx: &Ctx, body: Value) -> Value {
    ctx.api
        .service(Method::POST, CALCULATE)
        .json(&body)
        .send()
        .await
        .expect(200)
}

#[tokio::test]
async fn calculate_matches_the_worked_cases_with_half_even_rounding() {
    let ctx = Ctx::new("pricing_cases").await;
    let p15 = ctx.create_plan(json!({"multiplier": 1.5})).await;
    let p10 = ctx.create_plan(json!({"multiplier": 1.0})).await;
    let c = calculate(&ctx, json!({"cost_usd": 0.0123, "tier": p15["tier"]})).await;
    assert_eq!(int(&c, "credits_to_charge"), 184, "0.0123 at 1.5: {c}");
    assert_eq!(num(&c, "multiplier"), 1.5);
    assert_eq!(int(&c, "base_rate"), DEFAULT_BASE_RATE);
    for (cost, credits) in [(0.00025, 2), (0.00035, 4), (0.00045, 4), (0.00015, 1)] {
        let c = calculate(&ctx, json!({"cost_usd": cost, "tier": p10["tier"]})).await;
        assert_eq!(int(&c, "credits_to_charge"), credits, "{cost} at 1.0: {c}");
    }
}

#[tokio::test]
async fn calculate_uses_the_users_plan() {
    let ctx = Ctx::new("pricing_user_plan").await;
    let p15 = ctx.create_plan(json!({"multiplier": 1.5})).await;
    let user = ctx.create_user().await;
    ctx.subscribe(&user, p15["tier"].as_str().unwrap(), 1).await;
    let c = calculate(&ctx, json!({"cost_usd": 0.0123, "user_id": user})).await;
    assert_eq!(int(&c, "credits_to_charge"), 184);
    assert_eq!(c["tier"], p15["tier"]);
    assert_eq!(num(&c, "multiplier"), 1.5);
    assert_eq!(c["user_id"], user.as_str());
    // The user holds 1 credit.
    assert_eq!(int(&c, "current_balance"), 1);
    assert_eq!(int(&c, "balance_after"), 1 - 184);
    assert_eq!(c["sufficient"], false);
}

#[tokio::test]
async fn charge_applies_the_worked_cases() {
    let ctx = Ctx::new("pricing_charge").await;
    let p15 = ctx.create_plan(json!({"multiplier": 1.5})).await;
    let p10 = ctx.create_plan(json!({"multiplier": 1.0})).await;
    let u15 = ctx.create_user().await;
    ctx.subscribe(&u15, p15["tier"].as_str().unwrap(), 1_000)
        .await;
    let body = ctx.charge(&u15, 0.0123, &ctx.id("op")).await.expect(200);
    assert_eq!(int(&body, "credits_charged"), 184);
    assert_eq!(ctx.balance(&u15).await, 1_000 - 184);
    let u10 = ctx.create_user().await;
    ctx.subscribe(&u10, p10["tier"].as_str().unwrap(), 1_000)
        .await;
    let mut expected = 1_000;
    for (cost, credits) in [(0.00025, 2), (0.00035, 4), (0.00045, 4), (0.00015, 1)] {
        let body = ctx.charge(&u10, cost, &ctx.id("op")).await.expect(200);
        assert_eq!(
            int(&body, "credits_charged"),
            credits,
            "charge {cost} at 1.0: {body}"
        );
        expected -= credits;
    }
    assert_eq!(ctx.balance(&u10).await, expected);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn add_ten_dollars_at_purchase_rate_1_2_gives_120000_credits() {
    let ctx = Ctx::new("pricing_add").await;
    let plan = ctx.create_plan(json!({"purchase_rate": 1.2})).await;
    let user = ctx.create_user().await;
    ctx.subscribe(&user, plan["tier"].as_str().unwrap(), 1)
        .await;
    let body = ctx.add_usd(&user, 10.0).await;
    assert_eq!(int(&body, "credits_added"), 120_000, "{body}");
    assert_eq!(ctx.balance(&user).await, 120_001);
}

#[tokio::test]
async fn sql_calculate_credits_matches_the_worked_cases() {
    let ctx = Ctx::new("pricing_sql").await;
    let p15 = ctx.create_plan(json!({"multiplier": 1.5})).await;
    let p10 = ctx.create_plan(json!({"multiplier": 1.0})).await;
    let t15 = p15["tier"].as_str().unwrap();
    let t10 = p10["tier"].as_str().unwrap();
    let sql = "SELECT credits_to_charge FROM quota.calculate_credits($1::float8, NULL, $2)";
    let credits: i64 = ctx
        .db
        .query_one(sql, &[&0.0123f64, &t15])
        .await
        .unwrap()
        .get(0);
    assert_eq!(credits, 184);
    for (cost, expected) in [(0.00025f64, 2i64), (0.00035, 4), (0.00045, 4), (0.00015, 1)] {
        let credits: i64 = ctx.db.query_one(sql, &[&cost, &t10]).await.unwrap().get(0);
        assert_eq!(credits, expected, "{cost} at 1.0");
    }
    // Its columns are the REST body's; without a user the balance columns are NULL.
    let row = ctx
        .db
        .query_one(
            "SELECT user_id, cost_usd, tier, multiplier, base_rate, credits_to_charge,
                    current_balance, balance_after, sufficient
             FROM quota.calculate_credits(0.0123::float8, NULL, $1)",
            &[&t15],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, f64>(1), 0.0123);
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some(t15));
    assert_eq!(row.get::<_, f64>(3), 1.5);
    assert_eq!(row.get::<_, i64>(4), DEFAULT_BASE_RATE);
    assert_eq!(row.get::<_, i64>(5), 184);
    assert_eq!(row.get::<_, Option<i64>>(6), None);
    assert_eq!(row.get::<_, Option<i64>>(7), None);
    assert_eq!(row.get::<_, Option<bool>>(8), None);
}

/// PATCH /api/admin/settings/exchange-rate. The new rate is sent both as the query parameter
/// `base_rate` and as the JSON body `{"base_rate": ..}` so either style of handler reads it.
async fn set_exchange_rate(ctx: &Ctx, base_rate: Value) -> Resp {
    let q = match &base_rate {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    ctx.api
        .admin(Method::PATCH, "/api/admin/settings/exchange-rate")
        .query(&[("base_rate", q)])
        .json(&json!({ "base_rate": base_rate }))
        .send()
        .await
}

#[tokio::test]
async fn exchange_rate_change_applies_on_the_first_call() {
    let ctx = Ctx::exclusive("exchange_rate").await;
    let plan = ctx
        .create_plan(json!({"multiplier": 1.0, "purchase_rate": 1.0}))
        .await;
    let tier = plan["tier"].as_str().unwrap().to_string();
    let user = ctx.create_user().await;
    ctx.subscribe(&user, &tier, 10_000).await;
    let start: String = ctx
        .db
        .query_one("SELECT (now() - interval '1 second')::text", &[])
        .await
        .unwrap()
        .get(0);

    let c = calculate(&ctx, json!({"cost_usd": 0.01, "tier": tier})).await;
    assert_eq!(
        int(&c, "base_rate"),
        DEFAULT_BASE_RATE,
        "the e2e database must start at the default base rate"
    );

    // Run the checks in a task so the rate is restored even when one fails.
    let api = ctx.api.clone();
    let (tier2, user2) = (tier.clone(), user.clone());
    let outcome = tokio::spawn(async move {
        let ctx = Ctx {
            api,
            db: connect_db().await,
            name: "exchange_rate".into(),
        };
        let tier = tier2;
        let user = user2;
        let mut changed = set_exchange_rate(&ctx, json!(20_000)).await.expect(200);
        assert!(changed["updated_at"].is_string(), "{changed}");
        changed.as_object_mut().unwrap().remove("updated_at");
        // Seed 004's body exactly (the old base_rate / previous_base_rate keys are gone).
        assert_eq!(
            changed,
            json!({"success": true, "old_base_rate": DEFAULT_BASE_RATE, "new_base_rate": 20_000})
        );
        // The very first change is in force at once.
        let c = calculate(&ctx, json!({"cost_usd": 0.01, "tier": tier})).await;
        assert_eq!(int(&c, "base_rate"), 20_000);
        assert_eq!(int(&c, "credits_to_charge"), 200);
        let body = ctx.charge(&user, 0.01, &ctx.id("op")).await.expect(200);
        assert_eq!(int(&body, "credits_charged"), 200);
        let body = ctx.add_usd(&user, 0.01).await;
        assert_eq!(int(&body, "credits_added"), 200);
        // Out of range (1..1e9): 422 naming base_rate; not an integer: 422. Rate unchanged.
        for bad in [json!(0), json!(-5), json!(1_000_000_001i64)] {
            let body = set_exchange_rate(&ctx, bad)
                .await
                .expect_error(422, Some("invalid_parameter"));
            assert_eq!(body["field"], "base_rate", "{body}");
        }
        for bad in [json!("abc"), json!(1.5)] {
            set_exchange_rate(&ctx, bad).await.expect_error(422, None);
        }
        let c = calculate(&ctx, json!({"cost_usd": 0.01, "tier": tier})).await;
        assert_eq!(int(&c, "base_rate"), 20_000);
        // Setting it back reports the rate it replaced.
        let back = set_exchange_rate(&ctx, json!(DEFAULT_BASE_RATE))
            .await
            .expect(200);
        assert_eq!(int(&back, "old_base_rate"), 20_000);
        assert_eq!(int(&back, "new_base_rate"), DEFAULT_BASE_RATE);
    })
    .await;

    // Restore through SQL whatever happened above.
    ctx.db
        .query(
            "SELECT quota.set_exchange_rate($1, 'e2e-restore')",
            &[&DEFAULT_BASE_RATE],
        )
        .await
        .expect("restore the base rate");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    let c = calculate(&ctx, json!({"cost_usd": 0.01, "tier": tier})).await;
    assert_eq!(int(&c, "base_rate"), DEFAULT_BASE_RATE);
    assert_eq!(ctx.balance(&user).await, 10_000);
    // Each change is in the audit log.
    let n: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.audit_log a WHERE a.created_at >= $1::text::timestamptz \
             AND to_jsonb(a)::text LIKE '%20000%'",
            &[&start],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        n >= 2,
        "expected audit rows for 10000 -> 20000 -> 10000, found {n}"
    );
    ctx.assert_verify_clean().await;
}

/// Two sessions around one user: `charger` charges 0.01 USD (100 credits at the default rate),
/// `changer` changes the rate. Checks are collected and asserted by `finish`, after the default
/// rate is restored, so a failing check never leaves the global rate changed for other tests.
struct RateProbe<'a> {
    ctx: &'a Ctx,
    user: String,
    charger: tokio_postgres::Client,
    changer: tokio_postgres::Client,
    seen: Vec<(&'static str, i64, String)>,
}

impl<'a> RateProbe<'a> {
    async fn new(ctx: &'a Ctx, credits: i64) -> RateProbe<'a> {
        let user = ctx.create_user().await;
        ctx.db
            .execute(
                "SELECT quota.bonus($1, $2, $3)",
                &[&user, &credits, &ctx.id("b")],
            )
            .await
            .unwrap();
        RateProbe {
            ctx,
            user,
            charger: connect_db().await,
            changer: connect_db().await,
            seen: Vec::new(),
        }
    }

    async fn charge(&self, n: &str) -> Result<i64, tokio_postgres::Error> {
        self.charger
            .query_one(
                "SELECT credits_charged FROM quota.charge($1, 0.01, $2)",
                &[&self.user, &self.ctx.id(n)],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
    }

    fn check(
        &mut self,
        what: &'static str,
        expected: i64,
        got: Result<i64, tokio_postgres::Error>,
    ) {
        self.seen.push((what, expected, format!("{got:?}")));
    }

    async fn charger_sql(&self, sql: &str) {
        let _ = self.charger.batch_execute(sql).await;
    }

    async fn changer_sql(&self, sql: &str) {
        let _ = self.changer.batch_execute(sql).await;
    }

    /// Restores the default rate, checks a charge at it, then asserts every check.
    async fn finish(mut self) -> String {
        self.ctx
            .db
            .query(
                "SELECT quota.set_exchange_rate($1, 'e2e-restore')",
                &[&DEFAULT_BASE_RATE],
            )
            .await
            .expect("restore the base rate");
        let got = self.charge("end").await;
        self.check("after the restore", 100, got);
        for (what, expected, got) in &self.seen {
            assert_eq!(
                got,
                &format!("{:?}", Ok::<i64, ()>(*expected)),
                "{what}: {:#?}",
                self.seen
            );
        }
        self.ctx.assert_verify_clean().await;
        self.user
    }
}

/// quota.charge caches settings.base_rate in each backend. A change committed by another session
/// (through the function, a plain UPDATE, or TRUNCATE and INSERT) is in force for the next charge
/// of a backend that has already charged; an uncommitted or rolled back one is not.
#[tokio::test]
async fn charge_sees_base_rate_changes_of_other_sessions() {
    let ctx = Ctx::exclusive("rate_cache").await;
    let mut p = RateProbe::new(&ctx, 1_000_000).await;
    let got = p.charge("1").await;
    p.check("default rate", 100, got);
    // Uncommitted, then rolled back: the other session keeps the committed rate.
    p.changer_sql("BEGIN; UPDATE quota.settings SET base_rate = 20000")
        .await;
    let got = p.charge("2").await;
    p.check("uncommitted change", 100, got);
    p.changer_sql("ROLLBACK").await;
    let got = p.charge("3").await;
    p.check("rolled back change", 100, got);
    // Committed through the function, then through plain SQL, then TRUNCATE and INSERT.
    p.changer_sql("SELECT quota.set_exchange_rate(20000, 'e2e')")
        .await;
    let got = p.charge("4").await;
    p.check("after set_exchange_rate", 200, got);
    p.changer_sql("UPDATE quota.settings SET base_rate = 30000")
        .await;
    let got = p.charge("5").await;
    p.check("after a plain UPDATE", 300, got);
    p.changer_sql(
        "BEGIN; TRUNCATE quota.settings; INSERT INTO quota.settings (base_rate) VALUES (40000); COMMIT",
    )
    .await;
    let got = p.charge("6").await;
    p.check("after TRUNCATE and INSERT", 400, got);
    let user = p.finish().await;
    assert_eq!(
        ctx.balance(&user).await,
        1_000_000 - 100 * 4 - 200 - 300 - 400
    );
}

/// The per-backend base_rate cache is never filled from an old snapshot (issue 9): a backend that
/// ran a REPEATABLE READ transaction while the rate changed, and a READ COMMITTED transaction that
/// spans a committed change, both charge at the committed rate from then on.
#[tokio::test]
async fn base_rate_cache_follows_commits_across_isolation_levels() {
    let ctx = Ctx::exclusive("rate_snapshots").await;
    let mut p = RateProbe::new(&ctx, 10_000_000).await;

    // A REPEATABLE READ transaction takes its snapshot, the rate changes and commits, then the
    // transaction's first charge fills the cache: from the latest snapshot, not the old one.
    p.charger_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await;
    p.changer_sql("SELECT quota.set_exchange_rate(20000, 'e2e')")
        .await;
    let got = p.charge("rr1").await;
    p.check("REPEATABLE READ, first charge after a commit", 200, got);
    p.charger_sql("COMMIT").await;
    let got = p.charge("rr2").await;
    p.check("the next transaction", 200, got);

    // A REPEATABLE READ transaction that cached the rate sees a change committed meanwhile.
    p.charger_sql("BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    let got = p.charge("rr3").await;
    p.check("REPEATABLE READ, cached", 200, got);
    p.changer_sql("SELECT quota.set_exchange_rate(30000, 'e2e')")
        .await;
    let got = p.charge("rr4").await;
    p.check("REPEATABLE READ, after a commit", 300, got);
    p.charger_sql("COMMIT").await;
    let got = p.charge("rr5").await;
    p.check("after COMMIT", 300, got);

    // One READ COMMITTED transaction: a charge after a committed change uses the new rate.
    p.charger_sql("BEGIN").await;
    let got = p.charge("rc1").await;
    p.check("READ COMMITTED, cached", 300, got);
    p.changer_sql("SELECT quota.set_exchange_rate(40000, 'e2e')")
        .await;
    let got = p.charge("rc2").await;
    p.check("READ COMMITTED, after a commit", 400, got);
    p.charger_sql("COMMIT").await;
    let got = p.charge("rc3").await;
    p.check("after COMMIT", 400, got);

    // calculate_credits prices with the same rule.
    let calculated = p
        .charger
        .query_one(
            "SELECT credits_to_charge FROM quota.calculate_credits(0.01)",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0));
    p.check("calculate_credits", 400, calculated);
    p.finish().await;
}
