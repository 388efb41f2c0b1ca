//! Organizations (seed 003, SPEC 3): create, update, read, list, delete, their users, and
//! idempotent quota top-ups. Every change of quota goes through the organization ledger.

use crate::error::{raise, required, OrRaise};
use crate::{audit, read};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use quota_core::ids::{validate_free_text, validate_operation_id, validate_org_id, validate_page};
use quota_core::reservation::{self as rules, Billing, Org, OrgInput};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Value};

fn unknown_org(org_id: &str) -> QuotaError {
    QuotaError::not_found(format!("organization '{org_id}' not found")).with("org_id", org_id)
}

fn org_json(client: &mut SpiClient, org_id: &str) -> Option<Value> {
    client
        .update(
            "SELECT quota._organization_json(o) AS j FROM quota.organizations o WHERE o.id = $1",
            Some(1),
            &[org_id.into()],
        )
        .or_raise()
        .next()
        .and_then(|r| r.get_by_name::<JsonB, _>("j").or_raise())
        .map(|j| j.0)
}

fn check_body_id(org_id: &str, o: &OrgInput) {
    if let Some(id) = &o.id {
        if id != org_id {
            raise(
                QuotaError::invalid(format!(
                    "body id '{id}' does not match organization '{org_id}'"
                ))
                .with("field", "id"),
            );
        }
    }
}

/// Writes a change of quota (create, adjust, top-up) with its org_ledger row.
#[allow(clippy::too_many_arguments)]
fn move_quota(
    client: &mut SpiClient,
    org_id: &str,
    scope: &str,
    operation_id: &str,
    entry_type: &str,
    credits: i64,
    description: Option<&str>,
    request: Value,
) -> Value {
    let t = client
        .update(
            "WITH o AS (
                UPDATE quota.organizations SET quota = quota + $5, updated_at = now()
                 WHERE id = $1 RETURNING quota, used_quota, held_quota),
             l AS (
                INSERT INTO quota.org_ledger (org_id, scope, operation_id, entry_type, quota_change,
                       quota_after, used_quota_after, held_quota_after, description, request)
                SELECT $1, $2, $3, $4, $5, o.quota, o.used_quota, o.held_quota, $6, $7 FROM o
                ON CONFLICT ON CONSTRAINT org_ledger_operation_key DO NOTHING
                RETURNING entry_id)
             SELECT jsonb_build_object('org_id', $1::text, 'operation_id', $3::text, 'credits', $5::int8,
                    'quota_after', o.quota, 'used_quota_after', o.used_quota,
                    'held_quota_after', o.held_quota, 'entry_id', l.entry_id)
             FROM o LEFT JOIN l ON true",
            Some(1),
            &[
                org_id.into(),
                scope.into(),
                operation_id.into(),
                entry_type.into(),
                credits.into(),
                description.into(),
                JsonB(request).into(),
            ],
        )
        .or_raise();
    let v = t
        .into_iter()
        .next()
        .and_then(|r| r.get::<JsonB>(1).or_raise())
        .map(|j| j.0)
        .unwrap_or_else(|| raise(unknown_org(org_id)));
    if v["entry_id"].is_null() {
        raise(
            QuotaError::new(
                ErrorKind::InProgress,
                format!(
                    "operation_id '{operation_id}' is being applied by a concurrent call; retry"
                ),
            )
            .with("operation_id", operation_id),
        );
    }
    v
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_organization(
    org_id: Option<&str>,
    organization: default!(Option<JsonB>, "'{}'"),
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let org_id = required(org_id, "org_id");
    let body = required(organization, "organization");
    validate_org_id(org_id).or_raise();
    let o = OrgInput::parse(body.0).or_raise();
    check_body_id(org_id, &o);
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let inserted = !client
            .update(
                "INSERT INTO quota.organizations (id, name, status, billing_type, overdraft_limit)
                 VALUES ($1, coalesce($2, $1), coalesce($3, 'enabled'), coalesce($4, 'prepaid'),
                         coalesce($5, 0))
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                None,
                &[
                    org_id.into(),
                    o.name.as_deref().into(),
                    o.status.as_deref().into(),
                    o.billing_type.as_deref().into(),
                    o.overdraft_limit.into(),
                ],
            )
            .or_raise()
            .is_empty();
        if !inserted {
            raise(
                QuotaError::new(
                    ErrorKind::Duplicate,
                    format!("organization '{org_id}' already exists"),
                )
                .with("org_id", org_id),
            );
        }
        if let Some(q) = o.quota.filter(|q| *q > 0) {
            move_quota(
                client,
                org_id,
                "system",
                &format!("create:{org_id}"),
                "create",
                q,
                None,
                json!({ "quota": q }),
            );
        }
        let j = org_json(client, org_id).expect("just created");
        audit::record(
            client,
            &actor,
            "create_organization",
            &format!("org:{org_id}"),
            None,
            Some(j.clone()),
        );
        JsonB(j)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_organization(
    org_id: Option<&str>,
    patch: Option<JsonB>,
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let org_id = required(org_id, "org_id");
    let patch = required(patch, "patch");
    validate_org_id(org_id).or_raise();
    let o = OrgInput::parse(patch.0).or_raise();
    check_body_id(org_id, &o);
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let t = client
            .update(
                "SELECT status, billing_type, quota, used_quota, held_quota, overdraft_limit
                 FROM quota.organizations WHERE id = $1 FOR UPDATE",
                Some(1),
                &[org_id.into()],
            )
            .or_raise();
        let Some(row) = t.into_iter().next() else {
            raise(unknown_org(org_id));
        };
        let cur = |name: &str| {
            row.get_by_name::<i64, _>(name)
                .or_raise()
                .unwrap_or_default()
        };
        let current_billing = row
            .get_by_name::<String, _>("billing_type")
            .or_raise()
            .unwrap_or_default();
        let (quota, used, held, overdraft) = (
            cur("quota"),
            cur("used_quota"),
            cur("held_quota"),
            cur("overdraft_limit"),
        );
        let next = Org {
            billing: Billing::parse(o.billing_type.as_deref().unwrap_or(&current_billing))
                .or_raise(),
            enabled: true,
            quota: o.quota.unwrap_or(quota),
            used_quota: used,
            held_quota: held,
            overdraft_limit: o.overdraft_limit.unwrap_or(overdraft),
        };
        rules::check_org_edit(org_id, &next).or_raise();
        let old = org_json(client, org_id);
        client
            .update(
                "UPDATE quota.organizations
                    SET name = coalesce($2, name), status = coalesce($3, status),
                        billing_type = coalesce($4, billing_type),
                        overdraft_limit = coalesce($5, overdraft_limit), updated_at = now()
                  WHERE id = $1",
                None,
                &[
                    org_id.into(),
                    o.name.as_deref().into(),
                    o.status.as_deref().into(),
                    o.billing_type.as_deref().into(),
                    o.overdraft_limit.into(),
                ],
            )
            .or_raise();
        if let Some(q) = o.quota.filter(|q| *q != quota) {
            // An admin setting of quota: the difference is an 'adjust' entry, keyed by the
            // count of the organization's entries (it only grows, under the lock we hold).
            let seq = client
                .update(
                    "SELECT count(*) FROM quota.org_ledger WHERE org_id = $1",
                    Some(1),
                    &[org_id.into()],
                )
                .or_raise()
                .first()
                .get_one::<i64>()
                .or_raise()
                .unwrap_or_default();
            move_quota(
                client,
                org_id,
                "system",
                &format!("adjust:{seq}"),
                "adjust",
                q - quota,
                None,
                json!({ "quota": q, "previous_quota": quota }),
            );
        }
        let new = org_json(client, org_id).expect("exists");
        audit::record(
            client,
            &actor,
            "update_organization",
            &format!("org:{org_id}"),
            old,
            Some(new.clone()),
        );
        JsonB(new)
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn get_organization(org_id: &str) -> JsonB {
    validate_org_id(org_id).or_raise();
    read::one::<JsonB>(
        "SELECT quota._organization_json(o) FROM quota.organizations o WHERE o.id = $1",
        &[org_id.into()],
    )
    .unwrap_or_else(|| raise(unknown_org(org_id)))
}

fn check_page(limit: i32, offset: i32) {
    validate_page(limit, offset).or_raise();
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn list_organizations(limit: default!(i32, 50), offset: default!(i32, 0)) -> JsonB {
    check_page(limit, offset);
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'organizations', coalesce((SELECT jsonb_agg(quota._organization_json(o) ORDER BY o.id)
                FROM (SELECT * FROM quota.organizations ORDER BY id LIMIT $1 OFFSET $2) o), '[]'::jsonb),
            'total', (SELECT count(*) FROM quota.organizations),
            'limit', $1, 'offset', $2)",
        &[limit.into(), offset.into()],
    )
    .expect("one row")
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn organization_users(org_id: &str, limit: default!(i32, 50), offset: default!(i32, 0)) -> JsonB {
    validate_org_id(org_id).or_raise();
    check_page(limit, offset);
    if !read::exists(
        "SELECT 1 FROM quota.organizations WHERE id = $1",
        &[org_id.into()],
    ) {
        raise(unknown_org(org_id));
    }
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'users', coalesce((SELECT jsonb_agg(quota._user_json(id) ORDER BY id)
                FROM (SELECT id FROM quota.users WHERE org = $1 ORDER BY id LIMIT $2 OFFSET $3) page), '[]'::jsonb),
            'total', (SELECT count(*) FROM quota.users WHERE org = $1),
            'limit', $2, 'offset', $3)",
        &[org_id.into(), limit.into(), offset.into()],
    )
    .expect("one row")
}

/// Deletes an organization without users or open holds; its ledger goes with it (the last state
/// is kept in the audit log).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_organization(org_id: Option<&str>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let org_id = required(org_id, "org_id");
    validate_org_id(org_id).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        // FOR UPDATE conflicts with the KEY SHARE a user insert or org change takes, and with
        // a reserve's lock: no user or hold can appear after the counts below.
        let locked = client
            .update(
                "SELECT 1 FROM quota.organizations WHERE id = $1 FOR UPDATE",
                Some(1),
                &[org_id.into()],
            )
            .or_raise();
        if locked.is_empty() {
            raise(unknown_org(org_id));
        }
        let j = org_json(client, org_id).expect("locked");
        let users = j["users_count"].as_i64().unwrap_or_default();
        let holds = j["open_reservations"].as_i64().unwrap_or_default();
        if users > 0 || holds > 0 {
            raise(
                QuotaError::new(
                    ErrorKind::InUse,
                    format!(
                        "organization '{org_id}' has {users} user(s) and {holds} open reservation(s)"
                    ),
                )
                .with("org_id", org_id)
                .with("users_count", users)
                .with("open_reservations", holds),
            );
        }
        client
            .update(
                "DELETE FROM quota.org_ledger WHERE org_id = $1",
                None,
                &[org_id.into()],
            )
            .or_raise();
        client
            .update(
                "DELETE FROM quota.organizations WHERE id = $1",
                None,
                &[org_id.into()],
            )
            .or_raise();
        audit::record(
            client,
            &actor,
            "delete_organization",
            &format!("org:{org_id}"),
            Some(j.clone()),
            None,
        );
        JsonB(json!({ "deleted": true, "organization": j }))
    })
}

/// Adds credits to an organization's quota, idempotent by operation_id (in the organization's
/// service scope): a replay returns the first answer; other parameters are 23505.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn add_organization_quota(
    org_id: Option<&str>,
    credits: Option<i64>,
    operation_id: Option<&str>,
    description: default!(Option<&str>, "NULL"),
) -> JsonB {
    let org_id = required(org_id, "org_id");
    let credits = required(credits, "credits");
    let operation_id = required(operation_id, "operation_id");
    validate_org_id(org_id).or_raise();
    validate_operation_id(operation_id).or_raise();
    rules::validate_org_top_up(credits).or_raise();
    if let Some(d) = description {
        validate_free_text("description", d).or_raise();
    }
    let request = json!({ "credits": credits });
    Spi::connect_mut(|client| {
        let t = client
            .update(
                "SELECT quota FROM quota.organizations WHERE id = $1 FOR UPDATE",
                Some(1),
                &[org_id.into()],
            )
            .or_raise();
        let Some(row) = t.into_iter().next() else {
            raise(unknown_org(org_id));
        };
        let quota = row.get::<i64>(1).or_raise().unwrap_or_default();
        // The org lock is held: an earlier call with this id has committed or is this one.
        let existing = client
            .update(
                "SELECT entry_type, request, jsonb_build_object('org_id', org_id, 'operation_id', operation_id,
                        'credits', quota_change, 'quota_after', quota_after, 'used_quota_after', used_quota_after,
                        'held_quota_after', held_quota_after, 'entry_id', entry_id) AS answer
                 FROM quota.org_ledger WHERE org_id = $1 AND scope = 'service' AND operation_id = $2",
                Some(1),
                &[org_id.into(), operation_id.into()],
            )
            .or_raise();
        if let Some(e) = existing.into_iter().next() {
            let same = e
                .get_by_name::<String, _>("entry_type")
                .or_raise()
                .as_deref()
                == Some("add")
                && e.get_by_name::<JsonB, _>("request").or_raise().map(|j| j.0)
                    == Some(request.clone());
            if !same {
                raise(
                    QuotaError::new(
                        ErrorKind::IdempotencyConflict,
                        format!(
                            "operation_id '{operation_id}' was already used for organization '{org_id}' with other parameters"
                        ),
                    )
                    .with("operation_id", operation_id),
                );
            }
            return e
                .get_by_name::<JsonB, _>("answer")
                .or_raise()
                .expect("built");
        }
        rules::check_org_room(org_id, quota, credits).or_raise();
        JsonB(move_quota(
            client,
            org_id,
            "service",
            operation_id,
            "add",
            credits,
            description,
            request,
        ))
    })
}
