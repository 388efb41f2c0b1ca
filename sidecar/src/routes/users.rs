//! Admin API for users and their API tokens (the public API's credentials).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{shapes, JsonResult};
use crate::auth::AdminAuth;
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::{db, AppState};

pub const SQL_USER_CREATE: &str = "SELECT quota.create_user($1::text, $2::jsonb)";
pub const SQL_USER_LIST: &str = "SELECT quota.list_users($1::int4, $2::int4)";
pub const SQL_USER_GET: &str = "SELECT quota.get_user($1::text)";
pub const SQL_USER_UPDATE: &str = "SELECT quota.update_user($1::text, $2::jsonb)";
pub const SQL_USER_IMPORT: &str = "SELECT quota.import_users($1::jsonb)";
pub const SQL_USER_DELETE: &str = "SELECT quota.delete_user($1::text)";
pub const SQL_TOKEN_ISSUE: &str =
    "SELECT to_jsonb(r) FROM quota.issue_api_token($1::text, $2::text) r";
/// revoke_api_token returns a bare boolean; the object is built in the same statement.
pub const SQL_TOKEN_REVOKE: &str =
    "SELECT jsonb_build_object('token_id', $1::int8, 'revoked', quota.revoke_api_token($1::int8))";

pub const USER_LIST_LIMIT_DEFAULT: i32 = 50;
pub const USER_LIST_OFFSET_DEFAULT: i32 = 0;
/// The extension takes at most 10000 users per import; with profiles that is a few MiB of JSON.
pub const IMPORT_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The profile fields of a user (the extension validates them).
pub const PROFILE_FIELDS: &str = "{\"id\": \"<user id>\", ...profile}; profile fields: name, \
     github_username, email, phone, github_star (array or comma-separated text), vip (int >= 0), \
     org (the id of an existing organization, or null; an unknown one is 404), unlimited (bool: \
     the user's own wallet is not charged, the organization still is; default true for a user \
     created in an organization, else false), register_time, access_time";

/// The body of an import.
pub const IMPORT_FIELDS: &str = "[user objects with id] or {\"users\": [...]}; each object has \
     the fields of POST /api/admin/users: name, github_username, email, phone, github_star, vip, \
     org (an existing organization or null), unlimited (bool; default true in an organization, \
     else false), register_time, access_time";

/// Splits a create body into the id and the profile. `user_id` is accepted as a synonym of
/// `id` because every other endpoint calls it that.
pub fn split_user_id(body: Map<String, Value>) -> Result<(String, Value), AppError> {
    split_id(body, "user_id")
}

/// Splits a create body into its `id` (or `synonym`, not both) and the rest.
pub fn split_id(mut body: Map<String, Value>, synonym: &str) -> Result<(String, Value), AppError> {
    let id = match (body.remove("id"), body.remove(synonym)) {
        (Some(_), Some(_)) => {
            return Err(AppError::InvalidBody(format!(
                "give id or {synonym}, not both"
            )))
        }
        (Some(id), None) | (None, Some(id)) => id,
        (None, None) => return Err(AppError::InvalidBody("missing field `id`".into())),
    };
    match id {
        Value::String(id) => Ok((id, Value::Object(body))),
        other => Err(AppError::InvalidBody(format!(
            "id: expected a string, got {other}"
        ))),
    }
}

/// Create a user (409 if the id exists).
///
/// SQL: `quota.create_user(user_id, profile)`.
#[utoipa::path(
    post, path = "/api/admin/users", tag = "admin-users",
    operation_id = "admin_user_create",
    request_body(content = Object, description = PROFILE_FIELDS),
    responses((status = 201, description = "the user object", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USER_CREATE]))),
)]
pub async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (user_id, profile) = split_user_id(body)?;
    let row = db::call_json(&state.pool, SQL_USER_CREATE, &[&user_id, &profile]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1..1000, default 50.
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    /// Default 0.
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
}

/// List users.
///
/// SQL: `quota.list_users(limit, offset)`.
#[utoipa::path(
    get, path = "/api/admin/users", tag = "admin-users",
    operation_id = "admin_user_list",
    params(ListQuery),
    responses((status = 200, description = "{users: [...], total, limit, offset}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USER_LIST]))),
)]
pub async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> JsonResult {
    let limit = query.limit.unwrap_or(USER_LIST_LIMIT_DEFAULT);
    let offset = query.offset.unwrap_or(USER_LIST_OFFSET_DEFAULT);
    db::call_json(&state.pool, SQL_USER_LIST, &[&limit, &offset])
        .await
        .map(Json)
}

/// One user.
///
/// SQL: `quota.get_user(user_id)`.
#[utoipa::path(
    get, path = "/api/admin/users/{user_id}", tag = "admin-users",
    operation_id = "admin_user_get",
    params(("user_id" = String, Path, description = "the user")),
    responses((status = 200, description = "the user object", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USER_GET]))),
)]
pub async fn get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_USER_GET, &[&user_id])
        .await
        .map(Json)
}

/// Update a user's profile (partial; `org` and `unlimited` included: a change of `unlimited`
/// applies to the next reservation, a hold already made settles under its own rule).
///
/// SQL: `quota.update_user(user_id, patch)`.
#[utoipa::path(
    put, path = "/api/admin/users/{user_id}", tag = "admin-users",
    operation_id = "admin_user_update",
    params(("user_id" = String, Path, description = "the user")),
    request_body(content = Object, description = PROFILE_FIELDS),
    responses((status = 200, description = "the user object", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USER_UPDATE]))),
)]
pub async fn update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_USER_UPDATE, &[&user_id, &patch])
        .await
        .map(Json)
}

/// Delete a user with their wallet, ledger, tokens, payments and closed reservations (the audit
/// log keeps the history); 409 `in_use` while the user has a reservation held.
///
/// SQL: `quota.delete_user(user_id)`.
#[utoipa::path(
    delete, path = "/api/admin/users/{user_id}", tag = "admin-users",
    operation_id = "admin_user_delete",
    params(("user_id" = String, Path, description = "the user")),
    responses((status = 200, description = "{deleted: true, user}", body = shapes::UserDeleted)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USER_DELETE]))),
)]
pub async fn delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_USER_DELETE, &[&user_id])
        .await
        .map(Json)
}

/// The array the extension takes, from either accepted body shape.
pub fn import_array(body: Value) -> Result<Value, AppError> {
    match body {
        Value::Array(_) => Ok(body),
        Value::Object(mut map)
            if map.len() == 1 && map.get("users").is_some_and(Value::is_array) =>
        {
            Ok(map.remove("users").unwrap_or_default())
        }
        _ => Err(AppError::InvalidBody(
            "expected an array of user objects or {\"users\": [...]}".into(),
        )),
    }
}

/// Import users: upsert by id, at most 10000, all or nothing.
///
/// SQL: `quota.import_users(users)`.
#[utoipa::path(
    post, path = "/api/admin/users/import", tag = "admin-users",
    operation_id = "admin_user_import",
    request_body(content = Object, description = IMPORT_FIELDS),
    responses((status = 200, description = "{created, updated}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USER_IMPORT]))),
)]
pub async fn import(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> JsonResult {
    let users = import_array(body)?;
    db::call_json(&state.pool, SQL_USER_IMPORT, &[&users])
        .await
        .map(Json)
}

/// An optional label.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIssueBody {
    /// What the token is for.
    pub label: Option<String>,
}

/// Issue an API token for a user; the token is shown only once.
///
/// SQL: `quota.issue_api_token(user_id, label)`.
#[utoipa::path(
    post, path = "/api/admin/users/{user_id}/api-tokens", tag = "admin-users",
    operation_id = "admin_token_issue",
    params(("user_id" = String, Path, description = "the user")),
    request_body(content = Option<TokenIssueBody>),
    responses((status = 201, description = "{token_id, user_id, token, label, created_at}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_TOKEN_ISSUE]))),
)]
pub async fn token_issue(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    OptionalJson(body): OptionalJson<TokenIssueBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let label = body.unwrap_or_default().label;
    let row = db::call_json(&state.pool, SQL_TOKEN_ISSUE, &[&user_id, &label]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Revoke an API token.
///
/// SQL: `quota.revoke_api_token(token_id)`.
#[utoipa::path(
    delete, path = "/api/admin/api-tokens/{token_id}", tag = "admin-users",
    operation_id = "admin_token_revoke",
    params(("token_id" = i64, Path, description = "the token's id")),
    responses((status = 200, description = "{token_id, revoked}", body = Object)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_TOKEN_REVOKE]))),
)]
pub async fn token_revoke(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(token_id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_TOKEN_REVOKE, &[&token_id])
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn create_body_splits_into_id_and_profile() {
        let (id, profile) =
            split_user_id(object(json!({"id": "u1", "name": "Ann", "vip": 2}))).unwrap();
        assert_eq!(id, "u1");
        assert_eq!(profile, json!({"name": "Ann", "vip": 2}));
        let (id, _) = split_user_id(object(json!({"user_id": "u2"}))).unwrap();
        assert_eq!(id, "u2");
        for bad in [
            json!({"name": "x"}),
            json!({"id": 5}),
            json!({"id": "a", "user_id": "b"}),
        ] {
            assert!(
                matches!(
                    split_user_id(object(bad.clone())),
                    Err(AppError::InvalidBody(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn import_accepts_array_or_wrapped_array() {
        assert_eq!(
            import_array(json!([{"id": "a"}])).unwrap(),
            json!([{"id": "a"}])
        );
        assert_eq!(
            import_array(json!({"users": [{"id": "a"}]})).unwrap(),
            json!([{"id": "a"}])
        );
        for bad in [
            json!({"id": "a"}),
            json!({"users": {}}),
            json!("x"),
            json!({"users": [], "x": 1}),
        ] {
            assert!(
                matches!(import_array(bad.clone()), Err(AppError::InvalidBody(_))),
                "{bad}"
            );
        }
    }
}
