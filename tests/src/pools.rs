//! Helpers for the provider pool tests (issue 13, seed 002): providers, accounts, acquire and
//! release over REST, against the shared sidecar or a private one (`Pools::at`), and an isolated
//! database for tests that run their own relay (`IsolatedDb`).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{connect_db, env, unique_id, Api, Resp};

pub const PROVIDERS: &str = "/api/v1/admin/providers";
/// A well-formed UUID that names nothing.
pub const UNKNOWN_ID: &str = "00000000-0000-4000-8000-000000000000";

/// SPEC 5's refusal bodies, exactly.
pub fn no_account_body() -> Value {
    json!({"error": "no_account_available", "message": "Service temporarily unavailable"})
}

/// The pool API of one sidecar.
#[derive(Clone)]
pub struct Pools {
    pub api: Api,
}

impl Default for Pools {
    fn default() -> Self {
        Self::new()
    }
}

/// A string field of a JSON body, or a panic naming it.
pub fn text(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("string {field} in {body}"))
        .to_owned()
}

impl Pools {
    /// The shared e2e sidecar.
    pub fn new() -> Pools {
        Pools { api: Api::new() }
    }

    /// Another sidecar (a private one).
    pub fn at(base: &str) -> Pools {
        Pools {
            api: Api {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("reqwest client"),
                base: base.trim_end_matches('/').to_owned(),
            },
        }
    }

    /// Creates a provider with a unique name (201); returns it.
    pub async fn provider(&self, prefix: &str, strategy: &str, limits: Value) -> Value {
        let name = unique_id(prefix);
        let body = self
            .api
            .admin(Method::POST, PROVIDERS)
            .json(&json!({"name": name, "strategy": strategy, "limits": limits}))
            .send()
            .await
            .expect(201);
        assert_eq!(body["name"], name.as_str(), "{body}");
        assert!(body["provider_id"].is_string(), "{body}");
        body
    }

    /// Creates an account (201) with `credentials` and the options in `fields`; returns it.
    pub async fn account(&self, provider_id: &str, credentials: Value, fields: Value) -> Value {
        let mut body = json!({"credentials": credentials});
        if let Some(extra) = fields.as_object() {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        let created = self
            .api
            .admin(Method::POST, &format!("{PROVIDERS}/{provider_id}/accounts"))
            .json(&body)
            .send()
            .await
            .expect(201);
        assert!(created["account_id"].is_string(), "{created}");
        assert!(
            created.get("credentials").is_none(),
            "an account read shows no credentials: {created}"
        );
        created
    }

    /// A provider (no limits unless given) with one account of this quota; (provider_id,
    /// account_id).
    pub async fn single(&self, prefix: &str, quota_limit: i64, limits: Value) -> (String, String) {
        let provider = self.provider(prefix, "least_used", limits).await;
        let provider_id = text(&provider, "provider_id");
        let account = self
            .account(
                &provider_id,
                json!({"api_key": format!("sk-{}", unique_id("k"))}),
                json!({"quota_limit": quota_limit}),
            )
            .await;
        (provider_id, text(&account, "account_id"))
    }

    /// `POST /api/v1/pool/{provider_id}/acquire` with this body.
    pub async fn acquire_with(&self, provider_id: &str, body: Value) -> Resp {
        self.api
            .service(Method::POST, &format!("/api/v1/pool/{provider_id}/acquire"))
            .json(&body)
            .send()
            .await
    }

    /// An acquire of `tokens_needed`.
    pub async fn acquire(&self, provider_id: &str, tokens_needed: i64) -> Resp {
        self.acquire_with(provider_id, json!({"tokens_needed": tokens_needed}))
            .await
    }

    /// An admitted acquire (200, `admitted: true`); returns the lease.
    pub async fn admitted(&self, provider_id: &str, tokens_needed: i64) -> Value {
        let lease = self.acquire(provider_id, tokens_needed).await.expect(200);
        assert_eq!(lease["admitted"], true, "{lease}");
        lease
    }

    /// `POST /api/v1/pool/accounts/{account_id}/release` with this body.
    pub async fn release_with(&self, account_id: &str, body: Value) -> Resp {
        self.api
            .service(
                Method::POST,
                &format!("/api/v1/pool/accounts/{account_id}/release"),
            )
            .json(&body)
            .send()
            .await
    }

    /// Releases a lease with `output_tokens` used (200); returns the answer.
    pub async fn release(&self, lease: &Value, output_tokens: i64) -> Value {
        let account_id = text(lease, "account_id");
        let released = self
            .release_with(
                &account_id,
                json!({"lease_id": lease["lease_id"], "output_tokens": output_tokens,
                       "status_code": 200, "latency_ms": 10}),
            )
            .await
            .expect(200);
        assert_eq!(released["released"], true, "{released}");
        released
    }

    /// Acquire `tokens` then release them all (the quota ends `tokens` higher); returns the lease.
    pub async fn spend(&self, provider_id: &str, tokens: i64) -> Value {
        let lease = self.admitted(provider_id, tokens).await;
        self.release(&lease, tokens).await;
        lease
    }

    /// `GET /api/v1/stats/quota/{account_id}` (200).
    pub async fn quota(&self, account_id: &str) -> Value {
        self.api
            .service(Method::GET, &format!("/api/v1/stats/quota/{account_id}"))
            .send()
            .await
            .expect(200)
    }

    /// `GET /api/v1/admin/accounts/{account_id}` (200).
    pub async fn account_json(&self, account_id: &str) -> Value {
        self.api
            .admin(Method::GET, &format!("/api/v1/admin/accounts/{account_id}"))
            .send()
            .await
            .expect(200)
    }

    /// `GET /api/v1/pool/{provider_id}/status` (200).
    pub async fn status(&self, provider_id: &str) -> Value {
        self.api
            .service(Method::GET, &format!("/api/v1/pool/{provider_id}/status"))
            .send()
            .await
            .expect(200)
    }

    /// `GET /api/v1/admin/alerts?account_id=` (200): the alerts of one account.
    pub async fn alerts(&self, account_id: &str) -> Vec<Value> {
        let body = self
            .api
            .admin(Method::GET, "/api/v1/admin/alerts")
            .query(&[("account_id", account_id.to_owned())])
            .send()
            .await
            .expect(200);
        body["alerts"]
            .as_array()
            .unwrap_or_else(|| panic!("alerts in {body}"))
            .clone()
    }

    /// The alerts of one account of one kind.
    pub async fn alerts_of(&self, account_id: &str, kind: &str) -> Vec<Value> {
        self.alerts(account_id)
            .await
            .into_iter()
            .filter(|a| a["kind"] == kind)
            .collect()
    }
}

/// What an account's quota looks like through every read, for "nothing changed" checks.
pub async fn account_state(pools: &Pools, account_id: &str) -> Value {
    let account = pools.account_json(account_id).await;
    json!({
        "quota_used": account["quota_used"],
        "quota_held": account["quota_held"],
        "in_flight": account["in_flight"],
        "request_count": account["request_count"],
        "success_count": account["success_count"],
        "error_count": account["error_count"],
        "last_reset": account["last_reset"],
    })
}

/// A database of its own in the e2e cluster, with the extension, for a test that runs a
/// private sidecar whose relay must not race the shared sidecar's (alerts share the outbox).
/// Dropped (FORCE) at the end of the test.
pub struct IsolatedDb {
    pub name: String,
    /// As postgres (superuser).
    pub url: String,
}

impl IsolatedDb {
    pub async fn create(prefix: &str) -> IsolatedDb {
        let name = unique_id(prefix).to_lowercase();
        let admin = connect_db().await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = with_dbname(&env().database_url, &name);
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
            .batch_execute("CREATE EXTENSION pg_quota")
            .await
            .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_quota in {name}: {e}"));
        IsolatedDb { name, url }
    }

    /// The URL the private sidecar connects with (as quota_sidecar when the cluster has it).
    pub async fn sidecar_url(&self) -> String {
        crate::relay::sidecar_database_url(&self.url).await
    }

    pub async fn drop_db(self) {
        let admin = connect_db().await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// `postgres://user@host:port/db?x` with another database name.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let prefix = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('/') {
            Some((host, _)) => format!("{scheme}://{host}"),
            None => format!("{scheme}://{rest}"),
        },
        None => panic!("E2E_DATABASE_URL is not a URL: {url}"),
    };
    match query {
        Some(query) => format!("{prefix}/{dbname}?{query}"),
        None => format!("{prefix}/{dbname}"),
    }
}
