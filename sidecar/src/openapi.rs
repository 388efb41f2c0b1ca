//! The description of every route (RouteDoc) and the OpenAPI 3.0 document built from them.
//! The router is built from the same table (routes::table), so the document cannot miss a route.

use std::sync::OnceLock;

use axum::routing::MethodFilter;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "get",
            HttpMethod::Post => "post",
            HttpMethod::Put => "put",
            HttpMethod::Patch => "patch",
            HttpMethod::Delete => "delete",
        }
    }

    pub fn filter(self) -> MethodFilter {
        match self {
            HttpMethod::Get => MethodFilter::GET,
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Put => MethodFilter::PUT,
            HttpMethod::Patch => MethodFilter::PATCH,
            HttpMethod::Delete => MethodFilter::DELETE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    Open,
    Admin,
    Service,
    User,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    /// A date or timestamp as text: `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS` or RFC 3339.
    DateTime,
    Object,
    Any,
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    pub about: &'static str,
}

pub const fn required(name: &'static str, ty: FieldType, about: &'static str) -> Field {
    Field {
        name,
        ty,
        required: true,
        about,
    }
}

pub const fn optional(name: &'static str, ty: FieldType, about: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        about,
    }
}

#[derive(Clone, Copy, Debug)]
pub enum BodySchema {
    /// A JSON object with these fields (unknown fields are rejected).
    Fields(&'static [Field]),
    /// A JSON object forwarded to SQL as jsonb; the extension validates its fields.
    AnyObject,
    /// An array of objects, or an object wrapping it.
    ArrayOfObjects,
}

#[derive(Clone, Copy, Debug)]
pub struct BodyDoc {
    pub required: bool,
    pub about: &'static str,
    pub schema: BodySchema,
}

#[derive(Clone, Copy, Debug)]
pub struct RouteDoc {
    pub method: HttpMethod,
    /// axum 0.8 and OpenAPI share the `{param}` syntax.
    pub path: &'static str,
    pub auth: AuthKind,
    pub tag: &'static str,
    pub summary: &'static str,
    pub query: &'static [Field],
    pub body: Option<BodyDoc>,
    pub success_status: u16,
    pub response: &'static str,
    /// The SQL the handler runs (documented as `x-sql`).
    pub sql: &'static [&'static str],
}

/// Path parameters that are integers; every other one is text.
const INTEGER_PATH_PARAMS: &[&str] = &["token_id"];

pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

fn type_schema(ty: FieldType) -> Value {
    match ty {
        FieldType::String => json!({"type": "string"}),
        FieldType::Integer => json!({"type": "integer", "format": "int64"}),
        FieldType::Number => json!({"type": "number", "format": "double"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::DateTime => json!({"type": "string", "example": "2025-01-31 00:00:00"}),
        FieldType::Object => json!({"type": "object"}),
        FieldType::Any => json!({}),
    }
}

fn object_schema(fields: &[Field]) -> Value {
    let mut properties = Map::new();
    for field in fields {
        let mut schema = type_schema(field.ty);
        schema["description"] = Value::from(field.about);
        properties.insert(field.name.to_owned(), schema);
    }
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut schema =
        json!({"type": "object", "additionalProperties": false, "properties": properties});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn operation_id(route: &RouteDoc) -> String {
    let mut id = route.method.as_str().to_owned();
    for part in route
        .path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        id.push('_');
        id.push_str(part);
    }
    id
}

fn operation(route: &RouteDoc) -> Value {
    let mut parameters = Vec::new();
    for name in path_params(route.path) {
        let ty = if INTEGER_PATH_PARAMS.contains(&name) {
            FieldType::Integer
        } else {
            FieldType::String
        };
        parameters
            .push(json!({"name": name, "in": "path", "required": true, "schema": type_schema(ty)}));
    }
    for field in route.query {
        parameters.push(json!({
            "name": field.name,
            "in": "query",
            "required": field.required,
            "description": field.about,
            "schema": type_schema(field.ty),
        }));
    }

    let mut responses = Map::new();
    responses.insert(
        route.success_status.to_string(),
        json!({
            "description": route.response,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }),
    );
    let error = |responses: &mut Map<String, Value>, status: &str| {
        responses.insert(
            status.to_owned(),
            json!({"$ref": format!("#/components/responses/Error{status}")}),
        );
    };
    if route.auth != AuthKind::Open {
        error(&mut responses, "401");
        error(&mut responses, "403");
    }
    if !route.sql.is_empty() {
        for status in ["400", "404", "409", "500", "503"] {
            if !responses.contains_key(status) {
                error(&mut responses, status);
            }
        }
    }

    let security = match route.auth {
        AuthKind::Open => json!([]),
        AuthKind::Admin => json!([{"adminBearer": []}, {"adminToken": []}]),
        AuthKind::Service => json!([{"serviceToken": []}]),
        AuthKind::User => json!([{"userBearer": []}]),
    };

    let mut op = json!({
        "operationId": operation_id(route),
        "summary": route.summary,
        "tags": [route.tag],
        "security": security,
        "parameters": parameters,
        "responses": responses,
        "x-sql": route.sql,
    });
    if let Some(body) = route.body {
        let schema = match body.schema {
            BodySchema::Fields(fields) => object_schema(fields),
            BodySchema::AnyObject => json!({"type": "object"}),
            BodySchema::ArrayOfObjects => json!({
                "oneOf": [
                    {"type": "array", "items": {"type": "object"}},
                    {"type": "object", "properties": {"users": {"type": "array", "items": {"type": "object"}}}},
                ]
            }),
        };
        op["requestBody"] = json!({
            "required": body.required,
            "description": body.about,
            "content": {"application/json": {"schema": schema}},
        });
    }
    op
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

/// Builds the document from route descriptions. Pure, so tests can check it.
pub fn build(routes: &[RouteDoc]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        item[route.method.as_str()] = operation(route);
    }
    let mut responses = Map::new();
    for (status, description) in [
        ("400", "Malformed or invalid input (invalid_json, invalid_body, invalid_query, SQLSTATE 22xxx)"),
        ("401", "Missing credential"),
        ("403", "Wrong credential, or this API is not configured"),
        ("404", "Unknown subject (SQLSTATE P0002)"),
        ("409", "Duplicate, idempotency conflict, in use, or operation in progress"),
        ("500", "Internal error (message hidden, logged with the request id)"),
        ("503", "Database unavailable"),
    ] {
        responses.insert(format!("Error{status}"), error_response(description));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "pg_quota sidecar",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST API of pg_quota. Every endpoint calls one quota.* SQL function \
                (shown as x-sql); rules live in the extension. Errors are \
                {\"error\",\"message\",\"request_id\"} plus the fields of the SQL error's DETAIL.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminBearer": {"type": "http", "scheme": "bearer", "description": "QUOTA_ADMIN_TOKEN"},
                "adminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token"},
                "serviceToken": {"type": "apiKey", "in": "header", "name": "X-Service-Token"},
                "userBearer": {"type": "http", "scheme": "bearer", "description": "user API token (pq_...)"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message", "request_id"],
                    "properties": {
                        "error": {"type": "string", "description": "machine-readable code"},
                        "message": {"type": "string"},
                        "request_id": {"type": "string", "nullable": true, "description": "x-request-id"},
                    },
                    "additionalProperties": true,
                },
            },
            "responses": responses,
        },
    })
}

/// The served document, rendered once.
pub fn document_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let docs: Vec<RouteDoc> = crate::routes::table()
            .iter()
            .map(|route| route.doc)
            .collect();
        serde_json::to_string_pretty(&build(&docs)).expect("a serde_json::Value always serializes")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_are_extracted() {
        assert_eq!(
            path_params("/api/admin/users/{user_id}/api-tokens"),
            vec!["user_id"]
        );
        assert!(path_params("/health").is_empty());
    }

    #[test]
    fn operation_ids_are_unique() {
        let docs: Vec<RouteDoc> = crate::routes::table()
            .iter()
            .map(|route| route.doc)
            .collect();
        let mut ids: Vec<String> = docs.iter().map(operation_id).collect();
        ids.sort();
        let count = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
