//! Organizations (issue 11, seed 003), admin-authenticated: their quota is spent by their users'
//! reservations, unlimited users included. Each handler is one quota.* call.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::users::{split_id, ListQuery, USER_LIST_LIMIT_DEFAULT, USER_LIST_OFFSET_DEFAULT};
use super::{shapes, JsonResult};
use crate::auth::AdminAuth;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::{db, AppState};

pub const SQL_CREATE: &str = "SELECT quota.create_organization($1::text, $2::jsonb)";
pub const SQL_LIST: &str = "SELECT quota.list_organizations($1::int4, $2::int4)";
pub const SQL_GET: &str = "SELECT quota.get_organization($1::text)";
pub const SQL_UPDATE: &str = "SELECT quota.update_organization($1::text, $2::jsonb)";
pub const SQL_DELETE: &str = "SELECT quota.delete_organization($1::text)";
pub const SQL_USERS: &str = "SELECT quota.organization_users($1::text, $2::int4, $3::int4)";
pub const SQL_ADD_QUOTA: &str =
    "SELECT quota.add_organization_quota($1::text, $2::int8, $3::text, $4::text)";

/// The fields of an organization (the extension validates them; unknown ones are 400).
pub const ORGANIZATION_FIELDS: &str = "{\"id\": \"<org id>\" (or \"org_id\"), name (default: \
     the id), status enabled|disabled (default enabled), billing_type prepaid|postpaid (default \
     prepaid), quota (credits >= 0, default 0; written to the organization's ledger), \
     overdraft_limit (credits >= 0 a postpaid organization may spend past its quota, default 0)}";
pub const ORGANIZATION_PATCH_FIELDS: &str = "any of name, status, billing_type, \
     overdraft_limit, quota (sets it; the difference goes to the organization's ledger)";

/// Create an organization (409 if the id exists).
///
/// SQL: `quota.create_organization(org_id, organization)`.
#[utoipa::path(
    post, path = "/api/admin/organizations", tag = "organizations",
    operation_id = "admin_organization_create",
    request_body(content = Object, description = ORGANIZATION_FIELDS),
    responses((status = 201, description = "the organization", body = shapes::Organization)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_CREATE]))),
)]
pub async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (org_id, organization) = split_id(body, "org_id")?;
    let row = db::call_json(&state.pool, SQL_CREATE, &[&org_id, &organization]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List organizations.
///
/// SQL: `quota.list_organizations(limit, offset)`.
#[utoipa::path(
    get, path = "/api/admin/organizations", tag = "organizations",
    operation_id = "admin_organization_list",
    params(ListQuery),
    responses((status = 200, description = "{organizations: [...], total, limit, offset}", body = shapes::OrganizationList)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_LIST]))),
)]
pub async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> JsonResult {
    let limit = query.limit.unwrap_or(USER_LIST_LIMIT_DEFAULT);
    let offset = query.offset.unwrap_or(USER_LIST_OFFSET_DEFAULT);
    db::call_json(&state.pool, SQL_LIST, &[&limit, &offset])
        .await
        .map(Json)
}

/// One organization.
///
/// SQL: `quota.get_organization(org_id)`.
#[utoipa::path(
    get, path = "/api/admin/organizations/{org_id}", tag = "organizations",
    operation_id = "admin_organization_get",
    params(("org_id" = String, Path, description = "the organization")),
    responses((status = 200, description = "the organization", body = shapes::Organization)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_GET]))),
)]
pub async fn get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(org_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_GET, &[&org_id])
        .await
        .map(Json)
}

/// Update an organization (partial; unknown fields are 400).
///
/// SQL: `quota.update_organization(org_id, patch)`.
#[utoipa::path(
    put, path = "/api/admin/organizations/{org_id}", tag = "organizations",
    operation_id = "admin_organization_update",
    params(("org_id" = String, Path, description = "the organization")),
    request_body(content = Object, description = ORGANIZATION_PATCH_FIELDS),
    responses((status = 200, description = "the organization", body = shapes::Organization)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_UPDATE]))),
)]
pub async fn update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(org_id): ApiPath<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_UPDATE, &[&org_id, &patch])
        .await
        .map(Json)
}

/// Delete an organization; 409 `in_use` while it has users or reservations held.
///
/// SQL: `quota.delete_organization(org_id)`.
#[utoipa::path(
    delete, path = "/api/admin/organizations/{org_id}", tag = "organizations",
    operation_id = "admin_organization_delete",
    params(("org_id" = String, Path, description = "the organization")),
    responses((status = 200, description = "{deleted: true, organization}", body = shapes::OrganizationDeleted)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_DELETE]))),
)]
pub async fn delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(org_id): ApiPath<String>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_DELETE, &[&org_id])
        .await
        .map(Json)
}

/// An organization's users.
///
/// SQL: `quota.organization_users(org_id, limit, offset)`.
#[utoipa::path(
    get, path = "/api/admin/organizations/{org_id}/users", tag = "organizations",
    operation_id = "admin_organization_users",
    params(("org_id" = String, Path, description = "the organization"), ListQuery),
    responses((status = 200, description = "{users: [...], total, limit, offset}", body = shapes::OrganizationUsers)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_USERS]))),
)]
pub async fn users(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(org_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> JsonResult {
    let limit = query.limit.unwrap_or(USER_LIST_LIMIT_DEFAULT);
    let offset = query.offset.unwrap_or(USER_LIST_OFFSET_DEFAULT);
    db::call_json(&state.pool, SQL_USERS, &[&org_id, &limit, &offset])
        .await
        .map(Json)
}

/// Credits granted to an organization, idempotent by operation_id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddQuotaBody {
    /// Credits to add (> 0).
    pub credits: i64,
    /// Idempotency key, 1..255 visible characters, unique per organization.
    pub operation_id: String,
    /// Ledger description.
    pub description: Option<String>,
}

/// Top up an organization's quota. A replay answers the first top-up; the same operation_id
/// with other parameters is 409 `idempotency_conflict`.
///
/// SQL: `quota.add_organization_quota(org_id, credits, operation_id, description)`.
#[utoipa::path(
    post, path = "/api/admin/organizations/{org_id}/quota", tag = "organizations",
    operation_id = "admin_organization_add_quota",
    params(("org_id" = String, Path, description = "the organization")),
    request_body = AddQuotaBody,
    responses((status = 200, description = "the top-up (or its replay)", body = shapes::OrganizationQuotaAdded)),
    security(("adminBearer" = []), ("adminToken" = [])),
    extensions(("x-sql" = json!([SQL_ADD_QUOTA]))),
)]
pub async fn add_quota(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(org_id): ApiPath<String>,
    ApiJson(body): ApiJson<AddQuotaBody>,
) -> JsonResult {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
        &org_id,
        &body.credits,
        &body.operation_id,
        &body.description,
    ];
    db::call_json(&state.pool, SQL_ADD_QUOTA, &params)
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_body_takes_id_or_org_id() {
        let body = json!({"id": "acme", "billing_type": "postpaid"});
        let (id, rest) = split_id(body.as_object().unwrap().clone(), "org_id").unwrap();
        assert_eq!(id, "acme");
        assert_eq!(rest, json!({"billing_type": "postpaid"}));
        let body = json!({"org_id": "acme"});
        let (id, rest) = split_id(body.as_object().unwrap().clone(), "org_id").unwrap();
        assert_eq!((id.as_str(), rest), ("acme", json!({})));
        for bad in [
            json!({"id": "a", "org_id": "a"}),
            json!({"name": "x"}),
            json!({"id": 7}),
        ] {
            assert!(
                matches!(
                    split_id(bad.as_object().unwrap().clone(), "org_id"),
                    Err(AppError::InvalidBody(_))
                ),
                "{bad}"
            );
        }
    }
}
