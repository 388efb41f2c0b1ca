//! Subscription plans, the exchange rate and statistics (SPEC 2, admin side). Every change is
//! written to quota.audit_log in the same transaction.

use crate::error::{raise, required, OrRaise};
use crate::{audit, read};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use quota_core::ids::validate_tier;
use quota_core::plan::{PlanInput, PlanPatch};
use quota_core::pricing::{validate_base_rate, validate_multiplier, validate_purchase_rate};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Value};

fn plan_json(client: &mut SpiClient, tier: &str, lock: bool) -> Option<Value> {
    let sql = if lock {
        "SELECT quota._plan_json(p) AS plan FROM quota.plans p WHERE p.tier = $1 FOR UPDATE"
    } else {
        "SELECT quota._plan_json(p) AS plan FROM quota.plans p WHERE p.tier = $1"
    };
    client
        .update(sql, Some(1), &[tier.into()])
        .or_raise()
        .next()
        .and_then(|r| r.get_by_name::<JsonB, _>("plan").or_raise())
        .map(|j| j.0)
}

fn unknown_plan(tier: &str) -> QuotaError {
    QuotaError::not_found(format!("plan '{tier}' not found")).with("tier", tier)
}

fn name_taken(client: &mut SpiClient, name: &str, other_than_tier: Option<&str>) -> bool {
    !client
        .update(
            "SELECT 1 FROM quota.plans WHERE name = $1 AND tier IS DISTINCT FROM $2",
            Some(1),
            &[name.into(), other_than_tier.into()],
        )
        .or_raise()
        .is_empty()
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_plan(plan: Option<JsonB>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let plan = required(plan, "plan");
    let p = PlanInput::parse(plan.0).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        if plan_json(client, &p.tier, false).is_some() {
            raise(
                QuotaError::new(
                    ErrorKind::Duplicate,
                    format!("plan tier '{}' already exists", p.tier),
                )
                .with("tier", p.tier.as_str()),
            );
        }
        if name_taken(client, &p.name, None) {
            raise(
                QuotaError::new(
                    ErrorKind::Duplicate,
                    format!("plan name '{}' already exists", p.name),
                )
                .with("name", p.name.as_str()),
            );
        }
        client
            .update(
                "INSERT INTO quota.plans (tier, name, monthly_cost, fixed_cost, credits_included,
                        bonus_credits, multiplier, purchase_rate, active)
                 VALUES ($1, $2, $3::numeric, $4::numeric, $5, $6, $7, $8, $9)",
                None,
                &[
                    p.tier.as_str().into(),
                    p.name.as_str().into(),
                    p.monthly_cost.to_string().into(),
                    p.fixed_cost.to_string().into(),
                    p.credits_included.into(),
                    p.bonus_credits.into(),
                    p.multiplier.into(),
                    p.purchase_rate.into(),
                    p.active.into(),
                ],
            )
            .or_raise();
        let created = plan_json(client, &p.tier, false).expect("just inserted");
        audit::record(
            client,
            &actor,
            "create_plan",
            &format!("plan:{}", p.tier),
            None,
            Some(created.clone()),
        );
        JsonB(json!({ "success": true, "plan": created }))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_plan(
    tier: Option<&str>,
    patch: Option<JsonB>,
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let tier = required(tier, "tier");
    let patch = required(patch, "patch");
    validate_tier(tier).or_raise();
    let p = PlanPatch::parse(tier, patch.0).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let old = plan_json(client, tier, true).unwrap_or_else(|| raise(unknown_plan(tier)));
        if let Some(name) = &p.name {
            if name_taken(client, name, Some(tier)) {
                raise(
                    QuotaError::new(
                        ErrorKind::Duplicate,
                        format!("plan name '{name}' already exists"),
                    )
                    .with("name", name.as_str()),
                );
            }
        }
        client
            .update(
                "UPDATE quota.plans SET
                    name = coalesce($2, name),
                    monthly_cost = coalesce($3::numeric, monthly_cost),
                    fixed_cost = coalesce($4::numeric, fixed_cost),
                    credits_included = coalesce($5, credits_included),
                    bonus_credits = coalesce($6, bonus_credits),
                    multiplier = coalesce($7, multiplier),
                    purchase_rate = coalesce($8, purchase_rate),
                    active = coalesce($9, active),
                    updated_at = now()
                 WHERE tier = $1",
                None,
                &[
                    tier.into(),
                    p.name.clone().into(),
                    p.monthly_cost.map(|v| v.to_string()).into(),
                    p.fixed_cost.map(|v| v.to_string()).into(),
                    p.credits_included.into(),
                    p.bonus_credits.into(),
                    p.multiplier.into(),
                    p.purchase_rate.into(),
                    p.active.into(),
                ],
            )
            .or_raise();
        let new = plan_json(client, tier, false).expect("exists");
        audit::record(
            client,
            &actor,
            "update_plan",
            &format!("plan:{tier}"),
            Some(old),
            Some(new.clone()),
        );
        JsonB(json!({ "success": true, "plan": new }))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_plan(tier: Option<&str>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let tier = required(tier, "tier");
    validate_tier(tier).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let old = plan_json(client, tier, true).unwrap_or_else(|| raise(unknown_plan(tier)));
        let subscribers = client
            .update(
                "SELECT count(*) AS n FROM quota.subscriptions WHERE tier = $1",
                Some(1),
                &[tier.into()],
            )
            .or_raise()
            .next()
            .and_then(|r| r.get_by_name::<i64, _>("n").or_raise())
            .unwrap_or(0);
        if subscribers > 0 {
            raise(
                QuotaError::new(
                    ErrorKind::InUse,
                    format!("plan '{tier}' has {subscribers} subscribed users; move them to another plan first"),
                )
                .with("tier", tier)
                .with("subscribers", subscribers),
            );
        }
        client
            .update(
                "DELETE FROM quota.plans WHERE tier = $1",
                None,
                &[tier.into()],
            )
            .or_raise();
        audit::record(
            client,
            &actor,
            "delete_plan",
            &format!("plan:{tier}"),
            Some(old),
            None,
        );
        JsonB(json!({ "success": true, "message": "plan deleted", "tier": tier }))
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn list_plans(active_only: default!(bool, false)) -> JsonB {
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'plans', coalesce(jsonb_agg(quota._plan_json(p) ORDER BY p.monthly_cost, p.tier), '[]'::jsonb),
            'total', count(*))
         FROM quota.plans p WHERE p.active OR NOT $1",
        &[active_only.into()],
    )
    .expect("an aggregate returns one row")
}

/// Sets one rate of a plan; the result is seed 004's `{success, tier, old_<column>,
/// new_<column>, updated_at}` plus the plan.
/// The active plans as users see them (seed 004's `GET /api/v1/subscription/plans`): 9 keys each,
/// cheapest first.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn subscription_plans() -> JsonB {
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'plans', coalesce(jsonb_agg(quota._public_plan_json(p) ORDER BY p.monthly_cost, p.tier), '[]'::jsonb),
            'total', count(*))
         FROM quota.plans p WHERE p.active",
        &[],
    )
    .expect("an aggregate returns one row")
}

fn set_rate(tier: &str, column: &str, value: f64, actor: Option<&str>) -> JsonB {
    validate_tier(tier).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let old = plan_json(client, tier, true).unwrap_or_else(|| raise(unknown_plan(tier)));
        // `column` is one of two fixed names chosen by the caller below, never user input.
        let sql =
            format!("UPDATE quota.plans SET {column} = $2, updated_at = now() WHERE tier = $1");
        client
            .update(sql.as_str(), None, &[tier.into(), value.into()])
            .or_raise();
        let new = plan_json(client, tier, false).expect("exists");
        audit::record(
            client,
            &actor,
            &format!("set_plan_{column}"),
            &format!("plan:{tier}"),
            Some(old.clone()),
            Some(new.clone()),
        );
        let mut result = serde_json::Map::new();
        result.insert("success".into(), json!(true));
        result.insert("tier".into(), json!(tier));
        result.insert(format!("old_{column}"), old[column].clone());
        result.insert(format!("new_{column}"), new[column].clone());
        result.insert("updated_at".into(), new["updated_at"].clone());
        result.insert("plan".into(), new);
        JsonB(Value::Object(result))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn set_plan_multiplier(
    tier: Option<&str>,
    multiplier: Option<f64>,
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let tier = required(tier, "tier");
    let multiplier = required(multiplier, "multiplier");
    validate_multiplier(multiplier).or_raise();
    set_rate(tier, "multiplier", multiplier, actor)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn set_plan_purchase_rate(
    tier: Option<&str>,
    purchase_rate: Option<f64>,
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let tier = required(tier, "tier");
    let purchase_rate = required(purchase_rate, "purchase_rate");
    validate_purchase_rate(purchase_rate).or_raise();
    set_rate(tier, "purchase_rate", purchase_rate, actor)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn set_exchange_rate(base_rate: Option<i64>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let base_rate = required(base_rate, "base_rate");
    validate_base_rate(base_rate).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        // The row always exists, so the first call applies too (seed 004's bug: it did not).
        let row = client
            .update(
                "WITH old AS (SELECT base_rate FROM quota.settings FOR UPDATE)
                 UPDATE quota.settings s SET base_rate = $1, updated_at = now() FROM old
                 RETURNING jsonb_build_object('success', true, 'old_base_rate', old.base_rate,
                     'new_base_rate', s.base_rate, 'updated_at', s.updated_at) AS result",
                Some(1),
                &[base_rate.into()],
            )
            .or_raise()
            .next()
            .and_then(|r| r.get_by_name::<JsonB, _>("result").or_raise())
            .expect("the settings row always exists")
            .0;
        audit::record(
            client,
            &actor,
            "set_exchange_rate",
            "settings:base_rate",
            Some(json!({ "base_rate": row["old_base_rate"] })),
            Some(json!({ "base_rate": base_rate })),
        );
        JsonB(row)
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn statistics(
    start_date: default!(Option<TimestampWithTimeZone>, "NULL"),
    end_date: default!(Option<TimestampWithTimeZone>, "NULL"),
    tier: default!(Option<&str>, "NULL"),
) -> JsonB {
    if let (Some(s), Some(e)) = (start_date, end_date) {
        if pg_sys::TimestampTz::from(s) > pg_sys::TimestampTz::from(e) {
            raise(
                QuotaError::invalid("start_date must not be after end_date")
                    .with("field", "start_date"),
            );
        }
    }
    if let Some(t) = tier {
        validate_tier(t).or_raise();
        if !read::exists("SELECT 1 FROM quota.plans WHERE tier = $1", &[t.into()]) {
            raise(unknown_plan(t));
        }
    }
    read::one::<JsonB>(
        "WITH scope AS (
            SELECT u.id FROM quota.users u LEFT JOIN quota.subscriptions s ON s.user_id = u.id
            WHERE $3::text IS NULL OR s.tier = $3),
         tx AS (
            SELECT l.transaction_type, l.credits FROM quota.ledger l JOIN scope ON scope.id = l.user_id
            WHERE ($1::timestamptz IS NULL OR l.created_at >= $1)
              AND ($2::timestamptz IS NULL OR l.created_at < $2))
         SELECT jsonb_build_object(
            'period', jsonb_build_object('start', $1, 'end', $2),
            'tier', $3,
            'total_users', (SELECT count(*) FROM scope),
            'subscriptions', jsonb_build_object(
                'subscriptions', coalesce((
                    SELECT jsonb_object_agg(tier, n) FROM (
                        SELECT s.tier, count(*) AS n FROM quota.subscriptions s JOIN scope ON scope.id = s.user_id
                        GROUP BY s.tier) x), '{}'::jsonb),
                'total', (SELECT count(*) FROM scope JOIN quota.subscriptions s ON s.user_id = scope.id)),
            'credits', jsonb_build_object(
                'total_earned', coalesce((SELECT sum(credits) FROM tx
                                          WHERE transaction_type IN ('add', 'subscription', 'bonus', 'recharge')), 0),
                'total_spent', coalesce((SELECT -sum(credits) FROM tx
                                         WHERE transaction_type IN ('charge', 'settle', 'refund')), 0),
                'current_balance', (SELECT coalesce(sum(w.balance), 0) FROM quota.wallets w JOIN scope ON scope.id = w.user_id)),
            'transactions', (SELECT jsonb_build_object(
                'total', count(*),
                'charges', count(*) FILTER (WHERE transaction_type = 'charge'),
                'additions', count(*) FILTER (WHERE transaction_type = 'add'),
                'subscriptions', count(*) FILTER (WHERE transaction_type = 'subscription'),
                'bonuses', count(*) FILTER (WHERE transaction_type = 'bonus'),
                'refunds', count(*) FILTER (WHERE transaction_type = 'refund'),
                'recharges', count(*) FILTER (WHERE transaction_type = 'recharge')) FROM tx))",
        &[start_date.into(), end_date.into(), tier.into()],
    )
    .expect("one row")
}
