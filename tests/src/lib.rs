//! Shared helpers for the end-to-end tests of pg_quota.
//!
//! The tests run in parallel against ONE database and ONE sidecar, so every test creates its own
//! users and plans under unique ids (`unique_id`) and never assumes global counts.
//!
//! The exchange rate (`base_rate`) is global: a test that changes it takes the advisory lock
//! `BASE_RATE_LOCK` exclusively (`Ctx::exclusive`); every other test holds it in shared mode for its
//! whole life (`Ctx::new`), so no test sees a base rate other than the default.

pub mod pools;
pub mod relay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use reqwest::Method;
pub use serde_json::{json, Value};
use tokio_postgres::NoTls;

/// Advisory lock key guarding the global exchange rate.
pub const BASE_RATE_LOCK: i64 = 42;
/// The default exchange rate (credits per USD) every test except the exchange-rate test relies on.
pub const DEFAULT_BASE_RATE: i64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Environment

pub struct Env {
    pub database_url: String,
    pub sidecar_url: String,
    pub admin_token: String,
    pub service_token: String,
}

fn required_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "environment variable {name} is not set: the end-to-end tests need a running cluster and \
             sidecar; run them through `scripts/test.sh e2e` (which sets E2E_DATABASE_URL, \
             E2E_SIDECAR_URL, E2E_ADMIN_TOKEN, E2E_SERVICE_TOKEN)"
        ),
    }
}

/// The test environment; panics with a clear message when a variable is missing.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env {
        database_url: required_var("E2E_DATABASE_URL"),
        sidecar_url: required_var("E2E_SIDECAR_URL")
            .trim_end_matches('/')
            .to_string(),
        admin_token: required_var("E2E_ADMIN_TOKEN"),
        service_token: required_var("E2E_SERVICE_TOKEN"),
    })
}

// ---------------------------------------------------------------------------------------------
// Ids

/// A unique id: `prefix` + process id + time + a counter, short enough for every id column.
pub fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{prefix}_{:x}{:x}_{n}",
        std::process::id(),
        nanos % 0xffff_ffff_ffff
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

/// A request being built, remembering a description for assertion messages.
pub struct Req {
    rb: reqwest::RequestBuilder,
    what: String,
}

/// A response: status, parsed JSON body (Null if not JSON), raw text and headers.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
    pub what: String,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build()
            .expect("reqwest client");
        Api {
            client,
            base: env().sidecar_url.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// No credentials.
    pub fn anon(&self, method: Method, path: &str) -> Req {
        Req {
            rb: self.client.request(method.clone(), self.url(path)),
            what: format!("{method} {path}"),
        }
    }

    /// Admin credentials (Authorization: Bearer).
    pub fn admin(&self, method: Method, path: &str) -> Req {
        self.anon(method, path).bearer(&env().admin_token)
    }

    /// Internal service credentials (X-Service-Token).
    pub fn service(&self, method: Method, path: &str) -> Req {
        self.anon(method, path)
            .header("X-Service-Token", &env().service_token)
    }

    /// A user's API token as bearer (public endpoints).
    pub fn user(&self, token: &str, method: Method, path: &str) -> Req {
        self.anon(method, path).bearer(token)
    }
}

impl Req {
    pub fn bearer(mut self, token: &str) -> Self {
        self.rb = self.rb.bearer_auth(token);
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.rb = self.rb.header(name, value);
        self
    }
    pub fn json(mut self, body: &Value) -> Self {
        self.what = format!("{} {}", self.what, body);
        self.rb = self.rb.json(body);
        self
    }
    /// A raw body sent as `application/json` (for malformed JSON).
    pub fn raw_json(mut self, body: &str) -> Self {
        self.what = format!("{} {}", self.what, body);
        self.rb = self
            .rb
            .header("Content-Type", "application/json")
            .body(body.to_string());
        self
    }
    pub fn query(mut self, params: &[(&str, String)]) -> Self {
        self.what = format!("{} ?{:?}", self.what, params);
        self.rb = self.rb.query(params);
        self
    }
    pub async fn send(self) -> Resp {
        let what = self.what;
        let resp = self
            .rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading body failed: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            text,
            headers,
            what,
        }
    }
}

impl Resp {
    /// Asserts the status and returns the JSON body.
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "{}: expected HTTP {status}, got {} with body {}",
            self.what, self.status, self.text
        );
        self.body
    }

    /// Asserts an error response: the status, and a JSON body with string `error` and `message`
    /// (and, when given, the error code). Returns the body.
    pub fn expect_error(self, status: u16, code: Option<&str>) -> Value {
        let what = self.what.clone();
        let text = self.text.clone();
        let body = self.expect(status);
        assert!(
            body.get("error").and_then(Value::as_str).is_some(),
            "{what}: error body lacks a string \"error\": {text}"
        );
        assert!(
            body.get("message").and_then(Value::as_str).is_some(),
            "{what}: error body lacks a string \"message\": {text}"
        );
        if let Some(code) = code {
            assert_eq!(body["error"], code, "{what}: wrong error code in {text}");
        }
        body
    }
}

// ---------------------------------------------------------------------------------------------
// Database

/// Connects a new session (the connection task runs on the current runtime).
pub async fn connect_db() -> tokio_postgres::Client {
    let url = &env().database_url;
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to E2E_DATABASE_URL {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// SQLSTATE of a database error, or "" if it is not a database error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Test context and fixtures

/// One test's HTTP client and database session. The session holds `BASE_RATE_LOCK` (shared, or
/// exclusive for the exchange-rate test) until the test's runtime ends.
pub struct Ctx {
    pub api: Api,
    pub db: tokio_postgres::Client,
    pub name: String,
}

impl Ctx {
    /// Context for a test that relies on the default base rate.
    pub async fn new(name: &str) -> Ctx {
        Self::with_lock(name, "SELECT pg_advisory_lock_shared($1)").await
    }

    /// Context for a test that changes the base rate: waits until no other test runs.
    pub async fn exclusive(name: &str) -> Ctx {
        Self::with_lock(name, "SELECT pg_advisory_lock($1)").await
    }

    async fn with_lock(name: &str, lock_sql: &str) -> Ctx {
        let api = Api::new();
        let db = connect_db().await;
        db.execute(lock_sql, &[&BASE_RATE_LOCK])
            .await
            .expect("advisory lock");
        Ctx {
            api,
            db,
            name: name.to_string(),
        }
    }

    /// A unique id prefixed with a short form of the test name.
    pub fn id(&self, what: &str) -> String {
        let short: String = self.name.chars().take(24).collect();
        unique_id(&format!("{short}_{what}"))
    }

    // --- users and tokens ---

    /// Creates a user through the admin API; returns its id.
    pub async fn create_user(&self) -> String {
        let id = self.id("u");
        let body = self
            .api
            .admin(Method::POST, "/api/admin/users")
            .json(&json!({ "id": id }))
            .send()
            .await
            .expect(201);
        assert_eq!(body["id"], id.as_str(), "created user object: {body}");
        id
    }

    /// Issues a user API token through the admin API; returns (token_id, token).
    pub async fn issue_token(&self, user_id: &str) -> (i64, String) {
        let body = self
            .api
            .admin(
                Method::POST,
                &format!("/api/admin/users/{user_id}/api-tokens"),
            )
            .json(&json!({ "label": "e2e" }))
            .send()
            .await
            .expect(201);
        let token_id = body["token_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("token_id in {body}"));
        let token = body["token"]
            .as_str()
            .unwrap_or_else(|| panic!("token in {body}"))
            .to_string();
        (token_id, token)
    }

    /// A user with an API token.
    pub async fn create_user_with_token(&self) -> (String, String) {
        let user = self.create_user().await;
        let (_, token) = self.issue_token(&user).await;
        (user, token)
    }

    // --- plans ---

    /// A valid plan input with a unique tier and name, with `overrides` merged in.
    pub fn plan_input(&self, overrides: Value) -> Value {
        let tier = self.id("t");
        let mut plan = json!({
            "tier": tier,
            "name": format!("{tier} plan"),
            "monthly_cost": 9.99,
            "fixed_cost": 0,
            "credits_included": 1000,
            "bonus_credits": 100,
            "multiplier": 1.0,
            "purchase_rate": 1.0,
            "active": true
        });
        if let (Some(p), Some(o)) = (plan.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                p.insert(k.clone(), v.clone());
            }
        }
        plan
    }

    /// Creates a plan through the admin API (201, `{success, plan}`); returns the plan object.
    pub async fn create_plan(&self, overrides: Value) -> Value {
        let input = self.plan_input(overrides);
        let body = self
            .api
            .admin(Method::POST, "/api/admin/subscription-plans")
            .json(&input)
            .send()
            .await
            .expect(201);
        assert_eq!(body["success"], true, "created plan: {body}");
        assert_eq!(
            body["plan"]["tier"], input["tier"],
            "created plan object: {body}"
        );
        body["plan"].clone()
    }

    // --- money ---

    /// Subscribes a user to a tier through the internal API; returns the response body.
    pub async fn subscribe(&self, user_id: &str, tier: &str, credits_to_add: i64) -> Value {
        self.api
            .service(Method::POST, "/api/internal/subscription/update")
            .json(&json!({
                "user_id": user_id,
                "subscription_tier": tier,
                "credits_to_add": credits_to_add,
                "operation_id": self.id("sub"),
            }))
            .send()
            .await
            .expect(200)
    }

    /// Grants exactly `credits` (a bonus through /api/internal/credits/add); returns the body.
    pub async fn top_up_credits(&self, user_id: &str, credits: i64) -> Value {
        let body = self
            .api
            .service(Method::POST, "/api/internal/credits/add")
            .json(&json!({
                "user_id": user_id,
                "operation_id": self.id("bonus"),
                "transaction_type": "bonus",
                "credits": credits,
            }))
            .send()
            .await
            .expect(200);
        assert_eq!(body["credits_added"], credits, "bonus response {body}");
        body
    }

    /// Adds `amount_usd` (transaction_type add) through the internal API; returns the body.
    pub async fn add_usd(&self, user_id: &str, amount_usd: f64) -> Value {
        self.api
            .service(Method::POST, "/api/internal/credits/add")
            .json(&json!({ "user_id": user_id, "operation_id": self.id("add"), "amount_usd": amount_usd }))
            .send()
            .await
            .expect(200)
    }

    /// POST /api/internal/credits/charge.
    pub async fn charge(&self, user_id: &str, cost_usd: f64, operation_id: &str) -> Resp {
        self.api
            .service(Method::POST, "/api/internal/credits/charge")
            .json(
                &json!({ "user_id": user_id, "cost_usd": cost_usd, "operation_id": operation_id }),
            )
            .send()
            .await
    }

    /// POST /api/internal/credits/calculate for a tier; returns the credits.
    pub async fn calculate_for_tier(&self, cost_usd: f64, tier: &str) -> i64 {
        let body = self
            .api
            .service(Method::POST, "/api/internal/credits/calculate")
            .json(&json!({ "cost_usd": cost_usd, "tier": tier }))
            .send()
            .await
            .expect(200);
        body["credits_to_charge"]
            .as_i64()
            .unwrap_or_else(|| panic!("credits_to_charge in {body}"))
    }

    // --- SQL probes ---

    /// The wallet balance, read through SQL.
    pub async fn balance(&self, user_id: &str) -> i64 {
        let row = self
            .db
            .query_one("SELECT balance FROM quota.balance($1)", &[&user_id])
            .await
            .unwrap_or_else(|e| panic!("quota.balance({user_id}): {e}"));
        row.get(0)
    }

    /// Number of ledger rows carrying `operation_id`.
    pub async fn ledger_rows(&self, operation_id: &str) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM quota.ledger WHERE operation_id = $1",
                &[&operation_id],
            )
            .await
            .expect("count ledger rows")
            .get(0)
    }

    /// Asserts a rejected call left no trace: no ledger row for `operation_id` and the balance
    /// still `balance_before`.
    pub async fn assert_nothing_written(
        &self,
        user_id: &str,
        balance_before: i64,
        operation_id: &str,
    ) {
        assert_eq!(
            self.ledger_rows(operation_id).await,
            0,
            "a ledger row was written for rejected operation {operation_id}"
        );
        assert_eq!(
            self.balance(user_id).await,
            balance_before,
            "balance of {user_id} moved after a rejected call"
        );
    }

    /// Asserts `quota.verify()` returns no rows.
    pub async fn assert_verify_clean(&self) {
        assert_verify_clean(&self.db).await;
    }

    /// `quota.audit_log` rows whose JSON form mentions `needle`.
    pub async fn audit_rows_mentioning(&self, needle: &str) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM quota.audit_log a WHERE to_jsonb(a)::text LIKE '%' || $1 || '%'",
                &[&needle],
            )
            .await
            .expect("count audit_log rows")
            .get(0)
    }
}

/// Asserts `SELECT * FROM quota.verify()` returns no rows, listing them otherwise.
pub async fn assert_verify_clean(db: &tokio_postgres::Client) {
    let rows = db
        .query(
            "SELECT subject::text, problem::text FROM quota.verify()",
            &[],
        )
        .await
        .expect("quota.verify()");
    let problems: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        problems.is_empty(),
        "quota.verify() reports problems: {problems:?}"
    );
}

/// A field of a JSON object as i64, with a clear panic.
pub fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("field {field} is not an integer in {v}"))
}

/// A field of a JSON object as f64, with a clear panic.
pub fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("field {field} is not a number in {v}"))
}

/// Asserts the object has every listed field.
pub fn assert_fields(v: &Value, fields: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {v}"));
    for f in fields {
        assert!(obj.contains_key(*f), "field {f} missing in {v}");
    }
}

/// The `transaction_id` of a seed 004 body: a JSON string holding the ledger row's id.
pub fn tx_id(v: &Value) -> i64 {
    v["transaction_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("transaction_id is not a string of digits in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Payments (issue 9)

impl Ctx {
    /// Confirms a payment as the payment side does (`POST /api/internal/payments`, 201); returns
    /// its id. A purchase of `amount_usd` by `user_id` (with `payment_method_id`, when one is
    /// given) can then use it once.
    pub async fn confirm_payment(
        &self,
        user_id: &str,
        amount_usd: f64,
        payment_method_id: Option<&str>,
    ) -> String {
        let payment_id = self.id("pay");
        let mut request = json!({
            "payment_id": payment_id,
            "user_id": user_id,
            "amount_usd": amount_usd,
        });
        if let Some(method) = payment_method_id {
            request["payment_method_id"] = json!(method);
        }
        let body = self
            .api
            .service(Method::POST, "/api/internal/payments")
            .json(&request)
            .send()
            .await
            .expect(201);
        assert_eq!(body["status"], "confirmed", "confirmed payment: {body}");
        assert_eq!(body["created"], true, "confirmed payment: {body}");
        assert_eq!(
            body["payment_id"],
            payment_id.as_str(),
            "confirmed payment: {body}"
        );
        payment_id
    }
}

/// The 12 keys of a plan as seed 004's admin API lists it, exactly (its own tests count them).
pub const ADMIN_PLAN_KEYS: &[&str] = &[
    "tier",
    "name",
    "monthly_cost",
    "fixed_cost",
    "credits_included",
    "bonus_credits",
    "multiplier",
    "purchase_rate",
    "active",
    "users_count",
    "created_at",
    "updated_at",
];

/// The 9 keys of a plan as seed 004's public API lists it, exactly.
pub const PUBLIC_PLAN_KEYS: &[&str] = &[
    "tier",
    "name",
    "monthly_cost",
    "fixed_cost",
    "credits_included",
    "bonus_credits",
    "multiplier",
    "purchase_rate",
    "total_credits",
];

/// Asserts the object has exactly these keys.
pub fn assert_exact_keys(v: &Value, keys: &[&str]) {
    assert_fields(v, keys);
    assert_eq!(
        v.as_object().unwrap().len(),
        keys.len(),
        "expected exactly {keys:?}: {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// Organizations and reservations (issue 11, seed 003)

/// The keys of an organization object.
pub const ORGANIZATION_KEYS: &[&str] = &[
    "id",
    "name",
    "status",
    "billing_type",
    "quota",
    "used_quota",
    "held_quota",
    "overdraft_limit",
    "available_quota",
    "users_count",
    "open_reservations",
    "created_at",
    "updated_at",
];

/// The keys of a hold (`POST /api/internal/reservations`).
pub const RESERVATION_HELD_KEYS: &[&str] = &[
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
    "operation_id",
    "token_credits_held",
];

/// The keys of a settle, release or consume answer.
pub const RESERVATION_ENDED_KEYS: &[&str] = &[
    "reservation_id",
    "status",
    "user_id",
    "org",
    "unlimited",
    "credits_held",
    "actual_credits",
    "charged_credits",
    "returned_credits",
    "uncollected_credits",
    "org_charged_credits",
    "org_uncollected_credits",
    "balance_after",
    "held_credits_after",
    "used_quota_after",
    "request_count_after",
    "org_quota_after",
    "org_used_quota_after",
    "operation_id",
    "token_charged_credits",
    "token_uncollected_credits",
    "token_remaining_after",
];

impl Ctx {
    /// Creates an organization through the admin API (201) with a unique id and `fields` merged
    /// in; returns its id.
    pub async fn create_org(&self, fields: Value) -> String {
        let id = self.id("org");
        let mut body = json!({ "id": id });
        if let Some(extra) = fields.as_object() {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        let created = self
            .api
            .admin(Method::POST, "/api/admin/organizations")
            .json(&body)
            .send()
            .await
            .expect(201);
        assert_eq!(
            created["id"],
            id.as_str(),
            "created organization: {created}"
        );
        id
    }

    /// `GET /api/admin/organizations/{org_id}` (200).
    pub async fn org(&self, org_id: &str) -> Value {
        self.api
            .admin(Method::GET, &format!("/api/admin/organizations/{org_id}"))
            .send()
            .await
            .expect(200)
    }

    /// Tops an organization's quota up by `credits` (200); returns the answer.
    pub async fn add_org_quota(&self, org_id: &str, credits: i64) -> Value {
        self.api
            .admin(
                Method::POST,
                &format!("/api/admin/organizations/{org_id}/quota"),
            )
            .json(&json!({ "credits": credits, "operation_id": self.id("orgq") }))
            .send()
            .await
            .expect(200)
    }

    /// Creates a user through the admin API (201), in `org` when given, with `fields` merged
    /// in; returns the user object.
    pub async fn create_user_with(&self, org: Option<&str>, fields: Value) -> Value {
        let id = self.id("u");
        let mut body = json!({ "id": id });
        if let Some(org) = org {
            body["org"] = json!(org);
        }
        if let Some(extra) = fields.as_object() {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        let created = self
            .api
            .admin(Method::POST, "/api/admin/users")
            .json(&body)
            .send()
            .await
            .expect(201);
        assert_eq!(created["id"], id.as_str(), "created user object: {created}");
        created
    }

    /// `GET /api/admin/users/{user_id}` (200).
    pub async fn user_json(&self, user_id: &str) -> Value {
        self.api
            .admin(Method::GET, &format!("/api/admin/users/{user_id}"))
            .send()
            .await
            .expect(200)
    }

    /// `PUT /api/admin/users/{user_id}` (200).
    pub async fn update_user(&self, user_id: &str, patch: Value) -> Value {
        self.api
            .admin(Method::PUT, &format!("/api/admin/users/{user_id}"))
            .json(&patch)
            .send()
            .await
            .expect(200)
    }

    /// `POST /api/internal/reservations` with this body.
    pub async fn reserve(&self, body: Value) -> Resp {
        self.api
            .service(Method::POST, "/api/internal/reservations")
            .json(&body)
            .send()
            .await
    }

    /// Reserves `credits` for `user_id` under a fresh operation id (201); returns the hold.
    pub async fn hold(&self, user_id: &str, credits: i64) -> Value {
        self.reserve(
            json!({ "operation_id": self.id("rsv"), "user_id": user_id, "credits": credits }),
        )
        .await
        .expect(201)
    }

    /// `POST /api/internal/reservations/{reservation_id}/settle`.
    pub async fn settle(
        &self,
        reservation_id: i64,
        actual_credits: i64,
        operation_id: &str,
    ) -> Resp {
        self.api
            .service(
                Method::POST,
                &format!("/api/internal/reservations/{reservation_id}/settle"),
            )
            .json(&json!({ "actual_credits": actual_credits, "operation_id": operation_id }))
            .send()
            .await
    }

    /// `POST /api/internal/reservations/{reservation_id}/release`.
    pub async fn release(&self, reservation_id: i64, operation_id: &str) -> Resp {
        self.api
            .service(
                Method::POST,
                &format!("/api/internal/reservations/{reservation_id}/release"),
            )
            .json(&json!({ "operation_id": operation_id }))
            .send()
            .await
    }

    /// `GET /api/internal/reservations/{reservation_id}`.
    pub async fn reservation(&self, reservation_id: i64) -> Resp {
        self.api
            .service(
                Method::GET,
                &format!("/api/internal/reservations/{reservation_id}"),
            )
            .send()
            .await
    }

    /// `POST /api/internal/consume` with this body.
    pub async fn consume(&self, body: Value) -> Resp {
        self.api
            .service(Method::POST, "/api/internal/consume")
            .json(&body)
            .send()
            .await
    }

    /// Everything a reservation call may write for a user and (optionally) an organization, read
    /// through SQL: the wallet row, the user's ledger and reservation counts, the organization
    /// row and its ledger count. A refused call leaves it equal.
    pub async fn money_state(&self, user_id: &str, org_id: Option<&str>) -> Value {
        self.db
            .query_one(
                "SELECT jsonb_build_object(
                    'wallet', (SELECT to_jsonb(w) FROM quota.wallets w WHERE w.user_id = $1),
                    'user', (SELECT to_jsonb(u) FROM quota.users u WHERE u.id = $1),
                    'ledger_rows', (SELECT count(*) FROM quota.ledger l WHERE l.user_id = $1),
                    'reservations', (SELECT count(*) FROM quota.reservations r WHERE r.user_id = $1),
                    'org', (SELECT to_jsonb(o) FROM quota.organizations o WHERE o.id = $2),
                    'org_ledger_rows', (SELECT count(*) FROM quota.org_ledger g WHERE g.org_id = $2),
                    'org_reservations', (SELECT count(*) FROM quota.reservations r WHERE r.org = $2))",
                &[&user_id, &org_id],
            )
            .await
            .unwrap_or_else(|e| panic!("money state of {user_id} / {org_id:?}: {e}"))
            .get(0)
    }

    /// Polls the stored status of a reservation (the table, not the read that already shows a
    /// hold past its expiry as expired) until it is `status`; panics after `timeout`.
    pub async fn wait_reservation_status(
        &self,
        reservation_id: i64,
        status: &str,
        timeout: Duration,
    ) {
        let start = std::time::Instant::now();
        loop {
            let stored: String = self
                .db
                .query_one(
                    "SELECT status FROM quota.reservations WHERE reservation_id = $1",
                    &[&reservation_id],
                )
                .await
                .expect("reservation status")
                .get(0);
            if stored == status {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "reservation {reservation_id} is still {stored} after {timeout:?}, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The user and organization ledger rows that ended a reservation: (user ledger settle or release
/// rows, organization ledger settle, release or expire rows). Exactly one of each (the second
/// only with an organization) once it ended, none while held.
pub async fn reservation_ends(db: &tokio_postgres::Client, reservation_id: i64) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT
                (SELECT count(*) FROM quota.ledger l
                  WHERE l.user_id = r.user_id AND l.transaction_type IN ('settle', 'release')
                    AND (l.request ->> 'reservation_id')::bigint = r.reservation_id),
                (SELECT count(*) FROM quota.org_ledger o
                  WHERE o.org_id = r.org AND o.reservation_id = r.reservation_id
                    AND o.entry_type IN ('settle', 'release', 'expire'))
             FROM quota.reservations r WHERE r.reservation_id = $1",
            &[&reservation_id],
        )
        .await
        .unwrap_or_else(|e| panic!("ends of reservation {reservation_id}: {e}"));
    (row.get(0), row.get(1))
}

// ---------------------------------------------------------------------------------------------
// Access tokens (issue 12, seed 001)

/// The keys of a token as every `/flow/tokens` answer shows it (create adds `access_token`).
pub const FLOW_TOKEN_KEYS: &[&str] = &[
    "access_token_hint",
    "ws_id",
    "email",
    "user_id",
    "quota_type",
    "total_quota",
    "remaining_quota",
    "consumed_quota",
    "expires_at",
    "operation",
    "active",
    "unlimited",
    "rate_limit_per_minute",
    "rate_limit_burst",
    "rate_limit_window_seconds",
    "created_at",
    "updated_at",
];

/// A well-formed access token that was never issued.
pub const UNKNOWN_FLOW_TOKEN: &str =
    "flow_0000000000000000000000000000000000000000000000000000000000000000";

/// The answer of a token check (`/flow/verify`, `/flow/tokens/{token}/consume`): status, body
/// and the headers (RateLimit-*, Retry-After).
#[derive(Debug, Clone)]
pub struct Check {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
    pub what: String,
}

impl Check {
    /// A header as an integer, None when absent.
    pub fn header_int(&self, name: &str) -> Option<i64> {
        self.headers.get(name).map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{}: header {name} is not an integer: {v:?}", self.what))
        })
    }

    /// Asserts a 200 `valid: true` answer; returns the body.
    pub fn expect_valid(&self) -> &Value {
        assert_eq!(
            (self.status, &self.body["valid"]),
            (200, &json!(true)),
            "{}: expected a valid check, got {} {}",
            self.what,
            self.status,
            self.body
        );
        &self.body
    }

    /// Asserts a refusal: the status, `valid: false` and the error code; returns the body.
    pub fn expect_refused(&self, status: u16, error: &str) -> &Value {
        assert_eq!(
            (self.status, &self.body["valid"], &self.body["error"]),
            (status, &json!(false), &json!(error)),
            "{}: expected {status} {error}, got {} {}",
            self.what,
            self.status,
            self.body
        );
        &self.body
    }
}

impl Req {
    /// Sends a token check: its status, body and headers.
    pub async fn send_check(self) -> Check {
        let Resp {
            status,
            body,
            headers,
            what,
            ..
        } = self.send().await;
        Check {
            status,
            body,
            headers,
            what,
        }
    }
}

/// The `data` of a `{"success": true, "data", "message"}` envelope (asserting its shape).
pub fn envelope_data(body: Value) -> Value {
    assert_eq!(body["success"], true, "envelope: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "envelope message: {body}"
    );
    body["data"].clone()
}

/// Asserts an error in seed 001's envelope: the status, `success: false`, `data: null`, a
/// message and the error code; returns the body.
pub fn expect_envelope_error(resp: Resp, status: u16, code: Option<&str>) -> Value {
    let what = resp.what.clone();
    let body = resp.expect_error(status, code);
    assert_eq!(body["success"], false, "{what}: {body}");
    assert!(
        body.get("data").is_some_and(Value::is_null),
        "{what}: data null in {body}"
    );
    body
}

impl Ctx {
    /// `POST /flow/tokens` with this body.
    pub async fn flow_create(&self, body: &Value) -> Resp {
        self.api
            .admin(Method::POST, "/flow/tokens")
            .json(body)
            .send()
            .await
    }

    /// Creates a token (200), `ws_id` and `email` unique unless `fields` gives them; returns the
    /// token JSON with `access_token`.
    pub async fn flow_token(&self, fields: Value) -> Value {
        let mut body = json!({
            "ws_id": self.id("ws"),
            "email": format!("{}@example.com", self.id("e").to_lowercase()),
            "operation": "unlimited",
        });
        if let Some(extra) = fields.as_object() {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        let data = envelope_data(self.flow_create(&body).await.expect(200));
        assert_fields(&data, FLOW_TOKEN_KEYS);
        let token = data["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("access_token in {data}"));
        assert!(
            token.len() == 69
                && token.starts_with("flow_")
                && token[5..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "access_token is flow_ + 64 lowercase hex: {token}"
        );
        assert_eq!(data["access_token_hint"], format!("{}...", &token[..13]));
        data
    }

    /// `PUT /flow/tokens/{token}` with this body.
    pub async fn flow_update(&self, token: &str, body: &Value) -> Resp {
        self.api
            .admin(Method::PUT, &format!("/flow/tokens/{token}"))
            .json(body)
            .send()
            .await
    }

    /// `PUT /flow/tokens/{token}` that must succeed; returns the token JSON.
    pub async fn flow_updated(&self, token: &str, body: Value) -> Value {
        envelope_data(self.flow_update(token, &body).await.expect(200))
    }

    /// `GET /flow/tokens/{token}/quota` (200); returns its data.
    pub async fn flow_quota(&self, token: &str) -> Value {
        envelope_data(
            self.api
                .admin(Method::GET, &format!("/flow/tokens/{token}/quota"))
                .send()
                .await
                .expect(200),
        )
    }

    /// `GET /flow/tokens/{token}/quota/logs` with these query parameters.
    pub async fn flow_logs(&self, token: &str, query: &[(&str, String)]) -> Resp {
        self.api
            .admin(Method::GET, &format!("/flow/tokens/{token}/quota/logs"))
            .query(query)
            .send()
            .await
    }

    /// `GET /flow/tokens` with these query parameters (200); returns its data.
    pub async fn flow_list(&self, query: &[(&str, String)]) -> Value {
        envelope_data(
            self.api
                .admin(Method::GET, "/flow/tokens")
                .query(query)
                .send()
                .await
                .expect(200),
        )
    }

    /// `POST /flow/verify` with the token as bearer and an optional body.
    pub async fn flow_verify(&self, token: &str, body: Option<Value>) -> Check {
        flow_verify(&self.api, token, body).await
    }

    /// `POST /flow/tokens/{token}/consume` with the service token.
    pub async fn flow_consume(&self, token: &str, body: Option<Value>) -> Check {
        let mut req = self
            .api
            .service(Method::POST, &format!("/flow/tokens/{token}/consume"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send_check().await
    }

    /// The number of tokens of a workspace, read through SQL.
    pub async fn flow_tokens_in(&self, ws_id: &str) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM quota.tokens WHERE ws_id = $1",
                &[&ws_id],
            )
            .await
            .expect("count tokens")
            .get(0)
    }

    /// A time in the database's clock `seconds` from now, in the seed's format (UTC).
    pub async fn flow_time_in(&self, seconds: i64) -> String {
        self.db
            .query_one(
                "SELECT to_char((quota.now() + make_interval(secs => $1::float8)) AT TIME ZONE 'UTC',
                                'YYYY-MM-DD HH24:MI:SS')",
                &[&(seconds as f64)],
            )
            .await
            .expect("quota.now()")
            .get(0)
    }
}

/// `POST /flow/verify` with the token as bearer and an optional body (for spawned tasks).
pub async fn flow_verify(api: &Api, token: &str, body: Option<Value>) -> Check {
    let mut req = api.anon(Method::POST, "/flow/verify").bearer(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send_check().await
}
