//! Recharge strategies (seed 000, SPEC 6.6): the seed's paths and shapes, admin-authenticated
//! (SPEC 1.5). Every rule (validation, scheduling, exactly-once) is in the extension.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::JsonResult;
use crate::auth::AdminAuth;
use crate::error::AppError;
use crate::extract::{optional_param, ApiJson, ApiPath, ApiQuery};
use crate::openapi::{
    optional, required, AuthKind, BodyDoc, BodySchema, FieldType as T, HttpMethod, RouteDoc,
};
use crate::{db, AppState};

pub const SQL_CREATE: &str = "SELECT quota.create_strategy($1::jsonb)";
pub const SQL_LIST: &str = "SELECT quota.list_strategies($1::bool)";
pub const SQL_GET: &str = "SELECT quota.get_strategy($1::int8)";
pub const SQL_UPDATE: &str = "SELECT quota.update_strategy($1::int8, $2::jsonb)";
pub const SQL_DELETE: &str = "SELECT quota.delete_strategy($1::int8)";
pub const SQL_ENABLE: &str = "SELECT quota.enable_strategy($1::int8)";
pub const SQL_DISABLE: &str = "SELECT quota.disable_strategy($1::int8)";
pub const SQL_EXECUTIONS: &str = "SELECT quota.strategy_executions($1::int8, $2::int4, $3::int4)";
pub const SQL_SCAN: &str = "SELECT jsonb_build_object(
        'message', 'strategy scan completed',
        'strategies', coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.strategy_id), '[]'::jsonb),
        'recharged', coalesce(sum(r.recharged), 0))
    FROM quota.scan() r";
/// At most 1000 user ids in a preview; `total` counts them all.
pub const SQL_PREVIEW: &str = "SELECT jsonb_build_object(
        'condition', quota.parse_condition($1::text),
        'users', coalesce((SELECT jsonb_agg(m) FROM (SELECT m FROM quota.match_users($1::text) m LIMIT 1000) x), '[]'::jsonb),
        'total', (SELECT count(*) FROM quota.match_users($1::text)))";

const fn strategy(method: HttpMethod, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc {
        method,
        path,
        auth: AuthKind::Admin,
        tag: "strategies",
        summary,
        query: &[],
        body: None,
        success_status: 200,
        response: "the strategy object",
        sql: &[],
    }
}

const STRATEGY_FIELDS: &str = "name (unique), title, type single|periodic, amount (> 0), model, \
     periodic_expr (cron, 5 or 6 fields or @daily..., periodic only), condition, status (default true), \
     max_exec_per_user (0 = no cap)";

pub const CREATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: STRATEGY_FIELDS,
        schema: BodySchema::AnyObject,
    }),
    success_status: 201,
    sql: &[SQL_CREATE],
    ..strategy(
        HttpMethod::Post,
        "/api/v1/strategies",
        "Create a strategy (status false is honoured)",
    )
};

pub const LIST: RouteDoc = RouteDoc {
    query: &[optional(
        "status",
        T::String,
        "enabled|true or disabled|false",
    )],
    response: "{strategies: [...], total}",
    sql: &[SQL_LIST],
    ..strategy(HttpMethod::Get, "/api/v1/strategies", "List strategies")
};

pub const GET: RouteDoc = RouteDoc {
    sql: &[SQL_GET],
    ..strategy(HttpMethod::Get, "/api/v1/strategies/{id}", "One strategy")
};

pub const UPDATE: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "partial; unknown fields are 400",
        schema: BodySchema::AnyObject,
    }),
    sql: &[SQL_UPDATE],
    ..strategy(
        HttpMethod::Put,
        "/api/v1/strategies/{id}",
        "Update a strategy",
    )
};

pub const DELETE: RouteDoc = RouteDoc {
    response: "{message: \"strategy deleted successfully\"}",
    sql: &[SQL_DELETE],
    ..strategy(
        HttpMethod::Delete,
        "/api/v1/strategies/{id}",
        "Delete a strategy (its executions are kept)",
    )
};

pub const ENABLE: RouteDoc = RouteDoc {
    response: "{message: \"strategy enabled successfully\"}",
    sql: &[SQL_ENABLE],
    ..strategy(
        HttpMethod::Post,
        "/api/v1/strategies/{id}/enable",
        "Enable a strategy",
    )
};

pub const DISABLE: RouteDoc = RouteDoc {
    response: "{message: \"strategy disabled successfully\"}",
    sql: &[SQL_DISABLE],
    ..strategy(
        HttpMethod::Post,
        "/api/v1/strategies/{id}/disable",
        "Disable a strategy",
    )
};

pub const EXECUTIONS: RouteDoc = RouteDoc {
    query: &[
        optional("limit", T::Integer, "1..1000, default 50"),
        optional("offset", T::Integer, ">= 0, default 0"),
    ],
    response: "{executions: [...], total, limit, offset}, newest first",
    sql: &[SQL_EXECUTIONS],
    ..strategy(
        HttpMethod::Get,
        "/api/v1/strategies/{id}/executions",
        "A strategy's executions",
    )
};

pub const SCAN: RouteDoc = RouteDoc {
    response:
        "{message, strategies: [{strategy_id, strategy_name, fire_time, recharged}], recharged}",
    sql: &[SQL_SCAN],
    ..strategy(
        HttpMethod::Post,
        "/api/v1/strategies/scan",
        "Run the due strategies now",
    )
};

pub const PREVIEW: RouteDoc = RouteDoc {
    body: Some(BodyDoc {
        required: true,
        about: "a condition to dry-run",
        schema: BodySchema::Fields(&[required("condition", T::String, "condition expression")]),
    }),
    response: "{condition (canonical), users (up to 1000 ids), total}",
    sql: &[SQL_PREVIEW],
    ..strategy(
        HttpMethod::Post,
        "/api/v1/conditions/preview",
        "The users a condition matches",
    )
};

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub status: Option<String>,
}

pub async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let body = Value::Object(body);
    let row = db::call_json(&state.pool, SQL_CREATE, &[&body]).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

pub async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> JsonResult {
    let status: Option<bool> = match query.status.as_deref() {
        None | Some("") => None,
        Some("enabled") | Some("true") => Some(true),
        Some("disabled") | Some("false") => Some(false),
        Some(other) => {
            return Err(AppError::InvalidQuery(format!(
                "status must be enabled, true, disabled or false, got {other:?}"
            )))
        }
    };
    db::call_json(&state.pool, SQL_LIST, &[&status])
        .await
        .map(Json)
}

pub async fn get(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_GET, &[&id]).await.map(Json)
}

pub async fn update(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> JsonResult {
    let patch = Value::Object(patch);
    db::call_json(&state.pool, SQL_UPDATE, &[&id, &patch])
        .await
        .map(Json)
}

pub async fn delete(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_DELETE, &[&id])
        .await
        .map(Json)
}

pub async fn enable(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_ENABLE, &[&id])
        .await
        .map(Json)
}

pub async fn disable(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_DISABLE, &[&id])
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
pub struct ExecutionsQuery {
    #[serde(default, deserialize_with = "optional_param")]
    pub limit: Option<i32>,
    #[serde(default, deserialize_with = "optional_param")]
    pub offset: Option<i32>,
}

pub async fn executions(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<ExecutionsQuery>,
) -> JsonResult {
    let (limit, offset) = (query.limit.unwrap_or(50), query.offset.unwrap_or(0));
    db::call_json(&state.pool, SQL_EXECUTIONS, &[&id, &limit, &offset])
        .await
        .map(Json)
}

pub async fn scan(_: AdminAuth, State(state): State<AppState>) -> JsonResult {
    db::call_json(&state.pool, SQL_SCAN, &[]).await.map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    pub condition: String,
}

pub async fn preview(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PreviewBody>,
) -> JsonResult {
    db::call_json(&state.pool, SQL_PREVIEW, &[&body.condition])
        .await
        .map(Json)
}
