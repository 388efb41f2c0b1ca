//! Users (the one users table of the product) and their API tokens for the public REST API.

use crate::error::{raise, required, OrRaise};
use crate::{audit, read};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use quota_core::ids::{validate_free_text, validate_page, validate_user_id};
use quota_core::user::{UserProfile, IMPORT_BATCH_MAX};
use quota_core::{ErrorKind, QuotaError};
use serde_json::{json, Value};

const TOKEN_PREFIX: &str = "pq_";
const TOKEN_LEN_MAX: usize = 256;

fn user_json(client: &mut SpiClient, user_id: &str) -> Option<Value> {
    client
        .update(
            "SELECT quota._user_json($1) AS u",
            Some(1),
            &[user_id.into()],
        )
        .or_raise()
        .next()
        .and_then(|r| r.get_by_name::<JsonB, _>("u").or_raise())
        .map(|j| j.0)
}

fn unknown_user(user_id: &str) -> QuotaError {
    QuotaError::not_found(format!("user '{user_id}' not found")).with("user_id", user_id)
}

/// The `SET` assignments and arguments for the profile fields present in `p`. Column names are
/// fixed here; values are always bound parameters. Arguments start at `$first`.
fn assignments<'a>(p: &'a UserProfile, first: usize) -> (Vec<String>, Vec<DatumWithOid<'a>>) {
    let mut sets = Vec::new();
    let mut args: Vec<DatumWithOid<'a>> = Vec::new();
    let mut push = |col: &str, cast: &str, arg: DatumWithOid<'a>, sets: &mut Vec<String>| {
        sets.push(format!("{col} = ${}{cast}", first + sets.len()));
        args.push(arg);
    };
    for (col, v) in [
        ("name", &p.name),
        ("github_username", &p.github_username),
        ("email", &p.email),
        ("phone", &p.phone),
        ("org", &p.org),
    ] {
        if let Some(v) = v {
            push(col, "", v.clone().into(), &mut sets);
        }
    }
    for (col, v) in [
        ("register_time", &p.register_time),
        ("access_time", &p.access_time),
    ] {
        if let Some(v) = v {
            push(col, "::timestamptz", v.clone().into(), &mut sets);
        }
    }
    if let Some(stars) = &p.github_star {
        push("github_star", "", stars.clone().into(), &mut sets);
    }
    if let Some(vip) = p.vip {
        push("vip", "", vip.into(), &mut sets);
    }
    if let Some(unlimited) = p.unlimited {
        push("unlimited", "", unlimited.into(), &mut sets);
    }
    (sets, args)
}

/// A user's organization must exist: 404 naming it (not the foreign key's 23503). The row is
/// locked (KEY SHARE) so it cannot be deleted before this transaction ends.
fn check_org_exists(client: &mut SpiClient, org: &str) {
    let found = !client
        .update(
            "SELECT 1 FROM quota.organizations WHERE id = $1 FOR KEY SHARE",
            Some(1),
            &[org.into()],
        )
        .or_raise()
        .is_empty();
    if !found {
        raise(
            QuotaError::not_found(format!("organization '{org}' not found"))
                .with("field", "org")
                .with("org", org),
        );
    }
}

/// Inserts or updates one user; returns true when it was created. A new user is unlimited by
/// default when it is created in an organization (seed 003), limited otherwise.
fn upsert_user(client: &mut SpiClient, user_id: &str, p: &UserProfile, must_be_new: bool) -> bool {
    if let Some(Some(org)) = &p.org {
        check_org_exists(client, org);
    }
    let inserted = !client
        .update(
            "INSERT INTO quota.users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id",
            None,
            &[user_id.into()],
        )
        .or_raise()
        .is_empty();
    if must_be_new && !inserted {
        raise(
            QuotaError::new(
                ErrorKind::Duplicate,
                format!("user '{user_id}' already exists"),
            )
            .with("user_id", user_id),
        );
    }
    if inserted {
        client
            .update(
                "INSERT INTO quota.wallets (user_id) VALUES ($1)",
                None,
                &[user_id.into()],
            )
            .or_raise();
    }
    let defaulted;
    let p = if inserted && p.unlimited.is_none() {
        defaulted = UserProfile {
            unlimited: Some(matches!(p.org, Some(Some(_)))),
            ..p.clone()
        };
        &defaulted
    } else {
        p
    };
    let (sets, mut args) = assignments(p, 2);
    if !sets.is_empty() {
        let sql = format!(
            "UPDATE quota.users SET {}, updated_at = now() WHERE id = $1",
            sets.join(", ")
        );
        let mut all: Vec<DatumWithOid> = vec![user_id.into()];
        all.append(&mut args);
        client.update(sql.as_str(), None, &all).or_raise();
    }
    inserted
}

fn check_body_id(user_id: &str, p: &UserProfile) {
    if let Some(id) = &p.id {
        if id != user_id {
            raise(
                QuotaError::invalid(format!("body id '{id}' does not match user '{user_id}'"))
                    .with("field", "id"),
            );
        }
    }
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn create_user(
    user_id: Option<&str>,
    profile: default!(Option<JsonB>, "'{}'"),
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let user_id = required(user_id, "user_id");
    let profile = required(profile, "profile");
    validate_user_id(user_id).or_raise();
    let p = UserProfile::parse(profile.0).or_raise();
    check_body_id(user_id, &p);
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        upsert_user(client, user_id, &p, true);
        let u = user_json(client, user_id).expect("just created");
        audit::record(
            client,
            &actor,
            "create_user",
            &format!("user:{user_id}"),
            None,
            Some(u.clone()),
        );
        JsonB(u)
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn update_user(
    user_id: Option<&str>,
    patch: Option<JsonB>,
    actor: default!(Option<&str>, "NULL"),
) -> JsonB {
    let user_id = required(user_id, "user_id");
    let patch = required(patch, "patch");
    validate_user_id(user_id).or_raise();
    let p = UserProfile::parse(patch.0).or_raise();
    check_body_id(user_id, &p);
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let locked = client
            .update(
                "SELECT 1 FROM quota.users WHERE id = $1 FOR UPDATE",
                Some(1),
                &[user_id.into()],
            )
            .or_raise();
        if locked.is_empty() {
            raise(unknown_user(user_id));
        }
        let old = user_json(client, user_id);
        upsert_user(client, user_id, &p, false);
        let new = user_json(client, user_id).expect("exists");
        audit::record(
            client,
            &actor,
            "update_user",
            &format!("user:{user_id}"),
            old,
            Some(new.clone()),
        );
        JsonB(new)
    })
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn get_user(user_id: &str) -> JsonB {
    validate_user_id(user_id).or_raise();
    read::one::<JsonB>("SELECT quota._user_json($1)", &[user_id.into()])
        .unwrap_or_else(|| raise(unknown_user(user_id)))
}

#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn list_users(limit: default!(i32, 50), offset: default!(i32, 0)) -> JsonB {
    validate_page(limit, offset).or_raise();
    read::one::<JsonB>(
        "SELECT jsonb_build_object(
            'users', coalesce((SELECT jsonb_agg(quota._user_json(id) ORDER BY id)
                               FROM (SELECT id FROM quota.users ORDER BY id LIMIT $1 OFFSET $2) page), '[]'::jsonb),
            'total', (SELECT count(*) FROM quota.users),
            'limit', $1, 'offset', $2)",
        &[limit.into(), offset.into()],
    )
    .expect("one row")
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn import_users(users: Option<JsonB>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let users = required(users, "users");
    let Value::Array(items) = users.0 else {
        raise(QuotaError::invalid(
            "users must be a JSON array of user objects",
        ));
    };
    if items.len() > IMPORT_BATCH_MAX {
        raise(QuotaError::invalid(format!(
            "at most {IMPORT_BATCH_MAX} users per import, got {}",
            items.len()
        )));
    }
    // Validate everything before writing anything: an import is all or nothing.
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let p = UserProfile::parse(item)
            .map_err(|e| QuotaError::invalid(format!("user #{i}: {}", e.message)).with("index", i))
            .or_raise();
        let Some(id) = p.id.clone() else {
            raise(QuotaError::invalid(format!("user #{i}: id is required")).with("index", i));
        };
        parsed.push((id, p));
    }
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let (mut created, mut updated) = (0i64, 0i64);
        for (id, p) in &parsed {
            if upsert_user(client, id, p, false) {
                created += 1;
            } else {
                updated += 1;
            }
        }
        let result = json!({ "created": created, "updated": updated });
        audit::record(
            client,
            &actor,
            "import_users",
            "users",
            None,
            Some(result.clone()),
        );
        JsonB(result)
    })
}

/// `prefix` + 64 hex characters from PostgreSQL's CSPRNG (user API tokens, access tokens).
pub(crate) fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    // SAFETY: pg_strong_random writes exactly `len` bytes into the buffer we own.
    let ok = unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) };
    if !ok {
        pgrx::error!("pg_quota: could not generate random bytes for a token");
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn issue_api_token(
    user_id: Option<&str>,
    label: default!(Option<&str>, "NULL"),
    actor: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(token_id, i64),
        name!(user_id, String),
        name!(token, String),
        name!(label, Option<String>),
        name!(created_at, TimestampWithTimeZone),
    ),
> {
    let user_id = required(user_id, "user_id");
    validate_user_id(user_id).or_raise();
    if let Some(l) = label {
        validate_free_text("label", l).or_raise();
    }
    let actor = audit::actor_or_role(actor);
    let token = random_token(TOKEN_PREFIX);
    Spi::connect_mut(|client| {
        if client
            .update(
                "SELECT 1 FROM quota.users WHERE id = $1",
                Some(1),
                &[user_id.into()],
            )
            .or_raise()
            .is_empty()
        {
            raise(unknown_user(user_id));
        }
        let row = client
            .update(
                "INSERT INTO quota.api_tokens (user_id, token_sha256, label)
                 VALUES ($1, sha256(convert_to($2, 'UTF8')), $3)
                 RETURNING token_id, created_at",
                Some(1),
                &[user_id.into(), token.as_str().into(), label.into()],
            )
            .or_raise();
        let row = row.into_iter().next().expect("inserted");
        let token_id = row
            .get_by_name::<i64, _>("token_id")
            .or_raise()
            .expect("identity");
        let created_at = row
            .get_by_name::<TimestampWithTimeZone, _>("created_at")
            .or_raise()
            .expect("default");
        // The audit log never holds the token itself.
        audit::record(
            client,
            &actor,
            "issue_api_token",
            &format!("user:{user_id}"),
            None,
            Some(json!({ "token_id": token_id, "label": label })),
        );
        TableIterator::once((
            token_id,
            user_id.to_string(),
            token.clone(),
            label.map(str::to_string),
            created_at,
        ))
    })
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn revoke_api_token(token_id: Option<i64>, actor: default!(Option<&str>, "NULL")) -> bool {
    let token_id = required(token_id, "token_id");
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        let row = client
            .update(
                "SELECT user_id, revoked_at IS NOT NULL AS revoked FROM quota.api_tokens WHERE token_id = $1 FOR UPDATE",
                Some(1),
                &[token_id.into()],
            )
            .or_raise();
        let Some(row) = row.into_iter().next() else {
            raise(
                QuotaError::not_found(format!("API token {token_id} not found"))
                    .with("token_id", token_id),
            );
        };
        let user_id = row
            .get_by_name::<String, _>("user_id")
            .or_raise()
            .unwrap_or_default();
        if row
            .get_by_name::<bool, _>("revoked")
            .or_raise()
            .unwrap_or(false)
        {
            return false;
        }
        client
            .update(
                "UPDATE quota.api_tokens SET revoked_at = now() WHERE token_id = $1",
                None,
                &[token_id.into()],
            )
            .or_raise();
        audit::record(
            client,
            &actor,
            "revoke_api_token",
            &format!("user:{user_id}"),
            Some(json!({ "token_id": token_id })),
            None,
        );
        true
    })
}

/// The user a bearer token belongs to, or NULL (unknown, revoked, or not a token at all).
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn resolve_api_token(token: &str) -> Option<String> {
    if token.len() > TOKEN_LEN_MAX || !token.starts_with(TOKEN_PREFIX) {
        return None;
    }
    read::one::<String>(
        "SELECT user_id FROM quota.api_tokens
         WHERE token_sha256 = sha256(convert_to($1, 'UTF8')) AND revoked_at IS NULL",
        &[token.into()],
    )
}

/// Deletes a user and everything that is only theirs (wallet, ledger, subscription, API tokens,
/// payments, ended reservations, strategy executions and their relay rows); their access tokens
/// are deactivated and lose their owner. Refused (23503
/// in_use) while the user has an open hold. The last state is kept in the audit log.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, quota, pg_temp)]
fn delete_user(user_id: Option<&str>, actor: default!(Option<&str>, "NULL")) -> JsonB {
    let user_id = required(user_id, "user_id");
    validate_user_id(user_id).or_raise();
    let actor = audit::actor_or_role(actor);
    Spi::connect_mut(|client| {
        // The wallet lock orders this after any reserve in flight for the user.
        let locked = client
            .update(
                "SELECT 1 FROM quota.wallets WHERE user_id = $1 FOR UPDATE",
                Some(1),
                &[user_id.into()],
            )
            .or_raise();
        if locked.is_empty() {
            raise(unknown_user(user_id));
        }
        let open = client
            .update(
                "SELECT count(*) FROM quota.reservations WHERE user_id = $1 AND status = 'held'",
                Some(1),
                &[user_id.into()],
            )
            .or_raise()
            .first()
            .get_one::<i64>()
            .or_raise()
            .unwrap_or_default();
        if open > 0 {
            raise(
                QuotaError::new(
                    ErrorKind::InUse,
                    format!("user '{user_id}' has {open} open reservation(s); settle or release them first"),
                )
                .with("user_id", user_id)
                .with("open_reservations", open),
            );
        }
        let old = user_json(client, user_id).expect("locked");
        for sql in [
            "DELETE FROM quota.outbox o USING quota.executions e WHERE o.execution_id = e.id AND e.user_id = $1",
            "DELETE FROM quota.executions WHERE user_id = $1",
            "DELETE FROM quota.reservations WHERE user_id = $1",
            // Access tokens outlive their owner, deactivated (their history stays).
            "UPDATE quota.tokens SET user_id = NULL, active = false, updated_at = now() WHERE user_id = $1",
            "DELETE FROM quota.api_tokens WHERE user_id = $1",
            "DELETE FROM quota.payments WHERE user_id = $1",
            "DELETE FROM quota.subscriptions WHERE user_id = $1",
            "DELETE FROM quota.ledger WHERE user_id = $1",
            "DELETE FROM quota.wallets WHERE user_id = $1",
            "DELETE FROM quota.users WHERE id = $1",
        ] {
            client.update(sql, None, &[user_id.into()]).or_raise();
        }
        audit::record(
            client,
            &actor,
            "delete_user",
            &format!("user:{user_id}"),
            Some(old.clone()),
            None,
        );
        JsonB(json!({ "deleted": true, "user": old }))
    })
}
