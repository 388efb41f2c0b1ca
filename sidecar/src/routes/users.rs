//! Admin API for users and their API tokens (the public API's credentials).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::JsonResult;
use crate::auth::AdminAuth;
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::openapi::{
    optional, AuthKind, BodyDoc, BodySchema, FieldType as T, HttpMethod, RouteDoc,
};
use crate::{db, AppState};

pub const SQL_USER_CREATE: &str = "SELECT quota.create_user($1::text, $2::jsonb)";
pub const SQL_USER_LIST: &str = "SELECT quota.list_users($1::int4, $2::int4)";
pub const SQL_USER_GET: &str = "SELECT quota.get_user($1::text)";
pub const SQL_USER_UPDATE: &str = "SELECT quota.update_user($1::text, $2::jsonb)";
pub const SQL_USER_IMPORT: &str = "SELECT quota.import_users($1::jsonb)";
pub const SQL_TOKEN_ISSUE: &str =
    "SELECT to_jsonb(r) FROM quota.issue_api_token($1::text, $2::text) r";
/// revoke_api_token returns a bare boolean; the object is built in the same statement.
pub const SQL_TOKEN_REVOKE: &str =
    "SELECT jsonb_build_object('token_id', $1::int8, 'revoked', quota.revoke_api_token($1::int8))";

pub const USER_LIST_LIMIT_DEFAULT: i32 = 50;
pub const USER_LIST_OFFSET_DEFAULT: i32 = 0;
/// The extension takes at most 10000 users per import; with profiles that is a few MiB of JSON.
pub const IMPORT_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

const fn admin(method: HttpMethod, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc {
        method,
        path,
        auth: AuthKind::Admin,
        tag: "admin-users",
        summary,
        query: &[],
        body: None,
        success_status: 200,
        response: "the user object {id, name, github_username, email, phone, github_star, vip, org, register_time, \
                   access_time, created_at, updated_at, balance, total_earned, total_spent, subscription_tier}",
        sql: &[],
    }
}

const PROFILE_FIELDS: &str =
    "name, github_username, email, phone, github_star (array or comma-separated text), \
                              vip (int >= 0), org, register_time, access_time";

pub const CREATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "{\"id\": \"<user id>\", ...profile fields}; profile fields: name, github_username, email, phone, \
                github_star, vip, org, register_time, access_time",
        schema: BodySchema::AnyObject,
    }),
    success_status: 201,
    sql: &[SQL_USER_CREATE],
    ..admin(HttpMethod::Post, "/api/admin/users", "Create a user (409 if the id exists)")
};

pub const LIST: RouteDoc = RouteDoc {
    query: &[
        optional("limit", T::Integer, "1..1000, default 50"),
        optional("offset", T::Integer, "default 0"),
    ],
    response: "{users: [...], total, limit, offset}",
    sql: &[SQL_USER_LIST],
    ..admin(HttpMethod::Get, "/api/admin/users", "List users")
};

pub const GET: RouteDoc = RouteDoc {
    sql: &[SQL_USER_GET],
    ..admin(HttpMethod::Get, "/api/admin/users/{user_id}", "One user")
};

pub const UPDATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: PROFILE_FIELDS,
        schema: BodySchema::AnyObject,
    }),
    sql: &[SQL_USER_UPDATE],
    ..admin(
        HttpMethod::Put,
        "/api/admin/users/{user_id}",
        "Update a user's profile (partial)",
    )
};

pub const IMPORT: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "[user objects with id] or {\"users\": [...]}; upsert by id, at most 10000, all or nothing",
        schema: BodySchema::ArrayOfObjects,
    }),
    response: "{created, updated}",
    sql: &[SQL_USER_IMPORT],
    ..admin(HttpMethod::Post, "/api/admin/users/import", "Import users")
};

pub const TOKEN_ISSUE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: false,
        about: "optional label",
        schema: BodySchema::Fields(&[optional("label", T::String, "what the token is for")]),
    }),
    success_status: 201,
    response: "{token_id, user_id, token, label, created_at}; the token is shown only once",
    sql: &[SQL_TOKEN_ISSUE],
    ..admin(
        HttpMethod::Post,
        "/api/admin/users/{user_id}/api-tokens",
        "Issue an API token for a user",
    )
};

pub const TOKEN_REVOKE: RouteDoc = RouteDoc {
    response: "{token_id, revoked}",
    sql: &[SQL_TOKEN_REVOKE],
    ..admin(
        HttpMethod::Delete,
        "/api/admin/api-tokens/{token_id}",
        "Revoke an API token",
    )
};

/// Splits a create body into the id and the profile. `user_id` is accepted as a synonym of
/// `id` because every other endpoint calls it that.
pub fn split_user_id(mut body: Map<String, Value>) -> Result<(String, Value), AppError> {
    let id = match (body.remove("id"), body.remove("user_id")) {
        (Some(_), Some(_)) => {
            return Err(AppError::InvalidBody("give id or user_id, not both".into()))
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

pub async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (user_id, profile) = split_user_id(body)?;
    let row = db::call_json(&state.pool, SQL_USER_CREATE, &[&user_id, &profile]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
}

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

pub async fn get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_USER_GET, &[&user_id])
        .await
        .map(Json)
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssueBody {
    pub label: Option<String>,
}

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
