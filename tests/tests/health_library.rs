//! /health when the extension's library cannot be loaded (issue 9, section 3): the catalog says
//! the extension is installed, but every call into `pg_quota.so` fails with 58P01. /health must
//! answer 503 and say so, not "ok".
//!
//! Set up without disturbing the shared cluster's other tests: a database of its own with the
//! extension, in which `quota.library_version()` (a function of the library) is re-pointed at a
//! library file that is then deleted, exactly what a missing `pg_quota.so` does to every
//! function. (PostgreSQL loads a C function's library when the function is created, so the file
//! must exist then: a copy of a small server library without initialisation code,
//! `utf8_and_iso8859_1`, stands in, and no session that loaded it ever calls the function.) A
//! private sidecar serves that database.

use pg_quota_e2e::relay::{sidecar_database_url, PrivateSidecar};
use pg_quota_e2e::*;
use tokio_postgres::NoTls;

/// `database_url` with its database name replaced.
fn with_database(database_url: &str, name: &str) -> String {
    let (base, _) = database_url
        .rsplit_once('/')
        .expect("E2E_DATABASE_URL is a postgres:// URL");
    format!("{base}/{name}")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn health_is_503_when_the_library_cannot_be_loaded() {
    let ctx = Ctx::new("health_library").await;
    let name = ctx.id("nolib").to_lowercase();
    ctx.db
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create the test database");
    let result = check(&name).await;
    ctx.db
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop the test database");
    result.unwrap_or_else(|message| panic!("{message}"));
}

async fn check(name: &str) -> Result<(), String> {
    let admin_url = with_database(&env().database_url, name);
    let db = connect(&admin_url).await;
    let libdir: String = db
        .query_one(
            "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'",
            &[],
        )
        .await
        .map_err(|e| format!("PKGLIBDIR: {e}"))?
        .get(0);
    let stand_in = format!("pg_quota_e2e_gone_{}", std::process::id());
    let stand_in_path = std::path::Path::new(&libdir).join(format!("{stand_in}.so"));
    std::fs::copy(
        std::path::Path::new(&libdir).join("utf8_and_iso8859_1.so"),
        &stand_in_path,
    )
    .map_err(|e| format!("copy a stand-in library into {libdir}: {e}"))?;
    let created = db
        .batch_execute(&format!(
            "CREATE EXTENSION pg_quota;
             CREATE OR REPLACE FUNCTION quota.library_version() RETURNS text
                 LANGUAGE c AS '$libdir/{stand_in}', 'iso8859_1_to_utf8';"
        ))
        .await;
    // This session loaded the stand-in: it must never call the function. Close it, and delete
    // the file before any other session could load it.
    drop(db);
    let removed = std::fs::remove_file(&stand_in_path);
    created.map_err(|e| format!("set up {name}: {}", db_message(&e)))?;
    removed.map_err(|e| format!("remove {}: {e}", stand_in_path.display()))?;

    let db = connect(&admin_url).await;
    let sqlstate = match db.query_one("SELECT quota.library_version()", &[]).await {
        Ok(_) => return Err("the re-pointed function still loads".into()),
        Err(err) => sqlstate(&err),
    };
    drop(db);
    assert_eq!(sqlstate, "58P01", "a missing library file");

    let url = sidecar_database_url(&admin_url).await;
    let sidecar = PrivateSidecar::start(&url, &[], true).await;
    let resp = ctx_free_get(&format!("{}/health", sidecar.url())).await;
    assert_eq!(resp.0, 503, "{}", resp.1);
    let body: Value = serde_json::from_str(&resp.1).map_err(|e| e.to_string())?;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    assert!(
        body["extension"].is_string(),
        "the catalog still says installed: {body}"
    );
    assert_eq!(body["library"]["status"], "unavailable", "{body}");
    assert_eq!(body["library"]["sqlstate"], "58P01", "{body}");
    assert!(
        body["problems"]
            .to_string()
            .contains("library cannot be loaded"),
        "{body}"
    );
    assert!(
        !resp.1.contains("pg_quota_e2e_missing"),
        "the file name is logged, not served: {body}"
    );
    drop(sidecar);
    Ok(())
}

fn db_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

async fn ctx_free_get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}
